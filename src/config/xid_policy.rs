//! The operator's XID policy (`gpu-monitor --xid-policy FILE`): per-XID
//! overrides of the compiled-in catalog (`src/gpu/xid.rs`).
//!
//! ```json
//! {"xids": [
//!   {"xid": 31, "repeat": {"count": 3, "window": "1h"}, "raise": "reset"},
//!   {"xid": 63, "raise": "event"},
//!   {"xid": 94, "raise": "reset"},
//!   {"xid": 145, "driver": ">=575", "raise": "nvlink"}
//! ]}
//! ```
//!
//! - `xids` (required): a list of entries; an empty list is refused (it
//!   would silently do nothing).
//! - `xids[].xid` (required): the XID, 1 to [`MAX_XID`].
//! - `xids[].raise` (required): what the XID raises on the GPU that logged
//!   it: `event` (demote: an event, no condition) or a condition class,
//!   `reset` (GPUResetRequired), `reboot` (GPURebootRequired), `memory`
//!   (GPUMemoryUnhealthy), `hardware` (GPUHardwareFault), `nvlink`
//!   (GPUNVLinkDegraded) or `nvlink-down` (GPUNVLinkDown). Without
//!   `repeat` it replaces the catalog's classes for every report of the XID.
//! - `xids[].repeat`: `{"count": N, "window": "W", "burstGap": "G"}`: each
//!   report keeps the catalog's class; the `N`th burst on one GPU within `W`
//!   raises `raise` (and a `GPUXIDRepeated` warning). Reports closer than `G`
//!   (default `3m`, as the compiled-in rules) are one burst; `"0s"` counts
//!   every report. It replaces the compiled-in repeat rule of the same XID.
//!   `count` ≥ 1, `window` > 0.
//! - `xids[].driver`: the driver versions the entry applies to, as NVML
//!   reports them: comparators joined by commas, e.g. `">=575"`,
//!   `">=570,<575"`, `"=580.82.07"`. Without it, every driver. An entry with a
//!   range does not apply while the driver version is unknown.
//!
//! One XID may have one plain entry and one `repeat` entry per driver
//! range; two of a kind whose ranges overlap are refused.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::json::{self, Value};
use super::walk::{self, Obj, Sink};
use super::{Checked, Diagnostic, Level};

/// The highest XID an entry may name (the catalog ends below 200).
pub const MAX_XID: u32 = 999;
/// Reports of one XID closer together than this are one burst (NVIDIA
/// Fleet Intelligence's three minutes, as in `gpu::xid::REPEAT_BURST_GAP`).
pub const DEFAULT_BURST_GAP: Duration = Duration::from_secs(180);

/// What an entry raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raise {
    Event,
    Reset,
    Reboot,
    Memory,
    Hardware,
    Nvlink,
    NvlinkDown,
}

impl Raise {
    pub const ALL: [Self; 7] = [
        Self::Event,
        Self::Reset,
        Self::Reboot,
        Self::Memory,
        Self::Hardware,
        Self::Nvlink,
        Self::NvlinkDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Reset => "reset",
            Self::Reboot => "reboot",
            Self::Memory => "memory",
            Self::Hardware => "hardware",
            Self::Nvlink => "nvlink",
            Self::NvlinkDown => "nvlink-down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// N bursts on one GPU within a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatRule {
    pub count: u32,
    pub window: Duration,
    pub burst_gap: Duration,
}

/// A driver version as NVML prints it ("575.57.08"): numbers, compared
/// one by one, missing ones as 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub Vec<u32>);

impl Version {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Option<Vec<u32>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Self)
    }

    fn cmp_to(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| {
                let a = self.0.get(i).copied().unwrap_or(0);
                let b = other.0.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

/// A bound of a range: the version, and whether it is included.
type Bound = Option<(Version, bool)>;

/// The driver versions an entry applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverRange {
    /// As written (it names the range in messages).
    pub text: String,
    low: Bound,
    high: Bound,
}

impl DriverRange {
    /// Parses `">=575"`, `">=570,<575"`, `"=580.82.07"`; the error says why not.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut r = Self {
            text: text.trim().to_owned(),
            low: None,
            high: None,
        };
        if r.text.is_empty() {
            return Err("an empty range; leave the key out for every driver".into());
        }
        for part in r.text.clone().split(',') {
            let part = part.trim();
            let (op, rest) = ["<=", ">=", "<", ">", "="]
                .iter()
                .find_map(|op| part.strip_prefix(op).map(|rest| (*op, rest)))
                .ok_or_else(|| {
                    format!("{part:?} has no comparator (>=, >, <=, <, = before a version)")
                })?;
            let v = Version::parse(rest).ok_or_else(|| {
                format!("{rest:?} is not a driver version such as 575 or 575.57.08")
            })?;
            let (low, high) = match op {
                ">=" => (Some((v, true)), None),
                ">" => (Some((v, false)), None),
                "<=" => (None, Some((v, true))),
                "<" => (None, Some((v, false))),
                _ => (Some((v.clone(), true)), Some((v, true))),
            };
            if low.is_some() {
                r.low = tighter(r.low.take(), low, Ordering::Greater);
            }
            if high.is_some() {
                r.high = tighter(r.high.take(), high, Ordering::Less);
            }
        }
        if !r.non_empty() {
            return Err(format!("{:?} matches no driver version", r.text));
        }
        Ok(r)
    }

    /// Whether `version` is in the range; `None` when it is not a version
    /// (unknown: the driver has not said).
    pub fn matches(&self, version: &str) -> Option<bool> {
        let v = Version::parse(version)?;
        let above = self
            .low
            .as_ref()
            .is_none_or(|(lo, inc)| match v.cmp_to(lo) {
                Ordering::Greater => true,
                Ordering::Equal => *inc,
                Ordering::Less => false,
            });
        let below = self
            .high
            .as_ref()
            .is_none_or(|(hi, inc)| match v.cmp_to(hi) {
                Ordering::Less => true,
                Ordering::Equal => *inc,
                Ordering::Greater => false,
            });
        Some(above && below)
    }

    fn non_empty(&self) -> bool {
        match (&self.low, &self.high) {
            (Some((lo, li)), Some((hi, hi_inc))) => match lo.cmp_to(hi) {
                Ordering::Less => true,
                Ordering::Equal => *li && *hi_inc,
                Ordering::Greater => false,
            },
            _ => true,
        }
    }

    /// Whether some version is in both (`None`: every version).
    pub fn overlaps(a: Option<&Self>, b: Option<&Self>) -> bool {
        let (Some(a), Some(b)) = (a, b) else {
            return true;
        };
        let both = Self {
            text: String::new(),
            low: tighter(a.low.clone(), b.low.clone(), Ordering::Greater),
            high: tighter(a.high.clone(), b.high.clone(), Ordering::Less),
        };
        both.non_empty()
    }
}

/// The tighter of two bounds: the higher low (`want` Greater) or the lower high.
fn tighter(a: Bound, b: Bound, want: Ordering) -> Bound {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some((va, ia)), Some((vb, ib))) => match va.cmp_to(&vb) {
            Ordering::Equal => Some((va, ia && ib)),
            o if o == want => Some((va, ia)),
            _ => Some((vb, ib)),
        },
    }
}

/// One entry of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XidRule {
    /// Its place in `xids` (it names the entry in messages).
    pub index: usize,
    pub xid: u32,
    pub driver: Option<DriverRange>,
    pub repeat: Option<RepeatRule>,
    pub raise: Raise,
}

impl XidRule {
    /// "xids[0]: XID 31 ×3 within 1h → reset"
    pub fn describe(&self) -> String {
        let mut s = format!("xids[{}]: XID {}", self.index, self.xid);
        if let Some(r) = &self.repeat {
            s.push_str(&format!(
                " ×{} within {}",
                r.count,
                super::duration::format_go(r.window)
            ));
        }
        if let Some(d) = &self.driver {
            s.push_str(&format!(" on driver {}", d.text));
        }
        s.push_str(&format!(" → {}", self.raise.name()));
        s
    }

    /// Whether it applies under `driver` (the version NVML reported; empty
    /// while unknown, when only entries without a range apply).
    pub fn applies(&self, driver: &str) -> bool {
        self.driver
            .as_ref()
            .is_none_or(|r| r.matches(driver) == Some(true))
    }
}

/// A checked XID policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XidPolicy {
    pub file: PathBuf,
    pub rules: Vec<XidRule>,
}

impl XidPolicy {
    /// The entry for `xid` under `driver`: the plain one (`repeat` false)
    /// or the repeat one.
    pub fn rule(&self, xid: u32, driver: &str, repeat: bool) -> Option<&XidRule> {
        self.rules
            .iter()
            .find(|r| r.xid == xid && r.repeat.is_some() == repeat && r.applies(driver))
    }
}

/// Reads and checks a policy file (an unreadable file is a diagnostic).
pub fn check_file(path: &Path) -> Checked<XidPolicy> {
    super::check_path(path, check)
}

/// Checks an XID policy file and reads it.
pub fn check(file: &Path, text: &str) -> Checked<XidPolicy> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<XidPolicy> {
    let mut top = Obj::new(sink, doc, "")?;
    let mut rules = Vec::new();
    match top.get(sink, &["xids"]) {
        Some(f) => match &f.node.value {
            Value::Array(items) if items.is_empty() => sink.error(
                f.node.pos,
                &f.key,
                "is empty: the policy would change nothing (remove --xid-policy instead)",
            ),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(r) = entry(sink, item, i) {
                        duplicates(sink, &rules, &r, item.pos);
                        rules.push(r);
                    }
                }
            }
            other => sink.error(
                f.node.pos,
                &f.key,
                format!("must be an array of entries, found {}", other.kind()),
            ),
        },
        None => sink.error(top.pos, "xids", "missing"),
    }
    top.finish(sink);
    Some(XidPolicy {
        file: file.to_path_buf(),
        rules,
    })
}

/// Two entries of one kind for one XID whose driver ranges overlap.
fn duplicates(sink: &mut Sink, rules: &[XidRule], r: &XidRule, pos: json::Pos) {
    let clash = rules.iter().find(|o| {
        o.xid == r.xid
            && o.repeat.is_some() == r.repeat.is_some()
            && DriverRange::overlaps(o.driver.as_ref(), r.driver.as_ref())
    });
    if let Some(o) = clash {
        let kind = if r.repeat.is_some() {
            "repeat entry"
        } else {
            "entry"
        };
        let range = |d: &Option<DriverRange>| {
            d.as_ref().map_or_else(
                || "every driver".to_owned(),
                |d| format!("driver {}", d.text),
            )
        };
        sink.error(
            pos,
            &format!("xids[{}]", r.index),
            format!(
                "a second {kind} for XID {} ({}) overlaps xids[{}] ({}): which one applies would be unclear",
                r.xid,
                range(&r.driver),
                o.index,
                range(&o.driver)
            ),
        );
    }
}

fn entry(sink: &mut Sink, node: &json::Node, index: usize) -> Option<XidRule> {
    let path = format!("xids[{index}]");
    let mut obj = Obj::new(sink, node, &path)?;
    let xid = match obj.get(sink, &["xid"]) {
        Some(f) => walk::unsigned(sink, &f).and_then(|x| {
            let ok = (1..=u64::from(MAX_XID)).contains(&x);
            if !ok {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("XID {x} is out of range (1 to {MAX_XID})"),
                );
            }
            u32::try_from(x).ok().filter(|_| ok)
        }),
        None => {
            sink.error(node.pos, &format!("{path}.xid"), "missing");
            None
        }
    };
    let raise = match obj.get(sink, &["raise"]) {
        Some(f) => walk::string(sink, &f).and_then(|s| {
            let r = Raise::parse(&s);
            if r.is_none() {
                let names: Vec<&str> = Raise::ALL.iter().map(|r| r.name()).collect();
                sink.diagnostics.push(Diagnostic {
                    level: Level::Error,
                    file: sink.file.clone(),
                    pos: Some(f.node.pos),
                    key: f.key.clone(),
                    message: format!("unknown class {s:?}"),
                    help: Some(format!("valid: {}", names.join(", "))),
                    unknown_key: false,
                });
            }
            r
        }),
        None => {
            sink.error(
                node.pos,
                &format!("{path}.raise"),
                "missing (event, or the condition class to raise)",
            );
            None
        }
    };
    let driver = obj.get(sink, &["driver"]).map(|f| {
        walk::string(sink, &f).and_then(|s| {
            DriverRange::parse(&s)
                .map_err(|e| sink.error(f.node.pos, &f.key, format!("invalid driver range: {e}")))
                .ok()
        })
    });
    let repeat = obj.get(sink, &["repeat"]).map(|f| repeat(sink, &f));
    obj.finish(sink);
    Some(XidRule {
        index,
        xid: xid?,
        // A key given but invalid loses the entry (the error says why).
        driver: match driver {
            Some(d) => Some(d?),
            None => None,
        },
        repeat: match repeat {
            Some(r) => Some(r?),
            None => None,
        },
        raise: raise?,
    })
}

fn repeat(sink: &mut Sink, f: &walk::Found<'_>) -> Option<RepeatRule> {
    let mut obj = Obj::new(sink, f.node, &f.key)?;
    let count = match obj.get(sink, &["count"]) {
        Some(c) => walk::unsigned(sink, &c).and_then(|n| {
            if n == 0 {
                sink.error(c.node.pos, &c.key, "must be at least 1");
                return None;
            }
            u32::try_from(n).ok().or_else(|| {
                sink.error(c.node.pos, &c.key, "is too large");
                None
            })
        }),
        None => {
            sink.error(f.node.pos, &format!("{}.count", f.key), "missing");
            None
        }
    };
    let window = match obj.get(sink, &["window"]) {
        Some(w) => walk::duration(sink, &w).and_then(|d| {
            if d.is_zero() {
                sink.error(w.node.pos, &w.key, "must be above 0");
                return None;
            }
            Some(d)
        }),
        None => {
            sink.error(f.node.pos, &format!("{}.window", f.key), "missing");
            None
        }
    };
    let burst_gap = match obj.get(sink, &["burstGap"]) {
        Some(g) => walk::duration(sink, &g),
        None => Some(DEFAULT_BURST_GAP),
    };
    obj.finish(sink);
    Some(RepeatRule {
        count: count?,
        window: window?,
        burst_gap: burst_gap?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        check(Path::new("p.json"), text)
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_the_documented_example() {
        let c = check(
            Path::new("p.json"),
            r#"{"xids": [
  {"xid": 31, "repeat": {"count": 3, "window": "1h"}, "raise": "reset"},
  {"xid": 63, "raise": "event"},
  {"xid": 94, "raise": "reset"},
  {"xid": 145, "driver": ">=575", "raise": "nvlink"},
  {"xid": 145, "driver": "<575", "raise": "event"}
]}"#,
        );
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        let p = c.config.expect("valid");
        assert_eq!(p.rules.len(), 5);
        assert_eq!(
            p.rules[0].describe(),
            "xids[0]: XID 31 ×3 within 1h0m0s → reset"
        );
        assert_eq!(p.rule(145, "575.57.08", false).map(|r| r.index), Some(3));
        assert_eq!(p.rule(145, "570.124.06", false).map(|r| r.index), Some(4));
        assert_eq!(
            p.rule(145, "", false),
            None,
            "unknown driver: no ranged entry"
        );
        assert_eq!(p.rule(31, "", true).map(|r| r.index), Some(0));
        assert_eq!(p.rule(31, "", false), None);
    }

    #[test]
    fn driver_ranges_compare_versions_number_by_number() {
        let r = DriverRange::parse(">=570, <575.51").expect("valid");
        assert_eq!(r.matches("570"), Some(true));
        assert_eq!(r.matches("575.51.02"), Some(false), "575.51.02 ≥ 575.51");
        assert_eq!(r.matches("575.9"), Some(true), "9 < 51");
        assert_eq!(r.matches("569.99"), Some(false));
        assert_eq!(r.matches(""), None);
        assert!(DriverRange::parse("575").is_err());
        assert!(DriverRange::parse(">=abc").is_err());
        assert!(DriverRange::parse(">=575,<570").is_err());
        let a = DriverRange::parse("<575").expect("valid");
        let b = DriverRange::parse(">=575").expect("valid");
        assert!(!DriverRange::overlaps(Some(&a), Some(&b)));
        let c = DriverRange::parse("<=575").expect("valid");
        assert!(DriverRange::overlaps(Some(&c), Some(&b)));
        assert!(DriverRange::overlaps(None, Some(&b)));
    }

    #[test]
    fn every_problem_is_said_with_its_place() {
        let e = errors(
            "{\"xids\": [\n {\"xid\": 0, \"raise\": \"reboot\"},\n {\"xid\": 31, \"raise\": \"restart\", \"repeat\": {\"count\": 0, \"window\": \"0s\"}},\n {\"xid\": 13, \"rasie\": \"reset\"},\n {\"xid\": 63, \"raise\": \"event\"},\n {\"xid\": 63, \"raise\": \"reset\"},\n {\"xid\": 145, \"driver\": \"575+\", \"raise\": \"nvlink\"}\n]}",
        );
        let want = [
            "p.json:2:10: error: xids[0].xid: XID 0 is out of range (1 to 999)",
            "p.json:3:23: error: xids[1].raise: unknown class \"restart\" (valid: event, reset, reboot, memory, hardware, nvlink, nvlink-down)",
            "p.json:3:54: error: xids[1].repeat.count: must be at least 1",
            "p.json:3:67: error: xids[1].repeat.window: must be above 0",
            "p.json:4:2: error: xids[2].raise: missing (event, or the condition class to raise)",
            "p.json:4:14: error: xids[2].rasie: unknown key (did you mean \"raise\"?)",
            "p.json:6:2: error: xids[4]: a second entry for XID 63 (every driver) overlaps xids[3] (every driver): which one applies would be unclear",
            "p.json:7:25: error: xids[5].driver: invalid driver range: \"575+\" has no comparator (>=, >, <=, <, = before a version)",
        ];
        for w in want {
            assert!(e.iter().any(|d| d == w), "missing {w}\nin {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn an_empty_or_missing_list_is_refused() {
        assert_eq!(
            errors(r#"{"xids": []}"#),
            [
                "p.json:1:10: error: xids: is empty: the policy would change nothing (remove --xid-policy instead)"
            ]
        );
        assert!(
            errors(r#"{"xid": []}"#)
                .iter()
                .any(|e| e.contains("xids: missing"))
        );
        assert!(errors(r#"{"xids": [{"xid": 31, "raise": "reset", "repeat": {"count": 2, "window": "soon"}}]}"#)
            .iter()
            .any(|e| e.contains("xids[0].repeat.window: invalid duration")));
    }
}

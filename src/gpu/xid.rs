//! The XID catalog (`data/xid-catalog.tsv`, with its source): what each XID
//! means, NVIDIA's immediate and investigatory actions, and which conditions
//! npd-ext raises for it. Parsed once; a malformed table fails the tests.

use std::sync::OnceLock;
use std::time::Duration;

const CATALOG_TSV: &str = include_str!("../../data/xid-catalog.tsv");

/// What npd-ext raises for an XID (a set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classes(u16);

impl Classes {
    pub const APP: Self = Self(1);
    pub const EVENT: Self = Self(1 << 1);
    pub const RESET: Self = Self(1 << 2);
    pub const REBOOT: Self = Self(1 << 3);
    pub const LOST: Self = Self(1 << 4);
    pub const MEMORY: Self = Self(1 << 5);
    pub const HARDWARE: Self = Self(1 << 6);
    pub const NVLINK_DOWN: Self = Self(1 << 7);
    pub const NVLINK_DEGRADED: Self = Self(1 << 8);
    pub const RECOVERY: Self = Self(1 << 9);

    const NAMES: [(&'static str, Self); 10] = [
        ("app", Self::APP),
        ("event", Self::EVENT),
        ("reset", Self::RESET),
        ("reboot", Self::REBOOT),
        ("lost", Self::LOST),
        ("memory", Self::MEMORY),
        ("hardware", Self::HARDWARE),
        ("nvlink-down", Self::NVLINK_DOWN),
        ("nvlink-degraded", Self::NVLINK_DEGRADED),
        ("recovery", Self::RECOVERY),
    ];

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Only an event, no condition.
    pub fn is_event_only(self) -> bool {
        self.0 & !(Self::APP.0 | Self::EVENT.0) == 0
    }

    /// The first thing to do, most severe first.
    pub fn action(self) -> &'static str {
        const ORDER: [(Classes, &str); 10] = [
            (
                Classes::LOST,
                "drain the node and reboot it (power-cycle); RMA if it recurs",
            ),
            (Classes::REBOOT, "drain the node and reboot it"),
            (
                Classes::MEMORY,
                "drain and reset the GPU, then track it for replacement (RMA)",
            ),
            (
                Classes::HARDWARE,
                "inspect the GPU (power cables, seating) and contact support",
            ),
            (
                Classes::NVLINK_DOWN,
                "reset the GPU; if links stay down, reboot, then service",
            ),
            (Classes::RESET, "drain the GPU and reset it"),
            (
                Classes::NVLINK_DEGRADED,
                "investigate the NVLink; reset the GPU if errors are fatal",
            ),
            (Classes::RECOVERY, "follow the driver's recovery action"),
            (Classes::APP, "restart the application"),
            (Classes::EVENT, "no node action; watch for repeats"),
        ];
        ORDER
            .iter()
            .find(|(c, _)| self.contains(*c))
            .map_or("no node action; watch for repeats", |(_, a)| a)
    }
}

impl std::ops::BitOr for Classes {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XidInfo {
    pub xid: u32,
    pub mnemonic: &'static str,
    pub immediate: &'static str,
    pub investigatory: &'static str,
    pub classes: Classes,
}

impl XidInfo {
    /// "XID 48 ROBUST_CHANNEL_GPU_ECC_DBE"
    pub fn title(&self) -> String {
        format!("XID {} {}", self.xid, self.mnemonic)
    }
}

/// When an application-class XID repeating on one GPU points past the
/// application: `bursts` separate bursts within `window` get a
/// `GPUXIDRepeated` warning naming the GPU and the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeat {
    pub xid: u32,
    pub bursts: usize,
    pub window: Duration,
    /// What the repeats suggest.
    pub hint: &'static str,
}

/// Lines of one XID closer together than this are one burst (one failing
/// job logs many): NVIDIA Fleet Intelligence counts messages less than three
/// minutes apart as one burst, as NVSentinel's repeat rules do.
pub const REPEAT_BURST_GAP: Duration = Duration::from_secs(180);

/// Bursts kept per (GPU, XID): more than any threshold needs.
pub const REPEAT_BURSTS_KEPT: usize = 16;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The repeat thresholds. Sources: NVIDIA's XID catalog, whose workflows for
/// XID 13 and 31 (WORKFLOW_XID_13/31) treat repeats on the same GPU as a
/// possible hardware issue, and NVSentinel's rules that implement them
/// (NVIDIA/NVSentinel issue #270, design PR #345, PRs #374 and #471): XID 31
/// twice on one GPU within 24 h; XID 13 and 43 by its generic rule, 5 within
/// 24 h. A 43 in the same burst as a 13 or 31 is that failure's echo and does
/// not count (NVSentinel issue #1710: a generic rule fed application churn
/// fired 672 times in 3 hours).
pub const REPEATS: [Repeat; 3] = [
    Repeat {
        xid: 13,
        bursts: 5,
        window: DAY,
        hint: "graphics engine exceptions across jobs on one GPU suggest the GPU, not the application",
    },
    Repeat {
        xid: 31,
        bursts: 2,
        window: DAY,
        hint: "memory page faults across jobs on one GPU suggest its memory, not the application",
    },
    Repeat {
        xid: 43,
        bursts: 5,
        window: DAY,
        hint: "channels stopping again and again on one GPU suggest the GPU, not the application",
    },
];

/// What to do when an application XID keeps repeating on one GPU.
pub const REPEAT_ACTION: &str =
    "drain the GPU and run diagnostics (dcgmi diag -r 3); reset it, and replace it if they fail";

/// The repeat rule for `xid`, if it has one.
pub fn repeat_rule(xid: u32) -> Option<&'static Repeat> {
    REPEATS.iter().find(|r| r.xid == xid)
}

/// The whole catalog, sorted by XID. It is compiled in and parsed by a
/// unit test, so a parse failure is a build that must not ship.
#[allow(clippy::panic)]
pub fn catalog() -> &'static [XidInfo] {
    static CATALOG: OnceLock<Vec<XidInfo>> = OnceLock::new();
    CATALOG
        .get_or_init(|| parse(CATALOG_TSV).unwrap_or_else(|e| panic!("data/xid-catalog.tsv: {e}")))
}

/// The catalog entry, or a Warning-event entry for an XID the catalog lacks.
pub fn lookup(xid: u32) -> XidInfo {
    let table = catalog();
    match table.binary_search_by_key(&xid, |i| i.xid) {
        Ok(i) => table[i],
        Err(_) => XidInfo {
            xid,
            mnemonic: "(not in the XID catalog)",
            immediate: "UNKNOWN",
            investigatory: "UNKNOWN",
            classes: Classes::EVENT,
        },
    }
}

fn parse(text: &'static str) -> Result<Vec<XidInfo>, String> {
    let mut out: Vec<XidInfo> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&'static str> = line.split('\t').collect();
        let [xid, mnemonic, immediate, investigatory, classes] = cols[..] else {
            return Err(format!(
                "line {}: expected 5 tab-separated columns, found {}",
                n + 1,
                cols.len()
            ));
        };
        let xid: u32 = xid
            .parse()
            .map_err(|_| format!("line {}: bad XID {xid:?}", n + 1))?;
        let mut set = Classes::default();
        for name in classes.split(',') {
            let (_, c) = Classes::NAMES
                .iter()
                .find(|(k, _)| *k == name)
                .ok_or_else(|| format!("line {}: unknown class {name:?}", n + 1))?;
            set = set | *c;
        }
        if out.last().is_some_and(|last| last.xid >= xid) {
            return Err(format!(
                "line {}: XID {xid} out of order or repeated",
                n + 1
            ));
        }
        out.push(XidInfo {
            xid,
            mnemonic,
            immediate,
            investigatory,
            classes: set,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_parses_and_is_sorted() {
        let c = catalog();
        assert!(c.len() >= 50, "{}", c.len());
        assert!(c.windows(2).all(|w| w[0].xid < w[1].xid));
    }

    #[test]
    fn classifies_as_the_catalog_says() {
        assert!(lookup(79).classes.contains(Classes::LOST | Classes::REBOOT));
        assert!(lookup(48).classes.contains(Classes::RESET));
        assert_eq!(lookup(48).immediate, "WORKFLOW_XID_48");
        assert!(
            lookup(64)
                .classes
                .contains(Classes::MEMORY | Classes::RESET)
        );
        assert!(lookup(54).classes.contains(Classes::HARDWARE));
        assert!(lookup(136).classes.contains(Classes::NVLINK_DOWN));
        assert!(lookup(13).classes.is_event_only());
        assert!(
            lookup(109).classes.is_event_only(),
            "109 needs the recovery action to agree"
        );
        assert!(lookup(154).classes.contains(Classes::RECOVERY));
        let unknown = lookup(9999);
        assert!(
            unknown.classes.is_event_only() && unknown.mnemonic.contains("not in the XID catalog")
        );
    }

    #[test]
    fn malformed_tables_are_refused() {
        assert!(parse("1\tA\tB\tC\n").is_err());
        assert!(parse("1\tA\tB\tC\tnonsense\n").is_err());
        assert!(parse("2\tA\tB\tC\tapp\n1\tA\tB\tC\tapp\n").is_err());
    }

    #[test]
    fn actions_follow_the_most_severe_class() {
        assert!(lookup(79).classes.action().contains("reboot"));
        assert!(lookup(48).classes.action().contains("reset"));
        assert_eq!(lookup(13).classes.action(), "restart the application");
    }
}

//! The detector's taint policy (`detector --taint-policy FILE`): which
//! condition types put a taint on the Node while they are True, and the
//! fleet-wide limit on quarantined nodes (the circuit breaker).
//!
//! ```json
//! {"maxShare": "10%", "maxCount": 50,
//!  "taints": [{"condition": "GPULost", "key": "npd-ext.io/gpu-lost", "effect": "NoSchedule"}]}
//! ```
//!
//! - `taints[].condition` (required): a condition type, once per policy;
//!   the kubelet's own types are refused (npd-ext never sets them).
//! - `taints[].key`: under [`KEY_PREFIX`] (the only taints the detector
//!   ever removes are its own); default `npd-ext.io/` + the type in kebab
//!   case (`GPULost` → `npd-ext.io/gpu-lost`).
//! - `taints[].value`: optional, a label value (≤ 63 characters).
//! - `taints[].effect`: `NoSchedule` (default), `PreferNoSchedule`, or
//!   `NoExecute` (evicts running pods: only when written out).
//! - `taints[].keepOnUnknown`: whether a taint stays while its condition is
//!   `Unknown` (default true); an `Unknown` condition never adds one.
//! - `maxShare` (`"10%"` by default) and `maxCount` (no limit by default):
//!   a node is not quarantined past either.
//! - `retryAfter` (`1m`): how soon a refused quarantine is tried again.
//! - `jitter` (`2s`): the longest random wait before counting, so detectors
//!   that decide at once rarely count at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Checked;
use super::json::{self, Value};
use super::walk::{self, Obj, Sink};
use crate::problem::is_kubelet_owned;

/// The prefix of every taint key the detector owns.
pub const KEY_PREFIX: &str = "npd-ext.io/";
/// The label on every node the detector has quarantined (value `true`).
pub const QUARANTINE_LABEL: &str = "npd-ext.io/quarantined";
pub const DEFAULT_MAX_SHARE: Share = Share(1000);
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
pub const DEFAULT_JITTER: Duration = Duration::from_secs(2);

/// A share of the cluster's nodes, in basis points (1/100 of a percent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share(pub u32);

impl Share {
    /// Whether `count` quarantined nodes of `nodes` stay within this share.
    pub fn allows(self, count: u64, nodes: u64) -> bool {
        u128::from(count) * 10_000 <= u128::from(self.0) * u128::from(nodes)
    }

    /// The most nodes of `nodes` this share allows.
    pub fn of(self, nodes: u64) -> u64 {
        let most = u128::from(self.0) * u128::from(nodes) / 10_000;
        u64::try_from(most).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            let digits = format!("{frac:02}");
            write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Effect {
    pub const ALL: [Self; 3] = [Self::NoSchedule, Self::PreferNoSchedule, Self::NoExecute];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// One condition type's taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintRule {
    pub condition: String,
    pub key: String,
    pub value: Option<String>,
    pub effect: Effect,
    pub keep_on_unknown: bool,
}

impl TaintRule {
    /// `key=value:Effect`, as kubectl writes a taint.
    pub fn describe(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={v}:{}", self.key, self.effect.as_str()),
            None => format!("{}:{}", self.key, self.effect.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintPolicy {
    pub file: PathBuf,
    pub max_share: Share,
    pub max_count: Option<u64>,
    pub retry_after: Duration,
    pub jitter: Duration,
    pub taints: Vec<TaintRule>,
}

impl TaintPolicy {
    /// The rule for a condition type, if the policy has one.
    pub fn rule(&self, condition: &str) -> Option<&TaintRule> {
        self.taints.iter().find(|t| t.condition == condition)
    }

    /// The most nodes of `nodes` that may be quarantined at once.
    pub fn limit(&self, nodes: u64) -> u64 {
        let by_share = self.max_share.of(nodes);
        self.max_count.map_or(by_share, |c| c.min(by_share))
    }
}

/// Reads and checks a taint policy file (an unreadable file is a diagnostic).
pub fn check_file(path: &Path) -> Checked<TaintPolicy> {
    super::check_path(path, check)
}

/// Checks a taint policy and reads it.
pub fn check(file: &Path, text: &str) -> Checked<TaintPolicy> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<TaintPolicy> {
    let mut top = Obj::new(sink, doc, "")?;
    let mut policy = TaintPolicy {
        file: file.to_path_buf(),
        max_share: DEFAULT_MAX_SHARE,
        max_count: None,
        retry_after: DEFAULT_RETRY_AFTER,
        jitter: DEFAULT_JITTER,
        taints: Vec::new(),
    };
    if let Some(f) = top.get(sink, &["maxShare"])
        && let Some(s) = share(sink, &f)
    {
        policy.max_share = s;
    }
    if let Some(f) = top.get(sink, &["maxCount"])
        && let Some(n) = walk::unsigned(sink, &f)
    {
        if n == 0 {
            sink.error(
                f.node.pos,
                &f.key,
                "must be at least 1 (0 would refuse every quarantine; remove the policy instead)",
            );
        }
        policy.max_count = Some(n);
    }
    for (names, slot) in [
        (&["retryAfter"][..], &mut policy.retry_after),
        (&["jitter"][..], &mut policy.jitter),
    ] {
        if let Some(f) = top.get(sink, names)
            && let Some(d) = walk::duration(sink, &f)
        {
            if names == ["retryAfter"] && d.is_zero() {
                sink.error(f.node.pos, &f.key, "must be above 0");
            }
            *slot = d;
        }
    }
    let top_pos = top.pos;
    let mut rules = Vec::new();
    match top.get(sink, &["taints"]) {
        Some(f) => match &f.node.value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = read_rule(sink, item, &format!("{}[{i}]", f.key)) {
                        rules.push((item.pos, rule));
                    }
                }
                if items.is_empty() {
                    sink.error(
                        f.node.pos,
                        &f.key,
                        "lists no taints: this policy would do nothing",
                    );
                }
            }
            other => sink.error(
                f.node.pos,
                &f.key,
                format!("must be a list, found {}", other.kind()),
            ),
        },
        None => sink.error(top_pos, "taints", "required: the list of taints to apply"),
    }
    top.finish(sink);
    duplicates(sink, &rules);
    policy.taints = rules.into_iter().map(|(_, r)| r).collect();
    Some(policy)
}

/// `"10%"`, `"2.5%"`: above 0, at most 100, two decimals at most.
fn share(sink: &mut Sink, f: &walk::Found<'_>) -> Option<Share> {
    let text = walk::string(sink, f)?;
    let parsed = text.trim().strip_suffix('%').and_then(|n| {
        let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
        if whole.is_empty()
            || frac.len() > 2
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: u32 = whole.parse().ok()?;
        let frac: u32 = format!("{frac:0<2}").parse().ok()?;
        whole.checked_mul(100)?.checked_add(frac)
    });
    match parsed {
        Some(bp) if bp > 0 && bp <= 10_000 => Some(Share(bp)),
        Some(_) => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("{text:?} is out of range: above 0% and at most 100%"),
            );
            None
        }
        None => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("{text:?} is not a percentage such as \"10%\" or \"2.5%\""),
            );
            None
        }
    }
}

fn read_rule(sink: &mut Sink, node: &json::Node, path: &str) -> Option<TaintRule> {
    let mut obj = Obj::new(sink, node, path)?;
    let condition = match obj.get(sink, &["condition"]) {
        Some(f) => walk::string(sink, &f).and_then(|c| {
            if c.is_empty() {
                sink.error(f.node.pos, &f.key, "must not be empty");
                None
            } else if is_kubelet_owned(&c) {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("{c} is owned by the kubelet, which taints for it itself (node.kubernetes.io/…); npd-ext taints only for the condition types its monitors set"),
                );
                None
            } else {
                Some(c)
            }
        }),
        None => {
            sink.error(obj.pos, &walk::join(path, "condition"), "required");
            None
        }
    };
    let mut key = None;
    if let Some(f) = obj.get(sink, &["key"])
        && let Some(k) = walk::string(sink, &f)
    {
        match key_error(&k) {
            Some(why) => sink.error(f.node.pos, &f.key, why),
            None => key = Some(k),
        }
    }
    let mut value = None;
    if let Some(f) = obj.get(sink, &["value"])
        && let Some(v) = walk::string(sink, &f)
    {
        match label_value_error(&v) {
            Some(why) => sink.error(f.node.pos, &f.key, why),
            None => value = Some(v).filter(|v| !v.is_empty()),
        }
    }
    let mut effect = Some(Effect::NoSchedule);
    if let Some(f) = obj.get(sink, &["effect"])
        && let Some(e) = walk::string(sink, &f)
    {
        effect = Effect::parse(&e);
        if effect.is_none() {
            let known: Vec<&str> = Effect::ALL.iter().map(|e| e.as_str()).collect();
            sink.error(
                f.node.pos,
                &f.key,
                format!("unknown effect {e:?} (one of {})", known.join(", ")),
            );
        }
    }
    let mut keep_on_unknown = true;
    if let Some(f) = obj.get(sink, &["keepOnUnknown"])
        && let Some(b) = walk::boolean(sink, &f)
    {
        keep_on_unknown = b;
    }
    obj.finish(sink);
    let condition = condition?;
    let key = key.unwrap_or_else(|| default_key(&condition));
    if let Some(why) = key_error(&key) {
        sink.error(
            node.pos,
            &walk::join(path, "key"),
            format!("the default key {key:?} for {condition} is not valid: {why}; give a key"),
        );
        return None;
    }
    Some(TaintRule {
        condition,
        key,
        value,
        effect: effect?,
        keep_on_unknown,
    })
}

/// Two rules for one condition, or one taint (key and effect) twice; each
/// rule with the position of its object.
fn duplicates(sink: &mut Sink, rules: &[(json::Pos, TaintRule)]) {
    for (i, (pos, r)) in rules.iter().enumerate() {
        let before = &rules[..i];
        if let Some(first) = before.iter().position(|(_, p)| p.condition == r.condition) {
            sink.error(
                *pos,
                &format!("taints[{i}].condition"),
                format!(
                    "{} already has a taint (taints[{first}]); give each condition type one",
                    r.condition
                ),
            );
        } else if let Some(first) = before
            .iter()
            .position(|(_, p)| p.key == r.key && p.effect == r.effect)
        {
            sink.error(
                *pos,
                &format!("taints[{i}].key"),
                format!(
                    "taint {} is also taints[{first}]'s ({}): one taint cannot follow two conditions",
                    r.describe(),
                    before[first].1.condition
                ),
            );
        }
    }
}

/// `npd-ext.io/` + the type in kebab case, a run of capitals being one
/// word: `GPULost` → `gpu-lost`, `KernelDeadlock` → `kernel-deadlock`,
/// `GPUNVLinkDown` → `gpunv-link-down` (give a key to spell it otherwise).
pub fn default_key(condition: &str) -> String {
    let chars: Vec<char> = condition.chars().collect();
    let mut out = String::from(KEY_PREFIX);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('-');
            }
        }
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out
}

/// Why `key` cannot be one of the detector's taint keys (`None`: it can).
pub fn key_error(key: &str) -> Option<String> {
    let Some(name) = key.strip_prefix(KEY_PREFIX) else {
        return Some(format!(
            "{key:?} is not under {KEY_PREFIX}: the detector owns, and so may remove, only taints under its prefix"
        ));
    };
    qualified_name_error(name).map(|why| format!("{key:?}: {why}"))
}

/// The name part of a Kubernetes qualified name: 1–63 characters,
/// alphanumerics, `-`, `_` and `.`, beginning and ending alphanumeric.
fn qualified_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name after the prefix must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!(
            "the name after the prefix is {} characters; at most 63",
            name.len()
        ));
    }
    let ok_inner = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    (!ok_inner || !ends(name.bytes().next()) || !ends(name.bytes().last())).then(|| {
        "must consist of alphanumerics, '-', '_' or '.', and begin and end with an alphanumeric"
            .into()
    })
}

/// Why `v` cannot be a label (and taint) value: at most 63 characters, and
/// the qualified-name characters when not empty.
pub fn label_value_error(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some(format!("{} characters; at most 63", v.len()));
    }
    qualified_name_error(v).map(|why| format!("{v:?} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        check(Path::new("p.json"), text)
            .errors()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_the_interface_example() {
        let c = check(
            Path::new("p.json"),
            r#"{"maxShare": "10%", "maxCount": 50, "taints": [{"condition": "GPULost", "key": "npd-ext.io/gpu-lost", "effect": "NoSchedule"}]}"#,
        );
        let p = c.config.expect("valid");
        assert_eq!(p.max_share, Share(1000));
        assert_eq!(p.max_count, Some(50));
        assert_eq!(p.taints[0].describe(), "npd-ext.io/gpu-lost:NoSchedule");
        assert!(p.taints[0].keep_on_unknown);
        assert_eq!(p.limit(20), 2);
        assert_eq!(p.limit(1000), 50);
        assert!(Share(1000).allows(2, 20) && !Share(1000).allows(3, 20));
    }

    #[test]
    fn defaults_and_kebab_keys() {
        let p = check(
            Path::new("p.json"),
            r#"{"taints": [{"condition": "GPURebootRequired"}, {"condition": "KernelDeadlock", "effect": "NoExecute", "keepOnUnknown": false}]}"#,
        )
        .config
        .expect("valid");
        assert_eq!(p.max_share, DEFAULT_MAX_SHARE);
        assert_eq!(p.max_count, None);
        assert_eq!(p.taints[0].key, "npd-ext.io/gpu-reboot-required");
        assert_eq!(p.taints[0].effect, Effect::NoSchedule);
        assert_eq!(p.taints[1].key, "npd-ext.io/kernel-deadlock");
        assert_eq!(p.taints[1].effect, Effect::NoExecute);
        assert!(!p.taints[1].keep_on_unknown);
        assert_eq!(default_key("GPUNVLinkDown"), "npd-ext.io/gpunv-link-down");
        assert_eq!(default_key("GPULost"), "npd-ext.io/gpu-lost");
        assert_eq!(
            default_key("FrequentKubeletRestart"),
            "npd-ext.io/frequent-kubelet-restart"
        );
    }

    #[test]
    fn shares_as_operators_write_them() {
        for (text, bp) in [("10%", 1000), ("2.5%", 250), ("100%", 10_000), ("0.01%", 1)] {
            let p = check(
                Path::new("p.json"),
                &format!(r#"{{"maxShare": "{text}", "taints": [{{"condition": "A"}}]}}"#),
            );
            assert_eq!(p.config.expect(text).max_share, Share(bp), "{text}");
            assert_eq!(Share(bp).to_string(), text);
        }
        for bad in ["10", "0%", "101%", "1.234%", "-1%", "ten%"] {
            let e = errors(&format!(
                r#"{{"maxShare": "{bad}", "taints": [{{"condition": "A"}}]}}"#
            ));
            assert!(e.len() == 1 && e[0].contains("maxShare"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn says_what_is_wrong_and_where() {
        let e = errors(
            r#"{"maxCount": 0, "taints": [
  {"condition": "Ready"},
  {"condition": "GPULost", "key": "nvidia.com/gpu-lost"},
  {"condition": "GPULost", "effect": "NoEvict"},
  {"condition": "X", "key": "npd-ext.io/-bad", "value": "has space", "efect": "NoSchedule"}
]}"#,
        );
        let joined = e.join("\n");
        for want in [
            "p.json:1:14: error: maxCount: must be at least 1",
            "p.json:2:17: error: taints[0].condition: Ready is owned by the kubelet",
            "p.json:3:35: error: taints[1].key: \"nvidia.com/gpu-lost\" is not under npd-ext.io/",
            "p.json:4:38: error: taints[2].effect: unknown effect \"NoEvict\" (one of NoSchedule, PreferNoSchedule, NoExecute)",
            "p.json:5:29: error: taints[3].key: \"npd-ext.io/-bad\": must consist of alphanumerics",
            "taints[3].value: \"has space\" must consist",
            "p.json:5:70: error: taints[3].efect: unknown key (did you mean \"effect\"?)",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
        let e = errors(r#"{"taints": []}"#);
        assert!(e[0].contains("lists no taints"), "{e:?}");
        let e = errors(r#"{"maxShare": "5%"}"#);
        assert!(e[0].contains("taints: required"), "{e:?}");
        let e = errors(
            r#"{"taints": [{"condition": "A", "key": "npd-ext.io/x"}, {"condition": "A"}, {"condition": "B", "key": "npd-ext.io/x"}]}"#,
        );
        let joined = e.join("\n");
        assert!(
            joined.contains("taints[1].condition: A already has a taint (taints[0])"),
            "{joined}"
        );
        assert!(
            joined.contains("taints[2].key: taint npd-ext.io/x:NoSchedule is also taints[0]'s (A)"),
            "{joined}"
        );
    }
}

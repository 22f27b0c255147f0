//! The system log rule engine, with upstream NPD's semantics
//! (`pkg/systemlogmonitor/log_buffer.go`): a ring of `bufferSize` lines, each
//! pattern must match up to the end of the newest line (`\z` appended), and
//! the message is the lines from the one where the match starts through the
//! newest. Patterns are Go RE2: `\d \w \s` are ASCII-only, so they are
//! translated before compiling. Single-line patterns are tested together in
//! one `RegexSet` pass over the new line; the joined buffer is only built for
//! patterns that can span lines.

use std::collections::VecDeque;

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet};
use regex_syntax::hir::{Class, Hir, HirKind, Literal, Look};

use crate::config::goregex::go_compatible;
use crate::config::syslog::LogRule;

/// One rule that matched the newest line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Index of the rule in the config.
    pub rule: usize,
    /// The matched lines (from the match start through the newest), plus
    /// `"; " + patternGeneratedMessageSuffix` when the rule has one.
    pub message: String,
    /// How many lines back the match starts (0 = the newest line).
    pub lines_back: usize,
}

#[derive(Debug)]
pub struct RuleEngine {
    suffixes: Vec<Option<String>>,
    /// Patterns that cannot span lines, tested together on the newest line.
    single: RegexSet,
    /// Substrings of which a line must hold one for any single-line pattern
    /// to match (one literal each pattern must contain), found in one SIMD
    /// scan; `None` when some pattern has no such literal.
    prefilter: Option<Prefilter>,
    single_rules: Vec<usize>,
    /// Patterns that may span lines, tested on the joined buffer.
    multi: Vec<(usize, Regex)>,
    buffer: VecDeque<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("rule {index} ({reason}): invalid pattern")]
pub struct CompileError {
    pub index: usize,
    pub reason: String,
    #[source]
    pub source: regex::Error,
}

impl RuleEngine {
    pub fn new(rules: &[LogRule], buffer_size: usize) -> Result<Self, CompileError> {
        let mut single_patterns = Vec::new();
        let mut literals = Some(Vec::new());
        let mut single_rules = Vec::new();
        let mut multi = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let pattern = format!("(?:{})\\z", go_compatible(&rule.pattern));
            let compiled = Regex::new(&pattern).map_err(|source| CompileError {
                index,
                reason: rule.reason.clone(),
                source,
            })?;
            if single_line(&rule.pattern) {
                match (required_literal(&rule.pattern), &mut literals) {
                    (Some(l), Some(all)) => all.push(l),
                    _ => literals = None,
                }
                single_patterns.push(pattern);
                single_rules.push(index);
            } else {
                multi.push((index, compiled));
            }
        }
        let single = RegexSet::new(&single_patterns).map_err(|source| CompileError {
            index: single_rules.first().copied().unwrap_or_default(),
            reason: "(set)".into(),
            source,
        })?;
        let size = buffer_size.max(1);
        let prefilter = literals
            .filter(|l| !l.is_empty())
            .and_then(|l| Prefilter::new(&l));
        Ok(Self {
            prefilter,
            suffixes: rules.iter().map(|r| r.message_suffix.clone()).collect(),
            single,
            single_rules,
            multi,
            buffer: std::iter::repeat_n(String::new(), size).collect(),
        })
    }

    /// Pushes a line and returns every rule that matches now, in config order.
    pub fn push(&mut self, line: &str) -> Vec<Match> {
        // The slot that falls out of the ring takes the new line: no
        // allocation per line once the lines are as long as before. Only
        // patterns that may span lines read the ring.
        if !self.multi.is_empty() {
            let mut slot = self.buffer.pop_front().unwrap_or_default();
            slot.clear();
            slot.push_str(line);
            self.buffer.push_back(slot);
        }
        // Almost no line matches: one yes/no scan first (it stops early
        // where it can), the per-pattern answer only when something does.
        let candidate = self.prefilter.as_ref().is_none_or(|p| p.is_match(line));
        let mut out: Vec<Match> = if candidate && self.single.is_match(line) {
            self.single
                .matches(line)
                .into_iter()
                .map(|i| Match {
                    rule: self.single_rules[i],
                    message: line.to_owned(),
                    lines_back: 0,
                })
                .collect()
        } else {
            Vec::new()
        };
        if !self.multi.is_empty() {
            let joined = self
                .buffer
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n");
            for (rule, re) in &self.multi {
                if let Some(m) = re.find(&joined) {
                    // From the start of the line where the match begins.
                    let line_start = joined[..m.start()].rfind('\n').map_or(0, |i| i + 1);
                    let text = &joined[line_start..];
                    out.push(Match {
                        rule: *rule,
                        message: text.to_owned(),
                        lines_back: text.matches('\n').count(),
                    });
                }
            }
            out.sort_by_key(|m| m.rule);
        }
        for m in &mut out {
            if let Some(suffix) = &self.suffixes[m.rule] {
                m.message = format!("{}; {suffix}", m.message);
            }
        }
        out
    }
}

/// Tells a follower which lines of a read can matter to the rules, in one
/// scan over the whole read instead of one per line: a line that holds none
/// of the literals every rule needs can match no rule, and (no rule
/// spanning lines) is read by none.
#[derive(Debug)]
pub struct LineFilter(Prefilter);

impl LineFilter {
    /// `None` when a line without any literal could still matter: a rule
    /// that may span lines (it reads every line), a rule with no literal it
    /// must contain, or a literal holding U+FFFD (which a line's invalid
    /// UTF-8 becomes only once decoded).
    pub fn new(rules: &[LogRule]) -> Option<Self> {
        let literals = rules
            .iter()
            .map(|r| {
                single_line(&r.pattern)
                    .then(|| required_literal(&r.pattern))
                    .flatten()
                    .filter(|l| !l.windows(3).any(|w| w == "\u{fffd}".as_bytes()))
            })
            .collect::<Option<Vec<_>>>()?;
        if literals.is_empty() {
            return None;
        }
        Prefilter::new(&literals).map(Self)
    }

    /// Where the leftmost literal that starts at or after `from` starts.
    pub fn next_hit(&self, haystack: &[u8], from: usize) -> Option<usize> {
        self.0.find_from(haystack, from)
    }
}

/// Finds whether a line holds any of the required literals: Teddy (SIMD)
/// where the CPU has it, else an Aho-Corasick automaton.
#[derive(Debug)]
enum Prefilter {
    Packed(aho_corasick::packed::Searcher),
    Automaton(AhoCorasick),
}

impl Prefilter {
    fn new(literals: &[Vec<u8>]) -> Option<Self> {
        let packed = aho_corasick::packed::Config::new()
            .builder()
            .extend(literals)
            .build();
        match packed {
            Some(s) => Some(Self::Packed(s)),
            None => AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                .build(literals)
                .ok()
                .map(Self::Automaton),
        }
    }

    /// The start of the leftmost literal in `haystack[from..]`.
    fn find_from(&self, haystack: &[u8], from: usize) -> Option<usize> {
        let span = aho_corasick::Span {
            start: from.min(haystack.len()),
            end: haystack.len(),
        };
        match self {
            Self::Packed(s) => s.find_in(haystack, span),
            Self::Automaton(a) => a.find(aho_corasick::Input::new(haystack).span(span)),
        }
        .map(|m| m.start())
    }

    fn is_match(&self, line: &str) -> bool {
        match self {
            Self::Packed(s) => s.find(line).is_some(),
            Self::Automaton(a) => a.is_match(line),
        }
    }
}

/// The longest literal a match of `pattern` must contain: a literal piece
/// of its top-level concatenation (`None` for alternations, case-folded
/// text and the like, which the prefilter then cannot speak for).
fn required_literal(pattern: &str) -> Option<Vec<u8>> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(&go_compatible(pattern))
        .ok()?;
    let literal = |h: &Hir| match h.kind() {
        HirKind::Literal(Literal(bytes)) => Some(bytes.to_vec()),
        _ => None,
    };
    match hir.kind() {
        HirKind::Concat(parts) => parts.iter().filter_map(literal).max_by_key(Vec::len),
        _ => literal(&hir),
    }
    .filter(|l| !l.is_empty())
}

/// Whether a match of `pattern` provably lies within one line, so that
/// testing the newest line alone gives what the joined buffer gives: no
/// piece of it can match a newline, and it has no `^`/`\A` (which on the
/// buffer means the start of its oldest line). A pattern that does not
/// parse is left to the buffer, where compiling it reports the error.
fn single_line(pattern: &str) -> bool {
    fn within(h: &Hir) -> bool {
        match h.kind() {
            HirKind::Empty => true,
            HirKind::Literal(Literal(bytes)) => !bytes.contains(&b'\n'),
            HirKind::Class(Class::Unicode(c)) => !c
                .ranges()
                .iter()
                .any(|r| r.start() <= '\n' && '\n' <= r.end()),
            HirKind::Class(Class::Bytes(c)) => !c
                .ranges()
                .iter()
                .any(|r| r.start() <= b'\n' && b'\n' <= r.end()),
            HirKind::Look(look) => *look != Look::Start,
            HirKind::Repetition(r) => within(&r.sub),
            HirKind::Capture(c) => within(&c.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().all(within),
        }
    }
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(&go_compatible(pattern))
        .is_ok_and(|hir| within(&hir))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::syslog;

    /// The rules and buffer size of the kernel-monitor config `text` (read from `path`).
    fn kernel_monitor(path: &Path, text: &str) -> (Vec<LogRule>, usize) {
        let cfg = syslog::check(path, text)
            .config
            .unwrap_or_else(|| panic!("{}: kernel-monitor.json loads", path.display()));
        (cfg.rules, cfg.buffer_size)
    }

    /// The kernel-monitor.json entry of the ConfigMap we ship.
    fn shipped_kernel_monitor() -> (Vec<LogRule>, usize) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/npd-ext-config.yaml");
        let text = std::fs::read_to_string(&manifest).expect("the shipped ConfigMap");
        let entry = crate::config::configmap::entries(&text)
            .expect("the manifest parses")
            .into_iter()
            .find(|e| e.key == "kernel-monitor.json")
            .expect("a kernel-monitor.json entry");
        kernel_monitor(&manifest, &entry.text)
    }

    fn reasons(engine: &mut RuleEngine, rules: &[LogRule], line: &str) -> Vec<String> {
        engine
            .push(line)
            .iter()
            .map(|m| rules[m.rule].reason.clone())
            .collect()
    }

    type Cases = [(&'static str, &'static [&'static str])];

    /// Real kernel lines, and the reasons both our kernel monitor and
    /// upstream's stock one give each.
    const KERNEL_LINES: &Cases = &[
        // OOM kill, old kernels: two lines, the second matches.
        (
            "Out of memory: Kill process 1234 (java) score 987 or sacrifice child",
            &[],
        ),
        (
            "Killed process 1234 (java) total-vm:2345678kB, anon-rss:123456kB, file-rss:0kB",
            &["OOMKilling"],
        ),
        // OOM kill, kernels 5.x and later: one line with more fields.
        (
            "Out of memory: Killed process 4321 (python3) total-vm:9876543kB, anon-rss:8765432kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:17000kB oom_score_adj:0",
            &["OOMKilling"],
        ),
        (
            "INFO: task kworker/2:1:123 blocked for more than 120 seconds.",
            &["TaskHung"],
        ),
        (
            "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
            &["Ext4Error"],
        ),
        (
            "Buffer I/O error on dev nvme0n1, logical block 42, async page read",
            &["IOError"],
        ),
        (
            "BUG: unable to handle kernel NULL pointer dereference at 0000000000000008",
            &["KernelOops"],
        ),
        (
            "XFS (sdb1): Corruption of in-memory data detected.  Shutting down filesystem",
            &["XfsHasShutdown"],
        ),
        (
            "{1}[Hardware Error]: event severity: fatal",
            &["CperHardwareErrorFatal"],
        ),
        // Benign lines.
        (
            "EXT4-fs (sda1): mounted filesystem with ordered data mode. Opts: (null)",
            &[],
        ),
        ("Killed process 1234 (java)", &[]),
        (
            "{3}[Hardware Error]: event severity: fatal, but this line goes on",
            &[],
        ),
        (
            "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04",
            &[],
        ),
    ];

    /// Runs `cases` through `rules`, in order, on one engine.
    fn check_lines(rules: &[LogRule], size: usize, cases: &[&Cases]) {
        let mut e = RuleEngine::new(rules, size).expect("compiles");
        for (line, want) in cases.iter().copied().flatten() {
            assert_eq!(reasons(&mut e, rules, line), *want, "{line}");
        }
    }

    #[test]
    fn shipped_kernel_rules_on_real_lines() {
        let (rules, size) = shipped_kernel_monitor();
        let ours: &Cases = &[
            (
                "INFO: task umount.aufs:1234 blocked for more than 120 seconds.",
                &["TaskHung", "AUFSUmountHung"],
            ),
            (
                "BUG: unable to handle kernel paging request at ffffc90000a5e000",
                &["KernelOops"],
            ),
            (
                "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.",
                &["NvidiaXidFromKernelLog"],
            ),
            // An XID NVML reports itself: left to the gpu-monitor.
            (
                "NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, name=python3, Graphics Exception",
                &[],
            ),
        ];
        check_lines(&rules, size, &[KERNEL_LINES, ours]);
    }

    /// The prefilter on the kernel monitor's rules: one for each rule, and
    /// only ever a shortcut.
    fn prefilter_changes_no_answer(rules: &[LogRule], size: usize) {
        let with = RuleEngine::new(rules, size).expect("compiles");
        assert!(with.prefilter.is_some(), "every stock rule has a literal");
        assert_eq!(
            required_literal("task [\\S ]+:\\w+ blocked for more than \\w+ seconds\\.").as_deref(),
            Some(&b" blocked for more than "[..])
        );
        assert_eq!(required_literal("(?i)oops"), None);
        assert_eq!(required_literal("a|b"), None);
        // A literal that is only part of the pattern still finds the line.
        let mut changed = rules.to_vec();
        changed[0].pattern = "[Kk]illed [Pp]rocess \\d+".into();
        let mut e = RuleEngine::new(&changed, size).expect("compiles");
        assert!(e.prefilter.is_some());
        assert_eq!(e.push("killed Process 12").len(), 1);
        // A rule without any literal switches the prefilter off instead of
        // hiding its matches.
        changed[0].pattern = "[a-z]+[0-9]+".into();
        let mut e = RuleEngine::new(&changed, size).expect("compiles");
        assert!(e.prefilter.is_none());
        assert_eq!(e.push("abc123").len(), 1);
    }

    #[test]
    fn the_prefilter_knows_each_shipped_rule_and_changes_no_answer() {
        let (rules, size) = shipped_kernel_monitor();
        prefilter_changes_no_answer(&rules, size);
    }

    mod compat {
        use super::*;
        use crate::compat_dir::upstream;

        /// Upstream NPD's stock kernel-monitor.json.
        fn stock_kernel_monitor() -> (Vec<LogRule>, usize) {
            let path = upstream("npd-configs/kernel-monitor.json");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            kernel_monitor(&path, &text)
        }

        #[test]
        #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
        fn stock_kernel_rules_on_real_lines() {
            let (rules, size) = stock_kernel_monitor();
            let upstream_only: &Cases = &[
                (
                    "INFO: task docker:1234 blocked for more than 120 seconds.",
                    &["TaskHung", "DockerHung"],
                ),
                (
                    "{2}[Hardware Error]: event severity: corrected",
                    &["CperHardwareErrorCorrected"],
                ),
                (
                    "unregister_netdevice: waiting for eth0 to become free. Usage count = 1",
                    &["UnregisterNetDevice"],
                ),
            ];
            check_lines(&rules, size, &[KERNEL_LINES, upstream_only]);
        }

        #[test]
        #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
        fn the_prefilter_knows_each_stock_rule_and_changes_no_answer() {
            let (rules, size) = stock_kernel_monitor();
            prefilter_changes_no_answer(&rules, size);
        }
    }

    #[test]
    fn a_single_line_pattern_is_proved_from_its_syntax_tree() {
        for p in [
            "task \\S+:\\w+ blocked for more than \\w+ seconds\\.",
            "(?i)oops",
            ".*\\[Hardware Error\\]: event severity: fatal$",
            "a\\bb",
            "(?m)^x",
            "Killed process \\d+ (.+) total-vm:\\d+kB.*",
        ] {
            assert!(single_line(p), "{p} stays within a line");
        }
        for p in [
            "first\\nsecond",
            "a\\sb",
            "a\\Wb",
            "x\\Dy",
            "[^a]",
            "^start",
            "\\Astart",
            "(?s)a.b",
            "[\\t-\\r]",
            "\\x0a",
            "a\\p{Cc}b",
            "(unclosed",
        ] {
            assert!(!single_line(p), "{p} may span lines");
        }
        // `\W` matches the newline that joins the buffer's lines, as in
        // upstream NPD.
        let rules = vec![LogRule {
            kind: syslog::RuleKind::Temporary,
            condition: None,
            reason: "Split".into(),
            pattern: "foo\\Wbar".into(),
            message_suffix: None,
        }];
        let mut e = RuleEngine::new(&rules, 2).expect("compiles");
        assert!(e.push("foo").is_empty());
        let m = e.push("bar");
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].message.as_str(), m[0].lines_back), ("foo\nbar", 1));
    }

    #[test]
    fn the_line_filter_needs_a_literal_from_every_rule_and_no_rule_spanning_lines() {
        let (rules, _) = shipped_kernel_monitor();
        let filter = LineFilter::new(&rules).expect("every shipped rule has a literal");
        let text = b"a\nb Buffer I/O error on dev\nc\n";
        assert_eq!(filter.next_hit(text, 0), Some(4));
        assert_eq!(filter.next_hit(text, 5), None);
        assert_eq!(filter.next_hit(text, 99), None);
        let mut changed = rules.clone();
        changed[0].pattern = "first\\nsecond".into();
        assert!(LineFilter::new(&changed).is_none(), "a rule spans lines");
        changed[0].pattern = "[a-z]+[0-9]+".into();
        assert!(LineFilter::new(&changed).is_none(), "a rule has no literal");
        changed[0].pattern = "bad \u{fffd} byte".into();
        assert!(
            LineFilter::new(&changed).is_none(),
            "a literal holds U+FFFD"
        );
        assert!(LineFilter::new(&[]).is_none());
    }

    #[test]
    fn multi_line_patterns_match_the_end_of_the_buffer() {
        let rules = vec![LogRule {
            kind: syslog::RuleKind::Temporary,
            condition: None,
            reason: "Pair".into(),
            pattern: "first\\nsecond".into(),
            message_suffix: Some("see the runbook".into()),
        }];
        let mut e = RuleEngine::new(&rules, 3).expect("compiles");
        assert!(e.push("first").is_empty());
        let m = e.push("second");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].message, "first\nsecond; see the runbook");
        assert_eq!(m[0].lines_back, 1);
        assert!(
            e.push("third").is_empty(),
            "the match must end at the newest line"
        );
    }
}

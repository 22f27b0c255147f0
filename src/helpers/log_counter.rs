//! `log-counter`: how many journal entries of one `SYSLOG_IDENTIFIER`
//! matched `--pattern` (minus those that matched `--revert-pattern`)
//! between `max(boot + delay, now - lookback)` and now (NPD's
//! `cmd/logcounter`, `pkg/logcounter`).
//!
//! Matching is the system log monitor's: a 1000-line buffer, and a pattern
//! must match up to the end of the newest line (`\z`), so it may span lines.
//! Each line that matches the pattern adds one and each that matches the
//! revert pattern takes one away; the count may go below zero. An empty
//! revert pattern is no revert pattern.
//!
//! The journal is read with one `journalctl --output=json --all
//! --since=@S --until=@E SYSLOG_IDENTIFIER=SOURCE` run (no libsystemd;
//! `$NPD_EXT_JOURNALCTL` names another journalctl). Entries are placed by
//! journald's receive time, `__REALTIME_TIMESTAMP`, as upstream's sdjournal
//! reader places them, and the window is checked per entry as well.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::config::syslog::{LogRule, RuleKind};
use crate::monitor::syslog::journald;
use crate::monitor::syslog::rules::RuleEngine;

/// Upstream's log buffer size.
pub const BUFFER_LINES: usize = 1000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub source: String,
    /// The journal directory; empty: journalctl's default.
    pub log_path: String,
    pub lookback: Option<Duration>,
    pub delay: Option<Duration>,
    pub pattern: String,
    pub revert_pattern: String,
    pub count: i64,
}

/// Why no count could be made (exit 2, the text on stdout).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid pattern {pattern:?}: {why}")]
    Pattern { pattern: String, why: String },
    #[error("error watching journald: failed to filter journal log, empty source is not allowed")]
    EmptySource,
    #[error("error watching journald: failed to stat the log path {path:?}: {source}")]
    LogPath {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("error watching journald: cannot read the node's uptime from /proc/uptime")]
    Uptime,
    #[error("error watching journald: cannot run {program}")]
    Journalctl {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The pattern, then (if any) the revert pattern, as log rules.
fn engine(o: &Options) -> Result<RuleEngine, Error> {
    let rule = |reason: &str, pattern: &str| LogRule {
        kind: RuleKind::Temporary,
        condition: None,
        reason: reason.into(),
        pattern: pattern.into(),
        message_suffix: None,
    };
    let mut rules = vec![rule("pattern", &o.pattern)];
    if !o.revert_pattern.is_empty() {
        rules.push(rule("revert", &o.revert_pattern));
    }
    RuleEngine::new(&rules, BUFFER_LINES).map_err(|e| {
        let pattern = if e.index == 0 {
            &o.pattern
        } else {
            &o.revert_pattern
        };
        Error::Pattern {
            pattern: pattern.clone(),
            why: crate::config::goregex::describe(pattern, &e.source),
        }
    })
}

/// Where counting starts: `max(boot + delay, now - lookback)`; no lookback
/// means now (upstream's `GetStartTime`).
pub fn start_time(now: SystemTime, uptime: Duration, o: &Options) -> SystemTime {
    let boot = now - uptime;
    let after_boot = boot + o.delay.unwrap_or_default();
    let lookback = now - o.lookback.unwrap_or_default();
    after_boot.max(lookback)
}

/// Counts the matches from the journal; `uptime` is whole seconds since
/// boot, as upstream's `sysinfo` gives it.
pub fn count(o: &Options, now: SystemTime, uptime: Duration) -> Result<i64, Error> {
    let mut engine = engine(o)?;
    if o.source.is_empty() {
        return Err(Error::EmptySource);
    }
    if !o.log_path.is_empty()
        && let Err(source) = std::fs::metadata(&o.log_path)
    {
        return Err(Error::LogPath {
            path: o.log_path.clone(),
            source,
        });
    }
    let start = start_time(now, uptime, o);
    if start > now {
        // Still within --delay of boot (journalctl refuses since > until).
        return Ok(0);
    }
    let program = std::env::var_os("NPD_EXT_JOURNALCTL").unwrap_or_else(|| "journalctl".into());
    let mut cmd = Command::new(&program);
    cmd.args(["--no-pager", "--quiet", "--all", "--output=json"]);
    if !o.log_path.is_empty() {
        cmd.arg(format!("--directory={}", o.log_path));
    }
    cmd.arg(format!("--since={}", epoch(start)))
        .arg(format!("--until={}", epoch(now)))
        .arg(format!("SYSLOG_IDENTIFIER={}", o.source))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Journalctl {
        program: Path::new(&program).display().to_string(),
        source,
    })?;
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.by_ref().take(4096).read_to_string(&mut s);
            s
        })
    });
    let mut n = 0i64;
    if let Some(out) = child.stdout.take() {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Some((entry, _)) = journald::parse_entry(&line) else {
                continue;
            };
            if entry.at < start {
                continue;
            }
            if entry.at > now {
                break;
            }
            for m in engine.push(&entry.text) {
                n += if m.rule == 0 { 1 } else { -1 };
            }
        }
    }
    let _ = child.kill();
    let status = child.wait();
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    // Upstream counts what it read whatever the reader's end: a journalctl
    // that fails part-way is logged, not an error.
    if !matches!(&status, Ok(s) if s.success()) || !err.trim().is_empty() {
        tracing::warn!(status = ?status, "journalctl: {}", err.trim());
    }
    Ok(n)
}

/// `@SECONDS.MICROS`, journalctl's zone-free time.
fn epoch(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("@{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Seconds since boot, whole, from `/proc/uptime`.
pub fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs = crate::monitor::stats::procfs::uptime(&text)?;
    Some(Duration::from_secs(secs as u64))
}

/// The line upstream prints at or above the threshold.
pub fn found_line(n: i64, threshold: i64) -> String {
    format!("Found {n} matching logs, which meets the threshold of {threshold}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            source: "systemd".into(),
            count: 1,
            ..Options::default()
        }
    }

    #[test]
    fn the_window_starts_at_the_later_of_boot_plus_delay_and_lookback() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let up = Duration::from_secs(600);
        let mut o = opts();
        assert_eq!(
            start_time(now, up, &o),
            now,
            "no lookback: nothing before now"
        );
        o.lookback = Some(Duration::from_secs(1200));
        assert_eq!(start_time(now, up, &o), now - up, "never before boot");
        o.delay = Some(Duration::from_secs(300));
        assert_eq!(start_time(now, up, &o), now - Duration::from_secs(300));
        o.delay = Some(Duration::from_secs(900));
        assert!(start_time(now, up, &o) > now, "still within the delay");
    }

    #[test]
    fn patterns_are_checked_before_the_journal() {
        let mut o = opts();
        o.pattern = "Started (kubelet".into();
        match count(&o, SystemTime::now(), Duration::from_secs(1)) {
            Err(Error::Pattern { pattern, .. }) => assert_eq!(pattern, "Started (kubelet"),
            other => panic!("{other:?}"),
        }
        let mut o = opts();
        o.source.clear();
        assert_eq!(
            count(&o, SystemTime::now(), Duration::from_secs(1))
                .expect_err("empty source")
                .to_string(),
            "error watching journald: failed to filter journal log, empty source is not allowed"
        );
        let mut o = opts();
        o.log_path = "/nonexistent/journal".into();
        assert!(
            count(&o, SystemTime::now(), Duration::from_secs(1))
                .expect_err("missing path")
                .to_string()
                .starts_with(
                    "error watching journald: failed to stat the log path \"/nonexistent/journal\""
                )
        );
    }
}

//! The `journald` watcher, without linking libsystemd: a
//! `journalctl --output=json --follow` child, filtered on
//! `SYSLOG_IDENTIFIER=<pluginConfig.source>`, from the monitor's start time.
//! The journal is `logPath`, else `/run/log/journal` or `/var/log/journal`,
//! whichever exists. A child that exits is restarted at most every
//! [`RESTART_EVERY`](super::RESTART_EVERY) after the last entry's cursor, so
//! nothing is read twice or skipped. `$NPD_EXT_JOURNALCTL` names another
//! `journalctl` (tests, or a host binary mounted elsewhere).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BATCH, Batch, Feed, LogLine, RESTART_EVERY, pause};
use crate::config::syslog::SyslogMonitorConfig;

/// Where journald keeps the journal: volatile first, then persistent.
pub const DEFAULT_DIRS: [&str; 2] = ["/run/log/journal", "/var/log/journal"];

/// The journal directory to read, or why there is none.
pub fn journal_dir(log_path: Option<&str>) -> Result<PathBuf, String> {
    match log_path.filter(|p| !p.is_empty()) {
        Some(p) if Path::new(p).is_dir() => Ok(PathBuf::from(p)),
        Some(p) => Err(format!(
            "logPath {p} is not a directory (mount the host's journal there)"
        )),
        None => DEFAULT_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .ok_or_else(|| {
                format!(
                    "no journal at {} or {} (mount the host's journal, or set logPath)",
                    DEFAULT_DIRS[0], DEFAULT_DIRS[1]
                )
            }),
    }
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "MESSAGE")]
    message: Option<serde_json::Value>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<String>,
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
}

/// One `journalctl --output=json` line: the trimmed message, its time and
/// cursor. `MESSAGE` may be a string or, for non-UTF-8 text, an array of bytes.
pub fn parse_entry(json: &str) -> Option<(LogLine, Option<String>)> {
    let e: Entry = serde_json::from_str(json).ok()?;
    let text = match e.message? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    let usec: u64 = e.realtime?.parse().ok()?;
    Some((
        LogLine {
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(usec),
            text: text.trim().to_owned(),
        },
        e.cursor,
    ))
}

pub fn spawn(
    cfg: &SyslogMonitorConfig,
    start: SystemTime,
    tx: mpsc::Sender<Feed>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let identifier = cfg.plugin_config.get("source").cloned().unwrap_or_default();
    let log_path = cfg.log_path.clone();
    let program = std::env::var_os("NPD_EXT_JOURNALCTL").unwrap_or_else(|| "journalctl".into());
    let pid = Arc::new(AtomicI32::new(0));
    // The reading thread blocks on the child's output: stopping means
    // ending the child.
    let child_pid = pid.clone();
    let on_stop = stop.clone();
    tokio::spawn(async move {
        on_stop.cancelled().await;
        kill(child_pid.load(Ordering::Acquire));
    });
    std::thread::Builder::new()
        .name("journald-monitor".into())
        .spawn(move || {
            let mut cursor: Option<String> = None;
            let mut started: Option<Instant> = None;
            loop {
                if let Some(t) = started
                    && !pause(RESTART_EVERY.saturating_sub(t.elapsed()), &stop)
                {
                    return;
                }
                started = Some(Instant::now());
                let dir = match journal_dir(log_path.as_deref()) {
                    Ok(d) => d,
                    Err(why) => {
                        if tx.blocking_send(Feed::Down(why)).is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let mut cmd = Command::new(&program);
                cmd.args(["--output=json", "--follow", "--no-pager", "--quiet"])
                    .arg(format!("--directory={}", dir.display()));
                match &cursor {
                    Some(c) => cmd.arg(format!("--after-cursor={c}")),
                    None => {
                        let since = start
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default();
                        cmd.arg(format!(
                            "--since=@{}.{:06}",
                            since.as_secs(),
                            since.subsec_micros()
                        ))
                    }
                };
                cmd.arg(format!("SYSLOG_IDENTIFIER={identifier}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let why = format!(
                            "cannot run {} (plugin journald reads the journal with it): {e}",
                            Path::new(&program).display()
                        );
                        if tx.blocking_send(Feed::Down(why)).is_err() {
                            return;
                        }
                        continue;
                    }
                };
                pid.store(i32::try_from(child.id()).unwrap_or(0), Ordering::Release);
                if stop.is_cancelled() {
                    kill(pid.load(Ordering::Acquire));
                }
                if tx.blocking_send(Feed::Up).is_err() {
                    kill(pid.load(Ordering::Acquire));
                    return;
                }
                let mut batch = Batch::with_capacity(16);
                if let Some(stdout) = child.stdout.take() {
                    let mut reader = BufReader::new(stdout);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if let Some((l, c)) = parse_entry(&line) {
                            if c.is_some() {
                                cursor = c;
                            }
                            if !l.text.is_empty() {
                                batch.push(l.at, &l.text);
                            }
                        }
                        // Hand lines on as soon as nothing more is waiting.
                        if (batch.len() >= BATCH
                            || (reader.buffer().is_empty() && !batch.is_empty()))
                            && tx
                                .blocking_send(Feed::Lines(std::mem::take(&mut batch)))
                                .is_err()
                        {
                            kill(pid.load(Ordering::Acquire));
                            return;
                        }
                    }
                }
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.by_ref().take(4096).read_to_string(&mut err);
                }
                let status = child.wait();
                pid.store(0, Ordering::Release);
                if stop.is_cancelled() {
                    return;
                }
                let why = format!(
                    "{} exited ({}){}",
                    Path::new(&program).display(),
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    match err.trim() {
                        "" => String::new(),
                        e => format!(": {e}"),
                    }
                );
                if tx.blocking_send(Feed::Down(why)).is_err() {
                    return;
                }
            }
        })
        .map(drop)
}

fn kill(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_text_and_byte_messages() {
        let (l, c) = parse_entry(
            r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1764201600123456","SYSLOG_IDENTIFIER":"dockerd","MESSAGE":"  level=error msg=\"x\"  "}"#,
        )
        .expect("entry");
        assert_eq!(l.text, "level=error msg=\"x\"");
        assert_eq!(
            l.at,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_201_600_123_456)
        );
        assert_eq!(c.as_deref(), Some("s=1;i=2"));
        let (l, _) =
            parse_entry(r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":[104,105,255]}"#).expect("entry");
        assert_eq!(l.text, "hi\u{fffd}");
        assert!(parse_entry(r#"{"MESSAGE":null,"__REALTIME_TIMESTAMP":"1"}"#).is_none());
        assert!(parse_entry("not json").is_none());
    }

    #[test]
    fn journal_directory_is_named_when_missing() {
        let err = journal_dir(Some("/nonexistent/journal")).expect_err("missing");
        assert!(err.contains("/nonexistent/journal"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().to_string_lossy().into_owned();
        assert_eq!(journal_dir(Some(&p)), Ok(dir.path().to_path_buf()));
    }
}

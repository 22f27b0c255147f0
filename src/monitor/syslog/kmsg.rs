//! The `kmsg` watcher: `/dev/kmsg` (or the config's `logPath`, a file or FIFO
//! in the same format) read on a thread of its own. Record times are wall
//! times from the kernel's boot time. A reader that dies is reopened at
//! most every [`RESTART_EVERY`](super::RESTART_EVERY), from the newest
//! record, and the records in between are counted as a gap, not replayed.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BATCH, Batch, Feed, RESTART_EVERY, pause};
use crate::config::syslog::SyslogMonitorConfig;
use crate::kmsg::{Item, Reader, Start};

pub const DEFAULT_PATH: &str = "/dev/kmsg";

pub fn spawn(
    cfg: &SyslogMonitorConfig,
    boot: SystemTime,
    tx: mpsc::Sender<Feed>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let path = PathBuf::from(cfg.log_path.as_deref().unwrap_or(DEFAULT_PATH));
    std::thread::Builder::new()
        .name("kmsg-monitor".into())
        .spawn(move || watch(&path, boot, &tx, &stop, RESTART_EVERY))
        .map(drop)
}

fn watch(
    path: &std::path::Path,
    boot: SystemTime,
    tx: &mpsc::Sender<Feed>,
    stop: &CancellationToken,
    restart_every: std::time::Duration,
) {
    let mut start = Start::Oldest;
    let mut last_seq = None;
    let mut opened: Option<Instant> = None;
    let mut items = Vec::new();
    loop {
        if let Some(t) = opened
            && !pause(restart_every.saturating_sub(t.elapsed()), stop)
        {
            return;
        }
        opened = Some(Instant::now());
        let mut reader = match Reader::open(path, start) {
            Ok(r) => r.after(last_seq),
            Err(e) => {
                if tx
                    .blocking_send(Feed::Down(format!("cannot open {}: {e}", path.display())))
                    .is_err()
                {
                    return;
                }
                continue;
            }
        };
        if tx.blocking_send(Feed::Up).is_err() {
            return;
        }
        let why = loop {
            items.clear();
            match reader.read_into(&mut items, BATCH) {
                Ok(true) => {}
                Ok(false) => break format!("{} closed", path.display()),
                Err(e) => break format!("cannot read {}: {e}", path.display()),
            }
            if stop.is_cancelled() {
                return;
            }
            let mut lines = Batch::with_capacity(items.len());
            for item in items.drain(..) {
                match item {
                    Item::Record(r) => {
                        last_seq = Some(r.seq);
                        // NPD drops empty messages and trims the rest.
                        let text = r.text.trim();
                        if !text.is_empty() {
                            lines.push(r.wall_time(boot), text);
                        }
                    }
                    Item::Gap { lost, .. } => {
                        if !lines.is_empty()
                            && tx
                                .blocking_send(Feed::Lines(std::mem::take(&mut lines)))
                                .is_err()
                        {
                            return;
                        }
                        if tx.blocking_send(Feed::Gap(lost)).is_err() {
                            return;
                        }
                    }
                }
            }
            if !lines.is_empty() && tx.blocking_send(Feed::Lines(lines)).is_err() {
                return;
            }
        };
        if tx.blocking_send(Feed::Down(why)).is_err() {
            return;
        }
        start = Start::Newest;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn next(rx: &mut mpsc::Receiver<Feed>) -> Feed {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.try_recv() {
                Ok(f) => return f,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Err(e) => panic!("no feed from the watcher: {e}"),
            }
        }
    }

    fn lines(f: Feed) -> Vec<String> {
        match f {
            Feed::Lines(b) => b.iter().map(|(_, t)| t.to_owned()).collect(),
            other => panic!("expected lines, got {other:?}"),
        }
    }

    #[test]
    fn a_reader_that_dies_is_reopened_and_the_gap_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("kmsg");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let (path, s) = (fifo.clone(), stop.clone());
        let boot = SystemTime::UNIX_EPOCH;
        let watcher = std::thread::spawn(move || {
            watch(&path, boot, &tx, &s, Duration::from_millis(50));
        });
        // First writer: two records, then it goes away (the reader sees EOF).
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("writer");
        w.write_all(b"6,1,1000000,-;first\n6,2,2000000,-;  second  \n")
            .expect("write");
        drop(w);
        assert!(matches!(next(&mut rx), Feed::Up));
        let mut seen = lines(next(&mut rx));
        while seen.len() < 2 {
            seen.extend(lines(next(&mut rx)));
        }
        assert_eq!(seen, ["first", "second"]);
        assert!(matches!(next(&mut rx), Feed::Down(why) if why.contains("closed")));
        // Reopened: records 3 to 5 were lost meanwhile.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("writer");
        w.write_all(b"6,6,6000000,-;after the restart\n")
            .expect("write");
        assert!(matches!(next(&mut rx), Feed::Up));
        assert!(matches!(next(&mut rx), Feed::Gap(3)));
        let batch = match next(&mut rx) {
            Feed::Lines(b) => b,
            other => panic!("{other:?}"),
        };
        let (at, text) = batch.iter().next().expect("a line");
        assert_eq!(text, "after the restart");
        assert_eq!(at, SystemTime::UNIX_EPOCH + Duration::from_secs(6));
        stop.cancel();
        drop(w);
        watcher.join().expect("watcher ends");
    }
}

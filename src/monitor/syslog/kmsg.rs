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
        .spawn(move || watch(&path, boot, &tx, &stop))
        .map(drop)
}

fn watch(
    path: &std::path::Path,
    boot: SystemTime,
    tx: &mpsc::Sender<Feed>,
    stop: &CancellationToken,
) {
    let mut start = Start::Oldest;
    let mut last_seq = None;
    let mut opened: Option<Instant> = None;
    let mut items = Vec::new();
    loop {
        if let Some(t) = opened
            && !pause(RESTART_EVERY.saturating_sub(t.elapsed()), stop)
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

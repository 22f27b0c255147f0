//! Kernel-log XIDs: parses `/dev/kmsg` records (`prio,seq,usec,flag;text`)
//! for the NVIDIA driver's `NVRM: Xid` and fallen-off-the-bus lines, and
//! remembers `(boot_id, last seq)` under the state directory so a restart
//! neither re-reports nor misses a line. NVML alone misses XIDs 79, 119 and
//! 120; the kernel log has them all, with their text.
//!
//! Only the kernel speaks: records of any other facility (anyone with root
//! can write a "user" record to `/dev/kmsg`) are skipped. A fallen-off-the-bus
//! report whose line names no address takes the GPU an NVRM line named just
//! before it (the driver's three-line probe report names it on its first
//! line); one with no address anywhere still counts, for an unknown GPU.
//! The phrasings, with their sources: `tests/fixtures/kmsg/fallen-off-the-bus.kmsg`.
//!
//! `path` may also be a regular file or FIFO holding records in the same
//! format, one per line (tests and replays).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Observation;
use crate::kmsg;
use crate::liveness::Pulse;

mod lines;

pub use crate::kmsg::{Record, parse_record};
pub use lines::{KernelLine, PciAddr, Reports, parse_line, record_lines};

/// The kernel's syslog facility (`LOG_KERN`).
const FACILITY_KERNEL: u8 = 0;
/// The reader promises a beat within this (it beats at least every half).
const READER_BEAT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Position
// ---------------------------------------------------------------------------

/// The last record handled, per boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub boot_id: String,
    pub seq: Option<u64>,
}

const STATE_FILE: &str = "kmsg-position";

impl Position {
    /// The stored position if it is for this boot, else the start of the log.
    pub fn load(state_dir: Option<&Path>, boot_id: &str) -> Self {
        let stored = state_dir
            .and_then(|d| std::fs::read_to_string(d.join(STATE_FILE)).ok())
            .and_then(|text| {
                let (boot, seq) = text.trim().split_once(' ')?;
                Some((boot.to_owned(), seq.parse::<u64>().ok()?))
            });
        match stored {
            Some((boot, seq)) if boot == boot_id => Self {
                boot_id: boot,
                seq: Some(seq),
            },
            _ => Self {
                boot_id: boot_id.to_owned(),
                seq: None,
            },
        }
    }

    /// Writes atomically (temp file + rename).
    pub fn store(&self, state_dir: &Path) -> std::io::Result<()> {
        let Some(seq) = self.seq else { return Ok(()) };
        std::fs::create_dir_all(state_dir)?;
        let tmp = state_dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, format!("{} {seq}\n", self.boot_id))?;
        std::fs::rename(&tmp, state_dir.join(STATE_FILE))
    }

    fn seen(&self, seq: u64) -> bool {
        self.seq.is_some_and(|s| seq <= s)
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct KmsgOptions {
    pub path: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub boot_id: String,
}

/// Reads records until `token` is cancelled, sending what the driver said,
/// and beating `pulse` while it keeps up (not while the model takes nothing).
/// A log it cannot read (or that ends) is a degraded source, not a stalled
/// plugin: it says so once and goes on beating, so the liveness probe does
/// not restart gpu-monitor over a container without `CAP_SYSLOG`.
pub async fn run(
    options: KmsgOptions,
    tx: mpsc::Sender<Observation>,
    token: CancellationToken,
    pulse: Option<Pulse>,
) {
    let Some(why) = read(&options, &tx, &token, pulse.as_ref()).await else {
        return;
    };
    let Some(pulse) = pulse else { return };
    pulse.degrade(Some(why));
    let mut beat = tokio::time::interval(READER_BEAT / 2);
    loop {
        pulse.beat(READER_BEAT);
        tokio::select! {
            _ = beat.tick() => {}
            () = token.cancelled() => return,
        }
    }
}

/// The reading itself; `Some(why)` when it stopped before `token` was
/// cancelled.
async fn read(
    options: &KmsgOptions,
    tx: &mpsc::Sender<Observation>,
    token: &CancellationToken,
    pulse: Option<&Pulse>,
) -> Option<String> {
    // Opening (a FIFO blocks until a writer comes) and reading block: they
    // get a thread of their own, which ends with the process or at the first
    // record after the receiver is gone.
    let (rec_tx, mut rec_rx) = mpsc::channel::<Result<Record, String>>(1024);
    let path = options.path.clone();
    let spawned = std::thread::Builder::new()
        .name("kmsg".into())
        .spawn(move || read_records(&path, &rec_tx));
    if let Err(e) = spawned {
        tracing::error!("cannot start the kernel log reader: {e}");
        return Some(format!("cannot start the kernel log reader: {e}"));
    }
    let mut position = Position::load(options.state_dir.as_deref(), &options.boot_id);
    tracing::info!(path = %options.path.display(), after_seq = ?position.seq, "reading kernel log for XIDs");
    let mut unsaved = 0u32;
    let mut reports = Reports::default();
    let boot = kmsg::boot_time();
    let mut beat = tokio::time::interval(READER_BEAT / 2);
    let mut stopped = None;
    loop {
        if let Some(p) = pulse {
            p.beat(READER_BEAT);
        }
        let record = tokio::select! {
            r = rec_rx.recv() => match r {
                Some(r) => r,
                None => {
                    let reason = format!(
                        "{}: the kernel log stopped (read error or end of file; see the log); XIDs after it will be missed",
                        options.path.display()
                    );
                    stopped = Some(degraded(tx, reason).await);
                    break;
                }
            },
            _ = beat.tick() => continue,
            () = token.cancelled() => break,
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let reason = format!(
                    "cannot read {}: {e}; XIDs that NVML does not report (79, 119, 120) will be missed (the container needs CAP_SYSLOG and /dev/kmsg)",
                    options.path.display()
                );
                stopped = Some(degraded(tx, reason).await);
                break;
            }
        };
        // Records handled before a restart rebuild the state (a GPU that
        // needed a reset still does) but are not reported again.
        let replay = position.seen(record.seq);
        if !replay {
            position.seq = Some(record.seq);
            unsaved += 1;
        }
        let said = what_it_says(&record, replay, boot, &mut reports);
        if !replay && !said.is_empty() {
            tracing::warn!(seq = record.seq, "kernel: {}", record.text);
        }
        let sent = !said.is_empty();
        for obs in said {
            if tx.send(obs).await.is_err() {
                save(options, &position, &mut unsaved);
                return None;
            }
        }
        if sent || unsaved >= 1000 {
            save(options, &position, &mut unsaved);
        }
    }
    save(options, &position, &mut unsaved);
    stopped
}

/// Says why the kernel log is no longer read, to the log and the model.
async fn degraded(tx: &mpsc::Sender<Observation>, reason: String) -> String {
    tracing::error!("{reason}");
    let _ = tx
        .send(Observation::SourceDegraded {
            source: "kernel log".into(),
            reason: reason.clone(),
            at: SystemTime::now(),
        })
        .await;
    reason
}

/// What one record says. Only the kernel speaks: root in any container
/// may write a user-facility record carrying an XID line to /dev/kmsg.
fn what_it_says(
    record: &Record,
    replay: bool,
    boot: SystemTime,
    reports: &mut Reports,
) -> Vec<Observation> {
    if record.facility != FACILITY_KERNEL {
        if record.text.contains("NVRM: ") && !replay {
            tracing::warn!(
                seq = record.seq,
                facility = record.facility,
                "ignored an NVRM line not written by the kernel: {}",
                record.text
            );
        }
        return Vec::new();
    }
    // Replayed records keep their own time, so what they rebuild (repeat
    // counts, windows) is spaced as it happened.
    let at = if replay {
        record.wall_time(boot)
    } else {
        SystemTime::now()
    };
    record_lines(&record.text)
        .filter_map(|text| reports.line(text))
        .filter_map(|line| observation(line, at, replay))
        .collect()
}

/// The observation a kernel line makes (`None`: one that only names a GPU).
fn observation(line: KernelLine, at: SystemTime, replay: bool) -> Option<Observation> {
    Some(match line {
        KernelLine::Xid { pci, xid, detail } => Observation::KernelXid {
            pci,
            xid,
            detail,
            at,
            replay,
        },
        KernelLine::FellOffBus { pci: Some(pci) } => Observation::KernelXid {
            pci,
            xid: 79,
            detail: "GPU has fallen off the bus".into(),
            at,
            replay,
        },
        KernelLine::FellOffBus { pci: None } => Observation::KernelXidUnknownGpu {
            xid: 79,
            detail: "GPU has fallen off the bus (the report names no GPU)".into(),
            at,
            replay,
        },
        KernelLine::SXid {
            pci,
            sxid,
            fatal,
            detail,
        } => Observation::SXid {
            pci,
            sxid,
            fatal,
            detail,
            at,
            replay,
        },
        KernelLine::Names { .. } | KernelLine::GpuUuid { .. } => return None,
    })
}

fn save(options: &KmsgOptions, position: &Position, unsaved: &mut u32) {
    if let Some(dir) = &options.state_dir
        && *unsaved > 0
    {
        if let Err(e) = position.store(dir) {
            tracing::warn!(dir = %dir.display(), "cannot persist the kernel log position: {e}");
        }
        *unsaved = 0;
    }
}

/// The blocking read loop: whole records go on; gaps are logged (the XIDs
/// in them are lost, and the log says how many records were).
fn read_records(path: &Path, tx: &mpsc::Sender<Result<Record, String>>) {
    let mut reader = match kmsg::Reader::open(path, kmsg::Start::Oldest) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(e.to_string()));
            return;
        }
    };
    let mut items = Vec::new();
    loop {
        items.clear();
        match reader.read_into(&mut items, 256) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(path = %path.display(), "kernel log read failed: {e}");
                return;
            }
        }
        if items.is_empty() && tx.is_closed() {
            return;
        }
        for item in items.drain(..) {
            match item {
                kmsg::Item::Record(r) => {
                    if tx.blocking_send(Ok(r)).is_err() {
                        return;
                    }
                }
                kmsg::Item::Gap { lost, next_seq } => tracing::warn!(
                    lost,
                    next_seq,
                    "kernel log records were overwritten before they were read; XIDs among them are missed"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests;

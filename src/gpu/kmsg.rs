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

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Observation;
use crate::kmsg;
use crate::liveness::Pulse;

/// The kernel's syslog facility (`LOG_KERN`).
const FACILITY_KERNEL: u8 = 0;
/// An address an NVRM line names holds for a report without one within
/// this many lines after it.
const NAMED_FOR_LINES: u8 = 3;
/// The reader promises a beat within this (it beats at least every half).
const READER_BEAT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Records and lines
// ---------------------------------------------------------------------------

pub use crate::kmsg::{Record, parse_record};

/// A PCI address without the function: the kernel log usually omits it,
/// NVML writes an 8-digit domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddr {
    /// `00000000:61:00.0`, `0000:61:00`, `0000:61:00.0` or `61:00.0`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.split_once('.').map_or(s, |(a, _)| a);
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (u32::from_str_radix(d, 16).ok()?, *b, *v),
            [b, v] => (0, *b, *v),
            _ => return None,
        };
        Some(Self {
            domain,
            bus: u8::from_str_radix(bus, 16).ok()?,
            device: u8::from_str_radix(device, 16).ok()?,
        })
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// What an NVRM line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelLine {
    /// `NVRM: Xid (PCI:0000:61:00): 79, pid=…, name=…, <text>`
    Xid {
        pci: PciAddr,
        xid: u32,
        detail: String,
    },
    /// Any phrasing of "fallen off the bus" outside an XID line; `pci`
    /// when the line itself names the GPU.
    FellOffBus { pci: Option<PciAddr> },
    /// `NVRM: The NVIDIA GPU 0000:b3:00.0`: the first line of the driver's
    /// probe report, whose last line says "fallen off the bus".
    Names { pci: PciAddr },
    /// `NVRM: GPU at PCI:0000:61:00: GPU-<uuid>`: the driver names the GPU
    /// once per driver load, just before its first XID (kernel_rc.c,
    /// `_krcLogUuidOnce`). It only names the GPU for the lines after it: it
    /// is no evidence of a reset.
    GpuUuid { pci: PciAddr },
    /// `nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 46 <text>`
    SXid {
        pci: PciAddr,
        sxid: u32,
        fatal: bool,
        detail: String,
    },
}

/// Recognises the NVIDIA driver lines we act on; everything else is `None`.
pub fn parse_line(text: &str) -> Option<KernelLine> {
    if let Some(i) = text.find("SXid (PCI:")
        && text[..i].contains("nvswitch")
    {
        let rest = &text[i + "SXid (PCI:".len()..];
        let (addr, rest) = rest.split_once("):")?;
        let mut parts = rest.splitn(3, ',');
        let sxid = parts.next()?.trim().parse().ok()?;
        let severity = parts.next()?.trim();
        return Some(KernelLine::SXid {
            pci: PciAddr::parse(addr)?,
            sxid,
            fatal: severity.eq_ignore_ascii_case("fatal"),
            detail: parts.next().unwrap_or_default().trim().to_owned(),
        });
    }
    let nvrm = text.find("NVRM: ").map(|i| &text[i + 6..])?;
    if let Some(rest) = nvrm.strip_prefix("Xid (PCI:") {
        let (addr, rest) = rest.split_once("):")?;
        let rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let xid = rest[..digits].parse().ok()?;
        let detail = rest[digits..]
            .trim_start_matches([',', ' '])
            .trim()
            .to_owned();
        return Some(KernelLine::Xid {
            pci: PciAddr::parse(addr)?,
            xid,
            detail,
        });
    }
    if let Some(rest) = nvrm.strip_prefix("GPU at PCI:")
        && let Some((addr, uuid)) = rest.split_once(": ")
        && uuid.trim_start().starts_with("GPU-")
    {
        return Some(KernelLine::GpuUuid {
            pci: PciAddr::parse(addr)?,
        });
    }
    if nvrm.contains("fallen off the bus") {
        return Some(KernelLine::FellOffBus {
            pci: first_address(nvrm),
        });
    }
    if let Some(rest) = nvrm.strip_prefix("The NVIDIA GPU ") {
        return Some(KernelLine::Names {
            pci: first_address(rest)?,
        });
    }
    None
}

/// The first word shaped like a PCI address with a domain
/// (`0000:3b:00.0`, `PCI:0000:3b:00:`), as NVRM lines write them.
fn first_address(text: &str) -> Option<PciAddr> {
    text.split_whitespace().find_map(|word| {
        let word = word.trim_start_matches('(').trim_start_matches("PCI:");
        let word = word.trim_end_matches([':', '.', ',', ')']);
        (word.matches(':').count() == 2)
            .then(|| PciAddr::parse(word))
            .flatten()
    })
}

/// The lines of one record: inside `/dev/kmsg` the kernel escapes the
/// newlines of a multi-line message (the driver's probe report) as `\x0a`.
pub fn record_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split("\\x0a").flat_map(|l| l.split('\n'))
}

/// Joins what the driver says over several lines: a fallen-off-the-bus line
/// without an address takes the GPU an NVRM line named just before.
#[derive(Debug, Default)]
pub struct Reports {
    /// The GPU the last NVRM lines named, and for how many more lines.
    named: Option<(PciAddr, u8)>,
}

impl Reports {
    /// What one line says, with the address filled in where it can be.
    pub fn line(&mut self, text: &str) -> Option<KernelLine> {
        let line = parse_line(text);
        let named = self.named.take().filter(|(_, left)| *left > 0);
        let remember = |pci| Some((pci, NAMED_FOR_LINES));
        match &line {
            // Lines that introduce a GPU's report, or say it fell off: an
            // application XID names its GPU for nothing after it.
            Some(KernelLine::Names { pci })
            | Some(KernelLine::GpuUuid { pci })
            | Some(KernelLine::Xid { pci, xid: 79, .. })
            | Some(KernelLine::FellOffBus { pci: Some(pci) }) => {
                self.named = remember(*pci);
            }
            Some(KernelLine::Xid { .. }) => self.named = None,
            Some(KernelLine::FellOffBus { pci: None }) => {
                return Some(KernelLine::FellOffBus {
                    pci: named.map(|(pci, _)| pci),
                });
            }
            Some(KernelLine::SXid { .. }) | None => {
                self.named = named.map(|(pci, left)| (pci, left - 1));
            }
        }
        line
    }
}

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
                    tracing::error!("{reason}");
                    let _ = tx
                        .send(Observation::SourceDegraded {
                            source: "kernel log".into(),
                            reason: reason.clone(),
                            at: SystemTime::now(),
                        })
                        .await;
                    stopped = Some(reason);
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
                tracing::error!("{reason}");
                stopped = Some(reason.clone());
                let _ = tx
                    .send(Observation::SourceDegraded {
                        source: "kernel log".into(),
                        reason,
                        at: SystemTime::now(),
                    })
                    .await;
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
        // Only the kernel speaks: root in any container may write a
        // user-facility record carrying an XID line to /dev/kmsg.
        if record.facility != FACILITY_KERNEL {
            if record.text.contains("NVRM: ") && !replay {
                tracing::warn!(
                    seq = record.seq,
                    facility = record.facility,
                    "ignored an NVRM line not written by the kernel: {}",
                    record.text
                );
            }
            continue;
        }
        let mut sent = false;
        for text in record_lines(&record.text) {
            // Replayed records keep their own time, so what they rebuild
            // (repeat counts, windows) is spaced as it happened.
            let at = if replay {
                record.wall_time(boot)
            } else {
                SystemTime::now()
            };
            let Some(obs) = reports.line(text).and_then(|l| observation(l, at, replay)) else {
                continue;
            };
            if !replay && !sent {
                tracing::warn!(seq = record.seq, "kernel: {}", record.text);
            }
            sent = true;
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
mod tests {
    use std::time::Duration;

    use super::*;

    fn pci(s: &str) -> PciAddr {
        PciAddr::parse(s).expect("valid address")
    }

    #[test]
    fn pci_addresses_from_nvml_and_the_kernel_match() {
        assert_eq!(pci("00000000:61:00.0"), pci("0000:61:00"));
        assert_eq!(pci("0000:3b:00.0"), pci("3B:00.1"));
        assert_eq!(pci("0000:61:00").to_string(), "0000:61:00");
        assert!(PciAddr::parse("garbage").is_none());
    }

    #[test]
    fn xid_lines_with_and_without_pid_and_name() {
        let full =
            "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.";
        assert_eq!(
            parse_line(full),
            Some(KernelLine::Xid {
                pci: pci("0000:3b:00"),
                xid: 79,
                detail: "pid=1234, name=python3, GPU has fallen off the bus.".into()
            })
        );
        let bare = "NVRM: Xid (PCI:0000:61:00): 119, Timeout after 6s of waiting for RPC response from GPU1 GSP!";
        assert!(matches!(
            parse_line(bare),
            Some(KernelLine::Xid { xid: 119, .. })
        ));
        let unknown_pid = "NVRM: Xid (PCI:0000:61:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception";
        assert!(matches!(
            parse_line(unknown_pid),
            Some(KernelLine::Xid { xid: 13, .. })
        ));
        let recovery = "NVRM: Xid (PCI:0000:61:00): 154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)";
        let Some(KernelLine::Xid {
            xid: 154, detail, ..
        }) = parse_line(recovery)
        else {
            panic!("XID 154 not parsed")
        };
        assert!(detail.contains("Node Reboot Required"));
    }

    #[test]
    fn the_uuid_line_names_a_gpu_and_is_no_reset() {
        assert_eq!(
            parse_line("NVRM: GPU at PCI:0000:61:00: GPU-d17bcf75-059f-700d-b693-ce78e3a3d619"),
            Some(KernelLine::GpuUuid {
                pci: pci("0000:61:00")
            })
        );
        assert_eq!(
            parse_line("NVRM: GPU at PCI:0000:61:00: something else"),
            None
        );
    }

    #[test]
    fn nvswitch_sxid_lines() {
        let fatal = "nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 24007, Fatal, Link 33 sourcetrack timeout error";
        assert_eq!(
            parse_line(fatal),
            Some(KernelLine::SXid {
                pci: pci("0000:05:00"),
                sxid: 24007,
                fatal: true,
                detail: "Link 33 sourcetrack timeout error".into()
            })
        );
        let nonfatal = "nvidia-nvswitch0: SXid (PCI:0000:07:00.0): 12028, Non-fatal, Link 46 egress non-posted PRIV error";
        assert!(matches!(
            parse_line(nonfatal),
            Some(KernelLine::SXid {
                fatal: false,
                sxid: 12028,
                ..
            })
        ));
    }

    #[test]
    fn fallen_off_the_bus_lines_and_noise() {
        assert_eq!(
            parse_line("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus."),
            Some(KernelLine::FellOffBus {
                pci: Some(pci("0000:3b:00"))
            })
        );
        assert_eq!(
            parse_line(
                "NVRM: The NVIDIA GPU 0000:3b:00.0 (PCI ID: 10de:2335) installed in this system has fallen off the bus and is not responding to commands."
            ),
            Some(KernelLine::FellOffBus {
                pci: Some(pci("0000:3b:00"))
            })
        );
        for noise in [
            "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)",
            "NVRM: gpuClearFbhubPoisonIntrForBug2924523_GA100: FBHUB Interrupt detected. Clearing it.",
            "nvidia-nvlink: Nvlink Core is being initialized, major device number 240",
            "NVRM: Xid (PCI:0000:61:00): not-a-number",
        ] {
            assert_eq!(parse_line(noise), None, "{noise}");
        }
    }

    /// The cases of the phrasings fixture: name, expected address
    /// (`None`: unknown), and the record texts.
    fn phrasings() -> Vec<(String, Option<PciAddr>, Vec<String>)> {
        let text = include_str!("../../tests/fixtures/kmsg/fallen-off-the-bus.kmsg");
        let mut cases: Vec<(String, Option<PciAddr>, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("## case: ") {
                cases.push((name.to_owned(), None, Vec::new()));
            } else if let Some(addr) = line.strip_prefix("# expect: ") {
                let case = cases.last_mut().expect("expect inside a case");
                case.1 = PciAddr::parse(addr);
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let record = parse_record(line).expect("a kmsg record");
                let case = cases.last_mut().expect("records inside a case");
                case.2.push(record.text);
            }
        }
        cases
    }

    #[test]
    fn every_phrasing_of_fallen_off_the_bus_names_its_gpu_or_an_unknown_one() {
        let cases = phrasings();
        assert_eq!(cases.len(), 9, "the fixture's cases");
        for (name, expect, records) in cases {
            let mut reports = Reports::default();
            let lost: Vec<Option<PciAddr>> = records
                .iter()
                .flat_map(|r| record_lines(r).map(str::to_owned).collect::<Vec<_>>())
                .filter_map(|l| match reports.line(&l) {
                    Some(KernelLine::Xid { pci, xid: 79, .. }) => Some(Some(pci)),
                    Some(KernelLine::FellOffBus { pci }) => Some(pci),
                    _ => None,
                })
                .collect();
            assert!(!lost.is_empty(), "{name}: no fallen-off-the-bus report");
            assert!(
                lost.iter().all(|pci| *pci == expect),
                "{name}: reported for {lost:?}, expected {expect:?}"
            );
        }
    }

    #[test]
    fn an_application_xid_names_no_gpu_for_a_bare_report() {
        let mut reports = Reports::default();
        assert!(matches!(
            reports.line("NVRM: Xid (PCI:0000:61:00): 13, pid=9, name=train, Graphics Exception"),
            Some(KernelLine::Xid { xid: 13, .. })
        ));
        assert_eq!(
            reports.line("NVRM: GPU has fallen off the bus."),
            Some(KernelLine::FellOffBus { pci: None })
        );
    }

    #[test]
    fn an_address_named_long_before_is_not_taken() {
        let mut reports = Reports::default();
        assert!(reports.line("NVRM: GPU at PCI:0000:df:00: GPU-4").is_some());
        for _ in 0..NAMED_FOR_LINES {
            assert_eq!(reports.line("usb 1-1: new device"), None);
        }
        assert_eq!(
            reports.line("NVRM: GPU has fallen off the bus."),
            Some(KernelLine::FellOffBus { pci: None })
        );
    }

    /// The next XID that is news (replayed ones must come flagged).
    async fn next_xid(rx: &mut mpsc::Receiver<Observation>) -> (u32, PciAddr) {
        let (xid, pci, replay) = next_any(rx).await;
        assert!(!replay, "XID {xid} should be news");
        (xid, pci)
    }

    async fn next_any(rx: &mut mpsc::Receiver<Observation>) -> (u32, PciAddr, bool) {
        let obs = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an XID in time")
            .expect("reader alive");
        match obs {
            Observation::KernelXid {
                xid, pci, replay, ..
            } => (xid, pci, replay),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn append(path: &Path, lines: &[&str]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        for l in lines {
            writeln!(f, "{l}").expect("write");
        }
    }

    #[tokio::test]
    async fn a_restart_neither_repeats_nor_loses_an_xid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kmsg");
        let state = dir.path().join("state");
        append(
            &log,
            &[
                "6,1,100,-;NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04",
                "4,2,200,-;NVRM: Xid (PCI:0000:61:00): 79, pid=1, name=a, GPU has fallen off the bus.",
                "6,3,300,-;usb 1-1: new device",
            ],
        );
        let options = KmsgOptions {
            path: log.clone(),
            state_dir: Some(state.clone()),
            boot_id: "boot-1".into(),
        };
        let start = |options: KmsgOptions| {
            let (tx, rx) = mpsc::channel(16);
            let token = CancellationToken::new();
            (
                tokio::spawn(run(options, tx, token.clone(), None)),
                rx,
                token,
            )
        };

        let (task, mut rx, token) = start(options.clone());
        assert_eq!(
            next_xid(&mut rx).await,
            (79, PciAddr::parse("0000:61:00").expect("pci"))
        );
        token.cancel();
        task.await.expect("stops");

        // While the monitor was down, a new XID arrived.
        append(
            &log,
            &[
                "4,4,400,-;NVRM: Xid (PCI:0000:1b:00): 48, pid=2, name=b, DBE",
                "6,5,500,-;noise",
            ],
        );
        let (task, mut rx, token) = start(options.clone());
        assert_eq!(
            next_any(&mut rx).await,
            (79, PciAddr::parse("0000:61:00").expect("pci"), true),
            "79 is replayed as state, not reported again"
        );
        assert_eq!(
            next_xid(&mut rx).await,
            (48, PciAddr::parse("0000:1b:00").expect("pci")),
            "the XID missed while down is news"
        );
        append(
            &log,
            &["4,6,600,-;NVRM: GPU 0000:52:00.0: GPU has fallen off the bus."],
        );
        assert_eq!(
            next_xid(&mut rx).await.1,
            PciAddr::parse("0000:52:00").expect("pci"),
            "lines after the start are followed"
        );
        token.cancel();
        task.await.expect("stops");
        assert_eq!(Position::load(Some(&state), "boot-1").seq, Some(6));

        // A new boot: the log is new too, so everything in it counts.
        let (task, mut rx, token) = start(KmsgOptions {
            boot_id: "boot-2".into(),
            ..options
        });
        assert_eq!(next_xid(&mut rx).await.0, 79);
        token.cancel();
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn an_unreadable_log_is_reported_not_ignored() {
        let (tx, mut rx) = mpsc::channel(4);
        let options = KmsgOptions {
            path: PathBuf::from("/nonexistent/kmsg"),
            state_dir: None,
            boot_id: "b".into(),
        };
        run(options, tx, CancellationToken::new(), None).await;
        match rx.recv().await {
            Some(Observation::SourceDegraded { source, reason, .. }) => {
                assert_eq!(source, "kernel log");
                assert!(
                    reason.contains("/nonexistent/kmsg") && reason.contains("will be missed"),
                    "{reason}"
                );
            }
            other => panic!("expected SourceDegraded, got {other:?}"),
        }
    }

    /// The UUID line the driver prints before a GPU's first XID must not
    /// clear the fault NVML's event reported moments before (the kernel's
    /// XID is then the same report, and would not set it again).
    #[tokio::test]
    async fn the_uuid_line_before_an_xid_is_no_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kmsg");
        append(
            &log,
            &[
                "3,1,100,-;NVRM: GPU at PCI:0000:61:00: GPU-d17bcf75-059f-700d-b693-ce78e3a3d619",
                "3,2,101,-;NVRM: GPU Board Serial Number: 1653724065550",
                "3,3,102,-;NVRM: Xid (PCI:0000:61:00): 48, pid=9, name=train, DBE",
            ],
        );
        let (tx, mut rx) = mpsc::channel(16);
        let token = CancellationToken::new();
        let options = KmsgOptions {
            path: log,
            state_dir: None,
            boot_id: "b".into(),
        };
        let task = tokio::spawn(run(options, tx, token.clone(), None));
        let mut model = crate::gpu::health::HealthModel::new(crate::gpu::sim::identities(8));
        model.apply(&Observation::Xid {
            gpu: 3,
            xid: 48,
            at: SystemTime::now(),
        });
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("in time")
            .expect("an observation");
        assert!(
            matches!(first, Observation::KernelXid { xid: 48, .. }),
            "the UUID line is no observation: {first:?}"
        );
        model.apply(&first);
        let reset = model
            .conditions()
            .into_iter()
            .find(|c| c.type_ == crate::gpu::GPU_RESET_REQUIRED)
            .expect("present");
        assert_eq!(reset.status, crate::problem::ConditionStatus::True);
        token.cancel();
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn an_unreadable_log_degrades_the_reader_and_it_keeps_beating() {
        let (tx, mut rx) = mpsc::channel(4);
        let liveness = crate::liveness::Liveness::new();
        let pulse = liveness.register("kernel-log reader", Duration::from_secs(60));
        let options = KmsgOptions {
            path: PathBuf::from("/nonexistent/kmsg"),
            state_dir: None,
            boot_id: "b".into(),
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(run(options, tx, token.clone(), Some(pulse)));
        assert!(matches!(
            rx.recv().await,
            Some(Observation::SourceDegraded { .. })
        ));
        let start = std::time::Instant::now();
        while liveness.degraded().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "degraded in time"
            );
            tokio::task::yield_now().await;
        }
        assert!(liveness.stalled().is_empty(), "{:?}", liveness.stalled());
        assert!(
            liveness.degraded()[0].contains("/nonexistent/kmsg"),
            "{:?}",
            liveness.degraded()
        );
        assert!(!task.is_finished(), "a degraded reader goes on beating");
        token.cancel();
        task.await.expect("stops");
    }

    #[tokio::test]
    async fn reads_records_from_a_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("kmsg.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        // Opening a FIFO for reading blocks until a writer comes: write first.
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(writer_path)
                .expect("open fifo");
            writeln!(w, "4,7,700,-;NVRM: Xid (PCI:0000:9d:00): 119, Timeout after 6s of waiting for RPC response").expect("write");
        });
        let (tx, mut rx) = mpsc::channel(16);
        let token = CancellationToken::new();
        let options = KmsgOptions {
            path: fifo,
            state_dir: None,
            boot_id: "b".into(),
        };
        let task = tokio::spawn(run(options, tx, token.clone(), None));
        assert_eq!(
            next_xid(&mut rx).await,
            (119, PciAddr::parse("0000:9d:00").expect("pci"))
        );
        writer.join().expect("writer");
        token.cancel();
        task.await.expect("stops");
    }

    #[test]
    fn position_is_per_boot_and_atomic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Position {
            boot_id: "boot-a".into(),
            seq: Some(42),
        };
        p.store(dir.path()).expect("store");
        assert_eq!(Position::load(Some(dir.path()), "boot-a"), p);
        assert_eq!(
            Position::load(Some(dir.path()), "boot-b").seq,
            None,
            "a new boot starts over"
        );
        assert_eq!(Position::load(None, "boot-a").seq, None);
        assert!(!dir.path().join("kmsg-position.tmp").exists());
    }
}

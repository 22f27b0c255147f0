//! Tests of the kernel-log reader: parsing, the phrasings fixture, the
//! assembler, positions across restarts, and what the reader does when
//! the log cannot be read.

use std::time::Duration;

use super::lines::NAMED_FOR_LINES;
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
    // MIG-attributed lines (kernel_rc.c, XID_PRINT_WITH_ATTR) name the instance too.
    let mig = "NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:00): 31, pid=42, name=train, MMU Fault";
    assert!(matches!(
        parse_line(mig),
        Some(KernelLine::Xid { xid: 31, pci, .. }) if pci == PciAddr::parse("0000:3b:00").expect("pci")
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
    let text = include_str!("../../../tests/fixtures/kmsg/fallen-off-the-bus.kmsg");
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

//! GPU monitor benchmarks (numbers go to docs/performance.md):
//! - one fast sweep of 8 sim GPUs folded into the health model (what the
//!   monitor does every poll), CPU time per sweep;
//! - kernel-log parsing: records/s through the record and XID-line parsers.
//!
//! Run: `cargo bench --bench gpu`.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

use std::hint::black_box;
use std::time::{Duration, Instant};

use npd_ext::gpu::health::HealthModel;
use npd_ext::gpu::kmsg::{KernelLine, Reports, parse_line, parse_record, record_lines};
use npd_ext::gpu::sim::{self, Sim};

fn main() {
    sweep();
    kmsg();
}

fn sweep() {
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let sim = Sim::new(8, tx);
    let mut model = HealthModel::new(sim::identities(8));
    let n = 20_000u32;
    let mut per_sweep = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let start = Instant::now();
        let readings = sim.readings();
        if model.apply_all(&readings) {
            black_box(model.snapshot());
        }
        per_sweep.push(start.elapsed());
    }
    report(
        "fast sweep of 8 sim GPUs into the health model (8 GPUs × 11 readings + count)",
        &mut per_sweep,
    );
}

fn kmsg() {
    const NOISE: [&str; 6] = [
        "6,{seq},{us},-;usb 1-1: new high-speed USB device number 2 using xhci_hcd",
        "4,{seq},{us},-;EXT4-fs (nvme0n1p1): mounted filesystem with ordered data mode",
        "6,{seq},{us},-;IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
        "4,{seq},{us},c;NVRM: gpuClearFbhubPoisonIntrForBug2924523_GA100: FBHUB Interrupt detected. Clearing it.",
        "3,{seq},{us},-;NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build",
        "6,{seq},{us},-;audit: type=1400 audit(1700000000.123:42): apparmor=\"STATUS\" operation=\"profile_load\"",
    ];
    const XID: &str = "4,{seq},{us},-;NVRM: Xid (PCI:0000:61:00): 79, pid=1234, name=python3, GPU has fallen off the bus.";
    // One XID line in ten: far more than a real node, so the XID path is measured too.
    let lines: Vec<String> = (0..1_000_000u64)
        .map(|i| {
            let template = if i % 10 == 0 {
                XID
            } else {
                NOISE[(i % 6) as usize]
            };
            template
                .replace("{seq}", &i.to_string())
                .replace("{us}", &(i * 37).to_string())
        })
        .collect();
    let parse = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| parse_record(l).is_some_and(|r| parse_line(&r.text).is_some()))
            .count()
    };
    throughput("kernel-log parse (record + NVRM line)", &lines, parse);
    // What the reader does per record: the facility check, the record's
    // lines (multi-line messages), and the assembler that joins reports.
    let reader = |lines: &[String]| {
        let mut reports = Reports::default();
        lines
            .iter()
            .filter_map(|l| parse_record(l))
            .filter(|r| r.facility == 0)
            .map(|r| {
                record_lines(&r.text)
                    .filter(|t| matches!(reports.line(t), Some(KernelLine::Xid { .. })))
                    .count()
            })
            .sum()
    };
    throughput(
        "kernel-log reader path (facility, lines, reports)",
        &lines,
        reader,
    );
}

/// Best of five runs of `count` over `lines`, which must find the 100 000 XIDs.
fn throughput(what: &str, lines: &[String], count: impl Fn(&[String]) -> usize) {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(black_box(count(lines)), 100_000, "{what}: the XIDs");
        best = best.min(start.elapsed());
    }
    println!(
        "{what}: {} records in {best:?} (best of 5) = {:.2} M records/s",
        lines.len(),
        lines.len() as f64 / best.as_secs_f64() / 1e6,
    );
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

//! System stats monitor cost (numbers go to docs/performance.md).
//!
//! 1. CPU time of one collection (`Monitor::collect`, the thread's own CPU
//!    clock) with the config we ship (every upstream metric, net included),
//!    on this machine's real `/proc` and `/sys` and on the fixture node
//!    (tests/fixtures/stats-root: 2 CPUs, 6 disk lines, 2 filesystems,
//!    4 interfaces). lsblk runs on the first collection only (its answer is
//!    kept while `/sys/block` is unchanged), so that one is reported apart.
//! 2. The detector binary's RSS with the shipped kernel monitor, with and
//!    without the shipped stats monitor, after its first collection.
//!
//! Run: `cargo bench --bench stats`.
#![allow(clippy::expect_used, clippy::panic)] // bench code: a failed expectation is the bench failing

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use npd_ext::config::configmap;
use npd_ext::monitor::stats::Monitor;

#[path = "common/proc.rs"]
mod proc;

const BIN: &str = env!("CARGO_BIN_EXE_npd-ext");
const RUNS: usize = 2000;

fn shipped(key: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/npd-ext-config.yaml");
    let text = std::fs::read_to_string(path).expect("ConfigMap");
    configmap::entries(&text)
        .expect("parses")
        .into_iter()
        .find(|e| e.key == key)
        .expect("entry")
        .text
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn per_collection(root: &Path, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("system-stats-monitor.json");
    std::fs::write(
        dir.path().join("known-modules.json"),
        shipped("known-modules.json"),
    )
    .expect("known");
    let checked = npd_ext::config::stats::check(&cfg_path, &shipped("system-stats-monitor.json"));
    let cfg = checked.config.expect("the shipped config is valid");
    let mut m = Monitor::new(cfg, root).expect("monitor");
    let t0 = thread_cpu();
    let first = m.collect();
    let first_cpu = thread_cpu() - t0;
    let mut cpu = Vec::with_capacity(RUNS);
    let wall = Instant::now();
    let mut series = 0;
    for _ in 0..RUNS {
        let t = thread_cpu();
        series = m.collect().len();
        cpu.push(thread_cpu() - t);
    }
    let wall = wall.elapsed() / RUNS as u32;
    cpu.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{what}: {series} series per collection; CPU per collection p50 {:.0} µs, p99 {:.0} µs, mean {:.0} µs (wall {:.0} µs); first collection (with lsblk) {:.0} µs CPU in this thread; first had {} series",
        us(cpu[RUNS / 2]),
        us(cpu[RUNS * 99 / 100]),
        us(cpu.iter().sum::<Duration>() / RUNS as u32),
        us(wall),
        us(first_cpu),
        first.len()
    );
}

fn rss(with_stats: bool) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("kernel-monitor.json");
    std::fs::write(&kernel, shipped("kernel-monitor.json")).expect("kernel");
    let stats = dir.path().join("system-stats-monitor.json");
    std::fs::write(&stats, shipped("system-stats-monitor.json")).expect("stats");
    std::fs::write(
        dir.path().join("known-modules.json"),
        shipped("known-modules.json"),
    )
    .expect("known");
    let kmsg = dir.path().join("kmsg");
    std::fs::write(&kmsg, "").expect("kmsg");
    let port = proc::free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["detector", "--enable-k8s-exporter=false", "--port=0"])
        .arg(format!("--prometheus-port={port}"))
        .arg(format!("--kmsg-path={}", kmsg.display()))
        .arg(format!("--config.system-log-monitor={}", kernel.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if with_stats {
        cmd.arg(format!("--config.system-stats-monitor={}", stats.display()));
    }
    let mut child = cmd.spawn().expect("detector");
    let start = Instant::now();
    loop {
        let ready =
            proc::metrics_text(port).is_some_and(|t| !with_stats || t.contains("host_uptime"));
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "detector not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it settle, then read its resident set.
    std::thread::sleep(Duration::from_secs(2));
    let out = (
        proc::status_kib(child.id(), "VmRSS:"),
        proc::status_kib(child.id(), "VmHWM:"),
    );
    let _ = child.kill();
    let _ = child.wait();
    out
}

fn main() {
    per_collection(Path::new("/"), "this machine's /proc and /sys");
    per_collection(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats-root"),
        "fixture node",
    );
    let (rss_off, hwm_off) = rss(false);
    let (rss_on, hwm_on) = rss(true);
    println!(
        "detector RSS, kernel monitor only: {rss_off} KiB (peak {hwm_off} KiB); with the stats monitor: {rss_on} KiB (peak {hwm_on} KiB)"
    );
}

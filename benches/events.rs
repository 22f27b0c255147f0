//! The Kubernetes exporter under an event storm, and idle (numbers go to
//! docs/performance.md). The real `npd-ext detector` binary runs a filelog
//! kernel monitor with the Kubernetes exporter on, against the in-process
//! fake API server (tests/common/fake_api.rs, which validates every body as
//! the real kube-apiserver does).
//!
//! 1. Idle: CPU ticks and RSS of the detector over a quiet minute.
//! 2. Storm: 200 distinct OOM kills and a hung task, as one node of the
//!    100-node trial of issue 13 wrote them: Events created, event API
//!    requests, and the counts the cluster sees.
//! 3. Memory: 100 000 distinct OOM-kill messages within 10 minutes; RSS
//!    before and after, against the idle figure.
//!
//! Run: `cargo bench --bench events` (add `-- --quick` for a 20 s idle and
//! 10 000 messages).
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

// The fake server's own modules, side by side as in tests/common.
#[path = "../tests/common/api_rules.rs"]
mod api_rules;
#[path = "../tests/common/fake_api.rs"]
mod fake_api;
#[path = "../tests/common/fake_nodes.rs"]
mod fake_nodes;
#[path = "common/proc.rs"]
mod proc;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use proc::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_npd-ext");
const NODE: &str = "gpu-node-17";

fn config(log: &Path) -> String {
    format!(
        r#"{{"plugin": "filelog",
  "pluginConfig": {{"timestamp": "^.{{15}}", "message": "kernel: (.*)", "timestampFormat": "Jan _2 15:04:05"}},
  "logPath": "{}", "lookback": "5m", "bufferSize": 10, "source": "kernel-monitor",
  "conditions": [{{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}}],
  "rules": [
    {{"type": "temporary", "reason": "OOMKilling", "pattern": "Out of memory: Killed process \\d+ (.+) total-vm:\\d+kB.*"}},
    {{"type": "temporary", "reason": "TaskHung", "pattern": "task [\\S ]+:\\w+ blocked for more than \\w+ seconds\\."}},
    {{"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "task docker:\\w+ blocked for more than \\w+ seconds\\."}}
  ]}}"#,
        log.display()
    )
}

fn ticks(pid: u32) -> u64 {
    proc::cpu_ticks(pid)
}

fn rss_kib(pid: u32) -> u64 {
    proc::status_kib(pid, "VmRSS:")
}

fn metric(port: u16, series: &str) -> Option<f64> {
    proc::metrics_text(port)?
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

struct Detector {
    child: Child,
    metrics: u16,
}

impl Drop for Detector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn detector(api: &FakeApi, cfg: &Path) -> Detector {
    let metrics = free_port();
    let child = Command::new(BIN)
        .args(["detector", "--port", "0", "--hostname-override", NODE])
        .arg(format!("--prometheus-port={metrics}"))
        .arg(format!(
            "--apiserver-override={}?inClusterConfig=false",
            api.url()
        ))
        .arg("--config.system-log-monitor")
        .arg(cfg)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("detector starts");
    Detector { child, metrics }
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn append(log: &Path, lines: impl Iterator<Item = String>) {
    let stamp = jiff::ZonedDateTime::now()
        .strftime("%b %e %H:%M:%S")
        .to_string();
    let mut f = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .expect("log"),
    );
    for l in lines {
        writeln!(f, "{stamp} {NODE} kernel: {l}").expect("write");
    }
}

fn oom(i: usize) -> String {
    format!(
        "Out of memory: Killed process {} (worker-{i}) total-vm:{}kB, anon-rss:{}kB, file-rss:0kB, shmem-rss:0kB",
        100_000 + i,
        4_000_000 + i,
        3_000_000 + i
    )
}

fn event_requests(api: &FakeApi) -> usize {
    api.log()
        .iter()
        .filter(|l| l.path.contains("/events"))
        .count()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(quick));
}

async fn run(quick: bool) {
    let dir = std::env::temp_dir().join(format!("npd-ext-events-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("kern.log");
    std::fs::write(&log, "").expect("log");
    let cfg = dir.join("kernel-monitor.json");
    std::fs::write(&cfg, config(&log)).expect("config");
    let api = FakeApi::start().await;
    api.add_node(NODE);

    // 1. Idle, with the exporter connected, beside the same detector
    // without it (the difference is the exporter's).
    let d = detector(&api, &cfg);
    let pid = d.child.id();
    let bare = Detector {
        child: Command::new(BIN)
            .args([
                "detector",
                "--port",
                "0",
                "--prometheus-port",
                "0",
                "--enable-k8s-exporter=false",
            ])
            .arg("--config.system-log-monitor")
            .arg(&cfg)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("detector starts"),
        metrics: 0,
    };
    let bare_pid = bare.child.id();
    until(Duration::from_secs(30), "conditions on the Node", || {
        api.conditions(NODE).contains_key("KernelDeadlock")
    })
    .await;
    let idle = if quick { 20 } else { 60 };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (t0, b0, at) = (ticks(pid), ticks(bare_pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle - 10)).await;
    let hz = 100.0; // CLK_TCK on Linux
    let secs = at.elapsed().as_secs_f64();
    let (t1, b1) = (ticks(pid), ticks(bare_pid));
    let idle_rss = rss_kib(pid);
    println!(
        "idle over {secs:.0} s (filelog kernel monitor): with the Kubernetes exporter CPU {:.3} % of one core ({} ticks), RSS {:.1} MiB; without it CPU {:.3} % ({} ticks), RSS {:.1} MiB",
        (t1 - t0) as f64 / hz / secs * 100.0,
        t1 - t0,
        idle_rss as f64 / 1024.0,
        (b1 - b0) as f64 / hz / secs * 100.0,
        b1 - b0,
        rss_kib(bare_pid) as f64 / 1024.0
    );
    drop(bare);

    // 2. The storm of one node: 200 distinct OOM kills and a hung task.
    api.clear_log();
    let before = api.events().len();
    append(
        &log,
        (0..200)
            .map(oom)
            .chain(["INFO: task jbd2/sda1-8:412 blocked for more than 120 seconds.".to_owned()]),
    );
    let counted = |api: &FakeApi, reason: &str| -> i64 {
        api.events()
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
            .sum()
    };
    let t = Instant::now();
    until(Duration::from_secs(120), "200 OOM kills counted", || {
        counted(&api, "OOMKilling") == 200 && counted(&api, "TaskHung") == 1
    })
    .await;
    let settled = t.elapsed();
    let refused = api.log().iter().filter(|l| l.status >= 400).count();
    println!(
        "storm: 200 distinct OOM kills + 1 hung task: {} Events, {} event API requests, counts 200 + 1 on the cluster after {:.1} s; {refused} requests refused",
        api.events().len() - before,
        event_requests(&api),
        settled.as_secs_f64()
    );

    // 3. Memory under 100 000 distinct messages.
    let n = if quick { 10_000 } else { 100_000 };
    let rss0 = rss_kib(pid);
    let start = Instant::now();
    for chunk in 0..(n / 1000) {
        append(
            &log,
            (chunk * 1000..(chunk + 1) * 1000).map(|i| oom(1000 + i)),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let port = d.metrics;
    let series = r#"problem_counter{reason="OOMKilling"}"#;
    until(Duration::from_secs(600), "every line counted", || {
        metric(port, series).is_some_and(|v| v as usize >= 200 + n)
    })
    .await;
    let read = start.elapsed();
    let dropped = || {
        ["lagged", "expired", "evicted", "rejected"].map(|r| {
            metric(
                port,
                &format!(r#"npd_ext_events_dropped_total{{reason="{r}"}}"#),
            )
            .unwrap_or(0.0)
        })
    };
    // Honest counts: what the cluster sees and what was dropped add up.
    until(
        Duration::from_secs(150),
        "every occurrence accounted for",
        || counted(&api, "OOMKilling") as f64 + dropped().iter().sum::<f64>() >= (200 + n) as f64,
    )
    .await;
    let rss1 = rss_kib(pid);
    let dropped = dropped();
    let on_cluster = counted(&api, "OOMKilling");
    println!(
        "memory: {n} distinct messages read in {:.1} s; RSS idle {:.2} MiB, before {:.2} MiB, after {:.2} MiB ({:+.2} MiB over idle); Events {}; OOMKilling counted on the cluster {on_cluster}; dropped lagged/expired/evicted/rejected {:?}",
        read.as_secs_f64(),
        idle_rss as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        (rss1 as f64 - idle_rss as f64) / 1024.0,
        api.events().len(),
        dropped
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

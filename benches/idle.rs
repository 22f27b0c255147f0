//! A fleet of detectors against one fake API server: what each costs when
//! nothing happens, who wakes it, and how long a kernel fault written to a
//! node's log takes to reach its Node (numbers go to docs/performance.md).
//!
//! Each of `--nodes N` real `npd-ext detector` processes follows its own
//! kernel log with a filelog monitor and writes its own Node through the
//! Kubernetes exporter, against the in-process fake API server (tests/
//! common/fake_api.rs, which validates every body as kube-apiserver does),
//! every request answered after `--latency-ms` (a real server's round
//! trip).
//!
//! 1. Idle: over `--secs`, each detector's CPU (schedstat, ns, every
//!    thread), how often its threads were switched in (wakeups), by thread
//!    name, and its memory (`RssAnon`, `RssFile`).
//! 2. Fault to Node: a hung-task line appended to one node's log at a time;
//!    the time until the fake server holds `KernelDeadlock` True for that
//!    Node (polled every 1 ms in process), p50/p99/max over the nodes.
//!
//! 3. With `--gpu 1`, each detector also has the GPU monitor as an
//!    external monitor (examples/external-gpu-monitor.json: WatchHealth,
//!    health checks every 10 s), one in-process 8-GPU sim plugin each; the
//!    idle figures then include that connection, and a GPU fault (GPU 3 at
//!    95 °C, injected into one node's plugin at a time) is timed until the
//!    fake server holds `GPUThermalThrottling` True for that Node.
//!
//! Run: `cargo bench --bench idle -- [--nodes 20] [--secs 60] [--latency-ms 5] [--gpu 1]`
//! (`IDLE_BENCH_LOG=1` passes the detectors' error logs through).
#![allow(clippy::expect_used, clippy::panic)] // bench code: a failed expectation is the bench failing

#[path = "../tests/common/api_rules.rs"]
mod api_rules;
#[path = "../tests/common/fake_api.rs"]
mod fake_api;
#[path = "../tests/common/fake_nodes.rs"]
mod fake_nodes;
#[path = "common/plugin.rs"]
mod plugin;
#[path = "common/proc.rs"]
mod proc;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fake_api::{FakeApi, Fault};
use npd_ext::gpu::Observation;
use proc::Thread;

const BIN: &str = env!("CARGO_BIN_EXE_npd-ext");

/// Upstream NPD's kernel-monitor-filelog.json rules that matter here, in
/// its form (filelog, syslog timestamps).
fn config(log: &Path) -> String {
    format!(
        r#"{{"plugin": "filelog",
  "pluginConfig": {{"timestamp": "^.{{15}}", "message": "kernel: \\[.*\\] (.*)", "timestampFormat": "Jan _2 15:04:05"}},
  "logPath": "{}", "lookback": "5m", "bufferSize": 10, "source": "kernel-monitor",
  "conditions": [{{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}}],
  "rules": [
    {{"type": "temporary", "reason": "OOMKilling", "pattern": "Killed process \\d+ (.+) total-vm:\\d+kB, anon-rss:\\d+kB, file-rss:\\d+kB.*"}},
    {{"type": "temporary", "reason": "TaskHung", "pattern": "task [\\S ]+:\\w+ blocked for more than \\w+ seconds\\."}},
    {{"type": "permanent", "condition": "KernelDeadlock", "reason": "AUFSUmountHung", "pattern": "task umount\\.aufs:\\w+ blocked for more than \\w+ seconds\\."}},
    {{"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "task docker:\\w+ blocked for more than \\w+ seconds\\."}}
  ]}}"#,
        log.display()
    )
}

struct Detector {
    child: Child,
    node: String,
    log: PathBuf,
    /// The node's in-process GPU plugin, with `--gpu 1`.
    gpu: Option<Gpu>,
}

/// The plugin stops with its node.
struct Gpu(plugin::Served);

impl Drop for Gpu {
    fn drop(&mut self) {
        self.0.token.cancel();
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn detector(api: &FakeApi, dir: &Path, node: &str, with_gpu: bool) -> Detector {
    let log = dir.join(format!("{node}.log"));
    std::fs::write(&log, "").expect("log");
    let cfg = dir.join(format!("{node}.json"));
    std::fs::write(&cfg, config(&log)).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("detector");
    let gpu = with_gpu.then(|| {
        let socket = dir.join(format!("{node}.sock"));
        let shipped = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/external-gpu-monitor.json"
        );
        let text = std::fs::read_to_string(shipped)
            .expect("examples/external-gpu-monitor.json")
            .replace(
                "/var/run/npd/npd-gpu-monitor.sock",
                socket.to_str().expect("utf8"),
            );
        let ext = dir.join(format!("{node}-gpu.json"));
        std::fs::write(&ext, text).expect("external config");
        cmd.arg("--config.external-monitor").arg(&ext);
        Gpu(plugin::serve_sim(&socket))
    });
    let child = cmd
        .args(["--port", "0", "--prometheus-port", "0"])
        .args(["--hostname-override", node])
        .arg(format!(
            "--apiserver-override={}?inClusterConfig=false",
            api.url()
        ))
        .arg("--config.system-log-monitor")
        .arg(&cfg)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("IDLE_BENCH_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("detector starts");
    Detector {
        child,
        node: node.to_owned(),
        log,
        gpu,
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(
        arg("--nodes", 20),
        arg("--secs", 60),
        arg("--latency-ms", 5),
        arg("--gpu", 0) == 1,
    ));
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Per thread name: CPU ns and switches between two samples of one process.
fn delta(before: &[Thread], after: &[Thread]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for a in after {
        let (cpu0, sw0) = before
            .iter()
            .find(|b| b.tid == a.tid)
            .map_or((0, 0), |b| (b.cpu_ns, b.switches));
        let e = out.entry(a.name.clone()).or_default();
        e.0 += a.cpu_ns.saturating_sub(cpu0);
        e.1 += a.switches.saturating_sub(sw0);
    }
    out
}

fn report(what: &str, took: &mut [Duration]) {
    took.sort();
    println!(
        "{what}, {} nodes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        took.len(),
        percentile(took, 0.5).as_secs_f64() * 1e3,
        percentile(took, 0.99).as_secs_f64() * 1e3,
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(nodes: u64, secs: u64, latency_ms: u64, with_gpu: bool) {
    let dir = std::env::temp_dir().join(format!("npd-ext-idle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let api = FakeApi::start().await;
    api.fault(
        None,
        "/api",
        Fault::Delay(Duration::from_millis(latency_ms)),
        None,
    );
    let fleet: Vec<Detector> = (0..nodes)
        .map(|i| {
            let node = format!("gpu-node-{i:03}");
            api.add_node(&node);
            detector(&api, &dir, &node, with_gpu)
        })
        .collect();
    let want = if with_gpu {
        "GPUThermalThrottling"
    } else {
        "KernelDeadlock"
    };
    until(Duration::from_secs(60), "every Node's conditions", || {
        fleet.iter().all(|d| {
            let c = api.conditions(&d.node);
            c.contains_key("KernelDeadlock") && c.contains_key(want)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    // 1. Idle.
    let before: Vec<Vec<Thread>> = fleet.iter().map(|d| proc::threads(d.child.id())).collect();
    let at = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let minutes = at.elapsed().as_secs_f64() / 60.0;
    let after: Vec<Vec<Thread>> = fleet.iter().map(|d| proc::threads(d.child.id())).collect();
    let mut per_node_cpu = Vec::new();
    let mut per_node_wakeups = Vec::new();
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (b, a) in before.iter().zip(&after) {
        let d = delta(b, a);
        per_node_cpu.push(d.values().map(|v| v.0).sum::<u64>() as f64 / 1e6 / minutes);
        per_node_wakeups.push(d.values().map(|v| v.1).sum::<u64>() as f64 / minutes / 60.0);
        for (name, (cpu, sw)) in d {
            let e = by_name.entry(name).or_default();
            e.0 += cpu;
            e.1 += sw;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    // The mean moves with one detector's odd minute (a heartbeat PATCH in
    // the window); the median is the typical node.
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    let anon: Vec<f64> = fleet
        .iter()
        .map(|d| proc::status_kib(d.child.id(), "RssAnon:") as f64 / 1024.0)
        .collect();
    let file: Vec<f64> = fleet
        .iter()
        .map(|d| proc::status_kib(d.child.id(), "RssFile:") as f64 / 1024.0)
        .collect();
    let rss: Vec<f64> = fleet
        .iter()
        .map(|d| proc::status_kib(d.child.id(), "VmRSS:") as f64 / 1024.0)
        .collect();
    println!(
        "idle, {nodes} detectors (filelog kernel monitor{}, Kubernetes exporter on, API latency {latency_ms} ms), over {:.1} min:",
        if with_gpu {
            " and the GPU monitor over gRPC"
        } else {
            ""
        },
        minutes
    );
    println!(
        "  CPU per detector: mean {:.2} ms a minute, median {:.2}, max {:.2}",
        mean(&per_node_cpu),
        median(&per_node_cpu),
        max(&per_node_cpu)
    );
    println!(
        "  wakeups per detector: mean {:.1} a second, max {:.1}",
        mean(&per_node_wakeups),
        max(&per_node_wakeups)
    );
    println!(
        "  RSS per detector: mean {:.1} MiB (RssAnon {:.2} MiB, RssFile {:.1} MiB), max {:.1} MiB",
        mean(&rss),
        mean(&anon),
        mean(&file),
        max(&rss)
    );
    println!("  by thread, per detector: name, CPU ms a minute, wakeups a second");
    let n = nodes as f64;
    for (name, (cpu, sw)) in &by_name {
        println!(
            "    {name:<18} {:>8.3} {:>8.2}",
            *cpu as f64 / 1e6 / minutes / n,
            *sw as f64 / minutes / 60.0 / n
        );
    }

    // 2. Fault to Node, one node at a time.
    let mut took = Vec::new();
    for d in &fleet {
        let stamp = jiff::ZonedDateTime::now()
            .strftime("%b %e %H:%M:%S")
            .to_string();
        let line = format!(
            "{stamp} {} kernel: [12345.678901] INFO: task docker:7 blocked for more than 120 seconds.\n",
            d.node
        );
        let start = Instant::now();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&d.log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .expect("append");
        until(Duration::from_secs(30), "KernelDeadlock True", || {
            api.conditions(&d.node)
                .get("KernelDeadlock")
                .is_some_and(|c| c["status"] == "True")
        })
        .await;
        took.push(start.elapsed());
    }
    report(
        "fault to Node (hung task appended to the log → KernelDeadlock True on the fake server)",
        &mut took,
    );

    // 3. A GPU fault through WatchHealth, one node at a time.
    if with_gpu {
        let mut took = Vec::new();
        for d in &fleet {
            let gpu = d.gpu.as_ref().expect("a plugin");
            let start = Instant::now();
            let hot = Observation::Temperature {
                gpu: 3,
                celsius: 95,
                at: SystemTime::now(),
            };
            gpu.0.observations.send(hot).await.expect("inject");
            until(Duration::from_secs(30), "GPUThermalThrottling True", || {
                api.conditions(&d.node)
                    .get("GPUThermalThrottling")
                    .is_some_and(|c| c["status"] == "True")
            })
            .await;
            took.push(start.elapsed());
        }
        report(
            "GPU fault to Node (GPU 3 at 95 °C → GPUThermalThrottling True on the fake server, via WatchHealth)",
            &mut took,
        );
    }
    drop(fleet);
    let _ = std::fs::remove_dir_all(&dir);
}

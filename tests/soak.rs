//! The soak run (`scripts/soak.sh`, ignored by `cargo test`): the detector,
//! a simulated 8-GPU gpu-monitor under chaos, and the fake API server, for
//! `SOAK_SECS` seconds (default 600). Every minute the plugin is restarted;
//! in between come XID storms, thermal faults and resets. Every 10 s the
//! process's RSS, open file descriptors, threads and tokio tasks are
//! sampled. The run fails if any of them keeps growing, or if the Node does
//! not end with every GPU condition False once the chaos stops.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::fake_api::FakeApi;
use npd_ext::detector::{self, DetectorOptions};
use npd_ext::exporter::k8s::{self, K8sExporter, K8sOptions};
use npd_ext::gpu::{Observation, SUPPORTED_CONDITIONS};
use npd_ext::shutdown::Shutdown;

const NODE: &str = "soak-node";

/// One measure of a sample.
type Field = fn(&Sample) -> u64;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
}

fn sample(start: Instant) -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        at_s: start.elapsed().as_secs(),
        rss_kib: field("VmRSS:"),
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        threads: field("Threads:"),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak run of minutes: scripts/soak.sh"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let dir = common::tempdir();
    let socket = common::sock(&dir);
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let config = kube::Config::new(api.url().parse().expect("url"));
    let shutdown = Shutdown::new();
    let mut plugin = common::start_plugin(&socket, true);
    let d = detector::start(
        DetectorOptions {
            external: vec![common::monitor_config(&socket, &SUPPORTED_CONDITIONS)],
            http: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            k8s: Some(K8sExporter {
                client: k8s::client(config).expect("client"),
                options: K8sOptions {
                    node: NODE.into(),
                    update_conditions: true,
                    write_events: true,
                    heartbeat: Duration::from_secs(60),
                    wait_timeout: Duration::from_secs(60),
                    wait_interval: Duration::from_secs(1),
                    qps: 50.0,
                    burst: 100,
                    event_namespace: "default".into(),
                    taints: None,
                },
            }),
            node: NODE.into(),
            ..DetectorOptions::default()
        },
        &shutdown,
    )
    .expect("detector starts");
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = start;
    let mut next_restart = start + Duration::from_secs(60);
    let mut round = 0u32;
    let mut requests = 0usize;
    while start.elapsed() < Duration::from_secs(secs) {
        round += 1;
        let now = SystemTime::now();
        let gpu = round % 8;
        // Chaos: an XID storm on one GPU, heat on another, a reset of a third.
        let storm = (0..200).map(|_| Observation::Xid {
            gpu,
            xid: 13,
            at: now,
        });
        let faults = [
            Observation::Xid {
                gpu,
                xid: 79,
                at: now,
            },
            Observation::Temperature {
                gpu: (gpu + 1) % 8,
                celsius: 95,
                at: now,
            },
            Observation::Reset {
                gpu: (gpu + 2) % 8,
                at: now,
            },
        ];
        for o in storm.chain(faults) {
            let _ = plugin.observations.send(o).await;
        }
        if Instant::now() >= next_restart {
            // The plugin goes away and comes back with a clean slate.
            plugin.token.cancel();
            let _ = plugin.task.await;
            plugin = common::start_plugin(&socket, true);
            next_restart += Duration::from_secs(60);
            // The fake API server keeps every request; its memory is not ours.
            requests += api.log().len();
            api.clear_log();
        }
        if Instant::now() >= next_sample {
            let s = sample(start);
            eprintln!("soak {s:?}");
            samples.push(s);
            next_sample += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The chaos stops: a fresh plugin with nothing wrong.
    plugin.token.cancel();
    let _ = plugin.task.await;
    let plugin = common::start_plugin(&socket, true);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = api.conditions(NODE);
        let settled = SUPPORTED_CONDITIONS
            .iter()
            .all(|t| c.get(*t).is_some_and(|x| x["status"] == "False"));
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Node did not settle to all False: {c:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _) = common::http_get(d.http_addr.expect("http"), "/healthz").await;
    assert_eq!(code, 200);
    // Growth: the last samples against the early ones (after a minute of warm-up).
    let warm: Vec<Sample> = samples.iter().copied().filter(|s| s.at_s >= 60).collect();
    if warm.len() >= 6 {
        let early = &warm[..3];
        let late = &warm[warm.len() - 3..];
        let max = |v: &[Sample], f: Field| v.iter().map(f).max().unwrap_or(0);
        let checks: [(&str, Field, u64); 4] = [
            ("RSS KiB", |s| s.rss_kib, 4096),
            ("fds", |s| s.fds, 16),
            ("threads", |s| s.threads, 4),
            ("tasks", |s| s.tasks, 32),
        ];
        for (name, f, slack) in checks {
            let (a, b) = (max(early, f), max(late, f));
            eprintln!("soak {name}: early max {a}, late max {b}");
            assert!(b <= a + a / 4 + slack, "{name} grew from {a} to {b}");
        }
    }
    eprintln!(
        "soak passed: {secs} s, {} samples, {} API requests, {} Events",
        samples.len(),
        requests + api.log().len(),
        api.events().len()
    );
    drop(plugin);
    shutdown.token().cancel();
}

//! Benchmarks for the walking skeleton (numbers go to docs/performance.md):
//! - CheckHealth round trip over the Unix socket, 8-GPU sim plugin;
//! - fault injected → condition visible on `/conditions`, via WatchHealth.
//!
//! Run: `cargo bench --bench skeleton` (add `-- --quick` for a short run).
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

#[path = "common/plugin.rs"]
mod plugin;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use npd_ext::config::ExternalMonitorConfig;
use npd_ext::detector::{self, DetectorOptions};
use npd_ext::gpu::{Observation, SUPPORTED_CONDITIONS};
use npd_ext::rpc::client::lazy_channel;
use npd_ext::rpc::pb::HealthCheckRequest;
use npd_ext::rpc::pb::external_monitor_client::ExternalMonitorClient;
use npd_ext::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("npd-ext-bench-{}", std::process::id()));
        let socket = dir.join("gpu.sock");
        let plugin::Served {
            observations,
            token,
            task: served,
        } = plugin::serve_sim(&socket);

        check_health_round_trip(&socket, if quick { 2_000 } else { 20_000 }).await;
        fault_to_conditions(&socket, &observations, if quick { 50 } else { 500 }).await;

        token.cancel();
        let _ = served.await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn check_health_round_trip(socket: &std::path::Path, n: usize) {
    let mut client = ExternalMonitorClient::new(lazy_channel(socket));
    let mut samples = Vec::with_capacity(n);
    for i in 0..(n + n / 10) {
        let start = Instant::now();
        let status = client
            .check_health(HealthCheckRequest::default())
            .await
            .expect("CheckHealth")
            .into_inner();
        let took = start.elapsed();
        assert_eq!(status.conditions.len(), SUPPORTED_CONDITIONS.len());
        if i >= n / 10 {
            samples.push(took); // the first 10% warm up the connection
        }
    }
    report(
        "CheckHealth round trip (Unix socket, 8-GPU sim)",
        &mut samples,
    );
}

async fn fault_to_conditions(
    socket: &std::path::Path,
    observations: &tokio::sync::mpsc::Sender<Observation>,
    n: usize,
) {
    let shutdown = Shutdown::new();
    let cfg =
        ExternalMonitorConfig::new("gpu-monitor", socket).with_conditions(&SUPPORTED_CONDITIONS);
    let detector = detector::start(
        DetectorOptions {
            external: vec![cfg],
            http: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            log_exporter: false,
            ..DetectorOptions::default()
        },
        &shutdown,
    )
    .expect("detector");
    let addr = detector.http_addr.expect("http");
    wait_for(addr, "GPUThermalThrottling", false).await;
    let mut samples = Vec::with_capacity(n);
    // Thermal throttling, not GPULost: a GPU lost and back 500 times would
    // (rightly) trip the flap guard, which holds the condition True.
    for i in 0..n {
        let gpu = (i % 8) as u32;
        let start = Instant::now();
        let hot = Observation::Temperature {
            gpu,
            celsius: 95,
            at: SystemTime::now(),
        };
        observations.send(hot).await.expect("inject");
        wait_for(addr, "GPUThermalThrottling", true).await;
        samples.push(start.elapsed());
        let cool = Observation::Temperature {
            gpu,
            celsius: 40,
            at: SystemTime::now(),
        };
        observations.send(cool).await.expect("inject");
        wait_for(addr, "GPUThermalThrottling", false).await;
    }
    report(
        "fault injected -> GPUThermalThrottling True on /conditions (WatchHealth)",
        &mut samples,
    );
    shutdown.drain(Duration::from_secs(2)).await;
}

/// Polls `/conditions` over HTTP until `condition` has the wanted status.
async fn wait_for(addr: SocketAddr, condition: &str, problem: bool) {
    let want = if problem { "True" } else { "False" };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = get(addr, "/conditions").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let hit = v
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == condition && c["status"] == want);
        if hit {
            return;
        }
        assert!(Instant::now() < deadline, "{condition} never became {want}");
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

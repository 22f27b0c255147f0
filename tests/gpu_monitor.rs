//! gpu-monitor as operators run it: beside a liveness probe, beside another
//! gpu-monitor, through a driver that hangs for many watchdog periods, and
//! reading a kernel log where not only the kernel writes. The real binary
//! where a process boundary matters; the in-process plugin where a test
//! needs to hold a backend's hand.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::bin::{BIN, npd, stop, wait_exit, wait_until};
use common::{GPUS, sock, tempdir};
use npd_ext::gpu::plugin::{Plugin, PluginOptions};
use npd_ext::gpu::sim::{self, Fault, Scenario, Sim, SimOptions};
use npd_ext::gpu::{GPU_LOST, GPU_REBOOT_REQUIRED, GPU_UNRESPONSIVE};
use npd_ext::liveness::Liveness;
use npd_ext::rpc::pb;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;

/// `npd-ext probe --json`: its exit code and report.
fn probe(socket: &Path) -> (i32, Value) {
    let (code, out, _) = npd(&["probe", "--json", socket.to_str().expect("utf8")]);
    (code, serde_json::from_str(&out).unwrap_or_default())
}

fn condition<'a>(report: &'a Value, t: &str) -> Option<&'a Value> {
    report["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

fn is_true(report: &Value, t: &str) -> bool {
    condition(report, t).is_some_and(|c| c["status"] == "True")
}

fn message(report: &Value, t: &str) -> String {
    condition(report, t)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn gpu_monitor(socket: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["gpu-monitor", "--backend", "sim", "--state-dir"])
        .arg(socket.with_extension("state"))
        .args(extra)
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpu-monitor")
}

fn threads(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Threads: line")
}

// ---------------------------------------------------------------------------
// 1. A probe never eats a poller's events
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_probe_beside_a_poller_takes_none_of_its_events() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = common::start_plugin(&socket, false);
    let sim = Sim::new(GPUS, plugin.observations.clone());

    // A detector that polls (the Go proof of concept has no WatchHealth):
    // one connection, kept.
    let channel = npd_ext::rpc::client::lazy_channel(&socket);
    let mut poller = pb::external_monitor_client::ExternalMonitorClient::new(channel);
    let poll = |mut c: pb::external_monitor_client::ExternalMonitorClient<_>| async move {
        let s = c
            .check_health(pb::HealthCheckRequest::default())
            .await
            .expect("CheckHealth")
            .into_inner();
        (c, s)
    };
    let (p, first) = poll(poller).await;
    poller = p;
    assert!(!first.conditions.is_empty());

    // The shipped exec liveness probe, five times a second.
    let probes = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (probes, done, socket) = (Arc::clone(&probes), Arc::clone(&done), socket.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let (code, _) = probe(&socket);
                assert_eq!(code, 0, "the probe passes");
                probes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    sim.inject(1, &Fault::Xid(48)).await;
    let after_event = probes.load(Ordering::Relaxed);
    let start = Instant::now();
    while probes.load(Ordering::Relaxed) < after_event + 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "probes run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, status) = poll(poller).await;
    done.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    let xids: Vec<&pb::Event> = status
        .events
        .iter()
        .filter(|e| e.message.contains("XID 48"))
        .collect();
    assert_eq!(
        xids.len(),
        1,
        "the poller gets the XID 48 event although {} probes ran after it: {:?}",
        probes.load(Ordering::Relaxed) - after_event,
        status.events
    );
    plugin.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_has_its_own_cursor_and_a_slow_one_hears_what_it_missed() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = common::start_plugin(&socket, false);
    let client = || {
        pb::external_monitor_client::ExternalMonitorClient::new(npd_ext::rpc::client::lazy_channel(
            &socket,
        ))
    };
    let (mut slow, mut quick) = (client(), client());
    let poll = |c: &mut pb::external_monitor_client::ExternalMonitorClient<_>| {
        let mut c = c.clone();
        async move {
            c.check_health(pb::HealthCheckRequest::default())
                .await
                .expect("CheckHealth")
                .into_inner()
                .events
        }
    };
    assert!(poll(&mut slow).await.is_empty());
    // 70 distinct events: 6 more than the backlog holds.
    let now = std::time::SystemTime::now();
    for xid in 1000..1070 {
        plugin
            .observations
            .send(npd_ext::gpu::Observation::Xid {
                gpu: 0,
                xid,
                at: now,
            })
            .await
            .expect("model takes it");
    }
    // Each look from a connection of its own, so no cursor but slow's moves.
    let start = Instant::now();
    while !poll(&mut client())
        .await
        .iter()
        .any(|e| e.message.contains("XID 1069"))
    {
        assert!(start.elapsed() < Duration::from_secs(10), "all applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = poll(&mut quick).await;
    assert_eq!(
        seen.len(),
        64,
        "a new client gets the backlog of the last minute"
    );
    assert!(
        seen.iter()
            .all(|e| e.reason != npd_ext::gpu::plugin::REASON_EVENTS_DROPPED),
        "and nothing is owed it from before"
    );
    let events = poll(&mut slow).await;
    assert_eq!(events.len(), 65, "the drop notice and the 64 kept");
    assert_eq!(
        events[0].reason,
        npd_ext::gpu::plugin::REASON_EVENTS_DROPPED
    );
    assert!(
        events[0]
            .message
            .starts_with("6 GPU events fell out of gpu-monitor's 64-event backlog"),
        "{}",
        events[0].message
    );
    assert!(
        events[1].message.contains("XID 1006"),
        "{}",
        events[1].message
    );
    assert!(poll(&mut slow).await.is_empty(), "nothing twice");
    assert!(poll(&mut quick).await.is_empty(), "nothing twice");
    plugin.token.cancel();
}

// ---------------------------------------------------------------------------
// 2. gRPC health says whether the plugin works, not whether the GPU does
// ---------------------------------------------------------------------------

async fn health(socket: &Path) -> Option<ServingStatus> {
    let channel = npd_ext::rpc::client::lazy_channel(socket);
    npd_ext::rpc::client::health_check(channel, "", Duration::from_secs(2))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_serving_while_nvml_hangs_and_fails_when_a_backend_stops() {
    let dir = tempdir();
    let socket = sock(&dir);
    let liveness = Liveness::new();
    let plugin = Plugin::bind(
        &socket,
        PluginOptions {
            gpus: Some(sim::identities(GPUS)),
            backend: "sim",
            grace: Duration::from_secs(2),
            watch_health: true,
            allowed_uids: npd_ext::rpc::server::default_allowed_uids(),
            liveness: liveness.clone(),
        },
    )
    .expect("bind");
    let sim = Sim::new(GPUS, plugin.observations())
        .beating(liveness.register("sim backend", Duration::from_secs(10)));
    let token = CancellationToken::new();
    let serving = tokio::spawn(plugin.serve(token.clone()));
    let backend = CancellationToken::new();
    let poll = Duration::from_millis(50);
    let deadline = Duration::from_millis(100);
    let sim_task = tokio::spawn(sim.clone().run(
        Scenario::builtin("healthy").expect("builtin"),
        SimOptions {
            poll_interval: poll,
            call_timeout: deadline,
        },
        backend.clone(),
    ));
    assert_eq!(health(&socket).await, Some(ServingStatus::Serving));

    sim.inject(2, &Fault::Hang).await;
    let channel = npd_ext::rpc::client::lazy_channel(&socket);
    let mut client = pb::external_monitor_client::ExternalMonitorClient::new(channel);
    let start = Instant::now();
    loop {
        let s = client
            .check_health(pb::HealthCheckRequest::default())
            .await
            .expect("CheckHealth")
            .into_inner();
        let unresponsive = s
            .conditions
            .iter()
            .any(|c| c.r#type == GPU_UNRESPONSIVE && c.status == pb::ConditionStatus::True as i32);
        if unresponsive {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "GPUUnresponsive");
        tokio::time::sleep(poll).await;
    }
    // Thirty watchdog periods of a hung driver: the plugin works, says so.
    let hung = Instant::now();
    while hung.elapsed() < deadline * 30 {
        assert_eq!(
            health(&socket).await,
            Some(ServingStatus::Serving),
            "a hung GPU is GPUUnresponsive, not a failing plugin"
        );
        tokio::time::sleep(deadline).await;
    }
    assert!(liveness.stalled().is_empty(), "{:?}", liveness.stalled());

    // The backend task ends: nothing reads the GPUs any more.
    backend.cancel();
    sim_task.await.expect("sim ends");
    drop(sim); // the last handle on its pulse
    let start = Instant::now();
    while health(&socket).await != Some(ServingStatus::NotServing) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "NOT_SERVING once a backend stopped (health follows liveness every 5 s)"
        );
        tokio::time::sleep(poll).await;
    }
    assert_eq!(liveness.stalled(), vec!["sim backend (stopped)".to_owned()]);
    token.cancel();
    serving.await.expect("join").expect("serve");
}

// ---------------------------------------------------------------------------
// 3. A second gpu-monitor cannot steal the socket
// ---------------------------------------------------------------------------

#[test]
fn a_second_gpu_monitor_on_the_path_refuses_and_the_first_keeps_serving() {
    let dir = tempdir();
    let socket = sock(&dir);
    let mut first = gpu_monitor(&socket, &[]);
    wait_until(Duration::from_secs(20), "socket", || probe(&socket).0 == 0);
    let mut second = gpu_monitor(&socket, &[]);
    let status = wait_exit(&mut second, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("is in use: a live server answers on it"),
        "{err}"
    );
    let (code, report) = probe(&socket);
    assert_eq!(code, 0, "the first still serves: {report}");
    assert_eq!(report["health"], "SERVING");
    stop(&mut first);
    assert!(!socket.exists(), "the first removes its own socket");
}

// ---------------------------------------------------------------------------
// 4. A hang does not leak threads
// ---------------------------------------------------------------------------

#[test]
fn a_hang_over_many_watchdog_periods_keeps_one_stuck_thread_and_the_probe_passing() {
    let dir = tempdir();
    let socket = sock(&dir);
    let scenario = dir.path().join("hang.json");
    std::fs::write(
        &scenario,
        r#"{"steps": [{"at": "500ms", "gpu": 2, "fault": "hang"}]}"#,
    )
    .expect("write");
    let mut child = gpu_monitor(
        &socket,
        &[
            "--poll-interval",
            "100ms",
            "--nvml-timeout",
            "100ms",
            "--sim-scenario",
            scenario.to_str().expect("utf8"),
        ],
    );
    let mut report = Value::Null;
    wait_until(Duration::from_secs(20), "GPUUnresponsive True", || {
        let (code, r) = probe(&socket);
        report = r;
        code == 0 && is_true(&report, GPU_UNRESPONSIVE)
    });
    let unresponsive = message(&report, GPU_UNRESPONSIVE);
    assert!(
        unresponsive.contains("gpu=2 ") && unresponsive.contains("stays stuck"),
        "{unresponsive}"
    );
    let before = threads(child.id());
    // 200 watchdog periods (100 ms call deadline, 100 ms poll): with the
    // defaults (30 s deadline, 10 s poll) more than two hours of hangs.
    let start = Instant::now();
    let mut probes = 0;
    while start.elapsed() < Duration::from_secs(20) {
        let (code, r) = probe(&socket);
        assert_eq!(code, 0, "the probe passes while NVML hangs: {r}");
        assert_eq!(r["health"], "SERVING");
        assert!(is_true(&r, GPU_UNRESPONSIVE), "{r}");
        probes += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = threads(child.id());
    eprintln!("threads: {before} when the hang began, {after} after 20 s of it ({probes} probes)");
    assert!(
        after <= before,
        "threads grew from {before} to {after} while the driver hung"
    );
    stop(&mut child);
}

// ---------------------------------------------------------------------------
// 5. The kernel log: only the kernel speaks, every phrasing is heard
// ---------------------------------------------------------------------------

#[test]
fn an_xid_line_not_written_by_the_kernel_raises_nothing() {
    let dir = tempdir();
    let socket = sock(&dir);
    let kmsg = dir.path().join("kmsg");
    // Priority 11: facility 1 (user), level 3, as `echo >/dev/kmsg` from
    // any root process writes it; then a real kernel record.
    std::fs::write(
        &kmsg,
        "11,1,100,-;NVRM: Xid (PCI:0000:61:00): 79, pid=1, name=x, GPU has fallen off the bus.\n\
         3,2,200,-;NVRM: Xid (PCI:0000:1b:00): 79, GPU has fallen off the bus.\n",
    )
    .expect("write");
    let mut child = gpu_monitor(&socket, &["--kmsg-path", kmsg.to_str().expect("utf8")]);
    let mut report = Value::Null;
    wait_until(Duration::from_secs(20), "the kernel's XID applied", || {
        report = probe(&socket).1;
        is_true(&report, GPU_LOST)
    });
    let lost = message(&report, GPU_LOST);
    assert!(lost.contains("pci=00000000:1B:00.0"), "{lost}");
    assert!(
        !lost.contains(":61:"),
        "a user-facility record must not raise GPULost: {lost}"
    );
    stop(&mut child);
}

/// The fixture's cases as one kernel log, three unrelated records between
/// them, renumbered; with the address each case must name.
fn phrasings_log() -> (String, Vec<(String, String)>) {
    let text =
        std::fs::read_to_string(common::fixture("kmsg/fallen-off-the-bus.kmsg")).expect("fixture");
    let mut log = String::new();
    let mut expect = Vec::new();
    let mut seq = 0;
    let mut record = |log: &mut String, prio: &str, text: &str| {
        seq += 1;
        log.push_str(&format!("{prio},{seq},{},-;{text}\n", seq * 1000));
    };
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("## case: ") {
            for _ in 0..3 {
                record(&mut log, "6", "usb 1-1: new high-speed USB device");
            }
            expect.push((name.to_owned(), String::new()));
        } else if let Some(addr) = line.strip_prefix("# expect: ") {
            expect.last_mut().expect("case").1 = addr.to_owned();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let (head, text) = line.split_once(';').expect("record");
            record(&mut log, head.split(',').next().expect("prio"), text);
        }
    }
    (log, expect)
}

#[test]
fn every_phrasing_of_fallen_off_the_bus_raises_lost_and_reboot_for_its_gpu() {
    let dir = tempdir();
    let socket = sock(&dir);
    let kmsg = dir.path().join("kmsg");
    let (log, expect) = phrasings_log();
    std::fs::write(&kmsg, log).expect("write");
    let mut child = gpu_monitor(&socket, &["--kmsg-path", kmsg.to_str().expect("utf8")]);
    let named = |report: &Value, t: &str, addr: &str| {
        let m = message(report, t);
        if addr == "unknown" {
            m.contains("an unknown GPU")
        } else {
            let bus = &addr[5..7];
            m.contains(&format!(":{}:00.0", bus.to_uppercase()))
        }
    };
    let mut report = Value::Null;
    wait_until(Duration::from_secs(20), "every case reported", || {
        report = probe(&socket).1;
        expect.iter().all(|(_, addr)| {
            named(&report, GPU_LOST, addr) && named(&report, GPU_REBOOT_REQUIRED, addr)
        })
    });
    for (name, addr) in &expect {
        assert!(named(&report, GPU_LOST, addr), "{name}: {report}");
    }
    // Each case's GPU, and no other: one "action:" per GPU named.
    for t in [GPU_LOST, GPU_REBOOT_REQUIRED] {
        let m = message(&report, t);
        assert_eq!(m.matches("; action: ").count(), expect.len(), "{t}: {m}");
    }
    assert!(is_true(&report, GPU_LOST) && is_true(&report, GPU_REBOOT_REQUIRED));
    stop(&mut child);
}

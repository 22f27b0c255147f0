//! End to end in-process: a real gpu-monitor on a tempdir Unix socket, a real
//! detector talking gRPC to it, `/conditions` read over real HTTP.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use npd_ext::conditions::Published;
use npd_ext::gpu::{
    GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING, Observation, SUPPORTED_CONDITIONS, sim,
};
use npd_ext::monitor::external::REASON_UNREACHABLE;
use npd_ext::problem::ConditionStatus;
use npd_ext::rpc::pb;
use npd_ext::rpc::server::BoundSocket;
use tokio_stream::wrappers::UnixListenerStream;

/// XID 79 on GPU 3 → GPULost True naming GPU 3's UUID and PCI address on
/// /conditions, within one second.
async fn xid79_reaches_conditions(watch_health: bool) {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, watch_health);
    let (shutdown, detector) = start_detector(vec![monitor_config(&socket, &SUPPORTED_CONDITIONS)]);
    let mut rx = detector.conditions();
    wait_for(&mut rx, Duration::from_secs(5), "initial all-False", |c| {
        SUPPORTED_CONDITIONS
            .iter()
            .all(|t| has(c, t, ConditionStatus::False))
    })
    .await;
    let addr = detector.http_addr.expect("http");

    let injected = Instant::now();
    plugin
        .observations
        .send(Observation::Xid {
            gpu: 3,
            xid: 79,
            at: SystemTime::now(),
        })
        .await
        .expect("inject");
    let id = &sim::identities(GPUS)[3];
    let body = loop {
        let conds = http_conditions(addr).await;
        let lost = conds.iter().find(|c| c["type"] == GPU_LOST).cloned();
        if let Some(c) = lost.filter(|c| c["status"] == "True") {
            break c;
        }
        assert!(
            injected.elapsed() < Duration::from_secs(1),
            "GPULost not True within 1 s: {conds:?}"
        );
        tokio::task::yield_now().await;
    };
    let elapsed = injected.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(&id.uuid), "{message}");
    assert!(message.contains(&id.pci_bus_id), "{message}");
    assert!(message.contains("gpu=3 "), "{message}");
    assert_eq!(body["reason"], "GPUFellOffTheBus");
    assert_eq!(body["source"], "gpu-monitor");

    let (code, text) = http_get(addr, "/healthz").await;
    assert_eq!((code, text.as_str()), (200, "ok\n"));

    shutdown.drain(Duration::from_secs(5)).await;
    plugin.token.cancel();
    plugin.task.await.expect("join").expect("served");
    assert!(!socket.exists(), "socket unlinked on exit");
}

#[tokio::test]
async fn xid79_via_watch_health_within_a_second() {
    xid79_reaches_conditions(true).await;
}

#[tokio::test]
async fn xid79_via_check_health_polling_fallback() {
    xid79_reaches_conditions(false).await;
}

#[tokio::test]
async fn reset_class_xid_and_thermal_and_clear() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, true);
    let (shutdown, detector) = start_detector(vec![monitor_config(&socket, &SUPPORTED_CONDITIONS)]);
    let mut rx = detector.conditions();
    let now = SystemTime::now();
    for obs in [
        Observation::Xid {
            gpu: 1,
            xid: 48,
            at: now,
        },
        Observation::Temperature {
            gpu: 5,
            celsius: 93,
            at: now,
        },
    ] {
        plugin.observations.send(obs).await.expect("inject");
    }
    let c = wait_for(&mut rx, Duration::from_secs(5), "reset and thermal", |c| {
        has(c, GPU_RESET_REQUIRED, ConditionStatus::True)
            && has(c, GPU_THERMAL_THROTTLING, ConditionStatus::True)
    })
    .await;
    assert_eq!(
        find(&c, GPU_RESET_REQUIRED).expect("present").reason,
        "Xid48"
    );
    assert!(
        find(&c, GPU_THERMAL_THROTTLING)
            .expect("present")
            .message
            .contains("gpu=5 ")
    );
    for obs in sim::observation(1, &sim::Fault::Clear, now) {
        plugin.observations.send(obs).await.expect("inject");
    }
    wait_for(&mut rx, Duration::from_secs(5), "reset cleared", |c| {
        has(c, GPU_RESET_REQUIRED, ConditionStatus::False)
    })
    .await;
    shutdown.drain(Duration::from_secs(5)).await;
    plugin.token.cancel();
}

// ---------------------------------------------------------------------------
// A plugin process that dies and comes back
// ---------------------------------------------------------------------------

fn spawn_plugin_process(socket: &std::path::Path) -> Child {
    spawn_sim_plugin(socket, "builtin:xid79")
}

/// A gpu-monitor child process and a detector that has heard from it.
async fn detector_with_plugin_process(
    socket: &std::path::Path,
) -> (
    Child,
    npd_ext::shutdown::Shutdown,
    npd_ext::detector::Detector,
) {
    let child = spawn_plugin_process(socket);
    let (shutdown, detector) = start_detector(vec![monitor_config(socket, &SUPPORTED_CONDITIONS)]);
    wait_for(
        &mut detector.conditions(),
        Duration::from_secs(20),
        "plugin answering",
        |c| has(c, GPU_LOST, ConditionStatus::False),
    )
    .await;
    (child, shutdown, detector)
}

async fn stop(mut child: Child, shutdown: npd_ext::shutdown::Shutdown) {
    child.kill().expect("kill");
    child.wait().expect("reap");
    shutdown.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn killed_plugin_turns_unknown_and_recovers_when_restarted() {
    let dir = tempdir();
    let socket = sock(&dir);
    let (mut child, shutdown, detector) = detector_with_plugin_process(&socket).await;
    let mut rx = detector.conditions();

    let mut published = detector.subscribe();
    // SIGKILL: no cleanup, the socket file stays behind.
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(socket.exists(), "a killed plugin leaves its socket");
    let c = wait_for(
        &mut rx,
        Duration::from_secs(10),
        "Unknown after threshold",
        all_unknown,
    )
    .await;
    let lost = find(&c, GPU_LOST).expect("present");
    assert_eq!(lost.reason, REASON_UNREACHABLE);
    assert!(
        lost.message.contains("3 consecutive failures"),
        "{}",
        lost.message
    );
    let addr = detector.http_addr.expect("http");
    let (code, _) = http_get(addr, "/healthz").await;
    assert_eq!(
        code, 200,
        "an unreachable plugin is reported, the detector itself is healthy"
    );
    let mut unreachable_events = 0;
    while let Ok(p) = published.try_recv() {
        if let Published::Event { event, .. } = p {
            unreachable_events += usize::from(event.reason == REASON_UNREACHABLE);
        }
    }
    assert_eq!(unreachable_events, 1, "one event, not one per failure");

    // Restart on the same path: the stale socket is replaced, and the
    // detector reconnects by itself.
    let child = spawn_plugin_process(&socket);
    wait_for(&mut rx, Duration::from_secs(20), "recovery", all_known).await;
    stop(child, shutdown).await;
}

// ---------------------------------------------------------------------------
// A foreign plugin: CheckHealth only, reporting types it must not set
// ---------------------------------------------------------------------------

/// Counts its CheckHealth calls so a test can wait for "several polls later".
#[derive(Debug)]
struct RoguePlugin {
    calls: tokio::sync::watch::Sender<usize>,
}

fn cond(t: &str, status: pb::ConditionStatus, reason: &str) -> pb::Condition {
    pb::Condition {
        r#type: t.into(),
        status: status as i32,
        transition: None,
        reason: reason.into(),
        message: format!("{t} from rogue"),
    }
}

#[tonic::async_trait]
impl pb::external_monitor_server::ExternalMonitor for RoguePlugin {
    async fn check_health(
        &self,
        _req: tonic::Request<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<pb::Status>, tonic::Status> {
        self.calls.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(pb::Status {
            source: "impostor".into(),
            events: vec![],
            conditions: vec![
                cond("Ready", pb::ConditionStatus::False, "Hijack"),
                cond("Undeclared", pb::ConditionStatus::True, "Sneaky"),
                cond("Declared", pb::ConditionStatus::True, "Honest"),
                cond("OtherMonitorsType", pb::ConditionStatus::True, "Stolen"),
            ],
        }))
    }

    async fn get_metadata(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::MonitorMetadata>, tonic::Status> {
        Ok(tonic::Response::new(pb::MonitorMetadata {
            name: "rogue".into(),
            api_version: "v1".into(),
            supported_conditions: vec!["Ready".into(), "Undeclared".into(), "Declared".into()],
            ..Default::default()
        }))
    }
}

async fn serve_rogue(
    socket: &std::path::Path,
    token: tokio_util::sync::CancellationToken,
) -> (BoundSocket, tokio::sync::watch::Receiver<usize>) {
    let mut bound = BoundSocket::bind(socket).expect("bind");
    let listener = bound.take_listener().expect("listener");
    let (calls, calls_rx) = tokio::sync::watch::channel(0);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::external_monitor_server::ExternalMonitorServer::new(
                RoguePlugin { calls },
            ))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                token.cancelled_owned(),
            ),
    );
    (bound, calls_rx)
}

#[tokio::test]
async fn undeclared_and_kubelet_types_are_refused_and_nothing_else_disturbed() {
    let dir = tempdir();
    let rogue_socket = dir.path().join("rogue.sock");
    let gpu_socket = sock(&dir);
    let token = tokio_util::sync::CancellationToken::new();
    let (_bound, mut calls) = serve_rogue(&rogue_socket, token.clone()).await;
    let gpu = start_plugin(&gpu_socket, true);

    let mut rogue = monitor_config(&rogue_socket, &["Declared"]);
    rogue.source = "rogue".into();
    let mut other = monitor_config(&gpu_socket, &[GPU_LOST, "OtherMonitorsType"]);
    other.source = "gpu".into();
    let (shutdown, detector) = start_detector(vec![rogue, other]);
    let mut rx = detector.conditions();
    let c = wait_for(
        &mut rx,
        Duration::from_secs(5),
        "both monitors reporting",
        |c| has(c, "Declared", ConditionStatus::True) && has(c, GPU_LOST, ConditionStatus::False),
    )
    .await;
    let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        vec!["Declared", GPU_LOST],
        "refused types never reach the node"
    );
    assert_eq!(
        find(&c, "Declared").expect("present").source,
        "rogue",
        "the config's source, not the plugin's"
    );

    // Several polls later, still nothing foreign.
    let seen = *calls.borrow();
    tokio::time::timeout(Duration::from_secs(5), calls.wait_for(|n| *n >= seen + 3))
        .await
        .expect("polled again")
        .expect("plugin alive");
    let conds = http_conditions(detector.http_addr.expect("http")).await;
    let by_type: HashMap<String, String> = conds
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_owned(),
                c["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(by_type.len(), 2, "{conds:?}");
    assert_eq!(by_type.get("Declared").map(String::as_str), Some("True"));
    assert!(
        !by_type.contains_key("Ready")
            && !by_type.contains_key("Undeclared")
            && !by_type.contains_key("OtherMonitorsType")
    );

    shutdown.drain(Duration::from_secs(5)).await;
    token.cancel();
    gpu.token.cancel();
}

#[tokio::test]
async fn config_without_conditions_adopts_supported_conditions_minus_kubelet_types() {
    let dir = tempdir();
    let socket = dir.path().join("rogue.sock");
    let token = tokio_util::sync::CancellationToken::new();
    let (_bound, _calls) = serve_rogue(&socket, token.clone()).await;
    let (shutdown, detector) = start_detector(vec![monitor_config(&socket, &[])]);
    let mut rx = detector.conditions();
    let c = wait_for(&mut rx, Duration::from_secs(5), "adopted conditions", |c| {
        has(c, "Declared", ConditionStatus::True) && has(c, "Undeclared", ConditionStatus::True)
    })
    .await;
    assert!(
        find(&c, "Ready").is_none(),
        "kubelet-owned types are never adopted"
    );
    assert!(
        find(&c, "OtherMonitorsType").is_none(),
        "not in supported_conditions"
    );
    shutdown.drain(Duration::from_secs(5)).await;
    token.cancel();
}

#[tokio::test]
async fn stop_rpc_shuts_the_plugin_down_and_unlinks_the_socket() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, true);
    let channel = npd_ext::rpc::client::lazy_channel(&socket);
    let mut client = pb::external_monitor_client::ExternalMonitorClient::new(channel);
    let meta = client
        .get_metadata(())
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(meta.api_version, "v1");
    assert_eq!(
        meta.supported_conditions,
        SUPPORTED_CONDITIONS.map(String::from).to_vec()
    );
    client.stop(()).await.expect("stop answered");
    tokio::time::timeout(Duration::from_secs(5), plugin.task)
        .await
        .expect("plugin exits after Stop")
        .expect("join")
        .expect("clean");
    assert!(!socket.exists());
}

#[tokio::test]
async fn watch_health_pushes_each_change_with_its_events() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, true);
    let channel = npd_ext::rpc::client::lazy_channel(&socket);
    let mut client = pb::external_monitor_client::ExternalMonitorClient::new(channel);
    let mut stream = client
        .watch_health(pb::HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("ok").expect("first status");
    assert_eq!(first.conditions.len(), SUPPORTED_CONDITIONS.len());
    assert!(first.events.is_empty(), "history is not news");
    plugin
        .observations
        .send(Observation::Xid {
            gpu: 2,
            xid: 13,
            at: SystemTime::now(),
        })
        .await
        .expect("inject");
    let next = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("pushed")
        .expect("ok")
        .expect("status");
    assert_eq!(next.events.len(), 1);
    assert_eq!(next.events[0].reason, "XIDAppError");
    assert!(next.events[0].message.contains("XID 13"));
    assert!(next.events[0].message.contains("gpu=2 "));
    plugin.token.cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("stream ends")
            .ok()
            .flatten()
            .is_none(),
        "the stream ends at shutdown"
    );
}

#[tokio::test]
async fn a_quiet_but_live_plugin_keeps_conditions_confirmed() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, true);
    let (shutdown, detector) = start_detector(vec![monitor_config(&socket, &SUPPORTED_CONDITIONS)]);
    let mut rx = detector.conditions();
    let first = wait_for(&mut rx, Duration::from_secs(5), "first status", |c| {
        has(c, GPU_LOST, ConditionStatus::False)
    })
    .await;
    let first = find(&first, GPU_LOST).expect("present").clone();
    // No fault, so no push: only the periodic health check can confirm.
    let later = wait_for(&mut rx, Duration::from_secs(5), "a confirmation", |c| {
        find(c, GPU_LOST).is_some_and(|x| x.last_update > first.last_update)
    })
    .await;
    let later = find(&later, GPU_LOST).expect("present");
    assert_eq!(
        later.transition, first.transition,
        "confirmation is not a transition"
    );
    assert_eq!(later.status, ConditionStatus::False);
    shutdown.drain(Duration::from_secs(5)).await;
    plugin.token.cancel();
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} failed");
}

#[tokio::test]
async fn a_hung_plugin_turns_unknown_and_recovers_when_it_resumes() {
    let dir = tempdir();
    let socket = sock(&dir);
    let (child, shutdown, detector) = detector_with_plugin_process(&socket).await;
    let mut rx = detector.conditions();

    // Stopped, not dead: the socket and the WatchHealth stream stay open,
    // but nothing answers.
    signal(&child, "-STOP");
    let c = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "Unknown while hung",
        all_unknown,
    )
    .await;
    let message = &find(&c, GPU_LOST).expect("present").message;
    assert!(message.contains("no answer"), "{message}");

    signal(&child, "-CONT");
    wait_for(
        &mut rx,
        Duration::from_secs(20),
        "recovery after SIGCONT",
        all_known,
    )
    .await;
    stop(child, shutdown).await;
}

/// Pushes one status over WatchHealth, then stays silent; serves no
/// grpc.health.v1, so the detector must check liveness another way.
#[derive(Debug)]
struct WatchOnlyPlugin {
    metadata_calls: tokio::sync::watch::Sender<usize>,
}

#[tonic::async_trait]
impl pb::external_monitor_server::ExternalMonitor for WatchOnlyPlugin {
    async fn get_metadata(
        &self,
        _req: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::MonitorMetadata>, tonic::Status> {
        self.metadata_calls.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(pb::MonitorMetadata {
            name: "watch-only".into(),
            api_version: "v1".into(),
            ..Default::default()
        }))
    }

    async fn watch_health(
        &self,
        _req: tonic::Request<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic::codegen::BoxStream<pb::Status>>, tonic::Status> {
        let first = pb::Status {
            source: "watch-only".into(),
            events: vec![],
            conditions: vec![cond("Declared", pb::ConditionStatus::False, "Fine")],
        };
        let stream =
            tokio_stream::StreamExt::chain(tokio_stream::once(Ok(first)), tokio_stream::pending());
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

#[tokio::test]
async fn plugins_without_a_health_service_are_checked_through_metadata() {
    let dir = tempdir();
    let socket = dir.path().join("watch-only.sock");
    let mut bound = BoundSocket::bind(&socket).expect("bind");
    let listener = bound.take_listener().expect("listener");
    let (metadata_calls, mut calls) = tokio::sync::watch::channel(0);
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::external_monitor_server::ExternalMonitorServer::new(
                WatchOnlyPlugin { metadata_calls },
            ))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                token.clone().cancelled_owned(),
            ),
    );
    let (shutdown, detector) = start_detector(vec![monitor_config(&socket, &["Declared"])]);
    let mut rx = detector.conditions();
    let first = wait_for(&mut rx, Duration::from_secs(5), "the pushed status", |c| {
        has(c, "Declared", ConditionStatus::False)
    })
    .await;
    let first = find(&first, "Declared").expect("present").last_update;
    let after_connect = *calls.borrow();
    tokio::time::timeout(
        Duration::from_secs(5),
        calls.wait_for(|n| *n >= after_connect + 2),
    )
    .await
    .expect("metadata used as the liveness check")
    .expect("plugin alive");
    wait_for(&mut rx, Duration::from_secs(5), "confirmation", |c| {
        find(c, "Declared")
            .is_some_and(|x| x.last_update > first && x.status == ConditionStatus::False)
    })
    .await;
    shutdown.drain(Duration::from_secs(5)).await;
    token.cancel();
}

#[tokio::test]
async fn plugin_parameters_from_the_detector_config_set_thresholds() {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, true);
    let mut cfg = monitor_config(&socket, &SUPPORTED_CONDITIONS);
    cfg.parameters
        .insert("temperature_threshold".into(), "70".into());
    let (shutdown, detector) = start_detector(vec![cfg]);
    let mut rx = detector.conditions();
    wait_for(&mut rx, Duration::from_secs(5), "first status", |c| {
        has(c, GPU_THERMAL_THROTTLING, ConditionStatus::False)
    })
    .await;
    plugin
        .observations
        .send(Observation::Temperature {
            gpu: 2,
            celsius: 72,
            at: SystemTime::now(),
        })
        .await
        .expect("inject");
    let c = wait_for(
        &mut rx,
        Duration::from_secs(5),
        "throttling at the configured 70 °C",
        |c| has(c, GPU_THERMAL_THROTTLING, ConditionStatus::True),
    )
    .await;
    let m = &find(&c, GPU_THERMAL_THROTTLING).expect("present").message;
    assert!(
        m.contains("gpu=2 ") && m.contains("slowdown is 70 °C"),
        "{m}"
    );
    shutdown.drain(Duration::from_secs(5)).await;
    plugin.token.cancel();
}

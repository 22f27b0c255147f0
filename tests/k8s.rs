//! The Kubernetes exporter against the in-process fake API server
//! (tests/common/fake_api.rs), with the tokio clock paused where hours pass.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::fake_api::{FakeApi, Fault};
use hyper::Method;
use npd_ext::conditions::Published;
use npd_ext::exporter::k8s;
use npd_ext::problem::{ConditionStatus, Event, Severity, format_time};

use common::k8s_harness::{Exporter, NODE, cond, options, run_until};

/// A Node, and an exporter that has written `GPULost` False to it once
/// (the request log is then cleared).
async fn written_once() -> (FakeApi, Exporter, SystemTime) {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let t0 = SystemTime::now();
    let ex = Exporter::start(&api, vec![cond("GPULost", ConditionStatus::False, t0)]);
    run_until(Duration::from_secs(1), "the first write", || {
        api.count(&Method::PATCH, "/status") == 1
    })
    .await;
    api.clear_log();
    (api, ex, t0)
}

fn status_of(api: &FakeApi, t: &str) -> Option<String> {
    api.conditions(NODE)
        .get(t)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn kubelet_conditions_survive_ours_are_upserted_and_a_restart_keeps_transitions() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let ready_before = api.conditions(NODE)["Ready"].clone();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let ex = Exporter::start(
        &api,
        vec![
            cond("GPULost", ConditionStatus::False, t0),
            cond("KernelDeadlock", ConditionStatus::True, t0),
        ],
    );
    run_until(Duration::from_secs(20), "our conditions", || {
        status_of(&api, "GPULost").is_some()
    })
    .await;
    let c = api.conditions(NODE);
    assert_eq!(
        c["Ready"], ready_before,
        "the kubelet's condition is untouched"
    );
    assert_eq!(c["KernelDeadlock"]["status"], "True");
    assert_eq!(c["GPULost"]["lastTransitionTime"], format_time(t0));
    // Every write was a strategic merge patch of the status subresource.
    assert!(
        api.log()
            .iter()
            .filter(|l| l.method == Method::PATCH)
            .all(|l| {
                l.path == format!("/api/v1/nodes/{NODE}/status")
                    && l.content_type.as_deref() == Some(common::fake_api::STRATEGIC)
            })
    );

    // GPULost goes True: upserted by type, nothing duplicated.
    let t1 = t0 + Duration::from_secs(60);
    ex.set(vec![
        cond("GPULost", ConditionStatus::True, t1),
        cond("KernelDeadlock", ConditionStatus::True, t0),
    ]);
    run_until(Duration::from_secs(20), "GPULost True", || {
        status_of(&api, "GPULost").as_deref() == Some("True")
    })
    .await;
    let node = api.node(NODE).expect("node");
    assert_eq!(
        node["status"]["conditions"].as_array().map(Vec::len),
        Some(3)
    );
    ex.stop().await;

    // A restarted detector knows only its own start as transition time;
    // the Node's is kept where the status did not change.
    let restart = t1 + Duration::from_secs(3600);
    let ex = Exporter::start(
        &api,
        vec![
            cond("GPULost", ConditionStatus::True, restart),
            cond("KernelDeadlock", ConditionStatus::False, restart),
        ],
    );
    run_until(Duration::from_secs(20), "KernelDeadlock False", || {
        status_of(&api, "KernelDeadlock").as_deref() == Some("False")
    })
    .await;
    let c = api.conditions(NODE);
    assert_eq!(
        c["GPULost"]["lastTransitionTime"],
        format_time(t1),
        "unchanged status keeps its time"
    );
    assert_eq!(
        c["KernelDeadlock"]["lastTransitionTime"],
        format_time(restart),
        "a changed one does not"
    );
    assert_eq!(c["Ready"], ready_before);
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_change_is_one_patch_within_a_second_then_only_heartbeats() {
    let (api, ex, t0) = written_once().await;
    ex.set(vec![cond("GPULost", ConditionStatus::True, t0)]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        api.count(&Method::PATCH, "/status"),
        1,
        "one PATCH within 1 s of the change"
    );
    api.clear_log();
    // An hour with nothing changing: heartbeats every 5 min ± 10 %.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let beats = api.count(&Method::PATCH, "/status");
    eprintln!("condition writes in a simulated hour without change: {beats}");
    assert!((10..=14).contains(&beats), "{beats} heartbeats in an hour");
    assert_eq!(
        api.count(&Method::GET, "/nodes/"),
        0,
        "the Node is read once, at start"
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_flapping_condition_is_written_at_a_bounded_rate() {
    let (api, ex, t0) = written_once().await;
    // Flapping every second for ten minutes.
    for i in 0..600u32 {
        let s = if i % 2 == 0 {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        ex.set(vec![cond(
            "GPULost",
            s,
            t0 + Duration::from_secs(u64::from(i)),
        )]);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let writes = api.count(&Method::PATCH, "/status");
    eprintln!("condition writes for 600 flaps in 600 s: {writes}");
    // 5 at once, then one per 10 s: 65 in 600 s.
    assert!(writes <= 66, "{writes} writes for 600 flaps");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        status_of(&api, "GPULost").as_deref(),
        Some("False"),
        "the last state is written in the end"
    );
    ex.stop().await;
}

fn storm_event() -> Published {
    Published::Event {
        source: "gpu-monitor".into(),
        event: Event {
            severity: Severity::Warn,
            timestamp: SystemTime::now(),
            reason: "XID79".into(),
            message: "gpu=3 uuid=GPU-abc pci=0000:61:00.0: XID 79 (fallen off the bus)".into(),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_storm_is_a_few_writes_with_a_count_and_does_not_starve_others() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let ex = Exporter::start(
        &api,
        vec![cond("GPULost", ConditionStatus::True, SystemTime::now())],
    );
    run_until(Duration::from_secs(5), "the Node read", || {
        api.count(&Method::GET, "/nodes/") == 1
    })
    .await;
    for _ in 0..10_000 {
        ex.events.send(storm_event()).expect("subscriber");
    }
    // Another reason in the middle of the storm is written at once.
    ex.events
        .send(Published::Event {
            source: "kernel-monitor".into(),
            event: Event {
                severity: Severity::Warn,
                timestamp: SystemTime::now(),
                reason: "OOMKilling".into(),
                message: "Killed process 12 (python3)".into(),
            },
        })
        .expect("subscriber");
    // Too long for the API: cut to its limits, not refused. The message
    // is data: a `{}` or `%s` in it stays as it is.
    ex.events
        .send(Published::Event {
            source: "kernel-monitor".into(),
            event: Event {
                severity: Severity::Info,
                timestamp: SystemTime::now(),
                reason: "R".repeat(300),
                message: format!("{{}} %s {}", "é".repeat(3000)),
            },
        })
        .expect("subscriber");
    tokio::time::sleep(Duration::from_secs(300)).await;
    let long = api
        .events()
        .into_iter()
        .find(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("RRR")))
        .expect("the long event, cut to fit");
    assert_eq!(long["reason"].as_str().map(str::len), Some(128));
    let note = long["note"].as_str().expect("note");
    assert!(
        note.len() <= 1024 && note.starts_with("{} %s é"),
        "{}",
        note.len()
    );
    assert_eq!(long["type"], "Normal");
    let writes = api.count(&Method::POST, "/events") + api.count(&Method::PATCH, "/events") - 1;
    eprintln!("event writes for a storm of 10 000 and one other: {writes}");
    assert!(writes <= 10, "{writes} event writes for 10 001 events");
    let events = api.events();
    let xid = events
        .iter()
        .find(|e| e["reason"] == "XID79")
        .expect("the storm's Event");
    // At the detector's channel size a burst this fast lags: what the
    // writer saw is counted, what it did not is counted as dropped.
    let lagged = ex.metric("npd_ext_events_dropped_total", &[("reason", "lagged")]);
    let counted = xid["series"]["count"].as_u64().expect("a count");
    assert_eq!(counted + lagged, 10_000, "{xid}");
    assert_eq!(xid["type"], "Warning");
    assert_eq!(xid["regarding"]["kind"], "Node");
    assert_eq!(xid["regarding"]["uid"], format!("uid-{NODE}"));
    assert_eq!(xid["reportingController"], "npd-ext");
    assert_eq!(xid["reportingInstance"], NODE);
    assert!(events.iter().any(|e| e["reason"] == "OOMKilling"));
    assert!(api.log().iter().all(|l| {
        !l.path.contains("/events")
            || l.path
                .starts_with("/apis/events.k8s.io/v1/namespaces/default/events")
    }));
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_only_the_latest_state_and_recovers_at_once() {
    let (api, ex, t0) = written_once().await;
    api.fault(Some(Method::PATCH), "/status", Fault::Status(503), None);
    api.clear_log();
    // 30 minutes down, the condition flipping 100 times.
    let mut last = ConditionStatus::False;
    for i in 0..100u32 {
        last = if i % 2 == 0 {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        let mut c = cond("GPULost", last, t0 + Duration::from_secs(u64::from(i)));
        c.message = format!("flip {i}");
        ex.set(vec![c]);
        tokio::time::sleep(Duration::from_secs(18)).await;
    }
    let attempts = api.count(&Method::PATCH, "/status");
    eprintln!("write attempts during a 30 min outage: {attempts}");
    assert!(
        attempts <= 60,
        "{attempts} attempts in 30 min: backoff, not a write per flip"
    );
    assert!(
        ex.metric(
            "npd_ext_k8s_requests_total",
            &[("op", "patch_node_status"), ("result", "error")]
        ) >= 1
    );
    api.clear_faults();
    api.clear_log();
    tokio::time::sleep(Duration::from_secs(65)).await;
    let c = api.conditions(NODE);
    assert_eq!(c["GPULost"]["status"], last.to_string());
    assert_eq!(
        c["GPULost"]["message"], "flip 99",
        "exactly the final state"
    );
    assert_eq!(
        api.count(&Method::PATCH, "/status"),
        1,
        "one write on recovery, no replay of the backlog"
    );
    ex.stop().await;
}

/// Log lines written while `f` runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn forbidden_is_one_clear_log_line_naming_the_permission() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let api = FakeApi::start().await;
    api.add_node(NODE);
    api.fault(Some(Method::PATCH), "/status", Fault::Status(403), None);
    let ex = Exporter::start(
        &api,
        vec![cond("GPULost", ConditionStatus::True, SystemTime::now())],
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(api.count(&Method::PATCH, "/status") >= 3, "it keeps trying");
    let text = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("forbidden")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("`patch` on `nodes/status`"),
        "{}",
        lines[0]
    );
    ex.stop().await;
}

#[test]
fn rbac_grants_exactly_what_the_exporter_uses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/rbac.yaml");
    let docs =
        common::yaml::documents(&std::fs::read_to_string(path).expect("manifests/rbac.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    );
    assert_eq!(docs[0]["metadata"]["name"], "npd-ext");
    assert_eq!(docs[0]["metadata"]["namespace"], "kube-system");
    let mut grants: Vec<String> = Vec::new();
    for rule in docs[1]["rules"].as_array().expect("rules") {
        for group in rule["apiGroups"].as_array().expect("groups") {
            for res in rule["resources"].as_array().expect("resources") {
                for verb in rule["verbs"].as_array().expect("verbs") {
                    grants.push(format!(
                        "{}/{} {}",
                        group.as_str().unwrap_or_default(),
                        res.as_str().unwrap_or_default(),
                        verb.as_str().unwrap_or_default()
                    ));
                }
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "/events create",
            "/events patch",
            "/nodes get",
            "/nodes/status patch",
            "events.k8s.io/events create",
            "events.k8s.io/events patch",
        ]
    );
    let binding = &docs[2];
    assert_eq!(binding["roleRef"]["name"], "npd-ext");
    assert_eq!(binding["subjects"][0]["name"], "npd-ext");
    assert_eq!(binding["subjects"][0]["namespace"], "kube-system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_binary_reports_to_the_api_server() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let dir = common::tempdir();
    let check = common::script(dir.path(), "check.sh", "echo 'disk is failing'\nexit 1");
    let cfg = dir.path().join("custom.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"plugin": "custom", "pluginConfig": {{"invoke_interval": "1h"}}, "source": "disk-check",
                 "conditions": [{{"type": "DiskProblem", "reason": "DiskIsFine", "message": "ok"}}],
                 "rules": [{{"type": "permanent", "condition": "DiskProblem", "reason": "DiskIsFailing", "path": "{}"}}]}}"#,
            check.display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_npd-ext");
    let mut child = common::k8s_harness::detector_binary(&api, dir.path())
        .arg("--config.custom-plugin-monitor")
        .arg(&cfg)
        .spawn()
        .expect("detector starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status_of(&api, "DiskProblem").as_deref() != Some("True")
        || !api.events().iter().any(|e| e["reason"] == "DiskIsFailing")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached the API server: {:#?}",
            api.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = api.conditions(NODE);
    assert_eq!(c["DiskProblem"]["message"], "disk is failing");
    assert_eq!(c["Ready"]["status"], "True");
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status}");

    // Asked for the exporter with nowhere to send: a clear error.
    let out = std::process::Command::new(bin)
        .args([
            "detector",
            "--enable-k8s-exporter=true",
            "--config.custom-plugin-monitor",
        ])
        .arg(&cfg)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no cluster configuration was found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_api_server_is_not_a_dead_detector() {
    use npd_ext::detector::{self, DetectorOptions};
    let api = FakeApi::start().await;
    api.add_node(NODE);
    api.fault(Some(Method::PATCH), "/status", Fault::Status(503), None);
    let dir = common::tempdir();
    let text = r#"{"plugin": "custom", "pluginConfig": {"invoke_interval": "1h"}, "source": "ok-check",
        "conditions": [{"type": "AllGood", "reason": "Fine", "message": "fine"}],
        "rules": [{"type": "permanent", "condition": "AllGood", "reason": "Bad", "path": "/bin/true"}]}"#;
    let cfg = npd_ext::config::custom::check(&dir.path().join("c.json"), text)
        .config
        .expect("valid");
    let config = kube::Config::new(api.url().parse().expect("url"));
    let shutdown = npd_ext::shutdown::Shutdown::new();
    let d = detector::start(
        DetectorOptions {
            custom: vec![cfg],
            http: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            k8s: Some(k8s::K8sExporter {
                client: k8s::client(config).expect("client"),
                options: options(),
            }),
            node: NODE.into(),
            ..DetectorOptions::default()
        },
        &shutdown,
    )
    .expect("detector starts");
    let (http, metrics) = (d.http_addr.expect("http"), d.metrics_addr.expect("metrics"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = common::http_get(metrics, "/metrics").await;
        if body.contains(r#"npd_ext_k8s_requests_total{op="patch_node_status",result="error"}"#)
            && body.contains("npd_ext_k8s_conditions_in_sync 0")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed sync on /metrics: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = common::http_get(http, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    // Back: the state arrives with the next retry.
    api.clear_faults();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status_of(&api, "AllGood").as_deref() != Some("False") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not written after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.token().cancel();
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_waits_as_told_and_a_dropped_connection_is_retried() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    api.fault(
        Some(Method::PATCH),
        "/status",
        Fault::TooMany { retry_after: 20 },
        Some(1),
    );
    let start = tokio::time::Instant::now();
    let ex = Exporter::start(
        &api,
        vec![cond("GPULost", ConditionStatus::True, SystemTime::now())],
    );
    run_until(
        Duration::from_secs(60),
        "the write after Retry-After",
        || status_of(&api, "GPULost").is_some(),
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        api.count(&Method::PATCH, "/status"),
        2,
        "one refused, one after the wait"
    );
    // A connection dropped mid-request is retried.
    api.fault(Some(Method::PATCH), "/status", Fault::Drop, Some(1));
    api.clear_log();
    ex.set(vec![cond(
        "GPULost",
        ConditionStatus::False,
        SystemTime::now(),
    )]);
    run_until(Duration::from_secs(60), "the write after the drop", || {
        status_of(&api, "GPULost").as_deref() == Some("False")
    })
    .await;
    assert!(api.log().iter().any(|l| l.status == 0), "the drop happened");
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn conditions_and_events_can_each_be_switched_off() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let mut opts = options();
    opts.update_conditions = false;
    opts.write_events = false;
    let ex = Exporter::start_with(
        &api,
        vec![cond("GPULost", ConditionStatus::True, SystemTime::now())],
        opts,
    );
    run_until(Duration::from_secs(5), "the Node read", || {
        api.count(&Method::GET, "/nodes/") == 1
    })
    .await;
    ex.events.send(storm_event()).expect("subscriber");
    tokio::time::sleep(Duration::from_secs(900)).await;
    assert_eq!(api.count(&Method::PATCH, "/status"), 0);
    assert!(api.events().is_empty());
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_the_node_retries_until_it_is_there() {
    let api = FakeApi::start().await;
    // No Node yet (a node name that is wrong for a while, an API server
    // that is still coming up).
    let ex = Exporter::start(
        &api,
        vec![cond("GPULost", ConditionStatus::False, SystemTime::now())],
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let tries = api.count(&Method::GET, "/nodes/");
    assert!(
        (5..=8).contains(&tries),
        "{tries} reads in 30 s at a 5 s interval"
    );
    api.add_node(NODE);
    run_until(
        Duration::from_secs(10),
        "the write once the Node is there",
        || status_of(&api, "GPULost").is_some(),
    )
    .await;
    ex.stop().await;
}

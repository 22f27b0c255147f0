//! Events as a real API server takes them: bodies the fake server refuses
//! as the real one does, series counts that reach the cluster, storms
//! counted honestly at the detector's channel sizes, and nothing written
//! after its aggregation window.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::time::{Duration, SystemTime};

use common::fake_api::{FakeApi, Fault, MERGE};
use common::k8s_harness::{Exporter, NODE, cond, run_until};
use hyper::Method;
use npd_ext::conditions::Published;
use npd_ext::exporter::k8s::{AGGREGATE_WINDOW, FLUSH_EVERY, SIMILAR_LIMIT};
use npd_ext::problem::{ConditionStatus, Event, Severity};
use serde_json::{Value, json};

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn published(source: &str, reason: &str, message: &str) -> Published {
    Published::Event {
        source: source.into(),
        event: Event {
            severity: Severity::Warn,
            timestamp: SystemTime::now(),
            reason: reason.into(),
            message: message.into(),
        },
    }
}

/// One event from `source` into the exporter's broadcast.
fn emit(ex: &Exporter, source: &str, reason: &str, message: &str) {
    ex.events
        .send(published(source, reason, message))
        .expect("subscriber");
}

/// An Event as the exporter writes it.
fn good_event(name: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "eventTime": "2026-12-01T21:30:53.483456Z",
        "action": "Detected",
        "reason": "OOMKilling",
        "note": "Killed process 12 (python3)",
        "type": "Warning",
        "regarding": {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "uid-x"},
        "reportingController": "npd-ext",
        "reportingInstance": NODE,
    })
}

async fn started(api: &FakeApi) -> Exporter {
    api.add_node(NODE);
    let ex = Exporter::start(
        api,
        vec![cond(
            "KernelDeadlock",
            ConditionStatus::False,
            SystemTime::now(),
        )],
    );
    run_until(Duration::from_secs(5), "the Node read", || {
        api.count(&Method::GET, "/nodes/") == 1
    })
    .await;
    ex
}

fn total_count(api: &FakeApi, reason: &str) -> i64 {
    api.events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
        .sum()
}

/// The Status `body`'s message says `text`.
fn assert_says(body: &Value, text: &str) {
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains(text)),
        "{body}"
    );
}

fn refused(api: &FakeApi) -> Vec<String> {
    api.log()
        .iter()
        .filter(|l| l.status >= 400)
        .map(|l| format!("{} {} {}: {}", l.method, l.path, l.status, l.body))
        .collect()
}

#[tokio::test]
async fn the_fake_refuses_what_the_real_server_refuses() {
    let api = FakeApi::start().await;
    let json = "application/json";
    let (code, _) = api.send("POST", EVENTS, json, &good_event("n1.1")).await;
    assert_eq!(code, 201);

    // The series update of issue 13: 8 fractional digits in a MicroTime.
    let patch =
        json!({"series": {"count": 2, "lastObservedTime": "2026-12-01T21:30:53.48345672Z"}});
    let (code, body) = api
        .send("PATCH", &format!("{EVENTS}/n1.1"), MERGE, &patch)
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["reason"], "Invalid");
    assert_says(
        &body,
        r#"parsing time "2026-12-01T21:30:53.48345672Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "72Z" as "Z07:00""#,
    );
    // Six digits: accepted; a count below 2: refused.
    let ok = json!({"series": {"count": 2, "lastObservedTime": "2026-12-01T21:30:53.483456Z"}});
    assert_eq!(
        api.send("PATCH", &format!("{EVENTS}/n1.1"), MERGE, &ok)
            .await
            .0,
        200
    );
    let low = json!({"series": {"count": 1, "lastObservedTime": "2026-12-01T21:31:00.000000Z"}});
    let (code, body) = api
        .send("PATCH", &format!("{EVENTS}/n1.1"), MERGE, &low)
        .await;
    assert_eq!(
        (code, body["details"]["causes"][0]["field"].clone()),
        (422, json!("series.count")),
        "{body}"
    );
    // The note (`message` inside the server) is immutable.
    let (code, body) = api
        .send(
            "PATCH",
            &format!("{EVENTS}/n1.1"),
            MERGE,
            &json!({"note": "other"}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_says(
        &body,
        "message: Invalid value: \"other\": field is immutable",
    );

    // Creates: required fields, type, name, times.
    let mut bad = good_event("n1.2");
    for key in [
        "reportingController",
        "reportingInstance",
        "action",
        "eventTime",
    ] {
        bad.as_object_mut().expect("object").remove(key);
    }
    bad["type"] = json!("Error");
    let (code, body) = api.send("POST", EVENTS, json, &bad).await;
    assert_eq!(code, 422, "{body}");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    for f in [
        "reportingController",
        "reportingInstance",
        "action",
        "eventTime",
        "type",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    assert_eq!(body["details"]["kind"], "Event");
    let (code, body) = api
        .send("POST", EVENTS, json, &good_event("Node_1.x"))
        .await;
    assert_eq!(code, 422);
    assert_says(&body, "a lowercase RFC 1123 subdomain");
    let mut late = good_event("n1.3");
    late["eventTime"] = json!("2026-12-01T21:30:53.4834Z");
    let (code, body) = api.send("POST", EVENTS, json, &late).await;
    assert_eq!(code, 400, "{body}");
    let mut legacy = good_event("n1.4");
    legacy["deprecatedCount"] = json!(3);
    assert_eq!(api.send("POST", EVENTS, json, &legacy).await.0, 422);
    let mut long = good_event("n1.5");
    long["note"] = json!("x".repeat(1025));
    assert_eq!(api.send("POST", EVENTS, json, &long).await.0, 422);

    // A Node status patch whose times are not whole seconds.
    api.add_node(NODE);
    let patch = json!({"status": {"conditions": [{"type": "X", "status": "True",
        "lastHeartbeatTime": "2026-12-01T21:30:53.5Z", "lastTransitionTime": "2026-12-01T21:30:53Z"}]}});
    let (code, _) = api
        .send(
            "PATCH",
            &format!("/api/v1/nodes/{NODE}/status"),
            common::fake_api::STRATEGIC,
            &patch,
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        !api.conditions(NODE).contains_key("X"),
        "a refused patch changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn one_line_eight_times_over_90_s_reaches_the_cluster_with_a_count_of_8() {
    let api = FakeApi::start().await;
    let ex = started(&api).await;
    for _ in 0..8 {
        emit(
            &ex,
            "kernel-monitor",
            "OOMKilling",
            "Killed process 4242 (python3)",
        );
        tokio::time::sleep(Duration::from_secs(90) / 7).await;
    }
    run_until(FLUSH_EVERY * 3, "a count of 8", || {
        total_count(&api, "OOMKilling") == 8
    })
    .await;
    let events = api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(refused(&api).is_empty(), "{:?}", refused(&api));
    let patches: Vec<Value> = api
        .log()
        .into_iter()
        .filter(|l| l.method == Method::PATCH && l.path.contains("/events/"))
        .map(|l| l.body)
        .collect();
    assert!(!patches.is_empty());
    for p in &patches {
        let keys: Vec<&String> = p.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["series"], "a series patch is the series only: {p}");
    }
    assert_eq!(
        ex.metric("npd_ext_k8s_requests_total", &[("result", "error")]),
        0
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_hundred_distinct_oom_kills_are_a_dozen_events_counting_all_of_them() {
    let api = FakeApi::start().await;
    let ex = started(&api).await;
    for i in 0..200 {
        let m = format!(
            "Out of memory: Killed process {} (worker-{i}) total-vm:{}kB",
            10_000 + i,
            4_000_000 + i
        );
        emit(&ex, "kernel-monitor", "OOMKilling", &m);
    }
    emit(
        &ex,
        "kernel-monitor",
        "TaskHung",
        "INFO: task jbd2/sda1-8:412 blocked for more than 120 seconds.",
    );
    run_until(FLUSH_EVERY * 2, "all 200 counted", || {
        total_count(&api, "OOMKilling") == 200
    })
    .await;
    let events = api.events();
    let oom: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "OOMKilling")
        .collect();
    assert_eq!(
        oom.len(),
        SIMILAR_LIMIT + 1,
        "10 of their own and one combined"
    );
    let combined = oom
        .iter()
        .find(|e| {
            e["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("(combined from similar events): "))
        })
        .expect("the combined Event");
    assert_eq!(combined["series"]["count"], 190);
    assert!(
        events.iter().any(|e| e["reason"] == "TaskHung"),
        "another reason is not starved"
    );
    let requests = api
        .log()
        .iter()
        .filter(|l| l.path.contains("/events"))
        .count();
    eprintln!(
        "200 distinct OOM kills and a hung task: {} Events, {requests} event requests",
        events.len()
    );
    assert!(requests <= 13, "{requests} event requests");
    // Nothing more trickles out later.
    api.clear_log();
    tokio::time::sleep(AGGREGATE_WINDOW * 2).await;
    assert_eq!(
        api.count(&Method::POST, "/events") + api.count(&Method::PATCH, "/events"),
        0
    );
    assert_eq!(ex.metric("npd_ext_events_dropped_total", &[]), 0);
    assert_eq!(
        ex.metric(
            "npd_ext_k8s_events_folded_total",
            &[("reason", "OOMKilling")]
        ),
        200 - 11
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_10_000_at_production_size_is_counted_or_shows_as_lagged() {
    let api = FakeApi::start().await;
    let ex = started(&api).await;
    // Faster than any writer: the broadcast (the detector's size) overflows.
    for i in 0..10_000 {
        emit(
            &ex,
            "gpu-monitor",
            "XID79",
            &format!("gpu={} XID 79 (fallen off the bus)", i % 8),
        );
    }
    let lagged = || ex.metric("npd_ext_events_dropped_total", &[("reason", "lagged")]);
    run_until(FLUSH_EVERY * 3, "every occurrence accounted for", || {
        total_count(&api, "XID79") as u64 + lagged() == 10_000
    })
    .await;
    assert!(lagged() > 0, "a burst of 10 000 into 1 024 slots lags");
    assert_eq!(api.events().len(), 8, "one Event per GPU");
    assert!(refused(&api).is_empty(), "{:?}", refused(&api));
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_event_not_written_within_its_window_is_dropped_not_written_late() {
    let api = FakeApi::start().await;
    let ex = started(&api).await;
    api.fault(Some(Method::POST), "/events", Fault::Status(503), None);
    for i in 0..3 {
        emit(
            &ex,
            "kernel-monitor",
            "OOMKilling",
            &format!("Killed process {i}"),
        );
    }
    run_until(Duration::from_secs(10), "a failed create", || {
        api.count(&Method::POST, "/events") >= 1
    })
    .await;
    assert_eq!(
        ex.metric(
            "npd_ext_k8s_requests_total",
            &[("op", "create_event"), ("result", "error")]
        ) as usize,
        api.count(&Method::POST, "/events")
    );
    assert_eq!(
        ex.metric("npd_ext_k8s_requests_total", &[("op", "patch_event")]),
        0,
        "a failed create is not a patch"
    );
    tokio::time::sleep(AGGREGATE_WINDOW + Duration::from_secs(30)).await;
    api.clear_faults();
    let tried = api.count(&Method::POST, "/events");
    tokio::time::sleep(AGGREGATE_WINDOW).await;
    assert!(
        api.events().is_empty(),
        "nothing written late: {:?}",
        api.events()
    );
    assert_eq!(
        api.count(&Method::POST, "/events"),
        tried,
        "not even tried after the window"
    );
    assert_eq!(
        ex.metric("npd_ext_events_dropped_total", &[("reason", "expired")]),
        3
    );
    // A fresh one after the outage is written at once.
    emit(&ex, "kernel-monitor", "OOMKilling", "Killed process 99");
    run_until(Duration::from_secs(5), "the fresh Event", || {
        api.events().len() == 1
    })
    .await;
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_says_when_the_owner_last_confirmed_not_when_it_was_written() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let confirmed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let ex = Exporter::start(
        &api,
        vec![cond("KernelDeadlock", ConditionStatus::False, confirmed)],
    );
    run_until(Duration::from_secs(5), "the first write", || {
        api.count(&Method::PATCH, "/status") == 1
    })
    .await;
    // Heartbeats go on, and none makes the condition look fresher.
    tokio::time::sleep(Duration::from_secs(3 * 330)).await;
    assert!(api.count(&Method::PATCH, "/status") >= 3);
    let c = &api.conditions(NODE)["KernelDeadlock"];
    assert_eq!(
        c["lastHeartbeatTime"],
        npd_ext::problem::format_time(confirmed),
        "{c}"
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_create_that_timed_out_but_was_stored_is_not_written_twice() {
    let api = FakeApi::start().await;
    let ex = started(&api).await;
    // The server stores the Event but answers after the call's deadline.
    api.fault(
        Some(Method::POST),
        "/events",
        Fault::Late(npd_ext::exporter::k8s::CALL_TIMEOUT + Duration::from_secs(5)),
        Some(1),
    );
    emit(&ex, "kernel-monitor", "OOMKilling", "Killed process 7");
    run_until(Duration::from_secs(120), "the retry", || {
        api.count(&Method::POST, "/events") == 2
    })
    .await;
    run_until(Duration::from_secs(5), "the retry's answer", || {
        api.log()
            .iter()
            .filter(|l| l.method == Method::POST)
            .count()
            == 2
            && api.log().iter().any(|l| l.status == 409)
    })
    .await;
    emit(&ex, "kernel-monitor", "OOMKilling", "Killed process 7");
    run_until(FLUSH_EVERY * 2, "a count of 2", || {
        total_count(&api, "OOMKilling") == 2
    })
    .await;
    assert_eq!(api.events().len(), 1, "one Event, not two");
    assert_eq!(ex.metric("npd_ext_events_dropped_total", &[]), 0);
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn what_is_published_while_the_writer_is_down_is_taken_by_its_next_run() {
    use npd_ext::exporter::k8s::{K8sMetrics, Writers};
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let (tx, _) = tokio::sync::broadcast::channel(npd_ext::detector::PUBLISHED_CAPACITY);
    let registry = prometheus::Registry::new();
    let client = npd_ext::exporter::k8s::client(kube::Config::new(api.url().parse().expect("url")))
        .expect("client");
    let writers = Writers::new(
        client,
        common::k8s_harness::options(),
        K8sMetrics::register(&registry),
        tx.subscribe(),
    );
    let (conditions_tx, conditions) = tokio::sync::watch::channel(std::sync::Arc::new(vec![]));
    let liveness = npd_ext::liveness::Liveness::new();
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(writers.conditions(conditions, liveness.slot("c").pulse(None), token.clone()));
    let run = tokio_util::sync::CancellationToken::new();
    let first = tokio::spawn(writers.events(liveness.slot("e").pulse(None), run.clone()));
    tx.send(published(
        "kernel-monitor",
        "OOMKilling",
        "Killed process 1",
    ))
    .expect("subscriber");
    run_until(Duration::from_secs(5), "the first Event", || {
        api.events().len() == 1
    })
    .await;
    // The writer stops (as a panicked one would), things happen, it runs again.
    run.cancel();
    first.await.expect("ends");
    for _ in 0..4 {
        tx.send(published(
            "kernel-monitor",
            "OOMKilling",
            "Killed process 1",
        ))
        .expect("subscriber");
    }
    tx.send(published("kernel-monitor", "TaskHung", "task x:1 blocked"))
        .expect("subscriber");
    let again = tokio_util::sync::CancellationToken::new();
    tokio::spawn(writers.events(liveness.slot("e2").pulse(None), again.clone()));
    run_until(FLUSH_EVERY * 2, "all of it written", || {
        total_count(&api, "OOMKilling") == 5 && total_count(&api, "TaskHung") == 1
    })
    .await;
    assert_eq!(
        api.events().len(),
        2,
        "the first Event's count grew: no second one"
    );
    again.cancel();
    token.cancel();
    drop(conditions_tx);
}

//! Taints from conditions and the fleet-wide circuit breaker
//! (`--taint-policy`), against the in-process fake API server, which lists
//! Nodes by label selector with `limit`, `continue` and
//! `remainingItemCount` as kube-apiserver does, and validates every Node
//! patch (tests/common/fake_nodes.rs). The tokio clock is paused where
//! minutes pass.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::fake_api::{FakeApi, Fault};
use common::fake_nodes::JSON_PATCH;
use common::k8s_harness::{Exporter, NODE, cond, options, run_until};
use hyper::Method;
use npd_ext::config::taint_policy::{self, TaintPolicy};
use npd_ext::problem::ConditionStatus::{False, True, Unknown};
use serde_json::{Value, json};

const GPU_LOST: &str = "npd-ext.io/gpu-lost:NoSchedule";
const LABEL: &str = "npd-ext.io/quarantined";

fn policy(text: &str) -> Arc<TaintPolicy> {
    let checked = taint_policy::check(Path::new("taint-policy.json"), text);
    let errors: Vec<String> = checked.errors().map(ToString::to_string).collect();
    Arc::new(checked.config.unwrap_or_else(|| panic!("{errors:?}")))
}

/// The issue's interface example, with a shorter retry.
fn example() -> Arc<TaintPolicy> {
    policy(
        r#"{"maxShare": "10%", "maxCount": 50, "retryAfter": "30s",
            "taints": [{"condition": "GPULost", "key": "npd-ext.io/gpu-lost", "effect": "NoSchedule"},
                       {"condition": "GPURebootRequired", "effect": "NoSchedule"}]}"#,
    )
}

fn start(
    api: &FakeApi,
    node: &str,
    p: &Arc<TaintPolicy>,
    initial: Vec<npd_ext::conditions::NodeCondition>,
) -> Exporter {
    let mut opts = options();
    opts.node = node.to_owned();
    opts.taints = Some(Arc::clone(p));
    Exporter::start_with(api, initial, opts)
}

fn events(api: &FakeApi, node: &str, reason: &str) -> Vec<Value> {
    api.events()
        .into_iter()
        .filter(|e| e["reason"] == reason && e["regarding"]["name"] == node)
        .collect()
}

fn node_patches(api: &FakeApi, node: &str) -> Vec<common::fake_api::Logged> {
    api.log()
        .into_iter()
        .filter(|l| l.method == Method::PATCH && l.path == format!("/api/v1/nodes/{node}"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_true_condition_taints_and_labels_the_node_and_false_takes_both_off() {
    let api = FakeApi::start().await;
    api.add_nodes("gpu", 19);
    api.add_node(NODE);
    api.set_taints(
        NODE,
        json!([{"key": "example.com/maintenance", "value": "bios", "effect": "NoSchedule"}]),
    );
    let t0 = SystemTime::now();
    let ex = start(&api, NODE, &example(), vec![cond("GPULost", False, t0)]);
    run_until(Duration::from_secs(10), "the conditions written", || {
        api.conditions(NODE).contains_key("GPULost")
    })
    .await;
    assert!(node_patches(&api, NODE).is_empty(), "False adds nothing");

    ex.set(vec![cond("GPULost", True, t0)]);
    run_until(Duration::from_secs(10), "the taint", || {
        api.taints(NODE).len() == 2
    })
    .await;
    assert_eq!(
        api.taints(NODE),
        ["example.com/maintenance=bios:NoSchedule", GPU_LOST],
        "another's taint kept in its place"
    );
    assert_eq!(api.label(NODE, LABEL).as_deref(), Some("true"));
    let node = api.node(NODE).expect("node");
    assert!(node["spec"]["taints"][1]["timeAdded"].is_string());
    // JSON patches, each first testing the resourceVersion it read; one
    // written (the conditions writer's status writes also move the
    // resourceVersion, and a patch that raced one is refused and planned
    // again).
    let patches = node_patches(&api, NODE);
    for p in &patches {
        assert_eq!(p.content_type.as_deref(), Some(JSON_PATCH));
        assert_eq!(p.body[0]["op"], "test");
        assert_eq!(p.body[0]["path"], "/metadata/resourceVersion");
        assert!(p.status == 200 || p.status == 422, "{}", p.status);
    }
    assert_eq!(patches.iter().filter(|p| p.status == 200).count(), 1);
    // The breaker counted with two small lists, never a list of every node.
    let lists: Vec<String> = api
        .log()
        .iter()
        .filter(|l| l.method == Method::GET && l.path == "/api/v1/nodes")
        .map(|l| l.query.clone())
        .collect();
    assert_eq!(
        lists,
        [
            "&limit=1",
            "&labelSelector=npd-ext.io%2Fquarantined%3Dtrue&limit=3"
        ],
        "{lists:?}"
    );
    run_until(Duration::from_secs(10), "the TaintAdded event", || {
        !events(&api, NODE, "TaintAdded").is_empty()
    })
    .await;
    let added = &events(&api, NODE, "TaintAdded")[0];
    assert_eq!(added["type"], "Warning");
    assert_eq!(
        added["note"],
        "added taint npd-ext.io/gpu-lost:NoSchedule: GPULost is True (GPULostTrue: GPULost is True)"
    );

    ex.set(vec![cond("GPULost", False, t0 + Duration::from_secs(60))]);
    run_until(Duration::from_secs(10), "the taint gone", || {
        api.taints(NODE).len() == 1
    })
    .await;
    assert_eq!(
        api.taints(NODE),
        ["example.com/maintenance=bios:NoSchedule"]
    );
    assert_eq!(
        api.label(NODE, LABEL),
        None,
        "the label goes with the last taint"
    );
    run_until(Duration::from_secs(10), "the TaintRemoved event", || {
        !events(&api, NODE, "TaintRemoved").is_empty()
    })
    .await;
    let removed = &events(&api, NODE, "TaintRemoved")[0];
    assert_eq!(removed["type"], "Normal");
    assert!(
        removed["note"].as_str().is_some_and(
            |n| n.starts_with("removed taint npd-ext.io/gpu-lost:NoSchedule: GPULost is False")
        ),
        "{removed}"
    );
    assert_eq!(
        ex.metric(
            "npd_ext_k8s_requests_total",
            &[("op", "patch_node"), ("result", "ok")]
        ),
        2
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn of_twenty_nodes_two_are_quarantined_and_the_third_is_refused_until_one_recovers() {
    let api = FakeApi::start().await;
    let names = api.add_nodes("gpu", 20);
    let p = example();
    let t0 = SystemTime::now();
    let lost = || vec![cond("GPULost", True, t0)];
    let a = start(&api, &names[0], &p, lost());
    run_until(Duration::from_secs(10), "node 0 tainted", || {
        api.taints(&names[0]) == [GPU_LOST]
    })
    .await;
    let b = start(&api, &names[1], &p, lost());
    run_until(Duration::from_secs(10), "node 1 tainted", || {
        api.taints(&names[1]) == [GPU_LOST]
    })
    .await;
    let c = start(&api, &names[2], &p, lost());
    run_until(Duration::from_secs(10), "the refusal", || {
        !events(&api, &names[2], "QuarantineRefused").is_empty()
    })
    .await;
    assert!(api.taints(&names[2]).is_empty());
    assert_eq!(api.label(&names[2], LABEL), None);
    let refused = &events(&api, &names[2], "QuarantineRefused")[0];
    assert_eq!(refused["type"], "Warning");
    assert_eq!(
        refused["note"],
        "not adding taint npd-ext.io/gpu-lost:NoSchedule for GPULost is True (GPULostTrue: GPULost is True): 2 of 20 nodes are quarantined (npd-ext.io/quarantined=true); the policy allows 2 (maxShare 10%, maxCount 50); trying again in 30s"
    );
    assert_eq!(
        c.metric(
            "npd_ext_quarantine_refused_total",
            &[("condition", "GPULost")]
        ),
        1
    );
    // Its condition is on its Node all the same.
    assert_eq!(api.conditions(&names[2])["GPULost"]["status"], "True");

    // Node 0 recovers: its taint and label go, and node 2's next try fits.
    a.set(vec![cond("GPULost", False, t0)]);
    run_until(Duration::from_secs(10), "node 0 untainted", || {
        api.label(&names[0], LABEL).is_none()
    })
    .await;
    run_until(
        Duration::from_secs(60),
        "node 2 tainted on its retry",
        || api.taints(&names[2]) == [GPU_LOST],
    )
    .await;
    let quarantined: Vec<&String> = names
        .iter()
        .filter(|n| api.label(n, LABEL).is_some())
        .collect();
    assert_eq!(quarantined, [&names[1], &names[2]]);
    for ex in [a, b, c] {
        ex.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_writer_between_the_read_and_the_patch_is_never_overwritten() {
    let api = FakeApi::start().await;
    api.add_nodes("gpu", 19);
    api.add_node(NODE);
    let t0 = SystemTime::now();
    // Already quarantined for another condition, so the next taint is a
    // read and a patch with no count between them.
    let ex = start(
        &api,
        NODE,
        &example(),
        vec![
            cond("GPULost", False, t0),
            cond("GPURebootRequired", True, t0),
        ],
    );
    let reboot = "npd-ext.io/gpu-reboot-required:NoSchedule";
    run_until(Duration::from_secs(10), "the first taint", || {
        api.taints(NODE) == [reboot]
    })
    .await;
    api.clear_log();
    // The next read of the Node is answered late; meanwhile the node
    // lifecycle controller taints it.
    api.fault(
        Some(Method::GET),
        &format!("/api/v1/nodes/{NODE}"),
        Fault::Late(Duration::from_secs(1)),
        Some(1),
    );
    ex.set(vec![
        cond("GPULost", True, t0),
        cond("GPURebootRequired", True, t0),
    ]);
    run_until(Duration::from_secs(10), "the read", || {
        api.count(&Method::GET, &format!("/api/v1/nodes/{NODE}")) > 0
    })
    .await;
    api.set_taints(
        NODE,
        json!([
            {"key": "npd-ext.io/gpu-reboot-required", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        ]),
    );
    run_until(Duration::from_secs(20), "our taint", || {
        api.taints(NODE).len() == 3
    })
    .await;
    assert_eq!(
        api.taints(NODE),
        [reboot, "node.kubernetes.io/unreachable:NoExecute", GPU_LOST]
    );
    let statuses: Vec<u16> = node_patches(&api, NODE).iter().map(|l| l.status).collect();
    assert_eq!(
        statuses.first(),
        Some(&422),
        "the stale patch refused: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&200), "then written: {statuses:?}");
    assert!(
        api.log().iter().all(|l| l.path != "/api/v1/nodes"),
        "no count"
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_reconciles_the_node_with_the_conditions() {
    let api = FakeApi::start().await;
    api.add_nodes("gpu", 19);
    api.add_node(NODE);
    // Left by the last run: GPULost's taint, a taint of a rule since
    // removed from the policy, the label, and someone else's taint.
    api.set_taints(
        NODE,
        json!([
            {"key": "npd-ext.io/gpu-lost", "effect": "NoSchedule"},
            {"key": "npd-ext.io/kernel-deadlock", "effect": "NoExecute"},
            {"key": "example.com/keep", "effect": "NoSchedule"},
        ]),
    );
    api.set_label(NODE, LABEL, Some("true"));
    let t0 = SystemTime::now();
    // Nothing reported yet: the Node keeps GPULost's taint; the one no rule
    // names goes.
    let ex = start(&api, NODE, &example(), vec![]);
    run_until(Duration::from_secs(10), "the stale taint gone", || {
        api.taints(NODE).len() == 2
    })
    .await;
    assert_eq!(api.taints(NODE), [GPU_LOST, "example.com/keep:NoSchedule"]);
    assert_eq!(api.label(NODE, LABEL).as_deref(), Some("true"));
    // GPULost Unknown (its monitor cannot be reached): kept.
    ex.set(vec![cond("GPULost", Unknown, t0)]);
    // True again: already there, and the node already quarantined — no
    // write, and no count of the fleet.
    ex.set(vec![cond("GPULost", True, t0)]);
    run_until(Duration::from_secs(10), "the conditions written", || {
        api.conditions(NODE)
            .get("GPULost")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        node_patches(&api, NODE).len(),
        1,
        "only the stale taint's removal"
    );
    assert!(
        api.log()
            .iter()
            .all(|l| !(l.method == Method::GET && l.path == "/api/v1/nodes")),
        "no count for a node already quarantined"
    );
    // False: the taint and the label go.
    ex.set(vec![cond("GPULost", False, t0)]);
    run_until(Duration::from_secs(10), "untainted", || {
        api.taints(NODE) == ["example.com/keep:NoSchedule"]
    })
    .await;
    assert_eq!(api.label(NODE, LABEL), None);
    let removed = events(&api, NODE, "TaintRemoved");
    run_until(Duration::from_secs(10), "both removals said", || {
        events(&api, NODE, "TaintRemoved").len() + removed.len() >= 2
    })
    .await;
    let notes: Vec<String> = api
        .events()
        .iter()
        .filter(|e| e["reason"] == "TaintRemoved")
        .filter_map(|e| e["note"].as_str().map(str::to_owned))
        .collect();
    assert!(
        notes.iter().any(|n| n.contains(
            "npd-ext.io/kernel-deadlock:NoExecute: no rule of the taint policy taint-policy.json"
        )),
        "{notes:?}"
    );
    ex.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_breaker_that_cannot_count_refuses() {
    let api = FakeApi::start().await;
    api.add_nodes("gpu", 19);
    api.add_node(NODE);
    // The lists fail; the Node itself is read as ever.
    api.fault(
        Some(Method::GET),
        "/api/v1/nodes?",
        Fault::Status(503),
        None,
    );
    let t0 = SystemTime::now();
    let ex = start(&api, NODE, &example(), vec![cond("GPULost", True, t0)]);
    run_until(Duration::from_secs(10), "the refusal", || {
        !events(&api, NODE, "QuarantineRefused").is_empty()
    })
    .await;
    assert!(api.taints(NODE).is_empty());
    let note = events(&api, NODE, "QuarantineRefused")[0]["note"].clone();
    assert!(
        note.as_str()
            .is_some_and(|n| n.contains("cannot count nodes")
                && n.contains("the breaker refuses what it cannot count")),
        "{note}"
    );
    ex.stop().await;
}

/// The fake API server lists and patches Nodes as kube-apiserver does: the
/// semantics the breaker and the taint writer rely on, and the refusals a
/// wrong patch would get.
#[tokio::test]
async fn the_fake_lists_and_patches_nodes_as_the_real_server_does() {
    let api = FakeApi::start().await;
    let names = api.add_nodes("gpu", 20);
    for n in &names[..3] {
        api.set_label(n, LABEL, Some("true"));
    }
    let get = |q: &str| {
        let api = api.clone();
        let q = q.to_owned();
        async move {
            api.send(
                "GET",
                &format!("/api/v1/nodes?{q}"),
                "application/json",
                &Value::Null,
            )
            .await
        }
    };
    // Without a selector: one item, a continue token, the rest counted.
    let (code, all) = get("limit=1").await;
    assert_eq!(code, 200);
    assert_eq!(all["kind"], "NodeList");
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(all["metadata"]["remainingItemCount"], 19);
    assert!(all["metadata"]["continue"].is_string());
    // With a selector: no count (etcd's count would include non-matching
    // keys), only a continue token; following it pages through the rest.
    let (_, q) = get("labelSelector=npd-ext.io%2Fquarantined%3Dtrue&limit=1").await;
    assert_eq!(q["items"][0]["metadata"]["name"], names[0]);
    assert!(q["metadata"].get("remainingItemCount").is_none(), "{q}");
    let mut seen = vec![q["items"][0]["metadata"]["name"].clone()];
    let mut token = q["metadata"]["continue"].as_str().map(str::to_owned);
    while let Some(t) = token {
        let (_, page) = get(&format!(
            "labelSelector=npd-ext.io%2Fquarantined%3Dtrue&limit=1&continue={t}"
        ))
        .await;
        seen.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["metadata"]["name"].clone()),
        );
        token = page["metadata"]["continue"].as_str().map(str::to_owned);
    }
    assert_eq!(
        seen,
        names[..3].iter().map(|n| json!(n)).collect::<Vec<_>>()
    );
    // Exactly `limit` matches with other nodes after them: a full page
    // says "more" (etcd pages by key, not by match), and the next is empty.
    let (_, q) = get("labelSelector=npd-ext.io%2Fquarantined%3Dtrue&limit=3").await;
    assert_eq!(q["items"].as_array().map(Vec::len), Some(3));
    let t = q["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();
    let (_, next) = get(&format!(
        "labelSelector=npd-ext.io%2Fquarantined%3Dtrue&limit=3&continue={t}"
    ))
    .await;
    assert_eq!(next["items"].as_array().map(Vec::len), Some(0));
    assert!(next["metadata"].get("continue").is_none());
    // All of them within the limit: no continue, no count.
    let (_, q) = get("labelSelector=npd-ext.io%2Fquarantined%3Dtrue&limit=5").await;
    assert_eq!(q["items"].as_array().map(Vec::len), Some(3));
    assert!(q["metadata"].get("continue").is_none());
    assert!(q["metadata"].get("remainingItemCount").is_none());
    let (_, q) = get("labelSelector=npd-ext.io%2Fquarantined!%3Dtrue").await;
    assert_eq!(q["items"].as_array().map(Vec::len), Some(17));
    let (code, bad) = get("labelSelector=a%20b%3Dc").await;
    assert_eq!(code, 400, "{bad}");

    let node = &names[5];
    let path = format!("/api/v1/nodes/{node}");
    let rv = api.node(node).expect("node")["metadata"]["resourceVersion"].clone();
    let patch = |ops: Value| {
        let (api, path) = (api.clone(), path.clone());
        async move { api.send("PATCH", &path, JSON_PATCH, &ops).await }
    };
    // A taint the real server refuses, each with its field.
    for (taint, field, reason) in [
        (
            json!({"key": "npd-ext.io/x", "effect": "NoEvict"}),
            "metadata.taints[0].effect",
            "FieldValueNotSupported",
        ),
        (
            json!({"key": "npd-ext.io/-x", "effect": "NoSchedule"}),
            "metadata.taints[0].key",
            "FieldValueInvalid",
        ),
        (
            json!({"key": "npd-ext.io/x", "value": "a b", "effect": "NoSchedule"}),
            "metadata.taints[0].value",
            "FieldValueInvalid",
        ),
    ] {
        let (code, body) =
            patch(json!([{"op": "add", "path": "/spec/taints", "value": [taint]}])).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(body["details"]["causes"][0]["field"], field, "{body}");
        assert_eq!(body["details"]["causes"][0]["reason"], reason, "{body}");
    }
    let dup = json!({"key": "npd-ext.io/x", "effect": "NoSchedule"});
    let (code, body) =
        patch(json!([{"op": "add", "path": "/spec/taints", "value": [dup, dup]}])).await;
    assert_eq!(code, 422);
    assert_eq!(
        body["details"]["causes"][0]["reason"], "FieldValueDuplicate",
        "{body}"
    );
    // A stale test is refused; a current one writes.
    let (code, _) = patch(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/spec/taints", "value": [dup]},
    ]))
    .await;
    assert_eq!(code, 422);
    let (code, written) = patch(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/spec/taints", "value": [dup]},
        {"op": "replace", "path": "/status/conditions", "value": []},
    ]))
    .await;
    assert_eq!(code, 200, "{written}");
    assert_eq!(api.taints(node), ["npd-ext.io/x:NoSchedule"]);
    assert_eq!(
        api.conditions(node).len(),
        1,
        "the main resource does not write status"
    );
    // A merge patch carrying a stale resourceVersion conflicts.
    let (code, body) = api
        .send(
            "PATCH",
            &path,
            common::fake_api::MERGE,
            &json!({"metadata": {"resourceVersion": rv}, "spec": {"taints": null}}),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["reason"], "Conflict");
    let (code, _) = api
        .send("PATCH", &path, "application/json", &json!({}))
        .await;
    assert_eq!(code, 415);
}

/// The real binaries: gpu-monitor (sim, XID 79 on GPU 3 after 2 s, cleared
/// after 10 s) over its Unix socket, and the detector with the shipped
/// GPU config and the shipped taint policy (manifests/components/taints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_binary_taints_for_a_fallen_gpu_and_untaints_when_it_returns() {
    let api = FakeApi::start().await;
    api.add_nodes("gpu", 19);
    api.add_node(NODE);
    let dir = common::tempdir();
    let socket = common::sock(&dir);
    let mut plugin = Reaped(common::spawn_sim_plugin(&socket, "builtin:xid79"));
    let cfg = dir.path().join("external-gpu-monitor.json");
    let text = common::shipped_config("external-gpu-monitor.json").replace(
        "/var/run/npd/npd-gpu-monitor.sock",
        &socket.display().to_string(),
    );
    std::fs::write(&cfg, text).expect("config");
    let policy =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/components/taints/taint-policy.json");
    let mut detector = Reaped(
        common::k8s_harness::detector_binary(&api, dir.path())
            .arg("--config.external-monitor")
            .arg(&cfg)
            .arg("--taint-policy")
            .arg(&policy)
            .spawn()
            .expect("detector starts"),
    );
    let wait = |what: &'static str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what}: {:#?}",
                api.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // XID 79 is GPULost and GPURebootRequired: both taints, one quarantine.
    let reboot = "npd-ext.io/gpu-reboot-required:NoSchedule";
    wait("taints", &|| api.taints(NODE).len() == 2);
    let mut taints = api.taints(NODE);
    taints.sort();
    assert_eq!(taints, [GPU_LOST, reboot]);
    assert_eq!(api.label(NODE, LABEL).as_deref(), Some("true"));
    wait("TaintAdded", &|| {
        events(&api, NODE, "TaintAdded").len() == 2
    });
    let notes: Vec<String> = events(&api, NODE, "TaintAdded")
        .iter()
        .filter_map(|e| e["note"].as_str().map(str::to_owned))
        .collect();
    assert!(
        notes.iter().any(|n| n
            .starts_with("added taint npd-ext.io/gpu-lost:NoSchedule: GPULost is True")
            && n.contains("gpu=3")),
        "{notes:?}"
    );
    // One count, for the node's first quarantine.
    let lists = api
        .log()
        .iter()
        .filter(|l| l.path == "/api/v1/nodes")
        .count();
    assert_eq!(lists, 2);
    wait("untaint", &|| {
        api.taints(NODE).is_empty() && api.label(NODE, LABEL).is_none()
    });
    wait("TaintRemoved", &|| {
        events(&api, NODE, "TaintRemoved").len() == 2
    });
    common::bin::stop(&mut detector.0);
    common::bin::stop(&mut plugin.0);
}

/// A child process killed when the test ends, passed or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_detector_refuses_a_bad_policy_or_one_with_nowhere_to_write() {
    let dir = common::tempdir();
    let cfg = dir.path().join("custom.json");
    let check = common::script(dir.path(), "ok.sh", "exit 0");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"plugin": "custom", "pluginConfig": {{"invoke_interval": "1h"}}, "source": "c",
                 "conditions": [{{"type": "DiskProblem", "reason": "Fine", "message": "ok"}}],
                 "rules": [{{"type": "permanent", "condition": "DiskProblem", "reason": "Bad", "path": "{}"}}]}}"#,
            check.display()
        ),
    )
    .expect("config");
    let bad = dir.path().join("policy.json");
    std::fs::write(&bad, "{\"maxShar\": \"5%\",\n \"taints\": [{\"condition\": \"DiskProblem\", \"effect\": \"NoEvict\"}]}").expect("policy");
    let (code, _, err) = common::bin::run(
        common::bin::detector()
            .arg("--config.custom-plugin-monitor")
            .arg(&cfg)
            .arg("--taint-policy")
            .arg(&bad),
    );
    assert_eq!(code, 1, "{err}");
    let at = bad.display();
    for want in [
        format!("{at}:1:2: error: maxShar: unknown key (did you mean \"maxShare\"?)"),
        format!("{at}:2:52: error: taints[0].effect: unknown effect \"NoEvict\""),
    ] {
        assert!(err.contains(&want), "missing {want:?} in {err}");
    }
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"taints": [{"condition": "DiskProblem"}]}"#).expect("policy");
    let (code, _, err) = common::bin::run(
        common::bin::detector()
            .arg("--config.custom-plugin-monitor")
            .arg(&cfg)
            .arg("--taint-policy")
            .arg(&good),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("taints need the Kubernetes exporter"), "{err}");
    // validate-config says the same of the file.
    let (code, out, _) = common::bin::npd(&["validate-config", &bad.display().to_string()]);
    assert_eq!(code, 1);
    assert!(out.contains("taints[0].effect: unknown effect"), "{out}");
    let (code, out, _) = common::bin::npd(&["validate-config", &good.display().to_string()]);
    assert_eq!(code, 0, "{out}");
}

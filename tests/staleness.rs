//! One staleness model, end to end: a source that cannot see, a task that
//! returned, a Node that cannot be read. Real files, real child processes,
//! the real clock (the sources are threads and processes), the fake API
//! server where the cluster is.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::time::Duration;

use common::fake_api::FakeApi;
use common::k8s_harness::{NODE, options};
use npd_ext::detector::{self, DetectorOptions};
use npd_ext::exporter::k8s;
use serde_json::Value;

/// Polls `f` every 50 ms until it gives `Some`, for at most `limit`.
async fn poll<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition(list: &[Value], t: &str) -> Option<(String, String, String)> {
    let c = list.iter().find(|c| c["type"] == t)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str()?.to_owned(),
    ))
}

fn syslog(
    dir: &std::path::Path,
    name: &str,
    text: &str,
) -> npd_ext::config::syslog::SyslogMonitorConfig {
    let file = dir.join(name);
    let checked = npd_ext::config::syslog::check(&file, text);
    checked
        .config
        .unwrap_or_else(|| panic!("{name}: {:?}", checked.diagnostics))
}

fn start(options: DetectorOptions) -> (npd_ext::shutdown::Shutdown, detector::Detector) {
    let shutdown = npd_ext::shutdown::Shutdown::new();
    let d = detector::start(
        DetectorOptions {
            http: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            ..options
        },
        &shutdown,
    )
    .expect("detector starts");
    (shutdown, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_that_is_gone_turns_unknown_and_comes_back_when_it_does() {
    let dir = common::tempdir();
    let log = dir.path().join("kern.log");
    std::fs::write(&log, "Dec  2 01:00:00 node kernel: eth0: link up\n").expect("log");
    let text = format!(
        r#"{{"plugin": "filelog", "pluginConfig": {{"timestamp": "^.{{15}}", "message": "kernel: (.*)", "timestampFormat": "Jan _2 15:04:05"}},
            "logPath": "{}", "lookback": "5m", "source": "kernel-monitor",
            "conditions": [{{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}}],
            "rules": [{{"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "task docker:\\w+ blocked"}}]}}"#,
        log.display()
    );
    let (shutdown, d) = start(DetectorOptions {
        syslog: vec![syslog(dir.path(), "kernel-monitor.json", &text)],
        ..DetectorOptions::default()
    });
    let http = d.http_addr.expect("http");
    let known = async || {
        let c = common::http_conditions(http).await;
        condition(&c, "KernelDeadlock").filter(|c| c.0 == "False")
    };
    poll(Duration::from_secs(15), "KernelDeadlock False", known).await;
    std::fs::remove_file(&log).expect("rm");
    let (status, reason, message) = poll(
        Duration::from_secs(40),
        "KernelDeadlock Unknown",
        async || {
            let c = common::http_conditions(http).await;
            condition(&c, "KernelDeadlock").filter(|c| c.0 == "Unknown")
        },
    )
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "LogSourceUnreadable")
    );
    assert!(
        message.contains(&format!("{} is gone", log.display())),
        "{message}"
    );
    // The file is back: known again, as the rules keep it.
    std::fs::write(&log, "Dec  2 01:00:01 node kernel: eth0: link up\n").expect("log");
    poll(Duration::from_secs(40), "KernelDeadlock False again", known).await;
    shutdown.token().cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kmsg_device_that_cannot_be_opened_is_unknown_not_false() {
    let dir = common::tempdir();
    let text = format!(
        r#"{{"plugin": "kmsg", "logPath": "{}", "source": "kernel-monitor",
            "conditions": [{{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}}],
            "rules": []}}"#,
        dir.path().join("no-kmsg").display()
    );
    let (shutdown, d) = start(DetectorOptions {
        syslog: vec![syslog(dir.path(), "kmsg.json", &text)],
        ..DetectorOptions::default()
    });
    let http = d.http_addr.expect("http");
    // Never readable: never False, Unknown after the grace.
    let (_, reason, message) = poll(Duration::from_secs(40), "KernelDeadlock", async || {
        let c = common::http_conditions(http).await;
        let c = condition(&c, "KernelDeadlock")?;
        assert_ne!(c.0, "False", "a source never read is not healthy");
        Some(c)
    })
    .await;
    assert_eq!(reason, "LogSourceUnreadable");
    assert!(
        message.contains("cannot open") && message.contains("no-kmsg"),
        "{message}"
    );
    shutdown.token().cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_task_that_returns_is_unknown_and_named_on_healthz() {
    let dir = common::tempdir();
    let text = r#"{"plugin": "kmsg", "source": "kernel-monitor",
        "conditions": [{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "ok"}],
        "rules": [{"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "x"}]}"#;
    let mut cfg = syslog(dir.path(), "broken.json", text);
    // A rule that cannot compile (the config check refuses it; a bug would
    // get past it): the monitor's task returns at once.
    cfg.rules[0].pattern = "((".into();
    let (shutdown, d) = start(DetectorOptions {
        syslog: vec![cfg],
        ..DetectorOptions::default()
    });
    let http = d.http_addr.expect("http");
    let (_, reason, message) = poll(Duration::from_secs(10), "KernelDeadlock", async || {
        condition(&common::http_conditions(http).await, "KernelDeadlock")
    })
    .await;
    assert_eq!(reason, "MonitorStopped");
    assert_eq!(message, "the monitor stopped: its task returned");
    let (code, body) = common::http_get(http, "/healthz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("system-log-monitor kernel-monitor (stopped)"),
        "{body}"
    );
    shutdown.token().cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_be_read_fails_healthz_saying_why() {
    let api = FakeApi::start().await;
    api.add_node("the-real-name");
    let config = kube::Config::new(api.url().parse().expect("url"));
    let mut opts = options();
    opts.wait_timeout = Duration::from_secs(1);
    opts.wait_interval = Duration::from_millis(100);
    let (shutdown, d) = start(DetectorOptions {
        metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
        k8s: Some(k8s::K8sExporter {
            client: k8s::client(config).expect("client"),
            options: opts,
        }),
        node: NODE.into(),
        ..DetectorOptions::default()
    });
    let (http, metrics) = (d.http_addr.expect("http"), d.metrics_addr.expect("metrics"));
    // Within the wait: healthy, retrying.
    let (code, body) = common::http_get(http, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let body = poll(Duration::from_secs(10), "a failing /healthz", async || {
        let (code, body) = common::http_get(http, "/healthz").await;
        (code == 503).then_some(body)
    })
    .await;
    assert!(
        body.contains(&format!(
            "kubernetes conditions (cannot read Node {NODE:?} for"
        )) && body.contains("does not exist (set --hostname-override or NODE_NAME"),
        "{body}"
    );
    let (_, text) = common::http_get(metrics, "/metrics").await;
    assert!(
        text.contains(r#"npd_ext_k8s_requests_total{op="get_node",result="error"}"#),
        "{text}"
    );
    // Still trying: the Node appears under that name, and all is well.
    api.add_node(NODE);
    poll(Duration::from_secs(40), "a healthy /healthz", async || {
        let (code, _) = common::http_get(http, "/healthz").await;
        (code == 200).then_some(())
    })
    .await;
    shutdown.token().cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_whose_journalctl_keeps_dying_is_unknown_on_the_node() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    let dir = common::tempdir();
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).expect("journal dir");
    let cfg = dir.path().join("journald.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"plugin": "journald", "pluginConfig": {{"source": "kernel"}}, "logPath": "{}", "source": "kernel-monitor",
                "conditions": [{{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}}],
                "rules": [{{"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "task docker:\\w+ blocked"}}]}}"#,
            journal.display()
        ),
    )
    .expect("config");
    let mut child = common::k8s_harness::detector_binary(&api, dir.path())
        .arg("--config.system-log-monitor")
        .arg(&cfg)
        .env("NPD_EXT_JOURNALCTL", "/bin/false")
        .spawn()
        .expect("detector starts");
    let c = poll(
        Duration::from_secs(60),
        "KernelDeadlock Unknown on the Node",
        async || {
            let c = api.conditions(NODE).get("KernelDeadlock").cloned()?;
            (c["status"] == "Unknown").then_some(c)
        },
    )
    .await;
    assert_eq!(c["reason"], "LogSourceUnreadable", "{c}");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("/bin/false exited")),
        "{c}"
    );
    assert!(
        api.events()
            .iter()
            .any(|e| e["reason"] == "LogSourceUnreadable"),
        "one warning Event says so"
    );
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().expect("exit").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_is_away_is_degraded_not_a_restart() {
    let api = FakeApi::start().await;
    api.add_node(NODE);
    api.fault(
        Some(hyper::Method::GET),
        "/nodes/",
        common::fake_api::Fault::Status(503),
        None,
    );
    let config = kube::Config::new(api.url().parse().expect("url"));
    let mut opts = options();
    opts.wait_timeout = Duration::from_secs(1);
    opts.wait_interval = Duration::from_millis(100);
    let (shutdown, d) = start(DetectorOptions {
        k8s: Some(k8s::K8sExporter {
            client: k8s::client(config).expect("client"),
            options: opts,
        }),
        node: NODE.into(),
        ..DetectorOptions::default()
    });
    let http = d.http_addr.expect("http");
    let body = poll(Duration::from_secs(10), "a degraded /healthz", async || {
        let (code, body) = common::http_get(http, "/healthz").await;
        assert_eq!(
            code, 200,
            "a server that is away is no reason to restart: {body}"
        );
        body.contains("degraded: kubernetes conditions (cannot read Node")
            .then_some(body)
    })
    .await;
    assert!(body.contains("503"), "{body}");
    api.clear_faults();
    poll(
        Duration::from_secs(40),
        "/healthz no longer degraded",
        async || {
            let (code, body) = common::http_get(http, "/healthz").await;
            (code == 200 && body == "ok\n").then_some(())
        },
    )
    .await;
    shutdown.token().cancel();
}

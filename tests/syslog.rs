//! System log and custom plugin monitors end to end: the kernel monitor we
//! ship (the ConfigMap's kernel-monitor.json) and our filelog config
//! (tests/fixtures) on real files, real plugin scripts, the conditions and
//! events they give and the metrics they count. Upstream's stock configs
//! get the same checks in `compat`.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::time::Duration;

use common::syslog::{config, metric, start, wait_metric};
use common::{find, script, wait_for};
use npd_ext::config::custom;
use npd_ext::detector::DetectorOptions;
use npd_ext::problem::ConditionStatus;

#[tokio::test]
async fn shipped_kernel_monitor_on_kmsg_records() {
    let text = common::shipped_config("kernel-monitor.json");
    let path = common::shipped_configmap();
    // Our config has no DockerHung; an aufs unmount that hangs is its
    // permanent KernelDeadlock.
    common::syslog::kernel_monitor_on_kmsg_records(
        |kmsg: &Path| config(&path, &text, kmsg),
        "umount.aufs",
        "AUFSUmountHung",
    )
    .await;
}

#[tokio::test]
async fn filelog_follows_rotation_and_truncation() {
    common::syslog::filelog_follows_rotation_and_truncation(&common::fixture(
        "kernel-monitor-filelog.json",
    ))
    .await;
}

#[tokio::test]
async fn custom_plugin_sets_clears_and_counts() {
    let dir = common::tempdir();
    let state = dir.path().join("state");
    std::fs::write(&state, "1").expect("state");
    let check = script(
        dir.path(),
        "check_ntp.sh",
        &format!(
            "s=$(cat {})\n[ \"$s\" = 1 ] && echo 'NTP is down' \nexit $s",
            state.display()
        ),
    );
    let text = format!(
        r#"{{"plugin": "custom",
            "pluginConfig": {{"invoke_interval": "200ms", "timeout": "5s", "max_output_length": 80, "concurrency": 3}},
            "source": "ntp-custom-plugin-monitor",
            "conditions": [{{"type": "NTPProblem", "reason": "NTPIsUp", "message": "ntp service is up"}}],
            "rules": [{{"type": "temporary", "reason": "NTPIsDown", "path": "{0}"}},
                      {{"type": "permanent", "condition": "NTPProblem", "reason": "NTPIsDown", "path": "{0}"}}]}}"#,
        check.display()
    );
    let cfg = custom::check(&dir.path().join("c.json"), &text)
        .config
        .expect("valid");
    let (shutdown, d) = start(DetectorOptions {
        custom: vec![cfg],
        ..DetectorOptions::default()
    });
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "NTPProblem True",
        |c| common::has(c, "NTPProblem", ConditionStatus::True),
    )
    .await;
    let n = find(&c, "NTPProblem").expect("declared");
    assert_eq!(
        (n.reason.as_str(), n.message.as_str()),
        ("NTPIsDown", "NTP is down")
    );
    let m = d.metrics_addr.expect("metrics");
    assert_eq!(
        metric(m, "problem_gauge{reason=\"NTPIsDown\",type=\"NTPProblem\"}").await,
        Some(1.0)
    );
    // Both rules have reported the problem (a temporary event, the change
    // to True) before it goes away.
    wait_metric(m, "problem_counter{reason=\"NTPIsDown\"}", |v| v >= 2.0).await;
    std::fs::write(&state, "0").expect("state");
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "NTPProblem False",
        |c| common::has(c, "NTPProblem", ConditionStatus::False),
    )
    .await;
    assert_eq!(find(&c, "NTPProblem").expect("declared").reason, "NTPIsUp");
    assert_eq!(
        metric(m, "problem_gauge{reason=\"NTPIsDown\",type=\"NTPProblem\"}").await,
        Some(0.0),
        "the gauge returns to 0 when the condition clears"
    );
    shutdown.token().cancel();
}

//! The operator's XID policy end to end: `validate-config` says precisely
//! what is wrong and where, gpu-monitor refuses to start on a bad policy,
//! and the real binary (sim backend, 8 GPUs) raises what the policy says,
//! for the GPU that logged the XIDs, naming the policy, over the real
//! Unix-socket gRPC.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin::{BIN, npd, stop, wait_exit};
use common::{fixture, sock, tempdir};
use npd_ext::gpu::{GPU_MEMORY_UNHEALTHY, GPU_RESET_REQUIRED};
use npd_ext::rpc::pb;

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

#[test]
fn validate_config_accepts_the_example_and_says_every_error_with_its_place() {
    let valid = fixture("xid-policy/valid.json");
    let invalid = fixture("xid-policy/invalid.json");
    let (code, out, _) = npd(&["validate-config", path(&valid)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid.json: ok"), "{out}");

    let (code, out, _) = npd(&["validate-config", path(&invalid)]);
    assert_eq!(code, 1, "{out}");
    let f = path(&invalid);
    let want = [
        format!("{f}:2:35: error: xids[0].repeat.count: must be at least 1"),
        format!(
            "{f}:2:48: error: xids[0].repeat.window: invalid duration \"-1h\": negative durations are not allowed"
        ),
        format!("{f}:3:11: error: xids[1].xid: XID 1000 is out of range (1 to 999)"),
        format!(
            "{f}:4:24: error: xids[2].raise: unknown class \"rset\" (valid: event, reset, reboot, memory, hardware, nvlink, nvlink-down)"
        ),
        format!(
            "{f}:6:54: error: xids[4].severity: unknown key (known keys: xid, raise, driver, repeat)"
        ),
        format!(
            "{f}:7:3: error: xids[5]: a second entry for XID 145 (driver >=580) overlaps xids[4] (driver >=575): which one applies would be unclear"
        ),
        format!(
            "{f}:8:26: error: xids[6].driver: invalid driver range: \"R575\" has no comparator (>=, >, <=, <, = before a version)"
        ),
        format!("{f}:9:25: error: xids[7].repeat.window: missing"),
        format!("{f}:9:38: error: xids[7].repeat.windw: unknown key (did you mean \"window\"?)"),
        format!("{f}: invalid (9 errors)"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, want, "{out}");
}

#[test]
fn gpu_monitor_refuses_to_start_on_a_bad_policy_naming_file_line_and_key() {
    let dir = tempdir();
    let socket = sock(&dir);
    let invalid = fixture("xid-policy/invalid.json");
    let mut child = Command::new(BIN)
        .args(["gpu-monitor", "--backend", "sim", "--xid-policy"])
        .arg(&invalid)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(!status.success(), "{status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(
        err.contains(&format!(
            "invalid XID policy {} (--xid-policy)",
            path(&invalid)
        )) && err.contains(&format!(
            "{}:4:24: error: xids[2].raise: unknown class \"rset\"",
            path(&invalid)
        )),
        "{err}"
    );
    assert!(!socket.exists(), "no socket is served");
}

async fn conditions(socket: &Path) -> Option<Vec<pb::Condition>> {
    let channel = npd_ext::rpc::client::lazy_channel(socket);
    let mut client = pb::external_monitor_client::ExternalMonitorClient::new(channel);
    let status = tokio::time::timeout(
        Duration::from_secs(2),
        client.check_health(pb::HealthCheckRequest::default()),
    )
    .await
    .ok()?
    .ok()?;
    Some(status.into_inner().conditions)
}

#[tokio::test]
async fn the_sim_monitor_raises_what_the_policy_says_for_the_gpu_and_names_the_policy() {
    let dir = tempdir();
    let socket = sock(&dir);
    let policy = fixture("xid-policy/sim-policy.json");
    let scenario = fixture("xid-policy/sim-scenario.json");
    let mut child = common::sim_plugin(&socket, &scenario)
        .args(["--sim-gpus", "8", "--xid-policy"])
        .arg(&policy)
        .args(["--poll-interval", "100ms", "--state-dir"])
        .arg(dir.path().join("state"))
        .spawn()
        .expect("spawn gpu-monitor");
    let ids = npd_ext::gpu::sim::identities(8);
    let start = Instant::now();
    let found = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the policy's conditions"
        );
        if let Some(c) = conditions(&socket).await {
            let is_true = |t: &str| {
                c.iter()
                    .find(|x| x.r#type == t)
                    .filter(|x| x.status == pb::ConditionStatus::True as i32)
                    .cloned()
            };
            if let (Some(reset), Some(memory)) =
                (is_true(GPU_RESET_REQUIRED), is_true(GPU_MEMORY_UNHEALTHY))
            {
                break (reset, memory);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (reset, memory) = found;
    let p = path(&policy);
    // Three XID 31s on GPU 6 (the policy's repeat); GPU 2's one does not count.
    assert_eq!(reset.reason, "Xid31Repeated");
    assert!(
        reset.message.contains(&format!(
            "gpu=6 uuid={} pci={}",
            ids[6].uuid, ids[6].pci_bus_id
        )) && !reset.message.contains("gpu=2 ")
            && reset.message.contains(&format!(
                "raised by the XID policy {p} (xids[0]: XID 31 ×3 within 1h0m0s → reset)"
            )),
        "{}",
        reset.message
    );
    // XID 94 (an application's contained error in the catalog) promoted.
    assert!(
        memory
            .message
            .contains(&format!("gpu=4 uuid={}", ids[4].uuid))
            && memory.message.contains(&format!(
                "raised by the XID policy {p} (xids[1]: XID 94 → memory)"
            )),
        "{}",
        memory.message
    );
    stop(&mut child);
}

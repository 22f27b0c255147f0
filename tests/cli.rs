//! Binary-level behaviour: argv[0] dispatch, validate-config, probe, signals,
//! on our own configs (the shipped ConfigMap, tests/fixtures). The same
//! checks on upstream NPD's configs are in compat.rs.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::bin::{BIN, detector_with, npd, read_until, run, sigterm, stop, wait_exit, wait_until};

#[test]
fn argv0_symlinks_dispatch_to_applets() {
    let dir = tempfile::tempdir().expect("tempdir");
    for applet in [
        "detector",
        "gpu-monitor",
        "validate-config",
        "probe",
        "demo",
        "log-counter",
        "health-checker",
    ] {
        let link = dir.path().join(applet);
        symlink(BIN, &link).expect("symlink");
        let (code, out, _) = run(Command::new(&link).arg("--version"));
        assert_eq!(code, 0, "{applet}");
        assert_eq!(
            out.trim(),
            format!("{applet} {}", env!("CARGO_PKG_VERSION"))
        );
        let (code, out, _) = run(Command::new(&link).arg("--help"));
        assert_eq!(code, 0);
        assert!(out.contains("Usage: "), "{out}");
    }
    let other = dir.path().join("node-problem-detector");
    symlink(BIN, &other).expect("symlink");
    let (code, out, _) = run(Command::new(&other).arg("--version"));
    assert_eq!(
        (code, out.trim()),
        (0, format!("npd-ext {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let (code, out, _) = run(Command::new(&other).args(["validate-config", "--version"]));
    // clap names a nested applet after its parent.
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("npd-ext-validate-config {}", env!("CARGO_PKG_VERSION")).as_str()
        )
    );
}

#[test]
fn validate_config_accepts_good_files_and_explains_poc_keys() {
    common::bin::explains_poc_keys(&common::fixture("poc-gpu-monitor.json"), "9:51");
}

#[test]
fn validate_config_reports_every_error_with_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"plugin\": \"external\",\n  \"pluginConfig\": {\n    \"socketPath\": \"/run/x.sock\",\n    \"timeout\": \"40s\",\n    \"invoke_interval\": \"30 seconds\"\n  },\n  \"conditions\": [{\"type\": \"Ready\", \"reason\": \"R\", \"message\": \"m\"}]\n}\n",
    )
    .expect("write");
    let unknown = dir.path().join("unknown.json");
    std::fs::write(
        &unknown,
        "{\"plugin\": \"external\", \"source\": \"g\",\n \"pluginConfig\": {\"socketPath\": \"/s\", \"retryPolicy\": {\"maxAtempts\": 3}}}\n",
    )
    .expect("write");
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"plugin":"external","source":"g","pluginConfig":{"socketPath":"/s"}}"#,
    )
    .expect("write");
    let p = |f: &Path| f.to_str().expect("utf8").to_owned();
    let (code, out, _) = npd(&["validate-config", &p(&bad), &p(&unknown), &p(&good)]);
    assert_eq!(code, 1, "{out}");
    let b = p(&bad);
    assert!(
        out.contains(&format!(
            "{b}:6:24: error: pluginConfig.invoke_interval: invalid duration \"30 seconds\""
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{b}:1:1: error: source: missing or empty")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{b}:8:18: error: conditions[0].type: Ready is owned by the kubelet"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{b}: invalid (3 errors)")), "{out}");
    assert!(
        out.contains(&format!(
            "{}:2:55: error: pluginConfig.retryPolicy.maxAtempts: unknown key (did you mean \"maxAttempts\"?)",
            p(&unknown)
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{}: ok", p(&good))), "{out}");

    let (code, _, err) = npd(&["validate-config"]);
    assert_eq!(code, 2, "usage error: {err}");
    let (code, out, _) = npd(&["validate-config", "/nonexistent/x.json"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("/nonexistent/x.json: error: cannot read file"),
        "{out}"
    );
}

#[test]
fn detector_refuses_an_invalid_config_and_names_the_spot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"plugin\": \"external\", \"source\": \"g\", \"pluginConfig\": {\"socketPath\": \"/s\", \"timeout\": \"5\"}}")
        .expect("write");
    let (code, _, err) = npd(&[
        "detector",
        "--port",
        "0",
        "--config.external-monitor",
        bad.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "bad.json:1:87: error: pluginConfig.timeout: invalid duration \"5\": missing unit"
        ),
        "{err}"
    );
    let (code, _, err) = npd(&["detector", "--port", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("no monitor configured"), "{err}");
}

fn spawn_gpu_monitor(socket: &Path) -> Child {
    Command::new(BIN)
        .args([
            "gpu-monitor",
            "--backend",
            "sim",
            "--log-format",
            "json",
            "--socket",
        ])
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

#[test]
fn gpu_monitor_stops_on_sigterm_and_removes_its_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nested/dir/gpu.sock");
    let mut child = spawn_gpu_monitor(&socket);
    wait_until(Duration::from_secs(20), "socket", || socket.exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket removed on SIGTERM");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("read");
    let first = logs.lines().next().expect("a log line");
    let json: serde_json::Value = serde_json::from_str(first).expect("--log-format json");
    assert!(json.get("level").is_some(), "{first}");
}

#[test]
fn gpu_monitor_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("precious");
    std::fs::write(&path, "data").expect("write");
    let (code, _, err) = npd(&["gpu-monitor", "--socket", path.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not a socket; refusing to remove it"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("kept"), "data");
}

#[test]
fn probe_reports_health_metadata_and_status_or_what_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.sock");
    let (code, _, err) = npd(&["probe", missing.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(err.contains("no socket there"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("write");
    let (code, _, err) = npd(&["probe", file.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(err.contains("not a socket"), "{err}");
    // A socket nobody listens on (left by a crashed plugin).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let (code, _, err) = npd(&["probe", stale.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(err.contains("connection refused"), "{err}");

    let socket = dir.path().join("gpu.sock");
    let mut child = spawn_gpu_monitor(&socket);
    wait_until(Duration::from_secs(20), "socket", || socket.exists());
    let (code, out, err) = npd(&["probe", "--json", socket.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["health"], "SERVING");
    assert_eq!(v["metadata"]["api_version"], "v1");
    assert_eq!(
        v["status"]["conditions"].as_array().map(Vec::len),
        Some(npd_ext::gpu::SUPPORTED_CONDITIONS.len())
    );
    let (code, out, _) = npd(&["probe", socket.to_str().expect("utf8")]);
    assert_eq!(code, 0);
    assert!(
        out.contains("health      SERVING") && out.contains("GPULost"),
        "{out}"
    );
    stop(&mut child);
}

#[test]
fn demo_runs_a_short_scenario_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("s.json");
    std::fs::write(
        &scenario,
        r#"{"steps": [{"at": "200ms", "gpu": 3, "fault": {"xid": 79}}, {"at": "600ms", "gpu": 3, "fault": "clear"}]}"#,
    )
    .expect("write");
    let (code, out, err) = npd(&[
        "demo",
        "--port",
        "0",
        "--duration",
        "2s",
        "--scenario",
        scenario.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let lost = out
        .lines()
        .position(|l| l.contains("GPULost") && l.contains("True (was False)"));
    let back = out
        .lines()
        .position(|l| l.contains("GPULost") && l.contains("False (was True)"));
    assert!(matches!((lost, back), (Some(a), Some(b)) if a < b), "{out}");
    assert!(out.contains("pci=00000000:61:00.0"), "{out}");
}

#[test]
fn detector_stops_on_sigterm_while_its_plugin_is_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gpu.json");
    let socket = dir.path().join("absent.sock");
    std::fs::write(
        &cfg,
        format!(r#"{{"plugin":"external","source":"gpu-monitor","pluginConfig":{{"socketPath":"{}"}}}}"#, socket.display()),
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .args(["detector", "--port", "0", "--config.external-monitor"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    // Wait until it is up: its first log lines say so.
    let seen = read_until(&mut stderr, "external monitor starting");
    assert!(seen.contains("standalone mode"), "{seen}");
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn probe_says_deadline_for_a_hung_plugin_and_permission_denied_for_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Traversable by other users, so only the socket's own mode decides.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let socket = dir.path().join("gpu.sock");
    let mut child = spawn_gpu_monitor(&socket);
    wait_until(Duration::from_secs(20), "socket", || socket.exists());
    let s = socket.to_str().expect("utf8");

    // Another user: the 0660 socket refuses them.
    let as_nobody = run(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "probe",
        s,
    ]));
    match as_nobody {
        (1, _, err) if err.contains("permission denied") => {}
        (code, _, err) if code == 126 || code == 127 || err.contains("setpriv") => {
            eprintln!(
                "permission check skipped: cannot run the binary as another user here ({err})"
            );
        }
        other => panic!("expected permission denied, got {other:?}"),
    }

    Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status()
        .expect("kill");
    let (code, _, err) = npd(&["probe", "--timeout", "300ms", s]);
    Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert_eq!(code, 1);
    assert!(err.contains("deadline"), "{err}");

    stop(&mut child);
}

#[test]
fn demo_exits_cleanly_on_ctrl_c() {
    let mut child = Command::new(BIN)
        .args(["demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = read_until(&mut stdout, "GPUThermalThrottling");
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    stdout.read_to_string(&mut seen).expect("read rest");
    assert!(seen.contains("npd-ext demo: shutting down"), "{seen}");
    let socket_line = seen
        .lines()
        .find(|l| l.contains("plugin socket"))
        .expect("socket line");
    let socket = socket_line.split_whitespace().last().expect("path");
    assert!(
        !Path::new(socket).exists(),
        "demo removes its socket and directory"
    );
}

#[test]
fn nvml_backend_without_a_driver_reports_driver_not_ready_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("gpu.sock");
    let mut child = Command::new(BIN)
        .args([
            "gpu-monitor",
            "--backend",
            "nvml",
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
            "--socket",
        ])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until(Duration::from_secs(20), "socket", || socket.exists());
    let s = socket.to_str().expect("utf8");
    let mut status = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "GPUDriverNotReady True", || {
        let (code, out, _) = npd(&["probe", "--json", s]);
        status = serde_json::from_str(&out).unwrap_or_default();
        code == 0
            && status["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "GPUDriverNotReady" && c["status"] == "True")
            })
    });
    let conditions = status["status"]["conditions"]
        .as_array()
        .expect("conditions");
    let driver = conditions
        .iter()
        .find(|c| c["type"] == "GPUDriverNotReady")
        .expect("present");
    assert!(
        driver["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/libnvidia-ml.so.1")),
        "{driver}"
    );
    for t in npd_ext::gpu::SUPPORTED_CONDITIONS.iter().skip(2) {
        let c = conditions
            .iter()
            .find(|c| c["type"] == *t)
            .expect("present");
        assert_eq!(c["status"], "Unknown", "{t} must not be guessed: {c}");
    }
    assert_eq!(status["metadata"]["capabilities"]["backend"], "nvml");
    stop(&mut child);
}

#[test]
fn kernel_log_xids_reach_the_plugin_status_by_pci_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("gpu.sock");
    let kmsg = dir.path().join("kmsg");
    std::fs::write(
        &kmsg,
        "6,1,100,-;NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04\n\
         4,2,200,-;NVRM: Xid (PCI:0000:61:00): 79, pid=9, name=train, GPU has fallen off the bus.\n\
         4,3,300,-;NVRM: Xid (PCI:0000:3b:00): 48, pid=9, name=train, An uncorrectable double bit error\n",
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .args(["gpu-monitor", "--backend", "sim", "--kmsg-path"])
        .arg(&kmsg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until(Duration::from_secs(20), "socket", || socket.exists());
    let s = socket.to_str().expect("utf8");
    let mut conditions = Vec::new();
    wait_until(Duration::from_secs(20), "both kernel XIDs applied", || {
        let (_, out, _) = npd(&["probe", "--json", s]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        conditions = v["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ["GPULost", "GPUResetRequired"].iter().all(|t| {
            conditions
                .iter()
                .any(|c| c["type"] == *t && c["status"] == "True")
        })
    });
    let message = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        message("GPULost").starts_with("gpu=3 uuid=GPU-"),
        "{}",
        message("GPULost")
    );
    assert!(
        message("GPUResetRequired").starts_with("gpu=unknown pci=0000:3b:00"),
        "an XID on an address no backend enumerates is still reported: {}",
        message("GPUResetRequired")
    );
    stop(&mut child);
    let position =
        std::fs::read_to_string(dir.path().join("state/kmsg-position")).expect("position kept");
    assert!(position.trim().ends_with(" 3"), "{position}");
}

/// Our configs: the shipped ConfigMap's (as one file) and every config in
/// tests/fixtures.
fn our_configs(tmp: &Path) -> Vec<(String, PathBuf)> {
    let mut configs = common::bin::linux_configs(&common::fixture(""), 5);
    for key in ["kernel-monitor.json", "external-gpu-monitor.json"] {
        configs.push((key.to_owned(), common::write_shipped_config(tmp, key)));
    }
    configs
}

#[test]
fn every_config_of_ours_validates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, path) in our_configs(tmp.path()) {
        common::bin::validates(&name, &path);
    }
    let manifest = common::shipped_configmap();
    let (code, out, _) = npd(&["validate-config", manifest.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn windows_configs_are_named_as_such() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("windows-health-check.json");
    std::fs::write(
        &cfg,
        r#"{"plugin": "custom", "source": "windows-check", "conditions": [],
            "rules": [{"type": "temporary", "reason": "HealthCheckFailed",
                       "path": "C:\\npd\\plugin\\health_check.ps1"}]}"#,
    )
    .expect("write");
    common::bin::refused_as_windows_only(&cfg);
}

#[test]
fn every_config_of_ours_loads_in_the_detector() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kmsg = tmp.path().join("kmsg");
    std::fs::write(&kmsg, "").expect("kmsg file");
    for (name, path) in our_configs(tmp.path()) {
        common::bin::loads_in_the_detector(&name, &path, &kmsg);
    }
}

#[test]
fn deprecated_flags_work_and_may_not_be_mixed_with_the_new_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = common::write_shipped_config(tmp.path(), "kernel-monitor.json");
    let kmsg = tmp.path().join("kmsg");
    std::fs::write(&kmsg, "").expect("kmsg file");
    let c = cfg.to_str().expect("utf8");
    let (code, _, err) = npd(&[
        "detector",
        "--config.system-log-monitor",
        c,
        "--system-log-monitors",
        c,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let mut child = common::bin::detector()
        .arg("--system-log-monitors")
        .arg(&cfg)
        .arg("--kmsg-path")
        .arg(&kmsg)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stderr = child.stderr.take().expect("stderr");
    read_until(&mut stderr, "system log monitor started");
    stop(&mut child);
}

#[test]
fn journald_monitor_reads_a_journalctl_child() {
    let path = common::fixture("journald-monitor.json");
    let cfg = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    common::bin::journald_reads_a_journalctl_child(
        cfg,
        "containerd",
        [
            "level=info msg=containerd successfully booted in 0.042s",
            "level=error msg=failed to prepare extraction snapshot extract-381-sha256:5a1f: open /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/77/fs: no such file or directory",
        ],
        "ContainerdSnapshotterBroken",
    );
}

#[test]
fn validate_config_reads_configmap_manifests_and_finds_shared_condition_types() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = tmp.path().join("npd-config.yaml");
    std::fs::write(
        &manifest,
        "# monitor configs\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: npd-ext-config\ndata:\n  kernel-monitor.json: |\n    {\n      \"plugin\": \"kmsg\",\n      \"source\": \"kernel-monitor\",\n      \"conditions\": [{\"type\": \"KernelDeadlock\", \"reason\": \"KernelHasNoDeadlock\", \"message\": \"ok\"}],\n      \"rules\": [{\"type\": \"temporary\", \"reason\": \"X\", \"pattern\": \"task (blocked\"}]\n    }\n  check.sh: |\n    #!/bin/sh\n    exit 0\n",
    )
    .expect("manifest");
    let m = manifest.to_str().expect("utf8");
    let (code, out, _) = npd(&["validate-config", m]);
    assert_eq!(code, 1, "{out}");
    // The pattern is on line 12 of the manifest, column 65.
    assert!(
        out.contains(&format!(
            "{m}:kernel-monitor.json:12:65: error: rules[0].pattern: invalid regex"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{m}:check.sh: not a JSON config; skipped")),
        "{out}"
    );

    // Two configs of ours that both declare KernelDeadlock cannot run together.
    let a = common::write_shipped_config(tmp.path(), "kernel-monitor.json");
    common::bin::kernel_deadlock_declared_twice(
        &a,
        &common::fixture("kernel-monitor-filelog.json"),
    );
}

#[test]
fn kernel_monitor_reads_the_real_dev_kmsg_where_it_may() {
    if std::fs::File::open("/dev/kmsg").is_err() {
        eprintln!("/dev/kmsg cannot be opened here (no CAP_SYSLOG?): nothing to check");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = common::write_shipped_config(tmp.path(), "kernel-monitor.json");
    let (mut child, _) = detector_with(
        "system-log-monitor",
        &cfg,
        &[],
        &[],
        "log source is readable",
    );
    stop(&mut child);
}

#[test]
fn prepare_dir_makes_a_socket_directory_for_its_writer() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run/npd");
    // This test's own uid and gid (the init container runs as root and gives
    // the directory to 1000; giving it to ourselves works without root).
    let meta = std::fs::metadata(tmp.path()).expect("stat");
    let owner = format!("{}:{}", meta.uid(), meta.gid());
    let (code, out, err) = npd(&[
        "prepare-dir",
        dir.to_str().expect("utf8"),
        "--owner",
        &owner,
        "--mode",
        "0750",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let m = std::fs::metadata(&dir).expect("created");
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    assert_eq!(format!("{}:{}", m.uid(), m.gid()), owner);
    let (code, _, err) = npd(&["prepare-dir", dir.to_str().expect("utf8"), "--owner", "npd"]);
    assert_eq!(code, 1);
    assert!(err.contains("expected UID:GID"), "{err}");
}

#[test]
fn a_peer_outside_allowed_uids_is_refused_even_when_the_socket_lets_it_in() {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        eprintln!("skipped: needs root to run a peer as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let socket = dir.path().join("gpu.sock");
    let s = socket.to_str().expect("utf8");
    let probe_as_nobody = || {
        run(Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "probe",
            "--timeout",
            "2s",
            s,
        ]))
    };
    for (allowed, admitted) in [(None, false), (Some("0,65534"), true)] {
        let mut cmd = Command::new(BIN);
        cmd.args(["gpu-monitor", "--backend", "sim", "--socket", s]);
        if let Some(a) = allowed {
            cmd.args(["--allowed-uids", a]);
        }
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
        wait_until(Duration::from_secs(20), "socket", || socket.exists());
        // The file system lets uid 65534 in (its group may write the socket);
        // SO_PEERCRED decides.
        let ok = Command::new("chown")
            .args(["0:65534", s])
            .status()
            .expect("chown")
            .success();
        assert!(ok);
        let (code, out, err) = probe_as_nobody();
        if code == 126 || code == 127 || err.contains("setpriv:") {
            eprintln!("skipped: cannot run the binary as another user here ({err})");
            stop(&mut child);
            return;
        }
        assert_eq!(
            code == 0,
            admitted,
            "allowed {allowed:?}: {code} {out} {err}"
        );
        // Root always gets in.
        let (code, out, _) = npd(&["probe", s]);
        assert_eq!(code, 0, "{out}");
        stop(&mut child);
        let mut log = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut log)
            .expect("log");
        assert_eq!(
            log.contains("refused a connection") && log.contains("uid=65534"),
            !admitted,
            "{log}"
        );
    }
}

//! Binary-level behaviour: argv[0] dispatch, validate-config, probe, signals.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_npd-ext");

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn npd(args: &[&str]) -> (i32, String, String) {
    run(Command::new(BIN).args(args))
}

/// Polls `cond` until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a child's pipe until `needle` appears; the text read so far.
fn read_until(pipe: &mut impl Read, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        let n = pipe.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "the process exited before printing {needle:?}: {seen}"
        );
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    seen
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM, and a clean exit within 15 s.
fn stop(child: &mut Child) {
    sigterm(child);
    let status = wait_exit(child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -TERM failed");
}

#[test]
fn argv0_symlinks_dispatch_to_applets() {
    let dir = tempfile::tempdir().expect("tempdir");
    for applet in [
        "detector",
        "gpu-monitor",
        "validate-config",
        "probe",
        "demo",
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
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/external-gpu-monitor.json");
    let poc = shared("npd-configs/npd-ext-poc/gpu-monitor-config.json");
    let (code, out, _) = npd(&[
        "validate-config",
        example.to_str().expect("utf8"),
        poc.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external-gpu-monitor.json: ok"), "{out}");
    assert!(out.contains("gpu-monitor-config.json: ok"), "{out}");
    assert!(
        out.contains("gpu-monitor-config.json:16:18: warning: pluginConfig.healthCheck.timeout: ignored by the Go proof of concept"),
        "{out}"
    );
    assert!(out.contains("warning: metricsReporting"), "{out}");
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

#[test]
fn every_upstream_linux_config_validates() {
    let configs = upstream_linux_configs();
    for (name, path) in &configs {
        let (code, out, _) = npd(&["validate-config", path.to_str().expect("utf8")]);
        assert_eq!(code, 0, "{name} must load unchanged:\n{out}");
        assert!(out.contains(&format!("{name}: ok")), "{out}");
    }
}

/// Upstream NPD's shipped Linux configs (file name, path): at least 19.
fn upstream_linux_configs() -> Vec<(String, PathBuf)> {
    let dir = shared("npd-configs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("npd-configs") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".json") && !name.starts_with("windows-") {
            out.push((name, path));
        }
    }
    assert!(
        out.len() >= 19,
        "only {} configs found in {}",
        out.len(),
        dir.display()
    );
    out
}

#[test]
fn windows_configs_are_named_as_such() {
    let cfg = shared("npd-configs/windows-defender-monitor.json");
    let (code, out, _) = npd(&["validate-config", cfg.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(out.contains("a Windows-only plugin"), "{out}");
}

/// Starts the detector on one config and waits for `needle` on stderr.
fn detector_with(
    flag: &str,
    cfg: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
    needle: &str,
) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "detector",
        "--enable-k8s-exporter=false",
        "--port",
        "0",
        "--prometheus-port",
        "0",
    ])
    .arg(format!("--config.{flag}"))
    .arg(cfg)
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("detector starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let seen = read_until(&mut stderr, needle);
    // Keep draining so the detector never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, seen)
}

#[test]
fn every_upstream_linux_config_loads_in_the_detector() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kmsg = tmp.path().join("kmsg");
    std::fs::write(&kmsg, "").expect("kmsg file");
    for (name, path) in upstream_linux_configs() {
        let text = std::fs::read_to_string(&path).expect("read");
        let (flag, needle) = match npd_ext::config::kind_of(&text) {
            npd_ext::config::Kind::SystemLog => {
                ("system-log-monitor", "system log monitor started")
            }
            npd_ext::config::Kind::Custom => {
                ("custom-plugin-monitor", "custom plugin monitor started")
            }
            npd_ext::config::Kind::SystemStats => (
                "system-stats-monitor",
                // Logged once signals are handled (the config line comes before).
                "detector running",
            ),
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        let kmsg_flag = ["--kmsg-path", kmsg.to_str().expect("utf8")];
        let (mut child, _) = detector_with(flag, &path, &kmsg_flag, &[], needle);
        sigterm(&child);
        let status = wait_exit(&mut child, Duration::from_secs(15));
        assert!(status.success(), "{name}: {status}");
    }
}

#[test]
fn deprecated_flags_work_and_may_not_be_mixed_with_the_new_ones() {
    let cfg = shared("npd-configs/kernel-monitor.json");
    let tmp = tempfile::tempdir().expect("tempdir");
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
    let mut child = Command::new(BIN)
        .args([
            "detector",
            "--enable-k8s-exporter=false",
            "--port",
            "0",
            "--prometheus-port",
            "0",
            "--system-log-monitors",
        ])
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = tmp.path().join("journal");
    std::fs::create_dir(&journal).expect("journal dir");
    // Upstream's docker monitor, pointed at a journal directory of ours.
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared("npd-configs/docker-monitor.json")).expect("read"),
    )
    .expect("json");
    cfg["logPath"] = serde_json::Value::String(journal.display().to_string());
    let cfg_path = tmp.path().join("docker-monitor.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    // A journalctl that checks what it was asked, prints two entries and
    // follows (sleeps) like the real one.
    let args_file = tmp.path().join("args");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    let fake = tmp.path().join("journalctl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {args}\n\
             echo '{{\"__CURSOR\":\"c1\",\"__REALTIME_TIMESTAMP\":\"{now_us}\",\"SYSLOG_IDENTIFIER\":\"dockerd\",\"MESSAGE\":\"level=info msg=started\"}}'\n\
             echo '{{\"__CURSOR\":\"c2\",\"__REALTIME_TIMESTAMP\":\"{now_us}\",\"SYSLOG_IDENTIFIER\":\"dockerd\",\"MESSAGE\":\"returned error: readlink /var/lib/docker/overlay2/l/ABC: invalid argument\"}}'\n\
             exec sleep 600\n",
            args = args_file.display()
        ),
    )
    .expect("fake journalctl");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let (mut child, _) = detector_with(
        "system-log-monitor",
        &cfg_path,
        &[],
        &[("NPD_EXT_JOURNALCTL", &fake)],
        "Node condition CorruptDockerOverlay2 is now: True",
    );
    let args = std::fs::read_to_string(&args_file).expect("journalctl ran");
    assert!(
        args.contains("--output=json") && args.contains("--follow"),
        "{args}"
    );
    assert!(
        args.contains(&format!("--directory={}", journal.display())),
        "{args}"
    );
    assert!(args.contains("SYSLOG_IDENTIFIER=dockerd"), "{args}");
    assert!(args.contains("--since=@"), "{args}");
    stop(&mut child);

    // Without a journal the error names where it looked.
    cfg["logPath"] = serde_json::Value::String("/nonexistent/journal".into());
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    let (mut child, seen) = detector_with(
        "system-log-monitor",
        &cfg_path,
        &[],
        &[("NPD_EXT_JOURNALCTL", &fake)],
        "is not a directory",
    );
    assert!(seen.contains("/nonexistent/journal"), "{seen}");
    stop(&mut child);
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

    // Two upstream configs that both declare KernelDeadlock cannot run together.
    let a = shared("npd-configs/kernel-monitor.json");
    let b = shared("npd-configs/kernel-monitor-filelog.json");
    let (code, out, _) = npd(&[
        "validate-config",
        a.to_str().expect("utf8"),
        b.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("conditions: KernelDeadlock is also declared by")
            && out.contains("kernel-monitor.json"),
        "{out}"
    );
}

#[test]
fn kernel_monitor_reads_the_real_dev_kmsg_where_it_may() {
    if std::fs::File::open("/dev/kmsg").is_err() {
        eprintln!("/dev/kmsg cannot be opened here (no CAP_SYSLOG?): nothing to check");
        return;
    }
    let cfg = shared("npd-configs/kernel-monitor.json");
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

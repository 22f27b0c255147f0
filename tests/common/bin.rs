//! The `npd-ext` binary as a child process: running applets, waiting on
//! their output and exit, and the config checks that `cli` runs on our
//! configs and `compat` on upstream's.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_npd-ext");

pub fn run(cmd: &mut Command) -> (i32, String, String) {
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

pub fn npd(args: &[&str]) -> (i32, String, String) {
    run(Command::new(BIN).args(args))
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a child's pipe until `needle` appears; the text read so far.
pub fn read_until(pipe: &mut impl Read, needle: &str) -> String {
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

pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
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
pub fn stop(child: &mut Child) {
    sigterm(child);
    let status = wait_exit(child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -TERM failed");
}

/// The arguments of `npd-ext detector` without the Kubernetes exporter
/// and its HTTP servers.
pub const STANDALONE: [&str; 6] = [
    "detector",
    "--enable-k8s-exporter=false",
    "--port",
    "0",
    "--prometheus-port",
    "0",
];

/// `npd-ext detector` without the Kubernetes exporter and its HTTP servers.
pub fn detector() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(STANDALONE);
    cmd
}

/// Starts the detector on one config and waits for `needle` on stderr.
pub fn detector_with(
    flag: &str,
    cfg: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
    needle: &str,
) -> (Child, String) {
    let mut cmd = detector();
    cmd.arg(format!("--config.{flag}"))
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

/// The Linux JSON configs directly in `dir` (file name, path): at least `min`.
pub fn linux_configs(dir: &Path, min: usize) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
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
        out.len() >= min,
        "only {} configs found in {}",
        out.len(),
        dir.display()
    );
    out.sort();
    out
}

/// `validate-config` takes the config `name` at `path` as it is.
pub fn validates(name: &str, path: &Path) {
    let (code, out, _) = npd(&["validate-config", path.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{name} must load unchanged:\n{out}");
    assert!(out.contains(&format!("{name}: ok")), "{out}");
}

/// The detector starts the monitor of the config `name` at `path` and stops
/// cleanly on SIGTERM; a kmsg monitor reads the (empty) file `kmsg`.
pub fn loads_in_the_detector(name: &str, path: &Path, kmsg: &Path) {
    let text = std::fs::read_to_string(path).expect("read");
    let (flag, needle) = match npd_ext::config::kind_of(&text) {
        npd_ext::config::Kind::SystemLog => ("system-log-monitor", "system log monitor started"),
        npd_ext::config::Kind::Custom => ("custom-plugin-monitor", "custom plugin monitor started"),
        npd_ext::config::Kind::SystemStats => (
            "system-stats-monitor",
            // Logged once signals are handled (the config line comes before).
            "detector running",
        ),
        npd_ext::config::Kind::External => ("external-monitor", "external monitor starting"),
        other => panic!("{name}: unexpected kind {other:?}"),
    };
    let kmsg_flag = ["--kmsg-path", kmsg.to_str().expect("utf8")];
    let (mut child, _) = detector_with(flag, path, &kmsg_flag, &[], needle);
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{name}: {status}");
}

/// `validate-config` on our example and a config written the Go proof of
/// concept's way (`poc`): both load, and the POC's keys are explained, the
/// health check's timeout at `timeout_at` (`LINE:COL`).
pub fn explains_poc_keys(poc: &Path, timeout_at: &str) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/external-gpu-monitor.json");
    let (code, out, _) = npd(&[
        "validate-config",
        example.to_str().expect("utf8"),
        poc.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external-gpu-monitor.json: ok"), "{out}");
    let name = poc.file_name().and_then(|n| n.to_str()).expect("a name");
    assert!(out.contains(&format!("{name}: ok")), "{out}");
    assert!(
        out.contains(&format!("{name}:{timeout_at}: warning: pluginConfig.healthCheck.timeout: ignored by the Go proof of concept")),
        "{out}"
    );
    assert!(out.contains("warning: metricsReporting"), "{out}");
}

/// `validate-config` refuses the Windows config at `path` and says why.
pub fn refused_as_windows_only(path: &Path) {
    let (code, out, _) = npd(&["validate-config", path.to_str().expect("utf8")]);
    assert_eq!(code, 1);
    assert!(out.contains("a Windows-only plugin"), "{out}");
}

/// Two kernel monitors that both declare KernelDeadlock cannot run together;
/// `b` names the other one, `a` (a kernel-monitor.json).
pub fn kernel_deadlock_declared_twice(a: &Path, b: &Path) {
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

/// A journald monitor (`cfg`, its `logPath` replaced) reads a
/// `journalctl`-shaped child: asked for `identifier`'s entries, it prints
/// `messages`, and the last one sets `condition` True.
pub fn journald_reads_a_journalctl_child(
    mut cfg: serde_json::Value,
    identifier: &str,
    messages: [&str; 2],
    condition: &str,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let journal = tmp.path().join("journal");
    std::fs::create_dir(&journal).expect("journal dir");
    cfg["logPath"] = serde_json::Value::String(journal.display().to_string());
    let cfg_path = tmp.path().join("journald-monitor.json");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    // A journalctl that checks what it was asked, prints two entries and
    // follows (sleeps) like the real one.
    let args_file = tmp.path().join("args");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    let entries: String = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let entry = serde_json::json!({
                "__CURSOR": format!("c{}", i + 1),
                "__REALTIME_TIMESTAMP": now_us.to_string(),
                "SYSLOG_IDENTIFIER": identifier,
                "MESSAGE": m,
            });
            format!("echo '{entry}'\n")
        })
        .collect();
    let fake = super::script(
        tmp.path(),
        "journalctl",
        &format!(
            "echo \"$@\" > {args}\n{entries}exec sleep 600",
            args = args_file.display()
        ),
    );
    let (mut child, _) = detector_with(
        "system-log-monitor",
        &cfg_path,
        &[],
        &[("NPD_EXT_JOURNALCTL", &fake)],
        &format!("Node condition {condition} is now: True"),
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
    assert!(
        args.contains(&format!("SYSLOG_IDENTIFIER={identifier}")),
        "{args}"
    );
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

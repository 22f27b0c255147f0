//! Helpers shared by the integration tests: a plugin and a detector on a
//! tempdir socket, a tiny HTTP client, waiting on conditions with a deadline,
//! and the configs and fixtures the tests read: ours (the shipped ConfigMap,
//! tests/fixtures) and, for the compat tests only, upstream's (`compat`).
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use npd_ext::conditions::NodeCondition;
use npd_ext::config::ExternalMonitorConfig;
use npd_ext::detector::{self, Detector, DetectorOptions};
use npd_ext::gpu::plugin::{Plugin, PluginOptions};
use npd_ext::gpu::{Observation, sim};
use npd_ext::problem::ConditionStatus;
use npd_ext::shutdown::Shutdown;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub mod api_rules;
pub mod bin;
pub mod compat;
pub mod fake_api;
pub mod fake_nodes;
pub mod k8s_harness;
pub mod node;
pub mod prom;
pub mod syslog;
pub mod yaml;

pub const GPUS: u32 = 8;

/// A gpu-monitor with the sim backend, served in-process.
pub struct RunningPlugin {
    pub observations: mpsc::Sender<Observation>,
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

pub fn start_plugin(socket: &Path, watch_health: bool) -> RunningPlugin {
    let plugin = Plugin::bind(
        socket,
        PluginOptions {
            gpus: Some(sim::identities(GPUS)),
            backend: "sim",
            grace: Duration::from_secs(2),
            watch_health,
            allowed_uids: npd_ext::rpc::server::default_allowed_uids(),
            liveness: npd_ext::liveness::Liveness::new(),
        },
    )
    .expect("bind plugin socket");
    let token = CancellationToken::new();
    let observations = plugin.observations();
    let task = tokio::spawn(plugin.serve(token.clone()));
    RunningPlugin {
        observations,
        token,
        task,
    }
}

/// `npd-ext gpu-monitor --backend sim` on `socket` as a child process,
/// playing `scenario` (`builtin:xid79`, a file), its output discarded.
pub fn spawn_sim_plugin(socket: &Path, scenario: &str) -> std::process::Child {
    sim_plugin(socket, scenario)
        .spawn()
        .expect("spawn gpu-monitor")
}

/// The command of [`spawn_sim_plugin`], for a test to add its own flags.
pub fn sim_plugin(socket: &Path, scenario: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_npd-ext"));
    cmd.args(["gpu-monitor", "--backend", "sim", "--sim-scenario"])
        .arg(scenario)
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A config for `socket` with fast retries, so failure tests finish quickly.
pub fn monitor_config(socket: &Path, types: &[&str]) -> ExternalMonitorConfig {
    let mut c = ExternalMonitorConfig::new("gpu-monitor", socket).with_conditions(types);
    c.invoke_interval = Duration::from_millis(100);
    c.timeout = Duration::from_millis(500);
    c.retry.initial_backoff = Duration::from_millis(20);
    c.retry.max_backoff = Duration::from_millis(100);
    c.health_check.interval = Duration::from_millis(200);
    c.health_check.timeout = Duration::from_millis(500);
    c.health_check.error_threshold = 3;
    c
}

pub fn start_detector(configs: Vec<ExternalMonitorConfig>) -> (Shutdown, Detector) {
    let shutdown = Shutdown::new();
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind http");
    let detector = detector::start(
        DetectorOptions {
            external: configs,
            http: Some(http),
            metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind metrics")),
            log_exporter: true,
            ..DetectorOptions::default()
        },
        &shutdown,
    )
    .expect("detector starts");
    (shutdown, detector)
}

pub type Conditions = watch::Receiver<Arc<Vec<NodeCondition>>>;

/// Waits until `pred` holds for the current conditions, or panics after `limit`.
pub async fn wait_for(
    rx: &mut Conditions,
    limit: Duration,
    what: &str,
    pred: impl Fn(&[NodeCondition]) -> bool,
) -> Vec<NodeCondition> {
    let waited = tokio::time::timeout(limit, rx.wait_for(|c| pred(c)))
        .await
        .map(|r| r.map(|c| c.as_ref().clone()));
    match waited {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => panic!("detector stopped while waiting for {what}"),
        Err(_) => panic!("no {what} within {limit:?}; conditions: {:#?}", rx.borrow()),
    }
}

pub fn find<'a>(conds: &'a [NodeCondition], t: &str) -> Option<&'a NodeCondition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Every condition the GPU plugin supports is Unknown (the plugin is unreachable).
pub fn all_unknown(conds: &[NodeCondition]) -> bool {
    npd_ext::gpu::SUPPORTED_CONDITIONS
        .iter()
        .all(|t| has(conds, t, ConditionStatus::Unknown))
}

/// Every condition the GPU plugin supports is known again (True or False).
pub fn all_known(conds: &[NodeCondition]) -> bool {
    npd_ext::gpu::SUPPORTED_CONDITIONS
        .iter()
        .all(|t| find(conds, t).is_some_and(|x| x.status != ConditionStatus::Unknown))
}

pub fn has(conds: &[NodeCondition], t: &str, status: ConditionStatus) -> bool {
    find(conds, t).is_some_and(|c| c.status == status)
}

/// GET over a fresh connection; returns status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    fake_api::exchange(addr, &req).await
}

/// `/conditions` as parsed JSON.
pub async fn http_conditions(addr: SocketAddr) -> Vec<serde_json::Value> {
    let (code, body) = http_get(addr, "/conditions").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON array")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn sock(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run/npd/gpu-monitor.sock")
}

/// An executable `#!/bin/sh` script `name` in `dir` running `body`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// `rel` under tests/fixtures (fixtures the project writes and keeps).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The ConfigMap we ship (manifests/npd-ext-config.yaml).
pub fn shipped_configmap() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/npd-ext-config.yaml")
}

/// The config `key` of the ConfigMap we ship (e.g. "kernel-monitor.json").
pub fn shipped_config(key: &str) -> String {
    let path = shipped_configmap();
    let text = std::fs::read_to_string(&path).expect("the shipped ConfigMap");
    npd_ext::config::configmap::entries(&text)
        .expect("the shipped ConfigMap parses")
        .into_iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("{}: no entry {key}", path.display()))
        .text
}

/// The shipped config `key` as the file `dir/key`, for the binary to read.
pub fn write_shipped_config(dir: &Path, key: &str) -> PathBuf {
    let path = dir.join(key);
    std::fs::write(&path, shipped_config(key)).expect("write config");
    path
}

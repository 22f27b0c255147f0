//! The Kubernetes exporter on its own, fed through the channels the
//! detector uses, at the detector's channel sizes.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use npd_ext::conditions::{NodeCondition, Published};
use npd_ext::exporter::k8s::{self, K8sMetrics, K8sOptions};
use npd_ext::problem::ConditionStatus;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::fake_api::FakeApi;

pub const NODE: &str = "gpu-node-17";

pub fn options() -> K8sOptions {
    K8sOptions {
        node: NODE.into(),
        update_conditions: true,
        write_events: true,
        heartbeat: Duration::from_secs(300),
        wait_timeout: Duration::from_secs(300),
        wait_interval: Duration::from_secs(5),
        qps: 500.0,
        burst: 500,
        event_namespace: "default".into(),
        taints: None,
    }
}

pub fn cond(t: &str, status: ConditionStatus, transition: SystemTime) -> NodeCondition {
    NodeCondition {
        type_: t.into(),
        status,
        transition,
        last_update: transition,
        reason: format!("{t}{status}"),
        message: format!("{t} is {status}"),
        source: "test".into(),
    }
}

/// An exporter on its own, fed through the channels the detector uses.
pub struct Exporter {
    pub conditions: watch::Sender<Arc<Vec<NodeCondition>>>,
    pub events: broadcast::Sender<Published>,
    pub registry: prometheus::Registry,
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub fn start(api: &FakeApi, initial: Vec<NodeCondition>) -> Self {
        Self::start_with(api, initial, options())
    }

    pub fn start_with(api: &FakeApi, initial: Vec<NodeCondition>, opts: K8sOptions) -> Self {
        let config = kube::Config::new(api.url().parse().expect("url"));
        let client = k8s::client(config).expect("client");
        let (conditions, rx) = watch::channel(Arc::new(initial));
        let (events, _) = broadcast::channel(npd_ext::detector::PUBLISHED_CAPACITY);
        let registry = prometheus::Registry::new();
        let metrics = K8sMetrics::register(&registry);
        let token = CancellationToken::new();
        let task = tokio::spawn(k8s::run(
            client,
            opts,
            rx,
            events.clone(),
            metrics,
            &registry,
            token.clone(),
        ));
        Self {
            conditions,
            events,
            registry,
            token,
            task,
        }
    }

    pub fn set(&self, c: Vec<NodeCondition>) {
        self.conditions.send_replace(Arc::new(c));
    }

    pub async fn stop(self) {
        self.token.cancel();
        self.task.await.expect("exporter ends");
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

/// Lets the (paused) clock run in steps until `cond` holds, for at most `limit`.
pub async fn run_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `npd-ext detector` reporting as [`NODE`] to `api`, its ports picked by
/// the system, with no cluster configuration from the environment (`home`
/// as its HOME). The caller adds the monitors.
pub fn detector_binary(api: &FakeApi, home: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_npd-ext"));
    cmd.args([
        "detector",
        "--port",
        "0",
        "--prometheus-port",
        "0",
        "--hostname-override",
        NODE,
    ])
    .arg(format!(
        "--apiserver-override={}?inClusterConfig=false",
        api.url()
    ))
    .env_remove("KUBECONFIG")
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env("HOME", home)
    .stderr(std::process::Stdio::null());
    cmd
}

//! The Kubernetes exporter: the node's conditions on its Node, its events
//! as `events.k8s.io/v1` Events regarding the Node.
//!
//! - [`client`]: the API client from NPD's flags, and how a failed call is read;
//! - [`limiter`]: the client-side rate limit and the backoff of failed writes;
//! - [`conditions`]: reading the Node and patching `nodes/<node>/status`;
//! - [`aggregate`]: aggregating events (identical and similar ones counted,
//!   bounded, never late);
//! - [`events`]: the writer that feeds the aggregation and writes Events;
//! - [`taints`]: the opt-in taint writer (`--taint-policy`), with the
//!   fleet-wide [`breaker`].
//!
//! The writers run beside each other; the conditions task hands the
//! events task the Node's reference once it has read it.

pub mod aggregate;
pub mod breaker;
pub mod client;
pub mod conditions;
pub mod events;
pub mod limiter;
pub mod taints;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::Api;
use prometheus::{IntCounterVec, IntGauge, Registry};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use aggregate::{AGGREGATE_WINDOW, FLUSH_EVERY, MAX_GROUPS, SIMILAR_LIMIT};
pub use client::{client, client_config};
pub use conditions::{SYNC_BURST, SYNC_REFILL};

use crate::conditions::{NodeCondition, Published};
use crate::liveness::Pulse;
use limiter::Limiter;

/// A time as k8s-openapi holds it (`Time`, `MicroTime`).
fn timestamp(t: std::time::SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Longest backoff between failed writes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest one API call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct K8sOptions {
    pub node: String,
    pub update_conditions: bool,
    pub write_events: bool,
    pub heartbeat: Duration,
    pub wait_timeout: Duration,
    pub wait_interval: Duration,
    /// Client-side limit on this exporter's API calls.
    pub qps: f64,
    pub burst: u32,
    /// Namespace of the Events (Nodes are cluster-scoped).
    pub event_namespace: String,
    /// Taints to keep on the Node from its conditions (`None`: off).
    pub taints: Option<Arc<crate::config::taint_policy::TaintPolicy>>,
}

/// A client and what to do with it.
#[derive(Clone)]
pub struct K8sExporter {
    pub client: Client,
    pub options: K8sOptions,
}

impl std::fmt::Debug for K8sExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sExporter")
            .field("namespace", &self.client.default_namespace())
            .field("options", &self.options)
            .finish()
    }
}

/// The exporter's own counters, on the detector's registry.
#[derive(Clone, Debug)]
pub struct K8sMetrics {
    /// `npd_ext_k8s_requests_total{op, result}`.
    pub requests: IntCounterVec,
    /// `npd_ext_k8s_events_folded_total{reason}`: occurrences counted into
    /// another's Event instead of a write of their own.
    pub folded: IntCounterVec,
    /// `npd_ext_events_dropped_total{reason}`: occurrences never written
    /// (see [`events`]).
    pub dropped: IntCounterVec,
    /// `npd_ext_k8s_conditions_in_sync`: 1 when the Node holds our state.
    pub in_sync: IntGauge,
}

impl K8sMetrics {
    pub fn register(registry: &Registry) -> Self {
        use super::prometheus::{counter_vec, gauge_vec, register};
        let requests = counter_vec(
            "npd_ext_k8s_requests_total",
            "Kubernetes API requests of the exporter, by operation and result.",
            &["op", "result"],
        );
        let folded = counter_vec(
            "npd_ext_k8s_events_folded_total",
            "Event occurrences counted into an existing Event instead of a write of their own.",
            &["reason"],
        );
        let dropped = counter_vec(
            "npd_ext_events_dropped_total",
            "Event occurrences never written to the cluster, by why: lagged (the writer fell behind), expired (not written within the aggregation window), evicted (past the state's bound), rejected (refused by the API server).",
            &["reason"],
        );
        for reason in ["lagged", "expired", "evicted", "rejected"] {
            dropped.with_label_values(&[reason]).reset();
        }
        let in_sync_vec = gauge_vec(
            "npd_ext_k8s_conditions_in_sync",
            "1 when the Node holds the detector's latest conditions.",
            &[],
        );
        let in_sync = in_sync_vec.with_label_values(&[] as &[&str]);
        register(registry, &requests);
        register(registry, &folded);
        register(registry, &dropped);
        register(registry, &in_sync_vec);
        Self {
            requests,
            folded,
            dropped,
            in_sync,
        }
    }

    pub(crate) fn request(&self, op: &str, result: &str) {
        self.requests.with_label_values(&[op, result]).inc();
    }
}

/// The exporter's two writers and what they share: the API client, the
/// client-side rate limit, and the Node's reference (read by the
/// conditions writer, put into Events' `regarding` by the events writer).
/// Each writer is a task of its own with its own liveness; either may be
/// restarted alone.
#[derive(Clone)]
pub struct Writers {
    client: Client,
    ctx: Ctx,
    node_tx: Arc<watch::Sender<Option<ObjectReference>>>,
    /// The events writer's subscription and aggregation, kept across its
    /// restarts (what is published while it waits to restart is taken, or
    /// counted as lagged, by the next run).
    events: Arc<tokio::sync::Mutex<events::Intake>>,
}

/// What both writers take: the options, the shared rate limit, the metrics.
#[derive(Clone, Debug)]
struct Ctx {
    opts: K8sOptions,
    limiter: Limiter,
    metrics: K8sMetrics,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("options", &self.ctx.opts)
            .finish_non_exhaustive()
    }
}

impl Writers {
    /// `events`: the subscription to the detector's broadcast the events
    /// writer reads.
    pub fn new(
        client: Client,
        opts: K8sOptions,
        metrics: K8sMetrics,
        events: broadcast::Receiver<Published>,
    ) -> Self {
        let limiter = Limiter::new(opts.qps, opts.burst);
        let (node_tx, _) = watch::channel(None);
        Self {
            client,
            ctx: Ctx {
                opts,
                limiter,
                metrics,
            },
            node_tx: Arc::new(node_tx),
            events: Arc::new(tokio::sync::Mutex::new(events::Intake::new(events))),
        }
    }

    pub fn options(&self) -> &K8sOptions {
        &self.ctx.opts
    }

    /// Reads the Node, then keeps its conditions written.
    pub fn conditions(
        &self,
        conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
        pulse: Pulse,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        conditions::sync_conditions(
            Api::all(self.client.clone()),
            self.ctx.clone(),
            conditions,
            Arc::clone(&self.node_tx),
            pulse,
            token,
        )
    }

    /// Keeps the Node's taints following its conditions (when the options
    /// hold a taint policy; otherwise returns at once). Its events go to
    /// `publish`, the detector's broadcast, so the events writer writes them.
    pub fn taints(
        &self,
        conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
        publish: broadcast::Sender<Published>,
        metrics: taints::TaintMetrics,
        pulse: Pulse,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        let writer = self.ctx.opts.taints.clone().map(|policy| taints::Writer {
            nodes: Api::all(self.client.clone()),
            ctx: self.ctx.clone(),
            policy,
            publish,
            metrics,
        });
        async move {
            if let Some(w) = writer {
                w.run(conditions, pulse, token).await;
            }
        }
    }

    /// Writes the events, once the Node has been read.
    pub fn events(
        &self,
        pulse: Pulse,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send + use<> {
        events::write_events(
            Api::namespaced(self.client.clone(), &self.ctx.opts.event_namespace),
            self.ctx.clone(),
            Arc::clone(&self.events),
            self.node_tx.subscribe(),
            pulse,
            token,
        )
    }
}

/// Runs the writers (those the options enable) until `token` is cancelled,
/// with a liveness registry of their own (the detector supervises each).
/// The events writer subscribes to `events` before this returns; the taint
/// writer publishes its events there.
pub fn run(
    client: Client,
    opts: K8sOptions,
    conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
    events: broadcast::Sender<Published>,
    metrics: K8sMetrics,
    registry: &Registry,
    token: CancellationToken,
) -> impl Future<Output = ()> + Send + use<> {
    let taint_metrics = opts
        .taints
        .as_ref()
        .map(|p| taints::TaintMetrics::register(registry, p));
    let writers = Writers::new(client, opts, metrics, events.subscribe());
    async move {
        let liveness = crate::liveness::Liveness::new();
        let mut tasks = tokio::task::JoinSet::new();
        if writers.ctx.opts.write_events {
            let pulse = liveness.slot("kubernetes events").pulse(None);
            tasks.spawn(writers.events(pulse, token.clone()));
        }
        if let Some(m) = taint_metrics {
            let pulse = liveness.slot("kubernetes taints").pulse(None);
            tasks.spawn(writers.taints(conditions.clone(), events, m, pulse, token.clone()));
        }
        let pulse = liveness.slot("kubernetes conditions").pulse(None);
        tasks.spawn(writers.conditions(conditions, pulse, token.clone()));
        while tasks.join_next().await.is_some() {}
    }
}

//! The Kubernetes exporter: the node's conditions as a strategic-merge PATCH
//! of `nodes/<node>/status`, and its events as `events.k8s.io/v1` Events
//! regarding the Node.
//!
//! Conditions: only the types this detector owns are sent, so the
//! kubelet's and other writers' survive. A change is written within a second
//! (a token bucket of [`SYNC_BURST`] writes, refilled one per
//! [`SYNC_REFILL`], bounds a flapping condition); otherwise a heartbeat
//! every `--k8s-exporter-heartbeat-period` ±10 % refreshes
//! `lastHeartbeatTime`. At start the Node is read and the
//! `lastTransitionTime` of a condition whose status did not change is kept.
//! While the API server is away only the latest desired state is held (it
//! is the watch channel's one value), retried with jittered backoff.
//!
//! Events: one write per (reason, message) when first seen; repeats within
//! [`AGGREGATE_WINDOW`] are counted and written as the Event's
//! `series.count` at most every [`FLUSH_EVERY`]; each reason has its own
//! token bucket, so a storm of one reason cannot starve the others. An event
//! message is data: it goes into `note` as it is (cut to 1 KiB).
//!
//! Events are written with kube's typed `Api<events::v1::Event>` in the
//! shape `kube::runtime::events::Recorder` gives them (reporting controller,
//! instance, `regarding` with apiVersion and uid, `eventTime`), not through
//! the Recorder itself: the Recorder adds one to `series.count` per write and
//! keeps the first note, so 10 000 occurrences written as a few writes would
//! show a count of 2, and two messages with one reason would share a note.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use prometheus::{IntCounterVec, IntGauge, Registry};
use serde_json::json;
use tokio::sync::{Mutex, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::conditions::{NodeCondition, Published};
use crate::problem::{Event, Severity, cut, format_time};

/// Condition writes a change may spend at once.
pub const SYNC_BURST: f64 = 5.0;
/// One more condition write is allowed per this long.
pub const SYNC_REFILL: Duration = Duration::from_secs(10);
/// Identical events within this window are one Event with a count.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// How often counted repeats are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// Event writes a reason may spend at once, and its refill period.
pub const EVENT_BURST: f64 = 10.0;
pub const EVENT_REFILL: Duration = Duration::from_secs(30);
/// Longest backoff between failed writes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

const NOTE_LIMIT: usize = 1024;
const REASON_LIMIT: usize = 128;

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

/// A token bucket on the tokio clock.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    per_token: Duration,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: f64, per_token: Duration) -> Self {
        Self {
            capacity,
            per_token,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.at).as_secs_f64() / self.per_token.as_secs_f64();
        self.tokens = (self.tokens + gained).min(self.capacity);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.refill();
        // A hair of slack: the clock ticks in nanoseconds, not in tokens.
        if self.tokens >= 1.0 - 1e-6 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    pub fn next_token(&mut self) -> Instant {
        self.refill();
        if self.tokens >= 1.0 - 1e-6 {
            self.at
        } else {
            self.at + self.per_token.mul_f64(1.0 - self.tokens) + Duration::from_micros(1)
        }
    }
}

/// The exporter's own counters, on the detector's registry.
#[derive(Clone, Debug)]
pub struct K8sMetrics {
    /// `npd_ext_k8s_requests_total{op, result}`.
    pub requests: IntCounterVec,
    /// `npd_ext_k8s_events_suppressed_total{reason}`: occurrences folded
    /// into a count instead of a write of their own.
    pub folded: IntCounterVec,
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
        let in_sync_vec = gauge_vec(
            "npd_ext_k8s_conditions_in_sync",
            "1 when the Node holds the detector's latest conditions.",
            &[],
        );
        let in_sync = in_sync_vec.with_label_values(&[] as &[&str]);
        register(registry, &requests);
        register(registry, &folded);
        register(registry, &in_sync_vec);
        Self {
            requests,
            folded,
            in_sync,
        }
    }

    fn request(&self, op: &str, result: &str) {
        self.requests.with_label_values(&[op, result]).inc();
    }
}

/// Why an API call failed, as the exporter acts on it.
#[derive(Debug)]
enum Failure {
    /// Retry after this long (429 with a hint).
    After(Duration),
    /// The service account lacks a permission.
    Forbidden(String),
    NotFound(String),
    /// Anything else: retry with backoff.
    Other(String),
}

fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 429 => Failure::After(Duration::from_secs(
            s.details
                .as_ref()
                .map_or(1, |d| u64::from(d.retry_after_seconds.max(1))),
        )),
        kube::Error::Api(s) if s.code == 403 => Failure::Forbidden(s.message.clone()),
        kube::Error::Api(s) if s.code == 404 => Failure::NotFound(s.message.clone()),
        other => Failure::Other(other.to_string()),
    }
}

/// Client-side rate limit shared by every API call of the exporter.
#[derive(Clone, Debug)]
struct Limiter(Arc<Mutex<Bucket>>);

impl Limiter {
    fn new(qps: f64, burst: u32) -> Self {
        let qps = if qps > 0.0 { qps } else { 500.0 };
        Self(Arc::new(Mutex::new(Bucket::new(
            f64::from(burst.max(1)),
            Duration::from_secs_f64(1.0 / qps),
        ))))
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut b = self.0.lock().await;
                if b.try_take() {
                    return;
                }
                b.next_token()
            };
            tokio::time::sleep_until(wait).await;
        }
    }
}

/// Backoff for failed writes: 2 s, 4 s, … 60 s.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_secs(2), MAX_BACKOFF, 2.0)
}

fn jittered(period: Duration) -> Duration {
    period.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// Runs the exporter until `token` is cancelled.
pub async fn run(
    client: Client,
    opts: K8sOptions,
    conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
    events: broadcast::Receiver<Published>,
    metrics: K8sMetrics,
    token: CancellationToken,
) {
    let limiter = Limiter::new(opts.qps, opts.burst);
    let nodes: Api<Node> = Api::all(client.clone());
    let (node_tx, node_rx) = watch::channel::<Option<ObjectReference>>(None);
    let mut tasks = tokio::task::JoinSet::new();
    if opts.write_events {
        let api: Api<K8sEvent> = Api::namespaced(client.clone(), &opts.event_namespace);
        tasks.spawn(write_events(
            api,
            opts.clone(),
            events,
            node_rx,
            limiter.clone(),
            metrics.clone(),
            token.clone(),
        ));
    }
    tasks.spawn(sync_conditions(
        nodes,
        opts,
        conditions,
        node_tx,
        limiter,
        metrics,
        token.clone(),
    ));
    while tasks.join_next().await.is_some() {}
}

/// Conditions already on the Node: type → (status, lastTransitionTime).
type Adopted = HashMap<String, (String, String)>;

async fn fetch_node(
    nodes: &Api<Node>,
    opts: &K8sOptions,
    limiter: &Limiter,
    metrics: &K8sMetrics,
    token: &CancellationToken,
) -> Option<(ObjectReference, Adopted)> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        limiter.acquire().await;
        match nodes.get(&opts.node).await {
            Ok(node) => {
                metrics.request("get_node", "ok");
                let adopted = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some((
                            c.type_.clone(),
                            (
                                c.status.clone(),
                                c.last_transition_time.as_ref()?.0.to_string(),
                            ),
                        ))
                    })
                    .collect();
                return Some((node.object_ref(&()), adopted));
            }
            Err(e) => {
                metrics.request("get_node", "error");
                let why = match classify(&e) {
                    Failure::Forbidden(m) => format!(
                        "forbidden: the service account needs `get` on `nodes` (manifests/rbac.yaml): {m}"
                    ),
                    Failure::NotFound(_) => format!(
                        "node {} does not exist (set --hostname-override or NODE_NAME to the Node's name)",
                        opts.node
                    ),
                    Failure::After(_) | Failure::Other(_) => e.to_string(),
                };
                if !warned || started.elapsed() < opts.wait_timeout {
                    tracing::warn!(node = %opts.node, "cannot read the Node: {why}; retrying");
                    warned = true;
                }
            }
        }
        // A real wait: retried every interval for the whole timeout, then
        // on, less often, for as long as it takes.
        let every = if started.elapsed() < opts.wait_timeout {
            opts.wait_interval
        } else {
            opts.wait_interval.max(Duration::from_secs(30))
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = token.cancelled() => return None,
        }
    }
}

/// The PATCH body: our conditions, with kept transition times.
fn condition_patch(
    conds: &[NodeCondition],
    adopted: &Adopted,
    now: SystemTime,
) -> serde_json::Value {
    let list: Vec<serde_json::Value> = conds
        .iter()
        .map(|c| {
            let status = c.status.to_string();
            let transition = match adopted.get(&c.type_) {
                Some((s, t)) if *s == status => t.clone(),
                _ => format_time(c.transition),
            };
            json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": transition,
                "lastHeartbeatTime": format_time(now),
            })
        })
        .collect();
    json!({ "status": { "conditions": list } })
}

async fn sync_conditions(
    nodes: Api<Node>,
    opts: K8sOptions,
    mut conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
    node_tx: watch::Sender<Option<ObjectReference>>,
    limiter: Limiter,
    metrics: K8sMetrics,
    token: CancellationToken,
) {
    let Some((node_ref, mut adopted)) = fetch_node(&nodes, &opts, &limiter, &metrics, &token).await
    else {
        return;
    };
    tracing::info!(node = %opts.node, "Kubernetes exporter connected");
    node_tx.send_replace(Some(node_ref));
    if !opts.update_conditions {
        token.cancelled().await;
        return;
    }
    let mut bucket = Bucket::new(SYNC_BURST, SYNC_REFILL);
    // What the Node holds of ours, as last written.
    let mut written: Option<Arc<Vec<NodeCondition>>> = None;
    let mut next_heartbeat = Instant::now() + jittered(opts.heartbeat);
    let mut backoff = backoff();
    let mut retry_at: Option<Instant> = None;
    let mut forbidden_logged = false;
    loop {
        let desired = conditions.borrow_and_update().clone();
        let changed = written.as_ref().is_none_or(|w| !same_state(w, &desired));
        metrics.in_sync.set(i64::from(!changed));
        let due = if desired.is_empty() {
            None
        } else if let Some(at) = retry_at {
            Some(at)
        } else if changed {
            Some(bucket.next_token())
        } else {
            Some(next_heartbeat)
        };
        tokio::select! {
            r = conditions.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            () = crate::shutdown::sleep_until_opt(due) => {}
            () = token.cancelled() => return,
        }
        if changed && retry_at.is_none() && !bucket.try_take() {
            continue;
        }
        retry_at = None;
        limiter.acquire().await;
        let patch = condition_patch(&desired, &adopted, SystemTime::now());
        match nodes
            .patch_status(
                &opts.node,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {
                metrics.request("patch_node_status", "ok");
                if backoff.failures() > 0 {
                    tracing::info!(node = %opts.node, "node conditions written again after {} failed attempts", backoff.failures());
                }
                backoff.reset();
                // A status that moved on is ours from now on.
                adopted.retain(|t, (s, _)| {
                    desired
                        .iter()
                        .any(|c| &c.type_ == t && c.status.to_string() == *s)
                });
                written = Some(desired);
                next_heartbeat = Instant::now() + jittered(opts.heartbeat);
            }
            Err(e) => {
                metrics.request("patch_node_status", "error");
                let delay = backoff.next_delay();
                let failures = backoff.failures();
                let wait = match classify(&e) {
                    Failure::After(d) => d,
                    Failure::Forbidden(m) => {
                        if !forbidden_logged {
                            tracing::error!(node = %opts.node, "forbidden: the service account needs `patch` on `nodes/status` (manifests/rbac.yaml): {m}");
                            forbidden_logged = true;
                        }
                        delay
                    }
                    Failure::NotFound(m) | Failure::Other(m) => {
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(node = %opts.node, failures, "cannot write node conditions: {m}; retrying");
                        }
                        delay
                    }
                };
                retry_at = Some(Instant::now() + wait);
            }
        }
    }
}

/// Same conditions apart from times the Node does not need rewritten for.
fn same_state(a: &[NodeCondition], b: &[NodeCondition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.transition == y.transition
        })
}

/// One (reason, message) seen recently.
#[derive(Debug)]
struct Seen {
    /// The Event written for it, once written.
    name: Option<String>,
    /// Occurrences so far (what `series.count` says once flushed).
    count: u64,
    /// Occurrences not yet written.
    pending: u64,
    last: Instant,
    severity: Severity,
}

fn event_name(node: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{node}.{nanos:x}")
}

async fn write_events(
    api: Api<K8sEvent>,
    opts: K8sOptions,
    mut rx: broadcast::Receiver<Published>,
    mut node: watch::Receiver<Option<ObjectReference>>,
    limiter: Limiter,
    metrics: K8sMetrics,
    token: CancellationToken,
) {
    // Events wait for the Node (its uid goes into `regarding`).
    let regarding = loop {
        if let Some(r) = node.borrow_and_update().clone() {
            break r;
        }
        tokio::select! {
            r = node.changed() => if r.is_err() { return },
            () = token.cancelled() => return,
        }
    };
    let mut seen: HashMap<(String, String), Seen> = HashMap::new();
    let mut buckets: HashMap<String, Bucket> = HashMap::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(Published::Event { event, .. }) => {
                    let w = Writer { api: &api, opts: &opts, regarding: &regarding, limiter: &limiter, metrics: &metrics };
                    w.on_event(&event, &mut seen, &mut buckets).await;
                }
                Ok(Published::Condition { .. }) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics.folded.with_label_values(&["(lagged)"]).inc_by(n);
                    tracing::warn!(skipped = n, "the Kubernetes event writer fell behind; {n} events were not written");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush.tick() => {
                let w = Writer { api: &api, opts: &opts, regarding: &regarding, limiter: &limiter, metrics: &metrics };
                w.flush(&mut seen, &mut buckets).await;
            }
            () = token.cancelled() => return,
        }
    }
}

struct Writer<'a> {
    api: &'a Api<K8sEvent>,
    opts: &'a K8sOptions,
    regarding: &'a ObjectReference,
    limiter: &'a Limiter,
    metrics: &'a K8sMetrics,
}

impl Writer<'_> {
    async fn on_event(
        &self,
        e: &Event,
        seen: &mut HashMap<(String, String), Seen>,
        buckets: &mut HashMap<String, Bucket>,
    ) {
        let reason = cut(&e.reason, REASON_LIMIT).to_owned();
        let key = (reason.clone(), e.message.clone());
        let now = Instant::now();
        let entry = seen.entry(key.clone()).or_insert(Seen {
            name: None,
            count: 0,
            pending: 0,
            last: now,
            severity: e.severity,
        });
        if entry.name.is_some()
            && now.duration_since(entry.last) > AGGREGATE_WINDOW
            && entry.pending == 0
        {
            // Long quiet: a fresh Event.
            entry.name = None;
            entry.count = 0;
        }
        entry.count += 1;
        entry.pending += 1;
        entry.last = now;
        let bucket = buckets
            .entry(reason.clone())
            .or_insert_with(|| Bucket::new(EVENT_BURST, EVENT_REFILL));
        if entry.name.is_some() || !bucket.try_take() {
            // Counted, written with the next flush.
            self.metrics
                .folded
                .with_label_values(&[reason.as_str()])
                .inc();
            return;
        }
        let name = event_name(&self.opts.node);
        let body = self.new_event(&name, &reason, &e.message, e.severity);
        self.limiter.acquire().await;
        match self.api.create(&PostParams::default(), &body).await {
            Ok(_) => {
                self.metrics.request("create_event", "ok");
                entry.name = Some(name);
                entry.pending = 0;
            }
            Err(err) => {
                self.metrics.request("create_event", "error");
                self.log_failure("create", &err);
            }
        }
        // Forget what has been quiet long enough.
        seen.retain(|_, s| s.pending > 0 || now.duration_since(s.last) <= AGGREGATE_WINDOW);
    }

    fn new_event(&self, name: &str, reason: &str, message: &str, severity: Severity) -> K8sEvent {
        let now = jiff::Timestamp::now();
        let value = json!({
            "metadata": { "name": name, "namespace": self.opts.event_namespace },
            "eventTime": now.to_string(),
            "action": "Detected",
            "reason": reason,
            "note": cut(message, NOTE_LIMIT),
            "type": match severity { Severity::Warn => "Warning", Severity::Info => "Normal" },
            "regarding": self.regarding,
            "reportingController": "npd-ext",
            "reportingInstance": cut(&self.opts.node, 128),
        });
        serde_json::from_value(value).unwrap_or_default()
    }

    /// Writes the counts of repeats (or first writes that were held back).
    async fn flush(
        &self,
        seen: &mut HashMap<(String, String), Seen>,
        buckets: &mut HashMap<String, Bucket>,
    ) {
        for ((reason, message), s) in seen.iter_mut().filter(|(_, s)| s.pending > 0) {
            let bucket = buckets
                .entry(reason.clone())
                .or_insert_with(|| Bucket::new(EVENT_BURST, EVENT_REFILL));
            if !bucket.try_take() {
                continue;
            }
            self.limiter.acquire().await;
            let result = match &s.name {
                Some(name) => {
                    let patch = json!({ "series": {
                        "count": s.count,
                        "lastObservedTime": jiff::Timestamp::now().to_string(),
                    }});
                    self.api
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ("patch_event", None))
                }
                None => {
                    let name = event_name(&self.opts.node);
                    let mut body = self.new_event(&name, reason, message, s.severity);
                    if s.count > 1 {
                        body.series = serde_json::from_value(json!({
                            "count": s.count,
                            "lastObservedTime": jiff::Timestamp::now().to_string(),
                        }))
                        .ok();
                    }
                    self.api
                        .create(&PostParams::default(), &body)
                        .await
                        .map(|_| ("create_event", Some(name)))
                }
            };
            match result {
                Ok((op, name)) => {
                    self.metrics.request(op, "ok");
                    if name.is_some() {
                        s.name = name;
                    }
                    s.pending = 0;
                }
                Err(err) => {
                    self.metrics.request("patch_event", "error");
                    // The Event may be gone (expired): write a new one next time.
                    if matches!(classify(&err), Failure::NotFound(_)) {
                        s.name = None;
                    }
                    self.log_failure("update", &err);
                }
            }
        }
    }

    fn log_failure(&self, what: &str, err: &kube::Error) {
        match classify(err) {
            Failure::Forbidden(m) => tracing::error!(
                "forbidden: the service account needs `create` and `patch` on `events` (events.k8s.io and core; manifests/rbac.yaml): {m}"
            ),
            _ => tracing::warn!("cannot {what} an Event: {err}"),
        }
    }
}

/// A client for the exporter: kube's own retry layer is off, since the
/// exporter retries with its own backoff and keeps only the latest state
/// (two layers of retries would multiply the requests of an outage).
pub fn client(mut config: kube::Config) -> anyhow::Result<Client> {
    use anyhow::Context;
    config.default_retry = false;
    let url = config.cluster_url.clone();
    Client::try_from(config).with_context(|| format!("cannot build a Kubernetes client for {url}"))
}

/// A `kube::Config` from NPD's `--apiserver-override` URI
/// (`https://host:port?inClusterConfig=false&auth=/path/kubeconfig&insecure=true`),
/// or the usual inference (in-cluster, then `KUBECONFIG`/`~/.kube/config`).
/// `Ok(None)`: no cluster configuration was found.
pub async fn client_config(override_: Option<&str>) -> anyhow::Result<Option<kube::Config>> {
    use anyhow::Context;
    let Some(uri) = override_.filter(|s| !s.is_empty()) else {
        return Ok(kube::Config::infer().await.ok());
    };
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut in_cluster = true;
    let mut auth = None;
    let mut insecure = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let flag = || {
            v.parse::<bool>()
                .with_context(|| format!("--apiserver-override: {k}={v} is not true or false"))
        };
        match k {
            "inClusterConfig" => in_cluster = flag()?,
            "insecure" => insecure = flag()?,
            "auth" => auth = Some(v.to_owned()),
            "useServiceAccount" => {}
            other => anyhow::bail!(
                "--apiserver-override: unknown parameter {other:?} (inClusterConfig, auth, insecure, useServiceAccount)"
            ),
        }
    }
    let url: hyper::Uri = base
        .parse()
        .with_context(|| format!("--apiserver-override: {base:?} is not a URL"))?;
    let mut config = match (in_cluster, auth) {
        (false, Some(path)) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("--apiserver-override: cannot read kubeconfig {path}"))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--apiserver-override: kubeconfig {path}"))?
        }
        (true, _) => kube::Config::incluster().unwrap_or_else(|_| kube::Config::new(url.clone())),
        (false, None) => kube::Config::new(url.clone()),
    };
    if url.host().is_some() {
        config.cluster_url = url;
    }
    config.accept_invalid_certs = insecure;
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_on_the_tokio_clock() {
        let mut b = Bucket::new(2.0, Duration::from_secs(10));
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take());
        let at = b.next_token();
        let wait = at.duration_since(Instant::now());
        assert!(
            wait >= Duration::from_secs(10) && wait <= Duration::from_millis(10_001),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_take());
    }

    #[test]
    fn backoff_and_jitter_stay_in_bounds() {
        let mut b = backoff();
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= MAX_BACKOFF, "{d:?}");
            assert!(d >= Duration::from_millis(1600), "{d:?}");
        }
        let p = Duration::from_secs(300);
        for _ in 0..100 {
            let j = jittered(p);
            assert!(j >= p.mul_f64(0.9) && j <= p.mul_f64(1.1), "{j:?}");
        }
    }

    #[tokio::test]
    async fn override_uris_as_npd_writes_them() {
        let c = client_config(Some(
            "http://127.0.0.1:6443?inClusterConfig=false&insecure=true",
        ))
        .await
        .expect("parses")
        .expect("a config");
        assert_eq!(c.cluster_url.to_string(), "http://127.0.0.1:6443/");
        assert!(c.accept_invalid_certs);
        let e = client_config(Some("http://h?inClusterConfig=maybe"))
            .await
            .expect_err("bad flag");
        assert!(e.to_string().contains("inClusterConfig=maybe"), "{e}");
        let e = client_config(Some("http://h?nope=1"))
            .await
            .expect_err("unknown");
        assert!(e.to_string().contains("unknown parameter"), "{e}");
    }
}

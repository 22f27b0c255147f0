//! The gpu-monitor plugin: owns the health model, publishes its snapshot on a
//! watch channel, and serves `ExternalMonitor` plus `grpc.health.v1` on a Unix
//! socket. Push (`WatchHealth`) and poll (`CheckHealth`) read the same snapshot;
//! each connection and each stream has its own event cursor, so no caller (a
//! liveness probe) takes the events another (a polling detector) is owed.
//!
//! `grpc.health.v1` says whether the plugin works, never whether the GPUs do:
//! it is NOT_SERVING while the health model or a backend stops beating, and
//! stays SERVING while NVML hangs (that is `GPUUnresponsive`, and a probe
//! that failed then would restart the monitor over and over).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};
use tonic_health::server::HealthReporter;

use super::health::{HealthModel, Snapshot};
use super::metrics::GpuMetrics;
use super::{GpuIdentity, Observation, SUPPORTED_CONDITIONS};
use crate::config::xid_policy::XidPolicy;
use crate::liveness::{Liveness, Pulse};
use crate::problem::{Event, Severity};
use crate::rpc::API_VERSION;
use crate::rpc::pb::external_monitor_server::{ExternalMonitor, ExternalMonitorServer};
use crate::rpc::pb::{self, HealthCheckRequest, MonitorMetadata};
use crate::rpc::server::{BindError, BoundSocket, ConnId};
use crate::shutdown::Shutdown;
use crate::supervisor::Supervisor;
use tonic::codegen::BoxStream;

/// The `source` of every status this plugin sends.
pub const SOURCE: &str = "gpu-monitor";
/// The event a client gets when events fell out of the backlog before it
/// asked again.
pub const REASON_EVENTS_DROPPED: &str = "GPUMonitorEventsDropped";
/// The health model promises a beat within this (it beats at least every
/// flush tick, 10 s).
const MODEL_BEAT: Duration = Duration::from_secs(30);
/// How often `grpc.health.v1` is brought in line with the liveness registry.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Connections whose `CheckHealth` cursor is kept (the oldest goes first).
const MAX_POLLERS: usize = 64;
/// How far back a new client's first `CheckHealth` reaches into the backlog.
const NEW_CLIENT_EVENTS: Duration = super::health::EVENT_WINDOW;

#[derive(Clone, Debug)]
pub struct PluginOptions {
    /// The GPUs, when known up front (sim); `None` when the backend learns
    /// them from the driver (NVML).
    pub gpus: Option<Vec<GpuIdentity>>,
    /// Backend name, announced in metadata capabilities.
    pub backend: &'static str,
    /// How long in-flight calls get after shutdown starts.
    pub grace: Duration,
    /// Serve `WatchHealth`; when false it answers UNIMPLEMENTED, like a
    /// plugin built against the Go proof of concept.
    pub watch_health: bool,
    /// Users whose processes may connect (checked with `SO_PEERCRED`).
    pub allowed_uids: Vec<u32>,
    /// Where the backends beat; the health model joins them, and
    /// `grpc.health.v1` is NOT_SERVING while any of them stalls.
    pub liveness: Liveness,
}

/// A bound, not yet serving plugin. Observations fed into
/// [`Plugin::observations`] reach clients as soon as it serves.
#[derive(Debug)]
pub struct Plugin {
    socket: BoundSocket,
    options: PluginOptions,
    tx: mpsc::Sender<Observation>,
    rx: mpsc::Receiver<Observation>,
    /// The operator's XID policy, for the health model.
    xid_policy: Option<Arc<XidPolicy>>,
    /// The per-GPU metrics, when served.
    metrics: Option<GpuMetrics>,
}

impl Plugin {
    pub fn bind(path: &Path, options: PluginOptions) -> Result<Self, BindError> {
        let socket = BoundSocket::bind(path)?;
        let (tx, rx) = mpsc::channel(256);
        Ok(Self {
            socket,
            options,
            tx,
            rx,
            xid_policy: None,
            metrics: None,
        })
    }

    /// The health model keeps `metrics` in line with itself.
    #[must_use]
    pub fn with_metrics(mut self, metrics: GpuMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The health model applies the operator's XID policy over the catalog.
    #[must_use]
    pub fn with_xid_policy(mut self, policy: Option<Arc<XidPolicy>>) -> Self {
        self.xid_policy = policy;
        self
    }

    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Where backends send what they see.
    pub fn observations(&self) -> mpsc::Sender<Observation> {
        self.tx.clone()
    }

    /// Serves until `token` is cancelled (by a signal or the `Stop` RPC), then
    /// reports NOT_SERVING, lets in-flight calls finish within the grace
    /// period, and unlinks the socket.
    pub async fn serve(mut self, token: CancellationToken) -> Result<(), tonic::transport::Error> {
        let Some(listener) = self.socket.take_listener() else {
            return Ok(());
        };
        let cursors = Arc::new(Cursors::default());
        let closed = Arc::clone(&cursors);
        let incoming = crate::rpc::server::accept(
            listener,
            self.options.allowed_uids.clone(),
            Some(Arc::new(move |id| closed.forget(id))),
        );
        let model = match &self.options.gpus {
            Some(gpus) => HealthModel::new(gpus.clone()),
            None => HealthModel::awaiting_driver(),
        }
        .with_xid_policy(self.xid_policy.clone());
        let (snap_tx, snap_rx) = watch::channel(Arc::new(Published::new(model.snapshot())));
        // The model engine is supervised: a panic restarts it on the model
        // and queue it had, after a backoff. Meanwhile every condition is
        // published Unknown, so no client takes the last status for a fresh
        // one; a restarted engine publishes the model's state again.
        let engine = Shutdown::under(token.child_token());
        let mut metrics = self.metrics.take();
        if let Some(m) = &mut metrics {
            m.observe(&[], &model);
        }
        let state = Arc::new(tokio::sync::Mutex::new((model, self.rx, metrics)));
        let engine_token = engine.token().clone();
        let down_tx = snap_tx.clone();
        let mut restarted = false;
        let liveness = self.options.liveness.clone();
        Supervisor::new(&engine, &liveness).spawn_with(
            "health model",
            Some(MODEL_BEAT),
            move |pulse| {
                let (state, tx, token) =
                    (Arc::clone(&state), snap_tx.clone(), engine_token.clone());
                let republish = std::mem::replace(&mut restarted, true);
                async move {
                    let mut guard = state.lock_owned().await;
                    let (model, rx, metrics) = &mut *guard;
                    if republish {
                        tx.send_replace(Arc::new(Published::new(model.snapshot())));
                    }
                    run_model(model, rx, metrics, &tx, token, &pulse).await;
                }
            },
            move |message| {
                let last = down_tx.borrow().snapshot.clone();
                down_tx.send_replace(Arc::new(Published::new(last.unknown(&format!(
                    "the GPU health model stopped: it panicked ({message}) and restarts"
                )))));
                std::future::ready(())
            },
        );

        let service = GpuMonitorService {
            observations: self.tx.clone(),
            thresholds: Arc::default(),
            snapshots: snap_rx,
            token: token.clone(),
            cursors,
            dropped: Arc::default(),
            metadata: metadata(&self.options),
            watch_health: self.options.watch_health,
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        set_health(&reporter, true).await;
        engine.spawn(watch_liveness(
            liveness,
            reporter.clone(),
            engine.token().clone(),
        ));
        tracing::info!(
            socket = %self.socket.path().display(),
            gpus = ?self.options.gpus.as_ref().map(Vec::len),
            backend = self.options.backend,
            "gpu-monitor serving"
        );

        let shutdown = {
            let token = token.clone();
            async move {
                token.cancelled().await;
                set_health(&reporter, false).await;
                tracing::info!("gpu-monitor shutting down");
            }
        };
        let serve = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(ExternalMonitorServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown);
        let grace = self.options.grace;
        let result = tokio::select! {
            r = serve => r,
            () = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "calls still in flight after the grace period; closing");
                Ok(())
            }
        };
        engine.token().cancel();
        drop(self.socket); // unlinks
        result
    }
}

/// Both names a client may ask about: the service and the server ("").
async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter
        .set_service_status(
            <ExternalMonitorServer<GpuMonitorService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    reporter.set_service_status("", status).await;
}

/// Keeps `grpc.health.v1` in line with the liveness registry until `token`
/// is cancelled (the shutdown path then says NOT_SERVING itself).
async fn watch_liveness(liveness: Liveness, reporter: HealthReporter, token: CancellationToken) {
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        let stalled = liveness.stalled();
        if stalled.is_empty() == serving {
            continue;
        }
        serving = stalled.is_empty();
        if serving {
            tracing::info!("gpu-monitor machinery beats again: SERVING");
        } else {
            tracing::error!(
                stalled = %stalled.join("; "),
                "gpu-monitor machinery stalled: NOT_SERVING"
            );
        }
        set_health(&reporter, serving).await;
    }
}

async fn run_model(
    model: &mut HealthModel,
    rx: &mut mpsc::Receiver<Observation>,
    metrics: &mut Option<GpuMetrics>,
    tx: &watch::Sender<Arc<Published>>,
    token: CancellationToken,
    pulse: &Pulse,
) {
    // Aggregated event windows close on this tick.
    let mut flush = tokio::time::interval(Duration::from_secs(10));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pulse.beat(MODEL_BEAT);
        let changed = tokio::select! {
            o = rx.recv() => match o {
                Some(first) => {
                    // Whatever else is already queued (the rest of a sweep)
                    // goes in the same batch: one comparison, one publish.
                    let mut batch = vec![first];
                    while batch.len() < 512 && let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let changed = model.apply_all(&batch);
                    if let Some(m) = metrics {
                        m.observe(&batch, model);
                    }
                    changed
                }
                None => break,
            },
            _ = flush.tick() => model.flush(SystemTime::now()),
            () = token.cancelled() => break,
        };
        if changed {
            tx.send_replace(Arc::new(Published::new(model.snapshot())));
        }
    }
}

fn metadata(options: &PluginOptions) -> MonitorMetadata {
    let capabilities: HashMap<String, String> = [
        ("backend", options.backend.to_owned()),
        (
            "gpus",
            options
                .gpus
                .as_ref()
                .map_or_else(|| "from-driver".to_owned(), |g| g.len().to_string()),
        ),
        ("watch_health", options.watch_health.to_string()),
        ("xid_detection", "true".to_owned()),
        ("thermal_monitoring", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    MonitorMetadata {
        name: SOURCE.into(),
        version: crate::VERSION.into(),
        description: "NVIDIA GPU health: driver readiness, hung NVML calls, lost GPUs, XIDs by NVIDIA's catalog and recovery action, thermal throttling".into(),
        supported_conditions: SUPPORTED_CONDITIONS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        capabilities,
        api_version: API_VERSION.into(),
    }
}

/// Temperature (°C) and memory (percent) thresholds from request parameters.
type Thresholds = (Option<i32>, Option<f64>);

#[derive(Clone, Debug)]
struct GpuMonitorService {
    /// Into the model, for thresholds that requests carry.
    observations: mpsc::Sender<Observation>,
    /// The thresholds last applied from request parameters.
    thresholds: Arc<Mutex<Option<Thresholds>>>,
    snapshots: watch::Receiver<Arc<Published>>,
    token: CancellationToken,
    /// Per connection, the last event handed to its `CheckHealth` calls.
    cursors: Arc<Cursors>,
    /// Events that fell out of the backlog before a client asked again.
    dropped: Arc<AtomicU64>,
    metadata: MonitorMetadata,
    watch_health: bool,
}

/// Per-connection `CheckHealth` cursors: each poller gets the events since
/// its own last poll. A new connection starts with the backlog's last
/// minute; a closed one is forgotten; past [`MAX_POLLERS`] the one that
/// polled least recently is (a detector polls steadily, probes come and go).
#[derive(Debug, Default)]
struct Cursors {
    by_conn: Mutex<Pollers>,
}

/// Per connection: the last event handed out, and when (a count of polls)
/// it last polled; and that count.
#[derive(Debug, Default)]
struct Pollers {
    cursors: BTreeMap<ConnId, (u64, u64)>,
    polls: u64,
}

impl Cursors {
    /// Moves `conn`'s cursor to `last` (never back); returns where it was
    /// (`None`: a new client, or a request without a connection id).
    fn advance(&self, conn: Option<ConnId>, last: u64) -> Option<u64> {
        let conn = conn?;
        let mut guard = self.by_conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Pollers {
            cursors: map,
            polls: clock,
        } = &mut *guard;
        *clock += 1;
        let before = map.get(&conn).map(|(cursor, _)| *cursor);
        map.insert(conn, (before.unwrap_or(0).max(last), *clock));
        if map.len() > MAX_POLLERS
            && let Some(idle) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(c, _)| *c)
        {
            map.remove(&idle);
        }
        before.map(|b| b.min(last))
    }

    fn forget(&self, conn: ConnId) {
        self.by_conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cursors
            .remove(&conn);
    }
}

/// A snapshot with its conditions already in wire form: every call and
/// every stream clones those instead of converting again.
#[derive(Debug, Default)]
struct Published {
    snapshot: Snapshot,
    conditions: Vec<pb::Condition>,
}

impl Published {
    fn last_event_seq(&self) -> u64 {
        self.snapshot.last_event_seq()
    }

    fn events_after(&self, after: u64) -> impl Iterator<Item = &Event> {
        self.snapshot.events_after(after)
    }

    fn new(snapshot: Snapshot) -> Self {
        let conditions = snapshot
            .conditions
            .iter()
            .map(pb::Condition::from)
            .collect();
        Self {
            snapshot,
            conditions,
        }
    }
}

/// The status a client is owed: the conditions, and the events after
/// `after` (`None`: a new client, who gets the backlog's last
/// [`NEW_CLIENT_EVENTS`]: a restarted detector hears what just happened,
/// and one that reconnects repeats little). Events that fell out of the
/// backlog since are counted in `dropped` and said in one event.
fn owed(published: &Published, after: Option<u64>, dropped: &AtomicU64) -> pb::Status {
    let since = SystemTime::now()
        .checked_sub(NEW_CLIENT_EVENTS)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut events: Vec<pb::Event> = published
        .events_after(after.unwrap_or(0))
        .filter(|e| after.is_some() || e.timestamp >= since)
        .map(pb::Event::from)
        .collect();
    let oldest = published.snapshot.events.first().map(|(seq, _)| *seq);
    if let (Some(after), Some(oldest)) = (after, oldest)
        && oldest > after + 1
    {
        let lost = oldest - after - 1;
        let total = dropped.fetch_add(lost, Ordering::Relaxed) + lost;
        tracing::warn!(
            lost,
            total,
            "GPU events fell out of the backlog before a client asked again"
        );
        let missed = Event {
            severity: Severity::Warn,
            timestamp: SystemTime::now(),
            reason: REASON_EVENTS_DROPPED.into(),
            message: format!(
                "{lost} GPU events fell out of gpu-monitor's {}-event backlog before this client asked again ({total} so far); the conditions still carry every fault; poll more often or use WatchHealth",
                super::health::EVENT_BACKLOG
            ),
        };
        events.insert(0, pb::Event::from(&missed));
    }
    pb::Status {
        source: SOURCE.into(),
        events,
        conditions: published.conditions.clone(),
    }
}

impl GpuMonitorService {
    /// The Go proof of concept's parameters: `temperature_threshold` (°C) and
    /// `memory_threshold` (percent). Unparseable values are ignored, as there.
    async fn apply_parameters(&self, parameters: &HashMap<String, String>) {
        let temperature = parameters
            .get("temperature_threshold")
            .and_then(|v| v.trim().parse::<i32>().ok());
        let memory = parameters
            .get("memory_threshold")
            .and_then(|v| v.trim().parse::<f64>().ok());
        if temperature.is_none() && memory.is_none() {
            return;
        }
        {
            let mut last = self
                .thresholds
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *last == Some((temperature, memory)) {
                return;
            }
            *last = Some((temperature, memory));
        }
        tracing::info!(
            ?temperature,
            ?memory,
            "thresholds from the detector's plugin parameters"
        );
        let _ = self
            .observations
            .send(Observation::Thresholds {
                temperature,
                memory_percent: memory,
            })
            .await;
    }
}

#[tonic::async_trait]
impl ExternalMonitor for GpuMonitorService {
    async fn check_health(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<pb::Status>, tonic::Status> {
        self.apply_parameters(&req.get_ref().parameters).await;
        let snapshot = Arc::clone(&self.snapshots.borrow());
        let conn = req.extensions().get::<ConnId>().copied();
        let after = self.cursors.advance(conn, snapshot.last_event_seq());
        Ok(Response::new(owed(&snapshot, after, &self.dropped)))
    }

    async fn get_metadata(
        &self,
        _req: Request<()>,
    ) -> Result<Response<MonitorMetadata>, tonic::Status> {
        Ok(Response::new(self.metadata.clone()))
    }

    async fn stop(&self, _req: Request<()>) -> Result<Response<()>, tonic::Status> {
        tracing::info!("Stop requested over gRPC");
        self.token.cancel();
        Ok(Response::new(()))
    }

    async fn watch_health(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<BoxStream<pb::Status>>, tonic::Status> {
        if !self.watch_health {
            return Err(tonic::Status::unimplemented(
                "WatchHealth is disabled on this plugin",
            ));
        }
        self.apply_parameters(&req.get_ref().parameters).await;
        let mut snapshots = self.snapshots.clone();
        let token = self.token.clone();
        let dropped = Arc::clone(&self.dropped);
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            // Events from before the subscription are history, not news.
            let mut seen = snapshots.borrow().last_event_seq();
            loop {
                let status = {
                    let snapshot = Arc::clone(&snapshots.borrow_and_update());
                    let status = owed(&snapshot, Some(seen), &dropped);
                    seen = seen.max(snapshot.last_event_seq());
                    status
                };
                if tx.send(Ok(status)).await.is_err() {
                    return;
                }
                tokio::select! {
                    r = snapshots.changed() => if r.is_err() { return },
                    () = token.cancelled() => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

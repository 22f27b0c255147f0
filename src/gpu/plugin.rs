//! The gpu-monitor plugin: owns the health model, publishes its snapshot on a
//! watch channel, and serves `ExternalMonitor` plus `grpc.health.v1` on a Unix
//! socket. Push (`WatchHealth`) and poll (`CheckHealth`) read the same snapshot.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

use super::health::{HealthModel, Snapshot};
use super::{GpuIdentity, Observation, SUPPORTED_CONDITIONS};
use crate::liveness::Liveness;
use crate::rpc::API_VERSION;
use crate::rpc::pb::external_monitor_server::{ExternalMonitor, ExternalMonitorServer};
use crate::rpc::pb::{self, HealthCheckRequest, MonitorMetadata};
use crate::rpc::server::{BindError, BoundSocket};
use crate::shutdown::Shutdown;
use crate::supervisor::Supervisor;
use tonic::codegen::BoxStream;

/// The `source` of every status this plugin sends.
pub const SOURCE: &str = "gpu-monitor";

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
}

/// A bound, not yet serving plugin. Observations fed into
/// [`Plugin::observations`] reach clients as soon as it serves.
#[derive(Debug)]
pub struct Plugin {
    socket: BoundSocket,
    options: PluginOptions,
    tx: mpsc::Sender<Observation>,
    rx: mpsc::Receiver<Observation>,
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
        })
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
        let allowed = self.options.allowed_uids.clone();
        let incoming =
            tokio_stream::StreamExt::filter(UnixListenerStream::new(listener), move |c| {
                crate::rpc::server::allowed_peer(&allowed, c)
            });
        let model = match &self.options.gpus {
            Some(gpus) => HealthModel::new(gpus.clone()),
            None => HealthModel::awaiting_driver(),
        };
        let (snap_tx, snap_rx) = watch::channel(Arc::new(Published::new(model.snapshot())));
        // The model engine is supervised: a panic restarts it on the model
        // and queue it had, after a backoff. Meanwhile every condition is
        // published Unknown, so no client takes the last status for a fresh
        // one; a restarted engine publishes the model's state again.
        let engine = Shutdown::under(token.child_token());
        let state = Arc::new(tokio::sync::Mutex::new((model, self.rx)));
        let engine_token = engine.token().clone();
        let down_tx = snap_tx.clone();
        let mut restarted = false;
        Supervisor::new(&engine, &Liveness::new()).spawn_plain_with(
            "health model",
            move || {
                let (state, tx, token) =
                    (Arc::clone(&state), snap_tx.clone(), engine_token.clone());
                let republish = std::mem::replace(&mut restarted, true);
                async move {
                    let mut guard = state.lock_owned().await;
                    let (model, rx) = &mut *guard;
                    if republish {
                        tx.send_replace(Arc::new(Published::new(model.snapshot())));
                    }
                    run_model(model, rx, &tx, token).await;
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
            poll_cursor: Arc::new(AtomicU64::new(0)),
            metadata: metadata(&self.options),
            watch_health: self.options.watch_health,
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<ExternalMonitorServer<GpuMonitorService>>()
            .await;
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
                reporter
                    .set_not_serving::<ExternalMonitorServer<GpuMonitorService>>()
                    .await;
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
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

async fn run_model(
    model: &mut HealthModel,
    rx: &mut mpsc::Receiver<Observation>,
    tx: &watch::Sender<Arc<Published>>,
    token: CancellationToken,
) {
    // Aggregated event windows close on this tick.
    let mut flush = tokio::time::interval(Duration::from_secs(10));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            o = rx.recv() => match o {
                Some(first) => {
                    // Whatever else is already queued (the rest of a sweep)
                    // goes in the same batch: one comparison, one publish.
                    let mut batch = vec![first];
                    while batch.len() < 512 && let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    model.apply_all(&batch)
                }
                None => break,
            },
            _ = flush.tick() => model.flush(std::time::SystemTime::now()),
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
    thresholds: Arc<std::sync::Mutex<Option<Thresholds>>>,
    snapshots: watch::Receiver<Arc<Published>>,
    token: CancellationToken,
    /// Last event sequence handed to a `CheckHealth` caller: each poll gets
    /// the events since the previous poll.
    poll_cursor: Arc<AtomicU64>,
    metadata: MonitorMetadata,
    watch_health: bool,
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

    fn events_after(&self, after: u64) -> impl Iterator<Item = &crate::problem::Event> {
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

fn to_wire<'a>(
    published: &Published,
    events: impl Iterator<Item = &'a crate::problem::Event>,
) -> pb::Status {
    pb::Status {
        source: SOURCE.into(),
        events: events.map(pb::Event::from).collect(),
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
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let last = snapshot.last_event_seq();
        let after = self.poll_cursor.swap(last, Ordering::AcqRel).min(last);
        Ok(Response::new(to_wire(
            &snapshot,
            snapshot.events_after(after),
        )))
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
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            // Events from before the subscription are history, not news.
            let mut seen = snapshots.borrow().last_event_seq();
            loop {
                let status = {
                    let snapshot = Arc::clone(&snapshots.borrow_and_update());
                    let status = to_wire(&snapshot, snapshot.events_after(seen));
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

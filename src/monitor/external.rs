//! External monitor: a gRPC client of one plugin on a Unix socket.
//!
//! Lazy-connects, asks `GetMetadata`, then prefers the `WatchHealth` stream
//! and falls back to polling `CheckHealth` when the plugin answers
//! UNIMPLEMENTED. Any failure ends the session; sessions restart after a
//! jittered exponential backoff. After `errorThreshold` consecutive failures
//! every condition the monitor owns turns `Unknown` (`MonitorUnreachable`),
//! until the plugin answers again: stale health is never passed off as fresh.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

use super::{Report, Update};
use crate::backoff::Backoff;
use crate::conditions::MonitorId;
use crate::config::ExternalMonitorConfig;
use crate::config::external::RetryPolicy;
use crate::liveness::Pulse;
use crate::problem::{Condition, ConditionStatus, Event, Severity, Status};
use crate::rpc::client::{self, describe};
use crate::rpc::pb::external_monitor_client::ExternalMonitorClient;
use crate::rpc::pb::{HealthCheckRequest, MonitorMetadata};
use crate::rpc::{API_VERSION, LIMITS, status_from_plugin};
use crate::timer::Ticker;

pub const REASON_UNREACHABLE: &str = "MonitorUnreachable";
pub const REASON_RECOVERED: &str = "MonitorRecovered";

/// Slack added to every liveness promise, for scheduling delays.
const SLACK: Duration = Duration::from_secs(5);

/// Runs one external monitor until `token` is cancelled.
pub async fn run(
    id: MonitorId,
    config: ExternalMonitorConfig,
    tx: mpsc::Sender<Report>,
    pulse: Pulse,
    token: CancellationToken,
) {
    let channel = client::lazy_channel_to(&config.socket_path, config.allowed_peer_uids.clone());
    let mut runner = Runner {
        id,
        owned: config.conditions.iter().map(|c| c.type_.clone()).collect(),
        client: ExternalMonitorClient::new(channel.clone())
            .max_decoding_message_size(config.max_message_size),
        channel,
        backoff: backoff(&config.retry),
        config,
        tx,
        pulse,
        token,
        failures: 0,
        unreachable: false,
        sequence: 0,
        metadata: None,
        polling: false,
        trimmed_logged: false,
    };
    runner.run().await;
}

/// A plugin flooding its stream: the statuses already waiting are folded
/// into the latest (its conditions; the events of all, newest kept up to the
/// limit), so a flood costs one update, not one per message. Returns how the
/// stream ended, when it did meanwhile.
async fn coalesce(
    mut latest: crate::rpc::pb::Status,
    stream: &mut tonic::Streaming<crate::rpc::pb::Status>,
) -> (crate::rpc::pb::Status, Option<End>) {
    let mut events = Vec::new();
    for _ in 0..COALESCE_MAX {
        // One poll: take only what is already there. (A zero timeout would
        // go through the timer wheel and cost a millisecond a status.)
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *stream).poll_next(cx))
        })
        .await;
        match polled {
            std::task::Poll::Ready(Some(Ok(next))) => {
                events.append(&mut latest.events);
                latest = next;
            }
            std::task::Poll::Ready(None) => {
                return (
                    fold(latest, events),
                    Some(End::Failed("plugin closed the WatchHealth stream".into())),
                );
            }
            std::task::Poll::Ready(Some(Err(s))) => {
                return (
                    fold(latest, events),
                    Some(End::Failed(format!("WatchHealth stream: {}", describe(&s)))),
                );
            }
            std::task::Poll::Pending => break,
        }
    }
    (fold(latest, events), None)
}

/// The older events before the latest's, the newest kept up to the limit.
fn fold(
    mut latest: crate::rpc::pb::Status,
    mut older: Vec<crate::rpc::pb::Event>,
) -> crate::rpc::pb::Status {
    if older.is_empty() {
        return latest;
    }
    older.append(&mut latest.events);
    let excess = older.len().saturating_sub(LIMITS.events);
    older.drain(..excess);
    latest.events = older;
    latest
}

/// Statuses folded into one at most (then the loop yields).
const COALESCE_MAX: usize = 10_000;

fn backoff(retry: &RetryPolicy) -> Backoff {
    Backoff::new(retry.initial_backoff, retry.max_backoff, retry.multiplier)
}

enum End {
    Cancelled,
    Failed(String),
}

struct Runner {
    id: MonitorId,
    config: ExternalMonitorConfig,
    /// Types this monitor speaks for: declared, or adopted from metadata.
    owned: Vec<String>,
    channel: Channel,
    client: ExternalMonitorClient<Channel>,
    backoff: Backoff,
    tx: mpsc::Sender<Report>,
    pulse: Pulse,
    token: CancellationToken,
    failures: u32,
    unreachable: bool,
    sequence: i64,
    metadata: Option<MonitorMetadata>,
    /// The plugin answered UNIMPLEMENTED to WatchHealth (said once in the log).
    polling: bool,
    /// A status over the limits was logged (once; the metrics count them all).
    trimmed_logged: bool,
}

impl Runner {
    async fn run(&mut self) {
        let source = self.config.source.clone();
        let socket = self.config.socket_path.display().to_string();
        tracing::info!(monitor = %source, %socket, "external monitor starting");
        loop {
            self.pulse.beat(self.config.timeout * 2 + SLACK);
            let error = match self.session().await {
                End::Cancelled => break,
                End::Failed(e) => e,
            };
            self.failures = self.failures.saturating_add(1);
            let threshold = self.config.health_check.error_threshold;
            tracing::warn!(monitor = %source, %socket, failures = self.failures, "plugin call failed: {error}");
            if self.failures >= threshold && !self.unreachable {
                self.unreachable = true;
                self.mark_unreachable(&error).await;
            }
            if self.failures == threshold.saturating_add(self.config.retry.max_attempts) {
                tracing::error!(
                    monitor = %source, %socket, failures = self.failures,
                    "plugin still unreachable; retrying every {:?} at most, conditions stay Unknown",
                    self.config.retry.max_backoff
                );
            }
            let delay = self.backoff.next_delay();
            self.pulse.beat(delay + SLACK);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.token.cancelled() => break,
            }
        }
        tracing::info!(monitor = %source, "external monitor stopped");
    }

    /// One connection's life: metadata, then watch or poll until something fails.
    async fn session(&mut self) -> End {
        match self
            .call(self.client.clone().get_metadata(self.request(())))
            .await
        {
            Ok(Ok(meta)) => self.learn(meta.into_inner()).await,
            Ok(Err(s)) if s.code() == Code::Unimplemented => {}
            Ok(Err(s)) => return End::Failed(format!("GetMetadata: {}", describe(&s))),
            Err(end) => return end,
        }
        let request = Request::new(self.health_request());
        // No grpc-timeout on a stream: it would end the stream. The deadline
        // covers only the response headers.
        match self.call(self.client.clone().watch_health(request)).await {
            Ok(Ok(stream)) => self.watch(stream.into_inner()).await,
            Ok(Err(s)) if s.code() == Code::Unimplemented => {
                if !self.polling {
                    self.polling = true;
                    tracing::info!(monitor = %self.config.source, "plugin has no WatchHealth; polling CheckHealth every {:?}", self.config.invoke_interval);
                }
                self.poll().await
            }
            Ok(Err(s)) => End::Failed(format!("WatchHealth: {}", describe(&s))),
            Err(end) => end,
        }
    }

    /// Runs `fut` under the config's deadline and the cancellation token.
    async fn call<T>(&self, fut: impl Future<Output = T>) -> Result<T, End> {
        tokio::select! {
            r = tokio::time::timeout(self.config.timeout, fut) => r.map_err(|_| {
                End::Failed(format!("no answer within {:?}", self.config.timeout))
            }),
            () = self.token.cancelled() => Err(End::Cancelled),
        }
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.config.timeout);
        r
    }

    fn health_request(&mut self) -> HealthCheckRequest {
        self.sequence += 1;
        HealthCheckRequest {
            parameters: self.config.parameters.clone().into_iter().collect(),
            sequence: self.sequence,
        }
    }

    async fn learn(&mut self, meta: MonitorMetadata) {
        if self.metadata.as_ref() != Some(&meta) {
            tracing::info!(
                monitor = %self.config.source, plugin = %meta.name, version = %meta.version,
                api_version = %meta.api_version, conditions = ?meta.supported_conditions,
                "plugin metadata"
            );
            if meta.api_version != API_VERSION && !meta.api_version.is_empty() {
                tracing::warn!(monitor = %self.config.source, "plugin speaks API {:?}, we speak {API_VERSION:?}", meta.api_version);
            }
        }
        if self.config.conditions.is_empty() {
            let new: Vec<String> = meta
                .supported_conditions
                .iter()
                .filter(|t| !self.owned.contains(t))
                .cloned()
                .collect();
            if !new.is_empty() {
                tracing::info!(monitor = %self.config.source, conditions = ?new, "config declares no conditions; adopting the plugin's");
                self.owned.extend(new.iter().cloned());
                self.send(Update::Adopt(new)).await;
            }
        }
        self.metadata = Some(meta);
    }

    async fn watch(&mut self, mut stream: tonic::Streaming<crate::rpc::pb::Status>) -> End {
        let hc = self.config.health_check.clone();
        // The check's tick, every interval of an idle day: one wake-up each.
        let mut tick = Ticker::new(hc.interval, hc.interval);
        let mut health_service = true;
        // The contract: a full status at once. A stream that stays silent
        // past the call deadline is a plugin that cannot say anything.
        let first_by = tokio::time::Instant::now() + self.config.timeout;
        let mut got_first = false;
        loop {
            self.pulse.beat(hc.interval + hc.timeout + SLACK);
            tokio::select! {
                () = self.token.cancelled() => return End::Cancelled,
                () = tokio::time::sleep_until(first_by), if !got_first => {
                    return End::Failed(format!(
                        "the WatchHealth stream sent no status within {:?}",
                        self.config.timeout
                    ));
                }
                msg = stream.message() => match msg {
                    Ok(Some(status)) => {
                        got_first = true;
                        let (status, end) = coalesce(status, &mut stream).await;
                        self.answered(status).await;
                        if let Some(end) = end {
                            return end;
                        }
                    }
                    Ok(None) => return End::Failed("plugin closed the WatchHealth stream".into()),
                    Err(s) => return End::Failed(format!("WatchHealth stream: {}", describe(&s))),
                },
                () = tick.tick(), if got_first => {
                    // A plugin that stopped (SIGSTOP, deadlock) keeps the stream
                    // open but cannot answer this. Plugins without
                    // grpc.health.v1 are asked for their metadata instead.
                    let alive = if health_service {
                        match client::health_check(self.channel.clone(), "", hc.timeout).await {
                            Ok(ServingStatus::Serving) => Ok(()),
                            Ok(other) => Err(format!("plugin health is {}", other.as_str_name())),
                            Err(s) if s.code() == Code::Unimplemented => {
                                health_service = false;
                                self.metadata_alive(hc.timeout).await
                            }
                            Err(s) => Err(format!("health check: {}", describe(&s))),
                        }
                    } else {
                        self.metadata_alive(hc.timeout).await
                    };
                    match alive {
                        // Alive and nothing to push: the current state is confirmed.
                        Ok(()) => self.send(Update::Alive).await,
                        Err(e) => return End::Failed(e),
                    }
                }
            }
        }
    }

    /// Liveness through `GetMetadata`, for plugins without a health service.
    async fn metadata_alive(&self, timeout: Duration) -> Result<(), String> {
        let mut request = Request::new(());
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, self.client.clone().get_metadata(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(format!("GetMetadata: {}", describe(&s))),
            Err(_) => Err(format!("GetMetadata: no answer within {timeout:?}")),
        }
    }

    async fn poll(&mut self) -> End {
        let mut tick = Ticker::new(Duration::ZERO, self.config.invoke_interval);
        loop {
            self.pulse
                .beat(self.config.invoke_interval + self.config.timeout + SLACK);
            tokio::select! {
                () = self.token.cancelled() => return End::Cancelled,
                () = tick.tick() => {}
            }
            let message = self.health_request();
            let request = self.request(message);
            match self.call(self.client.clone().check_health(request)).await {
                Ok(Ok(status)) => self.answered(status.into_inner()).await,
                Ok(Err(s)) => return End::Failed(format!("CheckHealth: {}", describe(&s))),
                Err(end) => return end,
            }
        }
    }

    /// The plugin answered: count it as progress and forward its status
    /// under our configured source (the plugin does not get to pick one).
    async fn answered(&mut self, status: crate::rpc::pb::Status) {
        let now = SystemTime::now();
        if self.failures > 0 {
            self.failures = 0;
            self.backoff.reset();
        }
        let (mut status, trimmed) = status_from_plugin(status, now, &LIMITS);
        if !trimmed.is_empty() {
            if !self.trimmed_logged {
                self.trimmed_logged = true;
                tracing::warn!(
                    monitor = %self.config.source,
                    "plugin status over the limits ({} conditions, {} events, {} bytes a reason, {} a message): {trimmed}; said once, counted in npd_ext_plugin_status_trimmed_total",
                    LIMITS.conditions, LIMITS.events, LIMITS.reason, LIMITS.message
                );
            }
            self.send(Update::Trimmed(trimmed)).await;
        }
        status.source.clone_from(&self.config.source);
        if self.unreachable {
            self.unreachable = false;
            tracing::info!(monitor = %self.config.source, "plugin answers again");
            status.events.push(Event {
                severity: Severity::Info,
                timestamp: now,
                reason: REASON_RECOVERED.into(),
                message: format!(
                    "plugin {} at {} answers again",
                    self.config.source,
                    self.config.socket_path.display()
                ),
            });
        }
        self.send(Update::Status(status)).await;
    }

    async fn mark_unreachable(&mut self, error: &str) {
        let message = format!(
            "plugin {} at {} unreachable after {} consecutive failures: {error}",
            self.config.source,
            self.config.socket_path.display(),
            self.failures
        );
        tracing::error!(monitor = %self.config.source, conditions = ?self.owned, "{message}; conditions now Unknown");
        let status = Status {
            source: self.config.source.clone(),
            events: vec![Event {
                severity: Severity::Warn,
                timestamp: SystemTime::now(),
                reason: REASON_UNREACHABLE.into(),
                message: message.clone(),
            }],
            conditions: self
                .owned
                .iter()
                .map(|t| {
                    Condition::new(
                        t.clone(),
                        ConditionStatus::Unknown,
                        REASON_UNREACHABLE,
                        message.clone(),
                    )
                })
                .collect(),
        };
        self.send(Update::Status(status)).await;
    }

    async fn send(&self, update: Update) {
        let report = Report {
            monitor: self.id,
            update,
        };
        // The fan-in only stops at shutdown; a failed send then does not matter.
        let _ = self.tx.send(report).await;
    }
}

//! The events writer: takes the detector's events off its broadcast into
//! the [aggregation](super::aggregate), and writes what it says is due as
//! `events.k8s.io/v1` Events regarding the Node: creates, and series
//! updates as a merge PATCH of `series` alone (`MicroTime` with 6 digits).
//!
//! The intake never waits on the API server: one write is in flight at a
//! time, beside the loop that takes events off the broadcast (up to
//! [`INTAKE_BATCH`] a turn). Every loss is counted in
//! `npd_ext_events_dropped_total{reason}`: `lagged` (the writer fell behind
//! the detector's broadcast), `expired`, `evicted`, and `rejected` (the API
//! server refused the body). A create that timed out is retried under the
//! same name, so a stored one is not written twice.
//!
//! Not kube's `Recorder`: it adds one to `series.count` per write and keeps
//! the first note, so 10 000 occurrences written as a few writes would show
//! a count of 2, and its cache has no bound. The bodies are its shape
//! (reporting controller and instance, `regarding` with uid, `eventTime`),
//! written through the typed `Api<Event>`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use tokio::sync::{Mutex, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::aggregate::{Aggregator, Drops, Job, Op, Outcome, REASON_LIMIT};
use super::client::{Failure, bounded};
use super::limiter::{Limiter, backoff};
use super::{Ctx, K8sMetrics};
use crate::conditions::Published;
use crate::liveness::Pulse;
use crate::problem::cut;

/// How often forgotten and expired entries are swept while there are any.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How often the writer's loop turns (and beats) when it holds nothing.
const IDLE_TURN: Duration = Duration::from_secs(60);

/// The merge PATCH of a series update: `series` and nothing else.
#[derive(Debug, Serialize)]
struct SeriesPatch<'a> {
    series: &'a EventSeries,
}

impl Job {
    /// Makes the API call.
    async fn run(self, api: Api<K8sEvent>, limiter: Limiter) -> (Self, Result<(), kube::Error>) {
        limiter.acquire().await;
        let call = async {
            match &self.op {
                Op::Create(body) => api.create(&PostParams::default(), body).await.map(drop),
                Op::Series { name, series } => api
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&SeriesPatch { series }),
                    )
                    .await
                    .map(drop),
            }
        };
        let result = bounded(call).await;
        (self, result)
    }

    fn op_name(&self) -> &'static str {
        match self.op {
            Op::Create(_) => "create_event",
            Op::Series { .. } => "patch_event",
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = (Job, Result<(), kube::Error>)> + Send>>;

/// Runs the event writer until `token` is cancelled or the broadcast closes.
pub(super) async fn write_events(
    api: Api<K8sEvent>,
    ctx: Ctx,
    state: Arc<Mutex<Intake>>,
    mut node: watch::Receiver<Option<ObjectReference>>,
    pulse: Pulse,
    token: CancellationToken,
) {
    let Ctx {
        opts,
        limiter,
        metrics,
    } = ctx;
    // The aggregation outlives a panicked run: the next one takes it over.
    let mut kept = state.lock_owned().await;
    let Intake { agg, rx } = &mut *kept;
    agg.recover(Instant::now());
    let mut in_flight: Option<InFlight> = None;
    let mut node_open = true;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = backoff();
    let mut next_sweep = Instant::now() + IDLE_TURN;
    loop {
        // The loop turns at least every IDLE_TURN (every SWEEP_EVERY while
        // it holds anything), and a write is bounded by CALL_TIMEOUT
        // beside it.
        pulse.beat(IDLE_TURN * 2);
        let now = Instant::now();
        if retry_at.is_some_and(|t| t <= now) {
            retry_at = None;
        }
        let known = node.borrow().is_some();
        if in_flight.is_none() && retry_at.is_none() {
            let job = match &*node.borrow() {
                Some(regarding) => agg.next_job(now, &opts, regarding),
                None => None,
            };
            if let Some(job) = job {
                in_flight = Some(Box::pin(job.run(api.clone(), limiter.clone())));
            }
        }
        // The next write is due when its entry is, and not before a backoff ends.
        let wake = match (known, in_flight.is_some()) {
            (true, false) => agg.next_due().map(|d| retry_at.map_or(d, |r| d.max(r))),
            _ => None,
        };
        tokio::select! {
            r = rx.recv() => {
                // Whatever else is waiting is taken in the same turn: a storm
                // costs one pass of the loop per batch, not per event.
                let mut next = Some(r);
                let mut taken = 0;
                while let Some(r) = next.take() {
                    if !intake(agg, r, &metrics) {
                        return;
                    }
                    taken += 1;
                    if taken < INTAKE_BATCH {
                        next = match rx.try_recv() {
                            Ok(p) => Some(Ok(p)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                Some(Err(broadcast::error::RecvError::Lagged(n)))
                            }
                            Err(broadcast::error::TryRecvError::Closed) => {
                                Some(Err(broadcast::error::RecvError::Closed))
                            }
                            Err(broadcast::error::TryRecvError::Empty) => None,
                        };
                    }
                }
            }
            (job, result) = async {
                match in_flight.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if in_flight.is_some() => {
                in_flight = None;
                let outcome = judge(&job, result, &metrics, &mut backoff, &mut retry_at);
                let lost = agg.complete(&job, &outcome, Instant::now());
                metrics.dropped.with_label_values(&["rejected"]).inc_by(lost);
            }
            r = node.changed(), if node_open => node_open = r.is_ok(),
            () = crate::shutdown::sleep_until_opt(wake) => {}
            () = tokio::time::sleep_until(next_sweep) => {
                let mut drops = Drops::default();
                agg.sweep(Instant::now(), &mut drops);
                let held = agg.size().0 > 0;
                next_sweep = Instant::now() + if held { SWEEP_EVERY } else { IDLE_TURN };
                count_drops(&metrics, &drops);
            }
            () = token.cancelled() => return,
        }
    }
}

/// What the writer keeps across its restarts: its subscription to the
/// detector's broadcast, and the aggregation.
#[derive(Debug)]
pub struct Intake {
    agg: Aggregator,
    rx: broadcast::Receiver<Published>,
}

impl Intake {
    pub fn new(rx: broadcast::Receiver<Published>) -> Self {
        Self {
            agg: Aggregator::new(),
            rx,
        }
    }
}

/// Events taken off the broadcast in one turn of the writer's loop at most.
const INTAKE_BATCH: usize = 1024;

/// Takes one item off the broadcast; false when it is closed.
fn intake(
    agg: &mut Aggregator,
    r: Result<Published, broadcast::error::RecvError>,
    metrics: &K8sMetrics,
) -> bool {
    match r {
        Ok(Published::Event { source, event }) => {
            let mut drops = Drops::default();
            if agg.observe(&source, &event, Instant::now(), &mut drops) {
                metrics
                    .folded
                    .with_label_values(&[cut(&event.reason, REASON_LIMIT)])
                    .inc();
            }
            count_drops(metrics, &drops);
        }
        Ok(Published::Condition { .. }) => {}
        Err(broadcast::error::RecvError::Lagged(n)) => {
            metrics.dropped.with_label_values(&["lagged"]).inc_by(n);
            tracing::warn!(
                skipped = n,
                "the Kubernetes event writer fell behind the detector; {n} updates were dropped"
            );
        }
        Err(broadcast::error::RecvError::Closed) => return false,
    }
    true
}

fn count_drops(metrics: &K8sMetrics, d: &Drops) {
    for (reason, n) in [("expired", d.expired), ("evicted", d.evicted)] {
        if n > 0 {
            metrics.dropped.with_label_values(&[reason]).inc_by(n);
        }
    }
}

/// What a write's result means for its entry, with the metric, the log
/// line and the writer's backoff.
fn judge(
    job: &Job,
    result: Result<(), kube::Error>,
    metrics: &K8sMetrics,
    backoff: &mut crate::backoff::Backoff,
    retry_at: &mut Option<Instant>,
) -> Outcome {
    let op = job.op_name();
    let err = match result {
        Ok(()) => {
            metrics.request(op, "ok");
            if backoff.failures() > 0 {
                tracing::info!(
                    "Events written again after {} failed attempts",
                    backoff.failures()
                );
            }
            backoff.reset();
            return Outcome::Written;
        }
        Err(e) => e,
    };
    // A create that timed out may have been stored: its retry (same name)
    // finds it there, and it is written.
    if matches!(job.op, Op::Create(_))
        && matches!(&err, kube::Error::Api(s) if s.is_already_exists())
    {
        metrics.request(op, "ok");
        return Outcome::Written;
    }
    metrics.request(op, "error");
    let failure = Failure::of(&err);
    match failure {
        Failure::NotFound(_) if matches!(job.op, Op::Series { .. }) => return Outcome::Gone,
        Failure::Refused(m) => {
            tracing::error!(
                "the API server refused an Event ({op}); its occurrences are dropped: {m}"
            );
            return Outcome::Refused;
        }
        _ => {}
    }
    let delay = backoff.next_delay();
    let failures = backoff.failures();
    let loud = failures == 1 || failures.is_power_of_two();
    match failure {
        Failure::After(d) => *retry_at = Some(Instant::now() + d),
        Failure::Forbidden(m) => {
            if loud {
                tracing::error!(
                    failures,
                    "forbidden: the service account needs `create` and `patch` on `events` (events.k8s.io and core; manifests/rbac.yaml): {m}"
                );
            }
            *retry_at = Some(Instant::now() + delay);
        }
        Failure::NotFound(m) | Failure::Refused(m) | Failure::Other(m) => {
            if loud {
                tracing::warn!(failures, "cannot write an Event ({op}): {m}; retrying");
            }
            *retry_at = Some(Instant::now() + delay);
        }
    }
    Outcome::Retry
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::aggregate::micro;
    use super::*;

    #[test]
    fn series_patches_are_series_only_with_micro_times() {
        let s = EventSeries {
            count: 7,
            last_observed_time: micro(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_483_456_720)),
        };
        let v = serde_json::to_value(SeriesPatch { series: &s }).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"series": {"count": 7, "lastObservedTime": "1970-01-01T00:00:01.483456Z"}})
        );
    }
}

//! The node's conditions on the Node: the Node is read once (its uid goes
//! into Events' `regarding`, and a condition whose status did not change
//! keeps its `lastTransitionTime`), then our condition types are written as
//! a strategic-merge PATCH of `nodes/<node>/status`: at once on a change
//! (a token bucket of [`SYNC_BURST`] writes refilled one per
//! [`SYNC_REFILL`] bounds a flapping condition), else every heartbeat
//! period ±10 %. While the API server is away only the latest desired state
//! is held (the watch channel's one value), retried with jittered backoff.
//!
//! `lastHeartbeatTime` is when the owning monitor last confirmed the
//! condition (the condition manager's `lastUpdate`), never the time of the
//! write: a heartbeat does not make a condition look fresher than its
//! source. A Node that does not exist, or may not be read, for
//! `--apiserver-wait-timeout` fails `/healthz` with why (the deployment is
//! wrong); a server that is away that long, or writes failing that long,
//! show on `/healthz` as degraded, and on `npd_ext_k8s_conditions_in_sync`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, NodeCondition as K8sCondition, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Failure, bounded};
use super::limiter::{Bucket, Limiter, backoff, jittered};
use super::{CALL_TIMEOUT, Ctx, K8sMetrics, K8sOptions};
use crate::conditions::NodeCondition;
use crate::liveness::Pulse;

/// Condition writes a change may spend at once.
pub const SYNC_BURST: f64 = 5.0;
/// One more condition write is allowed per this long.
pub const SYNC_REFILL: Duration = Duration::from_secs(10);

/// Conditions already on the Node: type → (status, lastTransitionTime).
type Adopted = HashMap<String, (String, Time)>;

/// The longest the loop waits without turning (and beating).
const IDLE_TURN: Duration = Duration::from_secs(60);

async fn fetch_node(
    nodes: &Api<Node>,
    opts: &K8sOptions,
    limiter: &Limiter,
    metrics: &K8sMetrics,
    pulse: &Pulse,
    token: &CancellationToken,
) -> Option<(ObjectReference, Adopted)> {
    let started = Instant::now();
    let mut failures: u32 = 0;
    loop {
        // Past the wait the task is failing, and says why (a beat would
        // clear that).
        if started.elapsed() < opts.wait_timeout {
            pulse.beat(opts.wait_interval + CALL_TIMEOUT * 2);
        }
        limiter.acquire().await;
        let e = match bounded(nodes.get(&opts.node)).await {
            Ok(node) => {
                metrics.request("get_node", "ok");
                pulse.degrade(None);
                let adopted = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some((
                            c.type_.clone(),
                            (c.status.clone(), c.last_transition_time.clone()?),
                        ))
                    })
                    .collect();
                return Some((node.object_ref(&()), adopted));
            }
            Err(e) => e,
        };
        metrics.request("get_node", "error");
        failures = failures.saturating_add(1);
        // A wrong name or a missing permission is the deployment's to fix
        // (a restart by the liveness probe makes it plain); a server that is
        // away is waited for.
        let (why, misconfigured) = match Failure::of(&e) {
            Failure::Forbidden(m) => (
                format!(
                    "forbidden: the service account needs `get` on `nodes` (manifests/rbac.yaml): {m}"
                ),
                true,
            ),
            Failure::NotFound(_) => (
                format!(
                    "node {:?} does not exist (set --hostname-override or NODE_NAME to the Node's name)",
                    opts.node
                ),
                true,
            ),
            Failure::After(_) | Failure::Refused(_) | Failure::Other(_) => (e.to_string(), false),
        };
        let waited = started.elapsed();
        let waiting = waited < opts.wait_timeout;
        if waiting {
            tracing::warn!(node = %opts.node, "cannot read the Node: {why}; retrying");
        } else {
            // Past the wait: unhealthy (misconfigured) or degraded (the
            // server is away), saying why, and logged less and less often.
            let state = format!(
                "cannot read Node {:?} for {} s: {why}",
                opts.node,
                waited.as_secs()
            );
            if misconfigured {
                pulse.fail(state);
            } else {
                pulse.beat(opts.wait_interval.max(Duration::from_secs(30)) + CALL_TIMEOUT * 2);
                pulse.degrade(Some(state));
            }
            if failures.is_power_of_two() {
                tracing::error!(node = %opts.node, failures, "cannot read the Node for {} s: {why}; nothing reaches the cluster; retrying", waited.as_secs());
            }
        }
        // A real wait: retried every interval for the whole timeout, then
        // on, less often, for as long as it takes.
        let every = if waiting {
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

/// A strategic-merge PATCH of the status subresource: our conditions and
/// nothing else.
#[derive(Debug, Serialize)]
struct StatusPatch {
    status: ConditionsPatch,
}

#[derive(Debug, Serialize)]
struct ConditionsPatch {
    conditions: Vec<K8sCondition>,
}

fn time(t: SystemTime) -> Time {
    Time(super::timestamp(t))
}

/// The PATCH body: our conditions, with kept transition times and the
/// owner's last confirmation as the heartbeat.
fn condition_patch(conds: &[NodeCondition], adopted: &Adopted) -> StatusPatch {
    let conditions = conds
        .iter()
        .map(|c| {
            let status = c.status.to_string();
            let transition = match adopted.get(&c.type_) {
                Some((s, t)) if *s == status => t.clone(),
                _ => time(c.transition),
            };
            K8sCondition {
                type_: c.type_.clone(),
                status,
                reason: Some(c.reason.clone()),
                message: Some(c.message.clone()),
                last_transition_time: Some(transition),
                last_heartbeat_time: Some(time(c.last_update.min(SystemTime::now()))),
            }
        })
        .collect();
    StatusPatch {
        status: ConditionsPatch { conditions },
    }
}

pub(super) async fn sync_conditions(
    nodes: Api<Node>,
    ctx: Ctx,
    mut conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
    node_tx: Arc<watch::Sender<Option<ObjectReference>>>,
    pulse: Pulse,
    token: CancellationToken,
) {
    let Ctx {
        opts,
        limiter,
        metrics,
    } = ctx;
    let Some((node_ref, mut adopted)) =
        fetch_node(&nodes, &opts, &limiter, &metrics, &pulse, &token).await
    else {
        return;
    };
    tracing::info!(node = %opts.node, "Kubernetes exporter connected");
    node_tx.send_replace(Some(node_ref));
    if !opts.update_conditions {
        loop {
            pulse.beat(IDLE_TURN * 2);
            tokio::select! {
                () = tokio::time::sleep(IDLE_TURN) => {}
                () = token.cancelled() => return,
            }
        }
    }
    let mut bucket = Bucket::new(SYNC_BURST, SYNC_REFILL);
    // What the Node holds of ours, as last written.
    let mut written: Option<Arc<Vec<NodeCondition>>> = None;
    let mut next_heartbeat = Instant::now() + jittered(opts.heartbeat);
    let mut backoff = backoff();
    let mut retry_at: Option<Instant> = None;
    let mut failing_since: Option<Instant> = None;
    let mut forbidden_logged = false;
    loop {
        pulse.beat(IDLE_TURN + CALL_TIMEOUT * 2);
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
        let turn = Instant::now() + IDLE_TURN;
        let wake = due.map_or(turn, |d| d.min(turn));
        tokio::select! {
            r = conditions.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep_until(wake) => {}
            () = token.cancelled() => return,
        }
        if due.is_none_or(|d| d > Instant::now()) {
            continue;
        }
        if changed && retry_at.is_none() && !bucket.try_take() {
            continue;
        }
        retry_at = None;
        limiter.acquire().await;
        let patch = condition_patch(&desired, &adopted);
        let result = bounded(nodes.patch_status(
            &opts.node,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        ))
        .await;
        match result {
            Ok(_) => {
                metrics.request("patch_node_status", "ok");
                if backoff.failures() > 0 {
                    tracing::info!(node = %opts.node, "node conditions written again after {} failed attempts", backoff.failures());
                }
                backoff.reset();
                failing_since = None;
                pulse.degrade(None);
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
                let since = *failing_since.get_or_insert_with(Instant::now);
                let (wait, why) = match Failure::of(&e) {
                    Failure::After(d) => (d, e.to_string()),
                    Failure::Forbidden(m) => {
                        if !forbidden_logged {
                            tracing::error!(node = %opts.node, "forbidden: the service account needs `patch` on `nodes/status` (manifests/rbac.yaml): {m}");
                            forbidden_logged = true;
                        }
                        (delay, format!("forbidden: {m}"))
                    }
                    Failure::NotFound(m) | Failure::Refused(m) | Failure::Other(m) => {
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::warn!(node = %opts.node, failures, "cannot write node conditions: {m}; retrying");
                        }
                        (delay, m)
                    }
                };
                if since.elapsed() >= opts.wait_timeout {
                    pulse.degrade(Some(format!(
                        "node conditions not written for {} s ({failures} failures): {why}",
                        since.elapsed().as_secs()
                    )));
                }
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

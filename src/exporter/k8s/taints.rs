//! Taints from conditions (`--taint-policy`): while a configured condition
//! is True the Node carries its taint; when it turns False the taint goes.
//! An `Unknown` condition keeps a taint it had (unless the rule says
//! `keepOnUnknown: false`) and never adds one; a condition no monitor has
//! reported yet leaves the Node as it is, so a restart does not flap taints.
//!
//! - **Owned.** The detector adds and removes only taints under
//!   `npd-ext.io/`; one there that no rule names (a policy changed since)
//!   is removed. Every other taint is kept as it was, in its place.
//! - **Safe under concurrent writers.** Each change is one JSON patch of
//!   `nodes/<node>` that first `test`s `metadata.resourceVersion`; when
//!   another writer got there first the server refuses it, and the Node is
//!   read again and the change planned again.
//! - **Reconciled.** The Node's taints are compared with the conditions at
//!   start, at every change of a configured condition, and every heartbeat
//!   period; a change the breaker refused is tried again after `retryAfter`.
//! - **Quarantine.** The patch that adds the Node's first npd-ext taint
//!   also sets [`QUARANTINE_LABEL`]`=true`, and the one that removes its
//!   last removes the label; before a first taint, the
//!   [breaker](super::breaker) counts the fleet.
//! - **Said.** Each taint added or removed, and each quarantine refused, is
//!   an Event on the Node (`TaintAdded`, `TaintRemoved`,
//!   `QuarantineRefused`) saying why, a log line, and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use prometheus::{IntCounterVec, IntGaugeVec, Registry};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::breaker::{self, Counts};
use super::client::{Failure, bounded};
use super::limiter::{backoff, jittered};
use super::{CALL_TIMEOUT, Ctx};
use crate::conditions::{NodeCondition, Published};
use crate::config::taint_policy::{KEY_PREFIX, QUARANTINE_LABEL, TaintPolicy, TaintRule};
use crate::liveness::Pulse;
use crate::problem::{ConditionStatus, Event, Severity};

/// The `source` of the taint writer's events.
pub const SOURCE: &str = "taints";
pub const REASON_ADDED: &str = "TaintAdded";
pub const REASON_REMOVED: &str = "TaintRemoved";
pub const REASON_REFUSED: &str = "QuarantineRefused";

/// Plans in a row another writer's change may spoil before the writer
/// backs off.
const CONFLICT_RETRIES: u32 = 5;
/// The longest the loop waits without turning (and beating).
const IDLE_TURN: Duration = Duration::from_secs(60);

/// The taint writer's metrics, on the detector's registry.
#[derive(Clone, Debug)]
pub struct TaintMetrics {
    /// `npd_ext_quarantine_refused_total{condition}`.
    pub refused: IntCounterVec,
    /// `npd_ext_node_taint{key, effect}`: 1 while the Node carries it.
    pub taint: IntGaugeVec,
    /// `npd_ext_quarantine_fleet_nodes{count}`: the breaker's last count.
    pub fleet: IntGaugeVec,
}

impl TaintMetrics {
    pub fn register(registry: &Registry, policy: &TaintPolicy) -> Self {
        use super::super::prometheus::{counter_vec, gauge_vec, register};
        let refused = counter_vec(
            "npd_ext_quarantine_refused_total",
            "Taints not added because the fleet already had as many quarantined nodes as the taint policy allows, by condition.",
            &["condition"],
        );
        let taint = gauge_vec(
            "npd_ext_node_taint",
            "1 while the Node carries this npd-ext taint, as last read or written.",
            &["key", "effect"],
        );
        let fleet = gauge_vec(
            "npd_ext_quarantine_fleet_nodes",
            "The circuit breaker's last count: nodes in the cluster (nodes), quarantined by npd-ext (quarantined; a floor when the list was cut at the limit), and the most the policy allows (limit).",
            &["count"],
        );
        for rule in &policy.taints {
            refused.with_label_values(&[&rule.condition]).reset();
            taint
                .with_label_values(&[&rule.key, rule.effect.as_str()])
                .set(0);
        }
        register(registry, &refused);
        register(registry, &taint);
        register(registry, &fleet);
        Self {
            refused,
            taint,
            fleet,
        }
    }

    fn counted(&self, c: &Counts) {
        for (k, v) in [
            ("nodes", c.nodes),
            ("quarantined", c.quarantined),
            ("limit", c.limit),
        ] {
            self.fleet
                .with_label_values(&[k])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    fn carried(&self, policy: &TaintPolicy, taints: &[Taint]) {
        for rule in &policy.taints {
            let on = taints.iter().any(|t| matches(rule, t));
            self.taint
                .with_label_values(&[&rule.key, rule.effect.as_str()])
                .set(i64::from(on));
        }
    }
}

/// Whether `t` is the taint `rule` puts on the Node.
fn matches(rule: &TaintRule, t: &Taint) -> bool {
    t.key == rule.key
        && t.effect == rule.effect.as_str()
        && t.value.as_deref().filter(|v| !v.is_empty()) == rule.value.as_deref()
}

fn ours(t: &Taint) -> bool {
    t.key.starts_with(KEY_PREFIX)
}

/// One taint to add or remove, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub taint: Taint,
    /// The condition type it follows (empty: none, a taint no rule names).
    pub condition: String,
    pub why: String,
}

/// What the Node's taints should become.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub add: Vec<Change>,
    pub remove: Vec<Change>,
}

impl Plan {
    /// The Node's taints after the change: others' in place, removed ones
    /// gone, added ones at the end.
    pub fn apply(&self, current: &[Taint]) -> Vec<Taint> {
        current
            .iter()
            .filter(|t| !self.remove.iter().any(|c| c.taint == **t))
            .cloned()
            .chain(self.add.iter().map(|c| c.taint.clone()))
            .collect()
    }
}

fn said(c: &NodeCondition) -> String {
    if c.message.is_empty() {
        format!("{} is {} ({})", c.type_, c.status, c.reason)
    } else {
        format!("{} is {} ({}: {})", c.type_, c.status, c.reason, c.message)
    }
}

/// Compares the Node's taints with the conditions.
pub fn plan(
    policy: &TaintPolicy,
    conditions: &[NodeCondition],
    current: &[Taint],
    now: SystemTime,
) -> Plan {
    let by_type: BTreeMap<&str, &NodeCondition> =
        conditions.iter().map(|c| (c.type_.as_str(), c)).collect();
    let mut plan = Plan::default();
    for t in current.iter().filter(|t| ours(t)) {
        let Some(rule) = policy.taints.iter().find(|r| matches(r, t)) else {
            plan.remove.push(Change {
                taint: t.clone(),
                condition: String::new(),
                why: format!(
                    "no rule of the taint policy {} puts it on the Node",
                    policy.file.display()
                ),
            });
            continue;
        };
        let Some(c) = by_type.get(rule.condition.as_str()) else {
            continue;
        };
        let why = match c.status {
            ConditionStatus::True => continue,
            ConditionStatus::Unknown if rule.keep_on_unknown => continue,
            ConditionStatus::Unknown => format!("{} and keepOnUnknown is false", said(c)),
            ConditionStatus::False => said(c),
        };
        plan.remove.push(Change {
            taint: t.clone(),
            condition: rule.condition.clone(),
            why,
        });
    }
    for rule in &policy.taints {
        let Some(c) = by_type.get(rule.condition.as_str()) else {
            continue;
        };
        if c.status == ConditionStatus::True && !current.iter().any(|t| matches(rule, t)) {
            plan.add.push(Change {
                taint: Taint {
                    key: rule.key.clone(),
                    value: rule.value.clone(),
                    effect: rule.effect.as_str().to_owned(),
                    time_added: Some(Time(super::timestamp(now))),
                },
                condition: rule.condition.clone(),
                why: said(c),
            });
        }
    }
    plan
}

/// The JSON patch of `nodes/<node>`: the resourceVersion tested, the
/// taints replaced by `taints`, the quarantine label set or removed.
pub fn json_patch(node: &Node, taints: &[Taint], quarantined: bool) -> Value {
    let rv = node.metadata.resource_version.clone().unwrap_or_default();
    let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
    match node.spec.as_ref() {
        None => ops.push(json!({"op": "add", "path": "/spec", "value": {"taints": taints}})),
        Some(s) if s.taints.is_some() => {
            ops.push(json!({"op": "replace", "path": "/spec/taints", "value": taints}));
        }
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/taints", "value": taints})),
    }
    let labels = node.metadata.labels.as_ref();
    let labelled = labels.is_some_and(|l| l.contains_key(QUARANTINE_LABEL));
    let pointer = format!("/metadata/labels/{}", QUARANTINE_LABEL.replace('/', "~1"));
    match (quarantined, labels, labelled) {
        (true, None, _) => ops.push(
            json!({"op": "add", "path": "/metadata/labels", "value": {QUARANTINE_LABEL: "true"}}),
        ),
        (true, Some(l), _) if l.get(QUARANTINE_LABEL).map(String::as_str) != Some("true") => {
            ops.push(json!({"op": "add", "path": pointer, "value": "true"}));
        }
        (false, _, true) => ops.push(json!({"op": "remove", "path": pointer})),
        _ => {}
    }
    Value::Array(ops)
}

/// Whether the Node's quarantine label says `true`.
fn labelled(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(QUARANTINE_LABEL))
        .is_some_and(|v| v == "true")
}

/// How one reconcile ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The Node matches the conditions.
    Done,
    /// It matches them but for taints the breaker refused.
    Refused,
    /// Try again after this long.
    Failed(Duration),
}

/// The taint writer and what it writes through.
pub(super) struct Writer {
    pub nodes: Api<Node>,
    pub ctx: Ctx,
    pub policy: Arc<TaintPolicy>,
    /// The detector's broadcast, which the events writer writes from.
    pub publish: broadcast::Sender<Published>,
    pub metrics: TaintMetrics,
}

impl Writer {
    /// Reconciles at start, at every change of a configured condition,
    /// every heartbeat period, and after a refusal or failure.
    pub async fn run(
        self,
        mut conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
        pulse: Pulse,
        token: CancellationToken,
    ) {
        // The statuses of the configured conditions last reconciled.
        let mut done: Option<Vec<Option<ConditionStatus>>> = None;
        let mut retry_at: Option<Instant> = None;
        let mut next_check = Instant::now();
        let mut backoff = backoff();
        loop {
            pulse.beat(IDLE_TURN + self.policy.jitter + CALL_TIMEOUT * 4);
            let conds = conditions.borrow_and_update().clone();
            let view: Vec<Option<ConditionStatus>> = self
                .policy
                .taints
                .iter()
                .map(|r| {
                    conds
                        .iter()
                        .find(|c| c.type_ == r.condition)
                        .map(|c| c.status)
                })
                .collect();
            let due = if done.as_ref() != Some(&view) {
                Instant::now()
            } else {
                retry_at.map_or(next_check, |r| r.min(next_check))
            };
            let wake = due.min(Instant::now() + IDLE_TURN);
            tokio::select! {
                r = conditions.changed(), if due > Instant::now() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(wake) => {}
                () = token.cancelled() => return,
            }
            if due > Instant::now() {
                continue;
            }
            let outcome = self.reconcile(&conds, &token).await;
            next_check = Instant::now() + jittered(self.ctx.opts.heartbeat);
            done = Some(view);
            retry_at = match outcome {
                Outcome::Done => {
                    backoff.reset();
                    None
                }
                Outcome::Refused => {
                    backoff.reset();
                    Some(Instant::now() + self.policy.retry_after)
                }
                Outcome::Failed(wait) => Some(Instant::now() + backoff.next_delay().max(wait)),
            };
        }
    }
}

impl Writer {
    /// Reads the Node, plans, counts the fleet where a first taint needs
    /// it, and writes; again from the read when another writer's change
    /// came first.
    async fn reconcile(&self, conds: &[NodeCondition], token: &CancellationToken) -> Outcome {
        // The breaker's answer holds for this reconcile: a patch that loses
        // a race (most often with this detector's own status writes) is
        // planned again without counting again.
        let mut admitted = false;
        for _ in 0..CONFLICT_RETRIES {
            let node = match self.read().await {
                Ok(n) => n,
                Err(outcome) => return outcome,
            };
            let current = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let mut plan = plan(&self.policy, conds, &current, SystemTime::now());
            let mut refused = false;
            if !plan.add.is_empty() && !current.iter().any(ours) && !admitted {
                match self.admit(&plan, token).await {
                    // Read again: others' writes during the wait have landed.
                    Some(true) => {
                        admitted = true;
                        continue;
                    }
                    Some(false) => {
                        refused = true;
                        plan.add.clear();
                    }
                    None => return Outcome::Done,
                }
            }
            let after = plan.apply(&current);
            let quarantined = after.iter().any(ours);
            let done = if refused {
                Outcome::Refused
            } else {
                Outcome::Done
            };
            if plan.add.is_empty() && plan.remove.is_empty() && quarantined == labelled(&node) {
                self.metrics.carried(&self.policy, &current);
                return done;
            }
            match self.write(&node, &after, quarantined).await {
                Ok(()) => {
                    self.metrics.carried(&self.policy, &after);
                    self.said(&plan);
                    return done;
                }
                Err(None) => {}
                Err(Some(failed)) => return failed,
            }
        }
        tracing::warn!(node = %self.ctx.opts.node, "the Node kept changing under {CONFLICT_RETRIES} taint patches; backing off");
        Outcome::Failed(Duration::ZERO)
    }

    async fn read(&self) -> Result<Node, Outcome> {
        let node = &self.ctx.opts.node;
        self.ctx.limiter.acquire().await;
        match bounded(self.nodes.get(node)).await {
            Ok(n) => {
                self.ctx.metrics.request("get_node", "ok");
                Ok(n)
            }
            Err(e) => {
                self.ctx.metrics.request("get_node", "error");
                tracing::warn!(%node, "cannot read the Node to reconcile its taints: {e}; retrying");
                Err(Outcome::Failed(Duration::ZERO))
            }
        }
    }

    /// The patch of `node` to `taints` and the label; `Err(None)`: another
    /// writer came first (read again), `Err(Some(_))`: failed.
    async fn write(
        &self,
        node: &Node,
        taints: &[Taint],
        quarantined: bool,
    ) -> Result<(), Option<Outcome>> {
        let name = &self.ctx.opts.node;
        let patch =
            serde_json::from_value::<json_patch::Patch>(json_patch(node, taints, quarantined))
                .map_err(|e| {
                    tracing::error!("cannot build the taint patch: {e}");
                    Some(Outcome::Failed(Duration::ZERO))
                })?;
        self.ctx.limiter.acquire().await;
        let result = bounded(self.nodes.patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        ))
        .await;
        let e = match result {
            Ok(_) => {
                self.ctx.metrics.request("patch_node", "ok");
                return Ok(());
            }
            Err(e) => e,
        };
        if conflict(&e) {
            self.ctx.metrics.request("patch_node", "conflict");
            tracing::debug!(node = %name, "the Node changed under the taint patch; reading it again");
            return Err(None);
        }
        self.ctx.metrics.request("patch_node", "error");
        let wait = match Failure::of(&e) {
            Failure::After(d) => d,
            Failure::Forbidden(m) => {
                tracing::error!(node = %name, "forbidden: the service account needs `patch` on `nodes` (manifests/components/taints): {m}");
                Duration::ZERO
            }
            Failure::NotFound(m) | Failure::Refused(m) | Failure::Other(m) => {
                tracing::warn!(node = %name, "cannot write the Node's taints: {m}; retrying");
                Duration::ZERO
            }
        };
        Err(Some(Outcome::Failed(wait)))
    }

    /// Whether the breaker lets the Node be quarantined (`None`: shut down
    /// while waiting). A refusal is said here.
    async fn admit(&self, plan: &Plan, token: &CancellationToken) -> Option<bool> {
        let jitter = self.policy.jitter.mul_f64(fastrand::f64());
        tokio::select! {
            () = tokio::time::sleep(jitter) => {}
            () = token.cancelled() => return None,
        }
        let counted = breaker::count(
            &self.nodes,
            &self.policy,
            &self.ctx.limiter,
            &self.ctx.metrics,
        )
        .await;
        let why = match counted {
            Ok(c) => {
                self.metrics.counted(&c);
                if c.room() {
                    return Some(true);
                }
                c.describe(&self.policy)
            }
            Err(e) => format!("{e}; the breaker refuses what it cannot count"),
        };
        let retry = crate::config::duration::format_go(self.policy.retry_after);
        for c in &plan.add {
            self.metrics
                .refused
                .with_label_values(&[&c.condition])
                .inc();
            let message = format!(
                "not adding taint {} for {}: {why}; trying again in {retry}",
                describe(&c.taint),
                c.why
            );
            tracing::warn!(node = %self.ctx.opts.node, "{message}");
            self.event(Severity::Warn, REASON_REFUSED, message);
        }
        Some(false)
    }

    /// The events and log lines of a written plan.
    fn said(&self, plan: &Plan) {
        for c in &plan.add {
            let message = format!("added taint {}: {}", describe(&c.taint), c.why);
            tracing::warn!(node = %self.ctx.opts.node, "{message}");
            self.event(Severity::Warn, REASON_ADDED, message);
        }
        for c in &plan.remove {
            let message = format!("removed taint {}: {}", describe(&c.taint), c.why);
            tracing::info!(node = %self.ctx.opts.node, "{message}");
            self.event(Severity::Info, REASON_REMOVED, message);
        }
    }

    fn event(&self, severity: Severity, reason: &str, message: String) {
        // No receiver (events off, shutting down) is not an error here.
        let _ = self.publish.send(Published::Event {
            source: SOURCE.to_owned(),
            event: Event {
                severity,
                timestamp: SystemTime::now(),
                reason: reason.to_owned(),
                message,
            },
        });
    }
}

/// `key=value:Effect`.
fn describe(t: &Taint) -> String {
    match t.value.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => format!("{}={v}:{}", t.key, t.effect),
        None => format!("{}:{}", t.key, t.effect),
    }
}

/// Another writer may have changed the Node between the read and the
/// patch: the patch's `test` failed (422; kube-apiserver's message for a
/// failed JSON patch op is generic, so any 422 of this patch, which was
/// planned from a valid read and a checked policy, is read again), or a
/// resourceVersion conflicted (409). [`CONFLICT_RETRIES`] bounds it.
fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::taint_policy::check;
    use std::path::Path;

    fn policy() -> TaintPolicy {
        check(
            Path::new("policy.json"),
            r#"{"taints": [
                {"condition": "GPULost", "key": "npd-ext.io/gpu-lost"},
                {"condition": "KernelDeadlock", "effect": "NoExecute", "keepOnUnknown": false}
            ]}"#,
        )
        .config
        .expect("valid")
    }

    fn cond(t: &str, status: ConditionStatus) -> NodeCondition {
        NodeCondition {
            type_: t.into(),
            status,
            transition: SystemTime::UNIX_EPOCH,
            last_update: SystemTime::UNIX_EPOCH,
            reason: "R".into(),
            message: "gpu=3".into(),
            source: "s".into(),
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn true_adds_false_removes_unknown_keeps_by_rule() {
        let p = policy();
        let now = SystemTime::UNIX_EPOCH;
        let plan1 = plan(&p, &[cond("GPULost", ConditionStatus::True)], &[], now);
        assert_eq!(plan1.add.len(), 1);
        assert_eq!(plan1.add[0].taint.key, "npd-ext.io/gpu-lost");
        assert_eq!(plan1.add[0].why, "GPULost is True (R: gpu=3)");
        let on = [
            taint("npd-ext.io/gpu-lost", "NoSchedule"),
            taint("npd-ext.io/kernel-deadlock", "NoExecute"),
            taint("node.kubernetes.io/unschedulable", "NoSchedule"),
        ];
        // Unknown: the first rule keeps its taint, the second does not.
        let unknown = [
            cond("GPULost", ConditionStatus::Unknown),
            cond("KernelDeadlock", ConditionStatus::Unknown),
        ];
        let p2 = plan(&p, &unknown, &on, now);
        assert!(p2.add.is_empty());
        assert_eq!(p2.remove.len(), 1);
        assert_eq!(p2.remove[0].taint.key, "npd-ext.io/kernel-deadlock");
        assert!(p2.remove[0].why.contains("keepOnUnknown is false"));
        // Unknown never adds.
        assert!(plan(&p, &unknown, &[], now).add.is_empty());
        // False removes ours and keeps others' in place.
        let p3 = plan(&p, &[cond("GPULost", ConditionStatus::False)], &on, now);
        let after = p3.apply(&on);
        assert_eq!(
            after.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            [
                "npd-ext.io/kernel-deadlock",
                "node.kubernetes.io/unschedulable"
            ]
        );
        // Not reported yet: the Node stays as it is.
        assert_eq!(plan(&p, &[], &on[..2], now), Plan::default());
    }

    #[test]
    fn taints_of_ours_no_rule_names_go_and_others_stay() {
        let p = policy();
        let on = [
            taint("npd-ext.io/old-rule", "NoSchedule"),
            taint("npd-ext.io/gpu-lost", "NoExecute"),
            taint("example.com/mine", "NoSchedule"),
        ];
        let plan = plan(&p, &[], &on, SystemTime::UNIX_EPOCH);
        let gone: Vec<&str> = plan.remove.iter().map(|c| c.taint.key.as_str()).collect();
        assert_eq!(gone, ["npd-ext.io/old-rule", "npd-ext.io/gpu-lost"]);
        assert!(plan.remove[0].why.contains("policy.json"));
        assert_eq!(plan.apply(&on), [on[2].clone()]);
    }

    #[test]
    fn the_patch_tests_the_version_and_sets_the_label() {
        let mut node = Node::default();
        node.metadata.resource_version = Some("41".into());
        let t = [taint("npd-ext.io/gpu-lost", "NoSchedule")];
        let p = json_patch(&node, &t, true);
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "41"},
                {"op": "add", "path": "/spec", "value": {"taints": [{"key": "npd-ext.io/gpu-lost", "effect": "NoSchedule"}]}},
                {"op": "add", "path": "/metadata/labels", "value": {"npd-ext.io/quarantined": "true"}},
            ])
        );
        node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(t.to_vec()),
            ..Default::default()
        });
        node.metadata.labels = Some([(QUARANTINE_LABEL.to_owned(), "true".to_owned())].into());
        let p = json_patch(&node, &[], false);
        assert_eq!(
            p[1],
            json!({"op": "replace", "path": "/spec/taints", "value": []})
        );
        assert_eq!(
            p[2],
            json!({"op": "remove", "path": "/metadata/labels/npd-ext.io~1quarantined"})
        );
        serde_json::from_value::<json_patch::Patch>(p).expect("a JSON patch");
    }
}

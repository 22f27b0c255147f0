//! The condition manager: owns the node's condition set. Enforces ownership
//! (a monitor sets only the types it declared; kubelet-owned types never),
//! computes `lastTransitionTime` itself, and says what changed.
//!
//! It is also the one place of the staleness model: a monitor confirms its
//! conditions by reporting (a status, or "alive, still so"); one that says
//! it cannot see ([`down`](ConditionManager::down)), or that has not
//! confirmed within the period it promised
//! ([`expire`](ConditionManager::expire)), has every condition it owns
//! turned `Unknown` with a reason saying why, until a status of its says
//! them again; a monitor that only went quiet has what it last said back as
//! soon as it confirms. A status with events only confirms nothing. `lastUpdate` is the last
//! confirmation, which the Kubernetes exporter writes as
//! `lastHeartbeatTime`: nothing is heartbeated fresher than its source.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::problem::{
    Condition, ConditionStatus, Event, Severity, Status, format_time, is_kubelet_owned,
};

/// The reason of conditions whose monitor has not confirmed them within its
/// period.
pub const REASON_STALE: &str = "MonitorStale";

/// Index of a monitor in the detector's list.
pub type MonitorId = usize;

/// A condition as the node carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(serialize_with = "ser_time")]
    pub transition: SystemTime,
    /// When the owning monitor last confirmed this condition (a status, or a
    /// live plugin with nothing new to say). It stops moving when the
    /// monitor goes quiet, so stale state is visible as such.
    #[serde(serialize_with = "ser_time", rename = "lastUpdate")]
    pub last_update: SystemTime,
    pub reason: String,
    pub message: String,
    /// The `source` of the monitor that owns the type.
    pub source: String,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

/// What a change produced, for exporters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// A condition was first written or changed status, reason or message.
    Condition {
        condition: NodeCondition,
        previous: Option<ConditionStatus>,
    },
    Event {
        source: String,
        event: Event,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    #[error("{type_} is owned by the kubelet; no monitor may set it")]
    KubeletOwned { type_: String },
    #[error(
        "{type_} is declared by both {first} and {second}; each condition type needs exactly one owner"
    )]
    Conflict {
        type_: String,
        first: String,
        second: String,
    },
}

/// How a monitor keeps its conditions current.
#[derive(Debug, Default)]
struct Watch {
    /// The longest it may go without confirming (`None`: not watched).
    period: Option<Duration>,
    /// When it last confirmed (`None`: it has not reported yet).
    confirmed: Option<Instant>,
    /// While its conditions are held `Unknown` here: why, and what it last
    /// said of each, to restore when it confirms again.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    reason: String,
    message: String,
    said: Vec<Condition>,
    /// Whether a confirmation brings back what it said: only when the
    /// monitor merely went quiet ([`expire`](ConditionManager::expire)). A
    /// monitor that said it cannot see, or whose task stopped, must say its
    /// conditions anew in a status; "alive, still so" cannot.
    restore: bool,
}

#[derive(Debug, Default)]
pub struct ConditionManager {
    sources: Vec<String>,
    watches: Vec<Watch>,
    owners: BTreeMap<String, MonitorId>,
    conditions: BTreeMap<String, NodeCondition>,
    /// (monitor, type) pairs already logged as refused, so a plugin that keeps
    /// sending a foreign type logs once, not every second.
    refused_logged: HashSet<(MonitorId, String)>,
}

/// Result of applying one status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub published: Vec<Published>,
    /// Condition types refused because the monitor does not own them.
    pub refused: Vec<String>,
    /// Some condition was written or confirmed (its `lastUpdate` moved).
    pub touched: bool,
}

impl NodeCondition {
    /// The condition as its monitor would say it.
    pub fn said(&self) -> Condition {
        let mut c = Condition::new(&self.type_, self.status, &self.reason, &self.message);
        c.transition = Some(self.transition);
        c
    }
}

impl Applied {
    /// What the manager itself changed for monitor `source` (its conditions
    /// held `Unknown`, with the warning), as a status for the external
    /// exporters, which see every status.
    pub fn as_status(&self, source: &str) -> Status {
        let mut status = Status {
            source: source.to_owned(),
            events: Vec::new(),
            conditions: Vec::new(),
        };
        for p in &self.published {
            match p {
                Published::Condition { condition, .. } => status.conditions.push(condition.said()),
                Published::Event { event, .. } => status.events.push(event.clone()),
            }
        }
        status
    }
}

impl ConditionManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a monitor and claims its declared types. Every conflict is
    /// reported; the types that are free are claimed.
    pub fn register(&mut self, source: &str, types: &[String]) -> (MonitorId, Vec<OwnershipError>) {
        let id = self.sources.len();
        self.sources.push(source.to_owned());
        self.watches.push(Watch::default());
        let errors = self.claim(id, types);
        (id, errors)
    }

    /// Claims more types for a monitor (a plugin's `supported_conditions`
    /// when its config declared none).
    pub fn claim(&mut self, id: MonitorId, types: &[String]) -> Vec<OwnershipError> {
        let mut errors = Vec::new();
        for t in types {
            if is_kubelet_owned(t) {
                errors.push(OwnershipError::KubeletOwned { type_: t.clone() });
                continue;
            }
            match self.owners.get(t) {
                Some(&owner) if owner != id => errors.push(OwnershipError::Conflict {
                    type_: t.clone(),
                    first: self.sources[owner].clone(),
                    second: self.sources[id].clone(),
                }),
                Some(_) => {}
                None => {
                    self.owners.insert(t.clone(), id);
                }
            }
        }
        errors
    }

    /// The `source` of a registered monitor.
    pub fn source(&self, id: MonitorId) -> &str {
        self.sources.get(id).map_or("", String::as_str)
    }

    /// The monitor that owns condition type `t`.
    pub fn owner(&self, t: &str) -> Option<MonitorId> {
        self.owners.get(t).copied()
    }

    pub fn owned_by(&self, id: MonitorId) -> Vec<String> {
        self.owners
            .iter()
            .filter(|(_, o)| **o == id)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Applies a monitor's status at `now`: owned conditions are written,
    /// others refused; events pass through with the monitor's source.
    /// A status without conditions (events only) confirms nothing.
    pub fn apply(&mut self, id: MonitorId, status: &Status, now: SystemTime) -> Applied {
        let mut out = if status.conditions.is_empty() {
            Applied::default()
        } else {
            self.confirm(
                id,
                now,
                |t| status.conditions.iter().any(|c| c.type_ == t),
                true,
            )
        };
        let source = self.sources.get(id).cloned().unwrap_or_default();
        for c in &status.conditions {
            if self.owners.get(&c.type_) != Some(&id) {
                if self.refused_logged.insert((id, c.type_.clone())) {
                    let why = if is_kubelet_owned(&c.type_) {
                        "it is owned by the kubelet"
                    } else {
                        "the monitor's config does not declare it"
                    };
                    tracing::warn!(monitor = %source, condition = %c.type_, "refused condition: {why}");
                }
                out.refused.push(c.type_.clone());
                continue;
            }
            out.touched = true;
            if let Some(p) = self.update(&source, c, now, true) {
                out.published.push(p);
            }
        }
        for e in &status.events {
            out.published.push(Published::Event {
                source: source.clone(),
                event: e.clone(),
            });
        }
        out
    }

    /// Writes `c`; `lastUpdate` moves unless `confirmed` is false (the
    /// manager's own `Unknown` confirms nothing).
    fn update(
        &mut self,
        source: &str,
        c: &Condition,
        now: SystemTime,
        confirmed: bool,
    ) -> Option<Published> {
        match self.conditions.get_mut(&c.type_) {
            Some(existing) => {
                if confirmed {
                    existing.last_update = now;
                }
                if existing.status == c.status
                    && existing.reason == c.reason
                    && existing.message == c.message
                {
                    return None;
                }
                let previous = existing.status;
                if existing.status != c.status {
                    existing.transition = now;
                }
                existing.reason.clone_from(&c.reason);
                existing.message.clone_from(&c.message);
                existing.status = c.status;
                Some(Published::Condition {
                    condition: existing.clone(),
                    previous: Some(previous),
                })
            }
            None => {
                // First write: the plugin's hint is believed only if it is not in the future.
                let transition = c.transition.filter(|t| *t <= now).unwrap_or(now);
                let nc = NodeCondition {
                    type_: c.type_.clone(),
                    status: c.status,
                    transition,
                    last_update: now,
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    source: source.to_owned(),
                };
                self.conditions.insert(c.type_.clone(), nc.clone());
                Some(Published::Condition {
                    condition: nc,
                    previous: None,
                })
            }
        }
    }

    /// The monitor is alive and its conditions still hold: `lastUpdate`
    /// moves, and conditions held `Unknown` here come back as it last said
    /// them.
    pub fn touch(&mut self, id: MonitorId, now: SystemTime) -> Applied {
        let mut out = self.confirm(id, now, |_| false, false);
        if self.watches.get(id).is_some_and(|w| w.held.is_some()) {
            // Held Unknown until a status says otherwise: nothing to confirm.
            return out;
        }
        for c in self.conditions.values_mut() {
            if self.owners.get(&c.type_) == Some(&id) {
                c.last_update = now;
                out.touched = true;
            }
        }
        out
    }

    /// Records a confirmation (`by_status`: a status with conditions, else
    /// "alive, still so") and ends a hold it may end, restoring what a
    /// quiet monitor last said (but the types `said_now`, which the
    /// confirming status sets itself).
    fn confirm(
        &mut self,
        id: MonitorId,
        now: SystemTime,
        said_now: impl Fn(&str) -> bool,
        by_status: bool,
    ) -> Applied {
        let mut out = Applied::default();
        let Some(w) = self.watches.get_mut(id) else {
            return out;
        };
        w.confirmed = Some(Instant::now());
        if !by_status && w.held.as_ref().is_some_and(|h| !h.restore) {
            return out;
        }
        let Some(held) = w.held.take() else {
            return out;
        };
        if !held.restore {
            return out;
        }
        let source = self.source(id).to_owned();
        for c in held.said.iter().filter(|c| !said_now(&c.type_)) {
            out.touched = true;
            if let Some(p) = self.update(&source, c, now, true) {
                out.published.push(p);
            }
        }
        out
    }

    /// The monitor promises to confirm its conditions at least every
    /// `period`; past it they are `Unknown` ([`expire`](Self::expire)).
    pub fn expect_every(&mut self, id: MonitorId, period: Duration) {
        if let Some(w) = self.watches.get_mut(id) {
            w.period = Some(period);
        }
    }

    /// The monitor cannot see: every condition it owns (written or not) is
    /// `Unknown` with `reason` and `message`, with one warning event, until
    /// it confirms again. Nothing changes if it is already down for the
    /// same reason and message.
    pub fn down(&mut self, id: MonitorId, reason: &str, message: &str, now: SystemTime) -> Applied {
        self.hold(id, reason, message, now, false)
    }

    fn hold(
        &mut self,
        id: MonitorId,
        reason: &str,
        message: &str,
        now: SystemTime,
        restore: bool,
    ) -> Applied {
        let mut out = Applied::default();
        let Some(w) = self.watches.get_mut(id) else {
            return out;
        };
        if w.held
            .as_ref()
            .is_some_and(|h| h.reason == reason && h.message == message)
        {
            return out;
        }
        let types = self.owned_by(id);
        if self.watches[id].held.is_none() {
            let said = types
                .iter()
                .filter_map(|t| self.conditions.get(t))
                .map(NodeCondition::said)
                .collect();
            self.watches[id].held = Some(Held {
                reason: String::new(),
                message: String::new(),
                said,
                restore,
            });
        }
        if let Some(h) = self.watches[id].held.as_mut() {
            reason.clone_into(&mut h.reason);
            message.clone_into(&mut h.message);
            // Once it said it cannot see, going quiet does not make it
            // restorable.
            h.restore &= restore;
        }
        let source = self.source(id).to_owned();
        for t in types {
            out.touched = true;
            let c = Condition::new(t, ConditionStatus::Unknown, reason, message);
            if let Some(p) = self.update(&source, &c, now, false) {
                out.published.push(p);
            }
        }
        out.published.push(Published::Event {
            source,
            event: Event {
                severity: Severity::Warn,
                timestamp: now,
                reason: reason.to_owned(),
                message: message.to_owned(),
            },
        });
        out
    }

    /// Turns `Unknown` the conditions of every monitor that reported once
    /// and has not confirmed within its period since.
    pub fn expire(&mut self, now: SystemTime) -> Applied {
        let mut out = Applied::default();
        let at = Instant::now();
        let stale: Vec<(MonitorId, Duration, Duration)> = self
            .watches
            .iter()
            .enumerate()
            .filter(|(_, w)| w.held.is_none())
            .filter_map(|(id, w)| {
                let (period, confirmed) = (w.period?, w.confirmed?);
                let quiet = at.duration_since(confirmed);
                (quiet >= period).then_some((id, period, quiet))
            })
            .collect();
        for (id, period, quiet) in stale {
            let message = format!(
                "{} has not confirmed its conditions for {} s (it promised to every {} s)",
                self.source(id),
                quiet.as_secs(),
                period.as_secs()
            );
            let a = self.hold(id, REASON_STALE, &message, now, true);
            out.touched |= a.touched;
            out.published.extend(a.published);
        }
        out
    }

    /// When [`expire`](Self::expire) next has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.watches
            .iter()
            .filter(|w| w.held.is_none())
            .filter_map(|w| Some(w.confirmed? + w.period?))
            .min()
    }

    /// Current conditions, by type.
    pub fn snapshot(&self) -> Vec<NodeCondition> {
        self.conditions.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cond(t: &str, s: ConditionStatus, reason: &str) -> Condition {
        Condition::new(t, s, reason, "m")
    }

    fn status(conditions: Vec<Condition>) -> Status {
        Status {
            source: "whatever-the-plugin-says".into(),
            events: vec![],
            conditions,
        }
    }

    #[test]
    fn ownership_conflicts_and_kubelet_types_are_errors() {
        let mut m = ConditionManager::new();
        let (_, e) = m.register("a", &["X".into(), "Ready".into()]);
        assert_eq!(
            e,
            vec![OwnershipError::KubeletOwned {
                type_: "Ready".into()
            }]
        );
        let (_, e) = m.register("b", &["X".into(), "Y".into()]);
        assert!(matches!(&e[..], [OwnershipError::Conflict { type_, .. }] if type_ == "X"));
        assert_eq!(m.owned_by(1), vec!["Y".to_owned()]);
    }

    #[test]
    fn refuses_foreign_types_without_disturbing_the_rest() {
        let mut m = ConditionManager::new();
        let (a, _) = m.register("a", &["X".into()]);
        let (_b, _) = m.register("b", &["Y".into()]);
        let now = SystemTime::now();
        let r = m.apply(
            a,
            &status(vec![
                cond("Ready", ConditionStatus::False, "r"),
                cond("Y", ConditionStatus::True, "stolen"),
                cond("Undeclared", ConditionStatus::True, "u"),
                cond("X", ConditionStatus::True, "mine"),
            ]),
            now,
        );
        assert_eq!(r.refused, vec!["Ready", "Y", "Undeclared"]);
        let snap = m.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (snap[0].type_.as_str(), snap[0].reason.as_str()),
            ("X", "mine")
        );
        assert_eq!(snap[0].source, "a", "the config's source, not the plugin's");
    }

    #[test]
    fn transition_time_is_ours() {
        let mut m = ConditionManager::new();
        let (a, _) = m.register("a", &["X".into()]);
        let t0 = SystemTime::now();
        let mut c = cond("X", ConditionStatus::False, "ok");
        c.transition = Some(t0 + Duration::from_secs(3600)); // a plugin clock in the future
        m.apply(a, &status(vec![c]), t0);
        assert_eq!(m.snapshot()[0].transition, t0);
        // Same status, new message: no transition.
        let t1 = t0 + Duration::from_secs(5);
        let mut c = cond("X", ConditionStatus::False, "ok");
        c.message = "changed".into();
        let r = m.apply(a, &status(vec![c]), t1);
        assert!(matches!(
            &r.published[..],
            [Published::Condition {
                previous: Some(ConditionStatus::False),
                ..
            }]
        ));
        assert_eq!(m.snapshot()[0].transition, t0);
        // Flip: transition now.
        let t2 = t0 + Duration::from_secs(9);
        m.apply(
            a,
            &status(vec![cond("X", ConditionStatus::True, "bad")]),
            t2,
        );
        assert_eq!(m.snapshot()[0].transition, t2);
        // Identical: nothing published.
        let r = m.apply(
            a,
            &status(vec![cond("X", ConditionStatus::True, "bad")]),
            t2,
        );
        assert!(r.published.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_monitor_that_does_not_confirm_within_its_period_goes_unknown_and_comes_back() {
        let mut m = ConditionManager::new();
        let (a, _) = m.register("kernel-monitor", &["KernelDeadlock".into()]);
        let (b, _) = m.register("other", &["Y".into()]);
        m.expect_every(a, Duration::from_secs(75));
        let t0 = SystemTime::now();
        m.apply(
            a,
            &status(vec![cond(
                "KernelDeadlock",
                ConditionStatus::False,
                "KernelHasNoDeadlock",
            )]),
            t0,
        );
        m.apply(b, &status(vec![cond("Y", ConditionStatus::True, "y")]), t0);
        let due = m.next_expiry().expect("watched");
        assert_eq!(due.duration_since(Instant::now()), Duration::from_secs(75));
        tokio::time::advance(Duration::from_secs(60)).await;
        let t1 = t0 + Duration::from_secs(60);
        assert!(
            m.touch(a, t1).published.is_empty(),
            "confirmed: nothing changes"
        );
        tokio::time::advance(Duration::from_secs(74)).await;
        assert_eq!(m.expire(t1), Applied::default(), "within its period");
        tokio::time::advance(Duration::from_secs(1)).await;
        let t2 = t1 + Duration::from_secs(75);
        let r = m.expire(t2);
        let snap = m.snapshot();
        let k = snap
            .iter()
            .find(|c| c.type_ == "KernelDeadlock")
            .expect("k");
        assert_eq!(
            (k.status, k.reason.as_str()),
            (ConditionStatus::Unknown, REASON_STALE)
        );
        assert_eq!(
            k.message,
            "kernel-monitor has not confirmed its conditions for 75 s (it promised to every 75 s)"
        );
        assert_eq!(k.last_update, t1, "its last confirmation, not the expiry");
        assert_eq!(
            r.published.len(),
            2,
            "the change and one warning: {:?}",
            r.published
        );
        assert!(
            snap.iter()
                .any(|c| c.type_ == "Y" && c.status == ConditionStatus::True),
            "an unwatched monitor is untouched"
        );
        assert!(
            m.next_expiry().is_none() && m.expire(t2) == Applied::default(),
            "once"
        );
        // Alive again: what it last said is back, with a new transition.
        let t3 = t2 + Duration::from_secs(5);
        let r = m.touch(a, t3);
        assert_eq!(r.published.len(), 1);
        let k = m
            .snapshot()
            .into_iter()
            .find(|c| c.type_ == "KernelDeadlock")
            .expect("k");
        assert_eq!(
            (k.status, k.reason.as_str(), k.transition),
            (ConditionStatus::False, "KernelHasNoDeadlock", t3)
        );
    }

    #[test]
    fn a_source_that_cannot_see_makes_even_unwritten_conditions_unknown() {
        let mut m = ConditionManager::new();
        let (a, _) = m.register(
            "journal",
            &["KernelDeadlock".into(), "ReadonlyFilesystem".into()],
        );
        let now = SystemTime::now();
        let why = "journal cannot read its log: /bin/false exited (exit status: 1)";
        let r = m.down(a, "LogSourceUnreadable", why, now);
        assert!(r.touched);
        let snap = m.snapshot();
        assert_eq!(snap.len(), 2);
        assert!(snap.iter().all(|c| c.status == ConditionStatus::Unknown
            && c.reason == "LogSourceUnreadable"
            && c.message == why));
        // Another reason: the conditions say the new one.
        m.down(a, "MonitorStopped", "stopped", now);
        assert!(m.snapshot().iter().all(|c| c.reason == "MonitorStopped"));
        // "Alive, still so" cannot say what it does not know: still Unknown,
        // and not confirmed.
        let later = now + Duration::from_secs(30);
        assert!(m.touch(a, later).published.is_empty());
        assert!(
            m.snapshot()
                .iter()
                .all(|c| c.status == ConditionStatus::Unknown && c.last_update == now)
        );
        // Nor can a status of events only.
        let events_only = Status {
            source: "journal".into(),
            events: vec![],
            conditions: vec![],
        };
        m.apply(a, &events_only, later);
        assert!(
            m.snapshot()
                .iter()
                .all(|c| c.status == ConditionStatus::Unknown)
        );
        // Its status, once it can see: known again.
        m.apply(
            a,
            &status(vec![cond("KernelDeadlock", ConditionStatus::False, "ok")]),
            now,
        );
        let snap = m.snapshot();
        assert!(
            snap.iter()
                .any(|c| c.type_ == "KernelDeadlock" && c.status == ConditionStatus::False)
        );
        assert!(
            snap.iter()
                .any(|c| c.type_ == "ReadonlyFilesystem" && c.status == ConditionStatus::Unknown),
            "never said: still not known"
        );
    }

    #[test]
    fn a_restarted_monitor_does_not_get_its_old_values_back_by_being_alive() {
        let mut m = ConditionManager::new();
        let (a, _) = m.register("gpu", &["GPULost".into()]);
        let now = SystemTime::now();
        m.apply(
            a,
            &status(vec![cond("GPULost", ConditionStatus::True, "Lost")]),
            now,
        );
        m.down(
            a,
            "MonitorRestarting",
            "the monitor stopped: its task panicked (x) and restarts",
            now,
        );
        m.touch(a, now);
        let c = &m.snapshot()[0];
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::Unknown, "MonitorRestarting")
        );
        m.apply(
            a,
            &status(vec![cond("GPULost", ConditionStatus::False, "Fine")]),
            now,
        );
        assert_eq!(m.snapshot()[0].status, ConditionStatus::False);
    }
}

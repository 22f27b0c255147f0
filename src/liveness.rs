//! Liveness of long-lived tasks, for `/healthz`: each task promises when it
//! will beat next; a missed promise, a task that ended, or a task waiting to
//! be restarted after a panic means unhealthy. A task that was restarted and
//! runs again is healthy, and says how often it panicked.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    name: String,
    /// When the task promised its next beat (`None`: it promised none).
    deadline: Option<Instant>,
    ended: bool,
    panics: u32,
    last_panic: String,
    /// While a panicked task waits for its restart: when that is due.
    restart_at: Option<Instant>,
    /// The task runs but cannot do its job, and says why (unhealthy).
    failing: Option<String>,
    /// The task does its job only in part, and says why (still healthy).
    degraded: Option<String>,
}

/// The registry, shared by the tasks and the health endpoint.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    entries: Arc<Mutex<Vec<Entry>>>,
}

/// One task's handle. Dropping it (the task ended) marks the task dead.
#[derive(Debug)]
pub struct Pulse {
    registry: Liveness,
    index: usize,
}

/// A task's place in the registry across restarts (see `supervisor`).
#[derive(Clone, Debug)]
pub struct Slot {
    registry: Liveness,
    index: usize,
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a task that promises its first beat within `first`.
    pub fn register(&self, name: impl Into<String>, first: Duration) -> Pulse {
        self.slot(name).pulse(Some(first))
    }

    /// A place for a task that has not started yet.
    pub fn slot(&self, name: impl Into<String>) -> Slot {
        let mut entries = self.lock();
        entries.push(Entry {
            name: name.into(),
            deadline: None,
            ended: false,
            panics: 0,
            last_panic: String::new(),
            restart_at: None,
            failing: None,
            degraded: None,
        });
        Slot {
            registry: self.clone(),
            index: entries.len() - 1,
        }
    }

    /// What is wrong with tasks that ended, missed their promised beat, or
    /// wait to be restarted after a panic.
    pub fn stalled(&self) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter_map(|e| {
                if let Some(at) = e.restart_at {
                    Some(format!(
                        "{} (panicked: {}; restart {} in {} s)",
                        e.name,
                        e.last_panic,
                        e.panics,
                        at.saturating_duration_since(now).as_secs()
                    ))
                } else if let Some(why) = &e.failing {
                    Some(format!("{} ({why})", e.name))
                } else if e.ended {
                    Some(format!("{} (stopped)", e.name))
                } else if e.deadline.is_some_and(|d| now >= d) {
                    Some(format!("{} (no progress)", e.name))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Tasks that work only in part, with why.
    pub fn degraded(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|e| !e.ended && e.failing.is_none())
            .filter_map(|e| Some(format!("{} ({})", e.name, e.degraded.as_ref()?)))
            .collect()
    }

    /// Tasks that panicked and run again, with how often and the last panic.
    pub fn recovered(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|e| e.panics > 0 && e.restart_at.is_none() && !e.ended)
            .map(|e| {
                format!(
                    "{} (restarted after {} panic{}; last: {})",
                    e.name,
                    e.panics,
                    if e.panics == 1 { "" } else { "s" },
                    e.last_panic
                )
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with(&self, index: usize, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().get_mut(index) {
            f(e);
        }
    }
}

impl Slot {
    /// The task (re)starts; it promises its first beat within `first`
    /// (`None`: it promises none, and is only watched for ending).
    pub fn pulse(&self, first: Option<Duration>) -> Pulse {
        self.registry.with(self.index, |e| {
            e.deadline = first.map(|f| Instant::now() + f);
            e.ended = false;
            e.restart_at = None;
            e.failing = None;
            e.degraded = None;
        });
        Pulse {
            registry: self.registry.clone(),
            index: self.index,
        }
    }

    /// The task panicked with `message`; it restarts after `delay`.
    pub fn panicked(&self, message: &str, delay: Duration) {
        self.registry.with(self.index, |e| {
            e.panics = e.panics.saturating_add(1);
            message.clone_into(&mut e.last_panic);
            e.restart_at = Some(Instant::now() + delay);
        });
    }
}

impl Pulse {
    /// The task made progress and promises to beat again within `next`.
    pub fn beat(&self, next: Duration) {
        self.registry.with(self.index, |e| {
            e.deadline = Instant::now().checked_add(next);
            e.failing = None;
        });
    }

    /// The task runs but cannot do its job: unhealthy, with `why`, until
    /// its next [`beat`](Self::beat).
    pub fn fail(&self, why: impl Into<String>) {
        let why = why.into();
        self.registry.with(self.index, |e| e.failing = Some(why));
    }

    /// The task does its job only in part (`None`: fully again); shown by
    /// `/healthz` without failing it.
    pub fn degrade(&self, why: Option<String>) {
        self.registry.with(self.index, |e| e.degraded = why);
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.registry.with(self.index, |e| e.ended = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_beat_and_ended_task_are_stalled() {
        let l = Liveness::new();
        let a = l.register("a", Duration::from_secs(60));
        let b = l.register("b", Duration::ZERO);
        assert_eq!(l.stalled(), vec!["b (no progress)".to_owned()]);
        b.beat(Duration::from_secs(60));
        assert!(l.stalled().is_empty());
        drop(a);
        assert_eq!(l.stalled(), vec!["a (stopped)".to_owned()]);
    }

    #[test]
    fn a_failing_task_is_stalled_with_its_reason_until_it_beats() {
        let l = Liveness::new();
        let p = l.register("k8s", Duration::from_secs(60));
        p.degrade(Some("writes failing".into()));
        assert!(l.stalled().is_empty());
        assert_eq!(l.degraded(), vec!["k8s (writes failing)".to_owned()]);
        p.fail("node \"x\" not found");
        assert_eq!(l.stalled(), vec!["k8s (node \"x\" not found)".to_owned()]);
        assert!(l.degraded().is_empty());
        p.beat(Duration::from_secs(60));
        p.degrade(None);
        assert!(l.stalled().is_empty() && l.degraded().is_empty());
    }

    #[test]
    fn a_panicked_task_is_stalled_until_it_runs_again_then_recovered() {
        let l = Liveness::new();
        let slot = l.slot("t");
        let p = slot.pulse(None);
        assert!(l.stalled().is_empty() && l.recovered().is_empty());
        drop(p); // unwinding drops the task's pulse first
        slot.panicked("boom", Duration::from_secs(4));
        let stalled = l.stalled();
        assert_eq!(stalled.len(), 1);
        assert!(
            stalled[0].starts_with("t (panicked: boom; restart 1 in "),
            "{stalled:?}"
        );
        let _p = slot.pulse(Some(Duration::from_secs(60)));
        assert!(l.stalled().is_empty());
        assert_eq!(
            l.recovered(),
            vec!["t (restarted after 1 panic; last: boom)".to_owned()]
        );
    }
}

//! Liveness of long-lived tasks, for `/healthz`: each task promises when it
//! will beat next; a missed promise or a task that ended means unhealthy.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    name: String,
    deadline: Instant,
    ended: bool,
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

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a task that promises its first beat within `first`.
    pub fn register(&self, name: impl Into<String>, first: Duration) -> Pulse {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.push(Entry {
            name: name.into(),
            deadline: Instant::now() + first,
            ended: false,
        });
        Pulse {
            registry: self.clone(),
            index: entries.len() - 1,
        }
    }

    /// Names of tasks that ended or missed their promised beat.
    pub fn stalled(&self) -> Vec<String> {
        let now = Instant::now();
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| e.ended || now >= e.deadline)
            .map(|e| {
                if e.ended {
                    format!("{} (stopped)", e.name)
                } else {
                    format!("{} (no progress)", e.name)
                }
            })
            .collect()
    }
}

impl Pulse {
    /// The task made progress and promises to beat again within `next`.
    pub fn beat(&self, next: Duration) {
        let mut entries = self
            .registry
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(self.index) {
            e.deadline = Instant::now() + next;
        }
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let mut entries = self
            .registry
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(self.index) {
            e.ended = true;
        }
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
}

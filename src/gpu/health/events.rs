//! Events: [`HealthModel::emit`] sends an event, or counts it when the same
//! key fired within [`EVENT_WINDOW`]; when a window ends, one summary goes
//! out for the repeats it counted. Sent events are kept in a backlog of
//! [`EVENT_BACKLOG`] with sequence numbers for clients that catch up.

use std::time::SystemTime;

use super::{EVENT_BACKLOG, EVENT_WINDOW, HealthModel};
use crate::problem::{Event, Severity};

/// Repeats of one event key inside the window.
#[derive(Clone, Debug)]
pub(super) struct Burst {
    since: SystemTime,
    suppressed: u32,
    last: Event,
}

impl HealthModel {
    /// Sends an event, or counts it when the same key fired within the
    /// window (an XID storm becomes a handful of events). An empty key never
    /// aggregates: those events are transitions.
    pub(super) fn emit(
        &mut self,
        severity: Severity,
        at: SystemTime,
        reason: &str,
        key: &str,
        message: String,
    ) {
        let e = Event {
            severity,
            timestamp: at,
            reason: reason.to_owned(),
            message,
        };
        if key.is_empty() {
            self.push_event(e);
            return;
        }
        let key = format!("{reason}/{key}");
        match self.bursts.get_mut(&key) {
            Some(b) if at.duration_since(b.since).unwrap_or_default() < EVENT_WINDOW => {
                b.suppressed += 1;
                b.last = e;
            }
            _ => {
                self.bursts.insert(
                    key,
                    Burst {
                        since: at,
                        suppressed: 0,
                        last: e.clone(),
                    },
                );
                self.push_event(e);
            }
        }
    }

    /// Ends the event windows older than [`EVENT_WINDOW`]; each that counted
    /// repeats sends one summary. Returns whether any was sent.
    pub(super) fn flush_events(&mut self, now: SystemTime) -> bool {
        let mut due: Vec<(String, Burst)> = Vec::new();
        self.bursts.retain(|k, b| {
            if now.duration_since(b.since).unwrap_or_default() < EVENT_WINDOW {
                return true;
            }
            if b.suppressed > 0 {
                due.push((k.clone(), b.clone()));
            }
            false
        });
        due.sort_by(|a, b| a.0.cmp(&b.0));
        let any = !due.is_empty();
        for (_, b) in due {
            let mut e = b.last;
            e.message = format!(
                "{} (repeated {} more times within {}s)",
                e.message,
                b.suppressed,
                EVENT_WINDOW.as_secs()
            );
            self.push_event(e);
        }
        any
    }

    fn push_event(&mut self, e: Event) {
        self.events.push_back((self.next_seq, e));
        self.next_seq += 1;
        while self.events.len() > EVENT_BACKLOG {
            self.events.pop_front();
        }
    }
}

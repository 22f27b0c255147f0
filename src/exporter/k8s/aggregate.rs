//! The aggregation of Events, as client-go's EventCorrelator does it, in
//! bounded memory and never late: pure state on the tokio clock, which the
//! writer ([`super::events`]) feeds and takes writes from, and tests drive
//! without an API server.
//!
//! - **Identical** occurrences (same source, reason and message) are one
//!   Event: the first is created at once, repeats are counted and written as
//!   its `series` at most every [`FLUSH_EVERY`].
//! - **Similar** occurrences (same source and reason, another message) get
//!   an Event each for the first [`SIMILAR_LIMIT`] messages; the rest fold
//!   into one Event noted "(combined from similar events): <message>" whose
//!   series counts them all. The API server keeps an Event's note immutable,
//!   so the combined note is the latest message when it is created; its count
//!   keeps growing after that.
//! - **Bounded.** At most [`MAX_GROUPS`] (source, reason) groups of at most
//!   `SIMILAR_LIMIT + 1` entries are kept; an entry quiet for
//!   [`AGGREGATE_WINDOW`] with nothing unwritten is forgotten, and past the
//!   cap the group seen longest ago (with no write in flight) goes first.
//! - **Late is worse than missing.** No write starts unless it can land
//!   within `AGGREGATE_WINDOW` of the oldest occurrence it carries; what
//!   cannot is dropped by [`Aggregator::sweep`] and counted ([`Drops`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::time::Instant;

use super::{CALL_TIMEOUT, K8sOptions};
use crate::problem::{Event, Severity, cut};

/// An entry quiet this long with nothing unwritten is forgotten; an
/// occurrence not written this long after it was seen is dropped.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// How often an Event's count is written while it keeps happening.
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);
/// Distinct messages of one (source, reason) with an Event of their own.
pub const SIMILAR_LIMIT: usize = 10;
/// (source, reason) groups kept at once.
pub const MAX_GROUPS: usize = 256;
const NOTE_LIMIT: usize = 1024;
pub(super) const REASON_LIMIT: usize = 128;
const NAME_LIMIT: usize = 253;
const COMBINED: &str = "(combined from similar events): ";

/// One Event (or one yet to be written).
#[derive(Debug)]
struct Entry {
    /// Hash of the message (`None`: the combined entry).
    hash: Option<u64>,
    /// The note (kept: an Event gone from the server is written anew).
    note: String,
    severity: Severity,
    /// The Event's name, chosen at its first create and kept across retries
    /// (a create that timed out may have been stored: its retry then meets
    /// AlreadyExists).
    name: Option<String>,
    /// The API server has the Event.
    created: bool,
    /// Occurrences counted into this Event, written or not.
    count: u64,
    /// Of them, what the API server has.
    written: u64,
    /// When the oldest unwritten occurrence was seen.
    unwritten_since: Option<Instant>,
    first: SystemTime,
    last: SystemTime,
    /// When its last occurrence was seen, and when it was last written.
    seen: Instant,
    written_at: Option<Instant>,
    in_flight: bool,
}

impl Entry {
    fn new(hash: Option<u64>, note: String, e: &Event, now: Instant) -> Self {
        let at = e.timestamp.min(SystemTime::now());
        Self {
            hash,
            note,
            severity: e.severity,
            name: None,
            created: false,
            count: 0,
            written: 0,
            unwritten_since: None,
            first: at,
            last: at,
            seen: now,
            written_at: None,
            in_flight: false,
        }
    }

    fn occur(&mut self, e: &Event, now: Instant) {
        self.count += 1;
        self.last = e.timestamp.min(SystemTime::now()).max(self.first);
        self.seen = now;
        self.unwritten_since.get_or_insert(now);
    }

    fn unwritten(&self) -> u64 {
        self.count - self.written
    }

    /// Its unwritten occurrences can no longer be written within the
    /// window by `now` (a call may take CALL_TIMEOUT).
    fn too_late(&self, now: Instant) -> bool {
        self.unwritten_since
            .is_some_and(|t| t + AGGREGATE_WINDOW <= now + CALL_TIMEOUT)
    }

    /// When its next write is due, if it has anything to write that can
    /// still land within the window; what cannot is left to the sweep,
    /// which drops it.
    fn due(&self, now: Instant) -> Option<Instant> {
        if self.in_flight || self.unwritten() == 0 || self.too_late(now) {
            return None;
        }
        Some(match self.written_at {
            Some(at) if self.created => at + FLUSH_EVERY,
            _ => self.unwritten_since.unwrap_or(now),
        })
    }
}

/// The entries of one (source, reason).
#[derive(Debug, Default)]
struct Group {
    /// Distinct messages with an Event of their own, then the combined one.
    entries: Vec<Entry>,
    seen: Option<Instant>,
}

type GroupKey = (String, String);

/// Which entry a write is for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    group: GroupKey,
    hash: Option<u64>,
}

/// What the aggregation lost, by reason, for the caller to count.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub expired: u64,
    pub evicted: u64,
}

/// The aggregation state: pure, on the tokio clock, tested without an API
/// server.
#[derive(Debug)]
pub struct Aggregator {
    groups: HashMap<GroupKey, Group>,
    hasher: RandomState,
}

/// One write, taken from the aggregator and handed back with its outcome.
#[derive(Debug)]
pub struct Job {
    slot: Slot,
    /// The count the write carries.
    count: u64,
    unwritten_since: Option<Instant>,
    pub(super) op: Op,
}

#[derive(Debug)]
pub(super) enum Op {
    Create(Box<K8sEvent>),
    Series { name: String, series: EventSeries },
}

/// How a write ended.
#[derive(Debug)]
pub enum Outcome {
    Written,
    /// The Event is gone (expired on the server): write a new one.
    Gone,
    /// The server refuses this body: its occurrences are dropped.
    Refused,
    /// Try again later.
    Retry,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self {
            groups: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// Counts one occurrence. Returns whether it was folded into another's
    /// Event (rather than opening one of its own).
    pub fn observe(&mut self, source: &str, e: &Event, now: Instant, drops: &mut Drops) -> bool {
        let reason = cut(&e.reason, REASON_LIMIT);
        let key = (source.to_owned(), reason.to_owned());
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            self.evict_oldest(drops);
        }
        let hash = self.hasher.hash_one(e.message.as_str());
        let group = self.groups.entry(key).or_default();
        group.seen = Some(now);
        let own = group.entries.iter().filter(|x| x.hash.is_some()).count();
        let index = match group.entries.iter().position(|x| x.hash == Some(hash)) {
            Some(i) => Some(i),
            None if own < SIMILAR_LIMIT => {
                let note = cut(&e.message, NOTE_LIMIT).to_owned();
                group
                    .entries
                    .insert(own, Entry::new(Some(hash), note, e, now));
                None
            }
            None => {
                let combined = |m: &str| cut(&format!("{COMBINED}{m}"), NOTE_LIMIT).to_owned();
                match group.entries.iter().position(|x| x.hash.is_none()) {
                    Some(i) => {
                        let c = &mut group.entries[i];
                        if !c.created {
                            // Not written yet: it will carry the latest message.
                            c.note = combined(&e.message);
                        }
                        Some(i)
                    }
                    None => {
                        let note = combined(&e.message);
                        group.entries.push(Entry::new(None, note, e, now));
                        Some(group.entries.len() - 1)
                    }
                }
            }
        };
        let folded = index.is_some_and(|i| group.entries[i].count > 0);
        let i = index.unwrap_or(own);
        group.entries[i].occur(e, now);
        folded
    }

    fn evict_oldest(&mut self, drops: &mut Drops) {
        let oldest = self
            .groups
            .iter()
            .filter(|(_, g)| !g.entries.iter().any(|x| x.in_flight))
            .min_by_key(|(_, g)| g.seen)
            .map(|(k, _)| k.clone());
        if let Some(g) = oldest.and_then(|k| self.groups.remove(&k)) {
            drops.evicted += g.entries.iter().map(Entry::unwritten).sum::<u64>();
        }
    }

    /// Drops occurrences unwritten for longer than the window, forgets
    /// entries and groups quiet that long.
    pub fn sweep(&mut self, now: Instant, drops: &mut Drops) {
        self.groups.retain(|_, g| {
            g.entries.retain_mut(|x| {
                if !x.in_flight && x.too_late(now) {
                    drops.expired += x.unwritten();
                    x.count = x.written;
                    x.unwritten_since = None;
                }
                x.in_flight
                    || x.unwritten() > 0
                    || now.duration_since(x.seen) < AGGREGATE_WINDOW && (x.created || x.count > 0)
            });
            !g.entries.is_empty()
        });
    }

    /// The earliest time some entry has a write due.
    pub fn next_due(&self) -> Option<Instant> {
        let now = Instant::now();
        self.groups
            .values()
            .flat_map(|g| g.entries.iter().filter_map(|x| x.due(now)))
            .min()
    }

    /// After a panic of the writer: no write is in flight any more; what
    /// those writes carried is unwritten again, as of now.
    pub fn recover(&mut self, now: Instant) {
        for x in self.groups.values_mut().flat_map(|g| g.entries.iter_mut()) {
            if std::mem::take(&mut x.in_flight) && x.unwritten() > 0 {
                x.unwritten_since.get_or_insert(now);
            }
        }
    }

    /// Groups and entries held (for tests and the memory benchmark).
    pub fn size(&self) -> (usize, usize) {
        let entries = self.groups.values().map(|g| g.entries.len()).sum();
        (self.groups.len(), entries)
    }

    /// The write due first by `now`, if any; its entry is in flight until
    /// [`complete`](Self::complete).
    pub fn next_job(
        &mut self,
        now: Instant,
        opts: &K8sOptions,
        regarding: &ObjectReference,
    ) -> Option<Job> {
        let (key, i) = self
            .groups
            .iter()
            .flat_map(|(k, g)| {
                g.entries
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, x)| Some((x.due(now)?, k, i)))
            })
            .filter(|(due, _, _)| *due <= now)
            .min_by_key(|(due, _, _)| *due)
            .map(|(_, k, i)| (k.clone(), i))?;
        let x = self.groups.get_mut(&key)?.entries.get_mut(i)?;
        x.in_flight = true;
        let series = (x.count >= 2).then(|| EventSeries {
            count: i32::try_from(x.count).unwrap_or(i32::MAX),
            last_observed_time: micro(x.last),
        });
        let name = x.name.get_or_insert_with(|| event_name(&opts.node)).clone();
        let op = match series {
            Some(series) if x.created => Op::Series { name, series },
            series => Op::Create(Box::new(new_event(
                opts, regarding, &key.1, &name, x, series,
            ))),
        };
        Some(Job {
            slot: Slot {
                group: key,
                hash: x.hash,
            },
            count: x.count,
            unwritten_since: x.unwritten_since.take(),
            op,
        })
    }

    /// Takes a job's outcome back. Returns the occurrences dropped because
    /// the server refused them.
    pub fn complete(&mut self, job: &Job, outcome: &Outcome, now: Instant) -> u64 {
        let Some(x) = self.groups.get_mut(&job.slot.group).and_then(|g| {
            g.entries
                .iter_mut()
                .find(|x| x.hash == job.slot.hash && x.in_flight)
        }) else {
            // Evicted meanwhile (its losses are counted there).
            return 0;
        };
        x.in_flight = false;
        let restore = |x: &mut Entry| {
            x.unwritten_since = match (job.unwritten_since, x.unwritten_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        };
        match outcome {
            Outcome::Written => {
                x.created = true;
                x.written = job.count;
                x.written_at = Some(now);
                0
            }
            Outcome::Gone => {
                // What the cluster never saw goes into a new Event.
                x.name = None;
                x.created = false;
                x.count -= x.written;
                x.written = 0;
                x.first = x.last;
                restore(x);
                0
            }
            Outcome::Refused => {
                let lost = job.count - x.written;
                x.count -= lost;
                lost
            }
            Outcome::Retry => {
                restore(x);
                0
            }
        }
    }
}

pub(super) fn micro(t: SystemTime) -> MicroTime {
    MicroTime(super::timestamp(t))
}

/// A new Event's name: the node's name and the time in nanoseconds, cut to
/// the 253 characters of a DNS subdomain.
fn event_name(node: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let suffix = format!(".{nanos:x}");
    let head = cut(node, NAME_LIMIT - suffix.len()).trim_end_matches(['.', '-']);
    format!("{head}{suffix}")
}

fn new_event(
    opts: &K8sOptions,
    regarding: &ObjectReference,
    reason: &str,
    name: &str,
    x: &Entry,
    series: Option<EventSeries>,
) -> K8sEvent {
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(opts.event_namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(micro(x.first)),
        action: Some("Detected".into()),
        reason: Some(reason.to_owned()),
        note: Some(x.note.clone()),
        type_: Some(
            match x.severity {
                Severity::Warn => "Warning",
                Severity::Info => "Normal",
            }
            .into(),
        ),
        regarding: Some(regarding.clone()),
        reporting_controller: Some("npd-ext".into()),
        reporting_instance: Some(cut(&opts.node, 128).to_owned()),
        series,
        ..K8sEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, message: &str) -> Event {
        Event {
            severity: Severity::Warn,
            timestamp: SystemTime::now(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn opts() -> K8sOptions {
        K8sOptions {
            node: "n1".into(),
            update_conditions: true,
            write_events: true,
            heartbeat: Duration::from_secs(300),
            wait_timeout: Duration::from_secs(300),
            wait_interval: Duration::from_secs(5),
            qps: 500.0,
            burst: 500,
            event_namespace: "default".into(),
            taints: None,
        }
    }

    /// Takes and completes every job due by `now` as written; returns the
    /// bodies.
    fn write_all(agg: &mut Aggregator, now: Instant) -> Vec<Op> {
        let mut ops = Vec::new();
        let regarding = ObjectReference::default();
        while let Some(job) = agg.next_job(now, &opts(), &regarding) {
            agg.complete(&job, &Outcome::Written, now);
            ops.push(job.op);
        }
        ops
    }

    fn count_of(op: &Op) -> i32 {
        match op {
            Op::Create(b) => b.series.as_ref().map_or(1, |s| s.count),
            Op::Series { series, .. } => series.count,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn similar_events_fold_into_one_combined_event_with_the_whole_count() {
        let mut agg = Aggregator::new();
        let mut drops = Drops::default();
        let t0 = Instant::now();
        let mut folded = 0;
        for i in 0..200 {
            let e = event("OOMKilling", &format!("Killed process {i} (python)"));
            folded += u32::from(agg.observe("kernel-monitor", &e, t0, &mut drops));
        }
        assert_eq!(
            folded,
            200 - 11,
            "10 own Events and the combined one's first"
        );
        let ops = write_all(&mut agg, t0);
        assert_eq!(ops.len(), SIMILAR_LIMIT + 1);
        let total: i32 = ops.iter().map(count_of).sum();
        assert_eq!(total, 200);
        let Op::Create(combined) = &ops[ops.len() - 1] else {
            panic!("a create")
        };
        assert_eq!(
            combined.note.as_deref(),
            Some("(combined from similar events): Killed process 199 (python)")
        );
        assert_eq!(combined.series.as_ref().map(|s| s.count), Some(190));
        // More of them: one series patch per FLUSH_EVERY, not before.
        for i in 200..250 {
            let e = event("OOMKilling", &format!("Killed process {i} (python)"));
            agg.observe("kernel-monitor", &e, t0, &mut drops);
        }
        assert!(write_all(&mut agg, t0 + FLUSH_EVERY / 2).is_empty());
        let ops = write_all(&mut agg, t0 + FLUSH_EVERY);
        assert!(
            matches!(&ops[..], [Op::Series { series, .. }] if series.count == 240),
            "{ops:?}"
        );
        assert_eq!(drops, Drops::default());
    }

    #[tokio::test(start_paused = true)]
    async fn unwritten_occurrences_expire_counted_and_are_never_written_late() {
        let mut agg = Aggregator::new();
        let mut drops = Drops::default();
        let t0 = Instant::now();
        agg.observe("m", &event("R", "x"), t0, &mut drops);
        agg.observe("m", &event("R", "x"), t0, &mut drops);
        // The API server is away for the whole window.
        let job = agg
            .next_job(t0, &opts(), &ObjectReference::default())
            .expect("due");
        agg.complete(&job, &Outcome::Retry, t0);
        agg.sweep(t0 + AGGREGATE_WINDOW, &mut drops);
        assert_eq!(drops.expired, 2);
        assert!(write_all(&mut agg, t0 + AGGREGATE_WINDOW).is_empty());
        assert_eq!(agg.size(), (0, 0), "nothing is kept for it");
    }

    #[tokio::test(start_paused = true)]
    async fn state_is_bounded_and_the_oldest_group_goes_first() {
        let mut agg = Aggregator::new();
        let mut drops = Drops::default();
        let t0 = Instant::now();
        for i in 0..(MAX_GROUPS + 10) {
            let at = t0 + Duration::from_millis(i as u64);
            for j in 0..50 {
                agg.observe(
                    "m",
                    &event(&format!("R{i}"), &format!("m{j}")),
                    at,
                    &mut drops,
                );
            }
        }
        assert_eq!(agg.size(), (MAX_GROUPS, MAX_GROUPS * (SIMILAR_LIMIT + 1)));
        assert_eq!(drops.evicted, 10 * 50, "the 10 oldest groups, unwritten");
        assert!(!agg.groups.contains_key(&("m".into(), "R0".into())));
        // Written and quiet for the window: forgotten.
        write_all(&mut agg, t0 + Duration::from_secs(1));
        agg.sweep(t0 + AGGREGATE_WINDOW + Duration::from_secs(1), &mut drops);
        assert_eq!(agg.size(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_event_is_written_anew_with_what_the_cluster_did_not_see() {
        let mut agg = Aggregator::new();
        let mut drops = Drops::default();
        let t0 = Instant::now();
        agg.observe("m", &event("R", "x"), t0, &mut drops);
        assert_eq!(write_all(&mut agg, t0).len(), 1);
        for _ in 0..3 {
            agg.observe("m", &event("R", "x"), t0, &mut drops);
        }
        let at = t0 + FLUSH_EVERY;
        let job = agg
            .next_job(at, &opts(), &ObjectReference::default())
            .expect("due");
        assert!(matches!(&job.op, Op::Series { series, .. } if series.count == 4));
        agg.complete(&job, &Outcome::Gone, at);
        let ops = write_all(&mut agg, at);
        assert!(
            matches!(&ops[..], [Op::Create(b)] if b.series.as_ref().map(|s| s.count) == Some(3)
                && b.note.as_deref() == Some("x")),
            "{ops:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_create_keeps_its_name_and_nothing_is_sent_too_late_to_land_in_time() {
        let mut agg = Aggregator::new();
        let mut drops = Drops::default();
        let t0 = Instant::now();
        agg.observe("m", &event("R", "x"), t0, &mut drops);
        let regarding = ObjectReference::default();
        let first = agg.next_job(t0, &opts(), &regarding).expect("due");
        agg.complete(&first, &Outcome::Retry, t0);
        let again = agg.next_job(t0, &opts(), &regarding).expect("due");
        let name = |j: &Job| match &j.op {
            Op::Create(b) => b.metadata.name.clone(),
            Op::Series { .. } => None,
        };
        assert_eq!(name(&first), name(&again), "a retry is the same Event");
        agg.complete(&again, &Outcome::Retry, t0);
        // A call may take CALL_TIMEOUT: none starts that late in the window.
        tokio::time::advance(AGGREGATE_WINDOW - CALL_TIMEOUT).await;
        let late = Instant::now();
        assert!(agg.next_due().is_none());
        assert!(agg.next_job(late, &opts(), &regarding).is_none());
        agg.sweep(late, &mut drops);
        assert_eq!(drops.expired, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_panic_of_the_writer_what_was_in_flight_is_unwritten_again() {
        let mut agg = Aggregator::new();
        let mut drops = Drops::default();
        let t0 = Instant::now();
        agg.observe("m", &event("R", "x"), t0, &mut drops);
        let job = agg
            .next_job(t0, &opts(), &ObjectReference::default())
            .expect("due");
        drop(job); // the run that held it panicked
        assert!(agg.next_due().is_none(), "in flight");
        agg.recover(t0);
        assert_eq!(write_all(&mut agg, t0).len(), 1);
    }

    #[test]
    fn names_are_dns_subdomains_of_at_most_253() {
        let long = format!("{}.example", "a".repeat(250));
        let n = event_name(&long);
        assert!(n.len() <= 253, "{}", n.len());
        assert!(n.starts_with("aaa") && !n.contains(".."));
        assert!(event_name("gpu-node-17").starts_with("gpu-node-17."));
    }
}

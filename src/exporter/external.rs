//! External exporters (the proto's `ExternalExporter` service): every
//! status a monitor reports goes to a plugin over its Unix socket, with a
//! per-exporter sequence number (a gap tells the plugin what it missed), the
//! node name, and the monitor's source in `context`.
//!
//! Each exporter has a bounded queue: while its plugin is slow or away the
//! oldest statuses are dropped first (the newest say most about the node)
//! and counted in `npd_ext_external_exporter_dropped_total`. A failed call is
//! retried with backoff; a status the plugin refuses (`success: false`)
//! [`MAX_REFUSALS`] times is given up, counted in
//! `npd_ext_external_exporter_given_up_total`, so it does not hold up the
//! statuses behind it. The detector never waits for an exporter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounterVec, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::exporter::ExternalExporterConfig;
use crate::problem::Status;
use crate::rpc::client::{describe, lazy_channel};
use crate::rpc::pb;
use crate::rpc::pb::external_exporter_client::ExternalExporterClient;

/// Longest pause between attempts to reach a plugin that fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The exporters' counters, by exporter name.
#[derive(Clone, Debug)]
pub struct ExporterMetrics {
    pub sent: IntCounterVec,
    pub dropped: IntCounterVec,
    pub failed: IntCounterVec,
    pub given_up: IntCounterVec,
}

impl ExporterMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = super::prometheus::counter_vec(name, help, &["exporter"]);
            super::prometheus::register(registry, &c);
            c
        };
        Self {
            sent: counter(
                "npd_ext_external_exporter_sent_total",
                "Statuses an external exporter plugin accepted.",
            ),
            dropped: counter(
                "npd_ext_external_exporter_dropped_total",
                "Statuses dropped because an external exporter's queue was full.",
            ),
            failed: counter(
                "npd_ext_external_exporter_failed_calls_total",
                "ExportProblems calls that failed (and were retried).",
            ),
            given_up: counter(
                "npd_ext_external_exporter_given_up_total",
                "Statuses given up after the plugin refused them (success: false) MAX_REFUSALS times.",
            ),
        }
    }
}

/// A bounded queue of statuses for one exporter; the fan-in pushes, the
/// exporter's task takes.
#[derive(Debug)]
pub struct Queue {
    name: String,
    items: Mutex<VecDeque<(i64, String, Status)>>,
    capacity: usize,
    next_seq: Mutex<i64>,
    ready: Notify,
    metrics: ExporterMetrics,
}

impl Queue {
    pub fn new(name: &str, capacity: usize, metrics: ExporterMetrics) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            items: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            next_seq: Mutex::new(1),
            ready: Notify::new(),
            metrics,
        })
    }

    /// Queues a status from the monitor `source`; never blocks.
    pub fn push(&self, source: &str, status: &Status) {
        let seq = {
            let mut n = self.next_seq.lock().unwrap_or_else(PoisonError::into_inner);
            let s = *n;
            *n += 1;
            s
        };
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        if items.len() >= self.capacity {
            items.pop_front();
            self.metrics
                .dropped
                .with_label_values(&[self.name.as_str()])
                .inc();
        }
        items.push_back((seq, source.to_owned(), status.clone()));
        drop(items);
        self.ready.notify_one();
    }

    fn front(&self) -> Option<(i64, String, Status)> {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned()
    }

    /// Removes the front item if it is still `seq` (it may have been dropped).
    fn done(&self, seq: i64) {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        if items.front().is_some_and(|(s, ..)| *s == seq) {
            items.pop_front();
        }
    }
}

/// Attempts at one status the plugin refuses (`success: false`) before it
/// is given up, counted in `npd_ext_external_exporter_given_up_total`.
pub const MAX_REFUSALS: u32 = 3;

/// How often the loop turns at the least while the queue is empty.
const IDLE_TURN: Duration = Duration::from_secs(30);

/// Sends the queue's statuses to the plugin until `token` is cancelled.
pub async fn run(
    cfg: ExternalExporterConfig,
    node: String,
    queue: Arc<Queue>,
    pulse: crate::liveness::Pulse,
    token: CancellationToken,
) {
    let mut client = ExternalExporterClient::new(lazy_channel(&cfg.socket_path));
    let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF, 2.0);
    // The status at the front and how often the plugin refused it.
    let mut refusals: (i64, u32) = (0, 0);
    tracing::info!(exporter = %cfg.name, socket = %cfg.socket_path.display(), "external exporter started");
    loop {
        pulse.beat(IDLE_TURN.max(MAX_BACKOFF) + cfg.timeout * 2);
        let Some((seq, source, status)) = queue.front() else {
            tokio::select! {
                () = queue.ready.notified() => {}
                () = tokio::time::sleep(IDLE_TURN) => {}
                () = token.cancelled() => return,
            }
            continue;
        };
        let mut request = tonic::Request::new(pb::ExportRequest {
            status: Some(pb::Status::from(&status)),
            sequence: seq,
            node_name: node.clone(),
            context: [("source".to_owned(), source)].into_iter().collect(),
        });
        request.set_timeout(cfg.timeout);
        let call = tokio::time::timeout(cfg.timeout, client.export_problems(request));
        let outcome = tokio::select! {
            r = call => r,
            () = token.cancelled() => return,
        };
        let mut refused = false;
        let error = match outcome {
            Ok(Ok(r)) if r.get_ref().success => None,
            Ok(Ok(r)) => {
                refused = true;
                Some(format!("the plugin refused it: {}", r.get_ref().error))
            }
            Ok(Err(e)) => Some(describe(&e)),
            Err(_) => Some(format!("no answer within {:?}", cfg.timeout)),
        };
        match error {
            None => {
                queue
                    .metrics
                    .sent
                    .with_label_values(&[cfg.name.as_str()])
                    .inc();
                queue.done(seq);
                if backoff.failures() > 0 {
                    tracing::info!(exporter = %cfg.name, "external exporter answers again");
                }
                backoff.reset();
            }
            Some(why) => {
                queue
                    .metrics
                    .failed
                    .with_label_values(&[cfg.name.as_str()])
                    .inc();
                if refused {
                    refusals = if refusals.0 == seq {
                        (seq, refusals.1 + 1)
                    } else {
                        (seq, 1)
                    };
                    if refusals.1 >= MAX_REFUSALS {
                        // Sending it again will not change the plugin's mind;
                        // the statuses behind it must not wait for ever.
                        tracing::error!(exporter = %cfg.name, sequence = seq, "the plugin refused a status {MAX_REFUSALS} times; giving it up: {why}");
                        queue
                            .metrics
                            .given_up
                            .with_label_values(&[cfg.name.as_str()])
                            .inc();
                        queue.done(seq);
                        backoff.reset();
                        continue;
                    }
                }
                let wait = backoff.next_delay();
                let failures = backoff.failures();
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(exporter = %cfg.name, failures, "cannot export a status: {why}; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = token.cancelled() => return,
                }
            }
        }
    }
}

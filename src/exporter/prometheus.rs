//! NPD's problem metrics on `--prometheus-address`:`--prometheus-port`
//! (`/metrics`, Prometheus text format, a private registry):
//!
//! - `problem_counter{reason}`: how many times a problem was seen. It counts
//!   every `warn` event: a temporary rule's, and a condition turning `True`
//!   (info events, conditions clearing, are not problems). Every rule's
//!   reason starts at 0 so a rate works from the first scrape.
//! - `problem_gauge{type,reason}`: 1 while condition `type` is `True` for
//!   `reason`, else 0. Unlike NPD it returns to 0 when the condition clears.
//!
//! Monitors whose config says `"metricsReporting": false` are left out.
//!
//! Ours: `npd_ext_plugin_status_trimmed_total{monitor,what}` counts what
//! external plugins sent over the limits (`rpc::Limits`), by kind.
//! The detector's fan-in calls [`Metrics::observe`] for everything it
//! publishes, in order, so no update is lost to a lagging subscriber.

use std::collections::{HashMap, HashSet};

use hyper::{Method, StatusCode};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::http::{serve_with, text};
use crate::conditions::Published;
use crate::problem::{ConditionStatus, Severity};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    counter: IntCounterVec,
    gauge: IntGaugeVec,
    trimmed: IntCounterVec,
    /// Sources whose config turned metrics off.
    quiet: HashSet<String>,
    /// The reason each condition type is `True` for now.
    true_for: HashMap<String, String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = counter_vec(
            "problem_counter",
            "Number of times a specific type of problem have occurred.",
            &["reason"],
        );
        let gauge = gauge_vec(
            "problem_gauge",
            "Whether a specific type of problem is affecting the node or not.",
            &["type", "reason"],
        );
        let trimmed = counter_vec(
            "npd_ext_plugin_status_trimmed_total",
            "Parts of external plugins' statuses over the limits: dropped, cut or replaced",
            &["monitor", "what"],
        );
        register(&registry, &counter);
        register(&registry, &gauge);
        register(&registry, &trimmed);
        Self {
            registry,
            counter,
            gauge,
            trimmed,
            quiet: HashSet::new(),
            true_for: HashMap::new(),
        }
    }

    /// A monitor's rules: their reasons start at 0, and so does each
    /// permanent rule's `(type, reason)`.
    pub fn declare(
        &mut self,
        source: &str,
        reporting: bool,
        reasons: impl IntoIterator<Item = String>,
        permanent: impl IntoIterator<Item = (String, String)>,
    ) {
        if !reporting {
            self.quiet.insert(source.to_owned());
            return;
        }
        for r in reasons {
            self.counter.with_label_values(&[r.as_str()]);
        }
        for (t, r) in permanent {
            self.gauge.with_label_values(&[t.as_str(), r.as_str()]);
        }
    }

    /// Counts and gauges what the detector just published.
    pub fn observe(&mut self, p: &Published) {
        match p {
            Published::Event { source, event } => {
                if event.severity == Severity::Warn && !self.quiet.contains(source) {
                    self.counter
                        .with_label_values(&[event.reason.as_str()])
                        .inc();
                }
            }
            Published::Condition { condition: c, .. } => {
                if self.quiet.contains(&c.source) {
                    return;
                }
                let now_true = (c.status == ConditionStatus::True).then_some(&c.reason);
                if let Some(old) = self.true_for.get(&c.type_)
                    && Some(old) != now_true
                {
                    self.gauge
                        .with_label_values(&[c.type_.as_str(), old.as_str()])
                        .set(0);
                }
                match now_true {
                    Some(reason) => {
                        self.gauge
                            .with_label_values(&[c.type_.as_str(), reason.as_str()])
                            .set(1);
                        self.true_for.insert(c.type_.clone(), reason.clone());
                    }
                    None => {
                        self.true_for.remove(&c.type_);
                    }
                }
            }
        }
    }

    /// Counts what a plugin's status had over the limits.
    pub fn trimmed(&self, monitor: &str, t: &crate::rpc::Trimmed) {
        for (what, n) in [
            ("conditions_dropped", t.conditions_dropped),
            ("events_dropped", t.events_dropped),
            ("strings_cut", t.strings_cut),
            ("unknown_enums", t.unknown_enums),
            ("bad_times", t.bad_times),
        ] {
            if n > 0 {
                self.trimmed
                    .with_label_values(&[monitor, what])
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
    }

    /// The registry, to serve (clones share the metrics).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }
}

/// Whether a family name is one of the detector's own (NPD's problem
/// metrics, and everything under `npd_ext_`).
pub fn is_reserved(name: &str) -> bool {
    matches!(name, "problem_counter" | "problem_gauge") || name.starts_with("npd_ext_")
}

/// A counter vector under a literal name: its definition cannot fail.
#[allow(clippy::expect_used)] // literal, valid names and labels; every one is built by a test
pub(crate) fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric definition")
}

/// A gauge vector under a literal name: its definition cannot fail.
#[allow(clippy::expect_used)] // literal, valid names and labels; every one is built by a test
pub(crate) fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric definition")
}

/// Adds a collector to the registry; a clash (a bug) is logged, and the
/// metric still counts, unserved.
pub(crate) fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: &C,
) {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!("cannot register a metric: {e}");
    }
}

/// The metrics page, as Prometheus scrapes it.
pub fn render(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Serves `/metrics` until `token` is cancelled.
pub async fn serve(
    listener: std::sync::Arc<TcpListener>,
    registry: Registry,
    pulse: Option<crate::liveness::Pulse>,
    token: CancellationToken,
) {
    serve_with(
        listener,
        move |method: &Method, path: &str| {
            if method != Method::GET && method != Method::HEAD {
                return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
            }
            if path != "/metrics" {
                return text(StatusCode::NOT_FOUND, "not found; try /metrics\n".into());
            }
            match render(&registry) {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        },
        pulse,
        token,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::conditions::NodeCondition;
    use crate::problem::Event;

    fn cond(status: ConditionStatus, reason: &str, source: &str) -> Published {
        let now = SystemTime::now();
        Published::Condition {
            condition: NodeCondition {
                type_: "KernelDeadlock".into(),
                status,
                transition: now,
                last_update: now,
                reason: reason.into(),
                message: String::new(),
                source: source.into(),
            },
            previous: None,
        }
    }

    fn event(severity: Severity, reason: &str, source: &str) -> Published {
        Published::Event {
            source: source.into(),
            event: Event {
                severity,
                timestamp: SystemTime::now(),
                reason: reason.into(),
                message: String::new(),
            },
        }
    }

    #[test]
    fn npd_semantics_and_the_gauge_clears() {
        let mut m = Metrics::new();
        m.declare(
            "kernel-monitor",
            true,
            ["OOMKilling".to_owned(), "DockerHung".to_owned()],
            [("KernelDeadlock".to_owned(), "DockerHung".to_owned())],
        );
        m.declare("quiet", false, ["Hidden".to_owned()], []);
        let page = render(&m.registry()).expect("renders");
        assert!(
            page.contains("problem_counter{reason=\"OOMKilling\"} 0"),
            "{page}"
        );
        assert!(
            page.contains("problem_gauge{reason=\"DockerHung\",type=\"KernelDeadlock\"} 0"),
            "{page}"
        );
        assert!(!page.contains("Hidden"), "{page}");

        m.observe(&event(Severity::Warn, "OOMKilling", "kernel-monitor"));
        m.observe(&event(Severity::Warn, "OOMKilling", "kernel-monitor"));
        m.observe(&event(Severity::Info, "OOMKilling", "kernel-monitor"));
        m.observe(&event(Severity::Warn, "Hidden", "quiet"));
        m.observe(&cond(ConditionStatus::True, "DockerHung", "kernel-monitor"));
        let page = render(&m.registry()).expect("renders");
        assert!(
            page.contains("problem_counter{reason=\"OOMKilling\"} 2"),
            "{page}"
        );
        assert!(!page.contains("Hidden"), "{page}");
        assert!(
            page.contains("problem_gauge{reason=\"DockerHung\",type=\"KernelDeadlock\"} 1"),
            "{page}"
        );
        // Another reason: the old series goes to 0, the new one to 1.
        m.observe(&cond(
            ConditionStatus::True,
            "AufsUmountHung",
            "kernel-monitor",
        ));
        let page = render(&m.registry()).expect("renders");
        assert!(
            page.contains("reason=\"DockerHung\",type=\"KernelDeadlock\"} 0"),
            "{page}"
        );
        assert!(
            page.contains("reason=\"AufsUmountHung\",type=\"KernelDeadlock\"} 1"),
            "{page}"
        );
        // Cleared: back to 0.
        m.observe(&cond(
            ConditionStatus::False,
            "KernelHasNoDeadlock",
            "kernel-monitor",
        ));
        let page = render(&m.registry()).expect("renders");
        assert!(
            page.contains("reason=\"AufsUmountHung\",type=\"KernelDeadlock\"} 0"),
            "{page}"
        );
        assert!(!page.contains("KernelHasNoDeadlock"), "{page}");
    }
}

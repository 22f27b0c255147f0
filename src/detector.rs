//! The detector core: starts monitors, fans their reports into the condition
//! manager, and hands what changed to the exporters. `cmd::detector` and
//! `cmd::demo` compose it; tests drive it in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};

use crate::conditions::{ConditionManager, NodeCondition, OwnershipError, Published};
use crate::config::ExternalMonitorConfig;
use crate::config::custom::CustomPluginConfig;
use crate::config::syslog::{RuleKind, SyslogMonitorConfig};
use crate::exporter;
use crate::exporter::prometheus::Metrics;
use crate::liveness::Liveness;
use crate::monitor::{self, Report, Update};
use crate::shutdown::Shutdown;
use crate::supervisor::Supervisor;

#[derive(Debug, Default)]
pub struct DetectorOptions {
    pub external: Vec<ExternalMonitorConfig>,
    pub syslog: Vec<SyslogMonitorConfig>,
    pub custom: Vec<CustomPluginConfig>,
    /// Where `/metrics` is served; `None` disables it.
    pub metrics: Option<std::net::TcpListener>,
    /// Where `/healthz` and `/conditions` are served; `None` disables the server.
    pub http: Option<std::net::TcpListener>,
    /// Print every transition and event as one log line.
    pub log_exporter: bool,
    /// Write conditions and events to the Kubernetes API.
    pub k8s: Option<exporter::k8s::K8sExporter>,
    /// Plugins that receive every status (`--config.external-exporter`).
    pub exporters: Vec<crate::config::exporter::ExternalExporterConfig>,
    /// The node's name, for exporters.
    pub node: String,
    /// System stats monitors: metrics only, on `metrics`' registry.
    pub stats: Vec<crate::config::stats::SystemStatsConfig>,
    /// Where the stats monitors find the node's `/proc` and `/sys`
    /// (empty: `/`).
    pub stats_root: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.join("; "))]
    Ownership(Vec<String>),
    #[error("cannot serve HTTP")]
    Http(#[source] std::io::Error),
}

/// A running detector.
#[derive(Debug)]
pub struct Detector {
    pub http_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
    published: broadcast::Sender<Published>,
    pub liveness: Liveness,
    supervisor: Supervisor,
}

impl Detector {
    /// The node's current conditions, updated after every change.
    pub fn conditions(&self) -> watch::Receiver<Arc<Vec<NodeCondition>>> {
        self.conditions.clone()
    }

    /// Every transition and event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.published.subscribe()
    }

    /// The supervisor every long-lived task of this detector runs under.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }
}

/// Starts every monitor and exporter on `shutdown`'s tracker.
pub fn start(options: DetectorOptions, shutdown: &Shutdown) -> Result<Detector, StartError> {
    let mut manager = ConditionManager::new();
    let mut metrics = Metrics::new();
    let mut problems = Vec::new();
    // Each registered monitor's file, by id, to name both sides of a conflict.
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    let mut register =
        |file: &std::path::Path, source: &str, decls: &[crate::config::ConditionDecl]| {
            let types: Vec<String> = decls.iter().map(|c| c.type_.clone()).collect();
            let (id, errors) = manager.register(source, &types);
            files.push(file.to_path_buf());
            problems.extend(errors.iter().map(|e| {
                let first = match e {
                    OwnershipError::Conflict { type_, .. } => {
                        manager.owner(type_).and_then(|o| files.get(o))
                    }
                    OwnershipError::KubeletOwned { .. } => None,
                };
                match first {
                    Some(first) => format!(
                        "{}: {e} (first declared in {})",
                        file.display(),
                        first.display()
                    ),
                    None => format!("{}: {e}", file.display()),
                }
            }));
            id
        };
    let external_ids: Vec<_> = options
        .external
        .iter()
        .map(|c| register(&c.file, &c.source, &c.conditions))
        .collect();
    let syslog_ids: Vec<_> = options
        .syslog
        .iter()
        .map(|c| register(&c.file, &c.source, &c.conditions))
        .collect();
    let custom_ids: Vec<_> = options
        .custom
        .iter()
        .map(|c| register(&c.file, &c.source, &c.conditions))
        .collect();
    if !problems.is_empty() {
        return Err(StartError::Ownership(problems));
    }
    // How often each monitor confirms its conditions when all is well
    // (external monitors keep their own rule: errorThreshold, then
    // MonitorUnreachable).
    for &id in &syslog_ids {
        manager.expect_every(id, monitor::syslog::CONFIRM_PERIOD);
    }
    for (c, &id) in options.custom.iter().zip(&custom_ids) {
        manager.expect_every(id, monitor::custom::confirm_period(c));
    }
    for (source, reporting, rules) in options
        .syslog
        .iter()
        .map(|c| {
            (
                &c.source,
                c.metrics_reporting,
                rule_heads(c.rules.iter().map(|r| (r.kind, &r.condition, &r.reason))),
            )
        })
        .chain(options.custom.iter().map(|c| {
            (
                &c.source,
                c.metrics_reporting,
                rule_heads(c.rules.iter().map(|r| (r.kind, &r.condition, &r.reason))),
            )
        }))
    {
        let (reasons, permanent) = rules;
        metrics.declare(source, reporting, reasons, permanent);
    }

    let liveness = Liveness::new();
    let stats_registry = metrics.registry();
    let sup = Supervisor::new(shutdown, &liveness).with_metrics(&metrics.registry());
    let token = shutdown.token().clone();
    let (report_tx, report_rx) = mpsc::channel::<Report>(REPORTS_CAPACITY);
    let (published_tx, _) = broadcast::channel(PUBLISHED_CAPACITY);
    let (conditions_tx, conditions_rx) = watch::channel(Arc::new(Vec::new()));

    let http_addr = match options.http {
        Some(listener) => {
            listener.set_nonblocking(true).map_err(StartError::Http)?;
            let addr = listener.local_addr().map_err(StartError::Http)?;
            let listener =
                Arc::new(tokio::net::TcpListener::from_std(listener).map_err(StartError::Http)?);
            let state = exporter::http::State {
                conditions: conditions_rx.clone(),
                liveness: liveness.clone(),
            };
            let token = token.clone();
            sup.spawn(
                "http server",
                Some(Duration::from_secs(150)),
                move |pulse| {
                    exporter::http::serve(
                        Arc::clone(&listener),
                        state.clone(),
                        Some(pulse),
                        token.child_token(),
                    )
                },
            );
            tracing::info!(%addr, "serving /healthz and /conditions");
            Some(addr)
        }
        None => None,
    };
    let metrics_addr = match options.metrics {
        Some(listener) => {
            listener.set_nonblocking(true).map_err(StartError::Http)?;
            let addr = listener.local_addr().map_err(StartError::Http)?;
            let listener =
                Arc::new(tokio::net::TcpListener::from_std(listener).map_err(StartError::Http)?);
            let registry = metrics.registry();
            let token = token.clone();
            sup.spawn(
                "metrics server",
                Some(Duration::from_secs(150)),
                move |pulse| {
                    exporter::prometheus::serve(
                        Arc::clone(&listener),
                        registry.clone(),
                        Some(pulse),
                        token.child_token(),
                    )
                },
            );
            tracing::info!(%addr, "serving /metrics");
            Some(addr)
        }
        None => None,
    };
    if let Some(exporter::k8s::K8sExporter {
        client,
        options: k8s,
    }) = options.k8s
    {
        let k8s_metrics = exporter::k8s::K8sMetrics::register(&metrics.registry());
        let writers =
            exporter::k8s::Writers::new(client, k8s, k8s_metrics, published_tx.subscribe());
        // Each writer promises its first beat within a minute and a half
        // (a turn of its loop and a bounded API call).
        let first = Some(Duration::from_secs(90));
        if writers.options().write_events {
            let (w, token) = (writers.clone(), token.clone());
            sup.spawn("kubernetes events", first, move |pulse| {
                w.events(pulse, token.child_token())
            });
        }
        if let Some(policy) = &writers.options().taints {
            let m = exporter::k8s::taints::TaintMetrics::register(&metrics.registry(), policy);
            let (w, conditions, publish, token) = (
                writers.clone(),
                conditions_rx.clone(),
                published_tx.clone(),
                token.clone(),
            );
            sup.spawn("kubernetes taints", first, move |pulse| {
                w.taints(
                    conditions.clone(),
                    publish.clone(),
                    m.clone(),
                    pulse,
                    token.child_token(),
                )
            });
        }
        let (conditions, token) = (conditions_rx.clone(), token.clone());
        sup.spawn("kubernetes conditions", first, move |pulse| {
            writers.conditions(conditions.clone(), pulse, token.child_token())
        });
    }
    let mut queues = Vec::new();
    if !options.exporters.is_empty() {
        let m = exporter::external::ExporterMetrics::register(&metrics.registry());
        for cfg in options.exporters {
            let q = exporter::external::Queue::new(&cfg.name, cfg.queue_size, m.clone());
            let (node, queue, token) = (options.node.clone(), q.clone(), token.clone());
            let first = Some(Duration::from_secs(90));
            sup.spawn(
                format!("external exporter {}", cfg.name),
                first,
                move |pulse| {
                    exporter::external::run(
                        cfg.clone(),
                        node.clone(),
                        queue.clone(),
                        pulse,
                        token.child_token(),
                    )
                },
            );
            queues.push(q);
        }
    }
    if options.log_exporter {
        let (published, token) = (published_tx.clone(), token.clone());
        sup.spawn(
            "log exporter",
            Some(Duration::from_secs(90)),
            move |pulse| exporter::log::run(published.subscribe(), pulse, token.child_token()),
        );
    }

    // The fan-in's state outlives a panicked run: the next one takes it
    // over as it was.
    let state = Arc::new(tokio::sync::Mutex::new(FanIn {
        manager,
        rx: report_rx,
        out: Outputs {
            metrics,
            exporters: queues,
            published: published_tx.clone(),
            conditions: conditions_tx,
        },
    }));
    let fan_in_token = token.clone();
    sup.spawn("fan-in", Some(FAN_IN_BEAT * 2), move |pulse| {
        let state = Arc::clone(&state);
        let token = fan_in_token.child_token();
        async move { fan_in(&mut *state.lock_owned().await, pulse, token).await }
    });
    // Each monitor starts again from its configuration after a panic; one
    // that panics or returns has its conditions Unknown until it reports.
    macro_rules! monitors {
        ($configs:expr, $ids:expr, $kind:literal, $run:path, $first:expr) => {
            for (cfg, id) in $configs.into_iter().zip($ids) {
                let (tx, token) = (report_tx.clone(), token.clone());
                let first = $first(&cfg);
                let down = report_tx.clone();
                sup.spawn_with(
                    format!(concat!($kind, " {}"), cfg.source),
                    Some(first),
                    move |pulse| {
                        let (cfg, tx, token) = (cfg.clone(), tx.clone(), token.child_token());
                        async move {
                            $run(id, cfg, tx.clone(), pulse, token.clone()).await;
                            if !token.is_cancelled() {
                                let update = Update::down(
                                    monitor::REASON_MONITOR_STOPPED,
                                    "the monitor stopped: its task returned",
                                );
                                let _ = tx.send(Report { monitor: id, update }).await;
                            }
                        }
                    },
                    move |message| {
                        let down = down.clone();
                        async move {
                            let update = Update::down(
                                monitor::REASON_MONITOR_RESTARTING,
                                format!("the monitor stopped: its task panicked ({message}) and restarts"),
                            );
                            let _ = down.send(Report { monitor: id, update }).await;
                        }
                    },
                );
            }
        };
    }
    monitors!(
        options.syslog,
        syslog_ids,
        "system-log-monitor",
        monitor::syslog::run,
        |_: &SyslogMonitorConfig| FAN_IN_BEAT * 2
    );
    monitors!(
        options.custom,
        custom_ids,
        "custom-plugin-monitor",
        monitor::custom::run,
        |_: &CustomPluginConfig| FAN_IN_BEAT * 2
    );
    monitors!(
        options.external,
        external_ids,
        "external-monitor",
        monitor::external::run,
        |c: &ExternalMonitorConfig| c.timeout * 2 + FAN_IN_BEAT
    );
    start_stats(
        &sup,
        &stats_registry,
        options.stats,
        &options.stats_root,
        &token,
    );
    Ok(Detector {
        http_addr,
        metrics_addr,
        conditions: conditions_rx,
        published: published_tx,
        liveness,
        supervisor: sup,
    })
}

/// Each system stats monitor: its collector on the metrics registry, its
/// collection loop under the supervisor (restarted from its config after a
/// panic). A config whose `/proc` is missing is logged and left out.
fn start_stats(
    sup: &Supervisor,
    registry: &prometheus::Registry,
    configs: Vec<crate::config::stats::SystemStatsConfig>,
    root: &std::path::Path,
    token: &tokio_util::sync::CancellationToken,
) {
    let root = if root.as_os_str().is_empty() {
        std::path::Path::new("/")
    } else {
        root
    };
    for cfg in configs {
        let latest = match monitor::stats::export::Latest::new(&cfg) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(config = %cfg.file.display(), "cannot export the system stats metrics: {e}");
                continue;
            }
        };
        if let Err(e) = registry.register(latest.collector()) {
            tracing::error!(config = %cfg.file.display(), "cannot register the system stats metrics: {e}");
            continue;
        }
        if let Err(e) = monitor::stats::Monitor::new(cfg.clone(), root) {
            tracing::error!("system stats monitor not started: {e}");
            continue;
        }
        tracing::info!(
            config = %cfg.file.display(),
            metrics = cfg.metrics.len(),
            interval = %crate::config::duration::format_go(cfg.invoke_interval),
            "system stats monitor started"
        );
        let (root, token) = (root.to_path_buf(), token.clone());
        let first = cfg.invoke_interval + Duration::from_secs(60);
        sup.spawn(
            format!("system-stats-monitor {}", cfg.file.display()),
            Some(first),
            move |pulse| {
                let (latest, token) = (Arc::clone(&latest), token.child_token());
                let monitor = monitor::stats::Monitor::new(cfg.clone(), &root);
                async move {
                    match monitor {
                        Ok(m) => monitor::stats::run(m, latest, pulse, token).await,
                        Err(e) => tracing::error!("system stats monitor stopped: {e}"),
                    }
                }
            },
        );
    }
}

/// Reports the monitors' channel to the fan-in holds (a monitor waits
/// when it is full).
pub const REPORTS_CAPACITY: usize = 1024;
/// Transitions and events the broadcast to exporters holds; one that falls
/// further behind loses the oldest and counts them.
pub const PUBLISHED_CAPACITY: usize = 1024;

const FAN_IN_BEAT: Duration = Duration::from_secs(30);

/// The reasons of a monitor's rules, and the `(type, reason)` of its
/// permanent ones: the series its metrics start with.
fn rule_heads<'a>(
    rules: impl Iterator<Item = (RuleKind, &'a Option<String>, &'a String)>,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut reasons = Vec::new();
    let mut permanent = Vec::new();
    for (kind, condition, reason) in rules {
        reasons.push(reason.clone());
        if let (RuleKind::Permanent, Some(c)) = (kind, condition) {
            permanent.push((c.clone(), reason.clone()));
        }
    }
    (reasons, permanent)
}

/// Where the fan-in hands on what it learns, in this order: metrics and
/// external exporters (synchronously, so nothing is lost to a lagging
/// subscriber), then the broadcast of transitions and events, then the
/// current conditions.
struct Outputs {
    metrics: Metrics,
    exporters: Vec<Arc<exporter::external::Queue>>,
    published: broadcast::Sender<Published>,
    conditions: watch::Sender<Arc<Vec<NodeCondition>>>,
}

/// What the fan-in keeps across restarts.
struct FanIn {
    manager: ConditionManager,
    rx: mpsc::Receiver<Report>,
    out: Outputs,
}

async fn fan_in(
    state: &mut FanIn,
    pulse: crate::liveness::Pulse,
    token: tokio_util::sync::CancellationToken,
) {
    let FanIn {
        manager,
        rx,
        out:
            Outputs {
                metrics,
                exporters,
                published,
                conditions,
            },
    } = state;
    let mut tick = crate::timer::Ticker::new(Duration::ZERO, FAN_IN_BEAT);
    loop {
        pulse.beat(FAN_IN_BEAT * 2);
        let expiry = manager.next_expiry();
        let report = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                // No monitor left to report (or none configured): nothing
                // more to do but stay up for the exporters.
                None => {
                    pulse.beat(Duration::MAX);
                    token.cancelled().await;
                    break;
                }
            },
            () = tick.tick() => continue,
            () = crate::shutdown::sleep_until_opt(expiry) => {
                let applied = manager.expire(SystemTime::now());
                publish(manager, applied, metrics, published, conditions);
                continue;
            }
            () = token.cancelled() => break,
        };
        let now = SystemTime::now();
        let id = report.monitor;
        let applied = match report.update {
            Update::Status(status) => {
                for q in exporters.iter() {
                    q.push(manager.source(id), &status);
                }
                manager.apply(id, &status, now)
            }
            Update::Down { reason, message } => {
                let applied = manager.down(id, &reason, &message, now);
                if !applied.published.is_empty() {
                    let status = applied.as_status(manager.source(id));
                    for q in exporters.iter() {
                        q.push(manager.source(id), &status);
                    }
                }
                applied
            }
            Update::Alive => manager.touch(id, now),
            Update::Trimmed(t) => {
                metrics.trimmed(manager.source(id), &t);
                continue;
            }
            Update::Adopt(types) => {
                for e in manager.claim(id, &types) {
                    tracing::warn!("cannot adopt a condition type the plugin announced: {e}");
                }
                continue;
            }
        };
        publish(manager, applied, metrics, published, conditions);
    }
}

/// Hands on what a change produced: metrics, then the broadcast of
/// transitions and events, then (after the events, so that whoever sees
/// the new conditions can also see what came with them) the conditions.
fn publish(
    manager: &ConditionManager,
    applied: crate::conditions::Applied,
    metrics: &mut Metrics,
    published: &broadcast::Sender<Published>,
    conditions: &watch::Sender<Arc<Vec<NodeCondition>>>,
) {
    for p in applied.published {
        metrics.observe(&p);
        // No subscriber is fine: exporters may be disabled.
        let _ = published.send(p);
    }
    if applied.touched {
        conditions.send_replace(Arc::new(manager.snapshot()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::{Condition, ConditionStatus, Status};

    #[test]
    fn a_monitor_that_is_down_has_all_its_conditions_unknown_until_it_reports() {
        let mut m = ConditionManager::new();
        let (gpu, _) = m.register("gpu-monitor", &["GPULost".into(), "GPUMissing".into()]);
        let (other, _) = m.register("kernel-monitor", &["KernelDeadlock".into()]);
        let now = SystemTime::now();
        for (id, t) in [(gpu, "GPULost"), (other, "KernelDeadlock")] {
            let s = Status {
                source: m.source(id).to_owned(),
                events: vec![],
                conditions: vec![Condition::new(t, ConditionStatus::False, "Fine", "fine")],
            };
            m.apply(id, &s, now);
        }
        let message = "the monitor stopped: its task panicked (boom) and restarts";
        let applied = m.down(gpu, monitor::REASON_MONITOR_RESTARTING, message, now);
        assert!(applied.touched);
        let snap = m.snapshot();
        for t in ["GPULost", "GPUMissing"] {
            let c = snap
                .iter()
                .find(|c| c.type_ == t)
                .expect("present, written or not");
            assert_eq!(c.status, ConditionStatus::Unknown, "{t}");
            assert_eq!(c.reason, monitor::REASON_MONITOR_RESTARTING);
            assert_eq!(c.message, message);
        }
        let k = snap
            .iter()
            .find(|c| c.type_ == "KernelDeadlock")
            .expect("present");
        assert_eq!(k.status, ConditionStatus::False, "other monitors untouched");
        let events: Vec<_> = applied
            .published
            .iter()
            .filter(|p| matches!(p, Published::Event { .. }))
            .collect();
        assert_eq!(events.len(), 1, "one warning");
        // The external exporters' view of it: every condition Unknown, the warning.
        let status = applied.as_status("gpu-monitor");
        assert_eq!(status.conditions.len(), 2);
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.status == ConditionStatus::Unknown && c.message == message)
        );
        assert_eq!(status.events.len(), 1);
        // The same again: nothing new.
        assert_eq!(
            m.down(gpu, monitor::REASON_MONITOR_RESTARTING, message, now),
            crate::conditions::Applied::default()
        );
    }
}

//! The detector core: starts monitors, fans their reports into the condition
//! manager, and hands what changed to the exporters. `cmd::detector` and
//! `cmd::demo` compose it; tests drive it in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};

use crate::conditions::{ConditionManager, NodeCondition, Published};
use crate::config::ExternalMonitorConfig;
use crate::config::custom::CustomPluginConfig;
use crate::config::syslog::{RuleKind, SyslogMonitorConfig};
use crate::exporter;
use crate::exporter::prometheus::Metrics;
use crate::liveness::Liveness;
use crate::monitor::{self, Report, Update};
use crate::shutdown::Shutdown;

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
}

/// Starts every monitor and exporter on `shutdown`'s tracker.
pub fn start(options: DetectorOptions, shutdown: &Shutdown) -> Result<Detector, StartError> {
    let mut manager = ConditionManager::new();
    let mut metrics = Metrics::new();
    let mut problems = Vec::new();
    let mut register =
        |file: &std::path::Path, source: &str, decls: &[crate::config::ConditionDecl]| {
            let types: Vec<String> = decls.iter().map(|c| c.type_.clone()).collect();
            let (id, errors) = manager.register(source, &types);
            problems.extend(errors.iter().map(|e| format!("{}: {e}", file.display())));
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
    let (report_tx, report_rx) = mpsc::channel::<Report>(1024);
    let (published_tx, _) = broadcast::channel(1024);
    let (conditions_tx, conditions_rx) = watch::channel(Arc::new(Vec::new()));

    let http_addr = match options.http {
        Some(listener) => {
            listener.set_nonblocking(true).map_err(StartError::Http)?;
            let addr = listener.local_addr().map_err(StartError::Http)?;
            let listener = tokio::net::TcpListener::from_std(listener).map_err(StartError::Http)?;
            let state = exporter::http::State {
                conditions: conditions_rx.clone(),
                liveness: liveness.clone(),
            };
            shutdown.spawn(exporter::http::serve(
                listener,
                state,
                shutdown.token().child_token(),
            ));
            tracing::info!(%addr, "serving /healthz and /conditions");
            Some(addr)
        }
        None => None,
    };
    let metrics_addr = match options.metrics {
        Some(listener) => {
            listener.set_nonblocking(true).map_err(StartError::Http)?;
            let addr = listener.local_addr().map_err(StartError::Http)?;
            let listener = tokio::net::TcpListener::from_std(listener).map_err(StartError::Http)?;
            shutdown.spawn(exporter::prometheus::serve(
                listener,
                metrics.registry(),
                shutdown.token().child_token(),
            ));
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
        shutdown.spawn(exporter::k8s::run(
            client,
            k8s,
            conditions_rx.clone(),
            published_tx.subscribe(),
            k8s_metrics,
            shutdown.token().child_token(),
        ));
    }
    let mut queues = Vec::new();
    if !options.exporters.is_empty() {
        let m = exporter::external::ExporterMetrics::register(&metrics.registry());
        for cfg in options.exporters {
            let q = exporter::external::Queue::new(&cfg.name, cfg.queue_size, m.clone());
            shutdown.spawn(exporter::external::run(
                cfg,
                options.node.clone(),
                q.clone(),
                shutdown.token().child_token(),
            ));
            queues.push(q);
        }
    }
    if options.log_exporter {
        shutdown.spawn(exporter::log::run(
            published_tx.subscribe(),
            shutdown.token().child_token(),
        ));
    }

    let fan_in_pulse = liveness.register("fan-in", FAN_IN_BEAT * 2);
    shutdown.spawn(fan_in(
        manager,
        report_rx,
        Outputs {
            metrics,
            exporters: queues,
            published: published_tx.clone(),
            conditions: conditions_tx,
        },
        fan_in_pulse,
        shutdown.token().child_token(),
    ));
    let monitor_task = |name: String, first: Duration| {
        (
            liveness.register(name, first),
            report_tx.clone(),
            shutdown.token().child_token(),
        )
    };
    for (cfg, id) in options.syslog.into_iter().zip(syslog_ids) {
        let (pulse, tx, token) = monitor_task(
            format!("system-log-monitor {}", cfg.source),
            FAN_IN_BEAT * 2,
        );
        shutdown.spawn(monitor::syslog::run(id, cfg, tx, pulse, token));
    }
    for (cfg, id) in options.custom.into_iter().zip(custom_ids) {
        let (pulse, tx, token) = monitor_task(
            format!("custom-plugin-monitor {}", cfg.source),
            FAN_IN_BEAT * 2,
        );
        shutdown.spawn(monitor::custom::run(id, cfg, tx, pulse, token));
    }
    for (cfg, id) in options.external.into_iter().zip(external_ids) {
        let (pulse, tx, token) = monitor_task(
            format!("external-monitor {}", cfg.source),
            cfg.timeout * 2 + FAN_IN_BEAT,
        );
        shutdown.spawn(monitor::external::run(id, cfg, tx, pulse, token));
    }
    Ok(Detector {
        http_addr,
        metrics_addr,
        conditions: conditions_rx,
        published: published_tx,
        liveness,
    })
}

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

async fn fan_in(
    mut manager: ConditionManager,
    mut rx: mpsc::Receiver<Report>,
    out: Outputs,
    pulse: crate::liveness::Pulse,
    token: tokio_util::sync::CancellationToken,
) {
    let Outputs {
        mut metrics,
        exporters,
        published,
        conditions,
    } = out;
    let mut tick = tokio::time::interval(FAN_IN_BEAT);
    loop {
        pulse.beat(FAN_IN_BEAT * 2);
        let report = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => break },
            _ = tick.tick() => continue,
            () = token.cancelled() => break,
        };
        match report.update {
            Update::Status(status) => {
                let applied = manager.apply(report.monitor, &status, SystemTime::now());
                for q in &exporters {
                    q.push(manager.source(report.monitor), &status);
                }
                for p in applied.published {
                    metrics.observe(&p);
                    // No subscriber is fine: exporters may be disabled.
                    let _ = published.send(p);
                }
                // After the events: whoever sees the new conditions can also
                // see what came with them.
                if applied.touched {
                    conditions.send_replace(Arc::new(manager.snapshot()));
                }
            }
            Update::Alive => {
                if manager.touch(report.monitor, SystemTime::now()) {
                    conditions.send_replace(Arc::new(manager.snapshot()));
                }
            }
            Update::Adopt(types) => {
                for e in manager.claim(report.monitor, &types) {
                    tracing::warn!("cannot adopt a condition type the plugin announced: {e}");
                }
            }
        }
    }
}

//! `npd-ext detector`: load configs, start the detector core, run until a signal.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::{DetectorArgs, Toggle};
use crate::config::custom::CustomPluginConfig;
use crate::config::syslog::{LogPlugin, SyslogMonitorConfig};
use crate::config::{self, Checked, Level};
use crate::detector::{self, DetectorOptions};
use crate::shutdown::Shutdown;

/// Every monitor config the flags name, checked; all problems at once.
#[derive(Debug, Default)]
pub struct Loaded {
    pub syslog: Vec<SyslogMonitorConfig>,
    pub custom: Vec<CustomPluginConfig>,
    pub external: Vec<config::ExternalMonitorConfig>,
    pub stats: Vec<config::stats::SystemStatsConfig>,
    pub exporters: Vec<config::exporter::ExternalExporterConfig>,
    pub taints: Option<config::taint_policy::TaintPolicy>,
}

fn load<T>(
    path: &Path,
    check: fn(&Path, &str) -> Checked<T>,
    errors: &mut Vec<String>,
    out: &mut Vec<T>,
) {
    let checked = match std::fs::read_to_string(path) {
        Ok(text) => check(path, &text),
        Err(e) => {
            errors.push(format!("{}: cannot read file: {e}", path.display()));
            return;
        }
    };
    for d in &checked.diagnostics {
        match d.level {
            Level::Error if !d.unknown_key => errors.push(d.to_string()),
            // Unknown keys do not stop the detector, but are never silent.
            _ => tracing::warn!("{d}"),
        }
    }
    out.extend(checked.config);
}

/// Loads the configs the flags name (NPD: a path listed twice, even under
/// two monitor kinds, is loaded once).
pub fn load_all(args: &DetectorArgs) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut first = |path: &PathBuf| {
        let fresh = seen.insert(path.clone());
        if !fresh {
            tracing::warn!(config = %path.display(), "config listed twice; loading it once");
        }
        fresh
    };
    let syslog = args
        .system_log_monitors
        .iter()
        .chain(&args.deprecated_system_log_monitors);
    for path in syslog {
        if first(path) {
            load(path, config::syslog::check, &mut errors, &mut loaded.syslog);
        }
    }
    let custom = args
        .custom_plugin_monitors
        .iter()
        .chain(&args.deprecated_custom_plugin_monitors);
    for path in custom {
        if first(path) {
            load(path, config::custom::check, &mut errors, &mut loaded.custom);
        }
    }
    for path in &args.system_stats_monitors {
        if first(path) {
            load(path, config::stats::check, &mut errors, &mut loaded.stats);
        }
    }
    for path in &args.external_monitors {
        if first(path) {
            load(
                path,
                config::external::check,
                &mut errors,
                &mut loaded.external,
            );
        }
    }
    for path in &args.external_exporters {
        if first(path) {
            load(
                path,
                config::exporter::check,
                &mut errors,
                &mut loaded.exporters,
            );
        }
    }
    if let Some(path) = &args.taint_policy {
        // A policy acts on the cluster: an unknown key (a misspelt
        // `maxCount`) stops the detector rather than being ignored.
        let (policy, bad) = config::taint_policy::check_file(path).strict();
        errors.extend(bad);
        loaded.taints = policy;
    }
    errors.extend(stats_name_clashes(&loaded.stats));
    if !errors.is_empty() {
        bail!("invalid monitor config:\n  {}", errors.join("\n  "));
    }
    if let Some(kmsg) = &args.kmsg_path {
        for c in &mut loaded.syslog {
            if c.plugin == LogPlugin::Kmsg {
                c.log_path = Some(kmsg.display().to_string());
            }
        }
    }
    for c in &loaded.custom {
        for r in &c.rules {
            if !crate::monitor::custom::runnable(&r.path) {
                tracing::warn!(config = %c.file.display(), plugin = %r.path.display(), "plugin is not an executable file here; its runs will report Unknown");
            }
        }
    }
    if loaded.syslog.is_empty()
        && loaded.custom.is_empty()
        && loaded.external.is_empty()
        && loaded.stats.is_empty()
    {
        bail!(
            "no monitor configured: give --config.system-log-monitor, --config.custom-plugin-monitor or --config.external-monitor FILE (see `npd-ext validate-config`)"
        );
    }
    Ok(loaded)
}

/// Whether a loaded monitor config declares condition type `t`.
fn declared(loaded: &Loaded, t: &str) -> bool {
    let has = |c: &[config::ConditionDecl]| c.iter().any(|d| d.type_ == t);
    loaded.syslog.iter().any(|c| has(&c.conditions))
        || loaded.custom.iter().any(|c| has(&c.conditions))
        || loaded.external.iter().any(|c| has(&c.conditions))
}

pub async fn run(args: DetectorArgs) -> anyhow::Result<()> {
    let loaded = load_all(&args)?;
    let counts = (
        loaded.syslog.len(),
        loaded.custom.len(),
        loaded.external.len(),
        loaded.stats.len(),
    );

    let node = node_name(args.hostname_override.as_deref());
    let k8s = match args.enable_k8s_exporter {
        Toggle::False => None,
        toggle => {
            let config =
                crate::exporter::k8s::client_config(args.apiserver_override.as_deref()).await?;
            match (config, toggle) {
                (Some(config), _) => {
                    let url = config.cluster_url.clone();
                    let client = crate::exporter::k8s::client(config)?;
                    tracing::info!(%node, %url, "reporting to the Kubernetes API");
                    Some(crate::exporter::k8s::K8sExporter {
                        client,
                        options: crate::exporter::k8s::K8sOptions {
                            node: node.clone(),
                            update_conditions: args.k8s_exporter_update_node_conditions,
                            write_events: args.k8s_exporter_write_events,
                            heartbeat: args.k8s_exporter_heartbeat_period,
                            wait_timeout: args.apiserver_wait_timeout,
                            wait_interval: args.apiserver_wait_interval,
                            qps: args.kube_api_qps,
                            burst: args.kube_api_burst,
                            event_namespace: if args.event_namespace.is_empty() {
                                "default".into()
                            } else {
                                args.event_namespace.clone()
                            },
                            taints: loaded.taints.clone().map(std::sync::Arc::new),
                        },
                    })
                }
                (None, Toggle::True) => bail!(
                    "--enable-k8s-exporter=true, but no cluster configuration was found (not in a cluster, no KUBECONFIG or ~/.kube/config; or give --apiserver-override)"
                ),
                (None, _) => None,
            }
        }
    };
    if let Some(policy) = &loaded.taints {
        if k8s.is_none() {
            bail!(
                "--taint-policy {}: taints need the Kubernetes exporter, which is off (--enable-k8s-exporter, or no cluster configuration)",
                policy.file.display()
            );
        }
        for rule in &policy.taints {
            if !declared(&loaded, &rule.condition) {
                tracing::warn!(policy = %policy.file.display(), condition = %rule.condition, "no monitor config declares this condition type; its taint follows it only if a plugin adopts it");
            }
        }
    }
    if k8s.is_none() {
        tracing::info!(
            %node, "standalone mode: conditions go to the log and http://{}:{}/conditions, not to a Kubernetes API server",
            args.address, args.port
        );
    }

    let http = if args.port == 0 {
        None
    } else {
        let addr = SocketAddr::new(args.address, args.port);
        Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?,
        )
    };

    let metrics = if args.prometheus_port == 0 {
        None
    } else {
        let addr = SocketAddr::new(args.prometheus_address, args.prometheus_port);
        Some(std::net::TcpListener::bind(addr).with_context(|| {
            format!("cannot listen on {addr} (--prometheus-address/--prometheus-port)")
        })?)
    };

    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("cannot install signal handlers")?;
    let _detector = detector::start(
        DetectorOptions {
            external: loaded.external,
            syslog: loaded.syslog,
            custom: loaded.custom,
            http,
            metrics,
            log_exporter: true,
            k8s,
            exporters: loaded.exporters,
            node: node.clone(),
            stats: loaded.stats,
            stats_root: args.system_stats_root.clone(),
        },
        &shutdown,
    )
    .context("cannot start the detector")?;
    tracing::info!(
        system_log = counts.0,
        custom_plugin = counts.1,
        external = counts.2,
        system_stats = counts.3,
        "detector running"
    );
    shutdown.token().cancelled().await;
    shutdown.drain(args.shutdown_grace).await;
    Ok(())
}

/// Two stats configs exporting one family name, or one of the detector's
/// own names: each is served by one collector, so the second would be
/// refused at registration and its metrics silently missing.
fn stats_name_clashes(stats: &[config::stats::SystemStatsConfig]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut seen: Vec<(&str, &Path)> = Vec::new();
    for c in stats {
        for m in &c.metrics {
            if crate::exporter::prometheus::is_reserved(&m.name) {
                errors.push(format!(
                    "{}: {}: displayName {:?} is exported as {}, a name of the detector's own metrics",
                    c.file.display(),
                    m.def().id,
                    m.display_name,
                    m.name
                ));
            } else if let Some((_, other)) = seen.iter().find(|(n, _)| *n == m.name) {
                errors.push(format!(
                    "{}: {}: displayName {:?} is exported as {}, which {} exports too",
                    c.file.display(),
                    m.def().id,
                    m.display_name,
                    m.name,
                    other.display()
                ));
            } else {
                seen.push((&m.name, &c.file));
            }
        }
    }
    errors
}

/// `--hostname-override`, else `$NODE_NAME`, else the kernel's hostname.
pub fn node_name(override_: Option<&str>) -> String {
    if let Some(n) = override_.filter(|n| !n.is_empty()) {
        return n.to_owned();
    }
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

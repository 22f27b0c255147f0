//! `npd-ext detector`: load configs, start the detector core, run until a signal.

use std::collections::HashSet;
use std::net::SocketAddr;

use anyhow::{Context, bail};

use crate::cli::{DetectorArgs, Toggle};
use crate::config::{self, Level};
use crate::detector::{self, DetectorOptions};
use crate::shutdown::Shutdown;

pub async fn run(args: DetectorArgs) -> anyhow::Result<()> {
    let mut configs = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for path in &args.external_monitors {
        if !seen.insert(path.clone()) {
            tracing::warn!(config = %path.display(), "config listed twice; loading it once");
            continue;
        }
        let checked = config::check_external_file(path);
        for d in &checked.diagnostics {
            match d.level {
                Level::Error if !d.unknown_key => errors.push(d.to_string()),
                // Unknown keys do not stop the detector, but are never silent.
                _ => tracing::warn!("{d}"),
            }
        }
        configs.extend(checked.config);
    }
    if !errors.is_empty() {
        bail!("invalid monitor config:\n  {}", errors.join("\n  "));
    }
    if configs.is_empty() {
        bail!(
            "no monitor configured: give --config.external-monitor FILE (see `npd-ext validate-config`)"
        );
    }

    let node = node_name(args.hostname_override.as_deref());
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    match args.enable_k8s_exporter {
        Toggle::True => bail!(
            "--enable-k8s-exporter=true: this build has no Kubernetes exporter yet; run with --enable-k8s-exporter=false (standalone)"
        ),
        Toggle::Auto if in_cluster => tracing::warn!(
            %node, "running in a cluster, but this build has no Kubernetes exporter yet: standalone mode, nothing is written to the API server"
        ),
        _ => tracing::info!(
            %node, "standalone mode: conditions go to the log and http://{}:{}/conditions, not to a Kubernetes API server",
            args.address, args.port
        ),
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

    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("cannot install signal handlers")?;
    let _detector = detector::start(
        DetectorOptions {
            external: configs,
            http,
            log_exporter: true,
        },
        &shutdown,
    )
    .context("cannot start the detector")?;
    shutdown.token().cancelled().await;
    shutdown.drain(args.shutdown_grace).await;
    Ok(())
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

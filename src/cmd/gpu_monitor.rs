//! `npd-ext gpu-monitor`: the GPU external monitor plugin.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::{BackendKind, GpuMonitorArgs};
use crate::config::xid_policy::{self, XidPolicy};
use crate::gpu::Observation;
use crate::gpu::kmsg::{self, KmsgOptions};
use crate::gpu::metrics::GpuMetrics;
use crate::gpu::nvml::{self, NvmlOptions};
use crate::gpu::plugin::{Plugin, PluginOptions};
use crate::gpu::sim::{self, Scenario, SimOptions};
use crate::liveness::Liveness;
use crate::shutdown::Shutdown;
use crate::supervisor::Supervisor;

pub async fn run(args: GpuMonitorArgs) -> anyhow::Result<()> {
    let scenario = match args.backend {
        BackendKind::Sim => {
            let s = Scenario::load(&args.sim_scenario).context("cannot load the sim scenario")?;
            s.check_gpus(args.sim_gpus)?;
            Some(s)
        }
        BackendKind::Nvml => None,
    };

    // A policy decides what the node reports: a bad one stops the monitor
    // rather than being half applied.
    let xid_policy = match &args.xid_policy {
        Some(path) => Some(Arc::new(load_xid_policy(path)?)),
        None => None,
    };

    let metrics_listener = match args.metrics_address {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (--metrics-address)"))?;
            l.set_nonblocking(true)
                .context("cannot set up the metrics listener")?;
            Some(l)
        }
        None => None,
    };

    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("cannot install signal handlers")?;
    // The backends and the health model beat here; gRPC health follows it.
    let liveness = Liveness::new();
    let plugin = Plugin::bind(
        &args.socket,
        PluginOptions {
            gpus: scenario.as_ref().map(|_| sim::identities(args.sim_gpus)),
            backend: match args.backend {
                BackendKind::Nvml => "nvml",
                BackendKind::Sim => "sim",
            },
            grace: args.shutdown_grace,
            watch_health: !args.disable_watch_health,
            allowed_uids: if args.allowed_uids.is_empty() {
                crate::rpc::server::default_allowed_uids()
            } else {
                args.allowed_uids.clone()
            },
            liveness: liveness.clone(),
        },
    )
    .context("cannot serve the plugin socket")?
    .with_xid_policy(xid_policy);
    let plugin = match metrics_listener {
        Some(listener) => {
            let metrics = GpuMetrics::new();
            let registry = metrics.registry();
            let bound = listener
                .local_addr()
                .context("cannot read the metrics address")?;
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("cannot serve the metrics listener")?;
            tracing::info!(address = %bound, "gpu-monitor metrics on http://{bound}/metrics");
            shutdown.spawn(crate::exporter::prometheus::serve(
                Arc::new(listener),
                registry,
                None,
                shutdown.token().clone(),
            ));
            plugin.with_metrics(metrics)
        }
        None => plugin,
    };
    if args.temp_threshold.is_some() || args.memory_threshold.is_some() {
        let thresholds = Observation::Thresholds {
            temperature: args.temp_threshold,
            memory_percent: args.memory_threshold,
        };
        // The channel is empty this early; a full one would mean a bug.
        let _ = plugin.observations().try_send(thresholds);
    }
    // A backend that panics starts again after a backoff; until it does,
    // the health model hears that readings stopped (its restart says
    // `Responsive` again), so old readings are not reported as fresh.
    let sup = Supervisor::new(&shutdown, &liveness);
    // A backend's first beat comes after a session start (two call
    // deadlines) at most; it then promises its own.
    let first_beat = Some(args.nvml_timeout * 3 + args.poll_interval + Duration::from_secs(10));
    let token = shutdown.token().clone();
    let tx = plugin.observations();
    let backend_down = |name: &'static str| {
        let tx = tx.clone();
        move |message: String| {
            let tx = tx.clone();
            async move {
                let _ = tx
                    .send(Observation::BackendDown {
                        reason: format!("the {name} panicked ({message}) and restarts"),
                        at: std::time::SystemTime::now(),
                    })
                    .await;
            }
        }
    };
    match scenario {
        Some(scenario) => {
            tracing::info!(scenario = %scenario.name, gpus = args.sim_gpus, "sim backend");
            let options = SimOptions {
                poll_interval: args.poll_interval,
                call_timeout: args.nvml_timeout,
            };
            let gpus = args.sim_gpus;
            let (tx, token) = (tx.clone(), token.clone());
            sup.spawn_with(
                "sim backend",
                first_beat,
                move |pulse| {
                    sim::run(
                        scenario.clone(),
                        gpus,
                        options,
                        tx.clone(),
                        token.child_token(),
                        Some(pulse),
                    )
                },
                backend_down("sim backend"),
            );
        }
        None => {
            let options = NvmlOptions {
                library: args.nvml_lib.clone(),
                call_timeout: args.nvml_timeout,
                poll_interval: args.poll_interval,
                slow_every: args.slow_every,
                expected_gpus: args.expected_gpus,
                sys_root: PathBuf::from("/sys"),
                dev_root: PathBuf::from("/dev"),
            };
            let (tx, token) = (tx.clone(), token.clone());
            sup.spawn_with(
                "nvml backend",
                first_beat,
                move |pulse| nvml::run(options.clone(), tx.clone(), token.child_token(), pulse),
                backend_down("NVML backend"),
            );
        }
    }
    let kmsg_path = match args.kmsg_path.clone() {
        // Off: a container that may not read the kernel log (the detector's
        // kernel monitor can carry an NVRM Xid rule instead).
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p),
        None => match args.backend {
            BackendKind::Nvml => Some(PathBuf::from("/dev/kmsg")),
            BackendKind::Sim => None,
        },
    };
    if let Some(path) = kmsg_path {
        let options = KmsgOptions {
            path,
            state_dir: Some(args.state_dir.clone()),
            boot_id: kmsg::boot_id(),
        };
        sup.spawn(
            "kernel-log reader",
            Some(Duration::from_secs(60)),
            move |pulse| {
                kmsg::run(
                    options.clone(),
                    tx.clone(),
                    token.child_token(),
                    Some(pulse),
                )
            },
        );
    }
    let result = plugin.serve(shutdown.token().clone()).await;
    shutdown.drain(args.shutdown_grace).await;
    result.context("gRPC server failed")
}

/// Reads `--xid-policy`; every error, with its line and key, refuses the start.
fn load_xid_policy(path: &Path) -> anyhow::Result<XidPolicy> {
    let (policy, errors) = xid_policy::check_file(path).strict();
    match policy {
        Some(policy) if errors.is_empty() => {
            tracing::info!(policy = %path.display(), entries = policy.rules.len(), "XID policy loaded");
            Ok(policy)
        }
        _ => bail!(
            "invalid XID policy {} (--xid-policy):\n  {}",
            path.display(),
            errors.join("\n  ")
        ),
    }
}

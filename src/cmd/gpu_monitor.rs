//! `npd-ext gpu-monitor`: the GPU external monitor plugin.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{BackendKind, GpuMonitorArgs};
use crate::gpu::Observation;
use crate::gpu::kmsg::{self, KmsgOptions};
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
    .context("cannot serve the plugin socket")?;
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

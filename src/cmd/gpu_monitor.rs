//! `npd-ext gpu-monitor`: the GPU external monitor plugin.

use anyhow::Context;

use crate::cli::{BackendKind, GpuMonitorArgs};
use crate::gpu::plugin::{Plugin, PluginOptions};
use crate::gpu::sim::{self, Scenario};
use crate::shutdown::Shutdown;

pub async fn run(args: GpuMonitorArgs) -> anyhow::Result<()> {
    let BackendKind::Sim = args.backend;
    let scenario = Scenario::load(&args.sim_scenario).context("cannot load the sim scenario")?;
    scenario.check_gpus(args.sim_gpus)?;

    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("cannot install signal handlers")?;
    let plugin = Plugin::bind(
        &args.socket,
        PluginOptions {
            gpus: sim::identities(args.sim_gpus),
            backend: "sim",
            grace: args.shutdown_grace,
            watch_health: !args.disable_watch_health,
        },
    )
    .context("cannot serve the plugin socket")?;
    tracing::info!(scenario = %scenario.name, gpus = args.sim_gpus, "sim backend");
    shutdown.spawn(sim::run(
        scenario,
        args.sim_gpus,
        plugin.observations(),
        shutdown.token().child_token(),
    ));
    let result = plugin.serve(shutdown.token().clone()).await;
    shutdown.drain(args.shutdown_grace).await;
    result.context("gRPC server failed")
}

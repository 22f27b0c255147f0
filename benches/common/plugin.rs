//! An 8-GPU sim gpu-monitor served in the bench's own process, with its
//! observation channel for injecting faults.
#![allow(dead_code, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use npd_ext::gpu::Observation;
use npd_ext::gpu::plugin::{Plugin, PluginOptions};
use npd_ext::gpu::sim;
use tokio_util::sync::CancellationToken;

pub struct Served {
    pub observations: tokio::sync::mpsc::Sender<Observation>,
    pub token: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds `socket` and serves the plugin (WatchHealth on) on the runtime.
pub fn serve_sim(socket: &Path) -> Served {
    let plugin = Plugin::bind(
        socket,
        PluginOptions {
            gpus: Some(sim::identities(8)),
            backend: "sim",
            grace: Duration::from_secs(1),
            watch_health: true,
            allowed_uids: npd_ext::rpc::server::default_allowed_uids(),
            liveness: npd_ext::liveness::Liveness::new(),
        },
    )
    .expect("bind the plugin socket");
    let observations = plugin.observations();
    let token = CancellationToken::new();
    let task = tokio::spawn(plugin.serve(token.clone()));
    Served {
        observations,
        token,
        task,
    }
}

//! `npd-ext demo`: a simulated GPU node and the detector in one process, with
//! a live view of conditions and events as they change.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::broadcast::error::RecvError;

use crate::cli::DemoArgs;
use crate::conditions::Published;
use crate::config::ExternalMonitorConfig;
use crate::detector::{self, DetectorOptions};
use crate::gpu::SUPPORTED_CONDITIONS;
use crate::gpu::plugin::{Plugin, PluginOptions};
use crate::gpu::sim::{self, Scenario, SimOptions};
use crate::problem::ConditionStatus;
use crate::shutdown::{DEFAULT_GRACE, Shutdown};

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario).context("cannot load the scenario")?;
    scenario.check_gpus(args.gpus)?;
    let dir = TempDir::new()?;
    let socket = dir.0.join("gpu-monitor.sock");

    let shutdown = Shutdown::new();
    shutdown
        .listen_for_signals()
        .context("cannot install signal handlers")?;
    let plugin = Plugin::bind(
        &socket,
        PluginOptions {
            gpus: Some(sim::identities(args.gpus)),
            backend: "sim",
            grace: DEFAULT_GRACE,
            watch_health: true,
            allowed_uids: crate::rpc::server::default_allowed_uids(),
            liveness: crate::liveness::Liveness::new(),
        },
    )?;
    let observations = plugin.observations();
    shutdown.spawn(plugin.serve(shutdown.token().clone()));

    let mut monitor =
        ExternalMonitorConfig::new("gpu-monitor", &socket).with_conditions(&SUPPORTED_CONDITIONS);
    monitor.retry.initial_backoff = Duration::from_millis(100);
    monitor.retry.max_backoff = Duration::from_secs(2);
    let detector = detector::start(
        DetectorOptions {
            external: vec![monitor],
            http: Some(listen(args.port)?),
            log_exporter: false,
            ..DetectorOptions::default()
        },
        &shutdown,
    )?;
    let mut published = detector.subscribe();

    let addr = detector
        .http_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    say!(
        "npd-ext demo: {} simulated NVIDIA H200 GPUs, scenario {}",
        args.gpus,
        scenario.name
    );
    say!("  plugin socket  {}", socket.display());
    say!("  conditions     http://{addr}/conditions   health http://{addr}/healthz");
    for s in &scenario.steps {
        say!(
            "  at +{:<6} GPU {}: {}",
            format!("{:.1}s", s.at.as_secs_f64()),
            s.gpu,
            s.fault
        );
    }
    say!("  Ctrl-C to exit\n");
    shutdown.spawn(sim::run(
        scenario,
        args.gpus,
        SimOptions {
            poll_interval: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
        },
        observations,
        shutdown.token().child_token(),
        None,
    ));

    let start = Instant::now();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let token = shutdown.token().clone();
    loop {
        let item = tokio::select! {
            r = published.recv() => r,
            () = token.cancelled() => break,
            () = sleep_until(deadline) => break,
        };
        let elapsed = start.elapsed().as_secs_f64();
        let line = match item {
            Ok(Published::Condition {
                condition: c,
                previous,
            }) => {
                let mark = match c.status {
                    ConditionStatus::True => "!!",
                    ConditionStatus::Unknown => "??",
                    ConditionStatus::False => "ok",
                };
                let from = previous.map_or_else(String::new, |p| format!(" (was {p})"));
                format!(
                    "+{elapsed:6.2}s {mark} {:<22} {}{from}  {}: {}",
                    c.type_, c.status, c.reason, c.message
                )
            }
            Ok(Published::Event { event: e, .. }) => {
                format!(
                    "+{elapsed:6.2}s    event {:<16} {:<4} {}",
                    e.reason,
                    e.severity.to_string(),
                    e.message
                )
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => break,
        };
        say!("{line}");
        let _ = std::io::stdout().flush();
    }
    say!("\nnpd-ext demo: shutting down");
    shutdown.drain(DEFAULT_GRACE).await;
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The requested port on loopback, or any free one when 0 or when the
/// default is taken (a real detector may be running on this machine).
fn listen(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpListener::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) if port != 0 => {
            eprintln!("note: {addr} is taken ({e}); using a free port instead");
            Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?)
        }
        Err(e) => Err(e).context("cannot listen on loopback"),
    }
}

/// A private directory for the demo's socket, removed on exit.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("npd-ext-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

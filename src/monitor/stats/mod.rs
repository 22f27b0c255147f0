//! The system stats monitor (NPD's `system-stats-monitor`): metrics only,
//! no conditions. Each config's collectors read the node's `/proc` and
//! `/sys` at once and then every `invokeInterval`, and the reading replaces
//! the monitor's series on `/metrics` whole: a device or interface that
//! went away, or a file that could not be read, leaves no series behind,
//! and a monitor that stops takes its series with it (never a stale value
//! served as fresh).
//!
//! - [`catalog`]: every metric upstream knows (ID, type, HELP, labels);
//! - [`procfs`]: the kernel's file formats;
//! - [`collect`]: cpu, memory, host, OS features, net; [`disk`]: disks;
//! - [`export`]: the Prometheus collector serving the latest reading.

pub mod catalog;
pub mod collect;
pub mod disk;
pub mod export;
pub mod procfs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::stats::SystemStatsConfig;
use crate::liveness::Pulse;
use catalog::Group;
use collect::{Sample, Samples};
use export::Latest;

/// Where one config's collectors read: `root` (`--system-stats-root`,
/// `/` on a node) holds `sys/` and the mount points; the config's
/// `procPath` is taken under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub root: PathBuf,
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, proc_path: &Path) -> Self {
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        Self {
            root: root.to_path_buf(),
            proc: under(proc_path),
            sys: under(Path::new("sys")),
        }
    }
}

/// One config's collectors and what they keep between readings.
#[derive(Debug)]
pub struct Monitor {
    cfg: SystemStatsConfig,
    paths: Paths,
    exclude: Option<regex::Regex>,
    disk: disk::DiskState,
    /// Files that could not be read last time (logged once per outage).
    unreadable: Vec<PathBuf>,
}

impl Monitor {
    /// `Err` when the `/proc` to read is not a directory (upstream's
    /// config check).
    pub fn new(cfg: SystemStatsConfig, root: &Path) -> Result<Self, String> {
        let paths = Paths::new(root, &cfg.proc_path);
        if !paths.proc.is_dir() {
            return Err(format!(
                "{}: procPath {} is not a directory",
                cfg.file.display(),
                paths.proc.display()
            ));
        }
        let exclude = cfg
            .exclude_interface
            .as_deref()
            .and_then(|re| crate::config::goregex::compile(re).ok());
        Ok(Self {
            cfg,
            paths,
            exclude,
            disk: disk::DiskState::default(),
            unreadable: Vec::new(),
        })
    }

    pub fn config(&self) -> &SystemStatsConfig {
        &self.cfg
    }

    /// Reads everything the config exports, once.
    pub fn collect(&mut self) -> Vec<Sample> {
        let cfg = &self.cfg;
        let wanted: Vec<&'static str> = cfg.metrics.iter().map(|m| m.def().id).collect();
        let mut s = Samples {
            wanted: &wanted,
            out: Vec::new(),
        };
        let proc = self.paths.proc.clone();
        let failed = std::cell::RefCell::new(Vec::new());
        let read = |rel: &str| -> Option<String> {
            let p = proc.join(rel);
            match std::fs::read_to_string(&p) {
                Ok(t) => Some(t),
                Err(e) => {
                    failed.borrow_mut().push((p, e));
                    None
                }
            }
        };
        if cfg.wants(Group::Cpu) {
            let load = read("loadavg");
            let stat = read("stat");
            collect::cpu(load.as_deref(), stat.as_deref(), &mut s);
        }
        if cfg.wants(Group::Memory)
            && let Some(m) = read("meminfo")
        {
            collect::memory(&m, &mut s);
        }
        if cfg.wants(Group::Host)
            && let Some(up) = read("uptime")
        {
            let kernel = read("sys/kernel/osrelease").unwrap_or_default();
            let os = self.os_version();
            collect::host(&up, &kernel, &os, &mut s);
        }
        if cfg.wants(Group::OsFeature) {
            if let Some(cmdline) = read("cmdline") {
                collect::os_feature_cmdline(&cmdline, &mut s);
            }
            // A kernel built without modules has no /proc/modules: nothing
            // is loaded, so no GPU driver module and none unknown.
            let modules = match std::fs::read_to_string(proc.join("modules")) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
                Err(e) => {
                    failed.borrow_mut().push((proc.join("modules"), e));
                    None
                }
            };
            if let Some(modules) = modules {
                let known = self.known_modules();
                collect::os_feature_modules(&modules, &known, &mut s);
            }
        }
        if cfg.wants(Group::Net)
            && let Some(n) = read("net/dev")
        {
            collect::net(&n, self.exclude.as_ref(), &mut s);
        }
        if let Some(opts) = &cfg.disk
            && cfg.wants(Group::Disk)
        {
            let paths = disk::DiskPaths {
                proc: &self.paths.proc,
                sys: &self.paths.sys,
                root: &self.paths.root,
            };
            self.disk.collect(opts, &paths, &mut s);
        }
        let out = s.out;
        self.note_failures(failed.into_inner());
        out
    }

    fn note_failures(&mut self, failed: Vec<(PathBuf, std::io::Error)>) {
        let now: Vec<PathBuf> = failed.iter().map(|(p, _)| p.clone()).collect();
        for (p, e) in &failed {
            if !self.unreadable.contains(p) {
                tracing::warn!(config = %self.cfg.file.display(), "cannot read {}: {e}; its metrics are left out until it can be read", p.display());
            }
        }
        for p in &self.unreadable {
            if !now.contains(p) {
                tracing::info!(config = %self.cfg.file.display(), "{} can be read again", p.display());
            }
        }
        self.unreadable = now;
    }

    /// The OS version label from the node's os-release.
    fn os_version(&self) -> String {
        ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|rel| std::fs::read_to_string(self.paths.root.join(rel)).ok())
            .and_then(|t| collect::os_version(&t))
            .unwrap_or_default()
    }

    /// The known-modules list; unreadable, none is known (as upstream).
    fn known_modules(&self) -> Vec<String> {
        let Some(path) = &self.cfg.known_modules else {
            return Vec::new();
        };
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| collect::known_modules(&t).map_err(|e| e.to_string()))
        {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(path = %path.display(), "known modules: {e}; every out-of-tree module counts as unknown");
                Vec::new()
            }
        }
    }
}

/// How long past its interval a collection may run before the detector's
/// liveness says the monitor is stuck.
const SLACK: Duration = Duration::from_secs(30);

/// Collects at once and then every `invokeInterval` into `latest`, until
/// `token` is cancelled. Reading files runs on the blocking pool.
pub async fn run(
    mut monitor: Monitor,
    latest: Arc<Latest>,
    pulse: Pulse,
    token: CancellationToken,
) {
    // Whatever ends this run (cancel, panic) takes its series off /metrics.
    let _clear = latest.clear_on_drop();
    let every = monitor.cfg.invoke_interval;
    let lsblk = monitor
        .cfg
        .disk
        .as_ref()
        .map_or(Duration::ZERO, |d| d.lsblk_timeout);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pulse.beat(every + lsblk + SLACK);
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        pulse.beat(lsblk + SLACK);
        let joined = tokio::task::spawn_blocking(move || {
            let samples = monitor.collect();
            (monitor, samples)
        })
        .await;
        match joined {
            Ok((m, samples)) => {
                latest.set(m.config(), &samples);
                monitor = m;
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return, // the runtime is shutting down
        }
    }
}

//! Flags of every applet. Detector flags keep upstream NPD's names.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::config::duration::parse_go;
use crate::logging::LogFormat;

/// Names argv[0] may carry (symlinks) besides `npd-ext`.
pub const APPLETS: [&str; 8] = [
    "detector",
    "gpu-monitor",
    "validate-config",
    "probe",
    "demo",
    "prepare-dir",
    "log-counter",
    "health-checker",
];

#[derive(Debug, Parser)]
#[command(multicall = true)]
pub enum Invocation {
    /// npd-ext: a node problem detector for Kubernetes GPU fleets.
    #[command(
        name = "npd-ext",
        version,
        subcommand_required = true,
        arg_required_else_help = true
    )]
    NpdExt {
        #[command(subcommand)]
        applet: Applet,
    },
    #[command(flatten)]
    Applet(Applet),
}

#[derive(Debug, Subcommand)]
pub enum Applet {
    /// The node problem detector: runs monitors, keeps the node's conditions, exports them.
    #[command(version)]
    Detector(DetectorArgs),
    /// External monitor plugin for NVIDIA GPUs, served over gRPC on a Unix socket.
    #[command(version)]
    GpuMonitor(GpuMonitorArgs),
    /// Checks monitor configs and reports every problem with file:line:column.
    #[command(version)]
    ValidateConfig(ValidateConfigArgs),
    /// Asks a plugin socket for health, metadata and current status.
    #[command(version)]
    Probe(ProbeArgs),
    /// Runs a simulated GPU node and the detector together, with a live view.
    #[command(version)]
    Demo(DemoArgs),
    /// Creates a directory with an owner and mode (an init container making
    /// a hostPath socket directory writable for the non-root GPU monitor;
    /// the image has no shell).
    #[command(version)]
    PrepareDir(PrepareDirArgs),
    /// NPD's log-counter: counts journal entries matching a pattern (minus
    /// those matching a revert pattern) and exits 1 at or above --count.
    #[command(version, args_override_self = true)]
    LogCounter(LogCounterArgs),
    /// NPD's health-checker: checks kubelet, docker, the CRI runtime or
    /// kube-proxy, and kills an unhealthy service for systemd to restart.
    #[command(version, args_override_self = true)]
    HealthChecker(HealthCheckerArgs),
}

impl Applet {
    pub fn log_format(&self) -> LogFormat {
        match self {
            Self::Detector(a) => a.log.log_format,
            Self::GpuMonitor(a) => a.log.log_format,
            Self::ValidateConfig(a) => a.log.log_format,
            Self::Probe(a) => a.log.log_format,
            Self::Demo(a) => a.log.log_format,
            Self::PrepareDir(a) => a.log.log_format,
            Self::LogCounter(a) => a.log.log_format,
            Self::HealthChecker(a) => a.log.log_format,
        }
    }

    /// Servers log at info; one-shot tools only warn, so their output stays theirs.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Self::Detector(a) if a.verbosity >= 4 => "debug",
            Self::Detector(_) | Self::GpuMonitor(_) => "info",
            Self::Demo(_)
            | Self::ValidateConfig(_)
            | Self::Probe(_)
            | Self::PrepareDir(_)
            | Self::LogCounter(_)
            | Self::HealthChecker(_) => "warn",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log line format (logs go to stderr; RUST_LOG filters them).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

fn go_duration(s: &str) -> Result<Duration, String> {
    parse_go(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    #[default]
    Auto,
    True,
    False,
}

#[derive(Debug, Args)]
pub struct DetectorArgs {
    /// System log monitor configs: kmsg, filelog, journald (comma-separated, repeatable).
    #[arg(long = "config.system-log-monitor", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE")]
    pub system_log_monitors: Vec<PathBuf>,

    /// Deprecated NPD spelling of --config.system-log-monitor.
    #[arg(long = "system-log-monitors", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE", hide = true, conflicts_with = "system_log_monitors")]
    pub deprecated_system_log_monitors: Vec<PathBuf>,

    /// Custom plugin monitor configs (comma-separated, repeatable).
    #[arg(long = "config.custom-plugin-monitor", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE")]
    pub custom_plugin_monitors: Vec<PathBuf>,

    /// Deprecated NPD spelling of --config.custom-plugin-monitor.
    #[arg(long = "custom-plugin-monitors", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE", hide = true, conflicts_with = "custom_plugin_monitors")]
    pub deprecated_custom_plugin_monitors: Vec<PathBuf>,

    /// System stats monitor configs: node metrics (cpu, disk, host,
    /// memory, OS features, net) on /metrics (comma-separated, repeatable).
    #[arg(long = "config.system-stats-monitor", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE")]
    pub system_stats_monitors: Vec<PathBuf>,

    /// Where the system stats monitors find the node's filesystem: its
    /// `/sys`, its mount points and `/etc/os-release`, and each config's
    /// `procPath` under it (for a host mounted at /host, or a test tree).
    #[arg(long = "system-stats-root", value_name = "DIR", default_value = "/")]
    pub system_stats_root: PathBuf,

    /// External monitor configs (comma-separated, repeatable).
    #[arg(long = "config.external-monitor", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE")]
    pub external_monitors: Vec<PathBuf>,

    /// External exporter configs: plugins that receive every status over
    /// gRPC (comma-separated, repeatable).
    #[arg(long = "config.external-exporter", value_delimiter = ',', action = ArgAction::Append, value_name = "FILE")]
    pub external_exporters: Vec<PathBuf>,

    /// Kernel log for every kmsg monitor, instead of its logPath or
    /// /dev/kmsg: a file or FIFO of records in /dev/kmsg's format (replays, tests).
    #[arg(long, value_name = "PATH")]
    pub kmsg_path: Option<PathBuf>,

    /// Report to the Kubernetes API (auto: when running in a cluster).
    #[arg(long, value_enum, default_value_t = Toggle::Auto, num_args = 0..=1, default_missing_value = "true")]
    pub enable_k8s_exporter: Toggle,

    /// API server to use instead of the inferred one, as NPD writes it:
    /// `https://host:port?inClusterConfig=false&auth=/path/kubeconfig&insecure=true`.
    #[arg(long, value_name = "URI")]
    pub apiserver_override: Option<String>,

    /// How long to keep retrying the first read of the Node at start
    /// (afterwards the exporter keeps retrying, less often).
    #[arg(long, value_parser = go_duration, default_value = "5m")]
    pub apiserver_wait_timeout: Duration,

    /// Retry period of that first read.
    #[arg(long, value_parser = go_duration, default_value = "5s")]
    pub apiserver_wait_interval: Duration,

    /// Rewrite the conditions this often when nothing changes (±10 % jitter).
    #[arg(long, value_parser = go_duration, default_value = "5m")]
    pub k8s_exporter_heartbeat_period: Duration,

    /// Write Kubernetes Events.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub k8s_exporter_write_events: bool,

    /// Write node conditions.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub k8s_exporter_update_node_conditions: bool,

    /// Client-side limit of the exporter's API requests per second.
    #[arg(long, default_value_t = 500.0)]
    pub kube_api_qps: f64,

    /// Burst of that limit.
    #[arg(long, default_value_t = 500)]
    pub kube_api_burst: u32,

    /// Taint policy: a JSON file naming, per condition type, the taint to
    /// put on the Node while it is True, and the fleet-wide limit on
    /// quarantined nodes (needs the Kubernetes exporter and the RBAC of
    /// manifests/components/taints).
    #[arg(long, value_name = "FILE")]
    pub taint_policy: Option<PathBuf>,

    /// Namespace of the Events (NPD's default, empty, means `default`).
    #[arg(long, default_value = "")]
    pub event_namespace: String,

    /// Node name (default: $NODE_NAME, then the hostname).
    #[arg(long)]
    pub hostname_override: Option<String>,

    /// Address of the health and /conditions server.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,

    /// Port of the health and /conditions server (0 disables it).
    #[arg(long, default_value_t = 20256)]
    pub port: u16,

    /// Address of the Prometheus /metrics server.
    #[arg(long, default_value = "127.0.0.1")]
    pub prometheus_address: IpAddr,

    /// Port of the Prometheus /metrics server (0 disables it).
    #[arg(long, default_value_t = 20257)]
    pub prometheus_port: u16,

    /// Grace period for shutdown.
    #[arg(long, value_parser = go_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    /// Accepted for NPD compatibility; logs always go to stderr.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub logtostderr: Option<bool>,

    /// NPD (klog) verbosity; 4 or more turns on debug logs.
    #[arg(short = 'v', long = "v", default_value_t = 0, value_name = "LEVEL")]
    pub verbosity: u8,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// NVIDIA's management library, loaded at run time.
    #[default]
    Nvml,
    /// A simulated GPU node driven by a scenario (tests, demos).
    Sim,
}

#[derive(Debug, Args)]
pub struct GpuMonitorArgs {
    /// Unix socket to serve on.
    #[arg(long, default_value = "/var/run/npd/npd-gpu-monitor.sock")]
    pub socket: PathBuf,

    /// Where GPU readings come from.
    #[arg(long, value_enum, default_value_t = BackendKind::Nvml)]
    pub backend: BackendKind,

    /// NVML library to load (default: libnvidia-ml.so.1 from the loader's
    /// path, then the GPU Operator's /run/nvidia/driver).
    #[arg(long, value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,

    /// Deadline of every NVML call; a call that takes longer makes GPUUnresponsive True.
    #[arg(long, value_parser = go_duration, default_value = "30s")]
    pub nvml_timeout: Duration,

    /// Fast poll period (and retry period while the driver is not ready).
    #[arg(long, value_parser = go_duration, default_value = "10s")]
    pub poll_interval: Duration,

    /// Run the slow sweep (ECC, PCIe, NVLink, GPU count) every N fast polls.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub slow_every: u32,

    /// GPUs this node should have; fewer makes GPUMissing True (default: the
    /// most that NVML, PCI sysfs or /dev/nvidiaN has shown).
    #[arg(long, value_name = "N")]
    pub expected_gpus: Option<u32>,

    /// Temperature (°C) that counts as throttling, instead of each GPU's own
    /// slowdown threshold (the Go proof of concept's flag).
    #[arg(long, value_name = "CELSIUS")]
    pub temp_threshold: Option<i32>,

    /// Memory use (percent) above which a Normal event is sent; off by
    /// default: ML frameworks allocate most of GPU memory on purpose.
    #[arg(long, value_name = "PERCENT")]
    pub memory_threshold: Option<f64>,

    /// Kernel log to read XIDs from: /dev/kmsg, or a file or FIFO of records
    /// in its format, or `none` (default: /dev/kmsg with the NVML backend,
    /// none with sim).
    #[arg(long, value_name = "PATH")]
    pub kmsg_path: Option<PathBuf>,

    /// Users whose processes may connect to the socket, checked on every
    /// connection with SO_PEERCRED (default: root and this process's user).
    #[arg(long, value_delimiter = ',', value_name = "UID,...")]
    pub allowed_uids: Vec<u32>,

    /// Where the kernel-log position (boot id, last sequence) is kept across restarts.
    #[arg(long, default_value = "/var/lib/npd-ext", value_name = "DIR")]
    pub state_dir: PathBuf,

    /// Number of simulated GPUs.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sim_gpus: u32,

    /// Fault scenario for the sim backend: a JSON file, or builtin:NAME
    /// (healthy, demo, xid79, reset-required, thermal).
    #[arg(
        long,
        default_value = "builtin:healthy",
        value_name = "FILE|builtin:NAME"
    )]
    pub sim_scenario: String,

    /// The operator's XID policy: a JSON file of per-XID overrides of the
    /// compiled-in catalog (checked by `validate-config`).
    #[arg(long, value_name = "FILE")]
    pub xid_policy: Option<PathBuf>,

    /// Serve Prometheus metrics on this address (`/metrics`); off by default.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Answer WatchHealth with UNIMPLEMENTED, as a plugin built against the
    /// Go proof of concept does, so detectors poll CheckHealth.
    #[arg(long)]
    pub disable_watch_health: bool,

    /// Grace period for shutdown.
    #[arg(long, value_parser = go_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct ValidateConfigArgs {
    /// Monitor config files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Print nothing for valid files and no warnings.
    #[arg(long, short)]
    pub quiet: bool,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The plugin's Unix socket, or an `http://` URL that must answer 200
    /// (the detector's `/healthz`, as an exec probe in an image with no
    /// shell or curl).
    #[arg(value_name = "SOCKET|URL")]
    pub socket: PathBuf,

    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Deadline of each call.
    #[arg(long, value_parser = go_duration, default_value = "5s")]
    pub timeout: Duration,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Fault scenario: a JSON file or builtin:NAME.
    #[arg(long, default_value = "builtin:demo", value_name = "FILE|builtin:NAME")]
    pub scenario: String,

    /// Number of simulated GPUs.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus: u32,

    /// Port of the /conditions server (0 picks a free one).
    #[arg(long, default_value_t = 20256)]
    pub port: u16,

    /// Exit after this long instead of waiting for Ctrl-C.
    #[arg(long, value_parser = go_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(args: &[&str]) -> DetectorArgs {
        let argv = std::iter::once("detector").chain(args.iter().copied());
        match Invocation::try_parse_from(argv).expect("parses") {
            Invocation::Applet(Applet::Detector(d)) => d,
            other => panic!("not the detector: {other:?}"),
        }
    }

    #[test]
    fn external_monitor_flag_is_comma_separated_and_repeatable() {
        let d = detector(&[
            "--config.external-monitor",
            "a.json,b.json",
            "--config.external-monitor=c.json",
        ]);
        let paths: Vec<_> = d
            .external_monitors
            .iter()
            .map(|p| p.to_str().unwrap_or_default())
            .collect();
        assert_eq!(paths, ["a.json", "b.json", "c.json"]);
        assert_eq!(d.enable_k8s_exporter, Toggle::Auto);
        assert_eq!(
            (d.address.to_string(), d.port),
            ("127.0.0.1".to_owned(), 20256)
        );
    }

    #[test]
    fn accepts_npd_logging_flags() {
        let d = detector(&["--logtostderr", "-v=4", "--enable-k8s-exporter=false"]);
        assert_eq!(d.logtostderr, Some(true));
        assert_eq!(d.verbosity, 4);
        assert_eq!(d.enable_k8s_exporter, Toggle::False);
        let d = detector(&["--v=2", "--logtostderr=false", "--enable-k8s-exporter"]);
        assert_eq!((d.verbosity, d.logtostderr), (2, Some(false)));
        assert_eq!(d.enable_k8s_exporter, Toggle::True);
    }

    #[test]
    fn counts_parse_as_go_parse_int_does() {
        assert_eq!(go_int("5"), Ok(5));
        assert_eq!(go_int("+5"), Ok(5));
        assert_eq!(go_int("-3"), Ok(-3));
        assert_eq!(go_int("0x10"), Ok(16));
        assert_eq!(go_int("0o17"), Ok(15));
        assert_eq!(go_int("017"), Ok(15));
        assert_eq!(go_int("0b11"), Ok(3));
        assert_eq!(go_int("1_000"), Ok(1000));
        assert!(go_int("x").is_err());
    }

    #[test]
    fn helpers_take_upstreams_flags() {
        let Invocation::Applet(Applet::HealthChecker(h)) = Invocation::try_parse_from([
            "health-checker",
            "--component=cri",
            "--enable-repair=false",
            "--cooldown-time=2m",
            "--cri-timeout=10s",
            "--systemd-service=containerd2",
            "--log-pattern=3:a,4:b",
            "--log-pattern=5:c",
            "--v=2",
            "extra",
        ])
        .expect("parses") else {
            panic!("not the health checker")
        };
        assert_eq!(h.component, "cri");
        assert!(!h.enable_repair);
        assert_eq!(h.cooldown_time, Duration::from_secs(120));
        assert_eq!(h.cri_timeout, Duration::from_secs(10));
        assert_eq!(h.service, "containerd2");
        assert_eq!(h.log_pattern, ["3:a,4:b", "5:c"]);
        let Invocation::Applet(Applet::HealthChecker(h)) = Invocation::try_parse_from([
            "health-checker",
            "--enable-repair",
            "--component",
            "docker",
            "--component=kubelet",
        ])
        .expect("parses") else {
            panic!("not the health checker")
        };
        assert!(h.enable_repair);
        assert_eq!(h.component, "kubelet", "the last value wins");
        assert_eq!(h.health_check_timeout, Duration::from_secs(10));
        let Invocation::NpdExt {
            applet: Applet::LogCounter(l),
        } = Invocation::try_parse_from([
            "npd-ext",
            "log-counter",
            "--journald-source=systemd",
            "--lookback=20m",
            "--count=-2",
            "--pattern=Started (a|b).",
        ])
        .expect("parses")
        else {
            panic!("not the log counter")
        };
        assert_eq!((l.journald_source.as_str(), l.count), ("systemd", -2));
        assert_eq!(l.pattern, "Started (a|b).");
    }

    #[test]
    fn npd_ext_prefix_and_direct_applet_are_the_same() {
        let a =
            Invocation::try_parse_from(["npd-ext", "probe", "/s.sock", "--json"]).expect("parses");
        assert!(matches!(
            a,
            Invocation::NpdExt {
                applet: Applet::Probe(ProbeArgs { json: true, .. })
            }
        ));
        let b = Invocation::try_parse_from(["probe", "/s.sock"]).expect("parses");
        assert!(matches!(b, Invocation::Applet(Applet::Probe(_))));
    }
}

#[derive(Debug, Args)]
pub struct PrepareDirArgs {
    /// The directory (created with its parents when missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Owner as UID:GID.
    #[arg(long, default_value = "1000:1000", value_name = "UID:GID")]
    pub owner: String,

    /// Permission bits, in octal.
    #[arg(long, default_value = "0750", value_name = "OCTAL")]
    pub mode: String,

    #[command(flatten)]
    pub log: LogArgs,
}

/// NPD's klog flags, which its helpers accept: `-v`/`--v`, `--vmodule`,
/// `--logtostderr`. Only `-v` 4 or more changes anything (debug logs).
#[derive(Debug, Args)]
pub struct KlogArgs {
    #[arg(
        short = 'v',
        long = "v",
        default_value_t = 0,
        value_name = "LEVEL",
        hide = true
    )]
    pub verbosity: u8,
    #[arg(long, value_name = "PATTERN", hide = true)]
    pub vmodule: Option<String>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL", hide = true)]
    pub logtostderr: Option<bool>,
    /// Go's flag parsing ignores arguments after the flags.
    #[arg(hide = true, value_name = "ARG")]
    pub ignored: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HealthCheckerArgs {
    /// The component to check: kubelet, docker, cri or kube-proxy.
    #[arg(long, default_value = "kubelet")]
    pub component: String,

    /// The systemd service behind the component (default: the component's
    /// name; containerd for cri).
    #[arg(long, alias = "systemd-service", default_value = "")]
    pub service: String,

    /// Kill the unhealthy service (systemctl kill) so that systemd restarts it.
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, value_name = "BOOL")]
    pub enable_repair: bool,

    /// crictl, for the cri component.
    #[arg(long, default_value = crate::helpers::health_checker::DEFAULT_CRICTL)]
    pub crictl_path: String,

    /// The CRI socket crictl talks to.
    #[arg(long, default_value = crate::helpers::health_checker::DEFAULT_CRI_SOCKET)]
    pub cri_socket_path: String,

    /// crictl's own --timeout.
    #[arg(long, value_parser = go_duration, default_value = "2s")]
    pub cri_timeout: Duration,

    /// How long the service must have been up before it may be killed.
    #[arg(long, value_parser = go_duration, default_value = "2m")]
    pub cooldown_time: Duration,

    /// How far back the log patterns are counted (0: since the service started).
    #[arg(long, value_parser = go_duration, default_value = "0s")]
    pub loopback_time: Duration,

    /// How long the health check may take before the component counts as unhealthy.
    #[arg(long, value_parser = go_duration, default_value = "10s")]
    pub health_check_timeout: Duration,

    /// COUNT:PATTERN: the component is unhealthy when PATTERN appears COUNT
    /// times in the service's journal (comma-separated, repeatable).
    #[arg(long, action = ArgAction::Append, value_name = "COUNT:PATTERN")]
    pub log_pattern: Vec<String>,

    #[command(flatten)]
    pub klog: KlogArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// An integer as Go's `strconv.ParseInt(s, 0, 64)` reads it: a sign, then
/// decimal, `0x`, `0o`/`0`, or `0b`, with `_` between digits.
fn go_int(s: &str) -> Result<i64, String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits = if radix != 10 || digits.contains('_') {
        digits.replace('_', "")
    } else {
        digits.to_owned()
    };
    let v = i64::from_str_radix(&digits, radix)
        .map_err(|_| format!("strconv.ParseInt: parsing {s:?}: invalid syntax"))?;
    Ok(if neg { -v } else { v })
}

#[derive(Debug, Args)]
pub struct LogCounterArgs {
    /// The source configuration of journald, e.g., kernel, kubelet, dockerd, etc
    #[arg(long, default_value = "")]
    pub journald_source: String,

    /// The log path that log watcher looks up
    #[arg(long, default_value = "")]
    pub log_path: String,

    /// The time log watcher looks up
    #[arg(long, default_value = "")]
    pub lookback: String,

    /// The time duration log watcher delays after node boot time. This is
    /// useful when log watcher needs to wait for some time until the node is stable.
    #[arg(long, default_value = "")]
    pub delay: String,

    /// The regular expression to match the problem in log. The pattern must
    /// match to the end of the line.
    #[arg(long, default_value = "")]
    pub pattern: String,

    /// Like --pattern, but every line it matches takes one from the count
    /// (a service stopped on purpose before it started again).
    #[arg(long, default_value = "")]
    pub revert_pattern: String,

    /// The number of times the pattern must be found to trigger the condition
    #[arg(long, default_value = "1", value_parser = go_int, allow_hyphen_values = true)]
    pub count: i64,

    #[command(flatten)]
    pub klog: KlogArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

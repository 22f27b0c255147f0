//! System stats monitor configs (upstream NPD's metrics-only monitor, no
//! `plugin` key): which metrics each collector exports and under what name,
//! how often, and the disk, OS-feature and net collectors' options.
//!
//! As upstream: `invokeInterval` defaults to 1m and must be above 0;
//! `lsblkTimeout` defaults to 5s, above 0 and at most `invokeInterval`;
//! `procPath` defaults to `/proc`. A metric is exported when its
//! `metricsConfigs` entry has a non-empty `displayName`. Unlike upstream, a
//! metric ID it does not know is an error (upstream ignores the entry, so a
//! typo silently exports nothing), and so is a name two metrics share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Checked;
use super::json::{self, Value};
use super::walk::{self, Obj, Sink};
use crate::monitor::stats::catalog::{self, Group};

pub const DEFAULT_INVOKE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_LSBLK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_PROC_PATH: &str = "/proc";
pub const DEFAULT_KNOWN_MODULES: &str = "guestosconfig/known-modules.json";

/// One exported metric: its catalog entry and its family name on `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// Index into [`catalog::CATALOG`].
    pub def: usize,
    /// The `displayName` as given.
    pub display_name: String,
    /// The Prometheus family name (the display name, sanitised).
    pub name: String,
}

impl Exported {
    pub fn def(&self) -> &'static catalog::Def {
        &catalog::CATALOG[self.def]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    pub include_root_blk: bool,
    pub include_all_attached_blk: bool,
    pub lsblk_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SystemStatsConfig {
    pub file: PathBuf,
    pub invoke_interval: Duration,
    /// Where the node's `/proc` is, as the config says (the detector's
    /// `--system-stats-root` is put in front).
    pub proc_path: PathBuf,
    /// Every metric exported, in catalog order.
    pub metrics: Vec<Exported>,
    /// Present when the config has a `disk` section.
    pub disk: Option<DiskOptions>,
    /// The known-modules list, resolved against the config's directory
    /// (present when the config has an `osFeature` section).
    pub known_modules: Option<PathBuf>,
    /// Interfaces whose names match are not exported (unanchored, Go syntax).
    pub exclude_interface: Option<String>,
}

impl SystemStatsConfig {
    /// Whether any metric of `group` is exported.
    pub fn wants(&self, group: Group) -> bool {
        self.metrics.iter().any(|m| m.def().group == group)
    }

    /// The exported metric with this ID, if any.
    pub fn exported(&self, id: &str) -> Option<&Exported> {
        self.metrics.iter().find(|m| m.def().id == id)
    }
}

/// Checks a system stats monitor config and reads it.
pub fn check(file: &Path, text: &str) -> Checked<SystemStatsConfig> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<SystemStatsConfig> {
    let mut top = Obj::new(sink, doc, "")?;
    let mut cfg = SystemStatsConfig {
        file: file.to_path_buf(),
        invoke_interval: DEFAULT_INVOKE_INTERVAL,
        proc_path: PathBuf::from(DEFAULT_PROC_PATH),
        metrics: Vec::new(),
        disk: None,
        known_modules: None,
        exclude_interface: None,
    };
    if let Some(f) = top.get(sink, &["invokeInterval"])
        && let Some(d) = walk::duration(sink, &f)
    {
        if d.is_zero() {
            sink.error(f.node.pos, &f.key, "must be above 0");
        }
        cfg.invoke_interval = d;
    }
    if let Some(f) = top.get(sink, &["procPath"])
        && let Some(p) = walk::string(sink, &f)
    {
        if p.is_empty() {
            sink.error(f.node.pos, &f.key, "must not be empty");
        }
        cfg.proc_path = PathBuf::from(p);
    }
    let mut lsblk_at = None;
    for group in Group::ALL {
        let Some(f) = top.get(sink, &[group.key()]) else {
            continue;
        };
        let Some(mut section) = Obj::new(sink, f.node, &f.key) else {
            continue;
        };
        if let Some(m) = section.get(sink, &["metricsConfigs"]) {
            read_metrics(sink, group, &m, &mut cfg.metrics);
        }
        match group {
            Group::Disk => {
                let mut disk = DiskOptions {
                    include_root_blk: false,
                    include_all_attached_blk: false,
                    lsblk_timeout: DEFAULT_LSBLK_TIMEOUT,
                };
                if let Some(f) = section.get(sink, &["includeRootBlk"]) {
                    disk.include_root_blk = walk::boolean(sink, &f).unwrap_or(false);
                }
                if let Some(f) = section.get(sink, &["includeAllAttachedBlk"]) {
                    disk.include_all_attached_blk = walk::boolean(sink, &f).unwrap_or(false);
                }
                if let Some(f) = section.get(sink, &["lsblkTimeout"])
                    && let Some(d) = walk::duration(sink, &f)
                {
                    if d.is_zero() {
                        sink.error(f.node.pos, &f.key, "must be above 0");
                    }
                    lsblk_at = Some((f.node.pos, f.key.clone()));
                    disk.lsblk_timeout = d;
                }
                cfg.disk = Some(disk);
            }
            Group::OsFeature => {
                let mut path = DEFAULT_KNOWN_MODULES.to_owned();
                if let Some(f) = section.get(sink, &["knownModulesConfigPath"])
                    && let Some(p) = walk::string(sink, &f)
                {
                    path = p;
                }
                let dir = file.parent().unwrap_or_else(|| Path::new("."));
                cfg.known_modules = Some(dir.join(path));
            }
            Group::Net => {
                if let Some(f) = section.get(sink, &["excludeInterfaceRegexp"])
                    && let Some(re) = walk::string(sink, &f)
                {
                    match super::goregex::compile(&re) {
                        Ok(_) => cfg.exclude_interface = Some(re).filter(|r| !r.is_empty()),
                        Err(e) => sink.error(
                            f.node.pos,
                            &f.key,
                            format!("invalid regex: {}", super::goregex::describe(&re, &e)),
                        ),
                    }
                }
            }
            Group::Cpu | Group::Host | Group::Memory => {}
        }
        section.finish(sink);
    }
    let top_pos = top.pos;
    top.finish(sink);
    if let (Some(disk), Some((pos, key))) = (&cfg.disk, lsblk_at)
        && disk.lsblk_timeout > cfg.invoke_interval
    {
        sink.error(
            pos,
            &key,
            format!(
                "{} is longer than invokeInterval ({}): lsblk must finish before the next collection",
                crate::config::duration::format_go(disk.lsblk_timeout),
                crate::config::duration::format_go(cfg.invoke_interval)
            ),
        );
    }
    if cfg.metrics.is_empty() {
        sink.warn(
            top_pos,
            "",
            "no metric has a displayName: this monitor exports nothing",
        );
    }
    cfg.metrics.sort_by_key(|m| m.def);
    Some(cfg)
}

/// One section's `metricsConfigs`: every ID must be one of the section's,
/// every exported name unique in the file.
fn read_metrics(sink: &mut Sink, group: Group, m: &walk::Found<'_>, out: &mut Vec<Exported>) {
    let Value::Object(members) = &m.node.value else {
        sink.error(
            m.node.pos,
            &m.key,
            format!("must be an object, found {}", m.node.value.kind()),
        );
        return;
    };
    for member in members {
        let path = walk::join(&m.key, &member.key);
        let Some(mut entry) = Obj::new(sink, &member.value, &path) else {
            continue;
        };
        let display = entry
            .get(sink, &["displayName"])
            .and_then(|d| walk::string(sink, &d).map(|s| (s, d.node.pos)));
        entry.finish(sink);
        let def = match catalog::find(&member.key) {
            Some((i, d)) if d.group == group => i,
            Some((_, d)) => {
                sink.error(
                    member.key_pos,
                    &path,
                    format!(
                        "{:?} belongs to the {:?} section, not {:?}",
                        member.key,
                        d.group.key(),
                        group.key()
                    ),
                );
                continue;
            }
            None => {
                let known: Vec<&'static str> = catalog::ids_of(group).collect();
                let help = walk::did_you_mean(&member.key, &known).map_or_else(
                    || format!("{} metrics: {}", group.key(), known.join(", ")),
                    |s| format!("did you mean {s:?}?"),
                );
                sink.error(
                    member.key_pos,
                    &path,
                    format!("unknown {} metric {:?} ({help})", group.key(), member.key),
                );
                continue;
            }
        };
        let Some((display_name, pos)) = display.filter(|(d, _)| !d.is_empty()) else {
            // Upstream: no displayName, not exported.
            continue;
        };
        let name = catalog::sanitize(&display_name);
        if let Some(other) = out.iter().find(|e| e.name == name) {
            sink.error(
                pos,
                &walk::join(&path, "displayName"),
                format!(
                    "{display_name:?} is exported as {name}, as {:?} already is",
                    other.def().id
                ),
            );
            continue;
        }
        out.push(Exported {
            def,
            display_name,
            name,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        check(Path::new("/etc/npd/s.json"), text)
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_names_options_and_upstreams_defaults() {
        let text = r#"{
  "cpu": {"metricsConfigs": {"cpu/load_1m": {"displayName": "cpu/load_1m"},
                             "cpu/load_5m": {"displayName": ""}}},
  "disk": {"includeRootBlk": true, "metricsConfigs": {"disk/io_time": {"displayName": "io"}}},
  "osFeature": {"KnownModulesConfigPath": "known.json",
                "metricsConfigs": {"system/os_feature": {"displayName": "system/os_feature"}}},
  "net": {"excludeInterfaceRegexp": "^(cali|veth)",
          "metricsConfigs": {"net/rx_bytes": {"displayName": "net/rx_bytes"}}}
}"#;
        let c = check(Path::new("/etc/npd/s.json"), text);
        let cfg = c.config.expect("valid");
        assert_eq!(cfg.invoke_interval, DEFAULT_INVOKE_INTERVAL);
        assert_eq!(cfg.proc_path, Path::new("/proc"));
        let names: Vec<_> = cfg.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["cpu_load_1m", "io", "system_os_feature", "net_rx_bytes"]
        );
        let disk = cfg.disk.clone().expect("disk section");
        assert!(disk.include_root_blk && !disk.include_all_attached_blk);
        assert_eq!(disk.lsblk_timeout, DEFAULT_LSBLK_TIMEOUT);
        assert_eq!(
            cfg.known_modules.as_deref(),
            Some(Path::new("/etc/npd/known.json"))
        );
        assert_eq!(cfg.exclude_interface.as_deref(), Some("^(cali|veth)"));
        assert!(!cfg.wants(Group::Memory) && cfg.wants(Group::Net));
    }

    #[test]
    fn unknown_misplaced_and_clashing_metrics_are_errors_naming_them() {
        let e = errors(
            r#"{"cpu": {"metricsConfigs": {"cpu/load_1": {"displayName": "x"},
                                         "disk/io_time": {"displayName": "y"},
                                         "cpu/load_5m": {"displayName": "a/b"},
                                         "cpu/load_15m": {"displayName": "a_b"}}}}"#,
        );
        assert!(
            e.iter().any(|d| d.contains("error: cpu.metricsConfigs.cpu/load_1: unknown cpu metric \"cpu/load_1\" (did you mean \"cpu/load_1m\"?)")),
            "{e:?}"
        );
        assert!(
            e.iter().any(
                |d| d.contains("\"disk/io_time\" belongs to the \"disk\" section, not \"cpu\"")
            ),
            "{e:?}"
        );
        assert!(
            e.iter().any(|d| d.contains("error: cpu.metricsConfigs.cpu/load_15m.displayName: \"a_b\" is exported as a_b, as \"cpu/load_5m\" already is")),
            "{e:?}"
        );
    }

    #[test]
    fn intervals_are_checked_as_upstream_checks_them() {
        let e = errors(
            r#"{"invokeInterval": "10s", "disk": {"lsblkTimeout": "30s", "metricsConfigs": {}}}"#,
        );
        assert!(
            e.iter()
                .any(|d| d
                    .contains("error: disk.lsblkTimeout: 30s is longer than invokeInterval (10s)")),
            "{e:?}"
        );
        let e = errors(r#"{"invokeInterval": "0s"}"#);
        assert!(
            e.iter()
                .any(|d| d.contains("error: invokeInterval: must be above 0")),
            "{e:?}"
        );
        let e = errors(r#"{"net": {"excludeInterfaceRegexp": "(", "metricsConfigs": {}}}"#);
        assert!(
            e.iter()
                .any(|d| d.contains("error: net.excludeInterfaceRegexp: invalid regex")),
            "{e:?}"
        );
    }
}

//! Custom plugin monitor configs (`"plugin": "custom"`): NPD's exit-code
//! protocol scripts, with their intervals, timeouts and output limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::external::{ConditionDecl, read_conditions};
use super::json::{self, Value};
use super::syslog::{RuleKind, read_rule_head};
use super::walk::{self, Found, Obj, Sink, join};
use super::{Checked, windows_only};
use crate::config::duration::format_go;

// NPD's defaults.
pub const DEFAULT_INVOKE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_OUTPUT_LENGTH: usize = 80;
pub const DEFAULT_CONCURRENCY: usize = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct CustomRule {
    pub kind: RuleKind,
    pub condition: Option<String>,
    pub reason: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub timeout: Option<Duration>,
    pub invoke_interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CustomPluginConfig {
    pub file: PathBuf,
    pub source: String,
    pub invoke_interval: Duration,
    pub timeout: Duration,
    pub max_output_length: usize,
    pub concurrency: usize,
    pub message_change_updates: bool,
    pub skip_initial_status: bool,
    pub conditions: Vec<ConditionDecl>,
    pub rules: Vec<CustomRule>,
    pub metrics_reporting: bool,
}

pub fn check(file: &Path, text: &str) -> Checked<CustomPluginConfig> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<CustomPluginConfig> {
    let mut top = Obj::new(sink, doc, "")?;
    match top.get(sink, &["plugin"]) {
        Some(f) => {
            if let Some(p) = walk::string(sink, &f)
                && p != "custom"
            {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("{p:?} is not a custom plugin monitor"),
                );
            }
        }
        None => sink.error(top.pos, "plugin", "missing"),
    }
    let mut cfg = CustomPluginConfig {
        file: file.to_path_buf(),
        source: String::new(),
        invoke_interval: DEFAULT_INVOKE_INTERVAL,
        timeout: DEFAULT_TIMEOUT,
        max_output_length: DEFAULT_MAX_OUTPUT_LENGTH,
        concurrency: DEFAULT_CONCURRENCY,
        message_change_updates: false,
        skip_initial_status: false,
        conditions: Vec::new(),
        rules: Vec::new(),
        metrics_reporting: true,
    };
    if let Some(f) = top.get(sink, &["source"]) {
        cfg.source = walk::string(sink, &f).unwrap_or_default();
    }
    if let Some(f) = top.get(sink, &["metricsReporting"]) {
        cfg.metrics_reporting = walk::boolean(sink, &f).unwrap_or(true);
    }
    if let Some(f) = top.get(sink, &["pluginConfig"])
        && let Some(mut pc) = Obj::new(sink, f.node, &f.key)
    {
        if let Some(f) = pc.get(sink, &["invoke_interval"]) {
            cfg.invoke_interval = positive(sink, &f).unwrap_or(cfg.invoke_interval);
        }
        if let Some(f) = pc.get(sink, &["timeout"]) {
            cfg.timeout = positive(sink, &f).unwrap_or(cfg.timeout);
        }
        if let Some(f) = pc.get(sink, &["max_output_length"]) {
            cfg.max_output_length = walk::unsigned(sink, &f)
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(cfg.max_output_length);
        }
        if let Some(f) = pc.get(sink, &["concurrency"]) {
            match walk::unsigned(sink, &f) {
                // Upstream blocks forever on 0 (an unbuffered semaphore).
                Some(0) => sink.error(
                    f.node.pos,
                    &f.key,
                    "must be at least 1 (0 would run nothing)",
                ),
                Some(v) => cfg.concurrency = usize::try_from(v).unwrap_or(cfg.concurrency),
                None => {}
            }
        }
        if let Some(f) = pc.get(sink, &["enable_message_change_based_condition_update"]) {
            cfg.message_change_updates = walk::boolean(sink, &f).unwrap_or(false);
        }
        if let Some(f) = pc.get(sink, &["skip_initial_status"]) {
            cfg.skip_initial_status = walk::boolean(sink, &f).unwrap_or(false);
        }
        pc.finish(sink);
    }
    if let Some(f) = top.get(sink, &["conditions"]) {
        cfg.conditions = read_conditions(sink, &f, false);
    }
    if let Some(f) = top.get(sink, &["rules"]) {
        cfg.rules = read_rules(sink, &f, &cfg);
    }
    top.finish(sink);
    Some(cfg)
}

fn positive(sink: &mut Sink, f: &Found<'_>) -> Option<Duration> {
    let d = walk::duration(sink, f)?;
    if d.is_zero() {
        sink.error(f.node.pos, &f.key, "must be greater than 0");
        return None;
    }
    Some(d)
}

fn read_rules(sink: &mut Sink, f: &Found<'_>, cfg: &CustomPluginConfig) -> Vec<CustomRule> {
    let Value::Array(items) = &f.node.value else {
        sink.error(
            f.node.pos,
            &f.key,
            format!("must be an array of rules, found {}", f.node.value.kind()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path_key = format!("rules[{i}]");
        let Some(mut obj) = Obj::new(sink, item, &path_key) else {
            continue;
        };
        let (kind, condition) = read_rule_head(sink, &mut obj, item, &path_key, &cfg.conditions);
        let reason = obj
            .get(sink, &["reason"])
            .and_then(|f| walk::string(sink, &f))
            .unwrap_or_default();
        let path = match obj.get(sink, &["path"]) {
            Some(f) => {
                let p = walk::string(sink, &f).unwrap_or_default();
                if let Some(why) = windows_only(&p) {
                    sink.error(
                        f.node.pos,
                        &f.key,
                        format!("{p:?} is {why}: a Windows-only plugin; npd-ext runs on Linux"),
                    );
                } else if !Path::new(&p).exists() {
                    sink.warn(f.node.pos, &f.key, format!("{p} does not exist on this machine (upstream NPD refuses to start such a monitor)"));
                }
                PathBuf::from(p)
            }
            None => {
                sink.error(
                    item.pos,
                    &join(&path_key, "path"),
                    "missing; the plugin to run",
                );
                PathBuf::new()
            }
        };
        let mut args = Vec::new();
        if let Some(f) = obj.get(sink, &["args"]) {
            match &f.node.value {
                Value::Array(items) => {
                    for (j, a) in items.iter().enumerate() {
                        match &a.value {
                            Value::String(s) => args.push(s.clone()),
                            other => sink.error(
                                a.pos,
                                &format!("{}[{j}]", f.key),
                                format!("must be a string, found {}", other.kind()),
                            ),
                        }
                    }
                }
                other => sink.error(
                    f.node.pos,
                    &f.key,
                    format!("must be an array of strings, found {}", other.kind()),
                ),
            }
        }
        let timeout = obj.get(sink, &["timeout"]).and_then(|f| {
            let t = positive(sink, &f)?;
            if t > cfg.timeout {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!(
                        "{} is longer than the global timeout {}",
                        format_go(t),
                        format_go(cfg.timeout)
                    ),
                );
            }
            Some(t)
        });
        let invoke_interval = obj
            .get(sink, &["invoke_interval"])
            .and_then(|f| positive(sink, &f));
        obj.finish(sink);
        if let Some(kind) = kind {
            out.push(CustomRule {
                kind,
                condition,
                reason,
                path,
                args,
                timeout,
                invoke_interval,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Level;

    #[test]
    fn validates_like_npd_and_more() {
        let text = r#"{"plugin": "custom", "pluginConfig": {"invoke_interval": "0s", "timeout": "5s", "concurrency": 0},
 "conditions": [{"type": "KubeletUnhealthy", "reason": "R", "message": "m"}],
 "rules": [{"type": "permanent", "condition": "Nope", "reason": "X", "path": "/bin/true", "timeout": "10s"},
           {"type": "temporary", "reason": "Y", "path": "C:\\etc\\check.ps1"}]}"#;
        let c = check(Path::new("c.json"), text);
        assert!(c.config.is_none());
        let all: Vec<String> = c.errors().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("pluginConfig.invoke_interval: must be greater than 0"),
            "{all}"
        );
        assert!(
            all.contains("pluginConfig.concurrency: must be at least 1"),
            "{all}"
        );
        assert!(
            all.contains("rules[0].condition: \"Nope\" is not declared"),
            "{all}"
        );
        assert!(
            all.contains("rules[0].timeout: 10s is longer than the global timeout 5s"),
            "{all}"
        );
        assert!(
            all.contains("rules[1].path: \"C:\\\\etc\\\\check.ps1\" is a Windows path"),
            "{all}"
        );
    }

    #[test]
    fn a_missing_plugin_is_a_warning_not_an_error() {
        let c = check(
            Path::new("c.json"),
            r#"{"plugin": "custom", "rules": [{"type": "temporary", "reason": "Y", "path": "/nonexistent/check"}]}"#,
        );
        assert!(c.config.is_some(), "{:?}", c.diagnostics);
        assert!(
            c.diagnostics
                .iter()
                .any(|d| d.level == Level::Warning && d.key == "rules[0].path")
        );
    }
}

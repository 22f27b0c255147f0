//! System log monitor configs (`"plugin": "kmsg" | "filelog" | "journald"`),
//! as upstream NPD ships them: rules with Go-compatible patterns, a
//! multi-line buffer, lookback and delay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::external::{ConditionDecl, read_conditions};
use super::json::{self, Value};
use super::walk::{self, Obj, Sink, join};
use super::{Checked, windows_only};

/// NPD's default multi-line buffer, used when `bufferSize` is 0 or absent.
pub const DEFAULT_BUFFER_SIZE: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogPlugin {
    Kmsg,
    Filelog,
    Journald,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// An event each time the pattern matches.
    Temporary,
    /// Sets a condition (and sends an event when it changes).
    Permanent,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogRule {
    pub kind: RuleKind,
    /// The condition type a permanent rule sets.
    pub condition: Option<String>,
    pub reason: String,
    pub pattern: String,
    pub message_suffix: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SyslogMonitorConfig {
    pub file: PathBuf,
    pub plugin: LogPlugin,
    pub plugin_config: BTreeMap<String, String>,
    pub log_path: Option<String>,
    pub lookback: Option<Duration>,
    pub delay: Option<Duration>,
    pub skip_list: Vec<String>,
    pub buffer_size: usize,
    pub source: String,
    pub conditions: Vec<ConditionDecl>,
    pub rules: Vec<LogRule>,
    pub metrics_reporting: bool,
}

/// Checks one system log monitor config; every problem, with positions.
pub fn check(file: &Path, text: &str) -> Checked<SyslogMonitorConfig> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<SyslogMonitorConfig> {
    let mut top = Obj::new(sink, doc, "")?;
    let plugin = match top
        .get(sink, &["plugin"])
        .and_then(|f| walk::string(sink, &f).map(|p| (p, f.node.pos)))
    {
        Some((p, _)) if p == "kmsg" => LogPlugin::Kmsg,
        Some((p, _)) if p == "filelog" => LogPlugin::Filelog,
        Some((p, _)) if p == "journald" => LogPlugin::Journald,
        Some((p, pos)) => {
            sink.error(
                pos,
                "plugin",
                format!("{p:?} is not a system log monitor (kmsg, filelog, journald)"),
            );
            return None;
        }
        None => {
            sink.error(top.pos, "plugin", "missing");
            return None;
        }
    };
    let mut cfg = SyslogMonitorConfig {
        file: file.to_path_buf(),
        plugin,
        plugin_config: BTreeMap::new(),
        log_path: None,
        lookback: None,
        delay: None,
        skip_list: Vec::new(),
        buffer_size: DEFAULT_BUFFER_SIZE,
        source: String::new(),
        conditions: Vec::new(),
        rules: Vec::new(),
        metrics_reporting: true,
    };
    // pluginConfig is a map of strings in NPD: any key is accepted.
    if let Some(f) = top.get(sink, &["pluginConfig"]) {
        match &f.node.value {
            Value::Object(members) => {
                for m in members {
                    match &m.value.value {
                        Value::String(v) => {
                            cfg.plugin_config.insert(m.key.clone(), v.clone());
                        }
                        other => sink.error(
                            m.value.pos,
                            &join(&f.key, &m.key),
                            format!("must be a string, found {}", other.kind()),
                        ),
                    }
                }
            }
            other => sink.error(
                f.node.pos,
                &f.key,
                format!("must be an object, found {}", other.kind()),
            ),
        }
    }
    let log_path_pos = top.get(sink, &["logPath"]).map(|f| {
        cfg.log_path = walk::string(sink, &f);
        (f.node.pos, f.key)
    });
    if let Some(f) = top.get(sink, &["lookback"]) {
        cfg.lookback = walk::duration(sink, &f);
    }
    if let Some(f) = top.get(sink, &["delay"]) {
        // NPD's default is the empty string: no delay.
        cfg.delay = match &f.node.value {
            Value::String(s) if s.is_empty() => None,
            _ => walk::duration(sink, &f),
        };
    }
    if let Some(f) = top.get(sink, &["skipList"]) {
        match &f.node.value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match &item.value {
                        Value::String(s) => cfg.skip_list.push(s.clone()),
                        other => sink.error(
                            item.pos,
                            &format!("skipList[{i}]"),
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
    if let Some(f) = top.get(sink, &["bufferSize"]) {
        match &f.node.value {
            Value::Number(n) => match n.parse::<i64>() {
                Ok(0) => {}
                Ok(v) if v > 0 => {
                    cfg.buffer_size = usize::try_from(v).unwrap_or(DEFAULT_BUFFER_SIZE)
                }
                _ => sink.error(
                    f.node.pos,
                    &f.key,
                    format!("must be a whole number ≥ 1, found {n}"),
                ),
            },
            other => sink.error(
                f.node.pos,
                &f.key,
                format!("must be a number, found {}", other.kind()),
            ),
        }
    }
    if let Some(f) = top.get(sink, &["source"]) {
        cfg.source = walk::string(sink, &f).unwrap_or_default();
    }
    if let Some(f) = top.get(sink, &["metricsReporting"]) {
        cfg.metrics_reporting = walk::boolean(sink, &f).unwrap_or(true);
    }
    if let Some(f) = top.get(sink, &["conditions"]) {
        cfg.conditions = read_conditions(sink, &f, true);
    }
    if let Some(f) = top.get(sink, &["rules"]) {
        cfg.rules = read_rules(sink, &f, &cfg.conditions);
    }
    let top_pos = top.pos;
    top.finish(sink);

    // Phase two: what each plugin needs.
    match cfg.plugin {
        LogPlugin::Filelog => {
            match (&cfg.log_path, &log_path_pos) {
                (None, _) => sink.error(
                    top_pos,
                    "logPath",
                    "missing; filelog needs the file to follow",
                ),
                (Some(p), Some((pos, key))) => {
                    if let Some(why) = windows_only(p) {
                        sink.error(
                            *pos,
                            key,
                            format!("{p:?} is {why}: a Windows-only config; npd-ext runs on Linux"),
                        );
                    }
                }
                _ => {}
            }
            for key in ["timestamp", "message", "timestampFormat"] {
                if !cfg.plugin_config.contains_key(key) {
                    sink.error(
                        top_pos,
                        &join("pluginConfig", key),
                        "missing; filelog parses every line with it",
                    );
                }
            }
            for key in ["timestamp", "message"] {
                if let Some(p) = cfg.plugin_config.get(key)
                    && let Err(e) = super::goregex::compile(p)
                {
                    sink.error(
                        top_pos,
                        &join("pluginConfig", key),
                        format!("invalid regex: {}", super::goregex::describe(p, &e)),
                    );
                }
            }
        }
        LogPlugin::Journald => {
            if cfg.plugin_config.get("source").is_none_or(String::is_empty) {
                sink.error(
                    top_pos,
                    "pluginConfig.source",
                    "missing; journald matches it against SYSLOG_IDENTIFIER",
                );
            }
        }
        LogPlugin::Kmsg => {}
    }
    Some(cfg)
}

/// The `type` and `condition` of a rule (system log and custom plugin
/// rules share them): a permanent rule must name a declared condition.
pub(crate) fn read_rule_head(
    sink: &mut Sink,
    obj: &mut Obj<'_>,
    item: &json::Node,
    path: &str,
    conditions: &[ConditionDecl],
) -> (Option<RuleKind>, Option<String>) {
    let kind = match obj
        .get(sink, &["type"])
        .and_then(|f| walk::string(sink, &f).map(|s| (s, f)))
    {
        Some((s, _)) if s == "temporary" => Some(RuleKind::Temporary),
        Some((s, _)) if s == "permanent" => Some(RuleKind::Permanent),
        Some((s, f)) => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("{s:?}: a rule is \"temporary\" or \"permanent\""),
            );
            None
        }
        None => {
            sink.error(item.pos, &join(path, "type"), "missing");
            None
        }
    };
    let condition = obj.get(sink, &["condition"]).and_then(|f| {
        let c = walk::string(sink, &f)?;
        if kind == Some(RuleKind::Permanent) && !conditions.iter().any(|d| d.type_ == c) {
            sink.error(
                f.node.pos,
                &f.key,
                format!("{c:?} is not declared in conditions, so the rule could never set it"),
            );
        }
        Some(c)
    });
    if kind == Some(RuleKind::Permanent) && condition.is_none() {
        sink.error(
            item.pos,
            &join(path, "condition"),
            "missing; a permanent rule sets a condition",
        );
    }
    (kind, condition)
}

fn read_rules(sink: &mut Sink, f: &walk::Found<'_>, conditions: &[ConditionDecl]) -> Vec<LogRule> {
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
        let path = format!("rules[{i}]");
        let Some(mut obj) = Obj::new(sink, item, &path) else {
            continue;
        };
        let (kind, condition) = read_rule_head(sink, &mut obj, item, &path, conditions);
        let reason = match obj.get(sink, &["reason"]) {
            Some(f) => walk::string(sink, &f).unwrap_or_default(),
            None => {
                sink.error(item.pos, &join(&path, "reason"), "missing");
                String::new()
            }
        };
        let pattern = match obj.get(sink, &["pattern"]) {
            Some(f) => {
                let p = walk::string(sink, &f).unwrap_or_default();
                if let Err(e) = super::goregex::compile(&p) {
                    sink.error(
                        f.node.pos,
                        &f.key,
                        format!("invalid regex: {}", super::goregex::describe(&p, &e)),
                    );
                }
                p
            }
            None => {
                sink.error(item.pos, &join(&path, "pattern"), "missing");
                String::new()
            }
        };
        let message_suffix = obj
            .get(sink, &["patternGeneratedMessageSuffix"])
            .and_then(|f| walk::string(sink, &f));
        obj.finish(sink);
        if let Some(kind) = kind {
            out.push(LogRule {
                kind,
                condition,
                reason,
                pattern,
                message_suffix,
            });
        }
    }
    out
}

/// A regex error on one line (the crate draws the pattern with a caret on
/// several lines; the position is what matters here).
pub(crate) fn one_line(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_in_a_bad_kmsg_config() {
        let text = r#"{"plugin": "kmsg", "bufferSize": -1, "lookback": "5 m",
 "conditions": [{"type": "KernelDeadlock", "reason": "R", "message": "m"}],
 "rules": [{"type": "permanent", "condition": "Undeclared", "reason": "X", "pattern": "task (.+ blocked"},
           {"type": "sometimes", "reason": "Y", "pattern": "ok"}]}"#;
        let c = check(Path::new("k.json"), text);
        assert!(c.config.is_none());
        let all: Vec<String> = c.errors().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("bufferSize: must be a whole number ≥ 1, found -1"),
            "{all}"
        );
        assert!(all.contains("lookback: invalid duration"), "{all}");
        assert!(
            all.contains("rules[0].condition: \"Undeclared\" is not declared"),
            "{all}"
        );
        assert!(
            all.contains("rules[0].pattern: invalid regex: unclosed group at character 6 of the pattern: \"task \" <- here"),
            "{all}"
        );
        assert!(all.contains("rules[1].type: \"sometimes\""), "{all}");
    }

    #[test]
    fn filelog_and_journald_needs() {
        let c = check(
            Path::new("f.json"),
            r#"{"plugin": "filelog", "pluginConfig": {"timestamp": "^(x"}}"#,
        );
        let all: Vec<String> = c.errors().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(all.contains("logPath: missing"), "{all}");
        assert!(all.contains("pluginConfig.message: missing"), "{all}");
        assert!(
            all.contains("pluginConfig.timestamp: invalid regex"),
            "{all}"
        );
        let c = check(Path::new("j.json"), r#"{"plugin": "journald"}"#);
        assert!(
            c.errors().any(|d| d.key == "pluginConfig.source"),
            "{:?}",
            c.diagnostics
        );
    }
}

//! External monitor config (`"plugin": "external"`): both key spellings found
//! in the wild, Go durations or integer nanoseconds, defaults in one place.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Checked;
use super::duration::format_go;
use super::json::{self, Value};
use super::walk::{self, Found, Obj, Sink, join};
use crate::problem::is_kubelet_owned;

// ---------------------------------------------------------------------------
// Defaults (DESIGN.md §4)
// ---------------------------------------------------------------------------

pub const DEFAULT_INVOKE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_ERROR_THRESHOLD: u32 = 3;

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// The largest message a plugin may send, unless its config says otherwise.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct ExternalMonitorConfig {
    /// Where the config came from (for messages).
    pub file: PathBuf,
    pub source: String,
    pub socket_path: PathBuf,
    /// Polling period when the plugin has no `WatchHealth`.
    pub invoke_interval: Duration,
    /// Deadline of each RPC.
    pub timeout: Duration,
    pub skip_initial_status: bool,
    /// Largest message accepted from the plugin, in bytes.
    pub max_message_size: usize,
    /// When set, the plugin is trusted only if the process serving its
    /// socket runs as one of these uids.
    pub allowed_peer_uids: Option<Vec<u32>>,
    pub retry: RetryPolicy,
    pub health_check: HealthCheck,
    pub parameters: BTreeMap<String, String>,
    /// Condition types this monitor owns; empty means "adopt the plugin's
    /// `supported_conditions`".
    pub conditions: Vec<ConditionDecl>,
    pub metrics_reporting: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Consecutive failed reconnects after which the monitor says so loudly.
    /// It keeps retrying at `max_backoff`: giving up would leave stale state.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// How often a watched plugin is asked `grpc.health.v1` whether it serves.
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures after which every declared condition turns Unknown.
    pub error_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionDecl {
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// Extension for system log monitors: a permanent condition clears
    /// itself this long after its rule last matched (NPD's are sticky).
    pub resolve_after: Option<Duration>,
}

impl ExternalMonitorConfig {
    /// A config with every default, for programmatic use (demo, tests).
    pub fn new(source: impl Into<String>, socket_path: impl Into<PathBuf>) -> Self {
        Self {
            file: PathBuf::from("<built-in>"),
            source: source.into(),
            socket_path: socket_path.into(),
            invoke_interval: DEFAULT_INVOKE_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            skip_initial_status: false,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            allowed_peer_uids: None,
            retry: RetryPolicy {
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                initial_backoff: DEFAULT_INITIAL_BACKOFF,
                max_backoff: DEFAULT_MAX_BACKOFF,
                multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            },
            health_check: HealthCheck {
                interval: DEFAULT_HEALTH_INTERVAL,
                timeout: DEFAULT_HEALTH_TIMEOUT,
                error_threshold: DEFAULT_ERROR_THRESHOLD,
            },
            parameters: BTreeMap::new(),
            conditions: Vec::new(),
            metrics_reporting: true,
        }
    }
}

impl ExternalMonitorConfig {
    /// Declares `types` as the conditions this monitor owns (reason and
    /// message of a declaration only matter in config files).
    #[must_use]
    pub fn with_conditions(mut self, types: &[&str]) -> Self {
        self.conditions = types
            .iter()
            .map(|t| ConditionDecl {
                type_: (*t).to_owned(),
                reason: String::new(),
                message: String::new(),
                resolve_after: None,
            })
            .collect();
        self
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Checks one external monitor config. Phase one reads every key (types,
/// durations, spellings); phase two checks the values against each other.
pub fn check(file: &Path, text: &str) -> Checked<ExternalMonitorConfig> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<ExternalMonitorConfig> {
    let mut top = Obj::new(sink, doc, "")?;
    let mut cfg = ExternalMonitorConfig::new("", "");
    cfg.file = file.to_path_buf();

    match top.get(sink, &["plugin"]) {
        Some(f) => {
            if let Some(p) = walk::string(sink, &f)
                && p != "external"
            {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("plugin {p:?} is not an external monitor; this file must say \"plugin\": \"external\""),
                );
            }
        }
        None => sink.error(
            top.pos,
            "plugin",
            "missing; an external monitor config needs \"plugin\": \"external\"",
        ),
    }
    let source_pos;
    match top.get(sink, &["source"]) {
        Some(f) => {
            source_pos = f.node.pos;
            cfg.source = walk::string(sink, &f).unwrap_or_default();
        }
        None => source_pos = top.pos,
    }
    if cfg.source.trim().is_empty() {
        sink.error(
            source_pos,
            "source",
            "missing or empty; name the monitor, for example \"gpu-monitor\"",
        );
    }
    if let Some(f) = top.get(sink, &["metricsReporting"]) {
        cfg.metrics_reporting = walk::boolean(sink, &f).unwrap_or(true);
        sink.warn(
            f.node.pos,
            &f.key,
            "the Go proof of concept forced this to true and never read it; npd-ext accepts it",
        );
    }
    if let Some(f) = top.get(sink, &["rules"]) {
        sink.warn(
            f.node.pos,
            &f.key,
            "external monitors have no rules (the plugin decides its conditions); ignored, as the Go proof of concept did",
        );
    }
    if let Some(f) = top.get(sink, &["conditions"]) {
        cfg.conditions = read_conditions(sink, &f, false);
    }
    let mut socket_pos = top.pos;
    let mut spots = Spots::default();
    match top.get(sink, &["pluginConfig"]) {
        Some(f) => {
            if let Some(mut pc) = Obj::new(sink, f.node, &f.key) {
                socket_pos = pc.pos;
                read_plugin_config(sink, &mut pc, &mut cfg, &mut spots);
                pc.finish(sink);
            }
        }
        None => sink.error(
            top.pos,
            "pluginConfig",
            "missing; it holds the plugin's socketPath",
        ),
    }
    top.finish(sink);

    // Phase two: values against each other.
    if cfg.socket_path.as_os_str().is_empty() {
        sink.error(
            socket_pos,
            "pluginConfig.socketPath",
            "missing; give the plugin's Unix socket, for example \"/var/run/npd/npd-gpu-monitor.sock\"",
        );
    } else if cfg.socket_path.is_relative() {
        sink.warn(
            socket_pos,
            "pluginConfig.socketPath",
            format!(
                "{} is relative: it is resolved against the detector's working directory",
                cfg.socket_path.display()
            ),
        );
    }
    validate(sink, socket_pos, &spots, &cfg);
    Some(cfg)
}

fn read_plugin_config(
    sink: &mut Sink,
    pc: &mut Obj<'_>,
    cfg: &mut ExternalMonitorConfig,
    spots: &mut Spots,
) {
    if let Some(f) = pc.get(sink, &["socketPath", "socketAddress"]) {
        let s = walk::string(sink, &f).unwrap_or_default();
        cfg.socket_path = PathBuf::from(s.strip_prefix("unix://").unwrap_or(&s));
    }
    if let Some(f) = pc.get(sink, &["invoke_interval", "invokeInterval"]) {
        cfg.invoke_interval = spots
            .note("invoke_interval", &f, walk::duration(sink, &f))
            .unwrap_or(cfg.invoke_interval);
    }
    if let Some(f) = pc.get(sink, &["timeout", "grpcTimeout"]) {
        cfg.timeout = spots
            .note("timeout", &f, walk::duration(sink, &f))
            .unwrap_or(cfg.timeout);
        poc_ignored(sink, &f, "grpcTimeout", "as the deadline of every call");
    }
    if let Some(f) = pc.get(sink, &["allowedPeerUids"]) {
        match &f.node.value {
            Value::Array(items) => {
                let mut uids = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match &item.value {
                        Value::Number(n) if let Ok(uid) = n.parse::<u32>() => uids.push(uid),
                        other => sink.error(
                            item.pos,
                            &format!("{}[{i}]", f.key),
                            format!("must be a uid (a whole number), found {}", other.kind()),
                        ),
                    }
                }
                cfg.allowed_peer_uids = Some(uids);
            }
            other => sink.error(
                f.node.pos,
                &f.key,
                format!("must be an array of uids, found {}", other.kind()),
            ),
        }
    }
    if let Some(f) = pc.get(sink, &["maxMessageSize"]) {
        match walk::unsigned(sink, &f) {
            Some(n) if n < 1024 => sink.error(
                f.node.pos,
                &f.key,
                format!("{n} bytes is too small for any status (at least 1024)"),
            ),
            Some(n) => cfg.max_message_size = usize::try_from(n).unwrap_or(usize::MAX),
            None => {}
        }
    }
    if let Some(f) = pc.get(sink, &["skip_initial_status", "skipInitialStatus"]) {
        cfg.skip_initial_status = walk::boolean(sink, &f).unwrap_or(false);
        if !cfg.skip_initial_status {
            sink.warn(
                f.node.pos,
                &f.key,
                "npd-ext never publishes a made-up all-False status before the plugin first answers (the Node keeps what it had); false has no effect",
            );
        }
    }
    if let Some(f) = pc.get(sink, &["reconnectInterval"]) {
        cfg.retry.initial_backoff = spots
            .note("initialBackoff", &f, walk::duration(sink, &f))
            .unwrap_or(cfg.retry.initial_backoff);
        poc_ignored(
            sink,
            &f,
            "reconnectInterval",
            "as the first reconnect delay (retryPolicy.initialBackoff)",
        );
    }
    if let Some(f) = pc.get(sink, &["maxReconnectAttempts"]) {
        cfg.retry.max_attempts = read_count(sink, &f).unwrap_or(cfg.retry.max_attempts);
        poc_ignored(
            sink,
            &f,
            "maxReconnectAttempts",
            "as retryPolicy.maxAttempts",
        );
    }
    if let Some(f) = pc.get(sink, &["retryPolicy"])
        && let Some(mut rp) = Obj::new(sink, f.node, &f.key)
    {
        if let Some(f) = rp.get(sink, &["maxAttempts"]) {
            cfg.retry.max_attempts = read_count(sink, &f).unwrap_or(cfg.retry.max_attempts);
        }
        if let Some(f) = rp.get(sink, &["initialBackoff"]) {
            cfg.retry.initial_backoff = spots
                .note("initialBackoff", &f, walk::duration(sink, &f))
                .unwrap_or(cfg.retry.initial_backoff);
        }
        if let Some(f) = rp.get(sink, &["maxBackoff"]) {
            cfg.retry.max_backoff = spots
                .note("maxBackoff", &f, walk::duration(sink, &f))
                .unwrap_or(cfg.retry.max_backoff);
        }
        if let Some(f) = rp.get(sink, &["backoffMultiplier"]) {
            cfg.retry.multiplier = spots
                .note("backoffMultiplier", &f, walk::float(sink, &f))
                .unwrap_or(cfg.retry.multiplier);
        }
        rp.finish(sink);
    }
    if let Some(f) = pc.get(sink, &["healthCheck"])
        && let Some(mut hc) = Obj::new(sink, f.node, &f.key)
    {
        if let Some(f) = hc.get(sink, &["interval"]) {
            cfg.health_check.interval = spots
                .note("healthCheck.interval", &f, walk::duration(sink, &f))
                .unwrap_or(cfg.health_check.interval);
        }
        if let Some(f) = hc.get(sink, &["timeout"]) {
            cfg.health_check.timeout = spots
                .note("healthCheck.timeout", &f, walk::duration(sink, &f))
                .unwrap_or(cfg.health_check.timeout);
            sink.warn(
                f.node.pos,
                &f.key,
                "ignored by the Go proof of concept; npd-ext uses it as the deadline of the grpc.health.v1 check",
            );
        }
        if let Some(f) = hc.get(sink, &["errorThreshold"]) {
            cfg.health_check.error_threshold =
                read_count(sink, &f).unwrap_or(cfg.health_check.error_threshold);
        }
        hc.finish(sink);
    }
    if let Some(f) = pc.get(sink, &["pluginParameters"]) {
        match &f.node.value {
            Value::Object(members) => {
                for m in members {
                    match &m.value.value {
                        Value::String(v) => {
                            cfg.parameters.insert(m.key.clone(), v.clone());
                        }
                        other => sink.error(
                            m.value.pos,
                            &join(&f.key, &m.key),
                            format!(
                                "plugin parameters are strings, found {}; quote the value",
                                other.kind()
                            ),
                        ),
                    }
                }
            }
            other => sink.error(
                f.node.pos,
                &f.key,
                format!("must be an object of strings, found {}", other.kind()),
            ),
        }
    }
}

/// Explains a key the Go proof of concept silently dropped but we honour.
fn poc_ignored(sink: &mut Sink, f: &Found<'_>, spelling: &str, how: &str) {
    if f.key
        .rsplit('.')
        .next()
        .is_some_and(|k| k.eq_ignore_ascii_case(spelling))
    {
        sink.warn(
            f.node.pos,
            &f.key,
            format!("ignored by the Go proof of concept; npd-ext honours it {how}"),
        );
    }
}

/// The most a count (`maxAttempts`, `errorThreshold`) may be: far past any
/// use, and small enough that sums of counts cannot overflow.
pub const MAX_COUNT: u32 = 10_000;

fn read_count(sink: &mut Sink, f: &Found<'_>) -> Option<u32> {
    let v = walk::unsigned(sink, f)?;
    match u32::try_from(v) {
        Ok(v) if (1..=MAX_COUNT).contains(&v) => Some(v),
        _ => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("must be between 1 and {MAX_COUNT}, found {v}"),
            );
            None
        }
    }
}

/// Reads `conditions`; `resolveAfter` is a key only where it means something
/// (system log monitors), an unknown key elsewhere.
pub(crate) fn read_conditions(
    sink: &mut Sink,
    f: &Found<'_>,
    resolve_after_allowed: bool,
) -> Vec<ConditionDecl> {
    let Value::Array(items) = &f.node.value else {
        sink.error(
            f.node.pos,
            &f.key,
            format!(
                "must be an array of conditions, found {}",
                f.node.value.kind()
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<ConditionDecl> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", f.key);
        let Some(mut obj) = Obj::new(sink, item, &path) else {
            continue;
        };
        let mut fields = [String::new(), String::new(), String::new()];
        for (slot, name) in fields.iter_mut().zip(["type", "reason", "message"]) {
            match obj.get(sink, &[name]) {
                Some(f) => *slot = walk::string(sink, &f).unwrap_or_default(),
                None => sink.error(item.pos, &join(&path, name), "missing"),
            }
        }
        let resolve_after = if resolve_after_allowed {
            obj.get(sink, &["resolveAfter"]).and_then(|f| {
                let d = walk::duration(sink, &f)?;
                if d.is_zero() {
                    sink.error(
                        f.node.pos,
                        &f.key,
                        "must be greater than 0 (leave it out to keep the condition until a restart, as NPD does)",
                    );
                    return None;
                }
                Some(d)
            })
        } else {
            None
        };
        obj.finish(sink);
        let [type_, reason, message] = fields;
        if type_.is_empty() {
            continue;
        }
        if is_kubelet_owned(&type_) {
            sink.error(
                item.pos,
                &join(&path, "type"),
                format!("{type_} is owned by the kubelet; a monitor may not set it"),
            );
        }
        if out.iter().any(|c| c.type_ == type_) {
            sink.error(
                item.pos,
                &join(&path, "type"),
                format!("{type_} is declared twice"),
            );
        }
        if reason.is_empty() {
            sink.error(item.pos, &join(&path, "reason"), "must not be empty");
        }
        out.push(ConditionDecl {
            type_,
            reason,
            message,
            resolve_after,
        });
    }
    out
}

/// Where each plugin setting was written, and whether its value parsed, so
/// phase two points at the right spot and skips values already reported.
#[derive(Debug, Default)]
struct Spots {
    map: HashMap<&'static str, (json::Pos, String, bool)>,
}

impl Spots {
    fn note<T>(&mut self, name: &'static str, f: &Found<'_>, value: Option<T>) -> Option<T> {
        self.map
            .insert(name, (f.node.pos, f.key.clone(), value.is_some()));
        value
    }

    /// Position and key path for a check on `name` (the enclosing object's
    /// position for a default), or `None` when the value was invalid.
    fn at(&self, name: &'static str, default_pos: json::Pos) -> Option<(json::Pos, String)> {
        match self.map.get(name) {
            Some((pos, key, true)) => Some((*pos, key.clone())),
            Some((_, _, false)) => None,
            None => {
                let key = match name {
                    "initialBackoff" | "maxBackoff" | "backoffMultiplier" => {
                        format!("pluginConfig.retryPolicy.{name}")
                    }
                    _ => format!("pluginConfig.{name}"),
                };
                Some((default_pos, key))
            }
        }
    }
}

fn validate(sink: &mut Sink, pos: json::Pos, spots: &Spots, cfg: &ExternalMonitorConfig) {
    let zero = |sink: &mut Sink, name, d: Duration| {
        if let Some((p, k)) = spots.at(name, pos)
            && d.is_zero()
        {
            sink.error(p, &k, "must be greater than 0");
        }
    };
    zero(sink, "invoke_interval", cfg.invoke_interval);
    zero(sink, "timeout", cfg.timeout);
    zero(sink, "initialBackoff", cfg.retry.initial_backoff);
    zero(sink, "healthCheck.interval", cfg.health_check.interval);
    zero(sink, "healthCheck.timeout", cfg.health_check.timeout);
    if let (Some((p, k)), Some(_)) = (spots.at("timeout", pos), spots.at("invoke_interval", pos))
        && !cfg.timeout.is_zero()
        && cfg.timeout >= cfg.invoke_interval
    {
        sink.error(
            p,
            &k,
            format!(
                "timeout {} must be shorter than invoke_interval {}, or checks overlap",
                format_go(cfg.timeout),
                format_go(cfg.invoke_interval)
            ),
        );
    }
    if let (Some((p, k)), Some(_)) = (spots.at("maxBackoff", pos), spots.at("initialBackoff", pos))
        && cfg.retry.max_backoff < cfg.retry.initial_backoff
    {
        sink.error(
            p,
            &k,
            format!(
                "maxBackoff {} is shorter than initialBackoff {}",
                format_go(cfg.retry.max_backoff),
                format_go(cfg.retry.initial_backoff)
            ),
        );
    }
    if let Some((p, k)) = spots.at("backoffMultiplier", pos)
        && cfg.retry.multiplier < 1.0
    {
        sink.error(
            p,
            &k,
            format!("must be ≥ 1.0, found {}", cfg.retry.multiplier),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_str(text: &str) -> Checked<ExternalMonitorConfig> {
        check(Path::new("t.json"), text)
    }

    #[test]
    fn max_message_size_is_configurable_within_reason() {
        let ok = check(
            Path::new("m.json"),
            r#"{"plugin": "external", "source": "m", "pluginConfig": {"socketPath": "/s", "maxMessageSize": 4194304}}"#,
        );
        assert_eq!(ok.config.expect("valid").max_message_size, 4 << 20);
        let d = check(
            Path::new("m.json"),
            r#"{"plugin": "external", "source": "m", "pluginConfig": {"socketPath": "/s"}}"#,
        );
        assert_eq!(
            d.config.expect("valid").max_message_size,
            DEFAULT_MAX_MESSAGE_SIZE
        );
        let bad = check(
            Path::new("m.json"),
            r#"{"plugin": "external", "source": "m", "pluginConfig": {"socketPath": "/s", "maxMessageSize": 10}}"#,
        );
        assert!(
            bad.errors().any(|e| e.key == "pluginConfig.maxMessageSize"),
            "{:?}",
            bad.diagnostics
        );
    }

    #[test]
    fn both_spellings_and_both_duration_forms() {
        let a = check_str(
            r#"{"plugin":"external","source":"g","pluginConfig":{"socketPath":"/s.sock","grpcTimeout":"2s","invokeInterval":"1m30s"}}"#,
        );
        let a = a.config.expect("valid");
        assert_eq!(a.socket_path, PathBuf::from("/s.sock"));
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert_eq!(a.invoke_interval, Duration::from_secs(90));
        let b = check_str(
            r#"{"plugin":"external","source":"g","pluginConfig":{"socketAddress":"/s.sock","timeout":2000000000,"invoke_interval":90000000000,"retryPolicy":{"maxAttempts":7}}}"#,
        );
        let b = b.config.expect("valid");
        assert_eq!(
            (b.timeout, b.invoke_interval),
            (a.timeout, a.invoke_interval)
        );
        assert_eq!(b.retry.max_attempts, 7);
    }

    #[test]
    fn go_style_case_insensitive_keys() {
        let c =
            check_str(r#"{"Plugin":"external","SOURCE":"g","pluginconfig":{"SocketPath":"/s"}}"#);
        assert!(c.errors().next().is_none(), "{:?}", c.diagnostics);
        assert_eq!(c.config.expect("valid").source, "g");
    }

    #[test]
    fn collects_every_problem_with_positions() {
        let text = "{\n \"plugin\": \"external\",\n \"pluginConfig\": {\n  \"socketPth\": \"/s\",\n  \"timeout\": \"1h\",\n  \"retryPolicy\": {\"maxBackoff\": \"5 minutes\"}\n },\n \"conditions\": [{\"type\": \"Ready\", \"reason\": \"R\", \"message\": \"m\"}]\n}";
        let c = check_str(text);
        assert!(c.config.is_none());
        let lines: Vec<String> = c.errors().map(ToString::to_string).collect();
        let all = lines.join("\n");
        assert!(all.contains("t.json:4:3: error: pluginConfig.socketPth: unknown key (did you mean \"socketPath\"?)"), "{all}");
        assert!(
            all.contains("pluginConfig.retryPolicy.maxBackoff: invalid duration \"5 minutes\""),
            "{all}"
        );
        assert!(all.contains("source: missing or empty"), "{all}");
        assert!(
            all.contains("conditions[0].type: Ready is owned by the kubelet"),
            "{all}"
        );
        assert!(
            all.contains("timeout 1h0m0s must be shorter than invoke_interval 30s"),
            "{all}"
        );
        assert!(all.contains("pluginConfig.socketPath: missing"), "{all}");
        assert_eq!(lines.len(), 6, "{all}");
    }

    #[test]
    fn counts_are_bounded_so_their_sums_cannot_overflow() {
        let c = check_str(
            r#"{"plugin":"external","source":"g","pluginConfig":{"socketPath":"/s","retryPolicy":{"maxAttempts":4294967295},"healthCheck":{"errorThreshold":4294967295}}}"#,
        );
        let all: Vec<String> = c.errors().map(ToString::to_string).collect();
        assert_eq!(all.len(), 2, "{all:?}");
        for (key, line) in [
            ("pluginConfig.retryPolicy.maxAttempts", &all[0]),
            ("pluginConfig.healthCheck.errorThreshold", &all[1]),
        ] {
            assert!(
                line.contains(&format!(
                    "{key}: must be between 1 and 10000, found 4294967295"
                )),
                "{line}"
            );
        }
        let ok = check_str(
            r#"{"plugin":"external","source":"g","pluginConfig":{"socketPath":"/s","retryPolicy":{"maxAttempts":10000},"healthCheck":{"errorThreshold":10000}}}"#,
        );
        assert!(ok.config.is_some(), "{:?}", ok.diagnostics);
    }

    #[test]
    fn two_spellings_at_once_is_an_error() {
        let c = check_str(
            r#"{"plugin":"external","source":"g","pluginConfig":{"socketPath":"/a","socketAddress":"/b"}}"#,
        );
        assert!(
            c.errors().any(|d| d.message.contains("two spellings")),
            "{:?}",
            c.diagnostics
        );
    }

    #[test]
    fn defaults_apply() {
        let c =
            check_str(r#"{"plugin":"external","source":"g","pluginConfig":{"socketPath":"/s"}}"#)
                .config
                .expect("valid");
        assert_eq!(c.invoke_interval, DEFAULT_INVOKE_INTERVAL);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.retry.initial_backoff, DEFAULT_INITIAL_BACKOFF);
        assert_eq!(c.retry.max_backoff, DEFAULT_MAX_BACKOFF);
        assert_eq!(c.health_check.error_threshold, DEFAULT_ERROR_THRESHOLD);
    }
}

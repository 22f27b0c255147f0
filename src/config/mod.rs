//! Monitor configs: NPD's JSON formats, Go-compatible durations, loading with
//! positions, and two-phase validation that collects every problem.
//!
//! Owns turning bytes into typed configs and explaining what is wrong. It must
//! not start anything.

pub mod configmap;
pub mod custom;
pub mod duration;
pub mod exporter;
pub mod external;
pub mod golayout;
pub mod goregex;
pub mod json;
pub mod stats;
pub mod syslog;
pub mod taint_policy;
pub(crate) mod walk;
pub mod xid_policy;

use std::fmt;
use std::path::{Path, PathBuf};

pub use external::{ConditionDecl, ExternalMonitorConfig, HealthCheck, RetryPolicy};
pub use json::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// One problem found in a config file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub level: Level,
    pub file: PathBuf,
    pub pos: Option<Pos>,
    /// Key path such as `pluginConfig.retryPolicy.maxBackoff` (empty: the document).
    pub key: String,
    pub message: String,
    pub help: Option<String>,
    /// An unknown key: an error for `validate-config`, a warning for the detector.
    pub unknown_key: bool,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(pos) = self.pos {
            write!(f, ":{pos}")?;
        }
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, ": {level}: ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// The outcome of checking one file: a config only when there is no error.
#[derive(Debug)]
pub struct Checked<T> {
    pub config: Option<T>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<T> Checked<T> {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.level == Level::Error)
    }

    /// For a file a process starts on: warnings go to the log; the config,
    /// with every error said (`file:line:col: error: key: message`).
    pub fn strict(self) -> (Option<T>, Vec<String>) {
        let mut errors = Vec::new();
        for d in &self.diagnostics {
            match d.level {
                Level::Error => errors.push(d.to_string()),
                Level::Warning => tracing::warn!("{d}"),
            }
        }
        (self.config, errors)
    }
}

/// Parses `text` and hands the document to `read` (phase one and two of a
/// config kind); the config is kept only when no error was found.
pub(crate) fn check_with<T>(
    file: &Path,
    text: &str,
    read: impl FnOnce(&mut walk::Sink, &Path, &json::Node) -> Option<T>,
) -> Checked<T> {
    let mut sink = walk::Sink::new(file);
    let config = match json::parse(text) {
        Ok(doc) => read(&mut sink, file, &doc),
        Err(e) => {
            sink.push(
                Level::Error,
                Some(e.pos),
                "",
                format!("invalid JSON: {}", e.message),
            );
            None
        }
    };
    Checked {
        config: config.filter(|_| !sink.has_errors()),
        diagnostics: sink.diagnostics,
    }
}

/// Why a path is Windows-only, or `None` for a path npd-ext can use.
pub(crate) fn windows_only(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.len() > 2
        && lower.as_bytes()[1] == b':'
        && (lower.as_bytes()[2] == b'\\' || lower.as_bytes()[2] == b'/')
    {
        Some("a Windows path")
    } else if lower.ends_with(".ps1") || lower.ends_with(".exe") {
        Some("a Windows program")
    } else {
        None
    }
}

/// The kind of monitor a config is for, from its `plugin` key (or its
/// shape, for the system stats monitor that has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    External,
    SystemLog,
    Custom,
    SystemStats,
    /// `--config.external-exporter`: no `plugin`, a socket.
    ExternalExporter,
    /// `detector --taint-policy`: no `plugin`, a `taints` list.
    TaintPolicy,
    /// `gpu-monitor --xid-policy`: no `plugin`, an `xids` list.
    XidPolicy,
    Unknown(String),
}

/// Sniffs the kind without reporting anything (the real check does).
pub fn kind_of(text: &str) -> Kind {
    let Ok(json::Node {
        value: json::Value::Object(members),
        ..
    }) = json::parse(text)
    else {
        return Kind::Unknown(String::new());
    };
    let plugin = members
        .iter()
        .find(|m| m.key.eq_ignore_ascii_case("plugin"));
    match plugin.map(|m| &m.value.value) {
        Some(json::Value::String(p)) => match p.as_str() {
            "external" => Kind::External,
            "kmsg" | "filelog" | "journald" => Kind::SystemLog,
            "custom" => Kind::Custom,
            other => Kind::Unknown(other.to_owned()),
        },
        None if members.iter().any(|m| m.key.eq_ignore_ascii_case("taints")) => Kind::TaintPolicy,
        None if members.iter().any(|m| m.key.eq_ignore_ascii_case("xids")) => Kind::XidPolicy,
        None if members.iter().any(|m| {
            ["socketPath", "socketAddress", "queueSize"]
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&m.key))
        }) =>
        {
            Kind::ExternalExporter
        }
        _ if members.iter().any(|m| {
            [
                "cpu",
                "disk",
                "host",
                "memory",
                "osFeature",
                "net",
                "invokeInterval",
            ]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&m.key))
        }) =>
        {
            Kind::SystemStats
        }
        _ => Kind::Unknown(String::new()),
    }
}

/// Reads and checks an external monitor config file. An unreadable file is
/// reported as a diagnostic too, so callers handle one shape.
pub fn check_external_file(path: &Path) -> Checked<ExternalMonitorConfig> {
    check_path(path, external::check)
}

/// Reads the file at `path` and checks it with `check`; an unreadable file
/// is a diagnostic, so callers handle one shape.
pub fn check_path<T>(path: &Path, check: fn(&Path, &str) -> Checked<T>) -> Checked<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => check(path, &text),
        Err(e) => Checked {
            config: None,
            diagnostics: vec![Diagnostic {
                level: Level::Error,
                file: path.to_path_buf(),
                pos: None,
                key: String::new(),
                message: format!("cannot read file: {e}"),
                help: None,
                unknown_key: false,
            }],
        },
    }
}

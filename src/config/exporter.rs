//! External exporter configs (`--config.external-exporter`): where a plugin
//! that receives every status listens, and how patient to be with it.
//!
//! ```json
//! {"name": "my-exporter", "socketPath": "/var/run/npd/exporter.sock",
//!  "timeout": "5s", "queueSize": 1000}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Checked;
use super::json;
use super::walk::{self, Obj, Sink};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_QUEUE: usize = 1000;

#[derive(Clone, Debug, PartialEq)]
pub struct ExternalExporterConfig {
    pub file: PathBuf,
    /// A name for logs and metrics (default: the file name).
    pub name: String,
    pub socket_path: PathBuf,
    /// Deadline of one `ExportProblems` call.
    pub timeout: Duration,
    /// Statuses held while the plugin is slow or away; beyond it the oldest
    /// are dropped and counted.
    pub queue_size: usize,
}

impl ExternalExporterConfig {
    /// A config with every default (tests, programmatic use).
    pub fn new(name: impl Into<String>, socket_path: impl Into<PathBuf>) -> Self {
        Self {
            file: PathBuf::from("<built-in>"),
            name: name.into(),
            socket_path: socket_path.into(),
            timeout: DEFAULT_TIMEOUT,
            queue_size: DEFAULT_QUEUE,
        }
    }
}

pub fn check(file: &Path, text: &str) -> Checked<ExternalExporterConfig> {
    super::check_with(file, text, read)
}

fn read(sink: &mut Sink, file: &Path, doc: &json::Node) -> Option<ExternalExporterConfig> {
    let mut top = Obj::new(sink, doc, "")?;
    let mut cfg = ExternalExporterConfig::new(
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        PathBuf::new(),
    );
    cfg.file = file.to_path_buf();
    if let Some(f) = top.get(sink, &["name"])
        && let Some(n) = walk::string(sink, &f).filter(|n| !n.is_empty())
    {
        cfg.name = n;
    }
    match top.get(sink, &["socketPath", "socketAddress"]) {
        Some(f) => match walk::string(sink, &f) {
            Some(p) if !p.is_empty() => cfg.socket_path = PathBuf::from(p),
            Some(_) => sink.error(f.node.pos, &f.key, "must not be empty"),
            None => {}
        },
        None => sink.error(
            top.pos,
            "socketPath",
            "missing; the exporter plugin's Unix socket",
        ),
    }
    if let Some(f) = top.get(sink, &["timeout"]) {
        match walk::duration(sink, &f) {
            Some(d) if d.is_zero() => sink.error(f.node.pos, &f.key, "must be greater than 0"),
            Some(d) => cfg.timeout = d,
            None => {}
        }
    }
    if let Some(f) = top.get(sink, &["queueSize"]) {
        match walk::unsigned(sink, &f) {
            Some(0) => sink.error(f.node.pos, &f.key, "must be at least 1"),
            Some(n) => cfg.queue_size = usize::try_from(n).unwrap_or(DEFAULT_QUEUE),
            None => {}
        }
    }
    top.finish(sink);
    Some(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_defaults_and_errors() {
        let c = check(
            Path::new("/etc/npd/exporter.json"),
            r#"{"socketPath": "/run/x.sock", "timeout": "2s", "queueSize": 8}"#,
        );
        let cfg = c.config.expect("valid");
        assert_eq!(cfg.name, "exporter");
        assert_eq!(cfg.timeout, Duration::from_secs(2));
        assert_eq!(cfg.queue_size, 8);
        let c = check(
            Path::new("e.json"),
            r#"{"timeout": "0s", "queueSize": 0, "sockPath": "/x"}"#,
        );
        let all: Vec<String> = c.errors().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(all.contains("socketPath: missing"), "{all}");
        assert!(all.contains("timeout: must be greater than 0"), "{all}");
        assert!(all.contains("queueSize: must be at least 1"), "{all}");
        assert!(all.contains("sockPath"), "{all}");
    }
}

//! Walking a positioned JSON tree against a schema: key lookup with aliases and
//! Go's case-insensitive matching, typed getters, and unknown-key reports with
//! a did-you-mean. Every problem goes into one list; nothing stops at the first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::json::{Member, Node, Pos, Value};
use super::{Diagnostic, Level, duration};

pub(crate) struct Sink {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl Sink {
    pub fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            diagnostics: Vec::new(),
        }
    }

    pub fn push(&mut self, level: Level, pos: Option<Pos>, key: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            level,
            file: self.file.clone(),
            pos,
            key: key.to_owned(),
            message: message.into(),
            help: None,
            unknown_key: false,
        });
    }

    pub fn error(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        self.push(Level::Error, Some(pos), key, message);
    }

    pub fn warn(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        self.push(Level::Warning, Some(pos), key, message);
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.level == Level::Error)
    }
}

pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// One JSON object being read against a known set of keys.
pub(crate) struct Obj<'a> {
    pub path: String,
    pub pos: Pos,
    members: &'a [Member],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

/// A value found under one of a key's spellings.
pub(crate) struct Found<'a> {
    pub key: String,
    pub node: &'a Node,
}

impl<'a> Obj<'a> {
    /// `None` (with an error) when `node` is not an object.
    pub fn new(sink: &mut Sink, node: &'a Node, path: &str) -> Option<Self> {
        match &node.value {
            Value::Object(members) => {
                let mut seen: Vec<&str> = Vec::new();
                for m in members {
                    if seen.contains(&m.key.as_str()) {
                        sink.error(
                            m.key_pos,
                            &join(path, &m.key),
                            "duplicate key (the later value would silently win)",
                        );
                    }
                    seen.push(&m.key);
                }
                Some(Self {
                    path: path.to_owned(),
                    pos: node.pos,
                    members,
                    used: vec![false; members.len()],
                    known: Vec::new(),
                })
            }
            other => {
                let what = if path.is_empty() {
                    "the document"
                } else {
                    path
                };
                sink.error(
                    node.pos,
                    path,
                    format!("{what} must be an object, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Finds a key under any of `names` (aliases), exact match first, then
    /// case-insensitive as Go's encoding/json does. Two spellings at once is an error.
    pub fn get(&mut self, sink: &mut Sink, names: &[&'static str]) -> Option<Found<'a>> {
        self.known.extend_from_slice(names);
        let mut hits: Vec<usize> = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if names.contains(&m.key.as_str()) {
                hits.push(i);
            }
        }
        if hits.is_empty() {
            for (i, m) in self.members.iter().enumerate() {
                if !self.used[i] && names.iter().any(|n| n.eq_ignore_ascii_case(&m.key)) {
                    hits.push(i);
                }
            }
        }
        for &i in &hits {
            self.used[i] = true;
        }
        let first = *hits.first()?;
        if let Some(&second) = hits.get(1) {
            let a = &self.members[first];
            let b = &self.members[second];
            sink.error(
                b.key_pos,
                &join(&self.path, &b.key),
                format!(
                    "{} and {} are two spellings of one setting; give only one",
                    a.key, b.key
                ),
            );
        }
        let m = &self.members[first];
        Some(Found {
            key: join(&self.path, &m.key),
            node: &m.value,
        })
    }

    /// Reports every member no `get` asked for.
    pub fn finish(self, sink: &mut Sink) {
        for (i, m) in self.members.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            let key = join(&self.path, &m.key);
            let help = did_you_mean(&m.key, &self.known)
                .map(|s| format!("did you mean {s:?}?"))
                .or_else(|| {
                    (!self.known.is_empty())
                        .then(|| format!("known keys: {}", self.known.join(", ")))
                });
            sink.diagnostics.push(Diagnostic {
                level: Level::Error,
                file: sink.file.clone(),
                pos: Some(m.key_pos),
                key,
                message: "unknown key".into(),
                help,
                unknown_key: true,
            });
        }
    }
}

/// The known name closest to `key`, if it is close enough to be a typo.
pub(crate) fn did_you_mean(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Typed getters
// ---------------------------------------------------------------------------

pub(crate) fn string(sink: &mut Sink, f: &Found<'_>) -> Option<String> {
    match &f.node.value {
        Value::String(s) => Some(s.clone()),
        other => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("must be a string, found {}", other.kind()),
            );
            None
        }
    }
}

pub(crate) fn boolean(sink: &mut Sink, f: &Found<'_>) -> Option<bool> {
    match &f.node.value {
        Value::Bool(b) => Some(*b),
        other => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("must be true or false, found {}", other.kind()),
            );
            None
        }
    }
}

pub(crate) fn unsigned(sink: &mut Sink, f: &Found<'_>) -> Option<u64> {
    match &f.node.value {
        Value::Number(text) => match text.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("must be a whole number ≥ 0, found {text}"),
                );
                None
            }
        },
        other => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("must be a whole number, found {}", other.kind()),
            );
            None
        }
    }
}

pub(crate) fn float(sink: &mut Sink, f: &Found<'_>) -> Option<f64> {
    match &f.node.value {
        Value::Number(text) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("must be a finite number, found {text}"),
                );
                None
            }
        },
        other => {
            sink.error(
                f.node.pos,
                &f.key,
                format!("must be a number, found {}", other.kind()),
            );
            None
        }
    }
}

/// A Go duration string, or an integer count of nanoseconds (what the Go
/// proof of concept's decoder took).
pub(crate) fn duration(sink: &mut Sink, f: &Found<'_>) -> Option<Duration> {
    match &f.node.value {
        Value::String(s) => match duration::parse_go(s) {
            Ok(d) => Some(d),
            Err(e) => {
                sink.error(f.node.pos, &f.key, e.to_string());
                None
            }
        },
        Value::Number(text) => match text.parse::<u64>() {
            Ok(ns) => {
                let d = Duration::from_nanos(ns);
                if ns > 0 && ns < 1_000_000 {
                    sink.warn(
                        f.node.pos,
                        &f.key,
                        format!(
                            "the integer {ns} is read as {ns} nanoseconds; write a string such as \"{ns}s\" if you meant seconds"
                        ),
                    );
                }
                Some(d)
            }
            Err(_) => {
                sink.error(
                    f.node.pos,
                    &f.key,
                    format!("invalid duration {text}: integers are whole nanoseconds ≥ 0; prefer a string such as \"30s\""),
                );
                None
            }
        },
        other => {
            sink.error(
                f.node.pos,
                &f.key,
                format!(
                    "must be a duration string such as \"30s\", found {}",
                    other.kind()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["socketPath", "invoke_interval", "timeout"];
        assert_eq!(did_you_mean("socketPth", &known), Some("socketPath"));
        assert_eq!(
            did_you_mean("invokeintervl", &known),
            Some("invoke_interval")
        );
        assert_eq!(did_you_mean("colour", &known), None);
    }
}

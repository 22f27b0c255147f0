//! Domain types every monitor and exporter speaks: [`Status`], [`Condition`], [`Event`].
//!
//! Owns the meaning of a problem report, independent of the wire (`rpc`) and of
//! Kubernetes (`exporter`). It must not know where a status came from or goes.

use std::fmt;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// Condition types the kubelet owns: no monitor may set them.
pub const KUBELET_OWNED: [&str; 5] = [
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

/// Whether a condition type belongs to the kubelet.
pub fn is_kubelet_owned(condition_type: &str) -> bool {
    KUBELET_OWNED.contains(&condition_type)
}

/// `True` means the problem is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Warn => "warn",
        })
    }
}

/// A condition as a monitor reports it. `transition` is only a hint: the
/// condition manager computes the real transition time itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(serialize_with = "serialize_opt_time")]
    pub transition: Option<SystemTime>,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status,
            transition: None,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// Same type, status, reason and message (the transition hint is ignored).
    pub fn same_state(&self, other: &Self) -> bool {
        self.type_ == other.type_
            && self.status == other.status
            && self.reason == other.reason
            && self.message == other.message
    }
}

/// A one-off occurrence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub severity: Severity,
    #[serde(serialize_with = "serialize_time")]
    pub timestamp: SystemTime,
    pub reason: String,
    pub message: String,
}

/// What one monitor says at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub source: String,
    pub events: Vec<Event>,
    pub conditions: Vec<Condition>,
}

/// The first `max` bytes of `s`, never splitting a character.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 with seconds precision, as Kubernetes writes times.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn serialize_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn serialize_opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

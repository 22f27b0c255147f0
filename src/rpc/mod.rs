//! The gRPC wire contract (generated from `proto/`), conversions between wire
//! and domain types, and the Unix-socket plumbing both sides share.
//!
//! Owns everything protobuf-shaped. It must not decide health or ownership:
//! it only carries and converts.

pub mod client;
pub mod server;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::problem::{Condition, ConditionStatus, Event, Severity, Status};

/// Generated code for package `npd.external.v1`.
#[allow(missing_docs, missing_debug_implementations, unused_qualifications, clippy::all)]
pub mod pb {
    tonic::include_proto!("npd.external.v1");
}

/// The API version our plugins announce and our detector expects.
pub const API_VERSION: &str = "v1";

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

/// A wire timestamp, or `None` when absent or zero (never 1970).
pub fn time_from_pb(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    if ts.seconds <= 0 && ts.nanos <= 0 {
        return None;
    }
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos.clamp(0, 999_999_999)).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

pub fn time_to_pb(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------
// Domain <-> wire
// ---------------------------------------------------------------------------

impl From<ConditionStatus> for pb::ConditionStatus {
    fn from(s: ConditionStatus) -> Self {
        match s {
            ConditionStatus::True => Self::True,
            ConditionStatus::False => Self::False,
            ConditionStatus::Unknown => Self::Unknown,
        }
    }
}

/// Unspecified or unrecognised values mean the plugin could not say: `Unknown`.
pub fn condition_status_from_pb(raw: i32) -> ConditionStatus {
    match pb::ConditionStatus::try_from(raw) {
        Ok(pb::ConditionStatus::True) => ConditionStatus::True,
        Ok(pb::ConditionStatus::False) => ConditionStatus::False,
        _ => ConditionStatus::Unknown,
    }
}

pub fn severity_from_pb(raw: i32) -> Severity {
    match pb::Severity::try_from(raw) {
        Ok(pb::Severity::Warn) => Severity::Warn,
        _ => Severity::Info,
    }
}

impl From<&Condition> for pb::Condition {
    fn from(c: &Condition) -> Self {
        Self {
            r#type: c.type_.clone(),
            status: pb::ConditionStatus::from(c.status) as i32,
            transition: c.transition.map(time_to_pb),
            reason: c.reason.clone(),
            message: c.message.clone(),
        }
    }
}

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        Self {
            severity: match e.severity {
                Severity::Info => pb::Severity::Info,
                Severity::Warn => pb::Severity::Warn,
            } as i32,
            timestamp: Some(time_to_pb(e.timestamp)),
            reason: e.reason.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<&Status> for pb::Status {
    fn from(s: &Status) -> Self {
        Self {
            source: s.source.clone(),
            events: s.events.iter().map(pb::Event::from).collect(),
            conditions: s.conditions.iter().map(pb::Condition::from).collect(),
        }
    }
}

/// Converts a plugin's status. `received` stands in for a missing event
/// timestamp, so an absent time never becomes 1970.
pub fn status_from_pb(s: pb::Status, received: SystemTime) -> Status {
    Status {
        source: s.source,
        events: s
            .events
            .into_iter()
            .map(|e| Event {
                severity: severity_from_pb(e.severity),
                timestamp: time_from_pb(e.timestamp.as_ref()).unwrap_or(received),
                reason: e.reason,
                message: e.message,
            })
            .collect(),
        conditions: s
            .conditions
            .into_iter()
            .map(|c| Condition {
                status: condition_status_from_pb(c.status),
                transition: time_from_pb(c.transition.as_ref()),
                type_: c.r#type,
                reason: c.reason,
                message: c.message,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_zero_timestamp_is_none_not_epoch() {
        assert_eq!(time_from_pb(None), None);
        assert_eq!(time_from_pb(Some(&prost_types::Timestamp::default())), None);
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(time_from_pb(Some(&time_to_pb(t))), Some(t));
    }

    #[test]
    fn unspecified_status_is_unknown() {
        assert_eq!(condition_status_from_pb(0), ConditionStatus::Unknown);
        assert_eq!(condition_status_from_pb(42), ConditionStatus::Unknown);
        assert_eq!(condition_status_from_pb(1), ConditionStatus::True);
        assert_eq!(condition_status_from_pb(2), ConditionStatus::False);
    }
}

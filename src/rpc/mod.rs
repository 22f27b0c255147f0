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
#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
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

/// What a plugin may put in one status; the rest is dropped or cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub conditions: usize,
    pub events: usize,
    /// Bytes of a reason (and a condition type).
    pub reason: usize,
    /// Bytes of a message.
    pub message: usize,
}

pub const LIMITS: Limits = Limits {
    conditions: 64,
    events: 256,
    reason: 128,
    message: 1024,
};

/// What [`status_from_plugin`] had to change, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub conditions_dropped: usize,
    pub events_dropped: usize,
    /// Reasons, types and messages cut to their limit.
    pub strings_cut: usize,
    /// Enum values this build does not know (read as Unknown / info).
    pub unknown_enums: usize,
    /// Times before 2000 or more than a day ahead (replaced).
    pub bad_times: usize,
}

impl Trimmed {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for Trimmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            (self.conditions_dropped, "conditions over the limit dropped"),
            (self.events_dropped, "events over the limit dropped"),
            (self.strings_cut, "reasons or messages cut"),
            (
                self.unknown_enums,
                "unknown enum values read as Unknown/info",
            ),
            (self.bad_times, "implausible timestamps replaced"),
        ];
        let said: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        f.write_str(&said.join(", "))
    }
}

/// 2000-01-01T00:00:00Z: no plugin reports anything older.
const EARLIEST: Duration = Duration::from_secs(946_684_800);

/// A plugin's time when it is plausible: after 2000, at most a day ahead.
fn plausible(t: Option<SystemTime>, now: SystemTime, trimmed: &mut Trimmed) -> Option<SystemTime> {
    let t = t?;
    if t < UNIX_EPOCH + EARLIEST || t > now + Duration::from_secs(86_400) {
        trimmed.bad_times += 1;
        return None;
    }
    Some(t)
}

fn cut_counted(mut s: String, max: usize, trimmed: &mut Trimmed) -> String {
    let keep = crate::problem::cut(&s, max).len();
    if keep < s.len() {
        s.truncate(keep);
        trimmed.strings_cut += 1;
    }
    s
}

/// Converts a status from a plugin, held to `limits`: conditions and events
/// past their count are dropped, long strings cut on a character boundary,
/// unknown enum values read as `Unknown` / info, implausible times replaced
/// (`received` for events; none for transitions, so the detector's own
/// time is used).
pub fn status_from_plugin(
    s: pb::Status,
    received: SystemTime,
    limits: &Limits,
) -> (Status, Trimmed) {
    let mut t = Trimmed {
        conditions_dropped: s.conditions.len().saturating_sub(limits.conditions),
        events_dropped: s.events.len().saturating_sub(limits.events),
        ..Trimmed::default()
    };
    let mut events = Vec::with_capacity(s.events.len().min(limits.events));
    for e in s.events.into_iter().take(limits.events) {
        if pb::Severity::try_from(e.severity).is_err() || e.severity == 0 {
            t.unknown_enums += 1;
        }
        let timestamp =
            plausible(time_from_pb(e.timestamp.as_ref()), received, &mut t).unwrap_or(received);
        events.push(Event {
            severity: severity_from_pb(e.severity),
            timestamp,
            reason: cut_counted(e.reason, limits.reason, &mut t),
            message: cut_counted(e.message, limits.message, &mut t),
        });
    }
    let mut conditions = Vec::with_capacity(s.conditions.len().min(limits.conditions));
    for c in s.conditions.into_iter().take(limits.conditions) {
        if pb::ConditionStatus::try_from(c.status).is_err() || c.status == 0 {
            t.unknown_enums += 1;
        }
        let transition = plausible(time_from_pb(c.transition.as_ref()), received, &mut t);
        conditions.push(Condition {
            status: condition_status_from_pb(c.status),
            transition,
            type_: cut_counted(c.r#type, limits.reason, &mut t),
            reason: cut_counted(c.reason, limits.reason, &mut t),
            message: cut_counted(c.message, limits.message, &mut t),
        });
    }
    (
        Status {
            source: cut_counted(s.source, limits.reason, &mut t),
            events,
            conditions,
        },
        t,
    )
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

/// Field numbers proven against bytes laid out by hand from the upstream
/// `.proto` (tag = field << 3 | wire type), not produced by our own encoder.
#[cfg(test)]
mod wire_tests {
    use prost::Message;

    use super::pb;

    #[test]
    fn status_event_condition_field_numbers() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A, 0x03, b'g', b'p', b'u',                 // 1 source
            0x12, 0x0D,                                   // 2 events[0]
              0x08, 0x02,                                 //   1 severity = WARN
              0x12, 0x02, 0x08, 0x64,                     //   2 timestamp {seconds: 100}
              0x1A, 0x02, b'X', b'1',                     //   3 reason
              0x22, 0x01, b'm',                           //   4 message
            0x1A, 0x0F,                                   // 3 conditions[0]
              0x0A, 0x01, b'T',                           //   1 type
              0x10, 0x01,                                 //   2 status = TRUE
              0x1A, 0x02, 0x08, 0x64,                     //   3 transition {seconds: 100}
              0x22, 0x01, b'r',                           //   4 reason
              0x2A, 0x01, b'M',                           //   5 message
        ];
        let s = pb::Status::decode(bytes).expect("decodes");
        assert_eq!(s.source, "gpu");
        let e = &s.events[0];
        assert_eq!(e.severity, pb::Severity::Warn as i32);
        assert_eq!(e.timestamp.as_ref().map(|t| t.seconds), Some(100));
        assert_eq!((e.reason.as_str(), e.message.as_str()), ("X1", "m"));
        let c = &s.conditions[0];
        assert_eq!(c.r#type, "T");
        assert_eq!(c.status, pb::ConditionStatus::True as i32);
        assert_eq!(c.transition.as_ref().map(|t| t.seconds), Some(100));
        assert_eq!((c.reason.as_str(), c.message.as_str()), ("r", "M"));
        assert_eq!(s.encode_to_vec(), bytes, "re-encodes to the same layout");
    }

    #[test]
    fn enum_values() {
        assert_eq!(pb::Severity::Unspecified as i32, 0);
        assert_eq!(pb::Severity::Info as i32, 1);
        assert_eq!(pb::Severity::Warn as i32, 2);
        assert_eq!(pb::ConditionStatus::Unspecified as i32, 0);
        assert_eq!(pb::ConditionStatus::True as i32, 1);
        assert_eq!(pb::ConditionStatus::False as i32, 2);
        assert_eq!(pb::ConditionStatus::Unknown as i32, 3);
    }

    #[test]
    fn request_and_metadata_field_numbers() {
        #[rustfmt::skip]
        let req: &[u8] = &[
            0x0A, 0x06, 0x0A, 0x01, b'k', 0x12, 0x01, b'v', // 1 parameters {k: v}
            0x10, 0x07,                                     // 2 sequence = 7
        ];
        let r = pb::HealthCheckRequest::decode(req).expect("decodes");
        assert_eq!(r.parameters.get("k").map(String::as_str), Some("v"));
        assert_eq!(r.sequence, 7);

        #[rustfmt::skip]
        let meta: &[u8] = &[
            0x0A, 0x01, b'n',                               // 1 name
            0x12, 0x01, b'v',                               // 2 version
            0x1A, 0x01, b'd',                               // 3 description
            0x22, 0x01, b'C',                               // 4 supported_conditions
            0x2A, 0x06, 0x0A, 0x01, b'a', 0x12, 0x01, b'b', // 5 capabilities {a: b}
            0x32, 0x02, b'v', b'1',                         // 6 api_version
        ];
        let m = pb::MonitorMetadata::decode(meta).expect("decodes");
        assert_eq!(
            (m.name.as_str(), m.version.as_str(), m.description.as_str()),
            ("n", "v", "d")
        );
        assert_eq!(m.supported_conditions, vec!["C".to_owned()]);
        assert_eq!(m.capabilities.get("a").map(String::as_str), Some("b"));
        assert_eq!(m.api_version, "v1");
    }

    #[test]
    fn exporter_field_numbers() {
        #[rustfmt::skip]
        let req: &[u8] = &[
            0x0A, 0x03, 0x0A, 0x01, b's',                   // 1 status {source: s}
            0x10, 0x09,                                     // 2 sequence = 9
            0x1A, 0x01, b'N',                               // 3 node_name
            0x22, 0x06, 0x0A, 0x01, b'x', 0x12, 0x01, b'y', // 4 context {x: y}
        ];
        let r = pb::ExportRequest::decode(req).expect("decodes");
        assert_eq!(r.status.map(|s| s.source), Some("s".to_owned()));
        assert_eq!((r.sequence, r.node_name.as_str()), (9, "N"));
        assert_eq!(r.context.get("x").map(String::as_str), Some("y"));

        let resp =
            pb::ExportResponse::decode(&[0x08, 0x01, 0x12, 0x01, b'e', 0x18, 0x02, 0x20, 0x03][..])
                .expect("decodes");
        assert!(resp.success);
        assert_eq!(
            (
                resp.error.as_str(),
                resp.events_exported,
                resp.conditions_exported
            ),
            ("e", 2, 3)
        );

        let meta = pb::ExporterMetadata::decode(&[0x22, 0x01, b'j', 0x32, 0x02, b'v', b'1'][..])
            .expect("decodes");
        assert_eq!(meta.supported_formats, vec!["j".to_owned()]);
        assert_eq!(meta.api_version, "v1");
    }

    #[test]
    fn service_and_method_names() {
        use tonic::server::NamedService;
        type Monitor = pb::external_monitor_server::ExternalMonitorServer<Dummy>;
        type Exporter = pb::external_exporter_server::ExternalExporterServer<Dummy>;
        assert_eq!(
            <Monitor as NamedService>::NAME,
            "npd.external.v1.ExternalMonitor"
        );
        assert_eq!(
            <Exporter as NamedService>::NAME,
            "npd.external.v1.ExternalExporter"
        );
    }

    #[derive(Debug)]
    struct Dummy;
    impl pb::external_monitor_server::ExternalMonitor for Dummy {}
    impl pb::external_exporter_server::ExternalExporter for Dummy {}
}

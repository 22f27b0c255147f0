//! What the real kube-apiserver refuses, for the fake one
//! (tests/common/fake_api.rs): every body is decoded as its k8s-openapi type
//! and validated as `pkg/apis/core/validation/events.go` and the Node
//! status strategy do, with the real server's answers:
//!
//! - a POST body that does not decode: 400 `BadRequest`;
//! - a PATCH whose merged object does not decode: 422 `Invalid` on field
//!   `patch` (the real server's `"" is invalid: patch: Invalid value: …`);
//! - a decoded object that fails validation: 422 `Invalid` naming every
//!   field, with `details.causes`.
//!
//! Times are checked on the raw JSON before decoding, since k8s-openapi
//! decodes any RFC 3339: a `MicroTime` (`eventTime`,
//! `series.lastObservedTime`) must have exactly 6 fractional digits (Go
//! parses it with layout `2006-01-02T15:04:05.000000Z07:00`); a `Time` is
//! held to whole seconds, as every client writes it.
//!
//! Field paths are the internal type's, as the real server reports them:
//! `note` is `message`, `regarding` is `involvedObject`.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use serde_json::{Value, json};

/// One field error: (field path, cause reason, message without the field).
pub type FieldError = (String, &'static str, String);

const MICRO_LAYOUT: &str = "2006-01-02T15:04:05.000000Z07:00";

/// The real server's 422 for `kind` `name` with `errors`.
pub fn invalid(kind: &str, name: &str, errors: &[FieldError]) -> Value {
    let mut seen = Vec::new();
    for (field, _, message) in errors {
        let line = format!("{field}: {message}");
        if !seen.contains(&line) {
            seen.push(line);
        }
    }
    let list = if seen.len() == 1 {
        seen[0].clone()
    } else {
        format!("[{}]", seen.join(", "))
    };
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{kind} {name:?} is invalid: {list}"),
        "reason": "Invalid",
        "details": {
            "name": name,
            "kind": kind,
            "causes": errors.iter().map(|(field, reason, message)| json!({
                "reason": reason, "message": message, "field": field,
            })).collect::<Vec<_>>(),
        },
        "code": 422,
    })
}

/// The 422 of a PATCH whose result does not decode.
pub fn invalid_patch(why: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!(" \"\" is invalid: patch: Invalid value: \"...\": {why}"),
        "reason": "Invalid",
        "details": {
            "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: \"...\": {why}"), "field": "patch"}],
        },
        "code": 422,
    })
}

/// The fractional digits of an RFC 3339 time, if it is one.
fn fraction(s: &str) -> Option<&str> {
    s.parse::<jiff::Timestamp>().ok()?;
    let rest = s.get(19..)?;
    Some(match rest.strip_prefix('.') {
        Some(f) => &f[..f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len())],
        None => "",
    })
}

/// Go's error for a MicroTime not in `YYYY-MM-DDTHH:MM:SS.ffffffZ07:00`.
fn micro_error(s: &str) -> Option<String> {
    let f = fraction(s);
    if f.is_some_and(|f| f.len() == 6) {
        return None;
    }
    let bad = match f {
        Some(f) if f.len() > 6 => s.get(26..).unwrap_or(s),
        _ => s.get(19..).unwrap_or(s),
    };
    Some(format!(
        "parsing time {s:?} as {MICRO_LAYOUT:?}: cannot parse {bad:?} as \"Z07:00\""
    ))
}

/// A Time held to whole seconds.
fn time_error(s: &str) -> Option<String> {
    (fraction(s) != Some("")).then(|| {
        format!("parsing time {s:?} as \"2006-01-02T15:04:05Z07:00\": not an RFC 3339 time in whole seconds")
    })
}

/// The first bad time in `v` at any of `micro` or `time` paths.
fn bad_times(v: &Value, micro: &[&str], time: &[&str]) -> Option<String> {
    let at = |path: &str| {
        path.split('.')
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
    };
    micro
        .iter()
        .filter_map(|p| at(p).and_then(micro_error))
        .chain(time.iter().filter_map(|p| at(p).and_then(time_error)))
        .next()
}

const EVENT_MICRO: [&str; 2] = ["eventTime", "series.lastObservedTime"];
const EVENT_TIME: [&str; 3] = [
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "metadata.creationTimestamp",
];

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

const DNS_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Decodes an events.k8s.io/v1 Event body; `Err` is the decode error.
pub fn decode_event(v: &Value) -> Result<Event, String> {
    if let Some(why) = bad_times(v, &EVENT_MICRO, &EVENT_TIME) {
        return Err(why);
    }
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

fn required(errors: &mut Vec<FieldError>, field: &str, value: Option<&String>) {
    if value.is_none_or(String::is_empty) {
        errors.push((field.into(), "FieldValueRequired", "Required value".into()));
    }
}

fn at_most(errors: &mut Vec<FieldError>, field: &str, value: Option<&String>, max: usize) {
    if value.is_some_and(|v| v.len() > max) {
        errors.push((
            field.into(),
            "FieldValueInvalid",
            format!("Invalid value: \"\": can have at most {max} characters"),
        ));
    }
}

fn validate_series(errors: &mut Vec<FieldError>, e: &Event) {
    if let Some(s) = &e.series
        && s.count < 2
    {
        errors.push((
            "series.count".into(),
            "FieldValueInvalid",
            "Invalid value: \"\": should be at least 2".into(),
        ));
    }
}

/// `ValidateEventCreate` for an events.k8s.io/v1 request.
pub fn validate_event_create(e: &Event, namespace: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match e.metadata.name.as_deref() {
        None | Some("") if e.metadata.generate_name.is_none() => errors.push((
            "metadata.name".into(),
            "FieldValueRequired",
            "Required value: name or generateName is required".into(),
        )),
        Some(n) if !n.is_empty() && !is_dns_subdomain(n) => errors.push((
            "metadata.name".into(),
            "FieldValueInvalid",
            format!("Invalid value: {n:?}: {DNS_MESSAGE}"),
        )),
        _ => {}
    }
    if e.metadata
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != namespace)
    {
        errors.push((
            "metadata.namespace".into(),
            "FieldValueInvalid",
            "Invalid value: \"\": does not match the namespace of the request".into(),
        ));
    }
    if e.event_time.is_none() {
        errors.push((
            "eventTime".into(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
    match e.type_.as_deref() {
        Some("Normal" | "Warning") => {}
        other => errors.push((
            "type".into(),
            "FieldValueInvalid",
            format!(
                "Invalid value: \"\": has invalid value: {}",
                other.unwrap_or("")
            ),
        )),
    }
    for (field, set) in [
        ("firstTimestamp", e.deprecated_first_timestamp.is_some()),
        ("lastTimestamp", e.deprecated_last_timestamp.is_some()),
        ("count", e.deprecated_count.is_some_and(|c| c != 0)),
        (
            "source",
            e.deprecated_source
                .as_ref()
                .is_some_and(|s| s.component.is_some() || s.host.is_some()),
        ),
    ] {
        if set {
            errors.push((
                field.into(),
                "FieldValueInvalid",
                "Invalid value: \"\": needs to be unset".into(),
            ));
        }
    }
    validate_series(&mut errors, e);
    errors.extend(validate_event_fields(e));
    errors
}

/// `legacyValidateEvent`: what every write of an Event with `eventTime` must hold.
fn validate_event_fields(e: &Event) -> Vec<FieldError> {
    let mut errors = Vec::new();
    required(
        &mut errors,
        "reportingController",
        e.reporting_controller.as_ref(),
    );
    required(
        &mut errors,
        "reportingInstance",
        e.reporting_instance.as_ref(),
    );
    at_most(
        &mut errors,
        "reportingInstance",
        e.reporting_instance.as_ref(),
        128,
    );
    required(&mut errors, "action", e.action.as_ref());
    at_most(&mut errors, "action", e.action.as_ref(), 128);
    required(&mut errors, "reason", e.reason.as_ref());
    at_most(&mut errors, "reason", e.reason.as_ref(), 128);
    at_most(&mut errors, "message", e.note.as_ref(), 1024);
    errors
}

/// `ValidateEventUpdate` for an events.k8s.io/v1 request.
pub fn validate_event_update(new: &Event, old: &Event) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut immutable = |field: &str, same: bool, shown: String| {
        if !same {
            errors.push((
                field.into(),
                "FieldValueInvalid",
                format!("Invalid value: {shown}: field is immutable"),
            ));
        }
    };
    immutable(
        "involvedObject",
        new.regarding == old.regarding,
        show(&new.regarding),
    );
    immutable("reason", new.reason == old.reason, show(&new.reason));
    immutable("message", new.note == old.note, show(&new.note));
    immutable(
        "source",
        new.deprecated_source == old.deprecated_source,
        show(&new.deprecated_source),
    );
    immutable(
        "firstTimestamp",
        new.deprecated_first_timestamp == old.deprecated_first_timestamp,
        show(&new.deprecated_first_timestamp),
    );
    immutable(
        "lastTimestamp",
        new.deprecated_last_timestamp == old.deprecated_last_timestamp,
        show(&new.deprecated_last_timestamp),
    );
    immutable(
        "count",
        new.deprecated_count == old.deprecated_count,
        show(&new.deprecated_count),
    );
    immutable("type", new.type_ == old.type_, show(&new.type_));
    immutable(
        "eventTime",
        new.event_time == old.event_time,
        show(&new.event_time),
    );
    immutable("action", new.action == old.action, show(&new.action));
    immutable("related", new.related == old.related, show(&new.related));
    immutable(
        "reportingController",
        new.reporting_controller == old.reporting_controller,
        show(&new.reporting_controller),
    );
    immutable(
        "reportingInstance",
        new.reporting_instance == old.reporting_instance,
        show(&new.reporting_instance),
    );
    if new.series != old.series {
        validate_series(&mut errors, new);
    }
    errors.extend(validate_event_fields(new));
    errors
}

/// A value as the real server's immutable error prints it.
fn show<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Decodes a Node (or a Node status patch); `Err` is the decode error.
pub fn decode_node(v: &Value) -> Result<Node, String> {
    if let Some(conds) = v.pointer("/status/conditions").and_then(Value::as_array) {
        for c in conds {
            if let Some(why) = bad_times(c, &[], &["lastHeartbeatTime", "lastTransitionTime"]) {
                return Err(why);
            }
        }
    }
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

const NAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn name_part_ok(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Why `key` is not a qualified name (`prefix/name`: a DNS subdomain of at
/// most 253 and a name part of at most 63), as apimachinery says it.
pub fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if p.len() > 253 || !is_dns_subdomain(p) {
            return Some(format!("prefix part {DNS_MESSAGE}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    (!name_part_ok(name)).then(|| NAME_FMT.into())
}

/// Why `v` is not a label value (empty, or ≤ 63 of the name characters).
pub fn label_value_error(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!name_part_ok(v)).then(|| "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
}

/// A Node as `ValidateNode` and `ValidateNodeUpdate` check what npd-ext
/// writes: its labels (`metadata.labels`, no index) and its taints (key,
/// value, effect, no key and effect twice). The taints are checked under
/// `metadata.taints`, not `spec.taints`: the real server passes the
/// metadata path to `validateNodeTaints`, and runs it twice on an update,
/// so each cause appears twice (the message lists it once).
pub fn validate_node(n: &Node) -> Vec<FieldError> {
    let once = validate_node_once(n);
    let mut errors: Vec<FieldError> = once
        .iter()
        .filter(|(f, _, _)| f.starts_with("metadata.taints"))
        .cloned()
        .collect();
    errors.extend(once);
    errors
}

fn validate_node_once(n: &Node) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (k, v) in n.metadata.labels.iter().flatten() {
        if let Some(why) = qualified_name_error(k) {
            errors.push((
                "metadata.labels".into(),
                "FieldValueInvalid",
                format!("Invalid value: {k:?}: {why}"),
            ));
        }
        if let Some(why) = label_value_error(v) {
            errors.push((
                "metadata.labels".into(),
                "FieldValueInvalid",
                format!("Invalid value: {v:?}: {why}"),
            ));
        }
    }
    let taints = n.spec.as_ref().and_then(|s| s.taints.as_ref());
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, t) in taints.into_iter().flatten().enumerate() {
        let at = format!("metadata.taints[{i}]");
        if t.key.is_empty() {
            errors.push((
                format!("{at}.key"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        } else if let Some(why) = qualified_name_error(&t.key) {
            errors.push((
                format!("{at}.key"),
                "FieldValueInvalid",
                format!("Invalid value: {:?}: {why}", t.key),
            ));
        }
        if let Some(why) = t.value.as_deref().and_then(label_value_error) {
            errors.push((
                format!("{at}.value"),
                "FieldValueInvalid",
                format!(
                    "Invalid value: {:?}: {why}",
                    t.value.as_deref().unwrap_or("")
                ),
            ));
        }
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
            errors.push((
                format!("{at}.effect"),
                "FieldValueNotSupported",
                format!(
                    "Unsupported value: {:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
                    t.effect
                ),
            ));
        }
        let pair = (t.key.clone(), t.effect.clone());
        if seen.contains(&pair) {
            // field.Duplicate prints the internal taint with Go's %#v.
            let added = if t.time_added.is_some() {
                "(*v1.Time)(0xc000000000)"
            } else {
                "(*v1.Time)(nil)"
            };
            errors.push((
                at,
                "FieldValueDuplicate",
                format!(
                    "Duplicate value: core.Taint{{Key:{:?}, Value:{:?}, Effect:{:?}, TimeAdded:{added}}}: taints must be unique by key and effect pair",
                    t.key,
                    t.value.as_deref().unwrap_or(""),
                    t.effect
                ),
            ));
        }
        seen.push(pair);
    }
    errors
}

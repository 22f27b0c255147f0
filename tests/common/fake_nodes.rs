//! The fake API server's Node collection beyond one Node's status, as
//! kube-apiserver serves it:
//!
//! - `GET /api/v1/nodes` with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`,
//!   `!k`, `k in (a,b)`, `k notin (a,b)`, comma-joined; 400 for one that
//!   does not parse), `limit` and `continue`: items in name order (etcd's
//!   key order), `metadata.continue` when more match, and
//!   `metadata.remainingItemCount` only for a list without a selector (the
//!   etcd store leaves it unset for a non-empty predicate, rather than give
//!   a count of keys that do not match); as `PartialObjectMetadataList`
//!   when the `Accept` header asks for it (kube's `list_metadata`);
//! - `PATCH /api/v1/nodes/{name}` as JSON patch (RFC 6902, `test`
//!   included), merge patch or strategic merge patch: a failed `test` or
//!   op is 422; a patched `metadata.resourceVersion` other than the stored
//!   one is 409 `Conflict`; status changes are dropped (the main resource
//!   does not write status); the result is decoded as a Node and validated
//!   (tests/common/api_rules.rs: labels and taints) with the real 422.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::api_rules as rules;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Req {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Eq(k, v) => labels.get(k) == Some(v),
            Self::Ne(k, v) => labels.get(k) != Some(v),
            Self::Exists(k) => labels.contains_key(k),
            Self::Absent(k) => !labels.contains_key(k),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reqs = Vec::new();
    for part in split_top(s) {
        let p = part.trim();
        let set = |op: &str| -> Option<Result<Req, String>> {
            let (k, rest) = p.split_once(op)?;
            let vals = rest.trim();
            let inner = vals.strip_prefix('(')?.strip_suffix(')')?;
            let vs: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
            let k = k.trim().to_owned();
            Some(Ok(if op == " notin " {
                Req::NotIn(k, vs)
            } else {
                Req::In(k, vs)
            }))
        };
        let req = if let Some(r) = set(" notin ").or_else(|| set(" in ")) {
            r?
        } else if let Some((k, v)) = p.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = p.strip_prefix('!') {
            Req::Absent(k.trim().into())
        } else {
            Req::Exists(p.into())
        };
        let key = match &req {
            Req::Eq(k, _)
            | Req::Ne(k, _)
            | Req::Exists(k)
            | Req::Absent(k)
            | Req::In(k, _)
            | Req::NotIn(k, _) => k,
        };
        if let Some(why) = rules::qualified_name_error(key) {
            return Err(format!("unable to parse requirement: {why}"));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

/// `%XX` and `+` decoded, as a query string carries them.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn query_params(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn labels_of(node: &Value) -> BTreeMap<String, String> {
    node["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /api/v1/nodes?…`.
pub fn list(
    nodes: &BTreeMap<String, Value>,
    rv: u64,
    query: &str,
    accept: Option<&str>,
) -> (u16, Value) {
    let q = query_params(query);
    let selector = match parse_selector(q.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(why) => return (400, super::fake_api::status_body(400, "BadRequest", &why)),
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 0,
        Some(Ok(l)) => l,
        Some(Err(_)) => {
            return (
                400,
                super::fake_api::status_body(400, "BadRequest", "limit: invalid value"),
            );
        }
    };
    // The continue token: the hex of the name to start after.
    let start = match q.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match hex_decode(c) {
            Some(name) => Some(name),
            None => {
                return (
                    400,
                    super::fake_api::status_body(
                        400,
                        "BadRequest",
                        "invalid continue token: not one this server gave",
                    ),
                );
            }
        },
    };
    let range: Vec<(&String, &Value)> = nodes
        .iter()
        .filter(|(name, _)| start.as_ref().is_none_or(|s| *name > s))
        .collect();
    let matching: Vec<&(&String, &Value)> = range
        .iter()
        .filter(|(_, n)| {
            let labels = labels_of(n);
            selector.iter().all(|r| r.matches(&labels))
        })
        .collect();
    let page: Vec<&(&String, &Value)> = if limit > 0 {
        matching.iter().take(limit).copied().collect()
    } else {
        matching.clone()
    };
    // etcd's paging: a full page, and any key after its last item (one
    // that matches or not), gives a continue token, so exactly `limit`
    // matches followed by other nodes still say "more".
    let more = limit > 0
        && page.len() == limit
        && page
            .last()
            .is_some_and(|(last, _)| range.iter().any(|(name, _)| *name > *last));
    let metadata_only = accept.is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
    let items: Vec<Value> = page
        .iter()
        .map(|(_, n)| {
            if metadata_only {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": n["metadata"]})
            } else {
                (*n).clone()
            }
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if more {
        let last = page.last().map(|(name, _)| name.as_str()).unwrap_or("");
        meta["continue"] = Value::String(hex_encode(last));
        if selector.is_empty() {
            // etcd's count of the keys from the start of this page, less the page.
            meta["remainingItemCount"] = json!(range.len() - page.len());
        }
    }
    let (kind, api_version) = if metadata_only {
        ("PartialObjectMetadataList", "meta.k8s.io/v1")
    } else {
        ("NodeList", "v1")
    };
    (
        200,
        json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": items}),
    )
}

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

pub const JSON_PATCH: &str = "application/json-patch+json";

/// `PATCH /api/v1/nodes/{name}`: the patched Node, or the real server's
/// refusal. `merge` applies a merge or strategic merge patch.
pub fn patch(
    old: &Value,
    name: &str,
    content_type: Option<&str>,
    body: &Value,
    merge: impl FnOnce(&mut Value, &Value, bool),
) -> Result<Value, (u16, Value)> {
    use super::fake_api::{MERGE, STRATEGIC, status_body};
    let mut node = old.clone();
    match content_type {
        Some(JSON_PATCH) => {
            let ops: json_patch::Patch = serde_json::from_value(body.clone())
                .map_err(|e| (400, status_body(400, "BadRequest", &e.to_string())))?;
            // The real server applies it with evanphx/json-patch and answers
            // a failed op (a `test` included) with
            // `NewGenericServerResponse(422, …)`, which replaces the patch
            // library's words with a fixed message.
            json_patch::patch(&mut node, &ops).map_err(|_| {
                (
                    422,
                    json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure",
                        "message": "the server rejected our request due to an error in our request",
                        "reason": "Invalid",
                        "details": {},
                        "code": 422,
                    }),
                )
            })?;
        }
        Some(ct @ (STRATEGIC | MERGE)) => {
            if !body.is_object() {
                return Err((
                    400,
                    status_body(400, "BadRequest", "the patch is not a JSON object"),
                ));
            }
            merge(&mut node, body, ct == STRATEGIC);
        }
        _ => {
            return Err((
                415,
                status_body(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: {JSON_PATCH}, {MERGE}, {STRATEGIC}, application/apply-patch+yaml"
                    ),
                ),
            ));
        }
    }
    let stored_rv = old["metadata"]["resourceVersion"].clone();
    let sent_rv = &node["metadata"]["resourceVersion"];
    if !sent_rv.is_null() && *sent_rv != stored_rv {
        return Err((
            409,
            status_body(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            ),
        ));
    }
    // The main resource does not write status, nor the name or uid.
    node["status"] = old["status"].clone();
    node["metadata"]["name"] = old["metadata"]["name"].clone();
    node["metadata"]["uid"] = old["metadata"]["uid"].clone();
    let decoded = rules::decode_node(&node).map_err(|why| (422, rules::invalid_patch(&why)))?;
    let errors = rules::validate_node(&decoded);
    if !errors.is_empty() {
        return Err((422, rules::invalid("Node", name, &errors)));
    }
    Ok(node)
}

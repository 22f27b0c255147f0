//! An in-process fake Kubernetes API server, for what npd-ext uses of the
//! real one, with its semantics rather than "accept anything":
//!
//! - `GET /api/v1/nodes/{name}`: the Node, or a 404 `Status`;
//! - `GET /api/v1/nodes` (label selectors, `limit`, `continue`,
//!   `remainingItemCount`) and `PATCH /api/v1/nodes/{name}` (JSON, merge
//!   and strategic merge patches, validated): tests/common/fake_nodes.rs;
//! - `PATCH /api/v1/nodes/{name}/status`: only
//!   `application/strategic-merge-patch+json` (415 otherwise); objects merge
//!   key by key (`null` deletes), lists replace, except `status.conditions`
//!   and `status.addresses`, merged by their key `type`; `$`-directives are
//!   ignored; every write bumps `metadata.resourceVersion`;
//! - Events in both API groups (`/api/v1/...` and
//!   `/apis/events.k8s.io/v1/...`): POST (409 when the name exists), PATCH
//!   (strategic or merge patch; 404 when missing), GET;
//! - every body decoded as its k8s-openapi type and validated as the real
//!   server does (tests/common/api_rules.rs): 400 for a POST body that
//!   does not decode, 422 `Invalid` with causes for one that fails
//!   validation or a PATCH whose result does not decode;
//! - injectable faults (status codes, 429 with `Retry-After`, dropped
//!   connections, latency) matched by method and path;
//! - a log of every request.
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::api_rules as rules;

pub const STRATEGIC: &str = "application/strategic-merge-patch+json";
pub const MERGE: &str = "application/merge-patch+json";

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    /// The query string (empty when there is none).
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    /// The status the server answered with (0: the connection was dropped).
    pub status: u16,
}

/// What an injected fault does.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a `Status` body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany { retry_after: u64 },
    /// Close the connection without an answer.
    Drop,
    /// Answer normally, after a delay.
    Delay(Duration),
    /// Do the request at once, answer it after a delay (a write that is
    /// stored although the client gave up waiting).
    Late(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    method: Option<Method>,
    path_contains: String,
    fault: Fault,
    /// How many more requests it applies to (`None`: until cleared).
    left: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    /// (path of the collection, name) → event.
    events: BTreeMap<(String, String), Value>,
    rv: u64,
    log: Vec<Logged>,
    faults: VecDeque<Rule>,
}

/// A running fake API server on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    token: CancellationToken,
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let token = CancellationToken::new();
        let (s, t) = (state.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    () = t.cancelled() => return,
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, token }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a Node with a kubelet-owned `Ready` condition.
    pub fn add_node(&self, name: &str) {
        let mut st = self.state();
        st.rv += 1;
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": format!("uid-{name}"),
                "resourceVersion": st.rv.to_string(),
            },
            // Go writes the (non-pointer) spec even when it is empty.
            "spec": {},
            "status": {
                "conditions": [{
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2026-11-27T00:00:00Z",
                    "lastTransitionTime": "2026-11-27T00:00:00Z",
                }],
            },
        });
        st.nodes.insert(name.to_owned(), node);
    }

    /// Adds Nodes `{prefix}-00` … as [`add_node`](Self::add_node) does.
    pub fn add_nodes(&self, prefix: &str, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:02}")).collect();
        for name in &names {
            self.add_node(name);
        }
        names
    }

    /// Sets (or, with `None`, removes) a label on a Node, as another writer.
    pub fn set_label(&self, node: &str, key: &str, value: Option<&str>) {
        let mut st = self.state();
        st.rv += 1;
        let rv = st.rv.to_string();
        let n = st.nodes.get_mut(node).expect("node exists");
        match value {
            Some(v) => n["metadata"]["labels"][key] = Value::String(v.to_owned()),
            None => {
                if let Some(l) = n["metadata"]["labels"].as_object_mut() {
                    l.remove(key);
                }
            }
        }
        n["metadata"]["resourceVersion"] = Value::String(rv);
    }

    /// Replaces a Node's taints, as another writer (kubectl, the node
    /// lifecycle controller).
    pub fn set_taints(&self, node: &str, taints: Value) {
        let mut st = self.state();
        st.rv += 1;
        let rv = st.rv.to_string();
        let n = st.nodes.get_mut(node).expect("node exists");
        n["spec"]["taints"] = taints;
        n["metadata"]["resourceVersion"] = Value::String(rv);
    }

    /// A Node's taints as `key:effect` (`key=value:effect` with a value).
    pub fn taints(&self, node: &str) -> Vec<String> {
        self.node(node)
            .and_then(|n| n["spec"]["taints"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                let (k, e) = (
                    t["key"].as_str().unwrap_or(""),
                    t["effect"].as_str().unwrap_or(""),
                );
                match t["value"].as_str().filter(|v| !v.is_empty()) {
                    Some(v) => format!("{k}={v}:{e}"),
                    None => format!("{k}:{e}"),
                }
            })
            .collect()
    }

    /// A Node's label.
    pub fn label(&self, node: &str, key: &str) -> Option<String> {
        self.node(node)?["metadata"]["labels"][key]
            .as_str()
            .map(str::to_owned)
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.state().nodes.get(name).cloned()
    }

    /// The Node's conditions by type.
    pub fn conditions(&self, name: &str) -> BTreeMap<String, Value> {
        self.node(name)
            .and_then(|n| n["status"]["conditions"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| Some((c["type"].as_str()?.to_owned(), c)))
            .collect()
    }

    pub fn events(&self) -> Vec<Value> {
        self.state().events.values().cloned().collect()
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    pub fn clear_log(&self) {
        self.state().log.clear();
    }

    /// Requests so far with this method whose path contains `part`.
    pub fn count(&self, method: &Method, part: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|l| l.method == method && l.path.contains(part))
            .count()
    }

    /// Applies `fault` to the next `times` matching requests (`None`: all,
    /// until [`clear_faults`](Self::clear_faults)).
    pub fn fault(
        &self,
        method: Option<Method>,
        path_contains: &str,
        fault: Fault,
        times: Option<usize>,
    ) {
        self.state().faults.push_back(Rule {
            method,
            path_contains: path_contains.to_owned(),
            fault,
            left: times,
        });
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    pub fn stop(&self) {
        self.token.cancel();
    }

    /// A raw request to this server (for bodies no typed client would
    /// send); returns the status code and the body as JSON.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> (u16, Value) {
        let body = body.to_string();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let (code, body) = exchange(self.addr, &req).await;
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// One HTTP/1.1 request over a fresh connection: the status code and body.
pub async fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn respond(code: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    state: &Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);

    let fault = {
        let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
        // Rules match the path and, when there is one, the query.
        let target = if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        };
        let hit = st.faults.iter_mut().find(|r| {
            r.method.as_ref().is_none_or(|m| *m == method)
                && target.contains(&r.path_contains)
                && r.left != Some(0)
        });
        hit.map(|r| {
            if let Some(n) = &mut r.left {
                *n -= 1;
            }
            r.fault.clone()
        })
    };
    let log = |status: u16| {
        state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .push(Logged {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
                status,
            });
    };
    match fault {
        Some(Fault::Status(code)) => {
            log(code);
            let reason = match code {
                403 => "Forbidden",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                _ => "Failure",
            };
            let message = if code == 403 {
                format!(
                    "nodes \"x\" is forbidden: User \"system:serviceaccount:kube-system:npd-ext\" cannot {} resource at {path}",
                    method.as_str().to_lowercase()
                )
            } else {
                format!("injected {code}")
            };
            return respond(code, &status_body(code, reason, &message));
        }
        Some(Fault::TooMany { retry_after }) => {
            log(429);
            // The API server says it twice: a header and the Status details.
            let mut body = status_body(429, "TooManyRequests", "slow down");
            body["details"] = json!({ "retryAfterSeconds": retry_after });
            let mut r = respond(429, &body);
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from(retry_after));
            return r;
        }
        Some(Fault::Drop) => {
            log(0);
            // An answer hyper cannot send: the connection is closed.
            let mut r = Response::new(Full::new(Bytes::new()));
            r.headers_mut().insert(
                "content-length",
                hyper::header::HeaderValue::from_static("100"),
            );
            return r;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Late(_)) | None => {}
    }
    let (code, out) = route(
        state,
        &method,
        (&path, &query),
        content_type.as_deref(),
        accept.as_deref(),
        body.clone(),
    );
    log(code);
    if let Some(Fault::Late(d)) = fault {
        tokio::time::sleep(d).await;
    }
    respond(code, &out)
}

fn route(
    state: &Arc<Mutex<State>>,
    method: &Method,
    (path, query): (&str, &str),
    content_type: Option<&str>,
    accept: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["api", "v1", "nodes"]) => {
            super::fake_nodes::list(&st.nodes, st.rv, query, accept)
        }
        (&Method::PATCH, ["api", "v1", "nodes", name]) => {
            let Some(old) = st.nodes.get(*name) else {
                return (
                    404,
                    status_body(404, "NotFound", &format!("nodes \"{name}\" not found")),
                );
            };
            let patched = super::fake_nodes::patch(old, name, content_type, &body, |n, p, s| {
                merge(n, p, s, "");
            });
            match patched {
                Ok(mut node) => {
                    st.rv += 1;
                    node["metadata"]["resourceVersion"] = Value::String(st.rv.to_string());
                    st.nodes.insert((*name).to_owned(), node.clone());
                    (200, node)
                }
                Err(refused) => refused,
            }
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => match st.nodes.get(*name) {
            Some(n) => (200, n.clone()),
            None => (
                404,
                status_body(404, "NotFound", &format!("nodes \"{name}\" not found")),
            ),
        },
        (&Method::PATCH, ["api", "v1", "nodes", name, "status"]) => {
            if content_type != Some(STRATEGIC) && content_type != Some(MERGE) {
                return (
                    415,
                    status_body(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the body of the request was in an unknown format - accepted media types include: {STRATEGIC}, {MERGE}"
                        ),
                    ),
                );
            }
            if !body.is_object() {
                return (
                    400,
                    status_body(400, "BadRequest", "the patch is not a JSON object"),
                );
            }
            let Some(old) = st.nodes.get(*name) else {
                return (
                    404,
                    status_body(404, "NotFound", &format!("nodes \"{name}\" not found")),
                );
            };
            // The status subresource only takes status.
            let patch = json!({ "status": body.get("status").cloned().unwrap_or(Value::Null) });
            let mut node = old.clone();
            merge(&mut node, &patch, content_type == Some(STRATEGIC), "");
            if let Err(why) = rules::decode_node(&node) {
                return (422, rules::invalid_patch(&why));
            }
            st.rv += 1;
            node["metadata"]["resourceVersion"] = Value::String(st.rv.to_string());
            st.nodes.insert((*name).to_owned(), node.clone());
            (200, node)
        }
        (&Method::POST, [.., "namespaces", _ns, "events"]) => {
            let Some(name) = body["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    body["metadata"]["generateName"]
                        .as_str()
                        .map(|g| format!("{g}{}", st.rv + 1))
                })
            else {
                return (
                    422,
                    status_body(422, "Invalid", "metadata.name: Required value"),
                );
            };
            if path.starts_with("/apis/events.k8s.io/v1/") {
                let event = match rules::decode_event(&body) {
                    Ok(e) => e,
                    Err(why) => {
                        return (
                            400,
                            status_body(
                                400,
                                "BadRequest",
                                &format!(
                                    "Event in version \"v1\" cannot be handled as a Event: {why}"
                                ),
                            ),
                        );
                    }
                };
                let ns = parts[parts.len() - 2];
                let errors = rules::validate_event_create(&event, ns);
                if !errors.is_empty() {
                    return (422, rules::invalid("Event", &name, &errors));
                }
            } else if let Err(e) =
                serde_json::from_value::<k8s_openapi::api::core::v1::Event>(body.clone())
            {
                return (
                    400,
                    status_body(
                        400,
                        "BadRequest",
                        &format!("Event in version \"v1\" cannot be handled as a Event: {e}"),
                    ),
                );
            }
            let key = (path.to_owned(), name.clone());
            if st.events.contains_key(&key) {
                return (
                    409,
                    status_body(
                        409,
                        "AlreadyExists",
                        &format!("events \"{name}\" already exists"),
                    ),
                );
            }
            st.rv += 1;
            let mut ev = body;
            ev["metadata"]["name"] = Value::String(name);
            ev["metadata"]["resourceVersion"] = Value::String(st.rv.to_string());
            st.events.insert(key, ev.clone());
            (201, ev)
        }
        (&Method::PATCH, [.., "namespaces", _ns, "events", name]) => {
            let collection = path[..path.len() - name.len() - 1].to_owned();
            let key = (collection, (*name).to_owned());
            let Some(old) = st.events.get(&key) else {
                return (
                    404,
                    status_body(404, "NotFound", &format!("events \"{name}\" not found")),
                );
            };
            let mut ev = old.clone();
            merge(&mut ev, &body, content_type == Some(STRATEGIC), "");
            if path.starts_with("/apis/events.k8s.io/v1/") {
                let new = match rules::decode_event(&ev) {
                    Ok(e) => e,
                    Err(why) => return (422, rules::invalid_patch(&why)),
                };
                let before = rules::decode_event(old).expect("stored Events decode");
                let errors = rules::validate_event_update(&new, &before);
                if !errors.is_empty() {
                    return (422, rules::invalid("Event", name, &errors));
                }
            }
            st.rv += 1;
            ev["metadata"]["resourceVersion"] = Value::String(st.rv.to_string());
            st.events.insert(key, ev.clone());
            (200, ev)
        }
        (&Method::GET, [.., "namespaces", _ns, "events", name]) => {
            let collection = path[..path.len() - name.len() - 1].to_owned();
            match st.events.get(&(collection, (*name).to_owned())) {
                Some(ev) => (200, ev.clone()),
                None => (
                    404,
                    status_body(404, "NotFound", &format!("events \"{name}\" not found")),
                ),
            }
        }
        _ => (
            404,
            status_body(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({method} {path})"),
            ),
        ),
    }
}

/// Merges `patch` into `target`: JSON merge patch, plus (strategic) lists
/// merged by key where Kubernetes declares one for a Node's status.
fn merge(target: &mut Value, patch: &Value, strategic: bool, path: &str) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Array(items)
                if strategic
                    && matches!(here.as_str(), "status.conditions" | "status.addresses") =>
            {
                let list = t
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if !list.is_array() {
                    *list = Value::Array(Vec::new());
                }
                let Value::Array(list) = list else { continue };
                for item in items {
                    let key = &item["type"];
                    match list.iter_mut().find(|x| &x["type"] == key) {
                        Some(existing) => merge(existing, item, strategic, &here),
                        None => list.push(item.clone()),
                    }
                }
            }
            Value::Object(_) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge(slot, v, strategic, &here);
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

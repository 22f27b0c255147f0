//! The local HTTP server (NPD's `--address`/`--port`): `/healthz` and `/conditions`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::conditions::NodeCondition;
use crate::liveness::{Liveness, Pulse};

#[derive(Clone, Debug)]
pub struct State {
    pub conditions: watch::Receiver<Arc<Vec<NodeCondition>>>,
    pub liveness: Liveness,
}

pub async fn serve(
    listener: Arc<TcpListener>,
    state: State,
    pulse: Option<Pulse>,
    token: CancellationToken,
) {
    serve_with(
        listener,
        move |method: &Method, path: &str| route(method, path, &state),
        pulse,
        token,
    )
    .await;
}

/// How often an idle server's accept loop turns (and beats).
const TURN: Duration = Duration::from_secs(60);

/// Serves GET requests with `route` until `token` is cancelled (HTTP/1.1,
/// a header deadline so an idle client cannot hold a connection). The
/// listener is shared so that a restarted server takes it over. With a
/// `pulse`, the accept loop beats it.
pub(crate) async fn serve_with<F>(
    listener: Arc<TcpListener>,
    route: F,
    pulse: Option<Pulse>,
    token: CancellationToken,
) where
    F: Fn(&Method, &str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let mut turn = crate::timer::Ticker::new(TURN, TURN);
    loop {
        if let Some(p) = &pulse {
            p.beat(TURN * 2);
        }
        let (stream, _) = tokio::select! {
            () = turn.tick() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            () = token.cancelled() => return,
        };
        let route = route.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let route = route.clone();
                async move { Ok::<_, Infallible>(route(req.method(), req.uri().path())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = token.cancelled() => {}
            }
        });
    }
}

fn route(method: &Method, path: &str, state: &State) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match path {
        "/healthz" => {
            let stalled = state.liveness.stalled();
            if stalled.is_empty() {
                let mut body = String::from("ok");
                for (what, list) in [
                    ("degraded", state.liveness.degraded()),
                    ("recovered", state.liveness.recovered()),
                ] {
                    if !list.is_empty() {
                        body.push_str(&format!("; {what}: {}", list.join(", ")));
                    }
                }
                body.push('\n');
                text(StatusCode::OK, body)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("unhealthy: {}\n", stalled.join(", ")),
                )
            }
        }
        "/conditions" => {
            let conditions = Arc::clone(&state.conditions.borrow());
            match serde_json::to_vec(&*conditions) {
                Ok(body) => Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz or /conditions\n".into(),
        ),
    }
}

pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use http_body_util::BodyExt;

    use super::*;
    use crate::problem::ConditionStatus;

    async fn body(r: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = r.status();
        let bytes = r
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn healthz_fails_when_a_task_stalls_or_stops() {
        let liveness = Liveness::new();
        let (_tx, conditions) = watch::channel(Arc::new(Vec::new()));
        let state = State {
            conditions,
            liveness: liveness.clone(),
        };
        let pulse = liveness.register("external-monitor gpu", Duration::from_secs(60));
        assert_eq!(
            body(route(&Method::GET, "/healthz", &state)).await,
            (StatusCode::OK, "ok\n".into())
        );
        pulse.beat(Duration::ZERO);
        let (code, text) = body(route(&Method::GET, "/healthz", &state)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("external-monitor gpu (no progress)"),
            "{text}"
        );
        pulse.beat(Duration::from_secs(60));
        drop(pulse);
        let (code, text) = body(route(&Method::GET, "/healthz", &state)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("(stopped)"), "{text}");
    }

    #[tokio::test]
    async fn healthz_names_a_task_waiting_for_its_restart_then_what_it_recovered_from() {
        let liveness = Liveness::new();
        let (_tx, conditions) = watch::channel(Arc::new(Vec::new()));
        let state = State {
            conditions,
            liveness: liveness.clone(),
        };
        let slot = liveness.slot("custom-plugin-monitor ntp");
        drop(slot.pulse(None));
        slot.panicked("index out of bounds", Duration::from_secs(2));
        let (code, text) = body(route(&Method::GET, "/healthz", &state)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains(
                "custom-plugin-monitor ntp (panicked: index out of bounds; restart 1 in "
            ),
            "{text}"
        );
        let _pulse = slot.pulse(None);
        assert_eq!(
            body(route(&Method::GET, "/healthz", &state)).await,
            (
                StatusCode::OK,
                "ok; recovered: custom-plugin-monitor ntp (restarted after 1 panic; last: index out of bounds)\n"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn conditions_is_a_json_array_never_null() {
        let (tx, conditions) = watch::channel(Arc::new(Vec::new()));
        let state = State {
            conditions,
            liveness: Liveness::new(),
        };
        assert_eq!(
            body(route(&Method::GET, "/conditions", &state)).await.1,
            "[]"
        );
        let now = SystemTime::now();
        tx.send_replace(Arc::new(vec![NodeCondition {
            type_: "GPULost".into(),
            status: ConditionStatus::True,
            transition: now,
            last_update: now,
            reason: "GPUFellOffTheBus".into(),
            message: "gpu=3".into(),
            source: "gpu-monitor".into(),
        }]));
        let (code, text) = body(route(&Method::GET, "/conditions", &state)).await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v[0]["type"], "GPULost");
        assert_eq!(v[0]["status"], "True");
        assert_eq!(
            body(route(&Method::POST, "/conditions", &state)).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            body(route(&Method::GET, "/nope", &state)).await.0,
            StatusCode::NOT_FOUND
        );
    }
}

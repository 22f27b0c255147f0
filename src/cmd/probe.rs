//! `npd-ext probe SOCKET`: health, metadata and current status of a plugin,
//! for operators and as the GPU container's exec liveness probe.
//! `npd-ext probe http://…`: one GET that must answer 200, the detector's
//! exec liveness probe (an `httpGet` probe becomes `curl` run by a shell in
//! some runtimes, and the image has neither).

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::cli::ProbeArgs;
use crate::problem::{Status, format_time};
use crate::rpc::client::{self, describe};
use crate::rpc::pb::external_monitor_client::ExternalMonitorClient;
use crate::rpc::pb::{HealthCheckRequest, MonitorMetadata};
use crate::rpc::status_from_pb;

pub async fn run(args: ProbeArgs) -> ExitCode {
    if let Some(url) = args.socket.to_str().filter(|s| s.starts_with("http://")) {
        return run_http(url, &args).await;
    }
    match probe(&args).await {
        Ok(report) => {
            if args.json {
                say!("{}", report.to_json());
            } else {
                report.print_table();
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            if args.json {
                say!(
                    "{}",
                    json!({"socket": args.socket.display().to_string(), "ok": false, "error": why})
                );
            } else {
                eprintln!("probe: {}: {why}", args.socket.display());
            }
            ExitCode::FAILURE
        }
    }
}

async fn run_http(url: &str, args: &ProbeArgs) -> ExitCode {
    let answer = http_get(url, args.timeout).await;
    let ok = matches!(answer, Ok((200, _)));
    if args.json {
        let doc = match &answer {
            Ok((status, body)) => json!({"url": url, "ok": ok, "status": status, "body": body}),
            Err(why) => json!({"url": url, "ok": false, "error": why}),
        };
        say!("{doc}");
    } else {
        match &answer {
            Ok((200, body)) => say!("{url}: 200 {body}"),
            Ok((status, body)) => eprintln!("probe: {url}: {status} {body}"),
            Err(why) => eprintln!("probe: {url}: {why}"),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One HTTP/1.1 GET of a plain `http://` URL: the status and the body's
/// text, both within `timeout`.
async fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let authority = uri.authority().ok_or("the URL names no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::ConnectionRefused => {
                    "connection refused: nothing listens there (is the detector running?)".into()
                }
                _ => format!("cannot connect: {e}"),
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no HTTP answer: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the answer broke off: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).trim_end().to_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("deadline: no answer within {timeout:?}"))?
}

struct Report {
    socket: String,
    health: String,
    metadata: Option<MonitorMetadata>,
    status: Status,
}

async fn probe(args: &ProbeArgs) -> Result<Report, String> {
    let path = &args.socket;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err("no socket there (is the plugin running?)".into());
        }
        Err(e) => return Err(format!("cannot stat: {e}")),
        Ok(m) if !m.file_type().is_socket() => return Err("not a socket".into()),
        Ok(_) => {}
    }
    match tokio::net::UnixStream::connect(path).await {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err("permission denied (run as the socket's owner or group)".into());
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            return Err("connection refused: nothing listens there (a stale socket?)".into());
        }
        Err(e) => return Err(format!("cannot connect: {e}")),
        Ok(_) => {}
    }
    let channel = client::lazy_channel(path);
    let health = match client::health_check(channel.clone(), "", args.timeout).await {
        Ok(ServingStatus::Serving) => "SERVING".to_owned(),
        Ok(other) => {
            return Err(format!(
                "plugin is not serving (health: {})",
                other.as_str_name()
            ));
        }
        Err(s) if s.code() == Code::Unimplemented => {
            "UNKNOWN (no grpc.health.v1 service)".to_owned()
        }
        Err(s) if s.code() == Code::DeadlineExceeded => {
            return Err(format!(
                "deadline: no health answer within {:?}",
                args.timeout
            ));
        }
        Err(s) => return Err(format!("health check failed: {}", describe(&s))),
    };
    let mut rpc = ExternalMonitorClient::new(channel);
    let metadata = match timed(args, rpc.get_metadata(request(args, ()))).await? {
        Ok(m) => Some(m.into_inner()),
        Err(s) if s.code() == Code::Unimplemented => None,
        Err(s) => return Err(format!("GetMetadata failed: {}", describe(&s))),
    };
    let status = match timed(
        args,
        rpc.check_health(request(args, HealthCheckRequest::default())),
    )
    .await?
    {
        Ok(s) => status_from_pb(s.into_inner(), SystemTime::now()),
        Err(s) => return Err(format!("CheckHealth failed: {}", describe(&s))),
    };
    Ok(Report {
        socket: path.display().to_string(),
        health,
        metadata,
        status,
    })
}

fn request<T>(args: &ProbeArgs, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(args.timeout);
    r
}

async fn timed<T>(args: &ProbeArgs, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(args.timeout, fut)
        .await
        .map_err(|_| format!("deadline: no answer within {:?}", args.timeout))
}

impl Report {
    fn to_json(&self) -> serde_json::Value {
        let metadata = self.metadata.as_ref().map(|m| {
            json!({
                "name": m.name,
                "version": m.version,
                "description": m.description,
                "supported_conditions": m.supported_conditions,
                "capabilities": m.capabilities,
                "api_version": m.api_version,
            })
        });
        json!({
            "socket": self.socket,
            "ok": true,
            "health": self.health,
            "metadata": metadata,
            "status": self.status,
        })
    }

    fn print_table(&self) {
        say!("socket      {}", self.socket);
        say!("health      {}", self.health);
        if let Some(m) = &self.metadata {
            say!(
                "plugin      {} {} (api {})",
                m.name,
                m.version,
                m.api_version
            );
            say!("conditions  {}", m.supported_conditions.join(", "));
            let mut caps: Vec<String> = m
                .capabilities
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            caps.sort();
            say!("capabilities {}", caps.join(", "));
        }
        say!();
        say!("{:<24} {:<8} {:<22} MESSAGE", "TYPE", "STATUS", "REASON");
        for c in &self.status.conditions {
            say!(
                "{:<24} {:<8} {:<22} {}",
                c.type_,
                c.status.to_string(),
                c.reason,
                c.message
            );
        }
        if !self.status.events.is_empty() {
            say!();
            say!("EVENTS");
            for e in &self.status.events {
                say!(
                    "{} {:<4} {:<22} {}",
                    format_time(e.timestamp),
                    e.severity.to_string(),
                    e.reason,
                    e.message
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::exporter::http::serve_with;

    #[tokio::test]
    async fn http_probe_wants_200_and_says_what_else_it_got() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let route = |_: &Method, path: &str| {
            let (code, text) = match path {
                "/healthz" => (StatusCode::OK, "ok\n"),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ok: fan-in (stopped)\n",
                ),
            };
            let mut r = Response::new(Full::new(Bytes::from(text)));
            *r.status_mut() = code;
            r
        };
        let server = tokio::spawn(serve_with(Arc::new(listener), route, None, token.clone()));
        let t = Duration::from_secs(5);
        assert_eq!(
            http_get(&format!("http://{addr}/healthz"), t).await,
            Ok((200, "ok".into()))
        );
        assert_eq!(
            http_get(&format!("http://{addr}/sick"), t).await,
            Ok((503, "not ok: fan-in (stopped)".into()))
        );
        token.cancel();
        server.await.expect("server joins");
        // Nothing listens there any more.
        let refused = http_get(&format!("http://{addr}/healthz"), t).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.starts_with("connection refused")),
            "{refused:?}"
        );
        // A server that accepts and never answers runs into the deadline.
        let mute = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mute_addr = mute.local_addr().expect("addr");
        let hung = http_get(
            &format!("http://{mute_addr}/healthz"),
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(hung, Err("deadline: no answer within 200ms".into()));
        drop(mute);
    }
}

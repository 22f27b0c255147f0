//! Client side: lazy channels to a Unix socket and the `grpc.health.v1` check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A channel that connects to `path` on first use and reconnects after a
/// failure on the next call. Never blocks and never fails up front.
pub fn lazy_channel(path: &Path) -> Channel {
    lazy_channel_to(path, None)
}

/// [`lazy_channel`], trusting the plugin only when the process serving the
/// socket (`SO_PEERCRED`) runs as one of `allowed` (when given).
pub fn lazy_channel_to(path: &Path, allowed: Option<Vec<u32>>) -> Channel {
    let path: PathBuf = path.to_path_buf();
    // The authority is never resolved: the connector below ignores the URI.
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            let allowed = allowed.clone();
            async move {
                let stream = UnixStream::connect(&path).await?;
                if let Some(allowed) = allowed {
                    let uid = stream.peer_cred()?.uid();
                    if !allowed.contains(&uid) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!(
                                "the process serving {} runs as uid {uid}, not one of allowedPeerUids {allowed:?}",
                                path.display()
                            ),
                        ));
                    }
                }
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
}

/// Asks `grpc.health.v1.Health/Check` for `service` ("" = the whole server).
pub async fn health_check(
    channel: Channel,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let mut client = HealthClient::new(channel);
    let response = tokio::time::timeout(timeout, client.check(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("health check timed out"))??;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// A gRPC status in words, with the transport cause when there is one.
pub fn describe(s: &tonic::Status) -> String {
    // tonic reports its own client-side deadline as a cancellation.
    if s.code() == tonic::Code::Cancelled && s.message().contains("Timeout expired") {
        return "DeadlineExceeded: no answer before the deadline".into();
    }
    let mut out = format!("{:?}: {}", s.code(), s.message());
    let mut source = std::error::Error::source(s);
    while let Some(cause) = source {
        let text = cause.to_string();
        // "transport error" only repeats what the code already says.
        if !out.contains(&text) && text != "transport error" {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_deadlines_and_skips_generic_transport_text() {
        let s = tonic::Status::cancelled("Timeout expired");
        assert_eq!(
            describe(&s),
            "DeadlineExceeded: no answer before the deadline"
        );
        let s = tonic::Status::unavailable("connection refused");
        assert_eq!(describe(&s), "Unavailable: connection refused");
    }
}

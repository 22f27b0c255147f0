//! `npd-ext probe SOCKET`: health, metadata and current status of a plugin,
//! for operators and as the GPU container's exec liveness probe.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;
use std::time::SystemTime;

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

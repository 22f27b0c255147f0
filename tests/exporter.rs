//! External exporters: a real gRPC `ExternalExporter` plugin on a Unix
//! socket receives every status the detector's monitors report.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use npd_ext::config::custom;
use npd_ext::config::exporter::ExternalExporterConfig;
use npd_ext::detector::{self, DetectorOptions};
use npd_ext::rpc::pb;
use npd_ext::rpc::pb::external_exporter_server::{ExternalExporter, ExternalExporterServer};
use npd_ext::rpc::server::BoundSocket;
use npd_ext::shutdown::Shutdown;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

/// A test exporter plugin: records what it receives, optionally slowly.
#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<pb::ExportRequest>>>,
    delay: Duration,
    /// A sequence number it always refuses (`success: false`).
    refuse: Option<i64>,
}

#[tonic::async_trait]
impl ExternalExporter for Recorder {
    async fn export_problems(
        &self,
        request: tonic::Request<pb::ExportRequest>,
    ) -> Result<tonic::Response<pb::ExportResponse>, tonic::Status> {
        tokio::time::sleep(self.delay).await;
        let r = request.into_inner();
        let conditions = r.status.as_ref().map_or(0, |s| s.conditions.len());
        let refused = self.refuse == Some(r.sequence);
        self.got.lock().expect("lock").push(r);
        Ok(tonic::Response::new(pb::ExportResponse {
            success: !refused,
            error: if refused {
                "cannot store it".into()
            } else {
                String::new()
            },
            events_exported: 0,
            conditions_exported: i32::try_from(conditions).unwrap_or_default(),
        }))
    }
}

fn serve(path: &Path, recorder: Recorder, token: CancellationToken) {
    let mut socket = BoundSocket::bind(path).expect("bind");
    let listener = socket.take_listener().expect("listener");
    tokio::spawn(async move {
        let _keep = socket;
        tonic::transport::Server::builder()
            .add_service(ExternalExporterServer::new(recorder))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener),
                token.cancelled_owned(),
            )
            .await
    });
}

/// A custom plugin monitor whose script flips its answer on every run.
fn flipping_monitor(dir: &Path) -> custom::CustomPluginConfig {
    let state = dir.join("n");
    let script = common::script(
        dir,
        "flip.sh",
        &format!(
            "n=$(cat {0} 2>/dev/null || echo 0)\necho $((n + 1)) > {0}\nexit $((n % 2))",
            state.display()
        ),
    );
    let text = format!(
        r#"{{"plugin": "custom", "pluginConfig": {{"invoke_interval": "20ms"}}, "source": "flipper",
             "conditions": [{{"type": "Flip", "reason": "Off", "message": "off"}}],
             "rules": [{{"type": "permanent", "condition": "Flip", "reason": "On", "path": "{}"}}]}}"#,
        script.display()
    );
    custom::check(&dir.join("c.json"), &text)
        .config
        .expect("valid")
}

/// A detector with the flipping monitor, serving `/metrics`, exporting to
/// `exporters`.
fn start_exporting(
    dir: &Path,
    exporters: Vec<ExternalExporterConfig>,
) -> (Shutdown, detector::Detector) {
    let shutdown = Shutdown::new();
    let d = detector::start(
        DetectorOptions {
            custom: vec![flipping_monitor(dir)],
            exporters,
            node: "gpu-node-17".into(),
            metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
            ..DetectorOptions::default()
        },
        &shutdown,
    )
    .expect("detector starts");
    (shutdown, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_reaches_the_exporter_with_a_sequence_and_overflow_is_counted() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let fast = Recorder::default();
    let slow = Recorder {
        delay: Duration::from_millis(300),
        ..Recorder::default()
    };
    serve(&dir.path().join("fast.sock"), fast.clone(), token.clone());
    serve(&dir.path().join("slow.sock"), slow.clone(), token.clone());
    let mut slow_cfg = ExternalExporterConfig::new("slow", dir.path().join("slow.sock"));
    slow_cfg.queue_size = 2;
    let (shutdown, d) = start_exporting(
        dir.path(),
        vec![
            ExternalExporterConfig::new("fast", dir.path().join("fast.sock")),
            slow_cfg,
        ],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fast.got.lock().expect("lock").len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exporter received too little"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let got = fast.got.lock().expect("lock");
        let seqs: Vec<i64> = got.iter().map(|r| r.sequence).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "in order, none missing"
        );
        assert!(got.iter().all(|r| r.node_name == "gpu-node-17"));
        assert!(
            got.iter()
                .all(|r| r.context.get("source").map(String::as_str) == Some("flipper"))
        );
        let flips: Vec<i32> = got
            .iter()
            .filter_map(|r| r.status.as_ref()?.conditions.first().map(|c| c.status))
            .collect();
        assert!(
            flips.windows(2).all(|w| w[0] != w[1]),
            "every change, in order: {flips:?}"
        );
    }
    // The slow one could not keep up with a queue of 2: drops are counted,
    // and what it got has gaps in its sequence.
    let m = d.metrics_addr.expect("metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = common::http_get(m, "/metrics").await;
        let dropped = body
            .lines()
            .find_map(|l| {
                l.strip_prefix("npd_ext_external_exporter_dropped_total{exporter=\"slow\"}")
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if dropped > 0 && slow.got.lock().expect("lock").len() >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drop counted: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seqs: Vec<i64> = slow
        .got
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.sequence)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    shutdown.token().cancel();
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_plugin_keeps_refusing_is_given_up_and_the_rest_go_on() {
    let dir = common::tempdir();
    let token = CancellationToken::new();
    let picky = Recorder {
        refuse: Some(1),
        ..Recorder::default()
    };
    serve(&dir.path().join("picky.sock"), picky.clone(), token.clone());
    let (shutdown, d) = start_exporting(
        dir.path(),
        vec![ExternalExporterConfig::new(
            "picky",
            dir.path().join("picky.sock"),
        )],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !picky
        .got
        .lock()
        .expect("lock")
        .iter()
        .any(|r| r.sequence >= 3)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue stayed blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tries = picky
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.sequence == 1)
        .count();
    assert_eq!(tries as u32, npd_ext::exporter::external::MAX_REFUSALS);
    let (_, text) = common::http_get(d.metrics_addr.expect("metrics"), "/metrics").await;
    assert!(
        text.contains(r#"npd_ext_external_exporter_given_up_total{exporter="picky"} 1"#),
        "{text}"
    );
    shutdown.token().cancel();
    token.cancel();
}

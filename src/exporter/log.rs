//! Standalone log exporter: one line per condition change and per event.

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::conditions::Published;
use crate::problem::Severity;

/// How often the exporter's loop turns at the least (and beats).
const TURN: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(
    mut rx: broadcast::Receiver<Published>,
    pulse: crate::liveness::Pulse,
    token: CancellationToken,
) {
    let mut turn = crate::timer::Ticker::new(TURN, TURN);
    loop {
        pulse.beat(TURN * 3);
        let item = tokio::select! {
            r = rx.recv() => r,
            () = turn.tick() => continue,
            () = token.cancelled() => return,
        };
        match item {
            Ok(Published::Condition {
                condition: c,
                previous,
            }) => {
                let previous = previous.map_or_else(|| "none".to_owned(), |p| p.to_string());
                tracing::info!(
                    target: "npd_ext::exporter::log",
                    condition = %c.type_, status = %c.status, %previous, reason = %c.reason,
                    source = %c.source, "condition: {}", c.message
                );
            }
            Ok(Published::Event { source, event: e }) => match e.severity {
                Severity::Warn => tracing::warn!(
                    target: "npd_ext::exporter::log", %source, reason = %e.reason, "event: {}", e.message
                ),
                Severity::Info => tracing::info!(
                    target: "npd_ext::exporter::log", %source, reason = %e.reason, "event: {}", e.message
                ),
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "log exporter fell behind; some lines were skipped"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

//! Problem daemons: each watches one source and emits [`Report`]s on a channel
//! to the detector's fan-in. A monitor never touches another's state.

pub mod custom;
pub mod external;
pub mod syslog;

use std::time::SystemTime;

use crate::conditions::MonitorId;
use crate::config::ConditionDecl;
use crate::problem::{Condition, ConditionStatus, Status};

#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    /// What the monitor sees now.
    Status(Status),
    /// The monitor's source is alive and its last status still holds
    /// (a watched plugin that had nothing new to push).
    Alive,
    /// Condition types to claim (a plugin's `supported_conditions` when its
    /// config declared none).
    Adopt(Vec<String>),
    /// What the plugin's last status had over the limits (for the metrics;
    /// sent before that status).
    Trimmed(crate::rpc::Trimmed),
    /// The monitor's task stopped (it panicked and waits to be restarted):
    /// its conditions are no longer known. Sent by the supervisor.
    Down(String),
}

/// The reason of conditions whose monitor's task is down (see `Update::Down`).
pub const REASON_MONITOR_RESTARTING: &str = "MonitorRestarting";

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub monitor: MonitorId,
    pub update: Update,
}

/// Every declared condition as NPD starts it: `False`, with the configured
/// reason and message.
pub fn default_conditions(decls: &[ConditionDecl], now: SystemTime) -> Vec<Condition> {
    decls
        .iter()
        .map(|d| {
            let mut c = Condition::new(&d.type_, ConditionStatus::False, &d.reason, &d.message);
            c.transition = Some(now);
            c
        })
        .collect()
}

/// NPD's condition-change event text (`GenerateConditionChangeEvent`).
pub fn change_message(c: &Condition) -> String {
    format!(
        "Node condition {} is now: {}, reason: {}, message: {:?}",
        c.type_, c.status, c.reason, c.message
    )
}

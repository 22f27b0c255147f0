//! Problem daemons: each watches one source and emits [`Report`]s on a channel
//! to the detector's fan-in. A monitor never touches another's state.

pub mod custom;
pub mod external;
pub mod stats;
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
    /// The monitor cannot see (its source is unreadable, or its task
    /// stopped): its conditions are `Unknown` with this reason and message
    /// until it confirms them again.
    Down { reason: String, message: String },
}

impl Update {
    pub fn down(reason: &str, message: impl Into<String>) -> Self {
        Self::Down {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The reason of conditions whose monitor's task panicked and waits to be
/// restarted.
pub const REASON_MONITOR_RESTARTING: &str = "MonitorRestarting";
/// The reason of conditions whose monitor's task returned.
pub const REASON_MONITOR_STOPPED: &str = "MonitorStopped";
/// The reason of conditions whose log source cannot be read.
pub const REASON_SOURCE_UNREADABLE: &str = "LogSourceUnreadable";

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

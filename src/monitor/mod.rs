//! Problem daemons: each watches one source and emits [`Report`]s on a channel
//! to the detector's fan-in. A monitor never touches another's state.

pub mod custom;
pub mod external;
pub mod syslog;

use crate::conditions::MonitorId;
use crate::problem::Status;

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
}

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub monitor: MonitorId,
    pub update: Update,
}

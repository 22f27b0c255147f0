//! The GPU monitor: backends produce [`Observation`]s, the health model turns
//! them into node conditions, and the plugin serves those over gRPC.
//!
//! Owns what a GPU reading means. It must not know about the detector or
//! Kubernetes: its only output is a `Status` on the wire.

pub mod health;
pub mod plugin;
pub mod sim;
pub mod xid;

use std::fmt;
use std::time::SystemTime;

// Condition types (True = problem).
pub const GPU_LOST: &str = "GPULost";
pub const GPU_RESET_REQUIRED: &str = "GPUResetRequired";
pub const GPU_THERMAL_THROTTLING: &str = "GPUThermalThrottling";

/// Every condition type this monitor reports, in report order.
pub const SUPPORTED_CONDITIONS: [&str; 3] = [GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING];

/// Who a GPU is: everything an operator needs to find the board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    pub index: u32,
    pub uuid: String,
    pub pci_bus_id: String,
    pub serial: String,
    pub name: String,
}

impl fmt::Display for GpuIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gpu={} uuid={} pci={} serial={}",
            self.index, self.uuid, self.pci_bus_id, self.serial
        )
    }
}

/// Something a backend saw on one GPU (by index).
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// An XID error was reported for the GPU.
    Xid { gpu: u32, xid: u32, at: SystemTime },
    /// The GPU stopped answering (NVML `GPU_IS_LOST` or equivalent).
    Lost { gpu: u32, at: SystemTime },
    /// A core temperature reading, °C.
    Temperature {
        gpu: u32,
        celsius: i32,
        at: SystemTime,
    },
    /// The GPU was reset and answers again: faults that a reset clears are gone.
    Reset { gpu: u32, at: SystemTime },
}

impl Observation {
    pub fn gpu(&self) -> u32 {
        match self {
            Self::Xid { gpu, .. }
            | Self::Lost { gpu, .. }
            | Self::Temperature { gpu, .. }
            | Self::Reset { gpu, .. } => *gpu,
        }
    }
}

//! The GPU monitor: backends produce [`Observation`]s, the health model turns
//! them into node conditions, and the plugin serves those over gRPC.
//!
//! Owns what a GPU reading means. It must not know about the detector or
//! Kubernetes: its only output is a `Status` on the wire.

pub mod health;
pub mod kmsg;
pub mod nvml;
pub mod plugin;
pub mod sim;
pub mod watchdog;
pub mod xid;

use std::fmt;
use std::time::{Duration, SystemTime};

// Condition types (True = problem).
pub const GPU_DRIVER_NOT_READY: &str = "GPUDriverNotReady";
pub const GPU_UNRESPONSIVE: &str = "GPUUnresponsive";
pub const GPU_LOST: &str = "GPULost";
pub const GPU_RESET_REQUIRED: &str = "GPUResetRequired";
pub const GPU_REBOOT_REQUIRED: &str = "GPURebootRequired";
pub const GPU_MEMORY_UNHEALTHY: &str = "GPUMemoryUnhealthy";
pub const GPU_HARDWARE_FAULT: &str = "GPUHardwareFault";
pub const GPU_NVLINK_DOWN: &str = "GPUNVLinkDown";
pub const GPU_NVLINK_DEGRADED: &str = "GPUNVLinkDegraded";
pub const GPU_THERMAL_THROTTLING: &str = "GPUThermalThrottling";

/// Every condition type this monitor reports, in report order.
pub const SUPPORTED_CONDITIONS: [&str; 10] = [
    GPU_DRIVER_NOT_READY,
    GPU_UNRESPONSIVE,
    GPU_LOST,
    GPU_RESET_REQUIRED,
    GPU_REBOOT_REQUIRED,
    GPU_MEMORY_UNHEALTHY,
    GPU_HARDWARE_FAULT,
    GPU_NVLINK_DOWN,
    GPU_NVLINK_DEGRADED,
    GPU_THERMAL_THROTTLING,
];

/// The index of a GPU seen only in the kernel log, not enumerated by the
/// driver (often one that has just fallen off the bus).
pub const UNENUMERATED: u32 = u32::MAX;

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
        if self.index == UNENUMERATED {
            return write!(
                f,
                "gpu=unknown pci={} (not enumerated by the driver)",
                self.pci_bus_id
            );
        }
        write!(
            f,
            "gpu={} uuid={} pci={} serial={}",
            self.index, self.uuid, self.pci_bus_id, self.serial
        )
    }
}

/// Something a backend saw: about the driver, or about one GPU (by index).
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The driver (NVML) cannot be reached; `reason` says why.
    DriverNotReady { reason: String, at: SystemTime },
    /// The driver answers and sees these GPUs.
    DriverReady {
        gpus: Vec<GpuIdentity>,
        version: String,
        at: SystemTime,
    },
    /// A driver call did not return within `waited`.
    Unresponsive {
        call: String,
        gpu: Option<u32>,
        waited: Duration,
        at: SystemTime,
    },
    /// Driver calls return in time again.
    Responsive { at: SystemTime },
    /// The GPU's own slowdown temperature, °C.
    SlowdownThreshold { gpu: u32, celsius: i32 },
    /// An XID error was reported for the GPU.
    Xid { gpu: u32, xid: u32, at: SystemTime },
    /// An XID from the kernel log, named by PCI address (the GPU may not be
    /// enumerated at all); `detail` is the driver's text after the number.
    KernelXid {
        pci: kmsg::PciAddr,
        xid: u32,
        detail: String,
        at: SystemTime,
        /// Read again after a restart: rebuilds state, sends no event.
        replay: bool,
    },
    /// The driver's recovery action for the GPU (NVML field 230).
    RecoveryAction {
        gpu: u32,
        action: u32,
        at: SystemTime,
    },
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
    /// The GPU this is about, or `None` for the driver as a whole.
    pub fn gpu(&self) -> Option<u32> {
        match self {
            Self::Xid { gpu, .. }
            | Self::Lost { gpu, .. }
            | Self::Temperature { gpu, .. }
            | Self::Reset { gpu, .. }
            | Self::RecoveryAction { gpu, .. }
            | Self::SlowdownThreshold { gpu, .. } => Some(*gpu),
            Self::KernelXid { .. }
            | Self::DriverNotReady { .. }
            | Self::DriverReady { .. }
            | Self::Unresponsive { .. }
            | Self::Responsive { .. } => None,
        }
    }
}

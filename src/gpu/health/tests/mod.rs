//! Tests of the health model, one file per fault family; the helpers they
//! share, and the names they all use, are here.

use std::time::{Duration, SystemTime};

use super::*;
use crate::gpu::kmsg::PciAddr;
use crate::gpu::sim;
use crate::gpu::{
    GPU_DRIVER_NOT_READY, GPU_FABRIC_NOT_READY, GPU_HARDWARE_FAULT, GPU_LOST, GPU_MEMORY_UNHEALTHY,
    GPU_MISSING, GPU_NVLINK_DEGRADED, GPU_NVLINK_DOWN, GPU_PCIE_LINK_DEGRADED, GPU_REBOOT_REQUIRED,
    GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING, GPU_UNRESPONSIVE, GpuCounts, GpuIdentity,
    Observation,
};
use crate::problem::{Condition, ConditionStatus, Severity};

mod driver;
mod events;
mod gpu_table;
mod links;
mod memory;
mod policy;
mod repeats;
mod thermal;
mod xid;

fn model() -> HealthModel {
    HealthModel::new(sim::identities(8))
}

fn status_of<'a>(conds: &'a [Condition], t: &str) -> &'a Condition {
    conds
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition present")
}

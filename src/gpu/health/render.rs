//! The node conditions: one per supported type, naming each affected GPU
//! with its evidence and the action to take (Unknown where the monitor cannot
//! see, never a guess), the healthy wording of each slot, and the text
//! helpers the messages share.

use super::driver::{Driver, Stuck};
use super::state::{Fault, GpuState, Slot};
use super::{
    HealthModel, REASON_DRIVER_NOT_READY, REASON_DRIVER_READY, REASON_RESPONSIVE,
    REASON_UNRESPONSIVE,
};
use crate::gpu::xid::XidInfo;
use crate::gpu::{GPU_DRIVER_NOT_READY, GPU_MISSING, GPU_THERMAL_THROTTLING, GPU_UNRESPONSIVE};
use crate::problem::{Condition, ConditionStatus};

impl Slot {
    pub(super) fn healthy(self, n: usize) -> (&'static str, String) {
        match self {
            Self::Lost => (
                "NoGPULost",
                if n == 1 {
                    "the GPU answers".to_owned()
                } else {
                    format!("all {n} GPUs answer")
                },
            ),
            Self::Reset => ("NoGPUResetRequired", "no GPU needs a reset".into()),
            Self::Reboot => ("NoRebootRequired", "no GPU needs a node reboot".into()),
            Self::Memory => ("GPUMemoryHealthy", "no GPU memory fault recorded".into()),
            Self::Hardware => (
                "NoGPUHardwareFault",
                "no GPU hardware fault recorded".into(),
            ),
            Self::NvlinkDown => ("NVLinkUp", "no NVLink reported down".into()),
            Self::NvlinkDegraded => ("NVLinkHealthy", "no NVLink errors reported".into()),
            Self::Fabric => (
                "FabricReady",
                "NVLink fabric registered, or no fabric on this node".into(),
            ),
            Self::Pcie => (
                "PCIeLinkAtMaxWidth",
                "every PCIe link runs at its full width".into(),
            ),
        }
    }
}

impl HealthModel {
    /// Node-level conditions, one per supported type, naming each affected
    /// GPU. What the monitor cannot see is `Unknown`, never a guess.
    pub fn conditions(&self) -> Vec<Condition> {
        let n = self.enumerated();
        let driver = match &self.driver {
            Driver::Ready { version } => {
                let who = if version.is_empty() {
                    "driver ready".to_owned()
                } else {
                    format!("NVIDIA driver {version} ready")
                };
                Condition::new(
                    GPU_DRIVER_NOT_READY,
                    ConditionStatus::False,
                    REASON_DRIVER_READY,
                    format!("{who}; {}", gpus_visible(n)),
                )
            }
            Driver::NotReady { reason } => Condition::new(
                GPU_DRIVER_NOT_READY,
                ConditionStatus::True,
                REASON_DRIVER_NOT_READY,
                format!(
                    "{reason}; action: check that the NVIDIA driver is loaded (nvidia-smi) and the NVML library path"
                ),
            ),
        };
        let unresponsive = match &self.unresponsive {
            None => Condition::new(
                GPU_UNRESPONSIVE,
                ConditionStatus::False,
                REASON_RESPONSIVE,
                "NVML calls return in time",
            ),
            Some(stuck) => Condition::new(
                GPU_UNRESPONSIVE,
                ConditionStatus::True,
                REASON_UNRESPONSIVE,
                self.describe_stuck(stuck),
            ),
        };
        let mut out = vec![driver, unresponsive];
        if let Driver::NotReady { .. } = &self.driver {
            let types = Slot::ALL.map(Slot::condition_type);
            out.extend(
                [GPU_MISSING]
                    .iter()
                    .chain(&types)
                    .chain(&[GPU_THERMAL_THROTTLING])
                    .map(|t| {
                        Condition::new(
                            *t,
                            ConditionStatus::Unknown,
                            REASON_DRIVER_NOT_READY,
                            "cannot see the GPUs: the NVIDIA driver is not ready (see GPUDriverNotReady)",
                        )
                    }),
            );
            return out;
        }
        out.push(match &self.missing {
            None => Condition::new(
                GPU_MISSING,
                ConditionStatus::False,
                "AllGPUsPresent",
                format!("{} present", gpus_visible(n).replace(" visible", "")),
            ),
            Some(m) => Condition::new(
                GPU_MISSING,
                ConditionStatus::True,
                "GPUCountMismatch",
                format!(
                    "{m}; action: check nvidia-smi and the kernel log, reboot, then replace the GPU"
                ),
            ),
        });
        out.extend(Slot::ALL.map(|slot| self.slot_condition(slot, n)));
        let mut thermal = self.thermal_condition();
        // Readings stopped: a throttling GPU stays reported, a cool one is no
        // longer known to be cool.
        if self.unresponsive.is_some() && thermal.status != ConditionStatus::True {
            thermal = Condition::new(
                GPU_THERMAL_THROTTLING,
                ConditionStatus::Unknown,
                REASON_UNRESPONSIVE,
                "temperature readings stopped: NVML does not answer",
            );
        }
        out.push(thermal);
        out
    }

    fn slot_condition(&self, slot: Slot, n: usize) -> Condition {
        let hit: Vec<(&GpuState, &Fault)> = self
            .gpus
            .iter()
            .filter_map(|g| g.faults.get(&slot).map(|f| (g, f)))
            .collect();
        let mut parts: Vec<String> = hit
            .iter()
            .map(|(g, f)| format!("{}: {}; action: {}", g.id, f.evidence, f.action))
            .collect();
        if slot == Slot::Fabric {
            // A fatal NVSwitch error takes the fabric down for every GPU on it.
            parts.extend(self.switch_faults.iter().map(|(pci, what)| {
                format!("nvswitch pci={pci}: {what}; action: drain the node, restart the Fabric Manager, reset the switch and GPUs")
            }));
        }
        let reason = match hit.first() {
            Some((_, f)) => f.reason.clone(),
            None if !parts.is_empty() => "SXidFatal".to_owned(),
            None => String::new(),
        };
        match parts.is_empty() {
            false => Condition::new(
                slot.condition_type(),
                ConditionStatus::True,
                reason,
                join(parts.into_iter()),
            ),
            true => {
                let (reason, message) = slot.healthy(n);
                Condition::new(
                    slot.condition_type(),
                    ConditionStatus::False,
                    reason,
                    message,
                )
            }
        }
    }

    pub(super) fn describe_stuck(&self, stuck: &Stuck) -> String {
        let Some(waited) = stuck.waited else {
            return format!(
                "no readings: {}; action: none while it restarts by itself; if this stays, read the gpu-monitor log",
                stuck.call
            );
        };
        let on = stuck
            .gpu
            .and_then(|i| self.gpus.iter().find(|g| g.enumerated && g.id.index == i))
            .map_or_else(|| "the driver".to_owned(), |g| g.id.to_string());
        format!(
            "{on}: {} did not return within {waited:?}; its thread stays stuck in the driver (since {}) and no new NVML session starts until the call returns; action: check the driver (nvidia-smi may hang too), then reset the GPU or reboot",
            stuck.call,
            crate::problem::format_time(stuck.since)
        )
    }
}

/// "XID 48 ROBUST_CHANNEL_GPU_ECC_DBE (catalog: WORKFLOW_XID_48)"
pub(super) fn evidence(info: &XidInfo) -> String {
    format!("{} (catalog: {})", info.title(), info.immediate)
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(super) fn gpus_visible(n: usize) -> String {
    if n == 1 {
        "1 GPU visible".into()
    } else {
        format!("{n} GPUs visible")
    }
}

pub(super) fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("; ")
}

//! Links: the PCIe link (width below its maximum, a slow generation while
//! busy, a sustained replay rate), NVLinks (active when first seen and now
//! inactive, error counters that keep growing), and NVLink fabric
//! registration (GPUFabricNotReady).

use std::time::SystemTime;

use super::state::{Slot, fault};
use super::{FABRIC_GRACE_READINGS, HealthModel, PCIE_REPLAY_BUDGET, SUSTAINED_READINGS};
use crate::gpu::xid::Classes;
use crate::problem::Severity;

impl HealthModel {
    /// PCIe link width, current and maximum.
    pub(super) fn pcie_width(&mut self, gpu: u32, width: u32, max_width: u32, now: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            let bad = (width > 0 && width < max_width).then(|| {
                fault(
                    "PCIeLinkWidthReduced",
                    &format!("PCIe link runs at x{width} of x{max_width}"),
                    "reseat or inspect the GPU and its riser; check the slot",
                )
            });
            self.gpus[pos].reading(Slot::Pcie, "pcie-width", bad, now);
        }
    }

    /// PCIe link generation, current and maximum.
    pub(super) fn pcie_gen(
        &mut self,
        gpu: u32,
        generation: u32,
        max_generation: u32,
        now: SystemTime,
    ) {
        if let Some(pos) = self.position(gpu) {
            let g = &mut self.gpus[pos];
            // An idle GPU lowers its link speed to save power: only a
            // busy GPU on a slow link is degraded.
            let low = generation > 0 && generation < max_generation && g.last_idle == Some(false);
            g.gen_low_streak = if low {
                g.gen_low_streak.saturating_add(1)
            } else {
                0
            };
            let bad = (g.gen_low_streak >= SUSTAINED_READINGS).then(|| {
                fault(
                    "PCIeLinkGenReduced",
                    &format!(
                        "PCIe link at gen {generation} of {max_generation} while the GPU is busy"
                    ),
                    "reseat or inspect the GPU and its riser; check the slot",
                )
            });
            g.reading(Slot::Pcie, "pcie-gen", bad, now);
        }
    }

    /// PCIe replay counter (cumulative).
    pub(super) fn pcie_replays(&mut self, gpu: u32, count: u64, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            let g = &mut self.gpus[pos];
            let (delta, streak) = g.counter("pcie-replay", count, PCIE_REPLAY_BUDGET);
            let bad = (streak >= SUSTAINED_READINGS).then(|| {
                fault(
                    "PCIeReplayRateHigh",
                    &format!("PCIe replays above {PCIE_REPLAY_BUDGET} per reading for {SUSTAINED_READINGS} readings"),
                    "reseat or inspect the GPU and its riser; check the slot",
                )
            });
            g.reading(Slot::Pcie, "pcie-replay", bad, at);
            if delta > PCIE_REPLAY_BUDGET {
                let message = format!("{}: {delta} PCIe replays since the last reading", g.id);
                let key = g.id.pci_bus_id.clone();
                self.emit(Severity::Warn, at, "PCIeReplayRateHigh", &key, message);
            }
        }
    }

    /// NVLinks reported active and inactive: one active when first seen and
    /// inactive now is down.
    pub(super) fn nvlinks(&mut self, gpu: u32, active: &[u32], inactive: &[u32], now: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            let g = &mut self.gpus[pos];
            let baseline = g.nvlink_baseline.get_or_insert_with(|| active.to_vec());
            let down: Vec<String> = baseline
                .iter()
                .filter(|l| inactive.contains(l))
                .map(ToString::to_string)
                .collect();
            let bad = (!down.is_empty()).then(|| {
                fault(
                    "NVLinkInactive",
                    &format!(
                        "NVLink {} inactive (active when first seen)",
                        down.join(", ")
                    ),
                    Classes::NVLINK_DOWN.action(),
                )
            });
            g.reading(Slot::NvlinkDown, "nvlink", bad, now);
        }
    }

    /// NVLink replay, recovery and CRC error counters summed over active
    /// links (cumulative).
    pub(super) fn nvlink_errors(&mut self, gpu: u32, count: u64, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            let g = &mut self.gpus[pos];
            let (delta, streak) = g.counter("nvlink-errors", count, 0);
            let bad = (streak >= SUSTAINED_READINGS).then(|| {
                fault(
                    "NVLinkErrorsIncreasing",
                    &format!("NVLink replay/recovery/CRC errors grew for {SUSTAINED_READINGS} readings in a row"),
                    Classes::NVLINK_DEGRADED.action(),
                )
            });
            g.reading(Slot::NvlinkDegraded, "nvlink-errors", bad, at);
            if delta > 0 {
                let message = format!(
                    "{}: {delta} new NVLink errors (replay, recovery, CRC)",
                    g.id
                );
                let key = g.id.pci_bus_id.clone();
                self.emit(Severity::Warn, at, "NVLinkErrorsIncreased", &key, message);
            }
        }
    }

    /// GPUFabricNotReady: registration failed, or still not complete after
    /// [`FABRIC_GRACE_READINGS`] readings (a fresh boot registers within a few).
    pub(super) fn fabric(&mut self, gpu: u32, state: u32, status: u32, now: SystemTime) {
        const NOT_SUPPORTED: u32 = 0;
        const COMPLETED: u32 = 3;
        let Some(pos) = self.position(gpu) else {
            return;
        };
        let g = &mut self.gpus[pos];
        let action = "restart the NVIDIA Fabric Manager (or IMEX), then reset the GPU";
        let bad = match state {
            NOT_SUPPORTED => None,
            COMPLETED => {
                g.fabric_pending = 0;
                (status != 0).then(|| {
                    fault(
                        "FabricRegistrationFailed",
                        &format!("NVLink fabric registration failed (NVML status {status})"),
                        action,
                    )
                })
            }
            _ => {
                g.fabric_pending = g.fabric_pending.saturating_add(1);
                let phase = if state == 1 {
                    "not started"
                } else {
                    "in progress"
                };
                (g.fabric_pending >= FABRIC_GRACE_READINGS).then(|| {
                    fault(
                        "FabricNotRegistered",
                        &format!(
                            "NVLink fabric registration {phase} after {} readings",
                            g.fabric_pending
                        ),
                        action,
                    )
                })
            }
        };
        g.reading(Slot::Fabric, "fabric", bad, now);
    }
}

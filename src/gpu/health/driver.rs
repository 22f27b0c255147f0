//! The driver and the backend that reads it: driver readiness and the GPU
//! inventory it reports, hung calls and a backend that went down
//! (GPUUnresponsive), data sources that degraded, the GPU count
//! (GPUMissing), and evidence that a GPU was reset.

use std::time::{Duration, SystemTime};

use super::render::gpus_visible;
use super::state::{GpuState, Slot};
use super::{
    HealthModel, REASON_DRIVER_NOT_READY, REASON_DRIVER_READY, REASON_RECOVERED, REASON_RESPONSIVE,
};
use crate::gpu::kmsg::PciAddr;
use crate::gpu::{GPU_MISSING, GPU_UNRESPONSIVE, GpuCounts, GpuIdentity, UNENUMERATED};
use crate::problem::Severity;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Driver {
    Ready { version: String },
    NotReady { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stuck {
    pub(super) call: String,
    pub(super) gpu: Option<u32>,
    /// How long the call waited; `None`: the backend itself is down, and
    /// `call` says why.
    pub(super) waited: Option<Duration>,
    /// When readings stopped (kept while they stay stopped).
    pub(super) since: SystemTime,
}

impl HealthModel {
    pub(super) fn driver_not_ready(&mut self, reason: &str, at: SystemTime) {
        let was_ready = matches!(self.driver, Driver::Ready { .. });
        self.driver = Driver::NotReady {
            reason: reason.to_owned(),
        };
        if was_ready {
            self.emit(
                Severity::Warn,
                at,
                REASON_DRIVER_NOT_READY,
                "",
                reason.to_owned(),
            );
        }
    }

    /// The driver's inventory replaces ours; GPUs that stay (same UUID) keep
    /// their state, and one it had lost that answers again was reset. GPUs
    /// it no longer lists (lost) stay, with their faults, until it names
    /// them again; faults the kernel log gave an address the driver now
    /// names go to that GPU.
    pub(super) fn driver_ready(&mut self, gpus: &[GpuIdentity], version: &str, at: SystemTime) {
        let was_ready = matches!(self.driver, Driver::Ready { .. });
        let mut old = std::mem::take(&mut self.gpus);
        let mut back = Vec::new();
        self.gpus = gpus
            .iter()
            .enumerate()
            .map(
                |(pos, id)| match old.iter().position(|g| g.id.uuid == id.uuid) {
                    Some(i) => {
                        let mut g = old.swap_remove(i);
                        g.id = id.clone();
                        if !std::mem::replace(&mut g.enumerated, true) {
                            back.push(pos);
                        }
                        g
                    }
                    None => GpuState::new(id.clone()),
                },
            )
            .collect();
        let named: Vec<Option<PciAddr>> = self
            .gpus
            .iter()
            .map(|g| PciAddr::parse(&g.id.pci_bus_id))
            .collect();
        for mut g in old {
            let addr = PciAddr::parse(&g.id.pci_bus_id);
            match named.iter().position(|n| addr.is_some() && *n == addr) {
                // Known only from the kernel log: its faults are the GPU's.
                Some(pos) if g.id.index == UNENUMERATED => {
                    let to = &mut self.gpus[pos].faults;
                    for (slot, fault) in std::mem::take(&mut g.faults) {
                        to.entry(slot).or_insert(fault);
                    }
                }
                // Another board at a lost one's address: the lost one is gone.
                Some(_) => {}
                None => {
                    if g.enumerated {
                        tracing::warn!(gpu = %g.id, "the driver no longer lists this GPU; its state is kept");
                        g.enumerated = false;
                    }
                    self.gpus.push(g);
                }
            }
        }
        // A GPU the driver lost and lists again was reset (or re-probed).
        for pos in back {
            self.reset(pos, at, true);
        }
        self.driver = Driver::Ready {
            version: version.to_owned(),
        };
        if !was_ready {
            let message = format!(
                "NVIDIA driver {version} answers; {}",
                gpus_visible(gpus.len())
            );
            self.emit(Severity::Info, at, REASON_DRIVER_READY, "", message);
        }
    }

    /// A driver call did not return within `waited`.
    pub(super) fn unresponsive(
        &mut self,
        call: &str,
        gpu: Option<u32>,
        waited: Duration,
        at: SystemTime,
    ) {
        let stuck = Stuck {
            call: call.to_owned(),
            gpu,
            waited: Some(waited),
            since: at,
        };
        self.stuck(stuck, at);
    }

    /// The backend itself stopped: `reason` says why.
    pub(super) fn backend_down(&mut self, reason: &str, at: SystemTime) {
        let stuck = Stuck {
            call: reason.to_owned(),
            gpu: None,
            waited: None,
            since: at,
        };
        self.stuck(stuck, at);
    }

    /// Readings stopped: said once, as a warning, until `Responsive`.
    fn stuck(&mut self, mut stuck: Stuck, at: SystemTime) {
        match &self.unresponsive {
            None => {
                let message = self.describe_stuck(&stuck);
                self.emit(Severity::Warn, at, GPU_UNRESPONSIVE, "", message);
            }
            Some(before) => stuck.since = before.since,
        }
        self.unresponsive = Some(stuck);
    }

    /// Driver calls return in time again.
    pub(super) fn responsive(&mut self, at: SystemTime) {
        if self.unresponsive.take().is_some() {
            let message = "NVML calls return in time again".to_owned();
            self.emit(Severity::Info, at, REASON_RESPONSIVE, "", message);
        }
    }

    /// A data source stopped working: what it would have seen is missed.
    pub(super) fn source_degraded(&mut self, source: &str, reason: &str, at: SystemTime) {
        let message = format!("{source}: {reason}");
        self.emit(Severity::Warn, at, "GPUMonitorDegraded", source, message);
    }

    /// GPUMissing: NVML sees fewer GPUs than the most any source says exist.
    pub(super) fn gpu_count(&mut self, c: GpuCounts, at: SystemTime) {
        let Some(nvml) = c.nvml else { return };
        self.seen_max = self.seen_max.max(nvml);
        let expected = [c.expected, c.sysfs, c.dev_nodes, Some(self.seen_max)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(nvml);
        let was = self.missing.is_some();
        self.missing = (nvml < expected).then(|| {
            let show = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            format!(
                "NVML enumerates {nvml} of {expected} GPUs (PCI sysfs {}, /dev/nvidiaN {}, configured {}, most seen {})",
                show(c.sysfs),
                show(c.dev_nodes),
                show(c.expected),
                self.seen_max
            )
        });
        if !was && let Some(m) = self.missing.clone() {
            self.emit(Severity::Warn, at, GPU_MISSING, "", m);
        }
    }

    /// The GPU was reset and answers again.
    pub(super) fn gpu_reset(&mut self, gpu: u32, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            self.reset(pos, at, true);
        }
    }

    /// Evidence that the GPU was reset and answers.
    /// `announce` is false for evidence replayed after a restart, which
    /// only rebuilds state.
    pub(super) fn reset(&mut self, pos: usize, at: SystemTime, announce: bool) {
        let g = &mut self.gpus[pos];
        let before = g.faults.len();
        let clearable: Vec<Slot> = g
            .faults
            .keys()
            .copied()
            .filter(|slot| slot.cleared_by_reset())
            .collect();
        for slot in clearable {
            g.clear(slot, at);
        }
        g.recovery = 0;
        if announce && g.faults.len() != before {
            let message = format!(
                "{}: GPU reset and answering; reset-class faults cleared",
                g.id
            );
            self.emit(Severity::Info, at, REASON_RECOVERED, "", message);
        }
    }
}

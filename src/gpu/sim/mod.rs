//! The simulated backend: a node of N GPUs with realistic identities, driven
//! by a fault scenario (`{"steps": [{"at": "2s", "gpu": 3, "fault": {"xid": 79}}]}`).
//! Tests and the demo use it; production never falls back to it.
//!
//! - `scenario.rs`: the faults, the steps and their parsing;
//! - here: the identities, the simulated driver, and the backend task.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::watchdog::{CallError, Worker};
use super::{GpuCounts, GpuIdentity, Observation};
use crate::liveness::Pulse;

/// Temperature of an idle H200 (fixture), reported at start and after a reset.
pub const IDLE_CELSIUS: i32 = 40;

/// PCI bus numbers of the eight GPUs in an HGX H100/H200 baseboard.
const HGX_BUSES: [u32; 8] = [0x1B, 0x43, 0x52, 0x61, 0x9D, 0xC3, 0xD1, 0xDF];

/// Identities of `n` simulated H200s: stable across runs, distinct per GPU.
pub fn identities(n: u32) -> Vec<GpuIdentity> {
    (0..n)
        .map(|i| {
            let h = splitmix(u64::from(i) + 0x5EED);
            let h2 = splitmix(h);
            let bus = HGX_BUSES.get(i as usize).copied().unwrap_or(0xE0 + i);
            GpuIdentity {
                index: i,
                uuid: format!(
                    "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    h >> 32,
                    (h >> 16) & 0xFFFF,
                    h & 0xFFFF,
                    h2 >> 48,
                    h2 & 0xFFFF_FFFF_FFFF
                ),
                pci_bus_id: format!("00000000:{bus:02X}:00.0"),
                serial: format!("{}", 1_653_724_065_550u64 + u64::from(i) * 7_919),
                name: "NVIDIA H200".into(),
            }
        })
        .collect()
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

mod scenario;

pub use scenario::{BUILTINS, Fault, Scenario, ScenarioError, Step, observation};

// ---------------------------------------------------------------------------
// The simulated driver
// ---------------------------------------------------------------------------

/// NVLinks per simulated GPU (an HGX H100/H200 board has 18).
pub const SIM_NVLINKS: u32 = 18;
const SIM_PCIE_WIDTH: u32 = 16;

#[derive(Clone, Debug)]
struct SimGpu {
    temperature: i32,
    recovery: u32,
    remap_pending: bool,
    remap_failure: bool,
    ecc: u64,
    pcie_width: u32,
    nvlinks_down: Vec<u32>,
    slowdown: bool,
    present: bool,
    fabric_ready: bool,
    inforom_valid: bool,
    /// Cumulative counters, and how much each poll adds to them.
    pcie_replays: u64,
    pcie_replays_per_poll: u64,
    nvlink_errors: u64,
    nvlink_errors_per_poll: u64,
    corrected_ecc: u64,
    corrected_ecc_per_poll: u64,
}

impl Default for SimGpu {
    fn default() -> Self {
        Self {
            temperature: IDLE_CELSIUS,
            recovery: 0,
            remap_pending: false,
            remap_failure: false,
            ecc: 0,
            pcie_width: SIM_PCIE_WIDTH,
            nvlinks_down: Vec::new(),
            slowdown: false,
            present: true,
            fabric_ready: true,
            inforom_valid: true,
            pcie_replays: 0,
            pcie_replays_per_poll: 0,
            nvlink_errors: 0,
            nvlink_errors_per_poll: 0,
            corrected_ecc: 0,
            corrected_ecc_per_poll: 0,
        }
    }
}

#[derive(Debug)]
struct SimDriver {
    gpus: Vec<SimGpu>,
    /// The GPU whose call hangs, while the driver is wedged.
    hung: Option<u32>,
}

type Driver = Arc<Mutex<SimDriver>>;

fn lock(d: &Driver) -> std::sync::MutexGuard<'_, SimDriver> {
    d.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimDriver {
    fn apply(&mut self, gpu: u32, fault: &Fault) {
        let Some(g) = self.gpus.get_mut(gpu as usize) else {
            return;
        };
        match *fault {
            Fault::Temperature(c) => g.temperature = c,
            Fault::Hang => self.hung = Some(gpu),
            Fault::RecoveryAction(a) => g.recovery = a,
            Fault::RowRemapPending => g.remap_pending = true,
            Fault::RowRemapFailure => g.remap_failure = true,
            Fault::EccErrors(n) => g.ecc = n,
            Fault::PcieWidth(w) => g.pcie_width = w,
            Fault::NvlinkDown(l) => g.nvlinks_down.push(l),
            Fault::Slowdown(on) => g.slowdown = on,
            Fault::Missing => g.present = false,
            Fault::PcieReplays(n) => g.pcie_replays_per_poll = n,
            Fault::NvlinkErrors(n) => g.nvlink_errors_per_poll = n,
            Fault::CorrectedEcc(n) => g.corrected_ecc_per_poll = n,
            Fault::FabricNotReady => g.fabric_ready = false,
            Fault::InfoRomCorrupt => g.inforom_valid = false,
            Fault::Clear => {
                // A reset does not repair the board.
                let (failure, inforom) = (g.remap_failure, g.inforom_valid);
                *g = SimGpu {
                    remap_failure: failure,
                    inforom_valid: inforom,
                    ..SimGpu::default()
                };
                if self.hung == Some(gpu) {
                    self.hung = None;
                }
            }
            Fault::Xid(_) | Fault::XidStorm { .. } | Fault::Lost => {}
        }
    }

    /// Error counters grow by their per-poll rate (a poll is a reading interval).
    fn advance_counters(&mut self) {
        for g in &mut self.gpus {
            g.pcie_replays += g.pcie_replays_per_poll;
            g.nvlink_errors += g.nvlink_errors_per_poll;
            g.corrected_ecc += g.corrected_ecc_per_poll;
        }
    }

    /// What a full sweep reads, as the NVML backend would report it.
    fn readings(&self, at: SystemTime) -> Vec<Observation> {
        let mut out = Vec::new();
        for (i, g) in self.gpus.iter().enumerate() {
            let gpu = i as u32;
            if !g.present {
                continue;
            }
            out.extend([
                Observation::Temperature {
                    gpu,
                    celsius: g.temperature,
                    at,
                },
                Observation::ClockEvents {
                    gpu,
                    slowdown: g.slowdown,
                    idle: !g.slowdown,
                    at,
                },
                Observation::RecoveryAction {
                    gpu,
                    action: g.recovery,
                    at,
                },
                Observation::RemappedRows {
                    gpu,
                    pending: g.remap_pending,
                    failure: g.remap_failure,
                    uncorrectable: 0,
                    at,
                },
                Observation::VolatileUncorrectableEcc {
                    gpu,
                    count: g.ecc,
                    at,
                },
                Observation::CorrectedEcc {
                    gpu,
                    count: g.corrected_ecc,
                    at,
                },
                Observation::PcieLink {
                    gpu,
                    width: g.pcie_width,
                    max_width: SIM_PCIE_WIDTH,
                    at,
                },
                Observation::NvLinks {
                    gpu,
                    active: (0..SIM_NVLINKS)
                        .filter(|l| !g.nvlinks_down.contains(l))
                        .collect(),
                    inactive: g.nvlinks_down.clone(),
                    at,
                },
                Observation::Fabric {
                    gpu,
                    state: if g.fabric_ready { 3 } else { 2 },
                    status: 0,
                    at,
                },
                Observation::InfoRom {
                    gpu,
                    valid: g.inforom_valid,
                    at,
                },
                Observation::PcieGen {
                    gpu,
                    generation: 5,
                    max_generation: 5,
                    at,
                },
                Observation::PcieReplays {
                    gpu,
                    count: g.pcie_replays,
                    at,
                },
                Observation::NvlinkErrors {
                    gpu,
                    count: g.nvlink_errors,
                    at,
                },
            ]);
        }
        let n = u32::try_from(self.gpus.len()).unwrap_or(u32::MAX);
        let present =
            u32::try_from(self.gpus.iter().filter(|g| g.present).count()).unwrap_or(u32::MAX);
        out.push(Observation::GpuCount {
            counts: GpuCounts {
                nvml: Some(present),
                sysfs: Some(n),
                dev_nodes: Some(n),
                expected: None,
            },
            at,
        });
        out
    }
}

/// How the simulated driver is polled (the same knobs as NVML's).
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    pub poll_interval: Duration,
    pub call_timeout: Duration,
}

/// A simulated node: faults go in through [`Sim::inject`] (or a scenario),
/// readings come out as observations, polled like NVML through the same
/// watchdog, so a `"hang"` fault is a call that does not return.
#[derive(Clone, Debug)]
pub struct Sim {
    driver: Driver,
    tx: mpsc::Sender<Observation>,
    /// Beaten every poll, also while the simulated driver hangs.
    pulse: Option<Arc<Pulse>>,
}

impl Sim {
    pub fn new(gpus: u32, tx: mpsc::Sender<Observation>) -> Self {
        Self {
            driver: Arc::new(Mutex::new(SimDriver {
                gpus: vec![SimGpu::default(); gpus as usize],
                hung: None,
            })),
            tx,
            pulse: None,
        }
    }

    /// Beats `pulse` every poll (the plugin's gRPC health watches it).
    #[must_use]
    pub fn beating(mut self, pulse: Pulse) -> Self {
        self.pulse = Some(Arc::new(pulse));
        self
    }

    /// Applies a fault now; its effects show at once (a hang shows through
    /// the watchdog, as it would).
    pub async fn inject(&self, gpu: u32, fault: &Fault) {
        let now = SystemTime::now();
        let readings = {
            let mut d = lock(&self.driver);
            d.apply(gpu, fault);
            if d.hung.is_none() {
                d.readings(now)
            } else {
                Vec::new()
            }
        };
        for obs in observation(gpu, fault, now).into_iter().chain(readings) {
            if self.tx.send(obs).await.is_err() {
                return;
            }
        }
    }

    /// What a sweep of the simulated driver reads now.
    pub fn readings(&self) -> Vec<Observation> {
        lock(&self.driver).readings(SystemTime::now())
    }

    /// Sends the first readings, then polls and plays `scenario` until `token` is cancelled.
    pub async fn run(self, scenario: Scenario, options: SimOptions, token: CancellationToken) {
        let readings = lock(&self.driver).readings(SystemTime::now());
        for obs in readings {
            if self.tx.send(obs).await.is_err() {
                return;
            }
        }
        tokio::join!(
            self.play(scenario, token.clone()),
            poll(
                Arc::clone(&self.driver),
                options,
                self.tx.clone(),
                token,
                self.pulse.clone(),
            ),
        );
    }

    async fn play(&self, scenario: Scenario, token: CancellationToken) {
        let start = tokio::time::Instant::now();
        for step in scenario.steps {
            tokio::select! {
                () = tokio::time::sleep_until(start + step.at) => {}
                () = token.cancelled() => return,
            }
            tracing::info!(gpu = step.gpu, fault = %step.fault, at = ?step.at, "sim: injecting");
            self.inject(step.gpu, &step.fault).await;
        }
        tracing::info!(scenario = %scenario.name, "sim: scenario finished");
    }
}

/// Plays `scenario` on a new simulated node of `gpus` GPUs, beating `pulse`.
pub async fn run(
    scenario: Scenario,
    gpus: u32,
    options: SimOptions,
    tx: mpsc::Sender<Observation>,
    token: CancellationToken,
    pulse: Option<Pulse>,
) {
    let mut sim = Sim::new(gpus, tx);
    if let Some(p) = pulse {
        sim = sim.beating(p);
    }
    sim.run(scenario, options, token).await;
}

async fn poll(
    driver: Driver,
    options: SimOptions,
    tx: mpsc::Sender<Observation>,
    token: CancellationToken,
    pulse: Option<Arc<Pulse>>,
) {
    let Ok(worker) = Worker::spawn("sim-driver", Arc::clone(&driver)) else {
        return;
    };
    let beat = options.poll_interval + options.call_timeout * 2 + Duration::from_secs(10);
    let beat = || {
        if let Some(p) = &pulse {
            p.beat(beat);
        }
    };
    let mut tick = tokio::time::interval(options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat();
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return,
        }
        let result = worker
            .call(options.call_timeout, |d| {
                // The wedged call: it returns only once the GPU is reset.
                while lock(d).hung.is_some() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut driver = lock(d);
                driver.advance_counters();
                driver.readings(SystemTime::now())
            })
            .await;
        let obs = match result {
            Ok(readings) => std::iter::once(Observation::Responsive {
                at: SystemTime::now(),
            })
            .chain(readings)
            .collect(),
            Err(CallError::Hung(waited) | CallError::Stuck(waited)) => {
                let gpu = lock(&driver).hung;
                let stuck = Observation::Unresponsive {
                    call: "nvmlDeviceGetTemperature (simulated)".into(),
                    gpu,
                    waited,
                    at: SystemTime::now(),
                };
                if tx.send(stuck).await.is_err() {
                    return;
                }
                // As with NVML: no new thread while the stuck call runs.
                if !worker.wait_returned(&mut tick, &token, beat).await {
                    return;
                }
                Vec::new()
            }
            Err(CallError::Gone) => return,
        };
        for o in obs {
            if tx.send(o).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_distinct_and_realistic() {
        let ids = identities(8);
        assert_eq!(ids[3].pci_bus_id, "00000000:61:00.0");
        assert!(
            ids[0].uuid.starts_with("GPU-") && ids[0].uuid.len() == 40,
            "{}",
            ids[0].uuid
        );
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a.uuid, b.uuid);
                assert_ne!(a.serial, b.serial);
                assert_ne!(a.pci_bus_id, b.pci_bus_id);
            }
        }
        assert_eq!(identities(8), ids, "stable across calls");
    }
}

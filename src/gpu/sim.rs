//! The simulated backend: a node of N GPUs with realistic identities, driven
//! by a fault scenario (`{"steps": [{"at": "2s", "gpu": 3, "fault": {"xid": 79}}]}`).
//! Tests and the demo use it; production never falls back to it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::sync::{Arc, Mutex, PoisonError};

use super::watchdog::{CallError, Worker};
use super::{GpuCounts, GpuIdentity, Observation};
use crate::config::json::{self, Value};
use crate::config::walk::{self, Obj, Sink};
use crate::config::{Diagnostic, Level};
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

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Xid(u32),
    /// `count` XIDs in a burst (an XID storm).
    XidStorm {
        xid: u32,
        count: u32,
    },
    Lost,
    Temperature(i32),
    /// The simulated driver's calls stop returning (a wedged driver).
    Hang,
    /// The driver's recovery action (NVML field 230).
    RecoveryAction(u32),
    RowRemapPending,
    RowRemapFailure,
    /// Volatile uncorrectable ECC errors.
    EccErrors(u64),
    /// PCIe link width (the simulated maximum is x16).
    PcieWidth(u32),
    /// One NVLink goes inactive.
    NvlinkDown(u32),
    /// Sustained hardware slowdown on or off.
    Slowdown(bool),
    /// The GPU drops out of the driver's enumeration (sysfs still lists it).
    Missing,
    /// PCIe replays added on every poll from now on.
    PcieReplays(u64),
    /// NVLink errors added on every poll from now on.
    NvlinkErrors(u64),
    /// NVLink fabric registration stays in progress.
    FabricNotReady,
    /// InfoROM validation fails.
    InfoRomCorrupt,
    /// A simulated GPU reset: clears every fault a reset clears and cools the
    /// GPU to idle (a row-remap failure stays: it is the board's).
    Clear,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Xid(x) => write!(f, "XID {x}"),
            Self::XidStorm { xid, count } => write!(f, "{count} × XID {xid}"),
            Self::Lost => f.write_str("lost"),
            Self::Temperature(c) => write!(f, "temperature {c} °C"),
            Self::Hang => f.write_str("driver calls hang"),
            Self::RecoveryAction(a) => write!(f, "recovery action {a}"),
            Self::RowRemapPending => f.write_str("row remap pending"),
            Self::RowRemapFailure => f.write_str("row remap failure"),
            Self::EccErrors(n) => write!(f, "{n} uncorrectable ECC errors"),
            Self::PcieWidth(w) => write!(f, "PCIe width x{w}"),
            Self::NvlinkDown(l) => write!(f, "NVLink {l} down"),
            Self::Slowdown(on) => write!(f, "hardware slowdown {}", if *on { "on" } else { "off" }),
            Self::Missing => f.write_str("missing from the driver"),
            Self::PcieReplays(n) => write!(f, "{n} PCIe replays per poll"),
            Self::NvlinkErrors(n) => write!(f, "{n} NVLink errors per poll"),
            Self::FabricNotReady => f.write_str("fabric registration stuck"),
            Self::InfoRomCorrupt => f.write_str("InfoROM corrupted"),
            Self::Clear => f.write_str("clear (simulated reset)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Time since the monitor started.
    pub at: Duration,
    pub gpu: u32,
    pub fault: Fault,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("unknown built-in scenario {0:?} (built-ins: {builtins})", builtins = BUILTINS.join(", "))]
    UnknownBuiltin(String),
    #[error("cannot read scenario file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid scenario:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("scenario {scenario:?} step {step} names GPU {gpu}, but the node has {count} GPUs")]
    NoSuchGpu {
        scenario: String,
        step: usize,
        gpu: u32,
        count: u32,
    },
}

pub const BUILTINS: [&str; 5] = ["healthy", "demo", "xid79", "reset-required", "thermal"];

fn step(at_ms: u64, gpu: u32, fault: Fault) -> Step {
    Step {
        at: Duration::from_millis(at_ms),
        gpu,
        fault,
    }
}

impl Scenario {
    /// `builtin:NAME` or a path to a JSON file.
    pub fn load(spec: &str) -> Result<Self, ScenarioError> {
        if let Some(name) = spec.strip_prefix("builtin:") {
            return Self::builtin(name);
        }
        let text = std::fs::read_to_string(spec).map_err(|source| ScenarioError::Read {
            path: spec.to_owned(),
            source,
        })?;
        Self::parse(Path::new(spec), &text)
    }

    pub fn builtin(name: &str) -> Result<Self, ScenarioError> {
        let steps = match name {
            "healthy" => vec![],
            // Healthy, then GPU 3 falls off the bus, then a reset brings it back.
            "demo" => vec![step(3_000, 3, Fault::Xid(79)), step(8_000, 3, Fault::Clear)],
            "xid79" => vec![
                step(2_000, 3, Fault::Xid(79)),
                step(10_000, 3, Fault::Clear),
            ],
            "reset-required" => vec![
                step(2_000, 1, Fault::Xid(48)),
                step(10_000, 1, Fault::Clear),
            ],
            "thermal" => vec![
                step(2_000, 5, Fault::Temperature(92)),
                step(12_000, 5, Fault::Temperature(60)),
            ],
            _ => return Err(ScenarioError::UnknownBuiltin(name.to_owned())),
        };
        Ok(Self {
            name: format!("builtin:{name}"),
            steps,
        })
    }

    /// Parses the JSON form, reporting every problem with its position.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ScenarioError> {
        let mut sink = Sink::new(file);
        let mut steps = Vec::new();
        match json::parse(text) {
            Err(e) => sink.push(
                Level::Error,
                Some(e.pos),
                "",
                format!("invalid JSON: {}", e.message),
            ),
            Ok(doc) => {
                if let Some(mut top) = Obj::new(&mut sink, &doc, "") {
                    match top.get(&mut sink, &["steps"]) {
                        Some(f) => match &f.node.value {
                            Value::Array(items) => {
                                for (i, item) in items.iter().enumerate() {
                                    if let Some(s) =
                                        parse_step(&mut sink, item, &format!("steps[{i}]"))
                                    {
                                        steps.push(s);
                                    }
                                }
                            }
                            other => sink.error(
                                f.node.pos,
                                "steps",
                                format!("must be an array, found {}", other.kind()),
                            ),
                        },
                        None => sink.error(top.pos, "steps", "missing"),
                    }
                    top.finish(&mut sink);
                }
            }
        }
        if sink.has_errors() {
            return Err(ScenarioError::Invalid(sink.diagnostics));
        }
        steps.sort_by_key(|s| s.at);
        Ok(Self {
            name: file.display().to_string(),
            steps,
        })
    }

    /// Every step must name a GPU the node has.
    pub fn check_gpus(&self, count: u32) -> Result<(), ScenarioError> {
        match self.steps.iter().enumerate().find(|(_, s)| s.gpu >= count) {
            Some((i, s)) => Err(ScenarioError::NoSuchGpu {
                scenario: self.name.clone(),
                step: i,
                gpu: s.gpu,
                count,
            }),
            None => Ok(()),
        }
    }
}

fn parse_step(sink: &mut Sink, node: &json::Node, path: &str) -> Option<Step> {
    let mut obj = Obj::new(sink, node, path)?;
    let at = match obj.get(sink, &["at"]) {
        Some(f) => walk::duration(sink, &f),
        None => {
            sink.error(node.pos, &format!("{path}.at"), "missing");
            None
        }
    };
    let gpu = match obj.get(sink, &["gpu"]) {
        Some(f) => walk::unsigned(sink, &f).and_then(|g| u32::try_from(g).ok()),
        None => {
            sink.error(node.pos, &format!("{path}.gpu"), "missing");
            None
        }
    };
    let fault = match obj.get(sink, &["fault"]) {
        Some(f) => parse_fault(sink, f.node, &f.key),
        None => {
            sink.error(node.pos, &format!("{path}.fault"), "missing");
            None
        }
    };
    obj.finish(sink);
    Some(Step {
        at: at?,
        gpu: gpu?,
        fault: fault?,
    })
}

fn parse_fault(sink: &mut Sink, node: &json::Node, path: &str) -> Option<Fault> {
    const HELP: &str = r#"a fault is "lost", "hang", "row_remap_pending", "row_remap_failure", "missing", "fabric_not_ready", "inforom_corrupt", "clear", or one of {"xid": N}, {"xid_storm": {"xid": N, "count": C}}, {"temperature": C}, {"recovery_action": N}, {"ecc_errors": N}, {"pcie_width": W}, {"pcie_replays": N}, {"nvlink_errors": N}, {"nvlink_down": L}, {"slowdown": true|false}"#;
    let u32_of = |sink: &mut Sink, f: &walk::Found<'_>| {
        walk::unsigned(sink, f).and_then(|v| u32::try_from(v).ok())
    };
    match &node.value {
        Value::String(s) => match s.as_str() {
            "lost" => Some(Fault::Lost),
            "clear" => Some(Fault::Clear),
            "hang" => Some(Fault::Hang),
            "row_remap_pending" => Some(Fault::RowRemapPending),
            "row_remap_failure" => Some(Fault::RowRemapFailure),
            "missing" => Some(Fault::Missing),
            "fabric_not_ready" => Some(Fault::FabricNotReady),
            "inforom_corrupt" => Some(Fault::InfoRomCorrupt),
            _ => {
                sink.error(node.pos, path, format!("unknown fault {s:?}: {HELP}"));
                None
            }
        },
        Value::Object(members) if members.len() == 1 => {
            let mut obj = Obj::new(sink, node, path)?;
            let fault = if let Some(f) = obj.get(sink, &["xid"]) {
                u32_of(sink, &f).map(Fault::Xid)
            } else if let Some(f) = obj.get(sink, &["recovery_action"]) {
                u32_of(sink, &f).map(Fault::RecoveryAction)
            } else if let Some(f) = obj.get(sink, &["ecc_errors"]) {
                walk::unsigned(sink, &f).map(Fault::EccErrors)
            } else if let Some(f) = obj.get(sink, &["pcie_replays"]) {
                walk::unsigned(sink, &f).map(Fault::PcieReplays)
            } else if let Some(f) = obj.get(sink, &["nvlink_errors"]) {
                walk::unsigned(sink, &f).map(Fault::NvlinkErrors)
            } else if let Some(f) = obj.get(sink, &["pcie_width"]) {
                u32_of(sink, &f).map(Fault::PcieWidth)
            } else if let Some(f) = obj.get(sink, &["nvlink_down"]) {
                u32_of(sink, &f)
                    .filter(|l| *l < SIM_NVLINKS)
                    .map(Fault::NvlinkDown)
                    .or_else(|| {
                        sink.error(
                            f.node.pos,
                            &f.key,
                            format!("links are numbered 0 to {}", SIM_NVLINKS - 1),
                        );
                        None
                    })
            } else if let Some(f) = obj.get(sink, &["slowdown"]) {
                walk::boolean(sink, &f).map(Fault::Slowdown)
            } else if let Some(f) = obj.get(sink, &["xid_storm"]) {
                let mut storm = Obj::new(sink, f.node, &f.key)?;
                let xid = storm.get(sink, &["xid"]).and_then(|x| u32_of(sink, &x));
                let count = storm.get(sink, &["count"]).and_then(|c| u32_of(sink, &c));
                storm.finish(sink);
                match (xid, count) {
                    (Some(xid), Some(count)) => Some(Fault::XidStorm { xid, count }),
                    _ => {
                        sink.error(f.node.pos, &f.key, "needs \"xid\" and \"count\"");
                        None
                    }
                }
            } else if let Some(f) = obj.get(sink, &["temperature"]) {
                match &f.node.value {
                    Value::Number(t) => match t.parse::<i32>() {
                        Ok(c) => Some(Fault::Temperature(c)),
                        Err(_) => {
                            sink.error(
                                f.node.pos,
                                &f.key,
                                format!("must be whole degrees Celsius, found {t}"),
                            );
                            None
                        }
                    },
                    other => {
                        sink.error(
                            f.node.pos,
                            &f.key,
                            format!("must be a number, found {}", other.kind()),
                        );
                        None
                    }
                }
            } else {
                None
            };
            obj.finish(sink);
            if fault.is_none() && !sink.has_errors() {
                sink.error(node.pos, path, format!("unknown fault: {HELP}"));
            }
            fault
        }
        _ => {
            sink.error(node.pos, path, format!("unknown fault: {HELP}"));
            None
        }
    }
}

/// The one-off observations a fault produces on `gpu` at `at` (state
/// changes show in the simulated driver's sweeps as well).
pub fn observation(gpu: u32, fault: &Fault, at: SystemTime) -> Vec<Observation> {
    match *fault {
        Fault::Xid(xid) => vec![Observation::Xid { gpu, xid, at }],
        Fault::XidStorm { xid, count } => (0..count)
            .map(|_| Observation::Xid { gpu, xid, at })
            .collect(),
        Fault::Lost => vec![Observation::Lost { gpu, at }],
        Fault::Temperature(celsius) => vec![Observation::Temperature { gpu, celsius, at }],
        Fault::Clear => vec![
            Observation::Reset { gpu, at },
            Observation::Temperature {
                gpu,
                celsius: IDLE_CELSIUS,
                at,
            },
        ],
        _ => vec![],
    }
}

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

/// Plays `scenario` on a new simulated node of `gpus` GPUs.
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

    #[test]
    fn parses_the_documented_form() {
        let s = Scenario::parse(
            Path::new("s.json"),
            r#"{"steps": [{"at": "10s", "gpu": 3, "fault": "clear"}, {"at": "2s", "gpu": 3, "fault": {"xid": 79}},
                {"at": "3s", "gpu": 1, "fault": "lost"}, {"at": "4s", "gpu": 2, "fault": {"temperature": 95}}]}"#,
        )
        .expect("valid");
        assert_eq!(s.steps[0], step(2_000, 3, Fault::Xid(79)));
        assert_eq!(s.steps[1], step(3_000, 1, Fault::Lost));
        assert_eq!(s.steps[2], step(4_000, 2, Fault::Temperature(95)));
        assert_eq!(s.steps[3], step(10_000, 3, Fault::Clear));
    }

    #[test]
    fn reports_every_bad_step() {
        let err = Scenario::parse(
            Path::new("s.json"),
            "{\"steps\": [\n {\"at\": \"2 s\", \"gpu\": 3, \"fault\": {\"xid\": 79}},\n {\"at\": \"1s\", \"gpu\": -1, \"fault\": \"melt\"}\n]}",
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("s.json:2:9: error: steps[0].at: invalid duration"),
            "{text}"
        );
        assert!(text.contains("s.json:3:22: error: steps[1].gpu"), "{text}");
        assert!(text.contains("steps[1].fault: unknown fault"), "{text}");
    }

    #[test]
    fn builtins_load_and_fit_eight_gpus() {
        for name in BUILTINS {
            let s = Scenario::builtin(name).expect("builtin");
            s.check_gpus(8).expect("fits");
        }
        assert!(Scenario::load("builtin:nope").is_err());
        assert!(matches!(
            Scenario::builtin("demo").expect("demo").check_gpus(2),
            Err(ScenarioError::NoSuchGpu { gpu: 3, .. })
        ));
    }
}

//! Fault scenarios for the simulated backend: what happens to which GPU,
//! when (`{"steps": [{"at": "2s", "gpu": 3, "fault": {"xid": 79}}]}`), from a
//! file or built in, checked as configs are (`file:line:col`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{IDLE_CELSIUS, SIM_NVLINKS};
use crate::config::json::{self, Value};
use crate::config::walk::{self, Obj, Sink};
use crate::config::{Diagnostic, Level};
use crate::gpu::Observation;

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
    /// Corrected ECC errors added on every poll from now on.
    CorrectedEcc(u64),
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
            Self::CorrectedEcc(n) => write!(f, "{n} corrected ECC errors per poll"),
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
    const HELP: &str = r#"a fault is "lost", "hang", "row_remap_pending", "row_remap_failure", "missing", "fabric_not_ready", "inforom_corrupt", "clear", or one of {"xid": N}, {"xid_storm": {"xid": N, "count": C}}, {"temperature": C}, {"recovery_action": N}, {"ecc_errors": N}, {"pcie_width": W}, {"pcie_replays": N}, {"nvlink_errors": N}, {"corrected_ecc": N}, {"nvlink_down": L}, {"slowdown": true|false}"#;
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
            } else if let Some(f) = obj.get(sink, &["corrected_ecc"]) {
                walk::unsigned(sink, &f).map(Fault::CorrectedEcc)
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

#[cfg(test)]
mod tests {
    use super::*;

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

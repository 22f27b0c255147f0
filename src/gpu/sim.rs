//! The simulated backend: a node of N GPUs with realistic identities, driven
//! by a fault scenario (`{"steps": [{"at": "2s", "gpu": 3, "fault": {"xid": 79}}]}`).
//! Tests and the demo use it; production never falls back to it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{GpuIdentity, Observation};
use crate::config::json::{self, Value};
use crate::config::walk::{self, Obj, Sink};
use crate::config::{Diagnostic, Level};

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
    Lost,
    Temperature(i32),
    /// A simulated GPU reset: clears every fault and cools the GPU to idle.
    Clear,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Xid(x) => write!(f, "XID {x}"),
            Self::Lost => f.write_str("lost"),
            Self::Temperature(c) => write!(f, "temperature {c} °C"),
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
    const HELP: &str = r#"a fault is {"xid": N}, "lost", {"temperature": C} or "clear""#;
    match &node.value {
        Value::String(s) if s == "lost" => Some(Fault::Lost),
        Value::String(s) if s == "clear" => Some(Fault::Clear),
        Value::Object(members) if members.len() == 1 => {
            let mut obj = Obj::new(sink, node, path)?;
            let fault = if let Some(f) = obj.get(sink, &["xid"]) {
                walk::unsigned(sink, &f)
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Fault::Xid)
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
            fault
        }
        _ => {
            sink.error(node.pos, path, format!("unknown fault: {HELP}"));
            None
        }
    }
}

/// The observation a fault produces on `gpu` at `at`.
pub fn observation(gpu: u32, fault: &Fault, at: SystemTime) -> Vec<Observation> {
    match *fault {
        Fault::Xid(xid) => vec![Observation::Xid { gpu, xid, at }],
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
    }
}

/// Plays a scenario: idle readings at once, then each step at its time.
pub async fn run(
    scenario: Scenario,
    gpus: u32,
    tx: mpsc::Sender<Observation>,
    token: CancellationToken,
) {
    let start = tokio::time::Instant::now();
    let now = SystemTime::now();
    for gpu in 0..gpus {
        let reading = Observation::Temperature {
            gpu,
            celsius: IDLE_CELSIUS,
            at: now,
        };
        if tx.send(reading).await.is_err() {
            return;
        }
    }
    for step in scenario.steps {
        tokio::select! {
            () = tokio::time::sleep_until(start + step.at) => {}
            () = token.cancelled() => return,
        }
        tracing::info!(gpu = step.gpu, fault = ?step.fault, at = ?step.at, "sim: injecting");
        for obs in observation(step.gpu, &step.fault, SystemTime::now()) {
            if tx.send(obs).await.is_err() {
                return;
            }
        }
    }
    tracing::info!(scenario = %scenario.name, "sim: scenario finished");
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

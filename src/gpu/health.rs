//! The GPU health model: per-GPU state from observations, folded into node
//! conditions (True = problem) that name every affected GPU, plus events.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::kmsg::PciAddr;
use super::xid::{self, Action, XidInfo};
use super::{
    GPU_DRIVER_NOT_READY, GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING, GPU_UNRESPONSIVE,
    GpuIdentity, Observation, UNENUMERATED,
};
use crate::problem::{Condition, ConditionStatus, Event, Severity};

/// Hopper's slowdown threshold (H200 fixture: slowdown 89 °C, shutdown 95 °C).
pub const DEFAULT_SLOWDOWN_CELSIUS: i32 = 89;
/// A throttling GPU must cool this far below slowdown before it counts as clear.
pub const THERMAL_HYSTERESIS_CELSIUS: i32 = 5;
// Event reasons.
pub const REASON_XID_ERROR: &str = "XIDError";
pub const REASON_XID_APP_ERROR: &str = "XIDAppError";
pub const REASON_RECOVERED: &str = "GPURecovered";
pub const REASON_DRIVER_NOT_READY: &str = "DriverNotReady";
pub const REASON_DRIVER_READY: &str = "DriverReady";
pub const REASON_UNRESPONSIVE: &str = "NVMLCallHung";
pub const REASON_RESPONSIVE: &str = "NVMLResponsive";

/// Recent events kept for clients that have not yet seen them.
const EVENT_BACKLOG: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LostCause {
    FellOffTheBus,
    NotResponding,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Driver {
    Ready { version: String },
    NotReady { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stuck {
    call: String,
    gpu: Option<u32>,
    waited: Duration,
}

#[derive(Clone, Debug)]
struct GpuState {
    id: GpuIdentity,
    /// This GPU's slowdown temperature (NVML's, or the H200 default).
    slowdown: i32,
    lost: Option<LostCause>,
    reset_required: Option<XidInfo>,
    /// Temperature when throttling began (kept out of the live reading so
    /// the condition message does not churn with every degree).
    throttled_at: Option<i32>,
}

/// What the plugin publishes after every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub conditions: Vec<Condition>,
    /// Recent events with their sequence numbers, oldest first.
    pub events: Vec<(u64, Event)>,
}

impl Snapshot {
    pub fn last_event_seq(&self) -> u64 {
        self.events.last().map_or(0, |(seq, _)| *seq)
    }

    /// Events with a sequence number above `after`.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(move |(seq, _)| *seq > after)
            .map(|(_, e)| e)
    }
}

#[derive(Debug)]
pub struct HealthModel {
    gpus: Vec<GpuState>,
    driver: Driver,
    unresponsive: Option<Stuck>,
    events: VecDeque<(u64, Event)>,
    next_seq: u64,
}

impl GpuState {
    fn new(id: GpuIdentity) -> Self {
        Self {
            id,
            slowdown: DEFAULT_SLOWDOWN_CELSIUS,
            lost: None,
            reset_required: None,
            throttled_at: None,
        }
    }
}

impl HealthModel {
    /// A node whose GPUs are known up front (the sim backend).
    pub fn new(gpus: Vec<GpuIdentity>) -> Self {
        Self {
            gpus: gpus.into_iter().map(GpuState::new).collect(),
            driver: Driver::Ready {
                version: String::new(),
            },
            unresponsive: None,
            events: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// A node whose GPUs are learnt from the driver: until it answers,
    /// nothing about the GPUs is known.
    pub fn awaiting_driver() -> Self {
        let mut m = Self::new(Vec::new());
        m.driver = Driver::NotReady {
            reason: "the NVIDIA driver has not been reached yet".into(),
        };
        m
    }

    /// GPUs the driver enumerates (not those known only from the kernel log).
    pub fn enumerated(&self) -> usize {
        self.gpus
            .iter()
            .filter(|g| g.id.index != UNENUMERATED)
            .count()
    }

    /// Applies one observation. Returns false when nothing a client can see changed.
    pub fn apply(&mut self, obs: &Observation) -> bool {
        let before = self.conditions();
        let events_before = self.next_seq;
        let events = match obs {
            Observation::DriverNotReady { reason, at } => self.driver_not_ready(reason, *at),
            Observation::DriverReady { gpus, version, at } => self.driver_ready(gpus, version, *at),
            Observation::Unresponsive {
                call,
                gpu,
                waited,
                at,
            } => {
                let stuck = Stuck {
                    call: call.clone(),
                    gpu: *gpu,
                    waited: *waited,
                };
                let first = self.unresponsive.is_none();
                let message = self.describe_stuck(&stuck);
                self.unresponsive = Some(stuck);
                if first {
                    vec![event(Severity::Warn, *at, GPU_UNRESPONSIVE.into(), message)]
                } else {
                    vec![]
                }
            }
            Observation::Responsive { at } => match self.unresponsive.take() {
                Some(_) => vec![event(
                    Severity::Info,
                    *at,
                    REASON_RESPONSIVE.into(),
                    "NVML calls return in time again".into(),
                )],
                None => vec![],
            },
            Observation::KernelXid {
                pci,
                xid,
                detail,
                at,
            } => {
                let pos = self.position_for_pci(*pci);
                let gpu = self.gpus[pos].id.index;
                self.apply_at(
                    pos,
                    &Observation::Xid {
                        gpu,
                        xid: *xid,
                        at: *at,
                    },
                    Some(detail),
                )
            }
            gpu_obs => self.apply_gpu(gpu_obs),
        };
        for e in events {
            self.push_event(e);
        }
        self.next_seq != events_before || self.conditions() != before
    }

    fn driver_not_ready(&mut self, reason: &str, at: SystemTime) -> Vec<Event> {
        let was_ready = matches!(self.driver, Driver::Ready { .. });
        self.driver = Driver::NotReady {
            reason: reason.to_owned(),
        };
        if was_ready {
            vec![event(
                Severity::Warn,
                at,
                REASON_DRIVER_NOT_READY.into(),
                reason.to_owned(),
            )]
        } else {
            vec![]
        }
    }

    /// The driver's inventory replaces ours; GPUs that stay (same UUID) keep their state.
    fn driver_ready(&mut self, gpus: &[GpuIdentity], version: &str, at: SystemTime) -> Vec<Event> {
        let was_ready = matches!(self.driver, Driver::Ready { .. });
        let mut old = std::mem::take(&mut self.gpus);
        self.gpus = gpus
            .iter()
            .map(|id| match old.iter().position(|g| g.id.uuid == id.uuid) {
                Some(i) => {
                    let mut g = old.swap_remove(i);
                    g.id = id.clone();
                    g
                }
                None => GpuState::new(id.clone()),
            })
            .collect();
        // GPUs known only from the kernel log stay until the driver names them.
        let named: Vec<Option<PciAddr>> = self
            .gpus
            .iter()
            .map(|g| PciAddr::parse(&g.id.pci_bus_id))
            .collect();
        self.gpus.extend(old.into_iter().filter(|g| {
            g.id.index == UNENUMERATED && !named.contains(&PciAddr::parse(&g.id.pci_bus_id))
        }));
        self.driver = Driver::Ready {
            version: version.to_owned(),
        };
        if was_ready {
            vec![]
        } else {
            vec![event(
                Severity::Info,
                at,
                REASON_DRIVER_READY.into(),
                format!(
                    "NVIDIA driver {version} answers; {}",
                    gpus_visible(gpus.len())
                ),
            )]
        }
    }

    fn describe_stuck(&self, stuck: &Stuck) -> String {
        let on = stuck
            .gpu
            .and_then(|i| self.gpus.iter().find(|g| g.id.index == i))
            .map_or_else(|| "the driver".to_owned(), |g| g.id.to_string());
        format!(
            "{on}: {} did not return within {:?}; action: check the driver (nvidia-smi may hang too), then reset the GPU or reboot",
            stuck.call, stuck.waited
        )
    }

    /// The GPU at `pci`, or a new entry named by the address alone.
    fn position_for_pci(&mut self, pci: PciAddr) -> usize {
        if let Some(pos) = self
            .gpus
            .iter()
            .position(|g| PciAddr::parse(&g.id.pci_bus_id) == Some(pci))
        {
            return pos;
        }
        tracing::warn!(%pci, "kernel log names a GPU the driver does not enumerate");
        self.gpus.push(GpuState::new(GpuIdentity {
            index: UNENUMERATED,
            uuid: "unknown".into(),
            pci_bus_id: pci.to_string(),
            serial: "unknown".into(),
            name: "unknown".into(),
        }));
        self.gpus.len() - 1
    }

    fn apply_gpu(&mut self, obs: &Observation) -> Vec<Event> {
        let Some(pos) = obs
            .gpu()
            .and_then(|i| self.gpus.iter().position(|g| g.id.index == i))
        else {
            tracing::warn!(gpu = ?obs.gpu(), "observation for a GPU this node does not have; ignored");
            return Vec::new();
        };
        self.apply_at(pos, obs, None)
    }

    /// Applies a per-GPU observation to the GPU at `pos`; `kernel` is the
    /// driver's text when the observation came from the kernel log.
    fn apply_at(&mut self, pos: usize, obs: &Observation, kernel: Option<&str>) -> Vec<Event> {
        let mut events = Vec::new();
        let gpu = &mut self.gpus[pos];
        let slowdown = gpu.slowdown;
        match *obs {
            Observation::Xid { xid, at, .. } => {
                let info = xid::lookup(xid);
                // Application-class XIDs are the job's problem, not the GPU's.
                let (severity, reason) = match info.action {
                    Action::Ignore | Action::RestartApp => (Severity::Info, REASON_XID_APP_ERROR),
                    _ => (Severity::Warn, REASON_XID_ERROR),
                };
                events.push(event(
                    severity,
                    at,
                    reason.into(),
                    match kernel.filter(|k| !k.is_empty()) {
                        Some(k) => format!(
                            "{}: XID {xid} ({}); action: {}; kernel: {}",
                            gpu.id,
                            info.mnemonic,
                            info.action.describe(),
                            truncate(k, 256)
                        ),
                        None => format!(
                            "{}: XID {xid} ({}); action: {}",
                            gpu.id,
                            info.mnemonic,
                            info.action.describe()
                        ),
                    },
                ));
                match info.action {
                    Action::RebootNode => gpu.lost = Some(LostCause::FellOffTheBus),
                    Action::ResetGpu if gpu.reset_required.is_none() => {
                        gpu.reset_required = Some(info)
                    }
                    _ => {}
                }
            }
            Observation::Lost { at, .. } => {
                if gpu.lost.is_none() {
                    gpu.lost = Some(LostCause::NotResponding);
                    events.push(event(
                        Severity::Warn,
                        at,
                        "GPULost".into(),
                        format!(
                            "{}: GPU stopped answering; action: {}",
                            gpu.id,
                            Action::RebootNode.describe()
                        ),
                    ));
                }
            }
            Observation::Temperature { celsius, at, .. } => {
                let was_throttling = gpu.throttled_at.is_some();
                let now_throttling = if was_throttling {
                    celsius > slowdown - THERMAL_HYSTERESIS_CELSIUS
                } else {
                    celsius >= slowdown
                };
                if now_throttling != was_throttling {
                    gpu.throttled_at = now_throttling.then_some(celsius);
                    let (reason, what) = if now_throttling {
                        (
                            "ThermalThrottlingStarted",
                            format!("{celsius} °C reached slowdown {slowdown} °C"),
                        )
                    } else {
                        (
                            "ThermalThrottlingStopped",
                            format!("cooled to {celsius} °C"),
                        )
                    };
                    let severity = if now_throttling {
                        Severity::Warn
                    } else {
                        Severity::Info
                    };
                    events.push(event(
                        severity,
                        at,
                        reason.into(),
                        format!("{}: {what}", gpu.id),
                    ));
                }
            }
            Observation::Reset { at, .. } => {
                let had_faults = gpu.lost.is_some() || gpu.reset_required.is_some();
                gpu.lost = None;
                gpu.reset_required = None;
                if had_faults {
                    events.push(event(
                        Severity::Info,
                        at,
                        REASON_RECOVERED.into(),
                        format!("{}: GPU reset and answering; faults cleared", gpu.id),
                    ));
                }
            }
            Observation::SlowdownThreshold { celsius, .. } => gpu.slowdown = celsius,
            Observation::KernelXid { .. }
            | Observation::DriverNotReady { .. }
            | Observation::DriverReady { .. }
            | Observation::Unresponsive { .. }
            | Observation::Responsive { .. } => {}
        }
        events
    }

    fn push_event(&mut self, e: Event) {
        self.events.push_back((self.next_seq, e));
        self.next_seq += 1;
        while self.events.len() > EVENT_BACKLOG {
            self.events.pop_front();
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            conditions: self.conditions(),
            events: self.events.iter().cloned().collect(),
        }
    }

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
        match &self.driver {
            Driver::NotReady { reason } => {
                out.extend(
                    [GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING].map(|t| {
                        Condition::new(
                            t,
                            ConditionStatus::Unknown,
                            REASON_DRIVER_NOT_READY,
                            format!("cannot see the GPUs: {reason}"),
                        )
                    }),
                );
            }
            Driver::Ready { .. } => {
                let [lost, reset, mut thermal] = self.gpu_conditions();
                // Readings stopped: a throttling GPU stays reported, a cool
                // one is no longer known to be cool.
                if self.unresponsive.is_some() && thermal.status != ConditionStatus::True {
                    thermal = Condition::new(
                        GPU_THERMAL_THROTTLING,
                        ConditionStatus::Unknown,
                        REASON_UNRESPONSIVE,
                        "temperature readings stopped: NVML does not answer",
                    );
                }
                out.extend([lost, reset, thermal]);
            }
        }
        out
    }

    /// The conditions judged from per-GPU state (driver ready).
    fn gpu_conditions(&self) -> [Condition; 3] {
        let n = self.enumerated();
        let lost: Vec<&GpuState> = self.gpus.iter().filter(|g| g.lost.is_some()).collect();
        let lost_condition = if lost.is_empty() {
            Condition::new(
                GPU_LOST,
                ConditionStatus::False,
                "NoGPULost",
                if n == 1 {
                    "the GPU answers".to_owned()
                } else {
                    format!("all {n} GPUs answer")
                },
            )
        } else {
            let reason = if lost
                .iter()
                .any(|g| g.lost == Some(LostCause::FellOffTheBus))
            {
                "GPUFellOffTheBus"
            } else {
                "GPUNotResponding"
            };
            let msg = join(lost.iter().map(|g| {
                let cause = match g.lost {
                    Some(LostCause::FellOffTheBus) => "fell off the bus (XID 79)",
                    _ => "stopped answering",
                };
                format!(
                    "{}: {cause}; action: {}",
                    g.id,
                    Action::RebootNode.describe()
                )
            }));
            Condition::new(GPU_LOST, ConditionStatus::True, reason, msg)
        };

        let reset: Vec<(&GpuState, XidInfo)> = self
            .gpus
            .iter()
            .filter_map(|g| g.reset_required.map(|i| (g, i)))
            .collect();
        let reset_condition = match reset.first() {
            None => Condition::new(
                GPU_RESET_REQUIRED,
                ConditionStatus::False,
                "NoGPUResetRequired",
                "no GPU needs a reset",
            ),
            Some((_, first)) => Condition::new(
                GPU_RESET_REQUIRED,
                ConditionStatus::True,
                format!("Xid{}", first.xid),
                join(reset.iter().map(|(g, i)| {
                    format!(
                        "{}: XID {} ({}); action: {}",
                        g.id,
                        i.xid,
                        i.mnemonic,
                        i.action.describe()
                    )
                })),
            ),
        };

        let hot: Vec<(&GpuState, i32)> = self
            .gpus
            .iter()
            .filter_map(|g| g.throttled_at.map(|t| (g, t)))
            .collect();
        let thermal_condition = if hot.is_empty() {
            Condition::new(
                GPU_THERMAL_THROTTLING,
                ConditionStatus::False,
                "NoThermalThrottling",
                "all GPUs below their slowdown temperature",
            )
        } else {
            Condition::new(
                GPU_THERMAL_THROTTLING,
                ConditionStatus::True,
                "ThermalSlowdown",
                join(hot.iter().map(|(g, t)| {
                    format!(
                        "{}: reached {t} °C, slowdown is {} °C; action: check cooling and airflow",
                        g.id, g.slowdown
                    )
                })),
            )
        };
        [lost_condition, reset_condition, thermal_condition]
    }
}

fn event(severity: Severity, timestamp: SystemTime, reason: String, message: String) -> Event {
    Event {
        severity,
        timestamp,
        reason,
        message,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn gpus_visible(n: usize) -> String {
    if n == 1 {
        "1 GPU visible".into()
    } else {
        format!("{n} GPUs visible")
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim;

    fn model() -> HealthModel {
        HealthModel::new(sim::identities(8))
    }

    fn status_of<'a>(conds: &'a [Condition], t: &str) -> &'a Condition {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn healthy_node_reports_all_false() {
        let m = model();
        let c = m.conditions();
        assert_eq!(c.len(), 5);
        assert!(
            c.iter().all(|c| c.status == ConditionStatus::False),
            "{c:?}"
        );
    }

    #[test]
    fn xid79_is_lost_and_names_the_gpu_until_reset() {
        let mut m = model();
        let now = SystemTime::now();
        assert!(m.apply(&Observation::Xid {
            gpu: 3,
            xid: 79,
            at: now
        }));
        let c = m.conditions();
        let lost = status_of(&c, GPU_LOST);
        assert_eq!(lost.status, ConditionStatus::True);
        assert_eq!(lost.reason, "GPUFellOffTheBus");
        let id = &sim::identities(8)[3];
        assert!(
            lost.message.contains(&id.uuid) && lost.message.contains(&id.pci_bus_id),
            "{}",
            lost.message
        );
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::False
        );
        let events = m.snapshot().events;
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].1.reason.as_str(), events[0].1.severity),
            (REASON_XID_ERROR, Severity::Warn)
        );
        assert!(m.apply(&Observation::Reset { gpu: 3, at: now }));
        assert_eq!(
            status_of(&m.conditions(), GPU_LOST).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn reset_class_xid_sets_reset_required_and_app_xid_only_an_event() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Xid {
            gpu: 1,
            xid: 48,
            at: now,
        });
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::True
        );
        assert_eq!(status_of(&c, GPU_RESET_REQUIRED).reason, "Xid48");
        let mut m = model();
        assert!(
            m.apply(&Observation::Xid {
                gpu: 1,
                xid: 13,
                at: now
            }),
            "an event is a change"
        );
        let events = m.snapshot().events;
        assert_eq!(
            (events[0].1.reason.as_str(), events[0].1.severity),
            (REASON_XID_APP_ERROR, Severity::Info)
        );
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
    }

    #[test]
    fn thermal_throttling_has_hysteresis() {
        let mut m = model();
        let now = SystemTime::now();
        let temp = |m: &mut HealthModel, c| {
            m.apply(&Observation::Temperature {
                gpu: 5,
                celsius: c,
                at: now,
            })
        };
        let throttling =
            |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
        temp(&mut m, 88);
        assert_eq!(throttling(&m), ConditionStatus::False);
        temp(&mut m, 89);
        assert_eq!(throttling(&m), ConditionStatus::True);
        assert!(
            !temp(&mut m, 86),
            "inside the hysteresis band nothing changes"
        );
        assert_eq!(throttling(&m), ConditionStatus::True);
        temp(&mut m, 84);
        assert_eq!(throttling(&m), ConditionStatus::False);
    }

    #[test]
    fn without_a_driver_gpu_conditions_are_unknown_not_healthy() {
        let mut m = HealthModel::awaiting_driver();
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_DRIVER_NOT_READY).status,
            ConditionStatus::True
        );
        for t in [GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING] {
            assert_eq!(status_of(&c, t).status, ConditionStatus::Unknown, "{t}");
        }
        let now = SystemTime::now();
        m.apply(&Observation::DriverNotReady {
            reason: "cannot load NVML (x: not found)".into(),
            at: now,
        });
        let c = m.conditions();
        assert!(
            status_of(&c, GPU_DRIVER_NOT_READY)
                .message
                .contains("cannot load NVML (x: not found)")
        );
        assert!(
            m.snapshot().events.is_empty(),
            "never ready: no transition event"
        );

        let gpus = sim::identities(2);
        assert!(m.apply(&Observation::DriverReady {
            gpus: gpus.clone(),
            version: "580.159.04".into(),
            at: now
        }));
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_DRIVER_NOT_READY).status,
            ConditionStatus::False
        );
        assert!(
            status_of(&c, GPU_DRIVER_NOT_READY)
                .message
                .contains("580.159.04 ready; 2 GPUs visible")
        );
        assert!(
            c.iter().all(|c| c.status == ConditionStatus::False),
            "{c:?}"
        );
        assert_eq!(
            m.snapshot().events.last().map(|(_, e)| e.reason.as_str()),
            Some(REASON_DRIVER_READY)
        );
    }

    #[test]
    fn a_new_inventory_keeps_the_state_of_gpus_that_stay() {
        let mut m = HealthModel::awaiting_driver();
        let now = SystemTime::now();
        let gpus = sim::identities(3);
        m.apply(&Observation::DriverReady {
            gpus: gpus.clone(),
            version: "v".into(),
            at: now,
        });
        m.apply(&Observation::Xid {
            gpu: 2,
            xid: 48,
            at: now,
        });
        // GPU 0 disappears: indexes shift, the UUID decides who is who.
        let mut shifted: Vec<GpuIdentity> = gpus[1..].to_vec();
        for (i, g) in shifted.iter_mut().enumerate() {
            g.index = i as u32;
        }
        m.apply(&Observation::DriverReady {
            gpus: shifted,
            version: "v".into(),
            at: now,
        });
        let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
        assert_eq!(reset.status, ConditionStatus::True);
        assert!(
            reset
                .message
                .contains(&format!("gpu=1 uuid={}", gpus[2].uuid)),
            "{}",
            reset.message
        );
    }

    #[test]
    fn a_hung_call_is_unresponsive_and_stale_readings_unknown() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Temperature {
            gpu: 4,
            celsius: 40,
            at: now,
        });
        assert!(m.apply(&Observation::Unresponsive {
            call: "nvmlDeviceGetTemperature".into(),
            gpu: Some(4),
            waited: Duration::from_secs(30),
            at: now,
        }));
        let c = m.conditions();
        let u = status_of(&c, GPU_UNRESPONSIVE);
        assert_eq!(u.status, ConditionStatus::True);
        assert!(
            u.message.contains("gpu=4 ") && u.message.contains("nvmlDeviceGetTemperature"),
            "{}",
            u.message
        );
        assert_eq!(
            status_of(&c, GPU_THERMAL_THROTTLING).status,
            ConditionStatus::Unknown
        );
        assert_eq!(
            status_of(&c, GPU_LOST).status,
            ConditionStatus::False,
            "XID-based state is not a reading"
        );
        assert!(m.apply(&Observation::Responsive { at: now }));
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
        assert!(
            !m.apply(&Observation::Responsive { at: now }),
            "nothing new"
        );
    }

    #[test]
    fn the_gpus_own_slowdown_threshold_is_used() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::SlowdownThreshold {
            gpu: 0,
            celsius: 80,
        });
        m.apply(&Observation::Temperature {
            gpu: 0,
            celsius: 82,
            at: now,
        });
        let t = status_of(&m.conditions(), GPU_THERMAL_THROTTLING).clone();
        assert_eq!(t.status, ConditionStatus::True);
        assert!(t.message.contains("slowdown is 80 °C"), "{}", t.message);
    }

    #[test]
    fn kernel_xids_find_their_gpu_by_pci_address_or_are_named_by_it() {
        let mut m = model();
        let now = SystemTime::now();
        let pci = |s: &str| PciAddr::parse(s).expect("address");
        // GPU 3 of the sim is 00000000:61:00.0; the kernel writes 0000:61:00.
        m.apply(&Observation::KernelXid {
            pci: pci("0000:61:00"),
            xid: 79,
            detail: "pid=7, name=python3, GPU has fallen off the bus.".into(),
            at: now,
        });
        let lost = status_of(&m.conditions(), GPU_LOST).clone();
        assert!(lost.message.starts_with("gpu=3 "), "{}", lost.message);
        let events = m.snapshot().events;
        assert!(
            events[0].1.message.contains("kernel: pid=7, name=python3"),
            "{}",
            events[0].1.message
        );

        // An address no GPU has: still reported, named by the address.
        m.apply(&Observation::KernelXid {
            pci: pci("0000:3b:00"),
            xid: 48,
            detail: String::new(),
            at: now,
        });
        let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
        assert_eq!(reset.status, ConditionStatus::True);
        assert!(
            reset
                .message
                .starts_with("gpu=unknown pci=0000:3b:00 (not enumerated by the driver)"),
            "{}",
            reset.message
        );
        assert_eq!(
            m.enumerated(),
            8,
            "the stranger is not counted as a GPU the driver sees"
        );
        let driver = status_of(&m.conditions(), GPU_DRIVER_NOT_READY).clone();
        assert!(
            driver.message.ends_with("8 GPUs visible"),
            "{}",
            driver.message
        );
    }

    #[test]
    fn event_backlog_is_bounded() {
        let mut m = model();
        for _ in 0..200 {
            m.apply(&Observation::Xid {
                gpu: 0,
                xid: 13,
                at: SystemTime::now(),
            });
        }
        let s = m.snapshot();
        assert_eq!(s.events.len(), EVENT_BACKLOG);
        assert_eq!(s.last_event_seq(), 200);
        assert_eq!(s.events_after(198).count(), 2);
    }
}

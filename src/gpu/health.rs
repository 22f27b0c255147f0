//! The GPU health model: per-GPU state from observations, folded into node
//! conditions (True = problem) that name every affected GPU, plus events.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::xid::{self, Action, XidInfo};
use super::{GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING, GpuIdentity, Observation};
use crate::problem::{Condition, ConditionStatus, Event, Severity};

/// Hopper's slowdown threshold (H200 fixture: slowdown 89 °C, shutdown 95 °C).
pub const DEFAULT_SLOWDOWN_CELSIUS: i32 = 89;
/// A throttling GPU must cool this far below slowdown before it counts as clear.
pub const THERMAL_HYSTERESIS_CELSIUS: i32 = 5;
// Event reasons.
pub const REASON_XID_ERROR: &str = "XIDError";
pub const REASON_XID_APP_ERROR: &str = "XIDAppError";
pub const REASON_RECOVERED: &str = "GPURecovered";

/// Recent events kept for clients that have not yet seen them.
const EVENT_BACKLOG: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LostCause {
    FellOffTheBus,
    NotResponding,
}

#[derive(Clone, Debug)]
struct GpuState {
    id: GpuIdentity,
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
    slowdown_celsius: i32,
    events: VecDeque<(u64, Event)>,
    next_seq: u64,
}

impl HealthModel {
    pub fn new(gpus: Vec<GpuIdentity>) -> Self {
        Self {
            gpus: gpus
                .into_iter()
                .map(|id| GpuState {
                    id,
                    lost: None,
                    reset_required: None,
                    throttled_at: None,
                })
                .collect(),
            slowdown_celsius: DEFAULT_SLOWDOWN_CELSIUS,
            events: VecDeque::new(),
            next_seq: 1,
        }
    }

    pub fn gpu_count(&self) -> usize {
        self.gpus.len()
    }

    /// Applies one observation. Returns false when nothing a client can see changed.
    pub fn apply(&mut self, obs: &Observation) -> bool {
        let before = self.conditions();
        let events_before = self.next_seq;
        let Some(idx) = self.gpus.iter().position(|g| g.id.index == obs.gpu()) else {
            tracing::warn!(
                gpu = obs.gpu(),
                "observation for a GPU this node does not have; ignored"
            );
            return false;
        };
        let mut events = Vec::new();
        let slowdown = self.slowdown_celsius;
        let gpu = &mut self.gpus[idx];
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
                    format!(
                        "{}: XID {xid} ({}); action: {}",
                        gpu.id,
                        info.mnemonic,
                        info.action.describe()
                    ),
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
        }
        for e in events {
            self.push_event(e);
        }
        self.next_seq != events_before || self.conditions() != before
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

    /// Node-level conditions, one per supported type, naming each affected GPU.
    pub fn conditions(&self) -> Vec<Condition> {
        let n = self.gpus.len();
        let lost: Vec<&GpuState> = self.gpus.iter().filter(|g| g.lost.is_some()).collect();
        let lost_condition = if lost.is_empty() {
            Condition::new(
                GPU_LOST,
                ConditionStatus::False,
                "NoGPULost",
                format!("all {n} GPUs answer"),
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
                        g.id, self.slowdown_celsius
                    )
                })),
            )
        };
        vec![lost_condition, reset_condition, thermal_condition]
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
        assert_eq!(c.len(), 3);
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

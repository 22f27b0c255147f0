//! Thermal throttling: the core temperature against the slowdown threshold
//! (the GPU's own, or the operator's), the thermal margin, the slowdown rate
//! from clock-event samples, the events for a GPU that starts or stops
//! throttling, and the GPUThermalThrottling condition.

use std::time::SystemTime;

use super::render::join;
use super::state::GpuState;
use super::{
    HealthModel, SLOWDOWN_CLEAR, SLOWDOWN_MIN_SAMPLES, SLOWDOWN_SET, SLOWDOWN_WINDOW,
    THERMAL_HYSTERESIS_CELSIUS,
};
use crate::gpu::GPU_THERMAL_THROTTLING;
use crate::problem::{Condition, ConditionStatus, Severity};

impl HealthModel {
    /// A core temperature reading of the GPU with index `gpu`, °C.
    pub(super) fn temperature(&mut self, gpu: u32, celsius: i32, at: SystemTime) {
        let Some(pos) = self.position(gpu) else {
            return;
        };
        let limit = self.temperature_threshold;
        let g = &mut self.gpus[pos];
        let slowdown = limit.unwrap_or(g.slowdown);
        let was = g.throttled_at.is_some();
        let now = if was {
            celsius > slowdown - THERMAL_HYSTERESIS_CELSIUS
        } else {
            celsius >= slowdown
        };
        if now == was {
            return;
        }
        g.throttled_at = now.then_some(celsius);
        let what = if now {
            format!("{celsius} °C reached {slowdown} °C")
        } else {
            format!("cooled to {celsius} °C")
        };
        self.thermal_transition(pos, now, &what, at);
    }

    /// Degrees left before the GPU slows down (≤ 0: at or past it).
    pub(super) fn thermal_margin(&mut self, gpu: u32, celsius: i32, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            let g = &mut self.gpus[pos];
            let was = g.margin_at.is_some();
            let hot = if was {
                celsius < THERMAL_HYSTERESIS_CELSIUS
            } else {
                celsius <= 0
            };
            if hot != was {
                g.margin_at = hot.then_some(celsius);
                let what = if hot {
                    format!("thermal margin {celsius} °C")
                } else {
                    format!("thermal margin back to {celsius} °C")
                };
                self.thermal_transition(pos, hot, &what, at);
            }
        }
    }

    /// The GPU's own slowdown temperature, °C.
    pub(super) fn slowdown_threshold(&mut self, gpu: u32, celsius: i32) {
        if let Some(pos) = self.position(gpu) {
            self.gpus[pos].slowdown = celsius;
        }
    }

    /// Operator thresholds: a temperature that counts as throttling instead
    /// of each GPU's own slowdown, and a memory use above which a Normal
    /// event is sent.
    pub(super) fn thresholds(&mut self, temperature: Option<i32>, memory_percent: Option<f64>) {
        self.temperature_threshold = temperature;
        self.memory_threshold = memory_percent;
    }

    /// The event for a GPU that starts or stops throttling (by any rule).
    fn thermal_transition(&mut self, pos: usize, started: bool, what: &str, at: SystemTime) {
        let (severity, reason) = if started {
            (Severity::Warn, "ThermalThrottlingStarted")
        } else {
            (Severity::Info, "ThermalThrottlingStopped")
        };
        let message = format!("{}: {what}", self.gpus[pos].id);
        self.emit(severity, at, reason, "", message);
    }

    /// One clock-event sample. Throttling by rate: slowdown active in at
    /// least 60 % of the last samples sets it, at most 20 % clears it; idle
    /// samples do not count.
    pub(super) fn clock_events(&mut self, gpu: u32, slowdown: bool, idle: bool, at: SystemTime) {
        let Some(pos) = self.position(gpu) else {
            return;
        };
        let g = &mut self.gpus[pos];
        g.last_idle = Some(idle);
        // Idle time would dilute the rate of a GPU that slows down whenever it
        // works, so idle samples do not count toward setting; they do count
        // toward clearing (an idle GPU is not throttled).
        if idle && !slowdown && !g.slowdown_throttling {
            return;
        }
        g.slowdown_samples.push_back(slowdown);
        while g.slowdown_samples.len() > SLOWDOWN_WINDOW {
            g.slowdown_samples.pop_front();
        }
        let n = g.slowdown_samples.len();
        if n < SLOWDOWN_MIN_SAMPLES {
            return;
        }
        let share = g.slowdown_samples.iter().filter(|s| **s).count() as f64 / n as f64;
        let now = if g.slowdown_throttling {
            share > SLOWDOWN_CLEAR
        } else {
            share >= SLOWDOWN_SET
        };
        if now == g.slowdown_throttling {
            return;
        }
        g.slowdown_throttling = now;
        let what = if now {
            "hardware or thermal slowdown active in most recent samples"
        } else {
            "slowdown no longer sustained"
        };
        self.thermal_transition(pos, now, what, at);
    }

    pub(super) fn thermal_condition(&self) -> Condition {
        let hot: Vec<(&GpuState, String)> = self
            .gpus
            .iter()
            .filter_map(|g| {
                let what = match (g.throttled_at, g.margin_at, g.slowdown_throttling) {
                    (Some(t), _, _) => format!(
                        "reached {t} °C, slowdown is {} °C",
                        self.temperature_threshold.unwrap_or(g.slowdown)
                    ),
                    (None, Some(m), _) => {
                        format!("thermal margin {m} °C (at or past the slowdown point)")
                    }
                    (None, None, true) => {
                        "hardware or thermal slowdown active in most of the last 10 min".to_owned()
                    }
                    (None, None, false) => return None,
                };
                Some((g, what))
            })
            .collect();
        if hot.is_empty() {
            return Condition::new(
                GPU_THERMAL_THROTTLING,
                ConditionStatus::False,
                "NoThermalThrottling",
                "all GPUs below their slowdown temperature",
            );
        }
        Condition::new(
            GPU_THERMAL_THROTTLING,
            ConditionStatus::True,
            "ThermalSlowdown",
            join(hot.iter().map(|(g, what)| {
                format!("{}: {what}; action: check cooling, airflow and power", g.id)
            })),
        )
    }
}

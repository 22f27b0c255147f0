//! The one retry backoff: exponential with ±20 % jitter, never above its
//! maximum. It serves the external monitors (reconnects), the Kubernetes and
//! external exporters (failed writes) and the task supervisor (restarts
//! after a panic), each with its own first delay, maximum and factor.

use std::time::Duration;

/// Spread of each delay around its nominal value, so that a fleet of nodes
/// that failed together does not retry together.
const JITTER: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    failures: u32,
}

impl Backoff {
    /// The `n`th delay in a row is `initial × factorⁿ⁻¹`, capped at `max`,
    /// then jittered by ±20 % and capped at `max` again.
    pub fn new(initial: Duration, max: Duration, factor: f64) -> Self {
        Self {
            initial,
            max: max.max(initial),
            factor: if factor.is_finite() && factor >= 1.0 {
                factor
            } else {
                1.0
            },
            failures: 0,
        }
    }

    /// Counts one more failure and says how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = i32::try_from(self.failures - 1).unwrap_or(i32::MAX);
        let nominal = self.initial.as_secs_f64() * self.factor.powi(exp);
        let capped = nominal.min(self.max.as_secs_f64());
        let jittered = capped * (1.0 - JITTER + 2.0 * JITTER * fastrand::f64());
        Duration::try_from_secs_f64(jittered)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts again from the first delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_its_factor_within_the_jitter_and_never_passes_the_maximum() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2.0);
        for n in 1..=40u32 {
            let d = b.next_delay().as_secs_f64();
            let nominal = (2f64.powi(n as i32 - 1)).min(60.0);
            assert!(d >= nominal * 0.8 - 1e-9, "{n}: {d}");
            assert!(d <= (nominal * 1.2).min(60.0) + 1e-9, "{n}: {d}");
        }
        assert_eq!(b.failures(), 40);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn odd_settings_are_made_safe() {
        // A factor below 1 or not a number would shrink or break the delays.
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1), f64::NAN);
        assert_eq!(b.max(), Duration::from_secs(2));
        for _ in 0..5 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(1600) && d <= Duration::from_secs(2));
        }
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::MAX, 10.0);
        for _ in 0..400 {
            huge.next_delay();
        }
    }
}

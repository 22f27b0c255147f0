//! Client-side limits on the exporter's API calls: a token bucket on the
//! tokio clock, the [`Limiter`] every request of the exporter takes a token
//! from (`--kube-api-qps`, `--kube-api-burst`), and the backoff of failed
//! writes.
//!
//! Not `governor`: its clocks are not tokio's, so the hour-long outage and
//! flapping tests (paused tokio clock) could not drive it, and one bucket
//! shared by two tasks is a dozen lines here against a crate with its own
//! dependency tree.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::MAX_BACKOFF;
use crate::backoff::Backoff;

/// A token bucket on the tokio clock.
#[derive(Debug)]
pub struct Bucket {
    capacity: f64,
    per_token: Duration,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: f64, per_token: Duration) -> Self {
        Self {
            capacity,
            per_token,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let gained = now.duration_since(self.at).as_secs_f64() / self.per_token.as_secs_f64();
        self.tokens = (self.tokens + gained).min(self.capacity);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.refill();
        // A hair of slack: the clock ticks in nanoseconds, not in tokens.
        if self.tokens >= 1.0 - 1e-6 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    pub fn next_token(&mut self) -> Instant {
        self.refill();
        if self.tokens >= 1.0 - 1e-6 {
            self.at
        } else {
            self.at + self.per_token.mul_f64(1.0 - self.tokens) + Duration::from_micros(1)
        }
    }
}

/// Client-side rate limit shared by every API call of the exporter.
#[derive(Clone, Debug)]
pub struct Limiter(Arc<Mutex<Bucket>>);

impl Limiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        let qps = if qps > 0.0 { qps } else { 500.0 };
        Self(Arc::new(Mutex::new(Bucket::new(
            f64::from(burst.max(1)),
            Duration::from_secs_f64(1.0 / qps),
        ))))
    }

    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut b = self.0.lock().await;
                if b.try_take() {
                    return;
                }
                b.next_token()
            };
            tokio::time::sleep_until(wait).await;
        }
    }
}

/// Backoff for failed writes: 2 s, 4 s, … 60 s.
pub fn backoff() -> Backoff {
    Backoff::new(Duration::from_secs(2), MAX_BACKOFF, 2.0)
}

pub fn jittered(period: Duration) -> Duration {
    period.mul_f64(0.9 + 0.2 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_on_the_tokio_clock() {
        let mut b = Bucket::new(2.0, Duration::from_secs(10));
        assert!(b.try_take() && b.try_take());
        assert!(!b.try_take());
        let at = b.next_token();
        let wait = at.duration_since(Instant::now());
        assert!(
            wait >= Duration::from_secs(10) && wait <= Duration::from_millis(10_001),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_take());
    }

    #[test]
    fn backoff_and_jitter_stay_in_bounds() {
        let mut b = backoff();
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= MAX_BACKOFF, "{d:?}");
            assert!(d >= Duration::from_millis(1600), "{d:?}");
        }
        let p = Duration::from_secs(300);
        for _ in 0..100 {
            let j = jittered(p);
            assert!(j >= p.mul_f64(0.9) && j <= p.mul_f64(1.1), "{j:?}");
        }
    }
}

//! A periodic wake-up from the kernel, for the long periods of idle loops.
//!
//! tokio's timer wheel files a deadline seconds away in a coarse level and
//! wakes at that level's slot boundary to move it down, level by level: a
//! 10 s tick costs about three wake-ups of the thread (strace: epoll
//! timeouts of 3 128 and 27 ms before the one that fires). A timerfd fires
//! once, when due, through the same epoll. [`Ticker`] is one, re-armed after
//! each tick, so a late tick delays the next (tokio's
//! `MissedTickBehavior::Delay`).
//!
//! Where a timerfd cannot be had (a seccomp profile that forbids it) the
//! ticker is a tokio interval, with the same behaviour and the old cost.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;

/// Ticks `first` from now, then `period` after each tick was taken.
#[derive(Debug)]
pub struct Ticker {
    period: Duration,
    clock: Clock,
}

#[derive(Debug)]
enum Clock {
    Kernel(AsyncFd<OwnedFd>),
    Tokio(tokio::time::Interval),
}

impl Ticker {
    /// Needs a tokio runtime with its I/O driver (or, without timerfd, its
    /// timer).
    pub fn new(first: Duration, period: Duration) -> Self {
        let clock = match kernel_timer(first) {
            Ok(fd) => Clock::Kernel(fd),
            Err(e) => {
                tracing::debug!("no timerfd ({e}); ticking with a tokio interval");
                Clock::Tokio(interval(first, period))
            }
        };
        Self { period, clock }
    }

    /// Waits for the next tick. Cancel-safe: a tick not taken stays due.
    pub async fn tick(&mut self) {
        let rearmed = match &mut self.clock {
            Clock::Tokio(i) => {
                i.tick().await;
                return;
            }
            Clock::Kernel(fd) => expire(fd, self.period).await,
        };
        if let Err(e) = rearmed {
            // A timer that could not be re-armed would never fire again.
            tracing::debug!("timerfd: {e}; ticking with a tokio interval");
            self.clock = Clock::Tokio(interval(self.period, self.period));
        }
    }
}

/// Waits for `fd` to expire, takes the expiration and arms it `period` on.
async fn expire(fd: &AsyncFd<OwnedFd>, period: Duration) -> io::Result<()> {
    loop {
        let Ok(mut ready) = fd.readable().await else {
            // The runtime is shutting down: nothing will tick again.
            return std::future::pending().await;
        };
        let mut expirations = [0u8; 8];
        match ready
            .try_io(|fd| rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from))
        {
            Ok(Ok(_)) => return arm(fd.get_ref(), period),
            Ok(Err(e)) => return Err(e),
            // Readiness that was not there after all: wait again.
            Err(_would_block) => {}
        }
    }
}

fn interval(first: Duration, period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

fn kernel_timer(first: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = rustix::time::timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    arm(&fd, first)?;
    // `AsyncFd::new` is deprecated for objects whose `as_raw_fd` may change
    // or close under it; an `OwnedFd` is one open descriptor for as long as
    // it lives, which is what `register`'s safety contract asks, without
    // an unsafe block outside the NVML module (STYLE).
    #[allow(deprecated)]
    AsyncFd::new(fd)
}

/// One expiration `after` from now (at least 1 ns: zero would disarm it).
fn arm(fd: &OwnedFd, after: Duration) -> io::Result<()> {
    let after = after.max(Duration::from_nanos(1));
    let value = Timespec {
        tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(after.subsec_nanos()),
    };
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::time::timerfd_settime(
        fd,
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: zero,
            it_value: value,
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn ticks_first_then_every_period_after_the_last_tick() {
        let start = Instant::now();
        let period = Duration::from_millis(500);
        let mut t = Ticker::new(Duration::from_millis(30), period);
        assert!(
            matches!(t.clock, Clock::Kernel(_)),
            "timerfd available here"
        );
        t.tick().await;
        let first = start.elapsed();
        assert!(first >= Duration::from_millis(30), "{first:?}");
        // Taken late (time passes here; nothing waits for anything): the
        // tick due 500 ms after the first is there without another period.
        std::thread::sleep(period + Duration::from_millis(100));
        let late = Instant::now();
        t.tick().await;
        assert!(late.elapsed() < period / 2, "{:?}", late.elapsed());
        // The next is a full period after that tick was taken.
        let taken = Instant::now();
        t.tick().await;
        let gap = taken.elapsed();
        assert!(gap >= period, "{gap:?}");
    }

    #[tokio::test]
    async fn a_tick_not_taken_stays_due() {
        let mut t = Ticker::new(Duration::from_millis(20), Duration::from_secs(3600));
        // Dropped before it was due: the tick is still to come.
        assert!(
            tokio::time::timeout(Duration::from_millis(1), t.tick())
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(5), t.tick())
            .await
            .expect("the first tick comes after all");
    }
}

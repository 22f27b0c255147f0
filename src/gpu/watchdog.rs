//! Blocking driver calls on a dedicated worker thread, under a deadline.
//!
//! A call that does not return is abandoned to its thread (a thread stuck in
//! the kernel cannot be killed). The worker then counts as stuck: it takes no
//! more calls, and its owner waits for [`Worker::returned`] before it starts
//! anything new, so a driver that hangs for hours costs one thread, not one
//! per retry. The async side never blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("did not return within {0:?}")]
    Hung(Duration),
    #[error("an earlier call has not returned for {0:?}")]
    Stuck(Duration),
    #[error("the worker thread is gone")]
    Gone,
}

/// A thread that owns `T` and runs jobs against it, one at a time, for one
/// caller at a time (each backend awaits its calls in turn).
#[derive(Debug)]
pub struct Worker<T> {
    /// The thread's name (the `worker` label of the call metrics).
    name: String,
    jobs: mpsc::Sender<Job<T>>,
    /// Calls handed to the thread…
    issued: AtomicU64,
    /// …and calls it finished (closed when the thread ends).
    done: watch::Receiver<u64>,
    /// When the call that hung was issued.
    hung_since: Mutex<Option<Instant>>,
}

impl<T: Send + 'static> Worker<T> {
    pub fn spawn(name: &str, mut state: T) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job<T>>();
        let (done_tx, done) = watch::channel(0u64);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in rx {
                    job(&mut state);
                    done_tx.send_modify(|n| *n += 1);
                }
            })?;
        // Every worker has its series from the start: 0 timeouts is a reading.
        super::metrics::calls().timeouts.with_label_values(&[name]);
        Ok(Self {
            name: name.to_owned(),
            jobs,
            issued: AtomicU64::new(0),
            done,
            hung_since: Mutex::new(None),
        })
    }

    /// Runs `f` on the worker; `Hung` when it has not returned after
    /// `deadline`, `Stuck` (without queueing `f`) while an earlier call that
    /// hung has not returned.
    pub async fn call<R: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        if let Some(for_) = self.stuck_for() {
            return Err(CallError::Stuck(for_));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        self.issued.fetch_add(1, Ordering::AcqRel);
        self.jobs
            .send(Box::new(move |state| {
                let _ = tx.send(f(state));
            }))
            .map_err(|_| CallError::Gone)?;
        let calls = super::metrics::calls();
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => {
                calls
                    .duration
                    .with_label_values(&[self.name.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                Ok(r)
            }
            Ok(Err(_)) => Err(CallError::Gone),
            Err(_) => {
                calls
                    .timeouts
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                self.lock().get_or_insert(started);
                Err(CallError::Hung(deadline))
            }
        }
    }

    /// How long the call that hung has been running, while it still runs.
    pub fn stuck_for(&self) -> Option<Duration> {
        let mut since = self.lock();
        let start = (*since)?;
        if *self.done.borrow() >= self.issued.load(Ordering::Acquire) {
            *since = None;
            return None;
        }
        Some(start.elapsed())
    }

    /// Resolves once every call handed to the thread has returned (at once
    /// when none is pending), or the thread is gone.
    pub async fn returned(&self) {
        let issued = self.issued.load(Ordering::Acquire);
        let mut done = self.done.clone();
        let _ = done.wait_for(|n| *n >= issued).await;
        *self.lock() = None;
    }

    /// [`returned`](Self::returned), calling `on_tick` at every tick of
    /// `tick` meanwhile (its owner beats liveness: a hung driver is not a
    /// stalled backend); false when `token` is cancelled first.
    pub async fn wait_returned(
        &self,
        tick: &mut tokio::time::Interval,
        token: &CancellationToken,
        mut on_tick: impl FnMut(),
    ) -> bool {
        let returned = self.returned();
        tokio::pin!(returned);
        loop {
            tokio::select! {
                () = &mut returned => return true,
                _ = tick.tick() => on_tick(),
                () = token.cancelled() => return false,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.hung_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hung_call_makes_the_worker_stuck_until_it_returns() {
        let (release, blocked) = mpsc::channel::<()>();
        let worker = Worker::spawn("test-worker", 0u32).expect("spawn");
        assert_eq!(
            worker
                .call(Duration::from_secs(5), |n| {
                    *n += 1;
                    *n
                })
                .await,
            Ok(1)
        );
        assert_eq!(worker.stuck_for(), None);
        let r = worker
            .call(Duration::from_millis(50), move |_| blocked.recv().is_ok())
            .await;
        assert_eq!(r, Err(CallError::Hung(Duration::from_millis(50))));
        assert!(worker.stuck_for().is_some(), "the hung call still runs");
        // No call queues behind the stuck one.
        assert!(matches!(
            worker.call(Duration::from_secs(5), |n| *n).await,
            Err(CallError::Stuck(_))
        ));
        release.send(()).expect("unblock the stuck call");
        tokio::time::timeout(Duration::from_secs(5), worker.returned())
            .await
            .expect("returned() resolves once the call returns");
        assert_eq!(worker.stuck_for(), None);
        // The same thread goes on: no new one was needed.
        assert_eq!(worker.call(Duration::from_secs(5), |n| *n).await, Ok(1));
    }
}

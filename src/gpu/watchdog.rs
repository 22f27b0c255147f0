//! Blocking driver calls on a dedicated worker thread, under a deadline.
//!
//! A call that does not return is abandoned together with its thread (a
//! thread stuck in the kernel cannot be killed); the owner reports the hang
//! and starts a fresh worker. The async side never blocks.

use std::sync::mpsc;
use std::time::Duration;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("did not return within {0:?}")]
    Hung(Duration),
    #[error("the worker thread is gone")]
    Gone,
}

/// A thread that owns `T` and runs jobs against it, one at a time.
#[derive(Debug)]
pub struct Worker<T> {
    jobs: mpsc::Sender<Job<T>>,
}

impl<T: Send + 'static> Worker<T> {
    pub fn spawn(name: &str, mut state: T) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job<T>>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in rx {
                    job(&mut state);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the worker; `Hung` when it has not returned after `deadline`.
    pub async fn call<R: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |state| {
                let _ = tx.send(f(state));
            }))
            .map_err(|_| CallError::Gone)?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(CallError::Gone),
            Err(_) => Err(CallError::Hung(deadline)),
        }
    }
}

/// Runs `f` once on a thread of its own under a deadline (work that comes
/// before a worker exists, such as loading the driver library).
pub async fn run_once<R: Send + 'static>(
    name: &str,
    deadline: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, CallError> {
    let worker = Worker::spawn(name, ()).map_err(|_| CallError::Gone)?;
    worker.call(deadline, move |()| f()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hung_call_is_reported_and_a_fresh_worker_goes_on() {
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
        let r = worker
            .call(Duration::from_millis(50), move |_| blocked.recv().is_ok())
            .await;
        assert_eq!(r, Err(CallError::Hung(Duration::from_millis(50))));
        // The stuck worker's queue is behind the hung call: a fresh one answers.
        let fresh = Worker::spawn("test-worker-2", 10u32).expect("spawn");
        assert_eq!(fresh.call(Duration::from_secs(5), |n| *n).await, Ok(10));
        release.send(()).expect("unblock the abandoned thread");
        assert_eq!(run_once("once", Duration::from_secs(5), || 7).await, Ok(7));
    }
}

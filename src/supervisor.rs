//! Keeps long-lived tasks running. Each runs in a task of its own; one that
//! panics is logged with its message, counted
//! (`npd_ext_task_panics_total{task}`), shown by `/healthz` while it waits,
//! and started again from its recipe after a backoff (1 s doubling to
//! 5 min, back to 1 s after 10 min without a panic). A task that keeps
//! panicking keeps `/healthz` failing long enough for the kubelet's liveness
//! probe to restart the container: escalation to a fresh process.
//!
//! Release builds unwind (`panic = "unwind"` in Cargo.toml) so that this
//! works; a panic in a thread of our own ends that thread, and its owner
//! notices the closed channel.

use std::time::Duration;

use prometheus::{IntCounterVec, Registry};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::exporter::prometheus::{counter_vec, register};
use crate::liveness::{Liveness, Pulse};
use crate::shutdown::Shutdown;

/// First restart delay, longest one, and the run that resets them.
const FIRST_RESTART: Duration = Duration::from_secs(1);
const MAX_RESTART: Duration = Duration::from_secs(300);
const HEALTHY_RUN: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct Supervisor {
    shutdown: Shutdown,
    liveness: Liveness,
    panics: Option<IntCounterVec>,
}

impl Supervisor {
    pub fn new(shutdown: &Shutdown, liveness: &Liveness) -> Self {
        Self {
            shutdown: shutdown.clone(),
            liveness: liveness.clone(),
            panics: None,
        }
    }

    /// Counts panics on `registry` as `npd_ext_task_panics_total{task}`.
    pub fn with_metrics(mut self, registry: &Registry) -> Self {
        let c = counter_vec(
            "npd_ext_task_panics_total",
            "Panics of long-lived tasks, each followed by a restart",
            &["task"],
        );
        register(registry, &c);
        self.panics = Some(c);
        self
    }

    /// Runs `make(pulse)` until it returns, starting it again whenever it
    /// panics. `first`: when the task promises its first beat on `pulse`
    /// (`None`: it promises none and is only watched for ending).
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, first: Option<Duration>, make: F)
    where
        F: FnMut(Pulse) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with(name, first, make, |_| std::future::ready(()));
    }

    /// As `spawn`, and `on_panic(message)` runs after each panic, before the
    /// wait: for telling whoever relies on the task that it is down.
    pub fn spawn_with<F, Fut, H, HFut>(
        &self,
        name: impl Into<String>,
        first: Option<Duration>,
        mut make: F,
        mut on_panic: H,
    ) where
        F: FnMut(Pulse) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        H: FnMut(String) -> HFut + Send + 'static,
        HFut: Future<Output = ()> + Send,
    {
        let name = name.into();
        let slot = self.liveness.slot(name.clone());
        let token = self.shutdown.token().clone();
        let panics = self.panics.clone();
        if let Some(p) = &panics {
            p.with_label_values(&[name.as_str()]).reset();
        }
        self.shutdown.spawn(async move {
            let mut backoff = Backoff::new(FIRST_RESTART, MAX_RESTART, 2.0);
            loop {
                let started = Instant::now();
                let message = match tokio::spawn(make(slot.pulse(first))).await {
                    Ok(()) => return,
                    Err(e) => match e.try_into_panic() {
                        Ok(payload) => panic_message(payload.as_ref()),
                        // Cancelled: the runtime is going away.
                        Err(_) => return,
                    },
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                slot.panicked(&message, delay);
                if let Some(p) = &panics {
                    p.with_label_values(&[name.as_str()]).inc();
                }
                tracing::error!(
                    task = %name,
                    panics_in_a_row = backoff.failures(),
                    "task panicked: {message}; restarting it in {delay:.1?}"
                );
                on_panic(message).await;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = token.cancelled() => return,
                }
                tracing::info!(task = %name, "task restarted after a panic");
            }
        });
    }

    /// As `spawn`, for a task that makes no liveness promises.
    pub fn spawn_plain<F, Fut>(&self, name: impl Into<String>, make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_plain_with(name, make, |_| std::future::ready(()));
    }

    /// As `spawn_plain`, with `spawn_with`'s `on_panic`.
    pub fn spawn_plain_with<F, Fut, H, HFut>(
        &self,
        name: impl Into<String>,
        mut make: F,
        on_panic: H,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        H: FnMut(String) -> HFut + Send + 'static,
        HFut: Future<Output = ()> + Send,
    {
        self.spawn_with(
            name,
            None,
            move |pulse| {
                let task = make();
                async move {
                    task.await;
                    drop(pulse);
                }
            },
            on_panic,
        );
    }
}

/// What a panic said (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Panics go to the log (with where they happened) instead of bare stderr,
/// so that they reach the same collector as everything else.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "panic: {}",
            panic_message(info.payload())
        );
    }));
}

#[cfg(test)]
#[allow(clippy::panic)] // the tasks under test panic on purpose
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_reported_restarted_with_backoff_and_counted() {
        let shutdown = Shutdown::new();
        let liveness = Liveness::new();
        let registry = Registry::new();
        let sup = Supervisor::new(&shutdown, &liveness).with_metrics(&registry);
        let runs = Arc::new(AtomicU32::new(0));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let r = Arc::clone(&runs);
        let token = shutdown.token().clone();
        sup.spawn("flaky", Some(Duration::from_secs(30)), move |pulse| {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            let started_tx = started_tx.clone();
            let token = token.clone();
            async move {
                let _ = started_tx.send((n, Instant::now()));
                if n <= 3 {
                    panic!("run {n} failed");
                }
                pulse.beat(Duration::from_secs(30));
                token.cancelled().await;
            }
        });
        let mut times = Vec::new();
        for want in 1..=4 {
            let (n, at) = started.recv().await.expect("a run");
            assert_eq!(n, want);
            times.push(at);
            if n <= 3 {
                // Reported while it waits for its restart.
                tokio::task::yield_now().await;
            }
        }
        // 1 s, 2 s, 4 s (±20 %) between the runs.
        for (i, nominal) in [1.0f64, 2.0, 4.0].iter().enumerate() {
            let gap = (times[i + 1] - times[i]).as_secs_f64();
            assert!(
                gap >= nominal * 0.8 && gap <= nominal * 1.2 + 0.01,
                "gap {i}: {gap}"
            );
        }
        assert!(liveness.stalled().is_empty(), "{:?}", liveness.stalled());
        assert_eq!(
            liveness.recovered(),
            vec!["flaky (restarted after 3 panics; last: run 3 failed)".to_owned()]
        );
        let text = crate::exporter::prometheus::render(&registry).expect("render");
        assert!(
            text.contains("npd_ext_task_panics_total{task=\"flaky\"} 3"),
            "{text}"
        );
        assert!(shutdown.drain(Duration::from_secs(1)).await);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn on_panic_hears_each_panic_before_the_restart() {
        let shutdown = Shutdown::new();
        let sup = Supervisor::new(&shutdown, &Liveness::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, started) = (Arc::clone(&runs), tx.clone());
        let token = shutdown.token().clone();
        sup.spawn_plain_with(
            "backend",
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                let (started, token) = (started.clone(), token.clone());
                async move {
                    let _ = started.send(format!("run {n}"));
                    if n == 1 {
                        panic!("first run failed");
                    }
                    token.cancelled().await;
                }
            },
            move |message| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(format!("down: {message}"));
                }
            },
        );
        let mut heard = Vec::new();
        for _ in 0..3 {
            heard.push(rx.recv().await.expect("news"));
        }
        assert_eq!(heard, ["run 1", "down: first run failed", "run 2"]);
        assert!(shutdown.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_before_a_restart_shows_on_stalled_and_ends_with_shutdown() {
        let shutdown = Shutdown::new();
        let liveness = Liveness::new();
        let sup = Supervisor::new(&shutdown, &liveness);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        sup.spawn_plain("doomed", move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                panic!("always");
            }
        });
        rx.recv().await.expect("first run");
        // Let the supervisor see the panic, without letting the clock move.
        let mut stalled = Vec::new();
        for _ in 0..100 {
            stalled = liveness.stalled();
            if !stalled.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(stalled.len(), 1);
        assert!(
            stalled[0].starts_with("doomed (panicked: always; restart 1 in "),
            "{stalled:?}"
        );
        // Shutdown does not wait for the restart.
        assert!(shutdown.drain(Duration::from_millis(100)).await);
    }
}

//! The custom plugin monitor: runs NPD's exit-code plugins (0 → OK/`False`,
//! 1 → problem/`True`, anything else, a signal or a timeout → `Unknown`) on
//! their intervals and keeps the conditions of the permanent rules.
//!
//! Each run is its own process group. A run that outlives its timeout has
//! the whole group killed, and the monitor never waits on a child stuck in
//! `D` state: after the kill it waits at most [`KILL_GRACE`], then leaves
//! the reaping to a background task. When a plugin exits, whatever it left
//! running in its group is killed and reaped (the detector makes itself a
//! child subreaper so orphans come to it rather than piling up as zombies
//! under a container's PID 1). Runs are limited to `concurrency` at once; a
//! rule never overlaps itself, and a late rule runs once, not once per
//! missed tick.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conditions::MonitorId;
use crate::config::custom::{CustomPluginConfig, CustomRule};
use crate::config::duration::format_go;
use crate::config::syslog::RuleKind;
use crate::liveness::Pulse;
use crate::monitor::{Report, Update};
use crate::problem::{Condition, ConditionStatus, Event, Severity, Status, cut};

/// How much of each stream is kept (NPD's limit); the rest is drained.
pub const OUTPUT_LIMIT: usize = 4096;
/// After a kill, how long to wait for the child before leaving it behind.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// After a plugin exits, how long its leftovers may keep its pipes open.
const LINGER: Duration = Duration::from_millis(100);

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: ConditionStatus,
    /// Trimmed stdout, cut to `max_output_length` on a character boundary
    /// (or why the plugin could not give one).
    pub message: String,
}

/// Runs a plugin once: `timeout` kills its whole process group.
pub async fn execute(rule: &CustomRule, timeout: Duration, max_output: usize) -> Outcome {
    let mut cmd = tokio::process::Command::new(&rule.path);
    cmd.args(&rule.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                status: ConditionStatus::Unknown,
                message: format!("cannot run {}: {e}", rule.path.display()),
            };
        }
    };
    let pgid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(i32::try_from(p).ok()?));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut stdout = Capture::start(stdout);
    let stderr = Capture::start(stderr);

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let (status, prefix) = match &waited {
        Ok(Ok(exit)) => (
            match exit.code() {
                Some(0) => ConditionStatus::False,
                Some(1) => ConditionStatus::True,
                _ => ConditionStatus::Unknown,
            },
            match exit.code() {
                Some(0 | 1) => None,
                _ => Some(format!("plugin {} ended with {exit}", rule.path.display())),
            },
        ),
        Ok(Err(e)) => (
            ConditionStatus::Unknown,
            Some(format!("cannot wait for {}: {e}", rule.path.display())),
        ),
        Err(_) => (
            ConditionStatus::Unknown,
            Some(format!(
                "Timeout when running plugin {:?}: killed after {}",
                rule.path.display().to_string(),
                format_go(timeout)
            )),
        ),
    };
    let exited = matches!(waited, Ok(Ok(_)));
    // After a plain exit the pipes close at once, unless something the
    // plugin left running holds them: it gets a moment, then the group goes.
    if exited {
        stdout.wait_eof(LINGER).await;
    }
    if let Some(pgid) = pgid {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
    if exited {
        if let Some(pgid) = pgid {
            reap_group(pgid).await;
        }
    } else if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        // Never wait on a child stuck in D state.
        tracing::warn!(plugin = %rule.path.display(), "plugin did not die within {KILL_GRACE:?} of SIGKILL (D state?); leaving it to be reaped later");
        tokio::spawn(async move {
            let _ = child.wait().await;
            if let Some(pgid) = pgid {
                reap_group(pgid).await;
            }
        });
    } else if let Some(pgid) = pgid {
        reap_group(pgid).await;
    }
    // The group is dead, so the pipes close; unless a process stuck in D
    // state holds them, which must not hold us.
    let stdout = stdout.finish(KILL_GRACE).await;
    let stderr = stderr.finish(LINGER).await;
    let stderr = String::from_utf8_lossy(&stderr);
    if !stderr.trim().is_empty() {
        tracing::debug!(plugin = %rule.path.display(), "plugin stderr: {}", stderr.trim());
    }
    let out = String::from_utf8_lossy(&stdout);
    let out = out.trim();
    let message = match prefix {
        Some(p) if out.is_empty() => p,
        Some(p) => format!("{p}; output: {out}"),
        None => out.to_owned(),
    };
    Outcome {
        status,
        message: cut(&message, max_output).trim_end().to_owned(),
    }
}

/// One output stream of a plugin, read on a task of its own: up to
/// [`OUTPUT_LIMIT`] bytes are kept and the rest drained, so a chatty plugin
/// never blocks on a full pipe, and what was read is there even when the
/// pipe never closes (a process out of reach holds it).
struct Capture {
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
    eof: tokio::sync::oneshot::Receiver<()>,
    ended: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Capture {
    fn start<R: AsyncRead + Unpin + Send + 'static>(r: Option<R>) -> Self {
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, eof) = tokio::sync::oneshot::channel();
        let into = kept.clone();
        let task = tokio::spawn(async move {
            if let Some(mut r) = r {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = r.read(&mut buf).await {
                    let mut kept = into
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            let _ = tx.send(());
        });
        Self {
            kept,
            eof,
            ended: false,
            task,
        }
    }

    /// Waits up to `d` for the end of the stream.
    async fn wait_eof(&mut self, d: Duration) {
        if !self.ended {
            self.ended = tokio::time::timeout(d, &mut self.eof).await.is_ok();
        }
    }

    /// What was read, after waiting up to `d` for the end of the stream.
    async fn finish(mut self, d: Duration) -> Vec<u8> {
        self.wait_eof(d).await;
        self.task.abort();
        std::mem::take(
            &mut *self
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Reaps what of a killed group was handed to us (as a subreaper): for
/// [`KILL_GRACE`] here, then in the background (a member stuck in D state
/// dies late) for up to ten minutes. Only that group is waited for, so no
/// other child's exit is taken from its owner.
async fn reap_group(pgid: rustix::process::Pid) {
    let until = Instant::now() + KILL_GRACE;
    if reap_until(pgid, until, Duration::from_millis(5)).await {
        return;
    }
    tokio::spawn(async move {
        reap_until(
            pgid,
            Instant::now() + Duration::from_secs(600),
            Duration::from_secs(1),
        )
        .await;
    });
}

/// Whether the group has no child of ours left by `until`.
async fn reap_until(pgid: rustix::process::Pid, until: Instant, every: Duration) -> bool {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    loop {
        match waitid(
            WaitId::Pgid(Some(pgid)),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            // One reaped: there may be more.
            Ok(Some(_)) => continue,
            // Some are still running (dying).
            Ok(None) => {}
            // ECHILD: none of the group is ours (any more).
            Err(_) => return true,
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The conditions a custom plugin monitor keeps, and NPD's rules for them.
#[derive(Debug)]
pub struct PluginState {
    cfg: CustomPluginConfig,
    conditions: Vec<Condition>,
}

impl PluginState {
    pub fn new(cfg: CustomPluginConfig, now: SystemTime) -> Self {
        let conditions = super::default_conditions(&cfg.conditions, now);
        Self { cfg, conditions }
    }

    pub fn status(&self, events: Vec<Event>) -> Status {
        Status {
            source: self.cfg.source.clone(),
            events,
            conditions: self.conditions.clone(),
        }
    }

    /// Applies one run's outcome (NPD's state machine, §3.8 of the
    /// inventory); `None` when nothing changed.
    pub fn apply(&mut self, rule: usize, o: &Outcome, now: SystemTime) -> Option<Status> {
        let rule = &self.cfg.rules[rule];
        if rule.kind == RuleKind::Temporary {
            if o.status == ConditionStatus::False {
                return None;
            }
            return Some(self.status(vec![Event {
                severity: Severity::Warn,
                timestamp: now,
                reason: rule.reason.clone(),
                message: o.message.clone(),
            }]));
        }
        let i = self
            .conditions
            .iter()
            .position(|c| Some(&c.type_) == rule.condition.as_ref())?;
        let decl = &self.cfg.conditions[i];
        let c = &mut self.conditions[i];
        let (reason, message) = match o.status {
            ConditionStatus::True => (rule.reason.clone(), o.message.clone()),
            ConditionStatus::False => (decl.reason.clone(), decl.message.clone()),
            ConditionStatus::Unknown => (decl.reason.clone(), o.message.clone()),
        };
        let changed = if c.status != o.status {
            true
        } else if o.status == ConditionStatus::True {
            c.reason != reason || (self.cfg.message_change_updates && c.message != message)
        } else {
            false
        };
        if !changed {
            return None;
        }
        c.status = o.status;
        c.reason = reason;
        c.message = message;
        c.transition = Some(now);
        let event = Event {
            severity: if o.status == ConditionStatus::True {
                Severity::Warn
            } else {
                Severity::Info
            },
            timestamp: now,
            reason: c.reason.clone(),
            message: super::change_message(c),
        };
        Some(self.status(vec![event]))
    }
}

/// The longest a healthy monitor goes between two finished runs: its
/// slowest rule's interval and timeout, and some slack.
fn cycle(cfg: &CustomPluginConfig) -> Duration {
    cfg.rules
        .iter()
        .map(|r| {
            r.invoke_interval.unwrap_or(cfg.invoke_interval) + r.timeout.unwrap_or(cfg.timeout)
        })
        .max()
        .unwrap_or(cfg.invoke_interval + cfg.timeout)
        + Duration::from_secs(30)
}

/// How often the monitor confirms its conditions (each finished run does):
/// past it, the condition manager holds them `Unknown`.
pub fn confirm_period(cfg: &CustomPluginConfig) -> Duration {
    cycle(cfg) * 2
}

/// Runs one custom plugin monitor until `token` is cancelled.
pub async fn run(
    id: MonitorId,
    cfg: CustomPluginConfig,
    reports: mpsc::Sender<Report>,
    pulse: Pulse,
    token: CancellationToken,
) {
    // Orphans of plugins come to us, so they can be reaped (see above).
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::debug!("cannot become a child subreaper: {e}");
    }
    let mut state = PluginState::new(cfg.clone(), SystemTime::now());
    let report = |status| Report {
        monitor: id,
        update: Update::Status(status),
    };
    // NPD sends every condition False before the first run, so a restart
    // flips a True condition to False and back. Here the first status waits
    // for the first result of every rule (at most the longest timeout), and
    // carries what they found and the events they made on the way.
    let n = cfg.rules.len();
    let mut first_pending = if cfg.skip_initial_status { 0 } else { n };
    let mut reported = vec![false; n];
    let mut first_events = Vec::new();
    if !cfg.skip_initial_status
        && n == 0
        && reports
            .send(report(state.status(Vec::new())))
            .await
            .is_err()
    {
        return;
    }
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, Outcome)>(n.max(1));
    let mut running = vec![false; n];
    let intervals: Vec<Duration> = cfg
        .rules
        .iter()
        .map(|r| r.invoke_interval.unwrap_or(cfg.invoke_interval))
        .collect();
    // Every rule runs once at start, then on its own interval.
    let start = Instant::now();
    let mut due: Vec<Instant> = intervals.iter().map(|i| start + *i).collect();
    let launch = |i: usize, running: &mut Vec<bool>| {
        if running[i] {
            tracing::debug!(rule = i, "previous run still going; not starting another");
            return;
        }
        running[i] = true;
        let rule = cfg.rules[i].clone();
        let timeout = rule.timeout.unwrap_or(cfg.timeout);
        let max_output = cfg.max_output_length;
        let limit = limit.clone();
        let done = done_tx.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            if token.is_cancelled() {
                return;
            }
            let outcome = execute(&rule, timeout, max_output).await;
            let _ = done.send((i, outcome)).await;
        });
    };
    for i in 0..n {
        launch(i, &mut running);
    }
    tracing::info!(monitor = %cfg.source, config = %cfg.file.display(), rules = n, "custom plugin monitor started");
    let beat = cycle(&cfg);
    loop {
        pulse.beat(beat * 2);
        let next = due.iter().min().copied();
        tokio::select! {
            d = done_rx.recv() => {
                let Some((i, outcome)) = d else { break };
                running[i] = false;
                if outcome.status != ConditionStatus::False {
                    tracing::debug!(rule = i, plugin = %cfg.rules[i].path.display(), status = %outcome.status, "{}", outcome.message);
                }
                let applied = state.apply(i, &outcome, SystemTime::now());
                if first_pending > 0 {
                    if !std::mem::replace(&mut reported[i], true) {
                        first_pending -= 1;
                    }
                    first_events.extend(applied.into_iter().flat_map(|s| s.events));
                    if first_pending == 0 {
                        let first = state.status(std::mem::take(&mut first_events));
                        if reports.send(report(first)).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                // A run that changed nothing confirms what stands.
                let update = applied.map_or(Update::Alive, Update::Status);
                if reports.send(Report { monitor: id, update }).await.is_err() {
                    break;
                }
            }
            () = crate::shutdown::sleep_until_opt(next) => {
                let now = Instant::now();
                for i in 0..n {
                    if due[i] <= now {
                        launch(i, &mut running);
                        // One run for however many ticks were missed.
                        while due[i] <= now {
                            due[i] += intervals[i];
                        }
                    }
                }
            }
            () = token.cancelled() => break,
        }
    }
}

/// Whether a plugin path can be run here (for start-up warnings).
pub fn runnable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::custom;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn rule(path: PathBuf) -> CustomRule {
        CustomRule {
            kind: RuleKind::Permanent,
            condition: Some("C".into()),
            reason: "Bad".into(),
            path,
            args: Vec::new(),
            timeout: None,
            invoke_interval: None,
        }
    }

    /// Whether a process is gone or a zombie, waiting up to 5 s for the
    /// kernel to finish a SIGKILL.
    fn dead(pid: &str) -> bool {
        let stat = format!("/proc/{}/stat", pid.trim());
        let until = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::read_to_string(&stat) {
                Err(_) => return true,
                Ok(s)
                    if s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z')) =>
                {
                    return true;
                }
                Ok(_) if std::time::Instant::now() > until => return false,
                Ok(_) => std::thread::yield_now(),
            }
        }
    }

    #[tokio::test]
    async fn exit_codes_map_like_npd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Duration::from_secs(10);
        for (body, want) in [
            ("echo all good; exit 0", ConditionStatus::False),
            ("echo broken; exit 1", ConditionStatus::True),
            ("echo unsure; exit 2", ConditionStatus::Unknown),
            ("exit 3", ConditionStatus::Unknown),
            ("kill -9 $$", ConditionStatus::Unknown),
        ] {
            let p = script(dir.path(), "check.sh", body);
            let o = execute(&rule(p), t, 80).await;
            assert_eq!(o.status, want, "{body}: {o:?}");
        }
        let p = script(dir.path(), "ok.sh", "echo '  all good  '");
        assert_eq!(execute(&rule(p), t, 80).await.message, "all good");
        let o = execute(&rule(dir.path().join("missing.sh")), t, 80).await;
        assert_eq!(o.status, ConditionStatus::Unknown);
        assert!(o.message.contains("missing.sh"), "{o:?}");
    }

    #[tokio::test]
    async fn output_is_cut_on_a_character_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = script(
            dir.path(),
            "long.sh",
            "printf 'h\\303\\251llo w\\303\\266rld'; exit 1",
        );
        let o = execute(&rule(p.clone()), Duration::from_secs(10), 2).await;
        assert_eq!(o.message, "h", "é would be split at byte 2");
        let o = execute(&rule(p.clone()), Duration::from_secs(10), 3).await;
        assert_eq!(o.message, "hé");
        // A plugin writing far more than the pipe holds is not blocked.
        let p = script(
            dir.path(),
            "chatty.sh",
            "head -c 1000000 /dev/zero | tr '\\0' x; exit 1",
        );
        let o = execute(&rule(p), Duration::from_secs(10), 80).await;
        assert_eq!((o.status, o.message.len()), (ConditionStatus::True, 80));
        assert_eq!(cut("abc", 0), "");
    }

    #[tokio::test]
    async fn timeouts_kill_the_whole_group_even_children_that_ignore_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let p = script(
            dir.path(),
            "stuck.sh",
            &format!(
                "sh -c 'trap \"\" TERM; sleep 60' &\necho $! > {}\necho partial\nsleep 60",
                pidfile.display()
            ),
        );
        let started = std::time::Instant::now();
        let o = execute(&rule(p), Duration::from_millis(500), 200).await;
        let took = started.elapsed();
        assert_eq!(o.status, ConditionStatus::Unknown);
        assert!(
            o.message.starts_with("Timeout when running plugin")
                && o.message.contains("killed after 500ms"),
            "{o:?}"
        );
        assert!(o.message.ends_with("output: partial"), "{o:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        let pid = std::fs::read_to_string(&pidfile).expect("pid written");
        assert!(dead(&pid), "the child that ignored SIGTERM survived");
    }

    #[tokio::test]
    async fn a_process_holding_the_pipes_out_of_reach_does_not_hold_the_monitor() {
        // `setsid` puts the sleeper in a group of its own, where the kill
        // cannot reach; with the pipe it holds open it stands in for a child
        // stuck in D state.
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("escaped.pid");
        let escape = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 60' &",
            pidfile.display()
        );
        for (body, timeout, want) in [
            (
                format!("{escape}\necho done\nexit 1"),
                Duration::from_secs(10),
                ConditionStatus::True,
            ),
            (
                format!("{escape}\nsleep 60"),
                Duration::from_millis(300),
                ConditionStatus::Unknown,
            ),
        ] {
            let p = script(dir.path(), "escape.sh", &body);
            let started = std::time::Instant::now();
            let o = execute(&rule(p), timeout, 80).await;
            assert_eq!(o.status, want, "{o:?}");
            if want == ConditionStatus::True {
                assert_eq!(o.message, "done", "what was written before exit is kept");
            }
            let took = started.elapsed();
            assert!(took < timeout + KILL_GRACE * 3, "{took:?} for {o:?}");
            if let Ok(pid) = std::fs::read_to_string(&pidfile)
                && let Some(pid) = pid
                    .trim()
                    .parse()
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    #[tokio::test]
    async fn each_rule_runs_on_its_own_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fast_log, slow_log) = (dir.path().join("fast"), dir.path().join("slow"));
        let fast = script(
            dir.path(),
            "fast.sh",
            &format!("echo run >> {}", fast_log.display()),
        );
        let slow = script(
            dir.path(),
            "slow.sh",
            &format!("echo run >> {}", slow_log.display()),
        );
        let cfg = config(&format!(
            r#"{{"plugin": "custom", "pluginConfig": {{"invoke_interval": "1h", "timeout": "60s"}}, "source": "s",
                 "conditions": [{{"type": "F", "reason": "FOK", "message": "ok"}}],
                 "rules": [{{"type": "permanent", "condition": "F", "reason": "FBad", "path": "{}", "invoke_interval": "50ms"}},
                           {{"type": "temporary", "reason": "S", "path": "{}"}}]}}"#,
            fast.display(),
            slow.display()
        ));
        let m = Running::start(cfg);
        let runs = |p: &Path| std::fs::read_to_string(p).map_or(0, |s| s.lines().count());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while runs(&fast_log) < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "the 50ms rule ran {} times",
                runs(&fast_log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs(&slow_log), 1, "the 1h rule runs once, at start");
        m.stop().await;
    }

    #[tokio::test]
    async fn leftovers_of_a_finished_plugin_are_killed_and_reaped() {
        // As the monitor does: orphans of plugins come to this process.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = script(dir.path(), "daemonish.sh", "sleep 300 &\necho $!\nexit 0");
        let started = std::time::Instant::now();
        let o = execute(&rule(p), Duration::from_secs(10), 80).await;
        assert_eq!(o.status, ConditionStatus::False);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(dead(&o.message), "background child {} survived", o.message);
        // Reaped, not left as a zombie: its /proc entry is gone.
        let proc = format!("/proc/{}", o.message.trim());
        assert!(
            !Path::new(&proc).exists(),
            "{proc} is still there: {:?}",
            std::fs::read_to_string(format!("{proc}/stat"))
        );
    }

    /// A monitor running on a task, and the statuses it reports.
    struct Running {
        rx: mpsc::Receiver<Report>,
        token: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _live: crate::liveness::Liveness,
    }

    impl Running {
        fn start(cfg: CustomPluginConfig) -> Self {
            let (tx, rx) = mpsc::channel(16);
            let token = CancellationToken::new();
            let live = crate::liveness::Liveness::new();
            let pulse = live.register("c", Duration::from_secs(60));
            let task = tokio::spawn(run(0, cfg, tx, pulse, token.clone()));
            Self {
                rx,
                token,
                task,
                _live: live,
            }
        }

        async fn next(&mut self) -> Status {
            let r = tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
                .await
                .expect("a report within 20 s")
                .expect("monitor running");
            let Update::Status(s) = r.update else {
                panic!("{r:?}")
            };
            s
        }

        async fn stop(self) {
            self.token.cancel();
            self.task.await.expect("monitor ends");
        }
    }

    fn config(text: &str) -> CustomPluginConfig {
        let c = custom::check(Path::new("c.json"), text);
        c.config.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
    }

    #[test]
    fn permanent_state_machine() {
        let cfg = config(
            r#"{"plugin": "custom", "pluginConfig": {"enable_message_change_based_condition_update": true},
                "source": "s", "conditions": [{"type": "C", "reason": "Fine", "message": "all fine"}],
                "rules": [{"type": "permanent", "condition": "C", "reason": "Bad", "path": "/bin/true"},
                          {"type": "temporary", "reason": "Blip", "path": "/bin/true"}]}"#,
        );
        let now = SystemTime::now();
        let mut s = PluginState::new(cfg, now);
        let o = |status, m: &str| Outcome {
            status,
            message: m.into(),
        };
        assert!(s.apply(0, &o(ConditionStatus::False, "x"), now).is_none());
        let st = s
            .apply(0, &o(ConditionStatus::True, "disk full"), now)
            .expect("change");
        assert_eq!(st.conditions[0].reason, "Bad");
        assert_eq!(st.events[0].severity, Severity::Warn);
        // Same message: nothing. New message: an update (the flag is on).
        assert!(
            s.apply(0, &o(ConditionStatus::True, "disk full"), now)
                .is_none()
        );
        assert!(
            s.apply(0, &o(ConditionStatus::True, "disk fuller"), now)
                .is_some()
        );
        // Unknown keeps the output as message, with the default reason.
        let st = s
            .apply(0, &o(ConditionStatus::Unknown, "timeout"), now)
            .expect("change");
        assert_eq!(
            (
                st.conditions[0].reason.as_str(),
                st.conditions[0].message.as_str()
            ),
            ("Fine", "timeout")
        );
        assert_eq!(st.events[0].severity, Severity::Info);
        let st = s
            .apply(0, &o(ConditionStatus::False, "ok"), now)
            .expect("change");
        assert_eq!(st.conditions[0].message, "all fine");
        // Temporary: an event for NonOK and Unknown, nothing for OK.
        assert!(s.apply(1, &o(ConditionStatus::False, "ok"), now).is_none());
        let st = s
            .apply(1, &o(ConditionStatus::Unknown, "?"), now)
            .expect("event");
        assert_eq!(st.events[0].reason, "Blip");
    }

    #[tokio::test]
    async fn the_first_status_waits_for_every_rule_so_a_restart_does_not_flap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = script(dir.path(), "bad.sh", "echo disk full; exit 1");
        let slow = script(dir.path(), "slow.sh", "sleep 0.3; echo fine; exit 0");
        let cfg = config(&format!(
            r#"{{"plugin": "custom", "pluginConfig": {{"invoke_interval": "1h", "timeout": "60s"}}, "source": "s",
                 "conditions": [{{"type": "Disk", "reason": "DiskOK", "message": "ok"}},
                                {{"type": "Other", "reason": "OtherOK", "message": "ok"}},
                                {{"type": "Unused", "reason": "UnusedOK", "message": "ok"}}],
                 "rules": [{{"type": "permanent", "condition": "Disk", "reason": "DiskFull", "path": "{}"}},
                           {{"type": "temporary", "reason": "Blip", "path": "{}"}},
                           {{"type": "permanent", "condition": "Other", "reason": "OtherBad", "path": "{}"}}]}}"#,
            bad.display(),
            bad.display(),
            slow.display()
        ));
        let mut m = Running::start(cfg);
        let s = m.next().await;
        let status: Vec<_> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status))
            .collect();
        assert_eq!(
            status,
            [
                ("Disk", ConditionStatus::True),
                ("Other", ConditionStatus::False),
                ("Unused", ConditionStatus::False)
            ],
            "the first status is what the plugins found, not a blanket False"
        );
        let mut reasons: Vec<_> = s.events.iter().map(|e| e.reason.as_str()).collect();
        reasons.sort_unstable();
        assert_eq!(reasons, ["Blip", "DiskFull"]);
        m.stop().await;
    }

    #[tokio::test]
    async fn concurrency_limits_runs_and_initial_status_can_be_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let body = format!(
            "echo start >> {0}\nsleep 0.2\necho end >> {0}\nexit 1",
            log.display()
        );
        let p = script(dir.path(), "slow.sh", &body);
        let rules: Vec<String> = (0..3)
            .map(|i| {
                format!(
                    r#"{{"type": "temporary", "reason": "R{i}", "path": "{}"}}"#,
                    p.display()
                )
            })
            .collect();
        let cfg = config(&format!(
            r#"{{"plugin": "custom", "pluginConfig": {{"concurrency": 1, "invoke_interval": "1h", "timeout": "60s", "skip_initial_status": true}},
                 "source": "s", "rules": [{}]}}"#,
            rules.join(",")
        ));
        let mut m = Running::start(cfg);
        let mut reasons = Vec::new();
        while reasons.len() < 3 {
            let s = m.next().await;
            assert_eq!(s.events.len(), 1, "no initial status was asked for: {s:?}");
            reasons.push(s.events[0].reason.clone());
        }
        reasons.sort();
        assert_eq!(reasons, ["R0", "R1", "R2"]);
        let order = std::fs::read_to_string(&log).expect("log");
        assert_eq!(
            order.lines().collect::<Vec<_>>(),
            ["start", "end", "start", "end", "start", "end"],
            "runs overlapped with concurrency 1"
        );
        m.stop().await;
    }
}

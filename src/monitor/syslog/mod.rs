//! The system log monitor (NPD's `kmsg`, `filelog` and `journald` plugins):
//! a watcher thread turns the log into timestamped lines, the monitor task
//! runs them through the rules and keeps the permanent rules' conditions.
//!
//! NPD's semantics (reference/npd-inventory.md §3.5–§3.7): every declared
//! condition starts `False`; a temporary rule sends a `warn` event; a
//! permanent rule sets its condition `True` with the rule's reason, and sends
//! a condition-change event when the status or reason changes. Lines older
//! than `max(boot + delay, start - lookback)` are ignored. One extension:
//! a condition with `resolveAfter` clears itself when its rule has not matched
//! for that long (without it, conditions stay until a restart, as in NPD).

pub mod filelog;
pub mod journald;
pub mod kmsg;
pub mod rules;
pub mod watch;

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conditions::MonitorId;
use crate::config::syslog::{LogPlugin, RuleKind, SyslogMonitorConfig};
use crate::liveness::Pulse;
use crate::monitor::{Report, Update, change_message};
use crate::problem::{Condition, ConditionStatus, Event, Severity, Status};
use rules::{Match, RuleEngine};

/// One log line as a watcher hands it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub at: SystemTime,
    pub text: String,
}

/// Lines handed from a watcher to the monitor in one go: one text buffer
/// and their spans, so no line costs an allocation of its own.
#[derive(Debug, Default)]
pub struct Batch {
    text: String,
    lines: Vec<(SystemTime, usize, usize)>,
    /// Lines read but passed over (no rule can match them).
    passed_over: usize,
}

impl Batch {
    pub fn with_capacity(lines: usize) -> Self {
        Self {
            text: String::with_capacity(lines * 96),
            lines: Vec::with_capacity(lines),
            passed_over: 0,
        }
    }

    /// A line was read and passed over: lines came, though none is here.
    pub fn pass_over(&mut self) {
        self.passed_over += 1;
    }

    /// Whether no line came at all, neither held nor passed over.
    pub fn nothing_read(&self) -> bool {
        self.lines.is_empty() && self.passed_over == 0
    }

    pub fn push(&mut self, at: SystemTime, line: &str) {
        let start = self.text.len();
        self.text.push_str(line);
        self.lines.push((at, start, self.text.len()));
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SystemTime, &str)> {
        self.lines.iter().map(|&(at, s, e)| (at, &self.text[s..e]))
    }
}

/// What a watcher thread sends the monitor task.
#[derive(Debug)]
pub enum Feed {
    Lines(Batch),
    /// Lines were lost (kmsg records overwritten before they were read).
    Gap(u64),
    /// The source is readable (again).
    Up,
    /// The source cannot be read; the watcher retries on its own.
    Down(String),
}

/// How long a watcher waits between attempts to (re)open its source.
pub const RESTART_EVERY: Duration = Duration::from_secs(5);

/// Lines per batch sent from a watcher to the monitor task.
pub const BATCH: usize = 512;

/// `max(boot + delay, now - lookback)`: lines before it are not looked at.
pub fn start_time(cfg: &SyslogMonitorConfig, boot: SystemTime, now: SystemTime) -> SystemTime {
    let after_boot = boot + cfg.delay.unwrap_or_default();
    let lookback = now
        .checked_sub(cfg.lookback.unwrap_or_default())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    after_boot.max(lookback)
}

/// The rules and the conditions they keep.
#[derive(Debug)]
pub struct LogState {
    cfg: SyslogMonitorConfig,
    engine: RuleEngine,
    conditions: Vec<Condition>,
    /// When each condition's rule last matched (log time), for `resolveAfter`.
    last_match: Vec<Option<SystemTime>>,
}

impl LogState {
    pub fn new(cfg: SyslogMonitorConfig, now: SystemTime) -> Result<Self, rules::CompileError> {
        let engine = RuleEngine::new(&cfg.rules, cfg.buffer_size)?;
        let conditions = super::default_conditions(&cfg.conditions, now);
        Ok(Self {
            last_match: vec![None; cfg.conditions.len()],
            cfg,
            engine,
            conditions,
        })
    }

    /// The conditions as the rules keep them, without events: at start
    /// every condition `False`.
    pub fn initial(&self) -> Status {
        self.status(Vec::new())
    }

    fn status(&self, events: Vec<Event>) -> Status {
        Status {
            source: self.cfg.source.clone(),
            events,
            conditions: self.conditions.clone(),
        }
    }

    /// Runs one line through the rules: one status per matching rule, as NPD
    /// sends them.
    pub fn push(&mut self, at: SystemTime, text: &str, now: SystemTime) -> Vec<Status> {
        let matches = self.engine.push(text);
        matches
            .into_iter()
            .map(|m| self.apply(m, at, now))
            .collect()
    }

    fn apply(&mut self, m: Match, at: SystemTime, now: SystemTime) -> Status {
        let rule = &self.cfg.rules[m.rule];
        let event = |severity, message: String| Event {
            severity,
            timestamp: at,
            reason: rule.reason.clone(),
            message,
        };
        if rule.kind == RuleKind::Temporary {
            let e = event(Severity::Warn, m.message);
            return self.status(vec![e]);
        }
        let Some(i) = self
            .conditions
            .iter()
            .position(|c| Some(&c.type_) == rule.condition.as_ref())
        else {
            // validate-config refuses such a rule; NPD ignores it.
            return self.status(Vec::new());
        };
        // A match already older than resolveAfter (a lookback replay) is
        // history: an event, not a condition that would clear at once.
        if let Some(after) = self.cfg.conditions[i].resolve_after
            && at + after <= now
        {
            let e = event(Severity::Warn, m.message);
            return self.status(vec![e]);
        }
        self.last_match[i] = Some(self.last_match[i].map_or(at, |t| t.max(at)));
        let c = &mut self.conditions[i];
        let mut events = Vec::new();
        if c.status != ConditionStatus::True || c.reason != rule.reason {
            c.status = ConditionStatus::True;
            c.reason.clone_from(&rule.reason);
            c.message = m.message;
            c.transition = Some(at);
            events.push(event(Severity::Warn, change_message(c)));
        }
        self.status(events)
    }

    /// When the next `resolveAfter` runs out, if any condition has one.
    pub fn next_resolve(&self) -> Option<SystemTime> {
        self.conditions
            .iter()
            .zip(&self.cfg.conditions)
            .zip(&self.last_match)
            .filter(|((c, _), _)| c.status == ConditionStatus::True)
            .filter_map(|((_, d), last)| Some((*last)? + d.resolve_after?))
            .min()
    }

    /// Clears the conditions whose `resolveAfter` ran out by `now`.
    pub fn resolve(&mut self, now: SystemTime) -> Option<Status> {
        let mut events = Vec::new();
        for ((c, d), last) in self
            .conditions
            .iter_mut()
            .zip(&self.cfg.conditions)
            .zip(&mut self.last_match)
        {
            let (Some(after), Some(seen)) = (d.resolve_after, *last) else {
                continue;
            };
            if c.status == ConditionStatus::True && seen + after <= now {
                c.status = ConditionStatus::False;
                c.reason.clone_from(&d.reason);
                c.message.clone_from(&d.message);
                c.transition = Some(now);
                *last = None;
                events.push(Event {
                    severity: Severity::Info,
                    timestamp: now,
                    reason: d.reason.clone(),
                    message: format!(
                        "{} (no match for {})",
                        change_message(c),
                        crate::config::duration::format_go(after)
                    ),
                });
            }
        }
        (!events.is_empty()).then(|| self.status(events))
    }
}

/// How often a monitor with a healthy source promises to beat, and
/// confirms its conditions to the condition manager.
const BEAT: Duration = Duration::from_secs(30);

/// How often the monitor confirms its conditions while its source is
/// readable: past it, the condition manager holds them `Unknown`.
pub const CONFIRM_PERIOD: Duration = Duration::from_secs(75);

/// A source that went down counts as unreadable (its conditions `Unknown`)
/// unless within this long it is back and stays up for [`STABLE`]: a
/// journalctl restarted once, a rotated file, is not a flap of every
/// condition; one that keeps dying is.
pub const DOWN_GRACE: Duration = Duration::from_secs(20);
pub const STABLE: Duration = Duration::from_secs(10);

/// Whether the source can be read, debounced.
#[derive(Debug, Default)]
struct Source {
    /// Up since (`None`: down, or not yet up).
    up_since: Option<tokio::time::Instant>,
    /// Down and not yet back for long: when it counts as unreadable.
    unreadable_at: Option<tokio::time::Instant>,
    /// Why it went down last.
    why: String,
    /// Conditions are reported `Unknown` for it.
    reported_down: bool,
    /// Its first status has been sent (after it was first readable).
    reported: bool,
}

impl Source {
    /// A source not read yet: nothing of it is known, so its conditions are
    /// `Unknown` after the grace, as for one that went down.
    fn unread() -> Self {
        Self {
            unreadable_at: Some(tokio::time::Instant::now() + DOWN_GRACE),
            why: "the log source has not been readable yet".into(),
            ..Self::default()
        }
    }

    fn up(&mut self) {
        self.up_since = Some(tokio::time::Instant::now());
    }

    fn down(&mut self, why: String) {
        self.up_since = None;
        self.why = why;
        self.unreadable_at
            .get_or_insert_with(|| tokio::time::Instant::now() + DOWN_GRACE);
    }

    /// Up for long enough that an earlier down is forgotten.
    fn stable(&self) -> bool {
        self.up_since
            .is_some_and(|t| t.elapsed() >= STABLE || self.unreadable_at.is_none())
    }

    /// A status as it may go out: while the source is reported unreadable
    /// its conditions stay with the rules (they go out, all of them, once
    /// the source is stable again) and only its events are sent.
    fn gate(&self, mut s: Status) -> Update {
        if self.reported_down {
            s.conditions.clear();
        }
        Update::Status(s)
    }

    /// When to look again: the grace running out, or the source becoming stable.
    fn next_check(&self) -> Option<tokio::time::Instant> {
        match (self.unreadable_at, self.up_since) {
            (Some(_), Some(up)) => Some(up + STABLE),
            (Some(at), None) if !self.reported_down => Some(at),
            _ => None,
        }
    }
}

/// Runs one system log monitor until `token` is cancelled.
pub async fn run(
    id: MonitorId,
    cfg: SyslogMonitorConfig,
    reports: mpsc::Sender<Report>,
    pulse: Pulse,
    token: CancellationToken,
) {
    let now = SystemTime::now();
    let boot = crate::kmsg::boot_time();
    let start = start_time(&cfg, boot, now);
    let plugin = cfg.plugin;
    let source = cfg.source.clone();
    let file = cfg.file.display().to_string();
    let mut state = match LogState::new(cfg.clone(), now) {
        Ok(s) => s,
        Err(e) => {
            // The config check compiles every pattern first; this is a bug.
            tracing::error!(config = %file, "{e}");
            return;
        }
    };
    let send = |update| {
        let reports = reports.clone();
        async move {
            reports
                .send(Report {
                    monitor: id,
                    update,
                })
                .await
                .is_ok()
        }
    };
    let (tx, mut rx) = mpsc::channel::<Feed>(8);
    let stop = token.child_token();
    let spawned = match plugin {
        LogPlugin::Kmsg => kmsg::spawn(&cfg, boot, tx, stop.clone()),
        LogPlugin::Filelog => filelog::spawn(&cfg, tx, stop.clone()),
        LogPlugin::Journald => journald::spawn(&cfg, start, tx, stop.clone()),
    };
    if let Err(e) = spawned {
        tracing::error!(monitor = %source, "cannot start the log watcher: {e}");
        return;
    }
    tracing::info!(monitor = %source, config = %file, plugin = ?plugin, rules = cfg.rules.len(), "system log monitor started");
    // The first status (every condition False, as NPD starts them) waits
    // until the source has been read: lines, or up for STABLE.
    let mut src = Source::unread();
    let mut tick = crate::timer::Ticker::new(Duration::ZERO, BEAT);
    loop {
        if src.up_since.is_some() {
            pulse.beat(BEAT * 2);
        }
        let resolve_at = state.next_resolve().map(|t| {
            tokio::time::Instant::now()
                + t.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
        });
        let feed = tokio::select! {
            f = rx.recv() => match f { Some(f) => f, None => break },
            () = tick.tick() => {
                if src.reported && !src.reported_down && src.up_since.is_some() && !send(Update::Alive).await {
                    break;
                }
                continue;
            }
            () = crate::shutdown::sleep_until_opt(src.next_check()) => {
                if !settle(&mut src, &state, &source, &send).await {
                    break;
                }
                continue;
            }
            () = crate::shutdown::sleep_until_opt(resolve_at) => {
                if let Some(s) = state.resolve(SystemTime::now())
                    && !send(src.gate(s)).await
                {
                    break;
                }
                continue;
            }
            () = token.cancelled() => break,
        };
        match feed {
            Feed::Lines(lines) => {
                if !src.reported {
                    src.reported = true;
                    if !send(src.gate(state.initial())).await {
                        break;
                    }
                }
                let now = SystemTime::now();
                for (at, text) in lines.iter() {
                    if at < start {
                        continue;
                    }
                    for s in state.push(at, text, now) {
                        if !send(src.gate(s)).await {
                            return;
                        }
                    }
                }
            }
            Feed::Gap(lost) => tracing::warn!(
                monitor = %source, lost,
                "kernel log records were overwritten before they were read; rules did not see them"
            ),
            Feed::Up => {
                if src.up_since.is_none() {
                    tracing::info!(monitor = %source, "log source is readable");
                }
                // The first status waits for lines, or for the source to
                // stay up for STABLE: a journalctl that starts and dies at
                // once has read nothing.
                src.up();
            }
            Feed::Down(why) => {
                if src.up_since.is_some() {
                    tracing::error!(monitor = %source, "log source lost: {why}; retrying every {}s", RESTART_EVERY.as_secs());
                } else {
                    tracing::error!(monitor = %source, "cannot read the log source: {why}; retrying every {}s", RESTART_EVERY.as_secs());
                }
                src.down(why);
            }
        }
    }
    stop.cancel();
}

/// After the grace or the stable time: reports the source unreadable
/// (every condition `Unknown`, saying why) or readable again (the
/// conditions as the rules keep them). False when the detector is gone.
async fn settle<F, Fut>(src: &mut Source, state: &LogState, source: &str, send: &F) -> bool
where
    F: Fn(Update) -> Fut,
    Fut: Future<Output = bool>,
{
    if src.stable() {
        src.unreadable_at = None;
        let first = !std::mem::replace(&mut src.reported, true);
        let was_down = std::mem::take(&mut src.reported_down);
        if !(first || was_down) {
            return true;
        }
        if !first {
            tracing::info!(monitor = %source, "log source readable again; conditions are known again");
        }
        return send(Update::Status(state.initial())).await;
    }
    if src.up_since.is_none() && !src.reported_down {
        src.reported_down = true;
        let message = format!("{source} cannot read its log: {}", src.why);
        return send(Update::down(
            crate::monitor::REASON_SOURCE_UNREADABLE,
            message,
        ))
        .await;
    }
    // Up again, not yet stable: looked at again when it is.
    true
}

/// Sleeps `d` in short steps; false when `stop` was cancelled meanwhile.
pub(crate) fn pause(d: Duration, stop: &CancellationToken) -> bool {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        if stop.is_cancelled() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(until - std::time::Instant::now()));
    }
    !stop.is_cancelled()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::syslog;

    fn config(text: &str) -> SyslogMonitorConfig {
        let c = syslog::check(Path::new("t.json"), text);
        c.config.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
    }

    const CFG: &str = r#"{"plugin": "kmsg", "source": "kernel-monitor",
      "conditions": [{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"},
                     {"type": "XfsShutdown", "reason": "XfsHasNoShutdown", "message": "ok", "resolveAfter": "10m"}],
      "rules": [{"type": "temporary", "reason": "OOMKilling", "pattern": "Killed process \\d+ (.+)"},
                {"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "task docker:\\w+ blocked"},
                {"type": "permanent", "condition": "KernelDeadlock", "reason": "AufsUmountHung", "pattern": "aufs umount hung"},
                {"type": "permanent", "condition": "XfsShutdown", "reason": "XfsHasShutdown", "pattern": "XFS .* Shutting down filesystem"}]}"#;

    #[test]
    fn permanent_rules_follow_npd() {
        let t0 = SystemTime::now();
        let mut s = LogState::new(config(CFG), t0).expect("compiles");
        let init = s.initial();
        assert!(
            init.conditions
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
        assert_eq!(init.conditions[0].reason, "KernelHasNoDeadlock");

        let t1 = t0 + Duration::from_secs(1);
        let st = s.push(t1, "INFO: task docker:12 blocked", t1);
        assert_eq!(st.len(), 1);
        let c = &st[0].conditions[0];
        assert_eq!(
            (c.status, c.reason.as_str(), c.transition),
            (ConditionStatus::True, "DockerHung", Some(t1))
        );
        assert_eq!(
            st[0].events[0].message,
            "Node condition KernelDeadlock is now: True, reason: DockerHung, message: \"INFO: task docker:12 blocked\""
        );
        // Same reason again: no event, transition and message kept.
        let t2 = t1 + Duration::from_secs(1);
        let st = s.push(t2, "INFO: task docker:99 blocked", t2);
        assert!(st[0].events.is_empty());
        assert_eq!(st[0].conditions[0].transition, Some(t1));
        assert_eq!(st[0].conditions[0].message, "INFO: task docker:12 blocked");
        // Another reason for the same type: an event, a new transition.
        let st = s.push(t2, "aufs umount hung", t2);
        assert_eq!(st[0].events.len(), 1);
        assert_eq!(st[0].conditions[0].reason, "AufsUmountHung");
        // Temporary: an event only.
        let st = s.push(t2, "Killed process 12 (java)", t2);
        assert_eq!(st[0].events[0].severity, Severity::Warn);
        assert_eq!(st[0].events[0].reason, "OOMKilling");
        // Nothing matches: nothing sent.
        assert!(s.push(t2, "eth0: link up", t2).is_empty());
        // Without resolveAfter the condition is sticky.
        assert!(s.next_resolve().is_none());
    }

    #[test]
    fn resolve_after_clears_a_condition_that_stopped_matching() {
        let t0 = SystemTime::now();
        let mut s = LogState::new(config(CFG), t0).expect("compiles");
        let text = "XFS (sdb1): Corruption detected. Shutting down filesystem";
        s.push(t0, text, t0);
        let t5 = t0 + Duration::from_secs(300);
        s.push(t5, text, t5);
        assert_eq!(s.next_resolve(), Some(t5 + Duration::from_secs(600)));
        assert!(s.resolve(t5 + Duration::from_secs(599)).is_none());
        let st = s.resolve(t5 + Duration::from_secs(600)).expect("resolved");
        let c = &st.conditions[1];
        assert_eq!(
            (c.status, c.reason.as_str(), c.message.as_str()),
            (ConditionStatus::False, "XfsHasNoShutdown", "ok")
        );
        assert_eq!(st.events[0].severity, Severity::Info);
        assert!(s.next_resolve().is_none());
        // A match already older than resolveAfter (a lookback replay) is an
        // event, and the condition stays clear.
        let now = t5 + Duration::from_secs(3600);
        let st = s.push(t5, text, now);
        assert_eq!(st[0].conditions[1].status, ConditionStatus::False);
        assert_eq!(st[0].events.len(), 1);
    }

    #[test]
    fn start_time_is_the_later_of_boot_plus_delay_and_lookback() {
        let mut cfg = config(CFG);
        let boot = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = boot + Duration::from_secs(3600);
        assert_eq!(start_time(&cfg, boot, now), now);
        cfg.lookback = Some(Duration::from_secs(300));
        assert_eq!(start_time(&cfg, boot, now), now - Duration::from_secs(300));
        cfg.delay = Some(Duration::from_secs(3500));
        assert_eq!(
            start_time(&cfg, boot, now),
            boot + Duration::from_secs(3500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_restarted_once_is_no_flap_one_that_keeps_dying_is_unreadable() {
        use tokio::time::{Instant, advance};
        // Down once, back within the grace and stable: forgotten.
        let mut s = Source::default();
        s.up();
        s.down("journalctl exited".into());
        assert_eq!(s.next_check(), Some(Instant::now() + DOWN_GRACE));
        advance(RESTART_EVERY).await;
        s.up();
        assert_eq!(s.next_check(), Some(Instant::now() + STABLE));
        advance(STABLE).await;
        assert!(s.stable());
        // Dying again at once after every restart: unreadable after the grace.
        let mut s = Source::default();
        s.up();
        s.down("journalctl exited".into());
        let at = Instant::now() + DOWN_GRACE;
        for _ in 0..3 {
            advance(RESTART_EVERY).await;
            s.up();
            s.down("journalctl exited".into());
        }
        assert_eq!(s.next_check(), Some(at), "the grace does not restart");
        assert!(!s.stable());
    }
}

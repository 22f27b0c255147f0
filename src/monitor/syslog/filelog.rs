//! The `filelog` watcher: follows `logPath` from its first line like
//! `tail -F` (a rotated file is finished, then the new one read from its
//! start; a truncated file is read again from its start), drops lines with a
//! `skipList` substring, and reads each line's time and message with the
//! config's `timestamp`/`message` regexes (the last submatch, as NPD) and
//! Go layout `timestampFormat`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use memchr::memmem;
use regex::{CaptureLocations, Regex};
use regex_automata::meta;
use regex_syntax::hir::{Dot, Hir, HirKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::LineFilter;
use super::watch::FileWatch;
use super::{BATCH, Batch, Feed, RESTART_EVERY, pause};
use crate::config::golayout::Layout;
use crate::config::goregex;
use crate::config::syslog::SyslogMonitorConfig;

/// How a value (the timestamp or the message) is taken from a line:
/// Go's `FindStringSubmatch(line)[last]`, the last group ("" when it did
/// not take part), or the whole match for a pattern without groups.
#[derive(Debug)]
enum Extract {
    /// `^.{N}` (NPD's syslog timestamp, `^.{15}`): the first N characters
    /// of a line that has them, without a regex scan.
    FirstChars(usize),
    /// No group: the whole match.
    Whole(Regex),
    /// `L.*S(.*)` with literals L and S (upstream's `kernel: \[.*\] (.*)`):
    /// the rest of the line after the last S that follows the first L. The
    /// leftmost match starts at the first L, and the greedy `.*` takes it to
    /// the last S, so two memchr searches give what the regex does.
    Between {
        first: Box<memmem::Finder<'static>>,
        last: Box<memmem::FinderRev<'static>>,
        first_len: usize,
        last_len: usize,
    },
    /// `PREFIX(.*)` with nothing after the group and no other group: the
    /// rest of the line after PREFIX's leftmost-first match. `.*` matches
    /// whatever follows on a line, so this is what the full pattern gives,
    /// for one forward scan instead of a capturing search.
    Rest(meta::Regex),
    /// Anything else: a capturing search.
    Group(Regex, CaptureLocations),
}

impl Extract {
    fn new(pattern: &str) -> Result<Self, String> {
        let re = goregex::compile(pattern).map_err(|e| e.to_string())?;
        // The pattern's syntax tree, read once, says which shortcut gives
        // what the regex gives.
        let hir = regex_syntax::ParserBuilder::new()
            .build()
            .parse(&goregex::go_compatible(pattern))
            .ok();
        if re.captures_len() == 1 {
            if let Some(n) = hir.as_ref().and_then(first_chars) {
                return Ok(Self::FirstChars(n));
            }
            return Ok(Self::Whole(re));
        }
        if let Some(prefix) = hir.as_ref().and_then(rest_of_line_prefix) {
            if let Some((l, s)) = literal_dot_star_literal(&prefix) {
                return Ok(Self::Between {
                    first_len: l.len(),
                    last_len: s.len(),
                    first: Box::new(memmem::Finder::new(&l).into_owned()),
                    last: Box::new(memmem::FinderRev::new(&s).into_owned()),
                });
            }
            let m = meta::Regex::builder()
                .build_from_hir(&prefix)
                .map_err(|e| e.to_string())?;
            return Ok(Self::Rest(m));
        }
        let locs = re.capture_locations();
        Ok(Self::Group(re, locs))
    }

    fn get<'a>(&mut self, line: &'a str) -> Option<&'a str> {
        match self {
            Self::FirstChars(n) => {
                let n = *n;
                if line.len() >= n && line.as_bytes()[..n].is_ascii() {
                    return Some(&line[..n]);
                }
                let (i, c) = line.char_indices().nth(n.checked_sub(1)?)?;
                Some(&line[..i + c.len_utf8()])
            }
            Self::Whole(re) => re.find(line).map(|m| m.as_str()),
            Self::Between {
                first,
                last,
                first_len,
                last_len,
            } => {
                let from = first.find(line.as_bytes())? + *first_len;
                let at = last.rfind(&line.as_bytes()[from..])?;
                Some(&line[from + at + *last_len..])
            }
            Self::Rest(prefix) => {
                let end = prefix
                    .search_half(&regex_automata::Input::new(line))?
                    .offset();
                Some(&line[end..])
            }
            Self::Group(re, locs) => {
                re.captures_read(locs, line)?;
                Some(locs.get(locs.len() - 1).map_or("", |(s, e)| &line[s..e]))
            }
        }
    }
}

/// L and S when `prefix` is literal L, a greedy `.*`, literal S.
fn literal_dot_star_literal(prefix: &Hir) -> Option<(Vec<u8>, Vec<u8>)> {
    let HirKind::Concat(parts) = prefix.kind() else {
        return None;
    };
    let [l, star, s] = parts.as_slice() else {
        return None;
    };
    let (HirKind::Literal(l), HirKind::Literal(s)) = (l.kind(), s.kind()) else {
        return None;
    };
    is_dot_star(star).then(|| (l.0.to_vec(), s.0.to_vec()))
}

/// Whether `h` is a greedy `.*` (any character but a newline).
fn is_dot_star(h: &Hir) -> bool {
    let HirKind::Repetition(r) = h.kind() else {
        return false;
    };
    r.min == 0 && r.max.is_none() && r.greedy && *r.sub == Hir::dot(Dot::AnyCharExceptLF)
}

/// N when the pattern is `^.{N}` (start of text, then exactly N of any
/// character but a newline), N ≥ 1.
fn first_chars(hir: &Hir) -> Option<usize> {
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let [start, rep] = parts.as_slice() else {
        return None;
    };
    let HirKind::Look(regex_syntax::hir::Look::Start) = start.kind() else {
        return None;
    };
    let HirKind::Repetition(r) = rep.kind() else {
        return None;
    };
    let n = usize::try_from(r.min).ok()?;
    (r.max == Some(r.min) && n >= 1 && *r.sub == Hir::dot(Dot::AnyCharExceptLF)).then_some(n)
}

/// The part before a final greedy `(.*)` group, when the pattern is a plain
/// concatenation ending in one and has no other group.
fn rest_of_line_prefix(hir: &Hir) -> Option<Hir> {
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let (last, prefix) = parts.split_last()?;
    let HirKind::Capture(cap) = last.kind() else {
        return None;
    };
    let prefix = Hir::concat(prefix.to_vec());
    (is_dot_star(&cap.sub) && prefix.properties().explicit_captures_len() == 0).then_some(prefix)
}

/// Reads a line's time and message the way NPD's filelog translator does.
#[derive(Debug)]
pub struct Translator {
    timestamp: Extract,
    message: Extract,
    layout: Layout,
    /// The last timestamp text and its value: syslog lines share seconds.
    cached: Option<(String, SystemTime)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("no timestamp found")]
    NoTimestamp,
    #[error("no message found")]
    NoMessage,
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
}

impl Translator {
    pub fn new(cfg: &SyslogMonitorConfig) -> Result<Self, String> {
        let get = |k: &str| {
            cfg.plugin_config
                .get(k)
                .ok_or_else(|| format!("pluginConfig.{k} is missing"))
        };
        Ok(Self {
            timestamp: Extract::new(get("timestamp")?)?,
            message: Extract::new(get("message")?)?,
            layout: Layout::new(get("timestampFormat")?).map_err(|e| e.to_string())?,
            cached: None,
        })
    }

    /// The time and message of one line.
    pub fn translate<'a>(
        &mut self,
        line: &'a str,
        now: SystemTime,
    ) -> Result<(SystemTime, &'a str), TranslateError> {
        let ts = self
            .timestamp
            .get(line)
            .ok_or(TranslateError::NoTimestamp)?;
        let at = match &self.cached {
            Some((text, at)) if text == ts => *at,
            _ => {
                let at = self
                    .layout
                    .parse(ts, now)
                    .map_err(|e| TranslateError::BadTimestamp(e.to_string()))?;
                self.cached = Some((ts.to_owned(), at));
                at
            }
        };
        let text = self.message.get(line).ok_or(TranslateError::NoMessage)?;
        Ok((at, text))
    }
}

pub fn spawn(
    cfg: &SyslogMonitorConfig,
    tx: mpsc::Sender<Feed>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let translator = Translator::new(cfg).map_err(std::io::Error::other)?;
    let path = PathBuf::from(cfg.log_path.clone().unwrap_or_default());
    let skip = cfg.skip_list.clone();
    let filter = LineFilter::new(&cfg.rules);
    // The runtime watches the stop token for the thread's wait.
    let rt = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("filelog-monitor".into())
        .spawn(move || {
            Follower::new(path, skip, translator)
                .with_filter(filter)
                .run(&tx, &stop, rt.as_ref())
        })
        .map(drop)
}

/// Follows one file across rotation and truncation.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    skip: Vec<String>,
    translator: Translator,
    /// Passes over the lines no rule can match without decoding them.
    filter: Option<LineFilter>,
    failures: u64,
}

struct Open {
    reader: BufReader<File>,
    id: (u64, u64),
    pos: u64,
    /// The last bytes read before `pos`, to notice a file truncated and
    /// written past `pos` again between two looks (copytruncate).
    tail: Vec<u8>,
    modified: Option<SystemTime>,
}

const TAIL: usize = 64;

/// The monitor is gone, or the file cannot be read (said already).
#[derive(Debug)]
struct Stopped;

/// `bytes` were read: the position moves on, and the last [`TAIL`] bytes
/// read are kept.
fn track(pos: &mut u64, tail: &mut Vec<u8>, bytes: &[u8]) {
    *pos += bytes.len() as u64;
    let keep = bytes.len().min(TAIL);
    let drop = (tail.len() + keep).saturating_sub(TAIL);
    tail.drain(..drop);
    tail.extend_from_slice(&bytes[bytes.len() - keep..]);
}

impl Open {
    /// Whether the bytes before `pos` are still those we read.
    fn rewritten(&self) -> bool {
        use std::os::unix::fs::FileExt;
        if self.tail.is_empty() {
            return false;
        }
        let mut now = vec![0; self.tail.len()];
        let at = self.pos - self.tail.len() as u64;
        match self.reader.get_ref().read_exact_at(&mut now, at) {
            Ok(()) => now != self.tail,
            Err(_) => true,
        }
    }
}

impl Follower {
    pub fn new(path: PathBuf, skip: Vec<String>, translator: Translator) -> Self {
        Self {
            path,
            skip,
            translator,
            filter: None,
            failures: 0,
        }
    }

    /// Lines that `filter` shows no rule can match are not decoded or
    /// handed on, except the first line each read completes (the end of the
    /// one the last read began, or its first whole line): a line of every
    /// read is still translated, so a wrong `timestampFormat` or `message`
    /// pattern is still reported.
    pub fn with_filter(mut self, filter: Option<LineFilter>) -> Self {
        self.filter = filter;
        self
    }

    fn open(path: &Path) -> std::io::Result<Open> {
        let file = File::open(path)?;
        let m = file.metadata()?;
        Ok(Open {
            reader: BufReader::with_capacity(64 * 1024, file),
            id: (m.dev(), m.ino()),
            pos: 0,
            tail: Vec::with_capacity(TAIL),
            modified: m.modified().ok(),
        })
    }

    pub fn run(
        mut self,
        tx: &mpsc::Sender<Feed>,
        stop: &CancellationToken,
        rt: Option<&tokio::runtime::Handle>,
    ) {
        let mut file = loop {
            match Self::open(&self.path) {
                Ok(f) => break f,
                Err(e) => {
                    let why = format!("cannot open {}: {e}", self.path.display());
                    if tx.blocking_send(Feed::Down(why)).is_err() || !pause(RESTART_EVERY, stop) {
                        return;
                    }
                }
            }
        };
        if tx.blocking_send(Feed::Up).is_err() {
            return;
        }
        // Watched from here on: what is written after this is a wakeup.
        let mut watch = FileWatch::new(&self.path, stop, rt);
        let mut line = Vec::new();
        let mut batch = Batch::with_capacity(BATCH);
        let mut now = SystemTime::now();
        let mut down = false;
        let mut rotated: Option<Open> = None;
        loop {
            match self.read_chunk(&mut file, &mut line, &mut batch, &mut now, tx) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(Stopped) => return,
            }
            // End of file (a partial line stays in `line` until its end comes).
            // A batch of only passed-over lines still goes: the monitor's
            // first status waits for lines.
            if !batch.nothing_read()
                && tx
                    .blocking_send(Feed::Lines(std::mem::take(&mut batch)))
                    .is_err()
            {
                return;
            }
            now = SystemTime::now();
            if let Some(next) = rotated.take() {
                // The old file is read to its end: on to the new one.
                if !line.is_empty() {
                    self.take(&line, now, &mut batch);
                    line.clear();
                }
                file = next;
                watch.rewatch(&self.path);
                continue;
            }
            if !watch.wait() {
                return;
            }
            match std::fs::metadata(&self.path) {
                Ok(m) if (m.dev(), m.ino()) != file.id => {
                    // Rotated: what was written to the old file before the
                    // move is read first, then the new file from its start.
                    if let Ok(f) = Self::open(&self.path) {
                        tracing::info!(path = %self.path.display(), "log file rotated; reading the new file from its start");
                        rotated = Some(f);
                    }
                }
                Ok(m)
                    if m.len() < file.pos
                        || (m.modified().ok() != file.modified && file.rewritten()) =>
                {
                    tracing::info!(path = %self.path.display(), "log file truncated; reading it again from its start");
                    line.clear();
                    if file.reader.seek(SeekFrom::Start(0)).is_ok() {
                        file.pos = 0;
                        file.tail.clear();
                    }
                    file.modified = m.modified().ok();
                }
                Ok(m) => {
                    file.modified = m.modified().ok();
                    if down {
                        down = false;
                        if tx.blocking_send(Feed::Up).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    // Gone between rotation steps, usually; keep the old one.
                    if !down {
                        down = true;
                        let why = format!("{} is gone: {e}", self.path.display());
                        if tx.blocking_send(Feed::Down(why)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Takes every whole line in the reader's buffer, where it lies (a line
    /// split across two reads is gathered in `line`); `Ok(false)` at the
    /// end of the file.
    fn read_chunk(
        &mut self,
        file: &mut Open,
        line: &mut Vec<u8>,
        batch: &mut Batch,
        now: &mut SystemTime,
        tx: &mpsc::Sender<Feed>,
    ) -> Result<bool, Stopped> {
        let Open {
            reader, pos, tail, ..
        } = file;
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot read {}: {e}", self.path.display());
                let _ = tx.blocking_send(Feed::Down(why));
                return Err(Stopped);
            }
        };
        if chunk.is_empty() {
            return Ok(false);
        }
        let mut start = 0;
        // Where the next literal a rule needs starts: a line that ends
        // before it can match no rule. Without a filter, every line may.
        let mut hit = self
            .filter
            .as_ref()
            .map_or(Some(0), |f| f.next_hit(chunk, 0));
        for nl in memchr::memchr_iter(b'\n', chunk) {
            let piece = &chunk[start..=nl];
            let first = start == 0;
            start = nl + 1;
            let wanted = first || hit.is_some_and(|at| at <= nl);
            if !line.is_empty() {
                // The end of a line begun in the last read: taken whole.
                line.extend_from_slice(piece);
                self.take(line, *now, batch);
                line.clear();
            } else if wanted {
                self.take(piece, *now, batch);
            } else {
                batch.pass_over();
                continue;
            }
            // Search on only past a literal this line held: a hit still
            // ahead (this line was taken as the read's first or as the end
            // of a split one) is also the leftmost from here.
            if let Some(f) = &self.filter
                && hit.is_some_and(|at| at <= nl)
            {
                hit = f.next_hit(chunk, start);
            }
            if batch.len() >= BATCH {
                let full = std::mem::replace(batch, Batch::with_capacity(BATCH));
                if tx.blocking_send(Feed::Lines(full)).is_err() {
                    return Err(Stopped);
                }
                *now = SystemTime::now();
            }
        }
        line.extend_from_slice(&chunk[start..]);
        let n = chunk.len();
        track(pos, tail, chunk);
        reader.consume(n);
        Ok(true)
    }

    fn take(&mut self, raw: &[u8], now: SystemTime, batch: &mut Batch) {
        let lossy;
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                lossy = String::from_utf8_lossy(raw);
                &lossy
            }
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if self.skip.iter().any(|s| text.contains(s.as_str())) {
            return;
        }
        match self.translator.translate(text, now) {
            Ok((at, message)) => batch.push(at, message),
            Err(e) => {
                self.failures += 1;
                // The first few say what is wrong; then one in 10 000.
                if self.failures <= 3 || self.failures.is_multiple_of(10_000) {
                    tracing::warn!(path = %self.path.display(), failures = self.failures, "cannot parse log line {text:?}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::syslog;
    use crate::monitor::syslog::rules::RuleEngine;

    /// The filelog config at `path`.
    fn config(path: &Path) -> SyslogMonitorConfig {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        syslog::check(path, &text).config.expect("loads")
    }

    /// tests/fixtures/kernel-monitor-filelog.json.
    fn fixture_config() -> SyslogMonitorConfig {
        config(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/kernel-monitor-filelog.json"),
        )
    }

    /// The translator of the filelog config at `path`.
    fn translator(path: &Path) -> Translator {
        Translator::new(&config(path)).expect("translator")
    }

    #[test]
    fn the_rest_of_line_shortcut_agrees_with_a_capturing_search() {
        let patterns = [
            "kernel: \\[.*\\] (.*)",
            "kernel: \\[.*\\]  (.*)",
            "a.*a(.*)",
            "ke.*\\](.*)",
            "(?i)KERNEL: (.*)",
            "a|b(.*)",
            "x(.*)y",
            "(a)(.*)",
            "k(?s:(.*))",
            "^\\w+ (.*)",
        ];
        let lines = [
            "Nov 27 01:02:03 n kernel: [ 1.0] msg ] with ] brackets",
            "kernel: [] ",
            "no match here",
            "b then the rest",
            "xay",
            "aaa",
            "word rest of it",
            "KERNEL: upper é",
            "é kernel: [ é ] é ] tail é",
            "kernel: ] before [ after",
            "kernel: [ no closing",
            "x kernel: [1]  two spaces ] one",
            "a",
            "aa",
            "aXa rest a",
        ];
        for p in patterns {
            let mut fast = Extract::new(p).expect("compiles");
            let re = goregex::compile(p).expect("compiles");
            for l in lines {
                let want = re
                    .captures(l)
                    .map(|c| c.get(c.len() - 1).map_or("", |m| m.as_str()));
                assert_eq!(fast.get(l), want, "{p} on {l:?}");
            }
        }
        assert!(matches!(
            Extract::new("kernel: \\[.*\\] (.*)"),
            Ok(Extract::Between { .. })
        ));
        assert!(matches!(
            Extract::new("kernel: \\[ *\\d+\\.\\d+\\] (.*)"),
            Ok(Extract::Rest(_))
        ));
        assert!(matches!(Extract::new("a|b(.*)"), Ok(Extract::Group(..))));
        assert!(matches!(
            Extract::new("^.{15}"),
            Ok(Extract::FirstChars(15))
        ));
    }

    #[test]
    fn the_first_chars_shortcut_agrees_with_the_regex() {
        let patterns = ["^.{15}", "^.{1}", "^.{3}", "^.{15,}", ".{15}", "^.{2}x"];
        let lines = [
            "Nov 27 01:02:03 n kernel: [ 1.0] msg",
            "Nov 27 01:02:0",
            "Nov 27 01:02:03",
            "",
            "éé",
            "ééé and more",
            "ab\rcd",
            "日本語のログ行です。十五文字以上あります",
        ];
        for p in patterns {
            let mut fast = Extract::new(p).expect("compiles");
            let re = goregex::compile(p).expect("compiles");
            for l in lines {
                assert_eq!(fast.get(l), re.find(l).map(|m| m.as_str()), "{p} on {l:?}");
            }
        }
        assert!(matches!(Extract::new("^.{15,}"), Ok(Extract::Whole(_))));
        assert!(matches!(Extract::new(".{15}"), Ok(Extract::Whole(_))));
        assert!(matches!(Extract::new("(?s)^.{15}"), Ok(Extract::Whole(_))));
    }

    /// What a kernel-monitor filelog config for syslog-format kern.log lines
    /// (as ours and upstream's are) makes of them.
    fn translates_kern_log(mut t: Translator) {
        let (_, text) = t
            .translate(
                "Nov 27 01:02:03 node-1 kernel: [ 1234.567890] Killed process 77 (x) total-vm:1kB",
                SystemTime::now(),
            )
            .expect("parses");
        assert_eq!(text, "Killed process 77 (x) total-vm:1kB");
        assert!(matches!(
            t.translate(
                "Nov 27 01:02:03 node-1 systemd[1]: Started.",
                SystemTime::now()
            ),
            Err(TranslateError::NoMessage)
        ));
        assert!(matches!(
            t.translate("garbage", SystemTime::now()),
            Err(TranslateError::NoTimestamp)
        ));
        assert!(matches!(
            t.translate("Foo 27 01:02:03 node-1 kernel: [ 1.0] x", SystemTime::now()),
            Err(TranslateError::BadTimestamp(_))
        ));
    }

    /// Every line a follower hands on from `path`, read `capacity` bytes
    /// at a time, through the line filter or not.
    fn follow(
        cfg: &SyslogMonitorConfig,
        path: &Path,
        capacity: usize,
        filtered: bool,
    ) -> Vec<(SystemTime, String)> {
        let mut follower = Follower::new(
            path.to_owned(),
            cfg.skip_list.clone(),
            Translator::new(cfg).expect("translator"),
        );
        if filtered {
            follower = follower.with_filter(LineFilter::new(&cfg.rules));
            assert!(follower.filter.is_some());
        }
        let mut file = Open {
            reader: BufReader::with_capacity(capacity, File::open(path).expect("opens")),
            id: (0, 0),
            pos: 0,
            tail: Vec::new(),
            modified: None,
        };
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let (mut line, mut batch) = (Vec::new(), Batch::with_capacity(BATCH));
        let mut now = SystemTime::now();
        while follower
            .read_chunk(&mut file, &mut line, &mut batch, &mut now, &tx)
            .map_err(|_| "stopped")
            .expect("reads")
        {}
        drop(tx);
        let mut out = Vec::new();
        while let Ok(Feed::Lines(b)) = rx.try_recv() {
            out.extend(b.iter().map(|(at, t)| (at, t.to_owned())));
        }
        out.extend(batch.iter().map(|(at, t)| (at, t.to_owned())));
        out
    }

    /// The line filter passes over lines only where no rule can match: the
    /// rules answer the same over what it hands on, in reads of any size,
    /// as over every line.
    #[test]
    fn the_line_filter_changes_no_rule_answer() {
        let cfg = fixture_config();
        let kinds: [&[u8]; 10] = [
            b"Nov 27 01:02:03 node-1 kernel: [    1.000000] eth0: link up",
            b"Nov 27 01:02:03 node-1 kernel: [    2.000000] Killed process 1234 (java) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:0kB",
            b"Nov 27 01:02:04 node-1 kernel: [    3.000000] INFO: task python:77 blocked for more than 120 seconds.",
            b"Nov 27 01:02:04 node-1 kernel: [    4.000000] Buffer I/O error on dev sda1, logical block 0",
            b"Nov 27 01:02:05 node-1 systemd[1]: Buffer I/O error outside any kernel message",
            b"Nov 27 01:02:05 Buffer I/O error kernel: [    5.000000] the literal only before the message",
            b"Nov 27 01:02:06 node-1 kernel: [    6.000000] caf\xe9 (not UTF-8) then Buffer I/O error x",
            "Nov 27 01:02:06 node-1 kernel: [    7.000000] \u{fc}n\u{ef}c\u{f6}d\u{e9} Buffer I/O error \u{fc}".as_bytes(),
            b"",
            b"Nov 27 01:02:07 node-1 kernel: [    8.000000] task umount.aufs:9 blocked for more than 1 seconds.",
        ];
        let mut log = Vec::new();
        let mut seed = 7u32;
        for _ in 0..4000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            // Mostly benign lines, as on a node.
            let pick = (seed >> 16) as usize % 40;
            log.extend_from_slice(kinds[if pick < kinds.len() { pick } else { 0 }]);
            log.push(b'\n');
        }
        log.extend_from_slice(kinds[3]); // and a line not yet ended
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kern.log");
        std::fs::write(&file, &log).expect("writes");

        let answers = |lines: &[(SystemTime, String)]| {
            let mut engine = RuleEngine::new(&cfg.rules, cfg.buffer_size).expect("compiles");
            lines
                .iter()
                .flat_map(|(at, text)| {
                    engine
                        .push(text)
                        .into_iter()
                        .map(move |m| (m.rule, m.message, *at))
                })
                .collect::<Vec<_>>()
        };
        let every = follow(&cfg, &file, 64 * 1024, false);
        let want = answers(&every);
        assert!(want.len() > 300, "the log holds problems: {}", want.len());
        for capacity in [64 * 1024, 4096, 97, 31] {
            let passed = follow(&cfg, &file, capacity, true);
            let got = answers(&passed);
            // The year of a syslog time is the reading's: compare times only
            // where both were read in the same year.
            let strip = |a: &[(usize, String, SystemTime)]| {
                a.iter()
                    .map(|(r, m, _)| (*r, m.clone()))
                    .collect::<Vec<_>>()
            };
            assert!(
                strip(&got) == strip(&want),
                "reads of {capacity} bytes: {} answers, want {}; first difference at {:?}",
                got.len(),
                want.len(),
                got.iter()
                    .zip(&want)
                    .position(|(a, b)| a.0 != b.0 || a.1 != b.1)
            );
            // Short reads split most lines, and a split line is taken whole.
            if capacity >= 4096 {
                assert!(
                    passed.len() * 2 < every.len(),
                    "reads of {capacity} bytes: {} of {} lines handed on",
                    passed.len(),
                    every.len()
                );
            }
        }
    }

    /// A read whose one decoded line does not parse and whose other lines
    /// hold no literal still tells the monitor that lines came.
    #[tokio::test]
    async fn a_read_of_passed_over_lines_still_reaches_the_monitor() {
        let cfg = fixture_config();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kern.log");
        std::fs::write(
            &file,
            "not a syslog line\nNov 27 01:02:03 node-1 kernel: [    1.000000] eth0: link up\n",
        )
        .expect("writes");
        let follower = Follower::new(
            file,
            cfg.skip_list.clone(),
            Translator::new(&cfg).expect("translator"),
        )
        .with_filter(LineFilter::new(&cfg.rules));
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || follower.run(&tx, &stop, None))
        };
        let next = async |rx: &mut mpsc::Receiver<Feed>| {
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("the follower says something within 10 s")
        };
        assert!(matches!(next(&mut rx).await, Some(Feed::Up)));
        match next(&mut rx).await {
            Some(Feed::Lines(b)) => assert!(b.is_empty() && !b.nothing_read()),
            other => panic!("want an empty batch of lines read, got {other:?}"),
        }
        stop.cancel();
        drop(rx);
        thread.join().expect("the follower returns");
    }

    #[test]
    fn fixture_filelog_translation() {
        translates_kern_log(Translator::new(&fixture_config()).expect("translator"));
    }

    mod compat {
        use super::*;
        use crate::compat_dir::upstream;

        #[test]
        #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
        fn stock_filelog_translation() {
            translates_kern_log(translator(&upstream(
                "npd-configs/kernel-monitor-filelog.json",
            )));
        }
    }
}

//! Waiting for a followed file to change, without polling: inotify on the
//! file (writes, truncation, its move or deletion) and on its directory
//! (a file created or moved in under its name: rotation), and an eventfd
//! the stop token writes. A follower thread sleeps in one `poll(2)` until
//! one of them fires, so an idle log costs no wakeups; a line written is
//! seen as soon as the kernel says so.
//!
//! Where inotify cannot be had (its instance or watch limits reached, a
//! file system without events), the follower polls as NPD does, and says
//! so once.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How often a follower without inotify looks (NPD polls every 500 ms).
pub const POLL: Duration = Duration::from_millis(250);

/// With inotify, how often it looks all the same: a safety net for an event
/// the file system did not deliver.
pub const SAFETY: Duration = Duration::from_secs(30);

/// What the follower waits on.
#[derive(Debug)]
pub struct FileWatch {
    /// `None`: no inotify; poll every [`POLL`].
    inotify: Option<Inotify>,
    /// Written once when the stop token is cancelled; `None` without a
    /// runtime to watch the token (the wait then looks at it every poll).
    stop_fd: Option<OwnedFd>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Inotify {
    fd: OwnedFd,
    /// The watch on the file itself, while it exists.
    file: Option<i32>,
}

const FILE_EVENTS: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::DELETE_SELF);
/// Names coming and going in the directory (not writes to its other files).
const DIR_EVENTS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::ONLYDIR);

impl FileWatch {
    /// Watches `path` (and its directory) until `stop`, which a task on
    /// `rt` watches (without a runtime, the wait looks at it every poll).
    pub fn new(path: &Path, stop: &CancellationToken, rt: Option<&Handle>) -> Self {
        let inotify = match Self::inotify(path) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot watch the log file with inotify ({e}); polling it every {POLL:?} instead");
                None
            }
        };
        Self {
            inotify,
            stop_fd: rt.and_then(|rt| stop_fd(stop, rt)),
            stop: stop.clone(),
        }
    }

    fn inotify(path: &Path) -> io::Result<Inotify> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        inotify::add_watch(&fd, dir, DIR_EVENTS)?;
        let file = inotify::add_watch(&fd, path, FILE_EVENTS).ok();
        Ok(Inotify { fd, file })
    }

    /// Whether inotify tells this watch of changes (else it polls).
    pub fn notified(&self) -> bool {
        self.inotify.is_some()
    }

    /// Watches the file now at `path` (after a rotation, or once it exists).
    pub fn rewatch(&mut self, path: &Path) {
        if let Some(i) = &mut self.inotify {
            if let Some(wd) = i.file.take() {
                // Gone already when the old file was deleted.
                let _ = inotify::remove_watch(&i.fd, wd);
            }
            i.file = inotify::add_watch(&i.fd, path, FILE_EVENTS).ok();
        }
    }

    /// Sleeps until the file or its directory may have changed, at most
    /// [`SAFETY`] (or [`POLL`] without inotify); false once stopped.
    pub fn wait(&mut self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let limit = match (&self.inotify, &self.stop_fd) {
            (Some(_), Some(_)) => SAFETY,
            _ => POLL,
        };
        let Ok(timeout) = Timespec::try_from(limit) else {
            return !self.stop.is_cancelled();
        };
        let mut fds = Vec::with_capacity(2);
        if let Some(i) = &self.inotify {
            fds.push(PollFd::new(&i.fd, PollFlags::IN));
        }
        if let Some(s) = &self.stop_fd {
            fds.push(PollFd::new(s, PollFlags::IN));
        }
        // EINTR and the like: look again, as after a change.
        let _ = poll(&mut fds, Some(&timeout));
        drop(fds);
        if let Some(i) = &self.inotify {
            drain(&i.fd);
        }
        !self.stop.is_cancelled()
    }
}

/// Reads every queued event (what changed is read from the file itself).
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// An eventfd written when `stop` is cancelled, by a task on `rt`.
fn stop_fd(stop: &CancellationToken, rt: &Handle) -> Option<OwnedFd> {
    let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok()?;
    let writer = fd.try_clone().ok()?;
    let stop = stop.clone();
    rt.spawn(async move {
        stop.cancelled().await;
        let _ = rustix::io::write(&writer, &1u64.to_ne_bytes());
    });
    Some(fd)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_a_rotation_and_a_stop_each_wake_the_waiter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kern.log");
        std::fs::write(&path, "").expect("log");
        let stop = CancellationToken::new();
        let mut w = FileWatch::new(&path, &stop, Some(&Handle::current()));
        assert!(w.notified() && w.stop_fd.is_some());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            while w.wait() {
                if tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        // Written: woken well before the safety net.
        let t = Instant::now();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"line\n"))
            .expect("append");
        let woke = rx.recv_timeout(SAFETY / 2).expect("woken by the write");
        assert!(woke >= t);
        while rx.try_recv().is_ok() {}
        // Rotated: a new file under the name wakes it too.
        std::fs::rename(&path, dir.path().join("kern.log.1")).expect("rotate");
        rx.recv_timeout(SAFETY / 2).expect("woken by the rotation");
        // Stopped: the thread returns.
        stop.cancel();
        let ended = Instant::now();
        waiter.join().expect("waiter");
        assert!(ended.elapsed() < SAFETY / 2);
    }
}

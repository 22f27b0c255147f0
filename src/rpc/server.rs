//! Serving gRPC on a Unix socket: stale-socket handling, permissions, unlink on exit.
//!
//! A socket at the path is stale only when nothing answers on it: one a live
//! server listens on is refused, never replaced, and on exit we unlink the
//! socket only while the path is still the inode we bound.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::Connected;

/// Socket permissions: owner and group may connect (the detector and the plugin
/// share a group or run as root), others may not.
pub const SOCKET_MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot create socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{} is in use: a live server answers on it (another gpu-monitor?); stop it or choose another --socket", path.display())]
    InUse { path: PathBuf },
    #[error("cannot tell whether a server answers on {}; refusing to replace it", path.display())]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to serve in {}: it is {why} (anyone there could replace the socket); use a directory only root or this user can write", path.display())]
    UnsafeDir { path: PathBuf, why: String },
    #[error("cannot set mode {SOCKET_MODE:o} on {}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound socket; the path is unlinked when this is dropped, if it is still
/// the socket we bound.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
    /// (device, inode) of the socket we created.
    inode: Option<(u64, u64)>,
}

impl BoundSocket {
    /// Creates the parent directory, refuses a socket a live server answers
    /// on, removes a stale one (only if it is a socket), binds, and sets
    /// mode 0660.
    pub fn bind(path: &Path) -> Result<Self, BindError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| BindError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
            check_dir(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                let live = answers(path).map_err(|source| BindError::Probe {
                    path: path.to_path_buf(),
                    source,
                })?;
                if live {
                    return Err(BindError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(BindError::RemoveStale {
                            path: path.to_path_buf(),
                            source: e,
                        });
                    }
                    _ => {}
                }
                tracing::info!(socket = %path.display(), "removed stale socket");
            }
            Ok(_) => {
                return Err(BindError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let mut guard = Self {
            path: path.to_path_buf(),
            listener: Some(listener),
            inode: None,
        };
        guard.inode = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
            |source| BindError::Chmod {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, once; the guard keeps owning the path.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

/// Whether a server accepts connections on the socket at `path`. Connecting
/// to a socket whose server is gone fails at once (`ECONNREFUSED`); one with
/// a live listener succeeds even before it accepts. Any other failure
/// (permission, a full backlog) cannot tell, and is the caller's to refuse.
fn answers(path: &Path) -> io::Result<bool> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            tracing::debug!(socket = %path.display(), "no server answers on the old socket: {e}");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A socket directory others cannot write: not world-writable, owned by
/// root or by this process's user.
fn check_dir(dir: &Path) -> Result<(), BindError> {
    let meta = std::fs::metadata(dir).map_err(|source| BindError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.mode() & 0o002 != 0 {
        Some(format!("world-writable (mode {:o})", meta.mode() & 0o7777))
    } else if meta.uid() != 0 && meta.uid() != me {
        Some(format!(
            "owned by uid {}, neither root nor this user ({me})",
            meta.uid()
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(BindError::UnsafeDir {
            path: dir.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// The users whose processes may talk to a plugin: root and this
/// process's own user, unless `--allowed-uids` says otherwise.
pub fn default_allowed_uids() -> Vec<u32> {
    let me = rustix::process::geteuid().as_raw();
    if me == 0 { vec![0] } else { vec![0, me] }
}

/// Keeps connections whose peer (`SO_PEERCRED`) runs as an allowed uid;
/// refused ones are closed and logged with their uid and pid.
pub fn allowed_peer(allowed: &[u32], conn: &io::Result<UnixStream>) -> bool {
    let Ok(stream) = conn else {
        return true;
    };
    match stream.peer_cred() {
        Ok(cred) if allowed.contains(&cred.uid()) => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid().unwrap_or(0),
                allowed = ?allowed,
                "refused a connection from a user not in --allowed-uids"
            );
            false
        }
        Err(e) => {
            tracing::warn!("refused a connection whose peer cannot be identified: {e}");
            false
        }
    }
}

/// Which connection a request came on (in its extensions): a server keeps
/// per-client state under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Told the id of each connection that closes.
pub type OnClose = Arc<dyn Fn(ConnId) + Send + Sync>;

/// An accepted connection, numbered; `on_close` hears when it goes.
pub struct Conn {
    stream: UnixStream,
    id: ConnId,
    on_close: Option<OnClose>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnId;

    fn connect_info(&self) -> ConnId {
        self.id
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(f) = &self.on_close {
            f(self.id);
        }
    }
}

/// The connections of allowed peers (see [`allowed_peer`]), numbered from 1.
pub fn accept(
    listener: UnixListener,
    allowed: Vec<u32>,
    on_close: Option<OnClose>,
) -> impl Stream<Item = io::Result<Conn>> {
    let next = AtomicU64::new(1);
    let allowed_only =
        tokio_stream::StreamExt::filter(UnixListenerStream::new(listener), move |c| {
            allowed_peer(&allowed, c)
        });
    tokio_stream::StreamExt::map(allowed_only, move |c| {
        c.map(|stream| Conn {
            stream,
            id: ConnId(next.fetch_add(1, Ordering::Relaxed)),
            on_close: on_close.clone(),
        })
    })
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Only unlink the socket we created: another process may have
        // replaced the path since.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = BoundSocket::bind(&open.join("p.sock")).expect_err("must refuse");
        assert!(
            err.to_string().contains("world-writable (mode 777)"),
            "{err}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        BoundSocket::bind(&open.join("p.sock")).expect("a private directory is fine");
    }

    #[tokio::test]
    async fn refuses_to_remove_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plugin.sock");
        std::fs::write(&path, b"precious").expect("write");
        let err = BoundSocket::bind(&path).expect_err("must refuse");
        assert!(matches!(err, BindError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    }

    #[tokio::test]
    async fn refuses_a_socket_a_live_server_answers_on_and_unlinks_only_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plugin.sock");
        let first = BoundSocket::bind(&path).expect("bind");
        let err = BoundSocket::bind(&path).expect_err("a live server answers there");
        assert!(matches!(err, BindError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        std::os::unix::net::UnixStream::connect(&path).expect("the first still answers");

        // Someone else replaced the path: dropping ours must not remove theirs.
        std::fs::remove_file(&path).expect("unlink");
        let theirs = std::os::unix::net::UnixListener::bind(&path).expect("theirs");
        drop(first);
        assert!(
            path.exists(),
            "another process's socket must survive our exit"
        );
        drop(theirs);
    }

    #[tokio::test]
    async fn replaces_stale_socket_sets_mode_and_unlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/plugin.sock");
        let mut first = BoundSocket::bind(&path).expect("bind");
        // Leave a stale socket behind, as a crash would: nothing listens, the path stays.
        drop(first.take_listener());
        std::mem::forget(first);
        assert!(path.exists());
        let second = BoundSocket::bind(&path).expect("rebind over stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        drop(second);
        assert!(!path.exists(), "socket must be unlinked on drop");
    }
}

//! Serving gRPC on a Unix socket: stale-socket handling, permissions, unlink on exit.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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

/// A bound socket; the path is unlinked when this is dropped.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl BoundSocket {
    /// Creates the parent directory, removes a stale socket (only if it is a
    /// socket), binds, and sets mode 0660.
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
                std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                })?;
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
        let guard = Self {
            path: path.to_path_buf(),
            listener: Some(listener),
        };
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

/// A socket directory others cannot write: not world-writable, owned by
/// root or by this process's user.
fn check_dir(dir: &Path) -> Result<(), BindError> {
    use std::os::unix::fs::MetadataExt;
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
pub fn allowed_peer(allowed: &[u32], conn: &io::Result<tokio::net::UnixStream>) -> bool {
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

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Only unlink what is still a socket: another process may have
        // replaced the path since.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket()) {
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
    async fn replaces_stale_socket_sets_mode_and_unlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/plugin.sock");
        let first = BoundSocket::bind(&path).expect("bind");
        std::mem::forget(first); // leave a stale socket behind, as a crash would
        assert!(path.exists());
        let second = BoundSocket::bind(&path).expect("rebind over stale socket");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        drop(second);
        assert!(!path.exists(), "socket must be unlinked on drop");
    }
}

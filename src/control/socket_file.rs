//! The control socket's file: binding it safely, taking over a stale one, and removing only our
//! own at exit.
//!
//! It is created mode 0600 (0660 with a control group) in a directory that must not be writable
//! by others unless sticky. A socket already at the path is replaced only when nobody answers on
//! it (`connect` refused): two daemons configured with the same path do not take it from each
//! other — the second refuses to start, naming the path. At exit the file is removed only if it
//! is still the one this server bound (same device and inode).
//!
//! This file knows nothing of connections: it must not accept, read or write on the socket.

use std::io::ErrorKind as IoKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Gid;

use crate::error::{Error, Result};

/// Device and inode of a socket file, so that exit removes only the one we bound.
pub(super) type FileIdent = (u64, u64);

/// Whether somebody answers on a socket path.
enum SocketUse {
    /// A listener accepted (or its backlog is full).
    Live,
    /// Nobody listens: a socket left behind by a daemon that died.
    Stale,
    /// It disappeared meanwhile.
    Gone,
    /// We cannot tell (no permission to connect, …).
    Unknown(std::io::Error),
}

/// Binds a non-blocking listener at `path` after [`check_socket_dir`] and
/// [`replace_if_stale`]; returns it with the identity of the file it made.
pub(super) fn bind(path: &Path, group: Option<Gid>) -> Result<(UnixListener, Option<FileIdent>)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_socket_dir(dir)?;
    replace_if_stale(path)?;
    bind_with_mode(path, group)
}

/// Refuses a directory that is not one, or that everyone may write without the sticky bit
/// (anyone could replace the socket).
fn check_socket_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io("cannot use control socket directory", dir, e))?;
    if !meta.is_dir() {
        return Err(Error::Invalid {
            what: "control_socket",
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(Error::Invalid {
            what: "control_socket",
            reason: format!(
                "its directory {} is writable by everyone and not sticky",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Removes a socket at `path` that nobody answers on; refuses one somebody answers on, and
/// anything that is not a socket. Nothing at `path` is fine.
fn replace_if_stale(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match probe(path) {
            SocketUse::Stale => std::fs::remove_file(path)
                .or_else(|e| match e.kind() {
                    IoKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| Error::io("cannot remove stale control socket", path, e)),
            SocketUse::Gone => Ok(()),
            SocketUse::Live => Err(Error::Invalid {
                what: "control_socket",
                reason: format!(
                    "{} is in use: another running daemon answers on it (give each \
                     configuration its own control_socket)",
                    path.display()
                ),
            }),
            SocketUse::Unknown(e) => Err(Error::io(
                "cannot tell whether another daemon uses control socket",
                path,
                e,
            )),
        },
        Ok(_) => Err(Error::Invalid {
            what: "control_socket",
            reason: format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        }),
        Err(_) => Ok(()),
    }
}

/// Binds, records the new file's identity, sets its mode (0660 with `group`, else 0600) and
/// group, and makes the listener non-blocking.
fn bind_with_mode(path: &Path, group: Option<Gid>) -> Result<(UnixListener, Option<FileIdent>)> {
    let listener =
        UnixListener::bind(path).map_err(|e| Error::io("cannot bind control socket", path, e))?;
    let ident = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot chmod control socket", path, e))?;
    if let Some(g) = group {
        nix::unistd::chown(path, None, Some(g))
            .map_err(|e| Error::io("cannot chown control socket", path, e.into()))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("cannot configure control socket", path, e))?;
    Ok((listener, ident))
}

/// Removes the socket file at `path` if it is still `ours`: another daemon may have replaced a
/// socket it found stale (or an operator removed ours), and its socket is not ours to delete.
pub(super) fn remove_if_ours(path: &Path, ours: Option<FileIdent>) {
    let current = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if current.is_some() && current == ours {
        let _ = std::fs::remove_file(path);
    } else if current.is_some() {
        log::info!(
            "control: {} is no longer the socket this daemon bound; left in place",
            path.display()
        );
    }
}

/// Whether somebody answers on the socket at `path`: a non-blocking `connect` (a listener with
/// a full backlog answers `EAGAIN` instead of making us wait).
fn probe(path: &Path) -> SocketUse {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let fd = match socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    ) {
        Ok(fd) => fd,
        Err(e) => return SocketUse::Unknown(e.into()),
    };
    let addr = match UnixAddr::new(path) {
        Ok(a) => a,
        Err(e) => return SocketUse::Unknown(e.into()),
    };
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => SocketUse::Live,
        Err(Errno::ECONNREFUSED) => SocketUse::Stale,
        Err(Errno::ENOENT) => SocketUse::Gone,
        Err(e) => SocketUse::Unknown(e.into()),
    }
}

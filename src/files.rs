//! Opening paths that someone other than warden may have put there.
//!
//! A pidfile, a log file or a program's output file lives in a directory that an unprivileged
//! user may be able to write (or that an operator may have got wrong). Whatever is found at such
//! a path must neither hang warden nor be written as if it were a file: every open here is
//! `O_NONBLOCK` (a FIFO with no reader at the other end would otherwise block the open, and with
//! it the whole event loop or a `warden status`), `O_CLOEXEC`, and followed by a check of the
//! file type on the descriptor itself (no window between a `stat` and the `open`). Blocking mode
//! is restored once the type is known to be safe.
//!
//! It also finds a command in `PATH` the way `execvp` would ([`find_program`]), for the
//! supervisor's spawn and for `warden check` alike.
//!
//! This module only opens and looks up; it does not create directories, take locks or log.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Which kinds of file a path may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allow {
    /// A regular file only (pidfiles, rotated output files).
    Regular,
    /// A regular file or a character device (`/dev/console`, `/dev/null`): a log target.
    RegularOrTerminal,
    /// A regular file or a directory (a drop-in pattern may match directories, which the
    /// caller skips).
    RegularOrDirectory,
}

/// `open(path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC, mode)`, then the type
/// check. A symbolic link is followed (log paths are the operator's to choose).
pub(crate) fn open_append(path: &Path, mode: u32, allow: Allow) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true).mode(mode);
    open(&o, path, 0, allow)
}

/// The whole of the regular file at `path` (a symbolic link is followed), read without blocking
/// on whatever else may be there: a configuration file or a drop-in.
pub(crate) fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open_read(path, Allow::Regular)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(bytes)
}

/// `open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)` (a symbolic link is followed),
/// then the type check.
pub(crate) fn open_read(path: &Path, allow: Allow) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    open(&o, path, libc::O_NOCTTY, allow)
}

/// `open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)` of a regular file, then the type
/// check: how a pidfile is read by commands that only look at it.
pub(crate) fn open_read_nofollow(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    open(&o, path, libc::O_NOFOLLOW, Allow::Regular)
}

fn open(o: &OpenOptions, path: &Path, flags: i32, allow: Allow) -> io::Result<File> {
    let file = match o
        .clone()
        .custom_flags(flags | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        // A FIFO opened for writing with nobody reading it, or a Unix socket's file (which no
        // `open` takes): said as what it is.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            let socket = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket());
            let kind = if socket { "a socket" } else { "a FIFO" };
            return Err(not_allowed(kind, allow));
        }
        Err(e) => return Err(e),
    };
    let t = file.metadata()?.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_char_device() {
        (allow == Allow::Regular).then_some("a character device")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        (allow != Allow::RegularOrDirectory).then_some("a directory")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        Some("not a file")
    };
    if let Some(kind) = kind {
        return Err(not_allowed(kind, allow));
    }
    let fl = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)?;
    let fl = nix::fcntl::OFlag::from_bits_retain(fl) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(fl))?;
    Ok(file)
}

fn not_allowed(kind: &str, allow: Allow) -> io::Error {
    let want = match allow {
        Allow::Regular => "a regular file",
        Allow::RegularOrTerminal => "a regular file or a character device",
        Allow::RegularOrDirectory => "a regular file",
    };
    io::Error::other(format!("it is {kind}, not {want}"))
}

/// The search path for a program name when its environment has no `PATH`.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds `program` in `path` (a `PATH` value; [`DEFAULT_PATH`] when `None`): the first
/// executable regular file of that name. A name with a `/` is returned as it is. Used by the
/// supervisor's spawn and by `warden check` (`config::preflight`), so that the check looks a
/// command up as a spawn does.
pub(crate) fn find_program(program: &str, path: Option<&std::ffi::OsStr>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or(DEFAULT_PATH.as_ref());
    for dir in std::env::split_paths(path) {
        let candidate = dir.join(program);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{program} not found in PATH"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("warden-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = dir("fifo");
        let p = d.join("f");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Neither open would return if it blocked (nobody holds the other end).
        let e = open_append(&p, 0o644, Allow::RegularOrTerminal).unwrap_err();
        assert!(e.to_string().contains("it is a FIFO"), "{e}");
        let e = open_read_nofollow(&p).unwrap_err();
        assert!(e.to_string().contains("it is a FIFO"), "{e}");
        let e = read_regular(&p).unwrap_err();
        assert!(e.to_string().contains("it is a FIFO"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_socket_is_named_a_socket() {
        let d = dir("socket");
        let p = d.join("s");
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let e = open_read_nofollow(&p).unwrap_err();
        assert!(
            e.to_string().contains("it is a socket, not a regular file"),
            "{e}"
        );
        let e = open_append(&p, 0o644, Allow::Regular).unwrap_err();
        assert!(e.to_string().contains("it is a socket"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_and_devices_as_allowed() {
        let d = dir("kinds");
        let p = d.join("log");
        let f = open_append(&p, 0o644, Allow::Regular).unwrap();
        let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(fl & libc::O_NONBLOCK, 0, "blocking mode is restored");
        assert!(open_read_nofollow(&p).is_ok());
        let null = Path::new("/dev/null");
        assert!(open_append(null, 0o644, Allow::RegularOrTerminal).is_ok());
        let e = open_append(null, 0o644, Allow::Regular).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let e = open_append(&d, 0o644, Allow::Regular).unwrap_err();
        assert!(e.raw_os_error() == Some(libc::EISDIR), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

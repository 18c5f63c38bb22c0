//! Typed errors of the warden library.
//!
//! Every message names what it is about: the path and the OS error for I/O, the user or group name
//! for lookups, the file, line and column for configuration. The library never decides exit codes;
//! the binary maps these variants to its documented exit statuses in one place (`src/cli/exit.rs`).
//! This module is a leaf: it depends on no other warden module. Configuration diagnostics
//! ([`diag`]), which [`Error::Config`] carries, live here for that reason and are re-exported
//! by [`crate::config`].

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub mod diag;

pub use diag::Diagnostics;

/// The result type of the warden library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the warden library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot open pidfile".
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// A system call not tied to a path failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The system call or step, e.g. "setsid".
        call: &'static str,
        /// The errno it returned.
        #[source]
        source: io::Error,
    },
    /// Another process holds the pidfile lock.
    #[error("already running (pid {})", pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    AlreadyRunning {
        /// The pid written in the pidfile, when it could be read.
        pid: Option<i32>,
        /// The pidfile path.
        path: PathBuf,
    },
    /// A symlink (or other non-regular file) was found where the pidfile should be.
    #[error("refusing pidfile {}: {reason}", path.display())]
    UnsafePidfile {
        /// The pidfile path.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A user name did not resolve.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// A group name did not resolve.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// Forking now would silently lose threads.
    #[error(
        "refusing to fork: this process has {0} threads and fork(2) keeps only the caller; \
         daemonize before starting any thread or async runtime"
    )]
    MultiThreaded(usize),
    /// Privileges could be regained after dropping them.
    #[error("privilege drop failed: {0}")]
    PrivilegeDrop(String),
    /// The daemon reported an error before it was ready (seen by the launcher).
    #[error("{0}")]
    DaemonFailed(String),
    /// The daemon exited without reporting readiness (seen by the launcher).
    #[error("daemon exited before it was ready{}", status.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
    DaemonDied {
        /// How it ended, if the launcher could tell.
        status: Option<String>,
    },
    /// The daemon did not report readiness in time (seen by the launcher).
    #[error("daemon (pid {pid}) did not become ready within {timeout:?}; it was killed")]
    ReadyTimeout {
        /// The daemon's pid.
        pid: i32,
        /// The readiness timeout.
        timeout: Duration,
    },
    /// The configuration is invalid; every problem is listed.
    #[error("{0}")]
    Config(Diagnostics),
    /// A value given to a builder is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The setting concerned.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Sys`] from a `nix` errno.
    pub fn sys(call: &'static str, errno: nix::errno::Errno) -> Self {
        Error::Sys {
            call,
            source: io::Error::from(errno),
        }
    }

    /// A failed system call `call` with its OS error, e.g. `Error::os("epoll_ctl", e)`.
    pub fn os(call: &'static str, source: io::Error) -> Self {
        Error::Sys { call, source }
    }

    /// The OS error number behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Sys { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the OS refused for lack of permission (`EACCES` or `EPERM`).
    pub fn is_permission_denied(&self) -> bool {
        self.raw_os_error().is_some_and(denied)
    }
}

/// Whether an I/O error is the OS refusing for lack of permission (`EACCES` or `EPERM`): what
/// [`Error::is_permission_denied`] asks of a plain [`io::Error`].
pub fn is_permission_denied(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(denied)
}

fn denied(errno: i32) -> bool {
    errno == libc::EACCES || errno == libc::EPERM
}

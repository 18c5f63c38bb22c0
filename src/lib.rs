//! # warden — a Unix daemon framework
//!
//! warden turns a program into a well-behaved daemon, correct to the letter of systemd's
//! daemon(7): double fork and `setsid`, signal and descriptor hygiene, umask, working directory,
//! stdio redirection, a locked pidfile, privilege drop, and a readiness handshake so that the
//! launching command returns only once the daemon is ready — or fails with the reason.
//!
//! ```no_run
//! use warden::{Daemon, Stdio};
//!
//! fn main() -> Result<(), warden::Error> {
//!     let mut daemon = Daemon::new()
//!         .pidfile("/run/example.pid")
//!         .directory("/var/lib/example")
//!         .stderr(Stdio::File("/var/log/example.err".into()))
//!         .start()?; // the launcher exits 0 here once the daemon calls ready()
//!     // Daemonize first, then start threads and runtimes.
//!     daemon.ready();
//!     Ok(())
//! }
//! ```
//!
//! The module map:
//!
//! | module | owns |
//! |---|---|
//! | [`daemon`] | the daemon(7) sequence: detach, pidfile, privilege drop, readiness handshake, `RLIMIT_NOFILE` |
//! | [`config`] | `warden.toml` → validated, immutable specs, every error with file:line:column |
//! | [`error`] | typed errors naming their path, errno or key |
//! | [`signals`] | OS signals as typed events (handlers only record and wake) |
//! | [`hooks`] | exit hooks: LIFO, exactly once, in the registering process |
//! | [`log`] | the `log` backend: stderr (journald-aware), syslog (reconnecting), reopenable file |
//! | [`supervisor`] | the event loop, the child table, restart policy, readiness and output capture |
//! | [`pool`] | typed job pools on supervised worker processes |
//! | [`control`] | the control socket: protocol, authorisation, the server and the client |
//! | [`process`] | a `fork` that refuses to lose threads |
//! | `sys` | the only `unsafe` and raw libc, thin wrappers named after their syscalls |

pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
mod files;
// The fuzz targets' entry points and checks (fuzz/, tests/fuzz_regressions.rs): not API.
#[doc(hidden)]
pub mod fuzzing;
pub mod hooks;
pub mod lifecycle;
pub mod log;
pub mod policy;
pub mod pool;
pub mod process;
pub mod signals;
mod stream;
pub mod supervisor;
mod sys;

pub use daemon::{
    Credentials, Daemon, DaemonHandle, Notifier, Pidfile, PidfileState, ServiceManager, Stdio,
};
pub use error::{Error, Result};
pub use hooks::{exit, on_exit};
pub use process::{Forked, fork};
pub use signals::{SignalAction, SignalEvent, SignalMap, Signals};

/// The README's examples, compiled as doctests so that they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

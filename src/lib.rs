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
//! The module map: [`daemon`] (the daemon(7) sequence), [`config`] (warden.toml), [`error`]
//! (typed errors), `sys` (the only `unsafe`).

pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod hooks;
pub mod log;
pub mod pool;
pub mod process;
pub mod signals;
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

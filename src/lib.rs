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
//! # Anatomy of the crate
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`daemon`] | the daemon(7) sequence: detach, pidfile, privilege drop, readiness handshake, `RLIMIT_NOFILE` | know about programs, pools or the configuration file |
//! | [`supervisor`] | the event loop, the child table, spawning, reaping, output capture, control commands, reload, rolling restarts | parse configuration text, block |
//! | [`pool`] | typed job pools on worker processes, with its own I/O thread and fork server | import the supervisor |
//! | [`lifecycle`] | the pure per-instance state machine (restart, backoff, crash loop, stop, readiness), shared by supervisor and pool | do I/O, read clocks, draw random numbers |
//! | [`policy`] | plain policy data: [`Policy`](policy::Policy), [`ExitStatus`](policy::ExitStatus), jitter, durations in log lines | import any warden module |
//! | [`config`] | `warden.toml` → validated, frozen specs, every error with file:line:column | resolve users, import the supervisor |
//! | [`control`] | the control socket: protocol, admission, authorisation, the server and the client | import or mutate the supervisor |
//! | [`signals`] | OS signals as typed events (handlers only record and wake) | decide policy |
//! | [`hooks`] | exit hooks: LIFO, exactly once, in the registering process | exit the process |
//! | [`log`] | the `log` backend: stderr (journald-aware), syslog (reconnecting), reopenable file | run between `fork` and `exec` |
//! | [`error`] | typed errors naming their path, errno or key; configuration diagnostics | import any warden module |
//! | [`process`] | a `fork` that refuses to lose threads | |
//! | [`activation`] | the program's side of socket activation: taking the sockets passed as descriptors 3, 4, … | change the environment, know about the supervisor |
//! | `stream` | the one non-blocking read loop and line framing | poll, log |
//! | `files` | non-blocking, type-checked opens of paths others may have planted; `PATH` lookup | create directories, lock, log |
//! | `sys` | the only `unsafe` and raw libc, thin wrappers named after their system calls | hold state, log, allocate between `fork` and `exec` |
//!
//! Data flows one way: configuration is frozen and passed down, runtime state lives in one
//! event loop (the supervisor's, or a pool's I/O thread), and every event reaches that loop as
//! readiness on one of its descriptors:
//!
//! ```text
//! warden.toml ─▶ config ─▶ Daemon::start ─▶ Supervisor::run ─▶ Instance::step ─▶ actions
//!                                              ▲ epoll: signals (self-pipe), notify socket,
//!                                              │ control socket, guard, exec reports, pipes
//! ```
//!
//! Imports between these modules follow a table with no circle (`ARCHITECTURE.md` in the
//! repository, checked by `scripts/check-imports`): the leaves `error`, `policy` and `stream`
//! import nothing from warden, `lifecycle` only `policy`, and neither `config`, `control` nor
//! `pool` imports the supervisor.
//!
//! Process-global state, in one list: the descriptors that children must not inherit (`daemon`),
//! the `RLIMIT_NOFILE` warden started with (`daemon`, handed back to workers), the exit hooks and
//! their total deadline ([`hooks`]), the global logger ([`log`]), the signal handlers
//! ([`signals`]), and the pool's worker environment (`WARDEN_POOL_WORKER`, `WARDEN_POOL_INDEX`).
//!
//! # Limitations
//!
//! - **Linux only.** warden uses `epoll` (through mio), `pidfd`, `close_range`,
//!   `PR_SET_PDEATHSIG`, `PR_SET_CHILD_SUBREAPER`, `SO_PEERCRED`/`SO_PEERGROUPS` and `/proc`.
//! - **Fork without exec needs a single thread.** [`Daemon::start`], [`fork`], function workers
//!   ([`supervisor::Work::Fn`]) and the pool's `Fork` start method refuse in a multi-threaded
//!   process ([`Error::MultiThreaded`]): daemonize first, then start threads and runtimes, or use
//!   the pool's `ExecSelf` start method.
//! - **Exit hooks run on every orderly way out** ([`exit`], the drop of the
//!   [`DaemonHandle`], a signal-initiated shutdown that ends in one of those); nothing can run
//!   them on `SIGKILL`, `abort()`, a crash, or with `panic = "abort"` (the pidfile's lock dies
//!   with the process, and the next start takes the stale file over).
//! - **Containment needs cgroup v2 to be complete.** In cgroup mode
//!   ([`supervisor::Supervisor::set_cgroups`], the `warden` binary's default where it may create
//!   cgroups) nothing of an instance escapes its cgroup, and the guard process kills every
//!   instance's cgroup if warden dies. Without cgroups, a worker's process group and the guard
//!   contain it, and a grandchild that calls `setsid` leaves its group (it is still killed at
//!   warden's shutdown through the subreaper, but not after a `SIGKILL` of warden). In both
//!   modes, a `SIGKILL` that takes warden *and* its guard together leaves escaped descendants
//!   running until the next warden starts in the same cgroup (or, under systemd, until the
//!   unit's own kill).
//! - **One global logger per process**: [`log::init`] can be called once.

pub mod activation;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
mod files;
// The fuzz targets' entry points and checks (fuzz/, tests/it/fuzz_regressions.rs): not API.
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
#[cfg(test)]
mod test_support;

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

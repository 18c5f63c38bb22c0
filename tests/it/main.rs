//! warden's integration tests: one test binary (`cargo test --test integration`), one module per
//! area, sharing the harness in [`common`]. Each module opens with what it covers and how it
//! looks; the list below says where to find a test.
//!
//! A test that starts processes opens with `let test = this_test!();` (see [`common`]): a `Test`
//! named after the enclosing `#[test] fn`, which names the test's sandbox, its `[timing]` line
//! and its `SKIPPED` messages, so that no test name is typed twice.
//! Programs the tests run that are not examples to copy live in `tests/fixtures/`.

/// The harness: sandboxes, the real `warden` binary, bounded waits, `/proc` observers, and the
/// helpers several areas share (a program table in TOML, python, exit codes).
#[macro_use]
mod common;

/// Socket activation from the program's side: `warden::activation` in the fixture
/// `tests/fixtures/activated.rs`, started with hand-made `LISTEN_*` variables.
mod activation;
/// cgroup v2 per instance: a `setsid`/double-forked grandchild left by nothing (stop, SIGKILL of
/// warden, of warden and its guard), down when the cgroup empties, the mode in status, `off`,
/// limits that cannot be applied named by `check` and `start`, across `warden upgrade`.
mod cgroup;
/// `--help`, the bundled example configuration run as the README says, the licence files.
mod cli;
/// The shipped shell completions are what `warden completions SHELL` prints.
mod completions;
/// The control plane against a running daemon: status, authorisation, reload, rolling restart,
/// scale, stop/start of programs, the pidfile when the socket is gone.
mod control;
/// The daemon(7) sequence of `warden start`, `stop`, `status`, `check` and `run`.
mod daemon;
/// Dependencies between programs: start order gated on readiness, `waiting`, the `requires`
/// cascade, cycles, the shutdown in reverse dependency order.
mod deps;
/// Environment files: order under `env`, optional and missing files, edits applied by restart,
/// a missing file reported once and in status, `check` naming a broken file's line.
mod env_file;
/// The event stream (`warden events`, a subscriber that does not read cut off) and JSON logs
/// (`log_format = "json"`).
mod events;
/// Function workers through the library (`examples/fn_workers.rs`).
mod fn_workers;
/// The fuzz targets' seeds and regressions replayed on stable.
mod fuzz_regressions;
/// Health checks against real servers (`tests/fixtures/httpd.rs`): liveness restarts in time,
/// HTTP/TCP/exec probes and their errors, `start_period`, `ready = "health"` in a stack, reload,
/// the configuration errors, the example stack in `examples/stack/`.
mod health;
/// Exit hooks, the signal map and the notify protocol, through `tests/fixtures/lifecycle.rs`.
mod lifecycle;
/// Logging against real peers: logrotate, a syslog receiver, journald prefixes, reopen-logs.
mod logging;
/// `[daemon] metrics`: `GET /metrics` read by the real Python parsers, counters by restart
/// reason, 404/405, silent clients, memory over 1,000 scrapes, no wake-ups while idle.
mod metrics;
/// warden as a container's PID 1 (`unshare --pid`) and `exit_on_fatal`.
mod pid1;
/// `pid_namespace = true`: nothing left after a SIGKILL of warden and its guard together; the
/// pids programs see and `status` shows; the guard's signals and death; no `CAP_SYS_ADMIN`.
mod pidns;
/// The job pool from the outside, one scenario of `tests/fixtures/pool_scenarios.rs` per test.
mod pool;
/// Property tests (proptest) of the parsers and of the supervisor's state machine.
mod properties;
/// Rolling restarts with `update = "surge"` under load (no failed request), probation and the
/// automatic rollback of a bad rollout (an exit, a readiness never reached, a failed health
/// check), the `rolled back` mark.
mod rollout;
/// Sockets held by warden and passed to programs (socket activation), through
/// `tests/fixtures/activated.rs`.
mod sockets;
/// The supervisor against real processes: restarts, backoff, stop escalation, reaping, readiness,
/// output capture, chaos, scaling and the shutdown order.
mod supervisor;
/// `warden upgrade` and `SIGUSR2`: same pid, programs, counters, output, watchdog and held
/// socket across the exec; a binary that is no warden, fails its check or reads another state
/// format is refused; a new image that cannot take over goes back to the previous binary.
mod upgrade;

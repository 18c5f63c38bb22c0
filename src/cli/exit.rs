//! The one place where errors become exit statuses. Documented in README.md and warden(8).
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success (`stop` on a stopped daemon included) |
//! | 1 | the operation failed: the daemon reported an error or died before it was ready, it is already running, `stop` timed out, `reopen-logs` could not reopen a file |
//! | 2 | bad command-line usage (a `--timeout` that is no duration; `reload -c FILE` naming another file than the running daemon's), or a value the daemon refuses (`scale` beyond the limit) |
//! | 4 | permission denied (control socket, another user's `/proc/PID/fd`, a log file) |
//! | 5 | no such program |
//! | 6 | the configuration is missing or invalid: no such file, a directory, not UTF-8, errors in it (`reload`: the new file is invalid; the daemon keeps the old one) |
//! | 7 | the daemon is not running (commands that need it: `reload`, `scale`, program `start`/`stop`/`restart`, `reopen-logs`); one its pidfile says runs but not answering on the socket the file names is 1 |
//!
//! `status` answers with LSB codes instead: 0 running, 1 dead but the pidfile remains, 3 not
//! running, 4 unknown (e.g. no permission, or no configuration file to find the daemon by). With
//! program names: 0 when every instance of them is up, 150 when one is not (starting, stopping,
//! backoff, exited, stopped), 151 when one is fatal, 152 when a name is unknown; a program scaled
//! to 0 instances counts as up. `check` answers 0 or 1. `status --json` prints JSON on stdout
//! whatever the outcome but an unknown program name (its message on stderr), with these same
//! statuses.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use warden::Error;

/// Defines exit statuses as `pub const`s together with `ALL`, the list of every one of them, so
/// that no status can be defined without being listed: warden(8)'s EXIT STATUS is checked
/// against `ALL` (src/cli/man_tests.rs).
macro_rules! statuses {
    ($($name:ident = $value:literal;)*) => {
        $(pub const $name: u8 = $value;)*
        /// Every status defined here, with its name.
        #[cfg(test)]
        pub const ALL: &[(&str, u8)] = &[$((stringify!($name), $name)),*];
    };
}

statuses! {
    OK = 0;
    FAILURE = 1;
    USAGE = 2;
    NO_PERMISSION = 4;
    NO_SUCH_PROGRAM = 5;
    CONFIG = 6;
    NOT_RUNNING = 7;
}

/// The statuses of `warden status` (LSB, then per program).
pub mod status {
    statuses! {
        RUNNING = 0;
        DEAD_PIDFILE = 1;
        NOT_RUNNING = 3;
        UNKNOWN = 4;
        PROGRAM_DOWN = 150;
        PROGRAM_FATAL = 151;
        NO_SUCH_PROGRAM = 152;
    }
}

/// Whether errors and warnings go to standard error as JSON lines (`warden run` with
/// `log_format = "json"`: the stream a log shipper reads), rather than `warden: …`.
static JSON: AtomicBool = AtomicBool::new(false);

/// From now on, errors and warnings are printed as JSON lines (see [`JSON`]).
pub fn print_as_json() {
    JSON.store(true, Ordering::Relaxed);
}

/// Prints one error: `warden: MESSAGE`, or a JSON line.
pub fn say_error(message: &dyn std::fmt::Display) {
    eprintln!("{}", error_text(&message.to_string()));
}

/// What [`say_error`] prints.
fn error_text(message: &str) -> String {
    json_or(log::Level::Error, message).unwrap_or_else(|| format!("warden: {message}"))
}

/// `message` as a JSON line at `level` when errors are printed so, else `None`.
pub fn json_or(level: log::Level, message: &str) -> Option<String> {
    JSON.load(Ordering::Relaxed)
        .then(|| warden::log::json_line(level, message))
}

/// Prints `err` (each configuration problem on its own line) and returns its exit status.
pub fn report(err: &Error) -> ExitCode {
    match err {
        Error::Config(diags) => {
            for d in diags.iter() {
                say_error(d);
            }
        }
        other => say_error(other),
    }
    ExitCode::from(code(err))
}

/// The exit status for `err`.
pub fn code(err: &Error) -> u8 {
    match err {
        Error::Config(_) | Error::UnknownUser(_) | Error::UnknownGroup(_) => CONFIG,
        // Missing, a directory, unreadable for a reason other than permissions: no usable
        // configuration (a file that is not UTF-8 is an `Error::Config`).
        Error::Io {
            what: "cannot read configuration",
            source,
            ..
        } if !warden::error::is_permission_denied(source) => CONFIG,
        e if e.is_permission_denied() => NO_PERMISSION,
        _ => FAILURE,
    }
}

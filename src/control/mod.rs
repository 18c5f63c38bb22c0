//! The control plane: a Unix stream socket speaking versioned, line-delimited JSON.
//!
//! [`server`] accepts connections inside the supervisor's event loop (never blocking it),
//! authorises each peer by `SO_PEERCRED`, bounds every buffer, and turns well-formed lines into
//! [`Request`]s that the supervisor carries out; it never changes supervisor state itself.
//! [`client`] is what the `warden` command uses.
//!
//! # Protocol (version 1)
//!
//! One request per line, a JSON object with `"v": 1` and `"cmd"` (the command's name, a string),
//! read by [`Request::parse_line`]: a key written twice, or a field the command does not have,
//! makes the line a `bad-request`.
//!
//! | `cmd` | fields | needs |
//! |---|---|---|
//! | `status` | `programs` (list, optional) | read |
//! | `start`, `stop`, `restart` | `programs` (list) | write |
//! | `scale` | `program`, `instances` | write |
//! | `reload` | `dry_run` (bool, optional) | write |
//! | `reopen-logs` | — | write |
//! | `events` | — | read |
//!
//! The server answers each request with zero or more progress lines `{"v":1,"progress":"…"}`
//! followed by exactly one final line: `{"v":1,"ok":true,"result":…}` or
//! `{"v":1,"ok":false,"error":"…","kind":"…"}` (`kind` is one of `bad-request`, `denied`,
//! `no-such-program`, `invalid-config`, `failed`, `busy`, `io`, `io-denied`). Lines are at most
//! [`MAX_LINE`] bytes; a longer one is answered with an error and the connection closed. A client
//! must keep its side of the connection open until the final reply: closing it (or shutting down
//! its write side) cancels the wait — the operation itself goes on. A connection with no request in
//! progress for [`server::IDLE_TIMEOUT`] is closed, and the number of connections is bounded (see
//! [`admission`]): a connection over a limit gets one `busy` error line and is closed.
//!
//! `status` results have the stable schema documented on [`StatusReport`].
//!
//! # The event stream
//!
//! `events` turns the connection into a stream: every state change from then on comes as a line
//! `{"v":1,"event":{…}}` (an [`events::EventRecord`], schema in [`events`]), until warden stops,
//! when the final line `{"v":1,"ok":true,"result":{"stopped":true}}` ends it. Nothing else may be
//! asked on that connection (a request is answered `bad-request`). A subscriber that does not read
//! is cut off: once [`server::EVENTS_MAX_OUTPUT`] bytes wait for it, its connection is closed
//! (and the log says whose it was), so that a stream ending without the final line means the
//! client was cut off or warden was killed.
//!
//! # `warden status --json`
//!
//! With a daemon that answers, `warden status --json` prints its [`StatusReport`], in which
//! `daemon.running` is `true` and `daemon.state` is `"running"`. When no daemon answers it still
//! prints one JSON object on stdout (its message for humans goes to stderr), with the same exit
//! status as without `--json`, and in the same shape, so that `jq .daemon.running` works on
//! every answer:
//!
//! ```json
//! {"daemon": {"running": false, "state": "not running", "pid": null,
//!             "config": "/etc/warden/warden.toml"},
//!  "instances": [], "programs": []}
//! ```
//!
//! | `daemon.state` | `daemon.running` | `pid` | `instances`, `programs` | exit status |
//! |---|---|---|---|---|
//! | `"running"`, the daemon answered | `true` | its pid | as in [`StatusReport`] | 0 (or 150–152 with program names) |
//! | `"running"`, its pidfile is locked but its control socket cannot be reached | `true` | its pid, `null` if it wrote none yet | absent: unknown | 0 (4 with program names) |
//! | `"not running"` | `false` | `null` | `[]` | 3 |
//! | `"dead"`: not running, its pidfile remains | `false` | the pid the pidfile names, or `null` | `[]` | 1 |
//! | `"unknown"`: no permission, no configuration to find the daemon by, a daemon that does not answer | `null` | `null` | absent | 4 |
//!
//! `config` is the absolute path of the configuration file (the one the daemon runs when it
//! answered; the one named by `-c` otherwise). A program name the daemon does not know (exit
//! 152) prints nothing on stdout.

pub mod admission;
pub mod client;
pub mod events;
mod request;
pub mod server;
mod socket_file;

use serde::{Deserialize, Serialize};

/// The protocol version spoken by this build.
pub const VERSION: u32 = 1;

/// The longest request or response line, in bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The protocol version; must be [`VERSION`].
    pub v: u32,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

/// The commands of protocol version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Every instance, or those of the named programs.
    Status {
        /// Programs to report (all when empty).
        #[serde(default)]
        programs: Vec<String>,
    },
    /// Start the named programs (a manual start: resets backoff and crash-loop state).
    Start {
        /// Programs.
        programs: Vec<String>,
    },
    /// Stop the named programs and keep them down until started again.
    Stop {
        /// Programs.
        programs: Vec<String>,
    },
    /// Rolling restart of the named programs, one instance at a time.
    Restart {
        /// Programs.
        programs: Vec<String>,
    },
    /// Set the number of instances of a program.
    Scale {
        /// The program.
        program: String,
        /// The new number of instances.
        instances: u32,
    },
    /// Re-read the configuration and apply what changed.
    Reload {
        /// Only report the plan.
        #[serde(default)]
        dry_run: bool,
    },
    /// Reopen log files.
    ReopenLogs,
    /// Replace the running warden with the binary now at its path, in place: same pid, every
    /// program untouched (answered by the new image once it has taken over).
    Upgrade,
    /// Stream every state change from now on (see [the event stream](self#the-event-stream)).
    Events,
}

impl Command {
    /// Whether the command changes anything (and so needs write access).
    pub fn writes(&self) -> bool {
        !matches!(self, Command::Status { .. } | Command::Events)
    }
}

/// The kinds of errors a request can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Not JSON, wrong version, unknown command or fields, line too long.
    BadRequest,
    /// The peer may not do this.
    Denied,
    /// A named program does not exist.
    NoSuchProgram,
    /// The configuration file is invalid (reload).
    InvalidConfig,
    /// The operation failed.
    Failed,
    /// Too many connections, warden out of file descriptors, or a conflicting operation in
    /// progress.
    Busy,
    /// An I/O operation of the daemon failed (e.g. `reopen-logs` could not open a log file).
    Io,
    /// Like [`ErrorKind::Io`], and the OS said permission denied (`EACCES`/`EPERM`).
    IoDenied,
}

/// One line sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// An intermediate report while a command waits.
    Progress {
        /// The protocol version.
        v: u32,
        /// What is still being waited for.
        progress: String,
    },
    /// The final answer: success.
    Done {
        /// The protocol version.
        v: u32,
        /// Always true.
        ok: bool,
        /// The command's result.
        result: serde_json::Value,
    },
    /// The final answer: failure.
    Failed {
        /// The protocol version.
        v: u32,
        /// Always false.
        ok: bool,
        /// A message for humans.
        error: String,
        /// A kind for scripts.
        kind: ErrorKind,
    },
    /// One event of an `events` stream.
    Event {
        /// The protocol version.
        v: u32,
        /// What happened (boxed: a reply is mostly something smaller).
        event: Box<events::EventRecord>,
    },
}

impl Reply {
    /// A success carrying `result`.
    pub fn done(result: serde_json::Value) -> Reply {
        Reply::Done {
            v: VERSION,
            ok: true,
            result,
        }
    }

    /// A failure.
    pub fn failed(kind: ErrorKind, error: impl Into<String>) -> Reply {
        Reply::Failed {
            v: VERSION,
            ok: false,
            error: error.into(),
            kind,
        }
    }

    /// A progress report.
    pub fn progress(text: impl Into<String>) -> Reply {
        Reply::Progress {
            v: VERSION,
            progress: text.into(),
        }
    }

    /// An event of an `events` stream.
    pub fn event(event: events::EventRecord) -> Reply {
        Reply::Event {
            v: VERSION,
            event: Box::new(event),
        }
    }

    /// The reply as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"v":1,"ok":false,"error":"unserialisable reply","kind":"failed"}"#.to_string()
        });
        s.push('\n');
        s
    }
}

/// The result of `status`: the daemon and every instance.
///
/// ```json
/// {"daemon": {"running": true, "state": "running", "pid": 812, "version": "0.1.0",
///             "uptime_secs": 3600.2, "config": "/etc/warden/warden.toml"},
///  "instances": [{"program": "web", "index": 0, "pid": 901, "state": "ready",
///                 "uptime_secs": 3599.9, "restarts": 0, "last_exit": null, "status": "serving"}],
///  "programs": [{"program": "web", "instances": 1, "file": "/etc/warden/warden.toml"},
///               {"program": "spare", "instances": 0, "file": "/etc/warden/conf.d/spare.toml"}]}
/// ```
///
/// `programs` lists every program reported, with its configured number of instances — also
/// those scaled to 0, which have no entry in `instances` — and `file`, the absolute path of the
/// configuration file that defines it (the main file or a drop-in read through `include`;
/// `null` for a program a library user built in code).
///
/// `state` is one of `starting`, `running`, `ready`, `backoff`, `stopping`, `exited` (ended on
/// its own and not restarted), `stopped` (stopped by hand, kept down until started), `fatal`;
/// `pid`, `uptime_secs`, `last_exit` and `status` may be `null`; `last_exit` is
/// `{"code": N}` or `{"signal": N, "name": "SIGKILL", "core_dumped": false}`. Fields may be
/// added in later versions; none will be removed or change meaning within version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon itself.
    pub daemon: DaemonInfo,
    /// Every instance, programs in configuration order.
    pub instances: Vec<InstanceInfo>,
    /// Every program reported, in configuration order (empty when an older daemon left it out).
    #[serde(default)]
    pub programs: Vec<ProgramInfo>,
    /// The listening sockets warden holds, with the programs that receive them (left out of
    /// the JSON when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<SocketInfo>,
}

/// One program in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramInfo {
    /// The program.
    pub program: String,
    /// How many instances it is configured (or scaled) to run.
    pub instances: u32,
    /// The configuration file that defines it, absolute; `None` for a program built in code
    /// (and from a daemon older than this field).
    #[serde(default)]
    pub file: Option<String>,
    /// The programs it starts after (`after`; left out of the JSON when empty, as the next).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// The programs it requires (`requires`; they are started after too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// How its rolling restarts replace an instance (`update`): `"surge"`; left out of the
    /// JSON for the default, `"replace"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    /// Why the last reload that changed it was rolled back (`web[0] exited with status 1 after
    /// 400ms`): it runs its previous settings until a reload applies again. Left out of the
    /// JSON when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
}

/// The daemon part of a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Always `true` from a daemon: it answered. (`warden status --json` prints `false` or
    /// `null` here when none answers: see the [module documentation](self).)
    #[serde(default = "DaemonInfo::answered")]
    pub running: bool,
    /// Always `"running"` from a daemon (`"not running"`, `"dead"` or `"unknown"` when
    /// `warden status --json` finds none).
    #[serde(default = "DaemonInfo::running_state")]
    pub state: String,
    /// The daemon's pid.
    pub pid: u32,
    /// warden's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: f64,
    /// The configuration file.
    pub config: String,
    /// How instances are tracked: `"cgroup"` (each in a cgroup v2 of its own) or
    /// `"process-group"` (process groups and the guard); absent from an older daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// In cgroup mode, warden's base cgroup (the instances' cgroups are under its `programs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// In PID-namespace mode (`[daemon] pid_namespace`), the namespace every instance is
    /// created in, as `/proc/PID/ns/pid` names it: `pid:[4026532123]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_namespace: Option<String>,
}

impl DaemonInfo {
    /// What a daemon that answers is: running (also the default for an older daemon's reply).
    pub fn answered() -> bool {
        true
    }

    /// The `state` of a daemon that answers: `"running"`.
    pub fn running_state() -> String {
        "running".to_string()
    }
}

/// One instance in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The program.
    pub program: String,
    /// The instance index.
    pub index: usize,
    /// Its main pid, when up.
    pub pid: Option<i32>,
    /// Its state.
    pub state: String,
    /// Seconds since its process started, when up.
    pub uptime_secs: Option<f64>,
    /// Restarts so far.
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<LastExit>,
    /// Its last `STATUS=` text, or why it cannot be started (until a start succeeds).
    pub status: Option<String>,
    /// While `waiting`: the programs it starts after that are not ready yet (left out of the
    /// JSON when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// While `waiting` because a program it requires was stopped by hand or went `fatal`: why
    /// (`db stopped`, `db fatal`); left out of the JSON when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    /// Its health check, while it is up and its program has one; `null` otherwise.
    #[serde(default)]
    pub health: Option<HealthInfo>,
    /// A surge replacement started beside the instance with the same index during a rolling
    /// restart, not yet in its place (left out of the JSON when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incoming: bool,
    /// Scaled away, or replaced by a surge replacement: stopping for good, then gone from the
    /// report (left out of the JSON when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retiring: bool,
}

/// A listening socket warden holds (`[socket.NAME]`), in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// Its name.
    pub name: String,
    /// Where it listens (`127.0.0.1:8080`, `/run/web.sock`).
    pub listen: String,
    /// Its inode: the same for as long as warden holds it.
    pub inode: u64,
    /// The programs that receive it.
    pub programs: Vec<String>,
}

/// One instance's health check in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// `passing`, `failing` or `starting`.
    pub state: String,
    /// Failures in a row that count towards `retries`.
    pub failures: u32,
    /// The program's `retries`.
    pub retries: u32,
    /// The last failure's error, until a check passes.
    pub last_error: Option<String>,
}

impl HealthInfo {
    /// The HEALTH column of `warden status`: `passing`, `starting`, `failing 2/3: HTTP 500`.
    pub fn text(&self) -> String {
        match (self.state.as_str(), &self.last_error) {
            ("failing", Some(e)) => format!("failing {}/{}: {e}", self.failures, self.retries),
            ("failing", None) => format!("failing {}/{}", self.failures, self.retries),
            (state, _) => state.to_string(),
        }
    }
}

impl InstanceInfo {
    /// Whether it is one of the instances its program is configured to run: not a surge
    /// replacement still starting, nor an instance stopping for good (scaled away or replaced).
    /// Only those count in `status PROGRAM`'s exit status and in `healthcheck`.
    pub fn is_configured(&self) -> bool {
        !self.incoming && !self.retiring
    }

    /// The STATE column of `warden status`: the state, and for a `waiting` instance what it
    /// waits for (`waiting (for db)`) or why (`waiting (db stopped)`).
    pub fn state_text(&self) -> String {
        match (&self.waiting_reason, self.waiting_for.is_empty()) {
            (Some(why), _) => format!("{} ({why})", self.state),
            (None, false) => format!("{} (for {})", self.state, self.waiting_for.join(", ")),
            (None, true) if self.incoming => format!("{} (replacement)", self.state),
            (None, true) if self.retiring => format!("{} (replaced)", self.state),
            (None, true) => self.state.clone(),
        }
    }
}

/// How a process ended, in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LastExit {
    /// It exited with a code.
    Code {
        /// The exit code.
        code: i32,
        /// Why warden ended it, when it did on a verdict of its own (`"health"`); left out of
        /// the JSON otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A signal ended it.
    Signal {
        /// The signal number.
        signal: i32,
        /// Its name.
        name: String,
        /// Whether it dumped core.
        core_dumped: bool,
        /// Why warden ended it, when it did on a verdict of its own (`"health"`); left out of
        /// the JSON otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl LastExit {
    /// Why warden ended the process, if it did on a verdict of its own (`health`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            LastExit::Code { reason, .. } | LastExit::Signal { reason, .. } => reason.as_deref(),
        }
    }

    /// Sets [`LastExit::reason`].
    pub fn set_reason(&mut self, new: Option<String>) {
        match self {
            LastExit::Code { reason, .. } | LastExit::Signal { reason, .. } => *reason = new,
        }
    }
}

impl From<crate::policy::ExitStatus> for LastExit {
    fn from(e: crate::policy::ExitStatus) -> Self {
        match e {
            crate::policy::ExitStatus::Code(code) => LastExit::Code { code, reason: None },
            crate::policy::ExitStatus::Signal {
                signal,
                core_dumped,
            } => LastExit::Signal {
                signal,
                name: crate::policy::known_signal_name(signal)
                    .unwrap_or_else(|| format!("SIG{signal}")),
                core_dumped,
                reason: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r: Request =
            serde_json::from_str(r#"{"v":1,"cmd":"scale","program":"web","instances":3}"#).unwrap();
        assert_eq!(
            r.command,
            Command::Scale {
                program: "web".into(),
                instances: 3
            }
        );
        let r: Request = serde_json::from_str(r#"{"v":1,"cmd":"status"}"#).unwrap();
        assert_eq!(r.command, Command::Status { programs: vec![] });
        let r: Request = serde_json::from_str(r#"{"v":1,"cmd":"reopen-logs"}"#).unwrap();
        assert_eq!(r.command, Command::ReopenLogs);
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"cmd":"explode"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"v":1,"cmd":"stop","programs":["a"],"x":1}"#)
                .is_err()
        );
        let line = serde_json::to_string(&Request {
            v: 1,
            command: Command::Reload { dry_run: true },
        })
        .unwrap();
        assert_eq!(line, r#"{"v":1,"cmd":"reload","dry_run":true}"#);
    }

    #[test]
    fn replies_are_one_line() {
        let l = Reply::failed(ErrorKind::Denied, "no").to_line();
        assert_eq!(
            l,
            "{\"v\":1,\"ok\":false,\"error\":\"no\",\"kind\":\"denied\"}\n"
        );
        let back: Reply = serde_json::from_str(l.trim()).unwrap();
        assert_eq!(back, Reply::failed(ErrorKind::Denied, "no"));
        let p: Reply = serde_json::from_str(r#"{"v":1,"progress":"web[0] stopping"}"#).unwrap();
        assert_eq!(p, Reply::progress("web[0] stopping"));
    }
}

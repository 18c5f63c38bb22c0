//! The commands that talk to a running daemon through its control socket: status (table and
//! JSON), start/stop/restart of programs, scale, reload, reopen-logs. Progress is shown on a
//! terminal while a command waits; scripts get silence and exit statuses.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use warden::config::Config;
use warden::control::client::{Client, ClientError};
use warden::control::{Command, ErrorKind, InstanceInfo, LastExit, Reply, StatusReport};
use warden::{Pidfile, PidfileState};

use super::exit;

/// Connects, reporting why not; `None` when the daemon is not reachable (message printed unless
/// `quiet`), with the exit status to use.
fn connect(config: &Config, quiet: bool, timeout: Duration) -> Result<Client, u8> {
    match Client::connect_timeout(&config.daemon.control_socket, timeout) {
        Ok(c) => Ok(c),
        // Somebody holds the socket but accepts nothing (stopped, flooded): not "not running".
        Err(e) if e.is_connect_timeout() => {
            if !quiet {
                eprintln!("warden: {e}");
            }
            Err(exit::FAILURE)
        }
        Err(ClientError::Connect { source, .. })
            if warden::error::is_permission_denied(&source) =>
        {
            if !quiet {
                eprintln!(
                    "warden: permission denied on the control socket {}",
                    config.daemon.control_socket.display()
                );
            }
            Err(exit::NO_PERMISSION)
        }
        Err(e) => {
            // Its pidfile says it runs: the control socket moved in the file since it started.
            if let Ok(PidfileState::Running(pid)) = Pidfile::probe(&config.daemon.pidfile) {
                if !quiet {
                    let pid = pid.map_or_else(|| "unknown".into(), |p| p.to_string());
                    eprintln!(
                        "warden: warden runs (pid {pid}) but does not answer on {} ({e}): was \
                         control_socket changed since it started? Revert the change, or restart \
                         warden (`warden restart`)",
                        config.daemon.control_socket.display()
                    );
                }
                return Err(exit::FAILURE);
            }
            if !quiet {
                eprintln!("warden: not running ({e})");
            }
            Err(exit::NOT_RUNNING)
        }
    }
}

/// Shows what a waiting command is waiting for, on one rewritten terminal line.
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, text: &str) {
        if self.tty {
            let width = 100;
            let text: String = text.chars().take(width).collect();
            eprint!("\r\x1b[K{text}");
            self.shown = true;
        }
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

fn kind_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::BadRequest => exit::USAGE,
        ErrorKind::Denied | ErrorKind::IoDenied => exit::NO_PERMISSION,
        ErrorKind::NoSuchProgram => exit::NO_SUCH_PROGRAM,
        ErrorKind::InvalidConfig => exit::CONFIG,
        ErrorKind::Failed | ErrorKind::Busy | ErrorKind::Io => exit::FAILURE,
    }
}

/// Sends `command`, waits up to `timeout`, prints the outcome.
pub fn command(config: &Config, command: Command, timeout: Duration) -> ExitCode {
    run(config, command, timeout, false).unwrap_or_else(ExitCode::from)
}

/// Like [`command`], but when the daemon cannot be reached nothing is printed and the error is
/// the exit status that says why ([`exit::NOT_RUNNING`] or [`exit::NO_PERMISSION`]).
pub fn command_quiet(config: &Config, command: Command, timeout: Duration) -> Result<ExitCode, u8> {
    run(config, command, timeout, true)
}

fn run(config: &Config, command: Command, timeout: Duration, quiet: bool) -> Result<ExitCode, u8> {
    // `--timeout` bounds the whole command: connecting, the reload's file check, the request.
    let deadline = std::time::Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    let mut client = connect(config, quiet, left())?;
    if matches!(command, Command::Reload { .. })
        && let Err(code) = same_file(&mut client, config, left())
    {
        return Ok(ExitCode::from(code));
    }
    let asked = timeout;
    let timeout = left();
    let dry_run = matches!(command, Command::Reload { dry_run: true });
    let is_reload = matches!(command, Command::Reload { .. });
    let is_upgrade = matches!(command, Command::Upgrade);
    let confirmation = confirmation(&command);
    let mut progress = Progress::new();
    let reply = client.request(command, timeout, |p| progress.show(p));
    progress.clear();
    match reply {
        Ok(Reply::Done { result, .. }) => {
            if is_reload {
                print_plan(&result, dry_run);
            }
            if is_upgrade {
                print_upgraded(&result);
            }
            for line in confirmation {
                println!("{line}");
            }
            Ok(ExitCode::from(exit::OK))
        }
        Ok(Reply::Failed { error, kind, .. }) => {
            for line in error.lines() {
                eprintln!("warden: {line}");
            }
            Ok(ExitCode::from(kind_code(kind)))
        }
        Ok(Reply::Progress { .. } | Reply::Event { .. }) => {
            unreachable!("the client returns final replies only")
        }
        // Said with the `--timeout` the operator gave, not what was left of it for this step.
        Err(ClientError::Timeout { waiting, .. }) => {
            let e = ClientError::Timeout {
                after: asked,
                waiting,
            };
            eprintln!("warden: {e}");
            Ok(ExitCode::from(exit::FAILURE))
        }
        Err(e) => {
            eprintln!("warden: {e}");
            Ok(ExitCode::from(exit::FAILURE))
        }
    }
}

/// `warden events [--json]`: every event on stdout, one line each, until warden stops (exit 0).
/// A stream that ends without warden's final line (it was killed, or cut this client off for
/// reading too slowly) is an error (exit 1); a daemon that cannot be reached says so as every
/// control command does (exit 7 when not running).
pub fn events(config: &Config, json: bool) -> ExitCode {
    let mut client = match connect(config, false, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(code) => return ExitCode::from(code),
    };
    let outcome = client.events(|event| {
        if json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
        } else {
            println!("{}", event.human());
        }
    });
    match outcome {
        Ok(Reply::Failed { error, kind, .. }) => {
            eprintln!("warden: {error}");
            ExitCode::from(kind_code(kind))
        }
        Ok(_) => ExitCode::from(exit::OK),
        Err(e) if e.is_dropped_unanswered() => {
            eprintln!(
                "warden: the event stream ended before warden stopped: warden was killed, or cut \
                 this client off for reading too slowly"
            );
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => {
            eprintln!("warden: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Whether the daemon behind `client` runs the file `config` was read from — a reload re-reads
/// the daemon's own file, so `-c` naming another one (which merely shares its control socket)
/// would otherwise look applied while nothing of it is. Both paths are compared after
/// resolving symlinks, `.` and `..` (`-c ./warden.toml` is the daemon's absolute path); the
/// daemon's as it reports it in `status`, which works with any daemon of protocol 1. On a
/// mismatch it prints both and returns exit 2 (usage: the command line names the wrong file).
fn same_file(client: &mut Client, config: &Config, timeout: Duration) -> Result<(), u8> {
    let reply = client.request(Command::Status { programs: vec![] }, timeout, |_| {});
    let running = match reply {
        Ok(Reply::Done { result, .. }) => serde_json::from_value::<StatusReport>(result)
            .map(|r| r.daemon.config)
            .map_err(|e| format!("unexpected status reply: {e}")),
        Ok(Reply::Failed { error, kind, .. }) => {
            eprintln!("warden: {error}");
            return Err(kind_code(kind));
        }
        Ok(Reply::Progress { .. } | Reply::Event { .. }) => {
            Err("unexpected progress reply".to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let running = match running {
        Ok(r) => std::path::PathBuf::from(r),
        Err(e) => {
            eprintln!("warden: cannot ask the daemon which file it runs: {e}");
            return Err(exit::FAILURE);
        }
    };
    // A library user's supervisor reports no file: nothing to compare.
    if running.as_os_str().is_empty() {
        return Ok(());
    }
    let resolve = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let ours = resolve(&config.path);
    if resolve(&running) == ours {
        return Ok(());
    }
    eprintln!(
        "warden: the running daemon's configuration is {}, not {}: reload re-reads the daemon's \
         own file; name that one with -c, or restart warden to run another file",
        running.display(),
        ours.display()
    );
    Err(exit::USAGE)
}

/// What a command that succeeded prints on stdout, one line per program: the daemon answers
/// only once the change took effect (instances up, or down), so the line states a fact.
fn confirmation(command: &Command) -> Vec<String> {
    let each = |programs: &[String], done: &str| -> Vec<String> {
        programs.iter().map(|p| format!("{p}: {done}")).collect()
    };
    match command {
        Command::Start { programs } => each(programs, "started"),
        Command::Stop { programs } => each(programs, "stopped"),
        Command::Restart { programs } => each(programs, "restarted"),
        Command::Scale {
            program,
            instances: 1,
        } => vec![format!("{program}: scaled to 1 instance")],
        Command::Scale { program, instances } => {
            vec![format!("{program}: scaled to {instances} instances")]
        }
        Command::ReopenLogs => vec!["log files reopened".to_string()],
        // `reload` prints its plan, `status` its report, `upgrade` the versions, `events` the
        // stream.
        Command::Reload { .. } | Command::Status { .. } | Command::Upgrade | Command::Events => {
            Vec::new()
        }
    }
}

/// `upgraded warden 0.1.0 -> 0.2.0 in place (pid 812)`.
fn print_upgraded(result: &serde_json::Value) {
    let s = |k: &str| result[k].as_str().unwrap_or("?").to_string();
    println!(
        "upgraded warden {} -> {} in place (pid {})",
        s("from"),
        s("to"),
        result["pid"]
    );
    // What became of the `[daemon]` settings changed in the file.
    for n in result["notes"].as_array().into_iter().flatten() {
        println!("note: {}", n.as_str().unwrap_or_default());
    }
}

fn print_plan(result: &serde_json::Value, dry_run: bool) {
    let list = |key: &str| -> Vec<String> {
        result[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let verb = |now: &'static str, would: &'static str| if dry_run { would } else { now };
    for (key, now, would) in [
        ("added", "added", "would add"),
        ("removed", "removed", "would remove"),
        ("changed", "restarted (changed)", "would restart (changed)"),
        (
            "changed_stopped",
            "changed (stays stopped)",
            "would change (stays stopped)",
        ),
    ] {
        for n in list(key) {
            println!("{} {n}", verb(now, would));
        }
    }
    if let Some(scaled) = result["scaled"].as_array() {
        for s in scaled {
            println!(
                "{} {} {} -> {}",
                verb("scaled", "would scale"),
                s[0].as_str().unwrap_or("?"),
                s[1],
                s[2]
            );
        }
    }
    for n in list("health_changed") {
        let v = verb("updated (health check)", "would update (health check)");
        println!("{v} {n}");
    }
    print_socket_plan(&list, dry_run);
    for n in list("unchanged") {
        println!("{} {n}", verb("unchanged", "would keep"));
    }
    for n in list("notes") {
        println!("note: {n}");
    }
    // As `warden start` warns of them, on stderr.
    for w in list("warnings") {
        eprintln!("warning: {w}");
    }
    let levels: Vec<Vec<String>> =
        serde_json::from_value(result["start_order"].clone()).unwrap_or_default();
    if let Some(line) = super::order_line(&levels) {
        println!("{line}");
    }
}

/// The socket lines of a reload plan (`moved socket web`).
fn print_socket_plan(list: &dyn Fn(&str) -> Vec<String>, dry_run: bool) {
    for (key, now, would) in [
        ("sockets_added", "added socket", "would add socket"),
        ("sockets_removed", "removed socket", "would remove socket"),
        ("sockets_moved", "moved socket", "would move socket"),
        ("sockets_updated", "updated socket", "would update socket"),
    ] {
        for n in list(key) {
            println!("{} {n}", if dry_run { would } else { now });
        }
    }
}

/// Shows, on a terminal, which instances a stopping daemon still waits for.
pub struct StopProgress {
    socket: Option<std::path::PathBuf>,
    progress: Progress,
}

impl StopProgress {
    /// Progress for stopping the daemon of `config` (silent unless stderr is a terminal).
    pub fn new(config: &Config) -> StopProgress {
        let progress = Progress::new();
        let socket = progress.tty.then(|| config.daemon.control_socket.clone());
        StopProgress { socket, progress }
    }

    /// Asks the daemon what is still up and shows it.
    pub fn tick(&mut self) {
        let Some(path) = &self.socket else { return };
        let Ok(mut c) = Client::connect_timeout(path, Duration::from_millis(200)) else {
            return;
        };
        let Ok(Reply::Done { result, .. }) = c.request(
            Command::Status { programs: vec![] },
            Duration::from_millis(200),
            |_| {},
        ) else {
            return;
        };
        let Ok(report) = serde_json::from_value::<StatusReport>(result) else {
            return;
        };
        let left: Vec<String> = report
            .instances
            .iter()
            .filter(|i| i.pid.is_some())
            .map(|i| format!("{}[{}] ({})", i.program, i.index, i.state))
            .collect();
        if !left.is_empty() {
            self.progress
                .show(&format!("stopping: waiting for {}", left.join(", ")));
        }
    }

    /// Clears the progress line.
    pub fn finish(&mut self) {
        self.progress.clear();
    }
}

/// What `status` tells when no daemon answers on the control socket: from the pidfile alone,
/// or that it cannot know.
pub struct Unreached {
    /// The LSB exit status.
    code: u8,
    /// `daemon.state` in JSON: `running`, `not running`, `dead` or `unknown`.
    state: &'static str,
    /// `daemon.running` in JSON (`None`: unknown).
    running: Option<bool>,
    /// The pid the pidfile names.
    pid: Option<i32>,
    /// For humans: stdout without `--json` (stderr when unknown), stderr with it.
    message: String,
    /// A warning for humans, on stderr in either case.
    warning: Option<String>,
}

impl Unreached {
    /// The daemon's state cannot be known (exit 4), for `why`.
    pub fn unknown(why: String) -> Unreached {
        Unreached {
            code: exit::status::UNKNOWN,
            state: "unknown",
            running: None,
            pid: None,
            message: format!("warden: {why}"),
            warning: None,
        }
    }

    /// What the pidfile of `config` says.
    fn from_pidfile(config: &Config) -> Unreached {
        let path = &config.daemon.pidfile;
        let show = |pid: Option<i32>| pid.map_or_else(|| "unknown".into(), |p| p.to_string());
        match Pidfile::probe(path) {
            Ok(PidfileState::Running(pid)) => Unreached {
                code: exit::status::RUNNING,
                state: "running",
                running: Some(true),
                pid,
                message: format!("warden is running (pid {})", show(pid)),
                warning: None,
            },
            Ok(PidfileState::Stale(pid)) => Unreached {
                code: exit::status::DEAD_PIDFILE,
                state: "dead",
                running: Some(false),
                pid,
                message: format!(
                    "warden is not running, but its pidfile {} remains (pid {})",
                    path.display(),
                    show(pid)
                ),
                warning: None,
            },
            Ok(PidfileState::Absent)
                if let Some(pid) = super::elsewhere::daemon_running(&config.path, path) =>
            {
                Unreached::unknown(super::elsewhere::hint(&config.path, pid))
            }
            Ok(PidfileState::Absent) => Unreached {
                code: exit::status::NOT_RUNNING,
                state: "not running",
                running: Some(false),
                pid: None,
                message: "warden is not running".to_string(),
                warning: None,
            },
            Err(e) => Unreached::unknown(e.to_string()),
        }
    }

    /// Prints the outcome — as text, or as the JSON object documented in `warden::control`
    /// with the text on stderr — and returns the exit status.
    pub fn report(&self, config_path: &Path, json: bool) -> ExitCode {
        if !json && self.state != "unknown" {
            println!("{}", self.message);
        } else {
            eprintln!("{}", self.message);
        }
        if let Some(w) = &self.warning {
            eprintln!("{w}");
        }
        if !json {
            return ExitCode::from(self.code);
        }
        let config = std::path::absolute(config_path).unwrap_or_else(|_| config_path.into());
        let mut v = serde_json::json!({
            "daemon": {
                "running": self.running,
                "state": self.state,
                "pid": self.pid,
                "config": config.display().to_string(),
            }
        });
        // Nothing runs without a daemon; with one that does not answer, nobody knows.
        if self.running == Some(false) {
            v["instances"] = serde_json::json!([]);
            v["programs"] = serde_json::json!([]);
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        ExitCode::from(self.code)
    }
}

/// `status` when no daemon answers on the control socket: the pidfile still tells whether the
/// daemon runs, though not how its programs do — a running daemon must not be reported "not
/// running" (3) for that.
fn status_without_socket(config: &Config, json: bool, programs: &[String]) -> ExitCode {
    let mut found = Unreached::from_pidfile(config);
    if !programs.is_empty() && found.code == exit::status::RUNNING {
        found.code = exit::status::UNKNOWN;
        found.warning = Some(format!(
            "warden: the control socket {} cannot be reached: the state of {} is unknown",
            config.daemon.control_socket.display(),
            programs.join(", ")
        ));
    }
    found.report(&config.path, json)
}

/// How long `status` waits for the daemon, connecting and answering together.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// `warden status [--json] [PROGRAM…]`.
pub fn status(config: &Config, json: bool, programs: Vec<String>) -> ExitCode {
    let named = !programs.is_empty();
    let report = match fetch_status(config, json, programs) {
        Ok(report) => report,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_table(&report);
    }
    status_exit(&report, named)
}

/// The exit status of `status` for a daemon that answered with `report`: with program names,
/// whether every instance configured is up. A program scaled to 0 is as asked (0), like `scale P
/// 0` itself, which succeeds once nothing runs.
fn status_exit(report: &StatusReport, named: bool) -> ExitCode {
    if !named {
        return ExitCode::from(exit::status::RUNNING);
    }
    // A surge replacement starting, or an instance stopping for good, is not one configured.
    let configured = || report.instances.iter().filter(|i| i.is_configured());
    if configured().any(|i| i.state == "fatal") {
        ExitCode::from(exit::status::PROGRAM_FATAL)
    } else if configured().all(|i| i.state == "ready" || i.state == "running") {
        ExitCode::from(exit::status::RUNNING)
    } else {
        ExitCode::from(exit::status::PROGRAM_DOWN)
    }
}

/// Asks the daemon for its status report; when it cannot answer, the exit status of what was
/// printed instead (the pidfile's verdict, or "unknown").
fn fetch_status(
    config: &Config,
    json: bool,
    programs: Vec<String>,
) -> Result<StatusReport, ExitCode> {
    let unknown = |why: String| Unreached::unknown(why).report(&config.path, json);
    // The whole command is bounded: a daemon that is stopped (SIGSTOP) or flooded gets this
    // long to take the connection and answer.
    let deadline = std::time::Instant::now() + STATUS_TIMEOUT;
    let mut client = match Client::connect_timeout(&config.daemon.control_socket, STATUS_TIMEOUT) {
        Ok(c) => c,
        Err(ClientError::Connect { source, .. })
            if warden::error::is_permission_denied(&source) =>
        {
            return Err(unknown(format!(
                "permission denied on the control socket {}",
                config.daemon.control_socket.display()
            )));
        }
        Err(e) if e.is_connect_timeout() => return Err(unknown(e.to_string())),
        Err(_) => return Err(status_without_socket(config, json, &programs)),
    };
    let reply = match client.request(
        Command::Status {
            programs: programs.clone(),
        },
        deadline.saturating_duration_since(std::time::Instant::now()),
        |_| {},
    ) {
        Ok(r) => r,
        // Nobody serves there after all: the pidfile's lock tells the rest.
        Err(e) if e.is_dropped_unanswered() => {
            return Err(status_without_socket(config, json, &programs));
        }
        Err(e) => return Err(unknown(e.to_string())),
    };
    decode_status(reply, unknown)
}

/// The report in a `status` reply; else the exit status of what was printed: `unknown(why)`,
/// or a program the daemon does not know.
fn decode_status(
    reply: Reply,
    unknown: impl FnOnce(String) -> ExitCode,
) -> Result<StatusReport, ExitCode> {
    match reply {
        Reply::Done { result, .. } => serde_json::from_value(result)
            .map_err(|e| unknown(format!("unexpected status reply: {e}"))),
        Reply::Failed {
            error,
            kind: ErrorKind::NoSuchProgram,
            ..
        } => {
            eprintln!("warden: {error}");
            Err(ExitCode::from(exit::status::NO_SUCH_PROGRAM))
        }
        Reply::Failed { error, .. } => Err(unknown(error)),
        Reply::Progress { .. } | Reply::Event { .. } => {
            Err(unknown("unexpected progress reply".to_string()))
        }
    }
}

/// One row of the status table and the instance's state, for its colour.
type Row<'a> = (Vec<String>, Option<&'a str>);

/// The table's column titles; HEALTH only when some instance has a health check.
fn header(health: bool) -> Vec<String> {
    let mut h = vec!["PROGRAM", "INDEX", "PID", "STATE"];
    if health {
        h.push("HEALTH");
    }
    h.extend(["UPTIME", "RESTARTS", "LAST EXIT", "STATUS"]);
    h.into_iter().map(str::to_string).collect()
}

fn print_table(report: &StatusReport) {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut tracking = match (&report.daemon.tracking, &report.daemon.cgroup) {
        (Some(t), Some(c)) => format!(", tracking: {t} {c}"),
        (Some(t), None) => format!(", tracking: {t}"),
        _ => String::new(),
    };
    if let Some(ns) = &report.daemon.pid_namespace {
        tracking.push_str(&format!(", pid namespace {ns}"));
    }
    println!(
        "warden {} running (pid {}, up {}{tracking})",
        report.daemon.version,
        report.daemon.pid,
        fmt_uptime(report.daemon.uptime_secs)
    );
    if report.instances.is_empty() && report.programs.is_empty() {
        println!("no programs");
        return;
    }
    let health = report.instances.iter().any(|i| i.health.is_some());
    let rows = table_rows(report, health);
    let header = header(health);
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for (r, _) in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    println!("{}", table_line(&header, &widths, None));
    for (r, state) in &rows {
        let c = colour.then_some(state_colour(state.unwrap_or("")));
        println!("{}", table_line(r, &widths, c));
    }
    for p in &report.programs {
        if let Some(why) = &p.rolled_back {
            println!(
                "{}: rolled back ({why}); it runs its previous settings until a reload applies",
                p.program
            );
        }
    }
}

/// One row per instance, programs in configuration order; a program scaled to 0 instances gets
/// one row saying so. (An older daemon sends no program list: instances only.)
fn table_rows(report: &StatusReport, health: bool) -> Vec<Row<'_>> {
    let mut rows: Vec<Row<'_>> = Vec::new();
    if report.programs.is_empty() {
        rows.extend(
            report
                .instances
                .iter()
                .map(|i| (row(i, health), Some(i.state.as_str()))),
        );
    }
    for p in &report.programs {
        let before = rows.len();
        for i in report.instances.iter().filter(|i| i.program == p.program) {
            rows.push((row(i, health), Some(i.state.as_str())));
        }
        if rows.len() == before {
            rows.push((empty_row(&p.program, p.instances, health), None));
        }
    }
    rows
}

/// The ANSI colour of a state in the STATE column.
fn state_colour(state: &str) -> &'static str {
    match state {
        "ready" | "running" => "32",
        "starting" | "stopping" | "backoff" | "waiting" => "33",
        "fatal" => "31;1",
        _ => "2",
    }
}

/// `cells` padded to `widths` two spaces apart, the STATE cell in `state_colour` if given.
fn table_line(cells: &[String], widths: &[usize], state_colour: Option<&str>) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let pad = widths[i] - cell.chars().count();
        let text = match (i, state_colour) {
            (3, Some(c)) => format!("\x1b[{c}m{cell}\x1b[0m"),
            _ => cell.clone(),
        };
        out.push_str(&text);
        if i + 1 < cells.len() {
            out.push_str(&" ".repeat(pad + 2));
        }
    }
    out.trim_end().to_string()
}

/// The row of a program without instances (scaled to 0).
fn empty_row(program: &str, instances: u32, health: bool) -> Vec<String> {
    let mut r: Vec<String> = header(health).iter().map(|_| "-".to_string()).collect();
    r[0] = program.to_string();
    if let Some(last) = r.last_mut() {
        *last = format!("{instances} instances");
    }
    r
}

fn row(i: &InstanceInfo, health: bool) -> Vec<String> {
    let mut r = vec![
        i.program.clone(),
        i.index.to_string(),
        i.pid.map_or_else(|| "-".into(), |p| p.to_string()),
        i.state_text(),
    ];
    if health {
        r.push(i.health.as_ref().map_or_else(|| "-".into(), |h| h.text()));
    }
    r.extend([
        i.uptime_secs.map_or_else(|| "-".into(), fmt_uptime),
        i.restarts.to_string(),
        last_exit_text(i.last_exit.as_ref()),
        i.status.clone().unwrap_or_else(|| "-".into()),
    ]);
    r
}

/// The LAST EXIT column: `exit 3`, `SIGKILL`, `SIGSEGV (core)`, or the reason warden ended it
/// (`health`).
fn last_exit_text(e: Option<&LastExit>) -> String {
    match e {
        None => "-".into(),
        Some(e) if e.reason().is_some() => e.reason().unwrap_or_default().to_string(),
        Some(LastExit::Code { code, .. }) => format!("exit {code}"),
        Some(LastExit::Signal {
            name,
            core_dumped: true,
            ..
        }) => format!("{name} (core)"),
        Some(LastExit::Signal { name, .. }) => name.clone(),
    }
}

fn fmt_uptime(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

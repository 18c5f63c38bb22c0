//! The commands that talk to a running daemon through its control socket: status (table and
//! JSON), start/stop/restart of programs, scale, reload, reopen-logs. Progress is shown on a
//! terminal while a command waits; scripts get silence and exit statuses.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use warden::config::Config;
use warden::control::client::{Client, ClientError};
use warden::control::{Command, ErrorKind, InstanceInfo, LastExit, Reply, StatusReport};

use super::exit;

/// Connects, reporting why not; `None` when the daemon is not reachable (message printed unless
/// `quiet`), with the exit status to use.
fn connect(config: &Config, quiet: bool) -> Result<Client, u8> {
    match Client::connect(&config.daemon.control_socket) {
        Ok(c) => Ok(c),
        Err(ClientError::Connect { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
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
    let mut client = connect(config, quiet)?;
    let dry_run = matches!(command, Command::Reload { dry_run: true });
    let is_reload = matches!(command, Command::Reload { .. });
    let mut progress = Progress::new();
    let reply = client.request(command, timeout, |p| progress.show(p));
    progress.clear();
    match reply {
        Ok(Reply::Done { result, .. }) => {
            if is_reload {
                print_plan(&result, dry_run);
            }
            Ok(ExitCode::from(exit::OK))
        }
        Ok(Reply::Failed { error, kind, .. }) => {
            for line in error.lines() {
                eprintln!("warden: {line}");
            }
            Ok(ExitCode::from(kind_code(kind)))
        }
        Ok(Reply::Progress { .. }) => unreachable!("the client returns final replies only"),
        Err(e) => {
            eprintln!("warden: {e}");
            Ok(ExitCode::from(exit::FAILURE))
        }
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
    for n in list("added") {
        println!("{} {n}", verb("added", "would add"));
    }
    for n in list("removed") {
        println!("{} {n}", verb("removed", "would remove"));
    }
    for n in list("changed") {
        println!(
            "{} {n}",
            verb("restarted (changed)", "would restart (changed)")
        );
    }
    for n in list("changed_stopped") {
        println!(
            "{} {n}",
            verb("changed (stays stopped)", "would change (stays stopped)")
        );
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
    for n in list("unchanged") {
        println!("{} {n}", verb("unchanged", "would keep"));
    }
    for n in list("notes") {
        println!("note: {n}");
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
        let Ok(mut c) = Client::connect(path) else {
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

/// `warden status [--json] [PROGRAM…]`.
pub fn status(config: &Config, json: bool, programs: Vec<String>) -> ExitCode {
    let mut client = match connect(config, true) {
        Ok(c) => c,
        Err(code) if code == exit::NO_PERMISSION => {
            eprintln!(
                "warden: permission denied on the control socket {}",
                config.daemon.control_socket.display()
            );
            return ExitCode::from(exit::status::UNKNOWN);
        }
        // No socket: the pidfile still tells whether the daemon runs, though not how its
        // programs do — a running daemon must not be reported "not running" (3) for that.
        Err(_) => {
            let code = super::status_from_pidfile(config);
            if programs.is_empty() || code != ExitCode::from(exit::status::RUNNING) {
                return code;
            }
            eprintln!(
                "warden: the control socket {} cannot be reached: the state of {} is unknown",
                config.daemon.control_socket.display(),
                programs.join(", ")
            );
            return ExitCode::from(exit::status::UNKNOWN);
        }
    };
    let named = !programs.is_empty();
    let reply = match client.request(
        Command::Status { programs },
        Duration::from_secs(10),
        |_| {},
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::from(exit::status::UNKNOWN);
        }
    };
    let report: StatusReport = match reply {
        Reply::Done { result, .. } => match serde_json::from_value(result) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warden: unexpected status reply: {e}");
                return ExitCode::from(exit::status::UNKNOWN);
            }
        },
        Reply::Failed { error, kind, .. } => {
            eprintln!("warden: {error}");
            return ExitCode::from(match kind {
                ErrorKind::NoSuchProgram => exit::status::NO_SUCH_PROGRAM,
                ErrorKind::Denied => exit::status::UNKNOWN,
                _ => exit::status::UNKNOWN,
            });
        }
        Reply::Progress { .. } => return ExitCode::from(exit::status::UNKNOWN),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_table(&report);
    }
    if !named {
        return ExitCode::from(exit::status::RUNNING);
    }
    // Every instance configured is up: a program scaled to 0 is as asked (0), like `scale P 0`
    // itself, which succeeds once nothing runs.
    if report.instances.iter().any(|i| i.state == "fatal") {
        ExitCode::from(exit::status::PROGRAM_FATAL)
    } else if report
        .instances
        .iter()
        .all(|i| i.state == "ready" || i.state == "running")
    {
        ExitCode::from(exit::status::RUNNING)
    } else {
        ExitCode::from(exit::status::PROGRAM_DOWN)
    }
}

fn print_table(report: &StatusReport) {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    println!(
        "warden {} running (pid {}, up {})",
        report.daemon.version,
        report.daemon.pid,
        fmt_uptime(report.daemon.uptime_secs)
    );
    if report.instances.is_empty() && report.programs.is_empty() {
        println!("no programs");
        return;
    }
    let header = [
        "PROGRAM",
        "INDEX",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "STATUS",
    ];
    // One row per instance, programs in configuration order; a program scaled to 0 instances
    // gets one row saying so. (An older daemon sends no program list: instances only.)
    let mut rows: Vec<([String; 8], Option<&str>)> = Vec::new();
    if report.programs.is_empty() {
        rows.extend(
            report
                .instances
                .iter()
                .map(|i| (row(i), Some(i.state.as_str()))),
        );
    }
    for p in &report.programs {
        let before = rows.len();
        for i in report.instances.iter().filter(|i| i.program == p.program) {
            rows.push((row(i), Some(i.state.as_str())));
        }
        if rows.len() == before {
            rows.push((empty_row(&p.program, p.instances), None));
        }
    }
    let mut widths = header.map(str::len);
    for (r, _) in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 8], state_colour: Option<&str>| {
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
    };
    println!("{}", line(&header.map(str::to_string), None));
    for (r, state) in &rows {
        let c = colour.then_some(match state.unwrap_or("") {
            "ready" | "running" => "32",
            "starting" | "stopping" | "backoff" => "33",
            "fatal" => "31;1",
            _ => "2",
        });
        println!("{}", line(r, c));
    }
}

/// The row of a program without instances (scaled to 0).
fn empty_row(program: &str, instances: u32) -> [String; 8] {
    let mut r: [String; 8] = std::array::from_fn(|_| "-".to_string());
    r[0] = program.to_string();
    r[7] = format!("{instances} instances");
    r
}

fn row(i: &InstanceInfo) -> [String; 8] {
    [
        i.program.clone(),
        i.index.to_string(),
        i.pid.map_or_else(|| "-".into(), |p| p.to_string()),
        i.state.clone(),
        i.uptime_secs.map_or_else(|| "-".into(), fmt_uptime),
        i.restarts.to_string(),
        match &i.last_exit {
            None => "-".into(),
            Some(LastExit::Code { code }) => format!("exit {code}"),
            Some(LastExit::Signal {
                name,
                core_dumped: true,
                ..
            }) => format!("{name} (core)"),
            Some(LastExit::Signal { name, .. }) => name.clone(),
        },
        i.status.clone().unwrap_or_else(|| "-".into()),
    ]
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

//! The command line of the `warden` binary: parsing with clap, one function per command. Logic
//! that a library user could want lives in the library, not here.

mod control;
mod elsewhere;
mod exit;
mod healthcheck;
#[cfg(test)]
mod man_tests;
mod serve;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warden::config::{Config, DEFAULT_PATH};
use warden::{Error, Pidfile, PidfileState};

/// Run programs under a supervising Unix daemon, and control that daemon while it runs.
#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    long_about = None,
    after_help = "Durations (--timeout) are written as in warden.toml: \"500ms\", \"30s\", \"1m 30s\", \
                  or bare seconds (\"30\").\nSee warden(8) for every command, exit status and signal, \
                  and warden.toml(5) for the configuration."
)]
struct Cli {
    /// Configuration file.
    // `hide_env_values`: clap would show `[env: WARDEN_CONFIG=]`, an empty value, when the
    // variable is unset; the name alone says where the path may come from.
    #[arg(
        short,
        long,
        global = true,
        env = "WARDEN_CONFIG",
        hide_env_values = true,
        default_value = DEFAULT_PATH
    )]
    config: PathBuf,

    #[command(subcommand)]
    verb: Verb,
}

/// A `warden` subcommand (`warden VERB`); what goes over the control socket is
/// [`warden::control::Command`].
#[derive(Debug, Subcommand)]
enum Verb {
    /// Run in the foreground (for systemd Type=notify, containers, terminals).
    Run,
    /// Start the daemon, returning once it is ready (0) or has failed (its reason on stderr);
    /// with PROGRAMs, start those programs in the running daemon and wait until every instance
    /// of them is up.
    Start {
        /// Programs to start (none: the daemon itself).
        programs: Vec<String>,
        /// With PROGRAMs: how long to wait for their instances to be up. (The daemon's own start
        /// waits up to `ready_timeout` of warden.toml.)
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Stop the daemon (SIGTERM) and wait until it has exited; with PROGRAMs, stop those
    /// programs and keep them down until started again.
    Stop {
        /// Programs to stop (none: the daemon itself).
        programs: Vec<String>,
        /// How long to wait, e.g. "30s".
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Rolling restart of PROGRAMs, one instance at a time; with none, restart the daemon.
    Restart {
        /// Programs to restart (none: the daemon itself).
        programs: Vec<String>,
        /// How long to wait.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Show the daemon and every worker (LSB exit codes for the daemon; see warden(8)).
    Status {
        /// Print the documented JSON schema instead of a table.
        #[arg(long)]
        json: bool,
        /// Only these programs; the exit status then tells whether they are all up.
        programs: Vec<String>,
    },
    /// Re-read the configuration and apply what changed; unchanged programs are not touched.
    Reload {
        /// Print the plan without applying it.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for changed programs to be up.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Set the number of instances of a program.
    Scale {
        /// The program.
        program: String,
        /// The new number of instances.
        instances: u32,
        /// How long to wait for the new instances to be up.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Validate the configuration file, printing every problem.
    Check,
    /// Exit 0 when every instance (of PROGRAMs, or all) is up, ready and passing its health
    /// check, else 1 with one line per reason: for Docker's HEALTHCHECK and Kubernetes' exec
    /// probes.
    Healthcheck {
        /// Only these programs.
        programs: Vec<String>,
    },
    /// Make the daemon reopen its log files (after rotation).
    ReopenLogs,
    /// Replace the running daemon with the binary now at its path (after a package upgrade), in
    /// place: same pid, every program untouched. The new binary is checked first; if it cannot
    /// take over, the previous one runs on. Prints the old and new versions.
    Upgrade {
        /// How long to wait for the new image to answer.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Internal: what `upgrade` executes (the new image taking over the daemon's state).
    #[command(hide = true)]
    Resume {
        /// Print the state formats this binary reads, and exit.
        #[arg(long)]
        formats: bool,
    },
    /// Print every state change as it happens (instances started, ready, exited, restarting,
    /// stopped, fatal; health; reloads; rollbacks) until warden stops.
    Events {
        /// One JSON object a line (the schema in warden(8)) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script for SHELL to standard output.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `--timeout` values: the configuration's own syntax (`"30s"`, `"1m 30s"`, bare seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    warden::config::parse_duration(s)
}

/// Whether a service manager waits for `READY=1` (a non-empty `$NOTIFY_SOCKET`, as the
/// notifier reads it): then `start` stays in the foreground, already detached by the manager.
fn under_notify_manager() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that only report (`status | head -1`): a closed output pipe ends them
    // quietly. Those that may become the daemon keep the runtime's setting until `Signals`
    // catches SIGPIPE.
    if !matches!(
        cli.verb,
        Verb::Run | Verb::Start { .. } | Verb::Restart { .. } | Verb::Resume { .. }
    ) {
        warden::signals::default_sigpipe();
    }
    run(cli.verb, &cli.config)
}

/// One function per command: `config` is the `-c` path, loaded as each command needs it.
fn run(verb: Verb, config: &std::path::Path) -> ExitCode {
    use warden::control::Command as C;
    match verb {
        Verb::Completions { shell } => completions(shell),
        Verb::Run => run_in_foreground(config),
        Verb::Start { programs, .. } if programs.is_empty() => with_config(config, |c| {
            // Under systemd Type=notify the service manager already detached us (DESIGN.md).
            serve::serve(c, under_notify_manager())
        }),
        Verb::Start { programs, timeout } => with_config(config, |c| {
            control::command(&c, C::Start { programs }, timeout)
        }),
        Verb::Stop { programs, timeout } if programs.is_empty() => {
            with_located_config(config, |c| stop(&c, timeout))
        }
        Verb::Stop { programs, timeout } => with_config(config, |c| {
            control::command(&c, C::Stop { programs }, timeout)
        }),
        Verb::Restart { programs, timeout } if programs.is_empty() => {
            with_config(config, |c| restart_daemon(c, timeout))
        }
        Verb::Restart { programs, timeout } => with_config(config, |c| {
            control::command(&c, C::Restart { programs }, timeout)
        }),
        Verb::Status { json, programs } => status_or_unknown(config, json, programs),
        // An invalid file is the daemon's to judge: it reports every error to us and to its log,
        // and keeps the running configuration. Judging it here would hide it from the log.
        Verb::Reload { dry_run, timeout } => match Config::load_for_control(config) {
            Ok((c, _)) => control::command(&c, C::Reload { dry_run }, timeout),
            Err(e) => exit::report(&e),
        },
        Verb::Scale {
            program,
            instances,
            timeout,
        } => with_config(config, |c| {
            control::command(&c, C::Scale { program, instances }, timeout)
        }),
        Verb::Check => check(config),
        // A probe must say 0 or 1, whatever went wrong: a file that cannot be read is unhealthy.
        Verb::Healthcheck { programs } => match located(config) {
            Ok(c) => healthcheck::healthcheck(&c, programs),
            Err(e) => {
                println!("unhealthy: {e}");
                ExitCode::from(exit::FAILURE)
            }
        },
        // Like `stop`, this must work after a bad edit of the file: logrotate's postrotate does
        // not wait for someone to finish editing warden.toml.
        Verb::ReopenLogs => with_located_config(config, |c| reopen_logs(&c)),
        Verb::Upgrade { timeout } => {
            with_located_config(config, |c| control::command(&c, C::Upgrade, timeout))
        }
        Verb::Resume { formats } => upgrade::resume(config, formats),
        Verb::Events { json } => with_located_config(config, |c| control::events(&c, json)),
    }
}

/// `warden completions SHELL`.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "warden", &mut std::io::stdout());
    ExitCode::from(exit::OK)
}

/// `warden restart` without programs: stop the daemon, then start it again.
fn restart_daemon(config: Config, timeout: Duration) -> ExitCode {
    let code = stop(&config, timeout);
    if code != ExitCode::from(exit::OK) {
        return code;
    }
    serve::serve(config, under_notify_manager())
}

/// `warden status`, also without a usable configuration.
fn status_or_unknown(path: &std::path::Path, json: bool, programs: Vec<String>) -> ExitCode {
    match located(path) {
        Ok(c) => control::status(&c, json, programs),
        // No configuration, no pidfile to look at: LSB's "unknown" (4), whatever the file's
        // problem; with --json, still an answer on stdout.
        Err(e) => {
            let why = match &e {
                Error::Config(d) => d
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\nwarden: "),
                other => other.to_string(),
            };
            control::Unreached::unknown(why).report(path, json)
        }
    }
}

/// `warden reopen-logs`: through the control socket, else by `SIGUSR1`.
fn reopen_logs(c: &Config) -> ExitCode {
    match control::command_quiet(
        c,
        warden::control::Command::ReopenLogs,
        Duration::from_secs(10),
    ) {
        Ok(code) => code,
        Err(code) if code == exit::NO_PERMISSION => {
            eprintln!(
                "warden: permission denied on the control socket {}",
                c.daemon.control_socket.display()
            );
            ExitCode::from(code)
        }
        // No control socket (an older daemon, or it is gone): the signal still works,
        // though nobody can then tell whether the reopen succeeded.
        Err(_) => signal_daemon(c, nix::sys::signal::Signal::SIGUSR1),
    }
}

/// The configuration for commands that must work even after a bad edit of the file: its
/// problems are printed as warnings and the pidfile and control socket still located.
fn located(path: &std::path::Path) -> Result<Config, Error> {
    let (config, problems) = Config::load_for_control(path)?;
    if let Some(d) = problems {
        for p in d.iter() {
            eprintln!("warden: warning: {p}");
        }
        eprintln!(
            "warden: warning: the configuration has errors; using pidfile {}",
            config.daemon.pidfile.display()
        );
    }
    Ok(config)
}

fn with_located_config(path: &std::path::Path, f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match located(path) {
        Ok(c) => f(c),
        Err(e) => exit::report(&e),
    }
}

/// `warden run`. Its errors go where its log goes: as JSON lines when the file asks for them,
/// also those of a file that is not valid otherwise.
fn run_in_foreground(config: &std::path::Path) -> ExitCode {
    if asks_for_json_logs(config) {
        exit::print_as_json();
    }
    with_config(config, |c| serve::serve(c, true))
}

/// Whether the file at `path` is TOML with `[daemon] log_format = "json"`, whatever else is
/// wrong in it.
fn asks_for_json_logs(path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    table
        .get("daemon")
        .and_then(|d| d.get("log_format"))
        .and_then(toml::Value::as_str)
        == Some("json")
}

fn with_config(path: &std::path::Path, f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match Config::load(path) {
        Ok(c) => f(c),
        Err(e) => exit::report(&e),
    }
}

/// `warden check`: every problem of the file and its drop-ins, every account that does not
/// resolve, then every warning, in one pass; 1 when there is an error, 0 otherwise (warnings
/// alone do not fail it).
fn check(path: &std::path::Path) -> ExitCode {
    let report = match warden::config::preflight::check(path) {
        Ok(r) => r,
        Err(e) => {
            exit::report(&e);
            return ExitCode::from(exit::FAILURE);
        }
    };
    for e in report.errors.iter() {
        eprintln!("warden: {e}");
    }
    for w in report.warnings.iter() {
        eprintln!("warden: warning: {w}");
    }
    if !report.errors.is_empty() {
        return ExitCode::from(exit::FAILURE);
    }
    println!("{}: configuration is valid", path.display());
    if let Ok(config) = Config::load(path)
        && let Some(line) = order_line(&config.start_order())
    {
        println!("{line}");
    }
    ExitCode::from(exit::OK)
}

/// `start order: db, cache -> api -> web`: the start order's levels (`after`, `requires`), or
/// nothing when every program starts at once (no dependencies).
pub(crate) fn order_line(levels: &[Vec<String>]) -> Option<String> {
    (levels.len() > 1).then(|| {
        let levels: Vec<String> = levels.iter().map(|l| l.join(", ")).collect();
        format!("start order: {}", levels.join(" -> "))
    })
}

/// Users and groups named in `config` (daemon, programs, control group) and health-check host
/// names that do not resolve on this machine, as `FILE:LINE:COLUMN: key: message` lines. The
/// file itself cannot know: this is the check `warden start` and `reload` add before anything
/// runs (`check` reports it with everything else).
pub(crate) fn unresolvable_accounts(config: &Config) -> Vec<String> {
    let accounts = warden::config::preflight::accounts(config);
    let hosts = warden::config::preflight::hosts(config);
    accounts
        .iter()
        .chain(hosts.iter())
        .map(ToString::to_string)
        .collect()
}

/// The pid of the running daemon, waiting briefly for a starting one to write it.
///
/// A pid read from the pidfile is trusted only if that process holds the file open — the check
/// that keeps whoever can write the pidfile from aiming root's `stop` at another process.
///
/// A caller other than root who may not look at the daemon's descriptors (a daemon that dropped
/// privileges is not dumpable, so even its own user cannot) gets the pid unchecked: `kill(2)`
/// then lets it signal only what it could signal by hand, and refuses the rest (exit 4). Root
/// that cannot tell (no `CAP_SYS_PTRACE`, say) gets the permission error.
pub(crate) fn running_pid(
    path: &std::path::Path,
    deadline: std::time::Instant,
) -> Result<Option<i32>, Error> {
    let deadline = deadline.min(std::time::Instant::now() + Duration::from_secs(2));
    let root = nix::unistd::geteuid().is_root();
    loop {
        match Pidfile::probe(path)? {
            PidfileState::Running(Some(pid)) => {
                match Pidfile::held_by(path, pid) {
                    Ok(true) => return Ok(Some(pid)),
                    Ok(false) => {}
                    Err(_) if !root => return Ok(Some(pid)),
                    Err(e) => return Err(e),
                }
                // Unless the daemon exited between the two looks (then the loop sees it gone),
                // the pid is not the lock holder's.
                let same =
                    matches!(Pidfile::probe(path)?, PidfileState::Running(Some(p)) if p == pid);
                if same || std::time::Instant::now() >= deadline {
                    return Err(Error::DaemonFailed(format!(
                        "pidfile {} names pid {pid}, which does not hold it open; not signalling it",
                        path.display()
                    )));
                }
            }
            PidfileState::Running(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            PidfileState::Running(None) => {
                return Err(Error::DaemonFailed(format!(
                    "pidfile {} is locked but names no pid",
                    path.display()
                )));
            }
            PidfileState::Stale(_) | PidfileState::Absent => return Ok(None),
        }
    }
}

/// `warden stop`: SIGTERM to the daemon, then wait until it has gone, all within `timeout`.
///
/// The pidfile is the first witness, the control socket the second: a daemon whose pidfile was
/// deleted (or replaced by something that is not one) still answers on its socket, and is then
/// stopped through it — never reported "not running" while it runs.
fn stop(config: &Config, timeout: Duration) -> ExitCode {
    use nix::sys::signal::{Signal, kill};
    let deadline = std::time::Instant::now() + timeout;
    let path = &config.daemon.pidfile;
    let pid = match running_pid(path, deadline) {
        Ok(Some(pid)) => pid,
        Ok(None) => return stop_through_socket(config, deadline, None),
        Err(e) => return stop_through_socket(config, deadline, Some(e)),
    };
    // Held by a pidfd, checked to be the lock holder after it was opened: `stop` returns once
    // that very process is gone, not merely once its lock is released (closing its files comes
    // before the end of its exit), and no signal can reach a process that reused the pid.
    let process = warden::control::client::DaemonProcess::open(pid)
        .ok()
        .filter(|_| matches!(Pidfile::held_by(path, pid), Ok(true)));
    let sent = match &process {
        Some(p) => p
            .signal(Signal::SIGTERM)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        None => kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM),
    };
    match sent {
        Err(e) if e != nix::errno::Errno::ESRCH => return exit::report(&kill_error(pid, e)),
        _ => {}
    }
    let mut progress = control::StopProgress::new(config);
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let released =
        Pidfile::wait_released_ticking(path, left, Duration::from_millis(250), || progress.tick());
    progress.finish();
    let released = match (released, &process) {
        (Ok(true), Some(p)) => {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            p.wait_exit(left.max(Duration::from_secs(1)))
                .map_err(|e| Error::io("cannot wait for", path.clone(), e))
        }
        (other, _) => other,
    };
    match released {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => {
            eprintln!("warden: pid {pid} is still running {timeout:?} after SIGTERM");
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => exit::report(&e),
    }
}

/// `stop` when the pidfile names no running daemon, or names one that cannot be trusted
/// (`pidfile_error`: unreadable, not a regular file, a pid that does not hold it, a holder
/// this process may not inspect): the control socket decides. A daemon that answers there is
/// stopped through a pidfd on the peer of that connection — a pid from the kernel, not from a
/// file — and the pidfile's problem is shown as a warning; with nobody answering, the daemon is
/// `stop` found no daemon where the file says: "not running" (0), unless a daemon of this very
/// file runs elsewhere (its pidfile moved in the file since), which is named (1).
fn not_running_here(config: &Config) -> ExitCode {
    match elsewhere::daemon_running(&config.path, &config.daemon.pidfile) {
        Some(pid) => {
            exit::say_error(&elsewhere::hint(&config.path, pid));
            ExitCode::from(exit::FAILURE)
        }
        None => {
            println!("not running");
            ExitCode::from(exit::OK)
        }
    }
}

/// not running, unless the pidfile had a problem, which is then the error.
fn stop_through_socket(
    config: &Config,
    deadline: std::time::Instant,
    pidfile_error: Option<Error>,
) -> ExitCode {
    let daemon = match daemon_on_socket(config, deadline) {
        Ok(Some(daemon)) => daemon,
        Ok(None) => {
            return match pidfile_error {
                Some(e) => exit::report(&e),
                None => not_running_here(config),
            };
        }
        Err(code) => return code,
    };
    let (pid, socket) = (daemon.pid(), &config.daemon.control_socket);
    // The pid comes from the kernel (the socket's peer), not from a file anyone may have
    // written: stopping it is what was asked, whatever the pidfile says.
    match &pidfile_error {
        Some(e) => eprintln!("warden: warning: {e}"),
        None => eprintln!(
            "warden: the pidfile {} names no running daemon",
            config.daemon.pidfile.display()
        ),
    }
    eprintln!(
        "warden: pid {pid} answers on the control socket {}: stopping it",
        socket.display()
    );
    if let Err(e) = daemon.signal(nix::sys::signal::Signal::SIGTERM)
        && e.raw_os_error() != Some(libc::ESRCH)
    {
        return exit::report(&Error::io(
            "cannot signal the daemon,",
            format!("pid {pid}"),
            e,
        ));
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match daemon.wait_exit(left) {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => {
            eprintln!("warden: pid {pid} is still running after SIGTERM");
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => exit::report(&Error::io(
            "cannot wait for the daemon,",
            format!("pid {pid}"),
            e,
        )),
    }
}

/// The daemon answering `status` on the control socket, as a process (pidfd) to stop; `None`
/// when nobody serves there; the exit status when the socket cannot tell (reported).
fn daemon_on_socket(
    config: &Config,
    deadline: std::time::Instant,
) -> Result<Option<warden::control::client::DaemonProcess>, ExitCode> {
    let socket = &config.daemon.control_socket;
    let Some(mut client) = connect_for_stop(socket, deadline)? else {
        return Ok(None);
    };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match client.request(
        warden::control::Command::Status { programs: vec![] },
        left,
        |_| {},
    ) {
        Ok(warden::control::Reply::Done { .. }) => {}
        // Nobody serves there after all.
        Err(e) if e.is_dropped_unanswered() => return Ok(None),
        Ok(other) => {
            eprintln!(
                "warden: the daemon on {} answered {other:?}",
                socket.display()
            );
            return Err(ExitCode::from(exit::FAILURE));
        }
        Err(e) => {
            eprintln!(
                "warden: a daemon holds the control socket {} but did not answer: {e}",
                socket.display()
            );
            return Err(ExitCode::from(exit::FAILURE));
        }
    }
    client.daemon_process().map(Some).map_err(|e| {
        eprintln!(
            "warden: cannot identify the daemon on {}: {e}",
            socket.display()
        );
        ExitCode::from(exit::FAILURE)
    })
}

/// A connection to the control socket for `stop`; `None` when nobody listens there.
fn connect_for_stop(
    socket: &std::path::Path,
    deadline: std::time::Instant,
) -> Result<Option<warden::control::client::Client>, ExitCode> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match warden::control::client::Client::connect_timeout(socket, left) {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.is_connect_timeout() => {
            eprintln!(
                "warden: a daemon holds the control socket {} but accepts no connection: {e}",
                socket.display()
            );
            Err(ExitCode::from(exit::FAILURE))
        }
        Err(warden::control::client::ClientError::Connect { source, .. })
            if warden::error::is_permission_denied(&source) =>
        {
            eprintln!(
                "warden: permission denied on the control socket {}: cannot tell whether warden runs",
                socket.display()
            );
            Err(ExitCode::from(exit::NO_PERMISSION))
        }
        Err(_) => Ok(None),
    }
}

/// `kill(pid)` failed: exit 4 with "permission denied" for `EPERM`, 1 otherwise.
fn kill_error(pid: i32, e: nix::errno::Errno) -> Error {
    let what = if e == nix::errno::Errno::EPERM {
        "permission denied: cannot signal the daemon,"
    } else {
        "cannot signal the daemon,"
    };
    Error::io(what, format!("pid {pid}"), e.into())
}

fn signal_daemon(config: &Config, signal: nix::sys::signal::Signal) -> ExitCode {
    match running_pid(
        &config.daemon.pidfile,
        std::time::Instant::now() + Duration::from_secs(2),
    ) {
        Ok(Some(pid)) => match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) => exit::report(&kill_error(pid, e)),
        },
        Ok(None) => {
            eprintln!("warden: not running");
            ExitCode::from(exit::NOT_RUNNING)
        }
        Err(e) => exit::report(&e),
    }
}

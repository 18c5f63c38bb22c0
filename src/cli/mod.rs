//! The command line of the `warden` binary: parsing with clap, one function per command. Logic
//! that a library user could want lives in the library, not here.

mod exit;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warden::config::{Config, DEFAULT_PATH};
use warden::{Credentials, Error, Pidfile, PidfileState};

/// warden — a Unix daemon and process supervisor.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, env = "WARDEN_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run in the foreground (for systemd Type=notify, containers, terminals).
    Run,
    /// Start as a daemon; return once it is ready (0) or has failed (non-zero).
    Start,
    /// Stop the daemon (SIGTERM) and wait until it has exited.
    Stop {
        /// How long to wait, e.g. "30s".
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Tell whether the daemon runs (LSB exit codes: 0 running, 1 dead with pidfile, 3 stopped, 4 unknown).
    Status,
    /// Validate the configuration file, printing every problem.
    Check,
    /// Make the daemon reopen its log files (after rotation).
    ReopenLogs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. \"10s\", \"500ms\")"))
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => with_config(&cli.config, |c| serve::serve(c, true)),
        Command::Start => with_config(&cli.config, |c| {
            // Under systemd Type=notify the service manager already detached us (DESIGN.md).
            let foreground = std::env::var_os("NOTIFY_SOCKET").is_some();
            serve::serve(c, foreground)
        }),
        Command::Stop { timeout } => with_config(&cli.config, |c| stop(&c, timeout)),
        Command::Status => match Config::load(&cli.config) {
            Ok(c) => status(&c),
            Err(e) => {
                exit::report(&e);
                ExitCode::from(exit::status::UNKNOWN)
            }
        },
        Command::Check => check(&cli.config),
        Command::ReopenLogs => with_config(&cli.config, |c| signal_daemon(&c, nix::sys::signal::Signal::SIGUSR1)),
    }
}

fn with_config(path: &std::path::Path, f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match Config::load(path) {
        Ok(c) => f(c),
        Err(e) => exit::report(&e),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            exit::report(&e);
            return ExitCode::from(exit::FAILURE);
        }
    };
    let d = &config.daemon;
    if let Err(e) = Credentials::resolve(d.user.as_deref(), d.group.as_deref()) {
        let key = if matches!(e, Error::UnknownGroup(_)) { "daemon.group" } else { "daemon.user" };
        eprintln!("warden: {}: {key}: {e}", path.display());
        return ExitCode::from(exit::FAILURE);
    }
    println!("{}: configuration is valid", path.display());
    ExitCode::from(exit::OK)
}

fn status(config: &Config) -> ExitCode {
    let path = &config.daemon.pidfile;
    match Pidfile::probe(path) {
        Ok(PidfileState::Running(pid)) => {
            println!("warden is running (pid {})", show_pid(pid));
            ExitCode::from(exit::status::RUNNING)
        }
        Ok(PidfileState::Stale(pid)) => {
            println!(
                "warden is not running, but its pidfile {} remains (pid {})",
                path.display(),
                show_pid(pid)
            );
            ExitCode::from(exit::status::DEAD_PIDFILE)
        }
        Ok(PidfileState::Absent) => {
            println!("warden is not running");
            ExitCode::from(exit::status::NOT_RUNNING)
        }
        Err(e) => {
            eprintln!("warden: {e}");
            ExitCode::from(exit::status::UNKNOWN)
        }
    }
}

fn show_pid(pid: Option<i32>) -> String {
    pid.map_or_else(|| "unknown".into(), |p| p.to_string())
}

/// The pid of the running daemon, waiting briefly for a starting one to write it.
fn running_pid(path: &std::path::Path) -> Result<Option<i32>, Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match Pidfile::probe(path)? {
            PidfileState::Running(Some(pid)) => return Ok(Some(pid)),
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

fn stop(config: &Config, timeout: Duration) -> ExitCode {
    use nix::sys::signal::{Signal, kill};
    let path = &config.daemon.pidfile;
    let pid = match running_pid(path) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            println!("not running");
            return ExitCode::from(exit::OK);
        }
        Err(e) => return exit::report(&e),
    };
    if let Err(e) = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM) {
        if e != nix::errno::Errno::ESRCH {
            return exit::report(&Error::sys("kill", e));
        }
    }
    match Pidfile::wait_released(path, timeout) {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => {
            eprintln!("warden: pid {pid} is still running {timeout:?} after SIGTERM");
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => exit::report(&e),
    }
}

fn signal_daemon(config: &Config, signal: nix::sys::signal::Signal) -> ExitCode {
    match running_pid(&config.daemon.pidfile) {
        Ok(Some(pid)) => match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) => exit::report(&Error::sys("kill", e)),
        },
        Ok(None) => {
            eprintln!("warden: not running");
            ExitCode::from(exit::NOT_RUNNING)
        }
        Err(e) => exit::report(&e),
    }
}

//! `[program.NAME]` tables → [`ProgramSpec`]: the programs the `warden` binary supervises.
//!
//! This file reads and checks one table per program, recording a diagnostic for every problem
//! (unknown keys, wrong types, bad values, inconsistent combinations) and never stopping at the
//! first. Like the rest of [`crate::config`] it looks at the file only: it does not check that the
//! command exists, that the user resolves or that the directory is there — those are the
//! supervisor's business when it spawns, and [`super::preflight`]'s for `warden check` (the
//! places of `command`, `user` and `group` are noted for it). Relative `directory` and output
//! file paths are resolved against the directory of the file the table is in; the command is
//! kept as written (a bare name is looked up in `PATH` when the program is spawned).
//!
//! Defaults follow the supervisor's design: restart always, backoff from 100 ms doubling to 30 s,
//! at most 5 restarts in 60 s, `SIGTERM` then `SIGKILL` after 10 s, ready as soon as exec'd.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::{DeArray, DeTable, DeValue};

use super::env_file::EnvFile;
use super::health::HealthSpec;
use super::limits::{CgroupLimits, Limits, read_cgroup_limits, read_limits};
use super::parse_umask;
use super::read::{Section, duration_value};
use crate::error::diag::Collector;

pub use crate::policy::{Policy, Readiness, Restart, StopWith, Update, UpdatePolicy};

/// The longest program name accepted.
pub const MAX_PROGRAM_NAME: usize = 64;
/// The largest `instances` accepted.
pub const MAX_INSTANCES: u32 = 10_000;
/// The largest `max_restarts` accepted.
pub const MAX_RESTARTS_LIMIT: u32 = 1_000_000;
/// The largest `log_keep` accepted.
pub const MAX_LOG_KEEP: u32 = 1_000;

/// One `[program.NAME]` table: a command warden runs, keeps running and stops.
///
/// Build one with [`ProgramSpec::new`] (every other field at its default) and set the fields
/// you need, or read it from `warden.toml` with [`crate::config::Config`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProgramSpec {
    /// The table's name (`NAME` in `[program.NAME]`): 1 to 64 of `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// `instances`: how many copies run, each with its own `WARDEN_INSTANCE` (0-based). Default
    /// 1; 0 defines the program without running it.
    pub instances: u32,
    /// What runs: `command`, `directory`, `user`, `group`, `umask`, `env`, `env_file`,
    /// `clean_env` and `limits`.
    pub exec: ExecSpec,
    /// Restart, backoff, crash-loop, stop and readiness settings, with the supervisor's
    /// defaults: `restart`, `backoff_initial`, `backoff_max`, `backoff_reset`, `max_restarts`,
    /// `restart_window`, `stop_signal`, `stop_timeout`, `ready` (→ `readiness`),
    /// `start_timeout` (`"0"` or `"infinity"`: none; only with `ready = "notify"` or `"health"`) and
    /// `watchdog` (requires `ready = "notify"`).
    pub policy: Policy,
    /// `stdout`: where the program's standard output goes (default the daemon log).
    pub stdout: OutputSpec,
    /// `stderr`: where the program's standard error goes (default the daemon log).
    pub stderr: OutputSpec,
    /// `log_max_bytes`: an output file is rotated when it would grow past this (default 10 MiB).
    pub log_max_bytes: u64,
    /// `log_keep`: how many rotated output files are kept (default 5).
    pub log_keep: u32,
    /// The configuration file that defines it, as an absolute path: the main file or a drop-in
    /// read through `include`. `None` for a program built in code. Where a program is defined
    /// is not one of its settings: moving its table to another file changes nothing on reload.
    pub source: Option<PathBuf>,
    /// `after`: the programs whose every instance must be ready before this program's instances
    /// start; this program stops before them.
    pub after: Vec<String>,
    /// `requires`: as `after`, and in addition this program is stopped (and held `waiting`)
    /// while one of these is stopped by hand or `fatal`, and started again once it is ready.
    pub requires: Vec<String>,
    /// `[program.NAME.health]`: a check run on every instance while it is up, which restarts an
    /// instance that fails it `retries` times in a row and, with `ready = "health"`, makes it
    /// ready.
    pub health: Option<HealthSpec>,
    /// `sockets`: the `[socket.NAME]` sockets each instance receives, as descriptors 3, 4, …
    /// with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` (systemd's socket activation).
    pub sockets: Vec<String>,
    /// `update` and `probation`: how a rolling restart replaces each instance, and how long a
    /// new one is on probation before the rollout counts it good.
    pub rollout: UpdatePolicy,
    /// `memory_max`, `memory_high`, `pids_max`, `cpu_max`: limits of each instance's cgroup
    /// (cgroup mode only; see [`CgroupLimits`]).
    pub cgroup: CgroupLimits,
}

impl ProgramSpec {
    /// A program named `name` running `command`, every other setting at its default.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> ProgramSpec {
        ProgramSpec {
            name: name.into(),
            exec: ExecSpec::new(command),
            instances: 1,
            policy: Policy::default(),
            stdout: OutputSpec::Log,
            stderr: OutputSpec::Log,
            log_max_bytes: 10 << 20,
            log_keep: 5,
            source: None,
            after: Vec::new(),
            requires: Vec::new(),
            health: None,
            sockets: Vec::new(),
            rollout: UpdatePolicy::default(),
            cgroup: CgroupLimits::default(),
        }
    }
}

/// How to run a command: the part of a program that is about one process, shared by the
/// configuration ([`ProgramSpec::exec`]) and programs built in code
/// (`warden::supervisor::Work::Exec`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ExecSpec {
    /// `command`: the argv, never empty. Written as an array of strings, or as one string split
    /// into words shell-style by `shlex`: quotes, backslashes and `#` comments are honoured, but
    /// nothing is expanded (no `$VAR`, no globs). Kept as written: a name without `/` is looked
    /// up in `PATH` when the program is spawned.
    pub command: Vec<String>,
    /// `directory`: the working directory (default: warden's own).
    pub directory: Option<PathBuf>,
    /// `user`: run as this user (name or numeric id; default: warden's user).
    pub user: Option<String>,
    /// `group`: run as this group (default: the user's primary group).
    pub group: Option<String>,
    /// `umask`: an octal string such as `"027"` (default: warden's umask).
    pub umask: Option<u32>,
    /// `env`: variables to set, in the order written (`env = { KEY = "value" }`). warden's own
    /// variables (`WARDEN_PROGRAM`, `WARDEN_INSTANCE`, `NOTIFY_SOCKET`) are set after these.
    pub env: Vec<(String, String)>,
    /// `env_file`: environment files in systemd's `EnvironmentFile=` syntax, read at each spawn
    /// in this order (a later file overrides an earlier one; [`env`](Self::env) overrides them
    /// all). See [`EnvFile`].
    pub env_files: Vec<EnvFile>,
    /// `clean_env`: start from an empty environment instead of warden's (default false). The
    /// program then sees only [`env_files`](Self::env_files), [`env`](Self::env) and warden's own variables — `PATH` is *not*
    /// added implicitly, so set it in `env` if the program needs it.
    pub clean_env: bool,
    /// `limits`: resource limits, set as both soft and hard limit before exec.
    pub limits: Limits,
}

impl ExecSpec {
    /// `command` with every other setting at its default (warden's own directory, user,
    /// umask and environment; no limits).
    pub fn new(command: Vec<String>) -> ExecSpec {
        ExecSpec {
            command,
            ..ExecSpec::default()
        }
    }
}

/// Where a program's standard output or error goes (`stdout`, `stderr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// `"log"`: lines tagged `NAME[INDEX]` into the daemon's log.
    Log,
    /// `"null"`: discarded (`/dev/null`).
    Null,
    /// A file path: lines appended by warden, rotated by size. In the file it must contain a
    /// `/` (`"./web.out"`): a bare word is taken for a misspelt `"log"` or `"null"`.
    File(PathBuf),
}

/// Parses a signal name as `stop_signal` accepts it: `"TERM"` or `"SIGTERM"`, any case, any
/// signal [`Signal`] knows.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return None;
    }
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

/// True for a valid program name: 1 to 64 of `A-Z a-z 0-9 _ . -`, and not `.` or `..` (which
/// would be trouble wherever a name becomes part of a path).
pub fn valid_program_name(name: &str) -> bool {
    (1..=MAX_PROGRAM_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name != "."
        && name != ".."
}

/// Reads the `[program]` table of the file `c` reports in (`source`, absolute): one
/// [`ProgramSpec`] per sub-table, in file order, with the span of its name. `files` maps each
/// output file to the program writing it, across every file of the configuration. The place of
/// each program's name is noted as `[program.NAME]`.
pub(super) fn read_programs(
    c: &mut Collector<'_>,
    table: &DeTable<'_>,
    base: &Path,
    source: &Path,
    files: &mut HashMap<PathBuf, String>,
) -> Vec<(ProgramSpec, Range<usize>)> {
    let mut programs = Vec::new();
    for (name, value) in table.iter() {
        let key = format!("program.{}", name.get_ref());
        if !valid_program_name(name.get_ref()) {
            c.at(
                name.span(),
                &key,
                format!(
                    "invalid program name {:?}: use 1 to {MAX_PROGRAM_NAME} letters, digits, '_', '.' or '-'",
                    name.get_ref()
                ),
            );
        }
        c.note(&format!("[{key}]"), name.span());
        match value.get_ref() {
            DeValue::Table(t) => {
                let mut p = read_program(c, name.get_ref(), name.span(), t, base, files);
                p.source = Some(source.to_path_buf());
                programs.push((p, name.span()));
            }
            other => c.at(
                value.span(),
                &key,
                format!("expected a table, found {}", other.type_str()),
            ),
        }
    }
    programs
}

/// One `[program.NAME]` table, read section by section in the order of the reference:
/// process, policy, outputs.
fn read_program(
    c: &mut Collector<'_>,
    name: &str,
    name_span: Range<usize>,
    t: &DeTable<'_>,
    base: &Path,
    files: &mut HashMap<PathBuf, String>,
) -> ProgramSpec {
    let mut s = Section::new(format!("program.{name}"), t, super::keys::PROGRAM);
    let mut p = ProgramSpec::new(name, Vec::new());
    read_process(c, &mut s, &mut p, &name_span, base);
    read_policy(c, &mut s, &mut p.policy, &name_span);
    read_outputs(c, &mut s, &mut p, &name_span, base, files);
    read_health_table(c, &mut s, &mut p, &name_span);
    read_update(c, &mut s, &mut p.rollout);
    s.finish(c);
    p
}

/// `update` and `probation`.
fn read_update(c: &mut Collector<'_>, s: &mut Section<'_, '_>, rollout: &mut UpdatePolicy) {
    if let Some(u) = s.choice(c, "update", &["replace", "surge"]) {
        rollout.update = if u == "surge" {
            Update::Surge
        } else {
            Update::Replace
        };
    }
    if let Some(d) = s.duration(c, "probation") {
        rollout.probation = Some(d);
    }
}

/// `health`, and that `ready = "health"` has one.
fn read_health_table(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    p: &mut ProgramSpec,
    name_span: &Range<usize>,
) {
    let at = s.span("health").unwrap_or(name_span.clone());
    if let Some(t) = s.table(c, "health") {
        p.health = super::health::read_health(c, &s.key("health"), t, at);
    } else if p.policy.readiness == Readiness::Health && !s.has("health") {
        c.at(
            s.span("ready").unwrap_or(name_span.clone()),
            &s.key("ready"),
            format!(
                "\"health\" needs a health check: add a [{}] table",
                s.key("health")
            ),
        );
    }
}

/// What the process is: command, instances, directory, identity, umask, environment, limits.
fn read_process(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    p: &mut ProgramSpec,
    name_span: &Range<usize>,
    base: &Path,
) {
    match read_argv(c, s, "command") {
        Some(argv) => p.exec.command = argv,
        None if !s.has("command") => c.at(
            name_span.clone(),
            &s.key("command"),
            "required: the program to run, e.g. command = [\"/usr/bin/prog\", \"--flag\"]",
        ),
        None => {}
    }
    if let Some(n) = s.integer(c, "instances", 0, MAX_INSTANCES.into()) {
        p.instances = n as u32;
    }
    if let Some(d) = s.path(c, "directory", base) {
        p.exec.directory = Some(d);
    }
    p.exec.user = non_empty(c, s, "user");
    p.exec.group = non_empty(c, s, "group");
    // What only the running system can judge (`warden check`): where it was written.
    for key in ["command", "user", "group", "stop_timeout"] {
        if let Some(span) = s.span(key) {
            c.note(&s.key(key), span);
        }
    }
    if let Some(u) = s.string(c, "umask") {
        match parse_umask(u.get_ref()) {
            Some(m) => p.exec.umask = Some(m),
            None => c.at(
                u.span(),
                &s.key("umask"),
                format!(
                    "{:?} is not an octal mode between \"000\" and \"777\" (write it as a string, e.g. \"027\")",
                    u.get_ref()
                ),
            ),
        }
    }
    if let Some(env) = s.table(c, "env") {
        p.exec.env = read_env(c, &s.key("env"), env);
    }
    if let Some(files) = read_env_files(c, s, base) {
        p.exec.env_files = files;
    }
    if let Some(b) = s.boolean(c, "clean_env") {
        p.exec.clean_env = b;
    }
    if let Some(l) = s.table(c, "limits") {
        p.exec.limits = read_limits(c, &s.key("limits"), l);
    }
    p.cgroup = read_cgroup_limits(c, s);
    p.after = read_names(c, s, "after", "program");
    p.requires = read_names(c, s, "requires", "program");
    p.sockets = read_names(c, s, "sockets", "socket");
}

/// `after` or `requires`: an array of program names, each noted at its place as
/// `program.NAME.KEY[DEP]` for the graph check ([`super::graph::check`]), which judges the
/// names themselves once every file is read. A name written twice is kept once.
/// An array of names (`after`, `requires`: programs; `sockets`: sockets), each noted at its
/// place (`program.web.after[db]`), duplicates dropped.
fn read_names(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    key: &'static str,
    what: &str,
) -> Vec<String> {
    let dotted = s.key(key);
    let Some(v) = s.raw(key) else {
        return Vec::new();
    };
    let DeValue::Array(items) = v.get_ref() else {
        let found = v.get_ref().type_str();
        c.at(
            v.span(),
            &dotted,
            format!("expected an array of {what} names, found {found}"),
        );
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(n) if !names.iter().any(|m| m == n.as_ref()) => {
                c.note(&format!("{dotted}[{n}]"), item.span());
                names.push(n.to_string());
            }
            DeValue::String(_) => {}
            other => c.at(
                item.span(),
                &dotted,
                format!("expected a {what} name, found {}", other.type_str()),
            ),
        }
    }
    names
}

/// When it is restarted and how it is stopped: restart, backoff, limits, stop, readiness.
fn read_policy(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    policy: &mut Policy,
    name_span: &Range<usize>,
) {
    if let Some(r) = s.choice(c, "restart", &["always", "on-failure", "never"]) {
        policy.restart = match r {
            "always" => Restart::Always,
            "on-failure" => Restart::OnFailure,
            _ => Restart::Never,
        };
    }
    read_backoff(c, s, policy, name_span);
    if let Some(d) = s.duration(c, "backoff_reset") {
        policy.backoff_reset = d;
    }
    if let Some(n) = s.integer(c, "max_restarts", 0, MAX_RESTARTS_LIMIT.into()) {
        policy.max_restarts = n as u32;
    }
    if let Some(d) = s.duration(c, "restart_window") {
        if d.is_zero() {
            c.at(
                s.span("restart_window").unwrap_or(name_span.clone()),
                &s.key("restart_window"),
                "must be longer than zero",
            );
        } else {
            policy.restart_window = d;
        }
    }
    if let Some(sig) = s.string(c, "stop_signal") {
        match parse_signal(sig.get_ref()) {
            Some(signal) => policy.stop = StopWith::Signal(signal),
            None => c.at(
                sig.span(),
                &s.key("stop_signal"),
                format!(
                    "unknown signal {:?} (write e.g. \"TERM\", \"SIGINT\", \"QUIT\")",
                    sig.get_ref()
                ),
            ),
        }
    }
    if let Some(d) = s.duration(c, "stop_timeout") {
        policy.stop_timeout = d;
    }
    read_readiness(c, s, policy, name_span);
}

/// `backoff_initial` and `backoff_max`, and that the first is not longer than the second.
fn read_backoff(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    policy: &mut Policy,
    name_span: &Range<usize>,
) {
    let initial = s.duration(c, "backoff_initial");
    let max = s.duration(c, "backoff_max");
    policy.backoff_initial = initial.unwrap_or(policy.backoff_initial);
    policy.backoff_max = max.unwrap_or(policy.backoff_max);
    // Compare only values that were read well (or defaulted): a bad duration is reported once.
    let initial_ok = initial.is_some() || !s.has("backoff_initial");
    let max_ok = max.is_some() || !s.has("backoff_max");
    if initial_ok && max_ok && policy.backoff_initial > policy.backoff_max {
        let (at, msg) = if initial.is_some() {
            (
                "backoff_initial",
                format!(
                    "must not be longer than backoff_max ({})",
                    fmt_duration(policy.backoff_max)
                ),
            )
        } else {
            (
                "backoff_max",
                format!(
                    "must not be shorter than backoff_initial ({})",
                    fmt_duration(policy.backoff_initial)
                ),
            )
        };
        c.at(s.span(at).unwrap_or(name_span.clone()), &s.key(at), msg);
    }
}

/// `ready`, and `start_timeout` and `watchdog`, which only `ready = "notify"` allows.
fn read_readiness(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    policy: &mut Policy,
    name_span: &Range<usize>,
) {
    let ready = read_ready(c, s);
    policy.readiness = ready.unwrap_or(policy.readiness);
    // A `ready` that was itself wrong has been reported already.
    let ready_ok = ready.is_some() || !s.has("ready");
    if let Some(d) = optional_duration(c, s, "start_timeout") {
        policy.start_timeout = d;
        let waits = matches!(policy.readiness, Readiness::Notify | Readiness::Health);
        if d.is_some() && ready_ok && !waits {
            c.at(
                s.span("start_timeout").unwrap_or(name_span.clone()),
                &s.key("start_timeout"),
                "requires ready = \"notify\" or \"health\" (it bounds the wait for READY=1 or \
                 the first passing health check; other readiness modes have no such wait)",
            );
        }
    }
    if let Some(d) = optional_duration(c, s, "watchdog") {
        policy.watchdog = d;
        if d.is_some() && ready_ok && policy.readiness != Readiness::Notify {
            c.at(
                s.span("watchdog").unwrap_or(name_span.clone()),
                &s.key("watchdog"),
                "requires ready = \"notify\" (the watchdog is fed by WATCHDOG=1 notify messages)",
            );
        }
    }
}

/// Where output goes: stdout, stderr (one writer per file), rotation.
fn read_outputs(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    p: &mut ProgramSpec,
    name_span: &Range<usize>,
    base: &Path,
    files: &mut HashMap<PathBuf, String>,
) {
    if let Some(o) = read_output(c, s, "stdout", base) {
        p.stdout = o;
    }
    if let Some(o) = read_output(c, s, "stderr", base) {
        p.stderr = o;
    }
    // One writer per output file: two programs would each rotate it on their own. (A program's
    // stdout and stderr may share one file: they share its writer.)
    for key in ["stdout", "stderr"] {
        let out = if key == "stdout" {
            &p.stdout
        } else {
            &p.stderr
        };
        let OutputSpec::File(path) = out else {
            continue;
        };
        match files.get(path) {
            Some(other) if *other != p.name => c.at(
                s.span(key).unwrap_or(name_span.clone()),
                &s.key(key),
                format!(
                    "{} is also program.{other}'s output file; give each program its own \
                     (each rotates its files on its own)",
                    path.display()
                ),
            ),
            _ => {
                files.insert(path.clone(), p.name.clone());
            }
        }
    }
    if let Some(n) = s.size(c, "log_max_bytes") {
        if n == 0 {
            c.at(
                s.span("log_max_bytes").unwrap_or(name_span.clone()),
                &s.key("log_max_bytes"),
                "must be at least 1 byte",
            );
        } else {
            p.log_max_bytes = n;
        }
    }
    if let Some(n) = s.integer(c, "log_keep", 0, MAX_LOG_KEEP.into()) {
        p.log_keep = n as u32;
    }
}

/// `command`: an array of strings, or one string split into words shell-style.
/// `command` (or a health check's `exec`): an array of strings, or a string split shell-style.
pub(super) fn read_argv(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    name: &'static str,
) -> Option<Vec<String>> {
    let key = s.key(name);
    let v = s.raw(name)?;
    let argv = match v.get_ref() {
        DeValue::String(text) => split_command(c, &key, v.span(), text)?,
        DeValue::Array(items) => command_words(c, &key, items)?,
        other => {
            c.at(
                v.span(),
                &key,
                format!(
                    "expected an array of strings or a string, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    match argv.first() {
        None => {
            c.at(v.span(), &key, "must not be empty");
            None
        }
        Some(prog) if prog.is_empty() => {
            c.at(
                v.span(),
                &key,
                "the program to run must not be an empty string",
            );
            None
        }
        Some(_) => Some(argv),
    }
}

/// A `command` string split into words shell-style (`shlex`).
fn split_command(
    c: &mut Collector<'_>,
    key: &str,
    span: Range<usize>,
    text: &str,
) -> Option<Vec<String>> {
    if text.contains('\0') {
        c.at(span, key, "must not contain a NUL byte");
        return None;
    }
    let words = shlex::split(text);
    if words.is_none() {
        c.at(
            span,
            key,
            format!("cannot split {text:?} into words: unbalanced quote or trailing backslash"),
        );
    }
    words
}

/// A `command` array: every item a string without NUL; each bad item is reported.
fn command_words(c: &mut Collector<'_>, key: &str, items: &DeArray<'_>) -> Option<Vec<String>> {
    let mut argv = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(arg) if arg.contains('\0') => {
                c.at(item.span(), key, "must not contain a NUL byte");
                ok = false;
            }
            DeValue::String(arg) => argv.push(arg.to_string()),
            other => {
                c.at(
                    item.span(),
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(argv)
}

/// A string key that must not be empty when present.
fn non_empty(c: &mut Collector<'_>, s: &mut Section<'_, '_>, key: &'static str) -> Option<String> {
    let v = s.string(c, key)?;
    if v.get_ref().is_empty() {
        c.at(v.span(), &s.key(key), "must not be empty");
        None
    } else {
        Some(v.into_inner())
    }
}

/// `env`: a table of strings, kept in the order written.
fn read_env(c: &mut Collector<'_>, prefix: &str, t: &DeTable<'_>) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(t.len());
    for (k, v) in t.iter() {
        let name = k.get_ref();
        let key = format!("{prefix}.{name}");
        if name.is_empty() || name.contains(['=', '\0']) {
            c.at(
                k.span(),
                &key,
                format!("{name:?} is not a valid environment variable name (it must be non-empty, without '=' or NUL)"),
            );
            continue;
        }
        match v.get_ref() {
            DeValue::String(val) if val.contains('\0') => {
                c.at(v.span(), &key, "must not contain a NUL byte")
            }
            DeValue::String(val) => env.push((name.to_string(), val.to_string())),
            other => c.at(
                v.span(),
                &key,
                format!("expected a string, found {}", other.type_str()),
            ),
        }
    }
    env
}

/// `env_file`: an array of paths, each optional when written with a leading `-`; relative to
/// `base`. Its place is noted for `warden check`, which reads the files.
fn read_env_files(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    base: &Path,
) -> Option<Vec<EnvFile>> {
    let key = s.key("env_file");
    let v = s.raw("env_file")?;
    c.note(&key, v.span());
    let DeValue::Array(items) = v.get_ref() else {
        let found = v.get_ref().type_str();
        c.at(
            v.span(),
            &key,
            format!("expected an array of paths, found {found}"),
        );
        return None;
    };
    let entries = command_words(c, &key, items)?;
    let mut files = Vec::with_capacity(entries.len());
    for (entry, item) in entries.iter().zip(items.iter()) {
        if entry.is_empty() || entry == "-" {
            c.at(item.span(), &key, "a path must not be empty");
        } else {
            files.push(EnvFile::from_entry(entry, base));
        }
    }
    (files.len() == entries.len()).then_some(files)
}

/// `ready`: `"immediate"`, `"notify"`, `"health"` or a duration.
fn read_ready(c: &mut Collector<'_>, s: &mut Section<'_, '_>) -> Option<Readiness> {
    let key = s.key("ready");
    let v = s.raw("ready")?;
    let ready = match v.get_ref() {
        DeValue::String(text) if text == "immediate" => Ok(Readiness::Immediate),
        DeValue::String(text) if text == "notify" => Ok(Readiness::Notify),
        DeValue::String(text) if text == "health" => Ok(Readiness::Health),
        DeValue::String(text) => match super::read::parse_duration(text) {
            Ok(d) => Ok(Readiness::After(d)),
            // A duration, but too long: say that, not that it is no duration.
            Err(e) if e.starts_with("is too long") => Err(e),
            Err(_) => Err(format!(
                "{text:?} is not \"immediate\", \"notify\", \"health\" or a duration such as \"2s\""
            )),
        },
        other => duration_value(other).map(Readiness::After),
    };
    match ready {
        Ok(r) => Some(r),
        Err(msg) => {
            c.at(v.span(), &key, msg);
            None
        }
    }
}

/// A duration where zero and `"infinity"` mean none: `Some(None)` for those, `Some(Some(d))`
/// otherwise, `None` when absent or wrong (reported).
fn optional_duration(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    key: &'static str,
) -> Option<Option<Duration>> {
    let name = s.key(key);
    let v = s.raw(key)?;
    match v.get_ref() {
        DeValue::String(text) if text == "infinity" => Some(None),
        other => match duration_value(other) {
            Ok(d) => Some((!d.is_zero()).then_some(d)),
            Err(msg) => {
                c.at(v.span(), &name, msg);
                None
            }
        },
    }
}

/// `stdout`/`stderr`: `"log"`, `"null"` or a file path.
fn read_output(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    key: &'static str,
    base: &Path,
) -> Option<OutputSpec> {
    let v = s.string(c, key)?;
    match v.get_ref().as_str() {
        "log" => Some(OutputSpec::Log),
        "null" => Some(OutputSpec::Null),
        path => match super::file_value(path, &["log", "null"]) {
            Ok(()) => Some(OutputSpec::File(base.join(path))),
            Err(msg) => {
                c.at(v.span(), &s.key(key), msg);
                None
            }
        },
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests;

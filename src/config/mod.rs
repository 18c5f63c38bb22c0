//! Configuration: `warden.toml` and its drop-ins → validated, immutable specs.
//!
//! Two layers. `read` parses the TOML syntax (all syntax errors at once, with recovery) and
//! reads typed values from tables, recording a diagnostic for every unknown key, wrong type or
//! out-of-range value; this module (`[daemon]`, `include`) and `program` (`[program.NAME]`, as
//! [`ProgramSpec`]) then check the meaning and build [`Config`]. Nothing stops at the first
//! problem: an operator sees every mistake in one run of `warden check`, each as
//! `FILE:LINE:COLUMN: key: message`, the main file first, then each drop-in in load order.
//!
//! # Drop-ins (`include`)
//!
//! The main file's top-level `include = ["conf.d/*.toml"]` lists glob patterns (the `glob`
//! crate's syntax: `*`, `?`, `[a-z]`, `**`), relative to the main file's directory unless
//! absolute. The patterns are expanded in the order written, each one's matches sorted by path
//! (byte order, as `ls` in the C locale); a file matched twice is read once, where first
//! matched, and the main file itself is never read as its own drop-in. A pattern that matches
//! nothing is not an error (an empty `conf.d` is normal); a malformed pattern is. `*` and `?`
//! do not match a `/`, nor a leading `.` in the last part (editor and package-manager leftovers
//! such as `.web.toml.swp` stay out). A matched directory is skipped; any other file that is
//! not a regular file (a FIFO, a socket) is an error, and so is one that cannot be read or is
//! not UTF-8. A drop-in holds `[program.NAME]` tables only; its relative paths are resolved
//! against its own directory. Its programs come after the main file's, file by file, in load
//! order — the order they start in. A program defined in two files is an error naming both
//! places. The patterns are expanded anew on every load, so `reload` sees added, changed and
//! removed drop-ins.
//!
//! This module and its readers look at the configuration files and nothing else: they do not
//! resolve users, look commands up or check paths of the running system. The one exception is
//! [`preflight`], which does exactly that, and only when called (`warden check`, `start`,
//! `reload`). Relative paths are resolved against the directory of the file they are written
//! in. Runtime state never lives here.

mod env_file;
mod include;
use include::{expand, read_drop_ins, read_include};
pub(crate) mod graph;
mod health;
mod keys;
mod limits;
pub mod preflight;
mod program;
mod read;
mod socket;

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use crate::error::diag::{self, Collector, Place};
pub use crate::error::diag::{Diagnostic, Diagnostics};
pub use env_file::EnvFile;
pub use health::{
    HealthSpec, HostPort, HttpServer, HttpTarget, MAX_HEALTH_RETRIES, Probe, parse_host_port,
    parse_http_url,
};
pub use keys::{KEYS, KeyTable};
pub use limits::{CgroupLimits, CgroupMode, CpuMax, Limits, parse_cpu_max};
pub use program::{
    ExecSpec, MAX_INSTANCES, MAX_LOG_KEEP, MAX_PROGRAM_NAME, MAX_RESTARTS_LIMIT, OutputSpec,
    Policy, ProgramSpec, Readiness, Restart, Update, UpdatePolicy, parse_signal,
    valid_program_name,
};
use read::Section;
pub use read::{MAX_DURATION, parse_duration, parse_size};
pub use socket::{DEFAULT_BACKLOG, Listen, SocketSpec, parse_listen};

use crate::error::{Error, Result};

/// Where the configuration lives when neither `-c` nor `$WARDEN_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/warden/warden.toml";

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The `[daemon]` table.
    pub daemon: DaemonSpec,
    /// The `[program.NAME]` tables: the main file's in file order, then each drop-in's (see
    /// [`included`](Self::included)). Each program's [`ProgramSpec::source`] names its file.
    pub programs: Vec<ProgramSpec>,
    /// The drop-in files read through `include`, absolute, in load order (directories and
    /// files that could not be read left out).
    pub included: Vec<PathBuf>,
    /// The `[socket.NAME]` tables (main file only), in file order.
    pub sockets: Vec<SocketSpec>,
    /// Where the values that only the running system can judge were written, by dotted key
    /// (`daemon.user`, `program.web.command`; `[program.web]` for the table's name), for
    /// [`preflight`].
    places: BTreeMap<String, Place>,
    /// Every file the patterns matched, in load order, also those that could not be read: the
    /// order [`preflight`] reports in.
    matched: Vec<PathBuf>,
}

/// Where the daemon's own log goes (`[daemon] log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSpec {
    /// Not set: stderr in the foreground, syslog once daemonized.
    Auto,
    /// `"stderr"`.
    Stderr,
    /// `"syslog"`.
    Syslog,
    /// A file path, appended to and reopened on `SIGUSR1`. In the file it must contain a `/`
    /// (`"./warden.log"`): a bare word is taken for a misspelt `"stderr"` or `"syslog"`.
    File(PathBuf),
}

pub use crate::log::SYSLOG_FACILITIES;

/// The `[daemon]` table: how warden itself runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DaemonSpec {
    /// `pidfile`: the locked pidfile (default `/run/warden/warden.pid`).
    pub pidfile: PathBuf,
    /// `directory`: the working directory (default `/`).
    pub directory: PathBuf,
    /// `umask`, an octal string such as `"027"` (default `"022"`).
    pub umask: u32,
    /// `user`: run as this user (name or numeric id).
    pub user: Option<String>,
    /// `group`: run as this group (default: the user's primary group).
    pub group: Option<String>,
    /// `stdout`: where the daemon's standard output goes (default `/dev/null`). Opened once, at
    /// start, and not reopened on `SIGUSR1`: rotate it with `copytruncate`.
    pub stdout: PathBuf,
    /// `stderr`: where the daemon's standard error goes (default `/dev/null`); like `stdout`.
    pub stderr: PathBuf,
    /// `log`: `"stderr"`, `"syslog"` or a file path (see [`LogSpec::File`]).
    pub log: LogSpec,
    /// `log_level`: `off`, `error`, `warn`, `info` (default), `debug` or `trace`.
    pub log_level: log::LevelFilter,
    /// `log_format`: `text` (default) or `json`, for warden's log and programs' captured output
    /// alike (see [`crate::log::json`]).
    pub log_format: crate::log::LogFormat,
    /// `syslog_facility` (default `daemon`).
    pub syslog_facility: String,
    /// `syslog_ident`: the tag in syslog lines (default `warden`).
    pub syslog_ident: String,
    /// `ready_timeout`: how long `warden start` waits for readiness (default 30 s; more than
    /// zero, at most [`MAX_DURATION`] like every duration).
    pub ready_timeout: Duration,
    /// `shutdown_timeout`: the deadline for a whole graceful shutdown, exit hooks included
    /// (default 30 s).
    pub shutdown_timeout: Duration,
    /// `exit_on_fatal`: when a program ends for good with a failure (it goes `fatal`, or exits
    /// non-zero or by a signal and its `restart` policy does not start it again), stop
    /// everything and exit with that program's exit status (128 + N for signal N): a container's
    /// entry point that fails like its program, as tini does (default false).
    pub exit_on_fatal: bool,
    /// `scale_program`: the program whose instance count `SIGTTIN`/`SIGTTOU` raise and lower
    /// (default none: those signals are ignored). It names a `[program.NAME]` table of the file.
    pub scale_program: Option<String>,
    /// `control_socket`: the control socket (default `warden.sock` beside the pidfile).
    pub control_socket: PathBuf,
    /// `control_group`: members of this group may read status through the control socket.
    pub control_group: Option<String>,
    /// `metrics`: where `GET /metrics` is served (OpenMetrics / Prometheus text), a TCP address
    /// or a Unix socket path; default none (off).
    pub metrics: Option<Listen>,
    /// `cgroups`: `"auto"` (default) runs each instance in a cgroup v2 of its own where warden
    /// may create one, `"off"` keeps to process groups and the guard.
    pub cgroups: CgroupMode,
    /// `pid_namespace`: create every instance in a PID namespace whose init is warden's guard,
    /// so that the kernel kills them all when the guard dies, even when warden and the guard
    /// are killed together (default false: programs would see that namespace's pids).
    pub pid_namespace: bool,
}

/// `shutdown_timeout`'s default: 30 s, or 8 s in a process that is PID 1 (a container's entry
/// point), so that a graceful shutdown fits `docker stop`'s 10 s grace period (and Kubernetes'
/// 30 s) before the runtime's `SIGKILL`.
fn default_shutdown_timeout() -> Duration {
    if std::process::id() == 1 {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(30)
    }
}

impl Default for DaemonSpec {
    fn default() -> Self {
        DaemonSpec {
            pidfile: PathBuf::from("/run/warden/warden.pid"),
            directory: PathBuf::from("/"),
            umask: 0o022,
            user: None,
            group: None,
            stdout: PathBuf::from("/dev/null"),
            stderr: PathBuf::from("/dev/null"),
            log: LogSpec::Auto,
            log_level: log::LevelFilter::Info,
            log_format: crate::log::LogFormat::Text,
            syslog_facility: "daemon".into(),
            syslog_ident: "warden".into(),
            ready_timeout: Duration::from_secs(30),
            shutdown_timeout: default_shutdown_timeout(),
            exit_on_fatal: false,
            scale_program: None,
            control_socket: PathBuf::from("/run/warden/warden.sock"),
            control_group: None,
            metrics: None,
            cgroups: CgroupMode::Auto,
            pid_namespace: false,
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// Errors: [`Error::Io`] when the file cannot be read, [`Error::Config`] listing every
    /// problem found.
    pub fn load(path: &Path) -> Result<Config> {
        let text = read_utf8(path)?.map_err(Error::Config)?;
        Config::parse(path, &text)
    }

    /// Reads `path` for a command that only needs to reach a running daemon (`stop`,
    /// `status`): when the file has errors, the pidfile and control socket are still located
    /// (see [`locate`]) and the problems come back beside the configuration.
    pub fn load_for_control(path: &Path) -> Result<(Config, Option<Diagnostics>)> {
        let text = match read_utf8(path)? {
            Ok(text) => text,
            Err(d) => {
                let lossy =
                    String::from_utf8_lossy(&crate::files::read_regular(path).unwrap_or_default())
                        .into_owned();
                return Ok((Config::located(path, &lossy), Some(d)));
            }
        };
        match Config::parse(path, &text) {
            Ok(c) => Ok((c, None)),
            Err(Error::Config(d)) => Ok((Config::located(path, &text), Some(d))),
            Err(e) => Err(e),
        }
    }

    /// A configuration with no programs and the daemon paths [`locate`]d in `text`.
    fn located(path: &Path, text: &str) -> Config {
        Config {
            path: path.to_path_buf(),
            daemon: locate(path, text),
            programs: Vec::new(),
            included: Vec::new(),
            sockets: Vec::new(),
            places: BTreeMap::new(),
            matched: Vec::new(),
        }
    }

    /// Validates `text` as if read from `path` (used for messages and relative paths); the
    /// drop-ins it includes are read from disk, relative to `path`'s directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let (config, diags) = Config::read(path, text);
        if diags.is_empty() {
            Ok(config)
        } else {
            Err(Error::Config(diags))
        }
    }

    /// Reads the main file at `path` (whose content is `text`) and its drop-ins: all that could
    /// be read, even when there were problems, and every problem found.
    pub(crate) fn read(path: &Path, text: &str) -> (Config, Diagnostics) {
        let mut c = Collector::new(path, text);
        let (doc, syntax) = DeTable::parse_recoverable(text);
        syntax_errors(&mut c, text, &syntax);
        let base = base_dir(path);
        let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut root = Section::new("", doc.get_ref(), keys::TOP);
        let patterns = read_include(&mut c, &mut root);
        let (mut daemon, scale) = match root.table(&mut c, "daemon") {
            Some(t) => read_daemon(&mut c, t, &base),
            None => (DaemonSpec::default(), None),
        };
        let (sockets, socket_names) = match root.table(&mut c, "socket") {
            Some(t) => socket::read_sockets(&mut c, t),
            None => (Vec::new(), Vec::new()),
        };
        let mut files = HashMap::new();
        let mut programs: Vec<ProgramSpec> = match root.table(&mut c, "program") {
            Some(t) => program::read_programs(&mut c, t, &base, &source, &mut files)
                .into_iter()
                .map(|(p, _)| p)
                .collect(),
            None => Vec::new(),
        };
        let mut places: BTreeMap<String, Place> = c.take_places().into_iter().collect();

        let matched = expand(&mut c, &patterns, &base, &source);
        let (included, drop_in_diags) = read_drop_ins(
            &matched,
            path,
            &source,
            &mut files,
            &mut programs,
            &mut places,
        );
        if let Some(name) = scale {
            resolve_scale_program(&mut c, name, &programs, &mut daemon);
        }
        if syntax.is_empty() {
            // After a syntax error the recovered document is partial; unknown-key reports on it
            // would only add noise.
            root.finish(&mut c);
        }
        places.extend(c.take_places());
        let mut diags = c.finish();
        diags.0.extend(drop_in_diags);
        let read = (&daemon, &programs[..], &files);
        let cross = cross_checks(read, (&socket_names, &sockets), &places, path);
        diags.0.extend(cross);
        let config = Config {
            path: path.to_path_buf(),
            daemon,
            programs,
            included,
            sockets,
            places,
            matched,
        };
        (config, diags)
    }

    /// The start order of the programs, in levels (`after` and `requires`): each level's
    /// programs start in parallel once every program of the levels before is ready, and stop in
    /// the reverse order. Empty when the edges have a cycle (a configuration error).
    pub fn start_order(&self) -> Vec<Vec<String>> {
        graph::spec_order(&self.programs)
    }

    /// Where the value of `key` (a dotted key such as `program.web.user`) was written, if it was.
    pub(crate) fn place(&self, key: &str) -> Option<&Place> {
        self.places.get(key)
    }

    /// The main file, then every file the `include` patterns matched, in load order.
    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.path.as_path()).chain(self.matched.iter().map(PathBuf::as_path))
    }
}

/// What can be judged only once every file is read: the dependency graph, the names of the
/// sockets programs receive, and `[daemon] metrics` against every file warden uses.
fn cross_checks(
    (daemon, programs, outputs): (&DaemonSpec, &[ProgramSpec], &HashMap<PathBuf, String>),
    (names, sockets): (&[String], &[SocketSpec]),
    places: &BTreeMap<String, Place>,
    path: &Path,
) -> Vec<diag::Diagnostic> {
    let mut out = graph::check(programs, places, path);
    out.extend(socket::check_names(programs, names, places, path));
    if let Some(msg) = socket::metrics_clash(daemon, sockets, outputs) {
        let place = places.get("daemon.metrics");
        out.push(diag::Diagnostic::new(place, path, "daemon.metrics", msg));
    }
    for p in programs {
        for (key, spec) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
            let program::OutputSpec::File(file) = spec else {
                continue;
            };
            if let Some(msg) = socket::output_clash(daemon, file) {
                let key = format!("program.{}.{key}", p.name);
                let file = p.source.as_deref().unwrap_or(path);
                out.push(diag::Diagnostic::new(places.get(&key), file, &key, msg));
            }
        }
    }
    out
}

/// The directory relative paths of the file at `path` are resolved against, absolute.
fn base_dir(path: &Path) -> PathBuf {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::path::absolute(&base).unwrap_or(base)
}

/// Whether the noted place `key` belongs to program `name` (its table or one of its keys).
fn of_program(key: &str, name: &str) -> bool {
    key == format!("[program.{name}]")
        || key
            .strip_prefix("program.")
            .and_then(|k| k.strip_prefix(name))
            .and_then(|k| k.strip_prefix('.'))
            .is_some_and(|k| !k.contains('.'))
}

/// `daemon.scale_program` must name a program of the configuration (main file or drop-in).
fn resolve_scale_program(
    c: &mut Collector<'_>,
    name: Spanned<String>,
    programs: &[ProgramSpec],
    daemon: &mut DaemonSpec,
) {
    if programs.iter().any(|p| p.name == *name.get_ref()) {
        daemon.scale_program = Some(name.into_inner());
        return;
    }
    let known = programs
        .iter()
        .map(|p| format!("{:?}", p.name))
        .collect::<Vec<_>>();
    let hint = if known.is_empty() {
        "no program is defined".to_string()
    } else {
        format!("the programs are {}", known.join(", "))
    };
    c.at(
        name.span(),
        "daemon.scale_program",
        format!("there is no [program.{}] table ({hint})", name.get_ref()),
    );
}

/// Reads the file at `path` as text: `Err(Error)` when it cannot be read, `Ok(Err(_))` with the
/// place of the first byte that is not UTF-8 (TOML files are UTF-8).
fn read_utf8(path: &Path) -> Result<std::result::Result<String, Diagnostics>> {
    // Not `fs::read`: a FIFO at the path would hang `check`, `reload` and the daemon's SIGHUP.
    let bytes = crate::files::read_regular(path)
        .map_err(|e| Error::io("cannot read configuration", path, e))?;
    Ok(utf8(path, bytes))
}

/// The text of the file at `path`, or the place of its first byte that is not UTF-8.
fn utf8(path: &Path, bytes: Vec<u8>) -> std::result::Result<String, Diagnostics> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        let prefix = std::str::from_utf8(&bytes[..good]).expect("valid up to here");
        let mut c = Collector::new(path, prefix);
        c.at(
            good..good,
            "",
            format!(
                "byte {good} is not UTF-8 (0x{:02x}): a TOML file must be UTF-8",
                bytes[good]
            ),
        );
        c.finish()
    })
}

/// Records TOML syntax errors. The parser reports a duplicate key or table without naming it,
/// and a duplicated table once for its header and again for each of its keys: each is named
/// here from the source, and the keys of a duplicated table are reported once, with it.
fn syntax_errors(c: &mut Collector<'_>, text: &str, syntax: &[toml::de::Error]) {
    let mut tables: Vec<String> = Vec::new();
    let mut seen: Vec<(String, usize)> = Vec::new();
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim();
        if message != "duplicate key" {
            c.at(span, "", message.to_string());
            continue;
        }
        let Some((key, header)) = read::key_at(text, span.start) else {
            c.at(span, "", message.to_string());
            continue;
        };
        let line = diag::line_column(text, span.start).0;
        if tables.iter().any(|t| {
            key.strip_prefix(t.as_str())
                .is_some_and(|r| r.starts_with('.'))
        }) || seen.contains(&(key.clone(), line))
        {
            continue;
        }
        seen.push((key.clone(), line));
        if header {
            c.at(
                span,
                &key,
                format!("duplicate table: [{key}] may appear only once (put all its keys under the first one)"),
            );
            tables.push(key);
        } else {
            c.at(span, &key, "duplicate key: it is already set in this table");
        }
    }
}

/// Reads `[daemon]`; `scale_program` comes back apart, with its span, to be checked against the
/// programs once they are read.
fn read_daemon(
    c: &mut Collector<'_>,
    t: &DeTable<'_>,
    base: &Path,
) -> (DaemonSpec, Option<Spanned<String>>) {
    let mut s = Section::new("daemon", t, keys::DAEMON);
    let mut d = DaemonSpec::default();
    read_daemon_process(c, &mut s, &mut d, base);
    read_daemon_logging(c, &mut s, &mut d, base);
    let scale = read_daemon_control(c, &mut s, &mut d, base);
    // What only the running system can judge (`warden check`): where it was written.
    // `metrics`: for the check against the files warden uses once every file is read.
    for key in [
        "user",
        "group",
        "control_group",
        "pidfile",
        "log",
        "stderr",
        "metrics",
    ] {
        if let Some(span) = s.span(key) {
            c.note(&s.key(key), span);
        }
    }
    s.finish(c);
    (d, scale)
}

/// `[daemon]`'s process: pidfile, directory, umask, identity, stdout and stderr.
fn read_daemon_process(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    d: &mut DaemonSpec,
    base: &Path,
) {
    if let Some(p) = s.path(c, "pidfile", base) {
        d.pidfile = p;
    }
    if let Some(p) = s.path(c, "directory", base) {
        d.directory = p;
    }
    if let Some(u) = s.string(c, "umask") {
        match parse_umask(u.get_ref()) {
            Some(m) => d.umask = m,
            None => c.at(
                u.span(),
                "daemon.umask",
                format!("{:?} is not an octal mode between \"000\" and \"777\" (write it as a string, e.g. \"027\")", u.get_ref()),
            ),
        }
    }
    if let Some(u) = s.string(c, "user") {
        if u.get_ref().is_empty() {
            c.at(u.span(), "daemon.user", "must not be empty");
        } else {
            d.user = Some(u.into_inner());
        }
    }
    if let Some(g) = s.string(c, "group") {
        if g.get_ref().is_empty() {
            c.at(g.span(), "daemon.group", "must not be empty");
        } else {
            d.group = Some(g.into_inner());
        }
    }
    if let Some(p) = s.path(c, "stdout", base) {
        d.stdout = p;
    }
    if let Some(p) = s.path(c, "stderr", base) {
        d.stderr = p;
    }
}

/// `[daemon]`'s logging: `log`, `log_level`, `log_format` and the syslog settings.
fn read_daemon_logging(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    d: &mut DaemonSpec,
    base: &Path,
) {
    if let Some(l) = s.string(c, "log") {
        match l.get_ref().as_str() {
            "stderr" => d.log = LogSpec::Stderr,
            "syslog" => d.log = LogSpec::Syslog,
            other => match file_value(other, &["stderr", "syslog"]) {
                Ok(()) => d.log = LogSpec::File(base.join(other)),
                Err(msg) => c.at(l.span(), "daemon.log", msg),
            },
        }
    }
    if let Some(level) = s.choice(
        c,
        "log_level",
        &["off", "error", "warn", "info", "debug", "trace"],
    ) {
        d.log_level = level.parse().unwrap_or(log::LevelFilter::Info);
    }
    if let Some(f) = s.choice(c, "log_format", &["text", "json"]) {
        d.log_format = match f {
            "json" => crate::log::LogFormat::Json,
            _ => crate::log::LogFormat::Text,
        };
    }
    if let Some(f) = s.choice(c, "syslog_facility", SYSLOG_FACILITIES) {
        d.syslog_facility = f.to_string();
    }
    if let Some(i) = s.string(c, "syslog_ident") {
        d.syslog_ident = i.into_inner();
    }
}

/// `[daemon]`'s timeouts and control socket; returns `scale_program`, to be checked later.
fn read_daemon_control(
    c: &mut Collector<'_>,
    s: &mut Section<'_, '_>,
    d: &mut DaemonSpec,
    base: &Path,
) -> Option<Spanned<String>> {
    if let Some(t) = s.duration(c, "ready_timeout") {
        if t.is_zero() {
            c.at(
                s.span("ready_timeout").unwrap_or(0..0),
                "daemon.ready_timeout",
                "must be more than zero (no daemon is ready at once)",
            );
        } else {
            d.ready_timeout = t;
        }
    }
    if let Some(t) = s.duration(c, "shutdown_timeout") {
        d.shutdown_timeout = t;
    }
    if let Some(b) = s.boolean(c, "pid_namespace") {
        d.pid_namespace = b;
    }
    if let Some(b) = s.boolean(c, "exit_on_fatal") {
        d.exit_on_fatal = b;
    }
    let scale = s.string(c, "scale_program");
    match s.path(c, "control_socket", base) {
        Some(p) => d.control_socket = p,
        None => {
            d.control_socket = d.pidfile.parent().map_or_else(
                || PathBuf::from("warden.sock"),
                |dir| dir.join("warden.sock"),
            )
        }
    }
    if let Some(g) = s.string(c, "control_group") {
        if g.get_ref().is_empty() {
            c.at(g.span(), "daemon.control_group", "must not be empty");
        } else {
            d.control_group = Some(g.into_inner());
        }
    }
    if let Some(m) = s.string(c, "metrics") {
        match parse_listen(m.get_ref()) {
            Ok(l) => d.metrics = Some(l),
            Err(msg) => c.at(m.span(), "daemon.metrics", msg),
        }
    }
    if let Some(m) = s.choice(c, "cgroups", &["auto", "off"]) {
        d.cgroups = match m {
            "off" => CgroupMode::Off,
            _ => CgroupMode::Auto,
        };
    }
    scale
}

/// Checks a value that is either one of the `words` or a file path. A file must be written as a
/// path, with a `/` (`"./out.log"`, `"/var/log/warden.log"`): a bare word is taken for a
/// misspelt keyword, not silently turned into a file beside the configuration. The error is the
/// message for the diagnostic.
pub(crate) fn file_value(value: &str, words: &[&'static str]) -> std::result::Result<(), String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    let choices = match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, {last}", rest.join(", ")),
        _ => quoted.join(""),
    };
    if value.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if value.is_empty() {
        return Err(format!("must be {choices} or a file path"));
    }
    if !value.contains('/') {
        let hint = match read::closest(value, words) {
            Some(w) => format!("did you mean {w:?}?"),
            None => format!("for a file, write a path such as \"./{value}\""),
        };
        return Err(format!("{value:?} is not {choices} or a path ({hint})"));
    }
    Ok(())
}

/// Finds the pidfile and control socket of `path` even when the file has errors elsewhere, so
/// that `warden stop` and `warden status` keep working after a bad edit. Returns the daemon
/// defaults with just those two paths taken from the file (when they are readable strings).
pub fn locate(path: &Path, text: &str) -> DaemonSpec {
    let mut d = DaemonSpec::default();
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base = std::path::absolute(&base).unwrap_or(base);
    let (doc, _) = DeTable::parse_recoverable(text);
    let daemon = doc
        .get_ref()
        .get("daemon")
        .and_then(|v| v.get_ref().as_table());
    let get = |key: &str| {
        daemon
            .and_then(|t| t.get(key))
            .and_then(|v| v.get_ref().as_str().map(|s| base.join(s)))
    };
    if let Some(p) = get("pidfile") {
        d.pidfile = p;
    }
    d.control_socket = get("control_socket").unwrap_or_else(|| {
        d.pidfile.parent().map_or_else(
            || PathBuf::from("warden.sock"),
            |dir| dir.join("warden.sock"),
        )
    });
    d
}

/// Parses an octal umask written as in systemd's `UMask=` (`"027"`, `"0027"`).
pub fn parse_umask(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let m = u32::from_str_radix(s, 8).ok()?;
    (m <= 0o777).then_some(m)
}

#[cfg(test)]
mod include_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/etc/warden/warden.toml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Err(Error::Config(d)) => d.iter().map(ToString::to_string).collect(),
            other => panic!("expected config errors, got {other:?}"),
        }
    }

    #[test]
    fn metrics_on_an_output_file_or_a_held_address_is_an_error_at_its_place() {
        let errs = errors(
            "[daemon]\nmetrics = \"/var/log/web.out\"\n\
             [program.web]\ncommand = \"x\"\nstdout = \"/var/log/web.out\"\n",
        );
        assert_eq!(
            errs,
            [
                "/etc/warden/warden.toml:2:11: daemon.metrics: /var/log/web.out is also an output \
              file of [program.web]: give the metrics endpoint a socket path of its own"
            ]
        );
        let errs = errors(
            "[daemon]\nmetrics = \"127.0.0.1:9464\"\n[socket.web]\nlisten = \"127.0.0.1:9464\"\n",
        );
        assert_eq!(
            errs,
            [
                "/etc/warden/warden.toml:2:11: daemon.metrics: 127.0.0.1:9464 is already the \
              address of [socket.web]"
            ]
        );
        // Beside them, on paths of its own, it is fine.
        let ok = "[daemon]\nmetrics = \"/run/m.sock\"\n[socket.web]\nlisten = \"/run/w.sock\"\n";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn a_dependency_cycle_names_every_member_at_its_edge() {
        let errs = errors(
            "[program.a]\ncommand = \"x\"\nafter = [\"c\"]\n\
             [program.b]\ncommand = \"x\"\nrequires = [\"a\"]\n\
             [program.c]\ncommand = \"x\"\nafter = [\"b\"]\n",
        );
        let cycle = "dependency cycle: a -> c -> b -> a (each starts after the next)";
        assert_eq!(
            errs,
            [
                format!("/etc/warden/warden.toml:3:10: program.a.after: {cycle}"),
                format!("/etc/warden/warden.toml:9:10: program.c.after: {cycle}"),
                format!("/etc/warden/warden.toml:6:13: program.b.requires: {cycle}"),
            ]
        );
    }

    #[test]
    fn unknown_and_self_dependencies_are_named() {
        let errs =
            errors("[program.a]\ncommand = \"x\"\nafter = [\"a\", \"nope\"]\nrequires = 3\n");
        assert_eq!(
            errs,
            [
                "/etc/warden/warden.toml:4:12: program.a.requires: expected an array of program names, found integer",
                "/etc/warden/warden.toml:3:10: program.a.after: a program cannot depend on itself",
                "/etc/warden/warden.toml:3:15: program.a.after: there is no [program.nope] table",
            ]
        );
    }

    #[test]
    fn start_order_is_in_levels() {
        let c = parse(
            "[program.web]\ncommand = \"x\"\nrequires = [\"api\"]\n\
             [program.api]\ncommand = \"x\"\nafter = [\"db\"]\n\
             [program.db]\ncommand = \"x\"\n[program.cron]\ncommand = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            c.start_order(),
            [vec!["db", "cron"], vec!["api"], vec!["web"]]
        );
        assert_eq!(c.programs[0].requires, ["api"]);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.daemon, DaemonSpec::default());
    }

    #[test]
    fn reads_every_daemon_key() {
        let c = parse(
            r#"[daemon]
pidfile = "run/w.pid"
directory = "/srv"
umask = "027"
user = "nobody"
group = "nogroup"
stdout = "/var/log/w.out"
stderr = "/var/log/w.err"
log = "/var/log/warden.log"
log_level = "debug"
log_format = "json"
syslog_facility = "local3"
syslog_ident = "w"
ready_timeout = "5s"
shutdown_timeout = 7
"#,
        )
        .unwrap();
        let d = c.daemon;
        assert_eq!(d.pidfile, PathBuf::from("/etc/warden/run/w.pid"));
        assert_eq!(d.directory, PathBuf::from("/srv"));
        assert_eq!(d.umask, 0o027);
        assert_eq!(d.user.as_deref(), Some("nobody"));
        assert_eq!(d.log, LogSpec::File("/var/log/warden.log".into()));
        assert_eq!(d.log_level, log::LevelFilter::Debug);
        assert_eq!(d.log_format, crate::log::LogFormat::Json);
        assert_eq!(d.syslog_facility, "local3");
        assert_eq!(d.ready_timeout, Duration::from_secs(5));
        assert_eq!(d.shutdown_timeout, Duration::from_secs(7));
    }

    #[test]
    fn reports_every_error_with_line_and_column() {
        let errs =
            errors("[daemon]\numask = \"999\"\npidfil = \"/x\"\nlog_level = \"loud\"\n[bogus]\n");
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(
            errs[0].starts_with("/etc/warden/warden.toml:2:9: daemon.umask:"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].contains(":3:1: daemon.pidfil: unknown key (did you mean \"pidfile\"?)"),
            "{}",
            errs[1]
        );
        assert!(errs[2].contains(":4:13: daemon.log_level:"), "{}", errs[2]);
        assert!(errs[3].contains(":5:2: bogus: unknown key"), "{}", errs[3]);
    }

    #[test]
    fn wrong_types_are_named() {
        let errs = errors("[daemon]\numask = 22\nuser = 0\n");
        assert!(
            errs[0].contains("daemon.umask: expected a string, found integer"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("daemon.user: expected a string, found integer"),
            "{errs:?}"
        );
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let errs = errors("[daemon]\npidfile = \n");
        assert!(
            errs[0].starts_with("/etc/warden/warden.toml:2:"),
            "{errs:?}"
        );
    }

    #[test]
    fn ready_timeout_must_fit_and_be_positive() {
        // Accepted by `check` once, then `warden start` panicked adding it to the clock.
        let errs = errors("[daemon]\nready_timeout = 18446744073709551615\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("/etc/warden/warden.toml:2:17: daemon.ready_timeout:"),
            "{errs:?}"
        );
        let errs = errors("[daemon]\nready_timeout = 9223372036854775807\n");
        assert!(
            errs[0].contains("daemon.ready_timeout: is too long: at most 365 days"),
            "{errs:?}"
        );
        let errs = errors("[daemon]\nshutdown_timeout = \"1000years\"\n");
        assert!(
            errs[0].contains(":2:20: daemon.shutdown_timeout: is too long"),
            "{errs:?}"
        );
        let errs = errors("[daemon]\nready_timeout = \"0s\"\n");
        assert_eq!(
            errs,
            [
                "/etc/warden/warden.toml:2:17: daemon.ready_timeout: must be more than zero (no daemon is ready at once)"
            ]
        );
        assert_eq!(
            parse("[daemon]\nready_timeout = \"365days\"\n")
                .unwrap()
                .daemon
                .ready_timeout,
            MAX_DURATION
        );
    }

    #[test]
    fn log_is_a_keyword_or_a_path() {
        let errs = errors("[daemon]\nlog = \"a\\u0000b\"\n");
        assert_eq!(
            errs,
            ["/etc/warden/warden.toml:2:7: daemon.log: must not contain a NUL byte"]
        );
        let errs = errors("[daemon]\nlog = \"sylog\"\n");
        assert_eq!(
            errs,
            [
                "/etc/warden/warden.toml:2:7: daemon.log: \"sylog\" is not \"stderr\", \"syslog\" or a path (did you mean \"syslog\"?)"
            ]
        );
        let errs = errors("[daemon]\nlog = \"warden.log\"\n");
        assert!(
            errs[0].ends_with("(for a file, write a path such as \"./warden.log\")"),
            "{errs:?}"
        );
        assert!(errors("[daemon]\nlog = \"\"\n")[0].contains("daemon.log: must be"));
        let c = parse("[daemon]\nlog = \"logs/warden.log\"\n").unwrap();
        assert_eq!(
            c.daemon.log,
            LogSpec::File("/etc/warden/logs/warden.log".into())
        );
        assert_eq!(
            parse("[daemon]\nlog = \"syslog\"\n").unwrap().daemon.log,
            LogSpec::Syslog
        );
    }

    #[test]
    fn duplicates_are_named_once() {
        let errs = errors("[daemon]\nlog_level = \"info\"\nlog_level = \"warn\"\n");
        assert_eq!(
            errs,
            [
                "/etc/warden/warden.toml:3:1: daemon.log_level: duplicate key: it is already set in this table"
            ]
        );
        let errs = errors("[daemon]\nuser = \"x\"\n\n[daemon]\ngroup = \"y\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("/etc/warden/warden.toml:4:2: daemon: duplicate table"),
            "{errs:?}"
        );
        // A table made by a dotted key, then its header: one error, not one more per key.
        let errs = errors("daemon.user = \"x\"\n[daemon]\nuser = \"y\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(":2:2: daemon: duplicate table"),
            "{errs:?}"
        );
        let errs = errors("[program.\"web\"]\ncommand = \"x\"\nenv = { X = \"1\", X = \"2\" }\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(":3:18: program.web.env.X: duplicate key"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_has_a_place() {
        let path = std::env::temp_dir().join(format!("warden-utf8-{}.toml", std::process::id()));
        std::fs::write(&path, b"[daemon]\n# caf\xe9\n").unwrap();
        let loaded = Config::load(&path);
        let for_control = Config::load_for_control(&path);
        let _ = std::fs::remove_file(&path);
        match loaded {
            Err(Error::Config(d)) => {
                let d: Vec<String> = d.iter().map(ToString::to_string).collect();
                assert_eq!(d.len(), 1, "{d:?}");
                assert!(
                    d[0].ends_with(":2:6: byte 14 is not UTF-8 (0xe9): a TOML file must be UTF-8"),
                    "{d:?}"
                );
            }
            other => panic!("expected a diagnostic, got {other:?}"),
        }
        // `status` and `stop` still find the daemon (with the problem as a warning).
        let (c, problems) = for_control.unwrap();
        assert_eq!(c.daemon.pidfile, DaemonSpec::default().pidfile);
        assert!(problems.is_some());
    }

    #[test]
    fn umask_parsing() {
        assert_eq!(parse_umask("022"), Some(0o22));
        assert_eq!(parse_umask("0027"), Some(0o27));
        assert_eq!(parse_umask("777"), Some(0o777));
        assert_eq!(parse_umask("8"), None);
        assert_eq!(parse_umask(""), None);
        assert_eq!(parse_umask("07777"), None);
    }
}

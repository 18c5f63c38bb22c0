//! A configuration against the running system: the one part of [`crate::config`] that looks
//! beyond the files, and only when called.
//!
//! [`accounts`] finds users and groups that do not resolve — errors: `warden start` and
//! `reload` refuse such a file (exit 6), as a spawn would fail later. [`warnings`] finds what
//! will fail later without making the file wrong: a pidfile directory warden cannot create, a
//! command that is not found or not executable, an environment file that is missing or broken,
//! warden's own log going nowhere. [`check`] is
//! `warden check`: the file's own problems, the accounts and the warnings, in one pass, each at
//! the file, line and column of the value concerned.
//!
//! What is seen here is the system of whoever runs the check, now: a command found by `check`
//! may be missing when the daemon runs with another `PATH`, and an account may be created later.
//! That is why the command, path and environment-file checks only warn.

use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

use super::{Config, Diagnostic, Diagnostics, LogSpec};
use crate::Credentials;
use crate::error::Result;
use crate::files::{DEFAULT_PATH, find_program};

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Problems that make the configuration invalid: the file's own, and accounts that do not
    /// resolve. Main file first, then the drop-ins in load order; each file's in file order.
    pub errors: Diagnostics,
    /// What will fail later (see [`warnings`]), in the same order.
    pub warnings: Diagnostics,
}

/// Everything `warden check` reports about the configuration at `path`: its problems, the
/// accounts that do not resolve and the warnings, all in one pass — an unknown user is reported
/// beside a typo elsewhere, not after it is fixed.
///
/// Errors: [`crate::Error::Io`] when the main file cannot be read (a drop-in that cannot be read
/// is one of the report's errors).
pub fn check(path: &Path) -> Result<Report> {
    let text = match super::read_utf8(path)? {
        Ok(text) => text,
        Err(d) => {
            return Ok(Report {
                errors: d,
                warnings: Diagnostics::default(),
            });
        }
    };
    let (config, mut errors) = Config::read(path, &text);
    errors.0.extend(accounts(&config).0);
    errors.0.extend(hosts(&config).0);
    errors.0.extend(socket_dirs(&config).0);
    Ok(Report {
        errors: in_load_order(&config, errors),
        warnings: in_load_order(&config, warnings(&config)),
    })
}

/// The users and groups named in `config` (`[daemon]` `user`, `group` and `control_group`, each
/// Unix socket's and each program's `user` and `group`) that do not resolve on this machine, each at its place.
pub fn accounts(config: &Config) -> Diagnostics {
    let mut out = Vec::new();
    let mut resolve = |key: String, file: &Path, user: Option<&str>, group: Option<&str>| {
        if let Err(e) = Credentials::resolve(user, group) {
            out.push(Diagnostic::new(
                config.place(&key),
                file,
                &key,
                e.to_string(),
            ));
        }
    };
    let d = &config.daemon;
    // Each name alone, so that a wrong user and a wrong group are both reported.
    if let Some(u) = &d.user {
        resolve("daemon.user".into(), &config.path, Some(u), None);
    }
    if let Some(g) = &d.group {
        resolve("daemon.group".into(), &config.path, None, Some(g));
    }
    if let Some(g) = &d.control_group {
        resolve("daemon.control_group".into(), &config.path, None, Some(g));
    }
    for s in &config.sockets {
        if let Some(u) = &s.user {
            resolve(
                format!("socket.{}.user", s.name),
                &config.path,
                Some(u),
                None,
            );
        }
        if let Some(g) = &s.group {
            resolve(
                format!("socket.{}.group", s.name),
                &config.path,
                None,
                Some(g),
            );
        }
    }
    for p in &config.programs {
        let file = p.source.as_deref().unwrap_or(&config.path);
        if let Some(u) = &p.exec.user {
            resolve(format!("program.{}.user", p.name), file, Some(u), None);
        }
        if let Some(g) = &p.exec.group {
            resolve(format!("program.{}.group", p.name), file, None, Some(g));
        }
    }
    Diagnostics(out)
}

/// The Unix sockets of `config` (`[socket.NAME]`, `[daemon] metrics`) in a directory everyone
/// may write without the sticky bit, each at its place: `start` and `reload` refuse to bind
/// there (anyone could put their own socket in its place).
pub fn socket_dirs(config: &Config) -> Diagnostics {
    use std::os::unix::fs::PermissionsExt;
    let unsafe_dir = |path: &Path| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
        let mode = std::fs::metadata(dir).ok()?.permissions().mode();
        (mode & 0o002 != 0 && mode & 0o1000 == 0).then(|| {
            format!(
                "{}: its directory {} is writable by everyone and not sticky: anyone could \
                 replace the socket",
                path.display(),
                dir.display()
            )
        })
    };
    let mut out = Vec::new();
    let metrics = config
        .daemon
        .metrics
        .iter()
        .map(|m| ("daemon.metrics".to_string(), m));
    let held = config
        .sockets
        .iter()
        .map(|s| (format!("socket.{}.listen", s.name), &s.listen));
    for (key, listen) in metrics.chain(held) {
        if let super::Listen::Unix(path) = listen
            && let Some(message) = unsafe_dir(path)
        {
            out.push(Diagnostic::new(
                config.place(&key),
                &config.path,
                &key,
                message,
            ));
        }
    }
    Diagnostics(out)
}

/// The health checks named in `config` whose host name does not resolve now, each at its
/// place: `warden start` and `reload` refuse them (they resolve names before they start
/// checking, never while checking).
pub fn hosts(config: &Config) -> Diagnostics {
    let mut out = Vec::new();
    for p in &config.programs {
        let Some(h) = &p.health else { continue };
        let (key, hp) = match &h.probe {
            super::Probe::Tcp(hp) => ("tcp", hp),
            super::Probe::Http(super::HttpTarget {
                server: super::HttpServer::Tcp(hp),
                ..
            }) => ("http", hp),
            _ => continue,
        };
        let Err(problem) = hp.resolve() else { continue };
        let key = format!("program.{}.health.{key}", p.name);
        let file = p.source.as_deref().unwrap_or(&config.path);
        out.push(Diagnostic::new(config.place(&key), file, &key, problem));
    }
    Diagnostics(out)
}

/// What will fail later, though the file is valid:
///
/// - the pidfile's directory is missing and so is its parent (warden creates one level only);
/// - a program's command is not found in its `PATH` (the program's `env` `PATH`, else warden's
///   own unless `clean_env`, else the default search path — as a spawn looks it up), or names a
///   file that does not exist, is a directory or is not executable (a relative one is taken
///   from the program's working directory, as `execve` does after the `chdir`);
/// - a health check's `exec` command is not found, or cannot be run, likewise;
/// - a program's `env_file` names a required file that cannot be read, or a file with a syntax
///   error (each file is read now, as a spawn would; it may be created or fixed before then);
/// - warden's own log goes nowhere: `log = "stderr"` while `[daemon] stderr` is `/dev/null`
///   (the default), which loses every line once `warden start` has detached;
/// - `pid_namespace = true` while `check` runs without root, which could not create one;
/// - a program's `stop_timeout` is at least `shutdown_timeout` while it starts after other
///   programs (`after`, `requires`): a graceful shutdown stops those only once it is down, so
///   if it takes its time they are asked to stop only when the order gives way, near the
///   deadline.
pub fn warnings(config: &Config) -> Diagnostics {
    let mut out = Vec::new();
    let d = &config.daemon;
    let mut warn = |key: &str, file: &Path, message: String| {
        out.push(Diagnostic::new(config.place(key), file, key, message));
    };
    if let Some(dir) = d.pidfile.parent().filter(|p| !p.as_os_str().is_empty())
        && !dir.exists()
        && dir.parent().is_some_and(|up| !up.exists())
    {
        warn(
            "daemon.pidfile",
            &config.path,
            format!(
                "neither {} nor {} exists: warden creates one directory level only, so \
                 start will fail",
                dir.display(),
                dir.parent()
                    .map_or_else(String::new, |p| p.display().to_string()),
            ),
        );
    }
    if d.log == LogSpec::Stderr && d.stderr == Path::new("/dev/null") {
        warn(
            "daemon.log",
            &config.path,
            "log = \"stderr\" while [daemon] stderr is /dev/null: once `warden start` has \
             detached, warden's own log goes nowhere (set stderr to a file, or log to syslog or \
             a file; `warden run` keeps the terminal's stderr)"
                .into(),
        );
    }
    if let Some(message) = pid_namespace_problem(d) {
        warn("daemon.pid_namespace", &config.path, message);
    }
    for p in &config.programs {
        program_warnings(p, &d.directory, &config.path, &mut warn);
    }
    let controllers = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| v2_mount(&m))
        .map(|m| {
            let text = std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default();
            (m, text.split_whitespace().map(String::from).collect())
        });
    for p in &config.programs {
        let file = p.source.as_deref().unwrap_or(&config.path);
        for (key, message) in cgroup_problems(p, d.cgroups, controllers.as_ref()) {
            warn(&format!("program.{}.{key}", p.name), file, message);
        }
    }
    out.extend(order_problems(config));
    Diagnostics(out)
}

/// The programs whose `stop_timeout` is at least `shutdown_timeout` while they start after
/// others: each warned about at its `stop_timeout` (or, where that is the default, at its first
/// `after`/`requires` edge), naming the programs it holds back in a graceful shutdown.
fn order_problems(config: &Config) -> Vec<Diagnostic> {
    let total = config.daemon.shutdown_timeout;
    let fmt = crate::policy::fmt_duration;
    let mut out = Vec::new();
    for p in config
        .programs
        .iter()
        .filter(|p| p.policy.stop_timeout >= total)
    {
        let mut deps: Vec<&str> = Vec::new();
        for d in p.requires.iter().chain(&p.after) {
            if !deps.contains(&d.as_str()) {
                deps.push(d);
            }
        }
        let Some(first) = deps.first() else { continue };
        let key = format!("program.{}.stop_timeout", p.name);
        let edge = |k: &str| config.place(&format!("program.{}.{k}[{first}]", p.name));
        let place = config
            .place(&key)
            .or_else(|| edge("requires"))
            .or_else(|| edge("after"));
        let (them, are, gets) = match deps.len() {
            1 => (deps.join(""), "is", "gets its"),
            _ => (deps.join(", "), "are", "get their"),
        };
        let message = format!(
            "stop_timeout ({}) is at least shutdown_timeout ({}) while {name} starts after \
             {them}: in a graceful shutdown {them} {are} asked to stop only once {name} is down, \
             so if {name} takes its stop_timeout, {them} {gets} stop signal only when the \
             dependency order gives way, in the last quarter of shutdown_timeout, shortly \
             before SIGKILL",
            fmt(p.policy.stop_timeout),
            fmt(total),
            name = p.name,
        );
        let file = p.source.as_deref().unwrap_or(&config.path);
        out.push(Diagnostic::new(place, file, &key, message));
    }
    out
}

/// `pid_namespace = true` asked by a user who cannot create a PID namespace (not root).
fn pid_namespace_problem(d: &super::DaemonSpec) -> Option<String> {
    if !d.pid_namespace {
        return None;
    }
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Some(format!(
            "creating a PID namespace needs CAP_SYS_ADMIN, which uid {uid} does not have: \
             started by this user, warden runs every instance in its own PID namespace (and \
             `warden start` says so)"
        ));
    }
    // The guard, the namespace's init, is started after the privilege drop.
    let user = d.user.as_deref().filter(|u| *u != "root" && *u != "0")?;
    Some(format!(
        "with daemon.user = \"{user}\", warden runs without CAP_SYS_ADMIN and cannot create \
         a PID namespace: it runs every instance in its own PID namespace (and `warden start` \
         says so)"
    ))
}

/// The cgroup limits of `p` that cannot be applied: cgroups off, no cgroup v2 hierarchy, or
/// its controller not in the hierarchy (`controllers`: its mount point and the root's
/// `cgroup.controllers`). Whether warden may create cgroups is known only when it starts
/// (`warden start` says then which limit it could not apply).
fn cgroup_problems(
    p: &super::ProgramSpec,
    mode: super::CgroupMode,
    controllers: Option<&(PathBuf, Vec<String>)>,
) -> Vec<(&'static str, String)> {
    p.cgroup
        .files()
        .into_iter()
        .filter_map(|(key, _, controller, _)| {
            let why = match (mode, controllers) {
                (super::CgroupMode::Off, _) => {
                    "[daemon] cgroups = \"off\": the limit will not be applied".to_string()
                }
                (_, None) => {
                    "no cgroup v2 hierarchy is mounted: the limit will not be applied".to_string()
                }
                (_, Some((mount, have))) if !have.iter().any(|c| c == controller) => {
                    let v1 = std::fs::read_to_string("/proc/self/mountinfo")
                        .ok()
                        .and_then(|m| v1_mount_of(&m, controller))
                        .map(|m| {
                            format!(
                                ", which it cannot be while the cgroup v1 hierarchy at {} holds it",
                                m.display()
                            )
                        })
                        .unwrap_or_default();
                    format!(
                        "the {controller} controller is not available in the cgroup v2 hierarchy \
                         ({}/cgroup.controllers{v1}): the limit will not be applied",
                        mount.display()
                    )
                }
                _ => return None,
            };
            Some((key, why))
        })
        .collect()
}
/// The mount point of the cgroup v2 hierarchy in `mountinfo` (the text of
/// `/proc/self/mountinfo`), if one is mounted.
pub(crate) fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|m| PathBuf::from(unescape(m)))
    })
}

/// The mount point of the cgroup v2 hierarchy in `mountinfo` with its root: the cgroup (as
/// `/proc/self/cgroup` names them) that the mount point shows. It is `/` for the whole
/// hierarchy, a path for a bind mount of a subtree, and starts with `/..` when the file system
/// was mounted outside this process's cgroup namespace (its root is above the namespace's).
pub(crate) fn v2_mount_root(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split_whitespace().skip(3);
        let root = unescape(fields.next()?);
        let mount = PathBuf::from(unescape(fields.next()?));
        Some((mount, root))
    })
}

/// The mount point of the cgroup v1 hierarchy that `controller` is bound to in `mountinfo`, if
/// any: a controller serves one hierarchy only, so cgroup v2 cannot have it then.
pub(crate) fn v1_mount_of(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let options = r.nth(1)?;
        if !options.split(',').any(|o| o == controller) {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|m| PathBuf::from(unescape(m)))
    })
}

/// Why `controller` is missing from the cgroup v2 hierarchy whose root or delegated cgroup is
/// `at`: bound to a v1 hierarchy, or not enabled above.
pub(crate) fn missing_controller(controller: &str, at: &Path) -> String {
    let v1 = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| v1_mount_of(&m, controller));
    match v1 {
        Some(m) => format!(
            "the {controller} controller is bound to the cgroup v1 hierarchy at {} (a controller \
             serves one hierarchy only; cgroup v2 gets it when no v1 hierarchy holds it, e.g. \
             booted with systemd.unified_cgroup_hierarchy=1)",
            m.display()
        ),
        None => format!(
            "the {controller} controller is not enabled for {} (not in its cgroup.controllers: \
             enable it in the parent's cgroup.subtree_control, or with Delegate=yes under \
             systemd)",
            at.display()
        ),
    }
}

/// `mountinfo`'s octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |d: &[u8]| d.iter().all(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' && i + 4 <= b.len() && octal(&b[i + 1..i + 4]) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The warnings about one program: its command, its health check's command, its environment
/// files.
fn program_warnings(
    p: &super::ProgramSpec,
    warden_dir: &Path,
    main_file: &Path,
    warn: &mut impl FnMut(&str, &Path, String),
) {
    let Some(program) = p.exec.command.first() else {
        return;
    };
    let file = p.source.as_deref().unwrap_or(main_file);
    let key = format!("program.{}.command", p.name);
    if let Some(message) = command_problem(program, p, warden_dir) {
        warn(&key, file, message);
    }
    if let Some(super::HealthSpec {
        probe: super::Probe::Exec(argv),
        ..
    }) = &p.health
        && let Some(message) = command_problem(&argv[0], p, warden_dir)
    {
        let key = format!("program.{}.health.exec", p.name);
        let message = message.replace("the program will fail", "the check will fail");
        warn(&key, file, message);
    }
    for e in p.exec.env_files.iter().filter_map(|f| f.load().err()) {
        let key = format!("program.{}.env_file", p.name);
        warn(&key, file, format!("{e}: the program will fail to start"));
    }
}

/// Why `program` (argv\[0\] of `spec`) will not start, if it will not.
fn command_problem(program: &str, spec: &super::ProgramSpec, warden_dir: &Path) -> Option<String> {
    if !program.contains('/') {
        let from_env = spec
            .exec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.into());
        let path: Option<std::ffi::OsString> = match from_env {
            Some(p) => Some(p),
            None if spec.exec.clean_env => None,
            None => std::env::var_os("PATH"),
        };
        return find_program(program, path.as_deref()).err().map(|_| {
            let shown = path.as_deref().map_or_else(
                || format!("{DEFAULT_PATH}, the default"),
                |p| p.to_string_lossy().into_owned(),
            );
            format!(
                "{program:?} is not found in PATH ({shown}) as an executable file: the program \
                 will fail to start"
            )
        });
    }
    let full: PathBuf = spec
        .exec
        .directory
        .as_deref()
        .unwrap_or(warden_dir)
        .join(program);
    let why = match std::fs::metadata(&full) {
        Err(e) => format!("cannot be run: {e}"),
        Ok(m) if m.is_dir() => "is a directory".to_string(),
        Ok(m) if !m.is_file() => "is not a regular file".to_string(),
        Ok(_) if access(&full, AccessFlags::X_OK).is_err() => "is not executable".to_string(),
        Ok(_) => return None,
    };
    Some(format!(
        "{} {why}: the program will fail to start",
        full.display()
    ))
}

/// `diags` sorted file by file in load order (the main file, then the drop-ins), each file's by
/// line and column.
fn in_load_order(config: &Config, diags: Diagnostics) -> Diagnostics {
    let rank_of = |file: &Path| config.files().position(|f| f == file).unwrap_or(usize::MAX);
    let mut keyed: Vec<((usize, usize, usize), Diagnostic)> = diags
        .0
        .into_iter()
        .map(|d| ((rank_of(&d.file), d.line, d.column), d))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    Diagnostics(keyed.into_iter().map(|(_, d)| d).collect())
}

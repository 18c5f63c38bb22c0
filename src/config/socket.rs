//! `[socket.NAME]` tables → [`SocketSpec`]: listening sockets warden binds and holds for the
//! programs that name them in `sockets`.
//!
//! The reader checks the syntax (an IP address and a port, or an absolute path; `mode`,
//! `user` and `group` only for a Unix socket; no address listened on twice) and that every name
//! a program's `sockets` lists has a table. It binds nothing and resolves no account: the
//! supervisor binds (`supervisor::sockets`), `preflight` resolves.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::read::Section;
use super::{Diagnostic, ProgramSpec, parse_umask, valid_program_name};
use crate::error::diag::{Collector, Place};

/// The default `backlog`: the kernel's `SOMAXCONN` (what systemd uses too).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// One `[socket.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketSpec {
    /// The table's name: what `sockets` lists and `LISTEN_FDNAMES` carries.
    pub name: String,
    /// `listen`: where it listens.
    pub listen: Listen,
    /// `backlog`: the `listen(2)` backlog (default [`DEFAULT_BACKLOG`]).
    pub backlog: u32,
    /// `mode`: the Unix socket file's permissions (default `0666`, as systemd's `SocketMode=`).
    pub mode: u32,
    /// `user`: the Unix socket file's owner (default: warden's user).
    pub user: Option<String>,
    /// `group`: the Unix socket file's group (default: the user's, or warden's).
    pub group: Option<String>,
}

impl SocketSpec {
    /// A socket named `name` listening on `listen`, every other setting at its default.
    pub fn new(name: impl Into<String>, listen: Listen) -> SocketSpec {
        SocketSpec {
            name: name.into(),
            listen,
            backlog: DEFAULT_BACKLOG,
            mode: 0o666,
            user: None,
            group: None,
        }
    }
}

/// Where a socket listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listen {
    /// A TCP address (`"127.0.0.1:8080"`, `"[::]:443"`).
    Tcp(SocketAddr),
    /// A Unix stream socket at an absolute path.
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    /// As written in the file: `127.0.0.1:8080`, `[::]:443`, `/run/web.sock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => a.fmt(f),
            Listen::Unix(p) => p.display().fmt(f),
        }
    }
}

/// Parses `listen`: an IP address and port, or an absolute path.
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.starts_with('/') {
        if text.len() >= 108 {
            return Err(format!(
                "{text:?} is too long for a Unix socket path (at most 107 bytes)"
            ));
        }
        return Ok(Listen::Unix(PathBuf::from(text)));
    }
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("{text:?}: the port must not be 0")),
        Ok(a) => Ok(Listen::Tcp(a)),
        Err(_) => {
            let host = text.rsplit_once(':').map_or(text, |(h, _)| h);
            let hint = if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
                "write \"ADDRESS:PORT\" with a port from 1 to 65535"
            } else {
                "write an IP address and a port (\"0.0.0.0:80\" for every IPv4 address, \
                 \"[::]:80\" for every address), or an absolute path for a Unix socket"
            };
            Err(format!("{text:?} is not an address to listen on: {hint}"))
        }
    }
}

/// Reads the `[socket]` table: one [`SocketSpec`] per valid sub-table, in file order, and the
/// name of every sub-table (valid or not, so that a program naming one with a mistake is not
/// also told it does not exist).
pub(super) fn read_sockets(
    c: &mut Collector<'_>,
    table: &DeTable<'_>,
) -> (Vec<SocketSpec>, Vec<String>) {
    let mut sockets: Vec<SocketSpec> = Vec::new();
    let names: Vec<String> = table.iter().map(|(n, _)| n.get_ref().to_string()).collect();
    let mut seen: Vec<(Listen, String)> = Vec::new();
    for (name, value) in table.iter() {
        let key = format!("socket.{}", name.get_ref());
        if !valid_program_name(name.get_ref()) || name.get_ref().contains(':') {
            c.at(
                name.span(),
                &key,
                format!(
                    "invalid socket name {:?}: use 1 to 64 letters, digits, '_', '.' or '-'",
                    name.get_ref()
                ),
            );
        }
        let DeValue::Table(t) = value.get_ref() else {
            let found = value.get_ref().type_str();
            c.at(
                value.span(),
                &key,
                format!("expected a table, found {found}"),
            );
            continue;
        };
        let spec = read_socket(c, name.get_ref(), name.span(), t);
        let Some(spec) = spec else { continue };
        if let Some((_, other)) = seen.iter().find(|(l, _)| *l == spec.listen) {
            let span = t.get("listen").map_or(name.span(), |v| v.span());
            let msg = format!("{} is already the address of [socket.{other}]", spec.listen);
            c.at(span, &format!("{key}.listen"), msg);
            continue;
        }
        seen.push((spec.listen.clone(), spec.name.clone()));
        sockets.push(spec);
    }
    (sockets, names)
}

/// One `[socket.NAME]` table; `None` when it has an error (reported).
fn read_socket(
    c: &mut Collector<'_>,
    name: &str,
    name_span: Range<usize>,
    t: &DeTable<'_>,
) -> Option<SocketSpec> {
    let mut s = Section::new(format!("socket.{name}"), t, super::keys::SOCKET);
    let listen = match s.string(c, "listen") {
        Some(v) => match parse_listen(v.get_ref()) {
            Ok(l) => Some(l),
            Err(e) => {
                c.at(v.span(), &s.key("listen"), e);
                None
            }
        },
        None if !s.has("listen") => {
            let msg =
                "required: where to listen, e.g. listen = \"0.0.0.0:80\" or \"/run/app.sock\"";
            c.at(name_span.clone(), &s.key("listen"), msg);
            None
        }
        None => None,
    };
    let mut spec = SocketSpec::new(name, listen.clone().unwrap_or(Listen::Unix("/".into())));
    let mut ok = listen.is_some();
    match s.integer(c, "backlog", 1, 65_535) {
        Some(n) => spec.backlog = n as u32,
        None => ok &= !s.has("backlog"),
    }
    ok &= read_file_owner(c, &mut s, &mut spec);
    s.finish(c);
    ok.then_some(spec)
}

/// `mode`, `user` and `group`: the socket file's, so only for a Unix socket. `false` when one
/// is wrong (reported).
fn read_file_owner(c: &mut Collector<'_>, s: &mut Section<'_, '_>, spec: &mut SocketSpec) -> bool {
    let mut ok = true;
    if let Some(m) = s.string(c, "mode") {
        match parse_umask(m.get_ref()) {
            Some(mode) => spec.mode = mode,
            None => {
                let msg = format!(
                    "{:?} is not an octal mode between \"000\" and \"777\" (e.g. \"0660\")",
                    m.get_ref()
                );
                c.at(m.span(), &s.key("mode"), msg);
                ok = false;
            }
        }
    }
    spec.user = s.string(c, "user").map(|u| u.into_inner());
    spec.group = s.string(c, "group").map(|g| g.into_inner());
    for key in ["user", "group"] {
        if let Some(span) = s.span(key) {
            c.note(&s.key(key), span);
        }
    }
    if matches!(spec.listen, Listen::Tcp(_)) {
        for key in ["mode", "user", "group"] {
            if let Some(span) = s.span(key) {
                c.at(
                    span,
                    &s.key(key),
                    "only a Unix socket (listen = a path) has a file mode and owner",
                );
                ok = false;
            }
        }
    }
    ok
}

/// `[daemon] metrics` on an address or file warden already uses for something else: the control
/// socket, the pidfile, the log, warden's stdout or stderr, a `[socket.NAME]`, a program's output
/// file. Binding there would fail, or replace that file with a socket. The message, or `None`.
pub(super) fn metrics_clash(
    d: &super::DaemonSpec,
    sockets: &[SocketSpec],
    outputs: &std::collections::HashMap<PathBuf, String>,
) -> Option<String> {
    let metrics = d.metrics.as_ref()?;
    if let Some(s) = sockets.iter().find(|s| s.listen == *metrics) {
        return Some(format!(
            "{metrics} is already the address of [socket.{}]",
            s.name
        ));
    }
    let Listen::Unix(path) = metrics else {
        return None;
    };
    let log = match &d.log {
        super::LogSpec::File(f) => Some(f.as_path()),
        _ => None,
    };
    let owners = [
        (
            Some(d.control_socket.as_path()),
            "the control socket (daemon.control_socket)",
        ),
        (Some(d.pidfile.as_path()), "the pidfile (daemon.pidfile)"),
        (log, "the log file (daemon.log)"),
        (Some(d.stdout.as_path()), "warden's stdout (daemon.stdout)"),
        (Some(d.stderr.as_path()), "warden's stderr (daemon.stderr)"),
    ];
    let clash = |what: &str| {
        format!(
            "{} is also {what}: give the metrics endpoint a socket path of its own",
            path.display()
        )
    };
    if let Some((_, what)) = owners
        .iter()
        .find(|(p, _)| p.is_some_and(|p| same_file(p, path)))
    {
        return Some(clash(what));
    }
    outputs
        .iter()
        .find(|(out, _)| same_file(out, path))
        .map(|(_, name)| clash(&format!("an output file of [program.{name}]")))
}

/// Whether paths `a` and `b` name the same file: equal, or equal once their directories are
/// resolved (`..`, symbolic links), when those exist.
fn same_file(a: &Path, b: &Path) -> bool {
    let resolved = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty())?;
        Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
    };
    a == b || resolved(a).is_some_and(|r| Some(r) == resolved(b))
}

/// A program's output file (`stdout` or `stderr`, as `key` names it) on a file warden itself
/// uses: the control socket, the pidfile or the log. Its lines would be written into the pidfile
/// (which `stop` reads), or interleave with warden's log and be rotated by two writers. The
/// message, or `None`.
pub(super) fn output_clash(d: &super::DaemonSpec, path: &Path) -> Option<String> {
    let log = match &d.log {
        super::LogSpec::File(f) => Some(f.as_path()),
        _ => None,
    };
    [
        (
            Some(d.control_socket.as_path()),
            "the control socket (daemon.control_socket)",
        ),
        (Some(d.pidfile.as_path()), "the pidfile (daemon.pidfile)"),
        (log, "the log file (daemon.log)"),
    ]
    .into_iter()
    .find(|(p, _)| p.is_some_and(|p| same_file(p, path)))
    .map(|(_, what)| {
        format!(
            "{} is also {what}: give the program's output a file of its own",
            path.display()
        )
    })
}

/// Every name a program's `sockets` lists that has no `[socket.NAME]` table, at its place.
pub(super) fn check_names(
    programs: &[ProgramSpec],
    sockets: &[String],
    places: &BTreeMap<String, Place>,
    main: &Path,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in programs {
        for name in &p.sockets {
            if sockets.contains(name) {
                continue;
            }
            let key = format!("program.{}.sockets", p.name);
            let place = places.get(&format!("{key}[{name}]"));
            let message = format!("there is no [socket.{name}] table");
            out.push(Diagnostic::new(place, main, &key, message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_names_are_refused() {
        assert_eq!(
            parse_listen("127.0.0.1:8080"),
            Ok(Listen::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("[::]:443"),
            Ok(Listen::Tcp("[::]:443".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("/run/web.sock"),
            Ok(Listen::Unix("/run/web.sock".into()))
        );
        assert!(
            parse_listen("localhost:80")
                .unwrap_err()
                .contains("0.0.0.0:80")
        );
        assert!(parse_listen("127.0.0.1:0").unwrap_err().contains("port"));
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("run/web.sock").is_err());
        assert!(parse_listen(&format!("/{}", "a".repeat(120))).is_err());
        assert_eq!(
            Listen::Tcp("[::1]:80".parse().unwrap()).to_string(),
            "[::1]:80"
        );
    }
}

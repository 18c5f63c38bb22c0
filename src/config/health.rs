//! `[program.NAME.health]` → [`HealthSpec`]: how warden checks that an instance still works.
//!
//! The reader checks the syntax only (exactly one probe, a well-formed address or URL, sane
//! durations); it resolves no host name and connects nowhere — the supervisor resolves names
//! when it takes the configuration and runs the checks (`supervisor::health`).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;

use super::read::Section;
use crate::error::diag::Collector;

/// The largest `retries` accepted.
pub const MAX_HEALTH_RETRIES: u32 = 1_000;

/// A `[program.NAME.health]` table: one probe and when to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthSpec {
    /// `exec`, `tcp` or `http`: what one check does.
    pub probe: Probe,
    /// `interval`: the time between two checks (default 10 s).
    pub interval: Duration,
    /// `timeout`: how long one check may take before it counts as failed (default 2 s).
    pub timeout: Duration,
    /// `retries`: consecutive failures before warden acts (default 3).
    pub retries: u32,
    /// `start_period`: failures are ignored this long after an instance is spawned, until its
    /// first passing check (default 0).
    pub start_period: Duration,
}

impl HealthSpec {
    /// A check running `probe` with every other setting at its default.
    pub fn new(probe: Probe) -> HealthSpec {
        HealthSpec {
            probe,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }
}

/// What one check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `exec = [argv]`: run a command as the program runs (same user, directory, environment);
    /// exit code 0 passes.
    Exec(Vec<String>),
    /// `tcp = "HOST:PORT"`: a connection is accepted.
    Tcp(HostPort),
    /// `http = "http://HOST:PORT/PATH"` or `"http+unix:///PATH/TO.sock:/PATH"`: a `GET` answered
    /// with a status from 200 to 399.
    Http(HttpTarget),
}

/// A host and a port as written: an IPv4 address, a bracketed IPv6 address or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host, without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Where an HTTP check connects and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// The server: a TCP address, or a Unix stream socket.
    pub server: HttpServer,
    /// The request target (`/healthz?full=1`), always starting with `/`.
    pub path: String,
}

/// An HTTP server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpServer {
    /// `http://HOST:PORT`.
    Tcp(HostPort),
    /// `http+unix://`: a Unix stream socket, at an absolute path.
    Unix(PathBuf),
}

impl HttpTarget {
    /// The `Host` header's value: `HOST` or `HOST:PORT` as written, `localhost` for a Unix
    /// socket.
    pub fn host_header(&self) -> String {
        match &self.server {
            HttpServer::Tcp(hp) if hp.port == 80 => bracketed(&hp.host),
            HttpServer::Tcp(hp) => hp.to_string(),
            HttpServer::Unix(_) => "localhost".to_string(),
        }
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl HostPort {
    /// The socket address: the host as written when it is an address, else through the
    /// resolver (which may block: call it when configuration is taken, not in an event loop).
    /// The error is a message for humans naming the host.
    pub fn resolve(&self) -> Result<std::net::SocketAddr, String> {
        use std::net::ToSocketAddrs;
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(std::net::SocketAddr::new(ip, self.port));
        }
        let mut addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {:?}: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("{:?} resolves to no address", self.host))
    }
}

impl fmt::Display for HostPort {
    /// `HOST:PORT`, an IPv6 address in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", bracketed(&self.host), self.port)
    }
}

impl fmt::Display for Probe {
    /// `exec /bin/check`, `tcp 127.0.0.1:5432`, `http http://127.0.0.1:8080/healthz`,
    /// `http http+unix:///run/web.sock:/healthz`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Exec(argv) => write!(f, "exec {}", argv.join(" ")),
            Probe::Tcp(hp) => write!(f, "tcp {hp}"),
            Probe::Http(t) => match &t.server {
                HttpServer::Tcp(hp) => write!(f, "http http://{hp}{}", t.path),
                HttpServer::Unix(p) => write!(f, "http http+unix://{}:{}", p.display(), t.path),
            },
        }
    }
}

/// Parses `HOST:PORT` (`127.0.0.1:80`, `[::1]:80`, `db.internal:5432`).
pub fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: an IPv6 address needs a closing \"]\""))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{text:?}: {host:?} is not an IPv6 address"));
        }
        let port = tail
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?} has no port (write \"[{host}]:PORT\")"))?;
        (host, port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port (write \"HOST:PORT\")"))?;
        if host.contains(':') {
            return Err(format!(
                "{text:?}: write an IPv6 address in brackets, \"[{host}]:{port}\""
            ));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return Err(format!("{text:?}: {host:?} is not a host name or address"));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("{text:?}: {port:?} is not a port (1 to 65535)")),
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Parses an HTTP check's URL: `http://HOST[:PORT][/PATH]`, `http+unix:///SOCKET:/PATH` or
/// `http+unix://%2FSOCKET/PATH` (the socket path percent-encoded, as `requests-unixsocket`
/// writes it).
pub fn parse_http_url(url: &str) -> Result<HttpTarget, String> {
    if let Some(rest) = url.strip_prefix("http://") {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:80")
        } else {
            authority.to_string()
        };
        let hp = parse_host_port(&authority_port).map_err(|e| format!("{url:?}: {e}"))?;
        return Ok(HttpTarget {
            server: HttpServer::Tcp(hp),
            path: request_path(path),
        });
    }
    if let Some(rest) = url.strip_prefix("http+unix://") {
        let (socket, path) = if rest.starts_with('/') {
            match rest.split_once(':') {
                Some((socket, path)) if path.starts_with('/') => (socket.to_string(), path),
                Some(_) => {
                    return Err(format!(
                        "{url:?}: write the request path after a colon, \
                         \"http+unix:///run/app.sock:/healthz\""
                    ));
                }
                None => (rest.to_string(), "/"),
            }
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2f") {
            let end = rest.find('/').unwrap_or(rest.len());
            let path = if end == rest.len() { "/" } else { &rest[end..] };
            (percent_decode(&rest[..end], url)?, path)
        } else {
            return Err(format!(
                "{url:?}: the socket must be an absolute path, \
                 \"http+unix:///run/app.sock:/healthz\""
            ));
        };
        return Ok(HttpTarget {
            server: HttpServer::Unix(PathBuf::from(socket)),
            path: request_path(path),
        });
    }
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https is not supported; check over plain http on a loopback or Unix \
             socket, or use exec = [\"curl\", \"-fsS\", \"{url}\"]"
        ));
    }
    Err(format!(
        "{url:?} is not an http:// or http+unix:// URL (e.g. \"http://127.0.0.1:8080/healthz\")"
    ))
}

/// The request target: the path as written, `/` when empty, `/` put in front of a bare query.
fn request_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Decodes `%XX` escapes of a percent-encoded socket path.
fn percent_decode(text: &str, url: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{url:?}: a bad %-escape in the socket path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{url:?}: the socket path is not UTF-8"))
}

/// Reads the `[program.NAME.health]` table `t`; `None` when it has an error (reported).
pub(super) fn read_health(
    c: &mut Collector<'_>,
    prefix: &str,
    t: &DeTable<'_>,
    at: Range<usize>,
) -> Option<HealthSpec> {
    let mut s = Section::new(prefix, t, super::keys::HEALTH);
    let probe = read_probe(c, &mut s, &at);
    let mut ok = probe.is_some();
    let mut spec = HealthSpec::new(probe.unwrap_or(Probe::Exec(Vec::new())));
    for (key, slot) in [
        ("interval", &mut spec.interval),
        ("timeout", &mut spec.timeout),
    ] {
        match s.duration(c, key) {
            Some(d) if d.is_zero() => {
                let span = s.span(key).unwrap_or_else(|| at.clone());
                c.at(span, &s.key(key), "must be longer than zero");
                ok = false;
            }
            Some(d) => *slot = d,
            None => ok &= !s.has(key),
        }
    }
    match s.integer(c, "retries", 1, MAX_HEALTH_RETRIES.into()) {
        Some(n) => spec.retries = n as u32,
        None => ok &= !s.has("retries"),
    }
    match s.duration(c, "start_period") {
        Some(d) => spec.start_period = d,
        None => ok &= !s.has("start_period"),
    }
    s.finish(c);
    ok.then_some(spec)
}

/// Exactly one of `exec`, `tcp` and `http`.
fn read_probe(c: &mut Collector<'_>, s: &mut Section<'_, '_>, at: &Range<usize>) -> Option<Probe> {
    let present: Vec<&str> = ["exec", "tcp", "http"]
        .into_iter()
        .filter(|k| s.has(k))
        .collect();
    // What only the running system can judge (`warden check`): where it was written.
    for key in &present {
        if let Some(span) = s.span(key) {
            c.note(&s.key(key), span);
        }
    }
    match present.as_slice() {
        [] => {
            // Mark the keys known, so that a misspelt one is reported with a suggestion.
            for k in ["exec", "tcp", "http"] {
                let _ = s.raw(k);
            }
            c.at(
                at.clone(),
                &s.name.clone(),
                "needs one check: exec = [\"/path/to/check\"], tcp = \"HOST:PORT\" or \
                 http = \"http://HOST:PORT/PATH\"",
            );
            None
        }
        [_, second, ..] => {
            let span = s.span(second).unwrap_or_else(|| at.clone());
            let msg = format!(
                "only one check per program: {} are given (keep one of them)",
                present.join(" and ")
            );
            c.at(span, &s.key(second), msg);
            for k in ["exec", "tcp", "http"] {
                let _ = s.raw(k);
            }
            None
        }
        ["exec"] => super::program::read_argv(c, s, "exec").map(Probe::Exec),
        [key] => {
            let key: &'static str = if *key == "tcp" { "tcp" } else { "http" };
            let v = s.string(c, key)?;
            let parsed = if key == "tcp" {
                parse_host_port(v.get_ref()).map(Probe::Tcp)
            } else {
                parse_http_url(v.get_ref()).map(Probe::Http)
            };
            parsed.map_err(|e| c.at(v.span(), &s.key(key), e)).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_parse_in_every_spelling() {
        let hp = |h: &str, p| HostPort {
            host: h.to_string(),
            port: p,
        };
        assert_eq!(parse_host_port("127.0.0.1:80"), Ok(hp("127.0.0.1", 80)));
        assert_eq!(parse_host_port("[::1]:8080"), Ok(hp("::1", 8080)));
        assert_eq!(
            parse_host_port("db.internal:5432"),
            Ok(hp("db.internal", 5432))
        );
        for bad in [
            "127.0.0.1",
            ":80",
            "h:0",
            "h:99999",
            "::1:80",
            "[::1]",
            "[zz]:1",
            "a b:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(hp("::1", 80).to_string(), "[::1]:80");
    }

    #[test]
    fn http_urls_parse_over_tcp_and_unix_sockets() {
        let t = parse_http_url("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!(t.path, "/healthz?x=1");
        assert_eq!(t.host_header(), "127.0.0.1:8080");
        let t = parse_http_url("http://localhost").unwrap();
        assert_eq!(
            (t.path.as_str(), t.host_header()),
            ("/", "localhost".into())
        );
        let t = parse_http_url("http://[::1]/h").unwrap();
        assert_eq!(t.host_header(), "[::1]");
        let t = parse_http_url("http+unix:///run/web.sock:/healthz").unwrap();
        assert_eq!(t.server, HttpServer::Unix("/run/web.sock".into()));
        assert_eq!(t.path, "/healthz");
        let t = parse_http_url("http+unix://%2Frun%2Fweb.sock/ping").unwrap();
        assert_eq!(t.server, HttpServer::Unix("/run/web.sock".into()));
        assert_eq!(t.path, "/ping");
        let t = parse_http_url("http+unix:///run/web.sock").unwrap();
        assert_eq!(t.path, "/");
        for bad in [
            "https://x/",
            "ftp://x/",
            "http://:80/",
            "http+unix://run/x.sock:/h",
            "http+unix:///run/x.sock:h",
            "http+unix://%2Frun%ZZ/h",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
        assert!(parse_http_url("https://x/").unwrap_err().contains("curl"));
    }

    #[test]
    fn probes_display_as_status_shows_them() {
        let p = Probe::Http(parse_http_url("http+unix:///run/w.sock:/h").unwrap());
        assert_eq!(p.to_string(), "http http+unix:///run/w.sock:/h");
        let p = Probe::Tcp(parse_host_port("[::1]:5").unwrap());
        assert_eq!(p.to_string(), "tcp [::1]:5");
    }
}

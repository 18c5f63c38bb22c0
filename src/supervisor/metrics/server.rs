//! The metrics endpoint's HTTP side: the listener ([`MetricsListener`], bound before warden
//! drops privileges), at most [`MAX_CONNECTIONS`] non-blocking connections, each answering one
//! request and closing.
//!
//! # Bounds
//!
//! A request head may be [`MAX_REQUEST`] bytes at most (else `431`) and must be complete
//! [`HEADER_TIMEOUT`] after the accept; a connection lives [`CONNECTION_TIMEOUT`] at most from
//! its accept, request and response included: the deadline is part of the supervisor's poll
//! timeout, and there is none while no connection is open. A connection beyond the limit is
//! accepted, answered `503` with `Retry-After: 1` in one non-blocking write (what it sent so
//! far read and dropped first, so that the close does not reset the answer away), and closed
//! at once. Nothing here reads a clock except at an accept.
//!
//! # The socket file
//!
//! A Unix socket's file is removed at exit ([`MetricsServer::remove_file`]) if it is still the
//! one bound (same device and inode), not when the listener is handed over (`warden upgrade`).
//!
//! # Read-only
//!
//! `GET /metrics` is the only request answered with data (`404` for another path, `405` for
//! another method); nothing a client sends can change anything. This file does I/O only: what
//! is answered is decided by the pure [`route`], the text by the supervisor (`encode.rs`).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use super::super::sockets::HeldSocket;
use super::super::sources::{Source, Sources};
use super::encode::Format;
use crate::config::{Listen, SocketSpec};
use crate::error::{Error, Result};
use crate::stream::{ReadEnd, read_nonblocking};

/// The most connections open at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 8;
/// The largest request head read, in bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection may stay open, from its accept.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its accept a connection's request head must be complete. A scraper writes
/// its head at once; 5 s still allows for two lost segments (TCP's first retransmissions
/// come after 1 s and 3 s), and halves the time a client that sends nothing holds a slot.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics endpoint's listening socket (`[daemon] metrics`), bound but not yet served.
#[derive(Debug)]
pub struct MetricsListener {
    listen: Listen,
    fd: OwnedFd,
    /// A Unix socket's file as bound (device, inode), to remove at exit only if still ours.
    file: Option<(u64, u64)>,
}

impl MetricsListener {
    /// Binds `listen`: a TCP address with `SO_REUSEADDR`, or a Unix socket path (mode `0666`;
    /// a stale socket file nobody listens on is replaced). Close-on-exec.
    ///
    /// Errors: [`Error::Io`] naming the address, `daemon.metrics` and the errno
    /// (`EADDRINUSE`, `EACCES`).
    pub fn bind(listen: &Listen) -> Result<MetricsListener> {
        let spec = SocketSpec::new("metrics", listen.clone());
        let held = HeldSocket::bind_as(&spec, "daemon.metrics")?;
        let fd = held.into_fd();
        let fd = match listen {
            Listen::Tcp(_) => nonblocking(std::net::TcpListener::from(fd)),
            Listen::Unix(_) => nonblocking(std::os::unix::net::UnixListener::from(fd)),
        };
        let fd = fd.map_err(|e| Error::io("cannot listen on", listen.to_string(), e))?;
        let file = file_ident(listen);
        let listen = listen.clone();
        Ok(MetricsListener { listen, fd, file })
    }

    /// Its Unix socket's file as bound, to remove if warden does not get to serve it (a start
    /// that fails after the bind); `None` for a TCP address.
    pub fn bound_file(&self) -> Option<BoundFile> {
        match (&self.listen, self.file) {
            (Listen::Unix(path), Some(ident)) => Some(BoundFile {
                path: path.clone(),
                ident,
            }),
            _ => None,
        }
    }

    /// The endpoint `listen` bound by an earlier image of this process and handed over across
    /// `execve` as `fd` (`warden upgrade`).
    pub fn adopt(listen: &Listen, fd: OwnedFd) -> MetricsListener {
        MetricsListener {
            listen: listen.clone(),
            fd,
            file: file_ident(listen),
        }
    }

    /// Where it listens.
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// The descriptor (for [`Daemon::keep_fd`](crate::Daemon::keep_fd)).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A Unix socket's file as a [`MetricsListener`] bound it.
#[derive(Debug, Clone)]
pub struct BoundFile {
    path: std::path::PathBuf,
    ident: (u64, u64),
}

impl BoundFile {
    /// Removes the file if it is still the one bound (same device and inode).
    pub fn remove(&self) {
        let listen = Listen::Unix(self.path.clone());
        if file_ident(&listen) == Some(self.ident) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The device and inode of the file of a Unix socket at `listen`.
fn file_ident(listen: &Listen) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Listen::Unix(path) = listen else {
        return None;
    };
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// A std listener made non-blocking, back as its descriptor.
fn nonblocking<L: Into<OwnedFd> + NonBlocking>(l: L) -> std::io::Result<OwnedFd> {
    l.set_nonblocking_on()?;
    Ok(l.into())
}

/// std's two listeners' `set_nonblocking`.
trait NonBlocking {
    fn set_nonblocking_on(&self) -> std::io::Result<()>;
}

impl NonBlocking for std::net::TcpListener {
    fn set_nonblocking_on(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

impl NonBlocking for std::os::unix::net::UnixListener {
    fn set_nonblocking_on(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

/// What a complete request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /metrics`, in this format.
    Metrics(Format),
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not HTTP.
    BadRequest,
    /// A head longer than [`MAX_REQUEST`].
    TooLarge,
}

/// What the request head in `buf` asks for; `None` while it is incomplete.
pub(crate) fn route(buf: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => Some(Route::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Route::TooLarge),
        Err(_) => Some(Route::BadRequest),
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split(['?', '#']).next().unwrap_or("");
            if req.method != Some("GET") {
                return Some(Route::MethodNotAllowed);
            }
            if path != "/metrics" {
                return Some(Route::NotFound);
            }
            let accept = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("accept"))
                .map(|h| h.value);
            Some(Route::Metrics(Format::from_accept(accept)))
        }
    }
}

/// The answer to a connection beyond [`MAX_CONNECTIONS`].
pub(crate) fn busy_response() -> Vec<u8> {
    let body = b"busy: too many metrics connections open; retry\n";
    response(
        "503 Service Unavailable",
        "Retry-After: 1\r\n",
        "text/plain; charset=utf-8",
        body,
    )
}

/// The response to a route other than [`Route::Metrics`]: status line and body.
pub(crate) fn error_response(route: Route) -> Vec<u8> {
    let (status, extra, body) = match route {
        Route::NotFound => ("404 Not Found", "", "not found: only /metrics is served\n"),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "method not allowed: only GET is served\n",
        ),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            "request head too large\n",
        ),
        Route::BadRequest | Route::Metrics(_) => ("400 Bad Request", "", "bad request\n"),
    };
    response(status, extra, "text/plain; charset=utf-8", body.as_bytes())
}

/// A whole HTTP/1.1 response that closes the connection.
pub(crate) fn response(status: &str, extra: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A listener, TCP or Unix.
enum Listener {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

impl Listener {
    fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        crate::daemon::unmark_private(self.listener.raw_fd());
    }
}

/// An accepted connection's stream.
enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Stream {
    fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    /// Ends the connection for the peer now, even if a forked function worker still holds a
    /// copy of the descriptor.
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// One connection: what it sent, what is left to send, when it is closed anyway.
struct Conn {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// A response is queued: the input no longer matters.
    answered: bool,
    accepted: Instant,
}

impl Conn {
    /// When it is closed anyway: [`HEADER_TIMEOUT`] after its accept until it is answered,
    /// [`CONNECTION_TIMEOUT`] after it then.
    fn deadline(&self) -> Instant {
        let limit = if self.answered {
            CONNECTION_TIMEOUT
        } else {
            HEADER_TIMEOUT
        };
        self.accepted + limit
    }
}

/// The endpoint being served: the listener and its connections (registered in [`Sources`]).
pub(crate) struct MetricsServer {
    listener: Listener,
    listen: Listen,
    /// The Unix socket's file as bound (see [`MetricsServer::remove_file`]).
    file: Option<(u64, u64)>,
    conns: HashMap<Token, Conn>,
}

impl MetricsServer {
    /// Serves `l`, its listener registered under `token`.
    pub(crate) fn new(l: MetricsListener, registry: &Registry, token: Token) -> Result<Self> {
        let MetricsListener { listen, fd, file } = l;
        let mut listener = match listen {
            Listen::Tcp(_) => Listener::Tcp(mio::net::TcpListener::from_std(fd.into())),
            Listen::Unix(_) => Listener::Unix(mio::net::UnixListener::from_std(fd.into())),
        };
        let r = match &mut listener {
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
            Listener::Unix(l) => registry.register(l, token, Interest::READABLE),
        };
        r.map_err(|e| Error::os("epoll_ctl", e))?;
        // A forked child (a function worker) must not keep the port.
        crate::daemon::mark_private(listener.raw_fd());
        Ok(MetricsServer {
            listener,
            listen,
            file,
            conns: HashMap::new(),
        })
    }

    /// Removes a Unix socket's file (at exit) if it is still the one bound: another daemon may
    /// have replaced a socket it found stale, or an operator removed ours.
    pub(crate) fn remove_file(&self) {
        let Listen::Unix(path) = &self.listen else {
            return;
        };
        let current = file_ident(&self.listen);
        if current.is_some() && current == self.file {
            let _ = std::fs::remove_file(path);
        } else if current.is_some() {
            log::info!(
                "metrics: {} is no longer the socket warden bound; left in place",
                path.display()
            );
        }
    }

    /// The listener's descriptor (handed over by `warden upgrade`).
    pub(crate) fn listener_fd(&self) -> RawFd {
        self.listener.raw_fd()
    }

    /// Accepts every pending connection; beyond [`MAX_CONNECTIONS`] each is answered `503` and
    /// closed at once.
    pub(crate) fn accept(&mut self, registry: &Registry, sources: &mut Sources) {
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("metrics: accept on {}: {e}", self.listen);
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                log::debug!("metrics: {MAX_CONNECTIONS} connections open; a new one is busy");
                turn_away(stream);
                continue;
            }
            let interest = Interest::READABLE | Interest::WRITABLE;
            let Ok(token) =
                sources.add_with(registry, stream.raw_fd(), Source::MetricsConn, interest)
            else {
                continue;
            };
            let conn = Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                answered: false,
                accepted: Instant::now(),
            };
            self.conns.insert(token, conn);
        }
    }

    /// Connection `token` is ready: reads what it sent and writes what is queued. Returns what
    /// its request asks for once the head is complete; errors are answered here.
    pub(crate) fn ready(
        &mut self,
        token: Token,
        registry: &Registry,
        sources: &mut Sources,
    ) -> Option<Route> {
        let conn = self.conns.get_mut(&token)?;
        let mut asked = None;
        if !conn.answered {
            let mut chunk = [0u8; 1024];
            let end = read_nonblocking(
                conn,
                |c| {
                    let room = MAX_REQUEST
                        .saturating_sub(c.input.len())
                        .clamp(1, chunk.len());
                    let n = c.stream.read(&mut chunk[..room])?;
                    c.input.extend_from_slice(&chunk[..n]);
                    Ok(n)
                },
                |c, _| match route(&c.input) {
                    Some(r) => {
                        asked = Some(r);
                        std::ops::ControlFlow::Break(())
                    }
                    None => std::ops::ControlFlow::Continue(()),
                },
            );
            match asked {
                Some(Route::Metrics(f)) => return Some(Route::Metrics(f)),
                Some(r) => self.respond(token, error_response(r), registry, sources),
                None if end == ReadEnd::Closed => self.close(token, registry, sources),
                None => {}
            }
            return None;
        }
        self.flush(token, registry, sources);
        None
    }

    /// Queues `bytes` (a whole response) for connection `token` and writes what it can; the
    /// connection closes once it is written.
    pub(crate) fn respond(
        &mut self,
        token: Token,
        bytes: Vec<u8>,
        registry: &Registry,
        sources: &mut Sources,
    ) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.answered = true;
            c.input = Vec::new();
            c.output = bytes;
        }
        self.flush(token, registry, sources);
    }

    fn flush(&mut self, token: Token, registry: &Registry, sources: &mut Sources) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let mut written = 0;
        let done = loop {
            if written == c.output.len() {
                break true;
            }
            match c.stream.write(&c.output[written..]) {
                Ok(0) => break true,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        c.output.drain(..written);
        if done && c.answered {
            self.close(token, registry, sources);
        }
    }

    fn close(&mut self, token: Token, registry: &Registry, sources: &mut Sources) {
        if let Some(c) = self.conns.remove(&token) {
            sources.remove(registry, token, c.stream.raw_fd());
            c.stream.shutdown();
        }
    }

    /// When the oldest connection must be closed; `None` without connections.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(Conn::deadline).min()
    }

    /// Closes the connections whose time is up by `now`.
    pub(crate) fn expire(&mut self, now: Instant, registry: &Registry, sources: &mut Sources) {
        let due: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline() <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            log::debug!("metrics: closing a connection whose time is up");
            self.close(token, registry, sources);
        }
    }
}

/// Answers a connection beyond the limit `503` and closes it, never waiting: what it sent so
/// far is read and dropped (bounded), so that the close sends no reset ahead of the answer, and
/// the answer, far smaller than an empty socket buffer, is written once, whatever comes of it.
fn turn_away(mut stream: Stream) {
    let mut sink = [0u8; 1024];
    for _ in 0..MAX_REQUEST / sink.len() {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.write(&busy_response());
    stream.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_metrics_is_served_in_the_format_asked() {
        let plain = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(route(plain), Some(Route::Metrics(Format::Prometheus)));
        let om = b"GET /metrics?x=1 HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n";
        assert_eq!(route(om), Some(Route::Metrics(Format::OpenMetrics)));
    }

    #[test]
    fn other_paths_are_404_and_other_methods_405() {
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"GET /metricsx HTTP/1.1\r\n\r\n"),
            Some(Route::NotFound)
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(
            route(b"DELETE /x HTTP/1.1\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
    }

    #[test]
    fn an_incomplete_head_waits_until_it_is_too_large() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost:"), None);
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST, b'a');
        assert_eq!(route(&big), Some(Route::TooLarge));
        assert_eq!(
            route(b"\x16\x03\x01 not http\r\n\r\n"),
            Some(Route::BadRequest)
        );
    }

    #[test]
    fn a_busy_endpoint_says_so_and_when_to_retry() {
        let r = String::from_utf8(busy_response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("\r\nRetry-After: 1\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    }

    #[test]
    fn error_responses_close_and_say_what_is_allowed() {
        let r = String::from_utf8(error_response(Route::MethodNotAllowed)).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("\r\nAllow: GET\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        let body = "method not allowed: only GET is served\n";
        assert!(
            r.ends_with(&format!(
                "Content-Length: {}\r\nAllow: GET\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )),
            "{r}"
        );
    }
}

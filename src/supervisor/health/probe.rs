//! One TCP or HTTP check: a non-blocking socket that the event loop drives to a verdict.
//!
//! A TCP check passes once the connection is established. An HTTP check then writes its `GET`
//! and reads until the status line and headers are complete (`httparse`): a status from 200
//! to 399 passes; anything else, a connection closed before the headers, or more than
//! [`MAX_HEAD`] bytes of them, fails. The body is never read. Nothing here waits: each call
//! does what the socket allows now (edge-triggered: until `WouldBlock`) and says whether the
//! check is over; the timeout is the loop's (`run.rs`).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use mio::net::{TcpStream, UnixStream};

use super::{Outcome, Server, Target};

/// The most header bytes an HTTP check reads before it gives up on the response.
const MAX_HEAD: usize = 16 * 1024;

/// The socket of a check under way.
#[derive(Debug)]
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Conn::Tcp(s) => s.take_error(),
            Conn::Unix(s) => s.take_error(),
        }
    }

    /// Whether the connection is established (not merely in progress).
    fn connected(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.peer_addr().is_ok(),
            Conn::Unix(s) => s.peer_addr().is_ok(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where an HTTP check is.
#[derive(Debug)]
enum Phase {
    /// Waiting for the connection.
    Connecting,
    /// Writing the request from this offset.
    Sending(usize),
    /// Reading the response head.
    Receiving,
}

/// A TCP or HTTP check under way.
#[derive(Debug)]
pub(crate) struct NetProbe {
    conn: Conn,
    phase: Phase,
    /// The request of an HTTP check; `None` for a TCP check.
    request: Option<Vec<u8>>,
    /// The response read so far.
    head: Vec<u8>,
}

impl NetProbe {
    /// Starts a check of `target` (not an exec target): a non-blocking connect. A connection
    /// refused at once (a Unix socket that is not there) is the check's failure, not an error
    /// of warden's.
    pub(crate) fn start(target: &Target) -> std::result::Result<NetProbe, String> {
        let (conn, request) = match target {
            Target::Tcp(addr) => (TcpStream::connect(*addr).map(Conn::Tcp), None),
            Target::Http { server, request } => {
                let conn = match server {
                    Server::Tcp(addr) => TcpStream::connect(*addr).map(Conn::Tcp),
                    Server::Unix(path) => UnixStream::connect(path).map(Conn::Unix),
                };
                (conn, Some(request.clone()))
            }
            Target::Exec(_) => unreachable!("exec checks are processes, not sockets"),
        };
        let conn = conn.map_err(|e| format!("connect: {}", errno_text(&e)))?;
        Ok(NetProbe {
            conn,
            phase: Phase::Connecting,
            request,
            head: Vec::new(),
        })
    }

    /// The socket, for the loop to watch (readable and writable).
    pub(crate) fn fd(&self) -> RawFd {
        match &self.conn {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }

    /// The socket is ready: does what it allows; `Some` once the check is over.
    pub(crate) fn ready(&mut self) -> Option<Outcome> {
        loop {
            match self.phase {
                Phase::Connecting => {
                    if let Ok(Some(e)) | Err(e) = self.conn.take_error() {
                        return Some(Err(format!("connect: {}", errno_text(&e))));
                    }
                    if !self.conn.connected() {
                        return None; // still connecting
                    }
                    if self.request.is_none() {
                        return Some(Ok(()));
                    }
                    self.phase = Phase::Sending(0);
                }
                Phase::Sending(at) => {
                    let request = self.request.as_deref().unwrap_or_default();
                    match self.conn.write(&request[at..]) {
                        Ok(n) if at + n == request.len() => self.phase = Phase::Receiving,
                        Ok(n) => self.phase = Phase::Sending(at + n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Some(Err(format!("send: {}", errno_text(&e)))),
                    }
                }
                Phase::Receiving => return self.receive(),
            }
        }
    }

    /// Reads the response head until it is complete, the peer closes, or it is too long.
    fn receive(&mut self) -> Option<Outcome> {
        let mut buf = [0u8; 4096];
        loop {
            match self.conn.read(&mut buf) {
                Ok(0) => {
                    return Some(
                        judge(&self.head)
                            .unwrap_or_else(|| Err("connection closed before a response".into())),
                    );
                }
                Ok(n) => {
                    self.head.extend_from_slice(&buf[..n]);
                    if let Some(outcome) = judge(&self.head) {
                        return Some(outcome);
                    }
                    if self.head.len() > MAX_HEAD {
                        return Some(Err(format!(
                            "no complete response head in {MAX_HEAD} bytes"
                        )));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("receive: {}", errno_text(&e)))),
            }
        }
    }

    /// What a check that timed out was waiting for, for its error.
    pub(crate) fn waiting_for(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "waiting for the connection",
            Phase::Sending(_) => "sending the request",
            Phase::Receiving => "waiting for a response",
        }
    }
}

/// The verdict on a response head read so far; `None` while it is incomplete.
pub(crate) fn judge(head: &[u8]) -> Option<Outcome> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let code = response.code.unwrap_or(0);
            if (200..400).contains(&code) {
                Some(Ok(()))
            } else {
                Some(Err(format!("HTTP {code}")))
            }
        }
        Ok(httparse::Status::Partial) => None,
        // Too many headers to keep: the status line was read, and that is what is judged.
        Err(httparse::Error::TooManyHeaders) => match response.code {
            Some(code) if (200..400).contains(&code) => Some(Ok(())),
            Some(code) => Some(Err(format!("HTTP {code}"))),
            None => Some(Err("not an HTTP response".into())),
        },
        Err(e) => Some(Err(format!("not an HTTP response ({e})"))),
    }
}

/// An I/O error as a check's error: the errno's name (`ECONNREFUSED`), which is what an
/// operator searches for, or the error's text when it has no errno.
pub(crate) fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_judged_by_its_status_once_its_head_is_complete() {
        assert_eq!(judge(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(judge(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"), Some(Ok(())));
        assert_eq!(judge(b"HTTP/1.0 302 Found\r\n\r\nbody"), Some(Ok(())));
        assert_eq!(
            judge(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"),
            Some(Err("HTTP 500".into()))
        );
        assert_eq!(
            judge(b"HTTP/1.1 199 X\r\n\r\n"),
            Some(Err("HTTP 199".into()))
        );
        assert!(judge(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap().is_err());
        let many: String = (0..100).map(|i| format!("H{i}: v\r\n")).collect();
        let head = format!("HTTP/1.1 204 No Content\r\n{many}\r\n");
        assert_eq!(judge(head.as_bytes()), Some(Ok(())));
    }

    #[test]
    fn errors_are_named_by_their_errno() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(errno_text(&e), "ECONNREFUSED");
    }
}

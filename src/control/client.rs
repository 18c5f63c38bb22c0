//! The control socket's client side, used by the `warden` command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Command, Reply, Request, VERSION};

/// Why a request got no final reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (no daemon, no permission).
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-way.
    #[error("control connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// No final reply within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The daemon closed the connection without a final reply.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// The daemon sent something that is not protocol.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// A connection to a running warden.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `command` and waits up to `timeout` for its final reply, passing progress lines to
    /// `progress` as they come.
    pub fn request(
        &mut self,
        command: Command,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut line = serde_json::to_string(&Request {
            v: VERSION,
            command,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.reader.get_mut().write_all(line.as_bytes())?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            self.reader.get_mut().set_read_timeout(Some(left))?;
            let mut buf = String::new();
            match self.reader.read_line(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(timeout));
                }
                Err(e) => return Err(e.into()),
            }
            let reply: Reply = serde_json::from_str(buf.trim())
                .map_err(|_| ClientError::Protocol(buf.trim().to_string()))?;
            match reply {
                Reply::Progress { progress: p, .. } => progress(&p),
                other => return Ok(other),
            }
        }
    }
}

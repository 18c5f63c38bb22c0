//! Output capture: a worker's stdout and stderr, read without blocking and logged line by line
//! under the worker's name, with a per-turn budget so that a flooding worker cannot hold the loop.
//!
//! It must not touch a worker's socket or state: a pipe outlives its worker until end of stream.

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::Token;
use mio::unix::SourceFd;

use super::{Engine, Owner, SlotIndex};
use crate::stream::{LineFramer, ReadEnd, read_nonblocking};

/// Bytes read from one output pipe per turn before serving others.
const PIPE_BUDGET: usize = 256 * 1024;
/// Longest captured output line; longer ones are split.
pub(super) const MAX_LINE: usize = 16 * 1024;

/// A worker's stdout or stderr, read into the log line by line.
pub(super) struct OutputPipe {
    pub(super) file: File,
    pub(super) framer: LineFramer,
    pub(super) slot: SlotIndex,
}

impl Engine {
    /// Logs what the pipe of `token` holds, line by line, up to the per-turn budget (then it is
    /// put on the backlog, read again next turn); at end of stream, the last partial line too.
    pub(super) fn read_pipe(&mut self, token: Token) {
        let name = &self.settings.name;
        let Some(Owner::OutputPipe(pipe)) = self.owners.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        let end = read_nonblocking(
            &mut (&mut *pipe, &mut buf),
            |(pipe, buf)| pipe.file.read(&mut buf[..]),
            |(pipe, buf), n| {
                let slot = pipe.slot;
                pipe.framer
                    .push(&buf[..n], &mut |line| log::info!("{name}[{slot}] {line}"));
                total += n;
                if total >= PIPE_BUDGET {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        if end == ReadEnd::Paused {
            self.pipe_backlog.push(token);
        } else if end == ReadEnd::Closed
            && let Some(Owner::OutputPipe(mut pipe)) = self.owners.remove(&token)
        {
            let slot = pipe.slot;
            pipe.framer
                .finish(&mut |line| log::info!("{name}[{slot}] {line}"));
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pipe.file.as_raw_fd()));
        }
    }

    pub(super) fn drain_pipe_backlog(&mut self) {
        for token in std::mem::take(&mut self.pipe_backlog) {
            self.read_pipe(token);
        }
    }
}

/// A pipe for a worker's stdout or stderr: our end non-blocking, theirs blocking (a worker's
/// `println!` must wait, not fail, when the pipe is full).
pub(super) fn output_pipe() -> std::io::Result<(File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((File::from(r), w))
}

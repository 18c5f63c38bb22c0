//! The worker's side of messages from a running job: the [`Handler`] trait (a plain
//! `Fn(J) -> Result<O, E>`, or one given a [`JobContext`]) and the context through which a job
//! sends typed messages to whoever submitted it.
//!
//! This module owns the worker's half of the credit rule below; the pool's half is
//! `engine::credit`. It runs in the worker process only, on the worker's one thread, inside the
//! handler: it must not read jobs (only credit frames, wherever they are in the buffer) nor write
//! anything but message frames.
//!
//! # Credit (bounded memory, backpressure)
//!
//! A job whose messages someone receives arrives as a `JOB_M` frame carrying its initial credit:
//! the receiver's bound, `B`. Each message sent spends one credit; with none left,
//! [`JobContext::send`] waits for a `CREDIT` frame for this job — the pool sends one only once
//! the receiver has *consumed* messages (taken them from its buffer, or its callback returned).
//! So at any moment the messages of a job sent and not yet consumed — in the socket, in the
//! pool, in the receiver's buffer — number at most `B`: the worker cannot run ahead of a slow
//! receiver by more than that, and nothing grows without bound.
//!
//! # Ordering and loss
//!
//! Messages are written on the job's socket as they are sent, before the job's result, so they
//! arrive in order and all of them before the outcome. They are lost only with the worker: a
//! worker that dies (or is killed on a timeout) mid-job loses what it had not written yet, and
//! the job's outcome says it died.

use std::cell::RefCell;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv, send};
use serde::Serialize;

use super::frame::{self, InBuf};

/// What a pool runs: a function of the job, optionally with a [`JobContext`].
///
/// Every `Fn(J) -> Result<O, E>` is a handler (it ignores the context), so
/// [`Pool::builder`](super::Pool::builder) takes plain closures as before; a handler that
/// sends messages is built with [`Pool::builder_with_context`](super::Pool::builder_with_context).
pub trait Handler<J, O, E>: Send + Sync + 'static {
    /// Runs one job.
    fn call(&self, job: J, ctx: &JobContext<'_>) -> Result<O, E>;
}

impl<J, O, E, F> Handler<J, O, E> for F
where
    F: Fn(J) -> Result<O, E> + Send + Sync + 'static,
{
    fn call(&self, job: J, _ctx: &JobContext<'_>) -> Result<O, E> {
        self(job)
    }
}

/// A handler that is given a [`JobContext`]; from
/// [`Pool::builder_with_context`](super::Pool::builder_with_context).
pub struct WithContext<F>(pub(super) F);

impl<F> fmt::Debug for WithContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WithContext(..)")
    }
}

impl<J, O, E, F> Handler<J, O, E> for WithContext<F>
where
    F: Fn(J, &JobContext<'_>) -> Result<O, E> + Send + Sync + 'static,
{
    fn call(&self, job: J, ctx: &JobContext<'_>) -> Result<O, E> {
        (self.0)(job, ctx)
    }
}

/// Why [`JobContext::send`] could not send a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The pool is gone (the worker's socket closed): nobody will read it.
    Closed,
    /// The message could not be encoded.
    Codec(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("the pool is gone"),
            SendError::Codec(why) => write!(f, "the message {why}"),
        }
    }
}

impl std::error::Error for SendError {}

/// The running job's line to whoever submitted it, given to handlers built with
/// [`Pool::builder_with_context`](super::Pool::builder_with_context).
///
/// [`JobContext::send`] delivers typed messages (progress, partial results) in order, before the
/// job's outcome, to the receiver chosen at submission
/// ([`Pool::submit_with_messages`](super::Pool::submit_with_messages),
/// [`Pool::apply_async_with_messages`](super::Pool::apply_async_with_messages),
/// [`Pool::map_with_messages`](super::Pool::map_with_messages)). It blocks while that
/// receiver's buffer for this job is full. A job submitted without a receiver (or run in a
/// `map_chunked` chunk) has nobody listening: `send` then returns `Ok` at once and the message
/// goes nowhere ([`JobContext::listened`] says so).
pub struct JobContext<'a> {
    link: Option<RefCell<Link<'a>>>,
}

impl fmt::Debug for JobContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("listened", &self.listened())
            .finish()
    }
}

/// What sending needs: the socket, the worker's input buffer (for credit frames), the job.
pub(super) struct Link<'a> {
    pub(super) sock: &'a OwnedFd,
    pub(super) inbuf: &'a mut InBuf,
    pub(super) scratch: &'a mut Vec<u8>,
    pub(super) id: u64,
    pub(super) credit: u64,
}

impl<'a> JobContext<'a> {
    /// A context whose messages go nowhere.
    pub(super) fn unlistened() -> JobContext<'a> {
        JobContext { link: None }
    }

    /// A context sending messages of job `link.id` with `link.credit` to spend.
    pub(super) fn listened_by(link: Link<'a>) -> JobContext<'a> {
        JobContext {
            link: Some(RefCell::new(link)),
        }
    }

    /// Whether someone receives this job's messages.
    pub fn listened(&self) -> bool {
        self.link.is_some()
    }

    /// Sends `message` to the job's receiver; blocks while the receiver's buffer for this job is
    /// full (until it consumes some). `Ok` at once when nobody listens.
    ///
    /// The receiver decodes it as its own message type `M` (chosen at submission): send the same
    /// type, as with the job and its result.
    pub fn send<M: Serialize + ?Sized>(&self, message: &M) -> Result<(), SendError> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let Ok(mut link) = link.try_borrow_mut() else {
            // Only a `Serialize` impl that sends from inside itself gets here.
            return Err(SendError::Codec(
                "sent while another message was encoding".into(),
            ));
        };
        link.send(message)
    }
}

impl Link<'_> {
    fn send<M: Serialize + ?Sized>(&mut self, message: &M) -> Result<(), SendError> {
        while self.credit == 0 {
            self.take_credit();
            if self.credit == 0 {
                self.read_more()?;
            }
        }
        let out = &mut *self.scratch;
        out.clear();
        out.resize(frame::HEADER, 0);
        out.extend_from_slice(&self.id.to_le_bytes());
        frame::encode_into(message, out).map_err(SendError::Codec)?;
        frame::patch_header(out, 0, frame::MESSAGE);
        send_all(self.sock.as_raw_fd(), out).map_err(|_| SendError::Closed)?;
        self.credit -= 1;
        Ok(())
    }

    /// Adds the credit frames for this job found anywhere in the buffer, and neutralises them
    /// (id 0, which no job has) so that they count once; the serving loop skips credit frames.
    fn take_credit(&mut self) {
        let data = self.inbuf.data_mut();
        let mut at = 0;
        while let Ok(Some(f)) = frame::parse(&data[at..]) {
            let body = at + frame::HEADER;
            if f.kind == frame::CREDIT && frame::read_id(&data[body..]) == Some(self.id) {
                let n = frame::read_u32(&data[body..], 8).unwrap_or(0);
                self.credit += u64::from(n);
                data[body..body + 8].fill(0);
            }
            at = body + f.len;
        }
    }

    /// Waits for more bytes from the pool; `Err` when its end is closed.
    fn read_more(&mut self) -> Result<(), SendError> {
        let mut pfd = [nix::poll::PollFd::new(
            self.sock.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return Err(SendError::Closed),
        }
        let room = self.inbuf.spare(16 * 1024);
        match recv(self.sock.as_raw_fd(), room, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Err(SendError::Closed),
            Ok(n) => {
                self.inbuf.filled(n);
                Ok(())
            }
            Err(Errno::EINTR | Errno::EAGAIN) => Ok(()),
            Err(_) => Err(SendError::Closed),
        }
    }
}

/// Writes all of `buf`; `MSG_NOSIGNAL` so that a vanished pool is an error, not a `SIGPIPE`.
pub(super) fn send_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match send(fd, buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

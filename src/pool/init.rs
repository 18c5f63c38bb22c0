//! The per-worker initializer ([`PoolBuilder::initializer`](super::PoolBuilder::initializer)):
//! run once in each worker process before it serves its first job, under both start methods.
//!
//! This module runs it (in the worker process only) and, when it fails, tells the pool with one
//! `INIT_FAILED` frame carrying the reason, then has the worker exit with [`EXIT_INIT_FAILED`].
//! What the pool does then (refuse jobs, restart nothing) is the engine's (`engine::refuse`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};

use super::frame;
use super::worker::panic_message;

/// The initializer, its error already put in words.
pub(crate) type Initializer = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The exit code of a worker whose initializer failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 4;

/// Runs `init` (if any) in this worker process. On failure — an error or a panic — sends the
/// reason to the pool and returns the exit code the worker must exit with.
pub(crate) fn run(init: Option<&Initializer>, sock: &OwnedFd) -> Result<(), i32> {
    let Some(init) = init else {
        return Ok(());
    };
    let reason = match catch_unwind(AssertUnwindSafe(|| init())) {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
    };
    let mut buf = Vec::with_capacity(frame::HEADER + reason.len());
    frame::put_header(&mut buf, frame::INIT_FAILED, reason.len());
    buf.extend_from_slice(reason.as_bytes());
    let mut rest = &buf[..];
    while !rest.is_empty() {
        match send(sock.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => {}
            Err(_) => break, // the pool is gone: nobody to tell
        }
    }
    Err(EXIT_INIT_FAILED)
}

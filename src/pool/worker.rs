//! The worker side of the pool: the loop a worker process runs on its socket (descriptor 3).
//!
//! This module owns decoding jobs, running the handler under `catch_unwind`, and writing
//! results. It runs in the worker process only, single-threaded: it reads whatever jobs are
//! waiting without blocking, runs them, and sleeps in `poll(POLLIN)` when none are left.
//!
//! # Ordering rule (the pool depends on it)
//!
//! Jobs are run one at a time in the order they arrived, each started through its claim word first
//! (`claim::start`; a job the pool revoked is skipped without an answer), and each result (or each
//! chunk's results) is written with its own `send` as soon as it is computed, before the next job
//! starts. So at any moment the pool knows: a received result means done, the first unanswered job
//! is the one running, and later ones have not started. A worker must never batch results across
//! jobs: a death would then look like the wrong job's. A job's messages (see `context`) are
//! written while it runs, before its result. A result small enough is written to the job's
//! result slot in shared memory instead (see `claim`), which survives the worker: the same rule
//! holds, without a system call.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicU64;

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::claim;
use super::context::{Handler, JobContext, Link, send_all};
use super::frame::{self, InBuf, Wire};
use crate::sys::memfd::SharedWords;

/// Why [`serve`] returned, mapped to the worker's exit code.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A `Shutdown` frame, or end of stream: exit 0.
    Done,
    /// The stream was corrupt or the socket failed: exit 3.
    Broken(String),
}

impl Stop {
    /// The exit code of a worker process that stopped this way.
    pub(crate) fn code(&self) -> i32 {
        match self {
            Stop::Done => 0,
            Stop::Broken(_) => 3,
        }
    }
}

/// Serves jobs from `sock` until `Shutdown` or end of stream; `claims` are the claim words
/// shared with the pool (see `claim`).
pub(crate) fn serve<J, O, E, H>(sock: &OwnedFd, claims: &SharedWords, handler: &H) -> Stop
where
    J: DeserializeOwned,
    O: Serialize,
    E: Serialize,
    H: Handler<J, O, E>,
{
    let fd = sock.as_raw_fd();
    let mut io = Io {
        sock,
        words: claims.words(),
        inbuf: InBuf::new(64 * 1024),
        out: Vec::with_capacity(4096),
        scratch: Vec::new(),
    };
    loop {
        loop {
            let f = match frame::parse(io.inbuf.data()) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Stop::Broken(e.0),
            };
            match answer(handler, &mut io, f) {
                Step::Answered => {
                    if let Err(e) = send_all(fd, &io.out) {
                        return Stop::Broken(format!("cannot send a result: {e}"));
                    }
                }
                Step::Skipped => {}
                Step::InSlot { notify } => {
                    if notify && let Err(e) = send_all(fd, &NOTIFY_FRAME) {
                        return Stop::Broken(format!("cannot send a result: {e}"));
                    }
                }
                Step::Stop(stop) => return stop,
            }
        }
        if let Some(stop) = read_jobs(sock, &mut io.inbuf) {
            return stop;
        }
    }
}

/// The worker's ends: its socket, the claim words, its buffers.
struct Io<'a> {
    sock: &'a OwnedFd,
    words: &'a [AtomicU64],
    inbuf: InBuf,
    /// The result frame being built.
    out: Vec<u8>,
    /// Message frames being built (see `context`).
    scratch: Vec<u8>,
}

/// What [`answer`] did with one frame from the pool.
enum Step {
    /// The job ran; its result frame is in `out`.
    Answered,
    /// The pool revoked the job (sent it to another worker), or a credit frame came too late to
    /// matter: skipped without an answer.
    Skipped,
    /// The job ran and its result is in its result slot (see `claim`); `notify`: the pool is
    /// asleep and must be woken.
    InSlot { notify: bool },
    /// Stop serving.
    Stop(Stop),
}

/// Runs the job (or chunk) of the frame `f` at the start of the input buffer through its claim
/// word, consuming the frame, and encodes its result frame into `out`.
#[inline]
fn answer<J, O, E, H>(handler: &H, io: &mut Io<'_>, f: frame::Frame) -> Step
where
    J: DeserializeOwned,
    O: Serialize,
    E: Serialize,
    H: Handler<J, O, E>,
{
    let size = frame::HEADER + f.len;
    match f.kind {
        frame::JOB | frame::JOB_M => return answer_job(handler, io, f),
        frame::CHUNK => {
            let body = &io.inbuf.data()[frame::HEADER..size];
            let (Some(id), Some(count)) = (frame::read_id(body), frame::read_u32(body, 8)) else {
                return Step::Stop(Stop::Broken("short chunk frame".into()));
            };
            if !claim::start(io.words, frame::word_of(id), id) {
                io.inbuf.consume(size);
                return Step::Skipped;
            }
            let jobs = frame::decode::<Vec<J>>(&body[12..]);
            io.inbuf.consume(size);
            let wires = run_chunk(handler, jobs, count as usize);
            let out = &mut io.out;
            out.clear();
            out.resize(frame::HEADER, 0);
            out.extend_from_slice(&id.to_le_bytes());
            frame::encode_seq_into(&wires, out, |e| Wire::Codec(format!("result {e}")));
            frame::patch_header(out, 0, frame::CHUNK_RESULT);
        }
        frame::CREDIT => {
            // For a job that ended before its credit came: nothing to do.
            io.inbuf.consume(size);
            return Step::Skipped;
        }
        frame::SHUTDOWN => return Step::Stop(Stop::Done),
        k => {
            return Step::Stop(Stop::Broken(format!(
                "unexpected frame kind {k} from the pool"
            )));
        }
    }
    Step::Answered
}

/// [`answer`] for one job (`JOB`, or `JOB_M` whose messages someone receives).
#[inline]
fn answer_job<J, O, E, H>(handler: &H, io: &mut Io<'_>, f: frame::Frame) -> Step
where
    J: DeserializeOwned,
    O: Serialize,
    E: Serialize,
    H: Handler<J, O, E>,
{
    let size = frame::HEADER + f.len;
    let body = &io.inbuf.data()[frame::HEADER..size];
    let listened = f.kind == frame::JOB_M;
    let credit = if listened {
        frame::read_u32(body, 8)
    } else {
        Some(0)
    };
    let (Some(id), Some(credit)) = (frame::read_id(body), credit) else {
        return Step::Stop(Stop::Broken("short job frame".into()));
    };
    if !claim::start(io.words, frame::word_of(id), id) {
        io.inbuf.consume(size);
        return Step::Skipped;
    }
    let job = frame::decode::<J>(&body[if listened { 12 } else { 8 }..]);
    io.inbuf.consume(size);
    let wire = {
        let ctx = if listened {
            JobContext::listened_by(Link {
                sock: io.sock,
                inbuf: &mut io.inbuf,
                scratch: &mut io.scratch,
                id,
                credit: u64::from(credit),
            })
        } else {
            JobContext::unlistened()
        };
        match job {
            Ok(job) => run(handler, job, &ctx),
            Err(e) => Wire::Codec(format!("job {e}")),
        }
    };
    let out = &mut io.out;
    out.clear();
    out.resize(frame::HEADER, 0);
    out.extend_from_slice(&id.to_le_bytes());
    put_wire(out, &wire);
    let result = &out[frame::HEADER + 8..];
    if !listened && result.len() <= claim::SLOT_BYTES {
        // Messages travel on the socket, so a listened job's result must follow them there.
        let notify = claim::finish(io.words, frame::word_of(id), id, result);
        return Step::InSlot { notify };
    }
    frame::patch_header(out, 0, frame::RESULT);
    Step::Answered
}

/// The `NOTIFY` frame: a header with an empty body.
const NOTIFY_FRAME: [u8; frame::HEADER] = [0, 0, 0, 0, frame::NOTIFY];

/// Reads more jobs into `inbuf`: without blocking first; only when nothing is there, sleeps in
/// poll(POLLIN) rather than in read(2): a unix socket wakes a reader sleeping in read(2) every
/// time the pool consumes this worker's results (the write-space wake-up shares the wait queue),
/// while poll filters wake-ups by event, so an idle worker sleeps through them. `Some` when the
/// worker must stop.
fn read_jobs(sock: &OwnedFd, inbuf: &mut InBuf) -> Option<Stop> {
    let room = inbuf.spare(16 * 1024);
    match nix::sys::socket::recv(sock.as_raw_fd(), room, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => return Some(Stop::Done),
        Ok(n) => inbuf.filled(n),
        Err(Errno::EINTR) => {}
        Err(Errno::EAGAIN) => {
            let mut pfd = [nix::poll::PollFd::new(
                sock.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Some(Stop::Broken(format!("cannot wait for jobs: {e}"))),
            }
        }
        Err(e) => return Some(Stop::Broken(format!("cannot read jobs: {e}"))),
    }
    None
}

/// Encodes `value` at the end of `out`; on failure, encodes a `Codec` outcome instead (the
/// variant's index and payload do not depend on `O` and `E`, so it decodes as any `Wire<O, E>`).
fn put_wire<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    if let Err(e) = frame::encode_into(value, out) {
        let fallback: Wire<(), ()> = Wire::Codec(format!("result {e}"));
        frame::encode_into(&fallback, out).expect("a string always encodes");
    }
}

/// Runs a decoded chunk's jobs in order, each under its own `catch_unwind` (nobody listens to
/// their messages).
fn run_chunk<J, O, E, H>(handler: &H, jobs: Result<Vec<J>, String>, count: usize) -> Vec<Wire<O, E>>
where
    H: Handler<J, O, E>,
{
    match jobs {
        Ok(jobs) if jobs.len() == count => {
            let ctx = JobContext::unlistened();
            jobs.into_iter().map(|j| run(handler, j, &ctx)).collect()
        }
        Ok(jobs) => {
            let msg = format!("chunk of {} jobs announced as {count}", jobs.len());
            (0..count).map(|_| Wire::Codec(msg.clone())).collect()
        }
        Err(e) => (0..count)
            .map(|_| Wire::Codec(format!("job {e}")))
            .collect(),
    }
}

fn run<J, O, E, H>(handler: &H, job: J, ctx: &JobContext<'_>) -> Wire<O, E>
where
    H: Handler<J, O, E>,
{
    match catch_unwind(AssertUnwindSafe(|| handler.call(job, ctx))) {
        Ok(Ok(o)) => Wire::Ok(o),
        Ok(Err(e)) => Wire::Err(e),
        Err(payload) => Wire::Panicked(panic_message(payload.as_ref())),
    }
}

/// The text of a panic payload (`&str` or `String`, as `panic!` makes them).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Flushes stdout, so that a worker's last printed lines reach the pool before it leaves.
pub(crate) fn flush_stdio() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

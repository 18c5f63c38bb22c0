//! The fork server ("zygote") of a [`StartMethod::Fork`](super::StartMethod::Fork) pool, and the
//! pool's side of its control socket.
//!
//! This module owns the zygote process: forked by `build()` while the process is still
//! single-threaded, it stays single-threaded forever, so it can fork workers soundly long after
//! the pool's I/O thread (and any thread of the host program) has started. It also owns the
//! little protocol on its control socket (`SOCK_SEQPACKET`, one message per datagram):
//!
//! | direction | message | attached descriptors |
//! |---|---|---|
//! | pool → zygote | `S` token u64: fork a worker | its socket end, stdout and stderr pipe write ends, claim words (`memfd`) |
//! | pool → zygote | `K` pid i32, signal i32: signal a worker's process group | — |
//! | zygote → pool | `P` token u64, pid i32: forked | — |
//! | zygote → pool | `F` token u64, errno i32: fork failed | — |
//! | zygote → pool | `X` pid i32, kind u8, value i32: a worker was reaped | — |
//!
//! # Races and ordering
//!
//! The zygote is the workers' parent, so it alone reaps them (on `SIGCHLD`, through a `signalfd`,
//! `waitpid(-1)` — its only children are workers) and it alone signals them: a `K` for a pid it has
//! already reaped is ignored, so a recycled pid is never hit. The zygote dies with the thread that
//! built the pool (`PR_SET_PDEATHSIG`), and exits — after `SIGKILL`ing and reaping every worker —
//! when its control socket reaches end of stream; the workers die with the zygote. Nothing of the
//! pool's parent-side state is touched here: a forked worker closes every descriptor but its own
//! socket before it runs the handler.

use std::collections::HashSet;
use std::io::{IoSlice, IoSliceMut};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::policy::ExitStatus;
use crate::sys::memfd::SharedWords;
use crate::sys::{self, ChildSetup};

/// A message from the zygote to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FromZygote {
    /// The worker of request `token` was forked as `pid`.
    Spawned {
        /// The request's token.
        token: u64,
        /// The worker's pid.
        pid: i32,
    },
    /// The fork for request `token` failed with `errno`.
    Failed {
        /// The request's token.
        token: u64,
        /// The errno of the failure.
        errno: i32,
    },
    /// Worker `pid` was reaped.
    Exited {
        /// Its pid.
        pid: i32,
        /// How it ended.
        status: ExitStatus,
    },
}

impl FromZygote {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        match *self {
            FromZygote::Spawned { token, pid } => {
                v.push(b'P');
                v.extend_from_slice(&token.to_le_bytes());
                v.extend_from_slice(&pid.to_le_bytes());
            }
            FromZygote::Failed { token, errno } => {
                v.push(b'F');
                v.extend_from_slice(&token.to_le_bytes());
                v.extend_from_slice(&errno.to_le_bytes());
            }
            FromZygote::Exited { pid, status } => {
                v.push(b'X');
                v.extend_from_slice(&pid.to_le_bytes());
                let (kind, value) = match status {
                    ExitStatus::Code(c) => (0u8, c),
                    ExitStatus::Signal {
                        signal,
                        core_dumped,
                    } => (1 + u8::from(core_dumped), signal),
                };
                v.push(kind);
                v.extend_from_slice(&value.to_le_bytes());
            }
        }
        v
    }

    /// Decodes one datagram from the zygote.
    pub(crate) fn decode(b: &[u8]) -> Option<FromZygote> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        let i32_at = |i: usize| Some(i32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
        match *b.first()? {
            b'P' => Some(FromZygote::Spawned {
                token: u64_at(1)?,
                pid: i32_at(9)?,
            }),
            b'F' => Some(FromZygote::Failed {
                token: u64_at(1)?,
                errno: i32_at(9)?,
            }),
            b'X' => {
                let pid = i32_at(1)?;
                let value = i32_at(6)?;
                let status = match *b.get(5)? {
                    0 => ExitStatus::Code(value),
                    k => ExitStatus::Signal {
                        signal: value,
                        core_dumped: k == 2,
                    },
                };
                Some(FromZygote::Exited { pid, status })
            }
            _ => None,
        }
    }
}

/// A request from the pool to the zygote, with the descriptors it carries.
#[derive(Debug)]
pub(crate) struct ToZygote {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl ToZygote {
    /// Fork a worker on `sock` with its output on `stdout` and `stderr` and its claim words
    /// in the `memfd` `claims`.
    pub(crate) fn spawn(
        token: u64,
        sock: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
        claims: OwnedFd,
    ) -> ToZygote {
        let mut bytes = vec![b'S'];
        bytes.extend_from_slice(&token.to_le_bytes());
        ToZygote {
            bytes,
            fds: vec![sock, stdout, stderr, claims],
        }
    }

    /// Send `signal` to worker `pid`'s process group, if it is still unreaped.
    pub(crate) fn kill(pid: i32, signal: i32) -> ToZygote {
        let mut bytes = vec![b'K'];
        bytes.extend_from_slice(&pid.to_le_bytes());
        bytes.extend_from_slice(&signal.to_le_bytes());
        ToZygote {
            bytes,
            fds: Vec::new(),
        }
    }

    /// Sends the request without blocking; `Errno::EAGAIN` means try again when writable.
    pub(crate) fn send(&self, ctl: BorrowedFd<'_>) -> nix::Result<()> {
        let raw: Vec<RawFd> = self.fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        let iov = [IoSlice::new(&self.bytes)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        loop {
            match sendmsg::<()>(ctl.as_raw_fd(), &iov, cmsgs, flags, None) {
                Err(Errno::EINTR) => continue,
                r => return r.map(drop),
            }
        }
    }
}

/// Receives one datagram from the zygote without blocking: `Ok(None)` when none is waiting,
/// `Err(Errno::ECONNRESET)` at end of stream (the zygote is gone).
pub(crate) fn receive(ctl: BorrowedFd<'_>) -> nix::Result<Option<FromZygote>> {
    let mut buf = [0u8; 64];
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(ctl.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
            Ok(msg) if msg.bytes == 0 => return Err(Errno::ECONNRESET),
            Ok(msg) => {
                let n = msg.bytes;
                return Ok(FromZygote::decode(&buf[..n]));
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// The pool's handle on its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    /// The control socket (non-blocking).
    pub(crate) ctl: OwnedFd,
    /// The zygote's pid.
    pub(crate) pid: i32,
    /// A pidfd on the zygote (`None` before Linux 5.3): readable once it has exited, so that the
    /// pool reaps it when it really is a zombie, not when its socket closes (which comes first).
    pub(crate) pidfd: Option<OwnedFd>,
}

/// What a forked worker runs: serves the socket on descriptor 3 with the claim words of
/// descriptor 4, returns the exit code.
pub(crate) type Entry<'a> = &'a dyn Fn(OwnedFd, SharedWords) -> i32;

/// Forks the zygote. Must be called while the process is single-threaded (checked by
/// [`sys::fork`]); the zygote never returns from here.
pub(crate) fn start(entry: Entry<'_>) -> Result<Zygote> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("socketpair", e))?;
    let parent = std::process::id() as i32;
    match sys::fork()? {
        sys::Fork::Parent(pid) => {
            drop(theirs);
            nix::fcntl::fcntl(
                &ours,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| Error::sys("fcntl(O_NONBLOCK)", e))?;
            // Our unreaped child: its pid cannot be reused, so the pidfd is surely its own.
            let pidfd = sys::pidfd::pidfd_open(pid.as_raw()).ok();
            Ok(Zygote {
                ctl: ours,
                pid: pid.as_raw(),
                pidfd,
            })
        }
        sys::Fork::Child => {
            drop(ours);
            let code = match zygote_main(theirs, parent, entry) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("warden pool fork server: {e}");
                    1
                }
            };
            sys::_exit(code)
        }
    }
}

/// The zygote's life: serve requests, reap workers, leave at end of stream.
fn zygote_main(ctl: OwnedFd, parent: i32, entry: Entry<'_>) -> std::result::Result<(), String> {
    let sfd = become_zygote(&ctl, parent)?;
    let me = std::process::id() as i32;
    let mut live: HashSet<i32> = HashSet::new();
    loop {
        let mut fds = [
            nix::poll::PollFd::new(ctl.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ctl_ready = fds[0].any().unwrap_or(false);
        let chld_ready = fds[1].any().unwrap_or(false);
        if chld_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&ctl, &mut live)?;
        }
        if ctl_ready && serve_requests(&ctl, &mut live, me, entry)?.is_break() {
            return Ok(());
        }
    }
}

/// Sets up the zygote process: its own process group, death with `parent`, no descriptor but
/// `ctl`, and `SIGCHLD` blocked and read through the returned `signalfd`.
fn become_zygote(ctl: &OwnedFd, parent: i32) -> std::result::Result<SignalFd, String> {
    // Own process group: a terminal's Ctrl-C to the host's group must not take the pool down
    // behind the host's back; the zygote dies with its creator through PDEATHSIG instead.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let setup = ChildSetup {
        parent,
        pdeathsig: Some(libc::SIGKILL),
        ..ChildSetup::default()
    };
    sys::child_setup(&setup).map_err(|e| format!("setup: {e}"))?;
    sys::close_fds_except(&[ctl.as_raw_fd()]).map_err(|e| e.to_string())?;
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None).map_err(|e| e.to_string())?;
    SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Serves the requests waiting on `ctl`; `Break` at end of stream, once every worker is killed
/// and reaped.
fn serve_requests(
    ctl: &OwnedFd,
    live: &mut HashSet<i32>,
    me: i32,
    entry: Entry<'_>,
) -> std::result::Result<ControlFlow<()>, String> {
    loop {
        let mut buf = [0u8; 64];
        let (n, fds) = match sys::recv_with_fds(ctl.as_fd(), &mut buf) {
            Ok(Some(got)) => got,
            Ok(None) => return Ok(ControlFlow::Continue(())),
            Err(e) => return Err(format!("recvmsg: {e}")),
        };
        if n == 0 {
            shutdown(live);
            return Ok(ControlFlow::Break(()));
        }
        handle_request(ctl, &buf[..n], fds, live, me, entry)?;
    }
}

/// Carries out one request: `S` forks a worker (the child never returns from here), `K`
/// signals a live worker's process group.
fn handle_request(
    ctl: &OwnedFd,
    msg: &[u8],
    fds: Vec<OwnedFd>,
    live: &mut HashSet<i32>,
    me: i32,
    entry: Entry<'_>,
) -> std::result::Result<(), String> {
    let n = msg.len();
    match msg[0] {
        b'S' if n == 9 && fds.len() == 4 => {
            let token = u64::from_le_bytes(msg[1..9].try_into().expect("8 bytes"));
            let reply = match sys::fork() {
                Ok(sys::Fork::Child) => worker_child(fds, me, entry),
                Ok(sys::Fork::Parent(pid)) => {
                    live.insert(pid.as_raw());
                    FromZygote::Spawned {
                        token,
                        pid: pid.as_raw(),
                    }
                }
                Err(e) => FromZygote::Failed {
                    token,
                    errno: e.raw_os_error().unwrap_or(libc::EAGAIN),
                },
            };
            drop(fds);
            reply_to(ctl, reply)
        }
        b'K' if n == 9 => {
            let pid = i32::from_le_bytes(msg[1..5].try_into().expect("4 bytes"));
            let sig = i32::from_le_bytes(msg[5..9].try_into().expect("4 bytes"));
            if live.contains(&pid)
                && let Ok(sig) = Signal::try_from(sig)
            {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), sig);
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
            Ok(())
        }
        _ => Err(format!("bad request {msg:?}")),
    }
}

/// Sends one reply; blocking is fine here (the pool reads promptly, and if it is gone the
/// send fails and the zygote leaves).
fn reply_to(ctl: &OwnedFd, reply: FromZygote) -> std::result::Result<(), String> {
    let bytes = reply.encode();
    loop {
        match nix::sys::socket::send(ctl.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("the pool is gone ({e})")),
        }
    }
}

/// Reaps every exited worker and reports it.
fn reap(ctl: &OwnedFd, live: &mut HashSet<i32>) -> std::result::Result<(), String> {
    loop {
        let (pid, status) = match crate::sys::wait::waitpid_nohang(-1) {
            Ok(Some((pid, raw))) => match ExitStatus::from_wait_status(raw) {
                Some(status) => (pid, status),
                None => continue,
            },
            Ok(None) | Err(Errno::ECHILD) => return Ok(()),
            Err(e) => return Err(format!("waitpid: {e}")),
        };
        live.remove(&pid);
        reply_to(ctl, FromZygote::Exited { pid, status })?;
    }
}

/// End of stream from the pool: kill and reap every worker.
fn shutdown(live: &mut HashSet<i32>) {
    for &pid in live.iter() {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for pid in live.drain() {
        let _ = crate::sys::wait::waitpid_blocking(pid);
    }
}

/// The forked worker: socket to descriptor 3, claim words to 4, output to the pipes, everything
/// else closed, then serve. Never returns.
fn worker_child(mut fds: Vec<OwnedFd>, zygote: i32, entry: Entry<'_>) -> ! {
    let sock = fds.remove(0);
    let result = (|| -> std::io::Result<()> {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
        let setup = ChildSetup {
            parent: zygote,
            pdeathsig: Some(libc::SIGKILL),
            ..ChildSetup::default()
        };
        sys::child_setup(&setup)?;
        // A Rust program runs with SIGPIPE ignored (std sets it at start-up); the handler runs
        // Rust code with no exec in between, so restore that: a broken pipe is an error to the
        // handler, not a death.
        sys::ignore_sigpipe();
        let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
        nix::unistd::dup2_stdin(&null)?;
        nix::unistd::dup2_stdout(&fds[0])?;
        nix::unistd::dup2_stderr(&fds[1])?;
        // Stdio is in place, so overwriting descriptors 3 and 4, whatever they were, loses
        // nothing; the claim words go first, as the socket may sit on descriptor 4.
        let claims = fds.pop().expect("four descriptors");
        let claims = if claims.as_raw_fd() == 3 {
            let moved = nix::unistd::dup(&claims)?;
            drop(claims);
            moved
        } else {
            claims
        };
        sys::fd::move_to_fd(sock, 3)?;
        sys::fd::move_to_fd(claims, 4)
    })();
    if let Err(e) = result {
        eprintln!("warden pool worker: setup failed: {e}");
        sys::_exit(127);
    }
    // Every descriptor but 3 is closed below, behind their owners' backs: forget the owners.
    for fd in fds {
        let _ = fd.into_raw_fd();
    }
    let _ = sys::close_fds_except(&[3, 4]);
    let claimed = sys::fd::claim_inherited_socket(3)
        .and_then(|sock| Ok((sock, SharedWords::map_inherited(4)?)));
    let code = match claimed {
        Ok((sock, claims)) => entry(sock, claims),
        Err(e) => {
            eprintln!("warden pool worker: {e}");
            127
        }
    };
    super::worker::flush_stdio();
    sys::_exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let all = [
            FromZygote::Spawned { token: 7, pid: 42 },
            FromZygote::Failed {
                token: u64::MAX,
                errno: 11,
            },
            FromZygote::Exited {
                pid: 9,
                status: ExitStatus::Code(3),
            },
            FromZygote::Exited {
                pid: 9,
                status: ExitStatus::Signal {
                    signal: 9,
                    core_dumped: false,
                },
            },
            FromZygote::Exited {
                pid: 9,
                status: ExitStatus::Signal {
                    signal: 11,
                    core_dumped: true,
                },
            },
        ];
        for r in all {
            assert_eq!(FromZygote::decode(&r.encode()), Some(r));
        }
        assert_eq!(FromZygote::decode(b""), None);
        assert_eq!(FromZygote::decode(b"P12"), None);
    }
}

//! Worker lifecycle: spawning (exec'd or through the fork server), attaching a started worker to
//! the loop, its timers, killing, reaping and finalizing (resolving the jobs it held).
//!
//! It must not talk the fork server's protocol itself (see `zygote_link`) nor decode results.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::unistd::Pid;

use super::output::{MAX_LINE, OutputPipe, output_pipe};
use super::phase::Phase;
use super::shared::{Failure, Raw};
use super::zygote_link::Pending;
use super::{Engine, Owner, Proc, Reaper, SlotIndex, Spawner, StopMode};
use crate::lifecycle::{Event, Instance};
use crate::policy::ExitStatus;
use crate::pool::claim::{self, Claim};
use crate::pool::frame::InBuf;
use crate::pool::zygote::ToZygote;
use crate::stream::LineFramer;
use crate::sys::memfd::SharedWords;
use crate::sys::{self, ChildSetup};

impl Engine {
    /// The worker's socket reached end of stream: make sure the process is gone, then wait for
    /// its exit status (or finalize now if no status will ever come).
    pub(super) fn sock_closed(&mut self, slot: SlotIndex) {
        let fork_server_gone = matches!(self.spawner, Spawner::Fork { zygote: None, .. });
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.sock_open = false;
        let _ = self.poll.registry().deregister(&mut p.sock);
        self.owners.remove(&p.sock_token);
        let poll_waitpid = matches!(p.reaper, Reaper::PollWaitpid);
        if !p.phase.is_going() {
            self.kill(slot);
        }
        if fork_server_gone {
            // Its workers died with it (PDEATHSIG = SIGKILL); nobody will report them.
            let status = ExitStatus::Signal {
                signal: libc::SIGKILL,
                core_dumped: false,
            };
            self.finalize(slot, status);
        } else if poll_waitpid {
            self.try_reap(slot);
        }
    }

    /// `waitpid(pid, WNOHANG)` for an exec'd worker; finalizes it if it has exited.
    pub(super) fn try_reap(&mut self, slot: SlotIndex) {
        let Some(p) = self.slots[slot].proc.as_ref() else {
            return;
        };
        let status = match crate::sys::wait::waitpid_nohang(p.pid) {
            Ok(Some((_, raw))) => match ExitStatus::from_wait_status(raw) {
                Some(status) => status,
                None => return,
            },
            Err(nix::errno::Errno::ECHILD) => {
                // Someone else (the host's own `waitpid(-1)`) reaped it.
                log::warn!(
                    "{}[{slot}]: worker (pid {}) was reaped by someone else",
                    self.settings.name,
                    p.pid
                );
                ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                }
            }
            _ => return,
        };
        self.finalize(slot, status);
    }

    /// The worker has exited with `status`: read what it left, resolve its jobs, feed the
    /// state machine.
    pub(super) fn finalize(&mut self, slot: SlotIndex, status: ExitStatus) {
        if self.slots[slot].proc.as_ref().is_some_and(|p| p.sock_open) {
            // Results written just before the exit are still in the socket.
            let _ = self.drain_sock(slot, false);
        }
        // Results finished in slots survive the worker.
        self.drain_slot(slot);
        let Some(mut p) = self.slots[slot].proc.take() else {
            return;
        };
        self.pids_dirty = true;
        if p.sock_open {
            let _ = self.poll.registry().deregister(&mut p.sock);
            self.owners.remove(&p.sock_token);
        }
        if let Reaper::Pidfd(fd, token) = std::mem::replace(&mut p.reaper, Reaper::PollWaitpid) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.owners.remove(&token);
        }
        if !p.phase.is_expected() {
            self.counters.worker_deaths += 1;
        }
        self.resolve_jobs(slot, &mut p, status);
        let init_failed = p.init_failed.take();
        if let Some(reason) = init_failed {
            self.initializer_failed(slot, p.pid, reason);
        }
        drop(p);
        self.apply(slot, Event::Exited { status });
    }

    /// Resolves the jobs a dead worker held: the one it was running — the one its claim word
    /// says it started, or the one it timed out on — fails or is retried; every other one never
    /// started and is sent again, first (cancelled instead when the pool terminates).
    fn resolve_jobs(&mut self, slot: SlotIndex, p: &mut Proc, status: ExitStatus) {
        let terminating = self.stopping == Some(StopMode::Terminate);
        let mut jobs = std::mem::take(&mut p.inflight);
        let running = jobs.iter().position(|s| {
            p.timed_out == Some(s.id)
                || claim::state(p.claims.words(), s.word as usize, s.id) == Claim::Started
        });
        if let Some(front) = running.and_then(|i| jobs.remove(i)) {
            let timed_out = p.timed_out == Some(front.id);
            let cancelled = terminating || p.cancelled == Some(front.id);
            let failure = running_job_failure(cancelled, timed_out, status);
            let retry = failure != Failure::Cancelled && front.job.retries > 0;
            if failure != Failure::TimedOut && p.cancelled != Some(front.id) {
                log::warn!(
                    "{}[{slot}]: worker (pid {}) died ({status}) while running a job{}",
                    self.settings.name,
                    p.pid,
                    if retry { "; retrying it" } else { "" }
                );
            }
            if retry {
                let mut job = front.job;
                job.retries -= 1;
                self.counters.retried += 1;
                self.requeue.push(job);
            } else {
                self.complete(front.job.completion, Raw::Failed(failure));
            }
        }
        for sent in jobs {
            if terminating {
                self.complete(sent.job.completion, Raw::Failed(Failure::Cancelled));
            } else {
                self.counters.requeued += 1;
                self.requeue.push(sent.job);
            }
        }
    }

    pub(super) fn job_deadline(&self, p: &Proc) -> Option<Instant> {
        if p.phase.is_killed() {
            return None;
        }
        let front = p.inflight.front()?;
        let per_job = front.job.timeout.unwrap_or(self.settings.job_timeout)?;
        let limit = per_job.saturating_mul(front.job.items.max(1));
        p.running_since.checked_add(limit)
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.stop_deadline;
        if let Some((_, None)) = self.dead_zygote {
            // No pidfd for it (Linux < 5.3): retry the reap shortly.
            let soon = self.now + Duration::from_millis(5);
            next = Some(next.map_or(soon, |n| n.min(soon)));
        }
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for s in &self.slots {
            consider(s.inst.deadline(&self.settings.policy));
            if let Some(p) = &s.proc {
                consider(self.job_deadline(p));
                if matches!(p.reaper, Reaper::PollWaitpid) {
                    consider(Some(self.now + Duration::from_millis(5)));
                }
            }
        }
        next
    }

    pub(super) fn check_timers(&mut self) {
        let now = self.now;
        if let Some((_, None)) = self.dead_zygote {
            self.reap_dead_zygote(Duration::ZERO);
        }
        for i in SlotIndex::all(self.slots.len()) {
            if self.slots[i]
                .inst
                .deadline(&self.settings.policy)
                .is_some_and(|d| d <= now)
            {
                self.apply(i, Event::Tick);
            }
            let Some(p) = self.slots[i].proc.as_ref() else {
                continue;
            };
            if matches!(p.reaper, Reaper::PollWaitpid) {
                self.try_reap(i);
                continue;
            }
            if self.job_deadline(p).is_some_and(|d| d <= now) {
                self.time_out(i);
            }
        }
        if self.stop_deadline.is_some_and(|d| d <= now) {
            self.stop_deadline = None;
            for i in SlotIndex::all(self.slots.len()) {
                if let Some(p) = self.slots[i].proc.take() {
                    log::error!(
                        "{}[{i}]: worker (pid {}) did not go away after SIGKILL; abandoning it",
                        self.settings.name,
                        p.pid
                    );
                    for sent in p.inflight {
                        self.complete(sent.job.completion, Raw::Failed(Failure::Cancelled));
                    }
                    self.slots[i].inst = Instance::new();
                }
            }
        }
    }

    /// The running job of `slot` ran out of time: kill the worker; the job fails `TimedOut`
    /// once the worker is reaped.
    pub(super) fn time_out(&mut self, slot: SlotIndex) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        let front = p.inflight.front().expect("a running job");
        p.timed_out = Some(front.id);
        p.phase = Phase::Killed { expected: true };
        log::warn!(
            "{}[{slot}]: a job ran out of time after {}; killing worker (pid {})",
            self.settings.name,
            crate::policy::fmt_duration(self.now.saturating_duration_since(p.running_since)),
            p.pid
        );
        self.counters.timed_out += 1;
        self.kill(slot);
        // Replaced like a manual restart: a job's timeout is not the worker's crash loop.
        self.apply(slot, Event::Restart);
    }

    /// `SIGKILL` to the worker's process group, through the fork server for forked workers
    /// (it alone knows whether the pid is still theirs).
    pub(super) fn kill(&mut self, slot: SlotIndex) {
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        p.phase = p.phase.kill();
        let pid = p.pid;
        match &mut self.spawner {
            Spawner::Fork { outq, .. } => {
                outq.push_back(ToZygote::kill(pid, libc::SIGKILL));
                self.flush_zygote();
            }
            _ => {
                // We reap only after the pidfd says the worker exited, so normally the pid and
                // its process group are still the worker's; but a host program's `waitpid(-1)`
                // may have reaped it behind our back.
                match &p.reaper {
                    Reaper::Pidfd(fd, _) => {
                        // Probe first: while the worker still holds its pid (a zombie does
                        // too), neither the pid nor its group id can have been reused, so the
                        // group may be signalled; then the worker itself, through the pidfd.
                        match sys::pidfd::pidfd_send_signal(fd.as_fd(), 0) {
                            Ok(()) => {
                                let _ = nix::sys::signal::killpg(
                                    Pid::from_raw(pid),
                                    nix::sys::signal::SIGKILL,
                                );
                                let _ = sys::pidfd::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                            }
                            // Reaped by someone else: nothing of ours to signal.
                            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                            // The call itself is refused (a seccomp filter): by pid, as before.
                            Err(_) => kill_by_pid(pid),
                        }
                    }
                    // No pidfds (kernel before 5.3): by pid, as before them.
                    Reaper::PollWaitpid | Reaper::ForkServer => kill_by_pid(pid),
                }
            }
        }
    }

    /// Starts a worker for `slot`: `Ok(Some(pid))` when it is up now, `Ok(None)` when the fork
    /// server will answer later.
    pub(super) fn spawn(&mut self, slot: SlotIndex) -> std::io::Result<Option<i32>> {
        if let Some(why) = &self.fatal {
            return Err(std::io::Error::other(why.clone()));
        }
        let (ours, theirs) = worker_ends(slot, self.settings.pipeline)?;
        match &mut self.spawner {
            Spawner::Fork {
                zygote,
                outq,
                pending,
                next_token,
                ..
            } => {
                if zygote.is_none() {
                    return Err(std::io::Error::other("the fork server is gone"));
                }
                let token = *next_token;
                *next_token += 1;
                pending.insert(token, ours);
                let TheirEnds {
                    sock,
                    out,
                    err,
                    claims,
                } = theirs;
                outq.push_back(ToZygote::spawn(token, sock.into(), out, err, claims));
                self.flush_zygote();
                Ok(None)
            }
            Spawner::ExecSelf { arg0, args } => {
                let pid = exec_worker(arg0, args, &self.settings.name, slot, theirs)?;
                let pidfd = match sys::pidfd::pidfd_open(pid) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        log::debug!("pidfd_open: {e}; polling waitpid instead");
                        None
                    }
                };
                self.attach(ours, pid, pidfd);
                Ok(Some(pid))
            }
            Spawner::Inert(why) => Err(std::io::Error::other(why.clone())),
        }
    }

    pub(super) fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    /// Takes a started worker into the loop.
    pub(super) fn attach(&mut self, ends: Pending, pid: i32, pidfd: Option<OwnedFd>) {
        let Pending {
            slot,
            claims,
            sock,
            out,
            err,
        } = ends;
        let generation = self.next_gen;
        self.next_gen += 1;
        let mut sock = mio::net::UnixStream::from_std(sock);
        let sock_token = self.token();
        let reg = self.poll.registry();
        if let Err(e) = reg.register(&mut sock, sock_token, Interest::READABLE) {
            log::error!("{}[{slot}]: epoll_ctl: {e}", self.settings.name);
        }
        self.owners
            .insert(sock_token, Owner::Sock { slot, generation });
        for file in [out, err] {
            self.watch_output(slot, file);
        }
        let reaper = self.watch_exit(slot, generation, pidfd);
        self.slots[slot].proc = Some(Proc {
            generation,
            pid,
            sock,
            sock_token,
            sock_open: true,
            reaper,
            out: Vec::new(),
            out_pos: 0,
            write_interest: false,
            inbuf: InBuf::new(64 * 1024),
            inflight: VecDeque::new(),
            claims,
            free_words: (0..self.settings.pipeline as u32).rev().collect(),
            running_since: self.now,
            jobs_done: 0,
            jobs_sent: 0,
            results_since_rss: 0,
            rss_checked: self.now,
            phase: Phase::attached(self.stopping.is_some()),
            timed_out: None,
            cancelled: None,
            init_failed: None,
        });
        self.pids_dirty = true;
    }

    /// Watches a worker's stdout or stderr (not at all if it cannot be registered).
    fn watch_output(&mut self, slot: SlotIndex, file: File) {
        let t = self.token();
        let fd = file.as_raw_fd();
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), t, Interest::READABLE)
            .is_ok()
        {
            let pipe = OutputPipe {
                file,
                framer: LineFramer::new(MAX_LINE),
                slot,
            };
            self.owners.insert(t, Owner::OutputPipe(pipe));
        }
    }

    /// How the exit of a worker just attached will be learnt: its pidfd if it has one that can
    /// be watched, else polling `waitpid` for an exec'd worker, else the fork server.
    fn watch_exit(&mut self, slot: SlotIndex, generation: u64, pidfd: Option<OwnedFd>) -> Reaper {
        let watched = pidfd.and_then(|fd| {
            let t = self.token();
            let raw = fd.as_raw_fd();
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), t, Interest::READABLE)
                .ok()?;
            self.owners.insert(t, Owner::Pidfd { slot, generation });
            Some(Reaper::Pidfd(fd, t))
        });
        match (watched, &self.spawner) {
            (Some(r), _) => r,
            (None, Spawner::ExecSelf { .. }) => Reaper::PollWaitpid,
            (None, _) => Reaper::ForkServer,
        }
    }
}

/// The worker's ends of a worker being started: what it gets as fd 3 (socket), stdout, stderr
/// and fd 4 (claim words).
struct TheirEnds {
    sock: std::os::unix::net::UnixStream,
    out: OwnedFd,
    err: OwnedFd,
    claims: OwnedFd,
}

/// The socket pair, output pipes and claim words of a new worker for `slot`: the pool's ends
/// and the worker's.
fn worker_ends(slot: SlotIndex, pipeline: usize) -> std::io::Result<(Pending, TheirEnds)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let (out_r, out_w) = output_pipe()?;
    let (err_r, err_w) = output_pipe()?;
    let (claims, claims_fd) = SharedWords::create(crate::pool::claim::layout_len(pipeline))?;
    let ours = Pending {
        slot,
        claims,
        sock: ours,
        out: out_r,
        err: err_r,
    };
    let theirs = TheirEnds {
        sock: theirs,
        out: out_w,
        err: err_w,
        claims: claims_fd,
    };
    Ok((ours, theirs))
}

/// Re-executes `/proc/self/exe` as worker `slot` of pool `name`, in its own process group, with
/// `theirs` on fds 3 and 4 and stdout/stderr; its pid.
fn exec_worker(
    arg0: &OsStr,
    args: &[OsString],
    name: &str,
    slot: SlotIndex,
    theirs: TheirEnds,
) -> std::io::Result<i32> {
    use std::os::unix::process::CommandExt;
    let TheirEnds {
        sock,
        out,
        err,
        claims,
    } = theirs;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(arg0)
        .args(args.iter())
        .env(crate::pool::WORKER_ENV, name)
        .env(crate::pool::INDEX_ENV, slot.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    sys::pre_exec(
        &mut cmd,
        ChildSetup {
            parent: std::process::id() as i32,
            pdeathsig: Some(libc::SIGKILL),
            ..ChildSetup::default()
        },
    );
    // The socket goes to 3 first: the claim words must not sit on 3 then.
    let claims = sys::fd::dup_at_least(claims.as_fd(), 5)?;
    sys::fd::pre_exec_fd(&mut cmd, sock.as_raw_fd(), 3);
    sys::fd::pre_exec_fd(&mut cmd, claims.as_raw_fd(), 4);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Dropping `Child` neither waits nor kills: we reap by pid after the pidfd. The command (our
    // copies of the worker's ends) is dropped on return.
    drop(child);
    Ok(pid)
}

/// `SIGKILL` to worker `pid`'s process group and to the worker, by number.
fn kill_by_pid(pid: i32) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
}

/// Reaps our direct child `pid`, waiting at most `wait` — asleep on its pidfd until it exits
/// when there is one, else in 1 ms steps (Linux < 5.3); its status, or `None` if it is still
/// running (or was not ours).
pub(super) fn reap_child(
    pid: i32,
    pidfd: Option<std::os::fd::BorrowedFd<'_>>,
    wait: Duration,
) -> Option<ExitStatus> {
    let until = Instant::now() + wait;
    loop {
        match crate::sys::wait::waitpid_nohang(pid) {
            Ok(Some((_, raw))) => {
                if let Some(status) = ExitStatus::from_wait_status(raw) {
                    return Some(status);
                }
            }
            Err(_) => return None,
            Ok(None) => {}
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match pidfd {
            Some(fd) => {
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Why the job a worker was running when it died has no answer: cancelled (the pool terminates,
/// or its cancellation killed the worker), else timed out if its timeout killed the worker,
/// else the worker's death.
fn running_job_failure(cancelled: bool, timed_out: bool, status: ExitStatus) -> Failure {
    if cancelled {
        Failure::Cancelled
    } else if timed_out {
        Failure::TimedOut
    } else {
        Failure::WorkerDied(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILLED: ExitStatus = ExitStatus::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    };

    #[test]
    fn a_terminating_pool_cancels_the_running_job_even_if_it_timed_out() {
        assert_eq!(running_job_failure(true, true, KILLED), Failure::Cancelled);
        assert_eq!(running_job_failure(true, false, KILLED), Failure::Cancelled);
    }

    #[test]
    fn a_job_whose_timeout_killed_the_worker_timed_out() {
        assert_eq!(running_job_failure(false, true, KILLED), Failure::TimedOut);
    }

    #[test]
    fn otherwise_the_job_failed_with_the_workers_death() {
        let status = ExitStatus::Code(3);
        assert_eq!(
            running_job_failure(false, false, status),
            Failure::WorkerDied(status)
        );
    }
}

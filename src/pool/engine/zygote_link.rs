//! The fork-server link: queueing requests to the fork server, reading its replies (spawned,
//! failed, exited), and handling its death and its reaping.
//!
//! It owns no worker: replies are turned into calls on the worker lifecycle (`attach`,
//! `finalize`) and state-machine events.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use mio::Interest;
use mio::unix::SourceFd;
use nix::unistd::Pid;

use super::workers::reap_child;
use super::{Engine, SlotIndex, Spawner, ZYGOTE_PIDFD};
use crate::lifecycle::Event;
use crate::policy::ExitStatus;
use crate::pool::zygote::{self, FromZygote, Zygote};
use crate::sys::memfd::SharedWords;

/// The pool's ends of a worker being started (forked by the fork server, or exec'd).
pub(crate) struct Pending {
    pub(super) slot: SlotIndex,
    pub(super) claims: SharedWords,
    pub(super) sock: std::os::unix::net::UnixStream,
    pub(super) out: File,
    pub(super) err: File,
}

impl Engine {
    pub(super) fn flush_zygote(&mut self) {
        let Spawner::Fork {
            zygote: Some(z),
            outq,
            writable,
            ..
        } = &mut self.spawner
        else {
            return;
        };
        while let Some(req) = outq.front() {
            match req.send(z.ctl.as_fd()) {
                Ok(()) => {
                    outq.pop_front();
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    *writable = true;
                    return;
                }
                Err(e) => {
                    log::error!(
                        "pool {}: cannot reach the fork server: {e}",
                        self.settings.name
                    );
                    outq.clear();
                    return;
                }
            }
        }
        *writable = false;
    }

    pub(super) fn read_zygote(&mut self) {
        loop {
            let Spawner::Fork {
                zygote: Some(z), ..
            } = &self.spawner
            else {
                return;
            };
            match zygote::receive(z.ctl.as_fd()) {
                Ok(None) => return,
                Ok(Some(reply)) => self.on_reply(reply),
                Err(_) => {
                    self.zygote_died();
                    return;
                }
            }
        }
    }

    pub(super) fn on_reply(&mut self, reply: FromZygote) {
        match reply {
            FromZygote::Spawned { token, pid } => {
                let Spawner::Fork { pending, .. } = &mut self.spawner else {
                    return;
                };
                if let Some(p) = pending.remove(&token) {
                    let slot = p.slot;
                    self.attach(p, pid, None);
                    self.apply(slot, Event::Spawned { pid });
                }
            }
            FromZygote::Failed { token, errno } => {
                let Spawner::Fork { pending, .. } = &mut self.spawner else {
                    return;
                };
                if let Some(p) = pending.remove(&token) {
                    let e = std::io::Error::from_raw_os_error(errno);
                    log::error!("{}[{}]: fork failed: {e}", self.settings.name, p.slot);
                    self.apply(p.slot, Event::SpawnFailed);
                }
            }
            FromZygote::Exited { pid, status } => {
                let slot = self
                    .slots
                    .iter()
                    .position(|s| s.proc.as_ref().is_some_and(|p| p.pid == pid))
                    .map(SlotIndex);
                if let Some(slot) = slot {
                    self.finalize(slot, status);
                }
            }
        }
    }

    /// The fork server is gone: no worker can be started any more, and the live ones died
    /// with it. The pool fails every job from now on.
    pub(super) fn zygote_died(&mut self) {
        let Spawner::Fork {
            zygote, pending, ..
        } = &mut self.spawner
        else {
            return;
        };
        let Some(z) = zygote.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&z.ctl.as_raw_fd()));
        let pending: Vec<SlotIndex> = pending.drain().map(|(_, p)| p.slot).collect();
        // Its socket closes while it exits, before it is a zombie: a reap now may come too
        // early. If so, its pidfd says when; without one (Linux < 5.3), the timers retry.
        let status = reap_child(z.pid, None, Duration::ZERO);
        let why = format!(
            "pool {}: the fork server (pid {}) exited{}; no worker can be started",
            self.settings.name,
            z.pid,
            status.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        if self.stopping.is_none() {
            log::error!("{why}");
            self.fatal.get_or_insert(why);
        }
        // Whatever made the pool fatal before, revive() cannot undo this.
        self.fatal_from_slots = false;
        let Zygote { ctl, pid, pidfd } = z;
        drop(ctl);
        if status.is_none() {
            let pidfd = pidfd.filter(|fd| {
                self.poll
                    .registry()
                    .register(
                        &mut SourceFd(&fd.as_raw_fd()),
                        ZYGOTE_PIDFD,
                        Interest::READABLE,
                    )
                    .is_ok()
            });
            self.dead_zygote = Some((pid, pidfd));
        }
        self.pids_dirty = true;
        for slot in pending {
            self.apply(slot, Event::SpawnFailed);
        }
        for slot in SlotIndex::all(self.slots.len()) {
            if self.slots[slot].proc.is_some() {
                let status = ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                };
                self.finalize(slot, status);
            }
            self.apply(slot, Event::Stop);
        }
    }

    /// Reaps the fork server whose socket closed earlier, waiting at most `wait`.
    pub(super) fn reap_dead_zygote(&mut self, wait: Duration) {
        let Some((pid, pidfd)) = &self.dead_zygote else {
            return;
        };
        let pid = *pid;
        if let Some(status) = reap_child(pid, pidfd.as_ref().map(|fd| fd.as_fd()), wait) {
            log::debug!(
                "pool {}: fork server (pid {pid}) reaped ({status})",
                self.settings.name
            );
        } else if matches!(crate::sys::wait::waitpid_nohang(pid), Ok(None)) {
            return; // not exited yet: its pidfd (or the timers) will say when
        }
        if let Some(fd) = pidfd {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.dead_zygote = None;
    }

    pub(super) fn stop_zygote(&mut self) {
        self.reap_dead_zygote(Duration::from_secs(3));
        if let Spawner::Fork { zygote, .. } = &mut self.spawner
            && let Some(z) = zygote.take()
        {
            let Zygote { ctl, pid, pidfd } = z;
            drop(ctl); // end of stream: it kills and reaps its workers, then exits
            let pidfd = pidfd.as_ref().map(|fd| fd.as_fd());
            if reap_child(pid, pidfd, Duration::from_secs(3)).is_none() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                reap_child(pid, pidfd, Duration::from_secs(3));
            }
            self.pids_dirty = true;
        }
    }
}

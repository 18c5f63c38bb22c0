//! `warden upgrade`: handing the running supervisor to another image of warden across `execve`,
//! in place — same pid, every program untouched.
//!
//! # What moves
//!
//! The pid stays, so every child stays ours; what the new image needs is the state and the
//! descriptors: the notify socket, the control listener, the guard's socket pair, the held
//! sockets, every output pipe (with the line it was reading), the connection that asked, the
//! other control connections, and the subscribers to events, whose streams go on (the new image
//! publishes `upgraded` to them once it has taken over).
//! [`Supervisor::export`] writes them as a versioned [`Handoff`] (the descriptors by number; the
//! caller keeps them open across the exec), and [`Supervisor::import`] rebuilds the table from it
//! in the new image, whose programs were added from the same configuration. Instants are carried
//! as offsets from one reading of `CLOCK_MONOTONIC`, so backoffs, stop deadlines and start
//! timeouts run on as if nothing happened. Health checks start over (first check within one
//! interval); a check under way is cancelled.
//!
//! # When it may happen
//!
//! Only in a quiet moment: not during a shutdown, a rolling restart, a request waiting for its
//! effect, a spawn whose exec is not confirmed yet, or a stop deferred for dependencies; and only
//! when the configuration file is what runs (a pending change would be applied silently by the
//! new image): [`Supervisor::upgrade_blockers`] says what is in the way.
//!
//! # Who does what
//!
//! This module owns the state and the request; checking the new binary, the memfd and the
//! `execve` (and the rollback to the previous binary) are the binary's (`cli/upgrade.rs`).

mod exec;
pub(crate) mod state;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use self::exec::{Inherited, release_signals};
pub use self::state::STATE_FORMAT;
use self::state::{Clock, InstanceRec, PipeRec, ProgramRec, SlotRec, SupState};
use super::Supervisor;
use super::capture::Stream;
use super::table::{ExecState, Hold, InstanceIndex, ProgramId, Slot, SlotId};
use crate::control::{ErrorKind, Reply};
use crate::lifecycle::Instance;

/// What one image of warden hands the next across `execve` (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    /// The state format ([`STATE_FORMAT`] when written by this build).
    pub format: u32,
    /// The version of warden that wrote it.
    pub version: String,
    monotonic_ns: u64,
    sup: SupState,
    /// What the binary hands over besides the supervisor.
    pub daemon: DaemonRec,
}

/// The daemon's part of a [`Handoff`], written and read by the binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonRec {
    /// The locked pidfile: its descriptor (the lock goes with it) and path.
    pub pidfile: Option<(RawFd, PathBuf)>,
    /// Run in the foreground (`warden run`), not detached.
    pub foreground: bool,
    /// Our own service manager's `NOTIFY_SOCKET`.
    pub notify_socket: Option<String>,
    /// Our own service manager's watchdog interval.
    pub watchdog_usec: Option<u64>,
    /// The path the running binary was started from: what `upgrade` executes.
    pub exe: PathBuf,
    /// The running binary, opened at start: executed again if the new image cannot take over.
    pub old_exe: RawFd,
    /// The configuration file.
    pub config: PathBuf,
    /// What the upgrade says of the `[daemon]` settings changed in the file since the running
    /// image read it: applied by the new image, or kept as they run (see `kept`).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The running `[daemon]` settings the new image keeps whatever the file says, since the
    /// instances run where the earlier image put them: `cgroups = "off"`, `pid_namespace`.
    #[serde(default)]
    pub kept: Option<KeptDaemon>,
}

/// `[daemon]` settings carried over by `warden upgrade` as they run (see [`DaemonRec::kept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptDaemon {
    /// `cgroups = "off"`.
    pub cgroups_off: bool,
    /// `pid_namespace`.
    pub pid_namespace: bool,
}

impl Handoff {
    /// Every descriptor the new image needs: kept open across the exec.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = self.sup.fds();
        fds.extend(self.daemon.pidfile.as_ref().map(|(fd, _)| *fd));
        fds.push(self.daemon.old_exe);
        fds
    }

    /// The JSON text the new image reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a handoff, refusing (before anything else) a format this build does not know.
    pub fn from_json(text: &str) -> Result<Handoff, String> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
            version: String,
        }
        let head: Head =
            serde_json::from_str(text).map_err(|e| format!("unreadable state: {e}"))?;
        if head.format != STATE_FORMAT {
            return Err(format!(
                "state format {} (written by warden {}) is not one this warden {} reads ({STATE_FORMAT})",
                head.format,
                head.version,
                env!("CARGO_PKG_VERSION")
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("unreadable state: {e}"))
    }

    /// The descriptor of held socket `name`, if it was handed over.
    pub fn socket_fd(&self, name: &str) -> Option<RawFd> {
        self.sup
            .sockets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| *fd)
    }

    /// The `/metrics` listener, if there was one.
    pub fn metrics_fd(&self) -> Option<RawFd> {
        self.sup.metrics
    }

    /// The control listener, if there was one.
    pub fn control_fd(&self) -> Option<RawFd> {
        self.sup.control
    }

    /// The private notify socket and its name.
    pub fn notify(&self) -> (RawFd, &str) {
        (self.sup.notify.0, &self.sup.notify.1)
    }
}

/// An upgrade asked and not carried out yet.
#[derive(Debug, Default)]
pub(super) struct UpgradeRequest {
    /// Asked: `run` returns [`super::RunExit::Upgrade`] at its next turn.
    pub(super) asked: bool,
    /// The connection that asked (none for `SIGUSR2`), taken out of the control server so that
    /// it survives the exec and the new image answers it.
    pub(super) conn: Option<UnixStream>,
    /// The state was exported (checks under way were cancelled then): if this image runs on,
    /// its health checks start over.
    pub(super) exported: bool,
}

impl Supervisor {
    /// Lets `warden upgrade` and `SIGUSR2` make [`Supervisor::run`] return
    /// [`super::RunExit::Upgrade`] (default off: a library user has no binary to execute).
    pub fn set_upgradable(&mut self, yes: bool) {
        self.upgradable = yes;
    }

    /// Asks for an upgrade from `conn` (none: a signal): refused at once, with what is in the
    /// way, unless the moment is quiet.
    pub(super) fn request_upgrade(&mut self, conn: Option<crate::control::server::ConnId>) {
        let refuse = |s: &mut Supervisor, why: String| match conn {
            Some(c) => {
                if let Some(server) = s.plane.server.as_mut() {
                    let reply = Reply::failed(ErrorKind::Failed, why.clone());
                    server.reply(c, &reply, s.poll.registry());
                }
                log::warn!("upgrade refused: {why}");
            }
            None => log::warn!("SIGUSR2: upgrade refused: {why}"),
        };
        if !self.upgradable {
            return refuse(self, "this supervisor cannot upgrade itself".into());
        }
        let blockers = self.upgrade_blockers();
        if !blockers.is_empty() {
            return refuse(self, format!("not now: {}", blockers.join("; ")));
        }
        let registry = self.poll.registry();
        let stream = conn.and_then(|c| self.plane.server.as_mut()?.detach(c, registry));
        self.plane.upgrade = UpgradeRequest {
            asked: true,
            conn: stream,
            exported: false,
        };
    }

    /// What keeps an upgrade from happening now (nothing: it may).
    pub fn upgrade_blockers(&mut self) -> Vec<String> {
        let mut why = Vec::new();
        if self.shutdown.active() {
            why.push("warden is shutting down".to_string());
        }
        if !self.plane.rollouts.is_empty() {
            why.push("a rolling restart is under way".to_string());
        }
        if !self.plane.waiters.is_empty() {
            why.push("a request is waiting for its effect".to_string());
        }
        if !self.exec_reports.is_empty() {
            why.push("a program is being started".to_string());
        }
        if !self.deps_deferred.is_empty() {
            why.push("a stop waits for its dependencies".to_string());
        }
        if self
            .table
            .programs()
            .iter()
            .any(|p| p.removed && !p.slots().is_empty())
        {
            why.push("a removed program is still stopping".to_string());
        }
        match self.pending_changes() {
            Ok(pending) => {
                if !pending.reload.is_empty() {
                    why.push(format!(
                        "the configuration file differs from what runs ({}): run `warden \
                         reload` first",
                        pending.reload.join(", ")
                    ));
                }
                why.extend(pending.daemon);
            }
            Err(e) => why.push(format!("the configuration file cannot be read: {e}")),
        }
        why
    }

    /// Answers the connection that asked for the upgrade, if any, that it failed for `reason`
    /// (the running image goes on; the binary calls this when it did not execute the new one, or
    /// a rolled-back image calls it after taking over again).
    pub fn upgrade_failed(&mut self, reason: &str) {
        log::error!(
            "upgrade failed: {reason}; this warden {} runs on",
            env!("CARGO_PKG_VERSION")
        );
        let request = std::mem::take(&mut self.plane.upgrade);
        if request.exported {
            self.restart_all_health(Instant::now());
        }
        if let Some(conn) = request.conn {
            answer(
                conn,
                &Reply::failed(ErrorKind::Failed, format!("upgrade failed: {reason}")),
            );
        }
    }

    /// Answers the connection that asked for the upgrade that it is done: `from` is the version
    /// that handed over.
    /// `notes` say what became of the `[daemon]` settings changed in the file (applied by this
    /// image, or kept as they run until warden restarts): logged, and in the answer.
    pub fn upgrade_done(&mut self, from: &str, notes: &[String]) {
        let to = env!("CARGO_PKG_VERSION");
        log::info!(
            "upgraded in place: warden {from} -> {to} (pid {})",
            std::process::id()
        );
        for note in notes {
            log::info!("upgrade: {note}");
        }
        self.events.publish(super::events::Event::Upgraded {
            from: from.to_string(),
            to: to.to_string(),
        });
        let request = std::mem::take(&mut self.plane.upgrade);
        if let Some(conn) = request.conn {
            let result = serde_json::json!({
                "from": from, "to": to, "pid": std::process::id(), "notes": notes,
            });
            answer(conn, &Reply::done(result));
        }
    }

    /// The state to hand over, with the binary's own part: every descriptor it names stays open
    /// in this image too (the caller makes them survive the exec, and takes that back if the
    /// exec fails). Checks under way are cancelled; the guard's pending records are written.
    ///
    /// Errors: an instance in a state that cannot be handed over (never in a quiet moment).
    pub fn export(&mut self, daemon: DaemonRec) -> Result<Handoff, String> {
        self.cancel_all_checks();
        self.plane.upgrade.exported = true;
        self.groups.flush_blocking();
        // What was published goes out before the handover writes what waits for each
        // subscriber; their streams go on in the next image (or here, if the exec fails).
        self.deliver_events();
        let (clock, monotonic_ns) = Clock::export();
        let mut programs = Vec::new();
        for p in self.table.live_programs() {
            programs.push(self.program_rec(p, &clock)?);
        }
        let name_of = |p: ProgramId| self.table[p].def.name.clone();
        let groups = self
            .groups
            .tracked()
            .into_iter()
            .map(|(pgid, (p, id), reaped)| (pgid, name_of(p), id.0, reaped))
            .collect();
        let pipes = self.pipe_recs();
        let registry = self.poll.registry();
        let handover = match self.plane.server.as_mut() {
            Some(server) => server.handover(registry),
            None => Default::default(),
        };
        let sup = SupState {
            notify: (self.notify.as_raw_fd(), self.notify.name().to_string()),
            control: self.plane.server.as_ref().map(|s| s.listener_fd()),
            metrics: self.metrics.as_ref().map(|m| m.listener_fd()),
            guard: self.groups.guard(),
            sockets: self
                .sockets
                .iter()
                .map(|s| (s.name().to_string(), s.raw_fd()))
                .collect(),
            programs,
            groups,
            cgroup: self.cgroup_rec(),
            pipes,
            rollbacks: self.plane.rollbacks,
            started_at: clock.off(self.plane.started_at),
            requester: self.plane.upgrade.conn.as_ref().map(AsRawFd::as_raw_fd),
            conns: handover.conns,
            subscribers: handover.subscribers,
        };
        Ok(Handoff {
            format: STATE_FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            monotonic_ns,
            sup,
            daemon,
        })
    }

    /// Every output pipe, as handed over.
    fn pipe_recs(&mut self) -> Vec<PipeRec> {
        let pipes = self.capture.export();
        pipes
            .into_iter()
            .map(|(fd, ((p, index), pid), stream, partial)| PipeRec {
                fd,
                program: self.table[p].def.name.clone(),
                index: index.0,
                pid,
                stderr: stream == Stream::Stderr,
                partial,
            })
            .collect()
    }

    fn program_rec(&self, p: ProgramId, clock: &Clock) -> Result<ProgramRec, String> {
        let prog = &self.table[p];
        let mut slots = Vec::new();
        for s in prog.slots() {
            let tag = format!("{}[{}]", prog.def.name, s.index);
            let inst = InstanceRec::of(&s.inst.saved(), clock)
                .ok_or_else(|| format!("{tag} is being spawned"))?;
            slots.push(SlotRec {
                id: s.id.0,
                index: s.index.0,
                retiring: s.retiring,
                spec_gen: s.spec_gen,
                inst,
                up_since: s.up_since.map(|t| clock.off(t)),
                status_text: s.status_text.clone(),
                main_pid: s.main_pid,
                launcher_gone: s.launcher_gone,
                exec_failed: match &s.exec {
                    ExecState::Failed(why) => Some(why.clone()),
                    _ => None,
                },
                hold: s.hold.as_ref().map(|h| h.reason.clone()),
                health_error: s.health_error.clone(),
                counters: s.counters,
            });
        }
        Ok(ProgramRec {
            name: prog.def.name.clone(),
            instances: prog.def.instances,
            spec_gen: prog.spec_gen,
            rollbacks: prog.rollbacks.clone(),
            rolled_back: prog.rolled_back.clone(),
            next_id: prog.next_slot_id(),
            slots,
        })
    }

    /// A supervisor for the new image, on the notify socket `h` hands over. Its programs are
    /// then added from the configuration, as at a start, and [`Supervisor::import`] takes over
    /// the running instances.
    pub fn resume(h: &Handoff) -> crate::Result<Supervisor> {
        let (fd, name) = h.notify();
        let fd = owned(fd).map_err(|reason| crate::Error::Invalid {
            what: "state",
            reason,
        })?;
        let notify = super::notify::NotifySocket::adopt(fd, name.to_string());
        Supervisor::with_notify(notify)
    }

    /// Takes over what `h` describes: the instances of the programs added since
    /// [`Supervisor::resume`] (by name), their process groups and the guard, their output pipes,
    /// and the connection that asked (answered by [`Supervisor::upgrade_done`]). Nothing is
    /// started: the instances run on.
    ///
    /// Errors: a program of the state that the configuration does not have.
    pub fn import(&mut self, h: &Handoff) -> Result<(), String> {
        let clock = Clock::import(h.monotonic_ns);
        let mut ids = HashMap::new();
        for rec in &h.sup.programs {
            let p = self
                .table
                .find(&rec.name)
                .map_err(|_| format!("program {} is not in the configuration", rec.name))?;
            ids.insert(rec.name.clone(), p);
        }
        for rec in &h.sup.programs {
            let p = ids[&rec.name];
            let slots = rec.slots.iter().map(|s| slot_of(s, &clock)).collect();
            let prog = &mut self.table[p];
            prog.def.instances = rec.instances;
            prog.spec_gen = rec.spec_gen;
            prog.rollbacks = rec.rollbacks.clone();
            prog.rolled_back = rec.rolled_back.clone();
            self.table.adopt_slots(p, slots, rec.next_id);
        }
        self.import_processes(h, &ids)?;
        self.plane.rollbacks = h.sup.rollbacks;
        self.plane.started_at = clock.at(h.sup.started_at);
        if let Some(fd) = h.sup.requester {
            self.plane.upgrade.conn = Some(UnixStream::from(owned(fd)?));
        }
        let registry = self.poll.registry();
        for (fd, input) in &h.sup.conns {
            let stream = UnixStream::from(owned(*fd)?);
            if let Some(server) = self.plane.server.as_mut() {
                server.adopt_conn(stream, input.clone(), registry);
            }
        }
        for fd in &h.sup.subscribers {
            self.adopt_subscriber(UnixStream::from(owned(*fd)?));
        }
        self.started = true;
        self.restart_all_health(Instant::now());
        // Children that ended during the exec: no SIGCHLD will tell.
        self.reap();
        Ok(())
    }

    /// The guard, the process groups and the output pipes `h` hands over.
    fn import_processes(
        &mut self,
        h: &Handoff,
        ids: &HashMap<String, ProgramId>,
    ) -> Result<(), String> {
        let registry = self.poll.registry();
        if let Some((pid, fd)) = h.sup.guard {
            self.groups.adopt_guard(registry, pid, owned(fd)?);
        }
        for (pgid, name, id, reaped) in &h.sup.groups {
            if let Some(&p) = ids.get(name) {
                self.groups.adopt(*pgid, (p, SlotId(*id)), *reaped);
            }
        }
        self.adopt_cgroups(h.sup.cgroup.as_ref());
        self.adopted_pid_namespace();
        let registry = self.poll.registry();
        for pipe in &h.sup.pipes {
            let Some(&p) = ids.get(&pipe.program) else {
                continue;
            };
            let stream = if pipe.stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let file = std::fs::File::from(owned(pipe.fd)?);
            let owner = ((p, InstanceIndex(pipe.index)), pipe.pid);
            self.capture
                .adopt(
                    &mut self.sources,
                    registry,
                    file,
                    owner,
                    stream,
                    &pipe.partial,
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A slot as `rec` describes it.
fn slot_of(rec: &SlotRec, clock: &Clock) -> Slot {
    let mut slot = Slot::new(SlotId(rec.id), InstanceIndex(rec.index));
    slot.retiring = rec.retiring;
    slot.spec_gen = rec.spec_gen;
    slot.inst = Instance::from_saved(rec.inst.saved(clock));
    slot.up_since = rec.up_since.map(|t| clock.at(t));
    slot.status_text = rec.status_text.clone();
    slot.main_pid = rec.main_pid;
    slot.main_pidfd = rec
        .main_pid
        .and_then(|pid| crate::sys::pidfd::pidfd_open(pid).ok());
    slot.launcher_gone = rec.launcher_gone;
    slot.exec = match &rec.exec_failed {
        Some(why) => ExecState::Failed(why.clone()),
        None => ExecState::Done,
    };
    slot.hold = rec.hold.clone().map(|reason| Hold { reason });
    slot.health_error = rec.health_error.clone();
    slot.counters = rec.counters;
    slot
}

/// A descriptor handed over to this image, now owned here.
fn owned(fd: RawFd) -> Result<OwnedFd, String> {
    crate::sys::fd::adopt_handed_over(fd).map_err(|e| format!("handed-over descriptor: {e}"))
}

/// Writes `reply` on a connection taken out of the control server, within a bound, and closes
/// it.
fn answer(mut conn: UnixStream, reply: &Reply) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = conn.write_all(reply.to_line().as_bytes());
}

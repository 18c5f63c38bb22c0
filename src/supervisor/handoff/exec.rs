//! Crossing `execve` with a [`Handoff`]: the state written to a memfd whose number the next image
//! finds in `WARDEN_STATE_FD`, the previous binary's descriptor in `WARDEN_PREVIOUS_FD` (to go
//! back to if the next image cannot take over, with why in `WARDEN_UPGRADE_FAILED`), every
//! descriptor the state names kept open, and the operator's signals held (blocked) across the
//! exec so that none finds the new image without its handlers.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::Handoff;
use crate::sys::fd::{adopt_handed_over, set_cloexec};

/// The variable naming the memfd that holds the state.
pub const STATE_FD_ENV: &str = "WARDEN_STATE_FD";
/// The variable naming the previous binary's descriptor.
pub const PREVIOUS_FD_ENV: &str = "WARDEN_PREVIOUS_FD";
/// Set when an image of warden executes the previous binary again: why the take-over failed.
pub const FAILED_ENV: &str = "WARDEN_UPGRADE_FAILED";

/// The signals held across the exec: those an operator sends (their default action would end
/// the process between the exec and the new image's handlers).
const HELD: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

fn held() -> SigSet {
    let mut set = SigSet::empty();
    for s in HELD {
        set.add(s);
    }
    set
}

/// Releases the signals held across the exec: call once the new image's handlers are installed
/// (what arrived meanwhile is then delivered to them).
pub fn release_signals() {
    let _ = held().thread_unblock();
}

/// What an image of warden was handed: the state, and the previous binary's descriptor.
#[derive(Debug)]
pub struct Inherited {
    /// The memfd holding the state (handed on again if this image goes back); `None` when
    /// `WARDEN_STATE_FD` named no open descriptor.
    pub state_fd: Option<OwnedFd>,
    /// The previous binary, if handed over.
    pub previous: Option<OwnedFd>,
    /// The state, or why it cannot be read.
    pub state: Result<Handoff, String>,
    /// Set in an image executed again after a failed take-over: why it failed.
    pub failed: Option<String>,
}

impl Handoff {
    /// Executes `exe` with `args` (argv\[1..\]) in this process, handing this state over.
    /// The operator's signals are held (blocked) from just before the exec, and those `signals`
    /// received but not handled yet are raised again, to be handled by the new image. Returns
    /// only if the exec failed, with every descriptor (and signal) as it was.
    pub fn exec(
        &self,
        exe: &Path,
        args: &[OsString],
        previous: RawFd,
        signals: &mut crate::signals::Signals,
    ) -> io::Error {
        let mut run = || -> io::Result<std::convert::Infallible> {
            let state = self.write_memfd()?;
            let env = env(state.as_raw_fd(), previous, None);
            let path = cstring(exe.as_os_str())?;
            cross(self.fds(), &state, previous, || {
                signals.raise_pending_again();
                let argv = argv(exe.as_os_str(), args)?;
                nix::unistd::execve(&path, &argv, &envp(&env)?).map_err(io::Error::from)
            })
        };
        match run() {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    /// Takes descriptor `fd`, which this handoff names, as this image's own (close-on-exec).
    ///
    /// Errors: a number the handoff does not name, or one not open (see
    /// `sys::fd::adopt_handed_over`).
    pub fn take_fd(&self, fd: RawFd) -> io::Result<OwnedFd> {
        if !self.fds().contains(&fd) {
            return Err(io::Error::other(format!(
                "descriptor {fd} was not handed over"
            )));
        }
        adopt_handed_over(fd)
    }

    fn write_memfd(&self) -> io::Result<OwnedFd> {
        let fd =
            nix::sys::memfd::memfd_create(c"warden-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(self.to_json().as_bytes())?;
        file.rewind()?;
        Ok(OwnedFd::from(file))
    }

    /// What this image was handed, if it was started by `warden upgrade` (`None`: a plain
    /// start). The descriptors are taken (close-on-exec again); the variables stay, and are
    /// never passed to programs.
    pub fn inherited() -> Option<Inherited> {
        let fd_of = |var: &str| -> Option<Result<OwnedFd, String>> {
            let v = std::env::var(var).ok()?;
            Some(
                v.parse::<RawFd>()
                    .map_err(|_| format!("{var}={v:?} is not a descriptor"))
                    .and_then(|fd| adopt_handed_over(fd).map_err(|e| format!("{var}: {e}"))),
            )
        };
        let previous = fd_of(PREVIOUS_FD_ENV).and_then(Result::ok);
        let failed = std::env::var(FAILED_ENV).ok();
        let (state_fd, state) = match fd_of(STATE_FD_ENV)? {
            Ok(fd) => {
                let state = read_state(&fd);
                (Some(fd), state)
            }
            Err(e) => (None, Err(e)),
        };
        Some(Inherited {
            state_fd,
            previous,
            state,
            failed,
        })
    }
}

impl Inherited {
    /// Executes the previous binary again after a failed take-over, handing the same state
    /// back (`handoff`: what this image could read of it, whose descriptors it may have taken)
    /// with `reason`. Returns only if that failed (or nothing was handed over to go back to).
    pub fn go_back(&self, handoff: Option<&Handoff>, args: &[OsString], reason: &str) -> io::Error {
        let (Some(state), Some(previous)) = (&self.state_fd, &self.previous) else {
            return io::Error::other("no previous binary or state to go back to");
        };
        let fds = handoff.map(Handoff::fds).unwrap_or_default();
        let env = env(state.as_raw_fd(), previous.as_raw_fd(), Some(reason));
        let run = || {
            cross(fds, state, previous.as_raw_fd(), || {
                let argv = argv(OsStr::new("warden"), args)?;
                nix::unistd::fexecve(previous.as_fd(), &argv, &envp(&env)?).map_err(io::Error::from)
            })
        };
        match run() {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }
}

/// Runs `exec` with `fds`, `state` and `previous` kept open across it and the operator's
/// signals held; undoes both if it returns.
fn cross(
    mut fds: Vec<RawFd>,
    state: &OwnedFd,
    previous: RawFd,
    exec: impl FnOnce() -> io::Result<std::convert::Infallible>,
) -> io::Result<std::convert::Infallible> {
    fds.push(state.as_raw_fd());
    fds.push(previous);
    for &fd in &fds {
        set_cloexec(fd, false)?;
    }
    let before = held()
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(io::Error::from)?;
    let err = match exec() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = before.thread_set_mask();
    for &fd in &fds {
        let _ = set_cloexec(fd, true);
    }
    Err(err)
}

/// This process's environment with the handoff variables set.
fn env(state: RawFd, previous: RawFd, failed: Option<&str>) -> Vec<(OsString, OsString)> {
    let ours = [STATE_FD_ENV, PREVIOUS_FD_ENV, FAILED_ENV];
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !ours.iter().any(|o| k == o))
        .collect();
    env.push((STATE_FD_ENV.into(), state.to_string().into()));
    env.push((PREVIOUS_FD_ENV.into(), previous.to_string().into()));
    if let Some(why) = failed {
        env.push((FAILED_ENV.into(), why.into()));
    }
    env
}

fn read_state(fd: &OwnedFd) -> Result<Handoff, String> {
    let mut file = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    let _ = file.rewind();
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("cannot read the state: {e}"))?;
    let _ = file.rewind();
    Handoff::from_json(&text)
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::other("a NUL byte in an argument"))
}

fn argv(arg0: &OsStr, args: &[OsString]) -> io::Result<Vec<CString>> {
    std::iter::once(arg0)
        .chain(args.iter().map(OsString::as_os_str))
        .map(cstring)
        .collect()
}

fn envp(env: &[(OsString, OsString)]) -> io::Result<Vec<CString>> {
    env.iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect()
}

//! Signal dispositions and the signal mask (`signal.h`): the daemon's reset to defaults, the
//! `SIGPIPE` settings, and reading which signals are not at their default.
//!
//! Like the rest of `sys`, no state and no logging.

use std::io;

use nix::errno::Errno;

use crate::error::Error;

/// Resets the signal mask to empty and every catchable signal's disposition to `SIG_DFL`.
///
/// A daemon inherits both from whoever launched it (a shell that ignores `SIGHUP` under `nohup`,
/// a supervisor that blocks `SIGCHLD`); daemon(7) step 2 and 3 say to reset them.
///
/// The real-time signals the C library reserves for itself (glibc's 32 and 33) make
/// `sigaction(3)` fail with `EINVAL`, yet they can arrive ignored: glibc's `posix_spawn` — what
/// `std::process::Command` uses — sets them to `SIG_IGN` in the child, and an ignored disposition
/// survives `exec`, so any launcher that is a Rust or other multi-threaded glibc program hands
/// them down. Those still ignored are reset with the raw `rt_sigaction` system call; a handler
/// the C library installed itself is left alone (it needs it, e.g. for `setuid` across threads).
pub fn reset_signals() -> Result<(), Error> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| Error::sys("sigprocmask", e))?;
    // Only signals that are ignored or caught need resetting: one read of /proc/self/status
    // instead of a sigaction per signal (this is on the path `warden start` waits for).
    let masks = signal_masks();
    let not_default = masks.map_or(u128::MAX, |(ignored, caught)| ignored | caught);
    let mut reserved = Vec::new();
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL
            || signo == libc::SIGSTOP
            || not_default & (1u128 << (signo - 1)) == 0
        {
            continue;
        }
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags) and
        // `sa_sigaction = SIG_DFL` installs no handler, so no Rust code can be called from it.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signo, &action, std::ptr::null_mut())
        };
        if rc == -1 && Errno::last() == Errno::EINVAL {
            reserved.push(signo);
        }
    }
    if !reserved.is_empty() {
        let (ignored, _) = masks.ok_or_else(|| {
            Error::io(
                "cannot read",
                "/proc/self/status",
                std::io::Error::other("no signal masks"),
            )
        })?;
        reset_reserved_ignored_signals(&reserved, ignored)?;
    }
    Ok(())
}

/// The signals whose disposition is not the default (`SigIgn | SigCgt` of /proc/self/status),
/// bit `n - 1` for signal `n`.
pub fn ignored_or_caught() -> Option<u128> {
    signal_masks().map(|(ignored, caught)| ignored | caught)
}

/// `SigIgn` and `SigCgt` of /proc/self/status: the ignored and caught signals, bit `n - 1` for
/// signal `n`. Arch-neutral, unlike the kernel's `struct sigaction`.
fn signal_masks() -> Option<(u128, u128)> {
    use std::io::Read;
    // Into a stack buffer, not a growing String: the file is about 1.5 KiB, generated whole on
    // the first read.
    let mut buf = [0u8; 8192];
    let mut file = std::fs::File::open("/proc/self/status").ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let status = std::str::from_utf8(&buf[..len]).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u128::from_str_radix(v.trim(), 16).ok())
    };
    Some((field("SigIgn:")?, field("SigCgt:")?))
}

/// The signals whose disposition is not the default (ignored or caught), as numbers; every
/// catchable signal when /proc cannot tell.
pub fn non_default_signals() -> Vec<i32> {
    let mask = ignored_or_caught().unwrap_or(u128::MAX);
    (1..=libc::SIGRTMAX())
        .filter(|&s| s <= 128 && s != libc::SIGKILL && s != libc::SIGSTOP)
        .filter(|&s| mask & (1u128 << (s - 1)) != 0)
        .collect()
}

/// Sets those of `reserved` (signals the C library refuses in `sigaction`) that are currently
/// ignored back to `SIG_DFL`, through the raw system call.
fn reset_reserved_ignored_signals(reserved: &[i32], ignored: u128) -> Result<(), Error> {
    // The kernel's sigset size: one bit per signal, SIGRTMAX of them (64 on most architectures).
    let sigsetsize = (libc::SIGRTMAX() as usize + 1) / 8;
    for &signo in reserved {
        if signo > 128 || ignored & (1u128 << (signo - 1)) == 0 {
            continue;
        }
        // All zeros is `SIG_DFL` with no flags and an empty mask in the kernel's `struct
        // sigaction` on every architecture; the buffer is larger than that struct anywhere.
        let action = [0u64; 8];
        // SAFETY: the kernel reads at most `sizeof(struct sigaction)` (≤ 64 bytes) from
        // `action`, which is valid for that long; no old action is written (null); `SIG_DFL`
        // installs no handler, so no code of ours can run from it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signo,
                action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                sigsetsize,
            )
        };
        if rc == -1 {
            return Err(Error::sys("rt_sigaction", Errno::last()));
        }
    }
    Ok(())
}

/// Sets `SIGPIPE` to `SIG_IGN`, as the Rust runtime does at start-up: a write to a closed pipe
/// then fails with `EPIPE` instead of killing the process.
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler, so no code of ours can run from a signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Puts `SIGPIPE` back to its default, which the Rust runtime set to `SIG_IGN`: for a command
/// whose output goes to a pipe (`warden status | head -1`), a reader that has gone then ends the
/// process quietly, as it does any Unix filter, instead of making `println!` panic.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run from a signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Catches `SIGPIPE` with a handler that does nothing: a write to a closed pipe or socket then
/// fails with `EPIPE`, as Rust code expects, instead of killing the process. Unlike `SIG_IGN`
/// (what the Rust runtime sets at start-up), a caught signal goes back to its default at `exec`,
/// so programs this process starts do not inherit an ignored `SIGPIPE`.
pub fn catch_sigpipe() -> Result<(), Error> {
    // SAFETY: an all-zero `sigaction` is a valid empty value; the handler is an `extern "C"`
    // function that does nothing, so it is trivially async-signal-safe; `sigaction` only reads
    // the struct we pass and writes nothing back (old action pointer is null).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGPIPE, &sa, std::ptr::null_mut())
    };
    if rc == -1 {
        return Err(Error::sys("sigaction(SIGPIPE)", Errno::last()));
    }
    Ok(())
}

/// A signal set with every signal (for blocking all of them around a fork).
pub(super) fn filled_sigset() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the (zeroed) set it is given; no other memory is touched.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

//! The double fork of daemon(7): `fork` → `setsid` → `fork`, the intermediate leaving at once.
//!
//! The intermediate process lives for two system calls, so on x86-64 Linux it is not a copy of
//! the launcher at all: it is a `vfork`-style child (`clone(CLONE_VM | CLONE_VFORK)`) that
//! borrows the launcher's memory while the launcher is suspended, calls `setsid` and `fork`, and
//! leaves with `_exit`. Only the daemon is a real copy. That saves a full copy of the address
//! space and its teardown on the path `warden start` waits for. Elsewhere both forks are real.
//!
//! The intermediate tells the launcher the daemon's pid (or the step that failed and its
//! `errno`) through a [`Report`] in a `MAP_SHARED` page, which works the same whether or not it
//! shares the launcher's memory.

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::error::Error;

/// Who we are after [`detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detached {
    /// The launcher; the daemon has this pid.
    Launcher(Pid),
    /// The daemon: in a new session, not its leader, and its parent has exited.
    Daemon,
}

/// What the intermediate process reports to the launcher.
#[repr(C)]
struct Report {
    /// The daemon's pid, or 0.
    daemon: i32,
    /// The failed step: 0 none, [`STEP_SETSID`] or [`STEP_FORK`].
    step: i32,
    /// `errno` of the failed step.
    errno: i32,
}

const STEP_SETSID: i32 = 1;
const STEP_FORK: i32 = 2;

/// `fork` → `setsid` → `fork`. Returns in the launcher (with the daemon's pid) and in the daemon;
/// the intermediate process never returns. The caller has checked that the process has a single
/// thread.
///
/// Every signal is blocked across the forks (the launcher's mask is restored afterwards; the
/// daemon starts with everything blocked and resets its mask as daemon(7) says).
pub(crate) fn detach() -> Result<Detached, Error> {
    // SAFETY: an anonymous shared mapping of one page; no existing memory is touched and the
    // result is checked before use.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Report>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(Error::sys("mmap", Errno::last()));
    }
    let report = page.cast::<Report>();
    // SAFETY: `report` points at a fresh, writable, suitably aligned page.
    unsafe {
        report.write(Report {
            daemon: 0,
            step: 0,
            errno: 0,
        })
    };

    let all = nix::sys::signal::SigSet::all();
    let old = all
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_SETMASK)
        .map_err(|e| Error::sys("sigprocmask", e));
    let old = match old {
        Ok(o) => o,
        Err(e) => {
            unmap(page);
            return Err(e);
        }
    };

    let first = spawn_intermediate(report);

    if first == 0 {
        // The daemon: the intermediate's `fork` returned 0 here.
        unmap(page);
        return Ok(Detached::Daemon);
    }
    let _ = old.thread_set_mask();
    if first < 0 {
        unmap(page);
        return Err(Error::sys("fork", Errno::from_raw(-first as i32)));
    }
    // The intermediate has exited (vfork) or is about to (fork); reap it.
    let intermediate = Pid::from_raw(first as i32);
    while let Err(Errno::EINTR) = nix::sys::wait::waitpid(intermediate, None) {}
    // SAFETY: the intermediate has exited, so nothing writes the report any more; `report` is
    // valid until `unmap`.
    let Report {
        daemon,
        step,
        errno,
    } = unsafe { report.read() };
    unmap(page);
    match step {
        0 if daemon > 0 => Ok(Detached::Launcher(Pid::from_raw(daemon))),
        STEP_SETSID => Err(Error::sys("setsid", Errno::from_raw(errno))),
        _ => Err(Error::sys("fork", Errno::from_raw(errno))),
    }
}

fn unmap(page: *mut libc::c_void) {
    // SAFETY: `page` is the mapping made in `detach`, of this length, and no reference into it
    // outlives this call.
    unsafe { libc::munmap(page, std::mem::size_of::<Report>()) };
}

/// The intermediate process: `setsid`, `fork`, report, `_exit`. Returns only in the daemon
/// (with 0).
///
/// It may run in a `vfork`-style child that shares the launcher's memory and stack (below the
/// launcher's stack pointer), so it must not allocate, take a lock, unwind or return anywhere
/// but in the daemon: it only makes system calls and writes `report`.
extern "C" fn intermediate(report: *mut Report) -> i64 {
    // SAFETY: `setsid`, `fork` and `_exit` are async-signal-safe and take no pointers; `report`
    // points at the shared page `detach` mapped, alive until the launcher unmaps it after
    // reaping this process; `__errno_location` returns this thread's errno slot.
    unsafe {
        if libc::setsid() == -1 {
            (*report).step = STEP_SETSID;
            (*report).errno = *libc::__errno_location();
            libc::_exit(1);
        }
        let pid = libc::fork();
        if pid == 0 {
            return 0;
        }
        if pid < 0 {
            (*report).step = STEP_FORK;
            (*report).errno = *libc::__errno_location();
            libc::_exit(1);
        }
        (*report).daemon = pid;
        libc::_exit(0)
    }
}

/// Starts the intermediate process. Returns its pid (or `-errno`) in the launcher and 0 in the
/// daemon.
///
/// x86-64: `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` with no new stack, in one `asm!` block, so
/// that the compiler never sees a function that returns twice. The child moves its stack pointer
/// below the launcher's red zone before calling [`intermediate`]; the launcher is suspended by
/// the kernel until the child exits, and its registers are its own. The daemon, a real copy made
/// inside `intermediate`, returns from the call with the launcher's callee-saved registers
/// (preserved by `intermediate`, as the C ABI requires), restores the stack pointer and leaves
/// the block with 0.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn spawn_intermediate(report: *mut Report) -> i64 {
    let flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;
    let ret: i64;
    // SAFETY: see the function's documentation. All signals are blocked (no handler can run on
    // the shared stack); the child writes memory only below the launcher's stack pointer minus
    // the 128-byte red zone, and `report`. Every caller-saved register is declared clobbered
    // (`clobber_abi`), r12 is saved and restored by the block itself, and r13 carries `report`
    // (callee-saved, so `intermediate` preserves it).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov r12, rsp",
            "sub rsp, 128",
            "and rsp, -16",
            "mov rdi, r13",
            "call {intermediate}",
            "mov rsp, r12",
            "2:",
            intermediate = sym intermediate,
            inlateout("rax") libc::SYS_clone => ret,
            in("rsi") 0u64,
            in("rdx") 0u64,
            in("r10") 0u64,
            in("r8") 0u64,
            in("r13") report,
            inlateout("rdi") flags => _,
            out("r12") _,
            clobber_abi("C"),
        );
    }
    ret
}

/// Elsewhere: a plain `fork`; the intermediate is a real copy.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn spawn_intermediate(report: *mut Report) -> i64 {
    // SAFETY: the caller checked the process is single-threaded; the child only calls
    // `intermediate` (async-signal-safe) and returns from it only as the daemon.
    match unsafe { libc::fork() } {
        -1 => -(Errno::last() as i64),
        0 => intermediate(report),
        pid => pid as i64,
    }
}

//! The guard: a tiny process that `SIGKILL`s every worker process group once the supervisor is
//! gone, however it went — including by `SIGKILL`, which no code of the supervisor survives.
//!
//! `PR_SET_PDEATHSIG` reaches only a worker's main process (the kernel clears it on `fork`), so
//! a worker's own children — a shell's commands, a server's helpers — would run on under PID 1
//! after a `SIGKILL` of the supervisor. The guard holds one end of a `SOCK_SEQPACKET` socket pair
//! whose other end only the supervisor holds (close-on-exec, and never inherited by anything
//! that outlives the supervisor: exec'd workers lose it at `exec`, forked function workers and
//! the pool's zygote close every inherited descriptor). The supervisor sends `ADD pgid` when a
//! worker group appears and `REMOVE pgid` once it knows the group is empty; when the socket
//! reads end of file, the supervisor has died, and the guard kills every group still registered
//! and leaves. The supervisor in turn sees the guard die as end of file on its end (and starts
//! another one).
//!
//! **Where it lives.** The guard is started by a double fork, with the supervisor's child
//! subreaper flag off while the intermediate exits, so it is re-parented to PID 1 (or a subreaper
//! above the supervisor) rather than to the supervisor: the supervisor's children remain exactly
//! its workers (what `warden status`, its stray killer and operators rely on). For the same
//! reason it has no `PR_SET_PDEATHSIG`: its parent is the short-lived intermediate, not the
//! supervisor; end of file on the socket is the death notice, and a stronger one (it comes when
//! the *process* is gone, not the thread that forked). It leaves the supervisor's process group,
//! so that a signal to that group (`kill -9 -PGID`) does not take it along, and keeps every
//! signal blocked: only `SIGKILL` and `SIGSTOP` reach it.
//!
//! **Async-signal safety.** The guard is forked without `exec` from a process that may have other
//! threads, so the intermediate and the guard make only raw system calls (`fork`, `setpgid`,
//! `prctl`, `close_range`/`close`, `chdir`, `recv`, `send`, `kill`, `_exit`) on memory prepared
//! before the fork: its table is one bit per possible process group id in an anonymous mapping
//! made by the parent (512 KiB of address space; only pages it writes cost memory).
//!
//! **Limit.** A descendant that leaves its worker's process group (`setsid`, `setpgid`) is not in
//! any registered group and survives a `SIGKILL` of the supervisor.

use super::{errno, filled_sigset};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// A record that registers a process group.
pub const ADD: i32 = 1;
/// A record that forgets a process group (it is empty).
pub const REMOVE: i32 = 2;

/// One more than the largest process id Linux hands out (`PID_MAX_LIMIT` on 64-bit systems).
const PID_LIMIT: usize = 1 << 22;
/// The guard's table, one bit per process group id.
const TABLE_BYTES: usize = PID_LIMIT / 8;
/// The guard's name in `ps` (`comm`), NUL-terminated.
const NAME: &[u8] = b"warden-guard\0";

/// A running guard, as the supervisor sees it.
#[derive(Debug)]
pub struct Guard {
    /// Its pid (not a child of ours: for messages only, never to signal).
    pub pid: i32,
    /// The supervisor's end of the socket pair: non-blocking, close-on-exec. Write records with
    /// [`send_record`]; it becomes readable (end of file) when the guard is gone.
    pub link: OwnedFd,
}

/// Starts a guard (see the module documentation). Blocks only until the intermediate process has
/// forked the guard and exited.
pub fn spawn_guard() -> io::Result<Guard> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)?;
    // The guard's end must block: it sleeps in recv until the next record or end of file.
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let fl = libc::fcntl(theirs.as_raw_fd(), libc::F_GETFL);
        if fl == -1 || libc::fcntl(theirs.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) == -1
        {
            return Err(io::Error::last_os_error());
        }
    }
    let table = Table::new()?;
    // While this process is a subreaper, the guard would be re-parented to it when the
    // intermediate exits; turn that off until the intermediate is reaped.
    let subreaper = nix::sys::prctl::get_child_subreaper().unwrap_or(false);
    if subreaper {
        nix::sys::prctl::set_child_subreaper(false).map_err(io::Error::from)?;
    }
    let forked = fork_intermediate(theirs.as_raw_fd(), &table);
    if let Ok(pid) = forked {
        loop {
            // SAFETY: waitpid on our own child with a null status pointer.
            let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            // ECHILD: someone else reaped it (a waitpid(-1) of the host program): it is gone.
            if rc != -1 || Errno::last() != Errno::EINTR {
                break;
            }
        }
    }
    if subreaper {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
    }
    drop(theirs);
    drop(table);
    forked?;
    // The intermediate's report: the guard's pid, or -errno of its fork.
    let mut report = [0u8; 4];
    // SAFETY: recv into a stack buffer of the given length, on a descriptor we own.
    let n = unsafe {
        libc::recv(
            ours.as_raw_fd(),
            report.as_mut_ptr().cast(),
            report.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n != 4 {
        return Err(io::Error::other(
            "the guard's intermediate process ended without reporting",
        ));
    }
    match i32::from_ne_bytes(report) {
        pid if pid > 0 => Ok(Guard { pid, link: ours }),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

/// Sends one record (`ADD` or `REMOVE` and a process group id) without blocking.
/// `WouldBlock` means the guard is not reading (stopped): keep the record and retry when the
/// link is writable.
pub fn send_record(link: BorrowedFd<'_>, op: i32, pgid: i32) -> io::Result<()> {
    let rec = encode(op, pgid);
    loop {
        // SAFETY: send from a stack buffer of the given length on a borrowed (open) descriptor.
        let n = unsafe {
            libc::send(
                link.as_raw_fd(),
                rec.as_ptr().cast(),
                rec.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n == rec.len() as isize {
            return Ok(());
        }
        let errno = Errno::last();
        if n == -1 && errno == Errno::EINTR {
            continue;
        }
        return Err(if n == -1 {
            errno.into()
        } else {
            io::Error::other("short write to the guard")
        });
    }
}

/// Whether the guard at the other end of `link` is gone (end of file or an error), without
/// blocking or consuming anything but that.
pub fn guard_gone(link: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 8];
    loop {
        // SAFETY: recv into a stack buffer on a borrowed descriptor; MSG_PEEK leaves the data.
        let n = unsafe {
            libc::recv(
                link.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                byte.len(),
                libc::MSG_DONTWAIT | libc::MSG_PEEK,
            )
        };
        match n {
            0 => return true,
            -1 => match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return false,
                _ => return true,
            },
            // The guard never writes; whatever this is, it is not a death notice.
            _ => return false,
        }
    }
}

fn encode(op: i32, pgid: i32) -> [u8; 8] {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&op.to_ne_bytes());
    rec[4..].copy_from_slice(&pgid.to_ne_bytes());
    rec
}

/// The guard's table, mapped before the fork; the parent unmaps its copy on drop.
struct Table(*mut u64);

impl Table {
    fn new() -> io::Result<Table> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched, and the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TABLE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Table(p.cast()))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing in this process uses
        // any more (the children have their own copies).
        unsafe { libc::munmap(self.0.cast(), TABLE_BYTES) };
    }
}

/// Forks the intermediate process with every signal blocked (so that none of the parent's
/// handlers runs in it or in the guard); returns its pid in the parent.
fn fork_intermediate(link: RawFd, table: &Table) -> io::Result<i32> {
    let all = filled_sigset();
    let mut old = filled_sigset();
    // SAFETY: pthread_sigmask with pointers to initialised sigsets on the stack.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    // SAFETY: the child runs `intermediate`, which makes only async-signal-safe system calls on
    // integers and on `table` (mapped before the fork) and leaves through _exit: it never
    // returns into Rust code that could allocate or take a lock.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; we are the freshly forked child.
        unsafe { intermediate(link, table.0) }
    }
    let err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above, from a valid sigset.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid == -1 { Err(err) } else { Ok(pid) }
}

/// The intermediate: forks the guard, reports its pid (or `-errno`) through the socket pair to
/// the parent, and leaves.
///
/// # Safety
/// Only in a freshly forked child; `table` must point to the parent's mapping of
/// [`TABLE_BYTES`].
unsafe fn intermediate(link: RawFd, table: *mut u64) -> ! {
    // SAFETY: fork from a forked child; the grandchild runs only `guard` (see its contract).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked guard; `table` as our caller promised.
        unsafe { guard(link, table) }
    }
    let report: i32 = if pid == -1 { -errno() } else { pid };
    let bytes = report.to_ne_bytes();
    // SAFETY: send from a stack buffer; _exit never returns. Both are async-signal-safe.
    unsafe {
        libc::send(link, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL);
        libc::_exit(0)
    }
}

/// The guard's whole life. Never returns.
///
/// # Safety
/// Only in a freshly forked child; `table` must point to a private mapping of [`TABLE_BYTES`]
/// zeroed bytes.
unsafe fn guard(link: RawFd, table: *mut u64) -> ! {
    // SAFETY: plain system calls on integers and static NUL-terminated strings; each failure is
    // harmless (the guard works without its own group, its name or a changed directory).
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
        libc::chdir(c"/".as_ptr());
    }
    // Nothing of the supervisor's stays open here: not the other end of the link (or end of
    // file would never come), not the pidfile (whose lock says whether warden runs), not its
    // sockets and pipes.
    close_all_but(link);
    let words = TABLE_BYTES / 8;
    let mut used = 0usize;
    loop {
        let mut rec = [0u8; 8];
        // SAFETY: blocking recv into a stack buffer of the given length.
        let n = unsafe { libc::recv(link, rec.as_mut_ptr().cast(), rec.len(), 0) };
        if n == rec.len() as isize {
            let op = i32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let pgid = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if pgid > 0 && (pgid as usize) < PID_LIMIT {
                let (w, bit) = (pgid as usize / 64, 1u64 << (pgid % 64));
                // SAFETY: w < words: the index lies inside the mapping.
                let slot = unsafe { &mut *table.add(w) };
                if op == ADD {
                    *slot |= bit;
                    used = used.max(w + 1);
                } else if op == REMOVE {
                    *slot &= !bit;
                }
            }
            continue;
        }
        if n == -1 && errno() == libc::EINTR {
            continue;
        }
        if n > 0 {
            continue; // not a record of ours; ignore it
        }
        // End of file: every holder of the supervisor's end is gone. An error: nobody to take
        // orders from either.
        break;
    }
    for w in 0..used.min(words) {
        // SAFETY: w < words: inside the mapping.
        let mut bits = unsafe { *table.add(w) };
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // SAFETY: kill takes integers; the group id is positive, so -id names the group.
            unsafe { libc::kill(-((w * 64 + b) as libc::pid_t), libc::SIGKILL) };
        }
    }
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(0) }
}

/// Closes every descriptor but `keep`: `close_range(2)`, or one `close` per number up to the
/// descriptor limit on kernels before 5.9.
fn close_all_but(keep: RawFd) {
    let keep = keep as u32;
    // SAFETY: close_range only closes descriptors and takes integers; this process (the guard)
    // owns every descriptor it has, and no Rust object will use them again.
    let rc = unsafe {
        let low = if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32)
        } else {
            0
        };
        let high = libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
        if low == -1 { low } else { high }
    };
    if rc == -1 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the stack value it is given.
        let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(1 << 20) as u32
        } else {
            1024
        };
        for fd in (0..max).filter(|&fd| fd != keep) {
            // SAFETY: as above; EBADF for numbers not open is harmless.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

//! Unix sockets (`sys/socket.h`): the peer's supplementary groups and receiving descriptors
//! passed with a datagram (`SCM_RIGHTS`).
//!
//! Like the rest of `sys`, no state and no logging.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `SO_PEERGROUPS` (Linux 4.13) where its value is the generic one; elsewhere it is not asked
/// for and callers fall back.
const SO_PEERGROUPS: Option<libc::c_int> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)) {
    Some(59)
} else {
    None
};

/// The supplementary groups the peer of a connected Unix socket had when it connected
/// (`SO_PEERGROUPS`), from the kernel, without asking the name service. `Ok(None)` when this
/// kernel or architecture cannot tell (before Linux 4.13).
pub fn peer_groups(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<Vec<u32>>> {
    use std::os::fd::AsRawFd;
    let Some(opt) = SO_PEERGROUPS else {
        return Ok(None);
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, which is valid and
        // writable for that long, and updates `len`; the descriptor is borrowed, so open.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(Some(groups));
        }
        match Errno::last() {
            // Too small: the kernel said how much it needs (at most NGROUPS_MAX, 65536).
            Errno::ERANGE if needed > groups.len() && needed <= 65_536 => groups.resize(needed, 0),
            Errno::ENOPROTOOPT => return Ok(None),
            e => return Err(e.into()),
        }
    }
}

/// `recvmsg(2)` of one datagram without blocking, taking ownership of the descriptors that came
/// with it (`SCM_RIGHTS`, installed close-on-exec).
///
/// Returns `Ok(None)` when nothing is waiting, `Ok(Some((0, _)))` at end of stream.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel installed this descriptor in our table
                                // for this message just now; nothing else knows its number.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                return Ok(Some((msg.bytes, fds)));
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

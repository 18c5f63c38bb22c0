//! The claim words a pool shares with one worker: a `memfd` mapped `MAP_SHARED` by both
//! ([`SharedWords`]); what the words mean is `crate::pool::claim`'s business.
//!
//! It holds no state but the mapping a [`SharedWords`] owns, and does not log.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A small array of `u64` words in memory shared between the pool and one worker (a `memfd`
/// mapped `MAP_SHARED` by both), used as atomics: see `crate::pool::claim` for what the words
/// mean. Unmapped on drop.
#[derive(Debug)]
pub struct SharedWords {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which are `Sync`; the pointer
// is owned by this value alone (unmapped once, on drop).
unsafe impl Send for SharedWords {}
// SAFETY: as above: shared access goes through atomics only.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// A new zeroed array of `len` words (at least one) and the `memfd` (close-on-exec) that
    /// another process maps with [`SharedWords::map_inherited`].
    pub fn create(len: usize) -> io::Result<(SharedWords, OwnedFd)> {
        let len = len.max(1);
        let bytes = len
            .checked_mul(8)
            .ok_or_else(|| io::Error::other("shared words: size overflows"))?;
        // SAFETY: memfd_create takes a NUL-terminated name (a static C string) and flags.
        let rc = unsafe { libc::memfd_create(c"warden-pool-claims".as_ptr(), libc::MFD_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(rc) };
        // SAFETY: ftruncate on an integer descriptor with an integer length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } == -1 {
            return Err(io::Error::last_os_error());
        }
        let words = Self::map(fd.as_fd(), len)?;
        Ok((words, fd))
    }

    /// Maps the words of a `memfd` made by [`SharedWords::create`] that this process inherited
    /// on descriptor `fd` (a pool worker's descriptor 4), then closes `fd` (the mapping stays).
    /// Checks that `fd` is a regular file of a whole number of words. At most once per process.
    pub fn map_inherited(fd: RawFd) -> io::Result<SharedWords> {
        use std::sync::atomic::{AtomicBool, Ordering};
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        if CLAIMED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(
                "the inherited claim words were already mapped",
            ));
        }
        // SAFETY: fstat writes into a stack value of the right type; fd is just an integer.
        let st = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == -1 {
                return Err(io::Error::last_os_error());
            }
            st
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size <= 0 || st.st_size % 8 != 0 {
            return Err(io::Error::other(format!(
                "descriptor {fd} is not the pool's claim words"
            )));
        }
        // SAFETY: the descriptor is open (fstat succeeded) and, by this function's contract
        // (checked once per process above), owned by nothing else here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(owned.as_fd(), st.st_size as usize / 8)
    }

    fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedWords> {
        // SAFETY: a fresh shared mapping of `len * 8` bytes of `fd` at an address the kernel
        // chooses; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(SharedWords { ptr, len })
    }

    /// The words.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is `len` page-aligned (hence 8-aligned) words, readable and
        // writable, alive as long as `self`; `AtomicU64` has the layout of `u64`, and every
        // access (here and in the other process) is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once; no reference from `words`
        // outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len * 8);
        }
    }
}

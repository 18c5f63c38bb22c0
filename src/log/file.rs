//! The file destination: appended to, and reopened at the same path after logrotate moved it.
//!
//! Writers and [`FileSink::reopen`] take the same lock, and each record is one `write_all` of a
//! complete line under it, so a line lands whole in the old file or in the new one, never split
//! across the two. The file is opened with `O_APPEND` (lines from anyone else appending to the
//! same file are not overwritten) and `O_CLOEXEC` (children never inherit it).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

use super::lock;

/// A log file and the path it is reopened from.
pub(crate) struct FileSink {
    path: PathBuf,
    file: Mutex<File>,
}

impl FileSink {
    /// Opens (creating it if needed) the log file at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        Ok(FileSink {
            path: path.to_path_buf(),
            file: Mutex::new(open_append(path)?),
        })
    }

    /// Writes a complete line under the lock. Errors (a full disk) are ignored: a logger has
    /// nowhere to report them, and the next line may succeed.
    pub(crate) fn write(&self, line: &[u8]) {
        let _ = lock(&self.file).write_all(line);
    }

    /// Opens the path afresh and swaps the new file in under the writers' lock.
    ///
    /// The open happens before taking the lock, so writers are not held up by a slow filesystem,
    /// and a failed open leaves the old file in use.
    pub(crate) fn reopen(&self) -> Result<()> {
        let new = open_append(&self.path)?;
        let old = std::mem::replace(&mut *lock(&self.file), new);
        drop(old);
        Ok(())
    }
}

/// `open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644)`, a regular file or a
/// character device.
fn open_append(path: &Path) -> Result<File> {
    // O_CLOEXEC (a leaked log fd in a child would keep a rotated file alive) and O_NONBLOCK with
    // a type check (a FIFO planted at the path must not hang warden): see `crate::files`.
    crate::files::open_append(path, 0o644, crate::files::Allow::RegularOrTerminal)
        .map_err(|e| Error::io("cannot open log file", path, e))
}

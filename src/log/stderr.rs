//! The stderr destination, for the foreground: journald-aware through `JOURNAL_STREAM`.
//!
//! systemd sets `JOURNAL_STREAM=DEV:INODE` (decimal) for a service whose stdout or stderr is
//! connected to the journal. The variable is inherited by children whose stderr may have been
//! redirected since, so it is trusted only when the device and inode match fd 2 itself
//! (systemd.exec(5), "$JOURNAL_STREAM"). Both are read once, when the sink is built.

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

use super::LineStyle;

/// Writes each record to fd 2 with one `write(2)`.
pub(crate) struct StderrSink {
    style: LineStyle,
}

impl StderrSink {
    /// Reads `JOURNAL_STREAM` and the identity of fd 2 now, and picks the line style.
    pub(crate) fn from_env() -> Self {
        let var = std::env::var("JOURNAL_STREAM").ok();
        Self::new(journal_stream_matches(var.as_deref(), stderr_identity()))
    }

    /// A sink writing journald priority prefixes (`journal`) or timestamped lines.
    pub(crate) fn new(journal: bool) -> Self {
        let style = if journal {
            LineStyle::Journal
        } else {
            LineStyle::Timestamped
        };
        StderrSink { style }
    }

    /// The layout of this sink's lines.
    pub(crate) fn style(&self) -> LineStyle {
        self.style
    }

    /// Writes a complete line. std's stderr is unbuffered, so this is one `write(2)` for any line
    /// the kernel takes whole; errors (a closed stderr, `EPIPE`) are ignored, as there is nowhere
    /// left to report them.
    pub(crate) fn write(&self, line: &[u8]) {
        let _ = std::io::stderr().lock().write_all(line);
    }
}

/// The `(st_dev, st_ino)` of fd 2, or `None` when it is closed.
///
/// Read through a duplicate of the descriptor turned into a `File`, so no `unsafe` is needed.
fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether `JOURNAL_STREAM` (`var`, format `DEV:INODE` in decimal) names the file that fd 2 is
/// (`fd2` = its `(st_dev, st_ino)`). A missing, malformed or stale variable means no.
pub(crate) fn journal_stream_matches(var: Option<&str>, fd2: Option<(u64, u64)>) -> bool {
    let (Some(var), Some(fd2)) = (var, fd2) else {
        return false;
    };
    let Some((dev, ino)) = var.trim().split_once(':') else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>()) {
        (Ok(dev), Ok(ino)) => (dev, ino) == fd2,
        _ => false,
    }
}

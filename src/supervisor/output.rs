//! Captured worker output's storage: the line format and the size-rotated output file.
//!
//! This module owns the line format ([`format_line`]) and the per-program output file
//! ([`RotatingFile`]); line framing is `crate::stream::LineFramer`, shared with the job pool.
//! It does not read pipes, poll or know about workers: `capture.rs` reads each pipe
//! non-blockingly, hands the bytes to that pipe's framer, and writes the lines it gets back.
//! Memory is bounded per pipe by the framer's `max_line`, so a flooding worker is throttled by
//! its full pipe, never by warden's memory.
//!
//! # One writer
//!
//! A [`RotatingFile`] must be the only writer of its path: rotation is a series of renames done
//! between two writes by the same (single-threaded) owner, so no line can land in a file while
//! it is being moved, and no other process races the renames (the multi-process rotation race
//! of supervisord's per-process log files does not exist here).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Formats one captured line for an output file: `"<RFC 3339 UTC, milliseconds> TAG line\n"`,
/// e.g. `2025-01-02T03:04:05.678Z web[0] listening`, where `tag` is `NAME[INDEX]`.
pub fn format_line(tag: &str, line: &str, now: SystemTime) -> String {
    format!("{} {tag} {line}\n", humantime::format_rfc3339_millis(now))
}

/// Formats one captured line for an output file as a JSON object and its newline
/// (`log_format = "json"`: [`crate::log::json`]).
pub fn json_line(source: &crate::log::OutputSource<'_>, line: &str, now: SystemTime) -> String {
    let mut s = crate::log::json::record(now, log::Level::Info, Some(source), line);
    s.push('\n');
    s
}

/// How often lines dropped by a failing output file are summarised in warden's log, at most.
pub(crate) const FAILURE_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A size-rotated output file, the only writer of its path (so rotation never races).
///
/// Rotated files are named `PATH.1` (newest) to `PATH.KEEP` (oldest), like logrotate's default.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    /// Bytes in `file`, tracked by us as its only writer.
    size: u64,
    /// Failed writes, reported once and then summarised (a full disk must not flood the log).
    pub(crate) failures: crate::log::repeat::Repeated,
}

impl RotatingFile {
    /// Opens (creating it with mode 0644 if needed) the file at `path` for appending; it is rotated
    /// before a write would take it past `max_bytes`, keeping `keep` older files (0: the file is
    /// truncated in place instead).
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<RotatingFile> {
        let (file, size) =
            open_append(path).map_err(|e| Error::io("cannot open output file", path, e))?;
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            file,
            size,
            failures: crate::log::repeat::Repeated::new(FAILURE_SUMMARY_EVERY),
        })
    }

    /// Writes one formatted line (already ending in `'\n'`) with one `write_all`.
    ///
    /// Before a write that would take a non-empty file past `max_bytes`, the file is rotated:
    /// `PATH.(keep-1)` → `PATH.keep`, …, `PATH.1` → `PATH.2`, `PATH` → `PATH.1` (a rename onto
    /// `PATH.keep` removes the oldest), then a fresh `PATH` is opened. So every file stays within
    /// `max_bytes` unless a single line is larger. If the rotation fails, its error is returned
    /// and the line is not written; the next write tries again.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => {
                self.size += len;
                Ok(())
            }
            Err(e) => {
                // Part of the line may have been written: learn the real size again.
                if let Ok(meta) = self.file.metadata() {
                    self.size = meta.len();
                }
                Err(e)
            }
        }
    }

    /// Reopens the path, creating it if needed (after an external rotation moved the file away,
    /// e.g. on `SIGUSR1`). On error the old file stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }

    /// The path written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            // The file is opened O_APPEND, so the next write lands at the new end, offset 0.
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        // If someone else already moved PATH away, shifting would push out a kept file for
        // nothing: opening a fresh PATH is all that is left to do.
        if path_exists(&self.path)? {
            for i in (1..self.keep).rev() {
                rename_if_exists(&self.rotated(i), &self.rotated(i + 1))?;
            }
            rename_if_exists(&self.path, &self.rotated(1))?;
        }
        self.reopen()
    }

    /// `PATH.i`.
    fn rotated(&self, i: u32) -> PathBuf {
        let mut name = OsString::from(self.path.as_os_str());
        name.push(format!(".{i}"));
        PathBuf::from(name)
    }
}

/// Opens `path` for appending (O_CLOEXEC, std's default), creating it with mode 0644; returns the
/// file and its current size.
fn open_append(path: &Path) -> io::Result<(File, u64)> {
    // Non-blocking open and a type check: a FIFO planted at the path must not hang the loop,
    // and only a regular file can be rotated.
    let file = crate::files::open_append(path, 0o644, crate::files::Allow::Regular)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn path_exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` (replacing `to`); a missing `from` is not an error (fewer files exist
/// than `keep` so far).
fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn format_line_shape() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(
            format_line("web[3]", "hello world", now),
            "2023-11-14T22:13:20.123Z web[3] hello world\n"
        );
    }

    fn numbered(i: usize) -> String {
        format!("line {i:05} padding\n")
    }

    /// The numbers of the lines in `path`, in order.
    fn read_numbers(path: &Path) -> Vec<usize> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l[5..10].parse().unwrap())
            .collect()
    }

    #[test]
    fn rotation_keeps_the_newest_files_in_order() {
        let dir = TempDir::new("output-rotate");
        let path = dir.join("out.log");
        let max_bytes = 200;
        let mut file = RotatingFile::open(&path, max_bytes, 3).unwrap();
        assert_eq!(file.path(), path);
        let total = 100; // 19 bytes a line, 10 lines a file: rotates 9 times
        for i in 0..total {
            file.write_line(&numbered(i)).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["out.log", "out.log.1", "out.log.2", "out.log.3"]);

        let mut seen = Vec::new();
        for name in ["out.log.3", "out.log.2", "out.log.1", "out.log"] {
            let p = dir.join(name);
            assert!(std::fs::metadata(&p).unwrap().len() <= max_bytes, "{name}");
            seen.extend(read_numbers(&p));
        }
        // Contiguous and in order up to the last line; only whole older files are gone.
        let first = seen[0];
        assert_eq!(seen, (first..total).collect::<Vec<_>>());
        assert_eq!(first, total - 40);
    }

    #[test]
    fn a_line_larger_than_max_bytes_gets_a_file_of_its_own() {
        let dir = TempDir::new("output-big");
        let path = dir.join("out.log");
        let mut file = RotatingFile::open(&path, 10, 2).unwrap();
        let big = format!("{}\n", "b".repeat(30));
        file.write_line("small\n").unwrap();
        file.write_line(&big).unwrap();
        file.write_line("after\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("out.log.2")).unwrap(),
            "small\n"
        );
        assert_eq!(std::fs::read_to_string(dir.join("out.log.1")).unwrap(), big);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn open_appends_to_an_existing_file_and_counts_its_size() {
        let dir = TempDir::new("output-existing");
        let path = dir.join("out.log");
        std::fs::write(&path, "0123456789\n").unwrap();
        let mut file = RotatingFile::open(&path, 20, 1).unwrap();
        file.write_line("abc\n").unwrap(); // 15 bytes: fits
        file.write_line("defghi\n").unwrap(); // would make 22: rotates
        assert_eq!(
            std::fs::read_to_string(dir.join("out.log.1")).unwrap(),
            "0123456789\nabc\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "defghi\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o022, 0, "not group/other writable: {mode:o}");
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = TempDir::new("output-truncate");
        let path = dir.join("out.log");
        let mut file = RotatingFile::open(&path, 50, 0).unwrap();
        for i in 0..7 {
            file.write_line(&numbered(i)).unwrap();
        }
        // 19-byte lines, 2 per file: after 7 lines only the 7th remains.
        assert_eq!(read_numbers(&path), [6]);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn reopen_after_an_external_rename_writes_to_the_new_file() {
        let dir = TempDir::new("output-reopen");
        let path = dir.join("out.log");
        let moved = dir.join("out.log.old");
        let mut file = RotatingFile::open(&path, 1 << 20, 3).unwrap();
        file.write_line("before\n").unwrap();
        std::fs::rename(&path, &moved).unwrap();
        file.write_line("still old\n").unwrap();
        file.reopen().unwrap();
        file.write_line("after\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&moved).unwrap(),
            "before\nstill old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn rotation_after_an_external_move_does_not_shift_kept_files() {
        let dir = TempDir::new("output-moved");
        let path = dir.join("out.log");
        let mut file = RotatingFile::open(&path, 10, 2).unwrap();
        file.write_line("first\n").unwrap();
        file.write_line("second\n").unwrap(); // rotates: out.log.1 = first
        std::fs::rename(&path, dir.join("elsewhere")).unwrap();
        file.write_line("third\n").unwrap(); // PATH is gone: just a fresh PATH
        assert_eq!(
            std::fs::read_to_string(dir.join("out.log.1")).unwrap(),
            "first\n"
        );
        assert!(!dir.join("out.log.2").exists());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
    }

    #[test]
    fn open_error_names_the_path() {
        let dir = TempDir::new("output-error");
        let path = dir.join("missing-dir").join("out.log");
        let err = RotatingFile::open(&path, 10, 1).unwrap_err().to_string();
        assert!(err.contains("cannot open output file"), "{err}");
        assert!(err.contains("missing-dir"), "{err}");
    }
}

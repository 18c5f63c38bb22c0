//! Captured worker output: bytes from a worker's stdout/stderr pipe become tagged, timestamped
//! lines in a size-rotated file.
//!
//! This module owns line framing ([`LineFramer`]), the line format ([`format_line`]) and the
//! per-program output file ([`RotatingFile`]). It does not read pipes, poll or know about workers:
//! the supervisor's event loop reads each pipe non-blockingly, hands the bytes to that pipe's
//! framer, and writes the lines it gets back. Memory is bounded per pipe by the framer's
//! `max_line`, so a flooding worker is throttled by its full pipe, never by warden's memory.
//!
//! **One writer.** A [`RotatingFile`] must be the only writer of its path: rotation is a series of
//! renames done between two writes by the same (single-threaded) owner, so no line can land in a
//! file while it is being moved, and no other process races the renames (the multi-process
//! rotation race of supervisord's per-process log files does not exist here).

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Splits a byte stream into lines, with memory bounded by a maximum line length.
///
/// A line ends at `'\n'`; the `'\n'` and one `'\r'` just before it are not part of the line. A
/// line longer than `max_line` bytes is emitted in pieces of at most `max_line` bytes. Bytes that
/// are not UTF-8 are replaced by U+FFFD: output capture never fails on what a worker prints.
#[derive(Debug)]
pub struct LineFramer {
    /// The unfinished line, at most `max_line` bytes.
    buf: Vec<u8>,
    max_line: usize,
    /// The last byte seen was a `'\r'`, not yet in `buf`: the next byte decides whether it ends
    /// the line (`'\n'`, dropped) or is content. Holding it apart means a CRLF right after a line
    /// of exactly `max_line` bytes does not force a cut and an empty extra line.
    cr: bool,
}

impl LineFramer {
    /// A framer cutting lines at `max_line` bytes (at least 1; e.g. 16 KiB).
    pub fn new(max_line: usize) -> LineFramer {
        LineFramer {
            buf: Vec::new(),
            max_line: max_line.max(1),
            cr: false,
        }
    }

    /// Feeds bytes read from the stream, in any chunking; calls `emit` once per complete line
    /// (without its `'\n'` and a `'\r'` before it) and once per `max_line` piece of an overlong
    /// line.
    ///
    /// Pieces are cut on a UTF-8 character boundary when one exists in the last 4 bytes of the
    /// piece, so a character is split only in input that is not UTF-8 anyway.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&str)) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let segment = &data[..i];
            data = &data[i + 1..];
            if std::mem::take(&mut self.cr) && !segment.is_empty() {
                // The held '\r' was followed by more content: it is part of the line.
                self.append(b"\r", emit);
            }
            let content = segment.strip_suffix(b"\r").unwrap_or(segment);
            if self.buf.is_empty() && content.len() <= self.max_line {
                // The common case: a whole line within one read, emitted without copying.
                emit_lossy(content, emit);
            } else {
                self.append(content, emit);
                emit_lossy(&self.buf, emit);
                self.buf.clear();
            }
        }
        if !data.is_empty() {
            if std::mem::take(&mut self.cr) {
                self.append(b"\r", emit);
            }
            let content = match data.strip_suffix(b"\r") {
                Some(content) => {
                    self.cr = true;
                    content
                }
                None => data,
            };
            self.append(content, emit);
        }
    }

    /// End of stream: emits the final unterminated line, if any, and leaves the framer empty.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        // A '\r' at the very end is dropped like one before '\n'.
        if std::mem::take(&mut self.cr) || !self.buf.is_empty() {
            emit_lossy(&self.buf, emit);
            self.buf.clear();
        }
    }

    /// Bytes of an unfinished line held in memory: never more than `max_line`.
    ///
    /// A `'\r'` that may end the line is held as a flag, not counted here, until the next byte
    /// shows whether it does.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Appends line content (no `'\n'`), emitting full pieces whenever the content would take the
    /// buffer past `max_line`. A piece is cut only when a further content byte exists, so a line
    /// of exactly `max_line` bytes stays whole.
    fn append(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(&str)) {
        while self.buf.len() + bytes.len() > self.max_line {
            let room = self.max_line - self.buf.len();
            self.buf.extend_from_slice(&bytes[..room]);
            bytes = &bytes[room..];
            let cut = self.cut_point(bytes[0]);
            emit_lossy(&self.buf[..cut], emit);
            self.buf.drain(..cut);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Where to cut the full buffer, given the byte that follows it: the last position in the
    /// final 4 bytes that does not fall inside a UTF-8 character (a character is at most 4 bytes,
    /// so one exists there in valid UTF-8), else `max_line`.
    fn cut_point(&self, next: u8) -> usize {
        let lowest = self.max_line.saturating_sub(3).max(1);
        (lowest..=self.max_line)
            .rev()
            .find(|&k| {
                let byte = if k == self.max_line {
                    next
                } else {
                    self.buf[k]
                };
                !is_continuation(byte)
            })
            .unwrap_or(self.max_line)
    }
}

/// Whether `byte` continues a multi-byte UTF-8 character (`0b10xx_xxxx`).
fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

fn emit_lossy(bytes: &[u8], emit: &mut dyn FnMut(&str)) {
    let line: Cow<'_, str> = String::from_utf8_lossy(bytes);
    emit(&line);
}

/// Formats one captured line for an output file: `"<RFC 3339 UTC, milliseconds> TAG line\n"`,
/// e.g. `2025-01-02T03:04:05.678Z web[0] listening`, where `tag` is `NAME[INDEX]`.
pub fn format_line(tag: &str, line: &str, now: SystemTime) -> String {
    format!("{} {tag} {line}\n", humantime::format_rfc3339_millis(now))
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
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    /// xorshift64: deterministic chunk sizes without the `rand` crate.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let dir = std::env::temp_dir().join(format!(
                "warden-output-{name}-{}-{n}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Frames `data` fed in the given chunk sizes (cycled), then finishes; checks the memory
    /// bound after every push.
    fn frame_chunked(
        max_line: usize,
        data: &[u8],
        mut chunk: impl FnMut() -> usize,
    ) -> Vec<String> {
        let mut framer = LineFramer::new(max_line);
        let mut lines = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = chunk().clamp(1, rest.len());
            framer.push(&rest[..n], &mut |l| lines.push(l.to_owned()));
            assert!(framer.pending() <= max_line);
            rest = &rest[n..];
        }
        framer.finish(&mut |l| lines.push(l.to_owned()));
        assert_eq!(framer.pending(), 0);
        lines
    }

    fn frame(max_line: usize, data: &[u8]) -> Vec<String> {
        frame_chunked(max_line, data, || usize::MAX)
    }

    /// Input mixing short, empty, CRLF, long, multi-byte and invalid lines.
    fn mixed_input() -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..200 {
            match i % 7 {
                0 => data.extend_from_slice(format!("line {i}\n").as_bytes()),
                1 => data.extend_from_slice(b"\n"),
                2 => data.extend_from_slice(format!("crlf {i}\r\n").as_bytes()),
                3 => data.extend_from_slice("é€😀".repeat(i % 13).as_bytes()),
                4 => data.extend_from_slice(b"bad \xff\xfe\xc3 bytes\n"),
                5 => data.extend_from_slice("x".repeat(i).as_bytes()),
                _ => data.extend_from_slice(b"\r\r\n"),
            }
        }
        data.extend_from_slice(b"unterminated tail");
        data
    }

    #[test]
    fn chunking_does_not_change_lines() {
        let data = mixed_input();
        for max_line in [1, 2, 3, 4, 5, 7, 16, 64, 1024] {
            let whole = frame(max_line, &data);
            let bytewise = frame_chunked(max_line, &data, || 1);
            assert_eq!(whole, bytewise, "max_line {max_line}, byte by byte");
            let mut prng = Prng(0x9E37_79B9_7F4A_7C15 ^ max_line as u64);
            for _ in 0..20 {
                let random = frame_chunked(max_line, &data, || 1 + prng.below(97));
                assert_eq!(whole, random, "max_line {max_line}, random chunks");
            }
        }
    }

    #[test]
    fn lines_are_split_on_newline_and_crlf() {
        assert_eq!(
            frame(100, b"one\ntwo\r\n\r\nthree\r\r\nfour\rfive\n"),
            ["one", "two", "", "three\r", "four\rfive"]
        );
        // A '\r' split from its '\n' across pushes still goes.
        assert_eq!(frame_chunked(100, b"a\r\nb\r\n", || 2), ["a", "b"]);
    }

    #[test]
    fn crlf_after_a_line_of_exactly_max_line_adds_nothing() {
        let line = "y".repeat(8);
        let data = format!("{line}\r\n{line}\n");
        assert_eq!(
            frame_chunked(8, data.as_bytes(), || 1),
            [line.as_str(), line.as_str()]
        );
        assert_eq!(frame(8, data.as_bytes()), [line.as_str(), line.as_str()]);
    }

    #[test]
    fn long_lines_are_cut_at_max_line() {
        let line = "a".repeat(25);
        assert_eq!(
            frame(10, format!("{line}\nnext\n").as_bytes()),
            [
                "a".repeat(10),
                "a".repeat(10),
                "a".repeat(5),
                "next".to_owned()
            ]
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        for ch in ['é', '€', '😀'] {
            for offset in 0..12 {
                let line = format!("{}{}{}", "a".repeat(offset), ch.to_string().repeat(5), "z");
                let pieces = frame(10, format!("{line}\n").as_bytes());
                assert!(pieces.len() > 1, "{line:?}");
                for piece in &pieces {
                    assert!(piece.len() <= 10, "{piece:?}");
                    assert!(!piece.contains('\u{FFFD}'), "{line:?} cut inside a char");
                }
                assert_eq!(pieces.concat(), line);
            }
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_and_later_lines_survive() {
        assert_eq!(
            frame(100, b"ok\xff\xfebad\n\xc3\nnext \xc3\xa9\n"),
            ["ok\u{FFFD}\u{FFFD}bad", "\u{FFFD}", "next é"]
        );
    }

    #[test]
    fn finish_emits_the_partial_line() {
        let mut framer = LineFramer::new(100);
        let mut lines = Vec::new();
        framer.push(b"done\npart", &mut |l| lines.push(l.to_owned()));
        assert_eq!(lines, ["done"]);
        assert_eq!(framer.pending(), 4);
        framer.finish(&mut |l| lines.push(l.to_owned()));
        assert_eq!(lines, ["done", "part"]);
        // Nothing pending: finish emits nothing.
        framer.finish(&mut |l| lines.push(l.to_owned()));
        assert_eq!(lines.len(), 2);
        assert_eq!(frame(100, b"cr at end\r"), ["cr at end"]);
    }

    #[test]
    fn memory_is_bounded_by_max_line() {
        let max_line = 64;
        let data: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut prng = Prng(42);
        let pieces = frame_chunked(max_line, &data, || 1 + prng.below(5000));
        assert!(pieces.iter().all(|p| p.len() <= max_line));
        assert_eq!(pieces.concat().as_bytes(), &data[..]);
    }

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
        let dir = TempDir::new("rotate");
        let path = dir.join("out.log");
        let max_bytes = 200;
        let mut file = RotatingFile::open(&path, max_bytes, 3).unwrap();
        assert_eq!(file.path(), path);
        let total = 100; // 19 bytes a line, 10 lines a file: rotates 9 times
        for i in 0..total {
            file.write_line(&numbered(i)).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(&dir.0)
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
        let dir = TempDir::new("big");
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
        let dir = TempDir::new("existing");
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
        let dir = TempDir::new("truncate");
        let path = dir.join("out.log");
        let mut file = RotatingFile::open(&path, 50, 0).unwrap();
        for i in 0..7 {
            file.write_line(&numbered(i)).unwrap();
        }
        // 19-byte lines, 2 per file: after 7 lines only the 7th remains.
        assert_eq!(read_numbers(&path), [6]);
        let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn reopen_after_an_external_rename_writes_to_the_new_file() {
        let dir = TempDir::new("reopen");
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
        let dir = TempDir::new("moved");
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
        let dir = TempDir::new("error");
        let path = dir.join("missing-dir").join("out.log");
        let err = RotatingFile::open(&path, 10, 1).unwrap_err().to_string();
        assert!(err.contains("cannot open output file"), "{err}");
        assert!(err.contains("missing-dir"), "{err}");
    }
}

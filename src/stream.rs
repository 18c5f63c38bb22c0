//! Byte streams from non-blocking descriptors: the one read loop, and line framing.
//!
//! Every reader of a non-blocking descriptor in warden — the supervisor's output pipes, the job
//! pool's worker sockets and output pipes, the control server's connections — goes through
//! [`read_nonblocking`], so that `EAGAIN`, `EINTR`, end of stream and errors mean the same
//! everywhere and every reader is budgeted the same way (a flooding peer cannot hold the event
//! loop). [`LineFramer`] turns captured output into lines with bounded memory.
//!
//! This module is a leaf: it does no polling or logging, and knows nothing of workers or
//! connections.

use std::borrow::Cow;
use std::io;
use std::ops::ControlFlow;

/// How a [`read_nonblocking`] loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The descriptor has nothing more for now (`EAGAIN`): wait for the next readiness event.
    Drained,
    /// The caller's `on_read` stopped the loop (its budget is spent, or it wants to act first):
    /// data may remain, and an edge-triggered poll will not say so again — come back by itself.
    Paused,
    /// End of stream, or a read error, which ends the stream just the same.
    Closed,
}

/// Reads until the descriptor would block, the stream ends, or `on_read` breaks.
///
/// `read` does one `read(2)` (into whatever buffer the caller keeps in `state`) and `on_read`
/// consumes the `n > 0` bytes it returned; both get `state`, so that the buffer and what consumes
/// it can be one borrow. `EINTR` is retried; any other error ends the stream like end of file
/// (a pipe or socket that fails to read has nothing more to give).
pub(crate) fn read_nonblocking<S: ?Sized>(
    state: &mut S,
    mut read: impl FnMut(&mut S) -> io::Result<usize>,
    mut on_read: impl FnMut(&mut S, usize) -> ControlFlow<()>,
) -> ReadEnd {
    loop {
        match read(state) {
            Ok(0) => return ReadEnd::Closed,
            Ok(n) => {
                if on_read(state, n).is_break() {
                    return ReadEnd::Paused;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ReadEnd::Closed,
        }
    }
}

/// Splits a byte stream into lines, with memory bounded by a maximum line length.
///
/// A line ends at `'\n'`; the `'\n'` and one `'\r'` just before it are not part of the line. A
/// line longer than `max_line` bytes is emitted in pieces of at most `max_line` bytes. Bytes that
/// are not UTF-8 are replaced by U+FFFD: output capture never fails on what a worker prints.
#[derive(Debug)]
pub(crate) struct LineFramer {
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

    /// The unfinished line as bytes (with a held `'\r'`), leaving the framer empty: pushed into
    /// a new framer, they make it continue where this one stopped (`warden upgrade`).
    pub fn carry(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.cr) {
            out.push(b'\r');
        }
        out
    }

    /// Bytes of an unfinished line held in memory: never more than `max_line`.
    ///
    /// A `'\r'` that may end the line is held as a flag, not counted here, until the next byte
    /// shows whether it does.
    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A scripted descriptor: each `read` returns the next result.
    struct Script(VecDeque<io::Result<Vec<u8>>>);

    impl Script {
        fn new(steps: Vec<io::Result<&[u8]>>) -> Script {
            Script(steps.into_iter().map(|r| r.map(<[u8]>::to_vec)).collect())
        }

        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                Some(Ok(bytes)) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    Ok(bytes.len())
                }
                Some(Err(e)) => Err(e),
                None => panic!("read after the script ended"),
            }
        }
    }

    fn err(kind: io::ErrorKind) -> io::Result<&'static [u8]> {
        Err(io::Error::from(kind))
    }

    /// Runs the loop over `steps`, pausing once `budget` bytes are read; returns how it ended,
    /// the bytes, and how many steps were left unread.
    fn run(steps: Vec<io::Result<&[u8]>>, budget: usize) -> (ReadEnd, Vec<u8>, usize) {
        let mut state = (Script::new(steps), [0u8; 16], Vec::new());
        let end = read_nonblocking(
            &mut state,
            |(s, buf, _)| s.read(buf),
            |(_, buf, got), n| {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= budget {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        let left = state.0.0.len();
        (end, state.2, left)
    }

    #[test]
    fn would_block_drains_and_keeps_what_was_read() {
        let steps: Vec<io::Result<&[u8]>> =
            vec![Ok(b"ab"), Ok(b"c"), err(io::ErrorKind::WouldBlock)];
        let (end, got, _) = run(steps, 99);
        assert_eq!((end, got.as_slice()), (ReadEnd::Drained, &b"abc"[..]));
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let steps = vec![
            err(io::ErrorKind::Interrupted),
            Ok(b"x"),
            err(io::ErrorKind::WouldBlock),
        ];
        let (end, got, _) = run(steps, 99);
        assert_eq!((end, got.as_slice()), (ReadEnd::Drained, &b"x"[..]));
    }

    #[test]
    fn end_of_stream_and_errors_close() {
        let steps: Vec<io::Result<&[u8]>> = vec![Ok(b"x"), Ok(b"")];
        assert_eq!(run(steps, 99).0, ReadEnd::Closed);
        assert_eq!(
            run(vec![err(io::ErrorKind::ConnectionReset)], 99).0,
            ReadEnd::Closed
        );
    }

    #[test]
    fn a_spent_budget_pauses_without_reading_further() {
        let steps: Vec<io::Result<&[u8]>> = vec![Ok(b"abcd"), Ok(b"efgh"), Ok(b"never")];
        let (end, got, left) = run(steps, 8);
        assert_eq!(
            (end, got.as_slice(), left),
            (ReadEnd::Paused, &b"abcdefgh"[..], 1)
        );
    }

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
}

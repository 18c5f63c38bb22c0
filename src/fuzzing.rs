//! Entry points for the fuzz targets and for the tests that replay what they found. **Not part
//! of warden's API**: hidden from the documentation, with no stability promise; anything here
//! may change or go in any release.
//!
//! The fuzz targets (`fuzz/fuzz_targets/`, run with `scripts/fuzz`) and the stable tests that
//! replay their corpora and findings (`tests/it/fuzz_regressions.rs`) and check round trips
//! (`tests/it/properties.rs`) must drive the *same* code the daemon runs, not a copy. Three of the
//! four parsers are public already and are called directly:
//! [`Config::parse`](crate::config::Config::parse),
//! [`Request::parse_line`](crate::control::Request::parse_line) and
//! [`NotifyMessage::parse`]. The pool's wire
//! format is crate-private (`pool::frame`), so [`pool`] wraps it thinly: each function here
//! calls the crate's own frame functions and adds nothing but the plumbing a test needs. Nothing
//! here parses or encodes on its own: a finding must be a finding in the daemon's code.
//!
//! What a target *asserts* lives here too, in one function per target ([`config`],
//! [`control`], [`notify`], [`pool::stream`]): a fuzz target is that function and nothing else,
//! and the regression test replays every saved input through the same function. Each one feeds
//! arbitrary bytes to the real parser and panics when the parser panics or when its answer
//! breaks a rule the daemon relies on (a diagnostic without a place, a request that does not
//! read back as itself, a frame longer than the bytes received).

use std::path::Path;

/// The path the config target pretends its text came from.
pub const CONFIG_PATH: &str = "/etc/warden/fuzz.toml";

/// The config reader on arbitrary bytes: [`Config::parse`](crate::config::Config::parse) on
/// any UTF-8 text (the file reader refuses other bytes first), and
/// [`locate`](crate::config::locate), which `warden stop` and `status` run on a file with errors.
///
/// Asserts: a valid file has valid program names and commands; an invalid one gets at least one
/// diagnostic, each with a non-empty message and a line and column inside the text, and each
/// naming its key unless the file is not even TOML.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(CONFIG_PATH);
    let _ = crate::config::locate(path, text);
    match crate::config::Config::parse(path, text) {
        Ok(c) => {
            for p in &c.programs {
                assert!(crate::config::valid_program_name(&p.name), "{:?}", p.name);
                assert!(
                    p.exec.command.first().is_some_and(|a| !a.is_empty()),
                    "{:?}",
                    p.exec.command
                );
            }
        }
        Err(crate::Error::Config(d)) => {
            assert!(!d.is_empty(), "an error without a diagnostic");
            let lines = text.split('\n').count();
            // Only a TOML syntax error may leave the key out; everything else names its key.
            let syntax_ok = toml::de::DeTable::parse_recoverable(text).1.is_empty();
            for diag in d.iter() {
                assert!(!syntax_ok || !diag.key.is_empty(), "no key: {diag:?}");
                assert!(!diag.message.is_empty(), "{diag:?}");
                assert_eq!(diag.file, path, "{diag:?}");
                assert!(
                    diag.line <= lines,
                    "line {} of {lines}: {diag:?}",
                    diag.line
                );
                assert_eq!(diag.line == 0, diag.column == 0, "{diag:?}");
                assert!(!diag.to_string().is_empty());
            }
        }
        Err(e) => panic!("Config::parse failed with something else than diagnostics: {e}"),
    }
}

/// The control request parser on arbitrary bytes:
/// [`Request::parse_line`](crate::control::Request::parse_line), as the server calls it for
/// every line.
///
/// Asserts: an accepted request speaks version 1, has every field of the line with the value
/// written there, and reads back, from the line the client would write for it, as an equal
/// request; a refusal says why.
pub fn control(data: &[u8]) {
    use crate::control::{Request, VERSION};
    match Request::parse_line(data) {
        Ok(r) => {
            assert_eq!(r.v, VERSION);
            let line = serde_json::to_string(&r).expect("a Request serializes");
            let back = Request::parse_line(line.as_bytes())
                .unwrap_or_else(|e| panic!("{line} does not read back: {e}"));
            assert_eq!(back, r, "{line}");
            // What was accepted means what it says: every field of the line is in the request,
            // with the same value (serde would also take a variant's index for its name).
            let sent: serde_json::Value = serde_json::from_slice(data).expect("accepted JSON");
            let meant: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            let (Some(sent), Some(meant)) = (sent.as_object(), meant.as_object()) else {
                panic!(
                    "a request that is not an object: {}",
                    String::from_utf8_lossy(data)
                );
            };
            for (k, v) in sent {
                assert_eq!(meant.get(k), Some(v), "{k:?} was read as {line}");
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

/// One parsed notify datagram (the supervisor's `notify` module is internal; the property tests
/// read its fields through this path).
pub use crate::supervisor::notify::NotifyMessage;

/// The notify datagram parser on arbitrary bytes:
/// [`NotifyMessage::parse`], as the supervisor
/// calls it for every datagram.
///
/// Asserts: the sender's pid is kept, `STATUS=` is cut at 256 characters, `MAINPID=` is a pid
/// above 1, and a flag is set only when its line is in the datagram.
pub fn notify(data: &[u8]) {
    let m = NotifyMessage::parse(4242, data);
    assert_eq!(m.pid, 4242);
    if let Some(s) = &m.status {
        assert!(s.chars().count() <= 256, "{} characters", s.chars().count());
    }
    if let Some(p) = m.main_pid {
        assert!(p > 1, "MAINPID {p}");
    }
    let has = |line: &[u8]| data.windows(line.len()).any(|w| w == line);
    assert!(!m.ready || has(b"READY=1"));
    assert!(!m.stopping || has(b"STOPPING=1"));
    assert!(!m.watchdog || has(b"WATCHDOG=1"));
    assert!(!m.watchdog_trigger || has(b"WATCHDOG=trigger"));
}

/// The pool's wire format, as the pool and its workers read and write it.
pub mod pool {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::pool::frame::{self, InBuf};

    /// Bytes before every frame body: the body length (`u32` LE) and the kind.
    pub const HEADER: usize = frame::HEADER;
    /// The largest body a reader accepts.
    pub const MAX_BODY: usize = frame::MAX_BODY;
    /// Pool → worker: one job.
    pub const JOB: u8 = frame::JOB;
    /// Pool → worker: a chunk of jobs.
    pub const CHUNK: u8 = frame::CHUNK;
    /// Pool → worker: finish and exit.
    pub const SHUTDOWN: u8 = frame::SHUTDOWN;
    /// Worker → pool: one job's outcome.
    pub const RESULT: u8 = frame::RESULT;
    /// Worker → pool: a chunk's outcomes.
    pub const CHUNK_RESULT: u8 = frame::CHUNK_RESULT;

    /// What a worker reports for one job; the public twin of the crate's `Wire`, converted
    /// variant by variant (same order, so the same encoding).
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub enum Outcome<O, E> {
        /// The handler returned `Ok`.
        Ok(O),
        /// The handler returned `Err`.
        Err(E),
        /// The handler panicked.
        Panicked(String),
        /// A (de)serialization failure on the worker's side.
        Codec(String),
    }

    impl<O, E> From<frame::Wire<O, E>> for Outcome<O, E> {
        fn from(w: frame::Wire<O, E>) -> Self {
            match w {
                frame::Wire::Ok(o) => Outcome::Ok(o),
                frame::Wire::Err(e) => Outcome::Err(e),
                frame::Wire::Panicked(m) => Outcome::Panicked(m),
                frame::Wire::Codec(m) => Outcome::Codec(m),
            }
        }
    }

    impl<O, E> From<Outcome<O, E>> for frame::Wire<O, E> {
        fn from(w: Outcome<O, E>) -> Self {
            match w {
                Outcome::Ok(o) => frame::Wire::Ok(o),
                Outcome::Err(e) => frame::Wire::Err(e),
                Outcome::Panicked(m) => frame::Wire::Panicked(m),
                Outcome::Codec(m) => frame::Wire::Codec(m),
            }
        }
    }

    /// A job frame as the pool writes it: header, `id`, postcard(`job`).
    pub fn job_frame<J: Serialize>(id: u64, job: &J) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; frame::HEADER];
        buf.extend_from_slice(&id.to_le_bytes());
        frame::encode_into(job, &mut buf)?;
        frame::patch_header(&mut buf, 0, frame::JOB);
        Ok(buf)
    }

    /// A chunk frame as the pool writes it: header, `id`, item count, postcard(`jobs`).
    pub fn chunk_frame<J: Serialize>(id: u64, jobs: &[J]) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; frame::HEADER];
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&(jobs.len() as u32).to_le_bytes());
        frame::encode_into(jobs, &mut buf)?;
        frame::patch_header(&mut buf, 0, frame::CHUNK);
        Ok(buf)
    }

    /// A result frame as a worker writes it: header, `id`, postcard(`Wire`).
    pub fn result_frame<O: Serialize, E: Serialize>(
        id: u64,
        outcome: Outcome<O, E>,
    ) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; frame::HEADER];
        buf.extend_from_slice(&id.to_le_bytes());
        frame::encode_into(&frame::Wire::from(outcome), &mut buf)?;
        frame::patch_header(&mut buf, 0, frame::RESULT);
        Ok(buf)
    }

    /// A chunk-result frame as a worker writes it (item by item, a failing item replaced by a
    /// `Codec` outcome).
    pub fn chunk_result_frame<O: Serialize, E: Serialize>(
        id: u64,
        outcomes: Vec<Outcome<O, E>>,
    ) -> Vec<u8> {
        let wires: Vec<frame::Wire<O, E>> = outcomes.into_iter().map(Into::into).collect();
        let mut buf = vec![0; frame::HEADER];
        buf.extend_from_slice(&id.to_le_bytes());
        frame::encode_seq_into(&wires, &mut buf, |e| frame::Wire::Codec(e));
        frame::patch_header(&mut buf, 0, frame::CHUNK_RESULT);
        buf
    }

    /// A shutdown frame.
    pub fn shutdown_frame() -> Vec<u8> {
        let mut buf = Vec::new();
        frame::put_header(&mut buf, frame::SHUTDOWN, 0);
        buf
    }

    /// The job or result id at the start of a body.
    pub fn read_id(body: &[u8]) -> Option<u64> {
        frame::read_id(body)
    }

    /// Decodes postcard data as the pool and the workers do.
    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        frame::decode(bytes)
    }

    /// Decodes the postcard part of a result body (after the id) as the pool does.
    pub fn decode_outcome<O: DeserializeOwned, E: DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<Outcome<O, E>, String> {
        frame::decode::<frame::Wire<O, E>>(bytes).map(Into::into)
    }

    /// Decodes the postcard part of a chunk-result body (after the id) as the pool does.
    pub fn decode_outcomes<O: DeserializeOwned, E: DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<Vec<Outcome<O, E>>, String> {
        frame::decode::<Vec<frame::Wire<O, E>>>(bytes)
            .map(|ws| ws.into_iter().map(Into::into).collect())
    }

    /// One frame taken out of a stream.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        /// The kind byte.
        pub kind: u8,
        /// The body.
        pub body: Vec<u8>,
    }

    /// What [`receive`] made of a stream.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Received {
        /// The complete frames, in order.
        pub frames: Vec<Frame>,
        /// Why the stream was refused, if it was (reading stops there, as the pool and the
        /// worker stop reading a corrupt stream).
        pub corrupt: Option<String>,
        /// Bytes received but not (yet) part of a complete frame.
        pub pending: usize,
        /// Bytes fed to the buffer: all of the stream, unless it was refused first.
        pub received: usize,
        /// The largest the receive buffer grew (bytes held, spare room included).
        pub peak_buffer: usize,
    }

    /// Feeds `stream` through the receive buffer the pool and the workers use, in reads of at
    /// most the sizes `reads` gives (cycled; `0` is taken as 1), asking each time for room of
    /// `min_room` bytes as they do, and takes out every complete frame after each read, exactly
    /// as their read loops do.
    pub fn receive(stream: &[u8], reads: &[usize], min_room: usize) -> Received {
        let mut inbuf = InBuf::new(min_room.clamp(1, 64 * 1024));
        let mut out = Received {
            frames: Vec::new(),
            corrupt: None,
            pending: 0,
            received: 0,
            peak_buffer: 0,
        };
        let mut pos = 0;
        let mut turn = 0;
        while pos < stream.len() {
            let want = reads
                .get(turn % reads.len().max(1))
                .copied()
                .unwrap_or(usize::MAX)
                .max(1);
            turn += 1;
            let room = inbuf.spare(min_room);
            let n = room.len().min(want).min(stream.len() - pos);
            room[..n].copy_from_slice(&stream[pos..pos + n]);
            let spare = room.len();
            out.peak_buffer = out.peak_buffer.max(inbuf.data().len() + spare);
            inbuf.filled(n);
            pos += n;
            loop {
                match frame::parse(inbuf.data()) {
                    Ok(Some(f)) => {
                        let body = inbuf.data()[frame::HEADER..frame::HEADER + f.len].to_vec();
                        out.frames.push(Frame { kind: f.kind, body });
                        inbuf.consume(frame::HEADER + f.len);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.corrupt = Some(e.0);
                        out.pending = inbuf.data().len();
                        out.received = pos;
                        return out;
                    }
                }
            }
        }
        out.pending = inbuf.data().len();
        out.received = pos;
        out
    }

    /// A job or result value for the pool target: the shapes jobs take (numbers, strings,
    /// bytes, options, sequences, a struct), without floats so that equality means equal bytes.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub enum Sample {
        /// No payload.
        Unit,
        /// An unsigned number (a varint on the wire).
        Num(u64),
        /// A signed number (zigzag).
        Signed(i32),
        /// A string.
        Text(String),
        /// Bytes.
        Bytes(Vec<u8>),
        /// A struct with nested sequences and an option.
        Record {
            /// A number.
            id: u32,
            /// A string.
            name: String,
            /// A sequence of strings.
            tags: Vec<String>,
            /// An option.
            flag: Option<bool>,
        },
    }

    /// The pool's frame decoder on arbitrary bytes. The first three bytes choose how the stream
    /// arrives (two read sizes and the room asked for per read, as the pool and the worker ask
    /// for theirs); the rest is the stream, fed through [`receive`]. Every complete frame is
    /// then decoded as its receiver decodes it ([`Sample`] jobs, `Sample`/`String` outcomes),
    /// and every body that decodes is encoded again and read back.
    ///
    /// Asserts: the frames and the pending bytes add up to the bytes received; a body is never
    /// longer than [`MAX_BODY`]; the buffer grows with the bytes that arrived, not with a length
    /// a header announces; whatever decodes survives an encode → receive → decode round trip.
    pub fn stream(data: &[u8]) {
        let Some((&[a, b, c], stream)) = data.split_first_chunk::<3>() else {
            return;
        };
        let reads = [1 + usize::from(a), 1 + usize::from(b) * 256];
        let min_room = [1, 7, 4096, 16 * 1024, 64 * 1024][usize::from(c) % 5];
        let got = receive(stream, &reads, min_room);
        let framed: usize = got.frames.iter().map(|f| HEADER + f.body.len()).sum();
        assert_eq!(framed + got.pending, got.received, "bytes lost or invented");
        match &got.corrupt {
            None => assert_eq!(got.received, stream.len(), "stopped reading early"),
            Some(_) => assert!(got.pending >= HEADER, "refused without a header"),
        }
        let bound = 2 * (2 * stream.len() + min_room + 64 * 1024) + 64 * 1024;
        assert!(
            got.peak_buffer <= bound,
            "buffer of {} bytes for a {}-byte stream",
            got.peak_buffer,
            stream.len()
        );
        for f in &got.frames {
            assert!(f.body.len() <= MAX_BODY);
            assert!(
                (JOB..=frame::NOTIFY).contains(&f.kind) || f.kind == frame::INIT_FAILED,
                "kind {}",
                f.kind
            );
            round_trip(f);
        }
    }

    /// Decodes `f` as its receiver would and, when that works, checks the encoding round trip.
    fn round_trip(f: &Frame) {
        let Some(id) = read_id(&f.body) else {
            return;
        };
        let again = match f.kind {
            JOB => match decode::<Sample>(&f.body[8..]) {
                Ok(v) => {
                    let frame = job_frame(id, &v).expect("a Sample encodes");
                    assert_eq!(decode::<Sample>(&only(&frame, JOB)[8..]), Ok(v));
                    frame
                }
                Err(_) => return,
            },
            CHUNK => {
                // The item count the worker reads; shorter is a "short chunk frame".
                if f.body.len() < 12 {
                    return;
                }
                match decode::<Vec<Sample>>(&f.body[12..]) {
                    Ok(v) => {
                        let frame = chunk_frame(id, &v).expect("Samples encode");
                        let body = only(&frame, CHUNK);
                        let n = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
                        assert_eq!(n as usize, v.len());
                        assert_eq!(decode::<Vec<Sample>>(&body[12..]), Ok(v));
                        frame
                    }
                    Err(_) => return,
                }
            }
            RESULT => match decode_outcome::<Sample, String>(&f.body[8..]) {
                Ok(v) => {
                    let frame = result_frame(id, v.clone()).expect("an Outcome encodes");
                    let back = decode_outcome::<Sample, String>(&only(&frame, RESULT)[8..]);
                    assert_eq!(back, Ok(v));
                    frame
                }
                Err(_) => return,
            },
            CHUNK_RESULT => match decode_outcomes::<Sample, String>(&f.body[8..]) {
                Ok(v) => {
                    let frame = chunk_result_frame(id, v.clone());
                    let back = decode_outcomes::<Sample, String>(&only(&frame, CHUNK_RESULT)[8..]);
                    assert_eq!(back, Ok(v));
                    frame
                }
                Err(_) => return,
            },
            _ => return,
        };
        assert_eq!(read_id(&only(&again, f.kind)), Some(id));
    }

    /// The body of the one frame `stream` must hold, of kind `kind`, read through the buffer.
    fn only(stream: &[u8], kind: u8) -> Vec<u8> {
        let got = receive(stream, &[4096], 4096);
        assert_eq!(got.corrupt, None);
        assert_eq!(got.pending, 0);
        assert_eq!(got.frames.len(), 1);
        assert_eq!(got.frames[0].kind, kind);
        got.frames.into_iter().next().expect("one frame").body
    }
}

//! The wire format between the pool and its workers, and the codec of job values.
//!
//! This module owns the frame layout — `u32` little-endian body length, one kind byte, then the
//! body — the frame kinds, the receive buffer both sides parse frames out of, and the serde
//! codec ([postcard](https://docs.rs/postcard)). It does no I/O of its own and knows nothing of
//! processes. Bodies of job and result frames start with the job id (`u64` little-endian; its
//! low bits name the job's claim word, see [`job_id`]); the rest is postcard data. A worker answers jobs strictly in the order they arrive on its socket,
//! one result frame per job (or per chunk), which is what lets the pool tell from the first
//! unanswered job which one a dead worker was running.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes before every frame body: the body length (`u32` LE) and the kind.
pub(crate) const HEADER: usize = 5;
/// Largest body accepted; a larger length means a corrupt stream.
pub(crate) const MAX_BODY: usize = 1 << 30;
/// A receive buffer larger than this is shrunk once it is empty again.
const SHRINK_ABOVE: usize = 4 << 20;

/// Pool → worker: one job; body = id, postcard(J).
pub(crate) const JOB: u8 = 1;
/// Pool → worker: a chunk of jobs; body = id, item count (`u32` LE), postcard(Vec<J>).
pub(crate) const CHUNK: u8 = 2;
/// Pool → worker: finish and exit 0; empty body.
pub(crate) const SHUTDOWN: u8 = 3;
/// Worker → pool: the outcome of one job; body = id, postcard(Wire<O, E>).
pub(crate) const RESULT: u8 = 4;
/// Worker → pool: the outcomes of a chunk; body = id, postcard(Vec<Wire<O, E>>).
pub(crate) const CHUNK_RESULT: u8 = 5;
/// Pool → worker: one job whose messages someone receives; body = id, the initial message
/// credit (`u32` LE), postcard(J). See `context`.
pub(crate) const JOB_M: u8 = 6;
/// Worker → pool: a message from the job it runs, sent before that job's result; body = id,
/// postcard(M).
pub(crate) const MESSAGE: u8 = 7;
/// Pool → worker: more message credit for a job; body = id, count (`u32` LE). A worker finds it
/// wherever it is in its buffer (behind pipelined jobs), so no job waits for another's credit.
pub(crate) const CREDIT: u8 = 8;
/// Worker → pool: a result is waiting in a result slot (see `claim`) and the pool said it was
/// going to sleep; empty body.
pub(crate) const NOTIFY: u8 = 9;
/// Worker → pool, before any result: its initializer failed and it exits; body = the reason
/// (UTF-8). A number apart from the job kinds: see `init`.
pub(crate) const INIT_FAILED: u8 = 32;

/// What a worker reports for one job: the handler's value or error, a caught panic, or a
/// (de)serialization failure on the worker's side.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum Wire<O, E> {
    /// The handler returned `Ok`.
    Ok(O),
    /// The handler returned `Err`.
    Err(E),
    /// The handler panicked; the panic message.
    Panicked(String),
    /// The job could not be decoded or the result encoded.
    Codec(String),
}

/// Appends a frame header for a body of `len` bytes.
pub(crate) fn put_header(buf: &mut Vec<u8>, kind: u8, len: usize) {
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(kind);
}

/// Overwrites the header at `at` (written earlier as a placeholder) now that the frame ends at
/// the end of `buf`.
pub(crate) fn patch_header(buf: &mut [u8], at: usize, kind: u8) {
    let len = buf.len() - at - HEADER;
    buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[at + 4] = kind;
}

/// Appends postcard(`value`) to `buf`. On failure `buf` is left exactly as it was: a value
/// postcard refuses (a `#[serde(flatten)]` field, a sequence of unknown length) or one over the
/// frame limit costs the caller nothing it had already written, such as a frame header.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let before = buf.len();
    match postcard::to_extend(value, Tail(buf)) {
        // A frame length is a u32 and bodies are capped at MAX_BODY: a larger value would wrap
        // the header or be refused by the reader as a corrupt stream.
        Ok(Tail(buf)) if buf.len() - before > MAX_BODY => {
            let size = buf.len() - before;
            buf.truncate(before);
            Err(format!(
                "of {size} bytes exceeds the {MAX_BODY}-byte frame limit"
            ))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            buf.truncate(before);
            Err(format!("cannot encode: {e}"))
        }
    }
}

/// Appends the postcard encoding of a sequence of `items`, one at a time: an item that does not
/// encode is replaced by `fallback(reason)` (which must encode), so one bad value spoils only
/// itself, not its neighbours. The result decodes as a `Vec` of the items' type.
pub(crate) fn encode_seq_into<T: Serialize>(
    items: &[T],
    buf: &mut Vec<u8>,
    fallback: impl Fn(String) -> T,
) {
    // postcard writes a sequence as its length (a varint, as it writes a `usize`), then each
    // element in turn.
    encode_into(&items.len(), buf).expect("a usize always encodes");
    for item in items {
        if let Err(e) = encode_into(item, buf) {
            encode_into(&fallback(e), buf).expect("the fallback always encodes");
        }
    }
}

/// A borrowed `Vec` that postcard can extend: `to_extend` takes its writer by value, and a
/// `Vec` moved in is dropped, with everything already in it, when serialization fails.
struct Tail<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Tail<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Decodes postcard data.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("cannot decode: {e}"))
}

/// The id at the start of a job or result body.
pub(crate) fn read_id(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

/// The `u32` (little-endian) at `at` in a body.
pub(crate) fn read_u32(body: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

/// Bits of a job id that name the job's claim word in its worker (see `claim`): a job id is
/// `sequence << WORD_BITS | word`, unique as the sequence is. Carrying the word in the id keeps
/// the frame as it was: no byte more per job.
pub(crate) const WORD_BITS: u32 = 16;
/// The most claim words per worker, hence the largest pipeline.
pub(crate) const MAX_WORDS: usize = 1 << WORD_BITS;

/// The id of the job numbered `seq` sent in claim word `word`.
pub(crate) fn job_id(seq: u64, word: u32) -> u64 {
    (seq << WORD_BITS) | u64::from(word)
}

/// The claim word named by a job id.
pub(crate) fn word_of(id: u64) -> usize {
    (id & (MAX_WORDS as u64 - 1)) as usize
}

/// A frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The kind byte.
    pub(crate) kind: u8,
    /// The body length.
    pub(crate) len: usize,
}

/// A stream that cannot be a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

/// Looks for a complete frame at the start of `buf`: `Ok(None)` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Frame>, Corrupt> {
    let Some(head) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_BODY {
        return Err(Corrupt(format!("frame of {len} bytes")));
    }
    let kind = head[4];
    if !(JOB..=NOTIFY).contains(&kind) && kind != INIT_FAILED {
        return Err(Corrupt(format!("unknown frame kind {kind}")));
    }
    Ok((buf.len() >= HEADER + len).then_some(Frame { kind, len }))
}

/// A receive buffer: bytes read but not yet parsed live in `buf[start..end]`.
///
/// Reads go into the spare room after `end`, which is kept initialised so that no read needs
/// zeroing; room is made by moving the unparsed tail to the front, or by growing when one frame
/// does not fit.
#[derive(Debug)]
pub(crate) struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    /// An empty buffer with `capacity` bytes of room.
    pub(crate) fn new(capacity: usize) -> InBuf {
        InBuf {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Room to read into: at least `min` bytes, and enough for the frame started at `start`.
    pub(crate) fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A large frame passed: give the memory back rather than keep it for the worker's life.
            if self.buf.len() > SHRINK_ABOVE {
                self.buf.truncate(min.max(64 * 1024));
                self.buf.shrink_to_fit();
            }
        }
        let mut want = min;
        if let Ok(Some(_)) | Err(_) = parse(self.data()) {
            // A complete (or corrupt) frame is waiting: the caller parses it first.
        } else if self.data().len() >= HEADER {
            let d = self.data();
            let len = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
            // Grow towards the announced length only as fast as bytes arrive (at most doubling
            // what is here): five bytes announcing a gigabyte must not allocate a gigabyte.
            let missing = HEADER + len - d.len();
            want = want.max(missing.min(d.len().max(64 * 1024)));
        }
        if self.buf.len() - self.end < want {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < want {
                let new = (self.end + want).next_power_of_two();
                self.buf.resize(new, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`InBuf::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// The bytes not parsed yet.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops `n` parsed bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
    }

    /// The bytes not parsed yet, writable (the worker neutralises a credit frame it took from
    /// behind pipelined jobs).
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Whether unparsed bytes remain.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_id_names_its_claim_word_and_stays_unique() {
        let last = (MAX_WORDS - 1) as u32;
        for (seq, word) in [(1u64, 0u32), (1, last), (2, 0), (1 << 40, 7)] {
            assert_eq!(word_of(job_id(seq, word)), word as usize);
        }
        assert_ne!(job_id(1, last), job_id(2, 0));
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_header(&mut v, kind, body.len());
        v.extend_from_slice(body);
        v
    }

    /// A value postcard refuses: a map of unknown length.
    struct Unsized;
    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            s.serialize_map(None)?.end()
        }
    }

    #[test]
    fn a_failed_encode_leaves_the_buffer_as_it_was() {
        let mut buf = b"header".to_vec();
        assert!(encode_into(&Unsized, &mut buf).is_err());
        assert_eq!(buf, b"header");
        encode_into(&7u32, &mut buf).unwrap();
        assert_eq!(&buf[..6], b"header");
        assert_eq!(decode::<u32>(&buf[6..]), Ok(7));
    }

    #[test]
    fn a_sequence_replaces_only_the_items_that_fail() {
        #[derive(Serialize)]
        enum Item {
            Good(u32),
            Bad(Unsized),
            Failed(String),
        }
        #[derive(Debug, PartialEq, serde::Deserialize)]
        enum Back {
            Good(u32),
            Bad(()),
            Failed(String),
        }
        let mut buf = vec![9];
        let items = [Item::Good(1), Item::Bad(Unsized), Item::Good(3)];
        encode_seq_into(&items, &mut buf, Item::Failed);
        let back: Vec<Back> = decode(&buf[1..]).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], Back::Good(1));
        assert!(matches!(&back[1], Back::Failed(m) if m.contains("cannot encode")));
        assert_eq!(back[2], Back::Good(3));
        let _ = Back::Bad(());
    }

    #[test]
    fn parses_whole_frames_only() {
        let f = frame(RESULT, b"0123456789");
        for cut in 0..f.len() {
            assert_eq!(parse(&f[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(&f),
            Ok(Some(Frame {
                kind: RESULT,
                len: 10
            }))
        );
        assert!(parse(&frame(0, b"")).is_err());
        assert!(parse(&frame(NOTIFY + 1, b"")).is_err());
        let mut huge = Vec::new();
        put_header(&mut huge, JOB, MAX_BODY + 1);
        assert!(parse(&huge).is_err());
    }

    #[test]
    fn patch_header_matches_put_header() {
        let mut a = vec![0u8; HEADER];
        a.extend_from_slice(b"abc");
        patch_header(&mut a, 0, SHUTDOWN);
        assert_eq!(a, frame(SHUTDOWN, b"abc"));
    }

    #[test]
    fn inbuf_reassembles_frames_across_reads_and_grows() {
        let big = vec![7u8; 100_000];
        let mut stream = frame(JOB, b"small");
        stream.extend(frame(CHUNK, &big));
        stream.extend(frame(RESULT, b""));
        let mut buf = InBuf::new(16);
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let room = buf.spare(7);
            let n = room.len().min(13).min(stream.len() - pos);
            room[..n].copy_from_slice(&stream[pos..pos + n]);
            buf.filled(n);
            pos += n;
            while let Some(f) = parse(buf.data()).unwrap() {
                got.push((f.kind, buf.data()[HEADER..HEADER + f.len].to_vec()));
                buf.consume(HEADER + f.len);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (JOB, b"small".to_vec()));
        assert_eq!(got[1], (CHUNK, big));
        assert_eq!(got[2], (RESULT, vec![]));
    }

    #[test]
    fn wire_round_trips() {
        let mut b = Vec::new();
        encode_into(&Wire::<u64, String>::Ok(5), &mut b).unwrap();
        encode_into(&Wire::<u64, String>::Err("no".into()), &mut b).unwrap();
        let w: Wire<u64, String> = decode(&b[..2]).unwrap();
        assert!(matches!(w, Wire::Ok(5)));
        let w: Wire<u64, String> = decode(&b[2..]).unwrap();
        assert!(matches!(w, Wire::Err(s) if s == "no"));
        assert_eq!(read_id(&7u64.to_le_bytes()), Some(7));
        assert_eq!(read_id(b"short"), None);
    }
}

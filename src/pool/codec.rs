//! The typed edge of the pool: encoding jobs and decoding a worker's answers (one job's, or a
//! chunk's) into [`Outcome`]s.
//!
//! The engine below it moves bytes only; this is the one place that knows `Wire<O, E>`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::engine::Raw;
use super::frame::{self, Wire};
use super::{JobError, Outcome};

/// Encodes `value` into an exactly-sized `Vec`, through a per-thread scratch buffer that keeps
/// its capacity: a large job costs one allocation and one copy instead of a buffer grown by
/// doubling (a reallocation and copy per step).
pub(super) fn encode_exact<T: Serialize + ?Sized>(
    value: &T,
) -> std::result::Result<Vec<u8>, String> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            frame::encode_into(value, &mut buf)?;
            let out = buf.to_vec();
            if buf.capacity() > 4 << 20 {
                *buf = Vec::new(); // don't keep a huge buffer forever
            }
            Ok(out)
        }
        // Re-entered (a Serialize impl that submits): fall back to a fresh buffer.
        Err(_) => {
            let mut buf = Vec::new();
            frame::encode_into(value, &mut buf)?;
            Ok(buf)
        }
    })
}

/// Decodes one job's outcome.
pub(super) fn decode_one<O: DeserializeOwned, E: DeserializeOwned>(raw: Raw<'_>) -> Outcome<O, E> {
    match raw {
        Raw::Done(bytes) => match frame::decode::<Wire<O, E>>(bytes) {
            Ok(w) => from_wire(w),
            Err(e) => Err(JobError::Codec(format!("result {e}"))),
        },
        Raw::Failed(f) => Err(f.into()),
        Raw::Codec(m) => Err(JobError::Codec(m)),
    }
}

/// Decodes the outcomes of a chunk of `count` jobs.
pub(super) fn decode_chunk<O: DeserializeOwned, E: DeserializeOwned>(
    raw: Raw<'_>,
    count: usize,
) -> Vec<Outcome<O, E>> {
    match raw {
        Raw::Done(bytes) => match frame::decode::<Vec<Wire<O, E>>>(bytes) {
            Ok(ws) if ws.len() == count => ws.into_iter().map(from_wire).collect(),
            Ok(ws) => {
                let why = format!("chunk of {count} jobs answered with {} results", ws.len());
                codec_errors(&why, count)
            }
            Err(e) => codec_errors(&format!("result {e}"), count),
        },
        Raw::Failed(f) => (0..count).map(|_| Err(f.clone().into())).collect(),
        Raw::Codec(m) => codec_errors(&m, count),
    }
}

fn from_wire<O, E>(w: Wire<O, E>) -> Outcome<O, E> {
    match w {
        Wire::Ok(o) => Ok(o),
        Wire::Err(e) => Err(JobError::Handler(e)),
        Wire::Panicked(m) => Err(JobError::Panicked(m)),
        Wire::Codec(m) => Err(JobError::Codec(m)),
    }
}

/// The body of a chunk frame after the id: the job count, then the jobs.
pub(super) fn encode_chunk<J: Serialize>(chunk: &[J]) -> std::result::Result<Vec<u8>, String> {
    let count = chunk.len();
    let mut body = Vec::with_capacity(4 + count * 4);
    body.extend_from_slice(&(count as u32).to_le_bytes());
    frame::encode_into(chunk, &mut body).map_err(|e| format!("job {e}"))?;
    Ok(body)
}

/// `count` outcomes failing with the codec error `why`.
pub(super) fn codec_errors<O, E>(why: &str, count: usize) -> Vec<Outcome<O, E>> {
    (0..count)
        .map(|_| Err(JobError::Codec(why.to_string())))
        .collect()
}

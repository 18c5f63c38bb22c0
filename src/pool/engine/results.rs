//! Result decoding: reading a worker's socket, completing its jobs in send order, and the
//! checks that follow results (recycling by RSS, a graceful stop once idle).
//!
//! It must not write to workers except through `send_shutdown`, nor reap them.

use std::cell::Cell;
use std::io::Read;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::phase::Phase;
use super::shared::{Completion, Raw};
use super::{Counters, Engine, Proc, Sent, SlotIndex, call_completion};
use crate::lifecycle::Event;
use crate::pool::claim::{self, Claim};
use crate::pool::frame;
use crate::pool::pace::Pace;
use crate::stream::{ReadEnd, read_nonblocking};

/// RSS is read at most this often per worker…
const RSS_PERIOD: Duration = Duration::from_millis(100);
/// …or after this many results, whichever comes first.
const RSS_RESULTS: u32 = 64;
/// Room asked of a worker's input buffer for one `read(2)` of its socket.
const SOCK_READ: usize = 64 * 1024;

impl Engine {
    /// Reads results until the socket is drained; handles end of stream.
    pub(super) fn read_sock(&mut self, slot: SlotIndex) {
        if !self.slots[slot].proc.as_ref().is_some_and(|p| p.sock_open) {
            return;
        }
        match self.drain_sock(slot, true) {
            Some(ReadEnd::Closed) => self.sock_closed(slot),
            Some(ReadEnd::Drained | ReadEnd::Paused) => self.after_results(slot),
            None => {} // a protocol error: the worker is being killed
        }
    }

    /// Reads the open socket of `slot` into the worker's own buffer and completes the jobs
    /// answered, until it would block or ends — or, with `until_short`, until a read comes back
    /// short of the buffer (the socket is drained then: one `read(2)` saved per wakeup on the hot
    /// path). `None` after a protocol error (the worker is being killed).
    pub(super) fn drain_sock(&mut self, slot: SlotIndex, until_short: bool) -> Option<ReadEnd> {
        let room = Cell::new(0);
        let mut broken = false;
        let end = read_nonblocking(
            self,
            |e| {
                let p = e.slots[slot].proc.as_mut().expect("live worker");
                let buf = p.inbuf.spare(SOCK_READ);
                room.set(buf.len());
                (&p.sock).read(buf)
            },
            |e, n| {
                let p = e.slots[slot].proc.as_mut().expect("live worker");
                p.inbuf.filled(n);
                if !e.take_results(slot) {
                    broken = true;
                    ControlFlow::Break(())
                } else if until_short && n < room.get() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        (!broken).then_some(end)
    }

    /// Completes the jobs whose results are in the buffer; `false` after a protocol error
    /// (the worker is being killed).
    pub(super) fn take_results(&mut self, slot: SlotIndex) -> bool {
        let name = &self.settings.name;
        let now = self.now;
        let p = self.slots[slot].proc.as_mut().expect("live worker");
        let mut done = 0u64;
        let mut bad = None;
        loop {
            let f = match frame::parse(p.inbuf.data()) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(c) => {
                    bad = Some(c.0);
                    break;
                }
            };
            // Results the worker left in slots come before whatever it wrote after them.
            done += take_slot_results(p, &mut self.pace, &mut self.counters, name, now);
            if took_control_frame(p, &f) {
                continue;
            }
            let body = &p.inbuf.data()[frame::HEADER..frame::HEADER + f.len];
            let front = p.inflight.front_mut();
            match classify(f.kind, frame::read_id(body), front.as_ref().map(|s| s.id)) {
                Incoming::Bad(why) => {
                    bad = Some(why);
                    break;
                }
                Incoming::Stale => {}
                Incoming::Message => {
                    let sink = front.and_then(|s| s.job.completion.messages());
                    if let Some(sink) = sink {
                        sink.deliver(name, &body[8..]);
                    }
                }
                Incoming::Result => {
                    let sent = p.inflight.pop_front().expect("classified");
                    let completion =
                        account_first(p, sent, &mut self.pace, &mut self.counters, now);
                    let body = &p.inbuf.data()[frame::HEADER + 8..frame::HEADER + f.len];
                    call_completion(name, completion, Raw::Done(body));
                    done += 1;
                }
            }
            p.inbuf.consume(frame::HEADER + f.len);
        }
        done += take_slot_results(p, &mut self.pace, &mut self.counters, name, now);
        self.counters.finished_delta += done;
        if let Some(why) = bad {
            log::error!(
                "{}[{slot}]: protocol error from worker (pid {}): {why}; killing it",
                self.settings.name,
                p.pid
            );
            self.kill(slot);
            return false;
        }
        true
    }

    /// Completes the jobs finished in result slots by every worker (see `claim`), then runs the
    /// checks that follow results.
    pub(super) fn drain_slots(&mut self) {
        for i in SlotIndex::all(self.slots.len()) {
            if self.drain_slot(i) > 0 {
                self.after_results(i);
            }
        }
    }

    /// Completes the jobs one worker finished in its result slots; how many.
    pub(super) fn drain_slot(&mut self, slot: SlotIndex) -> u64 {
        let name = &self.settings.name;
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return 0;
        };
        let n = take_slot_results(p, &mut self.pace, &mut self.counters, name, self.now);
        self.counters.finished_delta += n;
        n
    }

    /// Tells every worker that this thread is going to sleep (`true`: a result left in a slot
    /// must wake it) or is awake. Going to sleep, `true` if a result is already waiting, in which
    /// case the caller must not sleep.
    pub(super) fn set_asleep(&self, asleep: bool) -> bool {
        let mut waiting = false;
        for p in self.slots.iter().filter_map(|s| s.proc.as_ref()) {
            let words = p.claims.words();
            claim::set_sleeping(words, asleep);
            if asleep && let Some(front) = p.inflight.front() {
                waiting |= claim::state(words, front.word as usize, front.id) == Claim::Done;
            }
        }
        waiting
    }

    /// Recycling checks and graceful stops once results came in.
    pub(super) fn after_results(&mut self, slot: SlotIndex) {
        let now = self.now;
        let max_rss = self.settings.max_rss_bytes;
        let page = self.page_size;
        let Some(p) = self.slots[slot].proc.as_mut() else {
            return;
        };
        if p.phase.takes_jobs()
            && let Some(limit) = max_rss
            && p.results_since_rss > 0
            && (p.results_since_rss >= RSS_RESULTS
                || now.saturating_duration_since(p.rss_checked) >= RSS_PERIOD)
        {
            p.results_since_rss = 0;
            p.rss_checked = now;
            if let Some(rss) = rss_bytes(p.pid, page)
                && rss > limit
            {
                p.phase = p.phase.recycle();
                log::info!(
                    "{}[{slot}]: recycling worker (pid {}): RSS {rss} bytes > {limit}",
                    self.settings.name,
                    p.pid
                );
            }
        }
        if p.phase.shuts_down_when_idle() && p.inflight.is_empty() {
            if p.phase == Phase::Recycling {
                // Idle now: a manual-restart step (not a failure); its stop action sends the
                // Shutdown frame through `ask_stop`.
                p.phase = p.phase.stop();
                self.counters.recycled += 1;
                self.apply(slot, Event::Restart);
            }
            if self.slots[slot]
                .proc
                .as_ref()
                .is_some_and(|p| !p.phase.is_going())
            {
                self.send_shutdown(slot);
            }
        }
    }
}

/// The bookkeeping of `sent`, the first job `p` held, now answered: its claim word freed, the
/// pace and counters fed. Returns its completion, for the caller to call with the result.
fn account_first(
    p: &mut Proc,
    sent: Sent,
    pace: &mut Pace,
    counters: &mut Counters,
    now: Instant,
) -> Completion {
    p.free_words.push(sent.word);
    if sent.behind {
        pace.gap(now.saturating_duration_since(p.running_since));
    } else {
        pace.turn(now.saturating_duration_since(sent.sent_at));
    }
    counters.completed += u64::from(sent.job.items);
    p.jobs_done += 1;
    p.results_since_rss += 1;
    p.running_since = now;
    sent.job.completion
}

/// Completes the first jobs `p` holds that the worker finished in their result slots; how many.
fn take_slot_results(
    p: &mut Proc,
    pace: &mut Pace,
    counters: &mut Counters,
    name: &str,
    now: Instant,
) -> u64 {
    let mut buf = [0u8; claim::SLOT_BYTES];
    let mut n = 0;
    while let Some(front) = p.inflight.front() {
        let words = p.claims.words();
        let Some(len) = claim::take_result(words, front.word as usize, front.id, &mut buf) else {
            break;
        };
        let sent = p.inflight.pop_front().expect("checked above");
        let completion = account_first(p, sent, pace, counters, now);
        call_completion(name, completion, Raw::Done(&buf[..len]));
        n += 1;
    }
    n
}

/// Takes a frame that is not about a job, if `f` is one: a wake-up (`NOTIFY`: its results are
/// in slots), or `INIT_FAILED` (its initializer failed and it exits now, as the pool expects:
/// not a death). Whether it took it.
fn took_control_frame(p: &mut Proc, f: &frame::Frame) -> bool {
    match f.kind {
        frame::NOTIFY => {}
        frame::INIT_FAILED => {
            let reason = &p.inbuf.data()[frame::HEADER..frame::HEADER + f.len];
            p.init_failed = Some(String::from_utf8_lossy(reason).into_owned());
            p.phase = p.phase.stop();
        }
        _ => return false,
    }
    p.inbuf.consume(frame::HEADER + f.len);
    true
}

/// What a frame from a worker is, given the id of the first job the worker holds.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    /// For a job cancelled by `terminate()` while the worker ran it: dropped, as the engine's
    /// module says — not a protocol error.
    Stale,
    /// A message from the running job, before its result: to its receiver, if it has one.
    Message,
    /// The running job's result.
    Result,
    /// A protocol error.
    Bad(String),
}

fn classify(kind: u8, id: Option<u64>, front: Option<u64>) -> Incoming {
    if !matches!(kind, frame::RESULT | frame::CHUNK_RESULT | frame::MESSAGE) {
        return Incoming::Bad(format!("unexpected frame kind {kind}"));
    }
    match (id, front) {
        (Some(_), None) => Incoming::Stale,
        (Some(id), Some(first)) if id == first && kind == frame::MESSAGE => Incoming::Message,
        (Some(id), Some(first)) if id == first => Incoming::Result,
        _ => Incoming::Bad(format!("result for job {id:?} out of order")),
    }
}

/// Resident set size of `pid` from `/proc/PID/statm` (its second field, in pages).
fn rss_bytes(pid: i32, page: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_messages_count_only_for_the_first_job_held() {
        assert_eq!(classify(frame::RESULT, Some(7), Some(7)), Incoming::Result);
        assert_eq!(
            classify(frame::MESSAGE, Some(7), Some(7)),
            Incoming::Message
        );
        assert!(matches!(
            classify(frame::RESULT, Some(8), Some(7)),
            Incoming::Bad(_)
        ));
        assert!(matches!(
            classify(frame::MESSAGE, Some(8), Some(7)),
            Incoming::Bad(_)
        ));
        assert!(matches!(
            classify(frame::RESULT, None, Some(7)),
            Incoming::Bad(_)
        ));
    }

    #[test]
    fn a_frame_for_a_cancelled_job_is_dropped_but_a_job_frame_is_a_protocol_error() {
        assert_eq!(classify(frame::MESSAGE, Some(7), None), Incoming::Stale);
        assert_eq!(
            classify(frame::CHUNK_RESULT, Some(7), None),
            Incoming::Stale
        );
        assert!(matches!(
            classify(frame::JOB, Some(7), Some(7)),
            Incoming::Bad(_)
        ));
    }
}

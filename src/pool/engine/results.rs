//! Result decoding: reading a worker's socket, completing its jobs in send order, and the
//! checks that follow results (recycling by RSS, a graceful stop once idle).
//!
//! It must not write to workers except through `send_shutdown`, nor reap them.

use std::cell::Cell;
use std::io::Read;
use std::ops::ControlFlow;
use std::time::Duration;

use super::phase::Phase;
use super::shared::Raw;
use super::{Engine, Proc, SlotIndex, call_completion};
use crate::lifecycle::Event;
use crate::pool::frame;
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
            let f = match next_result(p) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(why) => {
                    bad = Some(why);
                    break;
                }
            };
            let body = &p.inbuf.data()[frame::HEADER..frame::HEADER + f.len];
            let id = frame::read_id(body);
            if id.is_some() && p.inflight.is_empty() {
                // The result of a job cancelled by terminate() while the worker ran it: dropped,
                // as the module says — not a protocol error.
                p.inbuf.consume(frame::HEADER + f.len);
                continue;
            }
            if id.is_none() || p.inflight.front().map(|s| s.id) != id {
                bad = Some(format!("result for job {id:?} out of order"));
                break;
            }
            let sent = p.inflight.pop_front().expect("checked above");
            p.free_words.push(sent.word);
            if sent.behind {
                self.pace
                    .gap(now.saturating_duration_since(p.running_since));
            } else {
                self.pace.turn(now.saturating_duration_since(sent.sent_at));
            }
            self.counters.completed += u64::from(sent.job.items);
            call_completion(name, sent.job.completion, Raw::Done(&body[8..]));
            done += 1;
            p.inbuf.consume(frame::HEADER + f.len);
            p.jobs_done += 1;
            p.results_since_rss += 1;
            p.running_since = now;
        }
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

/// The next result frame in a worker's buffer (`None` until one is whole); an `INIT_FAILED`
/// frame before it is recorded and consumed: the worker's initializer failed and it exits now,
/// as the pool expects (not a death). An error for a corrupt stream or any other kind.
#[inline(always)]
fn next_result(p: &mut Proc) -> Result<Option<frame::Frame>, String> {
    loop {
        let Some(f) = frame::parse(p.inbuf.data()).map_err(|c| c.0)? else {
            return Ok(None);
        };
        match f.kind {
            frame::RESULT | frame::CHUNK_RESULT => return Ok(Some(f)),
            frame::INIT_FAILED => {
                let reason = &p.inbuf.data()[frame::HEADER..frame::HEADER + f.len];
                p.init_failed = Some(String::from_utf8_lossy(reason).into_owned());
                p.phase = p.phase.stop();
                p.inbuf.consume(frame::HEADER + f.len);
            }
            k => return Err(format!("unexpected frame kind {k}")),
        }
    }
}

/// Resident set size of `pid` from `/proc/PID/statm` (its second field, in pages).
fn rss_bytes(pid: i32, page: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

//! The TCP stream queue: at most one op in flight, short sends resume at the exact byte.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{is_retry, Config, Core, OpShape, Queue};
use crate::error::Error;
use crate::plan::{cut_stream_staged, StageLimits};

/// Writes of one stream, oldest first. The front entry may be partly sent (`head_off`).
#[derive(Debug, Default)]
pub(crate) struct StreamQueue {
    q: VecDeque<(Bytes, u64)>,
    /// Sequence number of the front entry.
    front_seq: u64,
    next_seq: u64,
    /// Bytes of the front entry the kernel has already taken.
    head_off: usize,
    /// Entries covered by the op in flight, if one is.
    planned: Option<usize>,
    /// Copies of the small writes of the op in flight, contiguous, so a run of them costs the
    /// kernel one iovec instead of one each (the kernel's per-iovec cost is far above a short
    /// memcpy). Rebuilt at every plan; stable while the op is in flight (one op per stream).
    stage: Vec<u8>,
    /// The iovecs of the op in flight, in order.
    segs: Vec<Seg>,
}

/// One iovec of a stream op: a run in the staging buffer, or a slice of one queued write.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Stage {
        start: usize,
        len: usize,
    },
    Entry {
        idx: usize,
        start: usize,
        len: usize,
    },
}

impl StreamQueue {
    #[inline]
    pub fn push(&mut self, data: Bytes, queued_ns: u64) {
        self.q.push_back((data, queued_ns));
        self.next_seq += 1;
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn has_unsent(&self) -> bool {
        self.planned.is_none() && !self.q.is_empty()
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every write with a sequence number below this is terminal.
    pub fn done_upto(&self) -> u64 {
        if self.q.is_empty() {
            self.next_seq
        } else {
            self.front_seq
        }
    }

    pub fn plan(&mut self, cfg: &Config) -> Option<OpShape> {
        if self.planned.is_some() {
            return None;
        }
        let head_off = self.head_off;
        let limits = StageLimits {
            max_iovecs: cfg.max_iovecs_per_op,
            max_bytes: cfg.max_bytes_per_op,
            stage_below: cfg.coalesce_below_bytes,
            stage_max: cfg.coalesce_max_bytes,
        };
        self.segs.clear();
        self.stage.clear();
        let (q, segs, stage) = (&self.q, &mut self.segs, &mut self.stage);
        let lens = q
            .iter()
            .enumerate()
            .map(|(i, (b, _))| if i == 0 { b.len() - head_off } else { b.len() });
        // One pass: the planner decides, and each decision is carried out as it is made.
        let cut = cut_stream_staged(lens, &limits, |item| {
            let start = if item.idx == 0 { head_off } else { 0 };
            if item.staged {
                match segs.last_mut() {
                    Some(Seg::Stage { len, .. }) => *len += item.len,
                    _ => segs.push(Seg::Stage {
                        start: stage.len(),
                        len: item.len,
                    }),
                }
                stage.extend_from_slice(&q[item.idx].0[start..start + item.len]);
            } else {
                segs.push(Seg::Entry {
                    idx: item.idx,
                    start,
                    len: item.len,
                });
            }
        });
        let cut = cut?;
        self.planned = Some(cut.entries);
        Some(OpShape::Stream {
            entries: cut.entries,
            bytes: cut.bytes,
        })
    }

    pub fn unplan(&mut self) {
        self.planned = None;
    }

    /// The iovecs of the op in flight (staged runs and whole writes, in order).
    pub fn slices(&self, f: &mut impl FnMut(&[u8])) {
        if self.planned.is_none() {
            return;
        }
        for seg in &self.segs {
            match *seg {
                Seg::Stage { start, len } => f(&self.stage[start..start + len]),
                Seg::Entry { idx, start, len } => f(&self.q[idx].0[start..start + len]),
            }
        }
    }

    /// Consumes `n` bytes taken by the kernel from the first `entries` entries; pushes the
    /// (length, queued time) of every entry that is now fully sent.
    ///
    /// Only sampled entries (queued time ≠ 0) are pushed to `out`; returns the count and total
    /// length of all completed entries, so the caller accounts for them in one step.
    fn consume(
        &mut self,
        mut n: usize,
        entries: usize,
        out: &mut Vec<(usize, u64)>,
    ) -> (u64, usize) {
        let (mut count, mut total) = (0u64, 0usize);
        for _ in 0..entries {
            let Some((b, t)) = self.q.front() else { break };
            let rem = b.len() - self.head_off;
            if n < rem {
                self.head_off += n;
                break;
            }
            n -= rem;
            count += 1;
            total += b.len();
            if *t != 0 {
                out.push((b.len(), *t));
            }
            self.q.pop_front();
            self.head_off = 0;
        }
        self.front_seq += count;
        (count, total)
    }

    /// Removes every entry not covered by the op in flight.
    pub fn drain_unsent(&mut self, out: &mut Vec<(usize, u64)>) {
        let keep = self.planned.unwrap_or(0).min(self.q.len());
        out.extend(self.q.drain(keep..).map(|(b, t)| (b.len(), t)));
        if keep == 0 {
            self.head_off = 0;
            self.front_seq = self.next_seq;
        }
    }
}

impl Core {
    /// Applies a stream op's result; returns true when the backend should wait for writability.
    pub(super) fn complete_stream(
        &mut self,
        idx: u32,
        entries: usize,
        bytes: usize,
        res: i32,
        now_ns: u64,
    ) -> bool {
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("complete on a live socket");
        let Queue::Stream(q) = &mut s.queue else {
            return false;
        };
        q.unplan();
        if res < 0 {
            // `wrapping_neg`: a corrupt `i32::MIN` result must not panic (it maps to `Other`).
            let errno = res.wrapping_neg();
            if is_retry(errno) {
                self.stats.retries += 1;
                return errno == libc::EAGAIN;
            }
            self.poison(idx, errno, now_ns);
            return false;
        }
        let n = res as usize;
        if n > bytes {
            // The kernel never reports more than it was given; if it does, the stream is corrupt.
            self.poison(idx, libc::EIO, now_ns);
            return false;
        }
        let mut sampled = std::mem::take(&mut self.scratch);
        let (count, total) = q.consume(n, entries, &mut sampled);
        s.acc.bytes += n as u64;
        self.stats.bytes_sent += n as u64;
        if n < bytes {
            self.stats.short_sends += 1;
        }
        // Hot path: the whole op in one step; only sampled writes touch the histogram.
        self.ended_ok(idx, count, total, &sampled, now_ns);
        sampled.clear();
        self.scratch = sampled;
        false
    }

    /// A fatal stream error: later sends fail fast with it, queued writes fail with it now.
    pub(super) fn poison(&mut self, idx: u32, errno: i32, now_ns: u64) {
        let id = self.id_of(idx);
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("poison on a live socket");
        let err = Error::socket(errno, id, s.peer);
        if s.poisoned.is_none() {
            s.poisoned = Some(err.clone());
        }
        self.fail_unsent(idx, &err, now_ns);
    }
}

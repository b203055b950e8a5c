//! The TCP stream queue: at most one op in flight, short sends resume at the exact byte, and
//! small writes copied at `send` time into staging chunks.
//!
//! A write of at most `coalesce_below_bytes` is copied into the open staging chunk when it is
//! queued and its `Bytes` released at once: no queue entry per message, and a run of small
//! writes costs the kernel one iovec. The chunk is sealed (frozen into an entry) when an op is
//! planned or it is full; writes queued while an op is in flight go into the next chunk. Bigger
//! writes are queued by reference (no copy). Each write keeps its own outcome: a chunk records
//! where each of its writes ends, so a short send completes exactly the writes it covered.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::class::{classify, Class, OpKind};
use super::{Clock, Config, Core, OpShape, Queue};
use crate::error::Error;
use crate::plan::cut_stream;

/// One queued entry: a write taken by reference, or a sealed staging chunk of small writes.
#[derive(Debug)]
struct Entry {
    data: Bytes,
    /// For a chunk: the end offset of each of its writes in `data`; empty for a single write.
    ends: Vec<u32>,
    /// Writes of this entry already completed (a chunk that was partly sent).
    counted: usize,
    /// Queue time of the entry's sampled write (0: none sampled).
    queued_ns: u64,
}

impl Entry {
    fn writes(&self) -> usize {
        self.ends.len().max(1)
    }

    /// Length of write `i` of this entry.
    fn write_len(&self, i: usize) -> usize {
        if self.ends.is_empty() {
            return self.data.len();
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.ends[i] as usize - start
    }
}

/// Writes of one stream, oldest first. The front entry may be partly sent (`head_off`).
#[derive(Debug, Default)]
pub(crate) struct StreamQueue {
    q: VecDeque<Entry>,
    /// The open staging chunk: small writes queued since the last seal.
    tail: BytesMut,
    /// End offsets of the writes in `tail`.
    tail_ends: Vec<u32>,
    /// Spare end-offset vectors (no allocation per chunk in the steady state).
    spare_ends: Vec<Vec<u32>>,
    tail_ns: u64,
    /// Sequence number of the oldest write that is not terminal.
    front_seq: u64,
    next_seq: u64,
    /// Bytes of the front entry the kernel has already taken.
    head_off: usize,
    /// Entries covered by the op in flight, if one is.
    planned: Option<usize>,
}

impl StreamQueue {
    /// Queues a write: copied into the staging chunk if it is at most `stage_below` bytes (a
    /// full chunk is sealed and a fresh one of `chunk_bytes` started), else taken by reference.
    #[inline(always)]
    pub fn push(&mut self, data: Bytes, queued_ns: u64, stage_below: usize, chunk_bytes: usize) {
        if data.len() <= stage_below {
            if self.tail.capacity() - self.tail.len() < data.len() {
                self.new_chunk(chunk_bytes);
            }
            self.tail.extend_from_slice(&data);
            // A chunk holds at most `coalesce_max_bytes` ≤ u32::MAX bytes (`Config::clamped`).
            self.tail_ends
                .push(u32::try_from(self.tail.len()).unwrap_or(u32::MAX));
            if queued_ns != 0 {
                self.sampled(queued_ns);
            }
        } else {
            self.seal();
            self.q.push_back(Entry {
                data,
                ends: Vec::new(),
                counted: 0,
                queued_ns,
            });
        }
        self.next_seq += 1;
    }

    /// Queues a chunk filled by a [`crate::StreamWriter`], after everything queued before it:
    /// `ends` says where each of its writes ends in `data` (empty: `data` is one write). Hands
    /// back an empty end-offset vector for the writer's next chunk.
    pub fn push_chunk(&mut self, data: Bytes, ends: Vec<u32>) -> Vec<u32> {
        self.seal();
        self.next_seq += ends.len().max(1) as u64;
        self.q.push_back(Entry {
            data,
            ends,
            counted: 0,
            queued_ns: 0,
        });
        self.spare_ends.pop().unwrap_or_default()
    }

    /// The open staging chunk's memory for a [`crate::StreamWriter`], after sealing what it
    /// holds (writes staged by `send` keep their place in the queue): the writer fills the rest
    /// of the same 64 KiB buffer instead of allocating one. Given back by
    /// [`StreamQueue::restage`]; a writer that is leaked just takes it along.
    pub fn take_stage(&mut self) -> BytesMut {
        self.seal();
        std::mem::take(&mut self.tail)
    }

    /// Takes back a writer's staging memory with the writes it holds (`ends`: where each ends
    /// in `stage`; after everything queued before them): they stay staged where they lie, as
    /// small writes `send` stages, until an op is planned — or a flush's solo send takes them
    /// from there. Hands back the writer's end-offset vector if it was not kept. Only while the
    /// writer holds the stream's staging (nothing was staged meanwhile, which a writer's
    /// borrow of the engine rules out); else its writes are queued as a chunk.
    pub fn restage(&mut self, stage: BytesMut, ends: Vec<u32>) -> Vec<u32> {
        if self.tail_ends.is_empty() && self.tail.capacity() == 0 {
            self.next_seq += ends.len() as u64;
            self.tail = stage;
            return std::mem::replace(&mut self.tail_ends, ends);
        }
        if ends.is_empty() {
            return ends;
        }
        self.push_chunk(stage.freeze(), ends)
    }

    /// An empty end-offset vector, with capacity if one is spare (a writer's first chunk).
    pub fn spare_ends(&mut self) -> Vec<u32> {
        self.spare_ends.pop().unwrap_or_default()
    }

    /// Takes back a writer's unused end-offset vector for later chunks.
    pub fn return_ends(&mut self, mut ends: Vec<u32>) {
        if ends.capacity() > 0 && self.spare_ends.len() < 4 {
            ends.clear();
            self.spare_ends.push(ends);
        }
    }

    /// Seals the open chunk and starts a fresh one of `chunk_bytes`.
    #[cold]
    fn new_chunk(&mut self, chunk_bytes: usize) {
        self.seal();
        self.tail = BytesMut::with_capacity(chunk_bytes);
    }

    /// Notes the queue time of a sampled write of the open chunk (the first one counts).
    #[cold]
    fn sampled(&mut self, queued_ns: u64) {
        if self.tail_ns == 0 {
            self.tail_ns = queued_ns;
        }
    }

    /// Freezes the open staging chunk into an entry (the kernel may read it from now on; later
    /// small writes go into fresh memory after it).
    fn seal(&mut self) {
        if self.tail_ends.is_empty() {
            return;
        }
        let data = self.tail.split().freeze();
        let spare = self.spare_ends.pop().unwrap_or_default();
        let ends = std::mem::replace(&mut self.tail_ends, spare);
        self.q.push_back(Entry {
            data,
            ends,
            counted: 0,
            queued_ns: std::mem::take(&mut self.tail_ns),
        });
    }

    /// Writes accepted and not terminal (after a failure drained the writes behind an op in
    /// flight, they count until that op completes).
    pub fn len(&self) -> usize {
        usize::try_from(self.next_seq - self.front_seq).unwrap_or(usize::MAX)
    }

    pub fn has_unsent(&self) -> bool {
        self.planned.is_none() && (!self.q.is_empty() || !self.tail_ends.is_empty())
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every write with a sequence number below this is terminal.
    pub fn done_upto(&self) -> u64 {
        if self.q.is_empty() && self.tail_ends.is_empty() {
            self.next_seq
        } else {
            self.front_seq
        }
    }

    pub fn plan(&mut self, cfg: &Config) -> Option<OpShape> {
        if self.planned.is_some() {
            return None;
        }
        self.seal();
        let head_off = self.head_off;
        let lens = self.q.iter().enumerate().map(|(i, e)| {
            if i == 0 {
                e.data.len() - head_off
            } else {
                e.data.len()
            }
        });
        let cut = cut_stream(lens, cfg.max_iovecs_per_op, cfg.max_bytes_per_op)?;
        self.planned = Some(cut.entries);
        Some(OpShape::Stream {
            entries: cut.entries,
            bytes: cut.bytes,
        })
    }

    /// Everything unsent, when it is one buffer sent from its first byte and nothing is
    /// planned: the open staging chunk alone, or one entry alone (a flush may send it itself:
    /// [`Core::solo`](super::Core::solo)).
    #[inline]
    pub fn solo(&self) -> Option<&[u8]> {
        if self.planned.is_some() || self.head_off != 0 {
            return None;
        }
        match (self.q.front(), self.tail_ends.is_empty()) {
            (None, false) => Some(&self.tail),
            (Some(e), true) if self.q.len() == 1 => Some(&e.data),
            _ => None,
        }
    }

    /// The [`StreamQueue::solo`] buffer went out whole: its writes are done. A staging chunk
    /// sent from where it lies is emptied in place (its memory takes the next small writes; no
    /// entry was made for it). Returns the count and total length of the writes, and (length,
    /// queued time) if one of them was sampled.
    #[inline(always)]
    pub fn solo_sent(&mut self) -> ((u64, usize), Option<(usize, u64)>) {
        let (count, total, sampled) = if self.q.is_empty() {
            let (count, total) = (self.tail_ends.len(), self.tail.len());
            let t = std::mem::take(&mut self.tail_ns);
            self.tail.clear();
            self.tail_ends.clear();
            (count, total, (t != 0).then_some((total, t)))
        } else {
            self.pop_whole()
        };
        self.front_seq += count as u64;
        ((count as u64, total), sampled)
    }

    /// Clones the references to the buffers of the op in flight (a zero-copy op keeps them
    /// until its notification, whatever the queue does meanwhile).
    pub fn hold_planned(&self, out: &mut Vec<Bytes>) {
        let Some(entries) = self.planned else {
            return;
        };
        out.extend(self.q.iter().take(entries).map(|e| e.data.clone()));
    }

    pub fn unplan(&mut self) {
        self.planned = None;
    }

    /// The iovecs of the op in flight: its entries, the first from `head_off`, the last cut at
    /// the op's byte count by the caller's iovec builder.
    pub fn slices(&self, bytes: usize, f: &mut impl FnMut(&[u8])) {
        let Some(entries) = self.planned else {
            return;
        };
        let mut left = bytes;
        for (i, e) in self.q.iter().take(entries).enumerate() {
            let start = if i == 0 { self.head_off } else { 0 };
            let len = (e.data.len() - start).min(left);
            f(&e.data[start..start + len]);
            left -= len;
        }
    }

    /// Consumes `n` bytes taken by the kernel from the first `entries` entries; pushes the
    /// (length, queued time) of every sampled write that is now fully sent.
    ///
    /// Returns the count and total length of the writes that completed, so the caller accounts
    /// for them in one step.
    fn consume(
        &mut self,
        mut n: usize,
        entries: usize,
        out: &mut Vec<(usize, u64)>,
    ) -> (u64, usize) {
        let (mut count, mut total) = (0usize, 0usize);
        for _ in 0..entries {
            let Some(e) = self.q.front_mut() else { break };
            let rem = e.data.len() - self.head_off;
            let take = n.min(rem);
            n -= take;
            let upto = self.head_off + take;
            if take < rem {
                // Partly sent: the chunk's writes that now end within what was sent are done.
                while e.counted < e.ends.len() && e.ends[e.counted] as usize <= upto {
                    total += e.write_len(e.counted);
                    e.counted += 1;
                    count += 1;
                }
                self.head_off = upto;
                break;
            }
            let (c, t, sampled) = self.pop_whole();
            count += c;
            total += t;
            out.extend(sampled);
        }
        self.front_seq += count as u64;
        (count as u64, total)
    }

    /// Ends the front entry, sent whole: returns the count and total length of its writes not
    /// counted yet, in one step, and (length, queued time) if it holds a sampled write.
    #[inline]
    fn pop_whole(&mut self) -> (usize, usize, Option<(usize, u64)>) {
        let Some(e) = self.q.pop_front() else {
            return (0, 0, None);
        };
        let before = match e.counted {
            0 => 0,
            k => e.ends[k - 1] as usize,
        };
        let count = e.writes() - e.counted;
        let total = e.data.len() - before;
        let sampled = (e.queued_ns != 0).then_some((e.data.len(), e.queued_ns));
        let mut ends = e.ends;
        if ends.capacity() > 0 && self.spare_ends.len() < 4 {
            ends.clear();
            self.spare_ends.push(ends);
        }
        self.head_off = 0;
        (count, total, sampled)
    }

    /// Removes every write not covered by the op in flight; pushes (length, queued time) of each.
    pub fn drain_unsent(&mut self, out: &mut Vec<(usize, u64)>) {
        self.seal();
        let keep = self.planned.unwrap_or(0).min(self.q.len());
        for e in self.q.drain(keep..) {
            let mut t = e.queued_ns;
            for i in e.counted..e.writes() {
                out.push((e.write_len(i), std::mem::take(&mut t)));
            }
        }
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
        clock: &mut Clock<'_>,
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
            if classify(errno, OpKind::Stream) == Class::Retry {
                self.stats.retries += 1;
                return errno == libc::EAGAIN;
            }
            // An empty write ends where it starts: those at the front of what is unsent (in
            // this op or queued behind it) start at the last byte sent and are complete,
            // whichever op carries them (one of their own returns 0; one that also carries the
            // next write fails) — the backends cut ops differently. Nothing is in flight now.
            q.seal();
            let mut sampled = std::mem::take(&mut self.scratch);
            let ended = q.consume(0, q.q.len(), &mut sampled);
            if ended.0 > 0 {
                self.ended_ok(idx, ended, 0, &sampled, clock);
            }
            sampled.clear();
            self.scratch = sampled;
            self.poison(idx, errno, clock.get());
            return false;
        }
        let n = res as usize;
        if n > bytes {
            // The kernel never reports more than it was given; if it does, the stream is corrupt.
            self.poison(idx, libc::EIO, clock.get());
            return false;
        }
        let mut sampled = std::mem::take(&mut self.scratch);
        let ended = q.consume(n, entries, &mut sampled);
        if n < bytes {
            self.stats.short_sends += 1;
        }
        // Hot path: the whole op in one step; only sampled writes touch the histogram.
        self.ended_ok(idx, ended, n, &sampled, clock);
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
            s.accepting = false;
        }
        self.fail_unsent(idx, &err, now_ns);
    }
}

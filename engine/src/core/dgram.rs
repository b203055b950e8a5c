//! The datagram queue: many ops in flight, GSO grouping, per-datagram outcomes.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;

use super::{is_icmp_errno, is_retry, Config, Core, OpShape, Queue};
use crate::error::Error;
use crate::plan::cut_dgram;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    InFlight,
    Sent,
    Failed,
}

#[derive(Debug)]
struct Dgram {
    data: Bytes,
    dest: Option<SocketAddr>,
    queued_ns: u64,
    state: State,
    /// Never grouped again (its group was refused and re-split).
    solo: bool,
    /// ENOBUFS results so far.
    nobufs: u8,
    /// Sends of it that picked up a pending error about an earlier datagram.
    stale: u8,
}

/// Datagrams of one socket, oldest first; terminal ones leave from the front.
#[derive(Debug)]
pub(crate) struct DgramQueue {
    q: VecDeque<Dgram>,
    front_seq: u64,
    next_seq: u64,
    /// No entry below this index is `Queued`.
    scan: usize,
    /// Entries in state `Queued`.
    queued: usize,
    /// GSO for this socket (turned off at run time after EIO/EINVAL).
    pub gso: bool,
}

impl DgramQueue {
    pub fn new(gso: bool) -> DgramQueue {
        DgramQueue {
            q: VecDeque::new(),
            front_seq: 0,
            next_seq: 0,
            scan: 0,
            queued: 0,
            gso,
        }
    }

    #[inline]
    pub fn push(&mut self, data: Bytes, dest: Option<SocketAddr>, queued_ns: u64) {
        self.q.push_back(Dgram {
            data,
            dest,
            queued_ns,
            state: State::Queued,
            solo: false,
            nobufs: 0,
            stale: 0,
        });
        self.next_seq += 1;
        self.queued += 1;
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn has_queued(&self) -> bool {
        self.queued > 0
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn done_upto(&self) -> u64 {
        if self.q.is_empty() {
            self.next_seq
        } else {
            self.front_seq
        }
    }

    pub fn plan(&mut self, cfg: &Config) -> Option<(OpShape, Option<SocketAddr>)> {
        while self.scan < self.q.len() && self.q[self.scan].state != State::Queued {
            self.scan += 1;
        }
        let first = self.q.get(self.scan)?;
        let dest = first.dest;
        let gso = cfg.gso && self.gso && !first.solo;
        // The first datagram always goes (alone if it is solo); others join only if eligible.
        let lens = self
            .q
            .range(self.scan..)
            .enumerate()
            .take_while(|(i, d)| *i == 0 || (d.state == State::Queued && d.dest == dest && !d.solo))
            .map(|(_, d)| d.data.len());
        let cut = cut_dgram(lens, gso, cfg.gso_max_segments, cfg.gso_max_bytes)?;
        let start = self.scan;
        for d in self.q.range_mut(start..start + cut.count) {
            d.state = State::InFlight;
        }
        self.queued -= cut.count;
        self.scan += cut.count;
        let shape = OpShape::Dgram {
            first_seq: self.front_seq + start as u64,
            count: cut.count,
            segment_size: cut.segment_size,
            bytes: cut.bytes,
        };
        Some((shape, dest))
    }

    fn index(&self, seq: u64) -> usize {
        usize::try_from(seq - self.front_seq).expect("in-flight datagram index fits usize")
    }

    pub fn slices(&self, first_seq: u64, count: usize, f: &mut impl FnMut(&[u8])) {
        let i = self.index(first_seq);
        for d in self.q.range(i..i + count) {
            f(&d.data);
        }
    }

    /// For an ENOBUFS result on the datagram at `first_seq`: counts it and returns the backoff
    /// before the next try (1, 2, 4, 8 ms: ≤ 16 ms in all), or `None` once `retries` are used up
    /// (the datagram then counts as dropped) or for any other errno.
    fn nobufs_backoff_ns(&mut self, errno: i32, first_seq: u64, retries: u8) -> Option<u64> {
        if errno != libc::ENOBUFS {
            return None;
        }
        let i = self.index(first_seq);
        let d = &mut self.q[i];
        d.nobufs += 1;
        (d.nobufs <= retries).then(|| 1_000_000u64 << (d.nobufs - 1))
    }

    /// For a pending-error result (`is_icmp_errno`): the error is about an earlier datagram and nothing of this op was sent, so it goes again —
    /// at most `STALE_RESENDS` times per datagram. Each pending error is consumed by the one send
    /// that picks it up and comes from an earlier datagram that was sent, so resends end by
    /// themselves; the bound holds even against a stream of forged ICMP messages. It is high
    /// because a batch mixing many dead and live destinations chains: a resent datagram can
    /// pick up the error of a resent dead one ahead of it, round after round.
    fn stale_resend(&mut self, first_seq: u64) -> bool {
        const STALE_RESENDS: u8 = 32;
        let i = self.index(first_seq);
        let d = &mut self.q[i];
        d.stale += 1;
        d.stale <= STALE_RESENDS
    }

    /// Datagrams in flight from `first_seq` go back to the queue; `solo` keeps them out of groups.
    pub fn requeue(&mut self, first_seq: u64, count: usize, solo: bool) {
        let i = self.index(first_seq);
        for d in self.q.range_mut(i..i + count) {
            d.state = State::Queued;
            d.solo |= solo;
        }
        self.queued += count;
        self.scan = self.scan.min(i);
    }

    /// Marks datagrams terminal; pushes (length, queued time) of every one for a failure, of the
    /// sampled ones for a success; returns their total length.
    fn mark(
        &mut self,
        first_seq: u64,
        count: usize,
        state: State,
        out: &mut Vec<(usize, u64)>,
    ) -> usize {
        let i = self.index(first_seq);
        let mut total = 0;
        for d in self.q.range_mut(i..i + count) {
            d.state = state;
            total += d.data.len();
            if state == State::Failed || d.queued_ns != 0 {
                out.push((d.data.len(), d.queued_ns));
            }
            // Terminal: the kernel is done with it. Behind an older datagram still in flight it
            // is released now (else it would outlive the queued-bytes limit); at the front,
            // `pop_terminal` drops it right after.
            if i > 0 {
                d.data = Bytes::new();
            }
        }
        total
    }

    /// Drops terminal datagrams from the front, releasing their buffers.
    fn pop_terminal(&mut self) {
        while let Some(d) = self.q.front() {
            if !matches!(d.state, State::Sent | State::Failed) {
                break;
            }
            self.q.pop_front();
            self.front_seq += 1;
            self.scan = self.scan.saturating_sub(1);
        }
    }

    /// Fails every datagram that is not in flight.
    pub fn drain_queued(&mut self, out: &mut Vec<(usize, u64)>) {
        for d in self.q.iter_mut().filter(|d| d.state == State::Queued) {
            d.state = State::Failed;
            out.push((d.data.len(), d.queued_ns));
        }
        self.queued = 0;
        self.pop_terminal();
    }
}

impl Core {
    /// Applies a datagram op's result; returns true when the socket must wait for writability.
    #[expect(clippy::too_many_arguments, reason = "one op's shape, unpacked")]
    pub(super) fn complete_dgram(
        &mut self,
        idx: u32,
        first_seq: u64,
        count: usize,
        gso: bool,
        bytes: usize,
        res: i32,
        now_ns: u64,
    ) -> bool {
        let id = self.id_of(idx);
        let nobufs_retries = self.cfg.nobufs_retries;
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("complete on a live socket");
        let peer = s.peer;
        let Queue::Dgram(q) = &mut s.queue else {
            return false;
        };
        let mut done = std::mem::take(&mut self.scratch);
        let mut failed: Option<Error> = None;
        let mut again = false;
        let mut errqueue = false;
        if res >= 0 {
            // UDP sends are all or nothing: a result means every datagram of the op left.
            let total = q.mark(first_seq, count, State::Sent, &mut done);
            if gso && count > 1 {
                self.stats.gso_sends += 1;
            }
            self.stats.bytes_sent += bytes as u64;
            s.acc.bytes += bytes as u64;
            self.ended_ok(idx, count as u64, total, &done, now_ns);
            done.clear();
        } else {
            // `wrapping_neg`: a corrupt `i32::MIN` result must not panic (it maps to `Other`).
            let errno = res.wrapping_neg();
            if is_retry(errno) {
                q.requeue(first_seq, count, false);
                self.stats.retries += 1;
                again = errno == libc::EAGAIN;
            } else if gso
                && count > 1
                && matches!(
                    errno,
                    libc::EIO | libc::EINVAL | libc::EMSGSIZE | libc::ENOBUFS
                )
            {
                // The group was refused as a whole. EIO/EINVAL: the device or route cannot segment,
                // so GSO goes off for this socket. EMSGSIZE, ENOBUFS: re-split so every datagram
                // gets its own outcome (FAILURES.md items 13, 14).
                if errno == libc::EIO || errno == libc::EINVAL {
                    q.gso = false;
                    q.requeue(first_seq, count, false);
                } else {
                    q.requeue(first_seq, count, true);
                }
                self.stats.gso_fallbacks += 1;
            } else if let Some(delay_ns) = q.nobufs_backoff_ns(errno, first_seq, nobufs_retries) {
                q.requeue(first_seq, count, false);
                s.retry_at_ns = Some(now_ns + delay_ns);
                self.backoff.push(idx);
                self.stats.retries += 1;
            } else if is_icmp_errno(errno) && q.stale_resend(first_seq) {
                // A pending socket error set by an ICMP message about an earlier datagram (a
                // connected socket always gets them; an unconnected one with IP_RECVERR). The
                // send that picked it up sent nothing, so this op goes again (FAILURES.md item
                // 11). Connected or not, with or without IP_RECVERR, on either backend, the
                // outcome is the same: each datagram is reported as what happened to it (a
                // `sendmmsg` consumes such an error silently on epoll, and resending is what
                // io_uring must do to agree). With IP_RECVERR the error queue names the
                // destination the error is about ([`Core::peer_error`]).
                q.requeue(first_seq, count, false);
                self.stats.stale_error_resends += count as u64;
                errqueue = true;
            } else {
                // The first datagram takes the error. For a single datagram that is all of it; for
                // a GSO group it is a pending socket error (a stale ICMP: ECONNREFUSED,
                // EHOSTUNREACH, …) that refused the call before anything was sent and was consumed
                // by it, so the rest go again (FAILURES.md item 11). Re-splitting instead would lose
                // the error (on epoll also the next one: sendmmsg drops an error that follows a
                // sent datagram).
                errqueue = is_icmp_errno(errno);
                let i = q.index(first_seq);
                let dest = q.q[i].dest.or(peer);
                q.mark(first_seq, 1, State::Failed, &mut done);
                if count > 1 {
                    q.requeue(first_seq + 1, count - 1, false);
                }
                failed = Some(Error::socket(errno, id, dest));
            }
        }
        if let Some(err) = &failed {
            for &(len, t) in &done {
                self.ended_failed(idx, len, t, now_ns, err);
            }
        }
        if let Some(Queue::Dgram(q)) = self.socks[idx as usize].sock.as_mut().map(|s| &mut s.queue)
        {
            q.pop_terminal();
        }
        done.clear();
        self.scratch = done;
        if errqueue {
            self.want_errqueue(idx);
        }
        again
    }
}

//! The datagram queue: many ops in flight, destination-grouped GSO, per-datagram outcomes.
//!
//! Planning groups the queued datagrams of one pass by destination: datagrams to the same
//! destination join one GSO send even when other destinations' datagrams sit between them (a
//! relay sends each frame to every peer in turn), in their order per destination, under the GSO
//! shape rules of [`crate::plan::gso_join`]. Groups are issued in the order of their first
//! datagram. Order across destinations is not kept (it has no meaning on the wire); order per
//! destination is.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;

use bytes::Bytes;

use super::class::{classify, Class, OpKind};
use super::{live_mut, Clock, Config, Core, OpShape, Queue};
use crate::error::Error;
use crate::plan::{gso_can_lead, gso_join, Join};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Queued,
    /// In a group of `DgramQueue::ahead`, not yet issued.
    Planned,
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
    /// Its GSO group was refused with EIO/EINVAL: sent alone, it tells whether the device
    /// cannot segment (it goes) or the error was its own (it fails too).
    gso_probe: bool,
}

/// A group planned by a pass: datagrams (by sequence number) for one send.
#[derive(Debug)]
struct Group {
    seqs: Vec<u64>,
    dest: Option<SocketAddr>,
    /// The first datagram's length: every other segment has it, the last may be shorter.
    seg: usize,
    bytes: usize,
    /// Takes no more datagrams.
    closed: bool,
}

/// FNV-1a: destinations are hashed once per datagram per pass; SipHash's resistance is not
/// needed for addresses the application chose.
#[derive(Debug, Default, Clone, Copy)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Datagrams of one socket, oldest first; terminal ones leave from the front.
#[derive(Debug, Default)]
pub(crate) struct DgramQueue {
    q: VecDeque<Dgram>,
    front_seq: u64,
    next_seq: u64,
    /// No entry below this index is `Queued`.
    scan: usize,
    /// Entries in state `Queued`.
    queued: usize,
    /// GSO for this socket (turned off at run time once a group refused with EIO/EINVAL is
    /// sent alone, datagram by datagram, and one goes).
    pub gso: bool,
    /// Datagrams with `gso_probe` not yet terminal: no new groups meanwhile.
    probing: usize,
    /// A datagram with `gso_probe` was sent (set by `mark`).
    probe_sent: bool,
    /// Groups planned by the last pass and not yet issued, by their first datagram.
    ahead: VecDeque<Group>,
    /// The datagrams of each op in flight, by group slot (`OpShape::Dgram::group`).
    flying: Vec<Vec<u64>>,
    free_slots: Vec<u32>,
    /// Spare sequence vectors (no allocation per op in the steady state).
    spare: Vec<Vec<u64>>,
    /// Reused by each pass: destination → index in `ahead` of its open group.
    open: HashMap<Option<SocketAddr>, usize, BuildHasherDefault<Fnv>>,
    /// Destinations that answered with an ICMP error (a peer error), by canonical address → the
    /// pass of the last report. For [`NOISY_PASSES`] passes after a report, their groups go
    /// last in a pass and the error queue is read right after them (see
    /// [`DgramQueue::errq_after`]), so the error they draw never fails another destination's
    /// send.
    noisy: HashMap<SocketAddr, u32, BuildHasherDefault<Fnv>>,
    /// Grouping passes so far (the clock of `noisy`).
    passes: u32,
    /// Groups to noisy destinations planned since the last [`DgramQueue::take_errq_after`]:
    /// error-queue entries to read once they have gone out.
    errq_after: usize,
    /// Datagrams (first of a failed op, with its errno) whose ICMP-class error is either a stale
    /// pending error or their own, until the error queue has been read
    /// ([`Core::errqueue_read`]): nothing of the socket goes out meanwhile.
    suspects: Vec<(u64, i32, usize)>,
    /// Error-queue entries read for this socket (`Event::PeerError`: an io_uring read queued
    /// behind the sends) while it had suspects: they count for [`Core::errqueue_read`] as
    /// the reports of the read it waits for.
    suspect_reports: usize,
    /// Peer-error sampling (`Config::peer_error_sampling`): error-queue reads in a row behind
    /// noisy groups that found reports.
    errq_streak: u8,
    /// Peer-error sampling: `IP_RECVERR` is off since this pass (the socket is *quiet*).
    quiet_since: Option<u32>,
}

/// How many grouping passes a destination stays noisy after its last ICMP report.
const NOISY_PASSES: u32 = 64;

/// Peer-error sampling: reads in a row that found ICMP reports before the socket goes quiet.
const QUIET_AFTER: u8 = 2;

/// Peer-error sampling: grouping passes a quiet socket stays quiet.
pub(crate) const QUIET_PASSES: u32 = 64;

impl DgramQueue {
    pub fn new(gso: bool) -> DgramQueue {
        DgramQueue {
            gso,
            ..DgramQueue::default()
        }
    }

    #[inline(always)]
    pub fn push(&mut self, data: Bytes, dest: Option<SocketAddr>, queued_ns: u64) {
        self.q.push_back(Dgram {
            data,
            dest,
            queued_ns,
            state: State::Queued,
            solo: false,
            nobufs: 0,
            stale: 0,
            gso_probe: false,
        });
        self.next_seq += 1;
        self.queued += 1;
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn has_queued(&self) -> bool {
        (self.queued > 0 || !self.ahead.is_empty()) && self.suspects.is_empty()
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

    pub(super) fn index(&self, seq: u64) -> usize {
        usize::try_from(seq - self.front_seq).expect("in-flight datagram index fits usize")
    }

    fn spare_vec(&mut self) -> Vec<u64> {
        self.spare.pop().unwrap_or_default()
    }

    pub(super) fn recycle(&mut self, mut v: Vec<u64>) {
        v.clear();
        self.spare.push(v);
    }

    /// Groups every queued datagram by destination (see the module docs) into `ahead`.
    fn group_pass(&mut self, cfg: &Config) {
        let gso = cfg.gso && self.gso && self.probing == 0;
        let max_segments = cfg.gso_max_segments;
        let max_bytes = cfg.gso_max_bytes;
        self.open.clear();
        // The destination of the last datagram and its open group: runs to one destination
        // (a connected socket, a burst to one peer) skip the hash.
        let mut last: Option<(Option<SocketAddr>, usize)> = None;
        for i in self.scan..self.q.len() {
            if self.q[i].state != State::Queued {
                continue;
            }
            let seq = self.front_seq + i as u64;
            let d = &mut self.q[i];
            d.state = State::Planned;
            let (dest, len, solo) = (d.dest, d.data.len(), d.solo);
            self.queued -= 1;
            let open = if !gso || solo {
                None
            } else if let Some((_, gi)) = last.filter(|(dst, _)| *dst == dest) {
                Some(gi)
            } else {
                self.open.get(&dest).copied()
            };
            let joined = match open {
                Some(gi) => {
                    let g = &mut self.ahead[gi];
                    match gso_join(g.seg, g.seqs.len(), g.bytes, len, max_segments, max_bytes) {
                        Join::Yes => {
                            g.seqs.push(seq);
                            g.bytes += len;
                            true
                        }
                        Join::Last => {
                            g.seqs.push(seq);
                            g.bytes += len;
                            g.closed = true;
                            self.open.remove(&dest);
                            last = None;
                            true
                        }
                        Join::No => false,
                    }
                }
                None => false,
            };
            if joined {
                continue;
            }
            let mut seqs = self.spare_vec();
            seqs.push(seq);
            // A datagram that cannot lead a group (GSO off, solo, empty, too big) goes alone.
            let alone = !gso || solo || !gso_can_lead(len, max_segments, max_bytes);
            self.ahead.push_back(Group {
                seqs,
                dest,
                seg: len,
                bytes: len,
                closed: alone,
            });
            if alone {
                if open.is_some() {
                    self.open.remove(&dest);
                }
                last = None;
            } else {
                let gi = self.ahead.len() - 1;
                self.open.insert(dest, gi);
                last = Some((dest, gi));
            }
        }
        self.scan = self.q.len();
        self.passes = self.passes.wrapping_add(1);
        if !self.noisy.is_empty() {
            self.noisy_last();
        }
    }

    /// Whether `dest` drew an ICMP error within the last [`NOISY_PASSES`] passes.
    fn is_noisy(&self, dest: Option<SocketAddr>) -> bool {
        dest.and_then(|d| self.noisy.get(&super::peer::canonical(d)))
            .is_some_and(|&p| self.passes.wrapping_sub(p) < NOISY_PASSES)
    }

    /// Moves the groups of the pass that go to noisy destinations behind the others (order per
    /// destination is kept; order across destinations has no meaning on the wire), and forgets
    /// destinations that have been quiet for [`NOISY_PASSES`] passes.
    #[cold]
    fn noisy_last(&mut self) {
        let passes = self.passes;
        if self.quiet_since.is_none() {
            // (Quiet, no reports can come: the destinations stay noisy until it ends.)
            self.noisy
                .retain(|_, p| passes.wrapping_sub(*p) < NOISY_PASSES);
        }
        if self.ahead.iter().any(|g| self.is_noisy(g.dest)) {
            let ahead = std::mem::take(&mut self.ahead);
            let (mut quiet, noisy): (VecDeque<Group>, VecDeque<Group>) =
                ahead.into_iter().partition(|g| !self.is_noisy(g.dest));
            quiet.extend(noisy);
            self.ahead = quiet;
        }
    }

    /// Peer-error sampling: notes a read of the error queue behind noisy groups that found
    /// `reports` entries; true when the socket should now go quiet (`IP_RECVERR` off):
    /// [`QUIET_AFTER`] reads in a row found some. Each such read costs a transition of its own
    /// on epoll, for a report the caller has most likely seen already.
    pub fn note_errq_read(&mut self, reports: usize) -> bool {
        if reports == 0 {
            self.errq_streak = 0;
            return false;
        }
        self.errq_streak = self.errq_streak.saturating_add(1);
        self.errq_streak >= QUIET_AFTER
    }

    /// `IP_RECVERR` goes off: no error-queue reads, no pending errors from ICMP (an unconnected
    /// socket gets none without it), noisy destinations kept as they are.
    pub fn go_quiet(&mut self) {
        self.quiet_since = Some(self.passes);
        self.errq_streak = 0;
    }

    /// `IP_RECVERR` goes back on: the noisy destinations count as just reported, so their
    /// groups go last again and the error queue is read behind them.
    pub fn go_loud(&mut self) {
        self.quiet_since = None;
        self.errq_streak = 0;
        let passes = self.passes;
        for p in self.noisy.values_mut() {
            *p = passes;
        }
    }

    /// `IP_RECVERR` is off for sampling.
    pub fn quiet(&self) -> bool {
        self.quiet_since.is_some()
    }

    /// The socket has been quiet for [`QUIET_PASSES`] passes.
    pub fn quiet_over(&self) -> bool {
        self.quiet_since
            .is_some_and(|p| self.passes.wrapping_sub(p) >= QUIET_PASSES)
    }

    /// Notes an ICMP error about `dest` (see `noisy`), read from the error queue: a report for
    /// the suspects' verdict too, if any wait for one.
    pub fn mark_noisy(&mut self, dest: SocketAddr) {
        self.noisy.insert(dest, self.passes);
        if !self.suspects.is_empty() {
            self.suspect_reports += 1;
        }
    }

    /// Error-queue entries to read once the ops planned so far have gone out (one per group
    /// to a noisy destination), and resets the count.
    pub fn take_errq_after(&mut self) -> usize {
        std::mem::take(&mut self.errq_after)
    }

    /// Groups to noisy destinations planned since the last [`DgramQueue::take_errq_after`].
    pub fn errq_after(&self) -> usize {
        self.errq_after
    }

    /// The next op: a group of the current pass (a new pass when none is left).
    pub fn plan(&mut self, cfg: &Config) -> Option<(OpShape, Option<SocketAddr>)> {
        if self.ahead.is_empty() {
            self.group_pass(cfg);
        }
        let g = self.ahead.pop_front()?;
        if !self.noisy.is_empty() && self.quiet_since.is_none() && self.is_noisy(g.dest) {
            self.errq_after += 1;
        }
        for &seq in &g.seqs {
            let i = self.index(seq);
            self.q[i].state = State::InFlight;
        }
        let count = g.seqs.len();
        let segment_size = if count >= 2 {
            u16::try_from(g.seg).ok()
        } else {
            None
        };
        let first_seq = g.seqs[0];
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.flying[s as usize] = g.seqs;
                s
            }
            None => {
                self.flying.push(g.seqs);
                u32::try_from(self.flying.len() - 1).expect("fewer than 4 Gi ops in flight")
            }
        };
        let shape = OpShape::Dgram {
            first_seq,
            count,
            segment_size,
            bytes: g.bytes,
            group: slot,
        };
        Some((shape, g.dest))
    }

    /// The queue's one datagram, when it is all there is and nothing else waits (no group
    /// planned, no GSO probe, no suspect, no noisy destination): (payload, destination,
    /// sequence number), for a flush to send itself ([`Core::solo`](super::Core::solo)).
    #[inline]
    pub fn solo(&self) -> Option<(&[u8], Option<&SocketAddr>, u64)> {
        if self.q.len() != 1
            || self.queued != 1
            || !self.ahead.is_empty()
            || !self.suspects.is_empty()
            || self.probing != 0
            || !self.noisy.is_empty()
            || self.quiet_since.is_some()
        {
            return None;
        }
        let d = self.q.front()?;
        Some((&d.data, d.dest.as_ref(), self.front_seq))
    }

    /// The [`DgramQueue::solo`] datagram was sent: it ends, as [`Core::complete_dgram`] ends a
    /// sent one. Returns its length, and (length, queued time) if it was sampled.
    #[inline]
    pub fn solo_sent(&mut self) -> (usize, Option<(usize, u64)>) {
        // The queue's only datagram (`solo`), planned by no grouping pass, is terminal: it
        // leaves the queue as `pop_terminal` would take it.
        let Some(d) = self.q.pop_front() else {
            return (0, None);
        };
        self.queued -= 1;
        self.front_seq += 1;
        self.scan = 0;
        let len = d.data.len();
        (len, (d.queued_ns != 0).then_some((len, d.queued_ns)))
    }

    pub fn slices(&self, group: u32, f: &mut impl FnMut(&[u8])) {
        for &seq in &self.flying[group as usize] {
            f(&self.q[self.index(seq)].data);
        }
    }

    /// The sequence numbers of an op's datagrams, in order (the simulated kernel).
    #[cfg(any(test, fuzzing, feature = "sim"))]
    pub fn group_seqs(&self, group: u32) -> &[u64] {
        &self.flying[group as usize]
    }

    /// Puts an op back unsent (a driver did not issue it).
    pub fn requeue_group(&mut self, group: u32) {
        let seqs = self.take_group(group);
        self.requeue(&seqs, false);
        self.recycle(seqs);
    }

    /// Ends an op: its group slot is free again; returns its datagrams' sequence numbers.
    pub(super) fn take_group(&mut self, group: u32) -> Vec<u64> {
        self.free_slots.push(group);
        std::mem::take(&mut self.flying[group as usize])
    }

    /// For an ENOBUFS result on the datagram `seq`: counts it and returns the backoff before the
    /// next try (1, 2, 4, 8 ms: ≤ 16 ms in all), or `None` once `retries` are used up (the
    /// datagram then counts as dropped) or for any other errno.
    fn nobufs_backoff_ns(&mut self, errno: i32, seq: u64, retries: u8) -> Option<u64> {
        if errno != libc::ENOBUFS {
            return None;
        }
        let i = self.index(seq);
        let d = &mut self.q[i];
        d.nobufs += 1;
        (d.nobufs <= retries).then(|| 1_000_000u64 << (d.nobufs - 1))
    }

    /// For a pending-error result (`is_icmp_errno`): the error is about an earlier datagram and
    /// nothing of this op was sent, so it goes again — at most `STALE_RESENDS` times per
    /// datagram. Each pending error is consumed by the one send that picks it up and comes from
    /// an earlier datagram that was sent, so resends end by themselves; the bound holds even
    /// against a stream of forged ICMP messages. It is high because a batch mixing many dead and
    /// live destinations chains: a resent datagram can pick up the error of a resent dead one
    /// ahead of it, round after round.
    fn stale_resend(&mut self, seq: u64) -> bool {
        const STALE_RESENDS: u8 = 32;
        // Quiet (`IP_RECVERR` off for sampling, unconnected): a pending error can only be one
        // that arrived just before it went off, which one failed send consumes; a second
        // failure is the datagram's own.
        let bound = if self.quiet_since.is_some() {
            1
        } else {
            STALE_RESENDS
        };
        let i = self.index(seq);
        let d = &mut self.q[i];
        d.stale += 1;
        d.stale <= bound
    }

    /// Marks the datagrams of a group refused with EIO/EINVAL: their lone sends decide.
    fn probe_gso(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            let i = self.index(seq);
            let d = &mut self.q[i];
            if !d.gso_probe {
                d.gso_probe = true;
                self.probing += 1;
            }
        }
    }

    /// Datagrams go back to the queue; `solo` keeps them out of groups. The groups planned ahead
    /// are dissolved too, so the next pass keeps each destination's order.
    pub(super) fn requeue(&mut self, seqs: &[u64], solo: bool) {
        for &seq in seqs {
            let i = self.index(seq);
            let d = &mut self.q[i];
            d.state = State::Queued;
            d.solo |= solo;
            self.scan = self.scan.min(i);
        }
        self.queued += seqs.len();
        while let Some(g) = self.ahead.pop_front() {
            for &seq in &g.seqs {
                let i = self.index(seq);
                self.q[i].state = State::Queued;
                self.scan = self.scan.min(i);
            }
            self.queued += g.seqs.len();
            self.recycle(g.seqs);
        }
    }

    /// Marks datagrams terminal; pushes (length, queued time) of every one for a failure, of the
    /// sampled ones for a success; returns their total length.
    pub(super) fn mark(
        &mut self,
        seqs: &[u64],
        state: State,
        out: &mut Vec<(usize, u64)>,
    ) -> usize {
        let mut total = 0;
        for &seq in seqs {
            let i = self.index(seq);
            let d = &mut self.q[i];
            d.state = state;
            if d.gso_probe {
                d.gso_probe = false;
                self.probing -= 1;
                self.probe_sent |= state == State::Sent;
            }
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
    pub(super) fn pop_terminal(&mut self) {
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
        self.suspects.clear();
        self.suspect_reports = 0;
        while let Some(g) = self.ahead.pop_front() {
            self.recycle(g.seqs);
        }
        for d in self
            .q
            .iter_mut()
            .filter(|d| matches!(d.state, State::Queued | State::Planned))
        {
            if d.gso_probe {
                d.gso_probe = false;
                self.probing -= 1;
            }
            d.state = State::Failed;
            out.push((d.data.len(), d.queued_ns));
        }
        self.queued = 0;
        self.pop_terminal();
    }
}

impl Core {
    /// The verdict on the socket's suspect datagrams once its error queue has been read:
    /// `reports` ICMP reports were on it. Some: the errors were stale pending ones (each came
    /// with its entry), and the datagrams go again. None: no ICMP error was pending, so each
    /// errno was the datagram's own (a synchronous route error): it fails, once.
    pub fn errqueue_read(&mut self, idx: u32, reports: usize, now_ns: u64) {
        let id = self.id_of(idx);
        let Some(s) = live_mut(&mut self.socks, idx) else {
            return;
        };
        let peer = s.peer;
        let Queue::Dgram(q) = &mut s.queue else {
            return;
        };
        if q.suspects.is_empty() {
            return;
        }
        let suspects = std::mem::take(&mut q.suspects);
        let reports = reports + std::mem::take(&mut q.suspect_reports);
        if reports > 0 {
            for &(_, _, count) in &suspects {
                self.stats.stale_error_resends += count as u64;
            }
            self.wake(idx);
            return;
        }
        let mut done = std::mem::take(&mut self.scratch);
        let mut failed = Vec::with_capacity(suspects.len());
        for &(seq, errno, _) in &suspects {
            if seq < q.front_seq {
                continue;
            }
            let i = q.index(seq);
            if q.q[i].state != State::Queued {
                continue;
            }
            let dest = q.q[i].dest.or(peer);
            q.queued -= 1;
            let before = done.len();
            q.mark(&[seq], State::Failed, &mut done);
            failed.extend(
                done[before..]
                    .iter()
                    .map(|&d| (d, Error::socket(errno, id, dest))),
            );
        }
        q.pop_terminal();
        done.clear();
        self.scratch = done;
        for ((len, t), err) in failed {
            self.ended_failed(idx, len, t, now_ns, &err);
        }
        self.wake(idx);
    }

    /// Applies a datagram op's result; returns true when the socket must wait for writability.
    #[expect(clippy::too_many_arguments, reason = "one op's shape, unpacked")]
    pub(super) fn complete_dgram(
        &mut self,
        idx: u32,
        group: u32,
        count: usize,
        gso: bool,
        bytes: usize,
        res: i32,
        clock: &mut Clock<'_>,
    ) -> bool {
        let id = self.id_of(idx);
        let nobufs_retries = self.cfg.nobufs_retries;
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("complete on a live socket");
        let peer = s.peer;
        // Whether an ICMP message can have left a pending error (`sk_err`) for a send to pick
        // up: on a connected socket, or with IP_RECVERR (`__udp4_lib_err`, `__udp6_lib_err`).
        // A quiet socket (peer-error sampling turned IP_RECVERR off) may still hold one that
        // arrived just before.
        let pending_possible =
            s.recverr || peer.is_some() || matches!(&s.queue, Queue::Dgram(q) if q.quiet());
        let recverr = s.recverr;
        let Queue::Dgram(q) = &mut s.queue else {
            return false;
        };
        let seqs = q.take_group(group);
        let first_seq = seqs[0];
        let mut done = std::mem::take(&mut self.scratch);
        let mut failed: Option<Error> = None;
        let mut again = false;
        let mut errqueue = false;
        if res >= 0 {
            // UDP sends are all or nothing: a result means every datagram of the op left.
            let total = q.mark(&seqs, State::Sent, &mut done);
            if std::mem::take(&mut q.probe_sent) {
                // A datagram of a refused group went alone: the group's error was GSO's.
                q.gso = false;
            }
            if gso && count > 1 {
                self.stats.gso_sends += 1;
            }
            self.ended_ok(idx, (count as u64, total), bytes, &done, clock);
            done.clear();
        } else {
            // `wrapping_neg`: a corrupt `i32::MIN` result must not panic (it maps to `Other`).
            let errno = res.wrapping_neg();
            let group = gso && count > 1;
            let class = classify(
                errno,
                if group {
                    OpKind::GsoGroup
                } else {
                    OpKind::Datagram
                },
            );
            if class == Class::Retry {
                q.requeue(&seqs, false);
                self.stats.retries += 1;
                again = errno == libc::EAGAIN;
            } else if group
                && (class == Class::Device
                    || (class == Class::Datagram
                        && matches!(errno, libc::EMSGSIZE | libc::ENOBUFS)))
            {
                // The group was refused as a whole: re-split so every datagram gets its own
                // outcome (FAILURES.md items 13, 14). EIO/EINVAL mean "the device or route cannot
                // segment" only if the same datagrams then go alone; if they fail alone too, the
                // error was theirs (a bad destination), and GSO stays on. Until one of them ends,
                // the socket forms no new groups.
                if class == Class::Device {
                    q.probe_gso(&seqs);
                }
                q.requeue(&seqs, true);
                self.stats.gso_fallbacks += 1;
                // A local EMSGSIZE also leaves an entry on the error queue (IP_RECVERR).
                errqueue = errno == libc::EMSGSIZE;
            } else if let Some(delay_ns) = q
                .nobufs_backoff_ns(errno, first_seq, nobufs_retries)
                .filter(|_| class == Class::Datagram)
            {
                q.requeue(&seqs, false);
                // Keep a longer backoff another datagram of this socket already started (several
                // ops in flight can end with ENOBUFS in one batch, in any order).
                let at = clock.get() + delay_ns;
                s.retry_at_ns = Some(s.retry_at_ns.map_or(at, |t| t.max(at)));
                self.backoff.push(idx);
                self.stats.retries += 1;
            } else if class == Class::Destination && pending_possible && q.stale_resend(first_seq) {
                // A pending socket error set by an ICMP message about an earlier datagram (a
                // connected socket always gets them; an unconnected one with IP_RECVERR). The
                // send that picked it up sent nothing, so this op goes again (FAILURES.md item
                // 11). Connected or not, with or without IP_RECVERR, on either backend, the
                // outcome is the same: each datagram is reported as what happened to it (a
                // `sendmmsg` consumes such an error silently on epoll, and resending is what
                // io_uring must do to agree). With IP_RECVERR the error queue names the
                // destination the error is about ([`Core::peer_error`]).
                //
                // With IP_RECVERR every such pending error comes with an error-queue entry, so
                // the errno may also be this datagram's own (a route lookup: ENETUNREACH, …):
                // the verdict waits for the error-queue read ([`Core::errqueue_read`]). Without
                // it (a connected socket) the kernel gives no way to tell; the resend bound
                // ends a datagram whose own error it is.
                q.requeue(&seqs, false);
                if recverr {
                    q.suspects.push((first_seq, errno, count));
                } else {
                    self.stats.stale_error_resends += count as u64;
                }
                errqueue = true;
            } else {
                // The first datagram takes the error. For a single datagram that is all of it; for
                // a GSO group it is a pending socket error (a stale ICMP: ECONNREFUSED,
                // EHOSTUNREACH, …) that refused the call before anything was sent and was consumed
                // by it, so the rest go again (FAILURES.md item 11). Re-splitting instead would lose
                // the error (on epoll also the next one: sendmmsg drops an error that follows a
                // sent datagram).
                // An ICMP error the send returned may come with an entry; a local EMSGSIZE
                // leaves one (IP_RECVERR): read and drop it, or entries fill the receive buffer.
                errqueue = class == Class::Destination || errno == libc::EMSGSIZE;
                let i = q.index(first_seq);
                let dest = q.q[i].dest.or(peer);
                // Class::Engine (EBADR, the completion was lost): what became of the group is
                // unknown; all of it ends as lost rather than risk sending it twice.
                let fail = if class == Class::Engine { count } else { 1 };
                q.mark(&seqs[..fail], State::Failed, &mut done);
                if count > fail {
                    q.requeue(&seqs[fail..], false);
                }
                failed = Some(Error::socket(errno, id, dest));
            }
        }
        if let Some(err) = &failed {
            let now_ns = clock.get();
            for &(len, t) in &done {
                self.ended_failed(idx, len, t, now_ns, err);
            }
        }
        if let Some(Queue::Dgram(q)) = self.socks[idx as usize].sock.as_mut().map(|s| &mut s.queue)
        {
            q.pop_terminal();
            q.recycle(seqs);
        }
        done.clear();
        self.scratch = done;
        if errqueue {
            self.want_errqueue(idx);
        }
        again
    }
}

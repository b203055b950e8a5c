//! The sans-IO core: per-socket queues of owned buffers, in-flight operations, flush barriers and
//! the policy of what goes out next. It makes no system calls; the orchestration asks it for the
//! next operation with [`Core::next_op`], a driver builds the kernel request from
//! [`Core::for_each_slice`], and every result comes back as an [`Event`] through [`Core::apply`].
//!
//! Files: `admit` (what `send` accepts), `slots` (socket and op tables), `op` (the driver
//! boundary as data), `class` (what each errno means: its class, in one place), `stream` and
//! `dgram` (each queue's policy), `barrier` (flush barriers and reports), `peer` (error-queue
//! reports), `solo` (a flush's lone op, sent without the general machinery); this file holds the state, planning and completions.
//!
//! Time is passed in (a [`Clock`] the driver reads), never read here, so a simulated kernel is
//! fully deterministic.

mod admit;
mod barrier;
mod class;
mod dgram;
pub(crate) mod op;
mod packet;
mod peer;
mod slots;
mod solo;
mod stream;

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::error::{Error, Status};
use crate::stats::Stats;
use crate::SocketId;

pub(crate) use admit::Room;
use admit::{DEST_NONE, DEST_V4, DEST_V4_MAPPED, DEST_V6};
use barrier::Acc;
#[cfg(any(test, fuzzing, feature = "sim"))]
pub(crate) use class::{is_icmp_errno, is_retry};
pub(crate) use dgram::DgramQueue;
pub(crate) use op::{Event, OpShape, Planned, Solo, Token};
use peer::Unreachables;
use slots::live_mut;
use slots::{OpInfo, OpSlot, SockSlot};
pub(crate) use stream::StreamQueue;

/// Limits and switches the core enforces: what `EngineBuilder` sets, and (as `sim::SimConfig`)
/// what the simulated engine runs with. [`Config::clamped`] brings any value into range.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes accepted and not terminal, per socket.
    pub max_queued_bytes_per_socket: usize,
    /// Bytes accepted and not terminal, over all sockets.
    pub max_queued_bytes: usize,
    /// Writes queued per socket (at least 1).
    pub max_queued_writes_per_socket: usize,
    /// Ops in flight over all sockets (at least 1).
    pub max_in_flight_ops: usize,
    /// Ops in flight per socket (at least 1).
    pub max_in_flight_per_socket: usize,
    /// iovecs per stream op (1..=`IOV_MAX`).
    pub max_iovecs_per_op: usize,
    /// Bytes per stream op (1..=`MAX_RW_COUNT`).
    pub max_bytes_per_op: usize,
    /// Stream writes of at most this many bytes are copied into a staging chunk at `send` time
    /// (their `Bytes` released at once; 0: never).
    pub coalesce_below_bytes: usize,
    /// Bytes per staging chunk (1..=`u32::MAX`); a chunk that would grow past it is sealed.
    pub coalesce_max_bytes: usize,
    /// UDP GSO.
    pub gso: bool,
    /// Segments per GSO group (1..=64).
    pub gso_max_segments: usize,
    /// Payload bytes per GSO group.
    pub gso_max_bytes: usize,
    /// ENOBUFS retries per datagram before it counts as dropped (at most 4: backoff 1, 2, 4,
    /// 8 ms, ≤ 16 ms in all).
    pub nobufs_retries: u8,
    /// Enable `IP_RECVERR`/`IPV6_RECVERR` on UDP sockets (qdisc drops surface as ENOBUFS; ICMP
    /// errors are read from the error queue and attributed to their destination).
    pub recverr: bool,
    /// Peer errors are sampled where reading the error queue costs a transition of its own
    /// (epoll): an unconnected socket whose reads behind its noisy destinations keep finding
    /// ICMP reports turns `IP_RECVERR` off for a while (see `DgramQueue::note_errq_read`).
    pub peer_error_sampling: bool,
    /// Stream ops of at least this many bytes go zero-copy (`IORING_OP_SEND_ZC`/`SENDMSG_ZC`)
    /// where the driver supports it; `None`: never.
    pub zerocopy_threshold: Option<usize>,
    /// A socket goes back to copying sends when a notification reports the kernel copied
    /// (false only to measure zero-copy where the kernel copies anyway).
    pub zerocopy_adaptive: bool,
    /// A blocking flush sends a lone op itself, without the general machinery, where it can
    /// (see `core/solo.rs`; false only to compare with the general path).
    pub solo_flush: bool,
}

impl Config {
    /// Every limit brought into the range the core and the kernel accept (the ranges on the
    /// fields); the one place `EngineBuilder` and the simulated engine clamp.
    #[must_use]
    pub fn clamped(self) -> Config {
        // Byte limits stay ≤ isize::MAX, so `queued + len` (len ≤ isize::MAX) never overflows.
        let max_bytes = isize::MAX as usize;
        Config {
            max_queued_bytes_per_socket: self.max_queued_bytes_per_socket.min(max_bytes),
            max_queued_bytes: self.max_queued_bytes.min(max_bytes),
            max_queued_writes_per_socket: self.max_queued_writes_per_socket.max(1),
            max_in_flight_ops: self.max_in_flight_ops.max(1),
            max_in_flight_per_socket: self.max_in_flight_per_socket.max(1),
            max_iovecs_per_op: self.max_iovecs_per_op.clamp(1, crate::plan::IOV_MAX),
            max_bytes_per_op: self.max_bytes_per_op.clamp(1, crate::plan::MAX_RW_COUNT),
            // Chunk offsets are u32; a write above the chunk size is never staged.
            coalesce_max_bytes: self.coalesce_max_bytes.clamp(1, u32::MAX as usize),
            coalesce_below_bytes: self
                .coalesce_below_bytes
                .min(self.coalesce_max_bytes.clamp(1, u32::MAX as usize)),
            gso_max_segments: self
                .gso_max_segments
                .clamp(1, crate::plan::GSO_MAX_SEGMENTS),
            // The backoff doubles per retry; more than 4 would exceed the documented 16 ms.
            nobufs_retries: self.nobufs_retries.min(4),
            ..self
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_queued_bytes_per_socket: 64 << 20,
            max_queued_bytes: 256 << 20,
            max_queued_writes_per_socket: 1 << 20,
            max_in_flight_ops: 1024,
            max_in_flight_per_socket: 1024,
            max_iovecs_per_op: crate::plan::IOV_MAX,
            max_bytes_per_op: 8 << 20,
            coalesce_below_bytes: 512,
            coalesce_max_bytes: 64 << 10,
            gso: true,
            gso_max_segments: crate::plan::GSO_MAX_SEGMENTS,
            gso_max_bytes: crate::plan::UDP_MAX_PAYLOAD,
            nobufs_retries: 4,
            recverr: true,
            peer_error_sampling: false,
            zerocopy_threshold: None,
            zerocopy_adaptive: true,
            solo_flush: true,
        }
    }
}

/// The driver's clock as the core sees it: read at most once per batch of events, and only when
/// a result needs the time (a sampled write's latency, a failure, a backoff). A clock read is a
/// system call on some machines, about as costly as the send it would time.
pub(crate) struct Clock<'a> {
    read: &'a dyn Fn() -> u64,
    at: Option<u64>,
}

impl<'a> Clock<'a> {
    pub fn new(read: &'a dyn Fn() -> u64) -> Clock<'a> {
        Clock { read, at: None }
    }

    pub fn get(&mut self) -> u64 {
        *self.at.get_or_insert_with(|| (self.read)())
    }
}

impl std::fmt::Debug for Clock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock").field("at", &self.at).finish()
    }
}

/// What a socket carries.
#[derive(Debug)]
pub(crate) enum Queue {
    Stream(StreamQueue),
    Dgram(DgramQueue),
    /// Packets for a packet descriptor (TUN/TAP, a packet-mode pipe): one `write(2)` each. The
    /// datagram queue's bookkeeping, with GSO off (every packet its own op); the policy is
    /// `packet.rs`'s.
    Packet(DgramQueue),
}

impl Queue {
    /// Writes held in the queue (what `max_queued_writes_per_socket` counts): every write
    /// accepted and not yet terminal, and ended datagrams still behind one that has not ended.
    #[inline]
    pub fn writes(&self) -> usize {
        match self {
            Queue::Stream(q) => q.len(),
            Queue::Dgram(q) | Queue::Packet(q) => q.len(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Sock {
    pub fd: RawFd,
    pub peer: Option<SocketAddr>,
    pub queue: Queue,
    /// False after EAGAIN, until the driver reports the socket writable.
    pub writable: bool,
    /// Asked the driver to watch for writability (queued in `Core::watch` or armed).
    watching: bool,
    in_ready: bool,
    /// A packet descriptor: the planning round its ops in flight were planned in (see
    /// [`Core::begin_round`]).
    chain: u64,
    /// Held back by `max_in_flight_ops` (queued in `Core::capped`).
    capped: bool,
    /// The pending barrier of `Engine::try_flush`: the sequence number it waits for.
    pub barrier: Option<u64>,
    pub in_flight: usize,
    pub queued_bytes: usize,
    pub poisoned: Option<Error>,
    /// Neither poisoned nor closing: `send` may queue (one flag for the hot path).
    accepting: bool,
    pub acc: Acc,
    /// Not before this time (ENOBUFS backoff).
    pub retry_at_ns: Option<u64>,
    /// Set by `abort`: no new ops; the socket is removed once nothing is in flight.
    pub closing: bool,
    /// `IP_RECVERR` is on: the kernel queues ICMP errors on the socket's error queue.
    pub recverr: bool,
    /// The error queue holds entries the backend should read (see [`Core::take_errqueue`]).
    errqueue: bool,
    /// Errors the kernel reported for earlier datagrams, with their destinations, until
    /// [`Core::take_peer_errors`] (at most [`PEER_ERRORS_KEPT`]; later ones are only counted).
    peer_errors: Vec<Error>,
    /// The same reports per destination, until [`Core::take_unreachable`]; allocated by the
    /// first report (most sockets never get one).
    unreachable: Option<Box<Unreachables>>,
    /// Which destinations `send` takes (`DEST_*` bits): read by the hot path's one test.
    dests: u8,
    /// Stream ops may go zero-copy (until the kernel reports it copied, or refuses ZC).
    pub zerocopy: bool,
    /// A notification of this socket said the kernel did not copy: zero-copy pays here. Until
    /// then one zero-copy op at a time probes (the ops behind it copy), so a socket where the
    /// kernel copies anyway (loopback, veth to a local socket) pays for one op, not for every
    /// op sent before the first notification comes back.
    pub zc_confirmed: bool,
    /// Zero-copy ops of this socket whose result was applied and whose notification has not
    /// come (counted in `in_flight` too: their op slots stay occupied).
    pub zc_notifs: usize,
}

impl Sock {
    /// Whether an op of this socket could go out now (in round `round`).
    #[inline]
    fn has_work(&self, cfg: &Config, round: u64) -> bool {
        if !self.writable
            || self.closing
            || self.retry_at_ns.is_some()
            || self.in_flight >= cfg.max_in_flight_per_socket
        {
            return false;
        }
        match &self.queue {
            // One send in flight; ops waiting only for their ZC notification do not count.
            Queue::Stream(q) => self.in_flight == self.zc_notifs && q.has_unsent(),
            Queue::Dgram(q) => q.has_queued(),
            // One chain of packets in flight at a time: all planned in one round, so the
            // driver issues them in order as one linked chain; the next waits for it to end.
            Queue::Packet(q) => q.has_queued() && (self.in_flight == 0 || self.chain == round),
        }
    }

    /// Puts socket `idx` (this one) on the `ready` list if it has work and is not there yet.
    #[inline]
    fn wake(&mut self, idx: u32, cfg: &Config, round: u64, ready: &mut Ready) {
        if !self.in_ready && self.has_work(cfg, round) {
            self.in_ready = true;
            ready.push(idx);
        }
    }
}

/// Sockets with work, in the order they were woken (round-robin): a vector and the index of
/// its front. [`Core::next_op`] is called until it drains it, which empties the vector, so it
/// holds at most the wakes between two planning rounds (a socket is on it at most once:
/// `Sock::in_ready`).
#[derive(Debug, Default)]
struct Ready {
    list: Vec<u32>,
    head: usize,
}

impl Ready {
    #[inline]
    fn push(&mut self, idx: u32) {
        self.list.push(idx);
    }

    fn pop(&mut self) -> Option<u32> {
        let idx = *self.list.get(self.head)?;
        self.head += 1;
        if self.head == self.list.len() {
            self.clear();
        }
        Some(idx)
    }

    fn is_empty(&self) -> bool {
        self.head == self.list.len()
    }

    /// The one socket on the list, if exactly one is.
    #[inline]
    fn only(&self) -> Option<u32> {
        match self.list[self.head..] {
            [idx] => Some(idx),
            _ => None,
        }
    }

    #[inline]
    fn clear(&mut self) {
        self.list.clear();
        self.head = 0;
    }
}

/// The sans-IO engine state.
#[derive(Debug)]
pub(crate) struct Core {
    pub cfg: Config,
    socks: Vec<SockSlot>,
    free_socks: Vec<u32>,
    ops: Vec<OpSlot>,
    free_ops: Vec<u32>,
    ready: Ready,
    queued_bytes: usize,
    /// Accepted writes not yet terminal, over all sockets.
    pending_writes: u64,
    in_flight: usize,
    /// Sockets waiting out an ENOBUFS backoff.
    backoff: Vec<u32>,
    /// Sockets whose error queue the driver should read.
    errqueue: Vec<u32>,
    /// Sockets the driver should watch for writability (after EAGAIN).
    watch: Vec<u32>,
    /// Sockets with work held back by `max_in_flight_ops`.
    capped: Vec<u32>,
    /// Datagram sockets whose error queue should be read once the ops planned so far have
    /// gone out (groups to noisy destinations: see [`Core::take_errq_after`]).
    errq_after: Vec<u32>,
    /// Sockets whose `IP_RECVERR` must be switched to what their `recverr` now says (peer-error
    /// sampling: see [`Core::take_recverr_toggle`]).
    recverr_toggles: Vec<u32>,
    /// The current planning round ([`Core::begin_round`]).
    round: u64,
    /// Reused list of (length, queued time) of writes that just ended.
    scratch: Vec<(usize, u64)>,
    pub stats: Stats,
}

/// `IORING_NOTIF_USAGE_ZC_COPIED` (include/uapi/linux/io_uring.h, Linux 6.2): in a
/// notification's `res`, the kernel copied (some of) the data after all.
pub(crate) const ZC_COPIED: u32 = 1 << 31;

/// Errors of a zero-copy send after which the socket falls back to copying sends and the same
/// bytes are sent again: `EOPNOTSUPP` (a protocol or socket without zero-copy), `EINVAL` (a
/// kernel that does not know a flag, e.g. `IORING_SEND_ZC_REPORT_USAGE` before 6.2), `ENOMEM`
/// (pinning pages beyond `RLIMIT_MEMLOCK`/`optmem_max`).
pub(crate) const ZC_FALLBACK_ERRNOS: [i32; 3] = [libc::EOPNOTSUPP, libc::EINVAL, libc::ENOMEM];

impl Core {
    pub fn new(cfg: Config) -> Core {
        Core::with_stats(cfg, Stats::default())
    }

    /// A core that starts from `stats` (the simulated engine's are smaller).
    pub(crate) fn with_stats(cfg: Config, stats: Stats) -> Core {
        Core {
            cfg,
            socks: Vec::new(),
            free_socks: Vec::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            ready: Ready::default(),
            queued_bytes: 0,
            pending_writes: 0,
            in_flight: 0,
            backoff: Vec::new(),
            errqueue: Vec::new(),
            watch: Vec::new(),
            capped: Vec::new(),
            errq_after: Vec::new(),
            recverr_toggles: Vec::new(),
            round: 0,
            scratch: Vec::new(),
            stats,
        }
    }

    // ---- sockets ----------------------------------------------------------------------------

    /// Removes a socket that has nothing in flight. Queued writes fail as cancelled.
    /// Returns its fd, or `None` if it must wait for in-flight ops (it is marked closing).
    pub fn remove_socket(&mut self, id: SocketId, now_ns: u64) -> Result<Option<RawFd>, Error> {
        self.cancel_queued(id, now_ns)?;
        let s = self.sock_mut(id)?;
        s.closing = true;
        s.accepting = false;
        if s.in_flight > 0 {
            return Ok(None);
        }
        let fd = s.fd;
        let slot = &mut self.socks[id.index as usize];
        slot.sock = None;
        slot.gen = slot.gen.wrapping_add(1);
        self.free_socks.push(id.index);
        Ok(Some(fd))
    }

    /// Marks the socket closing (no new writes, no new ops) and fails every write of it that is
    /// not in flight with `Cancelled`.
    pub fn cancel_queued(&mut self, id: SocketId, now_ns: u64) -> Result<(), Error> {
        let s = self.sock_mut(id)?;
        s.closing = true;
        s.accepting = false;
        let peer = s.peer;
        let err = Error::Socket {
            status: Status::Cancelled,
            errno: libc::ECANCELED,
            socket: id,
            peer,
        };
        self.fail_unsent(id.index, &err, now_ns);
        Ok(())
    }

    pub fn set_writable(&mut self, idx: u32, writable: bool) {
        if let Some(s) = live_mut(&mut self.socks, idx) {
            s.writable = writable;
            if writable {
                s.watching = false;
            }
        }
        if writable {
            self.wake(idx);
        }
    }

    /// Records that `IP_RECVERR` is on for the socket.
    pub fn set_recverr(&mut self, id: SocketId, on: bool) -> Result<(), Error> {
        self.sock_mut(id)?.recverr = on;
        Ok(())
    }

    /// Records the address family of an unconnected UDP socket, so that `send_to` refuses
    /// destinations it can never reach: an IPv4 socket takes IPv4 addresses; an IPv6 socket
    /// IPv6 ones, and IPv4 ones (plain or IPv4-mapped) unless `v6only` (`IPV6_V6ONLY`).
    pub fn set_family(&mut self, id: SocketId, v6: bool, v6only: bool) -> Result<(), Error> {
        let s = self.sock_mut(id)?;
        if s.dests & DEST_NONE == 0 {
            s.dests = match (v6, v6only) {
                (false, _) => DEST_V4,
                (true, true) => DEST_V6,
                (true, false) => DEST_V4 | DEST_V6 | DEST_V4_MAPPED,
            };
        }
        Ok(())
    }

    // ---- writes -----------------------------------------------------------------------------

    // ---- planning ---------------------------------------------------------------------------

    fn has_work(&self, idx: u32) -> bool {
        self.sock_at(idx)
            .is_some_and(|s| s.has_work(&self.cfg, self.round))
    }

    fn wake(&mut self, idx: u32) {
        if let Some(s) = self
            .socks
            .get_mut(idx as usize)
            .and_then(|s| s.sock.as_mut())
        {
            s.wake(idx, &self.cfg, self.round, &mut self.ready);
        }
    }

    /// Whether some socket may have an op to plan (the ready list is not empty).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether an ENOBUFS backoff is pending (the clock is read only then).
    #[inline]
    pub fn has_timers(&self) -> bool {
        !self.backoff.is_empty()
    }

    /// The earliest ENOBUFS backoff deadline, if any.
    pub fn next_timer(&self) -> Option<u64> {
        self.backoff
            .iter()
            .filter_map(|&idx| self.sock_at(idx).and_then(|s| s.retry_at_ns))
            .min()
    }

    /// Ops in flight, over all sockets.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Accepted writes not yet terminal.
    pub fn pending_writes(&self) -> u64 {
        self.pending_writes
    }

    /// Bytes queued (accepted, not terminal), over all sockets.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Releases sockets whose ENOBUFS backoff has passed; returns the earliest pending deadline.
    pub fn poll_timers(&mut self, now_ns: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut i = 0;
        while i < self.backoff.len() {
            let idx = self.backoff[i];
            let at = self.sock_at(idx).and_then(|s| s.retry_at_ns);
            match at {
                Some(t) if t > now_ns => {
                    next = Some(next.map_or(t, |n| n.min(t)));
                    i += 1;
                }
                _ => {
                    self.backoff.swap_remove(i);
                    if let Some(s) = self.socks[idx as usize].sock.as_mut() {
                        s.retry_at_ns = None;
                    }
                    self.wake(idx);
                }
            }
        }
        next
    }

    /// Starts a planning round: the ops [`Core::next_op`] gives until the next call are
    /// handed to the driver together (one `issue`).
    ///
    /// A packet descriptor gets ops only in a round that finds nothing of it in flight, so its
    /// ops in flight were all planned, in queue order, in one round: the io_uring driver links
    /// them (`IOSQE_IO_HARDLINK`) so the kernel writes them in that order, even when they wait
    /// for room. Unlinked writes parked on a full descriptor are retried in another order
    /// (measured on a packet-mode pipe: `tests/tests/packet.rs`, `pipe`).
    pub fn begin_round(&mut self) {
        self.round += 1;
    }

    /// The next operation to issue, round-robin over sockets with work, or `None` when nothing
    /// can go out now.
    ///
    /// `max_in_flight_ops` binds only the ops beyond each socket's first: a socket with nothing
    /// in flight always gets one (its reservation), so stream sends parked on stalled peers
    /// cannot take the slots a healthy socket needs. A socket held back by the cap waits in
    /// `capped` until an op completes.
    pub fn next_op(&mut self) -> Option<Planned> {
        loop {
            let idx = self.ready.pop()?;
            if let Some(s) = self.socks[idx as usize].sock.as_mut() {
                s.in_ready = false;
            }
            if let Some(p) = self.plan_op(idx) {
                return Some(p);
            }
        }
    }

    /// The next op of socket `idx` (taken off the ready list), if it can go out now.
    fn plan_op(&mut self, idx: u32) -> Option<Planned> {
        if !self.has_work(idx) {
            return None;
        }
        let at_cap = self.in_flight >= self.cfg.max_in_flight_ops;
        let cfg = &self.cfg;
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("has_work checked");
        if at_cap && s.in_flight > 0 {
            if !s.capped {
                s.capped = true;
                self.capped.push(idx);
            }
            return None;
        }
        let (shape, dest) = match &mut s.queue {
            Queue::Stream(q) => (q.plan(cfg)?, None),
            Queue::Dgram(q) => {
                if q.quiet_over() {
                    // Peer-error sampling: the quiet period is over; IP_RECVERR goes back on
                    // before this op is issued.
                    q.go_loud();
                    s.recverr = true;
                    self.recverr_toggles.push(idx);
                }
                let p = q.plan(cfg)?;
                if q.errq_after() == 1 {
                    self.errq_after.push(idx);
                }
                p
            }
            Queue::Packet(q) => match q.plan(cfg)? {
                (
                    OpShape::Dgram {
                        first_seq,
                        bytes,
                        group,
                        ..
                    },
                    _,
                ) => (
                    OpShape::Packet {
                        seq: first_seq,
                        bytes,
                        group,
                    },
                    None,
                ),
                _ => return None,
            },
        };
        let fd = s.fd;
        if s.in_flight == 0 {
            s.chain = self.round;
        }
        let zerocopy = s.zerocopy
            && (s.zc_confirmed || s.zc_notifs == 0 || !cfg.zerocopy_adaptive)
            && matches!((cfg.zerocopy_threshold, shape),
                (Some(t), OpShape::Stream { bytes, .. }) if bytes >= t);
        s.in_flight += 1;
        self.in_flight += 1;
        let token = self.alloc_op(OpInfo {
            sock: idx,
            shape,
            zerocopy,
        });
        // Datagram sockets may have more groups to go; streams wait for this one.
        self.wake(idx);
        Some(Planned {
            token,
            sock: idx,
            fd,
            shape,
            dest,
            zerocopy,
        })
    }

    /// The payload slices of a planned op, in order (iovec building).
    pub fn for_each_slice(&self, p: &Planned, mut f: impl FnMut(&[u8])) {
        let Some(s) = self.sock_at(p.sock) else {
            return;
        };
        match (&s.queue, p.shape) {
            (Queue::Stream(q), OpShape::Stream { bytes, .. }) => q.slices(bytes, &mut f),
            (Queue::Dgram(q), OpShape::Dgram { group, .. })
            | (Queue::Packet(q), OpShape::Packet { group, .. }) => q.slices(group, &mut f),
            _ => {}
        }
    }

    /// The sequence numbers of a planned datagram op's datagrams, in order (the simulated
    /// kernel attributes each datagram it delivers); empty for a stream op.
    #[cfg(any(test, fuzzing, feature = "sim"))]
    pub fn dgram_seqs(&self, p: &Planned) -> &[u64] {
        match (self.sock_at(p.sock).map(|s| &s.queue), p.shape) {
            (Some(Queue::Dgram(q)), OpShape::Dgram { group, .. })
            | (Some(Queue::Packet(q)), OpShape::Packet { group, .. }) => q.group_seqs(group),
            _ => &[],
        }
    }

    // ---- completions ------------------------------------------------------------------------

    fn finish_op(&mut self, sock: u32) -> bool {
        self.in_flight -= 1;
        if self.in_flight < self.cfg.max_in_flight_ops {
            while let Some(idx) = self.capped.pop() {
                if let Some(s) = self.socks[idx as usize].sock.as_mut() {
                    s.capped = false;
                }
                self.wake(idx);
            }
        }
        match self.socks[sock as usize].sock.as_mut() {
            Some(s) => {
                s.in_flight -= 1;
                true
            }
            None => false,
        }
    }

    /// Applies what a driver reported.
    pub fn apply(&mut self, ev: Event, clock: &mut Clock<'_>) {
        match ev {
            Event::Done { token, res } => self.complete(token, res, false, clock),
            Event::DoneMore { token, res } => self.complete(token, res, true, clock),
            Event::Notif { token, res } => self.notified(token, res),
            Event::NotIssued { token } => {
                if let Some(sock) = self.requeue(token) {
                    self.cancel_if_closing(sock, clock);
                }
            }
            Event::Stopped { token } => {
                // A partial `sendmmsg`: the call stopped at this datagram. If an ICMP error about
                // an earlier datagram stopped it, that error was consumed; with `IP_RECVERR` the
                // error queue says what it was.
                if let Some(sock) = self.requeue(token) {
                    self.want_errqueue(sock);
                    self.cancel_if_closing(sock, clock);
                }
            }
            Event::Writable { sock } => self.set_writable(sock, true),
            Event::PeerError { sock, dest, errno } => self.peer_error(sock, dest, errno),
        }
    }

    /// Puts an op back unsent; returns its socket.
    fn requeue(&mut self, t: Token) -> Option<u32> {
        let info = self.take_op(t)?;
        if !self.finish_op(info.sock) {
            return None;
        }
        let s = self.socks[info.sock as usize]
            .sock
            .as_mut()
            .expect("finish_op checked");
        match (&mut s.queue, info.shape) {
            (Queue::Stream(q), OpShape::Stream { .. }) => q.unplan(),
            (Queue::Dgram(q), OpShape::Dgram { group, .. })
            | (Queue::Packet(q), OpShape::Packet { group, .. }) => q.requeue_group(group),
            _ => {}
        }
        self.wake(info.sock);
        Some(info.sock)
    }

    /// Applies a kernel result: `res >= 0` is bytes sent, `res < 0` is `-errno`. Stale and
    /// unknown tokens change nothing. `more`: a zero-copy op's first completion with
    /// `F_MORE` — the result is applied now, but the op's slot and buffers stay until its
    /// notification, whatever `res` says (the kernel may still read them).
    fn complete(&mut self, t: Token, res: i32, more: bool, clock: &mut Clock<'_>) {
        let info = if more {
            match self.take_op_until_notif(t) {
                Some(info) => info,
                // Not a zero-copy op in flight: a stale or corrupt report; apply it as a plain
                // completion (which ignores it unless the op is in flight).
                None => match self.take_op(t) {
                    Some(info) => {
                        self.finish_op(info.sock);
                        return self.applied(info, res, clock);
                    }
                    None => return,
                },
            }
        } else {
            let Some(info) = self.take_op(t) else {
                return;
            };
            if !self.finish_op(info.sock) {
                // The socket is gone (cannot happen while ops are in flight); the op is consumed.
                return;
            }
            info
        };
        if more {
            self.hold_for_notif(t, &info);
        }
        self.applied(info, res, clock);
    }

    /// A zero-copy op's first completion with `F_MORE`: the op's buffers are kept (cloned
    /// references, so the queue may move on) until its notification.
    fn hold_for_notif(&mut self, t: Token, info: &OpInfo) {
        let Some(s) = self.socks[info.sock as usize].sock.as_mut() else {
            return;
        };
        s.zc_notifs += 1;
        let mut held = Vec::new();
        if let (Queue::Stream(q), OpShape::Stream { .. }) = (&s.queue, info.shape) {
            q.hold_planned(&mut held);
        }
        if let Some(h) = self.notif_held_mut(t) {
            *h = held;
        }
    }

    /// A zero-copy op's notification: the kernel no longer reads its memory, so the buffers
    /// it held are released (here, exactly once) and its slot counts no longer against the
    /// in-flight caps. Bit 31 of `res` means the kernel copied the data anyway: the socket
    /// goes back to copying sends. Never an error.
    fn notified(&mut self, t: Token, res: i32) {
        let Some(wait) = self.take_notif(t) else {
            return;
        };
        let idx = wait.sock;
        drop(wait.held);
        self.stats.zc_notifications += 1;
        if let Some(s) = self.socks[idx as usize].sock.as_mut() {
            s.zc_notifs -= 1;
            // `IORING_NOTIF_USAGE_ZC_COPIED` (Linux 6.2, io_uring/notif.c).
            if res as u32 & ZC_COPIED != 0 {
                self.stats.zc_copied += 1;
                if self.cfg.zerocopy_adaptive {
                    s.zerocopy = false;
                }
            } else {
                s.zc_confirmed = true;
            }
        }
        if self.finish_op(idx) {
            self.wake(idx);
        }
    }

    /// Applies the result of an op whose slot was taken (`finish_op` already run, or deferred
    /// to the notification).
    fn applied(&mut self, info: OpInfo, res: i32, clock: &mut Clock<'_>) {
        let idx = info.sock;
        if info.zerocopy {
            self.stats.zc_sends += 1;
            if res < 0 && ZC_FALLBACK_ERRNOS.contains(&res.wrapping_neg()) {
                // The protocol, the device or the kernel refuses zero-copy (or memlock is
                // exhausted): nothing was sent; the same bytes go again by a copying send.
                self.stats.zc_fallbacks += 1;
                if let Some(s) = self.socks[idx as usize].sock.as_mut() {
                    s.zerocopy = false;
                    if let Queue::Stream(q) = &mut s.queue {
                        q.unplan();
                    }
                }
                self.wake(idx);
                self.cancel_if_closing(idx, clock);
                return;
            }
        }
        let again = match info.shape {
            OpShape::Stream { entries, bytes } => {
                self.complete_stream(idx, entries, bytes, res, clock)
            }
            OpShape::Dgram {
                group,
                count,
                segment_size,
                bytes,
                ..
            } => self.complete_dgram(idx, group, count, segment_size.is_some(), bytes, res, clock),
            OpShape::Packet { group, bytes, .. } => {
                self.complete_packet(idx, group, bytes, res, clock)
            }
        };
        if again {
            // EAGAIN: nothing goes out on this socket until the driver says it is writable.
            self.set_writable(idx, false);
            if let Some(s) = self.socks[idx as usize].sock.as_mut() {
                if !s.watching {
                    s.watching = true;
                    self.watch.push(idx);
                }
            }
        }
        self.wake(idx);
        self.cancel_if_closing(idx, clock);
    }

    /// An op of a closing socket ended after `abort` stopped waiting for it (a flush timeout):
    /// what it left unsent — the rest of a short stream send, datagrams put back — fails as
    /// cancelled now, as `abort` failed the rest. Nothing else would end those writes: a flush
    /// would wait for them forever.
    fn cancel_if_closing(&mut self, idx: u32, clock: &mut Clock<'_>) {
        if self.sock_at(idx).is_some_and(|s| s.closing) {
            let _ = self.cancel_queued(self.id_of(idx), clock.get());
        }
    }

    /// The next socket the driver should watch for writability: (index, fd).
    pub fn take_watch(&mut self) -> Option<(u32, RawFd)> {
        while let Some(idx) = self.watch.pop() {
            if let Some(s) = self.sock_at(idx) {
                return Some((idx, s.fd));
            }
        }
        None
    }

    /// Accounts in one step for an op whose kernel took `sent` bytes, and for the `count` writes
    /// of `total` bytes it completed whole; `sampled` holds (length, queued time) of those whose
    /// latency is sampled (queued time ≠ 0).
    #[inline]
    fn ended_ok(
        &mut self,
        idx: u32,
        (count, total): (u64, usize),
        sent: usize,
        sampled: &[(usize, u64)],
        clock: &mut Clock<'_>,
    ) {
        if let Some(s) = self.socks[idx as usize].sock.as_mut() {
            s.queued_bytes -= total;
            s.acc.writes += count;
            s.acc.bytes += sent as u64;
        }
        self.queued_bytes -= total;
        self.pending_writes -= count;
        self.stats.writes_sent += count;
        self.stats.bytes_sent += sent as u64;
        if !sampled.is_empty() {
            let now_ns = clock.get();
            for &(_, t) in sampled {
                self.record_latency(t, now_ns);
            }
        }
    }

    /// Accounts for one write of `len` bytes that failed with `err`.
    fn ended_failed(&mut self, idx: u32, len: usize, queued_ns: u64, now_ns: u64, err: &Error) {
        self.queued_bytes -= len;
        self.pending_writes -= 1;
        let s = self.socks[idx as usize]
            .sock
            .as_mut()
            .expect("a failed write on a live socket");
        s.queued_bytes -= len;
        let status = err.status().unwrap_or(Status::Other);
        s.acc.failed += 1;
        s.acc.failures[status.index()] += 1;
        if s.acc.first_error.is_none() {
            s.acc.first_error = Some(err.clone());
        }
        self.stats.record_failure(status, 1);
        self.record_latency(queued_ns, now_ns);
    }

    /// Records a write's queued → terminal latency, if it was sampled (queued time ≠ 0).
    fn record_latency(&mut self, queued_ns: u64, now_ns: u64) {
        if queued_ns != 0 {
            self.stats
                .write_latency_ns
                .saturating_record(now_ns.saturating_sub(queued_ns).max(1));
        }
    }

    /// Fails every write of the socket that is not in flight.
    fn fail_unsent(&mut self, idx: u32, err: &Error, now_ns: u64) {
        let Some(s) = self.socks[idx as usize].sock.as_mut() else {
            return;
        };
        let mut dropped = std::mem::take(&mut self.scratch);
        match &mut s.queue {
            Queue::Stream(q) => q.drain_unsent(&mut dropped),
            Queue::Dgram(q) | Queue::Packet(q) => q.drain_queued(&mut dropped),
        }
        for &(len, queued_ns) in &dropped {
            self.ended_failed(idx, len, queued_ns, now_ns, err);
        }
        dropped.clear();
        self.scratch = dropped;
    }

    // ---- barriers ---------------------------------------------------------------------------

    /// Whether the socket is a stream (flush errors are raised) or datagram (counted).
    pub fn is_stream(&self, id: SocketId) -> Result<bool, Error> {
        Ok(matches!(self.sock(id)?.queue, Queue::Stream(_)))
    }

    /// Forgets the memory of every write still in flight, so it is never freed while the kernel may
    /// read it (used when a drain on shutdown fails).
    pub fn leak_in_flight(&mut self) {
        for op in &mut self.ops {
            if let Some(w) = op.notif.take() {
                std::mem::forget(w.held);
            }
        }
        for slot in &mut self.socks {
            if let Some(s) = slot.sock.as_mut() {
                if s.in_flight > 0 {
                    let q = std::mem::replace(&mut s.queue, Queue::Stream(StreamQueue::default()));
                    std::mem::forget(q);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod zc_tests;

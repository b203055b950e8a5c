//! The sans-IO core: per-socket queues of owned buffers, in-flight operations, flush barriers and
//! the policy of what goes out next. It makes no system calls; a backend (or a simulated kernel in
//! tests and fuzz targets) asks it for the next operation with [`Core::next_op`], builds the kernel
//! request from [`Core::for_each_slice`], and hands every result back through [`Core::complete`].
//!
//! Time is passed in (`now_ns`), never read here, so a simulated kernel is fully deterministic.

mod dgram;
pub(crate) mod op;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::Bytes;

use crate::error::{Error, Limit, SendError, Status, Unreachable};
use crate::report::FlushReport;
use crate::stats::Stats;
use crate::SocketId;

pub(crate) use dgram::DgramQueue;
pub(crate) use op::{Event, OpShape, Planned, Token};
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
}

/// Terminal outcomes accumulated since the socket's last flush.
#[derive(Debug, Default, Clone)]
pub(crate) struct Acc {
    pub writes: u64,
    pub bytes: u64,
    pub failed: u64,
    pub failures: [u64; Status::ALL.len()],
    pub first_error: Option<Error>,
}

impl Acc {
    /// The report so far, leaving the accumulator empty; the per-status array is copied and
    /// cleared only when something failed (the common flush has no failure).
    fn take(&mut self) -> FlushReport {
        let failures = if self.failed == 0 {
            [0; Status::ALL.len()]
        } else {
            std::mem::take(&mut self.failures)
        };
        FlushReport {
            writes: std::mem::take(&mut self.writes),
            bytes: std::mem::take(&mut self.bytes),
            failed: std::mem::take(&mut self.failed),
            failures,
            first_error: self.first_error.take(),
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
}

/// Peer errors per (destination, errno), in the order first reported: at most
/// [`PEER_ERRORS_KEPT`] destinations.
#[derive(Debug, Default)]
struct Unreachables {
    list: Vec<Unreachable>,
    at: HashMap<(SocketAddr, i32), usize>,
}

/// `send` without a destination (streams, connected UDP).
const DEST_NONE: u8 = 1;
/// `send_to` an IPv4 address.
const DEST_V4: u8 = 2;
/// `send_to` an IPv6 address.
const DEST_V6: u8 = 4;
/// `send_to` an IPv4-mapped IPv6 address (a dual-stack socket).
const DEST_V4_MAPPED: u8 = 8;

/// Whether a socket taking `dests` can ever send to `dest`: the right kind of call, an address
/// of a family the socket reaches, a port and a specified address. A few instructions on the
/// hot path; [`dest_problem`] says why not, out of line.
#[inline(always)]
fn dest_fits(dest: Option<SocketAddr>, dests: u8) -> bool {
    // Non-short-circuit `&`: one branch for the whole test (measured: a branch per field cost
    // about 0.4 ns per datagram). No 128-bit loads: the caller's address was usually just
    // written in pieces, and a wide load of it stalls store forwarding (+6 ns per datagram).
    match dest {
        None => dests & DEST_NONE != 0,
        Some(SocketAddr::V4(a)) => {
            // Nonzero product: port ≠ 0 and address ≠ 0.0.0.0.
            (dests & DEST_V4 != 0) & (u64::from(a.port()) * u64::from(a.ip().to_bits()) != 0)
        }
        Some(SocketAddr::V6(a)) => {
            let s = a.ip().segments();
            // `::/80` followed by 0xffff: IPv4-mapped. `::` and `::ffff:0.0.0.0` are the
            // unspecified forms.
            let low = (s[0] | s[1] | s[2] | s[3] | s[4]) == 0;
            let mapped = low & (s[5] == 0xffff);
            let unspecified = low & ((s[5] == 0) | mapped) & ((s[6] | s[7]) == 0);
            (dests & DEST_V6 != 0)
                & (a.port() != 0)
                & !unspecified
                & (!mapped | (dests & DEST_V4_MAPPED != 0))
        }
    }
}

/// Why a datagram socket taking `dests` (a `send_to` socket) can never send to `dest`.
#[cold]
fn dest_problem(dest: SocketAddr, dests: u8) -> Option<&'static str> {
    let mapped = match dest {
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped(),
        SocketAddr::V4(_) => None,
    };
    let ip_unspecified = match dest {
        SocketAddr::V4(a) => a.ip().is_unspecified(),
        SocketAddr::V6(a) => {
            a.ip().is_unspecified() || mapped.is_some_and(|v4| v4.is_unspecified())
        }
    };
    if dest.is_ipv6() && dests & DEST_V6 == 0 {
        return Some("an IPv6 address on an IPv4 socket (IPv6 peers need an IPv6 socket)");
    }
    if dest.is_ipv4() && dests & DEST_V4 == 0 {
        return Some("an IPv4 address on an IPv6-only socket (IPV6_V6ONLY is set)");
    }
    if mapped.is_some() && dests & DEST_V4_MAPPED == 0 {
        return Some("an IPv4-mapped address on an IPv6-only socket (IPV6_V6ONLY is set)");
    }
    if ip_unspecified {
        return Some("the unspecified address (0.0.0.0 or ::) is not a destination");
    }
    if dest.port() == 0 {
        return Some("port 0 is not a destination");
    }
    None
}

/// The name a peer error gives its destination: an IPv4 destination reached through a
/// dual-stack IPv6 socket comes back from the error queue IPv4-mapped; it is named as IPv4,
/// the way such destinations are usually written.
fn canonical(dest: SocketAddr) -> SocketAddr {
    match dest {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, a.port())),
            None => dest,
        },
        SocketAddr::V4(_) => dest,
    }
}

/// Peer errors kept per socket until taken.
pub(crate) const PEER_ERRORS_KEPT: usize = 4096;

/// Errors a pending socket error (`sk_err`) can carry from an ICMP message about an earlier
/// datagram: with `IP_RECVERR` an unconnected socket gets them too, and the send that picks one
/// up sends nothing.
pub(crate) fn is_icmp_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::EPROTO
    )
}

#[derive(Debug)]
struct SockSlot {
    gen: u32,
    sock: Option<Sock>,
}

#[derive(Debug, Clone, Copy)]
struct OpInfo {
    sock: u32,
    shape: OpShape,
}

#[derive(Debug)]
struct OpSlot {
    gen: u32,
    op: Option<OpInfo>,
}

/// The sans-IO engine state.
#[derive(Debug)]
pub(crate) struct Core {
    pub cfg: Config,
    socks: Vec<SockSlot>,
    free_socks: Vec<u32>,
    ops: Vec<OpSlot>,
    free_ops: Vec<u32>,
    ready: VecDeque<u32>,
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
    /// Reused list of (length, queued time) of writes that just ended.
    scratch: Vec<(usize, u64)>,
    pub stats: Stats,
}

pub(crate) fn is_retry(errno: i32) -> bool {
    // 512 is ERESTARTSYS, which io_uring may surface unchanged on some kernels (FAILURES.md item 6).
    errno == libc::EAGAIN || errno == libc::EINTR || errno == 512
}

impl Core {
    pub fn new(cfg: Config) -> Core {
        Core {
            cfg,
            socks: Vec::new(),
            free_socks: Vec::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            ready: VecDeque::new(),
            queued_bytes: 0,
            pending_writes: 0,
            in_flight: 0,
            backoff: Vec::new(),
            errqueue: Vec::new(),
            watch: Vec::new(),
            capped: Vec::new(),
            scratch: Vec::new(),
            stats: Stats::default(),
        }
    }

    // ---- sockets ----------------------------------------------------------------------------

    pub fn add_socket(&mut self, fd: RawFd, peer: Option<SocketAddr>, queue: Queue) -> SocketId {
        let sock = Sock {
            fd,
            peer,
            writable: true,
            watching: false,
            in_ready: false,
            capped: false,
            barrier: None,
            in_flight: 0,
            queued_bytes: 0,
            poisoned: None,
            accepting: true,
            acc: Acc::default(),
            retry_at_ns: None,
            closing: false,
            recverr: false,
            errqueue: false,
            peer_errors: Vec::new(),
            unreachable: None,
            // A stream or a connected UDP socket takes no destination; an unconnected one any
            // address until `set_family` says which (the simulated kernel never does).
            dests: match (&queue, peer) {
                (Queue::Dgram(_), None) => DEST_V4 | DEST_V6 | DEST_V4_MAPPED,
                _ => DEST_NONE,
            },
            queue,
        };
        if let Some(idx) = self.free_socks.pop() {
            let slot = &mut self.socks[idx as usize];
            slot.sock = Some(sock);
            SocketId::new(idx, slot.gen)
        } else {
            let idx = u32::try_from(self.socks.len()).expect("more than u32::MAX sockets");
            self.socks.push(SockSlot {
                gen: 0,
                sock: Some(sock),
            });
            SocketId::new(idx, 0)
        }
    }

    pub fn sock(&self, id: SocketId) -> Result<&Sock, Error> {
        match self.socks.get(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => Ok(s),
            _ => Err(Error::UnknownSocket(id)),
        }
    }

    fn sock_mut(&mut self, id: SocketId) -> Result<&mut Sock, Error> {
        match self.socks.get_mut(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => Ok(s),
            _ => Err(Error::UnknownSocket(id)),
        }
    }

    pub fn id_of(&self, idx: u32) -> SocketId {
        SocketId::new(idx, self.socks[idx as usize].gen)
    }

    /// Iterates live socket indices.
    pub fn socket_indices(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..)
            .zip(self.socks.iter())
            .filter(|(_, s)| s.sock.is_some())
            .map(|(i, _)| i)
    }

    pub fn sock_at(&self, idx: u32) -> Option<&Sock> {
        self.socks.get(idx as usize).and_then(|s| s.sock.as_ref())
    }

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
        if let Some(s) = self
            .socks
            .get_mut(idx as usize)
            .and_then(|s| s.sock.as_mut())
        {
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

    /// Asks the backend to read the socket's error queue (only where `IP_RECVERR` is on).
    pub fn want_errqueue(&mut self, idx: u32) {
        if let Some(s) = self
            .socks
            .get_mut(idx as usize)
            .and_then(|s| s.sock.as_mut())
        {
            if s.recverr && !s.errqueue {
                s.errqueue = true;
                self.errqueue.push(idx);
            }
        }
    }

    /// The next socket whose error queue should be read: (index, fd).
    pub fn take_errqueue(&mut self) -> Option<(u32, RawFd)> {
        while let Some(idx) = self.errqueue.pop() {
            if let Some(s) = self
                .socks
                .get_mut(idx as usize)
                .and_then(|s| s.sock.as_mut())
            {
                s.errqueue = false;
                return Some((idx, s.fd));
            }
        }
        None
    }

    /// Records an error the kernel reported (error queue) about an earlier datagram to `dest`:
    /// the datagram was sent; this is what came back ([`Error::Peer`]), kept as an entry and
    /// counted per destination.
    pub fn peer_error(&mut self, idx: u32, dest: Option<SocketAddr>, errno: i32) {
        let id = self.id_of(idx);
        self.stats.peer_errors += 1;
        let Some(s) = self
            .socks
            .get_mut(idx as usize)
            .and_then(|s| s.sock.as_mut())
        else {
            return;
        };
        let dest = dest.or(s.peer).map(canonical);
        if s.peer_errors.len() < PEER_ERRORS_KEPT {
            s.peer_errors.push(Error::Peer {
                status: Status::from_errno(errno),
                errno,
                socket: id,
                peer: dest,
            });
        }
        let Some(dest) = dest else {
            return;
        };
        let u = s.unreachable.get_or_insert_with(Box::default);
        if let Some(&i) = u.at.get(&(dest, errno)) {
            u.list[i].reports += 1;
        } else if u.list.len() < PEER_ERRORS_KEPT {
            u.at.insert((dest, errno), u.list.len());
            u.list.push(Unreachable {
                dest,
                status: Status::from_errno(errno),
                errno,
                reports: 1,
            });
        }
    }

    /// Takes the peer errors recorded for the socket since the last call.
    pub fn take_peer_errors(&mut self, id: SocketId) -> Result<Vec<Error>, Error> {
        Ok(std::mem::take(&mut self.sock_mut(id)?.peer_errors))
    }

    /// Takes the per-destination counts of peer errors since the last call, in the order each
    /// (destination, errno) was first reported.
    pub fn take_unreachable(&mut self, id: SocketId) -> Result<Vec<Unreachable>, Error> {
        Ok(self
            .sock_mut(id)?
            .unreachable
            .take()
            .map_or_else(Vec::new, |u| u.list))
    }

    // ---- writes -----------------------------------------------------------------------------

    /// Queues a write: a stream write, or a datagram (`dest` for unconnected UDP sockets).
    /// `queued_ns` is the caller's clock for a sampled write, 0 otherwise.
    ///
    /// One socket lookup: this is the per-buffer hot path (always inlined into
    /// `Engine::send`/`send_to`, so the buffer is not passed through memory twice).
    #[inline(always)]
    pub fn send(
        &mut self,
        id: SocketId,
        data: Bytes,
        dest: Option<SocketAddr>,
        queued_ns: u64,
    ) -> Result<(), SendError> {
        let len = data.len();
        let total = self.queued_bytes;
        let cfg = &self.cfg;
        let s = match self.socks.get_mut(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => s,
            _ => return Err(self.refused(id, data, dest)),
        };
        // One test for the common case: the socket accepts writes, the call fits its kind, and
        // every limit holds (no overflow: `Config::clamped` keeps the limits ≤ isize::MAX).
        // Everything else is sorted out, and the error built, out of line.
        let fits = s.accepting
            && s.queued_bytes + len <= cfg.max_queued_bytes_per_socket
            && total + len <= cfg.max_queued_bytes;
        let dests = s.dests;
        match &mut s.queue {
            Queue::Stream(q)
                if fits && dest.is_none() && q.len() < cfg.max_queued_writes_per_socket =>
            {
                q.push(
                    data,
                    queued_ns,
                    cfg.coalesce_below_bytes,
                    cfg.coalesce_max_bytes,
                );
            }
            // `dest_fits`: the call fits the socket (connected or not) and the destination is
            // one it can reach (family, port, a specified address).
            Queue::Dgram(q)
                if fits && dest_fits(dest, dests) && q.len() < cfg.max_queued_writes_per_socket =>
            {
                q.push(data, dest, queued_ns);
            }
            _ => return Err(self.refused(id, data, dest)),
        }
        s.queued_bytes += len;
        let in_ready = s.in_ready;
        self.queued_bytes += len;
        self.pending_writes += 1;
        if !in_ready {
            self.wake(id.index);
        }
        Ok(())
    }

    /// Why [`Core::send`] refuses, in the order a caller should hear it, with the buffer.
    #[cold]
    #[inline(never)]
    fn refused(&self, id: SocketId, data: Bytes, dest: Option<SocketAddr>) -> SendError {
        let Ok(s) = self.sock(id) else {
            return SendError::new(Error::UnknownSocket(id), data);
        };
        let expected = match (&s.queue, s.peer.is_some(), dest.is_some()) {
            (Queue::Stream(_), _, true) => Some("an unconnected UDP socket"),
            (Queue::Dgram(_), true, true) => Some("an unconnected UDP socket (use send)"),
            (Queue::Dgram(_), false, false) => Some("a connected UDP socket (use send_to)"),
            _ => None,
        };
        if let Some(expected) = expected {
            let e = Error::WrongSocketKind {
                socket: id,
                expected,
            };
            return SendError::new(e, data);
        }
        if let Some(dest) = dest {
            if let Some(reason) = dest_problem(dest, s.dests) {
                let e = Error::BadDestination {
                    socket: id,
                    dest,
                    reason,
                };
                return SendError::new(e, data);
            }
        }
        match refuse(s, &self.cfg, self.queued_bytes, id, data.len()) {
            Err(e) => SendError::new(e, data),
            // Not refused after all (cannot happen: `send` asked because a test failed).
            Ok(()) => SendError::new(Error::UnknownSocket(id), data),
        }
    }

    // ---- planning ---------------------------------------------------------------------------

    fn has_work(&self, idx: u32) -> bool {
        let Some(s) = self.sock_at(idx) else {
            return false;
        };
        if !s.writable
            || s.closing
            || s.retry_at_ns.is_some()
            || s.in_flight >= self.cfg.max_in_flight_per_socket
        {
            return false;
        }
        match &s.queue {
            Queue::Stream(q) => s.in_flight == 0 && q.has_unsent(),
            Queue::Dgram(q) => q.has_queued(),
        }
    }

    fn wake(&mut self, idx: u32) {
        if self.sock_at(idx).is_some_and(|s| s.in_ready) {
            return;
        }
        if self.has_work(idx) {
            let s = self.socks[idx as usize]
                .sock
                .as_mut()
                .expect("has_work checked");
            if !s.in_ready {
                s.in_ready = true;
                self.ready.push_back(idx);
            }
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

    /// Sets or clears the socket's pending barrier (`Engine::try_flush`).
    pub fn set_barrier(&mut self, id: SocketId, target: Option<u64>) -> Result<(), Error> {
        self.sock_mut(id)?.barrier = target;
        Ok(())
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

    /// The next operation to issue, round-robin over sockets with work, or `None` when nothing
    /// can go out now.
    ///
    /// `max_in_flight_ops` binds only the ops beyond each socket's first: a socket with nothing
    /// in flight always gets one (its reservation), so stream sends parked on stalled peers
    /// cannot take the slots a healthy socket needs. A socket held back by the cap waits in
    /// `capped` until an op completes.
    pub fn next_op(&mut self) -> Option<Planned> {
        loop {
            let idx = self.ready.pop_front()?;
            if let Some(s) = self.socks[idx as usize].sock.as_mut() {
                s.in_ready = false;
            }
            if !self.has_work(idx) {
                continue;
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
                continue;
            }
            let (shape, dest) = match &mut s.queue {
                Queue::Stream(q) => match q.plan(cfg) {
                    Some(shape) => (shape, None),
                    None => continue,
                },
                Queue::Dgram(q) => match q.plan(cfg) {
                    Some(p) => p,
                    None => continue,
                },
            };
            let fd = s.fd;
            s.in_flight += 1;
            self.in_flight += 1;
            let token = self.alloc_op(OpInfo { sock: idx, shape });
            // Datagram sockets may have more groups to go; streams wait for this one.
            self.wake(idx);
            return Some(Planned {
                token,
                sock: idx,
                fd,
                shape,
                dest,
            });
        }
    }

    fn alloc_op(&mut self, info: OpInfo) -> Token {
        if let Some(i) = self.free_ops.pop() {
            let slot = &mut self.ops[i as usize];
            slot.op = Some(info);
            Token::op(i, slot.gen)
        } else {
            let i = u32::try_from(self.ops.len()).expect("more than u32::MAX ops");
            self.ops.push(OpSlot {
                gen: 0,
                op: Some(info),
            });
            Token::op(i, 0)
        }
    }

    fn take_op(&mut self, t: Token) -> Option<OpInfo> {
        let i = t.slot();
        let slot = self.ops.get_mut(i)?;
        if slot.gen != t.gen() {
            return None;
        }
        let info = slot.op.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        // `i` came from a u32 slot index (`Token::op`).
        self.free_ops
            .push(u32::try_from(i).expect("op slots come from u32 indices"));
        Some(info)
    }

    /// Tokens of the ops in flight on socket `sock` (every socket with `None`): what a cancel
    /// targets, op by op (not by file, which a `dup`ed descriptor would share).
    pub fn in_flight_tokens(&self, sock: Option<u32>) -> Vec<Token> {
        (0u32..)
            .zip(&self.ops)
            .filter_map(|(i, slot)| {
                let op = slot.op?;
                (sock.is_none() || sock == Some(op.sock)).then(|| Token::op(i, slot.gen))
            })
            .collect()
    }

    /// The payload slices of a planned op, in order (iovec building).
    pub fn for_each_slice(&self, p: &Planned, mut f: impl FnMut(&[u8])) {
        let Some(s) = self.sock_at(p.sock) else {
            return;
        };
        match (&s.queue, p.shape) {
            (Queue::Stream(q), OpShape::Stream { bytes, .. }) => q.slices(bytes, &mut f),
            (Queue::Dgram(q), OpShape::Dgram { group, .. }) => q.slices(group, &mut f),
            _ => {}
        }
    }

    /// The sequence numbers of a planned datagram op's datagrams, in order (the simulated
    /// kernel attributes each datagram it delivers); empty for a stream op.
    #[cfg(any(test, fuzzing, feature = "sim"))]
    pub fn dgram_seqs(&self, p: &Planned) -> &[u64] {
        match (self.sock_at(p.sock).map(|s| &s.queue), p.shape) {
            (Some(Queue::Dgram(q)), OpShape::Dgram { group, .. }) => q.group_seqs(group),
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
            Event::Done { token, res } => self.complete(token, res, clock),
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
            (Queue::Dgram(q), OpShape::Dgram { group, .. }) => q.requeue_group(group),
            _ => {}
        }
        self.wake(info.sock);
        Some(info.sock)
    }

    /// Applies a kernel result: `res >= 0` is bytes sent, `res < 0` is `-errno`. Stale and
    /// unknown tokens change nothing.
    fn complete(&mut self, t: Token, res: i32, clock: &mut Clock<'_>) {
        let Some(info) = self.take_op(t) else {
            return;
        };
        if !self.finish_op(info.sock) {
            // The socket is gone (cannot happen while ops are in flight); the op is consumed.
            return;
        }
        let idx = info.sock;
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

    /// Accounts in one step for `count` writes of `total` bytes that completed whole; `sampled`
    /// holds (length, queued time) of those whose latency is sampled (queued time ≠ 0).
    fn ended_ok(
        &mut self,
        idx: u32,
        count: u64,
        total: usize,
        sampled: &[(usize, u64)],
        clock: &mut Clock<'_>,
    ) {
        if let Some(s) = self.socks[idx as usize].sock.as_mut() {
            s.queued_bytes -= total;
            s.acc.writes += count;
        }
        self.queued_bytes -= total;
        self.pending_writes -= count;
        self.stats.writes_sent += count;
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
            Queue::Dgram(q) => q.drain_queued(&mut dropped),
        }
        for &(len, queued_ns) in &dropped {
            self.ended_failed(idx, len, queued_ns, now_ns, err);
        }
        dropped.clear();
        self.scratch = dropped;
    }

    // ---- barriers ---------------------------------------------------------------------------

    /// The sequence number a barrier created now waits for.
    pub fn barrier(&self, id: SocketId) -> Result<u64, Error> {
        Ok(match &self.sock(id)?.queue {
            Queue::Stream(q) => q.next_seq(),
            Queue::Dgram(q) => q.next_seq(),
        })
    }

    /// Whether every write before `target` is terminal.
    pub fn barrier_done(&self, id: SocketId, target: u64) -> Result<bool, Error> {
        Ok(match &self.sock(id)?.queue {
            Queue::Stream(q) => q.done_upto() >= target,
            Queue::Dgram(q) => q.done_upto() >= target,
        })
    }

    /// Takes the outcomes accumulated since the socket's last flush.
    pub fn take_report(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        let s = self.sock_mut(id)?;
        let mut r = s.acc.take();
        // A poisoned stream keeps reporting its error: later flushes fail the same way.
        if r.first_error.is_none() {
            r.first_error = s.poisoned.clone();
        }
        Ok(r)
    }

    /// Whether the socket is a stream (flush errors are raised) or datagram (counted).
    pub fn is_stream(&self, id: SocketId) -> Result<bool, Error> {
        Ok(matches!(self.sock(id)?.queue, Queue::Stream(_)))
    }

    /// Forgets the memory of every write still in flight, so it is never freed while the kernel may
    /// read it (used when a drain on shutdown fails).
    pub fn leak_in_flight(&mut self) {
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

/// Which limit refuses `len` more bytes on `s` (poison and closing first), in the order a
/// caller should hear it.
#[cold]
#[inline(never)]
fn refuse(s: &Sock, cfg: &Config, total: usize, id: SocketId, len: usize) -> Result<(), Error> {
    if let Some(e) = &s.poisoned {
        return Err(e.clone());
    }
    if s.closing {
        return Err(Error::UnknownSocket(id));
    }
    let (max_total, max_per) = (cfg.max_queued_bytes, cfg.max_queued_bytes_per_socket);
    let max = max_per.min(max_total);
    if len > max {
        return Err(Error::BufferTooLarge {
            socket: id,
            len,
            max,
        });
    }
    if s.queued_bytes + len > max_per {
        return Err(Error::Backpressure {
            socket: id,
            limit: Limit::QueuedBytesPerSocket,
            max: max_per,
        });
    }
    if total + len > max_total {
        return Err(Error::Backpressure {
            socket: id,
            limit: Limit::QueuedBytesTotal,
            max: max_total,
        });
    }
    let queued_writes = match &s.queue {
        Queue::Stream(q) => q.len(),
        Queue::Dgram(q) => q.len(),
    };
    if queued_writes >= cfg.max_queued_writes_per_socket {
        return Err(Error::Backpressure {
            socket: id,
            limit: Limit::QueuedWritesPerSocket,
            max: cfg.max_queued_writes_per_socket,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dest_tests {
    use super::*;

    /// The hot path's test and the cold path's reason agree on every kind of address, for
    /// every kind of `send_to` socket: refused exactly when there is a reason.
    #[test]
    fn dest_fits_agrees_with_dest_problem() {
        let addrs = [
            "127.0.0.1:9",
            "10.1.2.3:65535",
            "0.0.0.0:9",
            "127.0.0.1:0",
            "0.0.0.0:0",
            "[::1]:9",
            "[2001:db8::1]:9",
            "[fe80::1]:9",
            "[::]:9",
            "[::1]:0",
            "[::ffff:127.0.0.1]:9",
            "[::ffff:0.0.0.0]:9",
            "[::ffff:127.0.0.1]:0",
            "[::1:0:0]:9",
            "[::ffff:0:0:1]:9",
            "[::127.0.0.1]:9",
            "[0:0:0:0:1::]:9",
        ];
        let socks = [
            ("v4", DEST_V4),
            ("v6only", DEST_V6),
            ("dual", DEST_V4 | DEST_V6 | DEST_V4_MAPPED),
        ];
        for a in addrs {
            let dest: SocketAddr = a.parse().unwrap();
            for (name, dests) in socks {
                let fits = dest_fits(Some(dest), dests);
                let problem = dest_problem(dest, dests);
                assert_eq!(fits, problem.is_none(), "{a} on {name}: {problem:?}");
            }
        }
        // Exact verdicts where it matters.
        let refused = |a: &str, dests| dest_problem(a.parse().unwrap(), dests);
        assert!(refused("[::1]:9", DEST_V4).is_some_and(|r| r.contains("IPv6 address on an IPv4")));
        assert!(refused("127.0.0.1:9", DEST_V6).is_some_and(|r| r.contains("IPv6-only")));
        assert!(refused("[::ffff:127.0.0.1]:9", DEST_V6).is_some_and(|r| r.contains("mapped")));
        assert_eq!(
            refused("[::ffff:127.0.0.1]:9", DEST_V4 | DEST_V6 | DEST_V4_MAPPED),
            None
        );
        assert_eq!(
            refused("127.0.0.1:9", DEST_V4 | DEST_V6 | DEST_V4_MAPPED),
            None
        );
        assert!(refused("0.0.0.0:9", DEST_V4).is_some_and(|r| r.contains("unspecified")));
        assert!(
            refused("[::ffff:0.0.0.0]:9", DEST_V4 | DEST_V6 | DEST_V4_MAPPED)
                .is_some_and(|r| r.contains("unspecified"))
        );
        assert!(refused("127.0.0.1:0", DEST_V4).is_some_and(|r| r.contains("port 0")));
        // No destination: streams and connected sockets only.
        assert!(dest_fits(None, DEST_NONE) && !dest_fits(None, DEST_V4 | DEST_V6));
        assert!(!dest_fits(Some("127.0.0.1:9".parse().unwrap()), DEST_NONE));
    }

    #[test]
    fn canonical_names_mapped_destinations_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:5004".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.7:5004".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::7]:5004".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}

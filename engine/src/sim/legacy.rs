//! A simulated kernel driving the real sans-IO core, for unit tests and fuzz targets.
//!
//! [`Sim`] owns a core, fake sockets (fds from 1000 up) and an independent *reference model* of
//! what every accepted write must become. It plays the kernel: it pulls operations with
//! `next_op`, snapshots the exact bytes each one would send, and completes them with any result
//! the caller picks, in any order. After every step it checks the core against the model and
//! panics, with a message naming the broken invariant, on any difference:
//!
//! - streams: at most one op in flight per socket; an op starts at the first unsent byte and
//!   carries exactly the next bytes of the concatenation of accepted writes; the peer receives a
//!   prefix of that concatenation (all of it when nothing failed);
//! - datagrams: an op carries queued datagrams, oldest first, each whole, to its own destination;
//!   a GSO group obeys the shape rules; a refused group is re-split; ENOBUFS backs off
//!   (≤ 16 ms per datagram), then drops;
//! - every accepted write ends exactly once: the counts in the core's flush accumulators (sent,
//!   failed per status, bytes, first error) equal the model's at every step;
//! - a barrier is done iff every write accepted before it is terminal;
//! - ops in flight ≤ `max_in_flight_ops` (and per socket), queued bytes ≤ the limits, and `send`
//!   is refused exactly when a limit (or poison, or closing) says so;
//! - the buffer an op reads is unchanged until its completion; stale, unknown and duplicate
//!   tokens change nothing.
//!
//! Two completion models ([`Model`]): `Uring` keeps ops in flight until the caller (or a flush)
//! completes them, in any order; `Epoll` completes each op right after `next_op`, as the epoll
//! backend does (stream ops one by one; a socket's datagram ops as a `sendmmsg`: a prefix, then
//! the rest requeued after `EAGAIN`/`EINTR`).
//!
//! ## What is equal across the two models
//!
//! For one trace of user calls and one deterministic kernel ([`Script`]: results that depend on
//! stream byte offsets and datagram sequence numbers, never on how ops were cut or ordered),
//! [`Sim::observed`] is the same in both models: the bytes each stream peer received, the multiset
//! of datagrams each socket delivered, and the fate of every send call, where a write *rejected*
//! with a poisoned stream's status and a write *accepted then failed* with that status count as
//! the same outcome (on io_uring a completion arrives later, so more writes get accepted before
//! the stream is poisoned). The order in which datagrams arrive, the number of ops, GSO grouping
//! and the retry counts legitimately differ. Flush results ([`FlushOutcome`]) are equal too: a
//! barrier covers the same writes in both models. Backpressure depends on timing, so differential
//! runs use limits that are never reached, and a socket is dropped only through [`Sim::close`]
//! (flush first) there.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;

use crate::core::{Completed, Config, Core, DgramQueue, OpShape, Planned, Queue, StreamQueue};
use crate::error::{Error, Status};
use crate::report::FlushReport;
use crate::SocketId;

/// Errno values a kernel may return for a send, for fuzz targets to pick from.
pub const ERRNOS: [i32; 16] = [
    libc::EAGAIN,
    libc::EINTR,
    libc::ECONNRESET,
    libc::EPIPE,
    libc::EMSGSIZE,
    libc::ENOBUFS,
    libc::EIO,
    libc::EINVAL,
    libc::ECONNREFUSED,
    libc::ENOTCONN,
    libc::EHOSTUNREACH,
    libc::ETIMEDOUT,
    libc::ECANCELED,
    libc::ENOMEM,
    512, // ERESTARTSYS
    libc::EPERM,
];

/// One millisecond.
const MS: u64 = 1_000_000;

/// Limits and switches of the simulated engine: the core's own configuration, clamped as
/// `EngineBuilder` clamps it. `recverr` is ignored: the simulated kernel models sockets without
/// `IP_RECVERR` (the error-queue path is covered by core unit tests and real sockets).
pub use crate::core::Config as SimConfig;

/// How completions arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Ops stay in flight until completed, in any order (io_uring).
    Uring,
    /// Each op completes right after `next_op` (epoll: `sendmsg`, `sendmmsg` prefixes).
    Epoll,
}

/// Why a send was refused, or (for a failed write) the status it failed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejected {
    /// `Error::Backpressure`.
    Backpressure,
    /// `Error::BufferTooLarge`.
    TooLarge,
    /// A socket error (a poisoned stream), or the status a write failed with.
    Status(Status),
    /// `Error::UnknownSocket` (removed or closing).
    UnknownSocket,
    /// `Error::WrongSocketKind`.
    WrongKind,
    /// Any other error.
    Other,
}

impl Rejected {
    fn of(e: &Error) -> Rejected {
        match e {
            Error::Backpressure { .. } => Rejected::Backpressure,
            Error::BufferTooLarge { .. } => Rejected::TooLarge,
            Error::Socket { status, .. } => Rejected::Status(*status),
            Error::UnknownSocket(_) => Rejected::UnknownSocket,
            Error::WrongSocketKind { .. } => Rejected::WrongKind,
            _ => Rejected::Other,
        }
    }
}

/// What became of one send call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WriteOutcome {
    /// Accepted, not terminal yet.
    Pending,
    /// Accepted and sent whole.
    Delivered,
    /// Accepted, then failed.
    Failed(Status),
    /// Refused by `send`.
    Rejected(Rejected),
}

/// Counts of a flush report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Writes sent whole.
    pub writes: u64,
    /// Payload bytes the kernel took.
    pub bytes: u64,
    /// Writes that failed.
    pub failed: u64,
    /// Failed writes per status ([`Status::index`]).
    pub failures: [u64; Status::ALL.len()],
}

impl Counts {
    fn of(r: &FlushReport) -> Counts {
        Counts {
            writes: r.writes,
            bytes: r.bytes,
            failed: r.failed,
            failures: r.failures,
        }
    }

    fn add(&mut self, o: &Counts) {
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.failed += o.failed;
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
    }
}

/// What a flush returns, as `Engine::flush` would: a stream's first error is raised, datagram
/// failures are counted.
pub type FlushOutcome = Result<Counts, Rejected>;

/// One op as the simulated kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpDesc {
    /// The core's token for it.
    pub token: u64,
    /// The sim socket handle.
    pub sock: usize,
    /// A stream op (else a datagram op).
    pub stream: bool,
    /// Streams: offset of the op's first byte in the stream.
    pub offset: usize,
    /// Datagrams: sequence number (index of the send on this socket) of the first datagram.
    pub first: usize,
    /// Datagrams in the op (queued writes for a stream op).
    pub count: usize,
    /// iovecs the op hands the kernel (a run of staged small stream writes is one).
    pub iovecs: usize,
    /// GSO segment size, for a GSO group.
    pub segment_size: Option<u16>,
    /// Payload bytes.
    pub bytes: usize,
}

impl OpDesc {
    /// The result of a complete send: all bytes.
    pub fn full(&self) -> i32 {
        i32::try_from(self.bytes).unwrap_or(i32::MAX)
    }
}

/// A simulated kernel's answer to an op: `res ≥ 0` bytes sent, `< 0` `-errno`.
pub trait Kernel {
    /// The result for `op`.
    fn result(&mut self, op: &OpDesc) -> i32;
}

impl<F: FnMut(&OpDesc) -> i32> Kernel for F {
    fn result(&mut self, op: &OpDesc) -> i32 {
        self(op)
    }
}

/// A kernel that sends everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllOk;

impl Kernel for AllOk {
    fn result(&mut self, op: &OpDesc) -> i32 {
        op.full()
    }
}

/// What the kernel does to one datagram, whatever op carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fate {
    /// Fails with this errno (fatal, never retried: not EAGAIN/EINTR/ENOBUFS).
    pub errno: Option<i32>,
    /// ENOBUFS for this many of its first sends alone.
    pub nobufs: u8,
    /// EAGAIN the first time an op carries it.
    pub again: bool,
}

#[derive(Debug, Clone, Default)]
struct StreamScript {
    cuts: Vec<usize>,
    fail: Option<(usize, i32)>,
    again_at: Vec<(usize, bool)>,
}

/// A deterministic kernel whose results depend only on stream offsets and datagram sequence
/// numbers, so two completion models given clones of it see the same kernel:
///
/// - stream: an op never crosses a *cut* offset (a short send ends there); the first op starting at
///   an *again* offset gets EAGAIN; with `fail = (x, errno)` the op reaching offset `x` stops there
///   and the op starting at `x` fails with `errno`; an op of 0 bytes always succeeds;
/// - datagram: EAGAIN once for an op with a member flagged `again`; a group fails with its first
///   datagram's fatal errno, else with the fatal errno of a later member (EMSGSIZE in place of a
///   socket error such as ECONNREFUSED, which the core pins on the group's *first* datagram), else
///   with ENOBUFS if a member still has one due, else is sent; a single datagram fails with its
///   fatal errno, or ENOBUFS `nobufs` times, else is sent. Each datagram's end is thus the same
///   however the ops were grouped.
#[derive(Debug, Clone, Default)]
pub struct Script {
    streams: Vec<StreamScript>,
    fates: Vec<Vec<Fate>>,
    used_nobufs: Vec<Vec<u8>>,
}

impl Script {
    /// An empty script (every send succeeds).
    pub fn new() -> Script {
        Script::default()
    }

    fn stream(&mut self, sock: usize) -> &mut StreamScript {
        if self.streams.len() <= sock {
            self.streams.resize_with(sock + 1, StreamScript::default);
        }
        &mut self.streams[sock]
    }

    /// Short sends end at stream offset `at`.
    pub fn cut(&mut self, sock: usize, at: usize) {
        self.stream(sock).cuts.push(at);
    }

    /// The first op that starts at stream offset `at` gets EAGAIN.
    pub fn again_at(&mut self, sock: usize, at: usize) {
        self.stream(sock).again_at.push((at, false));
    }

    /// The connection dies at stream offset `at` with `errno`.
    pub fn fail_at(&mut self, sock: usize, at: usize, errno: i32) {
        self.stream(sock).fail = Some((at, errno));
    }

    /// The fate of datagram `seq` of socket `sock`.
    pub fn fate(&mut self, sock: usize, seq: usize, fate: Fate) {
        if self.fates.len() <= sock {
            self.fates.resize_with(sock + 1, Vec::new);
            self.used_nobufs.resize_with(sock + 1, Vec::new);
        }
        let f = &mut self.fates[sock];
        if f.len() <= seq {
            f.resize(seq + 1, Fate::default());
            self.used_nobufs[sock].resize(seq + 1, 0);
        }
        f[seq] = fate;
    }

    fn stream_result(&mut self, op: &OpDesc) -> i32 {
        if op.bytes == 0 {
            return 0;
        }
        let s = self.stream(op.sock);
        let o = op.offset;
        if let Some(a) = s.again_at.iter_mut().find(|(at, used)| *at == o && !*used) {
            a.1 = true;
            return -libc::EAGAIN;
        }
        let mut end = o + op.bytes;
        if let Some((x, errno)) = s.fail {
            if o >= x {
                return -errno;
            }
            end = end.min(x);
        }
        if let Some(c) = s.cuts.iter().copied().filter(|&c| c > o && c < end).min() {
            end = c;
        }
        i32::try_from(end - o).unwrap_or(i32::MAX)
    }

    fn dgram_result(&mut self, op: &OpDesc) -> i32 {
        let (sock, first, count) = (op.sock, op.first, op.count);
        let Some(fates) = self.fates.get_mut(sock) else {
            return op.full();
        };
        let end = (first + count).min(fates.len());
        let members = fates.get_mut(first.min(end)..end).unwrap_or_default();
        if members.iter().any(|f| f.again) {
            for f in members.iter_mut() {
                f.again = false;
            }
            return -libc::EAGAIN;
        }
        let used = &mut self.used_nobufs[sock][first.min(end)..end];
        if count > 1 {
            if let Some(e) = members.first().and_then(|f| f.errno) {
                return -e;
            }
            if let Some(e) = members.iter().find_map(|f| f.errno) {
                // A socket error would be pinned on the group's first datagram: refuse the group
                // as too big instead, so the datagram with the fate meets it alone.
                return if matches!(e, libc::EIO | libc::EINVAL | libc::EMSGSIZE) {
                    -e
                } else {
                    -libc::EMSGSIZE
                };
            }
            if members.iter().zip(used.iter()).any(|(f, u)| *u < f.nobufs) {
                return -libc::ENOBUFS;
            }
            return op.full();
        }
        if let (Some(f), Some(u)) = (members.first(), used.first_mut()) {
            if let Some(e) = f.errno {
                return -e;
            }
            if *u < f.nobufs {
                *u += 1;
                return -libc::ENOBUFS;
            }
        }
        op.full()
    }
}

impl Kernel for Script {
    fn result(&mut self, op: &OpDesc) -> i32 {
        if op.stream {
            self.stream_result(op)
        } else {
            self.dgram_result(op)
        }
    }
}

/// What a run is observed to do, equal across completion models for the same trace and
/// [`Script`] (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The fate of each send call, in call order; `Failed(s)` is folded into
    /// `Rejected(Status(s))`.
    pub writes: Vec<WriteOutcome>,
    /// Bytes each stream peer received (empty for datagram sockets).
    pub streams: Vec<Vec<u8>>,
    /// Datagrams each socket delivered, sorted (arrival order differs between models).
    pub dgrams: Vec<Vec<(Option<SocketAddr>, Bytes)>>,
}

// ---- the reference model -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Pending,
    InFlight,
    Sent,
    Failed,
}

impl St {
    fn terminal(self) -> bool {
        matches!(self, St::Sent | St::Failed)
    }
}

#[derive(Debug)]
struct SWrite {
    start: usize,
    len: usize,
    st: St,
    tag: usize,
}

impl SWrite {
    fn end(&self) -> usize {
        self.start + self.len
    }
}

#[derive(Debug)]
struct DWrite {
    data: Bytes,
    dest: Option<SocketAddr>,
    st: St,
    solo: bool,
    nobufs: u8,
    backoff_ns: u64,
    tag: usize,
}

#[derive(Debug)]
enum Body {
    Stream {
        accepted: Vec<u8>,
        writes: Vec<SWrite>,
        received: Vec<u8>,
    },
    Dgram {
        connected: bool,
        dgrams: Vec<DWrite>,
        received: Vec<(Option<SocketAddr>, Bytes)>,
        gso: bool,
        retry_at: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Open,
    /// Queued writes cancelled; removed once nothing is in flight.
    Closing,
    Removed,
}

#[derive(Debug)]
struct Peer {
    id: SocketId,
    fd: i32,
    life: Life,
    poisoned: Option<Status>,
    body: Body,
    /// Writes accepted and not terminal, and their bytes.
    pending: usize,
    pending_bytes: usize,
    in_flight: usize,
    /// Outcomes since the last report, and the first error among them.
    acc: Counts,
    first_error: Option<Status>,
    /// Everything reported so far.
    reported: Counts,
    /// Lowest index of a write that is not terminal.
    low: usize,
    barriers: Vec<u64>,
    unwritable: bool,
}

impl Peer {
    fn accepted(&self) -> usize {
        match &self.body {
            Body::Stream { writes, .. } => writes.len(),
            Body::Dgram { dgrams, .. } => dgrams.len(),
        }
    }

    fn is_terminal(&self, i: usize) -> bool {
        match &self.body {
            Body::Stream { writes, .. } => writes[i].st.terminal(),
            Body::Dgram { dgrams, .. } => dgrams[i].st.terminal(),
        }
    }

    fn advance_low(&mut self) {
        while self.low < self.accepted() && self.is_terminal(self.low) {
            self.low += 1;
        }
    }

    /// Entries in the core's queue: a stream keeps its unfinished writes; a datagram queue keeps
    /// everything from its oldest unfinished datagram on.
    fn queue_len(&self) -> usize {
        match &self.body {
            Body::Stream { .. } => self.pending,
            Body::Dgram { dgrams, .. } => dgrams.len() - self.low,
        }
    }
}

#[derive(Debug)]
struct Flight {
    p: Planned,
    sock: usize,
    first: usize,
    count: usize,
    offset: usize,
    /// The bytes the kernel reads, taken at submission.
    snapshot: Vec<Vec<u8>>,
}

/// A simulated kernel around a real core. See the module docs.
#[derive(Debug)]
pub struct Sim {
    core: Core,
    cfg: Config,
    model: Model,
    now_ns: u64,
    peers: Vec<Peer>,
    /// Core socket index → sim handle, for live sockets.
    by_idx: Vec<Option<usize>>,
    flights: Vec<Flight>,
    /// Tokens of finished ops (for stale completions).
    history: Vec<u64>,
    outcomes: Vec<WriteOutcome>,
    rng: u64,
    dead: bool,
}

fn payload(tag: usize, len: usize) -> Bytes {
    // splitmix64 over (tag, word index): every write's bytes are distinct from every other's.
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        let mut z = (tag as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i.wrapping_mul(0xbf58_476d_1ce4_e5b9))
            .wrapping_add(0x94d0_49bb_1331_11eb);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
        i += 1;
    }
    Bytes::from(out)
}

/// The destination for port `port` (fuzz targets pick from a few).
pub fn dest(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), port))
}

fn retry(errno: i32) -> bool {
    crate::core::is_retry(errno)
}

impl Sim {
    /// A simulated engine with completion model `model`.
    pub fn new(cfg: &SimConfig, model: Model) -> Sim {
        let cfg = SimConfig {
            recverr: false,
            ..cfg.clone().clamped()
        };
        Sim {
            core: Core::new(cfg.clone()),
            cfg,
            model,
            now_ns: 1,
            peers: Vec::new(),
            by_idx: Vec::new(),
            flights: Vec::new(),
            history: Vec::new(),
            outcomes: Vec::new(),
            rng: 0x853c_49e6_748f_ea9b,
            dead: false,
        }
    }

    /// Seeds the choices a flush makes (which op in flight completes next).
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    fn pick(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        usize::try_from(self.rng % n as u64).expect("below n")
    }

    /// The clock, in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Sockets added so far (handles are `0..sockets()`).
    pub fn sockets(&self) -> usize {
        self.peers.len()
    }

    /// Whether `h` is a live stream socket.
    pub fn is_stream(&self, h: usize) -> bool {
        self.peers
            .get(h)
            .is_some_and(|p| matches!(p.body, Body::Stream { .. }))
    }

    /// Whether the engine was shut down.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Ops in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Writes accepted and not terminal (the core's count).
    pub fn pending_writes(&self) -> u64 {
        self.core.pending_writes()
    }

    /// The core's counters.
    pub fn stats(&self) -> &crate::Stats {
        &self.core.stats
    }

    /// The op in flight at position `i` (submission order).
    pub fn op(&self, i: usize) -> OpDesc {
        let f = &self.flights[i];
        let (stream, count, segment_size, bytes) = match f.p.shape {
            OpShape::Stream { entries, bytes } => (true, entries, None, bytes),
            OpShape::Dgram {
                count,
                segment_size,
                bytes,
                ..
            } => (false, count, segment_size, bytes),
        };
        OpDesc {
            token: f.p.token.0,
            sock: f.sock,
            stream,
            offset: f.offset,
            first: f.first,
            count,
            iovecs: f.snapshot.len(),
            segment_size,
            bytes,
        }
    }

    /// Bytes the peer of stream `h` received.
    pub fn stream_received(&self, h: usize) -> &[u8] {
        match &self.peers[h].body {
            Body::Stream { received, .. } => received,
            Body::Dgram { .. } => &[],
        }
    }

    /// The concatenation of the writes stream `h` accepted.
    pub fn stream_accepted(&self, h: usize) -> &[u8] {
        match &self.peers[h].body {
            Body::Stream { accepted, .. } => accepted,
            Body::Dgram { .. } => &[],
        }
    }

    /// Datagrams socket `h` delivered, in arrival order.
    pub fn dgrams_received(&self, h: usize) -> &[(Option<SocketAddr>, Bytes)] {
        match &self.peers[h].body {
            Body::Dgram { received, .. } => received,
            Body::Stream { .. } => &[],
        }
    }

    /// The datagrams socket `h` accepted, in order.
    pub fn dgrams_accepted(&self, h: usize) -> Vec<(Option<SocketAddr>, Bytes)> {
        match &self.peers[h].body {
            Body::Dgram { dgrams, .. } => dgrams.iter().map(|d| (d.dest, d.data.clone())).collect(),
            Body::Stream { .. } => Vec::new(),
        }
    }

    /// Whether GSO is still on for datagram socket `h`.
    pub fn socket_gso(&self, h: usize) -> bool {
        matches!(self.peers[h].body, Body::Dgram { gso: true, .. }) && self.cfg.gso
    }

    /// The fate of every send call so far.
    pub fn outcomes(&self) -> &[WriteOutcome] {
        &self.outcomes
    }

    /// Everything reported by flushes of `h` so far.
    pub fn reported(&self, h: usize) -> &Counts {
        &self.peers[h].reported
    }

    /// The observable outcome (see the module docs).
    pub fn observed(&self) -> Observed {
        let writes = self
            .outcomes
            .iter()
            .map(|o| match *o {
                WriteOutcome::Failed(s) => WriteOutcome::Rejected(Rejected::Status(s)),
                o => o,
            })
            .collect();
        let streams = self
            .peers
            .iter()
            .map(|p| match &p.body {
                Body::Stream { received, .. } => received.clone(),
                Body::Dgram { .. } => Vec::new(),
            })
            .collect();
        let dgrams = self
            .peers
            .iter()
            .map(|p| match &p.body {
                Body::Dgram { received, .. } => {
                    let mut v = received.clone();
                    v.sort();
                    v
                }
                Body::Stream { .. } => Vec::new(),
            })
            .collect();
        Observed {
            writes,
            streams,
            dgrams,
        }
    }

    // ---- sockets --------------------------------------------------------------------------

    fn add(&mut self, peer_addr: Option<SocketAddr>, queue: Queue, body: Body) -> usize {
        let h = self.peers.len();
        let fd = 1000 + i32::try_from(h).expect("sim sockets fit i32");
        let id = self.core.add_socket(fd, peer_addr, queue);
        let idx = id.index() as usize;
        if self.by_idx.len() <= idx {
            self.by_idx.resize(idx + 1, None);
        }
        assert!(
            self.by_idx[idx].is_none(),
            "core reused slot {idx} of a live socket"
        );
        self.by_idx[idx] = Some(h);
        self.peers.push(Peer {
            id,
            fd,
            life: if self.dead { Life::Removed } else { Life::Open },
            poisoned: None,
            body,
            pending: 0,
            pending_bytes: 0,
            in_flight: 0,
            acc: Counts::default(),
            first_error: None,
            reported: Counts::default(),
            low: 0,
            barriers: Vec::new(),
            unwritable: false,
        });
        h
    }

    /// Adds a TCP stream socket; returns its handle.
    pub fn add_stream(&mut self) -> usize {
        let peer = Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(127, 0, 0, 2),
            80,
        )));
        self.add(
            peer,
            Queue::Stream(StreamQueue::default()),
            Body::Stream {
                accepted: Vec::new(),
                writes: Vec::new(),
                received: Vec::new(),
            },
        )
    }

    /// Adds a UDP socket, connected (use [`Sim::send`]) or not (use [`Sim::send_to`]).
    pub fn add_dgram(&mut self, connected: bool) -> usize {
        let peer = connected.then(|| dest(9999));
        let gso = self.cfg.gso;
        self.add(
            peer,
            Queue::Dgram(DgramQueue::new(gso)),
            Body::Dgram {
                connected,
                dgrams: Vec::new(),
                received: Vec::new(),
                gso,
                retry_at: None,
            },
        )
    }

    // ---- writes ---------------------------------------------------------------------------

    /// `Engine::send`: a stream write or a datagram on a connected socket, of `len` recognizable
    /// bytes.
    ///
    /// # Errors
    /// Whatever the core refuses with (checked against the model).
    pub fn send(&mut self, h: usize, len: usize) -> Result<(), Rejected> {
        self.send_inner(h, None, len)
    }

    /// `Engine::send_to`: a datagram to `dest(port)` on an unconnected socket.
    ///
    /// # Errors
    /// As [`Sim::send`].
    pub fn send_to(&mut self, h: usize, port: u16, len: usize) -> Result<(), Rejected> {
        self.send_inner(h, Some(dest(port)), len)
    }

    fn expect_admit(&self, h: usize, to: bool, len: usize) -> Result<(), Rejected> {
        let p = &self.peers[h];
        if p.life == Life::Removed {
            return Err(Rejected::UnknownSocket);
        }
        if to && matches!(p.body, Body::Stream { .. }) {
            return Err(Rejected::WrongKind);
        }
        if let Some(s) = p.poisoned {
            return Err(Rejected::Status(s));
        }
        if p.life == Life::Closing {
            return Err(Rejected::UnknownSocket);
        }
        let c = &self.cfg;
        if len > c.max_queued_bytes_per_socket.min(c.max_queued_bytes) {
            return Err(Rejected::TooLarge);
        }
        if p.pending_bytes + len > c.max_queued_bytes_per_socket
            || self.core.queued_bytes() + len > c.max_queued_bytes
            || p.queue_len() >= c.max_queued_writes_per_socket
        {
            return Err(Rejected::Backpressure);
        }
        match (&p.body, to) {
            (Body::Stream { .. }, false) => Ok(()),
            (Body::Dgram { connected, .. }, to) if *connected != to => Ok(()),
            _ => Err(Rejected::WrongKind),
        }
    }

    fn send_inner(&mut self, h: usize, to: Option<SocketAddr>, len: usize) -> Result<(), Rejected> {
        if self.dead || h >= self.peers.len() {
            return Err(Rejected::UnknownSocket);
        }
        let tag = self.outcomes.len();
        let data = payload(tag, len);
        let expected = self.expect_admit(h, to.is_some(), len);
        let id = self.peers[h].id;
        let got = self
            .core
            .send(id, data.clone(), to, self.now_ns)
            .map_err(|e| Rejected::of(e.error()));
        assert_eq!(
            got, expected,
            "send of {len} bytes on sim socket {h}: core and model disagree"
        );
        match got {
            Ok(()) => {
                self.outcomes.push(WriteOutcome::Pending);
                let p = &mut self.peers[h];
                p.pending += 1;
                p.pending_bytes += len;
                match &mut p.body {
                    Body::Stream {
                        accepted, writes, ..
                    } => {
                        writes.push(SWrite {
                            start: accepted.len(),
                            len,
                            st: St::Pending,
                            tag,
                        });
                        accepted.extend_from_slice(&data);
                    }
                    Body::Dgram { dgrams, .. } => dgrams.push(DWrite {
                        data,
                        dest: to,
                        st: St::Pending,
                        solo: false,
                        nobufs: 0,
                        backoff_ns: 0,
                        tag,
                    }),
                }
            }
            Err(r) => self.outcomes.push(WriteOutcome::Rejected(r)),
        }
        self.check();
        got
    }

    // ---- the model's terminal transitions -------------------------------------------------

    fn end_write(&mut self, h: usize, i: usize, failed: Option<Status>) {
        let p = &mut self.peers[h];
        let (len, tag) = match &mut p.body {
            Body::Stream { writes, .. } => {
                let w = &mut writes[i];
                assert!(!w.st.terminal(), "stream write {i} ended twice");
                w.st = if failed.is_some() {
                    St::Failed
                } else {
                    St::Sent
                };
                (w.len, w.tag)
            }
            Body::Dgram { dgrams, .. } => {
                let d = &mut dgrams[i];
                assert!(!d.st.terminal(), "datagram {i} ended twice");
                d.st = if failed.is_some() {
                    St::Failed
                } else {
                    St::Sent
                };
                (d.data.len(), d.tag)
            }
        };
        p.pending -= 1;
        p.pending_bytes -= len;
        match failed {
            None => {
                p.acc.writes += 1;
                self.outcomes[tag] = WriteOutcome::Delivered;
            }
            Some(s) => {
                p.acc.failed += 1;
                p.acc.failures[s.index()] += 1;
                p.first_error.get_or_insert(s);
                self.outcomes[tag] = WriteOutcome::Failed(s);
            }
        }
        p.advance_low();
    }

    /// Fails every unfinished write of `h` not covered by an op in flight.
    fn fail_unsent(&mut self, h: usize, status: Status) {
        let covered: Vec<(usize, usize)> = self
            .flights
            .iter()
            .filter(|f| f.sock == h)
            .map(|f| (f.first, f.first + f.count))
            .collect();
        let p = &self.peers[h];
        let victims: Vec<usize> = match &p.body {
            Body::Stream { writes, .. } => (p.low..writes.len())
                .filter(|&i| !writes[i].st.terminal())
                .filter(|&i| !covered.iter().any(|&(a, b)| (a..b).contains(&i)))
                .collect(),
            Body::Dgram { dgrams, .. } => (p.low..dgrams.len())
                .filter(|&i| dgrams[i].st == St::Pending)
                .collect(),
        };
        for i in victims {
            self.end_write(h, i, Some(status));
        }
    }

    // ---- submission -----------------------------------------------------------------------

    fn poll_timers(&mut self) -> Option<u64> {
        let next = self.core.poll_timers(self.now_ns);
        let now = self.now_ns;
        let mut want: Option<u64> = None;
        for p in &mut self.peers {
            if let Body::Dgram { retry_at, .. } = &mut p.body {
                match *retry_at {
                    Some(t) if t <= now => *retry_at = None,
                    Some(t) if p.life != Life::Removed => want = Some(want.map_or(t, |w| w.min(t))),
                    _ => {}
                }
            }
        }
        assert_eq!(next, want, "ENOBUFS timers: core and model disagree");
        next
    }

    /// Pulls every op the core has ready into the in-flight set (an io_uring submission); returns
    /// how many. Checks each op as it is planned.
    pub fn submit(&mut self) -> usize {
        self.submit_up_to(usize::MAX)
    }

    /// As [`Sim::submit`], pulling at most `max` ops (a full SQ).
    pub fn submit_up_to(&mut self, max: usize) -> usize {
        if self.dead {
            return 0;
        }
        self.poll_timers();
        let mut n = 0;
        while n < max {
            let Some(p) = self.core.next_op() else { break };
            self.on_planned(p);
            n += 1;
        }
        self.check();
        n
    }

    fn slices(&self, p: &Planned) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        self.core.for_each_slice(p, |s| v.push(s.to_vec()));
        v
    }

    fn on_planned(&mut self, p: Planned) {
        let h = self
            .by_idx
            .get(p.sock as usize)
            .copied()
            .flatten()
            .expect("op for an unknown socket");
        assert!(
            self.core.in_flight() <= self.cfg.max_in_flight_ops,
            "in flight {} > max_in_flight_ops {}",
            self.core.in_flight(),
            self.cfg.max_in_flight_ops
        );
        assert!(
            !self.flights.iter().any(|f| f.p.token.0 == p.token.0),
            "token {:#x} issued twice",
            p.token.0
        );
        let snapshot = self.slices(&p);
        let now = self.now_ns;
        let cfg = self.cfg.clone();
        let peer = &mut self.peers[h];
        assert_eq!(p.fd, peer.fd, "op on the wrong fd");
        assert_eq!(peer.life, Life::Open, "op for a closing socket {h}");
        assert!(
            peer.in_flight < cfg.max_in_flight_per_socket,
            "socket {h}: more than max_in_flight_per_socket ops"
        );
        let (first, count, offset) = match (&mut peer.body, p.shape) {
            (
                Body::Stream {
                    accepted,
                    writes,
                    received,
                },
                OpShape::Stream { entries, bytes },
            ) => {
                assert_eq!(
                    peer.in_flight, 0,
                    "stream {h}: a second op while one is in flight"
                );
                let f = peer.low;
                let o = received.len();
                assert!(
                    entries >= 1 && f + entries <= writes.len(),
                    "stream {h}: op covers {entries} entries from {f} of {}",
                    writes.len()
                );
                assert!(
                    snapshot.len() <= cfg.max_iovecs_per_op,
                    "stream {h}: {} iovecs",
                    snapshot.len()
                );
                assert!(
                    bytes <= cfg.max_bytes_per_op,
                    "stream {h}: {bytes} bytes per op"
                );
                let w0 = &writes[f];
                assert!(
                    w0.start <= o && o <= w0.end(),
                    "stream {h}: op starts at {o}, not within its first write"
                );
                let last = &writes[f + entries - 1];
                assert!(
                    o + bytes <= last.end(),
                    "stream {h}: op past its last entry"
                );
                if entries >= 2 {
                    assert!(
                        o + bytes >= writes[f + entries - 2].end(),
                        "stream {h}: an entry before the last is cut short"
                    );
                }
                assert!(
                    !snapshot.is_empty() && snapshot.len() <= entries,
                    "stream {h}: {} slices for {entries} entries",
                    snapshot.len()
                );
                let sent: Vec<u8> = snapshot.concat();
                assert!(
                    sent[..] == accepted[o..o + bytes],
                    "stream {h}: op bytes are not the next {bytes} bytes at offset {o}"
                );
                (f, entries, o)
            }
            (
                Body::Dgram {
                    connected,
                    dgrams,
                    gso,
                    retry_at,
                    ..
                },
                OpShape::Dgram {
                    first_seq,
                    count,
                    segment_size,
                    bytes,
                },
            ) => {
                if let Some(t) = *retry_at {
                    assert!(t <= now, "socket {h}: op during an ENOBUFS backoff");
                }
                let f = usize::try_from(first_seq).expect("seq fits usize");
                let lowest = (peer.low..dgrams.len()).find(|&i| dgrams[i].st == St::Pending);
                assert_eq!(
                    Some(f),
                    lowest,
                    "socket {h}: op skips an older queued datagram"
                );
                assert!(count >= 1 && f + count <= dgrams.len());
                let ds = &dgrams[f..f + count];
                assert!(
                    ds.iter().all(|d| d.st == St::Pending),
                    "socket {h}: datagram in two ops"
                );
                assert_eq!(p.dest, if *connected { None } else { ds[0].dest });
                assert!(
                    ds.iter().all(|d| d.dest == ds[0].dest),
                    "group mixes destinations"
                );
                assert_eq!(bytes, ds.iter().map(|d| d.data.len()).sum::<usize>());
                if segment_size.is_some() {
                    // A GSO group may be one contiguous iovec (staged) or one per datagram.
                    assert!(!snapshot.is_empty() && snapshot.len() <= count);
                    let want: Vec<u8> = ds.iter().flat_map(|d| d.data.iter().copied()).collect();
                    assert!(snapshot.concat() == want, "socket {h}: group bytes differ");
                } else {
                    assert_eq!(snapshot.len(), count, "socket {h}: slices != datagrams");
                    for (s, d) in snapshot.iter().zip(ds) {
                        assert!(s[..] == d.data[..], "socket {h}: datagram bytes differ");
                    }
                }
                match segment_size {
                    None => assert_eq!(count, 1, "several datagrams without GSO"),
                    Some(seg) => {
                        let seg = usize::from(seg);
                        assert!(cfg.gso && *gso, "socket {h}: GSO while off");
                        assert!(count >= 2, "GSO for one segment");
                        assert!(count <= cfg.gso_max_segments.min(crate::plan::GSO_MAX_SEGMENTS));
                        assert!(bytes <= cfg.gso_max_bytes.min(crate::plan::UDP_MAX_PAYLOAD));
                        assert!(ds.iter().all(|d| !d.solo), "a re-split datagram in a group");
                        assert_eq!(ds[0].data.len(), seg);
                        let (last, rest) = ds.split_last().expect("count >= 2");
                        assert!(rest.iter().all(|d| d.data.len() == seg), "unequal segments");
                        assert!(last.data.len() <= seg && !last.data.is_empty());
                    }
                }
                for d in &mut dgrams[f..f + count] {
                    d.st = St::InFlight;
                }
                (f, count, 0)
            }
            _ => panic!("socket {h}: op shape of the other kind"),
        };
        peer.in_flight += 1;
        self.flights.push(Flight {
            p,
            sock: h,
            first,
            count,
            offset,
            snapshot,
        });
    }

    // ---- completion -----------------------------------------------------------------------

    /// Completes the op in flight at position `i` with `res` (bytes, or `-errno`).
    pub fn complete(&mut self, i: usize, res: i32) {
        let f = self.flights.remove(i);
        assert_eq!(
            self.slices(&f.p),
            f.snapshot,
            "the buffer of an op in flight changed"
        );
        let got = self.core.sim_complete(f.p.token.0, res, self.now_ns);
        let h = f.sock;
        let idx = f.p.sock;
        assert_ne!(got, Completed::Ignored, "a live token was ignored");
        let again = res == -libc::EAGAIN;
        assert_eq!(
            got,
            if again {
                Completed::Again { sock: idx }
            } else {
                Completed::Done { sock: idx }
            }
        );
        self.history.push(f.p.token.0);
        if self.history.len() > 64 {
            self.history.remove(0);
        }
        self.peers[h].in_flight -= 1;
        match f.p.shape {
            OpShape::Stream { bytes, .. } => self.model_stream(h, &f, bytes, res),
            OpShape::Dgram { segment_size, .. } => self.model_dgram(h, &f, segment_size, res),
        }
        if again && self.model == Model::Epoll {
            self.core.set_writable(idx, false);
            self.peers[h].unwritable = true;
        }
        self.maybe_finalize(h);
        self.check();
    }

    fn model_stream(&mut self, h: usize, f: &Flight, bytes: usize, res: i32) {
        let errno = match usize::try_from(res) {
            Ok(n) if n <= bytes => {
                let p = &mut self.peers[h];
                let Body::Stream {
                    writes, received, ..
                } = &mut p.body
                else {
                    unreachable!()
                };
                received.extend_from_slice(&f.snapshot.concat()[..n]);
                p.acc.bytes += n as u64;
                let got = received.len();
                let done: Vec<usize> = (f.first..f.first + f.count)
                    .take_while(|&j| writes[j].end() <= got)
                    .collect();
                for j in done {
                    self.end_write(h, j, None);
                }
                return;
            }
            // More than asked for: the core treats the stream as corrupt.
            Ok(_) => libc::EIO,
            Err(_) => res.wrapping_neg(),
        };
        if retry(errno) {
            return;
        }
        let status = Status::from_errno(errno);
        self.peers[h].poisoned.get_or_insert(status);
        self.fail_unsent(h, status);
    }

    fn model_dgram(&mut self, h: usize, f: &Flight, seg: Option<u16>, res: i32) {
        let now = self.now_ns;
        let retries = self.cfg.nobufs_retries;
        let p = &mut self.peers[h];
        let Body::Dgram {
            dgrams,
            received,
            gso,
            retry_at,
            ..
        } = &mut p.body
        else {
            unreachable!()
        };
        let range = f.first..f.first + f.count;
        if res >= 0 {
            for d in &dgrams[range.clone()] {
                received.push((d.dest, d.data.clone()));
                p.acc.bytes += d.data.len() as u64;
            }
            for j in range {
                self.end_write(h, j, None);
            }
            return;
        }
        let errno = res.wrapping_neg();
        let requeue = |dgrams: &mut Vec<DWrite>, solo: bool| {
            for d in &mut dgrams[range.clone()] {
                d.st = St::Pending;
                d.solo |= solo;
            }
        };
        let group = seg.is_some() && f.count > 1;
        let refused = matches!(
            errno,
            libc::EIO | libc::EINVAL | libc::EMSGSIZE | libc::ENOBUFS
        );
        if retry(errno) {
            requeue(dgrams, false);
        } else if group && !refused {
            // A pending socket error (stale ICMP) refuses the call: the first datagram takes it,
            // the rest go again.
            for d in &mut dgrams[f.first + 1..f.first + f.count] {
                d.st = St::Pending;
            }
            self.end_write(h, f.first, Some(Status::from_errno(errno)));
        } else if group {
            if errno == libc::EIO || errno == libc::EINVAL {
                *gso = false;
                requeue(dgrams, false);
            } else {
                requeue(dgrams, true);
            }
        } else if errno == libc::ENOBUFS && dgrams[f.first].nobufs < retries {
            let d = &mut dgrams[f.first];
            d.nobufs += 1;
            let delay = MS << (d.nobufs - 1);
            d.backoff_ns += delay;
            assert!(d.backoff_ns <= 16 * MS, "ENOBUFS backoff over 16 ms");
            *retry_at = Some(now + delay);
            requeue(dgrams, false);
        } else {
            let status = Status::from_errno(errno);
            for j in range {
                self.end_write(h, j, Some(status));
            }
        }
    }

    /// Puts the op at position `i` back unsent (an SQ push or submit that failed).
    pub fn requeue(&mut self, i: usize) {
        let f = self.flights.remove(i);
        self.core.sim_requeue(f.p.token.0);
        let h = f.sock;
        self.peers[h].in_flight -= 1;
        if let Body::Dgram { dgrams, .. } = &mut self.peers[h].body {
            for d in &mut dgrams[f.first..f.first + f.count] {
                d.st = St::Pending;
            }
        }
        self.maybe_finalize(h);
        self.check();
    }

    /// A token that is not in flight: one of a finished op (`k` picks which), or made up.
    pub fn stale_token(&self, k: u64) -> u64 {
        let live = |t: u64| self.flights.iter().any(|f| f.p.token.0 == t);
        if !self.history.is_empty() {
            let t =
                self.history[usize::try_from(k % self.history.len() as u64).expect("below len")];
            if !live(t) {
                return t;
            }
        }
        let mut t = k;
        while live(t) {
            t = t.wrapping_add(1 << 32);
        }
        t
    }

    fn fingerprint(&self) -> (u64, usize, usize, u64, u64, u64) {
        let s = &self.core.stats;
        (
            self.core.pending_writes(),
            self.core.in_flight(),
            self.core.queued_bytes(),
            s.bytes_sent,
            s.writes_sent,
            s.retries,
        )
    }

    /// Delivers a completion for `token` (a duplicate, late or made-up one): unless it is in
    /// flight, it must change nothing.
    pub fn complete_token(&mut self, token: u64, res: i32) {
        if let Some(i) = self.flights.iter().position(|f| f.p.token.0 == token) {
            return self.complete(i, res);
        }
        let before = self.fingerprint();
        let got = self.core.sim_complete(token, res, self.now_ns);
        assert_eq!(
            got,
            Completed::Ignored,
            "a stale token {token:#x} was taken"
        );
        assert_eq!(before, self.fingerprint(), "a stale token changed state");
        self.check();
    }

    /// Requeues `token` (a stale one changes nothing).
    pub fn requeue_token(&mut self, token: u64) {
        if let Some(i) = self.flights.iter().position(|f| f.p.token.0 == token) {
            return self.requeue(i);
        }
        let before = self.fingerprint();
        self.core.sim_requeue(token);
        assert_eq!(before, self.fingerprint(), "a stale requeue changed state");
        self.check();
    }

    /// Advances the clock (ENOBUFS backoffs expire).
    pub fn advance(&mut self, ns: u64) {
        self.now_ns = self.now_ns.saturating_add(ns);
        if !self.dead {
            self.poll_timers();
            self.check();
        }
    }

    // ---- epoll-shaped submission ----------------------------------------------------------

    fn wake_all(&mut self) {
        for p in &mut self.peers {
            if p.unwritable && p.life != Life::Removed {
                p.unwritable = false;
                self.core.set_writable(p.id.index(), true);
            }
        }
    }

    /// The epoll backend's `submit`: pull every ready op, complete stream ops one by one and a
    /// socket's datagram ops as `sendmmsg` does (stop at `EAGAIN`/`EINTR`, requeue the rest),
    /// repeat until nothing is ready. Returns the number of ops issued.
    pub fn submit_epoll(&mut self, k: &mut impl Kernel) -> usize {
        if self.dead {
            return 0;
        }
        let mut issued = 0;
        for _ in 0..1_000_000 {
            self.poll_timers();
            while let Some(p) = self.core.next_op() {
                self.on_planned(p);
            }
            if self.flights.is_empty() {
                self.check();
                return issued;
            }
            let mut batch: Vec<(u32, u64)> =
                self.flights.iter().map(|f| (f.p.sock, f.p.token.0)).collect();
            batch.sort_by_key(|b| b.0);
            issued += batch.len();
            let mut i = 0;
            while i < batch.len() {
                let pos = self.position(batch[i].1);
                if self.op(pos).stream {
                    let res = k.result(&self.op(pos));
                    self.complete(pos, res);
                    i += 1;
                    continue;
                }
                let end = i + batch[i..].iter().take_while(|b| b.0 == batch[i].0).count();
                let mut j = i;
                while j < end {
                    let pos = self.position(batch[j].1);
                    let res = k.result(&self.op(pos));
                    self.complete(pos, res);
                    j += 1;
                    if res == -libc::EAGAIN || res == -libc::EINTR {
                        for b in &batch[j..end] {
                            let pos = self.position(b.1);
                            self.requeue(pos);
                        }
                        break;
                    }
                }
                i = end;
            }
        }
        panic!("epoll submit never ran out of work");
    }

    fn position(&self, token: u64) -> usize {
        self.flights
            .iter()
            .position(|f| f.p.token.0 == token)
            .expect("op of this batch in flight")
    }

    // ---- flushes --------------------------------------------------------------------------

    /// Drives the kernel until `done`: completes ops in flight (a seeded choice of which) with
    /// `k`'s results, or (epoll) lets sockets become writable and submits again; when nothing is
    /// in flight or ready, jumps to the next ENOBUFS deadline. Panics if it would wait forever.
    fn drive(&mut self, k: &mut impl Kernel, done: impl Fn(&Sim) -> bool) {
        let limit = 100_000 + 64 * self.core.pending_writes();
        for _ in 0..limit {
            if done(self) {
                return;
            }
            match self.model {
                Model::Uring => {
                    self.submit();
                    if !self.flights.is_empty() {
                        let i = self.pick(self.flights.len());
                        let res = k.result(&self.op(i));
                        self.complete(i, res);
                        continue;
                    }
                }
                Model::Epoll => {
                    self.wake_all();
                    if self.submit_epoll(k) > 0 {
                        continue;
                    }
                }
            }
            match self.poll_timers() {
                Some(t) => {
                    self.now_ns = t;
                    self.poll_timers();
                }
                None if done(self) => return,
                None => panic!("a flush would hang: nothing in flight, nothing ready, no timer"),
            }
        }
        panic!("a flush did not resolve within {limit} steps");
    }

    fn take(&mut self, h: usize) -> FlushReport {
        let id = self.peers[h].id;
        let r = self.core.take_report(id).expect("live socket");
        let p = &mut self.peers[h];
        assert_eq!(Counts::of(&r), p.acc, "socket {h}: report counts");
        assert_eq!(
            r.first_error.as_ref().and_then(Error::status),
            p.first_error.or(p.poisoned),
            "socket {h}: report's first error"
        );
        let acc = std::mem::take(&mut p.acc);
        p.reported.add(&acc);
        p.first_error = None;
        r
    }

    /// Registers a barrier on `h` without waiting: from now on every step checks that it is done
    /// exactly when every write accepted before it is terminal.
    pub fn barrier(&mut self, h: usize) {
        let Some(p) = self.peers.get(h).filter(|p| p.life != Life::Removed) else {
            return;
        };
        if self.dead {
            return;
        }
        let t = self.core.barrier(p.id).expect("live socket");
        assert_eq!(t, p.accepted() as u64, "barrier target != writes accepted");
        let p = &mut self.peers[h];
        if p.barriers.len() < 64 {
            p.barriers.push(t);
        }
        self.check();
    }

    /// The target a barrier created on `h` now waits for (writes accepted so far).
    pub fn barrier_target(&self, h: usize) -> u64 {
        self.core.barrier(self.peers[h].id).expect("live socket")
    }

    /// Whether the core says a barrier with `target` on `h` is done.
    pub fn barrier_done(&self, h: usize, target: u64) -> bool {
        self.core
            .barrier_done(self.peers[h].id, target)
            .expect("live socket")
    }

    /// `Engine::flush`: waits (drives `k`) until every write accepted on `h` is terminal, then
    /// takes the report.
    pub fn flush(&mut self, h: usize, k: &mut impl Kernel) -> FlushOutcome {
        // A closing socket is mid-`Engine::abort`, which no flush can interleave with.
        if self.dead || self.peers.get(h).is_none_or(|p| p.life != Life::Open) {
            return Err(Rejected::UnknownSocket);
        }
        let id = self.peers[h].id;
        let target = self.core.barrier(id).expect("live socket");
        self.barrier(h);
        self.drive(k, |s| s.core.barrier_done(id, target).unwrap_or(true));
        let p = &self.peers[h];
        assert!(
            p.low as u64 >= target,
            "socket {h}: barrier resolved with writes unfinished"
        );
        let r = self.take(h);
        match (&r.first_error, self.is_stream(h)) {
            (Some(e), true) => Err(Rejected::of(e)),
            _ => Ok(Counts::of(&r)),
        }
    }

    /// `Engine::flush_all`: waits until no write is pending, then takes every socket's report.
    pub fn flush_all(&mut self, k: &mut impl Kernel) -> FlushOutcome {
        if self.dead {
            return Err(Rejected::UnknownSocket);
        }
        self.drive(k, |s| s.core.pending_writes() == 0);
        let mut total = Counts::default();
        let mut err = None;
        for h in 0..self.peers.len() {
            if self.peers[h].life == Life::Removed {
                continue;
            }
            assert_eq!(self.peers[h].pending, 0);
            let r = self.take(h);
            if err.is_none() && self.is_stream(h) {
                err = r.first_error.as_ref().map(Rejected::of);
            }
            total.add(&Counts::of(&r));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// `Engine::abort`: queued writes fail as cancelled; the socket is removed once its ops in
    /// flight have completed (the caller completes them).
    pub fn abort(&mut self, h: usize) {
        if self.dead || self.peers.get(h).is_none_or(|p| p.life != Life::Open) {
            return;
        }
        let id = self.peers[h].id;
        self.core
            .cancel_queued(id, self.now_ns)
            .expect("live socket");
        self.peers[h].life = Life::Closing;
        self.fail_unsent(h, Status::Cancelled);
        self.maybe_finalize(h);
        self.check();
    }

    /// `Engine::close`: flush, then remove.
    pub fn close(&mut self, h: usize, k: &mut impl Kernel) -> FlushOutcome {
        let r = self.flush(h, k);
        if r != Err(Rejected::UnknownSocket) {
            self.abort(h);
            assert_eq!(
                self.peers[h].life,
                Life::Removed,
                "closed socket still has ops"
            );
        }
        r
    }

    fn maybe_finalize(&mut self, h: usize) {
        let p = &self.peers[h];
        if p.life != Life::Closing || p.in_flight > 0 {
            return;
        }
        // What the cancel could not fail (a partly sent stream's remainder, datagrams put back by
        // a retry after the cancel) fails now.
        let victims: Vec<usize> = (p.low..p.accepted())
            .filter(|&i| !p.is_terminal(i))
            .collect();
        let pending_after = self.core.pending_writes() - victims.len() as u64;
        for i in victims {
            self.end_write(h, i, Some(Status::Cancelled));
        }
        let p = &mut self.peers[h];
        let fd = self
            .core
            .remove_socket(p.id, self.now_ns)
            .expect("live socket");
        assert_eq!(fd, Some(p.fd), "remove_socket with nothing in flight");
        assert_eq!(self.core.pending_writes(), pending_after);
        p.life = Life::Removed;
        p.barriers.clear();
        self.by_idx[p.id.index() as usize] = None;
    }

    /// Drops the engine: cancels queued writes, lets `k` complete the ops in flight (in a seeded
    /// order), removes every socket and checks that nothing is left.
    pub fn shutdown(&mut self, k: &mut impl Kernel) {
        if self.dead {
            return;
        }
        for h in 0..self.peers.len() {
            self.abort(h);
        }
        while !self.flights.is_empty() {
            let i = self.pick(self.flights.len());
            let res = k.result(&self.op(i));
            self.complete(i, res);
        }
        assert!(self.peers.iter().all(|p| p.life == Life::Removed));
        assert_eq!(self.core.pending_writes(), 0);
        assert_eq!(self.core.queued_bytes(), 0);
        assert_eq!(self.core.in_flight(), 0);
        self.dead = true;
    }

    // ---- invariants -----------------------------------------------------------------------

    /// Checks the core against the model; panics on the first difference.
    pub fn check(&self) {
        let c = &self.cfg;
        assert_eq!(self.core.in_flight(), self.flights.len(), "ops in flight");
        assert!(
            self.flights.len() <= c.max_in_flight_ops,
            "over max_in_flight_ops"
        );
        let live = self.peers.iter().filter(|p| p.life != Life::Removed);
        let pending: usize = live.clone().map(|p| p.pending).sum();
        let bytes: usize = live.map(|p| p.pending_bytes).sum();
        assert_eq!(self.core.pending_writes(), pending as u64, "pending writes");
        assert_eq!(self.core.queued_bytes(), bytes, "queued bytes");
        assert!(bytes <= c.max_queued_bytes, "over max_queued_bytes");
        for (h, p) in self.peers.iter().enumerate() {
            if p.life == Life::Removed {
                assert!(
                    self.core.sock(p.id).is_err(),
                    "socket {h}: removed but known"
                );
                continue;
            }
            let s = self.core.sock(p.id).expect("live socket known to the core");
            assert_eq!(s.in_flight, p.in_flight, "socket {h}: ops in flight");
            assert!(p.in_flight <= c.max_in_flight_per_socket);
            assert_eq!(s.queued_bytes, p.pending_bytes, "socket {h}: queued bytes");
            assert!(p.pending_bytes <= c.max_queued_bytes_per_socket);
            assert_eq!(
                s.poisoned.as_ref().and_then(Error::status),
                p.poisoned,
                "socket {h}: poisoned"
            );
            let acc = &s.acc;
            assert_eq!(
                (acc.writes, acc.bytes, acc.failed, acc.failures),
                (p.acc.writes, p.acc.bytes, p.acc.failed, p.acc.failures),
                "socket {h}: outcomes since the last report"
            );
            assert_eq!(
                acc.first_error.as_ref().and_then(Error::status),
                p.first_error,
                "socket {h}: first error"
            );
            match (&p.body, &s.queue) {
                (
                    Body::Stream {
                        received, accepted, ..
                    },
                    Queue::Stream(_),
                ) => {
                    assert!(p.in_flight <= 1, "stream {h}: ops overlap");
                    assert!(received.len() <= accepted.len());
                }
                (Body::Dgram { gso, .. }, Queue::Dgram(q)) => {
                    assert_eq!(q.gso, *gso, "socket {h}: GSO switch");
                }
                _ => panic!("socket {h}: queue of the wrong kind"),
            }
            for &t in &p.barriers {
                let done = self.core.barrier_done(p.id, t).expect("live socket");
                assert_eq!(
                    done,
                    t <= p.low as u64,
                    "socket {h}: barrier {t} done={done} with {} writes terminal in order",
                    p.low
                );
            }
        }
    }

    /// Checks the end state after a final `flush_all`: every stream peer received exactly the
    /// accepted bytes unless a write failed (then a prefix), every datagram was delivered once or
    /// failed, and each write's fate was reported exactly once.
    pub fn check_final(&self) {
        for (h, p) in self.peers.iter().enumerate() {
            let all = {
                let mut c = p.reported.clone();
                c.add(&p.acc);
                c
            };
            let (sent, failed) = match &p.body {
                Body::Stream {
                    accepted,
                    writes,
                    received,
                } => {
                    assert!(accepted.starts_with(received), "stream {h}: not a prefix");
                    let failed = writes.iter().filter(|w| w.st == St::Failed).count();
                    if failed == 0 && p.pending == 0 {
                        assert_eq!(received, accepted, "stream {h}: bytes lost");
                    }
                    (writes.iter().filter(|w| w.st == St::Sent).count(), failed)
                }
                Body::Dgram {
                    dgrams, received, ..
                } => {
                    let sent = dgrams.iter().filter(|d| d.st == St::Sent).count();
                    assert_eq!(
                        received.len(),
                        sent,
                        "socket {h}: datagrams delivered twice"
                    );
                    (sent, dgrams.iter().filter(|d| d.st == St::Failed).count())
                }
            };
            if p.life != Life::Removed {
                assert_eq!(all.writes, sent as u64, "socket {h}: sent writes reported");
                assert_eq!(
                    all.failed, failed as u64,
                    "socket {h}: failed writes reported"
                );
            }
        }
    }
}

// ---- traces ------------------------------------------------------------------------------------

/// A kernel result picked by a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte.
    Full,
    /// `n % (len + 1)` bytes (a short send for streams; datagram sends are all or nothing).
    Short(u16),
    /// 0 bytes.
    Zero,
    /// `-ERRNOS[i % 16]`.
    Errno(u8),
    /// One byte more than asked for (a broken kernel; a stream treats it as corrupt).
    Overlong,
    /// This exact value, whatever it means (`i32::MIN` included).
    Raw(i32),
}

impl Outcome {
    /// The `res` for `op`.
    pub fn res(self, op: &OpDesc) -> i32 {
        let full = op.full();
        match self {
            Outcome::Full => full,
            Outcome::Short(n) => i32::from(n) % full.saturating_add(1).max(1),
            Outcome::Zero => 0,
            Outcome::Errno(i) => -ERRNOS[usize::from(i) % ERRNOS.len()],
            Outcome::Overlong => full.saturating_add(1),
            Outcome::Raw(r) => r,
        }
    }

    fn is_error(self) -> bool {
        !matches!(self, Outcome::Full)
    }
}

/// A kernel that replays a list of outcomes, cycling, and sends everything once `max_errors`
/// non-full results were given (so every flush ends).
#[derive(Debug, Clone)]
pub struct Replay {
    outcomes: Vec<Outcome>,
    next: usize,
    errors_left: usize,
}

impl Replay {
    /// Replays `outcomes`; at most `max_errors` of them that are not `Full`.
    pub fn new(outcomes: Vec<Outcome>, max_errors: usize) -> Replay {
        Replay {
            outcomes,
            next: 0,
            errors_left: max_errors,
        }
    }
}

impl Kernel for Replay {
    fn result(&mut self, op: &OpDesc) -> i32 {
        if self.outcomes.is_empty() || self.errors_left == 0 {
            return op.full();
        }
        let o = self.outcomes[self.next % self.outcomes.len()];
        self.next += 1;
        if o.is_error() {
            self.errors_left -= 1;
        }
        o.res(op)
    }
}

/// One step of a trace. Socket and op numbers are taken modulo what exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Adds a stream socket (at most 16 sockets).
    AddStream,
    /// Adds a UDP socket (at most 16 sockets).
    AddDgram {
        /// Connected (else `send_to` only).
        connected: bool,
    },
    /// [`Sim::send`].
    Send {
        /// Socket.
        sock: u8,
        /// Bytes.
        len: u16,
    },
    /// [`Sim::send_to`] to one of four destinations.
    SendTo {
        /// Socket.
        sock: u8,
        /// Destination `9000 + port % 4`.
        port: u8,
        /// Bytes.
        len: u16,
    },
    /// [`Sim::barrier`].
    Barrier {
        /// Socket.
        sock: u8,
    },
    /// [`Sim::flush`].
    Flush {
        /// Socket.
        sock: u8,
    },
    /// [`Sim::flush_all`].
    FlushAll,
    /// [`Sim::submit_up_to`] (0: all); the epoll model submits all.
    Submit {
        /// Most ops to pull.
        max: u8,
    },
    /// Completes an op in flight with `outcome`, or with the kernel's result when `None`.
    Complete {
        /// Op in flight.
        which: u8,
        /// Result.
        outcome: Option<Outcome>,
    },
    /// Requeues an op in flight.
    Requeue {
        /// Op in flight.
        which: u8,
    },
    /// Completes (or requeues) a token that is not in flight.
    Stale {
        /// Picks the token.
        pick: u64,
        /// Requeue instead of complete.
        requeue: bool,
    },
    /// Advances the clock.
    Advance {
        /// Microseconds.
        us: u16,
    },
    /// [`Sim::abort`].
    Abort {
        /// Socket.
        sock: u8,
    },
    /// [`Sim::close`].
    Close {
        /// Socket.
        sock: u8,
    },
    /// [`Sim::shutdown`] (drop the engine); the trace ends.
    Shutdown,
}

impl Sim {
    fn sock_of(&self, sock: u8) -> Option<usize> {
        (!self.peers.is_empty()).then(|| usize::from(sock) % self.peers.len())
    }

    /// Applies one step; `k` answers the ops a flush, an epoll submission or a `Complete` without
    /// an outcome issues. Returns the result of a flush step.
    pub fn step(&mut self, step: Step, k: &mut impl Kernel) -> Option<FlushOutcome> {
        if self.dead {
            return None;
        }
        match step {
            Step::AddStream if self.peers.len() < 16 => {
                self.add_stream();
            }
            Step::AddDgram { connected } if self.peers.len() < 16 => {
                self.add_dgram(connected);
            }
            Step::AddStream | Step::AddDgram { .. } => {}
            Step::Send { sock, len } => {
                if let Some(h) = self.sock_of(sock) {
                    let _ = self.send(h, usize::from(len));
                }
            }
            Step::SendTo { sock, port, len } => {
                if let Some(h) = self.sock_of(sock) {
                    let _ = self.send_to(h, 9000 + u16::from(port % 4), usize::from(len));
                }
            }
            Step::Barrier { sock } => {
                if let Some(h) = self.sock_of(sock) {
                    self.barrier(h);
                }
            }
            Step::Flush { sock } => return self.sock_of(sock).map(|h| self.flush(h, k)),
            Step::FlushAll => return Some(self.flush_all(k)),
            Step::Submit { max } => match self.model {
                Model::Uring if max == 0 => {
                    self.submit();
                }
                Model::Uring => {
                    self.submit_up_to(usize::from(max));
                }
                Model::Epoll => {
                    self.submit_epoll(k);
                }
            },
            Step::Complete { which, outcome } => {
                if !self.flights.is_empty() {
                    let i = usize::from(which) % self.flights.len();
                    let op = self.op(i);
                    let res = match outcome {
                        Some(o) => o.res(&op),
                        None => k.result(&op),
                    };
                    self.complete(i, res);
                }
            }
            Step::Requeue { which } => {
                if !self.flights.is_empty() {
                    self.requeue(usize::from(which) % self.flights.len());
                }
            }
            Step::Stale { pick, requeue } => {
                let t = self.stale_token(pick);
                if requeue {
                    self.requeue_token(t);
                } else {
                    self.complete_token(t, i32::try_from(pick & 0xffff).unwrap_or(0));
                }
            }
            Step::Advance { us } => self.advance(u64::from(us) * 1000),
            Step::Abort { sock } => {
                if let Some(h) = self.sock_of(sock) {
                    self.abort(h);
                }
            }
            Step::Close { sock } => return self.sock_of(sock).map(|h| self.close(h, k)),
            Step::Shutdown => self.shutdown(k),
        }
        None
    }
}

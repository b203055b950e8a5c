//! A simulated kernel as a [`Driver`]: the engine's real orchestration and core run over it.
//!
//! [`SimKernel`] plays the kernel deterministically. It knows sockets by index (`register`
//! gives the index and a placeholder descriptor; an fd → socket map serves `read_errqueue` and
//! `shutdown_write`), snapshots the exact bytes each issued op carries (`Core::for_each_slice`),
//! and completes ops as the test or fuzzer says. What decides an op, first match wins:
//!
//! 1. a reset stream fails with the reset's errno; a stream shut for writing with EPIPE;
//! 2. a datagram socket's pending error (`sk_err`, set by an ICMP error about an earlier
//!    datagram) fails the op and is consumed (Linux checks it before waiting for room);
//! 3. a stalled peer holds the op (io_uring: it stays in flight; epoll: EAGAIN, and the socket
//!    is writable again only once unstalled);
//! 4. the socket's script ([`SimHandle::script`]): the next verdict in line;
//! 5. injected ENOBUFS ([`SimHandle::nobufs`]) for datagram ops;
//! 6. the [`Behaviour`] (default [`AllOk`]).
//!
//! Two completion models ([`Mode`]):
//!
//! - **io_uring**: ops go in flight at `issue` and are decided at the next `enter`, in issue
//!   order (optionally a few enters later: [`SimHandle::set_latency`]; and their completions
//!   reported in a shuffled order: [`SimHandle::set_reorder`]); `completes_inline` is false;
//!   `watch_writable` reports the socket writable at once, as the real driver does (its sockets
//!   block, so EAGAIN is spurious);
//! - **epoll**: ops complete inside `issue`: a stream op alone; a socket's datagram ops as one
//!   `sendmmsg` — `Done` for a sent prefix, then for the first datagram not sent either `Done`
//!   with its error (when it is the call's first) or `Stopped` (the call returns the count and
//!   drops the error), and `NotIssued` for the rest; EAGAIN leaves the socket to be watched
//!   (`watch_writable` arms it; `enter` reports `Event::Writable` once the peer is unstalled).
//!
//! A flush's lone op (`Driver::send_solo`) is decided at once, as the real drivers send it: on
//! epoll as a one-op `issue`; on io_uring as a non-blocking send beside an empty ring (a held op
//! is `-EAGAIN`: nothing sent or recorded, and a hold the script or behaviour gave waits for the
//! op the ring gets next). It is recorded with [`OpRecord::solo`] set.
//!
//! UDP peers: a datagram sent to a closed port ([`SimHandle::close_port`]) brings an ICMP port
//! unreachable back at once: with `IP_RECVERR` an error-queue entry `(dest, ECONNREFUSED)`, and
//! for a connected socket or one with `IP_RECVERR` the pending error `sk_err` that the next
//! send picks up (reading the error queue clears it, as Linux does).
//!
//! The clock is virtual: it moves only by [`SimHandle::advance`] or when `enter` is asked to
//! wait until a deadline and nothing else can happen, so ENOBUFS backoffs and flush timeouts
//! run deterministically with no real sleep. An `enter` without a deadline that would block
//! forever (ops held by stalled peers, nothing else) either panics or releases the stalled
//! peers, as [`Idle`] says; with a focus socket set (a flush of that socket is waiting), a
//! wait while that socket has nothing held is a panic: the flush waits for another socket.
//!
//! The kernel checks what only it can see, and panics naming the broken property: at most one
//! op in flight per stream; tokens unique among ops in flight; every op on a registered socket
//! with its descriptor and kind; GSO shape and iovec limits; the bytes of an op in flight never
//! change; `cancel` only names ops in flight (and epoll never cancels); a socket is deregistered
//! with nothing in flight; the engine never spins on `enter` with nothing able to happen.
//!
//! Zero-copy ops ([`Planned::zerocopy`], io_uring mode only) follow [`ZcModel`]: the first
//! completion carries the result and, as the model says, `F_MORE` ([`Event::DoneMore`]) or not
//! ([`Event::Done`]: no notification ever comes); with `F_MORE` the op stays in flight until its
//! notification ([`Event::Notif`], with the "copied" bit if the model says so), which comes a
//! random number of enters later (up to `notif_delay`) and, with reordering on, shuffled among
//! other completions. Until it comes the kernel may read the op's memory, so at every `issue`
//! it checks that the core still holds a buffer covering each of the op's iovecs (the address
//! ranges recorded at issue); [`SimHandle::zc_pending_ranges`] lets a test's buffer owner check
//! the same when it is released.
//!
//! It records, per registration ([`PeerLog`]): the stream bytes the peer received, in order;
//! each datagram delivered with its sequence number and destination; every op with its shape,
//! times and result; the most ops in flight at once; watches, error-queue reads and shutdowns.
//! State lives behind a shared handle ([`SimHandle`]), so tests look at it after the engine is
//! gone (a drop with ops in flight, a leak).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::behaviour::{AllOk, Behaviour, OpView, Verdict};
use crate::core::{is_icmp_errno, Core, Event, OpShape, Planned, Solo, Token};
use crate::error::Error;
use crate::sys::{Driver, FdKind, Tally, Wait};
use crate::{Engine, SocketId};

/// How completions arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In flight until a later `enter` (io_uring).
    Uring,
    /// Inside `issue` (epoll: `sendmsg`, `sendmmsg`).
    Epoll,
}

/// What `enter` does when it would block forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Panics: the test expected progress.
    Panic,
    /// The stalled peers drain: unstalls the focus socket (every socket without a focus).
    Release,
}

/// What a cancel does to an op in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Completes it with `-ECANCELED`.
    Cancels,
    /// The op finished first: it completes with its real result, as if a stalled peer had
    /// drained just before the cancel (a `Hold` verdict then: `-ECANCELED`).
    Races,
    /// The kernel never answers (an engine drop drains until its deadline, then leaks).
    Ignored,
}

/// A simulated socket, as [`SimHandle::register`] creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP stream.
    Stream,
    /// A UDP socket, connected to `peer` (use `send`) or not (use `send_to`).
    Udp {
        /// The connected peer.
        peer: Option<SocketAddr>,
        /// `IP_RECVERR`.
        recverr: bool,
    },
    /// A packet descriptor (a TUN device): one `write` per packet, all or an error; a short
    /// write ([`super::Verdict::Short`]) takes part of the packet and delivers nothing.
    Packet,
}

/// One op as issued, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// The op's token.
    pub token: u64,
    /// A stream op.
    pub stream: bool,
    /// Streams: the stream offset of the op's first byte.
    pub offset: usize,
    /// Datagrams: sequence number of the first one.
    pub first_seq: u64,
    /// Datagrams: the sequence number of each, in order (a destination's GSO group may skip
    /// other destinations' datagrams).
    pub seqs: Vec<u64>,
    /// Datagrams in the op; for a stream, queue entries (a big write, or a chunk of small
    /// writes copied at `send`).
    pub count: usize,
    /// GSO segment size.
    pub segment_size: Option<u16>,
    /// Payload bytes.
    pub bytes: usize,
    /// iovecs (slices) it hands the kernel.
    pub iovecs: usize,
    /// `send_to`'s destination.
    pub dest: Option<SocketAddr>,
    /// Clock at issue.
    pub issued_ns: u64,
    /// Order of issue among every kernel event (issues and completions).
    pub issued_at: u64,
    /// The result reported (`None`: not yet, or not issued/stopped).
    pub res: Option<i32>,
    /// Clock and order when the result was decided.
    pub done_ns: u64,
    /// See `issued_at`.
    pub done_at: u64,
    /// Reported `NotIssued` (epoll: behind a failed entry; io_uring: a refused push).
    pub not_issued: bool,
    /// Reported `Stopped` (epoll: a partial `sendmmsg` count).
    pub stopped: bool,
    /// Sent zero-copy.
    pub zerocopy: bool,
    /// Its first completion carried `F_MORE` (a notification follows).
    pub more: bool,
    /// Order when its notification was reported (0: none yet, or none due).
    pub notified_at: u64,
    /// Sent by a flush itself ([`Driver::send_solo`]): no op slot, token [`Token::SOLO`].
    pub solo: bool,
}

/// Which zero-copy first completions carry `F_MORE` (a notification follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZcMore {
    /// Every one, errors included (the kernel allocated the notification before failing).
    Always,
    /// Successes only: an error ends the op with no notification (liburing#1462).
    OkOnly,
    /// None (an op that failed before its notification was set up).
    Never,
}

/// How the simulated kernel completes zero-copy ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZcModel {
    /// Which first completions carry `F_MORE`.
    pub more: ZcMore,
    /// Notifications report `IORING_NOTIF_USAGE_ZC_COPIED`.
    pub copied: bool,
    /// A notification comes up to this many enters after its op's first completion.
    pub notif_delay: u8,
    /// Every zero-copy send fails with this errno (e.g. `EOPNOTSUPP`), sending nothing.
    pub refuse: Option<i32>,
}

impl Default for ZcModel {
    fn default() -> Self {
        ZcModel {
            more: ZcMore::Always,
            copied: false,
            notif_delay: 0,
            refuse: None,
        }
    }
}

/// A datagram the peer received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delivered {
    /// Its sequence number on the sending socket.
    pub seq: u64,
    /// `send_to`'s destination (`None` on a connected socket).
    pub dest: Option<SocketAddr>,
    /// The payload.
    pub payload: Bytes,
}

/// Everything observed on one registration.
#[derive(Debug, Clone, Default)]
pub struct PeerLog {
    /// The engine's socket index.
    pub index: u32,
    /// The placeholder descriptor.
    pub fd: RawFd,
    /// A stream.
    pub stream: bool,
    /// A packet descriptor (its packets are in `datagrams`, with `dest` `None`).
    pub packet: bool,
    /// Still registered.
    pub registered: bool,
    /// Stream bytes the peer received, in order.
    pub received: Vec<u8>,
    /// Datagrams delivered, in order of arrival.
    pub datagrams: Vec<Delivered>,
    /// Every op, in issue order.
    pub ops: Vec<OpRecord>,
    /// Most ops in flight at once.
    pub max_in_flight: usize,
    /// `watch_writable` calls.
    pub watches: u32,
    /// `read_errqueue` calls.
    pub errqueue_reads: u32,
    /// Error-queue entries handed to the engine.
    pub errqueue_taken: Vec<(Option<SocketAddr>, i32)>,
    /// `IP_RECVERR` switched on (true) or off (peer-error sampling), in order.
    pub recverr_switches: Vec<bool>,
    /// For each `shutdown(SHUT_WR)`: the bytes the peer had then.
    pub shutdowns: Vec<usize>,
    /// Bumped whenever an op is recorded or gets its result: checks that read only `ops` need
    /// not look again while it stays the same.
    pub ops_changes: u64,
}

#[derive(Debug)]
struct Peer {
    log: PeerLog,
    connected: Option<SocketAddr>,
    recverr: bool,
    stalled: bool,
    reset: Option<i32>,
    shut_wr: bool,
    sk_err: Option<i32>,
    errqueue: VecDeque<(Option<SocketAddr>, i32)>,
    nobufs: u32,
    script: VecDeque<Verdict>,
    armed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fl {
    /// In the SQ (io_uring), until the next `enter`.
    Sq,
    /// Submitted, decided after `due` more enters.
    Kernel { due: u8 },
    /// Held (stalled peer, or a `Hold` verdict) until unstalled.
    Held,
    /// Decided (a cancel): reported at the next `enter`.
    Done(i32),
    /// Cancelled after it finished: decided at the next `enter`, stall or not.
    Raced,
    /// A zero-copy op whose first completion was reported with `F_MORE`: its notification
    /// comes after `due` more enters.
    Notif { due: u8 },
}

/// The exact bytes an op carries, as issued: its slices (iovecs) concatenated, and each one's
/// length (one buffer per op, not one per slice: the per-slice copies were most of the
/// simulated kernel's allocations).
#[derive(Debug, Default)]
struct Snapshot {
    bytes: Vec<u8>,
    lens: Vec<usize>,
    total: usize,
}

impl Snapshot {
    /// The op's slices; their bytes only if `copy` (an op the kernel never runs, one that
    /// epoll reports `NotIssued`, needs its shape alone).
    fn of(core: &Core, p: &Planned, copy: bool) -> Snapshot {
        let mut s = Snapshot::default();
        core.for_each_slice(p, |b| {
            if copy {
                s.bytes.extend_from_slice(b);
            }
            s.lens.push(b.len());
            s.total += b.len();
        });
        s
    }

    /// iovecs.
    fn iovecs(&self) -> usize {
        self.lens.len()
    }

    /// Whether the op's slices in `core` are still exactly these, slice for slice.
    fn matches(&self, core: &Core, p: &Planned) -> bool {
        let (mut same, mut at, mut n) = (true, 0, 0);
        core.for_each_slice(p, |b| {
            same &=
                self.lens.get(n) == Some(&b.len()) && self.bytes.get(at..at + b.len()) == Some(b);
            at += b.len();
            n += 1;
        });
        same && n == self.lens.len()
    }
}

#[derive(Debug)]
struct Flight {
    p: Planned,
    reg: usize,
    op: usize,
    snapshot: Snapshot,
    seqs: Vec<u64>,
    st: Fl,
    /// The `issue` call that handed it over.
    issue: u64,
    /// Zero-copy ops: (address, length) of each iovec, which the core must keep alive until
    /// the notification.
    ranges: Vec<(usize, usize)>,
}

/// The kernel's state, shared by the driver and its handles.
#[derive(Debug)]
pub(crate) struct State {
    mode: Mode,
    now_ns: u64,
    order: u64,
    tally: Tally,
    behaviour: Box<dyn Behaviour>,
    peers: Vec<Peer>,
    by_index: Vec<Option<usize>>,
    by_fd: BTreeMap<RawFd, usize>,
    /// io_uring: ops in the SQ or the kernel, in issue order.
    flights: Vec<Flight>,
    /// Cancel SQEs since the last enter.
    cancels: usize,
    injected: Vec<Event>,
    /// Tokens of completed ops, newest last (stale completions are made from them).
    history: VecDeque<u64>,
    closed: BTreeSet<SocketAddr>,
    latency: u8,
    reorder: bool,
    cancel: Cancel,
    idle: Idle,
    focus: Option<u32>,
    frozen: bool,
    /// io_uring: the next `enter` drops every completion it would report and fails with
    /// `EBADR` (a CQ overflow without room).
    drop_cq: bool,
    /// io_uring: ops whose completion was dropped; a cancel of one answers `ENOENT`, which the
    /// real driver reports as the op's end with `-EBADR`.
    lost: std::collections::HashSet<u64>,
    refuse_push: Option<usize>,
    /// `issue` calls so far.
    issues: u64,
    rng: u64,
    idle_spins: u32,
    /// Driver calls left before the kernel calls it a livelock.
    budget: u64,
    /// Ops in flight beyond each socket's first, at most at once.
    pub(crate) max_extras: usize,
    /// `measure`'s count of ops per registration.
    per_reg: Vec<usize>,
    /// `check_tokens`' buffer.
    tokens: Vec<u64>,
    /// Ops the engine leaked (a drop whose drain failed).
    pub(crate) leaked: Option<usize>,
    /// Releases `Idle::Release` made.
    pub(crate) idle_releases: u32,
    zc: ZcModel,
}

const ICMP_PORT_UNREACH: i32 = libc::ECONNREFUSED;

/// Consecutive `enter`s with nothing able to happen before the kernel calls it a spin.
const MAX_IDLE_SPINS: u32 = 10_000;

/// Driver calls an engine may make before the kernel calls it a livelock (see
/// [`SimHandle::set_budget`]).
const DEFAULT_BUDGET: u64 = 10_000_000;

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic (a failed check) poisons the lock; the engine still drops afterwards.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn new(mode: Mode, behaviour: Box<dyn Behaviour>) -> State {
        State {
            mode,
            now_ns: 1,
            order: 0,
            tally: Tally::default(),
            behaviour,
            peers: Vec::new(),
            by_index: Vec::new(),
            by_fd: BTreeMap::new(),
            flights: Vec::new(),
            cancels: 0,
            injected: Vec::new(),
            history: VecDeque::new(),
            closed: BTreeSet::new(),
            latency: 0,
            reorder: false,
            cancel: Cancel::Cancels,
            idle: Idle::Panic,
            focus: None,
            frozen: false,
            drop_cq: false,
            lost: std::collections::HashSet::new(),
            refuse_push: None,
            issues: 0,
            rng: 0x853c_49e6_748f_ea9b,
            idle_spins: 0,
            budget: DEFAULT_BUDGET,
            max_extras: 0,
            per_reg: Vec::new(),
            tokens: Vec::new(),
            leaked: None,
            idle_releases: 0,
            zc: ZcModel::default(),
        }
    }

    fn tick(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn roll(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    /// Counts a driver call against the budget.
    fn call(&mut self) {
        self.budget = self.budget.checked_sub(1).unwrap_or_else(|| {
            panic!("sim kernel: the engine keeps calling the driver without end (a livelock)")
        });
    }

    /// The registration behind descriptor `fd`, for the driver calls that name a socket by its
    /// descriptor (`call` names the call in the panic).
    fn reg_of_fd(&self, fd: RawFd, call: &str) -> usize {
        match self.by_fd.get(&fd) {
            Some(&r) => r,
            None => panic!("sim kernel: {call} on unknown fd {fd}"),
        }
    }

    fn reg_of(&self, sock: u32) -> usize {
        match self.by_index.get(sock as usize).copied().flatten() {
            Some(r) => r,
            None => panic!("sim kernel: socket index {sock} is not registered"),
        }
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = &PeerLog> + '_ {
        self.peers.iter().map(|p| &p.log)
    }

    pub(crate) fn log(&self, reg: usize) -> &PeerLog {
        &self.peers[reg].log
    }

    /// Ops in flight (io_uring), as (registration, first seq, count, stream).
    pub(crate) fn flights(&self) -> impl Iterator<Item = (usize, &OpRecord)> + '_ {
        self.flights
            .iter()
            .map(|f| (f.reg, &self.peers[f.reg].log.ops[f.op]))
    }

    fn record_op(&mut self, reg: usize, p: &Planned, snapshot: &Snapshot, seqs: &[u64]) -> usize {
        let at = self.tick();
        let now = self.now_ns;
        let peer = &mut self.peers[reg];
        peer.log.ops_changes += 1;
        let (stream, first_seq, count, segment_size, bytes) = match p.shape {
            OpShape::Stream { entries, bytes } => (true, 0, entries, None, bytes),
            OpShape::Dgram {
                first_seq,
                count,
                segment_size,
                bytes,
                ..
            } => (false, first_seq, count, segment_size, bytes),
            OpShape::Packet { seq, bytes, .. } => (false, seq, 1, None, bytes),
        };
        peer.log.ops.push(OpRecord {
            token: p.token.0,
            stream,
            offset: peer.log.received.len(),
            first_seq,
            seqs: seqs.to_vec(),
            count,
            segment_size,
            bytes,
            iovecs: snapshot.iovecs(),
            dest: p.dest,
            issued_ns: now,
            issued_at: at,
            res: None,
            done_ns: 0,
            done_at: 0,
            not_issued: false,
            stopped: false,
            zerocopy: p.zerocopy,
            more: false,
            notified_at: 0,
            solo: p.token == Token::SOLO,
        });
        peer.log.ops.len() - 1
    }

    /// Checks an op the engine hands over; returns its registration, payload and datagram
    /// sequence numbers.
    fn admit(
        &mut self,
        core: &Core,
        p: &Planned,
        batch: &[Planned],
        copy: bool,
    ) -> (usize, Snapshot, Vec<u64>) {
        let reg = self.reg_of(p.sock);
        let peer = &self.peers[reg];
        assert_eq!(
            p.fd, peer.log.fd,
            "sim kernel: op on socket {} with the wrong fd",
            p.sock
        );
        let snapshot = Snapshot::of(core, p, copy);
        let total = snapshot.total;
        assert!(
            snapshot.iovecs() <= crate::plan::IOV_MAX,
            "sim kernel: {} iovecs",
            snapshot.iovecs()
        );
        match p.shape {
            OpShape::Packet { .. } => {}
            OpShape::Stream { bytes, .. } => {
                assert!(
                    peer.log.stream,
                    "sim kernel: a stream op on datagram socket {}",
                    p.sock
                );
                let others = self
                    .flights
                    .iter()
                    .filter(|f| f.reg == reg && !matches!(f.st, Fl::Notif { .. }))
                    .count()
                    + batch.iter().filter(|b| b.sock == p.sock).count();
                assert_eq!(
                    others, 1,
                    "sim kernel: a second op in flight on stream socket {}",
                    p.sock
                );
                assert_eq!(total, bytes, "sim kernel: stream op bytes != its slices");
                assert!(bytes <= crate::plan::MAX_RW_COUNT);
                assert!(p.dest.is_none());
            }
            OpShape::Dgram {
                count,
                segment_size,
                bytes,
                ..
            } => {
                assert!(
                    !peer.log.stream && !peer.log.packet,
                    "sim kernel: a datagram op on stream socket or packet descriptor {}",
                    p.sock
                );
                assert_eq!(total, bytes, "sim kernel: datagram op bytes != its slices");
                assert!(
                    p.dest.is_some() != peer.connected.is_some(),
                    "sim kernel: socket {}: a destination on a connected socket, or none on an \
                     unconnected one",
                    p.sock
                );
                match segment_size {
                    None => assert_eq!(count, 1, "sim kernel: several datagrams without GSO"),
                    Some(seg) => {
                        let seg = usize::from(seg);
                        assert!(
                            (2..=crate::plan::GSO_MAX_SEGMENTS).contains(&count),
                            "sim kernel: GSO group of {count}"
                        );
                        assert!(
                            bytes <= crate::plan::UDP_MAX_PAYLOAD,
                            "sim kernel: GSO bytes"
                        );
                        assert!(
                            seg > 0 && bytes > seg * (count - 1) && bytes <= seg * count,
                            "sim kernel: GSO group of {count} × {seg} with {bytes} bytes"
                        );
                    }
                }
            }
        }
        if let OpShape::Packet { bytes, seq, .. } = p.shape {
            // One chain per packet descriptor in flight: what a later issue adds would not be
            // linked behind it, and could overtake it.
            assert!(
                !self
                    .flights
                    .iter()
                    .any(|f| f.reg == reg && f.issue != self.issues),
                "sim kernel: packet op {seq} on socket {} issued while an earlier issue's \
                 packets are in flight (a second chain could overtake the first)",
                p.sock
            );
            assert!(
                peer.log.packet,
                "sim kernel: a packet op on socket {}, not a packet descriptor",
                p.sock
            );
            assert_eq!(total, bytes, "sim kernel: packet op bytes != its slice");
            assert!(
                snapshot.iovecs() == 1,
                "sim kernel: a packet op of {} slices (one write is one packet)",
                snapshot.iovecs()
            );
            assert!(
                p.dest.is_none(),
                "sim kernel: a packet op with a destination"
            );
            assert_eq!(
                core.dgram_seqs(p),
                [seq],
                "sim kernel: packet op {seq} carries other packets"
            );
        }
        let seqs = core.dgram_seqs(p).to_vec();
        if let OpShape::Dgram {
            count, first_seq, ..
        } = p.shape
        {
            assert!(
                seqs.len() == count && seqs.first() == Some(&first_seq),
                "sim kernel: datagram op of {count} from {first_seq} carries {seqs:?}"
            );
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "sim kernel: datagrams out of order in one op: {seqs:?}"
            );
        }
        (reg, snapshot, seqs)
    }

    /// Every op of `batch` has a token unique among the ops in flight and the batch (sorted
    /// once per issue: checking each op against the batch was quadratic in a `sendmmsg` of
    /// hundreds of datagrams).
    fn check_tokens(&mut self, batch: &[Planned]) {
        let mut t = std::mem::take(&mut self.tokens);
        t.clear();
        t.extend(self.flights.iter().map(|f| f.p.token.0));
        t.extend(batch.iter().map(|p| p.token.0));
        t.sort_unstable();
        if let Some(w) = t.windows(2).find(|w| w[0] == w[1]) {
            panic!("sim kernel: token {:#x} issued while in flight", w[0]);
        }
        self.tokens = t;
    }

    /// Records the high-water marks of ops in flight with `batch` added.
    fn measure(&mut self, batch: &[Planned]) {
        // Ops per registration (a reused buffer: this runs at every issue).
        let mut per = std::mem::take(&mut self.per_reg);
        per.clear();
        per.resize(self.peers.len(), 0);
        for f in &self.flights {
            per[f.reg] += 1;
        }
        for p in batch {
            per[self.reg_of(p.sock)] += 1;
        }
        let mut extras = 0;
        for (reg, &n) in per.iter().enumerate().filter(|&(_, &n)| n > 0) {
            extras += n - 1;
            let log = &mut self.peers[reg].log;
            log.max_in_flight = log.max_in_flight.max(n);
        }
        self.max_extras = self.max_extras.max(extras);
        self.per_reg = per;
    }

    /// Decides an op: `None` holds it, `Some(res)` is its result (bytes delivered to the peer).
    fn execute(
        &mut self,
        reg: usize,
        p: &Planned,
        snapshot: &Snapshot,
        seqs: &[u64],
        pos: usize,
    ) -> Option<i32> {
        let epoll = self.mode == Mode::Epoll;
        let payload = &snapshot.bytes[..];
        let peer = &mut self.peers[reg];
        let stream = peer.log.stream;
        let packet = peer.log.packet;
        let dgram = !stream && !packet;
        let (first_seq, count, segment_size, bytes) = match p.shape {
            OpShape::Stream { entries, bytes } => (0, entries, None, bytes),
            OpShape::Dgram {
                first_seq,
                count,
                segment_size,
                bytes,
                ..
            } => (first_seq, count, segment_size, bytes),
            OpShape::Packet { seq, bytes, .. } => (seq, 1, None, bytes),
        };
        let verdict = if let (true, Some(e)) = (p.zerocopy, self.zc.refuse) {
            Verdict::Errno(e)
        } else if let (true, Some(e)) = (stream, peer.reset) {
            Verdict::Errno(e)
        } else if stream && peer.shut_wr {
            Verdict::Errno(libc::EPIPE)
        } else if let Some(e) = dgram.then(|| peer.sk_err.take()).flatten() {
            // Linux reports a pending error before it waits for buffer space.
            Verdict::Errno(e)
        } else if peer.stalled {
            Verdict::Hold
        } else if let Some(v) = peer.script.pop_front() {
            v
        } else if dgram && peer.nobufs > 0 {
            peer.nobufs -= 1;
            Verdict::Errno(libc::ENOBUFS)
        } else {
            let view = OpView {
                reg,
                sock: p.sock,
                token: p.token.0,
                stream,
                offset: peer.log.received.len(),
                first_seq,
                seqs,
                count,
                segment_size,
                bytes,
                dest: p.dest.or(peer.connected),
                pos,
                payload,
                now_ns: self.now_ns,
            };
            self.behaviour.verdict(&view)
        };
        let peer = &mut self.peers[reg];
        let full = i32::try_from(bytes).unwrap_or(i32::MAX);
        let res = match verdict {
            Verdict::Hold if epoll => {
                peer.stalled = true;
                -libc::EAGAIN
            }
            Verdict::Hold => return None,
            Verdict::Full => full,
            Verdict::Short(n) if stream || packet => {
                i32::try_from(n.min(bytes)).unwrap_or(i32::MAX)
            }
            Verdict::Short(_) => full,
            Verdict::Errno(e) => -e,
            Verdict::Raw(r) => r,
        };
        if res < 0 {
            return Some(res);
        }
        if stream {
            // More than it was given: a broken kernel report; nothing reaches the peer.
            if let Some(n) = usize::try_from(res).ok().filter(|&n| n <= bytes) {
                peer.log.received.extend_from_slice(&payload[..n]);
            }
            return Some(res);
        }
        if packet {
            // Whole, or (a short write, more than it was given) nothing: never a cut packet.
            if usize::try_from(res).is_ok_and(|n| n == bytes) {
                peer.log.datagrams.push(Delivered {
                    seq: first_seq,
                    dest: None,
                    payload: Bytes::copy_from_slice(payload),
                });
            }
            return Some(res);
        }
        let seg = segment_size.map_or(bytes.max(1), usize::from);
        let mut parts: Vec<&[u8]> = payload.chunks(seg).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        assert_eq!(
            parts.len(),
            count,
            "sim kernel: datagram op splits into other than its count"
        );
        let target = p.dest.or(peer.connected);
        for (&seq, part) in seqs.iter().zip(parts) {
            peer.log.datagrams.push(Delivered {
                seq,
                dest: p.dest,
                payload: Bytes::copy_from_slice(part),
            });
            if target.is_some_and(|t| self.closed.contains(&t)) {
                // An ICMP port unreachable comes back (at once, in the simulation).
                if peer.recverr {
                    peer.errqueue.push_back((target, ICMP_PORT_UNREACH));
                }
                if peer.recverr || peer.connected.is_some() {
                    peer.sk_err = Some(ICMP_PORT_UNREACH);
                }
            }
        }
        Some(res)
    }

    fn finish(&mut self, reg: usize, op: usize, token: Token, res: i32) {
        let at = self.tick();
        let now = self.now_ns;
        self.peers[reg].log.ops_changes += 1;
        let rec = &mut self.peers[reg].log.ops[op];
        rec.res = Some(res);
        rec.done_ns = now;
        rec.done_at = at;
        self.history.push_back(token.0);
        if self.history.len() > 64 {
            self.history.pop_front();
        }
    }

    /// io_uring: decides the ops that are due (all when `force`), in issue order.
    fn run(&mut self, force: bool, out: &mut Vec<Event>) {
        let mut i = 0;
        while i < self.flights.len() {
            let st = self.flights[i].st;
            if let Fl::Notif { due } = st {
                if due > 0 && !force {
                    self.flights[i].st = Fl::Notif { due: due - 1 };
                    i += 1;
                    continue;
                }
                let f = self.flights.remove(i);
                let at = self.tick();
                self.peers[f.reg].log.ops[f.op].notified_at = at;
                let res = if self.zc.copied {
                    // IORING_NOTIF_USAGE_ZC_COPIED: bit 31, a negative `i32`.
                    i32::MIN
                } else {
                    0
                };
                out.push(Event::Notif {
                    token: f.p.token,
                    res,
                });
                continue;
            }
            let res = match st {
                Fl::Sq | Fl::Held => None,
                Fl::Notif { .. } => unreachable!("handled above"),
                Fl::Done(res) => Some(res),
                Fl::Kernel { due } if due > 0 && !force => {
                    self.flights[i].st = Fl::Kernel { due: due - 1 };
                    None
                }
                Fl::Kernel { .. } | Fl::Raced => {
                    let f = &self.flights[i];
                    let (reg, p) = (f.reg, f.p);
                    let snapshot = std::mem::take(&mut self.flights[i].snapshot);
                    let seqs = std::mem::take(&mut self.flights[i].seqs);
                    // A raced op finished before the cancel: the stall does not hold it.
                    let stalled = self.peers[reg].stalled;
                    if st == Fl::Raced {
                        self.peers[reg].stalled = false;
                    }
                    let r = self.execute(reg, &p, &snapshot, &seqs, 0);
                    self.peers[reg].stalled |= stalled;
                    self.flights[i].snapshot = snapshot;
                    self.flights[i].seqs = seqs;
                    match r {
                        None if st == Fl::Raced => Some(-libc::ECANCELED),
                        None => {
                            self.flights[i].st = Fl::Held;
                            None
                        }
                        r => r,
                    }
                }
            };
            match res {
                Some(res) if self.flights[i].p.zerocopy && self.zc_more(res) => {
                    let f = &self.flights[i];
                    let (reg, op, token) = (f.reg, f.op, f.p.token);
                    self.finish(reg, op, token, res);
                    self.peers[reg].log.ops[op].more = true;
                    let delay = u64::from(self.zc.notif_delay);
                    let due = if delay > 0 { self.roll(delay + 1) } else { 0 };
                    self.flights[i].st = Fl::Notif {
                        due: u8::try_from(due).unwrap_or(u8::MAX),
                    };
                    out.push(Event::DoneMore { token, res });
                    i += 1;
                }
                Some(res) => {
                    let f = self.flights.remove(i);
                    self.finish(f.reg, f.op, f.p.token, res);
                    out.push(Event::Done {
                        token: f.p.token,
                        res,
                    });
                }
                None => i += 1,
            }
        }
    }

    /// Whether a zero-copy op's first completion with `res` carries `F_MORE`.
    fn zc_more(&self, res: i32) -> bool {
        match self.zc.more {
            ZcMore::Always => true,
            ZcMore::OkOnly => res >= 0,
            ZcMore::Never => false,
        }
    }

    fn unstall(&mut self, reg: usize) {
        self.peers[reg].stalled = false;
        for f in self.flights.iter_mut().filter(|f| f.reg == reg) {
            if f.st == Fl::Held {
                f.st = Fl::Kernel { due: 0 };
            }
        }
    }

    /// Nothing can happen without a wait that never ends: apply the idle policy.
    fn would_block(&mut self) {
        let stuck: BTreeSet<usize> = match self.mode {
            Mode::Uring => self
                .flights
                .iter()
                .filter(|f| f.st == Fl::Held)
                .map(|f| f.reg)
                .collect(),
            Mode::Epoll => (0..self.peers.len())
                .filter(|&r| self.peers[r].armed && self.peers[r].log.registered)
                .collect(),
        };
        if let Some(f) = self.focus {
            let reg = self.by_index.get(f as usize).copied().flatten();
            assert!(
                reg.is_some_and(|r| stuck.contains(&r)),
                "sim kernel: a wait on socket {f} blocks on other sockets (stalled: {:?}), \
                 though nothing of socket {f} is held",
                stuck
                    .iter()
                    .map(|&r| self.peers[r].log.index)
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            self.idle == Idle::Release,
            "sim kernel: the engine would block forever (held by stalled peers: {:?})",
            stuck
                .iter()
                .map(|&r| self.peers[r].log.index)
                .collect::<Vec<_>>()
        );
        self.idle_releases += 1;
        let focus = self
            .focus
            .and_then(|f| self.by_index.get(f as usize).copied().flatten());
        for reg in stuck {
            if focus.is_none_or(|f| f == reg) {
                self.unstall(reg);
            }
        }
    }

    fn spin(&mut self) {
        self.idle_spins += 1;
        assert!(
            self.idle_spins < MAX_IDLE_SPINS,
            "sim kernel: the engine spins on enter with nothing in flight, nothing watched and no \
             deadline"
        );
    }

    fn deliver_injected(&mut self, out: &mut Vec<Event>) -> bool {
        let any = !self.injected.is_empty();
        out.append(&mut self.injected);
        any
    }

    fn shuffle(&mut self, evs: &mut [Event]) {
        for i in (1..evs.len()).rev() {
            let j = usize::try_from(self.roll(i as u64 + 1)).unwrap_or(0);
            evs.swap(i, j);
        }
    }

    fn enter_uring(&mut self, wait: Wait, out: &mut Vec<Event>) {
        let deadline = match wait {
            Wait::Until(d) => d,
            Wait::No => None,
        };
        let sq = self.flights.iter().filter(|f| f.st == Fl::Sq).count();
        let want =
            matches!(wait, Wait::Until(_)) && (!self.flights.is_empty() || deadline.is_some());
        if sq > 0 || self.cancels > 0 || want {
            self.tally.transitions += 1;
            if sq > 0 {
                self.tally.batches += 1;
                self.tally.sqes += sq as u64;
            }
        }
        self.cancels = 0;
        let latency = u64::from(self.latency);
        for i in 0..self.flights.len() {
            if self.flights[i].st == Fl::Sq {
                let due = if latency > 0 {
                    self.roll(latency + 1)
                } else {
                    0
                };
                self.flights[i].st = Fl::Kernel {
                    due: u8::try_from(due).unwrap_or(u8::MAX),
                };
            }
        }
        let mut cq = Vec::new();
        let injected = self.deliver_injected(&mut cq);
        if self.frozen {
            out.append(&mut cq);
            return;
        }
        self.run(false, &mut cq);
        if let Wait::Until(d) = wait {
            if cq.is_empty() && !injected {
                // Nothing ready: ops that are merely slow complete now.
                self.run(true, &mut cq);
            }
            if cq.is_empty() && !injected {
                match d {
                    Some(d) => self.now_ns = self.now_ns.max(d),
                    None if self.flights.is_empty() => self.spin(),
                    None => {
                        self.would_block();
                        self.run(true, &mut cq);
                    }
                }
            }
        }
        if !cq.is_empty() {
            self.idle_spins = 0;
        }
        if self.reorder {
            self.shuffle(&mut cq);
        }
        out.append(&mut cq);
    }

    fn writable_now(&self, reg: usize) -> bool {
        let p = &self.peers[reg];
        p.armed
            && p.log.registered
            && (!p.stalled || p.reset.is_some() || p.sk_err.is_some() || p.shut_wr)
    }

    fn enter_epoll(&mut self, wait: Wait, out: &mut Vec<Event>) {
        let armed = self
            .peers
            .iter()
            .filter(|p| p.armed && p.log.registered)
            .count();
        let injected = self.deliver_injected(out);
        match wait {
            Wait::No if armed == 0 => return,
            Wait::Until(None) if armed == 0 => {
                if !injected {
                    self.spin();
                }
                return;
            }
            _ => {}
        }
        self.tally.transitions += 1;
        if self.frozen {
            return;
        }
        let mut ready: Vec<usize> = (0..self.peers.len())
            .filter(|&r| self.writable_now(r))
            .collect();
        if ready.is_empty() && !injected {
            match wait {
                Wait::No => return,
                Wait::Until(Some(d)) => {
                    self.now_ns = self.now_ns.max(d);
                    return;
                }
                Wait::Until(None) => {
                    self.would_block();
                    ready = (0..self.peers.len())
                        .filter(|&r| self.writable_now(r))
                        .collect();
                }
            }
        }
        if !ready.is_empty() {
            self.idle_spins = 0;
        }
        for reg in ready {
            self.peers[reg].armed = false;
            out.push(Event::Writable {
                sock: self.peers[reg].log.index,
            });
        }
    }

    fn issue_uring(&mut self, core: &Core, ops: &[Planned], out: &mut Vec<Event>) {
        // The bytes of every op still in flight are what they were when it was issued (an op
        // waiting only for its notification left the queue: `check_zc_held` checks it).
        for f in self
            .flights
            .iter()
            .filter(|f| !matches!(f.st, Fl::Notif { .. }))
        {
            assert!(
                f.snapshot.matches(core, &f.p),
                "sim kernel: the payload of op {:#x} on socket {} changed while in flight",
                f.p.token.0,
                f.p.sock
            );
        }
        self.check_zc_held(core);
        let refuse = self.refuse_push.take();
        let taken = refuse.map_or(ops.len(), |n| n.min(ops.len()));
        self.measure(&ops[..taken]);
        for (i, p) in ops.iter().enumerate() {
            if i >= taken {
                let (reg, snapshot, seqs) = self.admit(core, p, &ops[i..], false);
                let op = self.record_op(reg, p, &snapshot, &seqs);
                self.peers[reg].log.ops[op].not_issued = true;
                out.push(Event::NotIssued { token: p.token });
                continue;
            }
            let (reg, snapshot, seqs) = self.admit(core, p, &ops[i..taken], true);
            let op = self.record_op(reg, p, &snapshot, &seqs);
            let mut ranges = Vec::new();
            if p.zerocopy {
                core.for_each_slice(p, |s| ranges.push((s.as_ptr() as usize, s.len())));
            }
            self.flights.push(Flight {
                p: *p,
                reg,
                op,
                snapshot,
                seqs,
                st: Fl::Sq,
                issue: self.issues,
                ranges,
            });
        }
    }

    /// Every zero-copy op waiting for its notification still has its memory held by the core.
    fn check_zc_held(&self, core: &Core) {
        for f in &self.flights {
            if matches!(f.st, Fl::Notif { .. }) {
                assert!(
                    core.zc_holds(f.p.token, &f.ranges),
                    "sim kernel: zero-copy op {:#x} on socket {}: its memory was released \
                     before its notification",
                    f.p.token.0,
                    f.p.sock
                );
            }
        }
    }

    /// Address ranges zero-copy ops have in flight or waiting for their notification.
    fn zc_ranges(&self) -> Vec<(usize, usize)> {
        self.flights
            .iter()
            .flat_map(|f| f.ranges.iter().copied())
            .collect()
    }

    fn issue_epoll(&mut self, core: &Core, ops: &[Planned], out: &mut Vec<Event>) {
        self.measure(ops);
        let mut batch = ops.to_vec();
        batch.sort_by_key(|p| p.sock);
        let mut i = 0;
        while i < batch.len() {
            let sock = batch[i].sock;
            let end = i + batch[i..].iter().take_while(|q| q.sock == sock).count();
            let mut pos = 0;
            let mut stop = false;
            for j in i..end {
                let p = batch[j];
                let (reg, snapshot, seqs) = self.admit(core, &p, &batch[j..end], !stop);
                let op = self.record_op(reg, &p, &snapshot, &seqs);
                if stop {
                    self.peers[reg].log.ops[op].not_issued = true;
                    out.push(Event::NotIssued { token: p.token });
                    continue;
                }
                let stream = matches!(p.shape, OpShape::Stream { .. });
                if matches!(p.shape, OpShape::Packet { .. }) {
                    // One `write` per packet; a failed one stops nothing but EAGAIN.
                    self.tally.transitions += 1;
                    self.tally.batches += 1;
                    self.tally.sqes += 1;
                    let res = self
                        .execute(reg, &p, &snapshot, &seqs, 0)
                        .expect("epoll ops are never held");
                    self.finish(reg, op, p.token, res);
                    out.push(Event::Done {
                        token: p.token,
                        res,
                    });
                    stop = res == -libc::EAGAIN;
                    continue;
                }
                if stream || pos == 0 {
                    self.tally.transitions += 1;
                    self.tally.batches += 1;
                }
                self.tally.sqes += 1;
                let res = self
                    .execute(reg, &p, &snapshot, &seqs, pos)
                    .expect("epoll ops are never held");
                if stream || res >= 0 || pos == 0 {
                    self.finish(reg, op, p.token, res);
                    out.push(Event::Done {
                        token: p.token,
                        res,
                    });
                    stop = !stream && res < 0;
                } else {
                    // A partial count: the call returns what it sent and drops this error.
                    self.peers[reg].log.ops[op].stopped = true;
                    self.history.push_back(p.token.0);
                    out.push(Event::Stopped { token: p.token });
                    stop = true;
                }
                pos += 1;
            }
            i = end;
        }
    }

    /// A flush's lone op, sent at once without blocking, as the real drivers send it: the
    /// epoll model's one-op `issue`; on io_uring a `send(MSG_DONTWAIT)` beside an empty ring
    /// (a held op would block: `-EAGAIN`, nothing sent, nothing recorded). `None` while the
    /// ring holds ops (the real driver refuses then too).
    fn solo(&mut self, op: &Solo<'_>) -> Option<i32> {
        let uring = self.mode == Mode::Uring;
        if uring && (!self.flights.is_empty() || self.cancels > 0) {
            return None;
        }
        let reg = self.reg_of(op.sock);
        let peer = &self.peers[reg];
        assert_eq!(
            op.fd, peer.log.fd,
            "sim kernel: solo op on socket {} with the wrong fd",
            op.sock
        );
        assert_eq!(
            peer.log.stream,
            op.dgram.is_none(),
            "sim kernel: solo op of the wrong kind on socket {}",
            op.sock
        );
        assert!(
            !peer.log.packet,
            "sim kernel: solo op on packet descriptor {}",
            op.sock
        );
        assert!(
            op.dest.is_some() != (op.dgram.is_none() || peer.connected.is_some()),
            "sim kernel: solo op on socket {}: a destination on a stream or connected socket, \
             or none on an unconnected one",
            op.sock
        );
        let bytes = op.buf.len();
        let p = Planned {
            token: Token::SOLO,
            sock: op.sock,
            fd: op.fd,
            shape: match op.dgram {
                None => OpShape::Stream { entries: 1, bytes },
                Some(seq) => OpShape::Dgram {
                    first_seq: seq,
                    count: 1,
                    segment_size: None,
                    bytes,
                    group: u32::MAX,
                },
            },
            dest: op.dest.copied(),
            zerocopy: false,
        };
        let snapshot = Snapshot {
            bytes: op.buf.to_vec(),
            lens: vec![bytes],
            total: bytes,
        };
        let seqs: Vec<u64> = op.dgram.into_iter().collect();
        self.measure(&[p]);
        let rec = self.record_op(reg, &p, &snapshot, &seqs);
        let res = match self.execute(reg, &p, &snapshot, &seqs, 0) {
            Some(res) => res,
            None => {
                // A held op would block: MSG_DONTWAIT returns at once, nothing sent. The hold
                // waits for the op the ring gets next (a stalled peer holds it anyway).
                let peer = &mut self.peers[reg];
                peer.log.ops.pop();
                if !peer.stalled {
                    peer.script.push_front(Verdict::Hold);
                }
                return Some(-libc::EAGAIN);
            }
        };
        let at = self.tick();
        let r = &mut self.peers[reg].log.ops[rec];
        r.res = Some(res);
        r.done_ns = self.now_ns;
        r.done_at = at;
        self.idle_spins = 0;
        Some(res)
    }

    fn stale_token(&mut self, pick: u64) -> Token {
        let live = |s: &State, t: u64| s.flights.iter().any(|f| f.p.token.0 == t);
        if !self.history.is_empty() && pick % 3 != 0 {
            let i = usize::try_from(pick % self.history.len() as u64).unwrap_or(0);
            let t = self.history[i];
            if !live(self, t) {
                return Token(t);
            }
        }
        let mut t = pick;
        while live(self, t) {
            t = t.wrapping_add(1 << 32);
        }
        Token(t)
    }
}

/// A fresh placeholder descriptor (`/dev/null`) for a simulated socket or kernel: a duplicate of
/// one opened once per thread (a `dup` costs far less than an `open` of the path, and fuzz
/// targets make several per input).
///
/// # Errors
/// If `/dev/null` cannot be opened or the descriptor duplicated.
pub fn placeholder_fd() -> std::io::Result<OwnedFd> {
    thread_local! {
        static DEV_NULL: std::io::Result<OwnedFd> =
            std::fs::File::open("/dev/null").map(OwnedFd::from);
    }
    DEV_NULL.with(|fd| match fd {
        Ok(fd) => fd.try_clone(),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    })
}

/// The simulated kernel, as the engine's driver. Control and observe it through
/// [`SimKernel::handle`].
#[derive(Debug)]
pub struct SimKernel {
    state: Arc<Mutex<State>>,
    fd: OwnedFd,
}

/// A handle on a [`SimKernel`]'s state: the test's or fuzzer's side of the kernel. Clones share
/// the state, which outlives the engine.
#[derive(Debug, Clone)]
pub struct SimHandle {
    state: Arc<Mutex<State>>,
}

impl SimKernel {
    /// A kernel in `mode` that sends everything, at time 1 ns.
    ///
    /// # Panics
    /// If `/dev/null` cannot be opened (the placeholder descriptor).
    pub fn new(mode: Mode) -> SimKernel {
        SimKernel::with_behaviour(mode, Box::new(AllOk))
    }

    /// A kernel in `mode` whose ops are decided by `behaviour` when nothing else decides.
    ///
    /// # Panics
    /// As [`SimKernel::new`].
    pub fn with_behaviour(mode: Mode, behaviour: Box<dyn Behaviour>) -> SimKernel {
        SimKernel {
            state: Arc::new(Mutex::new(State::new(mode, behaviour))),
            fd: placeholder_fd().expect("/dev/null"),
        }
    }

    /// The test's handle on this kernel.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            state: Arc::clone(&self.state),
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Default for SimKernel {
    fn default() -> Self {
        SimKernel::new(Mode::Uring)
    }
}

impl SimHandle {
    pub(crate) fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn reg(&self, id: SocketId) -> usize {
        self.st().reg_of(id.index())
    }

    /// Registers a simulated socket with `engine` (which must run on this kernel) and tells the
    /// kernel its peer and `IP_RECVERR`.
    ///
    /// # Panics
    /// If the engine cannot register it (the placeholder descriptor cannot be opened).
    pub fn register(&self, engine: &mut Engine, kind: Kind) -> SocketId {
        let (stream, peer, recverr) = match kind {
            Kind::Stream => (true, None, false),
            Kind::Udp { peer, recverr } => (false, peer, recverr),
            Kind::Packet => {
                return engine
                    .register_sim_packet()
                    .expect("register a simulated packet descriptor");
            }
        };
        let id = engine
            .register_sim(stream, peer, recverr)
            .expect("register a simulated socket");
        let mut st = self.st();
        let reg = st.reg_of(id.index());
        st.peers[reg].connected = peer;
        st.peers[reg].recverr = recverr;
        id
    }

    /// The completion model.
    pub fn mode(&self) -> Mode {
        self.st().mode
    }

    /// The clock, in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.st().now_ns
    }

    /// Advances the clock.
    pub fn advance(&self, ns: u64) {
        let mut st = self.st();
        st.now_ns = st.now_ns.saturating_add(ns);
    }

    /// Replaces the behaviour.
    pub fn set_behaviour(&self, b: Box<dyn Behaviour>) {
        self.st().behaviour = b;
    }

    /// Seeds the kernel's choices (latency, completion order, stale tokens).
    pub fn seed(&self, seed: u64) {
        self.st().rng = seed | 1;
    }

    /// io_uring: each op completes after up to `n` further enters (seeded); an enter that
    /// waits completes every such op.
    pub fn set_latency(&self, n: u8) {
        self.st().latency = n;
    }

    /// io_uring: the completions of one enter arrive in a seeded order.
    pub fn set_reorder(&self, on: bool) {
        self.st().reorder = on;
    }

    /// What cancels do.
    pub fn set_cancel(&self, c: Cancel) {
        self.st().cancel = c;
    }

    /// What an `enter` that would block forever does.
    pub fn set_idle(&self, idle: Idle) {
        self.st().idle = idle;
    }

    /// The socket a blocking call waits for (a flush), or `None` (every socket).
    pub fn set_focus(&self, id: Option<SocketId>) {
        self.st().focus = id.map(SocketId::index);
    }

    /// The engine may make `n` more driver calls; one more is a livelock (a panic). A runner
    /// sets it before each step.
    pub fn set_budget(&self, n: u64) {
        self.st().budget = n;
    }

    /// io_uring: the next `enter` loses the completions it would report (they were decided:
    /// the peers got their bytes) and fails with `EBADR`, as a ring whose CQ overflowed with no
    /// room left does.
    pub fn drop_completions(&self) {
        self.st().drop_cq = true;
    }

    /// Frozen, `enter` reports only injected events; nothing is decided.
    pub fn freeze(&self, on: bool) {
        self.st().frozen = on;
    }

    /// io_uring: the next `issue` takes only its first `n` ops; the rest are `NotIssued` (a
    /// push that failed).
    pub fn refuse_push_after(&self, n: usize) {
        self.st().refuse_push = Some(n);
    }

    /// The peer of `id` stops reading: its ops are held (io_uring) or refused with EAGAIN
    /// (epoll).
    pub fn stall(&self, id: SocketId) {
        let r = self.reg(id);
        self.st().peers[r].stalled = true;
    }

    /// The peer of `id` reads again: held ops go on, a watched socket becomes writable.
    pub fn unstall(&self, id: SocketId) {
        let r = self.reg(id);
        self.st().unstall(r);
    }

    /// Whether the peer of `id` is stalled.
    pub fn is_stalled(&self, id: SocketId) -> bool {
        let r = self.reg(id);
        self.st().peers[r].stalled
    }

    /// The stream peer of `id` resets the connection: ops fail with `errno` (ECONNRESET,
    /// EPIPE, …) from now on, held ones included.
    pub fn reset(&self, id: SocketId, errno: i32) {
        let r = self.reg(id);
        let mut st = self.st();
        if !st.peers[r].log.stream {
            return;
        }
        st.peers[r].reset = Some(errno);
        for f in st.flights.iter_mut().filter(|f| f.reg == r) {
            if f.st == Fl::Held {
                f.st = Fl::Kernel { due: 0 };
            }
        }
    }

    /// The next ops of `id` get these verdicts, in order (before the behaviour is asked).
    pub fn script(&self, id: SocketId, verdicts: impl IntoIterator<Item = Verdict>) {
        let r = self.reg(id);
        self.st().peers[r].script.extend(verdicts);
    }

    /// The next `n` datagram ops of `id` fail with ENOBUFS.
    pub fn nobufs(&self, id: SocketId, n: u32) {
        let r = self.reg(id);
        self.st().peers[r].nobufs += n;
    }

    /// Datagrams to `addr` bring back an ICMP port unreachable from now on.
    pub fn close_port(&self, addr: SocketAddr) {
        self.st().closed.insert(addr);
    }

    /// Datagrams to `addr` are received quietly again.
    pub fn open_port(&self, addr: SocketAddr) {
        self.st().closed.remove(&addr);
    }

    /// Sets the pending socket error of `id` (`sk_err`), as an ICMP error would.
    pub fn set_pending_error(&self, id: SocketId, errno: i32) {
        let r = self.reg(id);
        self.st().peers[r].sk_err = Some(errno);
    }

    /// Queues an entry on the error queue of `id`.
    pub fn push_errqueue(&self, id: SocketId, dest: Option<SocketAddr>, errno: i32) {
        let r = self.reg(id);
        self.st().peers[r].errqueue.push_back((dest, errno));
    }

    /// Queues a completion for `token` (a duplicate, late or made-up one) for the next enter.
    pub fn inject_done(&self, token: u64, res: i32) {
        self.st().injected.push(Event::Done {
            token: Token(token),
            res,
        });
    }

    /// Queues a zero-copy notification for `token` (late, duplicate or made-up) for the next
    /// enter.
    pub fn inject_notif(&self, token: u64, res: i32) {
        self.st().injected.push(Event::Notif {
            token: Token(token),
            res,
        });
    }

    /// Queues a zero-copy first completion with `F_MORE` for `token` for the next enter.
    pub fn inject_done_more(&self, token: u64, res: i32) {
        self.st().injected.push(Event::DoneMore {
            token: Token(token),
            res,
        });
    }

    /// Queues an event for an op that is not in flight, chosen by `pick`: the token of a
    /// finished op or a made-up one, as a completion with any result, a `NotIssued` or a
    /// `Stopped`; or a writability event for a socket index nobody has. Returns the token.
    pub fn inject_stale(&self, pick: u64) -> u64 {
        let mut st = self.st();
        let token = st.stale_token(pick >> 8);
        let ev = match pick % 5 {
            0 | 1 => Event::Done {
                token,
                res: i32::try_from(pick >> 40).unwrap_or(0) - (1 << 23),
            },
            2 => Event::NotIssued { token },
            3 => Event::Stopped { token },
            _ => Event::Writable {
                sock: u32::try_from(st.by_index.len()).unwrap_or(u32::MAX) + 1000,
            },
        };
        st.injected.push(ev);
        token.0
    }

    /// Tokens of the last completed ops, oldest first.
    pub fn completed_tokens(&self) -> Vec<u64> {
        self.st().history.iter().copied().collect()
    }

    /// What was observed on the socket currently registered as `id`.
    pub fn peer(&self, id: SocketId) -> PeerLog {
        self.with_peer(id, PeerLog::clone)
    }

    /// `f` of what was observed on the socket currently registered as `id`, without a copy
    /// of the log (the kernel's state stays locked while `f` runs).
    pub fn with_peer<R>(&self, id: SocketId, f: impl FnOnce(&PeerLog) -> R) -> R {
        let st = self.st();
        f(&st.peers[st.reg_of(id.index())].log)
    }

    /// The registration number of `id` (registrations are numbered 0, 1, … and never reused).
    pub fn registration(&self, id: SocketId) -> usize {
        self.reg(id)
    }

    /// What was observed on registration `reg`.
    pub fn log(&self, reg: usize) -> PeerLog {
        self.st().peers[reg].log.clone()
    }

    /// Registrations so far.
    pub fn registrations(&self) -> usize {
        self.st().peers.len()
    }

    /// Ops in flight (io_uring; epoll never has any between calls).
    pub fn in_flight(&self) -> usize {
        self.st().flights.len()
    }

    /// Ops in flight that are held by a stalled peer or a `Hold` verdict.
    pub fn held(&self) -> usize {
        self.st()
            .flights
            .iter()
            .filter(|f| f.st == Fl::Held)
            .count()
    }

    /// Most ops in flight at once beyond each socket's first.
    pub fn max_extras(&self) -> usize {
        self.st().max_extras
    }

    /// How zero-copy ops complete from now on.
    pub fn set_zerocopy(&self, zc: ZcModel) {
        self.st().zc = zc;
    }

    /// Address ranges (address, length) of the iovecs of zero-copy ops in flight or waiting
    /// for their notification: memory the kernel may still read. A buffer released while it
    /// overlaps one of them was released too early.
    pub fn zc_pending_ranges(&self) -> Vec<(usize, usize)> {
        self.st().zc_ranges()
    }

    /// Zero-copy ops waiting for their notification.
    pub fn notifs_pending(&self) -> usize {
        self.st()
            .flights
            .iter()
            .filter(|f| matches!(f.st, Fl::Notif { .. }))
            .count()
    }

    /// `Some(n)` once the engine leaked its `n` ops in flight.
    pub fn leaked(&self) -> Option<usize> {
        self.st().leaked
    }

    /// How often `Idle::Release` let stalled peers drain.
    pub fn idle_releases(&self) -> u32 {
        self.st().idle_releases
    }
}

impl Driver for SimKernel {
    fn register(&mut self, sock: u32, fd: RawFd, kind: FdKind) -> Result<(), Error> {
        let mut st = self.st();
        let reg = st.peers.len();
        let i = sock as usize;
        if st.by_index.len() <= i {
            st.by_index.resize(i + 1, None);
        }
        assert!(
            st.by_index[i].is_none(),
            "sim kernel: socket index {sock} registered twice"
        );
        st.by_index[i] = Some(reg);
        st.by_fd.insert(fd, reg);
        st.peers.push(Peer {
            log: PeerLog {
                index: sock,
                fd,
                stream: kind == FdKind::Stream,
                packet: kind == FdKind::Packet,
                registered: true,
                ..PeerLog::default()
            },
            connected: None,
            recverr: false,
            stalled: false,
            reset: None,
            shut_wr: false,
            sk_err: None,
            errqueue: VecDeque::new(),
            nobufs: 0,
            script: VecDeque::new(),
            armed: false,
        });
        Ok(())
    }

    fn deregister(&mut self, sock: u32, fd: RawFd) {
        let mut st = self.st();
        let reg = st.reg_of(sock);
        assert!(
            !st.flights.iter().any(|f| f.reg == reg),
            "sim kernel: socket {sock} deregistered with ops in flight"
        );
        assert_eq!(
            st.peers[reg].log.fd, fd,
            "sim kernel: deregister with the wrong fd"
        );
        st.by_index[sock as usize] = None;
        st.by_fd.remove(&fd);
        let p = &mut st.peers[reg];
        p.log.registered = false;
        p.armed = false;
    }

    fn issue(
        &mut self,
        payload: &Core,
        ops: &[Planned],
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let mut st = self.st();
        st.call();
        st.issues += 1;
        st.check_tokens(ops);
        match st.mode {
            Mode::Uring => st.issue_uring(payload, ops, out),
            Mode::Epoll => st.issue_epoll(payload, ops, out),
        }
        Ok(())
    }

    fn enter(&mut self, wait: Wait, out: &mut Vec<Event>) -> Result<(), Error> {
        let mut st = self.st();
        if std::thread::panicking() {
            // A check failed and the engine is dropping: let its drain end.
            if let Wait::Until(Some(d)) = wait {
                st.now_ns = st.now_ns.max(d);
            }
            return Ok(());
        }
        st.call();
        let drop_cq = st.mode == Mode::Uring && std::mem::take(&mut st.drop_cq);
        match st.mode {
            Mode::Uring if drop_cq => {
                let mut cq = Vec::new();
                st.enter_uring(wait, &mut cq);
                for ev in cq {
                    match ev {
                        Event::Done { token, .. } => {
                            st.lost.insert(token.0);
                        }
                        other => out.push(other),
                    }
                }
                return Err(Error::Io {
                    what: "io_uring_enter",
                    errno: libc::EBADR,
                });
            }
            Mode::Uring => st.enter_uring(wait, out),
            Mode::Epoll => st.enter_epoll(wait, out),
        }
        Ok(())
    }

    fn watch_writable(&mut self, sock: u32, _fd: RawFd, out: &mut Vec<Event>) -> Result<(), Error> {
        let mut st = self.st();
        st.call();
        let reg = st.reg_of(sock);
        st.peers[reg].log.watches += 1;
        match st.mode {
            // Blocking sockets: the ring arms poll itself; an EAGAIN was spurious.
            Mode::Uring => out.push(Event::Writable { sock }),
            Mode::Epoll => {
                if !st.peers[reg].armed {
                    st.tally.transitions += 1;
                    st.peers[reg].armed = true;
                }
            }
        }
        Ok(())
    }

    fn send_solo(&mut self, op: &Solo<'_>) -> Option<i32> {
        let mut st = self.st();
        st.call();
        st.solo(op)
    }

    fn cancel(&mut self, tokens: &[Token], out: &mut Vec<Event>) -> Result<(), Error> {
        let mut st = self.st();
        if std::thread::panicking() {
            return Ok(());
        }
        if st.mode == Mode::Epoll {
            assert!(
                tokens.is_empty(),
                "sim kernel: epoll has nothing in flight to cancel"
            );
            return Ok(());
        }
        for t in tokens {
            if st.lost.remove(&t.0) {
                // ENOENT for the cancel: the uring driver ends the op as lost.
                out.push(Event::Done {
                    token: *t,
                    res: -libc::EBADR,
                });
                continue;
            }
            let Some(i) = st.flights.iter().position(|f| f.p.token == *t) else {
                panic!("sim kernel: cancel of {:#x}, which is not in flight", t.0);
            };
            let cancel = st.cancel;
            let f = &mut st.flights[i];
            f.st = match (cancel, f.st) {
                // The send ended; only its notification is due: nothing to cancel.
                (_, s @ Fl::Notif { .. }) => s,
                (Cancel::Ignored, s) => s,
                (Cancel::Races, s @ Fl::Done(_)) => s,
                (Cancel::Races, _) => Fl::Raced,
                (Cancel::Cancels, _) => Fl::Done(-libc::ECANCELED),
            };
            st.cancels += 1;
        }
        st.enter_uring(Wait::No, out);
        Ok(())
    }

    fn read_errqueue(&mut self, fd: RawFd, max: usize, out: &mut Vec<(Option<SocketAddr>, i32)>) {
        let mut st = self.st();
        let reg = st.reg_of_fd(fd, "read_errqueue");
        let p = &mut st.peers[reg];
        p.log.errqueue_reads += 1;
        let mut calls = 0u64;
        let mut taken = 0;
        while taken < max {
            calls += 1;
            let Some(e) = p.errqueue.pop_front() else {
                break;
            };
            p.log.errqueue_taken.push(e);
            out.push(e);
            taken += 1;
        }
        if taken > 0 {
            // Dequeuing an ICMP error sets sk_err to the next one's, or clears it.
            p.sk_err = p
                .errqueue
                .front()
                .map(|e| e.1)
                .filter(|&e| is_icmp_errno(e));
        }
        st.tally.transitions += calls;
    }

    fn set_recverr(&mut self, fd: RawFd, _v6: bool, on: bool) -> bool {
        let mut st = self.st();
        let reg = st.reg_of_fd(fd, "set_recverr");
        let p = &mut st.peers[reg];
        p.recverr = on;
        if !on {
            // As `ip_setsockopt(IP_RECVERR, 0)`: the queue is purged, a pending error stays.
            p.errqueue.clear();
        }
        p.log.recverr_switches.push(on);
        st.tally.transitions += 1;
        true
    }

    fn shutdown_write(&mut self, fd: RawFd) -> Result<(), Error> {
        let mut st = self.st();
        let reg = st.reg_of_fd(fd, "shutdown");
        st.tally.transitions += 1;
        let p = &mut st.peers[reg];
        p.shut_wr = true;
        let at = p.log.received.len();
        p.log.shutdowns.push(at);
        Ok(())
    }

    fn leak(&mut self) {
        let mut st = self.st();
        st.leaked = Some(st.flights.len());
    }

    fn now_ns(&self) -> u64 {
        self.st().now_ns
    }

    fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.st().tally)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

//! The reference model: what the user did through the public [`crate::Engine`] API — the
//! writes each socket accepted (with their exact bytes), the flush reports it got back, the
//! barriers that resolved — kept independently of the engine, so [`super::checks`] can compare
//! it with what the simulated kernel observed.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::Bytes;

use super::kernel::Kind;
use crate::error::Status;
use crate::report::FlushReport;
use crate::SocketId;

/// The address `127.0.0.1:port`.
pub fn dest(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// `len` bytes that no other tag's payload shares (splitmix64 over the tag and word index), so
/// every byte a peer receives says which write it came from.
pub fn payload(tag: u64, len: usize) -> Bytes {
    let word = |i: u64| {
        let mut z = tag
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i.wrapping_mul(0xbf58_476d_1ce4_e5b9))
            .wrapping_add(0x94d0_49bb_1331_11eb);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    };
    let mut out = vec![0; len];
    let mut words = out.chunks_exact_mut(8);
    let mut i = 0;
    for w in &mut words {
        w.copy_from_slice(&word(i));
        i += 1;
    }
    let rest = words.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&word(i)[..n]);
    Bytes::from(out)
}

/// The counts of a flush report (comparable across runs).
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
    /// The counts of `r`.
    pub fn of(r: &FlushReport) -> Counts {
        Counts {
            writes: r.writes,
            bytes: r.bytes,
            failed: r.failed,
            failures: std::array::from_fn(|i| r.failed_with(Status::ALL[i])),
        }
    }

    /// Adds `o`.
    pub fn add(&mut self, o: &Counts) {
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.failed += o.failed;
        for (a, b) in self.failures.iter_mut().zip(o.failures) {
            *a += b;
        }
    }

    /// Counts the failures with any of `from` as failures with `into`.
    pub fn merge_failures(&mut self, into: Status, from: &[Status]) {
        for st in from {
            let n = std::mem::take(&mut self.failures[st.index()]);
            self.failures[into.index()] += n;
        }
    }

    /// Writes that ended, sent or failed.
    pub fn ended(&self) -> u64 {
        self.writes + self.failed
    }
}

/// One accepted write.
#[derive(Debug, Clone)]
pub struct Write {
    /// The buffer handed to `send`/`send_to`.
    pub data: Bytes,
    /// `send_to`'s destination.
    pub dest: Option<SocketAddr>,
    /// Streams: offset of its first byte in the stream.
    pub start: usize,
}

impl Write {
    /// Streams: offset just past its last byte.
    pub fn end(&self) -> usize {
        self.start + self.data.len()
    }
}

/// One socket as the user knows it.
#[derive(Debug, Clone)]
pub struct SockModel {
    /// The engine's id.
    pub id: SocketId,
    /// The kernel's registration number.
    pub reg: usize,
    /// What it is.
    pub kind: Kind,
    /// Accepted writes, in order (a datagram's index is its sequence number).
    pub writes: Vec<Write>,
    /// Streams: the concatenation of the accepted writes.
    pub accepted: Vec<u8>,
    /// The sum of every report taken for it.
    pub reported: Counts,
    /// A flush raised the stream's error, so that flush's counts never reached the user.
    pub reports_lost: bool,
    /// The error a flush raised (a poisoned stream).
    pub error: Option<Status>,
    /// The barrier `try_flush` (or a timed-out flush) left pending: writes before it.
    pub pending_barrier: Option<u64>,
    /// The latest resolved barrier: writes before it, and how many of those datagrams the
    /// peer had then (none may arrive later).
    pub resolved: Option<(u64, usize)>,
    /// Gone from the engine (closed or aborted).
    pub removed: bool,
    /// Removed by `abort` (its writes ended without a report).
    pub aborted: bool,
    /// A close or abort timed out: the socket may be closing (sends refused as unknown).
    pub maybe_closing: bool,
    /// Stream bytes accepted when `shutdown_write` succeeded.
    pub shut_at: Option<usize>,
    /// How far the checks after each step got (they look only at what arrived since).
    pub checked: Checked,
}

/// What [`super::checks::check`] already found to hold for a socket. The peer's log only
/// grows (bytes and datagrams are appended, never changed), as do the accepted writes, so what
/// held once holds after every later step; each step checks only what is new.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Stream bytes the peer received that match the accepted bytes.
    pub received: usize,
    /// Datagrams delivered that were checked (whole, accepted, to their destination).
    pub datagrams: usize,
    /// Per accepted write (sequence number): delivered as a datagram.
    pub seen: Vec<bool>,
    /// Payload bytes of the datagrams checked.
    pub datagram_bytes: usize,
    /// The peer log's `ops_changes` when its op log was last checked (ENOBUFS and ICMP
    /// retries), if it was.
    pub ops_checked: Option<u64>,
    /// The resolved barrier whose datagrams below it were counted: (target, count, datagrams
    /// counted so far).
    pub below: Option<(u64, usize, usize)>,
    /// The statuses the op log poisons the socket with, as of `ops_changes`.
    pub poisons: Option<(u64, Vec<crate::error::Status>)>,
}

impl Checked {
    /// Datagrams of `log` with a sequence number below `target`, counting only those delivered
    /// since the last call for the same target.
    pub fn below(&mut self, target: u64, log: &super::kernel::PeerLog) -> usize {
        let (t, n0, from0) = self.below.unwrap_or((target, 0, 0));
        let (mut n, from) = if t == target { (n0, from0) } else { (0, 0) };
        n += log.datagrams[from..]
            .iter()
            .filter(|d| d.seq < target)
            .count();
        self.below = Some((target, n, log.datagrams.len()));
        n
    }
}

impl SockModel {
    /// A stream.
    pub fn is_stream(&self) -> bool {
        self.kind == Kind::Stream
    }

    /// A connected UDP socket.
    pub fn is_connected_udp(&self) -> bool {
        matches!(self.kind, Kind::Udp { peer: Some(_), .. })
    }
}

/// What the user did.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Every socket registered, in registration order.
    pub socks: Vec<SockModel>,
    /// Payload tags used (one per send call).
    pub tags: u64,
    /// Send calls refused.
    pub refused: u64,
}

impl Model {
    /// Records a registered socket; returns its index in `socks`.
    pub fn add(&mut self, id: SocketId, reg: usize, kind: Kind) -> usize {
        self.socks.push(SockModel {
            id,
            reg,
            kind,
            writes: Vec::new(),
            accepted: Vec::new(),
            reported: Counts::default(),
            reports_lost: false,
            error: None,
            pending_barrier: None,
            resolved: None,
            removed: false,
            aborted: false,
            maybe_closing: false,
            shut_at: None,
            checked: Checked::default(),
        });
        self.socks.len() - 1
    }

    /// A fresh payload for the next send call.
    pub fn next_payload(&mut self, len: usize) -> Bytes {
        self.tags += 1;
        payload(self.tags, len)
    }

    /// Records an accepted write on socket `i`.
    pub fn accept(&mut self, i: usize, data: Bytes, dest: Option<SocketAddr>) {
        let s = &mut self.socks[i];
        let start = s.accepted.len();
        if s.is_stream() {
            s.accepted.extend_from_slice(&data);
        }
        s.writes.push(Write { data, dest, start });
    }

    /// Records a report taken for socket `i`.
    pub fn report(&mut self, i: usize, r: &FlushReport) {
        self.socks[i].reported.add(&Counts::of(r));
    }

    /// Writes accepted on socket `i` so far: the target of a barrier set now.
    pub fn target(&self, i: usize) -> u64 {
        self.socks[i].writes.len() as u64
    }
}

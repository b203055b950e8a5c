//! The scenarios: what is sent, to how many sockets, in which order, and how it is grouped into
//! batches.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use bytes::Bytes;
use clap::ValueEnum;

use crate::net::grow_rcvbuf;
use crate::receiver::Receiver;

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// 64-byte messages on one loopback TCP connection.
    TcpSmall,
    /// 64 TCP connections, 16 × 64-byte messages each, one flush of everything.
    TcpFanout,
    /// 64 KiB buffers on one loopback TCP connection, 16 per flush: the bandwidth limit that
    /// small messages are held to.
    TcpBulk,
    /// 64-byte messages on one TCP connection, one per flush (per-message latency).
    TcpLatency,
    /// 1200-byte datagrams on one connected UDP socket (GSO territory).
    UdpGso,
    /// 172-byte datagrams to 256 peers through one unconnected UDP socket, peer by peer.
    UdpFanout,
    /// 172-byte frames to 256 peers through one unconnected UDP socket, frame-major (each frame
    /// to every peer in turn), 16 frames per flush: what a VoIP SFU produces.
    UdpRelay,
    /// 172-byte datagrams on one connected UDP socket, one per flush (per-message latency).
    UdpLatency,
    /// 64-byte messages over TLS, 1024 per flush, to a decrypting, verifying receiver: volley's
    /// TLS stream against rustls on a `TcpStream` and on 64 KiB `BufWriter`s, plus handshake
    /// times. Its own harness (`volley_bench::tls`); not in the default set.
    TlsSmall,
}

impl ScenarioName {
    /// All scenarios in report order.
    pub const ALL: [ScenarioName; 8] = [
        ScenarioName::TcpSmall,
        ScenarioName::TcpFanout,
        ScenarioName::TcpBulk,
        ScenarioName::TcpLatency,
        ScenarioName::UdpGso,
        ScenarioName::UdpFanout,
        ScenarioName::UdpRelay,
        ScenarioName::UdpLatency,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioName::TcpSmall => "tcp-small",
            ScenarioName::TcpFanout => "tcp-fanout",
            ScenarioName::TcpBulk => "tcp-bulk",
            ScenarioName::TcpLatency => "tcp-latency",
            ScenarioName::UdpGso => "udp-gso",
            ScenarioName::UdpFanout => "udp-fanout",
            ScenarioName::UdpRelay => "udp-relay",
            ScenarioName::UdpLatency => "udp-latency",
            ScenarioName::TlsSmall => "tls-small",
        }
    }
}

/// How the socket(s) of a scenario are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One TCP connection per peer; writes go to each connection.
    Tcp,
    /// One connected UDP socket (a single peer): `send`.
    UdpConnected,
    /// One unconnected UDP socket and many peers: `send_to`.
    UdpUnconnected,
}

/// A scenario with its sizes resolved.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Which scenario.
    pub name: ScenarioName,
    /// Socket layout.
    pub kind: Kind,
    /// Bytes per message.
    pub msg_size: usize,
    /// TCP connections or UDP peers.
    pub peers: usize,
    /// Messages per peer per batch; a batch ends with one flush.
    pub per_peer: usize,
    /// The order of a batch's messages across peers (see [`Spec::send_order`]): frame-major
    /// (message 0 to every peer, then message 1 to every peer, …) instead of peer by peer.
    pub frame_major: bool,
    /// Cap on messages per round (UDP: what the receive buffers hold with margin).
    pub max_round_messages: usize,
    /// UDP receivers enable `UDP_GRO` (see `BenchOpts::udp_gro`).
    pub udp_gro: bool,
}

impl Spec {
    /// The scenario's sizes; `batch` overrides messages per flush for tcp-small and udp-gso.
    pub fn new(name: ScenarioName, batch: Option<usize>, quick: bool) -> Spec {
        let scale = if quick { 1 } else { 32 };
        let base = Spec {
            name,
            kind: Kind::Tcp,
            msg_size: 64,
            peers: 1,
            per_peer: 1,
            frame_major: false,
            max_round_messages: scale * 64 * 1024,
            udp_gro: false,
        };
        match name {
            // tls-small runs in its own harness (`crate::tls`); the spec is tcp-small's.
            ScenarioName::TcpSmall | ScenarioName::TlsSmall => Spec {
                per_peer: batch.unwrap_or(1024),
                ..base
            },
            ScenarioName::TcpFanout => Spec {
                peers: 64,
                per_peer: 16,
                ..base
            },
            ScenarioName::TcpBulk => Spec {
                msg_size: 64 * 1024,
                per_peer: 16,
                // 128 MiB (quick) or 1 GiB a round at most; rounds end on time before that.
                max_round_messages: if quick { 2 * 1024 } else { 16 * 1024 },
                ..base
            },
            ScenarioName::TcpLatency => base,
            ScenarioName::UdpGso => Spec {
                kind: Kind::UdpConnected,
                msg_size: 1200,
                per_peer: batch.unwrap_or(1024),
                // 32 Ki × 1200 B (≈ 80 MB of skb truesize) fits the 128 MiB receive buffer
                // even if the receiver drained nothing during the round.
                max_round_messages: if quick { 16 * 1024 } else { 32 * 1024 },
                ..base
            },
            ScenarioName::UdpFanout | ScenarioName::UdpRelay => Spec {
                kind: Kind::UdpUnconnected,
                msg_size: 172,
                peers: 256,
                per_peer: 16,
                frame_major: name == ScenarioName::UdpRelay,
                // Up to 512 per peer: well inside each peer's 4 MiB receive buffer.
                max_round_messages: if quick { 64 * 1024 } else { 128 * 1024 },
                ..base
            },
            ScenarioName::UdpLatency => Spec {
                kind: Kind::UdpConnected,
                msg_size: 172,
                // As udp-gso: well inside the 128 MiB receive buffer.
                max_round_messages: if quick { 16 * 1024 } else { 32 * 1024 },
                ..base
            },
        }
    }

    /// Messages per batch (per flush).
    pub fn batch_messages(&self) -> usize {
        self.peers * self.per_peer
    }

    /// A batch's messages in send order, as (peer, frame): the frame is the message's index
    /// among that peer's messages of the batch. Peer by peer, or frame-major (`frame_major`).
    #[inline]
    pub fn send_order(&self) -> impl Iterator<Item = (usize, usize)> {
        let (peers, per_peer, frame_major) = (self.peers, self.per_peer, self.frame_major);
        let (outer, inner) = if frame_major {
            (per_peer, peers)
        } else {
            (peers, per_peer)
        };
        (0..outer)
            .flat_map(move |o| (0..inner).map(move |i| if frame_major { (i, o) } else { (o, i) }))
    }

    /// Whether a batch is one message (the latency scenarios): batch latency is per message.
    pub fn is_per_message(&self) -> bool {
        self.batch_messages() == 1
    }

    /// Whether the scenario is TCP.
    pub fn is_tcp(&self) -> bool {
        self.kind == Kind::Tcp
    }
}

/// Messages in a pre-filled buffer; each message is a `Bytes` slice of it (no allocation).
#[derive(Debug, Clone)]
pub struct Payload {
    /// The buffer: 4096 messages (at most 8 MiB of them) back to back, filled with `pattern`.
    pub big: Bytes,
    /// Bytes per message.
    pub size: usize,
}

/// Messages in a payload, fewer where they would take more than `PAYLOAD_MAX_BYTES`.
const PAYLOAD_MESSAGES: usize = 4096;
const PAYLOAD_MAX_BYTES: usize = 8 << 20;

/// The byte at offset `i` of every stream: a period (251, prime) that no message size divides,
/// so a reordered, lost or repeated message breaks the pattern.
fn pattern(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap_or(0)
}

impl Payload {
    /// A payload of `size`-byte messages.
    pub fn new(size: usize) -> Payload {
        let messages = (PAYLOAD_MAX_BYTES / size.max(1)).clamp(1, PAYLOAD_MESSAGES);
        let big: Vec<u8> = (0..size * messages).map(pattern).collect();
        // A static buffer (leaked once per scenario, a few MiB): slicing and dropping a static
        // `Bytes` touches no reference count, so buffer ownership — an application cost that
        // differs per application — is measured for no method, and every method gets the same
        // slices.
        Payload {
            big: Bytes::from_static(Box::leak(big.into_boxed_slice())),
            size,
        }
    }

    /// How many messages the buffer holds.
    pub fn messages(&self) -> usize {
        self.big.len() / self.size
    }
}

/// The send side of one method: the payload plus a cursor per peer.
#[derive(Debug)]
pub struct Workload {
    /// The sizes.
    pub spec: Spec,
    /// The messages.
    pub payload: Payload,
    /// Next message offset into the payload, per peer.
    cursors: Vec<usize>,
    /// UDP destinations (unconnected), or the one peer (connected).
    pub dests: Vec<SocketAddr>,
}

impl Workload {
    fn new(spec: Spec, payload: Payload, dests: Vec<SocketAddr>) -> Workload {
        Workload {
            spec,
            payload,
            cursors: vec![0; spec.peers],
            dests,
        }
    }

    /// The next message for `peer`: a slice of the payload (a reference-count increment).
    #[inline]
    pub fn next(&mut self, peer: usize) -> Bytes {
        let (pos, size) = (self.advance(peer), self.payload.size);
        self.payload.big.slice(pos..pos + size)
    }

    /// The next message for `peer`, borrowed from the payload: for the methods whose writer
    /// takes `&[u8]` (`io::Write`, `AsyncWrite`) and copies or sends it at once, so that no
    /// method pays for a `Bytes` it does not need.
    #[inline]
    pub fn next_slice(&mut self, peer: usize) -> &[u8] {
        let (pos, size) = (self.advance(peer), self.payload.size);
        &self.payload.big[pos..pos + size]
    }

    /// Moves `peer`'s cursor one message on; returns where that message starts.
    #[inline]
    fn advance(&mut self, peer: usize) -> usize {
        let pos = self.cursors[peer];
        let next = pos + self.payload.size;
        self.cursors[peer] = if next == self.payload.big.len() {
            0
        } else {
            next
        };
        pos
    }

    /// Takes the next `n` messages for `peer` without slicing them out (for methods that
    /// address the payload themselves): returns the index of the first in the payload; the
    /// messages are that index and the `n - 1` after it, modulo [`Payload::messages`].
    pub fn skip(&mut self, peer: usize, n: usize) -> usize {
        let size = self.payload.size;
        let pos = self.cursors[peer];
        self.cursors[peer] = (pos + n % self.payload.messages() * size) % self.payload.big.len();
        pos / size
    }

    /// Up to `max` whole messages for `peer` as one contiguous slice (for GSO sends); returns
    /// the slice and how many messages it holds.
    pub fn next_run(&mut self, peer: usize, max: usize) -> (Bytes, usize) {
        let size = self.payload.size;
        let pos = self.cursors[peer];
        let left = (self.payload.big.len() - pos) / size;
        let n = max.min(left).max(1);
        let b = self.payload.big.slice(pos..pos + n * size);
        let next = pos + n * size;
        self.cursors[peer] = if next == self.payload.big.len() {
            0
        } else {
            next
        };
        (b, n)
    }
}

/// The sender-side sockets handed to a method.
#[derive(Debug)]
pub enum Conns {
    /// Connected TCP streams (TCP_NODELAY set), one per peer.
    Tcp(Vec<TcpStream>),
    /// One UDP socket: connected to the single peer, or unconnected for send_to.
    Udp(UdpSocket),
}

/// TCP receive buffer asked for on the listener (inherited by accepted connections, so the
/// window scale is negotiated for it).
const TCP_RCVBUF: usize = 16 << 20;
/// UDP receive buffers: one peer takes the whole udp-gso round; fan-out peers take 256 each.
const UDP_RCVBUF_SINGLE: usize = 128 << 20;
const UDP_RCVBUF_FANOUT: usize = 4 << 20;

/// Creates the sockets, starts the verifying receiver, and returns the sender side.
///
/// # Errors
/// Any socket setup failure, as text.
pub fn setup(spec: Spec, payload: &Payload) -> Result<(Conns, Receiver, Workload), String> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    match spec.kind {
        Kind::Tcp => {
            let listener = TcpListener::bind(loopback).map_err(|e| format!("bind: {e}"))?;
            grow_rcvbuf(&listener, TCP_RCVBUF);
            let at = listener
                .local_addr()
                .map_err(|e| format!("local_addr: {e}"))?;
            let mut clients = Vec::with_capacity(spec.peers);
            let mut servers = Vec::with_capacity(spec.peers);
            for _ in 0..spec.peers {
                let c = TcpStream::connect(at).map_err(|e| format!("connect: {e}"))?;
                c.set_nodelay(true)
                    .map_err(|e| format!("TCP_NODELAY: {e}"))?;
                let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
                clients.push(c);
                servers.push(s);
            }
            let rx = Receiver::tcp(servers, payload.big.clone())?;
            Ok((
                Conns::Tcp(clients),
                rx,
                Workload::new(spec, payload.clone(), Vec::new()),
            ))
        }
        Kind::UdpConnected | Kind::UdpUnconnected => {
            let rcvbuf = if spec.peers == 1 {
                UDP_RCVBUF_SINGLE
            } else {
                UDP_RCVBUF_FANOUT
            };
            let mut socks = Vec::with_capacity(spec.peers);
            let mut dests = Vec::with_capacity(spec.peers);
            for _ in 0..spec.peers {
                let s = UdpSocket::bind(loopback).map_err(|e| format!("bind: {e}"))?;
                grow_rcvbuf(&s, rcvbuf);
                dests.push(s.local_addr().map_err(|e| format!("local_addr: {e}"))?);
                socks.push(s);
            }
            let tx = UdpSocket::bind(loopback).map_err(|e| format!("bind: {e}"))?;
            if spec.kind == Kind::UdpConnected {
                tx.connect(dests[0]).map_err(|e| format!("connect: {e}"))?;
            }
            let rx = Receiver::udp(socks, spec.msg_size, spec.udp_gro)?;
            Ok((
                Conns::Udp(tx),
                rx,
                Workload::new(spec, payload.clone(), dests),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_order_peer_by_peer_or_frame_major() {
        let fanout = Spec::new(ScenarioName::UdpFanout, None, true);
        let relay = Spec::new(ScenarioName::UdpRelay, None, true);
        let f: Vec<_> = fanout.send_order().collect();
        let r: Vec<_> = relay.send_order().collect();
        assert_eq!(f.len(), 256 * 16);
        assert_eq!(r.len(), 256 * 16);
        assert_eq!(&f[..3], &[(0, 0), (0, 1), (0, 2)]);
        assert_eq!(&r[..3], &[(0, 0), (1, 0), (2, 0)]);
        assert_eq!(r[256], (0, 1));
        let (mut f, mut r) = (f, r);
        f.sort_unstable();
        r.sort_unstable();
        assert_eq!(f, r, "the same datagrams, in another order");
    }

    #[test]
    fn skip_takes_the_messages_next_would() {
        let spec = Spec::new(ScenarioName::TcpBulk, None, true);
        let payload = Payload::new(spec.msg_size);
        let m = payload.messages();
        assert!(m >= 16 && payload.big.len() <= PAYLOAD_MAX_BYTES);
        let mut a = Workload::new(spec, payload.clone(), Vec::new());
        let mut b = Workload::new(spec, payload.clone(), Vec::new());
        for n in [1, 5, m - 1, m, 2 * m + 3] {
            let first = a.skip(0, n);
            for i in 0..n {
                let want = b.next(0);
                let at = (first + i) % m * spec.msg_size;
                assert_eq!(
                    want,
                    payload.big.slice(at..at + spec.msg_size),
                    "n {n}, i {i}"
                );
            }
        }
    }
}

//! The four scenarios: what is sent, to how many sockets, and how it is grouped into batches.

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
    /// 1200-byte datagrams on one connected UDP socket (GSO territory).
    UdpGso,
    /// 172-byte datagrams to 256 peers through one unconnected UDP socket.
    UdpFanout,
}

impl ScenarioName {
    /// All scenarios in report order.
    pub const ALL: [ScenarioName; 4] = [
        ScenarioName::TcpSmall,
        ScenarioName::TcpFanout,
        ScenarioName::UdpGso,
        ScenarioName::UdpFanout,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioName::TcpSmall => "tcp-small",
            ScenarioName::TcpFanout => "tcp-fanout",
            ScenarioName::UdpGso => "udp-gso",
            ScenarioName::UdpFanout => "udp-fanout",
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
    /// Cap on messages per round (UDP: what the receive buffers hold with margin).
    pub max_round_messages: usize,
    /// UDP receivers enable `UDP_GRO` (see `BenchOpts::udp_gro`).
    pub udp_gro: bool,
}

impl Spec {
    /// The scenario's sizes; `batch` overrides messages per flush for tcp-small and udp-gso.
    pub fn new(name: ScenarioName, batch: Option<usize>, quick: bool) -> Spec {
        let scale = if quick { 1 } else { 32 };
        match name {
            ScenarioName::TcpSmall => Spec {
                name,
                kind: Kind::Tcp,
                msg_size: 64,
                peers: 1,
                per_peer: batch.unwrap_or(1024),
                max_round_messages: scale * 64 * 1024,
                udp_gro: false,
            },
            ScenarioName::TcpFanout => Spec {
                name,
                kind: Kind::Tcp,
                msg_size: 64,
                peers: 64,
                per_peer: 16,
                max_round_messages: scale * 64 * 1024,
                udp_gro: false,
            },
            ScenarioName::UdpGso => Spec {
                name,
                kind: Kind::UdpConnected,
                msg_size: 1200,
                peers: 1,
                per_peer: batch.unwrap_or(1024),
                // 32 Ki × 1200 B (≈ 80 MB of skb truesize) fits the 128 MiB receive buffer
                // even if the receiver drained nothing during the round.
                max_round_messages: if quick { 16 * 1024 } else { 32 * 1024 },
                udp_gro: false,
            },
            ScenarioName::UdpFanout => Spec {
                name,
                kind: Kind::UdpUnconnected,
                msg_size: 172,
                peers: 256,
                per_peer: 16,
                // Up to 512 per peer: well inside each peer's 4 MiB receive buffer.
                max_round_messages: if quick { 64 * 1024 } else { 128 * 1024 },
                udp_gro: false,
            },
        }
    }

    /// Messages per batch (per flush).
    pub fn batch_messages(&self) -> usize {
        self.peers * self.per_peer
    }

    /// Whether the scenario is TCP.
    pub fn is_tcp(&self) -> bool {
        self.kind == Kind::Tcp
    }
}

/// Messages in a pre-filled buffer; each message is a `Bytes` slice of it (no allocation).
#[derive(Debug, Clone)]
pub struct Payload {
    /// The buffer: `PAYLOAD_MESSAGES` messages back to back, filled with `pattern`.
    pub big: Bytes,
    /// Bytes per message.
    pub size: usize,
}

const PAYLOAD_MESSAGES: usize = 4096;

/// The byte at offset `i` of every stream: a period (251, prime) that no message size divides,
/// so a reordered, lost or repeated message breaks the pattern.
fn pattern(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap_or(0)
}

impl Payload {
    /// A payload of `size`-byte messages.
    pub fn new(size: usize) -> Payload {
        let big: Vec<u8> = (0..size * PAYLOAD_MESSAGES).map(pattern).collect();
        // A static buffer (leaked once per scenario, a few MiB): slicing and dropping a static
        // `Bytes` touches no reference count, so buffer ownership — an application cost that
        // differs per application — is measured for no method, and every method gets the same
        // slices.
        Payload {
            big: Bytes::from_static(Box::leak(big.into_boxed_slice())),
            size,
        }
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
        let size = self.payload.size;
        let pos = self.cursors[peer];
        let b = self.payload.big.slice(pos..pos + size);
        let next = pos + size;
        self.cursors[peer] = if next == self.payload.big.len() {
            0
        } else {
            next
        };
        b
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

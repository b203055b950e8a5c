//! Shared by the trace targets: `Arbitrary` mirrors of `volley::sim::Step` and of the engine's
//! limits (the volley crate does not depend on `arbitrary`).

#![allow(dead_code, reason = "each target uses its own part")]

use arbitrary::Arbitrary;
use volley::sim::{Cancel, Kind, SimConfig, Step, Verdict};

/// Steps a target runs at most.
pub const MAX_STEPS: usize = 512;

/// Stream ops the op-size cap alone may cut an input's sends into: `max_bytes_per_op` is raised
/// to the bytes the input sends divided by this. A 1-byte cap over the ~1 MB that 512 sends may
/// carry took a million ops (50 ms) per input and found nothing a cap below the write sizes over
/// fewer bytes does not; small caps stay reachable for inputs that send little.
pub const MAX_CUT_OPS: usize = 256;

/// Lengths: mostly small, sometimes at the GSO and staging edges.
pub fn len(l: u16) -> u16 {
    match l % 8 {
        0 => 0,
        1 => 1,
        2 => 1200,
        3 => 1500,
        _ => l % 2048,
    }
}

/// A public engine call (socket and port numbers are taken modulo what exists).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Call {
    Add(Sock),
    Send { sock: u8, len: u16 },
    SendTo { sock: u8, port: u8, len: u16 },
    Flush(u8),
    TryFlush(u8),
    FlushAll,
    Close(u8),
    Abort(u8),
    ShutdownWrite(u8),
    Submit,
    TakePeerErrors(u8),
}

impl Call {
    /// The bytes a send call asks for (0 for other calls).
    pub fn bytes(self) -> usize {
        match self {
            Call::Send { len: l, .. } | Call::SendTo { len: l, .. } => usize::from(len(l)),
            _ => 0,
        }
    }

    pub fn step(self) -> Step {
        match self {
            Call::Add(Sock::Stream) => Step::AddStream,
            Call::Add(Sock::Packet) => Step::AddPacket,
            Call::Add(Sock::Udp {
                connected,
                recverr,
                port,
            }) => Step::AddUdp {
                connected,
                recverr,
                port,
            },
            Call::Send { sock, len: l } => Step::Send { sock, len: len(l) },
            Call::SendTo { sock, port, len: l } => Step::SendTo {
                sock,
                port,
                len: len(l),
            },
            Call::Flush(sock) => Step::Flush { sock },
            Call::TryFlush(sock) => Step::TryFlush { sock },
            Call::FlushAll => Step::FlushAll,
            Call::Close(sock) => Step::Close { sock },
            Call::Abort(sock) => Step::Abort { sock },
            Call::ShutdownWrite(sock) => Step::ShutdownWrite { sock },
            Call::Submit => Step::Submit,
            Call::TakePeerErrors(sock) => Step::TakePeerErrors { sock },
        }
    }
}

/// What a peer does: stop reading, read again, reset, close or open a UDP port; or time passes.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Peer {
    Stall(u8),
    Unstall(u8),
    Reset { sock: u8, errno: u8 },
    ClosePort(u8),
    OpenPort(u8),
    Tick(u16),
}

impl Peer {
    pub fn step(self) -> Step {
        match self {
            Peer::Stall(sock) => Step::Stall { sock },
            Peer::Unstall(sock) => Step::Unstall { sock },
            Peer::Reset { sock, errno } => Step::Reset { sock, errno },
            Peer::ClosePort(port) => Step::ClosePort { port },
            Peer::OpenPort(port) => Step::OpenPort { port },
            Peer::Tick(us) => Step::Tick {
                us: u32::from(us) * 8,
            },
        }
    }
}

/// What the kernel or the caller does besides: flush timeouts, ENOBUFS, a verdict for the next
/// op, stale completions, dropping the engine.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Fault {
    FlushTimeout(Option<u16>),
    NoBufs { sock: u8, count: u8 },
    Verdict { sock: u8, kind: u8, n: u16 },
    Stale(u64),
    Drop,
}

impl Fault {
    pub fn step(self) -> Step {
        match self {
            Fault::FlushTimeout(ms) => Step::FlushTimeout {
                ms: ms.map(|m| if m == u16::MAX { m } else { m % 64 }),
            },
            Fault::NoBufs { sock, count } => Step::NoBufs { sock, count },
            Fault::Verdict { sock, kind, n } => Step::Verdict {
                sock,
                verdict: Verdict::from_byte(kind, n),
            },
            Fault::Stale(pick) => Step::Stale { pick },
            Fault::Drop => Step::Drop,
        }
    }
}

/// A socket registered before the first step.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Sock {
    Stream,
    /// A packet descriptor (TUN): one write per packet.
    Packet,
    Udp {
        connected: bool,
        recverr: bool,
        port: u8,
    },
}

impl Sock {
    pub fn kind(self) -> Kind {
        match self {
            Sock::Stream => Kind::Stream,
            Sock::Packet => Kind::Packet,
            Sock::Udp {
                connected,
                recverr,
                port,
            } => Kind::Udp {
                peer: connected.then(|| volley::sim::dest(9000 + u16::from(port % 8))),
                recverr,
            },
        }
    }
}

/// The engine's limits, small enough to be reached.
#[derive(Debug, Clone, Arbitrary)]
pub struct Limits {
    pub queued_bytes_per_socket: u16,
    pub queued_bytes: u16,
    pub queued_writes: u8,
    pub in_flight: u8,
    pub in_flight_per_socket: u8,
    pub iovecs: u8,
    pub bytes_per_op: u16,
    pub coalesce_below: u16,
    pub coalesce_max: u16,
    pub gso: bool,
    pub gso_segments: u8,
    pub gso_bytes: u16,
    pub nobufs_retries: u8,
}

impl Limits {
    /// The configuration; with `queues` false the queue limits stay out of reach. `sent`: the
    /// bytes the input's send calls ask for (see [`MAX_CUT_OPS`]).
    pub fn cfg(&self, queues: bool, sent: usize) -> SimConfig {
        let base = SimConfig {
            max_in_flight_ops: usize::from(self.in_flight % 16),
            max_in_flight_per_socket: usize::from(self.in_flight_per_socket % 8),
            max_iovecs_per_op: usize::from(self.iovecs % 8),
            max_bytes_per_op: usize::from(self.bytes_per_op).max(sent / MAX_CUT_OPS),
            coalesce_below_bytes: usize::from(self.coalesce_below % 700),
            coalesce_max_bytes: usize::from(self.coalesce_max % 5000),
            gso: self.gso,
            gso_max_segments: usize::from(self.gso_segments % 70),
            gso_max_bytes: usize::from(self.gso_bytes),
            nobufs_retries: self.nobufs_retries % 6,
            // Peer-error sampling (`EngineBuilder::sample_peer_errors`) from the byte's top bit,
            // which `% 6` above does not use up (the input layout stays as it was).
            peer_error_sampling: self.nobufs_retries >= 128,
            ..SimConfig::default()
        };
        if !queues {
            return base;
        }
        SimConfig {
            max_queued_bytes_per_socket: usize::from(self.queued_bytes_per_socket) * 4,
            max_queued_bytes: usize::from(self.queued_bytes) * 8,
            max_queued_writes_per_socket: usize::from(self.queued_writes),
            ..base
        }
    }
}

/// What a cancel does, from a byte.
pub fn cancel(b: u8) -> Cancel {
    [Cancel::Cancels, Cancel::Races, Cancel::Ignored][usize::from(b % 3)]
}

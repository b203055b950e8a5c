//! # volley — batched socket writes through io_uring, with flush barriers
//!
//! VPN tunnels, VoIP relays and telemetry shippers push huge numbers of small buffers into
//! sockets, and each `write()` is a user→kernel transition (~2 µs for 64 bytes on loopback TCP).
//! volley takes owned buffers ([`bytes::Bytes`]), queues them per socket, and carries whole
//! batches to the kernel in one io_uring submission: one coalesced `sendmsg` (an iovec array)
//! per TCP socket, one `sendmsg` per datagram or UDP GSO group. A flush barrier
//! ([`Engine::flush`], [`Engine::flush_all`]) returns only when every write queued before it has
//! completed, or failed with its error.
//!
//! Packet descriptors — a TUN/TAP device, a packet-mode pipe — take one packet per `write(2)`
//! ([`Engine::register_packet`]): each buffer is its own write (`IORING_OP_WRITE`), never
//! merged or split, and fails alone.
//!
//! Where io_uring is missing or blocked (old kernel, seccomp, `kernel.io_uring_disabled`),
//! [`Backend::Auto`] falls back to an epoll backend with the same semantics (`sendmsg` and
//! `sendmmsg` on non-blocking sockets) and records why ([`Engine::fallback_reason`]).
//!
//! ```no_run
//! use bytes::Bytes;
//! use volley::{Backend, Engine};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut engine = Engine::builder().backend(Backend::Auto).build()?;
//! let tcp = engine.register_tcp(std::net::TcpStream::connect("127.0.0.1:9000")?)?;
//! for i in 0..1000u32 {
//!     engine.send(tcp, Bytes::from(format!("message {i}\n")))?; // queued, returns at once
//! }
//! let report = engine.flush(tcp)?; // one sendmsg for all 1000, then the barrier
//! assert_eq!(report.writes, 1000);
//! println!("{} via {}", report.bytes, engine.backend());
//! # Ok(()) }
//! ```
//!
//! Guarantees (each tested on both backends): the engine owns a buffer until its final
//! completion; a stream's peer receives exactly the accepted bytes in order (a prefix on error);
//! datagrams are sent whole or fail alone; a barrier covers exactly the writes before it; queues
//! are bounded ([`Error::Backpressure`]); a fatal stream error poisons the socket; every send
//! carries `MSG_NOSIGNAL`.

#![warn(missing_docs)]

mod core;
mod engine;
mod error;
mod report;
mod stats;
mod sys;
mod writer;

/// The README's examples as doctests.
#[cfg(doctest)]
mod readme;

/// The batch planner (pure functions from queues to kernel ops): internal, reachable by fuzz
/// targets and tests through the `sim` feature or `cfg(fuzzing)`.
#[cfg(any(fuzzing, feature = "sim"))]
pub mod plan;
#[cfg(not(any(fuzzing, feature = "sim")))]
mod plan;

/// The simulated kernel and its reference model: internal, for tests and fuzz targets (the
/// `sim` feature or `cfg(fuzzing)`).
#[cfg(any(test, fuzzing, feature = "sim"))]
pub mod sim;

/// Async adapters for tokio (feature `tokio`): `AsyncWrite` and `Sink` senders whose flush is
/// the barrier, over one engine per thread.
#[cfg(feature = "tokio")]
pub mod tokio;

/// TLS over the engine with rustls (feature `tls`): writes queue plaintext, a flush encrypts it
/// into as few records as possible and hands the ciphertext to the engine as one batch.
#[cfg(feature = "tls")]
pub mod tls;

pub use bytes::Bytes;
pub use engine::{Backend, BackendKind, Engine, EngineBuilder, DEFAULT_ZEROCOPY_THRESHOLD};
pub use error::{Error, Limit, RegisterError, SendError, Status, TlsStatus, Unreachable};
pub use report::{FlushAllReport, FlushReport};
pub use stats::Stats;
pub use sys::uring::UringFeatures;
pub use writer::StreamWriter;

/// Kernel limits the engine plans with, for callers that size batches the same way.
pub mod limits {
    pub use crate::plan::{GSO_MAX_SEGMENTS, IOV_MAX, MAX_RW_COUNT, UDP_MAX_PAYLOAD};
}

/// A socket registered with an [`Engine`]. Generation-tagged: an id outlives its socket only as
/// an [`Error::UnknownSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    index: u32,
    gen: u32,
}

impl SocketId {
    pub(crate) fn new(index: u32, gen: u32) -> SocketId {
        SocketId { index, gen }
    }

    /// The slot index (stable while the socket is registered).
    pub fn index(self) -> u32 {
        self.index
    }
}

impl std::fmt::Display for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "socket#{}", self.index)
    }
}

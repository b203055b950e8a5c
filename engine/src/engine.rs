//! The public engine: builder, registration, send, submit, flush.

use std::fmt;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::{Clock, Config, Core, DgramQueue, Event, Planned, Queue, StreamQueue};
use crate::error::{Error, RegisterError, SendError, Unreachable};
use crate::report::{FlushAllReport, FlushReport};
use crate::stats::Stats;
use crate::sys::uring::{FastPaths, UringFeatures};
use crate::sys::{self, AnyDriver, Driver, FdKind, Wait};
use crate::SocketId;

/// Which backend to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// Probe io_uring once; fall back to epoll (recording why) if it cannot work.
    #[default]
    Auto,
    /// io_uring, or an error saying why not.
    Uring,
    /// epoll with `sendmsg`/`sendmmsg`.
    Epoll,
}

impl Backend {
    /// Reads `VOLLEY_BACKEND` (`auto`, `uring`/`io_uring`, `epoll`); `Auto` when unset.
    ///
    /// # Errors
    /// An unknown value is an error naming it.
    pub fn from_env() -> Result<Backend, Error> {
        match std::env::var("VOLLEY_BACKEND") {
            Ok(v) => v.parse(),
            Err(_) => Ok(Backend::Auto),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Backend, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            "epoll" => Ok(Backend::Epoll),
            _ => Err(Error::UringUnavailable {
                reason: format!("unknown backend {s:?} (expected auto, uring or epoll)"),
            }),
        }
    }
}

/// The backend an engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// io_uring.
    Uring,
    /// epoll.
    Epoll,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

/// Configures and builds an [`Engine`]. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    backend: Option<Backend>,
    ring_entries: u32,
    cfg: Config,
    gso: Option<bool>,
    flush_timeout: Option<Duration>,
    write_latency: u32,
    flush_latency: u32,
    /// io_uring fast-path switches set by the `uring_*` setters, in call order (they win over
    /// `VOLLEY_URING`).
    uring: Vec<(&'static str, bool)>,
    /// `zerocopy_threshold` as set (`None`: `VOLLEY_ZEROCOPY`, else the default).
    zerocopy: Option<Option<usize>>,
}

/// The default zero-copy threshold: off. Measured (docs/bench/zerocopy.md): on loopback, and on a
/// veth pair into another namespace (still local delivery), the kernel copies anyway and says so,
/// and zero-copy was 0.3–0.8× of a copying send from 1 KiB to 256 KiB: no crossover.
/// Real NICs with scatter-gather DMA are where published figures put the crossover near 3–8 KiB:
/// set it there with [`EngineBuilder::zerocopy_threshold`] after measuring.
pub const DEFAULT_ZEROCOPY_THRESHOLD: Option<usize> = None;

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            backend: None,
            ring_entries: 1024,
            cfg: Config::default(),
            gso: None,
            flush_timeout: None,
            write_latency: 16,
            flush_latency: 16,
            uring: Vec::new(),
            zerocopy: None,
        }
    }
}

impl EngineBuilder {
    /// A builder with the defaults.
    pub fn new() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Backend to use. Default: `VOLLEY_BACKEND` if set, else [`Backend::Auto`]. An explicit call
    /// wins over the environment.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = Some(b);
        self
    }

    /// Zero-copy stream sends (`IORING_OP_SEND_ZC`/`SENDMSG_ZC`, Linux 6.0/6.1) for ops of at
    /// least this many bytes; `None`: never. Default: `VOLLEY_ZEROCOPY` (`off`, or a byte count)
    /// if set, else [`DEFAULT_ZEROCOPY_THRESHOLD`] (off; see `docs/bench/zerocopy.md`).
    ///
    /// io_uring only (epoll has no zero-copy send), and only where the kernel has both opcodes
    /// ([`Engine::uring_features`] names `send_zc` as enabled, or refused with why). A zero-copy
    /// op's buffers stay owned by the engine until the kernel's notification, after its result
    /// was applied (a flush may return before it: the engine still owns them). A socket whose
    /// notification reports that the kernel copied anyway (loopback), or whose zero-copy send
    /// fails with `EOPNOTSUPP`/`EINVAL`/`ENOMEM` (the bytes are then sent again by copying),
    /// goes back to copying sends for good (`Stats::zc_copied`, `Stats::zc_fallbacks`). Each
    /// zero-copy op takes two completion-queue entries, so the in-flight cap is then at most
    /// half the completion queue.
    pub fn zerocopy_threshold(mut self, bytes: Option<usize>) -> Self {
        self.zerocopy = Some(bytes);
        self
    }

    /// Whether a socket goes back to copying sends once a notification reports that the
    /// kernel copied anyway. Default true; false keeps sending zero-copy (counted in
    /// `Stats::zc_copied`), which only serves to measure what zero-copy costs where the kernel
    /// copies (`bench/examples/zerocopy.rs`).
    pub fn zerocopy_adaptive(mut self, on: bool) -> Self {
        self.cfg.zerocopy_adaptive = on;
        self
    }

    /// Whether a blocking flush sends a lone op itself. Default true: when everything unsent
    /// on the flushed socket is one buffer (a stream's, or one datagram) and nothing is in
    /// flight anywhere, [`Engine::flush`] sends it with one `send(2)` (`sendto(2)` to an
    /// unconnected socket's destination) and, if it went out whole, reports at once — without
    /// the op machinery: ≈ 430 instructions per `send` + `flush` of one message against
    /// ≈ 1 940 on the general path (a plain `send()`: ≈ 105). Any other outcome (a short
    /// write, `EAGAIN`, an error) is applied as the completion of the op the general path
    /// would have issued, so reports and errors are the general path's (its stats count the
    /// direct try as one more transition, and an `EAGAIN` as a retry). False only to compare
    /// with the general path.
    pub fn solo_flush(mut self, on: bool) -> Self {
        self.cfg.solo_flush = on;
        self
    }

    /// The zero-copy threshold asked for: the setter, else `VOLLEY_ZEROCOPY`, else the default.
    fn zerocopy_wanted(&self) -> Result<Option<usize>, Error> {
        if let Some(z) = self.zerocopy {
            return Ok(z);
        }
        match std::env::var("VOLLEY_ZEROCOPY") {
            Ok(v) => match v.trim() {
                "off" | "" => Ok(None),
                n => n.parse().map(Some).map_err(|_| Error::UringUnavailable {
                    reason: format!("VOLLEY_ZEROCOPY={v}: expected `off` or a byte count"),
                }),
            },
            Err(_) => Ok(DEFAULT_ZEROCOPY_THRESHOLD),
        }
    }

    /// io_uring submission queue entries (the completion queue gets twice as many). Default 1024.
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.ring_entries = n.max(2);
        self
    }

    /// Bytes accepted and not yet terminal, per socket. Default 64 MiB.
    pub fn max_queued_bytes_per_socket(mut self, n: usize) -> Self {
        self.cfg.max_queued_bytes_per_socket = n;
        self
    }

    /// Bytes accepted and not yet terminal, over all sockets. Default 256 MiB.
    pub fn max_queued_bytes(mut self, n: usize) -> Self {
        self.cfg.max_queued_bytes = n;
        self
    }

    /// Writes accepted and not yet terminal, per socket. Default 1 Mi.
    pub fn max_queued_writes_per_socket(mut self, n: usize) -> Self {
        self.cfg.max_queued_writes_per_socket = n;
        self
    }

    /// Operations in flight over all sockets (io_uring additionally caps it at the CQ size).
    /// Default 1024.
    ///
    /// It bounds what is in the kernel at once, not what `send` accepts: writes beyond it wait
    /// queued (bounded by the queue limits, which are what refuse with
    /// [`Error::Backpressure`]). Each socket with nothing in flight may always issue one op, so
    /// stalled peers cannot take the slots a healthy socket needs.
    pub fn max_in_flight_ops(mut self, n: usize) -> Self {
        self.cfg.max_in_flight_ops = n;
        self
    }

    /// Operations in flight per socket (a stream never has more than one). Default 1024. Like
    /// [`EngineBuilder::max_in_flight_ops`], never a reason for `send` to refuse.
    pub fn max_in_flight_per_socket(mut self, n: usize) -> Self {
        self.cfg.max_in_flight_per_socket = n;
        self
    }

    /// iovecs per stream send, at most `IOV_MAX` (1024, the default).
    pub fn max_iovecs_per_op(mut self, n: usize) -> Self {
        self.cfg.max_iovecs_per_op = n;
        self
    }

    /// Bytes per stream send. Default 8 MiB; at most `MAX_RW_COUNT`.
    pub fn max_bytes_per_op(mut self, n: usize) -> Self {
        self.cfg.max_bytes_per_op = n;
        self
    }

    /// Stream writes of at most `n` bytes are copied, when they are queued, into a staging chunk
    /// (64 KiB) and their `Bytes` released at once: no queue entry per message, and a run of
    /// small writes costs the kernel one iovec (its per-iovec cost is far above a short memcpy).
    /// Bigger writes are queued by reference, never copied. 0 turns copying off. Default 512.
    pub fn coalesce_below(mut self, n: usize) -> Self {
        self.cfg.coalesce_below_bytes = n;
        self
    }

    /// UDP GSO. Default: on where the kernel supports it, unless `VOLLEY_GSO=0`. An explicit call
    /// wins over the environment (but cannot turn GSO on where the kernel lacks it).
    pub fn gso(mut self, on: bool) -> Self {
        self.gso = Some(on);
        self
    }

    /// Most GSO segments per send (2..=64). Default 64.
    pub fn gso_max_segments(mut self, n: usize) -> Self {
        self.cfg.gso_max_segments = n;
        self
    }

    /// `IP_RECVERR` (`IPV6_RECVERR`) on registered UDP sockets. Default on (as quinn-udp does).
    ///
    /// On: a datagram the local qdisc or device drops fails with `NoBufferSpace` (after a bounded
    /// backoff) instead of counting as sent — without it Linux swallows that `ENOBUFS` for UDP
    /// and the loss is silent; ICMP errors about sent datagrams are read from the error queue and
    /// reported with their destination ([`Engine::take_peer_errors`]); on an unconnected socket a
    /// datagram whose send picked up such an error about an earlier datagram is sent again
    /// rather than failed. Off: the kernel's default UDP behaviour.
    pub fn udp_recverr(mut self, on: bool) -> Self {
        self.cfg.recverr = on;
        self
    }

    /// Samples peer errors on the epoll backend instead of reading every one. Default off.
    ///
    /// On epoll, a destination that answers every datagram with an ICMP error costs a relay
    /// one `recvmmsg(MSG_ERRQUEUE)` per flush besides its `sendmmsg` (the error queue must be
    /// read before the next send, or that send fails with the socket's pending error): twice
    /// the transitions. Sampled, an unconnected socket whose reads keep finding reports (two
    /// flushes in a row) turns `IP_RECVERR` off for 64 flushes, then on again for a sample:
    /// a dead destination then costs about 1.1× the transitions of none (`relay_dead` example). What that gives
    /// up, while `IP_RECVERR` is off: ICMP errors are not reported (`peer_errors` and
    /// [`Engine::unreachable_destinations`] count only the samples), and **a datagram the
    /// local qdisc drops counts as sent** (Linux swallows that `ENOBUFS` for UDP without
    /// `IP_RECVERR`). Connected sockets are never sampled. No effect on io_uring, where the
    /// read rides in the same submission as the sends and costs nothing.
    pub fn sample_peer_errors(mut self, on: bool) -> Self {
        self.cfg.peer_error_sampling = on;
        self
    }

    /// A blocking flush (and `close`, `abort`, `shutdown_write`) that takes longer returns
    /// [`Error::FlushTimeout`] (writes stay queued). Default: none. `Duration::MAX` (or any
    /// value too large to add to the clock) means none; `Duration::ZERO` means "submit, reap
    /// once, then report": a flush succeeds if that was enough.
    pub fn flush_timeout(mut self, t: Duration) -> Self {
        self.flush_timeout = Some(t);
        self
    }

    /// Record the queued → terminal latency of one write in every `n` (`n = 1`: every write; `0`:
    /// none). Default 16: a clock read costs about as much as queueing a 64-byte write, so the
    /// histogram is a 1-in-16 systematic sample unless asked otherwise.
    pub fn write_latency_every(mut self, n: u32) -> Self {
        self.write_latency = n;
        self
    }

    /// Record the latency of one flush in every `n` (`n = 1`: every flush; `0`: none). Default
    /// 16: two clock reads and a histogram update are a measurable share of a flush that
    /// carries one message.
    pub fn flush_latency_every(mut self, n: u32) -> Self {
        self.flush_latency = n;
        self
    }

    // ---- io_uring fast paths ----------------------------------------------------------------
    //
    // Probed at `build` (a refusal is recorded, never an error); `VOLLEY_URING` and its
    // grammar: `UringFeatures`; the measurements behind the defaults: docs/bench/ablation.md.

    /// io_uring `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0): the kernel may skip the locking that
    /// several submitting threads need. **Default off**: the ring is bound to the thread that
    /// builds the engine, and driving the engine from any other thread (it is `Send`) then fails
    /// with [`Error::Io`] (`EEXIST`). Turn it on only for an engine that never leaves its thread.
    /// Also `VOLLEY_URING=single_issuer` (its grammar: [`UringFeatures`]).
    pub fn uring_single_issuer(mut self, on: bool) -> Self {
        self.uring.push(("single_issuer", on));
        self
    }

    /// io_uring `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1; brings `SINGLE_ISSUER` along, with its
    /// one-thread rule): completion work runs only when the engine enters the kernel to reap,
    /// batched. **Default off**: besides the one-thread rule, the engine's descriptor
    /// ([`AsFd`]) then does not become readable when a completion waits (kernel 6.18 measured:
    /// `poll(2)` sleeps through it), so an event loop driving the engine through
    /// [`Engine::try_flush`] and its descriptor would stall; the blocking calls work. Also
    /// `VOLLEY_URING=defer_taskrun`.
    pub fn uring_defer_taskrun(mut self, on: bool) -> Self {
        self.uring.push(("defer_taskrun", on));
        self
    }

    /// io_uring `IORING_SETUP_COOP_TASKRUN` with `IORING_SETUP_TASKRUN_FLAG` (Linux 5.19):
    /// completion work waits for the thread's next kernel entry instead of interrupting it, and
    /// the engine enters only when the kernel flags such work. No thread rule, and the
    /// descriptor still wakes event loops, but **default off**: no gain measured (sends mostly
    /// complete within the submitting call, which leaves no completion work to defer). Also
    /// `VOLLEY_URING=coop_taskrun`.
    pub fn uring_coop_taskrun(mut self, on: bool) -> Self {
        self.uring.push(("coop_taskrun", on));
        self
    }

    /// Registers the ring's descriptor (`IORING_REGISTER_RING_FDS`, Linux 5.18) so each
    /// `io_uring_enter` skips the descriptor lookup (measured: ~40-50 ns less per enter).
    /// Registered in the building thread's table, which holds 16 (more are refused and go
    /// without); on other threads the engine enters by the plain descriptor. An engine dropped
    /// on another thread cannot take its entry out: the ring stays allocated (its sockets are
    /// released) until the building thread exits. Default on. Also
    /// `VOLLEY_URING=-register_ring_fd`.
    pub fn uring_register_ring_fd(mut self, on: bool) -> Self {
        self.uring.push(("register_ring_fd", on));
        self
    }

    /// Registers each socket in a sparse file table (Linux 5.19) at its socket index, so its send
    /// ops skip the per-op file lookup and reference count (measured: ~50-100 ns less per op).
    /// The table starts at 64 entries and doubles, while nothing is in flight, up to 65 536 (or
    /// `RLIMIT_NOFILE`); a socket that does not fit then, or is refused, goes by its
    /// descriptor. Costs one `io_uring_register` per socket registered and removed. Default on.
    /// Also `VOLLEY_URING=-register_files`.
    pub fn uring_register_files(mut self, on: bool) -> Self {
        self.uring.push(("register_files", on));
        self
    }

    /// io_uring `IORING_SETUP_NO_SQARRAY` (Linux 6.6): no SQ index array. **Default off**: no
    /// gain measurable (it saves one load per SQE). Also `VOLLEY_URING=no_sqarray`.
    pub fn uring_no_sqarray(mut self, on: bool) -> Self {
        self.uring.push(("no_sqarray", on));
        self
    }

    /// The fast paths asked for: the defaults, then `VOLLEY_URING`, then the setters.
    fn uring_fast_paths(&self) -> Result<FastPaths, Error> {
        let mut fast = FastPaths::DEFAULT;
        if let Ok(v) = std::env::var("VOLLEY_URING") {
            fast = fast
                .apply_env(&v)
                .map_err(|reason| Error::UringUnavailable { reason })?;
        }
        for &(name, on) in &self.uring {
            fast.set(name, on);
        }
        Ok(fast)
    }

    /// Builds the engine.
    ///
    /// # Errors
    /// [`Error::UringUnavailable`] when io_uring was asked for (builder or `VOLLEY_BACKEND`) and
    /// cannot work, or `VOLLEY_URING` names an unknown fast path; [`Error::Io`] when epoll
    /// cannot be set up. A fast path the kernel refuses is not an error
    /// ([`Engine::uring_features`]).
    pub fn build(self) -> Result<Engine, Error> {
        let requested = match self.backend {
            Some(b) => b,
            None => Backend::from_env()?,
        };
        let fast = self.uring_fast_paths()?;
        let zerocopy = self.zerocopy_wanted()?;
        let base = Instant::now();
        let mut cfg = self.cfg.clamped();
        let gso_wanted = self.gso.unwrap_or_else(|| {
            std::env::var("VOLLEY_GSO")
                .map(|v| v.trim() != "0")
                .unwrap_or(true)
        });
        let gso_supported = sys::probe::udp_gso();
        cfg.gso = gso_wanted && gso_supported;
        // Epoll has no zero-copy send; the io_uring arm sets it where the kernel has it.
        cfg.zerocopy_threshold = None;
        let (driver, kind, reason) = match requested {
            Backend::Epoll => (
                AnyDriver::Epoll(sys::epoll::Epoll::new(base)?),
                BackendKind::Epoll,
                None,
            ),
            Backend::Uring | Backend::Auto => match sys::probe::uring(self.ring_entries, &fast) {
                Ok((ring, mut features)) => {
                    // The in-flight cap stays within the CQ; beyond it, each socket's one reserved
                    // op may exceed it, which IORING_FEAT_NODROP (5.5) absorbs.
                    let cq = ring.params().cq_entries() as usize;
                    cfg.max_in_flight_ops = cfg.max_in_flight_ops.min(cq);
                    if zerocopy.is_some() && features.is_enabled(sys::probe::SEND_ZC) {
                        // Two CQEs per zero-copy op (result, notification); an op counts in
                        // flight until its notification.
                        cfg.zerocopy_threshold = zerocopy;
                        cfg.max_in_flight_ops = cfg.max_in_flight_ops.min(cq / 2).max(1);
                    } else {
                        cfg.zerocopy_threshold = None;
                        features.enabled.retain(|n| *n != sys::probe::SEND_ZC);
                        if zerocopy.is_none() {
                            features.refused.retain(|(n, _)| *n != sys::probe::SEND_ZC);
                        }
                    }
                    // The error-queue reads ride in the submission: nothing to sample.
                    cfg.peer_error_sampling = false;
                    let u = sys::uring::Uring::new(ring, base, fast, features);
                    (AnyDriver::Uring(Box::new(u)), BackendKind::Uring, None)
                }
                Err(reason) if requested == Backend::Auto => {
                    // Reported through `Engine::fallback_reason`, not printed: the library
                    // never writes to stderr.
                    (
                        AnyDriver::Epoll(sys::epoll::Epoll::new(base)?),
                        BackendKind::Epoll,
                        Some(reason),
                    )
                }
                Err(reason) => return Err(Error::UringUnavailable { reason }),
            },
        };
        Ok(Engine::assemble(
            Core::new(cfg),
            driver,
            kind,
            reason,
            self.flush_timeout,
            self.write_latency,
            self.flush_latency,
        ))
    }
}

/// Batches owned buffers into few kernel transitions. See the crate docs for an example.
///
/// One thread drives an engine at a time (`Send`, not `Sync`). Two ways to drive it:
///
/// - **Blocking**: [`Engine::flush`], [`Engine::flush_all`], [`Engine::close`] wait inside the
///   engine (in `io_uring_enter` or `epoll_wait`) until their barrier resolves.
/// - **From an event loop**: [`Engine::submit`] and [`Engine::try_flush`] never block. The
///   engine's descriptor ([`AsFd`]) becomes readable when the engine can make progress (a
///   completion arrived, a socket that hit EAGAIN became writable); call `submit` or
///   `try_flush` then, and also once [`Engine::next_timeout`] has passed (an ENOBUFS backoff
///   ended). See the README's "Driving the engine from an event loop".
///
/// A barrier on one socket never waits for another socket: a stalled, poisoned or
/// backpressured neighbour does not delay it.
#[derive(Debug)]
pub struct Engine {
    pub(crate) core: Core,
    driver: AnyDriver,
    kind: BackendKind,
    reason: Option<String>,
    /// Owned sockets, by socket index.
    fds: Vec<Option<OwnedFd>>,
    flush_timeout: Option<Duration>,
    /// Sample one write latency in this many (0: off).
    write_latency: u32,
    /// Writes until the next sampled one.
    latency_countdown: u32,
    /// Sample one flush latency in this many (0: off).
    flush_latency: u32,
    /// Flushes until the next sampled one.
    flush_countdown: u32,
    /// Reused buffers: the ops planned for one `issue`, the events a driver reported, the
    /// entries of one error-queue read.
    batch: Vec<Planned>,
    events: Vec<Event>,
    errq: Vec<(Option<SocketAddr>, i32)>,
}

/// Error-queue entries read per visit; the rest wait for the next error.
const ERRQUEUE_BATCH: usize = 256;

/// How long `Drop` waits for cancelled ops before leaking their memory.
const DROP_DRAIN_NS: u64 = 2_000_000_000;

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Engine>();
};

impl Engine {
    /// A builder with the defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    pub(crate) fn assemble(
        core: Core,
        driver: AnyDriver,
        kind: BackendKind,
        reason: Option<String>,
        flush_timeout: Option<Duration>,
        write_latency: u32,
        flush_latency: u32,
    ) -> Engine {
        Engine {
            core,
            driver,
            kind,
            reason,
            fds: Vec::new(),
            flush_timeout,
            write_latency,
            latency_countdown: 0,
            flush_latency,
            flush_countdown: 0,
            batch: Vec::new(),
            events: Vec::new(),
            errq: Vec::new(),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Why `Auto` fell back to epoll, if it did (the library prints nothing).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The io_uring fast paths in effect, and those asked for (builder `uring_*` setters,
    /// `VOLLEY_URING`) but refused by the kernel, with why. Empty on epoll.
    pub fn uring_features(&self) -> &UringFeatures {
        static NONE: UringFeatures = UringFeatures {
            enabled: Vec::new(),
            refused: Vec::new(),
            kernel: Vec::new(),
            kernel_missing: Vec::new(),
        };
        match &self.driver {
            AnyDriver::Uring(u) => u.features(),
            _ => &NONE,
        }
    }

    /// Whether UDP GSO is on for new sockets (the kernel supports it and no switch turned it off).
    pub fn gso_enabled(&self) -> bool {
        self.core.cfg.gso
    }

    /// Takes `fd`; a refusal hands it back.
    fn add(
        &mut self,
        fd: OwnedFd,
        peer: Option<SocketAddr>,
        queue: Queue,
    ) -> Result<SocketId, (Error, OwnedFd)> {
        let raw = fd.as_raw_fd();
        let kind = match queue {
            Queue::Stream(_) => FdKind::Stream,
            Queue::Dgram(_) => FdKind::Dgram,
            Queue::Packet(_) => FdKind::Packet,
        };
        let id = self.core.add_socket(raw, peer, queue);
        if let Err(e) = self.driver.register(id.index, raw, kind) {
            let _ = self.core.remove_socket(id, 0);
            return Err((e, fd));
        }
        let i = id.index as usize;
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, || None);
        }
        self.fds[i] = Some(fd);
        Ok(id)
    }

    /// Takes a connected TCP stream. The engine owns it (and sets its blocking mode for the
    /// backend) until [`Engine::close`] hands it back.
    ///
    /// # Errors
    /// A refusal hands the stream back, open ([`RegisterError::into_inner`]):
    /// [`Error::UnsuitableSocket`] when it is not a connected TCP socket (a `TcpStream` can be
    /// made from any descriptor: a UDP socket, a listening or unconnected TCP socket);
    /// [`Error::Io`] when the backend cannot take it.
    pub fn register_tcp(
        &mut self,
        stream: TcpStream,
    ) -> Result<SocketId, RegisterError<TcpStream>> {
        if let Err(found) = sys::probe::unsuitable_socket(stream.as_fd(), true) {
            let error = Error::UnsuitableSocket {
                expected: "a connected TCP socket",
                found,
            };
            return Err(RegisterError::new(error, stream));
        }
        let peer = stream.peer_addr().ok();
        self.add(stream.into(), peer, Queue::Stream(StreamQueue::default()))
            .map_err(|(e, fd)| RegisterError::new(e, TcpStream::from(fd)))
    }

    /// Takes a UDP socket: connected (use [`Engine::send`]) or not (use [`Engine::send_to`]).
    ///
    /// The socket's address family is read once here: an unconnected IPv4 socket takes IPv4
    /// destinations; an IPv6 socket takes IPv6 ones and, unless `IPV6_V6ONLY` is set, IPv4 ones
    /// too (plain or IPv4-mapped). `send_to` refuses any other destination at once
    /// ([`Error::BadDestination`]). Set `IPV6_V6ONLY` before registering, not after.
    ///
    /// # Errors
    /// A refusal hands the socket back, open ([`RegisterError::into_inner`]):
    /// [`Error::UnsuitableSocket`] when it is not an IPv4 or IPv6 UDP socket; [`Error::Io`]
    /// when the backend cannot take it.
    pub fn register_udp(
        &mut self,
        socket: UdpSocket,
    ) -> Result<SocketId, RegisterError<UdpSocket>> {
        if let Err(found) = sys::probe::unsuitable_socket(socket.as_fd(), false) {
            let error = Error::UnsuitableSocket {
                expected: "a UDP socket",
                found,
            };
            return Err(RegisterError::new(error, socket));
        }
        let peer = socket.peer_addr().ok();
        let gso = self.core.cfg.gso;
        let (v6, v6only) = sys::msg::udp_family(&socket);
        let raw = socket.as_raw_fd();
        let id = self
            .add(socket.into(), peer, Queue::Dgram(DgramQueue::new(gso)))
            .map_err(|(e, fd)| RegisterError::new(e, UdpSocket::from(fd)))?;
        let recverr = self.core.cfg.recverr && sys::msg::set_recverr(raw, v6, true);
        // The socket was just added: these cannot fail.
        let _ = self.core.set_recverr(id, recverr);
        let _ = self.core.set_family(id, v6, v6only);
        Ok(id)
    }

    /// Takes a *packet descriptor*: any descriptor on which one `write(2)` is one packet — a
    /// TUN/TAP device (`/dev/net/tun` after `TUNSETIFF`), a pipe in packet mode (`O_DIRECT`),
    /// a character device with message semantics. The engine owns it (and sets its mode for
    /// the backend: `O_NONBLOCK` on both) until [`Engine::close`] hands it back. The flag
    /// belongs to the open file: a `dup` of the descriptor kept for reading becomes
    /// non-blocking too.
    ///
    /// [`Engine::send`] queues one packet; each goes out as its own `write(2)` (io_uring:
    /// `IORING_OP_WRITE`), never merged with another and never split, several in flight at once
    /// (up to `max_in_flight_per_socket`, as one linked chain on io_uring) and all
    /// descriptors' packets in one submission. [`Engine::send_to`] is refused
    /// ([`Error::WrongSocketKind`]). Queue limits, backpressure, flushes, `close`, `abort` and
    /// drop work as for sockets. Packets leave in the order they were queued, also while they
    /// wait for room (only one the kernel answers `EINTR` goes again behind the others).
    ///
    /// Outcomes, counted in the flush report per packet like datagrams: a packet the kernel
    /// refuses fails alone with its status (`EIO`: [`crate::Status::InputOutput`], what a TUN
    /// device answers while its interface is down; `EINVAL`: a malformed packet, e.g. not IPv4
    /// or IPv6 on a TUN device with `IFF_NO_PI`; `EMSGSIZE`, `ENOBUFS`, …) and the descriptor
    /// stays usable; a short write fails that packet ([`crate::Status::ShortWrite`], the rest
    /// is never written). A device that is gone (`EBADFD` from a deleted TUN device, `ENODEV`,
    /// `ENXIO`, `EBADF`) poisons the descriptor: queued packets fail with that error, later
    /// sends are refused with it, and flushes raise it ([`crate::Status::DeviceGone`]).
    ///
    /// # Errors
    /// A refusal hands the descriptor back, open ([`RegisterError::into_inner`]): [`Error::Io`]
    /// when it cannot be registered (its flags cannot be set).
    pub fn register_packet(&mut self, fd: OwnedFd) -> Result<SocketId, RegisterError<OwnedFd>> {
        self.add(fd, None, Queue::Packet(DgramQueue::new(false)))
            .map_err(|(e, fd)| RegisterError::new(e, fd))
    }

    /// Takes the *peer errors* the kernel reported since the last call about datagrams this
    /// UDP socket already sent: one [`Error::Peer`] per ICMP port, host or network unreachable,
    /// naming the destination it concerns ([`Error::peer`]). Those datagrams were sent and
    /// counted as sent; a peer error is what came back afterwards, so there may be fewer of
    /// them than datagrams lost (the kernel rate-limits ICMP; one GSO send draws at most one
    /// report per ICMP message). For a count per destination, see
    /// [`Engine::unreachable_destinations`].
    ///
    /// They come from the socket's error queue (`IP_RECVERR`, on unless
    /// `EngineBuilder::udp_recverr(false)`; without it there are none), which the engine reads
    /// when the kernel signals an error — a later send on the socket; entries that arrive after
    /// the last send wait in the queue until the next one. [`Stats::peer_errors`] counts them
    /// all; the socket keeps the first 4096 since the last call.
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn take_peer_errors(&mut self, id: SocketId) -> Result<Vec<Error>, Error> {
        self.core.take_peer_errors(id)
    }

    /// The ICMP reports per destination since the last call: the peer errors of
    /// [`Engine::take_peer_errors`] counted by destination and errno, one [`Unreachable`] each
    /// (in the order they were first reported), so a relay sees which destinations are dead
    /// without walking one entry per ICMP message. `reports` counts ICMP messages, not
    /// datagrams lost. At most 4096 destinations are kept between calls (reports about others
    /// are counted only in [`Stats::peer_errors`]). Independent of `take_peer_errors`: taking
    /// one leaves the other.
    ///
    /// To stop paying for a dead destination, stop sending to it: the engine sends whatever it
    /// is given.
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn unreachable_destinations(&mut self, id: SocketId) -> Result<Vec<Unreachable>, Error> {
        self.core.take_unreachable(id)
    }

    /// The queue timestamp for the next write: the clock for a sampled write, 0 otherwise.
    #[inline(always)]
    fn stamp(&mut self) -> u64 {
        if self.write_latency == 0 {
            return 0;
        }
        if self.latency_countdown == 0 {
            self.latency_countdown = self.write_latency - 1;
            self.driver.now_ns()
        } else {
            self.latency_countdown -= 1;
            0
        }
    }

    /// Queues a write on a TCP stream, a connected UDP socket or a packet descriptor (one
    /// packet: [`Engine::register_packet`]) and returns at once. Nothing is sent until
    /// [`Engine::submit`], [`Engine::try_flush`] or a flush.
    ///
    /// # Errors
    /// A refused write hands the buffer back ([`SendError::into_inner`]), unsent:
    /// [`Error::Backpressure`] at a queue limit (flush, then send the same buffer again); the
    /// socket's fatal error if it is poisoned; [`Error::UnknownSocket`],
    /// [`Error::WrongSocketKind`], [`Error::BufferTooLarge`].
    #[inline(always)]
    pub fn send(&mut self, id: SocketId, data: Bytes) -> Result<(), SendError> {
        let now = self.stamp();
        self.core.send(id, data, None, now)
    }

    /// Queues one datagram to `dest` on an unconnected UDP socket.
    ///
    /// With GSO on, a flush groups the datagrams queued on the socket by destination: those to
    /// one destination join one GSO send (equal sizes, the last may be shorter, ≤ 64 segments)
    /// even when datagrams to other destinations were queued between them; order is kept per
    /// destination, not across destinations.
    ///
    /// # Errors
    /// As [`Engine::send`], and [`Error::BadDestination`] for a destination the socket can never
    /// send to (the other address family, port 0, the unspecified address; see
    /// [`Engine::register_udp`]): refused at once, the buffer handed back, nothing queued.
    #[inline(always)]
    pub fn send_to(
        &mut self,
        id: SocketId,
        data: Bytes,
        dest: SocketAddr,
    ) -> Result<(), SendError> {
        let now = self.stamp();
        self.core.send(id, data, Some(dest), now)
    }

    // ---- the one orchestration, over any driver -------------------------------------------

    /// Applies what the driver reported, then serves what the core asked for in turn
    /// (writability watches, error-queue reads), and books the driver's transitions.
    fn absorb(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        loop {
            if !self.events.is_empty() {
                let driver = &self.driver;
                let read = || driver.now_ns();
                let mut clock = Clock::new(&read);
                for ev in self.events.drain(..) {
                    self.core.apply(ev, &mut clock);
                }
            }
            while let Some((idx, fd)) = self.core.take_errqueue() {
                self.errq.clear();
                self.driver
                    .read_errqueue(fd, ERRQUEUE_BATCH, &mut self.errq);
                for &(dest, errno) in &self.errq {
                    self.core.peer_error(idx, dest, errno);
                }
                let now_ns = self.driver.now_ns();
                self.core.errqueue_read(idx, self.errq.len(), now_ns);
            }
            while let Some((idx, fd)) = self.core.take_watch() {
                if let Err(e) = self.driver.watch_writable(idx, fd, &mut self.events) {
                    result = result.and(Err(e));
                }
            }
            if self.events.is_empty() {
                break;
            }
        }
        let t = self.driver.take_tally();
        self.core.stats.kernel_transitions += t.transitions;
        self.core.stats.batches += t.batches;
        self.core.stats.sqes += t.sqes;
        result
    }

    /// Hands every op that can go now to the driver (epoll: sent at once; io_uring: into the SQ
    /// for the next `enter`, or sent directly when it is alone), and again while the results
    /// make more ready — so nothing ready is left behind before a wait.
    fn pump(&mut self) -> Result<(), Error> {
        loop {
            if self.core.has_timers() {
                self.core.poll_timers(self.driver.now_ns());
            }
            self.batch.clear();
            self.core.begin_round();
            while let Some(p) = self.core.next_op() {
                self.batch.push(p);
            }
            if self.batch.is_empty() {
                return Ok(());
            }
            // IP_RECVERR back on (sampling) before the ops go out.
            self.switch_recverr();
            let issued = self.driver.issue(&self.core, &self.batch, &mut self.events);
            while let Some((idx, fd, n)) = self.core.take_errq_after() {
                let before = self.events.len();
                self.driver
                    .read_errqueue_after(idx, fd, n, &mut self.events);
                let read_now = self.events.len() - before;
                self.core.errq_after_read(idx, read_now);
            }
            // IP_RECVERR off (sampling) after the read that decided it.
            self.switch_recverr();
            self.absorb()?;
            issued?;
        }
    }

    /// Switches `IP_RECVERR` where peer-error sampling asked for it.
    fn switch_recverr(&mut self) {
        while let Some((idx, fd, v6, on)) = self.core.take_recverr_toggle() {
            if !self.driver.set_recverr(fd, v6, on) {
                self.core.recverr_toggle_failed(idx, on);
            }
        }
    }

    fn enter(&mut self, wait: Wait) -> Result<(), Error> {
        let entered = self.driver.enter(wait, &mut self.events);
        self.absorb()?;
        if let Err(Error::Io {
            errno: libc::EBADR, ..
        }) = entered
        {
            // The kernel dropped completions (io_uring CQ overflow): which ops still in flight
            // ended is unknown, and one whose completion was lost would stay pending forever.
            // Every op in flight is cancelled by its token: one still in the kernel ends
            // (cancelled, or with its result); one that is not there any more ends with
            // `CompletionLost` (the driver reports it), its memory then free of the kernel.
            self.core.stats.completion_losses += 1;
            let tokens = self.core.in_flight_tokens(None);
            let cancelled = self.driver.cancel(&tokens, &mut self.events);
            self.absorb()?;
            return cancelled;
        }
        entered
    }

    /// Submits and reaps until nothing more can go without waiting: on return nothing ready is
    /// left unsubmitted, so a caller that waits on the engine's descriptor misses nothing.
    fn progress(&mut self) -> Result<(), Error> {
        loop {
            self.pump()?;
            self.enter(Wait::No)?;
            if !self.core.has_ready() {
                return Ok(());
            }
        }
    }

    /// The deadline of a blocking call that starts now (driver clock), if `flush_timeout` is set
    /// and representable.
    fn deadline(&self) -> Option<u64> {
        let t = self.flush_timeout?;
        let ns = u64::try_from(t.as_nanos()).ok()?;
        self.driver.now_ns().checked_add(ns)
    }

    /// Drives the engine until `done`, blocking in the driver between steps; `Ok(false)` when
    /// the deadline passed first (after one last non-blocking step).
    fn drive_until(
        &mut self,
        deadline: Option<u64>,
        done: impl Fn(&Core) -> bool,
    ) -> Result<bool, Error> {
        loop {
            self.pump()?;
            if done(&self.core) {
                if !self.driver.idle() {
                    self.progress()?;
                }
                return Ok(true);
            }
            let wait = match deadline {
                Some(d) if self.driver.now_ns() >= d => Wait::No,
                _ => Wait::Until(earliest(deadline, self.core.next_timer())),
            };
            self.enter(wait)?;
            if done(&self.core) {
                self.progress()?;
                return Ok(true);
            }
            if wait == Wait::No {
                return Ok(false);
            }
        }
    }

    /// Blocks in the driver until `done`, issuing nothing new (what is queued for the kernel
    /// already, e.g. cancels, goes in); `Ok(false)` when the deadline passed first (after one
    /// last non-blocking reap).
    fn wait_until(
        &mut self,
        deadline: Option<u64>,
        done: impl Fn(&Core) -> bool,
    ) -> Result<bool, Error> {
        while !done(&self.core) {
            // No timer: a backoff that ends lets a write go, which is not this wait's to issue.
            let wait = match deadline {
                Some(d) if self.driver.now_ns() >= d => Wait::No,
                _ => Wait::Until(deadline),
            };
            self.enter(wait)?;
            if wait == Wait::No {
                return Ok(done(&self.core));
            }
        }
        Ok(true)
    }

    /// Hands everything pending on every socket to the kernel (one `io_uring_enter` on io_uring)
    /// and collects whatever has completed, without waiting for anything. The step an event
    /// loop takes when the engine's descriptor is readable or [`Engine::next_timeout`] passed.
    ///
    /// # Errors
    /// [`Error::Io`] when the backend's own system call fails.
    pub fn submit(&mut self) -> Result<(), Error> {
        self.progress()
    }

    /// How long an event loop may wait on the engine's descriptor before calling
    /// [`Engine::submit`] anyway: the time left until the earliest ENOBUFS backoff ends, or
    /// `None` when no timer is pending.
    pub fn next_timeout(&self) -> Option<Duration> {
        let at = self.core.next_timer()?;
        Some(Duration::from_nanos(
            at.saturating_sub(self.driver.now_ns()),
        ))
    }

    /// The flush barrier without blocking: submits what is pending, reaps what has completed,
    /// and returns `Some` with the report once every write accepted on `id` before the barrier
    /// is terminal. The barrier is set by the first call and kept by later ones until it
    /// resolves (writes queued in between are not covered: the next barrier covers them).
    ///
    /// # Errors
    /// As [`Engine::flush`] (never [`Error::FlushTimeout`]).
    pub fn try_flush(&mut self, id: SocketId) -> Result<Option<FlushReport>, Error> {
        if self.core.sock(id)?.barrier.is_none() {
            let target = self.core.barrier(id)?;
            self.core.set_barrier(id, Some(target))?;
        }
        if let Some(r) = self.core.resolve(id)? {
            return Ok(Some(r));
        }
        self.progress()?;
        self.core.resolve(id)
    }

    /// The flush barrier for one socket: returns when every write accepted on it before this
    /// call is terminal (sent or failed), with what happened to them since its previous flush.
    /// Other sockets never delay it.
    ///
    /// With one buffer (or one datagram) to send and no write pending on any other socket, it sends
    /// it itself with one `send(2)`/`sendto(2)` and, if it went out whole, returns at once
    /// ([`EngineBuilder::solo_flush`]); whatever else happens to it is the general path's.
    ///
    /// # Errors
    /// For a TCP stream, the first error of a failed write (the socket is then poisoned, and
    /// later flushes and sends fail the same way). For UDP, per-datagram failures are counted in
    /// the report, not raised; so are a packet descriptor's, unless its device is gone (then it
    /// is poisoned and its flushes raise that error). [`Error::FlushTimeout`] if a
    /// `flush_timeout` expired.
    pub fn flush(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        let start = self.flush_clock();
        if self.flush_solo(id)? {
            self.record_flush(start);
            return self.core.resolve_solo(id);
        }
        // Covers every write accepted so far, including any a pending `try_flush` left out.
        let target = self.core.barrier(id)?;
        self.core.set_barrier(id, Some(target))?;
        let deadline = self.deadline();
        let done = self.drive_until(deadline, |c| c.barrier_done(id, target).unwrap_or(true))?;
        if !done {
            return Err(Error::FlushTimeout { socket: Some(id) });
        }
        self.record_flush(start);
        match self.core.resolve(id)? {
            Some(r) => Ok(r),
            // Resolved by `drive_until`, so only an unknown socket lands here.
            None => Err(Error::UnknownSocket(id)),
        }
    }

    /// A flush's fast path for one op alone (`core/solo.rs`): when everything unsent on `id` is
    /// one buffer and no other socket has a write pending, the driver sends it at once (`send(2)`, or
    /// `sendto(2)` for one datagram to a destination); true when it went out whole (the barrier
    /// resolves now: [`Core::resolve_solo`]). False leaves the flush to the general path: when
    /// the case did not arise (nothing sent), or with any other result (a short write,
    /// `EAGAIN`, an error) applied as the completion of the op the general path would have
    /// issued — the same buffer — so the outcome is its own.
    #[inline]
    fn flush_solo(&mut self, id: SocketId) -> Result<bool, Error> {
        let Some(solo) = self.core.solo(id) else {
            return Ok(false);
        };
        let len = solo.buf.len();
        let Some(res) = self.driver.send_solo(&solo) else {
            return Ok(false);
        };
        // One system call, which carried the op unless it would have blocked.
        let stats = &mut self.core.stats;
        stats.kernel_transitions += 1;
        if res != -libc::EAGAIN {
            stats.batches += 1;
            stats.sqes += 1;
            stats.solo_sends += 1;
        }
        let driver = &self.driver;
        let read = || driver.now_ns();
        let mut clock = Clock::new(&read);
        if self.core.solo_sent(id, res, len, &mut clock) {
            return Ok(true);
        }
        match self.core.plan_solo(id) {
            Some(p) => self.events.push(Event::Done {
                token: p.token,
                res,
            }),
            // Cannot happen: nothing changed since `solo` found the op.
            None => debug_assert!(false, "the solo op of {id} could not be planned"),
        }
        self.absorb()?;
        Ok(false)
    }

    /// The flush barrier for the whole engine: every write accepted on any socket before this
    /// call is terminal. The report has every socket's outcome, poisoned streams included: one
    /// failing socket never hides another's.
    ///
    /// # Errors
    /// Only engine-level failures: [`Error::FlushTimeout`], [`Error::Io`]. Stream errors are in
    /// the report ([`FlushAllReport::errors`]; [`FlushAllReport::into_result`] raises the first).
    pub fn flush_all(&mut self) -> Result<FlushAllReport, Error> {
        let start = self.flush_clock();
        let ids: Vec<SocketId> = self
            .core
            .socket_indices()
            .map(|i| self.core.id_of(i))
            .collect();
        for &id in &ids {
            let target = self.core.barrier(id)?;
            self.core.set_barrier(id, Some(target))?;
        }
        let deadline = self.deadline();
        if !self.drive_until(deadline, |c| c.pending_writes() == 0)? {
            return Err(Error::FlushTimeout { socket: None });
        }
        self.record_flush(start);
        let mut all = FlushAllReport::default();
        for id in ids {
            self.core.set_barrier(id, None)?;
            let (r, raised) = self.core.take_report(id)?;
            all.push(id, raised, r);
        }
        Ok(all)
    }

    /// The start time of a flush whose latency is sampled (1 in `flush_latency_every`).
    #[inline]
    fn flush_clock(&mut self) -> Option<Instant> {
        if self.flush_latency == 0 {
            return None;
        }
        if self.flush_countdown == 0 {
            self.flush_countdown = self.flush_latency - 1;
            Some(Instant::now())
        } else {
            self.flush_countdown -= 1;
            None
        }
    }

    fn record_flush(&mut self, start: Option<Instant>) {
        if let Some(start) = start {
            let ns = u64::try_from(start.elapsed().as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            self.core.stats.flush_latency_ns.saturating_record(ns);
        }
    }

    /// Flushes the socket, then removes it from the engine and hands its descriptor back.
    ///
    /// # Errors
    /// As [`Engine::flush`]; the socket is removed (and closed) in every case but
    /// [`Error::FlushTimeout`] and [`Error::UnknownSocket`].
    pub fn close(&mut self, id: SocketId) -> Result<(FlushReport, OwnedFd), Error> {
        let r = self.flush(id);
        if matches!(r, Err(Error::FlushTimeout { .. } | Error::UnknownSocket(_))) {
            return Err(r.unwrap_err());
        }
        let fd = self.remove(id)?;
        r.map(|report| (report, fd))
    }

    /// Half-closes a TCP stream after its barrier: flushes, then `shutdown(SHUT_WR)`, so the peer
    /// reads every accepted byte and then EOF (never a FIN ahead of queued data). The socket stays
    /// registered (sends after it fail with `BrokenPipe`); `close` it when done.
    ///
    /// # Errors
    /// As [`Engine::flush`] (no shutdown then); [`Error::WrongSocketKind`] for UDP;
    /// [`Error::UnknownSocket`] also for a socket an `abort` that timed out left closing;
    /// [`Error::Io`] if `shutdown` fails.
    pub fn shutdown_write(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        if !self.core.is_stream(id)? {
            return Err(Error::WrongSocketKind {
                socket: id,
                expected: "a TCP stream",
            });
        }
        // A socket an `abort` left closing (it timed out) had writes cancelled: a FIN now would
        // end a stream the peer holds only a prefix of. Refused as `send` refuses it.
        if self.core.sock(id)?.closing {
            return Err(Error::UnknownSocket(id));
        }
        let report = self.flush(id)?;
        let fd = self.core.sock(id)?.fd;
        let r = self.driver.shutdown_write(fd);
        self.absorb()?;
        r?;
        Ok(report)
    }

    /// Drops a socket at once: queued writes fail as cancelled, writes in flight are cancelled in
    /// the kernel and waited for (their buffers are never freed early), then the socket closes.
    /// It issues nothing for other sockets (their queued writes wait for the next call that
    /// submits).
    ///
    /// # Errors
    /// [`Error::UnknownSocket`]; [`Error::FlushTimeout`] if the cancelled writes did not
    /// complete within `flush_timeout` (the socket stays registered, closing);
    /// [`Error::Io`] if the backend fails while draining.
    pub fn abort(&mut self, id: SocketId) -> Result<(), Error> {
        drop(self.remove(id)?);
        Ok(())
    }

    fn remove(&mut self, id: SocketId) -> Result<OwnedFd, Error> {
        let fd = self.core.sock(id)?.fd;
        self.core.cancel_queued(id, self.driver.now_ns())?;
        let deadline = self.deadline();
        loop {
            let left = self.core.sock(id)?.in_flight;
            if left == 0 {
                break;
            }
            let tokens = self.core.in_flight_tokens(Some(id.index));
            let cancelled = self.driver.cancel(&tokens, &mut self.events);
            self.absorb()?;
            cancelled?;
            // Until one of them ends, then cancel the rest again: an op linked behind
            // another (a packet chain on io_uring) cannot be cancelled before it starts,
            // which is when the one before it ends. Only waits: other sockets' ready writes
            // stay for the next call, as on epoll, where a socket waiting for room has nothing
            // in flight and nothing is waited for.
            let fewer = |c: &Core| c.sock(id).map(|s| s.in_flight < left).unwrap_or(true);
            if !self.wait_until(deadline, fewer)? {
                return Err(Error::FlushTimeout { socket: Some(id) });
            }
        }
        self.core.remove_socket(id, self.driver.now_ns())?;
        self.driver.deregister(id.index, fd);
        self.fds
            .get_mut(id.index as usize)
            .and_then(Option::take)
            .ok_or(Error::UnknownSocket(id))
    }

    /// Zero-copy sends whose result was applied and whose notification has not come: the
    /// engine still owns their buffers (the kernel may read them). Their op slots count against
    /// the in-flight caps; `close`, `abort` and dropping the engine wait for them.
    pub fn zerocopy_pending(&self) -> usize {
        self.core.notifs_pending()
    }

    /// Counters and histograms.
    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Resets counters and histograms.
    pub fn reset_stats(&mut self) {
        self.core.stats.reset();
    }

    /// Bytes accepted and not yet terminal on `id`.
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn queued_bytes(&self, id: SocketId) -> Result<usize, Error> {
        Ok(self.core.sock(id)?.queued_bytes)
    }

    /// Writes held in `id`'s queue, what `max_queued_writes_per_socket` counts: every write
    /// accepted and not yet terminal (empty ones too), and ended ones still behind an earlier
    /// write that has not ended (the queue lets them go in order).
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn queued_writes(&self, id: SocketId) -> Result<usize, Error> {
        Ok(self.core.sock(id)?.queue.writes())
    }

    /// Bytes accepted and not yet terminal, over all sockets.
    pub fn total_queued_bytes(&self) -> usize {
        self.core.queued_bytes()
    }

    /// Writes accepted and not yet terminal, over all sockets.
    pub fn pending_writes(&self) -> u64 {
        self.core.pending_writes()
    }

    /// The descriptor of a registered socket, to read from it (the engine only writes; TLS
    /// reads its peer's records this way). Its blocking mode is the backend's: blocking on
    /// io_uring, `O_NONBLOCK` on epoll.
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn socket_fd(&self, id: SocketId) -> Result<BorrowedFd<'_>, Error> {
        self.core.sock(id)?;
        self.fds
            .get(id.index as usize)
            .and_then(Option::as_ref)
            .map(AsFd::as_fd)
            .ok_or(Error::UnknownSocket(id))
    }

    /// Whether GSO is still on for this UDP socket (it turns off after EIO/EINVAL).
    ///
    /// # Errors
    /// [`Error::UnknownSocket`], [`Error::WrongSocketKind`] for a stream.
    pub fn socket_gso(&self, id: SocketId) -> Result<bool, Error> {
        match &self.core.sock(id)?.queue {
            Queue::Dgram(q) => Ok(q.gso && self.core.cfg.gso),
            Queue::Stream(_) | Queue::Packet(_) => Err(Error::WrongSocketKind {
                socket: id,
                expected: "a UDP socket",
            }),
        }
    }
}

#[cfg(any(test, fuzzing, feature = "sim"))]
impl Engine {
    /// An engine over the simulated kernel: the real orchestration and core, with `kernel` as
    /// the driver (tests and fuzz targets).
    pub fn with_sim(cfg: Config, kernel: crate::sim::kernel::SimKernel) -> Engine {
        let flush_timeout = None;
        let mut cfg = cfg.clamped();
        if kernel.handle().mode() == crate::sim::kernel::Mode::Epoll {
            // As `build` does: epoll has no zero-copy send.
            cfg.zerocopy_threshold = None;
        }
        Engine::assemble(
            Core::with_stats(cfg, crate::stats::Stats::sim()),
            AnyDriver::Sim(Box::new(kernel)),
            BackendKind::Uring,
            None,
            flush_timeout,
            1,
            1,
        )
    }

    /// Registers a simulated socket: a stream, a connected datagram socket (`peer` set) or an
    /// unconnected one. Its descriptor is a placeholder (`/dev/null`); the simulated kernel
    /// knows the socket by its index.
    ///
    /// # Errors
    /// [`Error::Io`] if the placeholder cannot be opened.
    pub fn register_sim(
        &mut self,
        stream: bool,
        peer: Option<SocketAddr>,
        recverr: bool,
    ) -> Result<SocketId, Error> {
        let fd =
            crate::sim::kernel::placeholder_fd().map_err(|e| Error::io("open(/dev/null)", &e))?;
        let queue = if stream {
            Queue::Stream(StreamQueue::default())
        } else {
            Queue::Dgram(DgramQueue::new(self.core.cfg.gso))
        };
        let id = self.add(fd, peer, queue).map_err(|(e, _fd)| e)?;
        self.core.set_recverr(id, recverr && !stream)?;
        Ok(id)
    }

    /// Registers a simulated packet descriptor (a placeholder descriptor, as
    /// [`Engine::register_sim`]).
    ///
    /// # Errors
    /// [`Error::Io`] if the placeholder cannot be opened.
    pub fn register_sim_packet(&mut self) -> Result<SocketId, Error> {
        let fd =
            crate::sim::kernel::placeholder_fd().map_err(|e| Error::io("open(/dev/null)", &e))?;
        self.register_packet(fd).map_err(Error::from)
    }

    /// Sets the flush timeout (simulated clock).
    pub fn set_flush_timeout(&mut self, t: Option<Duration>) {
        self.flush_timeout = t;
    }

    /// The simulated kernel.
    ///
    /// # Panics
    /// If the engine does not run on the simulated kernel.
    pub fn sim_kernel(&mut self) -> &mut crate::sim::kernel::SimKernel {
        match &mut self.driver {
            AnyDriver::Sim(k) => k,
            _ => panic!("not a simulated engine"),
        }
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl AsFd for Engine {
    /// Readable when the engine can make progress: io_uring's ring descriptor (a completion
    /// is waiting), or the epoll descriptor (a socket that hit EAGAIN became writable).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.driver.fd()
    }
}

impl AsRawFd for Engine {
    fn as_raw_fd(&self) -> RawFd {
        self.driver.fd().as_raw_fd()
    }
}

impl Drop for Engine {
    /// Cancels queued writes, cancels and drains writes in flight (up to 2 s), and if the kernel
    /// still holds some, leaks their memory rather than freeing what it may read.
    fn drop(&mut self) {
        let now = self.driver.now_ns();
        let ids: Vec<SocketId> = self
            .core
            .socket_indices()
            .map(|i| self.core.id_of(i))
            .collect();
        for id in ids {
            let _ = self.core.cancel_queued(id, now);
        }
        if self.core.in_flight() == 0 {
            return;
        }
        let deadline = now.saturating_add(DROP_DRAIN_NS);
        let mut left = usize::MAX;
        while self.core.in_flight() > 0 && self.driver.now_ns() < deadline {
            if self.core.in_flight() < left {
                // Again after each completion: an op linked behind another (a packet chain on
                // io_uring) can be cancelled only once it started.
                left = self.core.in_flight();
                let tokens = self.core.in_flight_tokens(None);
                let _ = self.driver.cancel(&tokens, &mut self.events);
                let _ = self.absorb();
                continue;
            }
            if self.enter(Wait::Until(Some(deadline))).is_err() {
                break;
            }
        }
        if self.core.in_flight() > 0 {
            self.core.leak_in_flight();
            self.driver.leak();
        }
    }
}

//! The public engine: builder, registration, send, submit, flush.

use std::fmt;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::{Config, Core, DgramQueue, Queue, StreamQueue};
use crate::error::Error;
use crate::report::FlushReport;
use crate::stats::Stats;
use crate::sys::{self, nanos_since, Driver, Wait};
use crate::SocketId;

/// Which backend to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            backend: None,
            ring_entries: 1024,
            cfg: Config::default(),
            gso: None,
            flush_timeout: None,
            write_latency: 16,
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
    pub fn max_in_flight_ops(mut self, n: usize) -> Self {
        self.cfg.max_in_flight_ops = n;
        self
    }

    /// Operations in flight per socket (a stream never has more than one). Default 1024.
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

    /// Stream writes of at most `n` bytes are copied into one contiguous run per op (up to 256 KiB
    /// per op), so the kernel sees one iovec for a run of small writes instead of one each: the
    /// kernel's per-iovec cost is far above a short memcpy. 0 turns copying off. Default 512.
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

    /// A flush that takes longer returns [`Error::FlushTimeout`] (writes stay queued). Default: none.
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

    /// Builds the engine.
    ///
    /// # Errors
    /// [`Error::UringUnavailable`] when io_uring was asked for (builder or `VOLLEY_BACKEND`) and
    /// cannot work; [`Error::Io`] when epoll cannot be set up.
    pub fn build(self) -> Result<Engine, Error> {
        let requested = match self.backend {
            Some(b) => b,
            None => Backend::from_env()?,
        };
        let base = Instant::now();
        let mut cfg = self.cfg.clamped();
        let gso_wanted = self.gso.unwrap_or_else(|| {
            std::env::var("VOLLEY_GSO")
                .map(|v| v.trim() != "0")
                .unwrap_or(true)
        });
        let gso_supported = sys::probe::udp_gso();
        cfg.gso = gso_wanted && gso_supported;
        let (driver, kind, reason) = match requested {
            Backend::Epoll => (
                Driver::Epoll(sys::epoll::Epoll::new(base)?),
                BackendKind::Epoll,
                None,
            ),
            Backend::Uring | Backend::Auto => match sys::probe::uring(self.ring_entries) {
                Ok(ring) => {
                    let u = sys::uring::Uring::new(ring, base);
                    cfg.max_in_flight_ops = cfg.max_in_flight_ops.min(u.cq_entries());
                    (Driver::Uring(Box::new(u)), BackendKind::Uring, None)
                }
                Err(reason) if requested == Backend::Auto => {
                    eprintln!("volley: io_uring unavailable, using epoll: {reason}");
                    (
                        Driver::Epoll(sys::epoll::Epoll::new(base)?),
                        BackendKind::Epoll,
                        Some(reason),
                    )
                }
                Err(reason) => return Err(Error::UringUnavailable { reason }),
            },
        };
        Ok(Engine {
            core: Core::new(cfg),
            driver,
            kind,
            reason,
            base,
            fds: Vec::new(),
            flush_timeout: self.flush_timeout,
            write_latency: self.write_latency,
            latency_countdown: 0,
        })
    }
}

/// Batches owned buffers into few kernel transitions. See the crate docs for an example.
///
/// Single-threaded: one thread drives it (`Send`, not `Sync`).
#[derive(Debug)]
pub struct Engine {
    core: Core,
    driver: Driver,
    kind: BackendKind,
    reason: Option<String>,
    base: Instant,
    /// Owned sockets, by socket index.
    fds: Vec<Option<OwnedFd>>,
    flush_timeout: Option<Duration>,
    /// Sample one write latency in this many (0: off).
    write_latency: u32,
    /// Writes until the next sampled one.
    latency_countdown: u32,
}

impl Engine {
    /// A builder with the defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Why `Auto` fell back to epoll, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether UDP GSO is on for new sockets (the kernel supports it and no switch turned it off).
    pub fn gso_enabled(&self) -> bool {
        self.core.cfg.gso
    }

    fn add(
        &mut self,
        fd: OwnedFd,
        peer: Option<SocketAddr>,
        queue: Queue,
    ) -> Result<SocketId, Error> {
        let raw = fd.as_raw_fd();
        let stream = matches!(queue, Queue::Stream(_));
        let id = self.core.add_socket(raw, peer, queue);
        if let Err(e) = self.driver.register(id.index, raw, stream) {
            let _ = self.core.remove_socket(id, 0);
            return Err(e);
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
    /// [`Error::Io`] when the socket cannot be registered (e.g. epoll_ctl fails).
    pub fn register_tcp(&mut self, stream: TcpStream) -> Result<SocketId, Error> {
        let peer = stream.peer_addr().ok();
        self.add(stream.into(), peer, Queue::Stream(StreamQueue::default()))
    }

    /// Takes a UDP socket: connected (use [`Engine::send`]) or not (use [`Engine::send_to`]).
    ///
    /// # Errors
    /// As [`Engine::register_tcp`].
    pub fn register_udp(&mut self, socket: UdpSocket) -> Result<SocketId, Error> {
        let peer = socket.peer_addr().ok();
        let gso = self.core.cfg.gso;
        let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let recverr = self.core.cfg.recverr && sys::msg::set_recverr(socket.as_raw_fd(), v6);
        let id = self.add(socket.into(), peer, Queue::Dgram(DgramQueue::new(gso)))?;
        self.core.set_recverr(id, recverr)?;
        Ok(id)
    }

    /// Takes the errors the kernel reported since the last call about datagrams this UDP socket
    /// already sent — ICMP port, host or network unreachable, each naming the destination it
    /// concerns (`Error::peer`). They come from the socket's error queue (`IP_RECVERR`, on unless
    /// `EngineBuilder::udp_recverr(false)`), which the engine reads when the kernel signals an
    /// error; [`Stats::peer_errors`] counts them all; the socket keeps the first 4096 since the last call.
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn take_peer_errors(&mut self, id: SocketId) -> Result<Vec<Error>, Error> {
        self.core.take_peer_errors(id)
    }

    /// The queue timestamp for the next write: the clock for a sampled write, 0 otherwise.
    #[inline]
    fn stamp(&mut self) -> u64 {
        if self.write_latency == 0 {
            return 0;
        }
        if self.latency_countdown == 0 {
            self.latency_countdown = self.write_latency - 1;
            nanos_since(self.base)
        } else {
            self.latency_countdown -= 1;
            0
        }
    }

    fn now(&self) -> u64 {
        nanos_since(self.base)
    }

    /// Queues a write on a TCP stream or a connected UDP socket and returns at once. Nothing is
    /// sent until [`Engine::submit`] or a flush.
    ///
    /// # Errors
    /// [`Error::Backpressure`] at a queue limit (flush, then send again); the socket's fatal error
    /// if it is poisoned; [`Error::UnknownSocket`], [`Error::WrongSocketKind`],
    /// [`Error::BufferTooLarge`].
    #[inline]
    pub fn send(&mut self, id: SocketId, data: Bytes) -> Result<(), Error> {
        let now = self.stamp();
        self.core.send(id, data, None, now)
    }

    /// Queues one datagram to `dest` on an unconnected UDP socket.
    ///
    /// # Errors
    /// As [`Engine::send`].
    #[inline]
    pub fn send_to(&mut self, id: SocketId, data: Bytes, dest: SocketAddr) -> Result<(), Error> {
        let now = self.stamp();
        self.core.send(id, data, Some(dest), now)
    }

    /// Hands everything pending on every socket to the kernel (one `io_uring_enter` on io_uring)
    /// and collects whatever has completed, without waiting.
    ///
    /// # Errors
    /// [`Error::Io`] when the backend's own system call fails.
    pub fn submit(&mut self) -> Result<(), Error> {
        self.driver.submit(&mut self.core, Wait::No)
    }

    fn wait_until(
        &mut self,
        done: impl Fn(&Core) -> bool,
        socket: Option<SocketId>,
    ) -> Result<(), Error> {
        let deadline = self.flush_timeout.map(|t| Instant::now() + t);
        while !done(&self.core) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::FlushTimeout { socket });
            }
            self.driver.submit(&mut self.core, Wait::Until(deadline))?;
        }
        Ok(())
    }

    /// The flush barrier for one socket: returns when every write accepted on it before this
    /// call is terminal (sent or failed), with what happened to them since its previous flush.
    ///
    /// # Errors
    /// For a TCP stream, the first error of a failed write (the socket is then poisoned, and
    /// later flushes and sends fail the same way). For UDP, per-datagram failures are counted in
    /// the report, not raised. [`Error::FlushTimeout`] if a `flush_timeout` expired.
    pub fn flush(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        let start = Instant::now();
        let target = self.core.barrier(id)?;
        self.wait_until(|c| c.barrier_done(id, target).unwrap_or(true), Some(id))?;
        self.record_flush(start);
        let report = self.core.take_report(id)?;
        if self.core.is_stream(id)? {
            if let Some(e) = &report.first_error {
                return Err(e.clone());
            }
        }
        Ok(report)
    }

    /// The flush barrier for the whole engine: every write accepted on any socket before this
    /// call is terminal. The report sums all sockets.
    ///
    /// # Errors
    /// The first stream error, as [`Engine::flush`].
    pub fn flush_all(&mut self) -> Result<FlushReport, Error> {
        let start = Instant::now();
        self.wait_until(|c| c.pending_writes() == 0, None)?;
        self.record_flush(start);
        let mut total = FlushReport::default();
        let mut stream_error = None;
        let ids: Vec<SocketId> = self
            .core
            .socket_indices()
            .map(|i| self.core.id_of(i))
            .collect();
        for id in ids {
            let r = self.core.take_report(id)?;
            if stream_error.is_none() && self.core.is_stream(id)? {
                stream_error = r.first_error.clone();
            }
            total.merge(r);
        }
        match stream_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    fn record_flush(&mut self, start: Instant) {
        let ns = u64::try_from(start.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.core.stats.flush_latency_ns.saturating_record(ns);
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
    /// [`Error::Io`] if `shutdown` fails.
    pub fn shutdown_write(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        if !self.core.is_stream(id)? {
            return Err(Error::WrongSocketKind {
                socket: id,
                expected: "a TCP stream",
            });
        }
        let report = self.flush(id)?;
        sys::shutdown_write(self.core.sock(id)?.fd)?;
        Ok(report)
    }

    /// Drops a socket at once: queued writes fail as cancelled, writes in flight are cancelled in
    /// the kernel and waited for (their buffers are never freed early), then the socket closes.
    ///
    /// # Errors
    /// [`Error::UnknownSocket`]; [`Error::Io`] if the backend fails while draining.
    pub fn abort(&mut self, id: SocketId) -> Result<(), Error> {
        drop(self.remove(id)?);
        Ok(())
    }

    fn remove(&mut self, id: SocketId) -> Result<OwnedFd, Error> {
        let fd = self.core.sock(id)?.fd;
        self.core.cancel_queued(id, self.now())?;
        if self.core.sock(id)?.in_flight > 0 {
            self.driver.cancel(&mut self.core, Some(fd))?;
            self.wait_until(
                |c| c.sock(id).map(|s| s.in_flight == 0).unwrap_or(true),
                Some(id),
            )?;
        }
        self.core.remove_socket(id, self.now())?;
        self.driver.deregister(fd);
        self.fds
            .get_mut(id.index as usize)
            .and_then(Option::take)
            .ok_or(Error::UnknownSocket(id))
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

    /// Bytes accepted and not yet terminal, over all sockets.
    pub fn total_queued_bytes(&self) -> usize {
        self.core.queued_bytes()
    }

    /// Writes accepted and not yet terminal, over all sockets.
    pub fn pending_writes(&self) -> u64 {
        self.core.pending_writes()
    }

    /// Whether GSO is still on for this UDP socket (it turns off after EIO/EINVAL).
    ///
    /// # Errors
    /// [`Error::UnknownSocket`], [`Error::WrongSocketKind`] for a stream.
    pub fn socket_gso(&self, id: SocketId) -> Result<bool, Error> {
        match &self.core.sock(id)?.queue {
            Queue::Dgram(q) => Ok(q.gso && self.core.cfg.gso),
            Queue::Stream(_) => Err(Error::WrongSocketKind {
                socket: id,
                expected: "a UDP socket",
            }),
        }
    }
}

impl Drop for Engine {
    /// Cancels queued writes, cancels and drains writes in flight (up to 2 s), and if the kernel
    /// still holds some, leaks their memory rather than freeing what it may read.
    fn drop(&mut self) {
        let now = self.now();
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
        let _ = self.driver.cancel(&mut self.core, None);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.core.in_flight() > 0 && Instant::now() < deadline {
            if self
                .driver
                .submit(&mut self.core, Wait::Until(Some(deadline)))
                .is_err()
            {
                break;
            }
        }
        if self.core.in_flight() > 0 {
            self.core.leak_in_flight();
            self.driver.leak();
        }
    }
}

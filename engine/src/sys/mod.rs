//! Drivers: the only code that calls the kernel.
//!
//! A [`Driver`] takes planned operations (with their payload slices and addresses, read from the
//! core) and reports back [`Event`]s — completions as plain data — plus a [`Tally`] of the kernel
//! transitions it made. It holds no policy and writes no core state: requeueing, error
//! attribution, writability, error-queue reads and GSO fallback are the core's decisions, and
//! flush, close, abort, backoff and timeouts are the engine's one orchestration
//! (`engine/src/engine.rs`), the same over every driver:
//!
//! - [`uring`]: blocking sockets (the ring arms poll instead of failing with EAGAIN), all ops in
//!   the SQ and one `io_uring_enter` that submits them and, when asked, waits; packet
//!   descriptors `O_NONBLOCK` (see `Uring::register`), one `IORING_OP_WRITE` per packet, a
//!   descriptor's packets of one round linked (`IOSQE_IO_HARDLINK`) so they keep their order;
//! - [`epoll`]: `O_NONBLOCK` sockets, one `sendmsg` per stream op and one `sendmmsg` per
//!   socket's datagrams, one `write` per packet, completed at once; `epoll_wait` for sockets
//!   that hit EAGAIN;
//! - `sim` (feature `sim` or `cfg(fuzzing)`): a simulated kernel for tests and fuzz targets.
//!
//! Socket mode per backend is the driver's (`register`).

pub(crate) mod epoll;
pub(crate) mod msg;
pub(crate) mod probe;
#[cfg(feature = "tokio")]
pub(crate) mod tokio;
pub(crate) mod uring;
#[cfg(feature = "tls")]
pub(crate) mod wait;

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};

use crate::core::{Core, Event, Planned, Solo, Token};
use crate::error::Error;

/// Transitions and ops a driver made; the engine adds them to its `Stats`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// System calls (`io_uring_enter`, `sendmsg`, `sendmmsg`, `epoll_wait`, `epoll_ctl`,
    /// error-queue `recvmsg`).
    pub transitions: u64,
    /// Transitions that carried at least one send op.
    pub batches: u64,
    /// Send ops handed to the kernel.
    pub sqes: u64,
}

/// Entries a default [`Driver::read_errqueue_after`] reads at most (one `recvmmsg`).
const ERRQUEUE_AFTER_MIN: usize = 64;
/// What a registered descriptor is, for the mode a driver puts it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A TCP stream.
    Stream,
    /// A UDP socket.
    Dgram,
    /// A packet descriptor (TUN/TAP, a packet-mode pipe): one `write(2)` per packet.
    Packet,
}

/// How long [`Driver::enter`] may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Hand over and reap what is ready; never block.
    No,
    /// Block until at least one event, or until the deadline (driver clock, ns; `None`: none).
    Until(Option<u64>),
}

/// The contract every backend (and the simulated kernel) implements.
pub(crate) trait Driver {
    /// Puts the socket (or packet descriptor) in the mode the driver needs and starts tracking
    /// it.
    fn register(&mut self, sock: u32, fd: RawFd, kind: FdKind) -> Result<(), Error>;
    /// Stops tracking the socket (nothing of it may be in flight).
    fn deregister(&mut self, sock: u32, fd: RawFd);
    /// Hands `ops` to the kernel (or to the SQ until the next [`Driver::enter`]). `payload`
    /// gives each op's slices; every op ends up in `out` now or later, exactly once.
    fn issue(&mut self, payload: &Core, ops: &[Planned], out: &mut Vec<Event>)
        -> Result<(), Error>;
    /// Submits what `issue` left in the SQ, reaps completions and readiness into `out`; with
    /// [`Wait::Until`] blocks until at least one event or the deadline, but only if something
    /// can happen (an op in flight, a socket watched, a deadline).
    fn enter(&mut self, wait: Wait, out: &mut Vec<Event>) -> Result<(), Error>;
    /// Reports [`Event::Writable`] for `sock` once `fd` can take more (after EAGAIN).
    fn watch_writable(&mut self, sock: u32, fd: RawFd, out: &mut Vec<Event>) -> Result<(), Error>;
    /// Sends a flush's lone op ([`Solo`]) now, never blocking, outside the op machinery, and
    /// returns its result as a completion would carry it (`-EAGAIN`: nothing was sent). A
    /// result is one system call, which carried the op unless it is `-EAGAIN`: the engine
    /// books it, not the [`Tally`]. `None`: not now (the driver has work of its own in flight)
    /// or not this driver; nothing was sent.
    fn send_solo(&mut self, _op: &Solo<'_>) -> Option<i32> {
        None
    }
    /// Asks the kernel to stop these ops; each still completes (with `-ECANCELED` or its real
    /// result).
    fn cancel(&mut self, tokens: &[Token], out: &mut Vec<Event>) -> Result<(), Error>;
    /// Reads up to `max` entries of the socket's error queue: (destination, errno) each.
    fn read_errqueue(&mut self, fd: RawFd, max: usize, out: &mut Vec<(Option<SocketAddr>, i32)>);
    /// Reads `sock`'s error queue once the ops issued so far have gone to the kernel (`count`
    /// entries expected): results come back as [`Event::PeerError`], now or from a later
    /// [`Driver::enter`]. By default a read now (drivers whose `issue` sends at once).
    fn read_errqueue_after(&mut self, sock: u32, fd: RawFd, count: usize, out: &mut Vec<Event>) {
        let mut got = Vec::new();
        self.read_errqueue(fd, count.max(ERRQUEUE_AFTER_MIN), &mut got);
        out.extend(
            got.into_iter()
                .map(|(dest, errno)| Event::PeerError { sock, dest, errno }),
        );
    }
    /// Switches `IP_RECVERR` (`IPV6_RECVERR` on an IPv6 socket) on or off (off also drops what
    /// the error queue holds); whether it was switched. One `setsockopt` per option.
    fn set_recverr(&mut self, fd: RawFd, v6: bool, on: bool) -> bool;
    /// `shutdown(fd, SHUT_WR)`.
    fn shutdown_write(&mut self, fd: RawFd) -> Result<(), Error>;
    /// Forgets the kernel-visible memory of every op in flight (a shutdown whose drain failed).
    fn leak(&mut self);
    /// The driver's clock, in nanoseconds since it started (never 0).
    fn now_ns(&self) -> u64;
    /// Takes the transitions counted since the last call.
    fn take_tally(&mut self) -> Tally;
    /// Nothing handed to `issue` waits for an `enter` (io_uring: the SQ is empty).
    fn idle(&self) -> bool {
        false
    }
    /// The descriptor that becomes readable when the driver has something to report.
    fn fd(&self) -> BorrowedFd<'_>;
}

/// The chosen backend (runtime dispatch, as compio's fusion driver does).
#[derive(Debug)]
pub(crate) enum AnyDriver {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
    #[cfg(any(test, fuzzing, feature = "sim"))]
    Sim(Box<crate::sim::kernel::SimKernel>),
}

macro_rules! dispatch {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDriver::Uring($d) => $e,
            AnyDriver::Epoll($d) => $e,
            #[cfg(any(test, fuzzing, feature = "sim"))]
            AnyDriver::Sim($d) => $e,
        }
    };
}

impl Driver for AnyDriver {
    fn register(&mut self, sock: u32, fd: RawFd, kind: FdKind) -> Result<(), Error> {
        dispatch!(self, d => d.register(sock, fd, kind))
    }
    fn deregister(&mut self, sock: u32, fd: RawFd) {
        dispatch!(self, d => d.deregister(sock, fd))
    }
    #[inline]
    fn issue(
        &mut self,
        payload: &Core,
        ops: &[Planned],
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        dispatch!(self, d => d.issue(payload, ops, out))
    }
    #[inline]
    fn enter(&mut self, wait: Wait, out: &mut Vec<Event>) -> Result<(), Error> {
        dispatch!(self, d => d.enter(wait, out))
    }
    fn watch_writable(&mut self, sock: u32, fd: RawFd, out: &mut Vec<Event>) -> Result<(), Error> {
        dispatch!(self, d => d.watch_writable(sock, fd, out))
    }
    #[inline]
    fn send_solo(&mut self, op: &Solo<'_>) -> Option<i32> {
        dispatch!(self, d => d.send_solo(op))
    }
    fn cancel(&mut self, tokens: &[Token], out: &mut Vec<Event>) -> Result<(), Error> {
        dispatch!(self, d => d.cancel(tokens, out))
    }
    fn read_errqueue(&mut self, fd: RawFd, max: usize, out: &mut Vec<(Option<SocketAddr>, i32)>) {
        dispatch!(self, d => d.read_errqueue(fd, max, out))
    }
    fn read_errqueue_after(&mut self, sock: u32, fd: RawFd, count: usize, out: &mut Vec<Event>) {
        dispatch!(self, d => d.read_errqueue_after(sock, fd, count, out))
    }
    fn set_recverr(&mut self, fd: RawFd, v6: bool, on: bool) -> bool {
        dispatch!(self, d => d.set_recverr(fd, v6, on))
    }
    fn shutdown_write(&mut self, fd: RawFd) -> Result<(), Error> {
        dispatch!(self, d => d.shutdown_write(fd))
    }
    fn leak(&mut self) {
        dispatch!(self, d => d.leak())
    }
    #[inline]
    fn now_ns(&self) -> u64 {
        dispatch!(self, d => d.now_ns())
    }
    #[inline]
    fn take_tally(&mut self) -> Tally {
        dispatch!(self, d => d.take_tally())
    }
    #[inline]
    fn idle(&self) -> bool {
        dispatch!(self, d => d.idle())
    }
    fn fd(&self) -> BorrowedFd<'_> {
        dispatch!(self, d => d.fd())
    }
}

/// `shutdown(fd, SHUT_WR)` for the real drivers.
pub(crate) fn shutdown_write(fd: RawFd) -> Result<(), Error> {
    // SAFETY: a plain syscall on a descriptor the engine owns; no memory is passed.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(Error::io(
            "shutdown(SHUT_WR)",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Nanoseconds since `base` (the real drivers' clock), never 0.
pub(crate) fn nanos_since(base: std::time::Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A driver deadline (ns since `base`) as a duration from now; `None` stays `None`.
pub(crate) fn until(
    base: std::time::Instant,
    deadline_ns: Option<u64>,
) -> Option<std::time::Duration> {
    deadline_ns.map(|d| {
        (base + std::time::Duration::from_nanos(d))
            .saturating_duration_since(std::time::Instant::now())
    })
}

/// `recv(fd, buf, MSG_DONTWAIT)`: bytes read (0 at EOF), or `WouldBlock`; `EINTR` retried.
/// The readers of the tokio adapters and of TLS sessions (sockets the engine writes to, in
/// whatever mode the backend put them).
#[cfg(any(feature = "tokio", feature = "tls"))]
pub(crate) fn recv_dontwait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and exclusively borrowed for
        // the call; `fd` is borrowed, so open, for the call.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

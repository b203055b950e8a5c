//! Backends: the only code that calls the kernel.
//!
//! Every backend provides the same small contract, driven by the engine:
//!
//! - `register(idx, fd, stream)` — put the socket in the mode the backend needs (blocking for
//!   io_uring so the ring arms poll instead of failing with EAGAIN; `O_NONBLOCK` for epoll) and
//!   start watching it.
//! - `deregister(fd)` — stop watching it (nothing of it may be in flight).
//! - `submit(core, wait)` — issue every operation [`Core::next_op`] yields, in as few transitions as
//!   the backend allows, hand every result to [`Core::complete`] (or [`Core::requeue`] what did not
//!   go out), and, with `wait`, block until at least one thing changed (a completion, writability,
//!   a backoff timer or the deadline) — but only if something can change.
//! - `cancel(fd)` — ask the kernel to stop ops in flight on `fd` (their completions still arrive).
//! - `leak()` — forget every op's kernel-visible memory (shutdown whose drain failed).
//!
//! Backends hold no policy: what goes out next and what a result means is decided by the core.

pub(crate) mod epoll;
pub(crate) mod msg;
pub(crate) mod probe;
pub(crate) mod uring;

use std::os::fd::RawFd;
use std::time::Instant;

use crate::core::Core;
use crate::error::Error;

/// How long `submit` may block.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Issue and reap what is ready; never block.
    No,
    /// Block until something changes, or until the deadline.
    Until(Option<Instant>),
}

/// The chosen backend (runtime dispatch, as compio's fusion driver does).
#[derive(Debug)]
pub(crate) enum Driver {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
}

impl Driver {
    pub fn register(&mut self, idx: u32, fd: RawFd, stream: bool) -> Result<(), Error> {
        match self {
            Driver::Uring(d) => d.register(fd, stream),
            Driver::Epoll(d) => d.register(idx, fd),
        }
    }

    pub fn deregister(&mut self, fd: RawFd) {
        match self {
            Driver::Uring(_) => {}
            Driver::Epoll(d) => d.deregister(fd),
        }
    }

    pub fn submit(&mut self, core: &mut Core, wait: Wait) -> Result<(), Error> {
        match self {
            Driver::Uring(d) => d.submit(core, wait)?,
            Driver::Epoll(d) => d.submit(core, wait)?,
        }
        read_error_queues(core);
        Ok(())
    }

    pub fn cancel(&mut self, core: &mut Core, fd: Option<RawFd>) -> Result<(), Error> {
        match self {
            Driver::Uring(d) => d.cancel(core, fd),
            Driver::Epoll(_) => Ok(()),
        }
    }

    pub fn leak(&mut self) {
        match self {
            Driver::Uring(d) => d.leak(),
            Driver::Epoll(_) => {}
        }
    }
}

/// Entries read from one error queue per visit; the rest wait for the next error.
const ERRQUEUE_BATCH: usize = 256;

/// Reads the error queues the core asked for (`IP_RECVERR` sockets after an ICMP-class error or a
/// partial `sendmmsg`) and hands each entry to the core as a peer error. Reading also releases
/// the queue's receive-buffer charge and clears the pending socket error.
fn read_error_queues(core: &mut Core) {
    let mut entries = Vec::new();
    while let Some((idx, fd)) = core.take_errqueue() {
        entries.clear();
        core.stats.kernel_transitions += msg::drain_errqueue(fd, ERRQUEUE_BATCH, &mut entries);
        for &(dest, errno) in &entries {
            core.peer_error(idx, dest, errno);
        }
    }
}

/// `shutdown(fd, SHUT_WR)`.
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

/// Nanoseconds since `base` (the engine's clock for the core).
pub(crate) fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

//! The floors: no library at all, hand-built system calls on blocking sockets. What a library
//! measures below its floor is its own cost.
//!
//! - `raw-writev` ([`writev`]): TCP, one `sendmsg` per socket per batch over prebuilt iovecs.
//! - `raw-sendmmsg` ([`sendmmsg`]): UDP, one `sendmmsg` per 1024 datagrams over prebuilt
//!   headers.
//! - `raw-gso` ([`gso`]): UDP, one `sendmsg` with a `UDP_SEGMENT` cmsg per GSO group.
//!
//! This module holds what they share: the iovecs of every payload message built once
//! ([`IovRing`]), `msghdr` and address building, and the `EINTR` loop.

pub mod gso;
pub mod sendmmsg;
pub mod writev;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::Bytes;

use crate::scenario::{Payload, Workload};

/// Iovecs per `sendmsg` and headers per `sendmmsg` at most (`UIO_MAXIOV`).
pub const MAX_IOV: usize = 1024;

/// An iovec over `b`, for a system call that only reads it.
pub fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr().cast_mut().cast(),
        iov_len: b.len(),
    }
}

/// A `msghdr` over `iovs` with no address and no control data.
pub fn msghdr(iovs: &[libc::iovec]) -> libc::msghdr {
    // SAFETY: msghdr is a C struct of integers and raw pointers (plus padding on some libcs);
    // all-zero is a valid value for every field (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_ptr().cast_mut();
    // `size_t` on glibc: the same type.
    msg.msg_iovlen = iovs.len() as _;
    msg
}

/// Runs `call`, a system call that returns a count or -1 with `errno`, until it is not
/// interrupted.
///
/// # Errors
/// The call's `errno`.
pub fn retry<R: TryInto<usize>>(mut call: impl FnMut() -> R) -> io::Result<usize> {
    loop {
        if let Ok(n) = call().try_into() {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `sendmsg(MSG_NOSIGNAL)` of `msg` on `fd`, retried on `EINTR`; returns the bytes sent.
///
/// # Errors
/// The call's `errno`.
pub fn sendmsg(fd: RawFd, msg: &libc::msghdr) -> io::Result<usize> {
    // SAFETY: `msg` and everything it points at (iovecs over live buffers, optional control
    // data) are borrowed for the call; the kernel only reads them.
    retry(|| unsafe { libc::sendmsg(fd, msg, libc::MSG_NOSIGNAL) })
}

/// `addr` as a C socket address and its length.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for any socket
            // address; `ss` is a live local.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or_default(),
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let len = libc::socklen_t::try_from(len).unwrap_or(libc::socklen_t::MAX);
    (ss, len)
}

/// An iovec per message of a payload, built once, the whole payload twice over: the `n ≤ M`
/// messages from index `first < M` (M = messages in the payload) are the contiguous run
/// `first..first + n`, ready to hand to the kernel as they are.
pub struct IovRing {
    iovs: Vec<libc::iovec>,
    messages: usize,
    /// The payload the iovecs point into: kept alive, and compared with the workload's.
    payload: Bytes,
}

impl std::fmt::Debug for IovRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IovRing")
            .field("messages", &self.messages)
            .finish_non_exhaustive()
    }
}

impl IovRing {
    /// The iovecs of `p`'s messages.
    pub fn new(p: &Payload) -> IovRing {
        let m = p.messages();
        let iovs = (0..2 * m)
            .map(|i| {
                let at = (i % m) * p.size;
                iovec(&p.big[at..at + p.size])
            })
            .collect();
        IovRing {
            iovs,
            messages: m,
            payload: p.big.clone(),
        }
    }

    /// Messages in the payload (M).
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Messages `first..first + n` (`first < M`, `n ≤ M`) as contiguous iovecs.
    #[inline]
    pub fn window(&self, first: usize, n: usize) -> &[libc::iovec] {
        &self.iovs[first..first + n]
    }

    /// The iovec of message `i` (any index; wraps at M).
    #[inline]
    pub fn get(&self, i: usize) -> &libc::iovec {
        match self.iovs.get(i) {
            Some(v) => v,
            None => &self.iovs[i % self.messages],
        }
    }

    /// Whether `w` sends this payload (so its message indexes are this ring's).
    ///
    /// # Errors
    /// When it does not.
    pub fn check(&self, w: &Workload) -> Result<(), String> {
        if w.payload.big.as_ptr() == self.payload.as_ptr()
            && w.payload.size * self.messages == self.payload.len()
        {
            Ok(())
        } else {
            Err("the workload's payload is not the one the iovecs were built over".into())
        }
    }
}

//! What an errno means to the engine, in one place: the scope it concerns ([`Class`]), from
//! which the queues (`stream`, `dgram`) take their action. `docs/errors.md` is the same table
//! for readers, with the reasons; the test below pins every errno it lists.

/// The scope an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Nothing failed for good: the op goes again (`EAGAIN`, `EINTR`, `ERESTARTSYS`).
    Retry,
    /// One datagram: it fails alone, its neighbours and the socket go on (`ENOBUFS` after a
    /// bounded backoff). Refused for a whole GSO group: `EMSGSIZE` and `ENOBUFS` re-split it, so
    /// each datagram gets its own outcome; any other errno fails its first datagram (taken for a
    /// pending socket error the call consumed) and the rest go again.
    Datagram,
    /// A destination (the ICMP-class errnos): a pending error that an ICMP message about an
    /// earlier datagram left on the socket, picked up by this send (which sent nothing: it goes
    /// again), or this datagram's own (a route lookup: it fails). Which one is decided where
    /// the kernel can tell (`dgram::complete_dgram`).
    Destination,
    /// The socket: a stream is poisoned (every error but a retry: its peer holds an unknown
    /// prefix, so nothing after it may be sent).
    Socket,
    /// The device or route: `EIO`/`EINVAL` for a GSO group may mean it cannot segment. The
    /// group is re-split; GSO goes off for the socket only if a datagram then goes alone.
    Device,
    /// The engine: the kernel lost the op's completion (`EBADR`, an io_uring CQ overflow); the
    /// op ends as lost (`Status::CompletionLost`), all of it.
    Engine,
}

/// The kind of op an errno came back for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Stream,
    /// One datagram, or several that are not a GSO send.
    Datagram,
    /// A GSO send (`UDP_SEGMENT`) of several datagrams.
    GsoGroup,
}

/// `ERESTARTSYS`, which io_uring may surface unchanged on some kernels (FAILURES.md item 6).
const ERESTARTSYS: i32 = 512;

pub(crate) fn is_retry(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EINTR || errno == ERESTARTSYS
}

/// Errors a pending socket error (`sk_err`) can carry from an ICMP message about an earlier
/// datagram (`icmp_err_convert`, `icmpv6_err_convert`): with `IP_RECVERR` an unconnected socket
/// gets them too, and the send that picks one up sends nothing. A route lookup returns some of
/// them synchronously, as the datagram's own error.
pub(crate) fn is_icmp_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::EPROTO
    )
}

/// The class of `errno` returned for an op of kind `op`.
pub(crate) fn classify(errno: i32, op: OpKind) -> Class {
    if is_retry(errno) {
        return Class::Retry;
    }
    if errno == libc::EBADR {
        return Class::Engine;
    }
    match op {
        OpKind::Stream => Class::Socket,
        OpKind::GsoGroup if matches!(errno, libc::EIO | libc::EINVAL) => Class::Device,
        _ if is_icmp_errno(errno) => Class::Destination,
        _ => Class::Datagram,
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, Class, OpKind};

    /// The rows of docs/errors.md, errno by errno.
    #[test]
    fn every_errno_in_the_table() {
        use Class::{Destination, Device, Engine, Retry, Socket};
        use OpKind::{GsoGroup, Stream};
        let one = OpKind::Datagram;
        for errno in [libc::EAGAIN, libc::EINTR, 512] {
            for op in [Stream, one, GsoGroup] {
                assert_eq!(classify(errno, op), Retry, "{errno} {op:?}");
            }
        }
        for op in [Stream, one, GsoGroup] {
            assert_eq!(classify(libc::EBADR, op), Engine);
        }
        for errno in [
            libc::EPIPE,
            libc::ECONNRESET,
            libc::ENOTCONN,
            libc::ETIMEDOUT,
            libc::ECANCELED,
            libc::EINVAL,
            libc::ENOBUFS,
        ] {
            assert_eq!(classify(errno, Stream), Socket, "{errno}");
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::EHOSTDOWN,
            libc::EPROTO,
        ] {
            assert_eq!(classify(errno, one), Destination, "{errno}");
            assert_eq!(classify(errno, GsoGroup), Destination, "{errno}");
        }
        for errno in [libc::EIO, libc::EINVAL] {
            assert_eq!(classify(errno, GsoGroup), Device, "{errno}");
            assert_eq!(classify(errno, one), Class::Datagram, "{errno}");
        }
        for errno in [
            libc::EMSGSIZE,
            libc::ENOBUFS,
            libc::EACCES,
            libc::EPERM,
            libc::EADDRNOTAVAIL,
            libc::ENETDOWN,
            libc::ECANCELED,
            libc::EBADF,
        ] {
            assert_eq!(classify(errno, one), Class::Datagram, "{errno}");
            assert_eq!(classify(errno, GsoGroup), Class::Datagram, "{errno}");
        }
    }
}

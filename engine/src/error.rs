//! The one error type, its socket statuses, and the single errno → status mapping.

use std::fmt;
use std::io;

use bytes::Bytes;
use std::net::SocketAddr;

use crate::SocketId;

/// What happened to a write that did not complete, as the kernel told it.
///
/// Every status keeps the raw errno in [`Error::Socket`]; this enum is the portable name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Status {
    /// `ECONNRESET`: the peer reset the connection.
    ConnectionReset,
    /// `ECONNREFUSED`: nothing listens at the destination (for UDP: an ICMP port unreachable came back).
    ConnectionRefused,
    /// `ECONNABORTED`: the connection was aborted locally.
    ConnectionAborted,
    /// `ENOTCONN`: the socket is not connected.
    NotConnected,
    /// `EPIPE`: the connection is closed for writing.
    BrokenPipe,
    /// `EHOSTUNREACH`: no route to the host.
    HostUnreachable,
    /// `ENETUNREACH`: the network is unreachable.
    NetworkUnreachable,
    /// `ENETDOWN`: the network interface is down.
    NetworkDown,
    /// `EMSGSIZE`: the datagram is larger than the socket or path allows.
    MessageTooLong,
    /// `ENOBUFS`: the kernel ran out of buffer space (a full qdisc or device queue).
    NoBufferSpace,
    /// `ETIMEDOUT`: the connection timed out.
    TimedOut,
    /// `EADDRNOTAVAIL`: the destination address cannot be used from this socket.
    AddressNotAvailable,
    /// `EACCES` / `EPERM`: the kernel or a firewall rule refused the send.
    PermissionDenied,
    /// `EINVAL` and friends: the kernel rejected the request as malformed.
    InvalidInput,
    /// `ECANCELED`: the write was cancelled before it completed (socket aborted, engine dropped).
    Cancelled,
    /// Any other errno; the raw value is kept in the error.
    Other,
}

impl Status {
    /// Every status, in declaration order (for per-status tables).
    pub const ALL: [Status; 16] = [
        Status::ConnectionReset,
        Status::ConnectionRefused,
        Status::ConnectionAborted,
        Status::NotConnected,
        Status::BrokenPipe,
        Status::HostUnreachable,
        Status::NetworkUnreachable,
        Status::NetworkDown,
        Status::MessageTooLong,
        Status::NoBufferSpace,
        Status::TimedOut,
        Status::AddressNotAvailable,
        Status::PermissionDenied,
        Status::InvalidInput,
        Status::Cancelled,
        Status::Other,
    ];

    /// The one errno → status mapping in the crate.
    pub fn from_errno(errno: i32) -> Status {
        match errno {
            libc::ECONNRESET => Status::ConnectionReset,
            libc::ECONNREFUSED => Status::ConnectionRefused,
            libc::ECONNABORTED => Status::ConnectionAborted,
            libc::ENOTCONN | libc::EDESTADDRREQ => Status::NotConnected,
            libc::EPIPE => Status::BrokenPipe,
            libc::EHOSTUNREACH | libc::EHOSTDOWN => Status::HostUnreachable,
            libc::ENETUNREACH => Status::NetworkUnreachable,
            libc::ENETDOWN => Status::NetworkDown,
            libc::EMSGSIZE => Status::MessageTooLong,
            libc::ENOBUFS | libc::ENOMEM => Status::NoBufferSpace,
            libc::ETIMEDOUT => Status::TimedOut,
            libc::EADDRNOTAVAIL => Status::AddressNotAvailable,
            libc::EACCES | libc::EPERM => Status::PermissionDenied,
            libc::EINVAL | libc::EFAULT | libc::EBADF | libc::ENOTSOCK | libc::EOPNOTSUPP => {
                Status::InvalidInput
            }
            libc::ECANCELED => Status::Cancelled,
            _ => Status::Other,
        }
    }

    /// A short human name, e.g. "connection reset by peer".
    pub fn describe(self) -> &'static str {
        match self {
            Status::ConnectionReset => "connection reset by peer",
            Status::ConnectionRefused => "connection refused",
            Status::ConnectionAborted => "connection aborted",
            Status::NotConnected => "socket not connected",
            Status::BrokenPipe => "broken pipe (peer closed the connection)",
            Status::HostUnreachable => "host unreachable",
            Status::NetworkUnreachable => "network unreachable",
            Status::NetworkDown => "network down",
            Status::MessageTooLong => "message too long",
            Status::NoBufferSpace => "no buffer space available",
            Status::TimedOut => "timed out",
            Status::AddressNotAvailable => "address not available",
            Status::PermissionDenied => "permission denied",
            Status::InvalidInput => "invalid argument",
            Status::Cancelled => "cancelled",
            Status::Other => "other error",
        }
    }

    /// Index into [`Status::ALL`].
    pub fn index(self) -> usize {
        Status::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(Status::ALL.len() - 1)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Which configured limit refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// `EngineBuilder::max_queued_bytes_per_socket`.
    QueuedBytesPerSocket,
    /// `EngineBuilder::max_queued_bytes`.
    QueuedBytesTotal,
    /// `EngineBuilder::max_queued_writes_per_socket`.
    QueuedWritesPerSocket,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::QueuedBytesPerSocket => "max_queued_bytes_per_socket",
            Limit::QueuedBytesTotal => "max_queued_bytes",
            Limit::QueuedWritesPerSocket => "max_queued_writes_per_socket",
        })
    }
}

/// Everything that can go wrong in volley.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The kernel failed a send on a socket.
    Socket {
        /// Portable status.
        status: Status,
        /// The raw errno the kernel returned.
        errno: i32,
        /// The engine socket it happened on.
        socket: SocketId,
        /// The peer (connected sockets) or destination (unconnected UDP), when known.
        peer: Option<SocketAddr>,
    },
    /// A limit would be exceeded: flush (or wait for completions) and try again.
    Backpressure {
        /// The socket the write was for.
        socket: SocketId,
        /// Which limit.
        limit: Limit,
        /// The limit's value.
        max: usize,
    },
    /// One buffer is larger than a queue limit, so it could never be accepted.
    BufferTooLarge {
        /// The socket the write was for.
        socket: SocketId,
        /// The buffer's length.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// The socket id is not (or no longer) registered with this engine.
    UnknownSocket(SocketId),
    /// The call does not fit the socket (e.g. `send_to` on a TCP stream, `send` on an unconnected UDP socket).
    WrongSocketKind {
        /// The socket.
        socket: SocketId,
        /// What the call needs.
        expected: &'static str,
    },
    /// io_uring was asked for explicitly but cannot work here.
    UringUnavailable {
        /// Why, in words (errno, seccomp/sysctl hint, missing opcode).
        reason: String,
    },
    /// A flush did not finish within the configured `flush_timeout`; the writes stay queued.
    FlushTimeout {
        /// The socket (or `None` for `flush_all`).
        socket: Option<SocketId>,
    },
    /// A system call of the engine itself (ring setup, epoll, socket options) failed.
    Io {
        /// What the engine was doing.
        what: &'static str,
        /// The raw errno.
        errno: i32,
    },
}

impl Error {
    /// The socket status, for [`Error::Socket`].
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Socket { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The raw errno, where there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Socket { errno, .. } | Error::Io { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The peer or destination an [`Error::Socket`] concerns, when known.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Error::Socket { peer, .. } => *peer,
            _ => None,
        }
    }

    /// Whether the error is backpressure (retry after a flush).
    pub fn is_backpressure(&self) -> bool {
        matches!(self, Error::Backpressure { .. })
    }

    pub(crate) fn socket(errno: i32, socket: SocketId, peer: Option<SocketAddr>) -> Error {
        Error::Socket {
            status: Status::from_errno(errno),
            errno,
            socket,
            peer,
        }
    }

    pub(crate) fn io(what: &'static str, e: &io::Error) -> Error {
        Error::Io {
            what,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

fn errno_name(errno: i32) -> String {
    io::Error::from_raw_os_error(errno).to_string()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Socket { status, errno, socket, peer } => {
                write!(f, "send on {socket}")?;
                if let Some(p) = peer {
                    write!(f, " to {p}")?;
                }
                write!(f, " failed: {status} (errno {errno}: {})", errno_name(*errno))
            }
            Error::Backpressure { socket, limit, max } => write!(
                f,
                "{socket}: queue full ({limit} = {max}); flush (or submit and wait for the engine's descriptor), then send the returned buffer again"
            ),
            Error::BufferTooLarge { socket, len, max } => write!(
                f,
                "{socket}: a {len}-byte buffer exceeds the queue limit of {max} bytes; split it or raise the limit"
            ),
            Error::UnknownSocket(s) => write!(f, "{s} is not registered with this engine"),
            Error::WrongSocketKind { socket, expected } => {
                write!(f, "{socket}: this call needs {expected}")
            }
            Error::UringUnavailable { reason } => {
                write!(f, "io_uring backend unavailable: {reason}; use Backend::Auto or Backend::Epoll")
            }
            Error::FlushTimeout { socket: Some(s) } => {
                write!(f, "flush of {s} timed out; its writes stay queued")
            }
            Error::FlushTimeout { socket: None } => {
                write!(f, "flush of the engine timed out; writes stay queued")
            }
            Error::Io { what, errno } => {
                write!(f, "{what} failed: errno {errno}: {}", errno_name(*errno))
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Backpressure { .. } => io::ErrorKind::WouldBlock,
            Error::FlushTimeout { .. } => io::ErrorKind::TimedOut,
            _ => match e.raw_os_error() {
                Some(errno) => io::Error::from_raw_os_error(errno).kind(),
                None => io::ErrorKind::Other,
            },
        };
        io::Error::new(kind, e)
    }
}

/// A refused [`Engine::send`](crate::Engine::send) or `send_to`: the error, and the buffer
/// handed back unsent (as compio's `BufResult` and tokio-uring's `(result, buf)` do), so the
/// same frame can be sent again after a flush.
#[derive(Debug, Clone)]
pub struct SendError {
    error: Error,
    buf: Bytes,
}

impl SendError {
    pub(crate) fn new(error: Error, buf: Bytes) -> SendError {
        SendError { error, buf }
    }

    /// Why the buffer was refused.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The refused buffer, unsent and unchanged.
    pub fn into_inner(self) -> Bytes {
        self.buf
    }

    /// The error and the buffer.
    pub fn into_parts(self) -> (Error, Bytes) {
        (self.error, self.buf)
    }

    /// Whether the refusal is backpressure (flush, then send the buffer again).
    pub fn is_backpressure(&self) -> bool {
        self.error.is_backpressure()
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}-byte buffer returned unsent)",
            self.error,
            self.buf.len()
        )
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        e.error
    }
}

impl From<SendError> for io::Error {
    fn from(e: SendError) -> io::Error {
        e.error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_and_messages() {
        assert_eq!(
            Status::from_errno(libc::ECONNRESET),
            Status::ConnectionReset
        );
        assert_eq!(Status::from_errno(libc::EPIPE), Status::BrokenPipe);
        assert_eq!(Status::from_errno(libc::EMSGSIZE), Status::MessageTooLong);
        assert_eq!(Status::from_errno(libc::ENOBUFS), Status::NoBufferSpace);
        assert_eq!(Status::from_errno(9999), Status::Other);
        let e = Error::socket(libc::ECONNRESET, SocketId::new(3, 1), None);
        let msg = e.to_string();
        assert!(msg.contains("connection reset by peer"), "{msg}");
        assert!(msg.contains("socket#3"), "{msg}");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNRESET));
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}

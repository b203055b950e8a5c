//! The one error type, its socket statuses, and the single errno → status mapping.

use std::fmt;
use std::io;

use bytes::Bytes;
use std::net::SocketAddr;

use crate::SocketId;

/// What happened to a write that did not complete, as the kernel told it.
///
/// Every status keeps the raw errno in [`Error::Socket`] and [`Error::Peer`]; this enum is the
/// portable name for it.
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
    /// `EBADR` from io_uring: the kernel dropped the write's completion (its completion queue
    /// overflowed), so whether it went out is unknown; a stream is poisoned.
    CompletionLost,
    /// Any other errno; the raw value is kept in the error.
    Other,
    /// `EIO`: an I/O error. A TUN device answers it to every write while its interface is
    /// down (`ip link set DEV up` makes it take packets again); the packet fails alone.
    InputOutput,
    /// `EBADFD`, `ENODEV`, `ENXIO`: the device behind a packet descriptor is gone (a TUN/TAP
    /// interface deleted or detached). Fatal: the descriptor is poisoned.
    DeviceGone,
    /// A packet descriptor took only part of a packet (`write(2)` returned fewer bytes than
    /// the packet has). A packet is written whole or fails: the rest is never written after
    /// it. No errno: the error's `errno` is 0 and [`Error::raw_os_error`] is `None`.
    ShortWrite,
}

impl Status {
    /// Every status, in declaration order (for per-status tables).
    pub const ALL: [Status; 20] = [
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
        Status::CompletionLost,
        Status::Other,
        Status::InputOutput,
        Status::DeviceGone,
        Status::ShortWrite,
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
            libc::EBADR => Status::CompletionLost,
            libc::EIO => Status::InputOutput,
            libc::EBADFD | libc::ENODEV | libc::ENXIO => Status::DeviceGone,
            _ => Status::Other,
        }
    }

    /// Whether `errno` from a write on a packet descriptor means the descriptor can take no
    /// more packets: the device was deleted or detached (`EBADFD` from TUN/TAP, `ENODEV`,
    /// `ENXIO`) or the descriptor itself is invalid (`EBADF`). The one place that class is
    /// decided; the core poisons the descriptor on it, as on a fatal stream error.
    pub(crate) fn is_fd_gone(errno: i32) -> bool {
        matches!(
            errno,
            libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO
        )
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
            Status::CompletionLost => "completion lost (io_uring completion queue overflow)",
            Status::Other => "other error",
            Status::InputOutput => "input/output error (a TUN device: its interface is down)",
            Status::DeviceGone => "device gone (deleted or detached)",
            Status::ShortWrite => "short write (the kernel took part of a packet)",
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

/// What went wrong in a TLS session (feature `tls`), in the words of TLS: the alert the peer
/// sent, or what this side found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsStatus {
    /// A certificate is malformed, expired, for another name, or was rejected by the peer
    /// (alerts `bad_certificate`, `unsupported_certificate`, `certificate_expired`, …).
    BadCertificate,
    /// The certificate chain does not lead to a trusted CA (alert `unknown_ca`).
    UnknownCa,
    /// The two sides could not agree on the handshake (alert `handshake_failure`, no common
    /// version or cipher suite).
    HandshakeFailure,
    /// The server requires a client certificate and none was given (alert
    /// `certificate_required`; TLS 1.2 servers send `handshake_failure` instead).
    CertificateRequired,
    /// The handshake (or the wait for the peer's `close_notify`) did not finish in time.
    Timeout,
    /// The peer closed the connection without `close_notify`, possibly mid-record: what it
    /// sent may be truncated.
    Truncated,
    /// Any other protocol error or alert (decode error, bad record MAC, unexpected message…).
    Protocol,
    /// A certificate, key or CA file could not be read or used.
    Config,
}

impl TlsStatus {
    /// A short human name, e.g. "unknown CA".
    pub fn describe(self) -> &'static str {
        match self {
            TlsStatus::BadCertificate => "bad certificate",
            TlsStatus::UnknownCa => "unknown CA (certificate not signed by a trusted authority)",
            TlsStatus::HandshakeFailure => "handshake failure",
            TlsStatus::CertificateRequired => "certificate required",
            TlsStatus::Timeout => "timed out",
            TlsStatus::Truncated => "connection closed without close_notify",
            TlsStatus::Protocol => "protocol error",
            TlsStatus::Config => "bad TLS configuration",
        }
    }
}

impl fmt::Display for TlsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Everything that can go wrong in volley.
///
/// Converts into [`io::Error`] with a kind that says what to do: misuse of the API
/// ([`Error::WrongSocketKind`], [`Error::BufferTooLarge`], [`Error::BadDestination`],
/// [`Error::UnsuitableSocket`], [`Error::UnknownSocket`]) is [`io::ErrorKind::InvalidInput`] — an unknown socket is the
/// caller's mistake (a stale or foreign id), not a missing resource; [`Error::Backpressure`] is
/// [`io::ErrorKind::WouldBlock`]; [`Error::FlushTimeout`] is [`io::ErrorKind::TimedOut`];
/// [`Error::UringUnavailable`] is [`io::ErrorKind::Unsupported`]; errors with an errno
/// ([`Error::Socket`], [`Error::Peer`], [`Error::Io`]) take the errno's kind.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The kernel failed a send on a socket: the write (or datagram) did not go out.
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
    /// A *peer error*: the kernel reported, after a datagram was sent, that its destination
    /// cannot be reached — an ICMP port, host or network unreachable read from the socket's
    /// error queue ([`Engine::take_peer_errors`](crate::Engine::take_peer_errors)). The send
    /// itself succeeded and was counted as sent; one report per ICMP message, which may be fewer
    /// than the datagrams lost (the kernel rate-limits ICMP, and one GSO send is one packet to
    /// the ICMP sender until it is segmented).
    Peer {
        /// Portable status (`ConnectionRefused` for an ICMP port unreachable).
        status: Status,
        /// The raw errno the kernel reported.
        errno: i32,
        /// The engine socket that sent the datagram.
        socket: SocketId,
        /// The destination the report concerns, when the kernel named it (an IPv4 destination
        /// of a dual-stack socket is given as IPv4, not IPv4-mapped).
        peer: Option<SocketAddr>,
    },
    /// A limit would be exceeded. Make room, then send the returned buffer again: flush the
    /// socket, or (from an event loop) [`Engine::submit`](crate::Engine::submit) and wait for
    /// the engine's descriptor before retrying. Only the queue limits ([`Limit`]) refuse at
    /// `send`; the in-flight limits never do.
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
    /// A `send_to` destination the socket can never send to, refused at once (nothing queued):
    /// an address of the other family (IPv6 on an IPv4 socket; IPv4, plain or IPv4-mapped, on
    /// an `IPV6_V6ONLY` socket), port 0, or the unspecified address (`0.0.0.0`, `::`).
    BadDestination {
        /// The socket.
        socket: SocketId,
        /// The refused destination.
        dest: SocketAddr,
        /// Why, in words.
        reason: &'static str,
    },
    /// A socket handed to [`Engine::register_tcp`](crate::Engine::register_tcp) or
    /// [`Engine::register_udp`](crate::Engine::register_udp) is not what the call takes (checked
    /// with `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL`, `SO_ACCEPTCONN` and `getpeername`): a UDP
    /// socket made into a `TcpStream` with `From<OwnedFd>`, a listening or unconnected TCP
    /// socket, a Unix socket. The socket comes back in the [`RegisterError`].
    UnsuitableSocket {
        /// What the call takes.
        expected: &'static str,
        /// What the socket is, in words.
        found: String,
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
    /// A TLS session failed (feature `tls`): a certificate was refused, an alert arrived, the
    /// handshake timed out, the peer closed mid-record. The session is unusable afterwards.
    Tls {
        /// The engine socket of the session, when there is one (not for configuration errors).
        socket: Option<SocketId>,
        /// What went wrong, in TLS terms.
        status: TlsStatus,
        /// Whether the peer said so (it sent an alert) rather than this side finding it.
        from_peer: bool,
        /// The details (rustls' message, the file name).
        detail: String,
    },
}

/// Peer errors about one destination since the last
/// [`Engine::unreachable_destinations`](crate::Engine::unreachable_destinations): how many
/// times the kernel reported it unreachable (ICMP reports, not datagrams lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Unreachable {
    /// The destination (IPv4 destinations of a dual-stack socket as IPv4).
    pub dest: SocketAddr,
    /// Portable status of the reports (`ConnectionRefused`: ICMP port unreachable).
    pub status: Status,
    /// The raw errno of the reports.
    pub errno: i32,
    /// Reports received.
    pub reports: u64,
}

impl Error {
    /// The socket status, for [`Error::Socket`] and [`Error::Peer`].
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Socket { status, .. } | Error::Peer { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The raw errno, where there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            // A short packet write has no errno (0).
            Error::Socket { errno: 0, .. } => None,
            Error::Socket { errno, .. } | Error::Peer { errno, .. } | Error::Io { errno, .. } => {
                Some(*errno)
            }
            _ => None,
        }
    }

    /// The peer or destination the error concerns, when known ([`Error::Socket`],
    /// [`Error::Peer`], [`Error::BadDestination`]).
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Error::Socket { peer, .. } | Error::Peer { peer, .. } => *peer,
            Error::BadDestination { dest, .. } => Some(*dest),
            _ => None,
        }
    }

    /// Whether the error is a peer error: a report about a datagram already sent
    /// ([`Error::Peer`]), not a failed send.
    pub fn is_peer_error(&self) -> bool {
        matches!(self, Error::Peer { .. })
    }

    /// The TLS status, for [`Error::Tls`].
    pub fn tls_status(&self) -> Option<TlsStatus> {
        match self {
            Error::Tls { status, .. } => Some(*status),
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

    /// A packet the kernel took only part of.
    pub(crate) fn short_write(socket: SocketId) -> Error {
        Error::Socket {
            status: Status::ShortWrite,
            errno: 0,
            socket,
            peer: None,
        }
    }

    pub(crate) fn io(what: &'static str, e: &io::Error) -> Error {
        Error::Io {
            what,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// The C library's text for `errno`, without std's " (os error N)" suffix (the messages give the
/// number once, themselves).
fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(t) => t.to_owned(),
        None => text,
    }
}

/// The status in words: its short name, or for [`Status::Other`] the C library's text.
fn describe(status: Status, errno: i32) -> String {
    match status {
        Status::Other => strerror(errno),
        s => s.describe().to_owned(),
    }
}

/// The ICMP message behind an error-queue errno (Linux's `icmp_err_convert` and
/// `icmpv6_err_convert`), for the ones only ICMP produces.
fn icmp_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::ECONNREFUSED => "ICMP port unreachable",
        libc::EHOSTUNREACH => "ICMP host unreachable",
        libc::ENETUNREACH => "ICMP network unreachable",
        libc::EHOSTDOWN => "ICMP host unknown",
        libc::ENOPROTOOPT => "ICMP protocol unreachable",
        libc::EPROTO => "ICMP parameter problem",
        _ => return None,
    })
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Socket { status, errno, socket, peer } => {
                write!(f, "send on {socket}")?;
                if let Some(p) = peer {
                    write!(f, " to {p}")?;
                }
                match errno {
                    0 => write!(f, " failed: {}", describe(*status, *errno)),
                    _ => write!(f, " failed: {} (errno {errno})", describe(*status, *errno)),
                }
            }
            Error::Peer { status, errno, socket, peer } => {
                let what = describe(*status, *errno);
                match (peer, icmp_name(*errno)) {
                    (Some(p), Some(icmp)) => write!(
                        f,
                        "{socket}: {p} unreachable: {what} ({icmp} after sending, errno {errno})"
                    ),
                    (None, Some(icmp)) => write!(
                        f,
                        "{socket}: a destination is unreachable: {what} ({icmp} after sending, errno {errno})"
                    ),
                    (Some(p), None) => write!(
                        f,
                        "{socket}: error reported for a datagram sent to {p}: {what} (after sending, errno {errno})"
                    ),
                    (None, None) => write!(
                        f,
                        "{socket}: error reported for a datagram sent earlier: {what} (errno {errno})"
                    ),
                }
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
            Error::BadDestination { socket, dest, reason } => {
                write!(f, "{socket}: cannot send to {dest}: {reason}")
            }
            Error::UnsuitableSocket { expected, found } => {
                write!(f, "cannot register the socket: it is {found}, the call takes {expected}")
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
                write!(f, "{what} failed: {} (errno {errno})", strerror(*errno))
            }
            Error::Tls { socket, status, from_peer, detail } => {
                f.write_str("TLS")?;
                if let Some(s) = socket {
                    write!(f, " on {s}")?;
                }
                let who = if *from_peer { "the peer refused: " } else { "" };
                write!(f, ": {who}{status} ({detail})")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    /// The kinds are listed on [`Error`]; every variant is named here, so a new one must pick.
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Backpressure { .. } => io::ErrorKind::WouldBlock,
            Error::FlushTimeout { .. } => io::ErrorKind::TimedOut,
            Error::WrongSocketKind { .. }
            | Error::BufferTooLarge { .. }
            | Error::BadDestination { .. }
            | Error::UnsuitableSocket { .. }
            | Error::UnknownSocket(_) => io::ErrorKind::InvalidInput,
            Error::UringUnavailable { .. } => io::ErrorKind::Unsupported,
            Error::Socket { errno: 0, .. } => io::ErrorKind::Other,
            Error::Tls { status, .. } => match status {
                TlsStatus::Timeout => io::ErrorKind::TimedOut,
                TlsStatus::Truncated => io::ErrorKind::UnexpectedEof,
                TlsStatus::Config => io::ErrorKind::InvalidInput,
                _ => io::ErrorKind::InvalidData,
            },
            Error::Socket { errno, .. } | Error::Peer { errno, .. } | Error::Io { errno, .. } => {
                io::Error::from_raw_os_error(*errno).kind()
            }
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

/// A refused [`Engine::register_tcp`](crate::Engine::register_tcp) or
/// [`Engine::register_udp`](crate::Engine::register_udp): the error, and the socket handed back
/// open (as [`SendError`] hands a refused buffer back), never closed by the refusal. Converts
/// into [`Error`] and [`io::Error`] (dropping, and so closing, the socket) for `?`.
#[derive(Debug)]
pub struct RegisterError<S> {
    error: Error,
    socket: S,
}

impl<S> RegisterError<S> {
    pub(crate) fn new(error: Error, socket: S) -> RegisterError<S> {
        RegisterError { error, socket }
    }

    /// Why the socket was refused.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The refused socket, open.
    pub fn into_inner(self) -> S {
        self.socket
    }

    /// The error and the socket.
    pub fn into_parts(self) -> (Error, S) {
        (self.error, self.socket)
    }
}

impl<S> fmt::Display for RegisterError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (socket handed back)", self.error)
    }
}

impl<S: fmt::Debug> std::error::Error for RegisterError<S> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<S> From<RegisterError<S>> for Error {
    fn from(e: RegisterError<S>) -> Error {
        e.error
    }
}

impl<S> From<RegisterError<S>> for io::Error {
    fn from(e: RegisterError<S>) -> io::Error {
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

    /// Each message says what happened once: the status in words and the errno number, never
    /// std's "(os error N)" again.
    #[test]
    fn messages_say_it_once() {
        let id = SocketId::new(0, 0);
        let dest: SocketAddr = "127.0.0.1:40005".parse().unwrap();
        let send = Error::socket(libc::ECONNREFUSED, id, Some(dest));
        assert_eq!(
            send.to_string(),
            "send on socket#0 to 127.0.0.1:40005 failed: connection refused (errno 111)"
        );
        let peer = Error::Peer {
            status: Status::ConnectionRefused,
            errno: libc::ECONNREFUSED,
            socket: id,
            peer: Some(dest),
        };
        assert_eq!(
            peer.to_string(),
            "socket#0: 127.0.0.1:40005 unreachable: connection refused \
             (ICMP port unreachable after sending, errno 111)"
        );
        assert!(peer.is_peer_error() && !send.is_peer_error());
        assert_eq!(
            (peer.status(), peer.raw_os_error(), peer.peer()),
            (Some(Status::ConnectionRefused), Some(111), Some(dest))
        );
        // An errno without a status of its own is named by the C library, once.
        let other = Error::socket(libc::EAFNOSUPPORT, id, None);
        assert_eq!(
            other.to_string(),
            "send on socket#0 failed: Address family not supported by protocol (errno 97)"
        );
        let io = Error::Io {
            what: "epoll_create1",
            errno: libc::EMFILE,
        };
        assert_eq!(
            io.to_string(),
            "epoll_create1 failed: Too many open files (errno 24)"
        );
        for e in [&send, &peer, &other, &io] {
            assert!(!e.to_string().contains("os error"), "{e}");
        }
    }

    #[test]
    fn io_error_kinds() {
        let id = SocketId::new(1, 0);
        let dest: SocketAddr = "[::1]:9".parse().unwrap();
        let kind = |e: Error| io::Error::from(e).kind();
        for misuse in [
            Error::UnknownSocket(id),
            Error::WrongSocketKind {
                socket: id,
                expected: "a TCP stream",
            },
            Error::BufferTooLarge {
                socket: id,
                len: 10,
                max: 1,
            },
            Error::BadDestination {
                socket: id,
                dest,
                reason: "r",
            },
        ] {
            assert_eq!(kind(misuse), io::ErrorKind::InvalidInput);
        }
        let bp = Error::Backpressure {
            socket: id,
            limit: Limit::QueuedBytesTotal,
            max: 1,
        };
        assert_eq!(kind(bp), io::ErrorKind::WouldBlock);
        assert_eq!(
            kind(Error::FlushTimeout { socket: None }),
            io::ErrorKind::TimedOut
        );
        let reset = Error::socket(libc::ECONNRESET, id, None);
        assert_eq!(kind(reset), io::ErrorKind::ConnectionReset);
        let refused = Error::Peer {
            status: Status::ConnectionRefused,
            errno: libc::ECONNREFUSED,
            socket: id,
            peer: None,
        };
        assert_eq!(kind(refused), io::ErrorKind::ConnectionRefused);
        let io_err = io::Error::from(Error::socket(libc::EPIPE, id, None));
        // The engine's error rides along as the source, with its message.
        assert!(
            io_err.to_string().starts_with("send on socket#1"),
            "{io_err}"
        );
    }
}

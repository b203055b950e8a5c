//! [`TlsStream`]: a rustls session over a socket registered with an [`Engine`]. The engine
//! carries the ciphertext out; the session reads its peer's records from a duplicate of the
//! socket's descriptor (the engine only writes).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::alert::{local, tls_error};
use crate::error::{Error, TlsStatus};
use crate::sys::wait;
use crate::{Engine, FlushReport, SocketId};

/// Plaintext queued beyond this is encrypted and handed to the engine before the flush (whole
/// 16 KiB records either way), so a session never holds more than this in plaintext.
const SPILL_PLAINTEXT_BYTES: usize = 256 * 1024;

/// Ciphertext is handed to the engine in buffers of at most this size (slices of one
/// allocation: adjacent in memory, so the engine sends them as one iovec).
const CIPHERTEXT_BUFFER_BYTES: usize = 256 * 1024;

/// Read size for the peer's records (one maximal TLS record and its header).
const READ_BYTES: usize = 16 * 1024 + 256;

/// Counters of one TLS session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// TLS records handed to the engine (handshake, application data, alerts).
    pub records: u64,
    /// Ciphertext bytes handed to the engine: what goes on the wire.
    pub wire_bytes: u64,
    /// Application bytes encrypted.
    pub plaintext_bytes: u64,
    /// Application-data records among `records`, after the handshake.
    pub data_records: u64,
    /// How long the handshake took.
    pub handshake: Duration,
}

/// A TLS handshake to run over a registered socket: [`TlsStream::client`] or
/// [`TlsStream::server`], then [`Handshake::complete`].
#[derive(Debug)]
pub struct Handshake {
    conn: Connection,
    timeout: Duration,
}

impl Handshake {
    /// The longest the handshake may take (default 10 s): past it, [`Handshake::complete`]
    /// fails with [`TlsStatus::Timeout`], never hangs on a silent peer.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs the handshake on `id`, a TCP stream registered with `engine`, and returns the
    /// session. Everything queued on `id` before the call is flushed first, in the clear and
    /// in order: so a stream that exchanged plaintext (STARTTLS) is upgraded in place.
    ///
    /// The handshake's flights go out through the engine (one send and flush each); the
    /// peer's are read from the socket, each wait bounded by what is left of the timeout.
    ///
    /// # Errors
    /// [`Error::Tls`] naming what failed: the peer's alert (`certificate required`, `unknown
    /// CA`, `handshake failure`, …), a certificate this side refused, [`TlsStatus::Timeout`],
    /// or the peer closing mid-handshake ([`TlsStatus::Truncated`]); the stream's error from
    /// the engine (poisoned, reset); [`Error::UnknownSocket`]. Alerts this side raises are
    /// sent to the peer before the error returns.
    pub fn complete(self, engine: &mut Engine, id: SocketId) -> Result<TlsStream, Error> {
        let start = Instant::now();
        engine.flush(id)?;
        let fd = engine
            .socket_fd(id)?
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating the socket for TLS reads", &e))?;
        let mut conn = self.conn;
        // Plaintext is queued by the session and written at each flush whole: the session
        // bounds it, so rustls need not.
        conn.set_buffer_limit(None);
        let mut s = TlsStream {
            id,
            conn,
            fd,
            plain: Vec::new(),
            read_timeout: None,
            close_timeout: Duration::from_secs(10),
            stats: TlsStats::default(),
            failed: None,
            peer_closed: false,
            eof: false,
            closing: false,
        };
        let deadline = start + self.timeout;
        while s.conn.is_handshaking() {
            s.push(engine)?;
            s.flush_engine(engine)?;
            if !s.conn.is_handshaking() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = !left.is_zero()
                && wait::readable(s.fd.as_fd(), Some(left))
                    .map_err(|e| Error::io("poll for the TLS handshake", &e))?;
            if !ready {
                let e = local(
                    id,
                    TlsStatus::Timeout,
                    format!("the handshake did not finish within {:?}", self.timeout),
                );
                return Err(s.fail(e));
            }
            if s.read_records(engine)? == 0 && s.conn.is_handshaking() {
                let e = local(
                    id,
                    TlsStatus::Truncated,
                    "the peer closed the connection during the handshake",
                );
                return Err(s.fail(e));
            }
        }
        // The last flight (a client's Finished, a server's session tickets).
        s.push(engine)?;
        s.flush_engine(engine)?;
        s.stats.handshake = start.elapsed();
        // That flight left after `is_handshaking` turned false: not application data.
        s.stats.data_records = 0;
        Ok(s)
    }
}

/// A TLS session over a TCP stream registered with an [`Engine`].
///
/// - [`TlsStream::send`] queues plaintext and returns at once.
/// - [`TlsStream::flush`] encrypts everything queued into as few records as possible (full
///   16 KiB records; 1 024 writes of 64 bytes become 4 records, not 1 024), hands the
///   ciphertext to the engine as one batch and waits for the engine's barrier: it returns
///   once the ciphertext of every earlier write is sent. It also reads what the peer sent
///   meanwhile without waiting, so an alert (a refused client certificate, which TLS 1.3
///   servers send only after the client's handshake is done) or a peer that closed
///   mid-record fails the flush.
/// - [`TlsStream::read`] reads the peer's application data through rustls.
/// - [`TlsStream::close`] sends `close_notify`, flushes, and waits for the peer's
///   `close_notify` (or alert): only then has the peer accepted everything.
///
/// A TLS error poisons the session: later calls return the same error.
#[derive(Debug)]
pub struct TlsStream {
    id: SocketId,
    conn: Connection,
    /// A duplicate of the registered socket's descriptor, for reads only.
    fd: OwnedFd,
    /// Plaintext queued since the last seal.
    plain: Vec<u8>,
    read_timeout: Option<Duration>,
    close_timeout: Duration,
    stats: TlsStats,
    failed: Option<Error>,
    /// The peer's `close_notify` arrived.
    peer_closed: bool,
    /// The socket read EOF.
    eof: bool,
    /// This side sent `close_notify`.
    closing: bool,
}

impl TlsStream {
    /// A client handshake with `config` for `server_name` (a DNS name or an IP address, checked
    /// against the server's certificate); run it with [`Handshake::complete`].
    ///
    /// # Errors
    /// [`Error::Tls`] ([`TlsStatus::Config`]) for a name that is neither.
    pub fn client(config: Arc<ClientConfig>, server_name: &str) -> Result<Handshake, Error> {
        let bad = |detail: String| Error::Tls {
            socket: None,
            status: TlsStatus::Config,
            from_peer: false,
            detail,
        };
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| bad(format!("server name {server_name:?}: {e}")))?;
        let conn = ClientConnection::new(config, name).map_err(|e| bad(e.to_string()))?;
        Ok(Handshake {
            conn: conn.into(),
            timeout: Duration::from_secs(10),
        })
    }

    /// A server handshake with `config`; run it with [`Handshake::complete`].
    ///
    /// # Errors
    /// [`Error::Tls`] ([`TlsStatus::Config`]) if rustls refuses the configuration.
    pub fn server(config: Arc<ServerConfig>) -> Result<Handshake, Error> {
        let conn = ServerConnection::new(config).map_err(|e| Error::Tls {
            socket: None,
            status: TlsStatus::Config,
            from_peer: false,
            detail: e.to_string(),
        })?;
        Ok(Handshake {
            conn: conn.into(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The engine socket the session runs on.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// The rustls session (protocol version, cipher suite, the peer's certificates).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Counters: records, wire and plaintext bytes, handshake time.
    pub fn stats(&self) -> &TlsStats {
        &self.stats
    }

    /// Plaintext queued and not yet encrypted.
    pub fn queued_plaintext(&self) -> usize {
        self.plain.len()
    }

    /// How long [`TlsStream::read`] waits for the peer (default: without limit).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// How long [`TlsStream::close`] waits for the peer's `close_notify` (default 10 s).
    pub fn set_close_timeout(&mut self, t: Duration) {
        self.close_timeout = t;
    }

    fn check(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.closing => Err(local(
                self.id,
                TlsStatus::Protocol,
                "the session was closed (close_notify sent)",
            )),
            None => Ok(()),
        }
    }

    /// Poisons the session with `e` and returns it.
    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        e
    }

    /// Queues `data` (copied) as plaintext; nothing is encrypted or sent until
    /// [`TlsStream::flush`], except that past 256 KiB queued the full records are encrypted
    /// and handed to the engine (not waited for).
    ///
    /// # Errors
    /// The session's error if it failed or was closed; the engine's refusal while handing
    /// over ciphertext.
    pub fn send(&mut self, engine: &mut Engine, data: &[u8]) -> Result<(), Error> {
        self.check()?;
        self.plain.extend_from_slice(data);
        if self.plain.len() >= SPILL_PLAINTEXT_BYTES {
            self.seal(engine)?;
        }
        Ok(())
    }

    /// Encrypts the queued plaintext and hands the ciphertext (with anything else rustls has to
    /// send) to the engine, without waiting: the step [`TlsStream::flush`] and
    /// [`TlsStream::try_flush`] start with.
    ///
    /// # Errors
    /// As [`TlsStream::send`].
    pub fn seal(&mut self, engine: &mut Engine) -> Result<(), Error> {
        let hint = sealed_len(self.plain.len());
        if !self.plain.is_empty() {
            let n = self.plain.len();
            // The buffer limit is off: rustls takes it all, in records of ≤ 16 KiB.
            let written = self
                .conn
                .writer()
                .write(&self.plain)
                .map_err(|e| local(self.id, TlsStatus::Protocol, e.to_string()))?;
            debug_assert_eq!(written, n);
            self.plain.clear();
            self.stats.plaintext_bytes += n as u64;
        }
        self.push_sized(engine, hint)
    }

    /// Takes what rustls has to send, as one buffer, and queues it on the engine.
    fn push(&mut self, engine: &mut Engine) -> Result<(), Error> {
        self.push_sized(engine, 0)
    }

    /// [`TlsStream::push`] into a buffer of `hint` bytes to start with (no regrowth while
    /// collecting a flush's records).
    fn push_sized(&mut self, engine: &mut Engine, hint: usize) -> Result<(), Error> {
        if !self.conn.wants_write() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(hint);
        while self.conn.wants_write() {
            self.conn
                .write_tls(&mut out)
                .map_err(|e| Error::io("collecting TLS records", &e))?;
        }
        let records = count_records(&out);
        self.stats.records += records;
        if !self.conn.is_handshaking() {
            self.stats.data_records += records;
        }
        self.stats.wire_bytes += out.len() as u64;
        let mut out = Bytes::from(out);
        while !out.is_empty() {
            let piece = out.split_to(out.len().min(CIPHERTEXT_BUFFER_BYTES));
            self.queue(engine, piece)?;
        }
        Ok(())
    }

    /// Queues one ciphertext buffer, making room with a flush under backpressure.
    fn queue(&mut self, engine: &mut Engine, piece: Bytes) -> Result<(), Error> {
        match engine.send(self.id, piece) {
            Ok(()) => Ok(()),
            Err(refused) if refused.is_backpressure() => {
                self.flush_engine(engine)?;
                engine
                    .send(self.id, refused.into_inner())
                    .map_err(|e| self.explain(e.into()))
            }
            Err(refused) => Err(self.explain(refused.into())),
        }
    }

    /// The engine's barrier on the session's socket, its error explained by an alert if one
    /// is waiting.
    fn flush_engine(&mut self, engine: &mut Engine) -> Result<FlushReport, Error> {
        engine.flush(self.id).map_err(|e| self.explain(e))
    }

    /// A stream error from the engine, or the TLS reason behind it: a peer that refused the
    /// session sends an alert and closes, and the alert is what to report.
    fn explain(&mut self, e: Error) -> Error {
        if matches!(e, Error::Socket { .. }) {
            if let Err(tls) = self.read_ready() {
                if matches!(tls, Error::Tls { .. }) {
                    return self.fail(tls);
                }
            }
        }
        e
    }

    /// The flush barrier: encrypts everything queued into as few records as possible, hands
    /// the ciphertext to the engine as one batch, and returns when every earlier write's
    /// ciphertext is sent (the engine's report: its `bytes` are wire bytes). Then reads,
    /// without waiting, what the peer sent meanwhile, so that an alert fails the flush.
    ///
    /// # Errors
    /// [`Error::Tls`]: the peer's alert, or its closing without `close_notify`
    /// ([`TlsStatus::Truncated`]); the stream's error from the engine (reset, broken pipe,
    /// [`Error::FlushTimeout`]).
    pub fn flush(&mut self, engine: &mut Engine) -> Result<FlushReport, Error> {
        self.check()?;
        self.seal(engine)?;
        let report = self.flush_engine(engine)?;
        self.read_ready()?;
        Ok(report)
    }

    /// The flush barrier without blocking: seals, then [`Engine::try_flush`]; `Some` once the
    /// ciphertext of every earlier write is sent.
    ///
    /// # Errors
    /// As [`TlsStream::flush`].
    pub fn try_flush(&mut self, engine: &mut Engine) -> Result<Option<FlushReport>, Error> {
        self.check()?;
        self.seal(engine)?;
        match engine.try_flush(self.id) {
            Ok(Some(r)) => {
                self.read_ready()?;
                Ok(Some(r))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// Reads the peer's records once from the socket (without waiting) and processes them;
    /// returns the bytes read (0 at EOF, or when nothing was waiting: `self.eof` tells).
    /// Alerts rustls raises in reply are queued for the next flush.
    fn read_records(&mut self, engine: &mut Engine) -> Result<usize, Error> {
        let r = self.read_once();
        if let Err(Error::Tls { .. }) = &r {
            // Tell the peer why (best effort: the session is failing anyway).
            let _ = self.push(engine);
            let _ = engine.flush(self.id);
        }
        r
    }

    /// One `read_tls` and `process_new_packets`, no waiting.
    fn read_once(&mut self) -> Result<usize, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let n = match self.conn.read_tls(&mut FdRead(self.fd.as_fd())) {
            Ok(0) => {
                self.eof = true;
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                return Err(self.fail(Error::socket(errno, self.id, None)));
            }
        };
        match self.conn.process_new_packets() {
            Ok(state) => {
                if state.peer_has_closed() {
                    self.peer_closed = true;
                }
                Ok(n)
            }
            Err(e) => {
                let e = tls_error(self.id, &e);
                Err(self.fail(e))
            }
        }
    }

    /// Reads whatever the peer has sent, without waiting, while rustls has room for it: an
    /// alert or a close without `close_notify` becomes the session's error.
    fn read_ready(&mut self) -> Result<(), Error> {
        while self.conn.wants_read() && !self.eof {
            if self.read_once()? == 0 {
                break;
            }
        }
        if self.eof && !self.peer_closed {
            let e = local(
                self.id,
                TlsStatus::Truncated,
                "the peer closed the connection without close_notify (what it read may be cut short)",
            );
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Reads the peer's application data, waiting up to the read timeout. `Ok(0)`: the peer
    /// sent `close_notify` (the end of its data).
    ///
    /// # Errors
    /// [`Error::Tls`]: the peer's alert; its closing without `close_notify`
    /// ([`TlsStatus::Truncated`]); [`TlsStatus::Timeout`] after the read timeout; a socket
    /// error.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(n) = self.try_read(buf)? {
                return Ok(n);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = left != Some(Duration::ZERO)
                && wait::readable(self.fd.as_fd(), left)
                    .map_err(|e| Error::io("poll for TLS data", &e))?;
            if !ready {
                return Err(local(
                    self.id,
                    TlsStatus::Timeout,
                    "no data from the peer within the read timeout",
                ));
            }
            self.read_once()?;
        }
    }

    /// Reads the peer's application data without waiting: `None` when nothing has arrived.
    ///
    /// # Errors
    /// As [`TlsStream::read`].
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let e = local(
                        self.id,
                        TlsStatus::Truncated,
                        "the peer closed the connection without close_notify (its data may be cut short)",
                    );
                    return Err(self.fail(e));
                }
                Err(e) => return Err(local(self.id, TlsStatus::Protocol, e.to_string())),
            }
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            if self.eof {
                // rustls answers Ok(0) or UnexpectedEof once EOF was read; defensive only.
                return Ok(Some(0));
            }
            if self.read_once()? == 0 && !self.eof {
                return Ok(None);
            }
        }
    }

    /// Ends the session: flushes what is queued, sends `close_notify`, then reads (discarding
    /// application data) until the peer's `close_notify` or alert, up to the close timeout,
    /// and closes the socket. `Ok` means the peer took the session as complete: a TLS 1.3
    /// server that refuses the client's certificate after the handshake answers with an alert
    /// here, and then it has discarded everything.
    ///
    /// # Errors
    /// [`Error::Tls`]: the peer's alert, [`TlsStatus::Truncated`] for EOF without
    /// `close_notify`, [`TlsStatus::Timeout`]; the stream's error. The socket is closed in
    /// every case.
    pub fn close(mut self, engine: &mut Engine) -> Result<FlushReport, Error> {
        let r = self.shutdown(engine);
        let closed = engine.close(self.id);
        let report = r?;
        closed?;
        Ok(report)
    }

    /// [`TlsStream::close`] without closing the socket: `close_notify` out, the peer's in (or
    /// its alert), within the close timeout. The session takes no more writes afterwards; its
    /// counters stay readable.
    ///
    /// # Errors
    /// As [`TlsStream::close`].
    pub fn shutdown(&mut self, engine: &mut Engine) -> Result<FlushReport, Error> {
        self.check()?;
        self.seal(engine)?;
        self.conn.send_close_notify();
        self.closing = true;
        self.push(engine)?;
        let report = self.flush_engine(engine)?;
        let deadline = Instant::now() + self.close_timeout;
        let mut scratch = [0u8; 4096];
        loop {
            // Drain application data the peer sent before its close_notify.
            loop {
                match self.conn.reader().read(&mut scratch) {
                    Ok(0) if self.peer_closed => return Ok(report),
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            if self.peer_closed {
                return Ok(report);
            }
            if self.eof {
                return Err(self.fail(local(
                    self.id,
                    TlsStatus::Truncated,
                    "the peer closed the connection without answering close_notify: it may not have accepted the data",
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = !left.is_zero()
                && wait::readable(self.fd.as_fd(), Some(left))
                    .map_err(|e| Error::io("poll for the peer's close_notify", &e))?;
            if !ready {
                return Err(self.fail(local(
                    self.id,
                    TlsStatus::Timeout,
                    format!(
                        "no close_notify from the peer within {:?}",
                        self.close_timeout
                    ),
                )));
            }
            self.read_once()?;
        }
    }
}

/// `io::Read` over a borrowed socket, reading with `MSG_DONTWAIT`.
struct FdRead<'a>(BorrowedFd<'a>);

impl Read for FdRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(READ_BYTES);
        wait::recv(self.0, &mut buf[..n])
    }
}

/// Room for the records of `plain` plaintext bytes: per 16 KiB record a 5-byte header and up to
/// 64 bytes of content type, padding and tag, plus slack for a key update or alert queued
/// ahead of them.
fn sealed_len(plain: usize) -> usize {
    if plain == 0 {
        return 0;
    }
    plain + (plain / (16 * 1024) + 1) * 69 + 256
}

/// TLS records in `buf`, a run of whole records (5-byte header: type, version, length).
pub(crate) fn count_records(buf: &[u8]) -> u64 {
    let mut at = 0usize;
    let mut n = 0u64;
    while let Some(h) = buf.get(at..at + 5) {
        at += 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::count_records;

    #[test]
    fn counts_whole_records() {
        let mut buf = Vec::new();
        for len in [0u16, 1, 300, 16 * 1024 + 17] {
            buf.extend_from_slice(&[23, 3, 3]);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.resize(buf.len() + usize::from(len), 0xaa);
        }
        assert_eq!(count_records(&buf), 4);
        assert_eq!(count_records(&[]), 0);
    }
}

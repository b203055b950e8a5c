//! TLS on tokio (features `tokio` and `tls`): a [`TlsSender`] (`AsyncWrite`) and a
//! [`TlsReader`] (`AsyncRead`) over one rustls session, composed with the plain adapters: the
//! ciphertext goes through a [`TcpSender`] (so `poll_flush` is the engine's barrier) and comes
//! in through a [`TcpReader`].
//!
//! As with [`TlsStream`](crate::tls::TlsStream): writes queue plaintext; a flush encrypts
//! everything queued into as few records as possible and hands them to the engine as one
//! batch, then waits for the barrier.

use std::cell::RefCell;
use std::io::{self, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use bytes::Bytes;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::{Driver, TcpReader, TcpSender};
use crate::error::{Error, TlsStatus};
use crate::tls::alert::{local, tls_error};

/// Plaintext queued beyond this is sealed and handed over before the flush.
const SPILL_PLAINTEXT_BYTES: usize = 256 * 1024;

/// The sending half of a TLS session over the engine: `poll_write` queues plaintext,
/// `poll_flush` seals it into records, hands them to the engine and is the barrier,
/// `poll_shutdown` sends `close_notify`, flushes and half-closes.
pub struct TlsSender {
    tcp: TcpSender,
    conn: Rc<RefCell<Connection>>,
    plain: Vec<u8>,
    /// Ciphertext sealed and not yet handed to the `TcpSender`, and how much of it was.
    sealed: Vec<u8>,
    handed: usize,
    closing: bool,
}

impl std::fmt::Debug for TlsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSender")
            .field("tcp", &self.tcp)
            .field("queued_plaintext", &self.plain.len())
            .finish_non_exhaustive()
    }
}

/// The reading half: the peer's application data, decrypted. EOF (`Ok(0)`) is the peer's
/// `close_notify`; a close without it is `UnexpectedEof`, an alert is `InvalidData` carrying
/// the [`Error::Tls`].
pub struct TlsReader {
    id: crate::SocketId,
    tcp: TcpReader,
    conn: Rc<RefCell<Connection>>,
    buf: Box<[u8]>,
}

impl std::fmt::Debug for TlsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReader").finish_non_exhaustive()
    }
}

/// Connects a TLS client over `stream` through `driver`'s engine: the handshake runs within
/// `timeout`, then the halves are returned.
///
/// # Errors
/// [`Error::Tls`] naming what failed (the peer's alert, a refused certificate,
/// [`TlsStatus::Timeout`]); the engine's errors.
pub async fn connect(
    driver: &Driver,
    stream: ::tokio::net::TcpStream,
    config: Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<(TlsReader, TlsSender), Error> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| Error::Tls {
        socket: None,
        status: TlsStatus::Config,
        from_peer: false,
        detail: format!("server name {server_name:?}: {e}"),
    })?;
    let conn = ClientConnection::new(config, name).map_err(|e| Error::Tls {
        socket: None,
        status: TlsStatus::Config,
        from_peer: false,
        detail: e.to_string(),
    })?;
    handshake(driver, stream, conn.into(), timeout).await
}

/// Accepts a TLS client over `stream` (server side), as [`connect`].
///
/// # Errors
/// As [`connect`].
pub async fn accept(
    driver: &Driver,
    stream: ::tokio::net::TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<(TlsReader, TlsSender), Error> {
    let conn = ServerConnection::new(config).map_err(|e| Error::Tls {
        socket: None,
        status: TlsStatus::Config,
        from_peer: false,
        detail: e.to_string(),
    })?;
    handshake(driver, stream, conn.into(), timeout).await
}

async fn handshake(
    driver: &Driver,
    stream: ::tokio::net::TcpStream,
    mut conn: Connection,
    timeout: Duration,
) -> Result<(TlsReader, TlsSender), Error> {
    let (mut reader, mut sender) = driver.split_tcp(stream)?;
    let id = sender.id();
    conn.set_buffer_limit(None);
    let mut buf = vec![0u8; 18 * 1024].into_boxed_slice();
    let run = async {
        loop {
            if conn.wants_write() {
                let mut out = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut out)
                        .map_err(|e| Error::io("collecting TLS records", &e))?;
                }
                sender.send(Bytes::from(out)).await?;
                sender.flush().await?;
            }
            if !conn.is_handshaking() {
                return Ok(());
            }
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| Error::io("reading the TLS handshake", &e))?;
            if n == 0 {
                return Err(local(
                    id,
                    TlsStatus::Truncated,
                    "the peer closed the connection during the handshake",
                ));
            }
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                conn.read_tls(&mut rd)
                    .map_err(|e| Error::io("buffering TLS records", &e))?;
                if let Err(e) = conn.process_new_packets() {
                    // Tell the peer why (best effort), then fail.
                    let mut out = Vec::new();
                    while conn.wants_write() && conn.write_tls(&mut out).is_ok() {}
                    if sender.send(Bytes::from(out)).await.is_ok() {
                        let _ = sender.flush().await;
                    }
                    return Err(tls_error(id, &e));
                }
            }
        }
    };
    match ::tokio::time::timeout(timeout, run).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(local(
                id,
                TlsStatus::Timeout,
                format!("the handshake did not finish within {timeout:?}"),
            ))
        }
    }
    let conn = Rc::new(RefCell::new(conn));
    Ok((
        TlsReader {
            id,
            tcp: reader,
            conn: Rc::clone(&conn),
            buf,
        },
        TlsSender {
            tcp: sender,
            conn,
            plain: Vec::new(),
            sealed: Vec::new(),
            handed: 0,
            closing: false,
        },
    ))
}

impl TlsSender {
    /// The rustls session (shared with the reader).
    pub fn connection(&self) -> std::cell::Ref<'_, Connection> {
        self.conn.borrow()
    }

    /// Seals the queued plaintext (and anything else rustls has to send) into `sealed`.
    fn seal(&mut self) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        if !self.plain.is_empty() {
            conn.writer().write_all(&self.plain)?;
            self.plain.clear();
        }
        if self.handed == self.sealed.len() {
            self.sealed.clear();
            self.handed = 0;
        }
        while conn.wants_write() {
            conn.write_tls(&mut self.sealed)?;
        }
        Ok(())
    }

    /// Hands the sealed ciphertext to the `TcpSender` (which copies it into its queue).
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.handed < self.sealed.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.sealed[self.handed..]))?;
            self.handed += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsSender {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session was shut down",
            )));
        }
        if this.plain.len() >= SPILL_PLAINTEXT_BYTES {
            this.seal()?;
            ready!(this.poll_hand_over(cx))?;
        }
        this.plain.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.seal()?;
        ready!(this.poll_hand_over(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.seal()?;
            this.conn.borrow_mut().send_close_notify();
            this.closing = true;
        }
        this.seal()?;
        ready!(this.poll_hand_over(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for TlsReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            {
                let mut conn = this.conn.borrow_mut();
                match io::Read::read(&mut conn.reader(), out.initialize_unfilled()) {
                    Ok(n) => {
                        out.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut rb))?;
            let mut rd = rb.filled();
            let mut conn = this.conn.borrow_mut();
            if rd.is_empty() {
                // EOF: rustls then answers Ok(0) (after close_notify) or UnexpectedEof.
                conn.read_tls(&mut rd)?;
            }
            while !rd.is_empty() {
                conn.read_tls(&mut rd)?;
                if let Err(e) = conn.process_new_packets() {
                    let err = tls_error(this.id, &e);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, err)));
                }
            }
        }
    }
}

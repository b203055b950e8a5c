//! `TcpSender` (`AsyncWrite` whose flush is the barrier) and `TcpReader` (`AsyncRead` that
//! never blocks, whatever mode the engine put the socket in).

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use bytes::{Bytes, BytesMut};

use super::driver::Sock;
use super::flush::FlushState;
use super::Driver;
use crate::{Error, FlushReport, SendError, SocketId};

/// Writes of at most this many bytes are copied into the sender's arena (one allocation per
/// arena, not per write) before the engine stages them.
const ARENA_WRITE_MAX: usize = 4096;
/// The arena's size.
const ARENA_BYTES: usize = 64 * 1024;

/// The sending side of a TCP stream registered with a [`Driver`]'s engine.
///
/// - [`AsyncWrite::poll_write`] queues a copy of the slice and returns at once; nothing is
///   sent yet. Under backpressure (a queue limit reached) it returns `Pending` and wakes the
///   task when the engine has made room: never an error, never a growing queue.
/// - [`AsyncWrite::poll_flush`] is the flush barrier: ready once every write accepted before it
///   is terminal, or with the stream's first error. It yields once before submitting, so that
///   the writes other ready tasks make meanwhile go to the kernel in the same batch.
/// - [`AsyncWrite::poll_shutdown`] flushes, then half-closes (`shutdown(SHUT_WR)`): the peer
///   reads every accepted byte, then EOF.
///
/// As with a `BufWriter`, writes reach the kernel on a flush (or when backpressure forces it,
/// or [`Driver::submit`]): flush when a batch is complete. [`TcpSender::send`] queues an owned
/// buffer without copying.
///
/// Clones share the socket: writes from every clone are queued in the order they are made, and
/// a flush on one covers every write accepted on any clone before it. The socket is closed
/// when the last clone is dropped (after what is queued has been sent; [`TcpSender::close`]
/// waits for that).
pub struct TcpSender {
    sock: Rc<Sock>,
    flush: FlushState,
    arena: BytesMut,
}

impl std::fmt::Debug for TcpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSender")
            .field("id", &self.sock.id)
            .field("accepted", &self.sock.accepted.get())
            .field("resolved", &self.sock.resolved.get())
            .finish_non_exhaustive()
    }
}

impl Clone for TcpSender {
    /// Another handle on the same socket, with its own flush in progress (none yet).
    fn clone(&self) -> TcpSender {
        TcpSender::new(Rc::clone(&self.sock))
    }
}

impl TcpSender {
    pub(crate) fn new(sock: Rc<Sock>) -> TcpSender {
        TcpSender {
            sock,
            flush: FlushState::default(),
            arena: BytesMut::new(),
        }
    }

    /// The socket's id in the engine.
    pub fn id(&self) -> SocketId {
        self.sock.id
    }

    /// The driver whose engine this sender uses.
    pub fn driver(&self) -> Driver {
        self.sock.driver()
    }

    /// Queues `data` without copying it, waiting (without blocking the thread) while a queue
    /// limit refuses it.
    ///
    /// # Errors
    /// The stream's error if it is poisoned or shut down; [`Error::BufferTooLarge`] for a
    /// buffer above the per-socket limit.
    pub async fn send(&mut self, data: Bytes) -> Result<(), Error> {
        let mut data = Some(data);
        poll_fn(|cx| self.poll_send(cx, &mut data)).await
    }

    /// Queues `data` if the engine takes it now.
    ///
    /// # Errors
    /// As [`crate::Engine::send`]: the refused buffer comes back in the [`SendError`].
    pub fn try_send(&mut self, data: Bytes) -> Result<(), SendError> {
        self.sock.shared.send(&self.sock, data, None)
    }

    /// The flush barrier: returns when every write accepted on this socket (by any clone)
    /// before the call is terminal, with what happened to the writes that became terminal
    /// since the previous completed flush.
    ///
    /// # Errors
    /// The stream's first error (the socket is then poisoned); [`Error::Io`] if the engine's
    /// own system calls fail.
    pub async fn flush(&mut self) -> Result<FlushReport, Error> {
        poll_fn(|cx| self.poll_flush_report(cx)).await
    }

    /// Flushes, then drops this sender; the socket closes when no clone is left.
    ///
    /// # Errors
    /// As [`TcpSender::flush`].
    pub async fn close(mut self) -> Result<FlushReport, Error> {
        self.flush().await
    }

    /// What the last completed flush on this socket covered (`None` before the first).
    pub fn last_report(&self) -> Option<FlushReport> {
        self.sock.last_report()
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Option<Bytes>,
    ) -> Poll<Result<(), Error>> {
        self.sock.shared.poll_queue(cx, &self.sock, data, None)
    }

    fn poll_flush_report(&mut self, cx: &mut Context<'_>) -> Poll<Result<FlushReport, Error>> {
        ready!(self.flush.poll(cx, &self.sock))?;
        Poll::Ready(Ok(self.sock.complete_flush()))
    }

    /// A copy of `bufs` (concatenated) as one `Bytes`: small writes are carved from the arena.
    fn copy(&mut self, bufs: &[&[u8]]) -> Bytes {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len > ARENA_WRITE_MAX {
            let mut v = BytesMut::with_capacity(len);
            bufs.iter().for_each(|b| v.extend_from_slice(b));
            return v.freeze();
        }
        if self.arena.capacity() < len {
            // The old arena lives on in the writes still holding parts of it.
            self.arena = BytesMut::with_capacity(ARENA_BYTES);
        }
        bufs.iter().for_each(|b| self.arena.extend_from_slice(b));
        self.arena.split().freeze()
    }

    fn poll_write_bytes(&mut self, cx: &mut Context<'_>, data: Bytes) -> Poll<io::Result<usize>> {
        let len = data.len();
        let mut data = Some(data);
        match ready!(self.poll_send(cx, &mut data)) {
            Ok(()) => Poll::Ready(Ok(len)),
            // One write above the per-socket limit: take what fits (AsyncWrite may write less).
            Err(Error::BufferTooLarge { max, .. }) if max > 0 && len > max => {
                let Some(mut part) = data.take() else {
                    return Poll::Ready(Ok(0));
                };
                part.truncate(max);
                let n = part.len();
                let mut part = Some(part);
                ready!(self.poll_send(cx, &mut part))?;
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

impl AsyncWrite for TcpSender {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let data = this.copy(&[buf]);
        this.poll_write_bytes(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        let data = this.copy(&slices);
        this.poll_write_bytes(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.flush.poll(cx, &this.sock))?;
        this.sock.complete_flush();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.sock.shut.get() {
                return Poll::Ready(Ok(()));
            }
            ready!(this.flush.poll(cx, &this.sock))?;
            this.sock.complete_flush();
            // Writes another clone made while this one waited are not covered yet: the
            // shutdown waits for them too (so the engine's own flush has nothing to wait for).
            if this.sock.unflushed() {
                continue;
            }
            this.sock
                .shared
                .engine
                .borrow_mut()
                .shutdown_write(this.sock.id)?;
            this.sock.shut.set(true);
        }
    }
}

/// The reading side of a TCP stream whose sending side is a [`TcpSender`] (see
/// [`Driver::split_tcp`]). Reads with `MSG_DONTWAIT`, so they never block even though the
/// io_uring backend keeps the socket in blocking mode.
#[derive(Debug)]
pub struct TcpReader {
    fd: AsyncFd<OwnedFd>,
}

impl TcpReader {
    pub(crate) fn new(fd: OwnedFd) -> Result<TcpReader, Error> {
        let fd = crate::sys::tokio::register_readable(fd)
            .map_err(|e| Error::io("registering a socket with tokio", &e))?;
        Ok(TcpReader { fd })
    }

    /// Reads what has arrived, without waiting: for draining a burst after a read woke the
    /// task, so that everything read in one wake-up can go out as one batch.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] when nothing is waiting; otherwise the socket's error.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd.try_io(Interest::READABLE, |fd| {
            crate::sys::tokio::recv(fd.as_fd(), buf)
        })
    }
}

impl AsyncRead for TcpReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| crate::sys::tokio::recv(fd.get_ref().as_fd(), unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: readiness cleared, poll again.
                Err(_would_block) => continue,
            }
        }
    }
}

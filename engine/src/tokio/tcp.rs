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

use super::driver::{Sock, OUT_CHUNK_BYTES};
use super::flush::FlushState;
use super::Driver;
use crate::{Error, FlushReport, SocketId};

/// The sending side of a TCP stream registered with a [`Driver`]'s engine.
///
/// - [`AsyncWrite::poll_write`] copies the slice and returns at once; nothing is sent yet. Runs
///   of small writes are copied into one chunk of the socket, handed to the engine as one
///   buffer every 64 KiB (or at the flush); a write of 64 KiB or more becomes a buffer of its
///   own. Under backpressure (a queue limit reached) it returns `Pending` and wakes the task
///   when the engine has made room: never an error, and nothing grows beyond the engine's
///   limits but the chunk being filled and the one buffer the limit last refused.
/// - [`AsyncWrite::poll_flush`] is the flush barrier: ready once every write accepted before it
///   is terminal, or with the stream's first error. It yields once before submitting, so that
///   the writes other ready tasks make meanwhile go to the kernel in the same batch (unless
///   this is the engine's only sender handle: then no other task can write through it).
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
}

impl std::fmt::Debug for TcpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSender")
            .field("id", &self.sock.id)
            .field("written", &self.sock.written.get())
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
            flush: FlushState::new(&sock.shared),
            sock,
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
        poll_fn(|cx| {
            // Everything written before goes first; then the buffer is taken as it is.
            self.sock.seal_out();
            ready!(self.sock.shared.poll_drain(Some(cx), &self.sock))?;
            if let Some(d) = data.take().filter(|d| !d.is_empty()) {
                self.sock
                    .written
                    .set(self.sock.written.get() + d.len() as u64);
                self.sock.held.borrow_mut().push_back(d);
                ready!(self.sock.shared.poll_drain(None, &self.sock))?;
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The flush barrier: returns when every write made on this socket (by any clone) before
    /// the call is terminal, with what happened to the buffers that became terminal since the
    /// previous completed flush (`writes` counts the engine's buffers: a run of small writes is
    /// one).
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

    fn poll_flush_report(&mut self, cx: &mut Context<'_>) -> Poll<Result<FlushReport, Error>> {
        ready!(self.flush.poll(cx, &self.sock))?;
        Poll::Ready(Ok(self.sock.complete_flush()))
    }

    /// `AsyncWrite`'s write: waits until what was handed over earlier is queued (the only
    /// wait: nothing of `bufs` is taken before), then copies `bufs` into the socket's chunk
    /// of small writes, or into a buffer of its own if it is large.
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[&[u8]],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let shared = &self.sock.shared;
        if !self.sock.held.borrow().is_empty() {
            ready!(shared.poll_drain(Some(cx), &self.sock))?;
        }
        {
            let mut out = self.sock.out.borrow_mut();
            if out.len() + len > OUT_CHUNK_BYTES || out.capacity() - out.len() < len {
                // The chunk is full: it goes to the engine as one buffer.
                drop(out);
                self.sock.seal_out();
                out = self.sock.out.borrow_mut();
            }
            if len >= OUT_CHUNK_BYTES {
                let mut own = BytesMut::with_capacity(len);
                bufs.iter().for_each(|b| own.extend_from_slice(b));
                self.sock.held.borrow_mut().push_back(own.freeze());
            } else {
                if out.capacity() - out.len() < len {
                    // Empty here: a fresh chunk (the previous one lives on in the engine).
                    *out = BytesMut::with_capacity(OUT_CHUNK_BYTES);
                }
                bufs.iter().for_each(|b| out.extend_from_slice(b));
            }
        }
        self.sock.written.set(self.sock.written.get() + len as u64);
        // Hand sealed chunks over now (a refusal stays held for the next write or the flush).
        if !self.sock.held.borrow().is_empty() {
            ready!(shared.poll_drain(None, &self.sock))?;
        }
        Poll::Ready(Ok(len))
    }
}

impl AsyncWrite for TcpSender {
    // Inlined into the caller's `write_all`: the common case (a small write that fits the
    // chunk being filled) is one copy and two counter updates, no call into the slow path.
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sock.try_append(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        this.poll_write_slices(cx, &[buf])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        self.get_mut().poll_write_slices(cx, &slices)
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
            match guard.try_io(|fd| crate::sys::tokio::recv_buf(fd.get_ref().as_fd(), buf)) {
                Ok(Ok(())) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: readiness cleared, poll again.
                Err(_would_block) => continue,
            }
        }
    }
}

//! `UdpSender` (`Sink` of datagrams whose flush is the barrier) and `UdpReader` (receives that
//! never block, whatever mode the engine put the socket in).

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use bytes::Bytes;
use futures_sink::Sink;

use super::driver::Sock;
use super::flush::FlushState;
use super::Driver;
use crate::{Error, FlushReport, SendError, SocketId};

/// The sending side of a UDP socket registered with a [`Driver`]'s engine.
///
/// - `Sink<Bytes>` sends on a connected socket, `Sink<(Bytes, SocketAddr)>` to a destination
///   on an unconnected one. `start_send` queues the datagram; `poll_ready` is `Pending` while a
///   queue limit holds the one datagram refused last (backpressure: never an error, never a
///   growing queue).
/// - `poll_flush` (and `poll_close`) is the flush barrier: ready once every datagram queued
///   before it is terminal. Datagrams fail alone, so their failures are counted in the report
///   ([`UdpSender::last_report`], or the return of [`UdpSender::flush`]), not raised.
///
/// Clones share the socket, as [`super::TcpSender`]'s do; the socket is closed when the last
/// clone is dropped.
pub struct UdpSender {
    sock: Rc<Sock>,
    flush: FlushState,
    /// A datagram a queue limit refused, sent again before anything else.
    held: Option<(Bytes, Option<SocketAddr>)>,
}

impl std::fmt::Debug for UdpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSender")
            .field("id", &self.sock.id)
            .field("written", &self.sock.written.get())
            .field("resolved", &self.sock.resolved.get())
            .field("held", &self.held.as_ref().map(|(b, _)| b.len()))
            .finish_non_exhaustive()
    }
}

impl Clone for UdpSender {
    /// Another handle on the same socket, with no flush in progress and no datagram held.
    fn clone(&self) -> UdpSender {
        UdpSender::new(Rc::clone(&self.sock))
    }
}

impl UdpSender {
    pub(crate) fn new(sock: Rc<Sock>) -> UdpSender {
        UdpSender {
            flush: FlushState::new(&sock.shared),
            sock,
            held: None,
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

    /// Queues a datagram on a connected socket, waiting while a queue limit refuses it.
    ///
    /// # Errors
    /// As [`crate::Engine::send`], backpressure excepted.
    pub async fn send(&mut self, data: Bytes) -> Result<(), Error> {
        self.queue(data, None).await
    }

    /// Queues a datagram to `dest` on an unconnected socket, waiting while a queue limit
    /// refuses it.
    ///
    /// # Errors
    /// As [`crate::Engine::send_to`], backpressure excepted.
    pub async fn send_to(&mut self, data: Bytes, dest: SocketAddr) -> Result<(), Error> {
        self.queue(data, Some(dest)).await
    }

    /// Queues a datagram (`dest` for an unconnected socket) if the engine takes it now.
    ///
    /// # Errors
    /// As [`crate::Engine::send`]: the refused buffer comes back in the [`SendError`].
    pub fn try_send(&mut self, data: Bytes, dest: Option<SocketAddr>) -> Result<(), SendError> {
        self.sock.shared.send(&self.sock, data, dest)
    }

    /// The flush barrier: returns when every datagram queued on this socket (by any clone)
    /// before the call is terminal, with the report of the datagrams that became terminal
    /// since the previous completed flush (sent, failed, per status).
    ///
    /// # Errors
    /// Engine failures only ([`Error::Io`]); datagram failures are in the report.
    pub async fn flush(&mut self) -> Result<FlushReport, Error> {
        poll_fn(|cx| {
            ready!(self.poll_held(cx))?;
            ready!(self.flush.poll(cx, &self.sock))?;
            Poll::Ready(Ok(self.sock.complete_flush()))
        })
        .await
    }

    /// What the last completed flush on this socket covered (`None` before the first).
    pub fn last_report(&self) -> Option<FlushReport> {
        self.sock.last_report()
    }

    /// The ICMP errors reported about datagrams this socket sent
    /// ([`crate::Engine::take_peer_errors`]).
    ///
    /// # Errors
    /// [`Error::UnknownSocket`].
    pub fn take_peer_errors(&self) -> Result<Vec<Error>, Error> {
        self.sock
            .shared
            .engine
            .borrow_mut()
            .take_peer_errors(self.sock.id)
    }

    async fn queue(&mut self, data: Bytes, dest: Option<SocketAddr>) -> Result<(), Error> {
        poll_fn(|cx| self.poll_held(cx)).await?;
        self.start(data, dest);
        poll_fn(|cx| self.poll_held(cx)).await
    }

    /// Queues a datagram, or holds it if a limit refuses it (the caller then polls `poll_held`).
    fn start(&mut self, data: Bytes, dest: Option<SocketAddr>) {
        debug_assert!(self.held.is_none(), "start_send without poll_ready");
        self.held = Some((data, dest));
    }

    /// Queues a datagram now if the engine takes it, else holds it (backpressure) for
    /// `poll_held`; a refusal other than backpressure is this datagram's error.
    fn start_now(&mut self, data: Bytes, dest: Option<SocketAddr>) -> Result<(), Error> {
        debug_assert!(self.held.is_none(), "start_send without poll_ready");
        match self.sock.shared.send(&self.sock, data, dest) {
            Ok(()) => Ok(()),
            Err(se) if se.is_backpressure() => {
                self.held = Some((se.into_inner(), dest));
                Ok(())
            }
            Err(se) => Err(se.into_parts().0),
        }
    }

    /// Sends the held datagram, if any: `Ready(Ok)` once none is held. A refusal other than
    /// backpressure is that datagram's error, and drops it.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some((data, dest)) = self.held.take() else {
            return Poll::Ready(Ok(()));
        };
        let mut slot = Some(data);
        let r = self.sock.shared.poll_queue(cx, &self.sock, &mut slot, dest);
        if r.is_pending() {
            self.held = slot.map(|d| (d, dest));
        }
        r
    }

    fn poll_flush_barrier(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.poll_held(cx))?;
        ready!(self.flush.poll(cx, &self.sock))?;
        self.sock.complete_flush();
        Poll::Ready(Ok(()))
    }
}

impl Sink<Bytes> for UdpSender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_held(cx)
    }

    /// Queues the datagram (connected socket). A refused one is held until `poll_ready`.
    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<(), Error> {
        let this = self.get_mut();
        this.start_now(item, None)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_barrier(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_barrier(cx)
    }
}

impl Sink<(Bytes, SocketAddr)> for UdpSender {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_held(cx)
    }

    /// Queues the datagram to its destination (unconnected socket). A refused one is held
    /// until `poll_ready`.
    fn start_send(self: Pin<&mut Self>, (item, dest): (Bytes, SocketAddr)) -> Result<(), Error> {
        let this = self.get_mut();
        this.start_now(item, Some(dest))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_barrier(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_barrier(cx)
    }
}

/// The receiving side of a UDP socket whose sending side is a [`UdpSender`] (see
/// [`Driver::split_udp`]). Receives with `MSG_DONTWAIT`, so they never block even though the
/// io_uring backend keeps the socket in blocking mode.
#[derive(Debug)]
pub struct UdpReader {
    fd: AsyncFd<OwnedFd>,
}

impl UdpReader {
    pub(crate) fn new(fd: OwnedFd) -> Result<UdpReader, Error> {
        let fd = crate::sys::tokio::register_readable(fd)
            .map_err(|e| Error::io("registering a socket with tokio", &e))?;
        Ok(UdpReader { fd })
    }

    /// Receives one datagram into `buf` (truncated if longer), with its source.
    ///
    /// # Errors
    /// The socket's receive error.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Receives one datagram into `buf` if one is waiting, else `Pending` (the task is woken
    /// when one arrives).
    ///
    /// # Errors
    /// The socket's receive error.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match guard.try_io(|fd| crate::sys::tokio::recv_from(fd.get_ref().as_fd(), buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives a datagram if one is waiting now.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] when none is; otherwise the socket's receive error.
    pub fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.fd.try_io(Interest::READABLE, |fd| {
            crate::sys::tokio::recv_from(fd.as_fd(), buf)
        })
    }
}

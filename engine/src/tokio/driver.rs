//! The per-thread driver: one [`Engine`] shared by every sender on a thread, made progress
//! through `AsyncFd` on the engine's descriptor.
//!
//! Nothing here is a task of its own: whichever sender waits (for its barrier, or for room
//! under backpressure) polls the engine's readiness, submits, and wakes the others. Every
//! waiter registers its waker in one fan-out list, and the descriptor's readiness and the
//! backoff timer are polled with the fan-out's waker, so `AsyncFd`'s single waker slot never
//! loses a task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Wake, Waker};

use ::tokio::io::unix::AsyncFd;
use ::tokio::time::{Instant, Sleep};
use bytes::{Bytes, BytesMut};

use super::tcp::TcpSender;
use super::udp::UdpSender;
use crate::{Engine, Error, FlushReport, SendError, SocketId};

/// One engine for the senders of one thread, driven by the tokio runtime that thread runs.
///
/// Cloning is cheap (a reference count); every clone, and every sender made from one, shares
/// the same engine, so writes from all of them go to the kernel in the same batches.
///
/// The driver and its senders are `!Send`: use them on a `current_thread` runtime, or in a
/// [`tokio::task::LocalSet`](::tokio::task::LocalSet). On a multi-thread runtime, give each
/// worker its own driver ([`Driver::current`] keeps one per thread) and run the tasks that use
/// it with `spawn_local` in a `LocalSet` on that worker: a sender is pinned to the thread whose
/// driver made it. The runtime needs IO and time enabled (`enable_all`).
#[derive(Clone)]
pub struct Driver {
    pub(crate) shared: Rc<Shared>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("backend", &self.shared.engine.borrow().backend())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// This thread's driver, while anything still holds it.
    static CURRENT: RefCell<Weak<Shared>> = const { RefCell::new(Weak::new()) };
}

impl Driver {
    /// Drives `engine` from the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Io`] if the engine's descriptor cannot be duplicated or registered with the
    /// runtime's reactor.
    ///
    /// # Panics
    /// Outside a tokio runtime, or on one without IO enabled (as `AsyncFd` does).
    pub fn new(engine: Engine) -> Result<Driver, Error> {
        // A duplicate, so the reactor's registration owns its descriptor outright; the engine
        // keeps the original.
        let dup = engine
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("dup of the engine's descriptor", &e))?;
        let fd = crate::sys::tokio::register_readable(dup)
            .map_err(|e| Error::io("registering the engine's descriptor with tokio", &e))?;
        let fanout = Arc::new(FanOut::default());
        let fanout_waker = Waker::from(Arc::clone(&fanout));
        Ok(Driver {
            shared: Rc::new(Shared {
                fd,
                engine: RefCell::new(engine),
                fanout,
                fanout_waker,
                round: Cell::new(0),
                handles: Cell::new(0),
                timer: RefCell::new(None),
                closing: RefCell::new(Vec::new()),
            }),
        })
    }

    /// This thread's driver: the one an earlier call made, while any clone or sender of it is
    /// alive; otherwise a new one over `Engine::builder().build()` (the backend from
    /// `VOLLEY_BACKEND`, else `Auto`). The way to get one engine per worker thread.
    ///
    /// # Errors
    /// As [`Engine::builder`]'s `build` and [`Driver::new`].
    ///
    /// # Panics
    /// As [`Driver::new`].
    pub fn current() -> Result<Driver, Error> {
        if let Some(shared) = CURRENT.with(|c| c.borrow().upgrade()) {
            return Ok(Driver { shared });
        }
        let driver = Driver::new(Engine::builder().build()?)?;
        CURRENT.with(|c| *c.borrow_mut() = Rc::downgrade(&driver.shared));
        Ok(driver)
    }

    /// Hands a connected TCP stream to the engine and returns its sender. The engine owns the
    /// socket (and puts it in the mode its backend needs) until the last clone of the sender is
    /// dropped.
    ///
    /// To read from the same connection, use [`Driver::split_tcp`]: a plain tokio read on a
    /// socket the io_uring backend has made blocking could block the thread.
    ///
    /// # Errors
    /// As [`Engine::register_tcp`].
    pub fn register_tcp(&self, stream: TcpStream) -> Result<TcpSender, Error> {
        let id = self.shared.engine.borrow_mut().register_tcp(stream)?;
        Ok(TcpSender::new(self.sock(id, true)))
    }

    /// Splits an accepted or connected tokio stream into a reader (reads that never block,
    /// whatever the socket's mode) and a sender through this driver's engine.
    ///
    /// # Errors
    /// [`Error::Io`] if the stream cannot leave tokio's reactor, be duplicated or be
    /// registered; otherwise as [`Engine::register_tcp`].
    pub fn split_tcp(
        &self,
        stream: ::tokio::net::TcpStream,
    ) -> Result<(super::TcpReader, TcpSender), Error> {
        let std = stream
            .into_std()
            .map_err(|e| Error::io("taking the stream from tokio", &e))?;
        let reader = super::TcpReader::new(dup(&std)?)?;
        Ok((reader, self.register_tcp(std)?))
    }

    /// Hands a UDP socket to the engine: connected (use the `Sink<Bytes>` side of the sender)
    /// or not (`Sink<(Bytes, SocketAddr)>`).
    ///
    /// # Errors
    /// As [`Engine::register_udp`].
    pub fn register_udp(&self, socket: UdpSocket) -> Result<UdpSender, Error> {
        let id = self.shared.engine.borrow_mut().register_udp(socket)?;
        Ok(UdpSender::new(self.sock(id, false)))
    }

    /// Splits a tokio UDP socket into a receiver (reads that never block, whatever the
    /// socket's mode) and a sender through this driver's engine: replies leave from the port
    /// the requests came to.
    ///
    /// # Errors
    /// As [`Driver::split_tcp`] and [`Engine::register_udp`].
    pub fn split_udp(
        &self,
        socket: ::tokio::net::UdpSocket,
    ) -> Result<(super::UdpReader, UdpSender), Error> {
        let std = socket
            .into_std()
            .map_err(|e| Error::io("taking the socket from tokio", &e))?;
        let reader = super::UdpReader::new(dup(&std)?)?;
        Ok((reader, self.register_udp(std)?))
    }

    /// Hands everything queued on every socket of this engine to the kernel now, without
    /// waiting for anything (a flush does this too, and then waits for its barrier).
    ///
    /// # Errors
    /// [`Error::Io`] if the backend's own system call fails.
    pub fn submit(&self) -> Result<(), Error> {
        self.shared.submit()
    }

    /// Runs `f` on the engine (statistics, backend, limits). Do not block in it (a blocking
    /// `flush` stalls every task of the thread), and do not use this driver's senders in it:
    /// the engine is borrowed meanwhile.
    ///
    /// # Panics
    /// If called from inside another `with_engine` of the same driver.
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        f(&mut self.shared.engine.borrow_mut())
    }

    fn sock(&self, id: SocketId, stream: bool) -> Rc<Sock> {
        Rc::new(Sock {
            shared: Rc::clone(&self.shared),
            id,
            stream,
            written: Cell::new(0),
            handed: Cell::new(0),
            barrier: Cell::new(None),
            resolved: Cell::new(0),
            error: RefCell::new(None),
            report: RefCell::new(FlushReport::default()),
            last: RefCell::new(None),
            shut: Cell::new(false),
            out: RefCell::new(BytesMut::new()),
            held: RefCell::new(VecDeque::new()),
            max_chunk: Cell::new(usize::MAX),
        })
    }
}

fn dup(fd: &impl AsFd) -> Result<OwnedFd, Error> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("dup of a socket for reading", &e))
}

/// The wakers of every task waiting on the engine. Tokio holds this (as a `Waker`) in the
/// descriptor's and the timer's single waker slots and wakes it on readiness; it wakes them all.
#[derive(Default)]
pub(crate) struct FanOut {
    // A `Mutex`, not a `RefCell`: a multi-thread runtime may wake this from the reactor's thread.
    wakers: Mutex<Vec<Waker>>,
}

impl FanOut {
    fn register(&self, w: &Waker) {
        let mut ws = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if !ws.iter().any(|x| x.will_wake(w)) {
            ws.push(w.clone());
        }
    }

    fn wake_all(&self) {
        let ws = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for w in ws {
            w.wake();
        }
    }
}

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// What every driver clone and sender of one thread shares.
pub(crate) struct Shared {
    /// Declared before `engine`: the reactor lets go of its duplicate first.
    fd: AsyncFd<OwnedFd>,
    pub(crate) engine: RefCell<Engine>,
    fanout: Arc<FanOut>,
    fanout_waker: Waker,
    /// Flush rounds started: a flush yields once before submitting, so that the writes other
    /// ready tasks make meanwhile join the same submission, and only the first flusher back in
    /// a round submits.
    pub(crate) round: Cell<u64>,
    /// Sender handles alive (clones included): with one, no other task can add writes to a
    /// flush's batch, so the flush does not yield.
    pub(crate) handles: Cell<usize>,
    /// The engine's backoff timer ([`Engine::next_timeout`]).
    timer: RefCell<Option<Pin<Box<Sleep>>>>,
    /// Sockets whose last sender was dropped with writes still queued: closed once drained.
    closing: RefCell<Vec<SocketId>>,
}

impl Shared {
    /// What waiters wait for: fewer writes, or fewer bytes, not yet terminal.
    fn progress_mark(e: &Engine) -> (u64, usize) {
        (e.pending_writes(), e.total_queued_bytes())
    }

    /// `Engine::submit`, then wakes the waiters if anything became terminal.
    pub(crate) fn submit(&self) -> Result<(), Error> {
        self.step(Engine::submit)
    }

    /// Runs one non-blocking engine call and, if writes became terminal meanwhile, closes
    /// drained sockets whose senders are gone and wakes the waiters.
    fn step<R>(&self, f: impl FnOnce(&mut Engine) -> Result<R, Error>) -> Result<R, Error> {
        let (r, moved) = {
            let mut e = self.engine.borrow_mut();
            let before = Self::progress_mark(&e);
            let r = f(&mut e);
            let moved = Self::progress_mark(&e) != before;
            if moved {
                self.close_drained(&mut e);
            }
            (r, moved)
        };
        if moved {
            self.fanout.wake_all();
        }
        r
    }

    fn close_drained(&self, e: &mut Engine) {
        let mut closing = self.closing.borrow_mut();
        closing.retain(|&id| match e.queued_bytes(id) {
            Ok(0) => {
                // Nothing queued: `close` flushes nothing and returns at once.
                let _ = e.close(id);
                false
            }
            Ok(_) => true,
            Err(_) => false,
        });
    }

    /// Queues a write (`dest`: an unconnected UDP socket's destination) and counts it.
    pub(crate) fn send(
        &self,
        sock: &Sock,
        data: Bytes,
        dest: Option<SocketAddr>,
    ) -> Result<(), SendError> {
        let len = data.len();
        let mut e = self.engine.borrow_mut();
        match dest {
            None => e.send(sock.id, data)?,
            Some(d) => e.send_to(sock.id, data, d)?,
        }
        let units = sock.units(len);
        sock.handed.set(sock.handed.get() + units);
        if !sock.stream {
            // A datagram is written when the engine takes it (a stream's bytes when copied).
            sock.written.set(sock.written.get() + units);
        }
        Ok(())
    }

    /// Queues the write in `slot` (`dest`: an unconnected UDP socket's destination), waiting
    /// while a queue limit refuses it: `Ready(Ok)` once the slot is empty. A refusal other than
    /// backpressure leaves the buffer in the slot.
    pub(crate) fn poll_queue(
        &self,
        cx: &mut Context<'_>,
        sock: &Sock,
        slot: &mut Option<Bytes>,
        dest: Option<SocketAddr>,
    ) -> Poll<Result<(), Error>> {
        let mut submitted = false;
        loop {
            let Some(data) = slot.take() else {
                return Poll::Ready(Ok(()));
            };
            let Err(refused) = self.send(sock, data, dest) else {
                return Poll::Ready(Ok(()));
            };
            let backpressure = refused.is_backpressure();
            let (e, data) = refused.into_parts();
            *slot = Some(data);
            if !backpressure {
                return Poll::Ready(Err(e));
            }
            // The queue may be full only because nothing was submitted yet.
            if !submitted {
                submitted = true;
                self.submit()?;
                continue;
            }
            ready!(self.poll_progress(cx))?;
        }
    }

    /// Hands `sock`'s held buffers to the engine in order. With `cx`, waits while a queue
    /// limit refuses them (`Ready(Ok)` once none is held); without, returns `Ready(Ok)` at the
    /// first refusal and leaves the rest held (never `Pending`).
    pub(crate) fn poll_drain(
        &self,
        mut cx: Option<&mut Context<'_>>,
        sock: &Sock,
    ) -> Poll<Result<(), Error>> {
        let mut submitted = false;
        loop {
            let front = sock.held.borrow_mut().pop_front();
            let Some(mut data) = front else {
                return Poll::Ready(Ok(()));
            };
            if data.len() > sock.max_chunk.get() {
                let rest = data.split_off(sock.max_chunk.get());
                sock.held.borrow_mut().push_front(rest);
            }
            let Err(refused) = self.send(sock, data, None) else {
                continue;
            };
            let (e, data) = refused.into_parts();
            sock.held.borrow_mut().push_front(data);
            match e {
                Error::BufferTooLarge { max, .. } if max > 0 => sock.max_chunk.set(max),
                Error::Backpressure { .. } => {
                    let Some(cx) = cx.as_deref_mut() else {
                        return Poll::Ready(Ok(()));
                    };
                    // The queue may be full only because nothing was submitted yet.
                    if !submitted {
                        submitted = true;
                        self.submit()?;
                        continue;
                    }
                    ready!(self.poll_progress(cx))?;
                }
                e => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Waits for the engine to be able to make progress (the descriptor readable, or the
    /// backoff timer expired), then submits. `Ready(Ok)` means "look again": the caller
    /// re-checks its condition and calls this again if it still waits.
    pub(crate) fn poll_progress(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Registered before polling: a multi-thread runtime's reactor may wake the fan-out from
        // another thread as soon as the descriptor is armed.
        self.fanout.register(cx.waker());
        let mut fcx = Context::from_waker(&self.fanout_waker);
        match self.fd.poll_read_ready(&mut fcx) {
            Poll::Ready(Ok(mut guard)) => {
                // Cleared before reaping: a completion after this sets readiness again (tokio
                // keeps a readiness event newer than the guard), one before it is reaped now.
                guard.clear_ready();
                drop(guard);
                self.submit()?;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(Err(Error::io("polling the engine's descriptor", &e)));
            }
            Poll::Pending => {}
        }
        let next = self.engine.borrow().next_timeout();
        let Some(after) = next else {
            return Poll::Pending;
        };
        let deadline = Instant::now() + after;
        let mut timer = self.timer.borrow_mut();
        let sleep = match &mut *timer {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            none => none.insert(Box::pin(::tokio::time::sleep_until(deadline))),
        };
        if sleep.as_mut().poll(&mut fcx).is_pending() {
            return Poll::Pending;
        }
        drop(timer);
        self.submit()?;
        Poll::Ready(Ok(()))
    }

    /// Waits until every write on `sock` up to position `target` is terminal (or the
    /// stream failed), moving the engine's barriers forward as needed.
    pub(crate) fn poll_barrier(
        &self,
        cx: &mut Context<'_>,
        sock: &Sock,
        target: u64,
    ) -> Poll<Result<(), Error>> {
        loop {
            if let Some(e) = &*sock.error.borrow() {
                return Poll::Ready(Err(e.clone()));
            }
            if sock.resolved.get() >= target {
                return Poll::Ready(Ok(()));
            }
            // The engine's barrier, set by the first `try_flush`, covers everything handed over
            // before it; one already up covers what was handed over before it was set.
            let cover = match sock.barrier.get() {
                Some(c) => c,
                None => {
                    sock.barrier.set(Some(sock.handed.get()));
                    sock.handed.get()
                }
            };
            match self.step(|e| e.try_flush(sock.id)) {
                Ok(Some(report)) => {
                    sock.barrier.set(None);
                    sock.resolved.set(cover);
                    sock.report.borrow_mut().merge(report);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, Error::Socket { .. }) {
                        // The stream's first error: the barrier is down and the socket
                        // poisoned; every later flush reports the same error.
                        sock.barrier.set(None);
                        *sock.error.borrow_mut() = Some(e.clone());
                    }
                    return Poll::Ready(Err(e));
                }
            }
            match self.poll_progress(cx) {
                Poll::Ready(Ok(())) => continue,
                other => return other,
            }
        }
    }
}

/// A socket's state shared by the clones of its sender. Positions count stream bytes, or
/// datagrams (see [`Sock::units`]), written so far: a flush waits for everything up to the
/// position current when it started.
/// (1, 2, …): a flush waits for every write up to the number current when it started.
pub(crate) struct Sock {
    pub(crate) shared: Rc<Shared>,
    pub(crate) id: SocketId,
    /// A TCP stream (else UDP).
    stream: bool,
    /// The position written so far (copied into `out`/`held`, or taken by the engine).
    pub(crate) written: Cell<u64>,
    /// The position the engine has taken so far.
    pub(crate) handed: Cell<u64>,
    /// The position the engine's barrier (set by a `try_flush`) covers, while it is up.
    barrier: Cell<Option<u64>>,
    /// Every write up to this position is terminal.
    pub(crate) resolved: Cell<u64>,
    /// The stream's fatal error, once a flush has reported it.
    pub(crate) error: RefCell<Option<Error>>,
    /// Reports of barriers resolved since the last completed flush.
    report: RefCell<FlushReport>,
    /// What the last completed flush covered.
    last: RefCell<Option<FlushReport>>,
    /// `shutdown_write` is done.
    pub(crate) shut: Cell<bool>,
    /// Stream writes copied from `AsyncWrite` slices, not yet handed to the engine: a run of
    /// small writes becomes one buffer (at most [`OUT_CHUNK_BYTES`]), so the engine sees one
    /// queue entry per chunk instead of one per write.
    pub(crate) out: RefCell<BytesMut>,
    /// Buffers handed over in order that a queue limit refused for now: they go before
    /// anything else of this socket.
    pub(crate) held: RefCell<VecDeque<Bytes>>,
    /// The largest buffer the engine takes on this socket (learnt from `BufferTooLarge`).
    max_chunk: Cell<usize>,
}

/// The size at which a run of small stream writes is handed to the engine as one buffer.
pub(crate) const OUT_CHUNK_BYTES: usize = 64 * 1024;

impl Sock {
    /// The driver this socket's engine belongs to.
    pub(crate) fn driver(&self) -> Driver {
        Driver {
            shared: Rc::clone(&self.shared),
        }
    }

    /// How far a write of `len` bytes moves the position: its bytes on a stream (whose
    /// writes the engine sees merged), one per datagram.
    pub(crate) fn units(&self, len: usize) -> u64 {
        if self.stream {
            len as u64
        } else {
            1
        }
    }

    /// Whether writes were made that no completed barrier covers.
    pub(crate) fn unflushed(&self) -> bool {
        self.resolved.get() < self.written.get()
    }

    /// `poll_write`'s fast path: copies `buf` into the chunk being filled if nothing is held
    /// back and it fits (true), else leaves everything to the slow path (false).
    #[inline]
    pub(crate) fn try_append(&self, buf: &[u8]) -> bool {
        let len = buf.len();
        let mut out = self.out.borrow_mut();
        let fits = len > 0
            && out.capacity() - out.len() >= len
            && out.len() + len <= OUT_CHUNK_BYTES
            && self.held.borrow().is_empty();
        if fits {
            out.extend_from_slice(buf);
            self.written.set(self.written.get() + len as u64);
        }
        fits
    }

    /// Moves the copied writes into the hand-over queue, behind what is already there.
    pub(crate) fn seal_out(&self) {
        let mut out = self.out.borrow_mut();
        if !out.is_empty() {
            self.held.borrow_mut().push_back(out.split().freeze());
        }
    }

    /// A flush completed: what it (and any flush since the previous completion) covered.
    pub(crate) fn complete_flush(&self) -> FlushReport {
        let r = std::mem::take(&mut *self.report.borrow_mut());
        *self.last.borrow_mut() = Some(r.clone());
        r
    }

    pub(crate) fn last_report(&self) -> Option<FlushReport> {
        self.last.borrow().clone()
    }
}

impl Drop for Sock {
    /// The last sender is gone: close the socket now if nothing is queued, else once the
    /// engine has sent what is (as it makes progress for the thread's other senders).
    fn drop(&mut self) {
        // What was written but not handed over goes first (what a queue limit refuses now is
        // lost: nobody is left to wait for room).
        if self.shared.engine.try_borrow_mut().is_ok() {
            self.seal_out();
            let _ = self.shared.poll_drain(None, self);
        }
        let Ok(e) = self.shared.engine.try_borrow_mut() else {
            // Dropped inside `with_engine`: the next step closes it.
            self.shared.closing.borrow_mut().push(self.id);
            return;
        };
        let queued = e.queued_bytes(self.id);
        drop(e);
        if matches!(queued, Ok(0)) {
            // Nothing queued or in flight: `close` flushes nothing and returns at once.
            let _ = self.shared.engine.borrow_mut().close(self.id);
        } else if queued.is_ok() {
            self.shared.closing.borrow_mut().push(self.id);
            let _ = self.shared.submit();
        }
    }
}

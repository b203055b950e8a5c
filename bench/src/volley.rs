//! `epoll` and `uring`: volley's two backends. Every message is queued with `Engine::send` (or
//! `send_to`) as a `Bytes` slice; each batch ends with one flush barrier: the blocking `flush`,
//! or (`epoll-poll`, `uring-poll`) `try_flush` plus `poll(2)` on the engine's descriptor, as an
//! event loop drives it.

use std::net::SocketAddr;

use bytes::Bytes;
use volley::{Backend, Engine, Error, FlushAllReport, FlushReport, SendError, SocketId};

use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// One engine per method per scenario, built outside the timed sections.
#[derive(Debug)]
pub struct Volley {
    engine: Engine,
    ids: Vec<SocketId>,
    /// Barriers through `try_flush` + `poll(2)` instead of the blocking flush.
    event_loop: bool,
}

impl Volley {
    /// Builds an engine on `backend` and registers the sender sockets.
    ///
    /// # Errors
    /// The engine's error (e.g. io_uring unavailable).
    pub fn new(backend: Backend, conns: Conns, event_loop: bool) -> Result<Volley, Error> {
        let mut engine = Engine::builder()
            .backend(backend)
            // No clock reads per message in the hot path: the bench times batches itself.
            .write_latency_every(0)
            .flush_latency_every(0)
            .build()?;
        let ids = match conns {
            Conns::Tcp(streams) => streams
                .into_iter()
                .map(|s| engine.register_tcp(s).map_err(Error::from))
                .collect::<Result<Vec<_>, _>>(),
            Conns::Udp(u) => engine
                .register_udp(u)
                .map(|id| vec![id])
                .map_err(Error::from),
        }?;
        Ok(Volley {
            engine,
            ids,
            event_loop,
        })
    }
}

/// The barrier on `id`: blocking, or (`event_loop`) as an event loop drives it.
fn barrier(engine: &mut Engine, event_loop: bool, id: SocketId) -> Result<FlushReport, Error> {
    if !event_loop {
        return engine.flush(id);
    }
    loop {
        if let Some(r) = engine.try_flush(id)? {
            return Ok(r);
        }
        wait_readable(engine, engine.next_timeout());
    }
}

/// `poll(2)` on the engine's descriptor until it is readable (or `timeout` passes).
fn wait_readable(engine: &Engine, timeout: Option<std::time::Duration>) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: engine.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| {
        i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Queues the next message for `peer`; on backpressure flushes everything and sends the same
/// message again.
#[inline(always)]
fn send(
    engine: &mut Engine,
    id: SocketId,
    w: &mut Workload,
    peer: usize,
    dest: Option<SocketAddr>,
) -> Result<(), String> {
    match queue(engine, id, w.next(peer), dest) {
        Ok(()) => Ok(()),
        Err(e) => refused(engine, id, dest, e),
    }
}

#[inline(always)]
fn queue(
    engine: &mut Engine,
    id: SocketId,
    b: Bytes,
    dest: Option<SocketAddr>,
) -> Result<(), SendError> {
    match dest {
        None => engine.send(id, b),
        Some(d) => engine.send_to(id, b, d),
    }
}

/// The rare path of [`send`]: backpressure (flush, then the same message, handed back, again)
/// or an error.
#[cold]
#[inline(never)]
fn refused(
    engine: &mut Engine,
    id: SocketId,
    dest: Option<SocketAddr>,
    e: SendError,
) -> Result<(), String> {
    if !e.is_backpressure() {
        return Err(e.to_string());
    }
    check_udp(engine.flush_all().and_then(FlushAllReport::into_result))?;
    queue(engine, id, e.into_inner(), dest).map_err(|e| e.to_string())
}

/// A flush that failed, or reported failed datagrams, is a failed round.
fn check_udp(r: Result<FlushReport, Error>) -> Result<(), String> {
    let r = r.map_err(|e| e.to_string())?;
    if r.failed > 0 {
        let by: Vec<String> = r
            .failures_by_status()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        return Err(format!("{} datagrams failed ({})", r.failed, by.join(", ")));
    }
    Ok(())
}

/// TCP messages up to this size go through [`volley::StreamWriter`] (the engine's default
/// staging threshold, `coalesce_below_bytes`).
const WRITER_MAX_BYTES: usize = 512;

/// `n` messages for `peer` through a `StreamWriter`: each copied into the stream's staging;
/// on backpressure, flush everything and write the same message again.
#[inline(always)]
fn write_small(
    engine: &mut Engine,
    id: SocketId,
    w: &mut Workload,
    peer: usize,
    n: usize,
) -> Result<(), String> {
    let mut wr = engine.writer(id).map_err(|e| e.to_string())?;
    for _ in 0..n {
        let b = w.next_slice(peer);
        if let Err(e) = wr.write(b) {
            if !e.is_backpressure() {
                return Err(e.to_string());
            }
            wr.flush().map_err(|e| e.to_string())?;
            wr.write(b).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The barrier of a TCP batch: one stream's, or every stream's.
fn finish_tcp(engine: &mut Engine, ids: &[SocketId], event_loop: bool) -> Result<(), String> {
    if let [id] = ids[..] {
        barrier(engine, event_loop, id).map_err(|e| e.to_string())?;
    } else if event_loop {
        for &id in ids {
            barrier(engine, event_loop, id).map_err(|e| e.to_string())?;
        }
    } else {
        engine
            .flush_all()
            .and_then(FlushAllReport::into_result)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Method for Volley {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let spec = w.spec;
        // Fields borrowed apart: no copy of the ids per batch.
        let Volley {
            engine,
            ids,
            event_loop,
        } = self;
        let (engine, event_loop) = (engine, *event_loop);
        match spec.kind {
            // Small messages are written by reference through a `StreamWriter` (copied into
            // the engine's staging, as a `BufWriter` copies them); big ones, and one message
            // per flush (a writer per message costs more than the one `send` it feeds: the
            // flush sends the `Bytes` directly), are handed over as `Bytes` (no copy).
            Kind::Tcp if spec.msg_size <= WRITER_MAX_BYTES && spec.per_peer > 1 => {
                for (peer, &id) in ids.iter().enumerate() {
                    write_small(engine, id, w, peer, spec.per_peer)?;
                }
                finish_tcp(engine, ids, event_loop)?;
            }
            Kind::Tcp => {
                for (peer, &id) in ids.iter().enumerate() {
                    for _ in 0..spec.per_peer {
                        send(engine, id, w, peer, None)?;
                    }
                }
                finish_tcp(engine, ids, event_loop)?;
            }
            Kind::UdpConnected => {
                let id = ids[0];
                for _ in 0..spec.per_peer {
                    send(engine, id, w, 0, None)?;
                }
                check_udp(barrier(engine, event_loop, id))?;
            }
            Kind::UdpUnconnected => {
                let id = ids[0];
                for (peer, _) in spec.send_order() {
                    let dest = Some(w.dests[peer]);
                    send(engine, id, w, peer, dest)?;
                }
                check_udp(barrier(engine, event_loop, id))?;
            }
        }
        Ok(())
    }

    fn own_transitions(&self) -> Option<u64> {
        Some(self.engine.stats().kernel_transitions)
    }
}

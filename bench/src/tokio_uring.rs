//! `tokio-uring`: one owned-buffer write/send future per message (`Bytes`), all of a batch
//! submitted, then joined; the runtime runs on the bench thread.
//!
//! tokio-uring has no ordering between concurrent writes on one stream: if the kernel punts
//! one (full send buffer), later ones may complete first. The receiver's pattern check catches
//! that, and a short write (which a lone `write` does not resume) fails the round.
//!
//! `tokio-uring-writev` (TCP): per socket one `writev` of the whole batch's buffers (at most
//! 1024 per call), resubmitted from the exact byte after a short write; the sockets' writevs run
//! concurrently and are joined.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use tokio_uring::net::{TcpStream, UdpSocket};
use tokio_uring::Runtime;

use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// A tokio-uring runtime and the sender sockets converted to its types.
pub struct TokioUring {
    tcp: Vec<TcpStream>,
    udp: Option<UdpSocket>,
    /// TCP: one `writev` per socket per batch instead of a future per buffer.
    writev: bool,
    rt: Runtime,
}

impl std::fmt::Debug for TokioUring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioUring")
            .field("tcp", &self.tcp.len())
            .field("udp", &self.udp.is_some())
            .field("writev", &self.writev)
            .finish_non_exhaustive()
    }
}

/// Submission queue entries: a whole 1024-message batch fits without an intermediate submit.
const RING_ENTRIES: u32 = 1024;

/// Buffers per `writev` at most (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;

impl TokioUring {
    /// Builds the runtime (an io_uring) and converts the sockets; `writev` selects
    /// `tokio-uring-writev`.
    ///
    /// # Errors
    /// When io_uring cannot be set up, as text.
    pub fn new(conns: Conns, writev: bool) -> Result<TokioUring, String> {
        let rt = Runtime::new(tokio_uring::builder().entries(RING_ENTRIES))
            .map_err(|e| format!("tokio-uring runtime: {e}"))?;
        let (tcp, udp) = rt.block_on(async {
            match conns {
                Conns::Tcp(streams) => {
                    (streams.into_iter().map(TcpStream::from_std).collect(), None)
                }
                Conns::Udp(u) => (Vec::new(), Some(UdpSocket::from_std(u))),
            }
        });
        Ok(TokioUring {
            tcp,
            udp,
            writev,
            rt,
        })
    }
}

/// A lone write or send: a failure or a short write is an error.
fn whole((res, buf): (io::Result<usize>, Bytes)) -> Result<(), String> {
    match res {
        Ok(k) if k == buf.len() => Ok(()),
        Ok(k) => Err(format!("short write: {k} of {} bytes", buf.len())),
        Err(e) => Err(format!("write: {e}")),
    }
}

/// Writes all of `bufs` to `s`: `writev` of up to [`MAX_IOV`] buffers at a time, resubmitting
/// the rest from the exact byte after a short write.
async fn writev_all(s: &TcpStream, mut bufs: Vec<Bytes>) -> Result<(), String> {
    while !bufs.is_empty() {
        let rest = if bufs.len() > MAX_IOV {
            bufs.split_off(MAX_IOV)
        } else {
            Vec::new()
        };
        let mut left: usize = bufs.iter().map(Bytes::len).sum();
        while left > 0 {
            let (res, mut back) = s.writev(bufs).await;
            let n = res.map_err(|e| format!("writev: {e}"))?;
            if n == 0 {
                return Err("writev wrote nothing".into());
            }
            left = left
                .checked_sub(n)
                .ok_or_else(|| format!("writev wrote {n} bytes, more than the {left} asked"))?;
            if left > 0 {
                consume(&mut back, n);
            }
            bufs = back;
        }
        bufs = rest;
    }
    Ok(())
}

/// Drops the first `n` bytes of `bufs` (fewer than they hold): the buffers written whole go,
/// the next one starts at its first unwritten byte.
fn consume(bufs: &mut Vec<Bytes>, mut n: usize) {
    let mut whole = 0;
    while n >= bufs[whole].len() {
        n -= bufs[whole].len();
        whole += 1;
    }
    bufs.drain(..whole);
    bufs[0] = bufs[0].slice(n..);
}

/// Polls every future of a batch until all are done; the first error that `check` finds in an
/// output is the error. One allocation per batch (the pinned slice), none per message.
async fn join_all<F>(
    futs: Vec<F>,
    check: impl Fn(F::Output) -> Result<(), String>,
) -> Result<(), String>
where
    F: Future,
{
    let mut futs: Pin<Box<[F]>> = Box::into_pin(futs.into_boxed_slice());
    let n = futs.len();
    let mut done = vec![false; n];
    let mut first = 0;
    let mut err: Option<String> = None;
    std::future::poll_fn(|cx| {
        for i in first..n {
            if done[i] {
                continue;
            }
            // SAFETY: the futures live in a pinned boxed slice that is never moved or resized;
            // we only project a pinned reference to one element in place.
            let f = unsafe { futs.as_mut().map_unchecked_mut(|s| &mut s[i]) };
            if let Poll::Ready(out) = f.poll(cx) {
                done[i] = true;
                if let Err(e) = check(out) {
                    err.get_or_insert(e);
                }
            }
        }
        while first < n && done[first] {
            first += 1;
        }
        if first == n {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    err.map_or(Ok(()), Err)
}

impl Method for TokioUring {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let TokioUring {
            tcp,
            udp,
            writev,
            rt,
        } = self;
        let spec = w.spec;
        rt.block_on(async {
            match (spec.kind, &*udp) {
                (Kind::Tcp, _) if *writev => {
                    let mut futs = Vec::with_capacity(tcp.len());
                    for (peer, s) in tcp.iter().enumerate() {
                        let bufs = (0..spec.per_peer).map(|_| w.next(peer)).collect();
                        futs.push(writev_all(s, bufs));
                    }
                    join_all(futs, |r| r).await?;
                }
                (Kind::Tcp, _) => {
                    let mut futs = Vec::with_capacity(spec.batch_messages());
                    for (peer, s) in tcp.iter().enumerate() {
                        for _ in 0..spec.per_peer {
                            futs.push(s.write(w.next(peer)).submit());
                        }
                    }
                    join_all(futs, whole).await?;
                }
                (Kind::UdpConnected, Some(u)) => {
                    let mut futs = Vec::with_capacity(spec.per_peer);
                    for _ in 0..spec.per_peer {
                        futs.push(u.send(w.next(0)));
                    }
                    join_all(futs, whole).await?;
                }
                (Kind::UdpUnconnected, Some(u)) => {
                    let mut futs = Vec::with_capacity(spec.batch_messages());
                    for (peer, _) in spec.send_order() {
                        futs.push(u.send_to(w.next(peer), w.dests[peer]));
                    }
                    join_all(futs, whole).await?;
                }
                _ => return Err("UDP scenario without a UDP socket".to_string()),
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_resumes_at_the_exact_byte() {
        let all = Bytes::from_static(b"abcdefghijkl");
        let bufs = || vec![all.slice(0..3), all.slice(3..7), all.slice(7..12)];
        let joined = |b: &[Bytes]| b.iter().flat_map(|b| b.to_vec()).collect::<Vec<u8>>();
        for n in 0..12 {
            let mut b = bufs();
            consume(&mut b, n);
            assert_eq!(joined(&b), &all[n..], "after {n} bytes");
            assert!(b.iter().all(|b| !b.is_empty()), "after {n} bytes: {b:?}");
        }
    }
}

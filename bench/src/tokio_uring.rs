//! `tokio-uring`: one owned-buffer write/send future per message (`Bytes`), all of a batch
//! submitted, then joined; the runtime runs on the bench thread.
//!
//! tokio-uring has no ordering between concurrent writes on one stream: if the kernel punts
//! one (full send buffer), later ones may complete first. The receiver's pattern check catches
//! that, and a short write (which a lone `write` does not resume) fails the round.

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
    rt: Runtime,
}

impl std::fmt::Debug for TokioUring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioUring")
            .field("tcp", &self.tcp.len())
            .field("udp", &self.udp.is_some())
            .finish_non_exhaustive()
    }
}

/// Submission queue entries: a whole 1024-message batch fits without an intermediate submit.
const RING_ENTRIES: u32 = 1024;

impl TokioUring {
    /// Builds the runtime (an io_uring) and converts the sockets.
    ///
    /// # Errors
    /// When io_uring cannot be set up, as text.
    pub fn new(conns: Conns) -> Result<TokioUring, String> {
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
        Ok(TokioUring { tcp, udp, rt })
    }
}

/// Polls every future of a batch until all are done; the first failure or short write is the
/// error. One allocation per batch (the pinned slice), none per message.
async fn join_all<F>(futs: Vec<F>) -> Result<(), String>
where
    F: Future<Output = (io::Result<usize>, Bytes)>,
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
            if let Poll::Ready((res, buf)) = f.poll(cx) {
                done[i] = true;
                match res {
                    Ok(k) if k == buf.len() => {}
                    Ok(k) => {
                        err.get_or_insert_with(|| {
                            format!("short write: {k} of {} bytes", buf.len())
                        });
                    }
                    Err(e) => {
                        err.get_or_insert_with(|| format!("write: {e}"));
                    }
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
        let TokioUring { tcp, udp, rt } = self;
        let spec = w.spec;
        rt.block_on(async {
            match (spec.kind, &*udp) {
                (Kind::Tcp, _) => {
                    let mut futs = Vec::with_capacity(spec.batch_messages());
                    for (peer, s) in tcp.iter().enumerate() {
                        for _ in 0..spec.per_peer {
                            futs.push(s.write(w.next(peer)).submit());
                        }
                    }
                    join_all(futs).await?;
                }
                (Kind::UdpConnected, Some(u)) => {
                    let mut futs = Vec::with_capacity(spec.per_peer);
                    for _ in 0..spec.per_peer {
                        futs.push(u.send(w.next(0)));
                    }
                    join_all(futs).await?;
                }
                (Kind::UdpUnconnected, Some(u)) => {
                    let mut futs = Vec::with_capacity(spec.batch_messages());
                    for peer in 0..spec.peers {
                        let dest = w.dests[peer];
                        for _ in 0..spec.per_peer {
                            futs.push(u.send_to(w.next(peer), dest));
                        }
                    }
                    join_all(futs).await?;
                }
                _ => return Err("UDP scenario without a UDP socket".to_string()),
            }
            Ok(())
        })
    }
}

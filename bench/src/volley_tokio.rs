//! `epoll-tokio`, `uring-tokio`: volley through its tokio adapters (`volley::tokio`) on a
//! current-thread runtime that runs on the bench thread. TCP: `write_all` per message on a
//! `TcpSender` (`AsyncWrite`: the slice is copied, as any `AsyncWrite` must) and one
//! `flush().await` (the barrier) per socket per batch. UDP: `feed` per datagram on a
//! `UdpSender` (`Sink`) and one flush per batch.

use ::tokio::runtime::{Builder, Runtime};
use ::volley::tokio::{Driver, TcpSender, UdpSender};
use ::volley::{Backend, Engine, Error};
use bytes::Bytes;
use futures_util::SinkExt;

use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// The senders, their driver, and the runtime (declared last: dropped after the senders and
/// the driver, which deregister from its reactor).
#[derive(Debug)]
pub struct VolleyTokio {
    tcp: Vec<TcpSender>,
    udp: Option<UdpSender>,
    driver: Driver,
    rt: Runtime,
}

impl VolleyTokio {
    /// Builds the runtime, an engine on `backend` driven by it, and the senders.
    ///
    /// # Errors
    /// The engine's error (e.g. io_uring unavailable), or the runtime's as [`Error::Io`].
    pub fn new(backend: Backend, conns: Conns) -> Result<VolleyTokio, Error> {
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                what: "building the tokio runtime",
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
        let _ctx = rt.enter();
        let engine = Engine::builder()
            .backend(backend)
            // No clock reads per message in the hot path: the bench times batches itself.
            .write_latency_every(0)
            .flush_latency_every(0)
            .build()?;
        let driver = Driver::new(engine)?;
        let (tcp, udp) = match conns {
            Conns::Tcp(streams) => (
                streams
                    .into_iter()
                    .map(|s| driver.register_tcp(s))
                    .collect::<Result<Vec<_>, _>>()?,
                None,
            ),
            Conns::Udp(u) => (Vec::new(), Some(driver.register_udp(u)?)),
        };
        drop(_ctx);
        Ok(VolleyTokio {
            tcp,
            udp,
            driver,
            rt,
        })
    }
}

impl Method for VolleyTokio {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let VolleyTokio { tcp, udp, rt, .. } = self;
        let spec = w.spec;
        rt.block_on(async {
            match (spec.kind, udp) {
                (Kind::Tcp, _) => {
                    crate::tokio::write_each(tcp, w).await?;
                    for s in tcp.iter_mut() {
                        s.flush().await.map_err(|e| format!("flush: {e}"))?;
                    }
                }
                (Kind::UdpConnected, Some(u)) => {
                    for _ in 0..spec.per_peer {
                        u.feed(w.next(0)).await.map_err(|e| format!("feed: {e}"))?;
                    }
                    check(u.flush().await)?;
                }
                (Kind::UdpUnconnected, Some(u)) => {
                    for (peer, _) in spec.send_order() {
                        let item: (Bytes, _) = (w.next(peer), w.dests[peer]);
                        u.feed(item).await.map_err(|e| format!("feed: {e}"))?;
                    }
                    check(u.flush().await)?;
                }
                _ => return Err("UDP scenario without a UDP socket".to_string()),
            }
            Ok(())
        })
    }

    fn own_transitions(&self) -> Option<u64> {
        Some(self.driver.with_engine(|e| e.stats().kernel_transitions))
    }
}

/// A flush that failed, or reported failed datagrams, is a failed round.
fn check(r: Result<::volley::FlushReport, Error>) -> Result<(), String> {
    let r = r.map_err(|e| e.to_string())?;
    if r.failed > 0 {
        return Err(format!("{} datagrams failed", r.failed));
    }
    Ok(())
}

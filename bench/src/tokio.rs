//! `tokio`: `write_all` / `send` / `send_to` per buffer on a current-thread runtime that runs on
//! the bench thread (so its system calls are counted like everyone else's). `tokio-bufwriter`:
//! the same `write_all`s through tokio's `BufWriter` (64 KiB) per TCP socket, flushed at the end
//! of every batch.

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::{Builder, Runtime};

use crate::naive::BUFWRITER_CAPACITY;
use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// A current-thread runtime and the sender sockets converted to tokio's; `W` is the TCP
/// writer: the stream (`tokio`) or a `BufWriter` over it (`tokio-bufwriter`).
#[derive(Debug)]
pub struct Tokio<W = TcpStream> {
    tcp: Vec<W>,
    udp: Option<UdpSocket>,
    /// Flush every TCP writer at the end of a batch (`tokio-bufwriter`).
    buffered: bool,
    // Dropped after the sockets (field order), which deregister from its reactor.
    rt: Runtime,
}

impl Tokio {
    /// `tokio-bufwriter`: as [`Tokio::new`], with a `BufWriter` of 64 KiB over every TCP stream.
    ///
    /// # Errors
    /// As [`Tokio::new`], and when the sockets are not TCP.
    pub fn buffered(conns: Conns) -> Result<Tokio<BufWriter<TcpStream>>, String> {
        if !matches!(conns, Conns::Tcp(_)) {
            return Err("tokio-bufwriter needs TCP streams".into());
        }
        let Tokio { tcp, udp, rt, .. } = Tokio::new(conns)?;
        Ok(Tokio {
            tcp: tcp
                .into_iter()
                .map(|s| BufWriter::with_capacity(BUFWRITER_CAPACITY, s))
                .collect(),
            udp,
            buffered: true,
            rt,
        })
    }

    /// Builds the runtime and converts the sockets.
    ///
    /// # Errors
    /// Runtime or registration failures, as text.
    pub fn new(conns: Conns) -> Result<Tokio, String> {
        let rt = Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (tcp, udp) = {
            let _ctx = rt.enter();
            match conns {
                Conns::Tcp(streams) => {
                    let mut v = Vec::with_capacity(streams.len());
                    for s in streams {
                        s.set_nonblocking(true)
                            .map_err(|e| format!("set_nonblocking: {e}"))?;
                        v.push(TcpStream::from_std(s).map_err(|e| format!("from_std: {e}"))?);
                    }
                    (v, None)
                }
                Conns::Udp(u) => {
                    u.set_nonblocking(true)
                        .map_err(|e| format!("set_nonblocking: {e}"))?;
                    (
                        Vec::new(),
                        Some(UdpSocket::from_std(u).map_err(|e| format!("from_std: {e}"))?),
                    )
                }
            }
        };
        Ok(Tokio {
            tcp,
            udp,
            buffered: false,
            rt,
        })
    }
}

impl<W: AsyncWrite + Unpin> Method for Tokio<W> {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let Tokio {
            tcp,
            udp,
            buffered,
            rt,
        } = self;
        let spec = w.spec;
        rt.block_on(async {
            match (spec.kind, &*udp) {
                (Kind::Tcp, _) => {
                    write_each(tcp, w).await?;
                    if *buffered {
                        for s in tcp.iter_mut() {
                            s.flush().await.map_err(|e| format!("flush: {e}"))?;
                        }
                    }
                }
                (Kind::UdpConnected, Some(u)) => {
                    for _ in 0..spec.per_peer {
                        let b = w.next(0);
                        let n = u.send(&b).await.map_err(|e| format!("send: {e}"))?;
                        if n != b.len() {
                            return Err(format!("short send: {n} of {}", b.len()));
                        }
                    }
                }
                (Kind::UdpUnconnected, Some(u)) => {
                    for (peer, _) in spec.send_order() {
                        let b = w.next(peer);
                        let n = u
                            .send_to(&b, w.dests[peer])
                            .await
                            .map_err(|e| format!("send_to: {e}"))?;
                        if n != b.len() {
                            return Err(format!("short send: {n} of {}", b.len()));
                        }
                    }
                }
                _ => return Err("UDP scenario without a UDP socket".to_string()),
            }
            Ok(())
        })
    }
}

/// The TCP part of a batch for every `AsyncWrite` method (`tokio`, `tokio-bufwriter`,
/// `epoll-tokio`, `uring-tokio`): `write_all` of each message, peer by peer, the bytes
/// borrowed from the payload as any caller of `write_all` hands them over.
pub(crate) async fn write_each<W: AsyncWrite + Unpin>(
    tcp: &mut [W],
    w: &mut Workload,
) -> Result<(), String> {
    let per_peer = w.spec.per_peer;
    for (peer, s) in tcp.iter_mut().enumerate() {
        for _ in 0..per_peer {
            s.write_all(w.next_slice(peer))
                .await
                .map_err(|e| format!("write_all: {e}"))?;
        }
    }
    Ok(())
}

//! `tokio`: `write_all` / `send` / `send_to` per buffer on a current-thread runtime that runs on
//! the bench thread (so its system calls are counted like everyone else's).

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::{Builder, Runtime};

use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// A current-thread runtime and the sender sockets converted to tokio's.
#[derive(Debug)]
pub struct Tokio {
    tcp: Vec<TcpStream>,
    udp: Option<UdpSocket>,
    // Dropped after the sockets (field order), which deregister from its reactor.
    rt: Runtime,
}

impl Tokio {
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
        Ok(Tokio { tcp, udp, rt })
    }
}

impl Method for Tokio {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let Tokio { tcp, udp, rt } = self;
        let spec = w.spec;
        rt.block_on(async {
            match (spec.kind, &*udp) {
                (Kind::Tcp, _) => {
                    for (peer, s) in tcp.iter_mut().enumerate() {
                        for _ in 0..spec.per_peer {
                            let b = w.next(peer);
                            s.write_all(&b)
                                .await
                                .map_err(|e| format!("write_all: {e}"))?;
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
                    for peer in 0..spec.peers {
                        let dest = w.dests[peer];
                        for _ in 0..spec.per_peer {
                            let b = w.next(peer);
                            let n = u
                                .send_to(&b, dest)
                                .await
                                .map_err(|e| format!("send_to: {e}"))?;
                            if n != b.len() {
                                return Err(format!("short send: {n} of {}", b.len()));
                            }
                        }
                    }
                }
                _ => return Err("UDP scenario without a UDP socket".to_string()),
            }
            Ok(())
        })
    }
}

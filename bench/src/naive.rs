//! `naive`: the standard library, one system call per buffer (`write`, `send`, `send_to`).

use std::io::Write;
use std::net::{TcpStream, UdpSocket};

use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// Blocking std sockets; a "batch" is the run of writes a volley flush would cover.
#[derive(Debug)]
pub struct Naive {
    tcp: Vec<TcpStream>,
    udp: Option<UdpSocket>,
}

impl Naive {
    /// Takes the sender sockets as they are (blocking).
    pub fn new(conns: Conns) -> Naive {
        match conns {
            Conns::Tcp(tcp) => Naive { tcp, udp: None },
            Conns::Udp(u) => Naive {
                tcp: Vec::new(),
                udp: Some(u),
            },
        }
    }
}

fn short(sent: usize, len: usize) -> String {
    format!("short datagram send: {sent} of {len} bytes")
}

impl Method for Naive {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let spec = w.spec;
        match (spec.kind, &self.udp) {
            (Kind::Tcp, _) => {
                for (peer, s) in self.tcp.iter_mut().enumerate() {
                    for _ in 0..spec.per_peer {
                        let b = w.next(peer);
                        s.write_all(&b).map_err(|e| format!("write: {e}"))?;
                    }
                }
            }
            (Kind::UdpConnected, Some(u)) => {
                for _ in 0..spec.per_peer {
                    let b = w.next(0);
                    let n = u.send(&b).map_err(|e| format!("send: {e}"))?;
                    if n != b.len() {
                        return Err(short(n, b.len()));
                    }
                }
            }
            (Kind::UdpUnconnected, Some(u)) => {
                for peer in 0..spec.peers {
                    let dest = w.dests[peer];
                    for _ in 0..spec.per_peer {
                        let b = w.next(peer);
                        let n = u.send_to(&b, dest).map_err(|e| format!("send_to: {e}"))?;
                        if n != b.len() {
                            return Err(short(n, b.len()));
                        }
                    }
                }
            }
            _ => return Err("UDP scenario without a UDP socket".into()),
        }
        Ok(())
    }
}

//! `naive`: the standard library, one system call per buffer (`write`, `send`, `send_to`).
//! `bufwriter`: the same writes through a std `BufWriter` of 64 KiB per TCP socket, flushed at
//! the end of every batch.

use std::io::{BufWriter, Write};
use std::net::{TcpStream, UdpSocket};

use crate::scenario::{Conns, Kind, Workload};
use crate::Method;

/// `bufwriter`'s buffer per TCP socket.
pub const BUFWRITER_CAPACITY: usize = 64 * 1024;

/// Blocking std sockets; a "batch" is the run of writes a volley flush would cover. `W` is the
/// TCP writer: the stream itself (`naive`) or a `BufWriter` over it (`bufwriter`).
#[derive(Debug)]
pub struct Naive<W = TcpStream> {
    tcp: Vec<W>,
    udp: Option<UdpSocket>,
    /// Flush every TCP writer at the end of a batch (`bufwriter`).
    buffered: bool,
}

impl Naive {
    /// Takes the sender sockets as they are (blocking).
    pub fn new(conns: Conns) -> Naive {
        match conns {
            Conns::Tcp(tcp) => Naive {
                tcp,
                udp: None,
                buffered: false,
            },
            Conns::Udp(u) => Naive {
                tcp: Vec::new(),
                udp: Some(u),
                buffered: false,
            },
        }
    }

    /// `bufwriter`: a `BufWriter` of [`BUFWRITER_CAPACITY`] over every (blocking) TCP stream.
    ///
    /// # Errors
    /// When the sockets are not TCP.
    pub fn buffered(conns: Conns) -> Result<Naive<BufWriter<TcpStream>>, String> {
        let Conns::Tcp(tcp) = conns else {
            return Err("bufwriter needs TCP streams".into());
        };
        Ok(Naive {
            tcp: tcp
                .into_iter()
                .map(|s| BufWriter::with_capacity(BUFWRITER_CAPACITY, s))
                .collect(),
            udp: None,
            buffered: true,
        })
    }
}

fn short(sent: usize, len: usize) -> String {
    format!("short datagram send: {sent} of {len} bytes")
}

impl<W: Write> Method for Naive<W> {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let spec = w.spec;
        match (spec.kind, &self.udp) {
            (Kind::Tcp, _) => {
                for (peer, s) in self.tcp.iter_mut().enumerate() {
                    for _ in 0..spec.per_peer {
                        s.write_all(w.next_slice(peer))
                            .map_err(|e| format!("write: {e}"))?;
                    }
                }
                if self.buffered {
                    for s in &mut self.tcp {
                        s.flush().map_err(|e| format!("flush: {e}"))?;
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
                for (peer, _) in spec.send_order() {
                    let b = w.next(peer);
                    let n = u
                        .send_to(&b, w.dests[peer])
                        .map_err(|e| format!("send_to: {e}"))?;
                    if n != b.len() {
                        return Err(short(n, b.len()));
                    }
                }
            }
            _ => return Err("UDP scenario without a UDP socket".into()),
        }
        Ok(())
    }
}

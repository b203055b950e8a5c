//! `quinn-udp`: `UdpSocketState::try_send` with a segmented `Transmit` (GSO): each send carries
//! as many 1200-byte datagrams as the kernel takes in one go. udp-gso only.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use quinn_udp::{Transmit, UdpSocketState};

use crate::scenario::{Conns, Workload};
use crate::Method;
use volley::limits::UDP_MAX_PAYLOAD;

/// quinn-udp's socket state over the (connected) sender socket.
#[derive(Debug)]
pub struct Quinn {
    state: UdpSocketState,
    sock: UdpSocket,
    dest: SocketAddr,
    segments: usize,
}

impl Quinn {
    /// Wraps the UDP socket (quinn-udp makes it non-blocking).
    ///
    /// # Errors
    /// When the socket is not UDP or quinn-udp cannot set it up.
    pub fn new(conns: Conns, dest: SocketAddr, msg_size: usize) -> Result<Quinn, String> {
        let Conns::Udp(sock) = conns else {
            return Err("quinn-udp needs a UDP socket".into());
        };
        let state =
            UdpSocketState::new((&sock).into()).map_err(|e| format!("quinn-udp setup: {e}"))?;
        let segments = state
            .max_gso_segments()
            .min(UDP_MAX_PAYLOAD / msg_size)
            .max(1);
        Ok(Quinn {
            state,
            sock,
            dest,
            segments,
        })
    }
}

/// Waits until the socket is writable (quinn-udp sockets are non-blocking).
fn wait_writable(sock: &UdpSocket) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one live pollfd, exclusively borrowed for the call.
    let r = unsafe { libc::poll(&mut p, 1, 1000) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Method for Quinn {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let spec = w.spec;
        let mut left = spec.per_peer;
        while left > 0 {
            let (b, n) = w.next_run(0, left.min(self.segments));
            let t = Transmit {
                destination: self.dest,
                ecn: None,
                contents: &b,
                segment_size: Some(spec.msg_size),
                src_ip: None,
            };
            loop {
                match self.state.try_send((&self.sock).into(), &t) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wait_writable(&self.sock).map_err(|e| format!("poll: {e}"))?;
                    }
                    Err(e) => return Err(format!("try_send: {e}")),
                }
            }
            left -= n;
        }
        Ok(())
    }
}

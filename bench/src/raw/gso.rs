//! `raw-gso`: no library at all — one hand-built `sendmsg` per GSO group (one iovec over a
//! contiguous run of datagrams, a `UDP_SEGMENT` cmsg), on a blocking socket. The floor for any
//! GSO sender on this machine: what is left above it is the library's own cost. udp-gso only.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use volley::limits::{GSO_MAX_SEGMENTS, UDP_MAX_PAYLOAD};

use super::{iovec, msghdr, sendmsg};
use crate::scenario::{Conns, Workload};
use crate::Method;

/// Room for one `cmsghdr` with a `u16` (`CMSG_SPACE(2)` is 24 on 64-bit Linux), 8-aligned.
#[repr(C, align(8))]
struct Cmsg([u8; 32]);

/// The connected sender socket and the group size.
#[derive(Debug)]
pub struct RawGso {
    sock: UdpSocket,
    segments: usize,
}

impl RawGso {
    /// Takes the (connected, blocking) UDP socket.
    ///
    /// # Errors
    /// When the scenario is not UDP.
    pub fn new(conns: Conns, msg_size: usize) -> Result<RawGso, String> {
        let Conns::Udp(sock) = conns else {
            return Err("raw-gso needs a UDP socket".into());
        };
        let segments = (UDP_MAX_PAYLOAD / msg_size).clamp(1, GSO_MAX_SEGMENTS);
        Ok(RawGso { sock, segments })
    }

    /// One `sendmsg` of `buf` as `buf.len() / seg` datagrams (a plain send when it is one).
    fn send_group(&self, buf: &[u8], seg: usize) -> io::Result<()> {
        let iov = [iovec(buf)];
        let mut cmsg = Cmsg([0; 32]);
        let mut msg = msghdr(&iov);
        if buf.len() > seg {
            let seg = u16::try_from(seg).map_err(|_| io::Error::other("segment over 64 KiB"))?;
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure computation.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            // SAFETY: msg_control points at 32 writable, 8-aligned bytes (≥ CMSG_SPACE(2)), so
            // CMSG_FIRSTHDR is a valid header inside them and CMSG_DATA has room for the u16.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            }
        }
        let n = sendmsg(self.sock.as_raw_fd(), &msg)?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "short GSO send: {n} of {} bytes",
                buf.len()
            )))
        }
    }
}

impl Method for RawGso {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        let spec = w.spec;
        let mut left = spec.per_peer;
        while left > 0 {
            let (b, n) = w.next_run(0, left.min(self.segments));
            self.send_group(&b, spec.msg_size)
                .map_err(|e| format!("sendmsg: {e}"))?;
            left -= n;
        }
        Ok(())
    }
}

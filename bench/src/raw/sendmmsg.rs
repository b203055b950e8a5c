//! `raw-sendmmsg`: no library — one `sendmmsg` per batch (per 1024 datagrams at most, resumed
//! after a partial count) on the blocking UDP socket, over headers built once: the destination
//! of every entry (unconnected: one per datagram, in the scenario's send order; connected:
//! none) is set up front, and each batch only points every header at its message's prebuilt
//! iovec. A UDP floor.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::{msghdr, retry, sockaddr, IovRing, MAX_IOV};
use crate::scenario::{Conns, Kind, Payload, Spec, Workload};
use crate::Method;

/// The socket, the iovecs of every payload message, and a header per datagram of a batch.
/// The headers point into `names` and `ring`, which are never resized after construction, so
/// the pointers stay valid for the life of the struct.
pub struct RawSendmmsg {
    sock: UdpSocket,
    ring: IovRing,
    _names: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    hdrs: Vec<libc::mmsghdr>,
    /// Each peer's first message of the current batch.
    starts: Vec<usize>,
}

impl std::fmt::Debug for RawSendmmsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSendmmsg")
            .field("sock", &self.sock)
            .field("datagrams_per_batch", &self.hdrs.len())
            .finish_non_exhaustive()
    }
}

impl RawSendmmsg {
    /// Takes the (blocking) UDP socket and builds the headers of `spec`'s batches: to `dests`
    /// in send order when the socket is unconnected.
    ///
    /// # Errors
    /// When the socket is not UDP.
    pub fn new(
        conns: Conns,
        spec: Spec,
        payload: &Payload,
        dests: &[SocketAddr],
    ) -> Result<RawSendmmsg, String> {
        let Conns::Udp(sock) = conns else {
            return Err("raw-sendmmsg needs a UDP socket".into());
        };
        let names: Vec<_> = if spec.kind == Kind::UdpUnconnected {
            dests.iter().map(|&d| sockaddr(d)).collect()
        } else {
            Vec::new()
        };
        let mut hdrs = Vec::with_capacity(spec.batch_messages());
        for (peer, _) in spec.send_order() {
            let mut h = msghdr(&[]);
            h.msg_iovlen = 1;
            if let Some((addr, len)) = names.get(peer) {
                h.msg_name = std::ptr::from_ref(addr).cast_mut().cast();
                h.msg_namelen = *len;
            }
            hdrs.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        Ok(RawSendmmsg {
            sock,
            ring: IovRing::new(payload),
            _names: names,
            hdrs,
            starts: vec![0; spec.peers],
        })
    }
}

impl Method for RawSendmmsg {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        self.ring.check(w)?;
        let spec = w.spec;
        if self.hdrs.len() != spec.batch_messages() {
            return Err("the headers were built for another batch size".into());
        }
        for (peer, s) in self.starts.iter_mut().enumerate() {
            *s = w.skip(peer, spec.per_peer);
        }
        for (h, (peer, frame)) in self.hdrs.iter_mut().zip(spec.send_order()) {
            h.msg_hdr.msg_iov =
                std::ptr::from_ref(self.ring.get(self.starts[peer] + frame)).cast_mut();
        }
        let fd = self.sock.as_raw_fd();
        let mut sent = 0;
        while sent < self.hdrs.len() {
            let chunk = &mut self.hdrs[sent..];
            let n = chunk.len().min(MAX_IOV);
            let vlen = libc::c_uint::try_from(n).unwrap_or(1);
            // SAFETY: `chunk` holds at least `vlen` initialised headers, each pointing at one
            // prebuilt iovec (over the live payload) and at a destination in `names` or none,
            // all owned by `self`; the kernel writes only `msg_len` of those `vlen` entries.
            let got = retry(|| unsafe {
                libc::sendmmsg(fd, chunk.as_mut_ptr(), vlen, libc::MSG_NOSIGNAL)
            })
            .map_err(|e| format!("sendmmsg: {e}"))?;
            if got == 0 {
                return Err("sendmmsg sent nothing".into());
            }
            sent += got;
        }
        Ok(())
    }
}

//! `raw-writev`: no library — per TCP socket per batch one `sendmsg(MSG_NOSIGNAL)` over the
//! batch's messages as prebuilt iovecs (at most 1024 per call), on the blocking stream; a short
//! write is resumed at the exact byte. The TCP floor.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use super::{msghdr, sendmsg, IovRing, MAX_IOV};
use crate::scenario::{Conns, Payload, Workload};
use crate::Method;

/// The (blocking) streams and the iovecs of every payload message.
#[derive(Debug)]
pub struct RawWritev {
    socks: Vec<TcpStream>,
    ring: IovRing,
    /// Where a short write is resumed from (a copy of the rest of the iovecs).
    rest: Vec<libc::iovec>,
}

impl RawWritev {
    /// Takes the TCP streams as they are (blocking) and builds the iovecs over `payload`.
    ///
    /// # Errors
    /// When the sockets are not TCP.
    pub fn new(conns: Conns, payload: &Payload) -> Result<RawWritev, String> {
        let Conns::Tcp(socks) = conns else {
            return Err("raw-writev needs TCP streams".into());
        };
        Ok(RawWritev {
            socks,
            ring: IovRing::new(payload),
            rest: Vec::with_capacity(MAX_IOV),
        })
    }
}

/// Drops the first `n` bytes of `iovs`: returns the index of the first iovec with bytes left,
/// that iovec trimmed to start at its first unsent byte.
fn advance(iovs: &mut [libc::iovec], mut n: usize) -> usize {
    let mut i = 0;
    while i < iovs.len() && n >= iovs[i].iov_len {
        n -= iovs[i].iov_len;
        i += 1;
    }
    if n > 0 {
        let v = &mut iovs[i];
        v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
        v.iov_len -= n;
    }
    i
}

/// Sends all `bytes` bytes of `iovs` on `fd`: one `sendmsg`, and on a short write more from the
/// first unsent byte (through `rest`).
fn send_all(
    fd: RawFd,
    iovs: &[libc::iovec],
    bytes: usize,
    rest: &mut Vec<libc::iovec>,
) -> io::Result<()> {
    let sent = sendmsg(fd, &msghdr(iovs))?;
    if sent == bytes {
        return Ok(());
    }
    rest.clear();
    rest.extend_from_slice(iovs);
    let (mut from, mut left) = (0, bytes);
    let mut sent = sent;
    loop {
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "sendmsg sent nothing",
            ));
        }
        left -= sent;
        if left == 0 {
            return Ok(());
        }
        from += advance(&mut rest[from..], sent);
        sent = sendmsg(fd, &msghdr(&rest[from..]))?;
    }
}

impl Method for RawWritev {
    fn batch(&mut self, w: &mut Workload) -> Result<(), String> {
        self.ring.check(w)?;
        let spec = w.spec;
        let m = self.ring.messages();
        for (peer, s) in self.socks.iter().enumerate() {
            let mut first = w.skip(peer, spec.per_peer);
            let mut left = spec.per_peer;
            while left > 0 {
                let n = left.min(MAX_IOV).min(m);
                let iovs = self.ring.window(first, n);
                send_all(s.as_raw_fd(), iovs, n * spec.msg_size, &mut self.rest)
                    .map_err(|e| format!("sendmsg: {e}"))?;
                first = (first + n) % m;
                left -= n;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_resumes_at_the_exact_byte() {
        let data = *b"abcdefghijkl";
        let iovs = [
            super::super::iovec(&data[0..3]),
            super::super::iovec(&data[3..7]),
            super::super::iovec(&data[7..12]),
        ];
        for n in 0..12 {
            let mut v = iovs;
            let from = advance(&mut v, n);
            let rest: Vec<u8> = v[from..]
                .iter()
                // SAFETY: every iovec points into `data`, within it, and `data` is live.
                .flat_map(|v| unsafe {
                    std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
                })
                .copied()
                .collect();
            assert_eq!(rest, &data[n..], "after {n} bytes");
        }
    }
}

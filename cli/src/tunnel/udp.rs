//! The underlay: the UDP socket (bound to `--listen`, `IP_PMTUDISC_DO`), the route-MTU check at
//! start, and batched receiving with `recvmmsg`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// How long `bind` retries an address in use.
const BIND_RETRY: Duration = Duration::from_secs(3);

/// `size_of::<T>()` as a `socklen_t` (every sockaddr and option type here is far below 4 GiB).
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// IPv4 (20) + UDP (8) header bytes around each tunnelled packet.
pub const V4_OVERHEAD_BYTES: usize = 28;
/// IPv6 (40) + UDP (8) header bytes around each tunnelled packet.
pub const V6_OVERHEAD_BYTES: usize = 48;

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` is a c_int that lives for the call, and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const val).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `val` and `len` are live for the call; `len` says how much room `val` has.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut val).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// Path-MTU discovery "do": the kernel never fragments our datagrams; one too large for the
/// route fails with `EMSGSIZE` (counted) instead of being lost as fragments.
fn set_pmtudisc_do(sock: &UdpSocket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsFd;
    if v6 {
        setsockopt_int(
            sock.as_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        setsockopt_int(
            sock.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}

/// Binds the tunnel's socket to `listen` with `IP_PMTUDISC_DO` and large buffers.
///
/// # Errors
/// A message naming the address.
pub fn bind(listen: SocketAddr) -> Result<UdpSocket, String> {
    // A tunnel that just exited may hold the port for a moment longer (io_uring tears its ring
    // and registered files down asynchronously): retry briefly before calling it a conflict.
    let deadline = Instant::now() + BIND_RETRY;
    let sock = loop {
        match UdpSocket::bind(listen) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot bind UDP {listen}: {e}")),
        }
    };
    set_pmtudisc_do(&sock, listen.is_ipv6())
        .map_err(|e| format!("cannot set path-MTU discovery on {listen}: {e}"))?;
    volley_bench::net::grow_rcvbuf(&sock, 8 << 20);
    grow_sndbuf(&sock, 8 << 20);
    Ok(sock)
}

/// Asks for an `SO_SNDBUF` of `bytes` (root may exceed `wmem_max` with `SO_SNDBUFFORCE`); best
/// effort: the default still works, with more `ENOBUFS`/`EAGAIN` under bursts.
fn grow_sndbuf(sock: &UdpSocket, bytes: usize) {
    use std::os::fd::AsFd;
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, val).is_err() {
        let _ = setsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, val);
    }
}

/// The MTU of the route to `peer` (`IP_MTU`/`IPV6_MTU` on a connected probe socket with
/// path-MTU discovery on, so a learned path MTU counts too).
///
/// # Errors
/// No route to the peer, or the probe failed.
pub fn route_mtu(peer: SocketAddr) -> Result<usize, String> {
    use std::os::fd::AsFd;
    let local: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = UdpSocket::bind(local).map_err(|e| format!("cannot open a probe socket: {e}"))?;
    set_pmtudisc_do(&probe, peer.is_ipv6())
        .map_err(|e| format!("cannot set path-MTU discovery on the probe socket: {e}"))?;
    probe
        .connect(peer)
        .map_err(|e| format!("no route to the peer {peer}: {e}"))?;
    let (level, name) = if peer.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mtu = getsockopt_int(probe.as_fd(), level, name)
        .map_err(|e| format!("cannot read the route MTU towards {peer}: {e}"))?;
    usize::try_from(mtu).map_err(|_| format!("the kernel reported route MTU {mtu} towards {peer}"))
}

/// The largest tunnel MTU the route to `peer` carries without fragmenting.
pub fn max_tunnel_mtu(route_mtu: usize, peer: SocketAddr) -> usize {
    let overhead = if peer.is_ipv4() {
        V4_OVERHEAD_BYTES
    } else {
        V6_OVERHEAD_BYTES
    };
    route_mtu.saturating_sub(overhead)
}

/// A socket address from what the kernel filled in.
fn to_socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = usize::try_from(len).ok()?;
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a `sockaddr_in`, the kernel wrote at
            // least that many bytes, and `sockaddr_storage` is aligned for every sockaddr type.
            let sin = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for `sockaddr_in6`.
            let sin6 = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// Where it came from (`None`: an address family we do not know).
    pub from: Option<SocketAddr>,
    /// Its bytes (cut at the slot size if `truncated`).
    pub data: &'a [u8],
    /// Larger than a receive slot (`MSG_TRUNC`).
    pub truncated: bool,
}

/// Buffers for one `recvmmsg` of up to `n` datagrams of up to `slot_bytes` each. The kernel's
/// pointers into them are rebuilt before every call, so moving the struct is harmless.
pub struct RecvBatch {
    slot_bytes: usize,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    filled: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.hdrs.len())
            .field("slot_bytes", &self.slot_bytes)
            .field("filled", &self.filled)
            .finish()
    }
}

impl RecvBatch {
    /// Room for `n` datagrams of `slot_bytes`.
    pub fn new(n: usize, slot_bytes: usize) -> RecvBatch {
        RecvBatch {
            slot_bytes,
            bufs: vec![0u8; n * slot_bytes],
            // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C structs (integers and raw
            // pointers); all zeroes is valid for each (null pointers, zero lengths).
            iovs: vec![unsafe { zeroed() }; n],
            // SAFETY: as above.
            addrs: vec![unsafe { zeroed() }; n],
            // SAFETY: as above.
            hdrs: vec![unsafe { zeroed() }; n],
            filled: 0,
        }
    }

    /// One `recvmmsg(MSG_DONTWAIT)`: how many datagrams arrived (0 on `EAGAIN`).
    ///
    /// # Errors
    /// The call's error (an ICMP error pending on the socket shows up here as e.g.
    /// `ECONNREFUSED`; the caller decides).
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.filled = 0;
        let n = self.hdrs.len();
        let base = self.bufs.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot `i` lies inside `bufs` (n * slot_bytes bytes long).
            let slot = unsafe { base.add(i * self.slot_bytes) };
            self.iovs[i] = libc::iovec {
                iov_base: slot.cast(),
                iov_len: self.slot_bytes,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
            h.msg_hdr.msg_iov = &raw mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        let vlen = libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX);
        loop {
            // SAFETY: every header points at its own sockaddr_storage (with its size as the
            // name length) and its own iovec, which points at a distinct slot of `bufs`; all of
            // them live in `self` and are not touched until the call returns. The call is
            // non-blocking (MSG_DONTWAIT) and takes no timeout.
            let r = unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.hdrs.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                self.filled = r.unsigned_abs() as usize;
                return Ok(self.filled);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(0),
                Some(libc::EINTR) => {}
                _ => return Err(e),
            }
        }
    }

    /// Datagram `i` of the last `recv`.
    pub fn get(&self, i: usize) -> Datagram<'_> {
        debug_assert!(i < self.filled);
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot_bytes);
        let start = i * self.slot_bytes;
        Datagram {
            from: to_socket_addr(&self.addrs[i], h.msg_hdr.msg_namelen),
            data: &self.bufs[start..start + len],
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        }
    }
}

/// Reads (and discards) up to 64 entries of the socket's error queue (`IP_RECVERR` reports of
/// ICMP errors about datagrams already sent, e.g. while the peer restarts), so they never fill
/// the receive buffer; returns how many.
pub fn drain_errqueue(fd: BorrowedFd<'_>) -> u64 {
    let mut buf = [0u8; 256];
    let mut control = [0u8; 512];
    let mut n = 0;
    while n < 64 {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is a plain C struct; all zeroes is valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: `msg` points at `iov` (into `buf`) and at `control`, all live and exclusively
        // ours for the call; MSG_ERRQUEUE | MSG_DONTWAIT never blocks.
        let r = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &raw mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            break;
        }
        n += 1;
    }
    n
}

//! `msghdr`/iovec/cmsg building: the memory a send op points the kernel at.

use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr;

use socket2::{SockAddr, SockAddrStorage};

use crate::core::{Core, OpShape, Planned};

/// Room for one `cmsghdr` carrying a `u16` (`CMSG_SPACE(2)` is 24 on 64-bit Linux), 8-aligned as
/// `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Debug)]
struct CmsgBuf([u8; 32]);

/// One op's `msghdr` and everything it points to except the payload (which the core owns).
/// Boxed by its users so the addresses stay fixed until the kernel is done with them.
pub(crate) struct MsgMem {
    pub msg: libc::msghdr,
    iov: Vec<libc::iovec>,
    addr: Option<SockAddr>,
    cmsg: CmsgBuf,
}

impl std::fmt::Debug for MsgMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgMem")
            .field("iovecs", &self.iov.len())
            .finish()
    }
}

// SAFETY: the raw pointers in `msg`/`iov` point into this struct or into `Bytes` the core keeps
// alive; nothing is shared between threads through them.
unsafe impl Send for MsgMem {}

/// `size_of::<u16>()`, the `UDP_SEGMENT` payload, as the `u32` the CMSG macros take.
const U16_LEN: u32 = 2;

impl MsgMem {
    pub fn new() -> MsgMem {
        MsgMem {
            // SAFETY: `msghdr` is plain old data; all-zero is a valid (empty) value.
            msg: unsafe { mem::zeroed() },
            iov: Vec::new(),
            addr: None,
            cmsg: CmsgBuf([0; 32]),
        }
    }

    /// Points `msg` at the payload of `p` (iovecs into the core's buffers), its destination and,
    /// for a GSO group, a `UDP_SEGMENT` cmsg. The result is valid while `self` does not move and
    /// the core keeps the op's buffers (until its completion).
    pub fn prepare(&mut self, core: &Core, p: &Planned) {
        self.iov.clear();
        let iov = &mut self.iov;
        core.for_each_slice(p, |s| push_merged(iov, s));
        // SAFETY: as in `new`: an all-zero msghdr is valid.
        self.msg = unsafe { mem::zeroed() };
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        self.addr = p.dest.map(SockAddr::from);
        if let Some(a) = &self.addr {
            self.msg.msg_name = a.as_ptr().cast_mut().cast();
            self.msg.msg_namelen = a.len();
        }
        if let OpShape::Dgram {
            segment_size: Some(seg),
            ..
        } = p.shape
        {
            self.set_segment(seg);
        }
    }

    fn set_segment(&mut self, seg: u16) {
        self.cmsg.0 = [0; 32];
        self.msg.msg_control = self.cmsg.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(U16_LEN) } as usize;
        debug_assert!(space <= self.cmsg.0.len());
        self.msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, 8-aligned bytes, so CMSG_FIRSTHDR returns
        // a valid, aligned header inside them and CMSG_DATA has room for the u16.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&self.msg);
            // UDP_SEGMENT: include/uapi/linux/udp.h, added in Linux 4.18 (commit bec1f6f697362).
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(U16_LEN) as _;
            ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        }
    }
}

impl MsgMem {
    /// The op's one buffer, when a plain `send` carries it: one iovec, no address, no cmsg
    /// (`IORING_OP_SEND` / `send(2)` skip the msghdr and iovec import a `sendmsg` pays for).
    pub fn single_buffer(&self) -> Option<(*const u8, usize)> {
        match self.iov[..] {
            [iov] if self.msg.msg_name.is_null() && self.msg.msg_control.is_null() => {
                Some((iov.iov_base.cast_const().cast(), iov.iov_len))
            }
            _ => None,
        }
    }
}

impl MsgMem {
    /// Sends the prepared op now on `fd` — `send(2)` for one plain buffer, else `sendmsg(2)` —
    /// with `flags`; the result as a completion would carry it (bytes, or `-errno`).
    pub fn send_now(&self, fd: RawFd, flags: libc::c_int) -> i32 {
        let rc = match self.single_buffer() {
            // SAFETY: the buffer is a live slice of the core's queue (or a staging chunk) for
            // the duration of the call.
            Some((ptr, len)) => unsafe { libc::send(fd, ptr.cast(), len, flags) },
            // SAFETY: the msghdr points at iovecs, address and cmsg in `self` and at buffers the
            // core keeps alive; all outlive the call.
            None => unsafe { libc::sendmsg(fd, &self.msg, flags) },
        };
        if rc < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            i32::try_from(rc).unwrap_or(i32::MAX)
        }
    }
}

impl MsgMem {
    /// Writes the prepared packet op now on `fd` with `write(2)` (one packet: its one buffer);
    /// the result as a completion would carry it (bytes, or `-errno`).
    pub fn write_now(&self, fd: RawFd) -> i32 {
        let (ptr, len) = self.packet_buffer();
        // SAFETY: the buffer is a live slice of the core's queue for the duration of the call.
        let rc = unsafe { libc::write(fd, ptr.cast(), len) };
        if rc < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            i32::try_from(rc).unwrap_or(i32::MAX)
        }
    }

    /// A packet op's one buffer (an empty packet: a dangling pointer and 0).
    pub fn packet_buffer(&self) -> (*const u8, usize) {
        match self.iov.first() {
            Some(iov) => (iov.iov_base.cast_const().cast(), iov.iov_len),
            None => (std::ptr::NonNull::<u8>::dangling().as_ptr().cast_const(), 0),
        }
    }
}

/// Appends `s` as an iovec, or extends the previous iovec when `s` starts where it ends: buffers
/// cut from one allocation (`BytesMut::split_to`, `Bytes::slice`) then cost the kernel one iovec
/// for the whole run, as a single contiguous buffer would (its per-iovec cost is far above ours).
fn push_merged(iov: &mut Vec<libc::iovec>, s: &[u8]) {
    let base: *mut libc::c_void = s.as_ptr().cast_mut().cast();
    if let Some(last) = iov.last_mut() {
        if last.iov_base.cast::<u8>().wrapping_add(last.iov_len) == base.cast::<u8>() {
            last.iov_len += s.len();
            return;
        }
    }
    iov.push(libc::iovec {
        iov_base: base,
        iov_len: s.len(),
    });
}

/// The `mmsghdr` array of one `sendmmsg`, rebuilt for every call.
#[derive(Default)]
pub(crate) struct MmsgVec(pub Vec<libc::mmsghdr>);

impl std::fmt::Debug for MmsgVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgVec")
            .field("len", &self.0.len())
            .finish()
    }
}

// SAFETY: the pointers in the entries are only dereferenced by the kernel during the one
// `sendmmsg` call that follows their building, on the thread that built them; between calls
// they are stale values nobody reads (every call rebuilds the array).
unsafe impl Send for MmsgVec {}

/// Wraps a prepared `msghdr` for `sendmmsg`.
pub(crate) fn mmsghdr(m: &MsgMem) -> libc::mmsghdr {
    libc::mmsghdr {
        msg_hdr: m.msg,
        msg_len: 0,
    }
}

/// Turns on `IP_RECVERR` (and `IPV6_RECVERR` on an IPv6 socket): the kernel then reports local
/// drops (`ENOBUFS` from a full qdisc, which it otherwise swallows for UDP) and queues ICMP errors
/// with the destination they concern. Returns whether it is on.
pub(crate) fn set_recverr(fd: RawFd, v6: bool) -> bool {
    let on: libc::c_int = 1;
    // 4: the size of a c_int.
    let len: libc::socklen_t = 4;
    let set = |level, opt| {
        // SAFETY: a plain setsockopt on a socket the engine owns, with a live c_int and its size.
        unsafe { libc::setsockopt(fd, level, opt, (&on as *const libc::c_int).cast(), len) == 0 }
    };
    if v6 {
        // A dual-stack socket also gets IPv4-mapped errors through IP_RECVERR; best effort.
        let _ = set(libc::IPPROTO_IP, libc::IP_RECVERR);
        set(libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        set(libc::IPPROTO_IP, libc::IP_RECVERR)
    }
}

/// The address family a UDP socket sends to, for `send_to`'s destination check: (IPv6 socket,
/// `IPV6_V6ONLY` set). An IPv6 socket whose option cannot be read counts as dual-stack (the
/// kernel then refuses what it cannot reach, at flush).
pub(crate) fn udp_family(socket: &std::net::UdpSocket) -> (bool, bool) {
    let sock = socket2::SockRef::from(socket);
    let v6 = match sock.domain() {
        Ok(d) => d == socket2::Domain::IPV6,
        Err(_) => socket.local_addr().is_ok_and(|a| a.is_ipv6()),
    };
    (v6, v6 && sock.only_v6().unwrap_or(false))
}

/// Reads the socket's error queue (`MSG_ERRQUEUE`, non-blocking) until it is empty, at most
/// `max` entries; pushes (destination of the datagram the error is about, errno) for each.
/// Returns the number of system calls made.
pub(crate) fn drain_errqueue(
    fd: RawFd,
    max: usize,
    out: &mut Vec<(Option<SocketAddr>, i32)>,
) -> u64 {
    #[repr(C, align(8))]
    struct Ctl([u8; 256]);
    let mut calls = 0;
    for _ in 0..max {
        let mut ctl = Ctl([0; 256]);
        let mut name = SockAddrStorage::zeroed();
        let mut byte = 0u8;
        let mut iov = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        // SAFETY: as in `MsgMem::new`: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut name as *mut SockAddrStorage).cast();
        msg.msg_namelen = name.size_of();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.0.as_mut_ptr().cast();
        msg.msg_controllen = ctl.0.len() as _;
        calls += 1;
        // SAFETY: every pointer in `msg` refers to a live local that outlives the call, with
        // its length; the kernel writes within them.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if r < 0 {
            break;
        }
        let mut errno = 0;
        // SAFETY: the kernel filled `msg_controllen` bytes of `ctl`; CMSG_FIRSTHDR/NXTHDR stay
        // within them, and an IP_RECVERR/IPV6_RECVERR header carries a sock_extended_err.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level == libc::IPPROTO_IP && ty == libc::IP_RECVERR)
                    || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_RECVERR)
                {
                    let ee: libc::sock_extended_err =
                        ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    errno = i32::try_from(ee.ee_errno).unwrap_or(libc::EIO);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if errno == 0 {
            continue;
        }
        // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes into `name`.
        let dest = unsafe { SockAddr::new(name, msg.msg_namelen) }.as_socket();
        out.push((dest, errno));
    }
    calls
}

//! `msghdr`/iovec/cmsg building: the memory a send op points the kernel at.

use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr;

use socket2::{SockAddr, SockAddrStorage};

use crate::core::{Core, OpShape, Planned, Solo};

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
    /// Sends the prepared op now on `fd` — one buffer without a cmsg by `sendto(2)` (`send(2)`
    /// when it has no address), else `sendmsg(2)` — with `flags`; the result as a completion
    /// would carry it (bytes, or `-errno`).
    pub fn send_now(&self, fd: RawFd, flags: libc::c_int) -> i32 {
        let rc = match self.iov[..] {
            // SAFETY: the buffer is a live slice of the core's queue (or a staging chunk) for
            // the duration of the call; `msg_name` is null or points at `msg_namelen` bytes of
            // the address in `self`.
            [iov] if self.msg.msg_control.is_null() => unsafe {
                libc::sendto(
                    fd,
                    iov.iov_base,
                    iov.iov_len,
                    flags,
                    self.msg.msg_name.cast_const().cast(),
                    self.msg.msg_namelen,
                )
            },
            // SAFETY: the msghdr points at iovecs, address and cmsg in `self` and at buffers the
            // core keeps alive; all outlive the call.
            _ => unsafe { libc::sendmsg(fd, &self.msg, flags) },
        };
        completion(rc)
    }
}

/// Sends a flush's lone op ([`Solo`]) now on its socket, never blocking (`MSG_DONTWAIT`, for the
/// io_uring driver's blocking sockets), with `MSG_NOSIGNAL`: `sendto(2)`, with the destination
/// of an unconnected datagram socket's datagram, else without one (`send(2)`). The result as a
/// completion would carry it (bytes, or `-errno`; `-EAGAIN`: nothing was sent).
///
/// The system call itself, not glibc's `send`/`sendto`: those wrap it in the bookkeeping of a
/// thread-cancellation point (≈ 45 instructions, a tenth of a one-message flush), which Rust
/// code never uses.
pub(crate) fn send_solo(op: &Solo<'_>) -> i32 {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    let addr = op.dest.map(|&d| SockAddr::from(d));
    let (name, namelen) = match &addr {
        Some(a) => (a.as_ptr().cast::<libc::sockaddr>(), a.len()),
        None => (ptr::null(), 0),
    };
    // SAFETY: `op.buf` is a live slice of the core's queue, and `name` null or a sockaddr of
    // `namelen` bytes in `addr`, for the duration of the call; `sendto` takes no other memory.
    // Integer arguments go as full-width `long`s, as the variadic `syscall` reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            libc::c_long::from(op.fd),
            op.buf.as_ptr(),
            op.buf.len(),
            libc::c_long::from(flags),
            name,
            libc::c_long::from(namelen),
        )
    };
    completion(isize::try_from(rc).unwrap_or(-1))
}

/// A send or write system call's return as a completion carries it: bytes, or `-errno`.
fn completion(rc: isize) -> i32 {
    if rc < 0 {
        -std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        i32::try_from(rc).unwrap_or(i32::MAX)
    }
}

impl MsgMem {
    /// Writes the prepared packet op now on `fd` with `write(2)` (one packet: its one buffer);
    /// the result as a completion would carry it (bytes, or `-errno`).
    pub fn write_now(&self, fd: RawFd) -> i32 {
        let (ptr, len) = self.packet_buffer();
        // SAFETY: the buffer is a live slice of the core's queue for the duration of the call.
        completion(unsafe { libc::write(fd, ptr.cast(), len) })
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

/// Turns `IP_RECVERR` (and `IPV6_RECVERR` on an IPv6 socket) on or off. On, the kernel reports
/// local drops (`ENOBUFS` from a full qdisc, which it otherwise swallows for UDP) and queues ICMP
/// errors with the destination they concern; off, it drops what the error queue holds. Returns
/// whether the switch was made.
pub(crate) fn set_recverr(fd: RawFd, v6: bool, on: bool) -> bool {
    let on = libc::c_int::from(on);
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

/// Memory for reading one error-queue entry (`recvmsg(MSG_ERRQUEUE)`): the `msghdr`, a 1-byte
/// iovec (the entry's payload is not needed), the address of the datagram the error is about,
/// and room for the `IP_RECVERR`/`IPV6_RECVERR` cmsg. Boxed by its users so the addresses stay
/// fixed while the kernel writes (an io_uring `RECVMSG`).
pub(crate) struct ErrqMem {
    pub msg: libc::msghdr,
    iov: libc::iovec,
    byte: u8,
    name: SockAddrStorage,
    ctl: ErrqCtl,
}

#[repr(C, align(8))]
struct ErrqCtl([u8; 256]);

impl std::fmt::Debug for ErrqMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrqMem").finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers in `msg`/`iov` point into this struct only.
unsafe impl Send for ErrqMem {}

impl ErrqMem {
    pub fn new() -> ErrqMem {
        ErrqMem {
            // SAFETY: as in `MsgMem::new`: an all-zero msghdr/iovec is valid.
            msg: unsafe { mem::zeroed() },
            // SAFETY: as above.
            iov: unsafe { mem::zeroed() },
            byte: 0,
            name: SockAddrStorage::zeroed(),
            ctl: ErrqCtl([0; 256]),
        }
    }

    /// Points `msg` at this struct's own buffers, lengths reset; valid while `self` does not
    /// move.
    pub fn prepare(&mut self) {
        self.iov = libc::iovec {
            iov_base: (&mut self.byte as *mut u8).cast(),
            iov_len: 1,
        };
        self.msg.msg_name = (&mut self.name as *mut SockAddrStorage).cast();
        self.msg.msg_namelen = self.name.size_of();
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_control = self.ctl.0.as_mut_ptr().cast();
        self.msg.msg_controllen = self.ctl.0.len() as _;
        self.msg.msg_flags = 0;
    }

    /// The entry the kernel wrote (after a successful read into [`ErrqMem::prepare`]d memory):
    /// (destination of the datagram the error is about, errno) for a report from the network
    /// (ICMP, ICMPv6); `None` for an entry of local origin (`SO_EE_ORIGIN_LOCAL`: the kernel
    /// queues one for a local `EMSGSIZE` beside the error the send itself returned — no peer's
    /// report) or one without an `IP_RECVERR`/`IPV6_RECVERR` error.
    pub fn parse(&mut self) -> Option<(Option<SocketAddr>, i32)> {
        let mut errno = 0;
        let mut local = false;
        // SAFETY: the kernel filled `msg_controllen` bytes of `ctl`; CMSG_FIRSTHDR/NXTHDR stay
        // within them, and an IP_RECVERR/IPV6_RECVERR header carries a sock_extended_err.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&self.msg);
            while !c.is_null() {
                let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
                if (level == libc::IPPROTO_IP && ty == libc::IP_RECVERR)
                    || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_RECVERR)
                {
                    let ee: libc::sock_extended_err =
                        ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    errno = i32::try_from(ee.ee_errno).unwrap_or(libc::EIO);
                    local = ee.ee_origin == libc::SO_EE_ORIGIN_LOCAL;
                }
                c = libc::CMSG_NXTHDR(&self.msg, c);
            }
        }
        if errno == 0 || local {
            return None;
        }
        let name = mem::replace(&mut self.name, SockAddrStorage::zeroed());
        // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes into `name`.
        let dest = unsafe { SockAddr::new(name, self.msg.msg_namelen) }.as_socket();
        Some((dest, errno))
    }
}

/// Entries read per `recvmmsg(MSG_ERRQUEUE)` call.
const ERRQ_PER_CALL: usize = 64;

/// Reads the socket's error queue (`recvmmsg(MSG_ERRQUEUE)`, non-blocking: up to 64 entries per
/// call) until it is empty, at most `max` reports; pushes (destination of the datagram the
/// error is about, errno) for each report from the network. Entries of local origin are read
/// and dropped without counting toward `max` (see [`ErrqMem::parse`]): left queued they would
/// fill the socket's receive buffer. Reading the queue empty also clears the socket's pending
/// error. Returns the number of system calls made.
pub(crate) fn drain_errqueue(
    fd: RawFd,
    max: usize,
    out: &mut Vec<(Option<SocketAddr>, i32)>,
) -> u64 {
    let mut mems: Vec<ErrqMem> = (0..max.min(ERRQ_PER_CALL))
        .map(|_| ErrqMem::new())
        .collect();
    // SAFETY: an all-zero mmsghdr is valid; each is pointed at its `ErrqMem` below.
    let mut hdrs: Vec<libc::mmsghdr> = (0..mems.len()).map(|_| unsafe { mem::zeroed() }).collect();
    let mut calls = 0;
    let mut left = max;
    while left > 0 {
        let n = left.min(mems.len());
        for (m, h) in mems.iter_mut().zip(hdrs.iter_mut()).take(n) {
            m.prepare();
            h.msg_hdr = m.msg;
            h.msg_len = 0;
        }
        calls += 1;
        // SAFETY: `hdrs[..n]` are valid mmsghdrs whose pointers refer to `mems[..n]`, which
        // neither move nor drop during the call; the kernel writes within their lengths.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                libc::c_uint::try_from(n).unwrap_or(64),
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        let Ok(got) = usize::try_from(r) else {
            break;
        };
        for (m, h) in mems.iter_mut().zip(hdrs.iter()).take(got) {
            // The kernel wrote the lengths back into the copies in `hdrs`.
            m.msg = h.msg_hdr;
            if let Some(e) = m.parse() {
                out.push(e);
                left -= 1;
            }
        }
        if got < n {
            break;
        }
    }
    calls
}

//! `msghdr`/iovec/cmsg building: the memory a send op points the kernel at.

use std::mem;
use std::ptr;

use socket2::SockAddr;

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

/// Wraps a prepared `msghdr` for `sendmmsg`.
pub(crate) fn mmsghdr(m: &MsgMem) -> libc::mmsghdr {
    libc::mmsghdr {
        msg_hdr: m.msg,
        msg_len: 0,
    }
}

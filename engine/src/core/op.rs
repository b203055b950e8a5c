//! The driver boundary, as plain data: op tokens, planned operations, and what a driver reports
//! back. Tokens are encoded and decoded here and nowhere else.

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The `user_data` of a kernel request: an op slot and its generation, or a reserved value.
///
/// A generation-tagged op token never equals [`Token::CANCEL`]: slot `u32::MAX` is never
/// allocated (the op table would need 4 Gi entries first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Token(pub u64);

impl Token {
    /// The `user_data` of cancel requests; their completions carry nothing for the core.
    pub const CANCEL: Token = Token(u64::MAX);

    pub(crate) fn op(slot: u32, gen: u32) -> Token {
        Token((u64::from(gen) << 32) | u64::from(slot))
    }

    /// The op slot: drivers index their per-op kernel-visible memory with it.
    pub fn slot(self) -> usize {
        // The low 32 bits by construction.
        (self.0 & 0xffff_ffff) as usize
    }

    pub(crate) fn gen(self) -> u32 {
        // The high 32 bits by construction.
        (self.0 >> 32) as u32
    }
}

/// One operation as the kernel will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpShape {
    /// A `sendmsg` with `entries` iovecs, `bytes` in all, from the front of a stream queue.
    Stream { entries: usize, bytes: usize },
    /// `count` datagrams, the first with queue sequence `first_seq` (the others follow it in
    /// the queue, not necessarily adjacent: a destination's group skips other destinations'
    /// datagrams); GSO when `segment_size` is set. `group` names the op's datagram list in the
    /// socket's queue.
    Dgram {
        first_seq: u64,
        count: usize,
        segment_size: Option<u16>,
        bytes: usize,
        group: u32,
    },
}

/// An operation for a driver to issue. `token` goes into `user_data` and comes back with the
/// result; it is generation-tagged, so a stale or unknown token is ignored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Planned {
    pub token: Token,
    pub sock: u32,
    pub fd: RawFd,
    pub shape: OpShape,
    /// Destination for unconnected datagram sockets.
    pub dest: Option<SocketAddr>,
    /// Send it zero-copy (`IORING_OP_SEND_ZC`/`SENDMSG_ZC`): the core keeps the op's buffers
    /// until its notification ([`Event::Notif`]).
    pub zerocopy: bool,
}

/// What a driver reports: plain data the core interprets. Drivers decide nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The kernel finished an op: `res >= 0` bytes sent, `res < 0` is `-errno`. For a
    /// zero-copy op, the first completion without `IORING_CQE_F_MORE`: no notification follows.
    Done { token: Token, res: i32 },
    /// A zero-copy op's first completion with `IORING_CQE_F_MORE`: its result (as for `Done`),
    /// and a notification ([`Event::Notif`]) will follow — the kernel may read the op's memory
    /// until then, whatever `res` says.
    DoneMore { token: Token, res: i32 },
    /// A zero-copy op's notification (`IORING_CQE_F_NOTIF`): the kernel is done with its
    /// memory. `res` is never an error: with `IORING_SEND_ZC_REPORT_USAGE`, bit 31
    /// (`IORING_NOTIF_USAGE_ZC_COPIED`) says the kernel copied the data anyway.
    Notif { token: Token, res: i32 },
    /// The driver did not hand the op to the kernel (SQ full, or behind a `sendmmsg` entry that
    /// failed): nothing of it was sent.
    NotIssued { token: Token },
    /// A `sendmmsg` stopped before this op without an error of its own (a partial count):
    /// nothing of it was sent, and the error that stopped the call, if any, was consumed.
    Stopped { token: Token },
    /// A socket the core asked to watch ([`super::Core::take_watch`]) is writable, or has an
    /// error pending that the next send will report.
    Writable { sock: u32 },
}

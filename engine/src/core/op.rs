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

    /// What the simulated kernel records as the token of a flush's solo send ([`Solo`]: no op
    /// slot; slot `u32::MAX - 2`, never allocated either).
    #[cfg(any(test, fuzzing, feature = "sim"))]
    pub const SOLO: Token = Token(((u32::MAX as u64) << 32) | (u32::MAX - 2) as u64);

    /// The `user_data` of a driver's own error-queue read number `n` (slot `u32::MAX - 1`, never
    /// allocated either).
    pub fn errq(n: u32) -> Token {
        Token::op(ERRQ_SLOT, n)
    }

    /// For a token made by [`Token::errq`]: its number.
    pub fn errq_index(self) -> Option<u32> {
        (self.slot() == ERRQ_SLOT as usize).then(|| self.gen())
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

    /// The `user_data` of a cancel request for this op: the op's token with bit 31 of the slot
    /// set (op slots stay below it: the op table would need 2 Gi entries first).
    pub fn cancel_of(self) -> Token {
        Token(self.0 | Token::CANCEL_BIT)
    }

    /// For the `user_data` of a cancel request made by [`Token::cancel_of`]: the op it names.
    pub fn cancelled_op(self) -> Option<Token> {
        (self != Token::CANCEL && self.0 & Token::CANCEL_BIT != 0)
            .then_some(Token(self.0 & !Token::CANCEL_BIT))
    }

    const CANCEL_BIT: u64 = 1 << 31;
}

/// The slot of [`Token::errq`] tokens.
const ERRQ_SLOT: u32 = u32::MAX - 1;

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
    /// One packet, the queue's datagram `seq`, for one `write(2)` on a packet descriptor
    /// (never merged with another, never split); `group` names it in the socket's queue, as for
    /// a datagram op.
    Packet { seq: u64, bytes: usize, group: u32 },
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

/// The one op a blocking flush may send itself, outside the general machinery (no op slot, no
/// token, no event): everything unsent on the socket is this one buffer, and nothing is in
/// flight anywhere ([`super::Core::solo`]). A driver sends it at once without blocking
/// ([`crate::sys::Driver::send_solo`]); the result comes back as a plain `res`, as a
/// completion would carry it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Solo<'a> {
    #[cfg_attr(
        not(any(test, fuzzing, feature = "sim")),
        expect(dead_code, reason = "the simulated kernel's")
    )]
    pub sock: u32,
    pub fd: RawFd,
    /// The payload, borrowed from the socket's queue.
    pub buf: &'a [u8],
    /// Destination for an unconnected datagram socket.
    pub dest: Option<&'a SocketAddr>,
    /// A datagram: its queue sequence number (the simulated kernel attributes it); `None`: a
    /// stream's bytes.
    #[cfg_attr(
        not(any(test, fuzzing, feature = "sim")),
        expect(dead_code, reason = "the simulated kernel's")
    )]
    pub dgram: Option<u64>,
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
    /// An error-queue entry read for `sock` (an ICMP error about an earlier datagram to
    /// `dest`), by a read the core asked for ([`super::Core::take_errq_after`]).
    PeerError {
        sock: u32,
        dest: Option<SocketAddr>,
        errno: i32,
    },
    /// A socket the core asked to watch ([`super::Core::take_watch`]) is writable, or has an
    /// error pending that the next send will report.
    Writable { sock: u32 },
}

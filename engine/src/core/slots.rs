//! Slot tables: sockets and ops in flight, each slot generation-tagged, so a stale socket id
//! or op token never reaches a new occupant.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::Bytes;

use super::{Acc, Core, OpShape, Queue, Sock, Token, DEST_NONE, DEST_V4, DEST_V4_MAPPED, DEST_V6};
use crate::error::Error;
use crate::SocketId;

#[derive(Debug)]
pub(super) struct SockSlot {
    pub(super) gen: u32,
    pub(super) sock: Option<Sock>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct OpInfo {
    pub(super) sock: u32,
    pub(super) shape: OpShape,
    pub(super) zerocopy: bool,
}

/// A zero-copy op whose result was applied and whose notification has not come: the slot stays
/// occupied (same generation) and holds the op's buffers, which the kernel may still read.
#[derive(Debug)]
pub(super) struct NotifWait {
    pub(super) sock: u32,
    pub(super) held: Vec<Bytes>,
}

#[derive(Debug)]
pub(super) struct OpSlot {
    pub(super) gen: u32,
    pub(super) op: Option<OpInfo>,
    pub(super) notif: Option<NotifWait>,
}

/// The live socket at `idx` of the slab, if any (a function of the slab alone, so the caller
/// can still reach the core's other fields while it holds the socket).
pub(super) fn live_mut(socks: &mut [SockSlot], idx: u32) -> Option<&mut Sock> {
    socks.get_mut(idx as usize).and_then(|s| s.sock.as_mut())
}

impl Core {
    pub fn add_socket(&mut self, fd: RawFd, peer: Option<SocketAddr>, queue: Queue) -> SocketId {
        let sock = Sock {
            fd,
            // The one place addresses are normalized: a dual-stack socket's IPv4 peer is
            // `[::ffff:a.b.c.d]:p` to `getpeername`; every error names it as IPv4.
            peer: peer.map(super::peer::canonical),
            writable: true,
            watching: false,
            in_ready: false,
            capped: false,
            chain: 0,
            barrier: None,
            in_flight: 0,
            queued_bytes: 0,
            poisoned: None,
            accepting: true,
            acc: Acc::default(),
            retry_at_ns: None,
            closing: false,
            recverr: false,
            errqueue: false,
            peer_errors: Vec::new(),
            unreachable: None,
            zerocopy: true,
            zc_confirmed: false,
            zc_notifs: 0,
            // A stream or a connected UDP socket takes no destination; an unconnected one any
            // address until `set_family` says which (the simulated kernel never does).
            dests: match (&queue, peer) {
                (Queue::Dgram(_), None) => DEST_V4 | DEST_V6 | DEST_V4_MAPPED,
                _ => DEST_NONE,
            },
            queue,
        };
        if let Some(idx) = self.free_socks.pop() {
            let slot = &mut self.socks[idx as usize];
            slot.sock = Some(sock);
            SocketId::new(idx, slot.gen)
        } else {
            let idx = u32::try_from(self.socks.len()).expect("more than u32::MAX sockets");
            self.socks.push(SockSlot {
                gen: 0,
                sock: Some(sock),
            });
            SocketId::new(idx, 0)
        }
    }

    pub fn sock(&self, id: SocketId) -> Result<&Sock, Error> {
        match self.socks.get(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => Ok(s),
            _ => Err(Error::UnknownSocket(id)),
        }
    }

    pub(super) fn sock_mut(&mut self, id: SocketId) -> Result<&mut Sock, Error> {
        match self.socks.get_mut(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => Ok(s),
            _ => Err(Error::UnknownSocket(id)),
        }
    }

    pub fn id_of(&self, idx: u32) -> SocketId {
        SocketId::new(idx, self.socks[idx as usize].gen)
    }

    /// Iterates live socket indices.
    pub fn socket_indices(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..)
            .zip(self.socks.iter())
            .filter(|(_, s)| s.sock.is_some())
            .map(|(i, _)| i)
    }

    pub fn sock_at(&self, idx: u32) -> Option<&Sock> {
        self.socks.get(idx as usize).and_then(|s| s.sock.as_ref())
    }

    pub(super) fn alloc_op(&mut self, info: OpInfo) -> Token {
        if let Some(i) = self.free_ops.pop() {
            let slot = &mut self.ops[i as usize];
            slot.op = Some(info);
            Token::op(i, slot.gen)
        } else {
            let i = u32::try_from(self.ops.len()).expect("more than u32::MAX ops");
            self.ops.push(OpSlot {
                gen: 0,
                op: Some(info),
                notif: None,
            });
            Token::op(i, 0)
        }
    }

    pub(super) fn take_op(&mut self, t: Token) -> Option<OpInfo> {
        let i = t.slot();
        let slot = self.ops.get_mut(i)?;
        if slot.gen != t.gen() {
            return None;
        }
        let info = slot.op.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        // `i` came from a u32 slot index (`Token::op`).
        self.free_ops
            .push(u32::try_from(i).expect("op slots come from u32 indices"));
        Some(info)
    }

    /// A zero-copy op's first completion with `F_MORE`: takes its info but keeps the slot (and
    /// its generation) until the notification, holding `held`.
    pub(super) fn take_op_until_notif(&mut self, t: Token) -> Option<OpInfo> {
        let slot = self.ops.get_mut(t.slot())?;
        if slot.gen != t.gen() || !slot.op.is_some_and(|o| o.zerocopy) {
            return None;
        }
        let info = slot.op.take()?;
        slot.notif = Some(NotifWait {
            sock: info.sock,
            held: Vec::new(),
        });
        Some(info)
    }

    /// The notification of a zero-copy op: frees its slot; returns its socket and the buffers
    /// it held (dropped by the caller: released exactly here, exactly once).
    pub(super) fn take_notif(&mut self, t: Token) -> Option<NotifWait> {
        let i = t.slot();
        let slot = self.ops.get_mut(i)?;
        if slot.gen != t.gen() {
            return None;
        }
        let wait = slot.notif.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        self.free_ops
            .push(u32::try_from(i).expect("op slots come from u32 indices"));
        Some(wait)
    }

    /// The buffers held for the notification of op `t`, if it waits for one.
    pub(super) fn notif_held_mut(&mut self, t: Token) -> Option<&mut Vec<Bytes>> {
        let slot = self.ops.get_mut(t.slot())?;
        if slot.gen != t.gen() {
            return None;
        }
        slot.notif.as_mut().map(|w| &mut w.held)
    }

    /// Whether op `t` waits for its notification and holds a buffer covering every range
    /// (address, length) given: what the simulated kernel checks until it notifies.
    #[cfg(any(test, fuzzing, feature = "sim"))]
    pub fn zc_holds(&self, t: Token, ranges: &[(usize, usize)]) -> bool {
        let Some(w) = self
            .ops
            .get(t.slot())
            .filter(|s| s.gen == t.gen())
            .and_then(|s| s.notif.as_ref())
        else {
            return false;
        };
        ranges.iter().all(|&(at, len)| {
            w.held.iter().any(|b| {
                let start = b.as_ptr() as usize;
                at >= start && at + len <= start + b.len()
            })
        })
    }

    /// Zero-copy ops waiting for their notification.
    pub fn notifs_pending(&self) -> usize {
        self.ops.iter().filter(|s| s.notif.is_some()).count()
    }
    /// Tokens of the ops in flight on socket `sock` (every socket with `None`): what a cancel
    /// targets, op by op (not by file, which a `dup`ed descriptor would share).
    pub fn in_flight_tokens(&self, sock: Option<u32>) -> Vec<Token> {
        (0u32..)
            .zip(&self.ops)
            .filter_map(|(i, slot)| {
                let op = slot.op?;
                (sock.is_none() || sock == Some(op.sock)).then(|| Token::op(i, slot.gen))
            })
            .collect()
    }
}

//! Slot tables: sockets and ops in flight, each slot generation-tagged, so a stale socket id
//! or op token never reaches a new occupant.

use std::net::SocketAddr;
use std::os::fd::RawFd;

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
}

#[derive(Debug)]
pub(super) struct OpSlot {
    pub(super) gen: u32,
    pub(super) op: Option<OpInfo>,
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

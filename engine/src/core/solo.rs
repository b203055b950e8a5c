//! The solo flush: one op's worth of writes on the flushed socket and nothing else going on —
//! a VoIP relay's one datagram per flush, a request/response protocol's one message. The
//! general machinery (ready list, op slot and token, planned batch, completion event, barrier
//! bookkeeping) costs more than the message; here a flush sends the one buffer itself
//! ([`Core::solo`], then `Driver::send_solo`) and applies a whole success in one step
//! ([`Core::solo_sent`]), with the same accounting the general path makes. Anything else it
//! leaves to the general path (`Engine::flush`): the outcome is the general path's by
//! construction.

use super::{Clock, Core, Queue, SockSlot, Solo};
use crate::error::Error;
use crate::report::FlushReport;
use crate::SocketId;

impl Core {
    /// The one op `id`'s flush may send itself, if the general path would issue exactly that
    /// op, alone, right now, with nothing in flight and nothing else to do: the socket is the
    /// only one ready and everything unsent on it is one buffer — one stream buffer (the
    /// staging chunk, or one entry, from its first byte, within `max_bytes_per_op`, below the
    /// zero-copy threshold) or one datagram (no GSO probe, suspect or noisy destination
    /// pending), and no other socket holds a pending write (one waiting for writability on
    /// epoll is not in flight, but the general path's wait would send it). Never a packet
    /// descriptor.
    #[inline]
    pub fn solo(&self, id: SocketId) -> Option<Solo<'_>> {
        if !self.cfg.solo_flush
            || self.in_flight != 0
            || self.ready.only() != Some(id.index)
            || !self.backoff.is_empty()
            || !self.watch.is_empty()
            || !self.errqueue.is_empty()
            || !self.capped.is_empty()
        {
            return None;
        }
        let s = self.sock(id).ok()?;
        // Every write pending in the engine is this socket's: none waits on another socket for
        // writability (the general path would take that socket's event in the same wait).
        if !s.writable
            || !s.accepting
            || s.retry_at_ns.is_some()
            || self.pending_writes != s.queue.writes() as u64
        {
            return None;
        }
        let (buf, dest, dgram) = match &s.queue {
            Queue::Stream(q) => {
                let buf = q.solo()?;
                let zerocopy =
                    s.zerocopy && self.cfg.zerocopy_threshold.is_some_and(|t| buf.len() >= t);
                if buf.is_empty() || buf.len() > self.cfg.max_bytes_per_op || zerocopy {
                    return None;
                }
                (buf, None, None)
            }
            Queue::Dgram(q) => {
                let (buf, dest, seq) = q.solo()?;
                (buf, dest, Some(seq))
            }
            Queue::Packet(_) => return None,
        };
        Some(Solo {
            sock: id.index,
            fd: s.fd,
            buf,
            dest,
            dgram,
        })
    }

    /// Applies the result of `id`'s [`Solo`] send of `len` bytes if it went out whole (a
    /// stream: every byte; a datagram: sent) — accounted as the general path accounts the op
    /// (`complete_stream`, `complete_dgram`) — and returns true: the flush's barrier resolves
    /// now ([`Core::resolve_solo`]). False changes nothing: any other result is the general
    /// path's to apply ([`Core::plan_solo`]).
    #[inline]
    pub fn solo_sent(&mut self, id: SocketId, res: i32, len: usize, clock: &mut Clock<'_>) -> bool {
        let Ok(n) = usize::try_from(res) else {
            return false;
        };
        let s = match self.socks.get_mut(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => s,
            _ => return false,
        };
        let (ended, sampled) = match &mut s.queue {
            Queue::Stream(q) if n == len => q.solo_sent(),
            // UDP sends are all or nothing: a result means the datagram left.
            Queue::Dgram(q) => {
                let (total, sampled) = q.solo_sent();
                ((1, total), sampled)
            }
            _ => return false,
        };
        // Off the ready list, which held only this socket: it has nothing left to send.
        s.in_ready = false;
        self.ready.clear();
        self.ended_ok(id.index, ended, len, sampled.as_slice(), clock);
        true
    }

    /// What the flush returns once [`Core::solo_sent`] applied its op: the barrier resolved,
    /// the report since the last flush, or the error the flush raises.
    #[inline]
    pub fn resolve_solo(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        self.sock_mut(id)?.resolved()
    }

    /// The op the general path would have issued for `id`'s [`Solo`] (the same buffer: nothing
    /// changed since [`Core::solo`]), planned so that the solo send's result, whatever it was,
    /// is applied as its completion.
    pub fn plan_solo(&mut self, id: SocketId) -> Option<super::Planned> {
        let s = self.sock_mut(id).ok()?;
        s.in_ready = false;
        self.ready.clear();
        self.plan_op(id.index)
    }
}

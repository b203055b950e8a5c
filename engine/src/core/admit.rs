//! Admission: what `send`/`send_to` accept. The per-buffer hot path is one test (the socket
//! accepts writes, the call fits its kind and destination, every limit holds); why a write is
//! refused is worked out, and the error built, out of line.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::{Config, Core, Queue, Sock, SockSlot};
use crate::error::{Error, Limit, SendError};
use crate::SocketId;

/// `send` without a destination (streams, connected UDP).
pub(super) const DEST_NONE: u8 = 1;
/// `send_to` an IPv4 address.
pub(super) const DEST_V4: u8 = 2;
/// `send_to` an IPv6 address.
pub(super) const DEST_V6: u8 = 4;
/// `send_to` an IPv4-mapped IPv6 address (a dual-stack socket).
pub(super) const DEST_V4_MAPPED: u8 = 8;

/// Whether a socket taking `dests` can ever send to `dest`: the right kind of call, an address
/// of a family the socket reaches, a port and a specified address. A few instructions on the
/// hot path; [`dest_problem`] says why not, out of line.
#[inline(always)]
fn dest_fits(dest: Option<SocketAddr>, dests: u8) -> bool {
    // Non-short-circuit `&`: one branch for the whole test (measured: a branch per field cost
    // about 0.4 ns per datagram). No 128-bit loads: the caller's address was usually just
    // written in pieces, and a wide load of it stalls store forwarding (+6 ns per datagram).
    match dest {
        None => dests & DEST_NONE != 0,
        Some(SocketAddr::V4(a)) => {
            // Nonzero product: port ≠ 0 and address ≠ 0.0.0.0.
            (dests & DEST_V4 != 0) & (u64::from(a.port()) * u64::from(a.ip().to_bits()) != 0)
        }
        Some(SocketAddr::V6(a)) => {
            let s = a.ip().segments();
            // `::/80` followed by 0xffff: IPv4-mapped. `::` and `::ffff:0.0.0.0` are the
            // unspecified forms.
            let low = (s[0] | s[1] | s[2] | s[3] | s[4]) == 0;
            let mapped = low & (s[5] == 0xffff);
            let unspecified = low & ((s[5] == 0) | mapped) & ((s[6] | s[7]) == 0);
            (dests & DEST_V6 != 0)
                & (a.port() != 0)
                & !unspecified
                & (!mapped | (dests & DEST_V4_MAPPED != 0))
        }
    }
}

/// Why a datagram socket taking `dests` (a `send_to` socket) can never send to `dest`.
#[cold]
fn dest_problem(dest: SocketAddr, dests: u8) -> Option<&'static str> {
    let mapped = match dest {
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped(),
        SocketAddr::V4(_) => None,
    };
    let ip_unspecified = match dest {
        SocketAddr::V4(a) => a.ip().is_unspecified(),
        SocketAddr::V6(a) => {
            a.ip().is_unspecified() || mapped.is_some_and(|v4| v4.is_unspecified())
        }
    };
    if dest.is_ipv6() && dests & DEST_V6 == 0 {
        return Some("an IPv6 address on an IPv4 socket (IPv6 peers need an IPv6 socket)");
    }
    if dest.is_ipv4() && dests & DEST_V4 == 0 {
        return Some("an IPv4 address on an IPv6-only socket (IPV6_V6ONLY is set)");
    }
    if mapped.is_some() && dests & DEST_V4_MAPPED == 0 {
        return Some("an IPv4-mapped address on an IPv6-only socket (IPV6_V6ONLY is set)");
    }
    if ip_unspecified {
        return Some("the unspecified address (0.0.0.0 or ::) is not a destination");
    }
    if dest.port() == 0 {
        return Some("port 0 is not a destination");
    }
    None
}

/// What a [`crate::StreamWriter`] may still queue on its stream: bytes under both byte limits,
/// and writes under the per-socket count.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Room {
    pub bytes: usize,
    pub writes: usize,
}

impl Core {
    /// Queues a write: a stream write, or a datagram (`dest` for unconnected UDP sockets).
    /// `queued_ns` is the caller's clock for a sampled write, 0 otherwise.
    ///
    /// One socket lookup: this is the per-buffer hot path (always inlined into
    /// `Engine::send`/`send_to`, so the buffer is not passed through memory twice).
    #[inline(always)]
    pub fn send(
        &mut self,
        id: SocketId,
        data: Bytes,
        dest: Option<SocketAddr>,
        queued_ns: u64,
    ) -> Result<(), SendError> {
        let len = data.len();
        let total = self.queued_bytes;
        let (cfg, round) = (&self.cfg, self.round);
        let s = match self.socks.get_mut(id.index as usize) {
            Some(SockSlot { gen, sock: Some(s) }) if *gen == id.gen => s,
            _ => return Err(self.refused(id, data, dest)),
        };
        // One test for the common case: the socket accepts writes, the call fits its kind, and
        // every limit holds (no overflow: `Config::clamped` keeps the limits ≤ isize::MAX).
        // Everything else is sorted out, and the error built, out of line.
        let fits = s.accepting
            && s.queued_bytes + len <= cfg.max_queued_bytes_per_socket
            && total + len <= cfg.max_queued_bytes;
        let dests = s.dests;
        match &mut s.queue {
            Queue::Stream(q)
                if fits && dest.is_none() && q.len() < cfg.max_queued_writes_per_socket =>
            {
                q.push(
                    data,
                    queued_ns,
                    cfg.coalesce_below_bytes,
                    cfg.coalesce_max_bytes,
                );
            }
            // `dest_fits`: the call fits the socket (connected or not) and the destination is
            // one it can reach (family, port, a specified address).
            Queue::Dgram(q)
                if fits && dest_fits(dest, dests) && q.len() < cfg.max_queued_writes_per_socket =>
            {
                q.push(data, dest, queued_ns);
            }
            Queue::Packet(q)
                if fits && dest.is_none() && q.len() < cfg.max_queued_writes_per_socket =>
            {
                q.push(data, None, queued_ns);
            }
            _ => return Err(self.refused(id, data, dest)),
        }
        s.queued_bytes += len;
        s.wake(id.index, cfg, round, &mut self.ready);
        self.queued_bytes += len;
        self.pending_writes += 1;
        Ok(())
    }

    /// Opens a stream for borrowed writes ([`crate::StreamWriter`]): the checks [`Core::send`]
    /// makes per buffer, made once; the room left under every queue limit is then spent by
    /// the writer without looking again.
    pub fn open_stream(&self, id: SocketId) -> Result<Room, Error> {
        let s = self.sock(id)?;
        let Queue::Stream(q) = &s.queue else {
            return Err(Error::WrongSocketKind {
                socket: id,
                expected: "a TCP stream",
            });
        };
        if !s.accepting {
            refuse(s, &self.cfg, self.queued_bytes, id, 0)?;
        }
        let cfg = &self.cfg;
        Ok(Room {
            bytes: (cfg.max_queued_bytes_per_socket - s.queued_bytes)
                .min(cfg.max_queued_bytes - self.queued_bytes),
            writes: cfg.max_queued_writes_per_socket.saturating_sub(q.len()),
        })
    }

    /// Queues a chunk of borrowed writes filled by a [`crate::StreamWriter`] on a stream
    /// opened with [`Core::open_stream`] (socket index `idx`; the writer kept within the
    /// room it was given, and holds the engine, so nothing changed meanwhile). Hands back an
    /// empty end-offset vector for the writer's next chunk.
    pub fn push_chunk(&mut self, idx: u32, data: Bytes, ends: Vec<u32>) -> Vec<u32> {
        let Some(SockSlot { sock: Some(s), .. }) = self.socks.get_mut(idx as usize) else {
            return ends;
        };
        let Queue::Stream(q) = &mut s.queue else {
            return ends;
        };
        let (len, writes) = (data.len(), ends.len().max(1));
        let spare = q.push_chunk(data, ends);
        s.queued_bytes += len;
        self.queued_bytes += len;
        self.pending_writes += writes as u64;
        self.wake(idx);
        spare
    }

    /// The staging memory of stream `idx` for a writer ([`StreamQueue::take_stage`]), and an
    /// empty end-offset vector for its chunk (a spare one: no allocation in the steady state).
    pub fn take_stage(&mut self, idx: u32) -> (BytesMut, Vec<u32>) {
        match self.socks.get_mut(idx as usize) {
            Some(SockSlot {
                sock:
                    Some(Sock {
                        queue: Queue::Stream(q),
                        ..
                    }),
                ..
            }) => (q.take_stage(), q.spare_ends()),
            _ => (BytesMut::new(), Vec::new()),
        }
    }

    /// Takes back a writer's staging memory and its last writes, staged where they lie
    /// ([`StreamQueue::restage`]), and its end-offset vector, on a stream opened with
    /// [`Core::open_stream`] (the writer kept within its room).
    pub fn restage(&mut self, idx: u32, stage: BytesMut, ends: Vec<u32>) {
        let Some(SockSlot { sock: Some(s), .. }) = self.socks.get_mut(idx as usize) else {
            return;
        };
        let Queue::Stream(q) = &mut s.queue else {
            return;
        };
        let (len, writes) = (stage.len(), ends.len());
        let spare = q.restage(stage, ends);
        q.return_ends(spare);
        if writes > 0 {
            s.queued_bytes += len;
            self.queued_bytes += len;
            self.pending_writes += writes as u64;
            s.wake(idx, &self.cfg, self.round, &mut self.ready);
        }
    }

    /// Why a [`crate::StreamWriter`] has no room for `len` more bytes on `id`.
    #[cold]
    #[inline(never)]
    pub fn refuse_copy(&self, id: SocketId, len: usize) -> Error {
        match self.sock(id) {
            Err(e) => e,
            Ok(s) => match refuse(s, &self.cfg, self.queued_bytes, id, len) {
                Err(e) => e,
                // Not refused after all (cannot happen: the room was computed from the same
                // state).
                Ok(()) => Error::UnknownSocket(id),
            },
        }
    }

    /// Why [`Core::send`] refuses, in the order a caller should hear it, with the buffer.
    #[cold]
    #[inline(never)]
    fn refused(&self, id: SocketId, data: Bytes, dest: Option<SocketAddr>) -> SendError {
        let Ok(s) = self.sock(id) else {
            return SendError::new(Error::UnknownSocket(id), data);
        };
        let expected = match (&s.queue, s.peer.is_some(), dest.is_some()) {
            (Queue::Stream(_) | Queue::Packet(_), _, true) => Some("an unconnected UDP socket"),
            (Queue::Dgram(_), true, true) => Some("an unconnected UDP socket (use send)"),
            (Queue::Dgram(_), false, false) => Some("a connected UDP socket (use send_to)"),
            _ => None,
        };
        if let Some(expected) = expected {
            let e = Error::WrongSocketKind {
                socket: id,
                expected,
            };
            return SendError::new(e, data);
        }
        if let Some(dest) = dest {
            if let Some(reason) = dest_problem(dest, s.dests) {
                let e = Error::BadDestination {
                    socket: id,
                    dest,
                    reason,
                };
                return SendError::new(e, data);
            }
        }
        match refuse(s, &self.cfg, self.queued_bytes, id, data.len()) {
            Err(e) => SendError::new(e, data),
            // Not refused after all (cannot happen: `send` asked because a test failed).
            Ok(()) => SendError::new(Error::UnknownSocket(id), data),
        }
    }
}

/// Which limit refuses `len` more bytes on `s` (poison and closing first), in the order a
/// caller should hear it.
#[cold]
#[inline(never)]
fn refuse(s: &Sock, cfg: &Config, total: usize, id: SocketId, len: usize) -> Result<(), Error> {
    if let Some(e) = &s.poisoned {
        return Err(e.clone());
    }
    if s.closing {
        return Err(Error::UnknownSocket(id));
    }
    let (max_total, max_per) = (cfg.max_queued_bytes, cfg.max_queued_bytes_per_socket);
    let max = max_per.min(max_total);
    if len > max {
        return Err(Error::BufferTooLarge {
            socket: id,
            len,
            max,
        });
    }
    if s.queued_bytes + len > max_per {
        return Err(Error::Backpressure {
            socket: id,
            limit: Limit::QueuedBytesPerSocket,
            max: max_per,
        });
    }
    if total + len > max_total {
        return Err(Error::Backpressure {
            socket: id,
            limit: Limit::QueuedBytesTotal,
            max: max_total,
        });
    }
    let queued_writes = s.queue.writes();
    if queued_writes >= cfg.max_queued_writes_per_socket {
        return Err(Error::Backpressure {
            socket: id,
            limit: Limit::QueuedWritesPerSocket,
            max: cfg.max_queued_writes_per_socket,
        });
    }
    Ok(())
}

#[cfg(test)]
mod dest_tests {
    use super::super::peer::canonical;
    use super::*;

    /// The hot path's test and the cold path's reason agree on every kind of address, for
    /// every kind of `send_to` socket: refused exactly when there is a reason.
    #[test]
    fn dest_fits_agrees_with_dest_problem() {
        let addrs = [
            "127.0.0.1:9",
            "10.1.2.3:65535",
            "0.0.0.0:9",
            "127.0.0.1:0",
            "0.0.0.0:0",
            "[::1]:9",
            "[2001:db8::1]:9",
            "[fe80::1]:9",
            "[::]:9",
            "[::1]:0",
            "[::ffff:127.0.0.1]:9",
            "[::ffff:0.0.0.0]:9",
            "[::ffff:127.0.0.1]:0",
            "[::1:0:0]:9",
            "[::ffff:0:0:1]:9",
            "[::127.0.0.1]:9",
            "[0:0:0:0:1::]:9",
        ];
        let socks = [
            ("v4", DEST_V4),
            ("v6only", DEST_V6),
            ("dual", DEST_V4 | DEST_V6 | DEST_V4_MAPPED),
        ];
        for a in addrs {
            let dest: SocketAddr = a.parse().unwrap();
            for (name, dests) in socks {
                let fits = dest_fits(Some(dest), dests);
                let problem = dest_problem(dest, dests);
                assert_eq!(fits, problem.is_none(), "{a} on {name}: {problem:?}");
            }
        }
        // Exact verdicts where it matters.
        let refused = |a: &str, dests| dest_problem(a.parse().unwrap(), dests);
        assert!(refused("[::1]:9", DEST_V4).is_some_and(|r| r.contains("IPv6 address on an IPv4")));
        assert!(refused("127.0.0.1:9", DEST_V6).is_some_and(|r| r.contains("IPv6-only")));
        assert!(refused("[::ffff:127.0.0.1]:9", DEST_V6).is_some_and(|r| r.contains("mapped")));
        assert_eq!(
            refused("[::ffff:127.0.0.1]:9", DEST_V4 | DEST_V6 | DEST_V4_MAPPED),
            None
        );
        assert_eq!(
            refused("127.0.0.1:9", DEST_V4 | DEST_V6 | DEST_V4_MAPPED),
            None
        );
        assert!(refused("0.0.0.0:9", DEST_V4).is_some_and(|r| r.contains("unspecified")));
        assert!(
            refused("[::ffff:0.0.0.0]:9", DEST_V4 | DEST_V6 | DEST_V4_MAPPED)
                .is_some_and(|r| r.contains("unspecified"))
        );
        assert!(refused("127.0.0.1:0", DEST_V4).is_some_and(|r| r.contains("port 0")));
        // No destination: streams and connected sockets only.
        assert!(dest_fits(None, DEST_NONE) && !dest_fits(None, DEST_V4 | DEST_V6));
        assert!(!dest_fits(Some("127.0.0.1:9".parse().unwrap()), DEST_NONE));
    }

    #[test]
    fn canonical_names_mapped_destinations_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:5004".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.7:5004".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::7]:5004".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}

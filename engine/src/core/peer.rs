//! Peer errors: ICMP reports about datagrams already sent, read from a socket's error queue
//! (`IP_RECVERR`) when the kernel signals one, kept per socket and per destination.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::{live_mut, Core};
use crate::error::{Error, Status, Unreachable};
use crate::SocketId;

/// Peer errors per (destination, errno), in the order first reported: at most
/// [`PEER_ERRORS_KEPT`] destinations.
#[derive(Debug, Default)]
pub(super) struct Unreachables {
    list: Vec<Unreachable>,
    at: HashMap<(SocketAddr, i32), usize>,
}

/// The name every error gives a peer or destination the kernel reported: an IPv4 destination
/// reached through a dual-stack IPv6 socket comes back from the error queue (and from
/// `getpeername`) IPv4-mapped; it is named as IPv4, the way such destinations are usually
/// written. Applied to the error queue's addresses and to a socket's peer at registration;
/// `send_to` destinations are kept as the caller wrote them.
pub(super) fn canonical(dest: SocketAddr) -> SocketAddr {
    match dest {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, a.port())),
            None => dest,
        },
        SocketAddr::V4(_) => dest,
    }
}

/// Peer errors kept per socket until taken.
pub(crate) const PEER_ERRORS_KEPT: usize = 4096;

impl Core {
    /// Asks the backend to read the socket's error queue (only where `IP_RECVERR` is on).
    pub fn want_errqueue(&mut self, idx: u32) {
        if let Some(s) = live_mut(&mut self.socks, idx) {
            if s.recverr && !s.errqueue {
                s.errqueue = true;
                self.errqueue.push(idx);
            }
        }
    }

    /// The next socket whose error queue should be read: (index, fd).
    pub fn take_errqueue(&mut self) -> Option<(u32, RawFd)> {
        while let Some(idx) = self.errqueue.pop() {
            if let Some(s) = live_mut(&mut self.socks, idx) {
                s.errqueue = false;
                return Some((idx, s.fd));
            }
        }
        None
    }

    /// Records an error the kernel reported (error queue) about an earlier datagram to `dest`:
    /// the datagram was sent; this is what came back ([`Error::Peer`]), kept as an entry and
    /// counted per destination.
    pub fn peer_error(&mut self, idx: u32, dest: Option<SocketAddr>, errno: i32) {
        let id = self.id_of(idx);
        self.stats.peer_errors += 1;
        let Some(s) = live_mut(&mut self.socks, idx) else {
            return;
        };
        s.acc.peer_errors += 1;
        let dest = dest.or(s.peer).map(canonical);
        if let (Some(d), super::Queue::Dgram(q)) = (dest, &mut s.queue) {
            q.mark_noisy(d);
        }
        if s.peer_errors.len() < PEER_ERRORS_KEPT {
            s.peer_errors.push(Error::Peer {
                status: Status::from_errno(errno),
                errno,
                socket: id,
                peer: dest,
            });
        }
        let Some(dest) = dest else {
            return;
        };
        let u = s.unreachable.get_or_insert_with(Box::default);
        if let Some(&i) = u.at.get(&(dest, errno)) {
            u.list[i].reports += 1;
        } else if u.list.len() < PEER_ERRORS_KEPT {
            u.at.insert((dest, errno), u.list.len());
            u.list.push(Unreachable {
                dest,
                status: Status::from_errno(errno),
                errno,
                reports: 1,
            });
        }
    }

    /// The next datagram socket whose error queue should be read once the ops planned so far
    /// have gone out, with its fd and the entries expected (one per group sent to a destination
    /// that drew an ICMP error lately: reading them at once clears the socket's pending error
    /// before it can fail another destination's send).
    pub fn take_errq_after(&mut self) -> Option<(u32, RawFd, usize)> {
        while let Some(idx) = self.errq_after.pop() {
            if let Some(s) = live_mut(&mut self.socks, idx) {
                if let super::Queue::Dgram(q) = &mut s.queue {
                    let n = q.take_errq_after();
                    if n > 0 {
                        return Some((idx, s.fd, n));
                    }
                }
            }
        }
        None
    }

    /// Peer-error sampling ([`super::Config::peer_error_sampling`]): the read behind `idx`'s
    /// noisy groups found `reports` entries. After a few such reads in a row an unconnected
    /// socket goes quiet: `IP_RECVERR` off (the backend is asked through
    /// [`Core::take_recverr_toggle`]) for [`super::dgram::QUIET_PASSES`] passes, then on
    /// again for a sample. Quiet, a dead destination costs no transition: without
    /// `IP_RECVERR` the kernel neither queues its ICMP errors nor sets an unconnected socket's
    /// pending error.
    pub fn errq_after_read(&mut self, idx: u32, reports: usize) {
        if !self.cfg.peer_error_sampling {
            return;
        }
        let Some(s) = live_mut(&mut self.socks, idx) else {
            return;
        };
        if s.peer.is_some() || !s.recverr {
            return;
        }
        if let super::Queue::Dgram(q) = &mut s.queue {
            if q.note_errq_read(reports) {
                q.go_quiet();
                s.recverr = false;
                self.recverr_toggles.push(idx);
            }
        }
    }

    /// The next socket whose `IP_RECVERR` must be switched (peer-error sampling): (index, fd,
    /// IPv6 socket, on).
    pub fn take_recverr_toggle(&mut self) -> Option<(u32, RawFd, bool, bool)> {
        while let Some(idx) = self.recverr_toggles.pop() {
            if let Some(s) = live_mut(&mut self.socks, idx) {
                return Some((idx, s.fd, s.dests & super::DEST_V6 != 0, s.recverr));
            }
        }
        None
    }

    /// The backend could not switch `IP_RECVERR` to `on`: the socket stays as it was (quiet
    /// again for a while if it was to go loud; loud if it was to go quiet).
    pub fn recverr_toggle_failed(&mut self, idx: u32, on: bool) {
        if let Some(s) = live_mut(&mut self.socks, idx) {
            s.recverr = !on;
            if let super::Queue::Dgram(q) = &mut s.queue {
                if on {
                    q.go_quiet();
                } else {
                    q.go_loud();
                }
            }
        }
    }

    /// Takes the peer errors recorded for the socket since the last call.
    pub fn take_peer_errors(&mut self, id: SocketId) -> Result<Vec<Error>, Error> {
        Ok(std::mem::take(&mut self.sock_mut(id)?.peer_errors))
    }

    /// Takes the per-destination counts of peer errors since the last call, in the order each
    /// (destination, errno) was first reported.
    pub fn take_unreachable(&mut self, id: SocketId) -> Result<Vec<Unreachable>, Error> {
        Ok(self
            .sock_mut(id)?
            .unreachable
            .take()
            .map_or_else(Vec::new, |u| u.list))
    }
}

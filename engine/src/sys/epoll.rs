//! The epoll driver: `O_NONBLOCK` sockets, `sendmsg` with iovecs for streams, `sendmmsg` for
//! datagrams (GSO groups included; `send`/`sendto` for a socket's only datagram), one `write` per packet on a packet descriptor, all
//! completed inside [`Driver::issue`]; a descriptor that hit EAGAIN is watched with
//! `EPOLLOUT | EPOLLONESHOT` until it is writable.
//!
//! Sockets are added to the epoll set only when first watched, and only while watched can they
//! wake it: the epoll descriptor (the engine's `AsFd`) is readable exactly when a watched socket
//! became writable (or got an error), never for sockets nobody waits on.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::msg::{mmsghdr, MmsgVec, MsgMem};
use super::uring::set_nonblocking;
use super::{nanos_since, Driver, FdKind, Tally, Wait};
use crate::core::{Core, Event, OpShape, Planned, Solo, Token};
use crate::error::Error;

/// `UIO_MAXIOV`: the most messages one `sendmmsg` takes (include/linux/uio.h).
const MMSG_MAX: usize = 1024;

/// A socket's place in the epoll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Not in the set.
    Out,
    /// In the set, disarmed (its one-shot fired).
    Idle,
    /// Armed for `EPOLLOUT`.
    Armed,
}

#[derive(Debug)]
pub(crate) struct Epoll {
    ep: OwnedFd,
    mems: Vec<MsgMem>,
    batch: Vec<Planned>,
    mmsg: MmsgVec,
    events: Vec<libc::epoll_event>,
    /// By socket index.
    watch: Vec<Watch>,
    armed: usize,
    base: Instant,
    tally: Tally,
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl Epoll {
    pub fn new(base: Instant) -> Result<Epoll, Error> {
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("epoll_create1", &io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll {
            ep,
            mems: Vec::new(),
            batch: Vec::new(),
            mmsg: MmsgVec::default(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            watch: Vec::new(),
            armed: 0,
            base,
            tally: Tally::default(),
        })
    }

    /// Sends op `batch[i]` alone with one call (`MsgMem::send_now`: `send`/`sendto` for one
    /// buffer, `sendmsg` for iovecs or a GSO cmsg): a stream op, or a socket's only datagram op
    /// (a `sendmmsg` of one costs more than a `send`).
    fn send_one(&mut self, payload: &Core, i: usize, out: &mut Vec<Event>) {
        let p = self.batch[i];
        let m = &mut self.mems[i];
        m.prepare(payload, &p);
        self.tally.transitions += 1;
        self.tally.batches += 1;
        self.tally.sqes += 1;
        let res = m.send_now(p.fd, libc::MSG_NOSIGNAL);
        out.push(Event::Done {
            token: p.token,
            res,
        });
    }

    /// Sends the datagram ops `batch[start..end]` (one socket) with one `sendmmsg` per 1024.
    /// After a failed first entry or a partial count, the rest are reported unsent: the core
    /// decides what goes next.
    fn send_dgrams(&mut self, payload: &Core, start: usize, end: usize, out: &mut Vec<Event>) {
        let fd = self.batch[start].fd;
        let mut k = start;
        while k < end {
            let chunk_end = end.min(k + MMSG_MAX);
            self.mmsg.0.clear();
            for j in k..chunk_end {
                let p = self.batch[j];
                self.mems[j].prepare(payload, &p);
                self.mmsg.0.push(mmsghdr(&self.mems[j]));
            }
            let len = u32::try_from(self.mmsg.0.len()).expect("chunk of at most 1024");
            self.tally.transitions += 1;
            self.tally.batches += 1;
            self.tally.sqes += u64::from(len);
            // SAFETY: every mmsghdr points at memory in `self.mems` and buffers the core keeps
            // alive; both outlive the call.
            let rc =
                unsafe { libc::sendmmsg(fd, self.mmsg.0.as_mut_ptr(), len, libc::MSG_NOSIGNAL) };
            if rc < 0 {
                // The error belongs to the first datagram.
                out.push(Event::Done {
                    token: self.batch[k].token,
                    res: -errno(),
                });
                self.not_issued(k + 1, end, out);
                return;
            }
            let sent = usize::try_from(rc).unwrap_or(0);
            for (j, mm) in (k..k + sent).zip(&self.mmsg.0) {
                out.push(Event::Done {
                    token: self.batch[j].token,
                    res: i32::try_from(mm.msg_len).unwrap_or(i32::MAX),
                });
            }
            k += sent;
            if k < chunk_end {
                // A partial count: the call stopped at batch[k] (an error it consumed, or no
                // room).
                out.push(Event::Stopped {
                    token: self.batch[k].token,
                });
                self.not_issued(k + 1, end, out);
                return;
            }
        }
    }

    /// Writes the packet ops `batch[start..end]` (one descriptor), one `write(2)` each. A
    /// failed packet does not stop the others; after EAGAIN the rest are reported unsent (they
    /// would only hit it again) and the core watches the descriptor.
    fn write_packets(&mut self, payload: &Core, start: usize, end: usize, out: &mut Vec<Event>) {
        for k in start..end {
            let p = self.batch[k];
            let m = &mut self.mems[k];
            m.prepare(payload, &p);
            self.tally.transitions += 1;
            self.tally.batches += 1;
            self.tally.sqes += 1;
            let res = m.write_now(p.fd);
            out.push(Event::Done {
                token: p.token,
                res,
            });
            if res == -libc::EAGAIN {
                self.not_issued(k + 1, end, out);
                return;
            }
        }
    }

    fn not_issued(&self, from: usize, to: usize, out: &mut Vec<Event>) {
        out.extend(
            self.batch[from..to]
                .iter()
                .map(|p| Event::NotIssued { token: p.token }),
        );
    }

    fn ctl(
        &mut self,
        op: libc::c_int,
        fd: RawFd,
        ev: Option<libc::epoll_event>,
    ) -> Result<(), Error> {
        self.tally.transitions += 1;
        let mut ev = ev;
        let ptr = ev
            .as_mut()
            .map_or(std::ptr::null_mut(), |e| e as *mut libc::epoll_event);
        // SAFETY: both fds are valid; `ptr` is null (DEL) or a live epoll_event for the call.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, ptr) } < 0 {
            return Err(Error::io("epoll_ctl", &io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Driver for Epoll {
    fn register(&mut self, sock: u32, fd: RawFd, _kind: FdKind) -> Result<(), Error> {
        set_nonblocking(fd, true)?;
        let i = sock as usize;
        if self.watch.len() <= i {
            self.watch.resize(i + 1, Watch::Out);
        }
        self.watch[i] = Watch::Out;
        Ok(())
    }

    fn deregister(&mut self, sock: u32, fd: RawFd) {
        let Some(w) = self.watch.get_mut(sock as usize) else {
            return;
        };
        let was = std::mem::replace(w, Watch::Out);
        if was == Watch::Armed {
            self.armed -= 1;
        }
        if was != Watch::Out {
            // A failure (already gone) is harmless.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, None);
        }
    }

    fn issue(
        &mut self,
        payload: &Core,
        ops: &[Planned],
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        self.batch.clear();
        self.batch.extend_from_slice(ops);
        // Group each socket's ops so its datagrams share one sendmmsg (stable: in order).
        self.batch.sort_by_key(|p| p.sock);
        if self.mems.len() < self.batch.len() {
            self.mems.resize_with(self.batch.len(), MsgMem::new);
        }
        let mut i = 0;
        while i < self.batch.len() {
            let p = self.batch[i];
            match p.shape {
                OpShape::Stream { .. } => {
                    self.send_one(payload, i, out);
                    i += 1;
                }
                OpShape::Dgram { .. } => {
                    let end = i + self.batch[i..]
                        .iter()
                        .take_while(|q| q.sock == p.sock)
                        .count();
                    if end == i + 1 {
                        self.send_one(payload, i, out);
                    } else {
                        self.send_dgrams(payload, i, end, out);
                    }
                    i = end;
                }
                OpShape::Packet { .. } => {
                    let end = i + self.batch[i..]
                        .iter()
                        .take_while(|q| q.sock == p.sock)
                        .count();
                    self.write_packets(payload, i, end, out);
                    i = end;
                }
            }
        }
        Ok(())
    }

    fn enter(&mut self, wait: Wait, out: &mut Vec<Event>) -> Result<(), Error> {
        let timeout_ms = match wait {
            // Nothing watched: nothing to collect, no syscall.
            Wait::No if self.armed == 0 => return Ok(()),
            Wait::No => 0,
            // Never block with nothing that could end the wait.
            Wait::Until(None) if self.armed == 0 => return Ok(()),
            Wait::Until(None) => -1,
            Wait::Until(Some(d)) => {
                let left = super::until(self.base, Some(d)).unwrap_or_default();
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        self.tally.transitions += 1;
        let max = i32::try_from(self.events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` has room for `max` entries; the epoll fd is valid.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                self.events.as_mut_ptr(),
                max,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = errno();
            if e != libc::EINTR {
                return Err(Error::io("epoll_wait", &io::Error::from_raw_os_error(e)));
            }
            return Ok(());
        }
        for k in 0..usize::try_from(n).unwrap_or(0) {
            let sock = u32::try_from(self.events[k].u64).unwrap_or(u32::MAX);
            if let Some(w) = self.watch.get_mut(sock as usize) {
                if *w == Watch::Armed {
                    *w = Watch::Idle;
                    self.armed -= 1;
                }
            }
            out.push(Event::Writable { sock });
        }
        Ok(())
    }

    fn watch_writable(&mut self, sock: u32, fd: RawFd, _out: &mut Vec<Event>) -> Result<(), Error> {
        let i = sock as usize;
        let op = match self.watch.get(i) {
            Some(Watch::Armed) => return Ok(()),
            Some(Watch::Idle) => libc::EPOLL_CTL_MOD,
            _ => libc::EPOLL_CTL_ADD,
        };
        // One-shot: it fires once, then stays silent until armed again. If the socket became
        // writable between the EAGAIN and this call, arming reports it at once (no lost wake).
        let ev = libc::epoll_event {
            events: (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32,
            u64: u64::from(sock),
        };
        self.ctl(op, fd, Some(ev))?;
        if self.watch.len() <= i {
            self.watch.resize(i + 1, Watch::Out);
        }
        self.watch[i] = Watch::Armed;
        self.armed += 1;
        Ok(())
    }

    #[inline]
    fn send_solo(&mut self, op: &Solo<'_>) -> Option<i32> {
        // Nothing is ever in flight between calls.
        Some(super::msg::send_solo(op))
    }

    fn cancel(&mut self, _tokens: &[Token], _out: &mut Vec<Event>) -> Result<(), Error> {
        // Nothing is ever in flight between calls: every op completes inside `issue`.
        Ok(())
    }

    fn read_errqueue(&mut self, fd: RawFd, max: usize, out: &mut Vec<(Option<SocketAddr>, i32)>) {
        self.tally.transitions += super::msg::drain_errqueue(fd, max, out);
    }

    fn set_recverr(&mut self, fd: RawFd, v6: bool, on: bool) -> bool {
        self.tally.transitions += 1 + u64::from(v6);
        super::msg::set_recverr(fd, v6, on)
    }

    fn shutdown_write(&mut self, fd: RawFd) -> Result<(), Error> {
        self.tally.transitions += 1;
        super::shutdown_write(fd)
    }

    fn leak(&mut self) {}

    fn now_ns(&self) -> u64 {
        nanos_since(self.base)
    }

    fn idle(&self) -> bool {
        // Every op completes inside `issue`.
        true
    }

    fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.ep.as_fd()
    }
}

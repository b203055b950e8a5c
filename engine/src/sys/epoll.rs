//! The epoll backend: `O_NONBLOCK` sockets, `sendmsg` with iovecs for streams, `sendmmsg` for
//! datagrams (GSO groups included), `epoll_wait` for writability after EAGAIN.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::msg::{mmsghdr, MsgMem};
use super::uring::set_nonblocking;
use super::{nanos_since, Wait};
use crate::core::{Completed, Core, OpShape, Planned};
use crate::error::Error;

/// `UIO_MAXIOV`: the most messages one `sendmmsg` takes (include/linux/uio.h).
const MMSG_MAX: usize = 1024;

#[derive(Debug)]
pub(crate) struct Epoll {
    ep: OwnedFd,
    mems: Vec<MsgMem>,
    batch: Vec<Planned>,
    mmsg: Vec<libc::mmsghdr>,
    events: Vec<libc::epoll_event>,
    base: Instant,
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
            mmsg: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            base,
        })
    }

    pub fn register(&mut self, idx: u32, fd: RawFd) -> Result<(), Error> {
        set_nonblocking(fd, true)?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLOUT | libc::EPOLLET) as u32,
            u64: u64::from(idx),
        };
        // SAFETY: both fds are valid; `ev` is a valid epoll_event for the call.
        let rc = unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(Error::io("epoll_ctl(ADD)", &io::Error::last_os_error()));
        }
        Ok(())
    }

    pub fn deregister(&mut self, fd: RawFd) {
        // SAFETY: removing an fd from our epoll set; a failure (already gone) is harmless.
        unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    pub fn submit(&mut self, core: &mut Core, wait: Wait) -> Result<(), Error> {
        loop {
            core.poll_timers(nanos_since(self.base));
            self.batch.clear();
            while let Some(p) = core.next_op() {
                self.batch.push(p);
            }
            if self.batch.is_empty() {
                break;
            }
            // Group each socket's ops so its datagrams share one sendmmsg.
            self.batch.sort_by_key(|p| p.sock);
            if self.mems.len() < self.batch.len() {
                self.mems.resize_with(self.batch.len(), MsgMem::new);
            }
            let mut i = 0;
            while i < self.batch.len() {
                let p = self.batch[i];
                match p.shape {
                    OpShape::Stream { .. } => {
                        self.send_stream(core, i);
                        i += 1;
                    }
                    OpShape::Dgram { .. } => {
                        let end = i + self.batch[i..]
                            .iter()
                            .take_while(|q| q.sock == p.sock)
                            .count();
                        self.send_dgrams(core, i, end);
                        i = end;
                    }
                }
            }
        }
        let Wait::Until(deadline) = wait else {
            return Ok(());
        };
        if core.pending_writes() == 0 {
            return Ok(());
        }
        // Everything left is waiting for writability or an ENOBUFS backoff.
        let now = Instant::now();
        let timer = core
            .poll_timers(nanos_since(self.base))
            .map(|t| self.base + std::time::Duration::from_nanos(t));
        let until = match (deadline, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout_ms = match until {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(now);
                i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            }
        };
        core.stats.kernel_transitions += 1;
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
        for ev in &self.events[..n as usize] {
            let idx = u32::try_from(ev.u64).unwrap_or(u32::MAX);
            core.set_writable(idx, true);
        }
        Ok(())
    }

    fn send_stream(&mut self, core: &mut Core, i: usize) {
        let p = self.batch[i];
        let m = &mut self.mems[i];
        m.prepare(core, &p);
        core.stats.kernel_transitions += 1;
        core.stats.batches += 1;
        core.stats.sqes += 1;
        let rc = match m.single_buffer() {
            // SAFETY: the buffer is a live slice of the core's queue (or the staging run) for
            // the duration of the call.
            Some((ptr, len)) => unsafe { libc::send(p.fd, ptr.cast(), len, libc::MSG_NOSIGNAL) },
            // SAFETY: the msghdr points at iovecs/buffers that live until this call returns.
            None => unsafe { libc::sendmsg(p.fd, &m.msg, libc::MSG_NOSIGNAL) },
        };
        let res = if rc < 0 {
            -errno()
        } else {
            i32::try_from(rc).unwrap_or(i32::MAX)
        };
        if let Completed::Again { sock } = core.complete(p.token, res, nanos_since(self.base)) {
            core.set_writable(sock, false);
        }
    }

    /// Sends the datagram ops `batch[start..end]` (one socket) with `sendmmsg`, continuing after a
    /// partial count from the first unsent datagram.
    fn send_dgrams(&mut self, core: &mut Core, start: usize, end: usize) {
        let fd = self.batch[start].fd;
        let mut k = start;
        while k < end {
            let chunk_end = end.min(k + MMSG_MAX);
            self.mmsg.clear();
            for j in k..chunk_end {
                let p = self.batch[j];
                self.mems[j].prepare(core, &p);
                self.mmsg.push(mmsghdr(&self.mems[j]));
            }
            let len = u32::try_from(self.mmsg.len()).expect("chunk of at most 1024");
            core.stats.kernel_transitions += 1;
            core.stats.batches += 1;
            core.stats.sqes += u64::from(len);
            // SAFETY: every mmsghdr points at memory in `self.mems` and buffers the core keeps
            // alive; both outlive the call.
            let rc = unsafe { libc::sendmmsg(fd, self.mmsg.as_mut_ptr(), len, libc::MSG_NOSIGNAL) };
            let now = nanos_since(self.base);
            if rc < 0 {
                let e = errno();
                match e {
                    libc::EAGAIN | libc::EINTR => {
                        let first = self.batch[k];
                        if let Completed::Again { sock } = core.complete(first.token, -e, now) {
                            core.set_writable(sock, false);
                        }
                        self.requeue(core, k + 1, end);
                        return;
                    }
                    _ => {
                        // The error belongs to the first datagram; the rest go again.
                        core.complete(self.batch[k].token, -e, now);
                        k += 1;
                        continue;
                    }
                }
            }
            let sent = rc as usize;
            if sent == 0 {
                self.requeue(core, k, end);
                return;
            }
            for (j, mm) in (k..k + sent).zip(&self.mmsg) {
                let n = i32::try_from(mm.msg_len).unwrap_or(i32::MAX);
                core.complete(self.batch[j].token, n, now);
            }
            k += sent;
            if k < chunk_end {
                // A partial count: the next call starts at the first unsent datagram and reports
                // its error, if it has one of its own. A pending error about an earlier datagram
                // (an ICMP message) was consumed by the stopped call; with IP_RECVERR the error
                // queue says what it was.
                core.want_errqueue(self.batch[k].sock);
                continue;
            }
        }
    }

    fn requeue(&self, core: &mut Core, from: usize, to: usize) {
        for p in &self.batch[from..to] {
            core.requeue(p.token);
        }
    }
}

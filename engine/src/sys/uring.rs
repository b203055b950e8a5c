//! The io_uring driver: one `IORING_OP_SEND`/`SENDMSG` per stream op or datagram group, all
//! sockets' ops in the SQ and one `io_uring_enter` that submits them (and, when asked, waits).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

use super::msg::MsgMem;
use super::{nanos_since, Driver, Tally, Wait};
use crate::core::{Core, Event, Planned, Token};
use crate::error::Error;

pub(crate) struct Uring {
    ring: IoUring,
    /// Per op slot ([`Token::slot`]): the msghdr memory the kernel reads.
    mem: Vec<Option<Box<MsgMem>>>,
    #[expect(
        clippy::vec_box,
        reason = "boxes move between pool and slots; the kernel holds their addresses"
    )]
    pool: Vec<Box<MsgMem>>,
    base: Instant,
    /// Send SQEs pushed since the last `io_uring_enter`.
    pushed: usize,
    /// Other SQEs (cancels) pushed since the last `io_uring_enter`.
    extra: usize,
    /// Send ops handed to the ring whose completion has not been reaped.
    in_kernel: usize,
    tally: Tally,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
            .field("in_kernel", &self.in_kernel)
            .finish()
    }
}

pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> Result<(), Error> {
    // SAFETY: fcntl on an fd the engine owns; F_GETFL/F_SETFL take and return plain ints.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else if on {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(Error::io(
            "fcntl(O_NONBLOCK)",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Uring {
    pub fn new(ring: IoUring, base: Instant) -> Uring {
        Uring {
            ring,
            mem: Vec::new(),
            pool: Vec::new(),
            base,
            pushed: 0,
            extra: 0,
            in_kernel: 0,
            tally: Tally::default(),
        }
    }

    /// Pushes one SQE, first submitting what the SQ holds if it is full.
    fn push(&mut self, sqe: &squeue::Entry, out: &mut Vec<Event>) -> Result<bool, Error> {
        if self.ring.submission().is_full() {
            self.enter(Wait::No, out)?;
        }
        // SAFETY: the caller keeps everything the entry points at alive until its completion
        // (see `issue` and `cancel`).
        Ok(unsafe { self.ring.submission().push(sqe) }.is_ok())
    }

    /// One op alone, with nothing in flight: a plain `send`/`sendmsg` with `MSG_DONTWAIT` costs
    /// one transition like `io_uring_enter` would, without the ring's own per-op work — at one
    /// message per flush the engine is then no slower than a plain `send()`. Returns false
    /// (nothing sent) when the socket would block: the op then goes through the ring, which
    /// waits for writability itself.
    fn direct(&mut self, payload: &Core, p: &Planned, out: &mut Vec<Event>) -> bool {
        let mut m = self.pool.pop().unwrap_or_else(|| Box::new(MsgMem::new()));
        m.prepare(payload, p);
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        self.tally.transitions += 1;
        let rc = match m.single_buffer() {
            // SAFETY: the buffer is a live slice of the core's queue for the duration of the call.
            Some((ptr, len)) => unsafe { libc::send(p.fd, ptr.cast(), len, flags) },
            // SAFETY: the msghdr points at iovecs, address and cmsg in `m` and buffers the core
            // keeps alive; all outlive the call.
            None => unsafe { libc::sendmsg(p.fd, &m.msg, flags) },
        };
        self.pool.push(m);
        let res = if rc < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            i32::try_from(rc).unwrap_or(i32::MAX)
        };
        if res == -libc::EAGAIN {
            return false;
        }
        self.tally.batches += 1;
        self.tally.sqes += 1;
        out.push(Event::Done {
            token: p.token,
            res,
        });
        true
    }

    fn reap(&mut self, out: &mut Vec<Event>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let token = Token(cqe.user_data());
            if token == Token::CANCEL {
                continue;
            }
            if let Some(m) = self.mem.get_mut(token.slot()).and_then(Option::take) {
                self.pool.push(m);
                self.in_kernel -= 1;
            }
            out.push(Event::Done {
                token,
                res: cqe.result(),
            });
        }
    }
}

impl Driver for Uring {
    fn register(&mut self, _sock: u32, fd: RawFd, _stream: bool) -> Result<(), Error> {
        // Blocking mode: io_uring then arms poll internally instead of completing with EAGAIN.
        set_nonblocking(fd, false)
    }

    fn deregister(&mut self, _sock: u32, _fd: RawFd) {}

    fn issue(
        &mut self,
        payload: &Core,
        ops: &[Planned],
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        if let [p] = ops {
            if self.in_kernel == 0 && self.pushed == 0 && self.direct(payload, p, out) {
                return Ok(());
            }
        }
        for (i, p) in ops.iter().enumerate() {
            let mut m = self.pool.pop().unwrap_or_else(|| Box::new(MsgMem::new()));
            m.prepare(payload, p);
            let flags = libc::MSG_NOSIGNAL;
            let sqe = match m
                .single_buffer()
                .and_then(|(ptr, len)| Some((ptr, u32::try_from(len).ok()?)))
            {
                Some((ptr, len)) => opcode::Send::new(types::Fd(p.fd), ptr, len)
                    .flags(flags)
                    .build(),
                None => opcode::SendMsg::new(types::Fd(p.fd), &m.msg)
                    .flags(flags as u32)
                    .build(),
            }
            .user_data(p.token.0);
            // The buffer (Send) or the msghdr with its iovecs, address and cmsg (SendMsg) live
            // in the boxed `m`, kept in `self.mem` until this op's completion (or leaked on a
            // failed shutdown), and in the core, which owns the payload until it applies this
            // op's completion.
            if self.push(&sqe, out)? {
                let slot = p.token.slot();
                if self.mem.len() <= slot {
                    self.mem.resize_with(slot + 1, || None);
                }
                self.mem[slot] = Some(m);
                self.pushed += 1;
                self.in_kernel += 1;
            } else {
                self.pool.push(m);
                out.extend(ops[i..].iter().map(|p| Event::NotIssued { token: p.token }));
                break;
            }
        }
        Ok(())
    }

    fn enter(&mut self, wait: Wait, out: &mut Vec<Event>) -> Result<(), Error> {
        let (want, deadline) = match wait {
            Wait::No => (0, None),
            // Never block with nothing that could end the wait.
            Wait::Until(d) => (usize::from(self.in_kernel > 0 || d.is_some()), d),
        };
        if self.pushed == 0 && self.extra == 0 && want == 0 {
            // Nothing to hand over and nothing to wait for: just look at the CQ (no syscall).
            self.reap(out);
            return Ok(());
        }
        self.tally.transitions += 1;
        if self.pushed > 0 {
            self.tally.batches += 1;
            self.tally.sqes += self.pushed as u64;
            self.pushed = 0;
        }
        self.extra = 0;
        let submitter = self.ring.submitter();
        let rc = match super::until(self.base, deadline) {
            Some(left) if want > 0 => {
                let ts = types::Timespec::from(left);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        if let Err(e) = rc {
            match e.raw_os_error() {
                // Interrupted, timed out, or CQ full (EBUSY): reaping below makes room; the
                // caller loops.
                Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(Error::io("io_uring_enter", &e)),
            }
        }
        self.reap(out);
        Ok(())
    }

    fn watch_writable(&mut self, sock: u32, _fd: RawFd, out: &mut Vec<Event>) -> Result<(), Error> {
        // Sockets are blocking here: io_uring arms poll itself, so an EAGAIN is spurious
        // (FAILURES.md item 5) and the op goes again at once.
        out.push(Event::Writable { sock });
        Ok(())
    }

    fn cancel(&mut self, tokens: &[Token], out: &mut Vec<Event>) -> Result<(), Error> {
        if tokens.is_empty() {
            return Ok(());
        }
        for t in tokens {
            // By user_data (IORING_OP_ASYNC_CANCEL, Linux 5.5): exactly this op, never another
            // registration of a `dup`ed descriptor.
            let sqe = opcode::AsyncCancel::new(t.0)
                .build()
                .user_data(Token::CANCEL.0);
            // A cancel SQE points at no user memory. If the SQ is still full after a submit,
            // submit again until it takes the entry: a cancel is never skipped.
            while !self.push(&sqe, out)? {
                self.enter(Wait::No, out)?;
            }
            self.extra += 1;
        }
        self.enter(Wait::No, out)
    }

    fn read_errqueue(&mut self, fd: RawFd, max: usize, out: &mut Vec<(Option<SocketAddr>, i32)>) {
        self.tally.transitions += super::msg::drain_errqueue(fd, max, out);
    }

    fn shutdown_write(&mut self, fd: RawFd) -> Result<(), Error> {
        self.tally.transitions += 1;
        super::shutdown_write(fd)
    }

    /// Forgets the memory of ops still in flight, so the kernel never reads freed memory.
    fn leak(&mut self) {
        for m in self.mem.drain(..).flatten() {
            std::mem::forget(m);
        }
    }

    fn now_ns(&self) -> u64 {
        nanos_since(self.base)
    }

    fn idle(&self) -> bool {
        self.pushed == 0 && self.extra == 0
    }

    fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's descriptor stays open as long as `self.ring`, which outlives the
        // borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }
}

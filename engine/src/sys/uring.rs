//! The io_uring backend: one `IORING_OP_SENDMSG` per stream op / datagram group, all sockets'
//! ops in one `io_uring_enter`.

use std::os::fd::RawFd;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use super::msg::MsgMem;
use super::{nanos_since, Wait};
use crate::core::{Completed, Core};
use crate::error::Error;

/// `user_data` of cancel requests; never a valid op token (generation `u32::MAX` with index
/// `u32::MAX` is never allocated).
const CANCEL_UD: u64 = u64::MAX;

pub(crate) struct Uring {
    ring: IoUring,
    /// Per op slot (the token's low 32 bits): the msghdr memory the kernel reads.
    mem: Vec<Option<Box<MsgMem>>>,
    #[expect(
        clippy::vec_box,
        reason = "boxes move between pool and slots; the kernel holds their addresses"
    )]
    pool: Vec<Box<MsgMem>>,
    base: Instant,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
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
        }
    }

    /// The most ops that may be in flight without overflowing the completion queue.
    pub fn cq_entries(&self) -> usize {
        self.ring.params().cq_entries() as usize
    }

    pub fn register(&mut self, fd: RawFd, _stream: bool) -> Result<(), Error> {
        // Blocking mode: io_uring then arms poll internally instead of completing with EAGAIN.
        set_nonblocking(fd, false)
    }

    /// Moves every op the core has ready into the SQ; submits (without waiting) when the SQ fills.
    fn push_ops(&mut self, core: &mut Core) -> Result<usize, Error> {
        let mut pushed = 0;
        loop {
            if self.ring.submission().is_full() {
                self.enter(core, pushed, 0, None)?;
                pushed = 0;
                if self.ring.submission().is_full() {
                    break;
                }
            }
            let Some(p) = core.next_op() else { break };
            let mut m = self.pool.pop().unwrap_or_else(|| Box::new(MsgMem::new()));
            m.prepare(core, &p);
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
            .user_data(p.token);
            // SAFETY: the buffer (Send) or the msghdr with its iovecs, address and cmsg (SendMsg)
            // live in the boxed `m` or the core, kept in
            // `self.mem` until this op's completion (or leaked on a failed shutdown); the payload
            // is owned by the core until `Core::complete` for this token.
            match unsafe { self.ring.submission().push(&sqe) } {
                Ok(()) => {
                    let slot = (p.token & 0xffff_ffff) as usize;
                    if self.mem.len() <= slot {
                        self.mem.resize_with(slot + 1, || None);
                    }
                    self.mem[slot] = Some(m);
                    pushed += 1;
                }
                Err(_) => {
                    core.requeue(p.token);
                    self.pool.push(m);
                    break;
                }
            }
        }
        Ok(pushed)
    }

    /// One `io_uring_enter`: submits what is in the SQ and waits for `want` completions (or the
    /// deadline), then reaps.
    fn enter(
        &mut self,
        core: &mut Core,
        pushed: usize,
        want: usize,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        core.stats.kernel_transitions += 1;
        if pushed > 0 {
            core.stats.batches += 1;
            core.stats.sqes += pushed as u64;
        }
        let submitter = self.ring.submitter();
        let rc = match deadline {
            Some(d) if want > 0 => {
                let left = d.saturating_duration_since(Instant::now());
                let ts = types::Timespec::from(left);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        match rc {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                // Interrupted, timed out, or CQ full (EBUSY): reaping below makes room; the caller
                // loops.
                Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => {}
                _ => return Err(Error::io("io_uring_enter", &e)),
            },
        }
        self.reap(core);
        Ok(())
    }

    fn reap(&mut self, core: &mut Core) {
        let now = nanos_since(self.base);
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let ud = cqe.user_data();
            if ud == CANCEL_UD {
                continue;
            }
            if core.complete(ud, cqe.result(), now) != Completed::Ignored {
                let slot = (ud & 0xffff_ffff) as usize;
                if let Some(m) = self.mem.get_mut(slot).and_then(Option::take) {
                    self.pool.push(m);
                }
            }
        }
    }

    pub fn submit(&mut self, core: &mut Core, wait: Wait) -> Result<(), Error> {
        let pushed = self.push_ops(core)?;
        let timer = core.poll_timers(nanos_since(self.base));
        let (want, deadline) = match wait {
            Wait::No => (0, None),
            Wait::Until(deadline) => {
                let timer_at = timer.map(|t| self.base + std::time::Duration::from_nanos(t));
                let d = match (deadline, timer_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let something = core.in_flight() > 0 || timer.is_some();
                (usize::from(something), d)
            }
        };
        if pushed == 0 && want == 0 {
            // Nothing to hand over and nothing to wait for: just look at the CQ (no syscall).
            self.reap(core);
            return Ok(());
        }
        self.enter(core, pushed, want, deadline)?;
        core.poll_timers(nanos_since(self.base));
        Ok(())
    }

    /// Asks the kernel to cancel ops on `fd` (all fds with `None`); they still complete, with
    /// `-ECANCELED` or their real result.
    pub fn cancel(&mut self, core: &mut Core, fd: Option<RawFd>) -> Result<(), Error> {
        if core.in_flight() == 0 {
            return Ok(());
        }
        let builder = match fd {
            Some(fd) => types::CancelBuilder::fd(types::Fd(fd)).all(),
            None => types::CancelBuilder::any(),
        };
        let sqe = opcode::AsyncCancel2::new(builder)
            .build()
            .user_data(CANCEL_UD);
        if self.ring.submission().is_full() {
            self.enter(core, 0, 0, None)?;
        }
        // SAFETY: a cancel SQE points at no user memory.
        if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
            self.enter(core, 0, 0, None)?;
        }
        Ok(())
    }

    /// Forgets the memory of ops still in flight, so the kernel never reads freed memory.
    pub fn leak(&mut self) {
        for m in self.mem.drain(..).flatten() {
            std::mem::forget(m);
        }
    }
}

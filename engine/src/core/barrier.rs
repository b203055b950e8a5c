//! Flush barriers: the sequence number a barrier waits for, whether it has resolved, and the
//! outcomes accumulated for the socket's next report.

use super::{Core, Queue, Sock};
use crate::error::{Error, Status};
use crate::report::FlushReport;
use crate::SocketId;

/// Terminal outcomes accumulated since the socket's last flush.
#[derive(Debug, Default, Clone)]
pub(crate) struct Acc {
    pub writes: u64,
    pub bytes: u64,
    pub failed: u64,
    pub failures: [u64; Status::ALL.len()],
    pub first_error: Option<Error>,
    pub peer_errors: u64,
}

impl Acc {
    /// The report so far, leaving the accumulator empty; the per-status array is copied and
    /// cleared only when something failed (the common flush has no failure).
    #[inline(always)]
    fn take(&mut self) -> FlushReport {
        let failures = (self.failed > 0).then(|| Box::new(std::mem::take(&mut self.failures)));
        FlushReport::new(
            std::mem::take(&mut self.writes),
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut self.failed),
            failures,
            // Not moved when there is none (the common report).
            if self.first_error.is_some() {
                self.first_error.take()
            } else {
                None
            },
            std::mem::take(&mut self.peer_errors),
        )
    }
}

impl Core {
    /// The sequence number a barrier created now waits for.
    pub fn barrier(&self, id: SocketId) -> Result<u64, Error> {
        Ok(match &self.sock(id)?.queue {
            Queue::Stream(q) => q.next_seq(),
            Queue::Dgram(q) | Queue::Packet(q) => q.next_seq(),
        })
    }

    /// Whether every write before `target` is terminal.
    pub fn barrier_done(&self, id: SocketId, target: u64) -> Result<bool, Error> {
        Ok(match &self.sock(id)?.queue {
            Queue::Stream(q) => q.done_upto() >= target,
            Queue::Dgram(q) | Queue::Packet(q) => q.done_upto() >= target,
        })
    }

    /// Sets or clears the socket's pending barrier (`Engine::try_flush`).
    pub fn set_barrier(&mut self, id: SocketId, target: Option<u64>) -> Result<(), Error> {
        self.sock_mut(id)?.barrier = target;
        Ok(())
    }

    /// Takes the outcomes accumulated since the socket's last flush, with the error its flush
    /// raises ([`Sock::raised`]).
    pub fn take_report(&mut self, id: SocketId) -> Result<(FlushReport, Option<Error>), Error> {
        let s = self.sock_mut(id)?;
        let r = s.take_report();
        let raised = s.raised(&r);
        Ok((r, raised))
    }

    /// Resolves the socket's pending barrier if every write before it is terminal: clears it
    /// and returns what its flush returns — the report, or the error it raises. `None` while
    /// the barrier waits (or none is set). One socket lookup.
    pub fn resolve(&mut self, id: SocketId) -> Result<Option<FlushReport>, Error> {
        let s = self.sock_mut(id)?;
        let Some(target) = s.barrier else {
            return Ok(None);
        };
        let done_upto = match &s.queue {
            Queue::Stream(q) => q.done_upto(),
            Queue::Dgram(q) | Queue::Packet(q) => q.done_upto(),
        };
        if done_upto < target {
            return Ok(None);
        }
        s.resolved().map(Some)
    }
}

impl Sock {
    /// The outcomes accumulated since the last flush, leaving none.
    #[inline(always)]
    fn take_report(&mut self) -> FlushReport {
        let mut r = self.acc.take();
        // A poisoned socket keeps reporting its error: later flushes fail the same way.
        if r.first_error.is_none() && self.poisoned.is_some() {
            r.first_error.clone_from(&self.poisoned);
        }
        r
    }

    /// The error a flush with report `r` raises: a stream's first error; for any socket, the
    /// fatal error that poisoned it (a packet descriptor whose device is gone). Datagram and
    /// packet failures are only counted.
    #[inline]
    fn raised(&self, r: &FlushReport) -> Option<Error> {
        match &self.queue {
            Queue::Stream(_) => r.first_error.clone(),
            _ => self.poisoned.clone(),
        }
    }

    /// The barrier resolved: clears it; the report since the last flush, or the error the
    /// flush raises.
    #[inline(always)]
    pub(super) fn resolved(&mut self) -> Result<FlushReport, Error> {
        self.barrier = None;
        if self.acc.first_error.is_none() && self.poisoned.is_none() {
            // The common flush: nothing to raise (the report is built where it is returned).
            return Ok(self.acc.take());
        }
        let r = self.take_report();
        match self.raised(&r) {
            Some(e) => Err(e),
            None => Ok(r),
        }
    }
}

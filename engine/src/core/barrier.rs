//! Flush barriers: the sequence number a barrier waits for, whether it has resolved, and the
//! outcomes accumulated for the socket's next report.

use super::{Core, Queue};
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
    fn take(&mut self) -> FlushReport {
        let failures = (self.failed > 0).then(|| Box::new(std::mem::take(&mut self.failures)));
        FlushReport::new(
            std::mem::take(&mut self.writes),
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut self.failed),
            failures,
            self.first_error.take(),
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

    /// Takes the outcomes accumulated since the socket's last flush.
    pub fn take_report(&mut self, id: SocketId) -> Result<FlushReport, Error> {
        let s = self.sock_mut(id)?;
        let mut r = s.acc.take();
        // A poisoned stream keeps reporting its error: later flushes fail the same way.
        if r.first_error.is_none() {
            r.first_error = s.poisoned.clone();
        }
        Ok(r)
    }
}

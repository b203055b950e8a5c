//! What a flush reports.

use crate::error::{Error, Status};

/// The outcome of the writes a flush covered: those that became terminal since the previous flush
/// of the same socket (or, for `flush_all`, of every socket).
#[derive(Debug, Clone, Default)]
pub struct FlushReport {
    /// Writes (stream buffers or datagrams) that completed whole.
    pub writes: u64,
    /// Payload bytes the kernel accepted (for a failed stream, including the prefix it took).
    pub bytes: u64,
    /// Writes that failed.
    pub failed: u64,
    /// Failed writes per status, indexed by [`Status::index`].
    pub failures: [u64; Status::ALL.len()],
    /// The first error among the covered writes.
    pub first_error: Option<Error>,
}

impl FlushReport {
    /// Failed writes with `status`.
    pub fn failed_with(&self, status: Status) -> u64 {
        self.failures[status.index()]
    }

    /// `(status, count)` for every status that occurred.
    pub fn failures_by_status(&self) -> impl Iterator<Item = (Status, u64)> + '_ {
        Status::ALL
            .iter()
            .map(|s| (*s, self.failures[s.index()]))
            .filter(|(_, n)| *n > 0)
    }

    /// Adds another report's counts (the first error stays the earliest one seen).
    pub fn merge(&mut self, other: FlushReport) {
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.failed += other.failed;
        for (a, b) in self.failures.iter_mut().zip(other.failures) {
            *a += b;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

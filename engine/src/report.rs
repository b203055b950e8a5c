//! What a flush reports.

use crate::error::{Error, Status};
use crate::SocketId;

/// The outcome of the writes a flush covered: those that became terminal since the previous flush
/// of the same socket.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FlushReport {
    /// Writes (stream buffers, datagrams or packets) that completed whole.
    pub writes: u64,
    /// Payload bytes the kernel accepted (for a failed stream, including the prefix it took;
    /// nothing of a packet cut short by a short write).
    pub bytes: u64,
    /// Writes that failed.
    pub failed: u64,
    /// Failed writes per status ([`FlushReport::failed_with`], [`FlushReport::failures_by_status`]);
    /// allocated only when something failed, so a report stays small to move.
    failures: Option<Box<[u64; Status::ALL.len()]>>,
    /// The first error among the covered writes.
    pub first_error: Option<Error>,
    /// Peer errors read since the socket's previous flush: ICMP reports (port, host or network
    /// unreachable) about datagrams that had already left — counted in `writes`, not in
    /// `failed`. One per ICMP message the kernel queued, which may be fewer than the datagrams
    /// lost (ICMP is rate-limited; a GSO group draws one). Which destinations they name:
    /// [`crate::Engine::unreachable_destinations`].
    pub peer_errors: u64,
}

impl FlushReport {
    /// A report of these counts (`failures` indexed by [`Status::index`]).
    pub(crate) fn new(
        writes: u64,
        bytes: u64,
        failed: u64,
        failures: Option<Box<[u64; Status::ALL.len()]>>,
        first_error: Option<Error>,
        peer_errors: u64,
    ) -> FlushReport {
        FlushReport {
            writes,
            bytes,
            failed,
            failures,
            first_error,
            peer_errors,
        }
    }

    /// Failed writes with `status`.
    pub fn failed_with(&self, status: Status) -> u64 {
        self.failures.as_ref().map_or(0, |f| f[status.index()])
    }

    /// `(status, count)` for every status that occurred.
    pub fn failures_by_status(&self) -> impl Iterator<Item = (Status, u64)> + '_ {
        Status::ALL
            .iter()
            .map(|s| (*s, self.failed_with(*s)))
            .filter(|(_, n)| *n > 0)
    }

    /// Adds another report's counts (the first error stays the earliest one seen).
    pub fn merge(&mut self, other: FlushReport) {
        self.add(&other);
    }

    fn add(&mut self, other: &FlushReport) {
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.failed += other.failed;
        self.peer_errors += other.peer_errors;
        if let Some(theirs) = &other.failures {
            let ours = self
                .failures
                .get_or_insert_with(|| Box::new([0; Status::ALL.len()]));
            for (a, b) in ours.iter_mut().zip(theirs.iter()) {
                *a += b;
            }
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// What `Engine::flush_all` reports: every socket's outcome, whatever happened to the others.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FlushAllReport {
    /// The sum over every socket.
    pub total: FlushReport,
    /// Each socket's own report, in socket order.
    pub sockets: Vec<(SocketId, FlushReport)>,
    /// The error of every stream that failed and every packet descriptor poisoned (its device
    /// gone), in socket order.
    pub errors: Vec<Error>,
}

impl FlushAllReport {
    /// Adds a socket's report; `raised` is the error its own flush would raise (a failed
    /// stream, a poisoned packet descriptor).
    pub(crate) fn push(&mut self, id: SocketId, raised: Option<Error>, r: FlushReport) {
        if let Some(e) = raised {
            self.errors.push(e);
        }
        self.total.add(&r);
        self.sockets.push((id, r));
    }

    /// One socket's report.
    pub fn socket(&self, id: SocketId) -> Option<&FlushReport> {
        self.sockets.iter().find(|(s, _)| *s == id).map(|(_, r)| r)
    }

    /// The errors of failed streams and poisoned packet descriptors (datagram and single
    /// packet failures are counted in the reports, not here).
    pub fn errors(&self) -> &[Error] {
        &self.errors
    }

    /// The total, or the first stream error (what `flush_all` returned before it reported
    /// every socket): for callers that treat any failed stream as fatal.
    ///
    /// # Errors
    /// The first failed stream's error.
    pub fn into_result(self) -> Result<FlushReport, Error> {
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.total),
        }
    }
}

//! Counters and latency histograms.

use hdrhistogram::Histogram;

use crate::error::Status;

/// Engine-wide counters and latency histograms (nanoseconds).
///
/// Counters only grow; take two snapshots (`clone`) and subtract to measure a section.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats {
    /// User→kernel transitions the engine made itself (`io_uring_enter`, `sendmsg`, `sendmmsg`,
    /// `epoll_wait`). Counted by the engine, one per system call; the benchmark cross-checks with
    /// the kernel's own `raw_syscalls:sys_enter` counter.
    pub kernel_transitions: u64,
    /// Send operations handed to the kernel (SQEs on io_uring, msghdrs on epoll).
    pub sqes: u64,
    /// Transitions that carried at least one send operation.
    pub batches: u64,
    /// Payload bytes the kernel accepted.
    pub bytes_sent: u64,
    /// Writes (stream buffers or datagrams) that completed whole.
    pub writes_sent: u64,
    /// Writes that ended failed.
    pub writes_failed: u64,
    /// Failed writes per status, indexed by [`Status::index`].
    pub failures: [u64; Status::ALL.len()],
    /// Sends that the kernel took only partly: stream sends (resumed at the exact byte) and
    /// packet writes (the packet failed with `Status::ShortWrite`).
    pub short_sends: u64,
    /// `EAGAIN`/`EINTR` results that were retried.
    pub retries: u64,
    /// GSO sends (one op carrying several datagrams).
    pub gso_sends: u64,
    /// GSO groups re-split into single datagrams after the kernel refused them.
    pub gso_fallbacks: u64,
    /// Errors the kernel reported about datagrams already sent (ICMP port/host/network
    /// unreachable, read from the error queue with `IP_RECVERR`); see
    /// `Engine::take_peer_errors`.
    pub peer_errors: u64,
    /// Datagrams sent again because the send that carried them picked up a pending error (an
    /// ICMP message) about an earlier datagram. On epoll a `sendmmsg` that stops at such an
    /// error after a partial count swallows it, so that resend is not counted here.
    pub stale_error_resends: u64,
    /// Times io_uring reported completions dropped (`EBADR`: its completion queue overflowed
    /// with no room left); every op then in flight was cancelled, and each whose completion was
    /// lost failed with `Status::CompletionLost`.
    pub completion_losses: u64,
    /// Ops a flush sent itself, outside the op machinery (`EngineBuilder::solo_flush`: its
    /// socket's one buffer, nothing in flight): one `send(2)`/`sendto(2)` each, counted in
    /// `kernel_transitions`, `batches` and `sqes` too. One that would have blocked is not
    /// counted here (nor as a batch): it went on through the general path.
    pub solo_sends: u64,
    /// Zero-copy stream sends (`SEND_ZC`/`SENDMSG_ZC`) whose first completion came.
    pub zc_sends: u64,
    /// Zero-copy notifications received (each releases one op's buffers).
    pub zc_notifications: u64,
    /// Notifications that reported the kernel copied the data anyway (`ZC_COPIED`, e.g. on
    /// loopback): the socket then goes back to copying sends.
    pub zc_copied: u64,
    /// Zero-copy sends refused (`EOPNOTSUPP`, `EINVAL`, `ENOMEM`) and sent again by copying;
    /// the socket then stays on copying sends.
    pub zc_fallbacks: u64,
    /// Latency of writes, queued → terminal, in nanoseconds: a 1-in-N systematic sample (see
    /// `EngineBuilder::write_latency_every`, default N = 16).
    pub write_latency_ns: Histogram<u64>,
    /// Latency of flush calls, in nanoseconds: a 1-in-N systematic sample (see
    /// `EngineBuilder::flush_latency_every`, default N = 16).
    pub flush_latency_ns: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant figures.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

impl Default for Stats {
    fn default() -> Self {
        Stats::with_histograms(histogram)
    }
}

impl Stats {
    /// Zeroed counters, and the latency histograms `histogram` makes.
    fn with_histograms(histogram: fn() -> Histogram<u64>) -> Stats {
        Stats {
            kernel_transitions: 0,
            sqes: 0,
            batches: 0,
            bytes_sent: 0,
            writes_sent: 0,
            writes_failed: 0,
            failures: [0; Status::ALL.len()],
            short_sends: 0,
            retries: 0,
            gso_sends: 0,
            gso_fallbacks: 0,
            peer_errors: 0,
            stale_error_resends: 0,
            completion_losses: 0,
            solo_sends: 0,
            zc_sends: 0,
            zc_notifications: 0,
            zc_copied: 0,
            zc_fallbacks: 0,
            write_latency_ns: histogram(),
            flush_latency_ns: histogram(),
        }
    }

    /// The statistics of an engine over the simulated kernel: the same counters, and latency
    /// histograms with the same bounds (1 ns .. 100 s, values above saturating alike) at 1
    /// significant figure instead of 3 — 4 KiB each instead of 230 KiB, which zeroing took
    /// ~40 % of a fuzz input's time (two engines per input in `fuzz_diff`). Nothing checks
    /// simulated latencies; recording them runs the same code.
    #[cfg(any(test, fuzzing, feature = "sim"))]
    pub(crate) fn sim() -> Stats {
        Stats::with_histograms(|| {
            Histogram::new_with_bounds(1, 100_000_000_000, 1)
                .expect("static histogram bounds are valid")
        })
    }
}

impl Stats {
    /// Failed writes with `status`.
    pub fn failed(&self, status: Status) -> u64 {
        self.failures[status.index()]
    }

    /// Resets every counter and histogram.
    pub fn reset(&mut self) {
        *self = Stats::default();
    }

    pub(crate) fn record_failure(&mut self, status: Status, n: u64) {
        self.writes_failed += n;
        self.failures[status.index()] += n;
    }
}

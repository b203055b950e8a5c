//! An arbitrary trace of engine calls and kernel behaviour against the io_uring-shaped simulated
//! kernel: sends, flushes, barriers, submissions, completions in any order with any result (short
//! counts, every errno, overlong), requeues, stale tokens, time, aborts and engine drop.
//!
//! `volley::sim` checks after every step: stream bytes are the next bytes of the accepted
//! concatenation and the peer holds a prefix of it (all of it when nothing failed); at most one op
//! in flight per stream; ops in flight and queued bytes within their limits, `send` refused exactly
//! at a limit; every accepted write ends exactly once (the core's report counts equal the model's);
//! a barrier is done iff every earlier write is terminal; datagrams whole, oldest first, GSO shape
//! rules, ENOBUFS backoff ≤ 16 ms; stale tokens change nothing; no panic.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::sim::{AllOk, Model, Outcome, Replay, Sim, SimConfig, Step};

#[derive(Debug, Arbitrary)]
struct Input {
    cfg: Cfg,
    /// What the kernel answers while a flush waits.
    kernel: Vec<Out>,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
struct Cfg {
    queued_bytes_per_socket: u16,
    queued_bytes: u16,
    queued_writes: u8,
    in_flight: u8,
    in_flight_per_socket: u8,
    iovecs: u8,
    bytes_per_op: u16,
    gso: bool,
    gso_segments: u8,
    gso_bytes: u16,
    nobufs_retries: u8,
    seed: u64,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Out {
    Full,
    Short(u16),
    Zero,
    Errno(u8),
    Overlong,
    Raw(i32),
}

impl From<Out> for Outcome {
    fn from(o: Out) -> Outcome {
        match o {
            Out::Full => Outcome::Full,
            Out::Short(n) => Outcome::Short(n),
            Out::Zero => Outcome::Zero,
            Out::Errno(i) => Outcome::Errno(i),
            Out::Overlong => Outcome::Overlong,
            Out::Raw(r) => Outcome::Raw(r),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    AddStream,
    AddDgram(bool),
    Send { sock: u8, len: u16 },
    SendTo { sock: u8, port: u8, len: u16 },
    Barrier(u8),
    Flush(u8),
    FlushAll,
    Submit(u8),
    Complete { which: u8, out: Out },
    Requeue(u8),
    Stale { pick: u64, requeue: bool },
    Advance(u16),
    Abort(u8),
    Shutdown,
}

/// Lengths: mostly small, sometimes at the GSO and iovec edges.
fn len(l: u16) -> u16 {
    match l % 8 {
        0 => 0,
        1 => 1,
        2 => 1200,
        3 => 1500,
        _ => l % 2048,
    }
}

impl From<Op> for Step {
    fn from(op: Op) -> Step {
        match op {
            Op::AddStream => Step::AddStream,
            Op::AddDgram(connected) => Step::AddDgram { connected },
            Op::Send { sock, len: l } => Step::Send { sock, len: len(l) },
            Op::SendTo { sock, port, len: l } => Step::SendTo {
                sock,
                port,
                len: len(l),
            },
            Op::Barrier(sock) => Step::Barrier { sock },
            Op::Flush(sock) => Step::Flush { sock },
            Op::FlushAll => Step::FlushAll,
            Op::Submit(max) => Step::Submit { max: max % 4 },
            Op::Complete { which, out } => Step::Complete {
                which,
                outcome: Some(out.into()),
            },
            Op::Requeue(which) => Step::Requeue { which },
            Op::Stale { pick, requeue } => Step::Stale { pick, requeue },
            Op::Advance(us) => Step::Advance { us },
            Op::Abort(sock) => Step::Abort { sock },
            Op::Shutdown => Step::Shutdown,
        }
    }
}

fuzz_target!(|input: Input| {
    let c = &input.cfg;
    let cfg = SimConfig {
        max_queued_bytes_per_socket: usize::from(c.queued_bytes_per_socket) * 4,
        max_queued_bytes: usize::from(c.queued_bytes) * 8,
        max_queued_writes_per_socket: usize::from(c.queued_writes),
        max_in_flight_ops: usize::from(c.in_flight % 16),
        max_in_flight_per_socket: usize::from(c.in_flight_per_socket % 8),
        max_iovecs_per_op: usize::from(c.iovecs % 8),
        max_bytes_per_op: usize::from(c.bytes_per_op),
        // Staging of small stream writes: off, or on with a bounded run, chosen by the seed.
        coalesce_below_bytes: usize::from(c.seed % 4 != 0) * (c.seed as usize % 600),
        coalesce_max_bytes: usize::from(c.gso_bytes) % 4096,
        gso: c.gso,
        gso_max_segments: usize::from(c.gso_segments % 70),
        gso_max_bytes: usize::from(c.gso_bytes),
        nobufs_retries: c.nobufs_retries % 6,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(&cfg, Model::Uring);
    sim.seed(c.seed);
    sim.add_stream();
    sim.add_dgram(false);
    let outcomes = input.kernel.iter().take(64).map(|&o| o.into()).collect();
    let mut kernel = Replay::new(outcomes, 32);
    for &op in input.ops.iter().take(512) {
        sim.step(op.into(), &mut kernel);
    }
    if !sim.is_dead() {
        let _ = sim.flush_all(&mut AllOk);
        sim.check_final();
        sim.shutdown(&mut AllOk);
    }
});

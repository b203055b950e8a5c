//! Several sockets interleaved — streams, UDP (connected or not) and packet descriptors — with
//! stalled peers, resets, closed ports and flushes, under small in-flight caps: the invariants
//! that tie sockets together.
//!
//! Beyond every check `fuzz_trace` makes (the same runner and model), this target leans on:
//! - independence: a flush of one socket (and `close`, `abort`, `shutdown_write`) never waits
//!   for another — the simulated kernel panics if the engine blocks on a wait while nothing of
//!   the flushed socket is held (a stalled neighbour, however many, must not delay it);
//! - the reservation: each socket with nothing in flight may always get one op, and ops beyond
//!   each socket's first stay under `max_in_flight_ops`;
//! - `flush_all` reports every socket once, a reset stream's error in `errors` and never in
//!   place of a UDP socket's outcome; `try_flush` never blocks.
//!
//! The kernel sends what it is given (no injected verdicts): what happens comes from the peers.

#![no_main]

mod common;

use arbitrary::Arbitrary;
use common::{Call, Limits, Peer, Sock, MAX_STEPS};
use libfuzzer_sys::fuzz_target;
use volley::sim::{AllOk, Mode, Runner, Setup, Step};

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    Call(Call),
    Peer(Peer),
    FlushTimeout(Option<u8>),
}

/// The bytes the trace's send calls ask for.
fn sent(ops: &[Op]) -> usize {
    let calls = ops.iter().take(MAX_STEPS).filter_map(|op| match op {
        Op::Call(c) => Some(c.bytes()),
        _ => None,
    });
    calls.sum()
}

impl Op {
    fn step(self) -> Step {
        match self {
            Op::Call(c) => c.step(),
            Op::Peer(p) => p.step(),
            Op::FlushTimeout(ms) => Step::FlushTimeout {
                ms: ms.map(|m| u16::from(m % 32)),
            },
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    limits: Limits,
    uring: bool,
    latency: u8,
    reorder: bool,
    seed: u64,
    /// Registered first: at least three sockets.
    first: [Sock; 3],
    more: Vec<Sock>,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mut cfg = input.limits.cfg(false, sent(&input.ops));
    // Small caps, so stalled peers hold most of them.
    cfg.max_in_flight_ops = cfg.max_in_flight_ops % 4 + 1;
    let sockets = input
        .first
        .iter()
        .chain(input.more.iter().take(5))
        .map(|s| s.kind())
        .collect();
    let mut runner = Runner::new(Setup {
        cfg,
        mode: if input.uring {
            Mode::Uring
        } else {
            Mode::Epoll
        },
        behaviour: Box::new(AllOk),
        seed: input.seed,
        latency: input.latency % 3,
        reorder: input.reorder,
        sockets,
        ..Setup::default()
    });
    runner.run(input.ops.iter().take(MAX_STEPS).map(|op| op.step()));
    runner.finish();
});

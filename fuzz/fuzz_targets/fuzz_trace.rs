//! An arbitrary trace of public engine calls and kernel behaviour, on either completion model:
//! sends, flushes (blocking, non-blocking, all), close, abort, shutdown, submit, flush timeouts;
//! and a kernel that answers ops with any verdict (short counts, every errno, holds, raw values
//! including `i32::MIN`), stalls, resets, closes ports, runs out of buffers, completes late and
//! out of order, races or ignores cancels, and delivers stale completions; the engine may be
//! dropped with ops in flight.
//!
//! The real orchestration and core run over `volley::sim::kernel::SimKernel`; after every step
//! `volley::sim::checks` compares the model of what was done with what the kernel observed: a
//! stream peer holds a prefix of the accepted bytes (all of them once flushed without error);
//! datagrams arrive whole, to their destination, at most once; every accepted write ends exactly
//! once and the reports add up; a barrier resolves only when every earlier write is terminal;
//! ops in flight and queued bytes stay within their limits (beyond each socket's reserved op);
//! ENOBUFS backs off; refused sends hand the same buffer back; stale completions change nothing.

#![no_main]

mod common;

use arbitrary::Arbitrary;
use common::{Call, Fault, Limits, Peer, Sock, MAX_STEPS};
use libfuzzer_sys::fuzz_target;
use volley::sim::{Cancel, Mode, Replay, Runner, Setup, Step, Verdict};

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    Call(Call),
    Peer(Peer),
    Fault(Fault),
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
            Op::Fault(f) => f.step(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    limits: Limits,
    uring: bool,
    latency: u8,
    reorder: bool,
    cancel: u8,
    seed: u64,
    sockets: Vec<Sock>,
    /// What the kernel answers when nothing else decides (cycled; at most 32 faults).
    kernel: Vec<(u8, u16)>,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let verdicts: Vec<Verdict> = input
        .kernel
        .iter()
        .take(64)
        .map(|&(b, n)| Verdict::from_byte(b, n))
        .collect();
    let cancel = common::cancel(input.cancel);
    let mut runner = Runner::new(Setup {
        cfg: input.limits.cfg(true, sent(&input.ops)),
        mode: if input.uring {
            Mode::Uring
        } else {
            Mode::Epoll
        },
        behaviour: Box::new(Replay::new(verdicts, 32)),
        seed: input.seed,
        latency: input.latency % 4,
        reorder: input.reorder,
        cancel,
        sockets: input.sockets.iter().take(4).map(|s| s.kind()).collect(),
    });
    // A drop whose cancels never complete leaks the memory of the ops in flight on purpose
    // (the kernel may still read it), which LeakSanitizer would report; a unit test covers it.
    let steps = input.ops.iter().take(MAX_STEPS).map(|op| op.step());
    runner.run(steps.filter(|s| cancel != Cancel::Ignored || *s != Step::Drop));
    runner.finish();
});

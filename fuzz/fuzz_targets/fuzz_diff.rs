//! The same trace through the io_uring and the epoll completion model of the simulated kernel,
//! with one deterministic kernel (`volley::sim::Script`: verdicts depend on stream offsets and
//! datagram sequence numbers only), must give the same observable outcome: every call's result
//! (each flush report's exact counts, a stream's raised error, every send accepted or refused
//! alike), the bytes each stream peer received, the multiset of datagrams each socket
//! delivered, and every socket's summed reports. Arrival order of datagrams across
//! destinations, op counts, GSO grouping, retries and which of a UDP socket's failures came
//! first may differ. Every public call is in play (abort and peer errors included); queue
//! limits are out of reach (backpressure depends on timing); peers may stall, reset and close
//! ports, which both models see at the same point of the trace; no verdict is injected per op
//! (an op is cut differently on each model), and an ENOBUFS is not retried (see below). Both
//! runs also make every check `fuzz_trace` makes.

#![no_main]

mod common;

use arbitrary::Arbitrary;
use common::{Call, Limits, Peer, MAX_STEPS};
use libfuzzer_sys::fuzz_target;
use volley::sim::{Fate, Mode, Runner, Script, Setup, Step};
use volley::Status;

#[derive(Debug, Arbitrary)]
struct StreamSpec {
    cuts: Vec<u16>,
    again: Vec<u16>,
    fail: Option<(u16, bool)>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct FateSpec {
    errno: u8,
    nobufs: u8,
    again: bool,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    Call(Call),
    Peer(Peer),
    Stale(u64),
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
            Op::Stale(pick) => Step::Stale { pick },
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    limits: Limits,
    streams: Vec<StreamSpec>,
    fates: Vec<FateSpec>,
    ops: Vec<Op>,
}

const FATE_ERRNOS: [Option<i32>; 8] = [
    None,
    Some(libc::EMSGSIZE),
    Some(libc::EIO),
    Some(libc::EINVAL),
    Some(libc::ECONNREFUSED),
    Some(libc::EHOSTUNREACH),
    Some(libc::EACCES),
    Some(libc::EPROTO),
];

/// Registrations the script covers (the runner allows 12 sockets).
const REGS: usize = 12;

fn script(input: &Input) -> Script {
    let mut s = Script::new();
    for (reg, spec) in input.streams.iter().take(REGS).enumerate() {
        for &c in spec.cuts.iter().take(16) {
            s.cut(reg, usize::from(c));
        }
        for &a in spec.again.iter().take(16) {
            s.again_at(reg, usize::from(a));
        }
        if let Some((at, pipe)) = spec.fail {
            let errno = if pipe { libc::EPIPE } else { libc::ECONNRESET };
            s.fail_at(reg, usize::from(at), errno);
        }
    }
    // Fate `i` is datagram `i / REGS` of registration `i % REGS`.
    for (i, f) in input.fates.iter().take(1024).enumerate() {
        let fate = Fate {
            errno: FATE_ERRNOS[usize::from(f.errno) % FATE_ERRNOS.len()],
            nobufs: f.nobufs % 7,
            again: f.again,
        };
        s.fate(i % REGS, i / REGS, fate);
    }
    s
}

fuzz_target!(|input: Input| {
    let mut cfg = input.limits.cfg(false, sent(&input.ops));
    // Peer-error sampling switches IP_RECVERR by how many reports each read found, which the two
    // models see at different moments (as the real backends do): fuzz_trace and fuzz_sockets
    // check it against the invariants; here both models read every report.
    cfg.peer_error_sampling = false;
    // An ENOBUFS is final here (no retry after a backoff): how long a socket waits out its
    // backoffs depends on how its datagrams were cut into ops — epoll's `sendmmsg` stops at the
    // first refused datagram and each refused one waits its own backoff in turn, io_uring's ops
    // are refused together and wait theirs at once — so whether a non-blocking `try_flush`
    // finds the barrier resolved differs between the models, as it does between the real
    // backends (a finding: "call 11 differs: Report(…) vs Pending" after a clock tick). The
    // datagram's fate is the same either way; fuzz_trace and fuzz_sockets check the retries.
    cfg.nobufs_retries = 0;
    let script = script(&input);
    let run = |mode: Mode| {
        let mut runner = Runner::new(Setup {
            cfg: cfg.clone(),
            mode,
            behaviour: Box::new(script.clone()),
            ..Setup::default()
        });
        runner.run(input.ops.iter().take(MAX_STEPS).map(|op| op.step()));
        runner.finish()
    };
    // A datagram whose own error is of the ICMP kind (ECONNREFUSED, EHOSTUNREACH, EPROTO) on a
    // connected socket without IP_RECVERR is sent again up to 32 times and then fails with the
    // errno of its last try; whether that try picked up a pending ICMP error from a closed port
    // instead (another ECONNREFUSED) depends on how the ops were cut, on real backends too.
    // Those statuses count as one here (a finding: "failures … ConnectionRefused 1, Other 6 vs
    // ConnectionRefused 0, Other 7").
    let icmp = |mut o: volley::sim::Observed| {
        o.merge_failures(
            Status::ConnectionRefused,
            &[Status::HostUnreachable, Status::NetworkUnreachable, Status::Other],
        );
        o
    };
    icmp(run(Mode::Uring)).assert_same(&icmp(run(Mode::Epoll)), "io_uring vs epoll");
});

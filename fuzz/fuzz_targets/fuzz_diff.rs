//! The same trace through the io_uring-shaped and the epoll-shaped simulated kernel, with one
//! deterministic kernel ([`volley::sim::Script`]: results depend on stream offsets and datagram
//! sequence numbers only), must give the same observable outcome: the bytes each stream peer
//! received, the multiset of datagrams each socket delivered, the fate of every send call (a
//! write refused with a poisoned stream's status equals one accepted and then failed with it),
//! every flush result and the final `flush_all`. Arrival order of datagrams, op counts, GSO
//! grouping and retries may differ. Limits are out of reach (backpressure depends on timing) and
//! sockets are dropped only by `close` (flush first). Both runs also check every invariant
//! `fuzz_trace` checks.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::sim::{Fate, Model, Script, Sim, SimConfig, Step};

#[derive(Debug, Arbitrary)]
struct Input {
    cfg: Cfg,
    streams: Vec<StreamSpec>,
    fates: Vec<FateSpec>,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
struct Cfg {
    in_flight: u8,
    iovecs: u8,
    bytes_per_op: u16,
    gso: bool,
    gso_segments: u8,
    nobufs_retries: u8,
    seed: u64,
}

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
    AddStream,
    AddDgram(bool),
    Send {
        sock: u8,
        len: u16,
    },
    SendTo {
        sock: u8,
        port: u8,
        len: u16,
    },
    Barrier(u8),
    Flush(u8),
    FlushAll,
    Submit(u8),
    /// io_uring only: completes an op in flight with the script's result.
    Complete(u8),
    /// io_uring only.
    Requeue(u8),
    /// io_uring only.
    Stale {
        pick: u64,
        requeue: bool,
    },
    Advance(u16),
    Close(u8),
}

fn len(l: u16) -> u16 {
    match l % 8 {
        0 => 0,
        1 => 1,
        2 => 1200,
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
            Op::Complete(which) => Step::Complete {
                which,
                outcome: None,
            },
            Op::Requeue(which) => Step::Requeue { which },
            Op::Stale { pick, requeue } => Step::Stale { pick, requeue },
            Op::Advance(us) => Step::Advance { us },
            Op::Close(sock) => Step::Close { sock },
        }
    }
}

const FATE_ERRNOS: [Option<i32>; 6] = [
    None,
    Some(libc::EMSGSIZE),
    Some(libc::EIO),
    Some(libc::EINVAL),
    Some(libc::ECONNREFUSED),
    Some(libc::EHOSTUNREACH),
];

fn script(input: &Input) -> Script {
    let mut s = Script::new();
    for (sock, spec) in input.streams.iter().take(16).enumerate() {
        for &c in spec.cuts.iter().take(16) {
            s.cut(sock, usize::from(c));
        }
        for &a in spec.again.iter().take(16) {
            s.again_at(sock, usize::from(a));
        }
        if let Some((at, pipe)) = spec.fail {
            let errno = if pipe { libc::EPIPE } else { libc::ECONNRESET };
            s.fail_at(sock, usize::from(at), errno);
        }
    }
    // Fates apply to datagram `i / 16` of socket `i % 16`.
    for (i, f) in input.fates.iter().take(512).enumerate() {
        let fate = Fate {
            errno: FATE_ERRNOS[usize::from(f.errno) % FATE_ERRNOS.len()],
            nobufs: f.nobufs % 7,
            again: f.again,
        };
        s.fate(i % 16, i / 16, fate);
    }
    s
}

fuzz_target!(|input: Input| {
    let c = &input.cfg;
    let cfg = SimConfig {
        max_in_flight_ops: usize::from(c.in_flight % 16),
        max_iovecs_per_op: usize::from(c.iovecs % 8),
        max_bytes_per_op: usize::from(c.bytes_per_op),
        coalesce_below_bytes: c.seed as usize % 600,
        gso: c.gso,
        gso_max_segments: usize::from(c.gso_segments % 70),
        nobufs_retries: c.nobufs_retries % 6,
        ..SimConfig::default()
    };
    let script = script(&input);
    let run = |model: Model| {
        let mut sim = Sim::new(&cfg, model);
        sim.seed(c.seed);
        sim.add_stream();
        sim.add_dgram(false);
        let mut kernel = script.clone();
        let flushes: Vec<_> = input
            .ops
            .iter()
            .take(512)
            .filter_map(|&op| sim.step(op.into(), &mut kernel))
            .collect();
        let last = sim.flush_all(&mut kernel);
        sim.check_final();
        (sim.observed(), flushes, last)
    };
    let uring = run(Model::Uring);
    let epoll = run(Model::Epoll);
    assert_eq!(uring.0.writes, epoll.0.writes, "fate of each send");
    assert_eq!(uring.0.streams, epoll.0.streams, "stream bytes received");
    assert_eq!(uring.0.dgrams, epoll.0.dgrams, "datagrams delivered");
    assert_eq!(uring.1, epoll.1, "flush results");
    assert_eq!(uring.2, epoll.2, "final flush_all");
});

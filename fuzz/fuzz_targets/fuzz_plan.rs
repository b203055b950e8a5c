//! The batch planner: `plan::cut_stream` and `plan::cut_dgram`, then a socket's re-split of
//! refused GSO groups through the public engine API over the simulated kernel.
//!
//! Stream cuts: every op covers ≥ 1 entry, ≤ `max_iovecs` (≤ IOV_MAX) entries and ≤ `max_bytes`
//! (≤ MAX_RW_COUNT) bytes; every entry but the last is covered whole; a cut stops early only at a
//! limit; cutting a queue op after op (resuming mid-entry) sends every byte exactly once.
//! Datagram cuts: ≥ 1 datagram; without GSO exactly one; a GSO group has ≥ 2 segments, ≤ 64 and
//! ≤ `max_segments`, ≤ 65 507 and ≤ `max_bytes` payload bytes, the first datagram's size as
//! segment size, equal sizes except a shorter (non-empty) last; grouping is greedy; the groups
//! cover the datagrams in order. Re-split: a socket sending to interleaved destinations whose
//! every GSO group is refused (EIO, EINVAL or EMSGSIZE) still delivers every datagram exactly
//! once, in a bounded number of ops (on epoll each destination's in the order sent).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::plan::{
    cut_dgram, cut_stream, GSO_MAX_SEGMENTS, IOV_MAX, MAX_RW_COUNT, UDP_MAX_PAYLOAD,
};
use volley::sim::{dest, payload, FnBehaviour, Kind, Mode, OpView, SimConfig, SimKernel, Verdict};
use volley::Engine;

#[derive(Debug, Arbitrary)]
struct Input {
    lens: Vec<u16>,
    /// Scales lengths up (large datagrams, entries bigger than an op).
    scale: u8,
    max_iovecs: u16,
    max_bytes: u32,
    gso: bool,
    max_segments: u8,
    max_gso_bytes: u32,
    refuse: u8,
    /// Destinations of the re-split datagrams (`9000 + port % 4`), interleaved.
    ports: Vec<u8>,
}

fn check_stream(lens: &[usize], max_iovecs: usize, max_bytes: usize) {
    let iov = max_iovecs.clamp(1, IOV_MAX);
    let cap = max_bytes.clamp(1, MAX_RW_COUNT);
    // Remaining lengths of the queue; the first may be partly sent.
    let mut rem: Vec<usize> = lens.to_vec();
    let mut start = 0;
    let total: usize = lens.iter().sum();
    let mut sent = 0;
    let mut ops = 0;
    while start < rem.len() {
        let cut = cut_stream(rem[start..].iter().copied(), max_iovecs, max_bytes)
            .expect("a non-empty queue yields an op");
        let avail = rem.len() - start;
        assert!(cut.entries >= 1 && cut.entries <= iov.min(avail));
        assert!(cut.bytes <= cap);
        let whole: usize = rem[start..start + cut.entries - 1].iter().sum();
        let last = rem[start + cut.entries - 1];
        assert!(cut.bytes >= whole && cut.bytes <= whole + last, "{cut:?}");
        if cut.bytes < whole + last || cut.entries < avail.min(iov) {
            assert_eq!(cut.bytes, cap, "stopped early without a limit: {cut:?}");
        }
        // The kernel takes everything; consume like the stream queue.
        let mut n = cut.bytes;
        for _ in 0..cut.entries {
            if n < rem[start] {
                rem[start] -= n;
                break;
            }
            n -= rem[start];
            start += 1;
        }
        sent += cut.bytes;
        ops += 1;
        assert!(ops <= lens.len() + total / cap + 1, "no progress");
    }
    assert_eq!(sent, total);
    assert_eq!(cut_stream(std::iter::empty(), max_iovecs, max_bytes), None);
}

fn check_dgram(lens: &[usize], gso: bool, max_segments: usize, max_bytes: usize) {
    let segs = max_segments.min(GSO_MAX_SEGMENTS);
    let cap = max_bytes.min(UDP_MAX_PAYLOAD);
    let mut i = 0;
    while i < lens.len() {
        let cut = cut_dgram(lens[i..].iter().copied(), gso, max_segments, max_bytes)
            .expect("a non-empty queue yields an op");
        let group = &lens[i..i + cut.count];
        assert!(cut.count >= 1);
        assert_eq!(cut.bytes, group.iter().sum::<usize>());
        match cut.segment_size {
            None => {
                assert_eq!(cut.count, 1, "several datagrams without GSO");
                // Greedy: a second datagram that could have joined means a missed group.
                if let (true, Some(&next)) = (gso, lens.get(i + 1)) {
                    let first = lens[i];
                    let could = first > 0
                        && first <= cap
                        && u16::try_from(first).is_ok()
                        && segs >= 2
                        && next > 0
                        && next <= first
                        && first + next <= cap;
                    assert!(!could, "missed a GSO group at {i}");
                }
            }
            Some(seg) => {
                let seg = usize::from(seg);
                assert!(gso, "GSO while off");
                assert!(cut.count >= 2, "GSO for one segment");
                assert!(cut.count <= segs);
                assert!(cut.bytes <= cap);
                assert_eq!(group[0], seg);
                let (last, rest) = group.split_last().expect("two or more");
                assert!(rest.iter().all(|&l| l == seg), "unequal segments");
                assert!(*last > 0 && *last <= seg);
                if *last == seg {
                    if let Some(&next) = lens.get(i + cut.count) {
                        let could =
                            cut.count < segs && next > 0 && next <= seg && cut.bytes + next <= cap;
                        assert!(!could, "stopped a group early at {i}");
                    }
                }
            }
        }
        i += cut.count;
    }
    assert_eq!(
        cut_dgram(std::iter::empty(), gso, max_segments, max_bytes),
        None
    );
}

fn check_resplit(lens: &[usize], ports: &[u8], max_segments: usize, errno: i32, uring: bool) {
    let cfg = SimConfig {
        gso: true,
        gso_max_segments: max_segments,
        ..SimConfig::default()
    };
    let refuse = FnBehaviour(move |op: &OpView<'_>| {
        if op.segment_size.is_some() {
            Verdict::Errno(errno)
        } else {
            Verdict::Full
        }
    });
    let mode = if uring { Mode::Uring } else { Mode::Epoll };
    let kernel = SimKernel::with_behaviour(mode, Box::new(refuse));
    let k = kernel.handle();
    let mut engine = Engine::with_sim(cfg, kernel);
    let d = k.register(
        &mut engine,
        Kind::Udp {
            peer: None,
            recverr: false,
        },
    );
    let mut sent = Vec::new();
    for (i, &l) in lens.iter().enumerate() {
        let to = dest(9000 + u16::from(ports.get(i).copied().unwrap_or(0) % 4));
        let b = payload(i as u64, l);
        engine
            .send_to(d, b.clone(), to)
            .expect("within the default limits");
        sent.push((i as u64, Some(to), b));
    }
    let r = engine.flush(d).expect("a datagram flush raises nothing");
    assert_eq!(
        (r.writes, r.failed),
        (lens.len() as u64, 0),
        "every datagram sent once"
    );
    // Ops the kernel answered (epoll also logs the entries a `sendmmsg` stopped before).
    let (mut got, answered) = k.with_peer(d, |peer| {
        let got: Vec<_> = peer
            .datagrams
            .iter()
            .map(|x| (x.seq, x.dest, x.payload.clone()))
            .collect();
        (got, peer.ops.iter().filter(|o| o.res.is_some()).count())
    });
    // epoll: each destination's datagrams arrive in the order they were sent (what a refused
    // `sendmmsg` entry leaves is re-planned in order). Not on io_uring: ops behind a refused
    // group are already in flight, so its datagrams, sent again, arrive after later ones.
    for to in (0..4u16).filter(|_| !uring) {
        let to = Some(dest(9000 + to));
        let seqs: Vec<u64> = got.iter().filter(|x| x.1 == to).map(|x| x.0).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "order to {to:?}: {seqs:?}"
        );
    }
    got.sort();
    assert_eq!(got, sent, "the identical datagrams, each once");
    // Ops answered: each refused group once (on epoll twice: behind another entry its error
    // is dropped), then each datagram alone.
    assert!(
        answered <= 3 * lens.len() + 1,
        "re-split loops: {answered} ops"
    );
}

fuzz_target!(|input: Input| {
    let scale = usize::from(input.scale % 4);
    let lens: Vec<usize> = input
        .lens
        .iter()
        .take(2048)
        .map(|&l| usize::from(l) << (scale * 2))
        .collect();
    // Keep the number of ops a queue takes bounded (a 1-byte cap over megabytes is slow, not
    // interesting).
    let total: usize = lens.iter().sum();
    let max_bytes = usize::try_from(input.max_bytes)
        .unwrap_or(usize::MAX)
        .max(total / 4096);
    check_stream(&lens, usize::from(input.max_iovecs), max_bytes);
    let max_gso_bytes = usize::try_from(input.max_gso_bytes % 70_000).unwrap_or(0);
    check_dgram(
        &lens,
        input.gso,
        usize::from(input.max_segments),
        max_gso_bytes,
    );
    let small: Vec<usize> = lens.iter().take(256).map(|&l| l % 2000).collect();
    let errno = [libc::EIO, libc::EINVAL, libc::EMSGSIZE][usize::from(input.refuse % 3)];
    let uring = input.refuse & 4 == 0;
    check_resplit(
        &small,
        &input.ports,
        usize::from(input.max_segments),
        errno,
        uring,
    );
});

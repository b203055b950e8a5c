//! The batch planner: `plan::cut_stream` and `plan::cut_dgram`, then the core's re-split of a
//! refused GSO group through the simulated kernel.
//!
//! Stream cuts: every op covers ≥ 1 entry, ≤ `max_iovecs` (≤ IOV_MAX) entries and ≤ `max_bytes`
//! (≤ MAX_RW_COUNT) bytes; every entry but the last is covered whole; a cut stops early only at a
//! limit; cutting a queue op after op (resuming mid-entry) sends every byte exactly once.
//! Datagram cuts: ≥ 1 datagram; without GSO exactly one; a GSO group has ≥ 2 segments, ≤ 64 and
//! ≤ `max_segments`, ≤ 65 507 and ≤ `max_bytes` payload bytes, the first datagram's size as
//! segment size, equal sizes except a shorter (non-empty) last; grouping is greedy; the groups
//! cover the datagrams in order. Re-split: a socket whose every GSO group is refused (EIO, EINVAL
//! or EMSGSIZE) still delivers the identical datagram sequence, each datagram once.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use volley::plan::{
    cut_dgram, cut_stream, cut_stream_staged, StageLimits, StagedItem, GSO_MAX_SEGMENTS, IOV_MAX,
    MAX_RW_COUNT, UDP_MAX_PAYLOAD,
};
use volley::sim::{Model, Sim, SimConfig};

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
}

/// Staged cuts: items cover entries 0.. in order, all whole but the last; the bytes add up; runs
/// of consecutive staged items count as one iovec and the iovec count stays within the limit;
/// only entries ≤ `stage_below` are staged and staged bytes stay ≤ `stage_max`; without staging
/// the cut equals `cut_stream`'s; a cut stops early only at a limit.
fn check_stream_staged(lens: &[usize], limits: &StageLimits) {
    let iov = limits.max_iovecs.clamp(1, IOV_MAX);
    let cap = limits.max_bytes.clamp(1, MAX_RW_COUNT);
    let mut items: Vec<StagedItem> = Vec::new();
    let cut = cut_stream_staged(lens.iter().copied(), limits, |i| items.push(i));
    let Some(cut) = cut else {
        assert!(lens.is_empty() && items.is_empty());
        return;
    };
    assert_eq!(cut.entries, items.len());
    assert!(cut.entries >= 1 && cut.bytes <= cap);
    assert_eq!(cut.bytes, items.iter().map(|i| i.len).sum::<usize>());
    let (mut iovecs, mut staged, mut prev) = (0, 0, false);
    for (k, it) in items.iter().enumerate() {
        assert_eq!(it.idx, k, "items out of order");
        assert!(it.len <= lens[k]);
        if k + 1 < items.len() {
            assert_eq!(it.len, lens[k], "an entry before the last is cut short");
        }
        if it.staged {
            assert!(it.len <= limits.stage_below);
            staged += it.len;
        }
        iovecs += usize::from(!(it.staged && prev));
        prev = it.staged;
    }
    assert!(iovecs <= iov, "{iovecs} iovecs > {iov}");
    assert!(staged <= limits.stage_max);
    let last = items[items.len() - 1];
    if items.len() < lens.len() || last.len < lens[last.idx] {
        let at_iov = iovecs == iov;
        assert!(cut.bytes == cap || at_iov, "stopped early without a limit: {cut:?}");
    }
    if limits.stage_below == 0 && lens.iter().all(|&l| l > 0) {
        assert_eq!(Some(cut), cut_stream(lens.iter().copied(), limits.max_iovecs, limits.max_bytes));
    }
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

fn check_resplit(lens: &[usize], max_segments: usize, errno: i32) {
    let cfg = SimConfig {
        gso: true,
        gso_max_segments: max_segments,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(&cfg, Model::Uring);
    let d = sim.add_dgram(false);
    for &l in lens {
        sim.send_to(d, 9000, l).expect("within the default limits");
    }
    // One op at a time, oldest first: every group is refused, singles are sent.
    let mut steps = 0;
    while sim.submit_up_to(1) == 1 {
        let op = sim.op(0);
        let res = if op.segment_size.is_some() {
            -errno
        } else {
            op.full()
        };
        sim.complete(0, res);
        steps += 1;
        assert!(steps <= 3 * lens.len() + 1, "re-split loops");
    }
    assert_eq!(sim.pending_writes(), 0);
    assert_eq!(sim.dgrams_received(d), &sim.dgrams_accepted(d)[..]);
    sim.check_final();
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
    check_stream_staged(
        &lens,
        &StageLimits {
            max_iovecs: usize::from(input.max_iovecs),
            max_bytes,
            stage_below: usize::from(input.refuse) * 8,
            stage_max: usize::try_from(input.max_gso_bytes % 100_000).unwrap_or(0),
        },
    );
    let max_gso_bytes = usize::try_from(input.max_gso_bytes % 70_000).unwrap_or(0);
    check_dgram(
        &lens,
        input.gso,
        usize::from(input.max_segments),
        max_gso_bytes,
    );
    let small: Vec<usize> = lens.iter().take(256).map(|&l| l % 2000).collect();
    let errno = [libc::EIO, libc::EINVAL, libc::EMSGSIZE][usize::from(input.refuse % 3)];
    check_resplit(&small, usize::from(input.max_segments), errno);
});

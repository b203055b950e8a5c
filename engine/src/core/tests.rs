//! The engine's public API over the simulated kernel (`crate::sim`): the real orchestration
//! and core, with a kernel that stalls, resets, refuses and reorders on cue. These tests pick
//! the situations and assert exact outcomes; the random-trace tests run the model checks of
//! `sim::checks` after every step. Tests that hold on both backends run once per completion
//! model (`both!`), so a failure on one never hides the other.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Limit, Status};
use crate::sim::checks::fingerprint;
use crate::sim::{
    dest, payload, Cancel, Fate, FnBehaviour, Kind, Mode, Observed, OpView, Runner, Script, Setup,
    SimConfig, SimHandle, SimKernel, Step, Verdict,
};
use crate::{Engine, SocketId};

const MS: u64 = 1_000_000;

/// One test per completion model.
macro_rules! both {
    ($(#[$meta:meta])* fn $name:ident($mode:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($mode: Mode) $body

            #[test]
            fn uring() {
                run(Mode::Uring)
            }

            #[test]
            fn epoll() {
                run(Mode::Epoll)
            }
        }
    };
}

mod packet;
mod solo;

fn sim(mode: Mode, cfg: SimConfig) -> (Engine, SimHandle) {
    let kernel = SimKernel::new(mode);
    let k = kernel.handle();
    (Engine::with_sim(cfg, kernel), k)
}

fn stream(e: &mut Engine, k: &SimHandle) -> SocketId {
    k.register(e, Kind::Stream)
}

fn udp(e: &mut Engine, k: &SimHandle, peer: Option<SocketAddr>, recverr: bool) -> SocketId {
    k.register(e, Kind::Udp { peer, recverr })
}

fn no_gso() -> SimConfig {
    SimConfig {
        gso: false,
        ..SimConfig::default()
    }
}

/// Sends `lens` fresh writes (tags from `tag`) on `id`; returns their concatenation.
fn send_all(e: &mut Engine, id: SocketId, tag: u64, lens: &[usize]) -> Vec<u8> {
    let mut all = Vec::new();
    for (i, &len) in (tag..).zip(lens) {
        let b = payload(i, len);
        all.extend_from_slice(&b);
        e.send(id, b).unwrap();
    }
    all
}

fn send_to(e: &mut Engine, id: SocketId, tag: u64, port: u16, len: usize) -> Bytes {
    let b = payload(tag, len);
    e.send_to(id, b.clone(), dest(port)).unwrap();
    b
}

// ---- streams -----------------------------------------------------------------------------

both! {
    fn short_counts_resume_at_the_exact_byte(mode) {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..60 {
            let cfg = SimConfig {
                max_iovecs_per_op: rng.gen_range(1..6),
                max_bytes_per_op: rng.gen_range(1..300),
                coalesce_below_bytes: rng.gen_range(0..64),
                ..SimConfig::default()
            };
            let seed = rng.gen::<u64>();
            let kernel = SimKernel::with_behaviour(
                mode,
                Box::new(FnBehaviour({
                    let mut r = SmallRng::seed_from_u64(seed);
                    move |op: &OpView<'_>| Verdict::Short(r.gen_range(0..=op.bytes.min(50)))
                })),
            );
            let k = kernel.handle();
            let mut e = Engine::with_sim(cfg, kernel);
            let ids: Vec<SocketId> = (0..3).map(|_| stream(&mut e, &k)).collect();
            let mut want = vec![Vec::new(); 3];
            for tag in 0..60 {
                let s = rng.gen_range(0..3);
                match rng.gen_range(0..4) {
                    0 | 1 => want[s].extend(send_all(&mut e, ids[s], tag, &[rng.gen_range(0..200)])),
                    2 => e.submit().unwrap(),
                    _ => {
                        let _ = e.try_flush(ids[s]).unwrap();
                    }
                }
            }
            let all = e.flush_all().unwrap();
            assert_eq!(all.total.failed, 0);
            for (s, id) in ids.iter().enumerate() {
                assert!(k.peer(*id).received == want[s], "stream {s}");
            }
            assert!(e.stats().short_sends > 0);
        }
    }
}

both! {
    /// `StreamWriter` chunks under short counts: every write is counted once, when the bytes
    /// that end it are sent, and the peer gets the exact concatenation (the writer mixed with
    /// `send`, small chunks so that a chunk is cut by short sends and op limits).
    fn writer_chunks_count_each_write_once_under_short_counts(mode) {
        let mut rng = SmallRng::seed_from_u64(11);
        for _ in 0..40 {
            let cfg = SimConfig {
                max_iovecs_per_op: rng.gen_range(1..6),
                max_bytes_per_op: rng.gen_range(1..300),
                coalesce_max_bytes: rng.gen_range(1..400),
                ..SimConfig::default()
            };
            let seed = rng.gen::<u64>();
            let kernel = SimKernel::with_behaviour(
                mode,
                Box::new(FnBehaviour({
                    let mut r = SmallRng::seed_from_u64(seed);
                    move |op: &OpView<'_>| Verdict::Short(r.gen_range(0..=op.bytes.min(50)))
                })),
            );
            let k = kernel.handle();
            let mut e = Engine::with_sim(cfg, kernel);
            let h = stream(&mut e, &k);
            let mut want = Vec::new();
            let (mut writes, mut reported) = (0u64, 0u64);
            for tag in 0..30u64 {
                if rng.gen_bool(0.3) {
                    want.extend(send_all(&mut e, h, tag * 100, &[rng.gen_range(1..200)]));
                    writes += 1;
                }
                let mut w = e.writer(h).unwrap();
                for i in 0..rng.gen_range(1..20u64) {
                    let b = payload(tag * 100 + 50 + i, rng.gen_range(0..600));
                    w.write(&b).unwrap();
                    want.extend_from_slice(&b);
                    writes += 1;
                    if rng.gen_bool(0.1) {
                        reported += w.flush().unwrap().writes;
                    }
                }
                drop(w);
                if rng.gen_bool(0.3) {
                    reported += e.flush(h).unwrap().writes;
                }
            }
            let r = e.flush(h).unwrap();
            reported += r.writes;
            assert_eq!(r.failed, 0);
            assert_eq!(reported, writes, "every write reported once");
            assert!(k.peer(h).received == want);
        }
    }
}

both! {
    /// A stream error in the middle of a writer's chunk: the writes wholly sent before it count
    /// as sent, the rest of the chunk fails with the error, later writes are refused at once.
    fn writer_chunk_cut_by_a_reset_fails_exactly_the_unsent_writes(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        k.script(h, [Verdict::Short(250), Verdict::Errno(libc::ECONNRESET)]);
        let mut w = e.writer(h).unwrap();
        for i in 0..10u64 {
            w.write(&payload(i, 100)).unwrap();
        }
        w.submit().unwrap();
        let late = w.write(b"late").unwrap_err();
        assert_eq!(late.status(), Some(Status::ConnectionReset), "refused at once");
        drop(w);
        let all = e.flush_all().unwrap();
        let r = all.socket(h).unwrap();
        // 250 bytes went out: writes 0 and 1 whole, write 2 half; the reset fails 2..10.
        assert_eq!((r.writes, r.failed, r.bytes), (2, 8, 250));
        assert_eq!(r.failed_with(Status::ConnectionReset), 8);
        assert_eq!(k.peer(h).received.len(), 250);
        assert!(e.writer(h).is_err(), "a poisoned stream opens no writer");
    }
}

both! {
    fn eagain_eintr_and_erestartsys_retry_without_teardown(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[100, 50]);
        k.script(h, [Verdict::Errno(libc::EAGAIN), Verdict::Errno(libc::EINTR), Verdict::Errno(512)]);
        let r = e.flush(h).unwrap();
        assert_eq!((r.writes, r.bytes, r.failed), (2, 150, 0));
        let peer = k.peer(h);
        assert_eq!(peer.received, want);
        assert_eq!(peer.ops.len(), 4, "three retries, then the send");
        assert_eq!(peer.watches, 1, "only EAGAIN waits for writability");
        assert_eq!(e.stats().retries, 3);
        e.send(h, payload(9, 10)).unwrap();
        assert_eq!(e.flush(h).unwrap().writes, 1);
    }
}

/// epoll: a socket that hit EAGAIN sends nothing until the kernel reports it writable.
#[test]
fn eagain_parks_the_socket_until_it_is_writable_on_epoll() {
    let (mut e, k) = sim(Mode::Epoll, no_gso());
    let h = stream(&mut e, &k);
    let d = udp(&mut e, &k, Some(dest(7)), false);
    k.stall(h);
    k.stall(d);
    let want = send_all(&mut e, h, 0, &[100]);
    send_all(&mut e, d, 1, &[10]);
    e.submit().unwrap();
    for id in [h, d] {
        let p = k.peer(id);
        assert_eq!(p.ops.len(), 1);
        assert_eq!(p.ops[0].res, Some(-libc::EAGAIN));
        assert_eq!(p.watches, 1);
    }
    e.submit().unwrap();
    assert_eq!(k.peer(h).ops.len(), 1, "nothing goes out while unwritable");
    assert_eq!(k.peer(d).ops.len(), 1);
    k.unstall(h);
    e.submit().unwrap();
    assert_eq!(k.peer(h).received, want);
    assert_eq!(k.peer(d).ops.len(), 1, "the other socket still waits");
    k.unstall(d);
    assert_eq!(e.flush_all().unwrap().total.writes, 2);
}

/// io_uring: sockets block, so an EAGAIN is spurious: the op goes again in the same step.
#[test]
fn eagain_on_uring_is_retried_at_once() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let h = stream(&mut e, &k);
    let want = send_all(&mut e, h, 0, &[100]);
    k.script(h, [Verdict::Errno(libc::EAGAIN)]);
    e.submit().unwrap();
    let p = k.peer(h);
    assert_eq!((p.ops.len(), p.watches), (2, 1));
    assert_eq!(p.received, want);
}

both! {
    fn fatal_stream_error_poisons_and_fails_pending_writes_with_the_same_status(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[100, 100, 100, 100]);
        // Partial progress, then the error on the resubmission (FAILURES.md item 2).
        k.script(h, [Verdict::Short(150), Verdict::Errno(libc::ECONNRESET)]);
        e.submit().unwrap();
        let p = k.peer(h);
        assert_eq!(p.ops[1].offset, 150, "resumes mid-write");
        assert_eq!(p.received, want[..150]);
        let b = payload(9, 1);
        let err = e.send(h, b.clone()).unwrap_err();
        assert_eq!(err.error().status(), Some(Status::ConnectionReset), "later sends fail fast");
        assert_eq!(err.into_inner(), b, "the buffer comes back");
        let all = e.flush_all().unwrap();
        let r = all.socket(h).unwrap();
        assert_eq!((r.writes, r.failed, r.bytes), (1, 3, 150));
        assert_eq!(r.failed_with(Status::ConnectionReset), 3);
        assert_eq!(all.errors().len(), 1);
        for _ in 0..2 {
            let err = e.flush(h).unwrap_err();
            assert_eq!(err.status(), Some(Status::ConnectionReset), "and stays failed");
        }
        e.submit().unwrap();
        assert_eq!(k.peer(h).ops.len(), 2, "nothing more goes out");
    }
}

both! {
    fn more_than_iov_max_buffers_are_split(mode) {
        let cfg = SimConfig {
            coalesce_below_bytes: 0,
            ..SimConfig::default()
        };
        let (mut e, k) = sim(mode, cfg);
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[3; 3000]);
        assert_eq!(e.flush(h).unwrap().writes, 3000);
        let p = k.peer(h);
        let entries: Vec<usize> = p.ops.iter().map(|o| o.count).collect();
        assert_eq!(entries, [1024, 1024, 952]);
        assert!(p.ops.iter().all(|o| o.iovecs == o.count));
        assert_eq!(p.received, want);
    }
}

both! {
    fn small_writes_are_staged_into_one_iovec(mode) {
        // Default staging: 3000 three-byte writes are copied into one chunk at `send`, and go as
        // one op with one iovec (a stream op's `count` is queue entries: chunks or big writes).
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[3; 3000]);
        e.flush(h).unwrap();
        let p = k.peer(h);
        assert_eq!(p.ops.len(), 1);
        assert_eq!((p.ops[0].count, p.ops[0].iovecs, p.ops[0].bytes), (1, 1, 9000));
        assert_eq!(p.received, want);

        // Mixed sizes: runs of small writes share an iovec, large ones keep their own; the iovec
        // limit counts iovecs, not writes; a short send resumes exactly, re-staging the rest.
        let cfg = SimConfig {
            coalesce_below_bytes: 100,
            max_iovecs_per_op: 4,
            ..SimConfig::default()
        };
        let (mut e, k) = sim(mode, cfg);
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[10, 20, 1000, 30, 40, 2000, 50, 3000, 60]);
        k.script(h, [Verdict::Short(1015)]);
        e.flush(h).unwrap();
        let p = k.peer(h);
        // [10,20] [1000] [30,40] [2000] — the fifth iovec would exceed the limit.
        assert_eq!((p.ops[0].count, p.ops[0].iovecs, p.ops[0].bytes), (4, 4, 3100));
        assert_eq!(p.ops[1].offset, 1015);
        assert!(p.ops.iter().all(|o| o.iovecs <= 4));
        assert_eq!(p.received, want);
    }
}

/// A barrier covers exactly the writes before it: the one `try_flush` set resolves when they
/// are done, though a later write in the same (short) op is not.
#[test]
fn a_stream_barrier_covers_exactly_the_writes_before_it() {
    let (mut e, k) = sim(Mode::Epoll, SimConfig::default());
    let h = stream(&mut e, &k);
    k.stall(h);
    send_all(&mut e, h, 0, &[10]);
    assert!(
        e.try_flush(h).unwrap().is_none(),
        "stalled: EAGAIN, pending"
    );
    send_all(&mut e, h, 1, &[10]);
    k.unstall(h);
    k.script(h, [Verdict::Short(10), Verdict::Hold]);
    let r = e.try_flush(h).unwrap().expect("the first write is done");
    assert_eq!((r.writes, r.bytes), (1, 10));
    let p = k.peer(h);
    assert_eq!(p.ops[1].bytes, 20, "both writes coalesced into one op");
    assert!(
        e.try_flush(h).unwrap().is_none(),
        "a new barrier waits for the second"
    );
    k.unstall(h);
    assert_eq!(e.flush(h).unwrap().writes, 1);
}

/// A later datagram done first never resolves an earlier barrier.
#[test]
fn a_later_datagram_done_first_never_resolves_an_earlier_barrier() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let d = udp(&mut e, &k, None, false);
    k.script(d, [Verdict::Hold, Verdict::Full]);
    send_to(&mut e, d, 0, 9000, 10);
    assert!(e.try_flush(d).unwrap().is_none());
    send_to(&mut e, d, 1, 9001, 10);
    e.submit().unwrap();
    let seqs: Vec<u64> = k.peer(d).datagrams.iter().map(|x| x.seq).collect();
    assert_eq!(seqs, [1], "the later one arrived");
    assert!(
        e.try_flush(d).unwrap().is_none(),
        "the earlier one is still in flight"
    );
    k.unstall(d);
    let r = e.try_flush(d).unwrap().expect("both done");
    assert_eq!(r.writes, 2);
}

both! {
    fn a_barrier_resolves_on_failure_too(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, Some(dest(7)), true);
        k.script(d, [Verdict::Errno(libc::EMSGSIZE)]);
        send_all(&mut e, d, 0, &[10]);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (0, 1));
        assert_eq!(r.failed_with(Status::MessageTooLong), 1);
    }
}

// ---- datagrams ---------------------------------------------------------------------------

/// Datagram `seq` of every socket fails with `errno`, whatever op carries it.
fn fail_seq(seq: u64, errno: i32) -> Box<FnBehaviour<impl FnMut(&OpView<'_>) -> Verdict + Send>> {
    Box::new(FnBehaviour(move |op: &OpView<'_>| {
        let hit = !op.stream && op.seqs.contains(&seq);
        if hit {
            Verdict::Errno(errno)
        } else {
            Verdict::Full
        }
    }))
}

both! {
    fn a_datagram_error_does_not_fail_its_neighbours(mode) {
        let kernel = SimKernel::with_behaviour(mode, fail_seq(1, libc::EMSGSIZE));
        let k = kernel.handle();
        let mut e = Engine::with_sim(SimConfig::default(), kernel);
        let d = udp(&mut e, &k, None, true);
        for (tag, port) in [9000, 9001, 9002].into_iter().enumerate() {
            send_to(&mut e, d, tag as u64, port, 100);
        }
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (2, 1));
        assert_eq!(r.failed_with(Status::MessageTooLong), 1);
        let seqs: Vec<u64> = k.peer(d).datagrams.iter().map(|x| x.seq).collect();
        assert_eq!(seqs, [0, 2]);
        send_to(&mut e, d, 3, 9001, 10);
        assert_eq!(e.flush(d).unwrap().writes, 1, "not poisoned");
    }
}

/// Sends a GSO group of `lens` to port 9000 and checks it went as one op.
fn gso_group(e: &mut Engine, k: &SimHandle, d: SocketId, tag: u64, lens: &[usize]) {
    for (t, &len) in (tag..).zip(lens) {
        send_to(e, d, t, 9000, len);
    }
    let before = k.peer(d).ops.len();
    e.submit().unwrap();
    let p = k.peer(d);
    let op = &p.ops[before];
    assert_eq!((op.count, op.segment_size), (lens.len(), Some(100)));
}

both! {
    fn gso_eio_turns_gso_off_and_resends_the_same_datagrams(mode) {
        for errno in [libc::EIO, libc::EINVAL] {
            let (mut e, k) = sim(mode, SimConfig::default());
            let d = udp(&mut e, &k, None, false);
            k.script(d, [Verdict::Errno(errno)]);
            gso_group(&mut e, &k, d, 0, &[100, 100, 100, 40]);
            assert!(!e.socket_gso(d).unwrap(), "GSO off after errno {errno}");
            assert_eq!(e.flush(d).unwrap().writes, 4);
            let p = k.peer(d);
            assert_eq!(p.ops.len(), 5, "re-split as singles");
            assert!(p.ops[1..].iter().all(|o| o.segment_size.is_none()));
            let seqs: Vec<u64> = p.datagrams.iter().map(|x| x.seq).collect();
            assert_eq!(seqs, [0, 1, 2, 3]);
            // Later datagrams go alone too.
            send_to(&mut e, d, 4, 9000, 100);
            send_to(&mut e, d, 5, 9000, 100);
            e.flush(d).unwrap();
            assert_eq!(k.peer(d).ops.len(), 7);
            assert_eq!(e.stats().gso_fallbacks, 1);
        }
    }
}

both! {
    /// Issue #11 item 1: a group refused with EIO/EINVAL whose datagrams also fail alone had
    /// its datagrams' own error (a bad destination), not "this device cannot segment": each
    /// fails with it, and GSO stays on for the socket. Before the fix GSO went off for good.
    fn a_group_error_that_is_the_datagrams_own_leaves_gso_on(mode) {
        for errno in [libc::EIO, libc::EINVAL] {
            let (mut e, k) = sim(mode, SimConfig::default());
            let d = udp(&mut e, &k, None, false);
            let bad = dest(9000);
            k.set_behaviour(Box::new(FnBehaviour(move |v: &OpView<'_>| {
                if v.dest == Some(bad) {
                    Verdict::Errno(errno)
                } else {
                    Verdict::Full
                }
            })));
            gso_group(&mut e, &k, d, 0, &[100, 100, 100, 40]);
            let r = e.flush(d).unwrap();
            let status = Status::from_errno(errno);
            assert_eq!((r.writes, r.failed, r.failed_with(status)), (0, 4, 4), "{r:?}");
            assert!(e.socket_gso(d).unwrap(), "errno {errno}: GSO stays on");
            // A later group to a good destination still goes as one GSO send.
            for tag in 4..8 {
                send_to(&mut e, d, tag, 9001, 100);
            }
            let r = e.flush(d).unwrap();
            assert_eq!((r.writes, r.failed), (4, 0));
            let p = k.peer(d);
            let last = p.ops.last().unwrap();
            assert_eq!((last.count, last.segment_size), (4, Some(100)), "errno {errno}");
            let decided = p.ops.iter().filter(|o| o.res.is_some()).count();
            assert_eq!(decided, 1 + 4 + 1, "errno {errno}: the group, 4 alone, the group");
        }
    }
}

/// io_uring: two groups in flight are both refused; the second failure is tolerated.
#[test]
fn gso_tolerates_more_failures_from_groups_already_in_flight() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let d = udp(&mut e, &k, None, false);
    k.script(d, [Verdict::Errno(libc::EIO), Verdict::Errno(libc::EIO)]);
    for (tag, port) in [9000, 9000, 9001, 9001].into_iter().enumerate() {
        send_to(&mut e, d, tag as u64, port, 100);
    }
    let r = e.flush(d).unwrap();
    assert_eq!(r.writes, 4);
    assert!(!e.socket_gso(d).unwrap());
    let p = k.peer(d);
    assert_eq!(p.ops.iter().filter(|o| o.segment_size.is_some()).count(), 2);
    assert_eq!(p.datagrams.len(), 4);
    assert_eq!(e.stats().gso_fallbacks, 2);
}

both! {
    fn a_gso_group_refused_by_a_socket_error_fails_only_its_first_datagram(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, None, false);
        k.script(d, [Verdict::Errno(libc::EACCES)]);
        gso_group(&mut e, &k, d, 0, &[100, 100, 100]);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (2, 1));
        assert_eq!(r.failed_with(Status::PermissionDenied), 1);
        let p = k.peer(d);
        assert_eq!((p.ops[1].first_seq, p.ops[1].count), (1, 2), "the rest regrouped");
    }
}

both! {
    fn gso_emsgsize_resplits_and_each_datagram_fails_or_sends_alone(mode) {
        let kernel = SimKernel::with_behaviour(
            mode,
            Box::new(FnBehaviour(|op: &OpView<'_>| {
                if op.first_seq == 0 {
                    Verdict::Errno(libc::EMSGSIZE)
                } else {
                    Verdict::Full
                }
            })),
        );
        let k = kernel.handle();
        let mut e = Engine::with_sim(SimConfig::default(), kernel);
        let d = udp(&mut e, &k, None, false);
        gso_group(&mut e, &k, d, 0, &[100, 100, 100]);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (2, 1));
        assert_eq!(r.failed_with(Status::MessageTooLong), 1);
        assert!(e.socket_gso(d).unwrap(), "EMSGSIZE keeps GSO on");
        // No endless loop: a refused group becomes singles once; new datagrams still group.
        gso_group(&mut e, &k, d, 3, &[100, 100]);
        assert_eq!(e.flush(d).unwrap().writes, 2);
    }
}

both! {
    fn enobufs_backs_off_boundedly_then_drops(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, Some(dest(7)), true);
        k.nobufs(d, 5);
        send_all(&mut e, d, 0, &[10]);
        let start = k.now_ns();
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (0, 1));
        assert_eq!(r.failed_with(Status::NoBufferSpace), 1);
        let p = k.peer(d);
        let at: Vec<u64> = p.ops.iter().map(|o| (o.issued_ns - start) / MS).collect();
        assert_eq!(at, [0, 1, 3, 7, 15], "1, 2, 4, 8 ms apart, nothing in between");
        assert_eq!(k.now_ns() - start, 15 * MS, "virtual time: ≤ 16 ms in all");
    }
}

both! {
    fn enobufs_then_success_delivers_once(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, Some(dest(7)), true);
        k.nobufs(d, 1);
        send_all(&mut e, d, 0, &[10]);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (1, 0));
        let p = k.peer(d);
        assert_eq!(p.datagrams.len(), 1);
        assert_eq!(p.ops[1].issued_ns - p.ops[0].done_ns, MS);
    }
}

both! {
    /// An empty write ends where it starts: at the front of an op that fails (a reset before
    /// any byte of the op went), it is complete, as it is when an op of its own carries it (a
    /// send of 0 bytes returns 0); the next write fails. Found by fuzz_diff (the two backends
    /// cut the ops differently): `fuzz/corpus/fuzz_diff/regress-empty-write-before-reset`.
    fn an_empty_write_before_a_reset_is_sent(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = stream(&mut e, &k);
        e.send(d, Bytes::new()).unwrap();
        e.send(d, Bytes::new()).unwrap();
        e.send(d, payload(1, 100)).unwrap();
        e.send(d, Bytes::new()).unwrap();
        k.reset(d, libc::ECONNRESET);
        let r = e.flush(d).unwrap_err();
        assert_eq!(r.status(), Some(Status::ConnectionReset), "{r}");
        let st = e.stats();
        // The two in front are sent; the one behind the failed write fails with it.
        assert_eq!((st.writes_sent, st.writes_failed), (2, 2), "the empty writes in front");
    }
}

// ---- stale pending errors (ICMP) ----------------------------------------------------------

both! {
    fn a_stale_icmp_error_on_an_unconnected_recverr_socket_resends_and_names_the_dead_port(mode) {
        let (mut e, k) = sim(mode, no_gso());
        let d = udp(&mut e, &k, None, true);
        let (dead, live) = (dest(9001), dest(9002));
        k.close_port(dead);
        send_to(&mut e, d, 0, 9001, 7);
        let to_live = send_to(&mut e, d, 1, 9002, 7);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (2, 0), "both were sent");
        let p = k.peer(d);
        let got: Vec<_> = p.datagrams.iter().filter(|x| x.dest == Some(live)).collect();
        assert_eq!(got.len(), 1, "the live datagram arrives once");
        assert_eq!(got[0].payload, to_live);
        let pe = e.take_peer_errors(d).unwrap();
        assert_eq!(pe.len(), 1);
        assert_eq!(pe[0].status(), Some(Status::ConnectionRefused));
        assert_eq!(pe[0].peer(), Some(dead));
        assert!(e.take_peer_errors(d).unwrap().is_empty());
        assert_eq!(e.stats().peer_errors, 1);
        // io_uring: the live datagram's send picked up the error and went again; epoll: the
        // `sendmmsg` stopped there (the kernel drops an error after a sent datagram).
        let resends = if mode == Mode::Uring { 1 } else { 0 };
        assert_eq!(e.stats().stale_error_resends, resends);
    }
}

/// A relay through one unconnected socket: `flushes` flushes of one datagram to each of 8
/// destinations (port 9100 + i), the one at `dead` closed; with peer-error sampling on or off.
/// Checks every flush sent all 8 and failed none, and each live destination got exactly its
/// datagrams in order. Returns (engine, handle, socket, transitions).
fn sampled_relay(
    mode: Mode,
    sampling: bool,
    dead: Option<u16>,
    flushes: u64,
) -> (Engine, SimHandle, SocketId, u64) {
    let cfg = SimConfig {
        peer_error_sampling: sampling,
        ..no_gso()
    };
    let (mut e, k) = sim(mode, cfg);
    let d = udp(&mut e, &k, None, true);
    if let Some(p) = dead {
        k.close_port(dest(p));
    }
    let mut want: Vec<Vec<Bytes>> = vec![Vec::new(); 8];
    for f in 0..flushes {
        for (i, w) in (0u16..).zip(want.iter_mut()) {
            w.push(send_to(&mut e, d, f * 8 + u64::from(i), 9100 + i, 20));
        }
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (8, 0), "flush {f}: {r:?}");
    }
    let log = k.peer(d);
    for (i, w) in (0u16..).zip(&want) {
        let got: Vec<Bytes> = log
            .datagrams
            .iter()
            .filter(|x| x.dest == Some(dest(9100 + i)))
            .map(|x| x.payload.clone())
            .collect();
        assert_eq!(&got, w, "destination {i}: every datagram once, in order");
    }
    let t = e.stats().kernel_transitions;
    (e, k, d, t)
}

both! {
    /// Peer-error sampling: a dead destination costs the relay about nothing (IP_RECVERR goes
    /// off after two reads in a row found reports, back on after 64 passes for a sample); the
    /// dead destination is still reported, from the samples; nothing else changes.
    fn sampled_peer_errors_make_a_dead_destination_cost_nothing(mode) {
        const FLUSHES: u64 = 200;
        let (_, _, _, open) = sampled_relay(mode, true, None, FLUSHES);
        let (mut e, k, d, dead) = sampled_relay(mode, true, Some(9103), FLUSHES);
        let (mut e_all, _, d_all, every) = sampled_relay(mode, false, Some(9103), FLUSHES);
        assert!(
            dead * 10 <= open * 12,
            "{dead} transitions with a dead destination, {open} with none"
        );
        // Reading every report: one read per flush behind the dead destination's datagram.
        assert!(every >= 2 * FLUSHES - 4, "{every} transitions reading every report");
        let switches = k.peer(d).recverr_switches;
        // Off after flush 3 (the first report came from the stale error of flush 1, then two
        // reads in a row), on again 64 passes later, off again two flushes after that…
        assert!(switches.len() >= 4, "{switches:?}");
        assert!(
            switches.iter().step_by(2).all(|&on| !on) && switches.iter().skip(1).step_by(2).all(|&on| on),
            "off and on in turn: {switches:?}"
        );
        let u = e.unreachable_destinations(d).unwrap();
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].dest, dest(9103));
        let sampled = u[0].reports;
        let all = e_all.unreachable_destinations(d_all).unwrap()[0].reports;
        // Without sampling every datagram's report is read (io_uring: the last flush's read
        // may still be in the ring when its barrier resolves; the next call reaps it).
        let lag = u64::from(mode == Mode::Uring);
        assert!(all + lag >= FLUSHES && all <= FLUSHES, "{all} reports of {FLUSHES}");
        assert!(sampled > 0 && sampled < all / 4, "sampled {sampled} of {all}");
        assert_eq!(e.stats().peer_errors, sampled);
    }
}

both! {
    /// Quiet (IP_RECVERR off for sampling), an ICMP error that arrived just before the switch
    /// may still be pending: the datagram that picks it up goes again, once; a synchronous
    /// error of its own (ENETUNREACH, twice) fails it after that one resend.
    fn a_quiet_socket_resends_once_on_a_leftover_pending_error(mode) {
        let (mut e, k, d, _) = sampled_relay(mode, true, Some(9103), 8);
        assert_eq!(k.peer(d).recverr_switches, vec![false], "quiet by now");
        let stale = e.stats().stale_error_resends;
        k.set_pending_error(d, libc::ECONNREFUSED);
        let x = send_to(&mut e, d, 1000, 9101, 20);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (1, 0), "{r:?}");
        assert_eq!(e.stats().stale_error_resends, stale + 1);
        let last = k.peer(d).datagrams.last().cloned().unwrap();
        assert_eq!((last.dest, last.payload), (Some(dest(9101)), x));

        let ops = k.peer(d).ops.len();
        k.script(d, [Verdict::Errno(libc::ENETUNREACH); 2]);
        send_to(&mut e, d, 1001, 9101, 20);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (0, 1), "{r:?}");
        assert_eq!(r.failed_with(Status::NetworkUnreachable), 1, "{r:?}");
        assert_eq!(k.peer(d).ops.len(), ops + 2, "one resend, then its own error");
    }
}

both! {
    fn stale_icmp_resends_are_bounded_then_the_datagram_fails(mode) {
        // A connected socket without IP_RECVERR: the kernel gives no way to tell a stale
        // pending error from the datagram's own, so the bound ends it.
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, Some(dest(7)), false);
        k.script(d, [Verdict::Errno(libc::EHOSTUNREACH); 40]);
        send_all(&mut e, d, 0, &[1]);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (0, 1));
        assert_eq!(r.failed_with(Status::HostUnreachable), 1, "{r:?}");
        assert_eq!(k.peer(d).ops.len(), 33, "32 resends, then the error is the datagram's");
    }
}

both! {
    /// An ICMP-class errno is a stale pending error only where one can be pending: on a
    /// connected socket without IP_RECVERR it is sent again; with IP_RECVERR only if the error
    /// queue held a report (here it holds none: the errno is the datagram's own, e.g. a route
    /// lookup's ENETUNREACH); on an unconnected socket without it, never.
    fn an_icmp_class_errno_is_stale_only_where_a_pending_error_can_be(mode) {
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EHOSTDOWN, libc::EPROTO] {
            for (connected, recverr) in [(false, false), (false, true), (true, false), (true, true)] {
                let (mut e, k) = sim(mode, SimConfig::default());
                let d = udp(&mut e, &k, connected.then(|| dest(7)), recverr);
                k.script(d, [Verdict::Errno(errno)]);
                if connected {
                    send_all(&mut e, d, 0, &[5]);
                } else {
                    send_to(&mut e, d, 0, 9000, 5);
                }
                let r = e.flush(d).unwrap();
                let case = format!("errno {errno}, connected {connected}, recverr {recverr}");
                let p = k.peer(d);
                assert_eq!(p.errqueue_reads > 0, recverr, "{case}: error queue read");
                if connected && !recverr {
                    assert_eq!((r.writes, r.failed), (1, 0), "{case}");
                    assert_eq!((p.ops.len(), p.datagrams.len()), (2, 1), "{case}");
                    assert_eq!(e.stats().stale_error_resends, 1, "{case}");
                } else {
                    assert_eq!((r.writes, r.failed), (0, 1), "{case}");
                    assert_eq!(r.failed_with(Status::from_errno(errno)), 1, "{case}");
                    assert_eq!((p.ops.len(), p.datagrams.len()), (1, 0), "{case}");
                    assert_eq!(e.stats().stale_error_resends, 0, "{case}");
                    assert!(e.take_peer_errors(d).unwrap().is_empty(), "{case}");
                }
            }
        }
    }
}

both! {
    /// A synchronous route error on a recverr socket (nothing on the error queue) fails its
    /// datagram once, with one error-queue read, however many datagrams in the batch get it;
    /// datagrams to routable destinations go out. Before: 33 sends per datagram.
    fn a_route_error_fails_each_datagram_once(mode) {
        let (mut e, k) = sim(mode, no_gso());
        let d = udp(&mut e, &k, None, true);
        let unroutable = dest(9100);
        k.set_behaviour(Box::new(FnBehaviour(move |v: &OpView<'_>| {
            if v.dest == Some(unroutable) {
                Verdict::Errno(libc::ENETUNREACH)
            } else {
                Verdict::Full
            }
        })));
        for tag in 0..8 {
            send_to(&mut e, d, tag, if tag % 2 == 0 { 9100 } else { 9101 }, 10);
        }
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (4, 4), "{r:?}");
        assert_eq!(r.failed_with(Status::NetworkUnreachable), 4, "{r:?}");
        let p = k.peer(d);
        assert_eq!(p.datagrams.len(), 4);
        // One failed send per unroutable datagram (before the fix: 33 each).
        let sends = |seq: u64| {
            p.ops
                .iter()
                .filter(|o| o.first_seq == seq && o.res == Some(-libc::ENETUNREACH))
                .count()
        };
        for seq in [0, 2, 4, 6] {
            assert_eq!(sends(seq), 1, "datagram {seq}");
        }
        assert_eq!(e.stats().stale_error_resends, 0);
        assert!(e.take_peer_errors(d).unwrap().is_empty());
    }
}

both! {
    fn a_connected_socket_to_a_closed_port_reports_every_datagram_sent(mode) {
        for recverr in [false, true] {
            let (mut e, k) = sim(mode, no_gso());
            let d = udp(&mut e, &k, Some(dest(7)), recverr);
            k.close_port(dest(7));
            send_all(&mut e, d, 0, &[10, 10, 10, 10, 10]);
            let r = e.flush(d).unwrap();
            assert_eq!((r.writes, r.failed), (5, 0), "recverr {recverr}");
            assert_eq!(k.peer(d).datagrams.len(), 5);
            let pe = e.take_peer_errors(d).unwrap();
            if recverr {
                assert!(!pe.is_empty());
                for err in &pe {
                    assert_eq!(err.status(), Some(Status::ConnectionRefused));
                    assert_eq!(err.peer(), Some(dest(7)));
                }
            } else {
                assert!(pe.is_empty(), "no error queue without IP_RECVERR");
                assert_eq!(k.peer(d).errqueue_reads, 0);
            }
            assert_eq!(e.stats().peer_errors, pe.len() as u64);
        }
    }
}

both! {
    fn a_pending_error_and_its_error_queue_entry_become_a_peer_error(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, None, true);
        // An ICMP host unreachable about an earlier datagram to port 9005 came back.
        k.set_pending_error(d, libc::EHOSTUNREACH);
        k.push_errqueue(d, Some(dest(9005)), libc::EHOSTUNREACH);
        let b = send_to(&mut e, d, 0, 9006, 20);
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (1, 0), "the datagram that picked it up went again");
        let p = k.peer(d);
        assert_eq!(p.datagrams.len(), 1);
        assert_eq!(p.datagrams[0].payload, b);
        assert_eq!(p.errqueue_taken, [(Some(dest(9005)), libc::EHOSTUNREACH)]);
        let pe = e.take_peer_errors(d).unwrap();
        assert_eq!(pe.len(), 1);
        assert_eq!(pe[0].status(), Some(Status::HostUnreachable));
        assert_eq!(pe[0].peer(), Some(dest(9005)));
    }
}

both! {
    fn an_unconnected_socket_without_recverr_hears_no_icmp(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let d = udp(&mut e, &k, None, false);
        k.close_port(dest(9000));
        for tag in 0..3 {
            send_to(&mut e, d, tag, 9000, 10);
            e.submit().unwrap();
        }
        let r = e.flush(d).unwrap();
        assert_eq!((r.writes, r.failed), (3, 0));
        assert_eq!(k.peer(d).ops.len(), 3, "no pending error, no resend");
        assert_eq!(e.stats().stale_error_resends, 0);
    }
}

// ---- tokens, pushes, limits ----------------------------------------------------------------

both! {
    fn stale_unknown_and_duplicate_tokens_are_ignored(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let d = udp(&mut e, &k, Some(dest(7)), false);
        let mut want = send_all(&mut e, h, 0, &[10]);
        send_all(&mut e, d, 1, &[10]);
        e.submit().unwrap();
        let done = k.completed_tokens();
        assert_eq!(done.len(), 2);
        let before = fingerprint(&e, &k);
        k.freeze(true);
        for &t in &done {
            k.inject_done(t, 10); // duplicate
            k.inject_done(t, -libc::ECONNRESET);
        }
        k.inject_done(u64::MAX, 0);
        k.inject_done(0xdead_0000_0007, -libc::EIO);
        for pick in 0..40u64 {
            k.inject_stale(pick.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        e.submit().unwrap();
        k.freeze(false);
        assert_eq!(before, fingerprint(&e, &k), "a stale completion changed state");
        // The slots are reused under new generations; the old tokens stay stale.
        want.extend(send_all(&mut e, h, 2, &[10]));
        k.stall(h);
        e.submit().unwrap();
        let before = fingerprint(&e, &k);
        k.freeze(true);
        for &t in &done {
            k.inject_done(t, 10);
        }
        e.submit().unwrap();
        k.freeze(false);
        assert_eq!(before, fingerprint(&e, &k));
        k.unstall(h);
        e.flush_all().unwrap();
        assert_eq!(k.peer(h).received, want);
    }
}

/// io_uring: ops whose push failed go back unsent and are sent once, unchanged.
#[test]
fn a_refused_push_sends_the_same_bytes_once() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let h = stream(&mut e, &k);
    let d = udp(&mut e, &k, None, false);
    let want = send_all(&mut e, h, 0, &[30]);
    send_to(&mut e, d, 1, 9000, 30);
    send_to(&mut e, d, 2, 9001, 30);
    k.refuse_push_after(0);
    e.submit().unwrap();
    for id in [h, d] {
        let p = k.peer(id);
        let refused: Vec<_> = p.ops.iter().filter(|o| o.not_issued).collect();
        let sent: Vec<_> = p.ops.iter().filter(|o| !o.not_issued).collect();
        assert_eq!(refused.len(), sent.len());
        for (a, b) in refused.iter().zip(&sent) {
            let shape =
                |o: &crate::sim::OpRecord| (o.offset, o.first_seq, o.count, o.bytes, o.dest);
            assert_eq!(shape(a), shape(b), "the same op again");
        }
    }
    e.flush_all().unwrap();
    assert_eq!(k.peer(h).received, want);
    assert_eq!(k.peer(d).datagrams.len(), 2);
}

both! {
    fn a_refused_send_hands_the_buffer_back_and_resending_it_delivers_it_exactly(mode) {
        let cfg = SimConfig {
            max_queued_bytes_per_socket: 100,
            max_queued_bytes: 150,
            max_queued_writes_per_socket: 3,
            ..SimConfig::default()
        };
        let (mut e, k) = sim(mode, cfg);
        let a = stream(&mut e, &k);
        let b = udp(&mut e, &k, Some(dest(7)), false);
        let refuse = |e: &mut Engine, id, data: &Bytes| {
            let err = e.send(id, data.clone()).unwrap_err();
            let (err, back) = err.into_parts();
            assert!(back.as_ptr() == data.as_ptr() && back.len() == data.len(), "same buffer");
            err
        };
        let big = payload(0, 101);
        assert!(matches!(refuse(&mut e, a, &big), Error::BufferTooLarge { len: 101, max: 100, .. }));
        let mut want = send_all(&mut e, a, 1, &[60]);
        let again = payload(2, 60);
        let err = refuse(&mut e, a, &again);
        assert!(matches!(err, Error::Backpressure { limit: Limit::QueuedBytesPerSocket, max: 100, .. }));
        send_all(&mut e, b, 3, &[60]);
        let err = refuse(&mut e, b, &payload(4, 40));
        assert!(matches!(err, Error::Backpressure { limit: Limit::QueuedBytesTotal, max: 150, .. }));
        send_all(&mut e, b, 5, &[1, 1]);
        let err = refuse(&mut e, b, &payload(7, 1));
        assert!(matches!(err, Error::Backpressure { limit: Limit::QueuedWritesPerSocket, max: 3, .. }));
        assert_eq!(e.queued_bytes(a).unwrap(), 60);
        assert_eq!(e.total_queued_bytes(), 122);
        e.flush_all().unwrap();
        // The refused buffer, sent again after the flush, arrives byte-exact.
        e.send(a, again.clone()).unwrap();
        want.extend_from_slice(&again);
        e.send(b, payload(8, 50)).unwrap();
        e.flush_all().unwrap();
        assert_eq!(k.peer(a).received, want);
        assert_eq!(k.peer(b).datagrams.len(), 4);
    }
}

/// io_uring: the global cap binds the ops beyond each socket's first, and the per-socket cap
/// every op.
#[test]
fn in_flight_caps() {
    let cfg = SimConfig {
        max_in_flight_ops: 3,
        max_in_flight_per_socket: 2,
        ..no_gso()
    };
    let (mut e, k) = sim(Mode::Uring, cfg);
    let d = udp(&mut e, &k, Some(dest(7)), false);
    let f = udp(&mut e, &k, Some(dest(8)), false);
    for tag in 0..5 {
        send_all(&mut e, d, tag, &[10]);
        send_all(&mut e, f, 10 + tag, &[10]);
    }
    k.stall(d);
    k.stall(f);
    e.submit().unwrap();
    assert_eq!(k.in_flight(), 3);
    assert_eq!(k.peer(d).max_in_flight, 2);
    assert_eq!(k.peer(f).max_in_flight, 1);
    assert_eq!(k.max_extras(), 1);
    k.unstall(d);
    k.unstall(f);
    let all = e.flush_all().unwrap();
    assert_eq!(all.total.writes, 10);
    assert!(k.peer(d).max_in_flight <= 2 && k.peer(f).max_in_flight <= 2);
    assert!(k.max_extras() <= 2);
}

// ---- sockets are independent -------------------------------------------------------------

both! {
    fn a_flush_resolves_while_another_socket_is_held_forever(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let a = stream(&mut e, &k);
        let b = stream(&mut e, &k);
        let u = udp(&mut e, &k, None, true);
        k.stall(b);
        send_all(&mut e, b, 0, &[100]);
        e.submit().unwrap();
        let want = send_all(&mut e, a, 1, &[100]);
        send_to(&mut e, u, 2, 9000, 10);
        // The kernel panics if the engine waits while nothing of `a` (or `u`) is held.
        k.set_focus(Some(a));
        assert_eq!(e.flush(a).unwrap().writes, 1);
        k.set_focus(Some(u));
        assert_eq!(e.flush(u).unwrap().writes, 1);
        k.set_focus(None);
        assert_eq!(k.peer(a).received, want);
        assert!(e.try_flush(b).unwrap().is_none(), "b is still stalled");
        assert!(k.peer(b).received.is_empty());
    }
}

both! {
    fn a_healthy_socket_gets_its_op_past_more_stalled_peers_than_the_cap(mode) {
        let cfg = SimConfig {
            max_in_flight_ops: 2,
            ..SimConfig::default()
        };
        let (mut e, k) = sim(mode, cfg);
        let stalled: Vec<SocketId> = (0..5).map(|_| stream(&mut e, &k)).collect();
        for (tag, &s) in (0..).zip(&stalled) {
            k.stall(s);
            send_all(&mut e, s, tag, &[100]);
        }
        e.submit().unwrap();
        let healthy = stream(&mut e, &k);
        let want = send_all(&mut e, healthy, 9, &[100]);
        k.set_focus(Some(healthy));
        assert_eq!(e.flush(healthy).unwrap().writes, 1);
        assert_eq!(k.peer(healthy).received, want);
        assert_eq!(k.max_extras(), 0, "every op was a socket's first");
        if mode == Mode::Uring {
            assert_eq!(k.held(), 5, "the stalled peers' ops stay in flight");
        }
    }
}

both! {
    fn flush_all_reports_every_socket_and_a_poisoned_stream_hides_nothing(mode) {
        let mut script = Script::new();
        let fate = Fate { errno: Some(libc::EMSGSIZE), ..Fate::default() };
        script.fate(1, 1, fate);
        let kernel = SimKernel::with_behaviour(mode, Box::new(script));
        let k = kernel.handle();
        let mut e = Engine::with_sim(no_gso(), kernel);
        let s = stream(&mut e, &k);
        let u = udp(&mut e, &k, None, true);
        send_all(&mut e, s, 0, &[10, 10]);
        for tag in 0..3 {
            send_to(&mut e, u, 10 + tag, 9000, 10);
        }
        k.reset(s, libc::ECONNRESET);
        let all = e.flush_all().unwrap();
        assert_eq!(all.sockets.len(), 2);
        let rs = all.socket(s).unwrap();
        assert_eq!((rs.writes, rs.failed), (0, 2));
        assert_eq!(rs.failed_with(Status::ConnectionReset), 2);
        let ru = all.socket(u).unwrap();
        assert_eq!((ru.writes, ru.failed), (2, 1));
        assert_eq!(ru.failed_with(Status::MessageTooLong), 1);
        assert_eq!(all.errors().len(), 1);
        assert_eq!(all.errors()[0].status(), Some(Status::ConnectionReset));
        assert_eq!((all.total.writes, all.total.failed), (2, 3));
        let err = all.into_result().unwrap_err();
        assert_eq!(err.status(), Some(Status::ConnectionReset));
    }
}

// ---- non-blocking and timed flushes --------------------------------------------------------

both! {
    fn try_flush_never_blocks(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        k.stall(h);
        let want = send_all(&mut e, h, 0, &[10]);
        let t0 = k.now_ns();
        for _ in 0..3 {
            assert!(e.try_flush(h).unwrap().is_none());
        }
        assert_eq!(k.now_ns(), t0, "no wait");
        k.unstall(h);
        let r = e.try_flush(h).unwrap().expect("resolved");
        assert_eq!(r.writes, 1);
        assert_eq!(k.peer(h).received, want);
        let r = e.try_flush(h).unwrap().expect("nothing to wait for");
        assert_eq!(r.writes, 0);
    }
}

both! {
    fn flush_timeout_max_means_no_deadline(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        e.set_flush_timeout(Some(Duration::MAX));
        k.set_latency(3);
        let d = udp(&mut e, &k, Some(dest(7)), true);
        k.nobufs(d, 2);
        send_all(&mut e, d, 0, &[10, 10]);
        let r = e.flush(d).unwrap();
        assert_eq!(r.writes, 2);
        let (_, fd) = e.close(d).unwrap();
        drop(fd);
    }
}

both! {
    fn flush_timeout_zero_submits_reaps_once_then_reports(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        e.set_flush_timeout(Some(Duration::ZERO));
        let h = stream(&mut e, &k);
        send_all(&mut e, h, 0, &[10]);
        assert_eq!(e.flush(h).unwrap().writes, 1, "one step was enough");
        send_all(&mut e, h, 1, &[10]);
        let (r, _fd) = e.close(h).unwrap();
        assert_eq!(r.writes, 1, "close succeeds when one step completes everything");
        let h = stream(&mut e, &k);
        k.stall(h);
        send_all(&mut e, h, 2, &[10]);
        let t0 = k.now_ns();
        assert!(matches!(e.flush(h), Err(Error::FlushTimeout { socket: Some(_) })));
        assert!(matches!(e.close(h), Err(Error::FlushTimeout { .. })), "still registered");
        assert!(matches!(e.flush_all(), Err(Error::FlushTimeout { socket: None })));
        assert_eq!(k.now_ns(), t0, "no wait");
        assert_eq!(e.pending_writes(), 1, "the write stays queued");
        k.unstall(h);
        // On epoll the socket waits for writability, which one step only reports.
        e.submit().unwrap();
        let (r, _fd) = e.close(h).unwrap();
        assert_eq!(r.writes, 1);
    }
}

both! {
    fn a_flush_timeout_expires_on_a_stalled_peer_in_virtual_time(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        e.set_flush_timeout(Some(Duration::from_millis(50)));
        let h = stream(&mut e, &k);
        k.stall(h);
        send_all(&mut e, h, 0, &[10]);
        let t0 = k.now_ns();
        assert!(matches!(e.flush(h), Err(Error::FlushTimeout { .. })));
        assert_eq!(k.now_ns() - t0, 50 * MS);
        assert_eq!(e.pending_writes(), 1);
        k.unstall(h);
        assert_eq!(e.flush(h).unwrap().writes, 1);
    }
}

// ---- close, abort, shutdown, drop ----------------------------------------------------------

both! {
    fn close_hands_the_descriptor_back_and_forgets_the_socket(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[10, 20]);
        let fd_before = k.peer(h).fd;
        let (r, fd) = e.close(h).unwrap();
        assert_eq!(r.writes, 2);
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&fd), fd_before);
        assert_eq!(k.log(0).received, want);
        assert!(!k.log(0).registered);
        let err = e.send(h, payload(9, 1)).unwrap_err();
        assert!(matches!(err.error(), Error::UnknownSocket(_)));
        assert!(matches!(e.flush(h), Err(Error::UnknownSocket(_))));
        // The slot is reused under a new generation; the old id stays unknown.
        let h2 = stream(&mut e, &k);
        assert_eq!(h2.index(), h.index());
        assert!(matches!(e.close(h), Err(Error::UnknownSocket(_))));
        send_all(&mut e, h2, 10, &[5]);
        assert_eq!(e.flush(h2).unwrap().writes, 1);
    }
}

/// io_uring: abort cancels queued writes at once, cancels the op in flight and waits for it;
/// here it raced (completed short first), so the rest of its writes fail as cancelled.
#[test]
fn abort_cancels_queued_writes_and_waits_for_the_op_in_flight() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let h = stream(&mut e, &k);
    k.stall(h);
    let want = send_all(&mut e, h, 0, &[100, 100]);
    e.submit().unwrap();
    send_all(&mut e, h, 2, &[100]);
    k.set_cancel(Cancel::Races);
    k.script(h, [Verdict::Short(150)]);
    e.abort(h).unwrap();
    assert_eq!(k.log(0).received, want[..150]);
    assert_eq!(k.in_flight(), 0);
    let s = e.stats();
    assert_eq!((s.writes_sent, s.writes_failed), (1, 2));
    assert_eq!(s.failed(Status::Cancelled), 2);
    assert_eq!(e.pending_writes(), 0);
    assert!(matches!(
        e.send(h, payload(9, 1)).unwrap_err().error(),
        Error::UnknownSocket(_)
    ));
    assert!(matches!(e.abort(h), Err(Error::UnknownSocket(_))));
}

both! {
    fn abort_with_nothing_in_flight_cancels_every_queued_write(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let d = udp(&mut e, &k, Some(dest(7)), false);
        k.stall(h);
        send_all(&mut e, h, 0, &[10, 10]);
        send_all(&mut e, d, 2, &[10, 0]);
        // An empty datagram is a write like any other.
        assert_eq!((e.queued_writes(d).unwrap(), e.queued_bytes(d).unwrap()), (2, 10));
        assert_eq!(e.queued_writes(h).unwrap(), 2);
        e.abort(h).unwrap();
        e.abort(d).unwrap();
        let s = e.stats();
        assert_eq!((s.writes_sent, s.failed(Status::Cancelled)), (0, 4));
        assert!(matches!(e.queued_writes(d), Err(Error::UnknownSocket(_))));
        assert_eq!(k.in_flight(), 0);
    }
}

both! {
    /// `abort` waits for the aborted socket's ops only: another socket's queued writes are not
    /// issued by it, on either backend (fuzz_diff found io_uring's wait, which had an op to
    /// wait for, sending a neighbour's write that epoll, with nothing in flight, left queued —
    /// a later reset then failed it on one backend only).
    fn abort_issues_nothing_for_other_sockets(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let a = stream(&mut e, &k);
        let b = stream(&mut e, &k);
        // `a`: an op held (io_uring) or a write waiting for room (epoll).
        k.stall(a);
        send_all(&mut e, a, 0, &[100]);
        e.submit().unwrap();
        let want = send_all(&mut e, b, 1, &[50, 60]);
        k.unstall(a);
        e.abort(a).unwrap();
        assert!(k.peer(b).received.is_empty(), "b's writes went out during a's abort");
        assert!(k.peer(b).ops.is_empty());
        assert_eq!(e.pending_writes(), 2);
        let r = e.flush(b).unwrap();
        assert_eq!((r.writes, r.bytes, r.failed), (2, 110, 0));
        assert_eq!(k.peer(b).received, want);
        assert_eq!(k.in_flight(), 0);
    }
}

/// io_uring: datagrams put back by a retry after the cancel fail when the socket goes.
#[test]
fn abort_datagrams_with_retries_after_the_cancel() {
    let (mut e, k) = sim(Mode::Uring, no_gso());
    let d = udp(&mut e, &k, Some(dest(7)), false);
    k.stall(d);
    send_all(&mut e, d, 0, &[10, 20]);
    e.submit().unwrap();
    assert_eq!(k.held(), 2);
    k.set_cancel(Cancel::Races);
    k.script(d, [Verdict::Errno(libc::EAGAIN), Verdict::Full]);
    e.abort(d).unwrap();
    let seqs: Vec<u64> = k.log(0).datagrams.iter().map(|x| x.seq).collect();
    assert_eq!(seqs, [1]);
    let s = e.stats();
    assert_eq!((s.writes_sent, s.failed(Status::Cancelled)), (1, 1));
}

/// io_uring: a 1000-byte write held in flight, an `abort` whose cancel is never answered (it
/// times out after 10 ms, the socket left closing), then the peer drains and the op ends
/// having sent 100 bytes. Returns the engine (no timeout any more), the kernel, the stream and
/// the bytes written.
fn abort_gives_up() -> (Engine, SimHandle, SocketId, Vec<u8>) {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    e.set_flush_timeout(Some(Duration::from_millis(10)));
    let h = stream(&mut e, &k);
    let want = send_all(&mut e, h, 0, &[1000]);
    k.script(h, [Verdict::Hold, Verdict::Short(100)]);
    e.submit().unwrap();
    k.set_cancel(Cancel::Ignored);
    assert!(matches!(e.abort(h), Err(Error::FlushTimeout { .. })));
    assert_eq!(k.held(), 1, "the cancel was never answered");
    e.set_flush_timeout(None);
    k.unstall(h);
    (e, k, h, want)
}

/// io_uring: an `abort` that timed out leaves the socket closing with its op in flight; when
/// that op ends short later, the rest of its write fails as cancelled (found by `fuzz_trace`:
/// it stayed pending, and a flush without a timeout spun forever).
#[test]
fn an_op_that_ends_after_abort_gave_up_leaves_nothing_pending() {
    let (mut e, k, h, want) = abort_gives_up();
    let all = e.flush_all().unwrap();
    let r = all.socket(h).unwrap();
    assert_eq!((r.writes, r.bytes, r.failed), (0, 100, 1));
    assert_eq!(r.failed_with(Status::Cancelled), 1);
    assert_eq!(k.peer(h).received, want[..100]);
    assert_eq!(e.pending_writes(), 0);
    e.abort(h).unwrap();
    assert!(!k.log(0).registered);
}

/// An `abort` that timed out leaves the stream closing with a write cancelled: `shutdown_write`
/// is refused there (a FIN after a prefix would look like a clean end to the peer). fuzz_trace
/// found it sending the FIN after 100 of 1000 bytes.
#[test]
fn shutdown_write_is_refused_after_an_abort_gave_up() {
    let (mut e, k, h, want) = abort_gives_up();
    assert!(matches!(e.shutdown_write(h), Err(Error::UnknownSocket(_))));
    assert!(k.peer(h).shutdowns.is_empty(), "no FIN after a prefix");
    let r = e.flush_all().unwrap();
    let r = r.socket(h).unwrap();
    assert_eq!((r.bytes, r.failed_with(Status::Cancelled)), (100, 1));
    assert_eq!(k.peer(h).received, want[..100]);
    e.abort(h).unwrap();
}

both! {
    fn shutdown_write_comes_after_every_accepted_byte(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        let want = send_all(&mut e, h, 0, &[10, 20, 30]);
        let r = e.shutdown_write(h).unwrap();
        assert_eq!(r.writes, 3);
        let p = k.peer(h);
        assert_eq!(p.shutdowns, [60], "the FIN follows the last accepted byte");
        assert_eq!(p.received, want);
        // Sends after it are accepted, then fail as the kernel says: a broken pipe.
        send_all(&mut e, h, 3, &[5]);
        assert_eq!(e.flush(h).unwrap_err().status(), Some(Status::BrokenPipe));
        let d = udp(&mut e, &k, None, false);
        assert!(matches!(e.shutdown_write(d), Err(Error::WrongSocketKind { .. })));
    }
}

/// io_uring: dropping the engine cancels the ops in flight and waits for them.
#[test]
fn drop_with_ops_in_flight_cancels_and_leaves_nothing() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let h = stream(&mut e, &k);
    let d = udp(&mut e, &k, None, false);
    k.stall(h);
    k.stall(d);
    send_all(&mut e, h, 0, &[100]);
    send_to(&mut e, d, 1, 9000, 10);
    e.submit().unwrap();
    send_all(&mut e, h, 2, &[100]);
    assert_eq!(k.in_flight(), 2);
    drop(e);
    assert_eq!(k.in_flight(), 0);
    assert_eq!(k.leaked(), None);
}

/// io_uring: when cancels never complete, drop drains until its deadline (2 s, virtual) and
/// leaks the memory of what is still in flight rather than free it under the kernel.
#[test]
fn drop_whose_cancels_never_complete_leaks_after_the_deadline() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let h = stream(&mut e, &k);
    k.stall(h);
    send_all(&mut e, h, 0, &[100]);
    e.submit().unwrap();
    k.set_cancel(Cancel::Ignored);
    let t0 = k.now_ns();
    drop(e);
    assert_eq!(k.leaked(), Some(1));
    assert_eq!(k.now_ns() - t0, 2_000_000_000);
}

/// Issue #11 item 7: io_uring drops completions (`EBADR`: its CQ overflowed with no room).
/// Every op in flight is cancelled; those whose completion was lost end with `CompletionLost`
/// (a stream poisoned with it, every datagram of a lost group failed), one still held by a
/// stalled peer ends cancelled, and nothing stays pending. Before: the flush failed with
/// `Error::Io` (EBADR) and the lost ops stayed in flight for ever.
#[test]
fn dropped_completions_end_every_op_in_flight() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let h = stream(&mut e, &k);
    let d = udp(&mut e, &k, None, false);
    let stalled = stream(&mut e, &k);
    k.stall(stalled);
    send_all(&mut e, h, 0, &[100, 200]);
    for tag in 10..14 {
        send_to(&mut e, d, tag, 9000, 100);
    }
    send_all(&mut e, stalled, 20, &[50]);
    k.drop_completions();
    let all = e.flush_all().unwrap();
    assert_eq!(e.pending_writes(), 0, "nothing left pending");
    assert_eq!(e.stats().completion_losses, 1);
    let lost = e.stats().failed(Status::CompletionLost);
    assert_eq!(lost, 2 + 4, "the stream's writes and the group's datagrams");
    assert_eq!(e.stats().failed(Status::Cancelled), 1, "the stalled op");
    assert!(
        all.errors()
            .iter()
            .any(|err| err.status() == Some(Status::CompletionLost)),
        "{all:?}"
    );
    let err = e.send(h, Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(
        err.error().status(),
        Some(Status::CompletionLost),
        "poisoned"
    );
    // The engine goes on: a new socket's writes go out.
    let h2 = stream(&mut e, &k);
    let want = send_all(&mut e, h2, 30, &[10]);
    e.flush(h2).unwrap();
    assert_eq!(k.peer(h2).received, want);
}

// ---- batching ---------------------------------------------------------------------------------

/// io_uring: one `io_uring_enter` carries the pending ops of every socket.
#[test]
fn one_enter_carries_every_socket() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let ids: Vec<SocketId> = (0..3).map(|_| stream(&mut e, &k)).collect();
    let d = udp(&mut e, &k, None, false);
    for (tag, &h) in (0..).zip(&ids) {
        send_all(&mut e, h, tag, &[10, 10]);
    }
    send_to(&mut e, d, 9, 9000, 10);
    e.flush_all().unwrap();
    let s = e.stats();
    assert_eq!((s.kernel_transitions, s.batches, s.sqes), (1, 1, 4));
}

/// epoll: a socket's datagrams go in one `sendmmsg`; the part after a stop goes again, and
/// after EAGAIN only once the socket is writable.
#[test]
fn epoll_sendmmsg_sends_a_prefix_then_the_rest_once_writable() {
    let (mut e, k) = sim(Mode::Epoll, no_gso());
    let d = udp(&mut e, &k, Some(dest(7)), false);
    send_all(&mut e, d, 0, &[10, 10, 10, 10]);
    k.script(d, [Verdict::Full, Verdict::Full, Verdict::Hold]);
    e.submit().unwrap();
    let p = k.peer(d);
    assert_eq!(p.datagrams.len(), 2, "the prefix before EAGAIN");
    let flags: Vec<(u64, bool, bool, Option<i32>)> = p
        .ops
        .iter()
        .map(|o| (o.first_seq, o.stopped, o.not_issued, o.res))
        .collect();
    assert_eq!(
        flags,
        [
            (0, false, false, Some(10)),
            (1, false, false, Some(10)),
            (2, true, false, None),
            (3, false, true, None),
            (2, false, false, Some(-libc::EAGAIN)),
            (3, false, true, None),
        ]
    );
    e.submit().unwrap();
    assert_eq!(k.peer(d).ops.len(), 6, "waits for writability");
    k.unstall(d);
    assert_eq!(e.flush(d).unwrap().writes, 4);
    let seqs: Vec<u64> = k.peer(d).datagrams.iter().map(|x| x.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
}

both! {
    fn any_result_value_is_taken_without_panic(mode) {
        for res in [i32::MIN, i32::MIN + 1, -4096, -1, 0, i32::MAX] {
            let mut setup = Setup {
                mode,
                ..Setup::default()
            };
            setup.sockets.push(Kind::Udp { peer: Some(dest(7)), recverr: true });
            let mut r = Runner::new(setup);
            for sock in 0..3 {
                r.step(Step::Verdict { sock, verdict: Verdict::Raw(res) });
                r.step(Step::Send { sock, len: 10 });
                r.step(Step::SendTo { sock, port: 1, len: 10 });
            }
            r.step(Step::Submit);
            r.finish();
        }
    }
}

/// A payload whose owner records when the engine lets go of it.
struct Watched(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// io_uring: a datagram that completed behind an older one still in flight is released at
/// once (else it would outlive the queued-bytes limit).
#[test]
fn a_sent_datagram_is_released_even_behind_one_in_flight() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (mut e, k) = sim(Mode::Uring, no_gso());
    let d = udp(&mut e, &k, Some(dest(9)), false);
    k.script(d, [Verdict::Hold, Verdict::Full]);
    let released = Arc::new(AtomicBool::new(false));
    e.send(d, Bytes::from(vec![1; 100])).unwrap();
    let watched = Watched(vec![2; 100], released.clone());
    e.send(d, Bytes::from_owner(watched)).unwrap();
    e.submit().unwrap();
    assert_eq!(k.held(), 1);
    assert_eq!(e.queued_bytes(d).unwrap(), 100);
    assert!(
        released.load(Ordering::SeqCst),
        "memory beyond the queued-bytes limit"
    );
    k.unstall(d);
    assert_eq!(e.flush(d).unwrap().writes, 2);
}

// ---- random traces -------------------------------------------------------------------------

pub(super) fn random_step(rng: &mut SmallRng, diff: bool) -> Step {
    let sock = rng.gen_range(0..8);
    let port = rng.gen_range(0..4);
    let len = [0u16, 1, 7, 100, 1200, 1500, 3000][rng.gen_range(0..7)];
    match rng.gen_range(0..32) {
        0..=6 => Step::Send { sock, len },
        7..=10 => Step::SendTo { sock, port, len },
        11 => Step::Flush { sock },
        12 => Step::TryFlush { sock },
        13 => Step::FlushAll,
        14 | 15 => Step::Submit,
        16 => Step::Stall { sock },
        17 | 18 => Step::Unstall { sock },
        19 => Step::Reset {
            sock,
            errno: rng.gen(),
        },
        20 => Step::ClosePort { port },
        21 => Step::OpenPort { port },
        22 => Step::Tick {
            us: rng.gen_range(0..20_000),
        },
        23 => Step::Stale { pick: rng.gen() },
        24 => Step::Close { sock },
        25 if diff => Step::Submit,
        25 => Step::Abort { sock },
        26 if diff => Step::TryFlush { sock },
        26 => Step::NoBufs {
            sock,
            count: rng.gen(),
        },
        27 if diff => Step::Submit,
        27 => Step::Verdict {
            sock,
            verdict: Verdict::from_byte(rng.gen(), rng.gen()),
        },
        28 if diff => Step::Flush { sock },
        28 => Step::FlushTimeout {
            ms: [None, Some(0), Some(5), Some(u16::MAX)][rng.gen_range(0..4)],
        },
        29 => Step::ShutdownWrite { sock },
        30 => Step::TakePeerErrors { sock },
        _ if rng.gen_range(0..5) == 0 => Step::AddPacket,
        _ if rng.gen_range(0..4) == 0 => Step::AddStream,
        _ => Step::AddUdp {
            connected: rng.gen(),
            recverr: rng.gen(),
            port,
        },
    }
}

pub(super) fn random_cfg(rng: &mut SmallRng, limits: bool) -> SimConfig {
    let base = SimConfig {
        max_in_flight_ops: rng.gen_range(1..8),
        max_in_flight_per_socket: rng.gen_range(1..4),
        max_iovecs_per_op: rng.gen_range(1..5),
        max_bytes_per_op: rng.gen_range(1..4000),
        coalesce_below_bytes: rng.gen_range(0..600),
        coalesce_max_bytes: rng.gen_range(0..3000),
        gso: rng.gen(),
        gso_max_segments: rng.gen_range(1..6),
        gso_max_bytes: rng.gen_range(0..8000),
        nobufs_retries: rng.gen_range(0..5),
        ..SimConfig::default()
    };
    if !limits {
        return base;
    }
    SimConfig {
        max_queued_bytes_per_socket: rng.gen_range(0..20_000),
        max_queued_bytes: rng.gen_range(0..40_000),
        max_queued_writes_per_socket: rng.gen_range(1..20),
        ..base
    }
}

both! {
    fn random_traces_keep_every_invariant(mode) {
        let mut rng = SmallRng::seed_from_u64(42);
        for round in 0..120 {
            let setup = Setup {
                cfg: random_cfg(&mut rng, true),
                mode,
                seed: round,
                latency: rng.gen_range(0..3),
                reorder: rng.gen(),
                cancel: [Cancel::Cancels, Cancel::Races, Cancel::Ignored][rng.gen_range(0..3)],
                ..Setup::default()
            };
            let mut r = Runner::new(setup);
            for _ in 0..200 {
                r.step(random_step(&mut rng, false));
            }
            if rng.gen_range(0..4) == 0 {
                r.step(Step::Drop);
            }
            r.finish();
        }
    }
}

/// A deterministic kernel for 12 registrations: three cuts and three `EAGAIN`s per stream, a
/// reset (one of `resets`) on a third of them, and a fate for each of 60 datagrams per socket
/// (an errno drawn from `errnos`, up to `nobufs - 1` `ENOBUFS`, an `EAGAIN` in four).
pub(super) fn random_script(
    rng: &mut SmallRng,
    resets: &[i32],
    errnos: &[Option<i32>],
    nobufs: u8,
) -> Script {
    let mut script = Script::new();
    for reg in 0..12 {
        for _ in 0..3 {
            script.cut(reg, rng.gen_range(1..20_000));
            script.again_at(reg, rng.gen_range(0..20_000));
        }
        if rng.gen_range(0..3) == 0 {
            let errno = resets[rng.gen_range(0..resets.len())];
            script.fail_at(reg, rng.gen_range(0..20_000), errno);
        }
        for seq in 0..60 {
            let fate = Fate {
                errno: errnos[rng.gen_range(0..errnos.len())],
                nobufs: rng.gen_range(0..nobufs),
                again: rng.gen_range(0..4) == 0,
            };
            script.fate(reg, seq, fate);
        }
    }
    script
}

/// The same trace through the io_uring and the epoll model, with one deterministic kernel,
/// gives the same outcome: every call's result, the bytes each peer got, the datagrams
/// delivered, every socket's reports.
#[test]
fn uring_and_epoll_agree_on_every_trace() {
    let mut rng = SmallRng::seed_from_u64(99);
    for round in 0..120 {
        let cfg = random_cfg(&mut rng, false);
        let steps: Vec<Step> = (0..150).map(|_| random_step(&mut rng, true)).collect();
        let script = random_script(
            &mut rng,
            &[libc::ECONNRESET, libc::EPIPE],
            &[
                None,
                None,
                None,
                Some(libc::EMSGSIZE),
                Some(libc::EIO),
                Some(libc::ECONNREFUSED),
            ],
            7,
        );
        let run = |mode: Mode| -> Observed {
            let mut r = Runner::new(Setup {
                cfg: cfg.clone(),
                mode,
                behaviour: Box::new(script.clone()),
                seed: round,
                ..Setup::default()
            });
            r.run(steps.iter().copied());
            r.finish()
        };
        run(Mode::Uring).assert_same(&run(Mode::Epoll), &format!("round {round}"));
    }
}

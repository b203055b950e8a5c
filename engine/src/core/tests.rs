//! The core against the simulated kernel (`crate::sim`), which checks every step against its
//! reference model; these tests pick the situations, the sim checks the invariants.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::Status;
use crate::sim::{
    AllOk, Counts, Fate, Model, Outcome, Rejected, Replay, Script, Sim, SimConfig, Step,
    WriteOutcome,
};

const MS: u64 = 1_000_000;

fn sim() -> Sim {
    Sim::new(&SimConfig::default(), Model::Uring)
}

fn failed(c: &Counts, s: Status) -> u64 {
    c.failures[s.index()]
}

#[test]
fn random_short_counts_resume_at_the_exact_byte() {
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..300 {
        let cfg = SimConfig {
            max_iovecs_per_op: rng.gen_range(1..6),
            max_bytes_per_op: rng.gen_range(1..300),
            ..SimConfig::default()
        };
        let mut s = Sim::new(&cfg, Model::Uring);
        let streams: Vec<usize> = (0..3).map(|_| s.add_stream()).collect();
        for _ in 0..60 {
            let h = streams[rng.gen_range(0..streams.len())];
            match rng.gen_range(0..4) {
                0 | 1 => s.send(h, rng.gen_range(0..200)).unwrap(),
                2 => {
                    s.submit();
                }
                _ => {
                    if s.in_flight() > 0 {
                        let i = rng.gen_range(0..s.in_flight());
                        let len = s.op(i).bytes;
                        let res = rng.gen_range(0..=len);
                        s.complete(i, i32::try_from(res).unwrap());
                    }
                }
            }
        }
        let mut short =
            |op: &crate::sim::OpDesc| i32::try_from(rng.gen_range(0..=op.bytes.min(50))).unwrap();
        let r = s.flush_all(&mut short).unwrap();
        assert_eq!(r.failed, 0);
        s.check_final();
        for &h in &streams {
            assert_eq!(s.stream_received(h), s.stream_accepted(h));
        }
    }
}

#[test]
fn eagain_and_eintr_retry_without_teardown() {
    let mut s = sim();
    let h = s.add_stream();
    s.send(h, 100).unwrap();
    s.send(h, 50).unwrap();
    for errno in [libc::EAGAIN, libc::EINTR, 512] {
        assert_eq!(s.submit(), 1);
        s.complete(0, -errno);
        assert_eq!(s.submit(), 1, "retried at once after errno {errno}");
        s.requeue(0);
    }
    assert_eq!(s.submit(), 1);
    s.complete(0, 150);
    assert_eq!(s.flush(h, &mut AllOk).unwrap().writes, 2);
    assert_eq!(s.stream_received(h), s.stream_accepted(h));
    assert_eq!(s.stats().retries, 3);
    s.send(h, 10).unwrap();
}

#[test]
fn fatal_stream_error_poisons_and_fails_pending_writes_with_the_same_status() {
    let mut s = sim();
    let h = s.add_stream();
    for _ in 0..4 {
        s.send(h, 100).unwrap();
    }
    s.submit();
    // Partial progress, then the error on the resubmission (FAILURES.md item 2).
    s.complete(0, 150);
    s.send(h, 100).unwrap();
    s.submit();
    assert_eq!(s.op(0).offset, 150, "resumes mid-write");
    s.complete(0, -libc::ECONNRESET);
    assert_eq!(s.stream_received(h), &s.stream_accepted(h)[..150]);
    let reset = Rejected::Status(Status::ConnectionReset);
    assert_eq!(s.send(h, 1), Err(reset), "later sends fail fast");
    assert_eq!(s.flush(h, &mut AllOk), Err(reset));
    assert_eq!(s.flush(h, &mut AllOk), Err(reset), "and stay failed");
    let r = s.reported(h);
    assert_eq!((r.writes, r.failed), (1, 4));
    assert_eq!(failed(r, Status::ConnectionReset), 4);
    assert_eq!(s.submit(), 0, "nothing more goes out");
}

#[test]
fn more_than_iov_max_buffers_are_split() {
    let cfg = SimConfig {
        coalesce_below_bytes: 0,
        ..SimConfig::default()
    };
    let mut s = Sim::new(&cfg, Model::Uring);
    let h = s.add_stream();
    for _ in 0..3000 {
        s.send(h, 3).unwrap();
    }
    let mut entries = Vec::new();
    while s.pending_writes() > 0 {
        assert_eq!(s.submit(), 1);
        entries.push(s.op(0).count);
        s.complete(0, s.op(0).full());
    }
    assert_eq!(entries, [1024, 1024, 952]);
    assert_eq!(s.stream_received(h), s.stream_accepted(h));
}

#[test]
fn small_writes_are_staged_into_one_iovec() {
    // Default staging: 3000 three-byte writes go as one op with one iovec.
    let mut s = sim();
    let h = s.add_stream();
    for _ in 0..3000 {
        s.send(h, 3).unwrap();
    }
    assert_eq!(s.submit(), 1);
    let op = s.op(0);
    assert_eq!((op.count, op.iovecs, op.bytes), (3000, 1, 9000));
    s.complete(0, op.full());
    assert_eq!(s.stream_received(h), s.stream_accepted(h));

    // Mixed sizes: runs of small writes share an iovec, large ones keep their own; the iovec
    // limit counts iovecs, not writes; a short send resumes exactly, re-staging the rest.
    let cfg = SimConfig {
        coalesce_below_bytes: 100,
        max_iovecs_per_op: 4,
        ..SimConfig::default()
    };
    let mut s = Sim::new(&cfg, Model::Uring);
    let h = s.add_stream();
    for len in [10, 20, 1000, 30, 40, 2000, 50, 3000, 60] {
        s.send(h, len).unwrap();
    }
    assert_eq!(s.submit(), 1);
    let op = s.op(0);
    // [10,20] [1000] [30,40] [2000] — the fifth iovec would exceed the limit.
    assert_eq!((op.count, op.iovecs, op.bytes), (6, 4, 3100));
    s.complete(0, 1015);
    while s.pending_writes() > 0 {
        assert_eq!(s.submit(), 1);
        let op = s.op(0);
        assert!(op.iovecs <= 4);
        s.complete(0, op.full());
    }
    assert_eq!(s.stream_received(h), s.stream_accepted(h));
}

#[test]
fn barrier_covers_exactly_earlier_writes() {
    let mut s = sim();
    let h = s.add_stream();
    s.send(h, 10).unwrap();
    let b = s.barrier_target(h);
    s.barrier(h);
    s.send(h, 10).unwrap();
    s.submit();
    assert_eq!(s.op(0).bytes, 20, "coalesced");
    assert!(!s.barrier_done(h, b));
    // A short send that ends exactly after the first write resolves the barrier; the later
    // write, still unsent, does not hold it.
    s.complete(0, 10);
    assert!(s.barrier_done(h, b));
    assert!(!s.barrier_done(h, s.barrier_target(h)));

    s.flush(h, &mut AllOk).unwrap();

    // Datagrams: a later write in flight, or done first, never decides an earlier barrier.
    let d = s.add_dgram(false);
    s.send_to(d, 9000, 10).unwrap();
    let b = s.barrier_target(d);
    s.barrier(d);
    s.send_to(d, 9001, 10).unwrap();
    assert_eq!(s.submit(), 2);
    s.complete(1, 10);
    assert!(
        !s.barrier_done(d, b),
        "the later datagram is done, the earlier not"
    );
    s.complete(0, 10);
    assert!(s.barrier_done(d, b));
}

#[test]
fn barrier_resolves_on_failure_too() {
    let mut s = sim();
    let d = s.add_dgram(true);
    s.send(d, 10).unwrap();
    let b = s.barrier_target(d);
    s.submit();
    s.complete(0, -libc::ECONNREFUSED);
    assert!(s.barrier_done(d, b));
}

#[test]
fn datagram_errors_do_not_fail_neighbours() {
    let mut s = sim();
    let d = s.add_dgram(false);
    for port in [9000, 9001, 9002] {
        s.send_to(d, port, 100).unwrap();
    }
    assert_eq!(s.submit(), 3, "different destinations: no GSO");
    s.complete(1, -libc::ECONNREFUSED);
    s.complete(0, 100);
    s.complete(0, 100);
    let r = s.flush(d, &mut AllOk).unwrap();
    assert_eq!((r.writes, r.failed), (2, 1));
    assert_eq!(failed(&r, Status::ConnectionRefused), 1);
    s.send_to(d, 9001, 10).unwrap();
    assert_eq!(s.flush(d, &mut AllOk).unwrap().writes, 1, "not poisoned");
}

fn gso_group(s: &mut Sim, d: usize, lens: &[usize]) {
    for &len in lens {
        s.send_to(d, 9000, len).unwrap();
    }
    assert_eq!(s.submit(), 1);
    let op = s.op(0);
    assert_eq!((op.count, op.segment_size), (lens.len(), Some(100)));
}

#[test]
fn gso_eio_turns_gso_off_and_resends_the_same_datagrams() {
    for errno in [libc::EIO, libc::EINVAL] {
        let mut s = sim();
        let d = s.add_dgram(false);
        gso_group(&mut s, d, &[100, 100, 100, 40]);
        s.complete(0, -errno);
        assert!(!s.socket_gso(d), "GSO off after errno {errno}");
        assert_eq!(s.submit(), 4, "re-split as singles");
        assert!((0..4).all(|i| s.op(i).segment_size.is_none()));
        while s.in_flight() > 0 {
            s.complete(0, s.op(0).full());
        }
        assert_eq!(s.dgrams_received(d), s.dgrams_accepted(d));
        // Later datagrams go alone too.
        s.send_to(d, 9000, 100).unwrap();
        s.send_to(d, 9000, 100).unwrap();
        assert_eq!(s.submit(), 2);
        assert_eq!(s.stats().gso_fallbacks, 1);
    }
}

#[test]
fn gso_tolerates_more_failures_from_groups_already_in_flight() {
    let mut s = sim();
    let d = s.add_dgram(false);
    for port in [9000, 9000, 9001, 9001] {
        s.send_to(d, port, 100).unwrap();
    }
    assert_eq!(s.submit(), 2, "two groups, one per destination");
    s.complete(1, -libc::EIO);
    s.complete(0, -libc::EIO);
    assert!(!s.socket_gso(d));
    let r = s.flush(d, &mut AllOk).unwrap();
    assert_eq!(r.writes, 4);
    assert_eq!(s.dgrams_received(d).len(), 4);
}

#[test]
fn gso_group_refused_by_a_socket_error_fails_only_its_first_datagram() {
    let mut s = sim();
    let d = s.add_dgram(false);
    gso_group(&mut s, d, &[100, 100, 100]);
    s.complete(0, -libc::ECONNREFUSED);
    assert_eq!(s.submit(), 1, "the rest regrouped");
    assert_eq!(s.op(0).count, 2);
    s.complete(0, 200);
    let r = s.flush(d, &mut AllOk).unwrap();
    assert_eq!((r.writes, r.failed), (2, 1));
    assert_eq!(
        s.outcomes()[0],
        WriteOutcome::Failed(Status::ConnectionRefused)
    );
}

#[test]
fn gso_emsgsize_resplits_and_each_datagram_fails_or_sends_alone() {
    let mut s = sim();
    let d = s.add_dgram(false);
    gso_group(&mut s, d, &[100, 100, 100]);
    s.complete(0, -libc::EMSGSIZE);
    assert!(s.socket_gso(d), "EMSGSIZE keeps GSO on");
    assert_eq!(s.submit(), 3);
    s.complete(0, -libc::EMSGSIZE);
    s.complete(0, 100);
    s.complete(0, 100);
    let r = s.flush(d, &mut AllOk).unwrap();
    assert_eq!((r.writes, r.failed), (2, 1));
    assert_eq!(failed(&r, Status::MessageTooLong), 1);
    // No endless loop: a refused group becomes singles once; new datagrams still group.
    gso_group(&mut s, d, &[100, 100]);
}

#[test]
fn enobufs_backs_off_boundedly_then_drops() {
    let mut s = sim();
    let d = s.add_dgram(true);
    s.send(d, 10).unwrap();
    let start = s.now_ns();
    for delay in [1, 2, 4, 8] {
        assert_eq!(s.submit(), 1);
        s.complete(0, -libc::ENOBUFS);
        assert_eq!(s.submit(), 0, "no busy loop during the backoff");
        s.advance(delay * MS - 1);
        assert_eq!(s.submit(), 0);
        s.advance(1);
    }
    assert_eq!(s.submit(), 1);
    s.complete(0, -libc::ENOBUFS);
    assert!(s.now_ns() - start <= 16 * MS);
    let r = s.flush(d, &mut AllOk).unwrap();
    assert_eq!((r.writes, r.failed), (0, 1));
    assert_eq!(failed(&r, Status::NoBufferSpace), 1);
}

#[test]
fn enobufs_then_success_delivers_once() {
    let mut s = sim();
    let d = s.add_dgram(true);
    s.send(d, 10).unwrap();
    s.submit();
    s.complete(0, -libc::ENOBUFS);
    let r = s.flush(d, &mut AllOk).unwrap();
    assert_eq!((r.writes, r.failed), (1, 0));
    assert_eq!(s.dgrams_received(d).len(), 1);
}

#[test]
fn stale_unknown_and_duplicate_tokens_are_ignored() {
    let mut s = sim();
    let h = s.add_stream();
    let d = s.add_dgram(true);
    s.send(h, 10).unwrap();
    s.send(d, 10).unwrap();
    s.submit();
    let t = s.op(0).token;
    s.complete(0, 10);
    s.complete_token(t, 10); // duplicate
    s.complete_token(t, -libc::ECONNRESET);
    s.requeue_token(t);
    s.complete_token(u64::MAX, 0);
    s.complete_token(0xdead_0000_0007, -libc::EIO);
    s.requeue_token(12345);
    // The slot of `t` is reused under a new generation; the old token stays stale.
    s.send(h, 10).unwrap();
    s.submit();
    assert_ne!(s.op(1).token, t);
    s.complete_token(t, 10);
    assert_eq!(s.in_flight(), 2);
    s.flush_all(&mut AllOk).unwrap();
    s.check_final();
    assert_eq!(s.stream_received(h), s.stream_accepted(h));
}

#[test]
fn requeue_after_a_failed_push_sends_the_same_bytes_once() {
    let mut s = sim();
    let h = s.add_stream();
    let d = s.add_dgram(false);
    s.send(h, 30).unwrap();
    s.send_to(d, 9000, 30).unwrap();
    s.send_to(d, 9000, 30).unwrap();
    assert_eq!(s.submit(), 2);
    let mut before = [s.op(0), s.op(1)].map(|o| (o.sock, o.offset, o.first, o.bytes));
    s.requeue(1);
    s.requeue(0);
    assert_eq!(s.submit(), 2);
    let mut after = [s.op(0), s.op(1)].map(|o| (o.sock, o.offset, o.first, o.bytes));
    before.sort();
    after.sort();
    assert_eq!(before, after, "the same ops again");
    s.flush_all(&mut AllOk).unwrap();
    s.check_final();
    assert_eq!(s.dgrams_received(d), s.dgrams_accepted(d));
}

#[test]
fn backpressure_limits() {
    let cfg = SimConfig {
        max_queued_bytes_per_socket: 100,
        max_queued_bytes: 150,
        max_queued_writes_per_socket: 3,
        ..SimConfig::default()
    };
    let mut s = Sim::new(&cfg, Model::Uring);
    let a = s.add_stream();
    let b = s.add_dgram(true);
    assert_eq!(s.send(a, 101), Err(Rejected::TooLarge));
    s.send(a, 60).unwrap();
    assert_eq!(s.send(a, 60), Err(Rejected::Backpressure), "per socket");
    s.send(b, 60).unwrap();
    assert_eq!(s.send(b, 40), Err(Rejected::Backpressure), "total");
    s.send(b, 1).unwrap();
    s.send(b, 1).unwrap();
    assert_eq!(
        s.send(b, 1),
        Err(Rejected::Backpressure),
        "writes per socket"
    );
    s.flush_all(&mut AllOk).unwrap();
    s.send(a, 100).unwrap();
    s.send(b, 50).unwrap();
}

#[test]
fn in_flight_caps() {
    let cfg = SimConfig {
        max_in_flight_ops: 3,
        max_in_flight_per_socket: 2,
        gso: false,
        ..SimConfig::default()
    };
    let mut s = Sim::new(&cfg, Model::Uring);
    let d = s.add_dgram(true);
    let e = s.add_dgram(true);
    for _ in 0..5 {
        s.send(d, 10).unwrap();
        s.send(e, 10).unwrap();
    }
    assert_eq!(s.submit(), 3);
    assert_eq!(s.submit(), 0);
    s.complete(0, 10);
    assert_eq!(s.submit(), 1);
    s.flush_all(&mut AllOk).unwrap();
}

#[test]
fn abort_cancels_queued_writes_and_waits_for_the_op_in_flight() {
    let mut s = sim();
    let h = s.add_stream();
    s.send(h, 100).unwrap();
    s.send(h, 100).unwrap();
    s.submit();
    s.send(h, 100).unwrap();
    s.abort(h);
    assert_eq!(
        s.outcomes()[2],
        WriteOutcome::Failed(Status::Cancelled),
        "queued write cancelled at once"
    );
    assert_eq!(s.send(h, 1), Err(Rejected::UnknownSocket));
    // The op in flight ends short: the rest of its writes fail when the socket goes.
    s.complete(0, 150);
    assert_eq!(
        s.outcomes()[..2],
        [
            WriteOutcome::Delivered,
            WriteOutcome::Failed(Status::Cancelled)
        ]
    );
    assert_eq!(s.pending_writes(), 0);
    // The slot is reused under a new generation; the old handle stays unknown.
    let h2 = s.add_stream();
    s.send(h2, 5).unwrap();
    assert_eq!(s.send(h, 1), Err(Rejected::UnknownSocket));
    assert_eq!(s.flush(h, &mut AllOk), Err(Rejected::UnknownSocket));
    assert_eq!(s.flush(h2, &mut AllOk).unwrap().writes, 1);
}

#[test]
fn abort_datagrams_with_retries_after_the_cancel() {
    let mut s = sim();
    let d = s.add_dgram(true);
    s.send(d, 10).unwrap();
    s.send(d, 20).unwrap();
    s.submit();
    s.abort(d);
    // EAGAIN after the cancel puts datagrams back; they fail when the socket goes.
    s.complete(0, -libc::EAGAIN);
    s.complete(0, 20);
    assert_eq!(
        s.outcomes(),
        [
            WriteOutcome::Failed(Status::Cancelled),
            WriteOutcome::Delivered
        ]
    );
}

#[test]
fn shutdown_with_ops_in_flight_leaves_nothing() {
    let mut s = sim();
    let h = s.add_stream();
    let d = s.add_dgram(false);
    s.send(h, 100).unwrap();
    s.send_to(d, 9000, 10).unwrap();
    s.submit();
    s.send(h, 100).unwrap();
    s.shutdown(&mut |_: &crate::sim::OpDesc| -libc::ECANCELED);
    assert!(s.is_dead());
    assert_eq!(s.pending_writes(), 0);
}

#[test]
fn epoll_model_sendmmsg_prefix_then_requeue() {
    let cfg = SimConfig {
        gso: false,
        ..SimConfig::default()
    };
    let mut s = Sim::new(&cfg, Model::Epoll);
    let d = s.add_dgram(true);
    for _ in 0..4 {
        s.send(d, 10).unwrap();
    }
    let mut calls = 0;
    let mut k = |op: &crate::sim::OpDesc| {
        calls += 1;
        if op.first == 2 && calls < 5 {
            -libc::EAGAIN
        } else {
            op.full()
        }
    };
    s.submit_epoll(&mut k);
    assert_eq!(s.dgrams_received(d).len(), 2, "the prefix before EAGAIN");
    assert_eq!(s.submit_epoll(&mut k), 0, "waits for writability");
    let r = s.flush(d, &mut k).unwrap();
    assert_eq!(r.writes, 4);
    assert_eq!(s.dgrams_received(d), s.dgrams_accepted(d));
}

fn random_steps(rng: &mut SmallRng, n: usize, diff: bool) -> Vec<Step> {
    let mut steps = vec![
        Step::AddStream,
        Step::AddDgram { connected: false },
        Step::AddDgram { connected: true },
        Step::AddStream,
    ];
    for _ in 0..n {
        let sock = rng.gen_range(0..8);
        let len = *[0u16, 1, 7, 100, 1200, 1500, 3000]
            .get(rng.gen_range(0..7))
            .unwrap();
        let outcome = match rng.gen_range(0..6) {
            0 | 1 => Outcome::Full,
            2 => Outcome::Short(rng.gen()),
            3 => Outcome::Zero,
            4 => Outcome::Errno(rng.gen()),
            _ => Outcome::Overlong,
        };
        steps.push(match rng.gen_range(0..24) {
            0..=5 => Step::Send { sock, len },
            6..=9 => Step::SendTo {
                sock,
                port: rng.gen_range(0..2),
                len,
            },
            10 => Step::Barrier { sock },
            11 => Step::Flush { sock },
            12 => Step::FlushAll,
            13 | 14 => Step::Submit {
                max: rng.gen_range(0..3),
            },
            15..=18 => Step::Complete {
                which: rng.gen(),
                outcome: (!diff).then_some(outcome),
            },
            19 => Step::Requeue { which: rng.gen() },
            20 => Step::Stale {
                pick: rng.gen(),
                requeue: rng.gen(),
            },
            21 => Step::Advance {
                us: rng.gen_range(0..5000),
            },
            22 if diff => Step::Close { sock },
            22 => Step::Abort { sock },
            _ if rng.gen_range(0..8) == 0 => Step::AddStream,
            _ => Step::AddDgram {
                connected: rng.gen(),
            },
        });
    }
    steps
}

#[test]
fn random_traces_keep_every_invariant() {
    let mut rng = SmallRng::seed_from_u64(42);
    for round in 0..200 {
        let cfg = SimConfig {
            max_queued_bytes_per_socket: rng.gen_range(0..20_000),
            max_queued_bytes: rng.gen_range(0..40_000),
            max_queued_writes_per_socket: rng.gen_range(1..20),
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
        let mut s = Sim::new(&cfg, Model::Uring);
        s.seed(round);
        let outcomes: Vec<Outcome> = (0..16).map(|_| Outcome::Errno(rng.gen())).collect();
        let mut k = Replay::new(outcomes, 20);
        for step in random_steps(&mut rng, 300, false) {
            s.step(step, &mut k);
        }
        let _ = s.flush_all(&mut AllOk);
        s.check_final();
        s.shutdown(&mut AllOk);
    }
}

#[test]
fn uring_and_epoll_models_agree() {
    let mut rng = SmallRng::seed_from_u64(99);
    for round in 0..200 {
        let cfg = SimConfig {
            max_in_flight_ops: rng.gen_range(1..8),
            max_iovecs_per_op: rng.gen_range(1..5),
            max_bytes_per_op: rng.gen_range(1..4000),
            gso: rng.gen(),
            gso_max_segments: rng.gen_range(1..6),
            ..SimConfig::default()
        };
        let steps = random_steps(&mut rng, 200, true);
        let mut script = Script::new();
        for sock in 0..8 {
            for _ in 0..3 {
                script.cut(sock, rng.gen_range(1..20_000));
                script.again_at(sock, rng.gen_range(0..20_000));
            }
            if rng.gen_range(0..3) == 0 {
                let errno = [libc::ECONNRESET, libc::EPIPE][rng.gen_range(0..2)];
                script.fail_at(sock, rng.gen_range(0..20_000), errno);
            }
            for seq in 0..60 {
                let errno = [
                    None,
                    None,
                    None,
                    Some(libc::EMSGSIZE),
                    Some(libc::EIO),
                    Some(libc::ECONNREFUSED),
                ];
                script.fate(
                    sock,
                    seq,
                    Fate {
                        errno: errno[rng.gen_range(0..errno.len())],
                        nobufs: rng.gen_range(0..7),
                        again: rng.gen_range(0..4) == 0,
                    },
                );
            }
        }
        let run = |model: Model| {
            let mut s = Sim::new(&cfg, model);
            s.seed(round);
            let mut k = script.clone();
            let flushes: Vec<_> = steps.iter().filter_map(|&st| s.step(st, &mut k)).collect();
            let last = s.flush_all(&mut k);
            s.check_final();
            (s.observed(), flushes, last)
        };
        let (u, e) = (run(Model::Uring), run(Model::Epoll));
        assert_eq!(u.0, e.0, "round {round}: observed outcome");
        assert_eq!(u.1, e.1, "round {round}: flush results");
        assert_eq!(u.2, e.2, "round {round}: final flush_all");
    }
}

#[test]
fn any_result_value_is_taken_without_panic() {
    for res in [i32::MIN, i32::MIN + 1, -4096, -1, i32::MAX] {
        let mut s = sim();
        let h = s.add_stream();
        let d = s.add_dgram(true);
        s.send(h, 10).unwrap();
        s.send(d, 10).unwrap();
        s.submit();
        s.complete(1, res);
        s.complete(0, res);
        let _ = s.flush_all(&mut AllOk);
        s.check_final();
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

#[test]
fn a_sent_datagram_is_released_even_behind_one_in_flight() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::{Config, Core, DgramQueue, Queue};

    let mut core = Core::new(Config {
        gso: false,
        ..Config::default()
    });
    let id = core.add_socket(
        3,
        Some(crate::sim::dest(9)),
        Queue::Dgram(DgramQueue::new(false)),
    );
    let released = Arc::new(AtomicBool::new(false));
    core.send(id, bytes::Bytes::from(vec![1; 100]), None, 0)
        .unwrap();
    let watched = Watched(vec![2; 100], released.clone());
    core.send(id, bytes::Bytes::from_owner(watched), None, 0)
        .unwrap();
    let first = core.next_op().unwrap();
    let second = core.next_op().unwrap();
    core.complete(second.token, 100, 0);
    // The first is still in flight; the second is terminal and accounted as released.
    assert_eq!(core.queued_bytes(), 100);
    assert!(
        released.load(Ordering::SeqCst),
        "memory beyond the queued-bytes limit"
    );
    core.complete(first.token, 100, 0);
}

/// A core with one unconnected UDP socket (fd 3), GSO off, `IP_RECVERR` as given.
fn unconnected(recverr: bool) -> (super::Core, crate::SocketId) {
    use super::{Config, Core, DgramQueue, Queue};
    let mut core = Core::new(Config {
        gso: false,
        ..Config::default()
    });
    let id = core.add_socket(3, None, Queue::Dgram(DgramQueue::new(false)));
    core.set_recverr(id, recverr).unwrap();
    (core, id)
}

#[test]
fn stale_icmp_error_on_unconnected_recverr_socket_resends_and_reads_the_error_queue() {
    let (mut core, id) = unconnected(true);
    let (dead, live) = (crate::sim::dest(1), crate::sim::dest(2));
    core.send(id, bytes::Bytes::from_static(b"to-dead"), Some(dead), 0)
        .unwrap();
    core.send(id, bytes::Bytes::from_static(b"to-live"), Some(live), 0)
        .unwrap();
    let a = core.next_op().unwrap();
    let b = core.next_op().unwrap();
    assert_eq!((a.dest, b.dest), (Some(dead), Some(live)));
    core.complete(a.token, 7, 0);
    // The second send picked up the ICMP error about the first: nothing was sent.
    core.complete(b.token, -libc::ECONNREFUSED, 0);
    assert_eq!(core.stats.stale_error_resends, 1);
    assert_eq!(core.take_errqueue(), Some((id.index(), 3)));
    assert_eq!(core.take_errqueue(), None, "one request per socket");
    core.peer_error(id.index(), Some(dead), libc::ECONNREFUSED);
    let again = core.next_op().expect("the datagram goes again");
    assert_eq!(again.dest, Some(live));
    core.complete(again.token, 7, 0);
    let r = core.take_report(id).unwrap();
    assert_eq!((r.writes, r.failed), (2, 0), "{r:?}");
    let pe = core.take_peer_errors(id).unwrap();
    assert_eq!(pe.len(), 1);
    assert_eq!(pe[0].status(), Some(Status::ConnectionRefused));
    assert_eq!(pe[0].peer(), Some(dead));
    assert!(core.take_peer_errors(id).unwrap().is_empty());
    assert_eq!(core.stats.peer_errors, 1);
}

#[test]
fn stale_icmp_resends_are_bounded_then_the_datagram_fails() {
    let (mut core, id) = unconnected(true);
    core.send(
        id,
        bytes::Bytes::from_static(b"x"),
        Some(crate::sim::dest(5)),
        0,
    )
    .unwrap();
    let mut sends = 0;
    while let Some(p) = core.next_op() {
        sends += 1;
        core.complete(p.token, -libc::EHOSTUNREACH, 0);
        assert!(sends < 100, "resent without bound");
    }
    assert_eq!(sends, 33, "32 resends, then the error is the datagram's");
    let r = core.take_report(id).unwrap();
    assert_eq!((r.writes, r.failed), (0, 1));
    assert_eq!(r.failed_with(Status::HostUnreachable), 1, "{r:?}");
}

#[test]
fn without_recverr_an_icmp_error_fails_the_datagram_and_reads_no_error_queue() {
    let (mut core, id) = unconnected(false);
    core.send(
        id,
        bytes::Bytes::from_static(b"x"),
        Some(crate::sim::dest(5)),
        0,
    )
    .unwrap();
    let p = core.next_op().unwrap();
    core.complete(p.token, -libc::ECONNREFUSED, 0);
    assert!(core.next_op().is_none());
    assert_eq!(core.take_errqueue(), None);
    let r = core.take_report(id).unwrap();
    assert_eq!(r.failed_with(Status::ConnectionRefused), 1);
}

#[test]
fn connected_recverr_socket_fails_the_datagram_and_reads_the_error_queue() {
    use super::{Config, Core, DgramQueue, Queue};
    let mut core = Core::new(Config::default());
    let peer = crate::sim::dest(7);
    let id = core.add_socket(4, Some(peer), Queue::Dgram(DgramQueue::new(false)));
    core.set_recverr(id, true).unwrap();
    core.send(id, bytes::Bytes::from_static(b"x"), None, 0)
        .unwrap();
    let p = core.next_op().unwrap();
    core.complete(p.token, -libc::ECONNREFUSED, 0);
    assert!(
        core.next_op().is_none(),
        "a connected peer refused: no resend"
    );
    assert_eq!(core.take_errqueue(), Some((id.index(), 4)));
    let r = core.take_report(id).unwrap();
    assert_eq!(r.failed_with(Status::ConnectionRefused), 1);
}

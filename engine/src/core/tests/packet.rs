//! Packet descriptors (`Engine::register_packet`) over the simulated kernel: one write per
//! packet, never merged or split, several in flight, each packet's own outcome, poisoning when
//! the device is gone; both completion models, and their outcomes compared.

use std::collections::HashMap;

use super::*;

fn packet(e: &mut Engine, k: &SimHandle) -> SocketId {
    k.register(e, Kind::Packet)
}

/// Queues `lens` fresh packets (tags from `tag`) on `id`; returns them.
fn send_packets(e: &mut Engine, id: SocketId, tag: u64, lens: &[usize]) -> Vec<Bytes> {
    (tag..)
        .zip(lens)
        .map(|(t, &len)| {
            let b = payload(t, len);
            e.send(id, b.clone()).unwrap();
            b
        })
        .collect()
}

/// The packets the device got, in order of arrival: (sequence number, payload).
fn got(k: &SimHandle, id: SocketId) -> Vec<(u64, Bytes)> {
    k.peer(id)
        .datagrams
        .into_iter()
        .map(|d| (d.seq, d.payload))
        .collect()
}

both! {
    fn a_thousand_tiny_packets_are_a_thousand_writes(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let p = packet(&mut e, &k);
        let lens: Vec<usize> = (0..1000).map(|i| 1 + i % 7).collect();
        let sent = send_packets(&mut e, p, 0, &lens);
        let r = e.flush(p).unwrap();
        assert_eq!((r.writes, r.failed), (1000, 0));
        assert_eq!(r.bytes, lens.iter().sum::<usize>() as u64);
        let log = k.peer(p);
        assert_eq!(log.ops.len(), 1000, "one op per packet");
        assert!(
            log.ops.iter().all(|o| o.count == 1 && o.iovecs == 1 && !o.stream),
            "an op carried more than one packet"
        );
        let want: Vec<(u64, Bytes)> = (0..).zip(sent).collect();
        assert_eq!(got(&k, p), want, "every packet whole, once, in order");
        let s = e.stats();
        assert_eq!((s.writes_sent, s.sqes), (1000, 1000));
        match mode {
            // Every packet in one io_uring_enter (the in-flight cap is 1024).
            Mode::Uring => assert_eq!((s.kernel_transitions, s.batches), (1, 1)),
            // One write(2) each.
            Mode::Epoll => assert_eq!(s.kernel_transitions, 1000),
        }
    }
}

#[test]
fn several_packets_are_in_flight_at_once_within_the_caps() {
    let cfg = SimConfig {
        max_in_flight_per_socket: 4,
        ..SimConfig::default()
    };
    let (mut e, k) = sim(Mode::Uring, cfg);
    let p = packet(&mut e, &k);
    k.stall(p);
    send_packets(&mut e, p, 0, &[20; 10]);
    e.submit().unwrap();
    assert_eq!(
        k.in_flight(),
        4,
        "max_in_flight_per_socket bounds the ops in flight"
    );
    k.unstall(p);
    let r = e.flush(p).unwrap();
    assert_eq!(r.writes, 10);
    assert_eq!(k.peer(p).max_in_flight, 4);
    let seqs: Vec<u64> = got(&k, p).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
}

/// Packets queued while a chain is in flight wait for it to end (one chain per descriptor in
/// flight, so the io_uring driver's link keeps them in order), then go as the next chain.
#[test]
fn packets_queued_behind_a_chain_in_flight_wait_for_it() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let p = packet(&mut e, &k);
    k.stall(p);
    send_packets(&mut e, p, 0, &[10, 11, 12]);
    e.submit().unwrap();
    send_packets(&mut e, p, 3, &[13, 14]);
    e.submit().unwrap();
    assert_eq!(
        k.in_flight(),
        3,
        "the second submission waits for the first chain"
    );
    k.unstall(p);
    assert_eq!(e.flush(p).unwrap().writes, 5);
    let seqs: Vec<u64> = got(&k, p).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    let issued: Vec<u64> = k.peer(p).ops.iter().map(|o| o.first_seq).collect();
    assert_eq!(issued, [0, 1, 2, 3, 4]);
}

#[test]
fn packets_and_sockets_share_one_enter() {
    let (mut e, k) = sim(Mode::Uring, SimConfig::default());
    let p1 = packet(&mut e, &k);
    let p2 = packet(&mut e, &k);
    let t = stream(&mut e, &k);
    let d = udp(&mut e, &k, None, false);
    send_packets(&mut e, p1, 0, &[10, 20, 30]);
    send_packets(&mut e, p2, 10, &[10, 20]);
    send_all(&mut e, t, 20, &[10, 10]);
    send_to(&mut e, d, 30, 9000, 10);
    let all = e.flush_all().unwrap();
    assert_eq!(all.total.writes, 8);
    let s = e.stats();
    assert_eq!((s.kernel_transitions, s.batches, s.sqes), (1, 1, 7));
}

both! {
    fn a_short_write_fails_that_packet_and_the_next_ones_go(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let p = packet(&mut e, &k);
        k.script(p, [Verdict::Full, Verdict::Short(3), Verdict::Full]);
        let sent = send_packets(&mut e, p, 0, &[40, 40, 40, 40]);
        let r = e.flush(p).unwrap();
        assert_eq!((r.writes, r.failed), (3, 1));
        assert_eq!(r.failed_with(Status::ShortWrite), 1);
        assert_eq!(r.bytes, 120, "a cut packet's bytes are not counted as sent");
        let err = r.first_error.expect("the short write");
        assert_eq!(err.status(), Some(Status::ShortWrite));
        assert_eq!(err.raw_os_error(), None, "a short write has no errno");
        assert!(err.to_string().contains("short write"), "{err}");
        let seqs: Vec<(u64, Bytes)> = vec![(0, sent[0].clone()), (2, sent[2].clone()), (3, sent[3].clone())];
        assert_eq!(got(&k, p), seqs, "the cut packet is never resumed");
        assert_eq!(k.peer(p).ops.len(), 4, "never a second write for the rest");
        assert_eq!(e.stats().short_sends, 1);
        send_packets(&mut e, p, 9, &[5]);
        assert_eq!(e.flush(p).unwrap().writes, 1, "still usable");
    }
}

both! {
    fn eio_while_the_device_is_down_fails_one_packet_and_the_fd_stays_usable(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let p = packet(&mut e, &k);
        k.script(p, [Verdict::Full, Verdict::Errno(libc::EIO), Verdict::Errno(libc::EINVAL)]);
        send_packets(&mut e, p, 0, &[40, 40, 40, 40]);
        let r = e.flush(p).unwrap();
        assert_eq!((r.writes, r.failed), (2, 2));
        assert_eq!(r.failed_with(Status::InputOutput), 1);
        assert_eq!(r.failed_with(Status::InvalidInput), 1);
        let first = r.first_error.expect("EIO");
        assert_eq!((first.status(), first.raw_os_error()), (Some(Status::InputOutput), Some(libc::EIO)));
        let seqs: Vec<u64> = got(&k, p).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, [0, 3]);
        send_packets(&mut e, p, 10, &[7, 8]);
        let r = e.flush(p).unwrap();
        assert_eq!((r.writes, r.failed, r.first_error.is_none()), (2, 0, true), "not poisoned");
        let all = e.flush_all().unwrap();
        assert!(all.errors().is_empty(), "a failed packet is counted, not raised");
    }
}

both! {
    fn a_gone_device_poisons_the_fd(mode) {
        for errno in [libc::EBADFD, libc::ENODEV, libc::ENXIO, libc::EBADF] {
            // One packet in flight at a time: the rest are queued when the first fails.
            let cfg = SimConfig {
                max_in_flight_per_socket: 1,
                ..SimConfig::default()
            };
            let (mut e, k) = sim(mode, cfg);
            let p = packet(&mut e, &k);
            let other = packet(&mut e, &k);
            k.script(p, [Verdict::Full, Verdict::Errno(errno)]);
            send_packets(&mut e, p, 0, &[10, 20, 30, 40]);
            send_packets(&mut e, other, 10, &[10]);
            let err = e.flush(p).expect_err("a gone device is raised");
            assert_eq!(err.raw_os_error(), Some(errno));
            let status = Status::from_errno(errno);
            assert_eq!(err.status(), Some(status));
            if errno != libc::EBADF {
                assert_eq!(status, Status::DeviceGone);
            }
            assert_eq!(k.peer(p).ops.len(), 2, "queued packets are failed, not written");
            let st = e.stats();
            assert_eq!(st.writes_failed, 3, "the failed packet and the two queued behind it");
            assert_eq!(st.failures[status.index()], 3);
            // Later sends fail fast with the same status, the buffer handed back.
            let b = payload(99, 9);
            let refused = e.send(p, b.clone()).expect_err("poisoned");
            assert_eq!(refused.error().raw_os_error(), Some(errno));
            assert_eq!(refused.into_inner(), b);
            assert_eq!(e.flush(p).expect_err("still poisoned").status(), Some(status));
            let all = e.flush_all().unwrap();
            assert_eq!(all.errors().len(), 1);
            assert_eq!(all.errors()[0].status(), Some(status));
            assert_eq!(all.socket(other).unwrap().writes, 1, "the other fd is untouched");
            let err = e.close(p).expect_err("close raises it too");
            assert_eq!(err.status(), Some(status));
            assert!(
                matches!(e.send(p, payload(1, 1)), Err(ref r) if matches!(r.error(), Error::UnknownSocket(_))),
                "closed all the same"
            );
        }
    }
}

both! {
    fn send_to_is_the_wrong_kind_and_limits_hand_the_buffer_back(mode) {
        let cfg = SimConfig {
            max_queued_writes_per_socket: 2,
            ..SimConfig::default()
        };
        let (mut e, k) = sim(mode, cfg);
        let p = packet(&mut e, &k);
        let b = payload(1, 10);
        let refused = e.send_to(p, b.clone(), dest(9000)).expect_err("send_to on a packet fd");
        assert!(matches!(refused.error(), Error::WrongSocketKind { .. }), "{refused}");
        assert_eq!(refused.into_inner(), b);
        send_packets(&mut e, p, 2, &[10, 10]);
        let refused = e.send(p, b.clone()).expect_err("queue full");
        assert!(matches!(
            refused.error(),
            Error::Backpressure { limit: Limit::QueuedWritesPerSocket, .. }
        ));
        assert_eq!(refused.into_inner(), b);
        assert_eq!(e.flush(p).unwrap().writes, 2);
        e.send(p, b).unwrap();
        assert_eq!(e.flush(p).unwrap().writes, 1);
        assert!(matches!(e.socket_gso(p), Err(Error::WrongSocketKind { .. })));
        assert!(matches!(e.shutdown_write(p), Err(Error::WrongSocketKind { .. })));
    }
}

both! {
    fn eagain_and_eintr_retry_the_same_packet(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let p = packet(&mut e, &k);
        k.script(p, [Verdict::Errno(libc::EINTR), Verdict::Errno(libc::EAGAIN)]);
        let sent = send_packets(&mut e, p, 0, &[30, 31, 32]);
        let r = e.flush(p).unwrap();
        assert_eq!((r.writes, r.failed), (3, 0));
        let mut all = got(&k, p);
        all.sort();
        assert_eq!(all, (0..).zip(sent).collect::<Vec<_>>(), "each packet once");
        assert!(e.stats().retries >= 2);
    }
}

both! {
    fn abort_fails_queued_packets_as_cancelled_and_close_hands_the_fd_back(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let p = packet(&mut e, &k);
        send_packets(&mut e, p, 0, &[10, 10, 10]);
        e.abort(p).unwrap();
        assert_eq!(e.stats().failures[Status::Cancelled.index()], 3);
        assert_eq!(e.pending_writes(), 0);
        let q = packet(&mut e, &k);
        send_packets(&mut e, q, 5, &[10, 10]);
        let (r, _fd) = e.close(q).unwrap();
        assert_eq!(r.writes, 2);
        assert!(matches!(e.send(q, payload(0, 1)), Err(ref r) if matches!(r.error(), Error::UnknownSocket(_))));
    }
}

// Any result value, however absurd, ends the packet (sent or failed), never a panic, never
// a hang.
both! {
    fn any_result_ends_the_packet(mode) {
        for res in [i32::MIN, -4096, -1, 0, 5, 10, 11, i32::MAX] {
            let (mut e, k) = sim(mode, SimConfig::default());
            let p = packet(&mut e, &k);
            k.script(p, [Verdict::Raw(res)]);
            send_packets(&mut e, p, 0, &[10]);
            let r = match e.flush(p) {
                Ok(r) => r,
                // A negative value that means "the device is gone" (EBADF is 9) poisons.
                Err(err) => {
                    assert!(Status::is_fd_gone(res.wrapping_neg()), "{res}: {err}");
                    continue;
                }
            };
            assert_eq!(r.writes + r.failed, 1, "{res}");
            assert_eq!(r.writes == 1, res == 10, "{res}: only the full length is sent");
        }
    }
}

/// The same packets with the same per-packet fates (decided by sequence number, not by the
/// order ops reach the kernel) end the same on io_uring and epoll: the same counts per status,
/// the same packets delivered. Order may differ only around EAGAIN (a retried packet may end
/// up behind later ones on io_uring), so delivery is compared as a set when one occurred.
#[test]
fn uring_and_epoll_agree_on_packet_outcomes() {
    let mut rng = SmallRng::seed_from_u64(0x7a11);
    for round in 0..40 {
        let n = rng.gen_range(1..200);
        let lens: Vec<usize> = (0..n).map(|_| rng.gen_range(0..300)).collect();
        let fates: Vec<Verdict> = (0..n)
            .map(|_| match rng.gen_range(0..12) {
                0 => Verdict::Errno(libc::EIO),
                1 => Verdict::Errno(libc::EINVAL),
                2 => Verdict::Errno(libc::EMSGSIZE),
                3 => Verdict::Short(rng.gen_range(0..4)),
                4 => Verdict::Errno(libc::EAGAIN),
                5 => Verdict::Errno(libc::EINTR),
                _ => Verdict::Full,
            })
            .collect();
        let flushes: Vec<usize> = (0..n).filter(|_| rng.gen_range(0..8) == 0).collect();
        let in_flight = rng.gen_range(1..8);
        let run = |mode: Mode| {
            let fates = fates.clone();
            let mut tries: HashMap<u64, u32> = HashMap::new();
            let kernel = SimKernel::with_behaviour(
                mode,
                Box::new(FnBehaviour(move |op: &OpView<'_>| {
                    let t = tries.entry(op.first_seq).or_default();
                    *t += 1;
                    match fates[usize::try_from(op.first_seq).unwrap()] {
                        // A retry is decided once: the packet goes on the next try.
                        Verdict::Errno(libc::EAGAIN | libc::EINTR) if *t > 1 => Verdict::Full,
                        v => v,
                    }
                })),
            );
            let k = kernel.handle();
            let cfg = SimConfig {
                max_in_flight_per_socket: in_flight,
                ..SimConfig::default()
            };
            let mut e = Engine::with_sim(cfg, kernel);
            let p = packet(&mut e, &k);
            let mut counts = Vec::new();
            for (i, &len) in lens.iter().enumerate() {
                e.send(p, payload(i as u64, len)).unwrap();
                if flushes.contains(&i) {
                    counts.push(crate::sim::Counts::of(&e.flush(p).unwrap()));
                }
            }
            counts.push(crate::sim::Counts::of(&e.flush(p).unwrap()));
            let total: crate::sim::Counts = counts.iter().fold(Default::default(), |mut a, c| {
                a.add(c);
                a
            });
            (counts, total, got(&k, p))
        };
        let (cu, tu, mut du) = run(Mode::Uring);
        let (ce, te, mut de) = run(Mode::Epoll);
        assert_eq!(tu, te, "round {round}: totals");
        assert_eq!(tu.ended(), n as u64, "round {round}: every packet ended");
        let eagain = fates.contains(&Verdict::Errno(libc::EAGAIN));
        if !eagain {
            assert_eq!(cu, ce, "round {round}: per-flush reports");
            assert_eq!(du, de, "round {round}: delivery, in order");
            assert!(
                du.windows(2).all(|w| w[0].0 < w[1].0),
                "round {round}: in order"
            );
        }
        du.sort();
        de.sort();
        assert_eq!(du, de, "round {round}: the packets delivered");
        let want: Vec<u64> = (0..n)
            .filter(|&s| {
                matches!(
                    fates[s],
                    Verdict::Full | Verdict::Errno(libc::EAGAIN | libc::EINTR)
                ) || matches!(fates[s], Verdict::Short(c) if c >= lens[s])
            })
            .map(|s| s as u64)
            .collect();
        let delivered: Vec<u64> = du.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            delivered, want,
            "round {round}: exactly the packets that went whole"
        );
    }
}

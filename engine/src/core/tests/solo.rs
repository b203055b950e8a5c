//! The solo flush (`core/solo.rs`) over the simulated kernel: a lone op goes out directly
//! (`OpRecord::solo`) and its report is exact; anything else it meets (a short write, EAGAIN,
//! a held op, an error, a stale ICMP error) ends as the general path would end it — checked
//! against the same calls with `solo_flush` off, and over random traces.

use super::*;

fn solo_off(cfg: SimConfig) -> SimConfig {
    SimConfig {
        solo_flush: false,
        ..cfg
    }
}

/// Which of the socket's ops went out through the solo path, in order.
fn solos(k: &SimHandle, id: SocketId) -> Vec<bool> {
    k.peer(id).ops.iter().map(|o| o.solo).collect()
}

/// A flush's report, comparable.
fn counts(r: &Result<crate::FlushReport, Error>) -> Result<(u64, u64, u64), Option<Status>> {
    match r {
        Ok(r) => Ok((r.writes, r.bytes, r.failed)),
        Err(e) => Err(e.status()),
    }
}

both! {
    fn a_lone_buffer_goes_out_directly_with_an_exact_report(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let h = stream(&mut e, &k);
        // Three small writes: one staging chunk, sent from where it lies.
        let want = send_all(&mut e, h, 0, &[10, 0, 30]);
        let before = e.stats().clone();
        let r = e.flush(h).unwrap();
        assert_eq!((r.writes, r.bytes, r.failed), (3, 40, 0));
        assert_eq!(k.peer(h).received, want);
        assert_eq!(solos(&k, h), [true]);
        let s = e.stats();
        assert_eq!(s.kernel_transitions - before.kernel_transitions, 1, "one send(2)");
        assert_eq!((s.batches - before.batches, s.sqes - before.sqes), (1, 1));
        assert_eq!((s.writes_sent, s.bytes_sent), (3, 40));
        // The simulated engine samples every write: the chunk's first one is timed.
        assert_eq!(s.write_latency_ns.len(), 1);
        assert_eq!(e.queued_bytes(h).unwrap(), 0);
        assert_eq!(e.pending_writes(), 0);
        // The chunk's memory takes the next writes; one big write alone is an entry.
        let more = send_all(&mut e, h, 3, &[5]);
        assert_eq!(e.flush(h).unwrap().writes, 1);
        let big = send_all(&mut e, h, 4, &[4000]);
        let r = e.flush(h).unwrap();
        assert_eq!((r.writes, r.bytes), (1, 4000));
        assert_eq!(solos(&k, h), [true, true, true]);
        assert_eq!(k.peer(h).received, [want, more, big].concat());
        // An entry and staged writes behind it are two buffers: the general path.
        let two = send_all(&mut e, h, 5, &[4000, 7]);
        assert_eq!(e.flush(h).unwrap().writes, 2);
        assert_eq!(solos(&k, h), [true, true, true, false]);
        assert_eq!(k.peer(h).received.len(), 40 + 5 + 4000 + 4007);
        assert!(k.peer(h).received.ends_with(&two));
        // Nothing queued: a flush reports nothing and sends nothing.
        let r = e.flush(h).unwrap();
        assert_eq!((r.writes, r.bytes), (0, 0));
        assert_eq!(k.peer(h).ops.len(), 4);
    }
}

both! {
    fn a_lone_datagram_goes_out_directly(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let c = udp(&mut e, &k, Some(dest(7)), true);
        let u = udp(&mut e, &k, None, true);
        let b = payload(1, 172);
        e.send(c, b.clone()).unwrap();
        let r = e.flush(c).unwrap();
        assert_eq!((r.writes, r.bytes, r.failed), (1, 172, 0));
        let to = send_to(&mut e, u, 2, 9, 100);
        let r = e.flush(u).unwrap();
        assert_eq!((r.writes, r.bytes, r.failed), (1, 100, 0));
        assert_eq!(solos(&k, c), [true]);
        assert_eq!(solos(&k, u), [true]);
        let got = k.peer(u).datagrams;
        assert_eq!((got[0].seq, got[0].dest, &got[0].payload), (0, Some(dest(9)), &to));
        assert_eq!(k.peer(c).datagrams[0].payload, b);
        // Two datagrams: the general path (a GSO group, or two ops).
        e.send(c, payload(3, 172)).unwrap();
        e.send(c, payload(4, 172)).unwrap();
        assert_eq!(e.flush(c).unwrap().writes, 2);
        assert!(!k.peer(c).ops[1].solo);
        assert_eq!(e.stats().writes_sent, 4);
    }
}

both! {
    fn nothing_goes_direct_while_anything_is_in_flight_or_waiting(mode) {
        let (mut e, k) = sim(mode, SimConfig::default());
        let a = stream(&mut e, &k);
        let b = stream(&mut e, &k);
        // Another socket ready too: the general path issues both.
        send_all(&mut e, a, 0, &[10]);
        send_all(&mut e, b, 1, &[10]);
        e.flush(a).unwrap();
        assert_eq!(solos(&k, a), [false]);
        e.flush(b).unwrap();
        // `b`'s op went out with `a`'s (both ready in one round).
        assert_eq!(solos(&k, b), [false]);
        // A stalled peer (io_uring: the op held in flight; epoll: EAGAIN, watched): `a`'s
        // write is pending, so `b`'s flush takes the general path on both backends, whose wait
        // also finishes `a` once its peer drains (fuzz_diff found epoll's solo send leaving
        // `a`'s writability event for a later call: `try_flush(a)` was still pending there and
        // resolved on io_uring).
        k.stall(a);
        send_all(&mut e, a, 2, &[10]);
        e.submit().unwrap();
        send_all(&mut e, b, 3, &[10]);
        k.unstall(a);
        e.flush(b).unwrap();
        assert_eq!(solos(&k, b), [false, false], "a write pending on another socket");
        let r = e.try_flush(a).unwrap().expect("a's write went out during b's flush");
        assert_eq!((r.writes, r.bytes), (1, 10));
        assert_eq!(k.peer(a).received.len(), 20);
        // Nothing pending anywhere: direct again.
        send_all(&mut e, b, 4, &[10]);
        e.flush(b).unwrap();
        assert_eq!(solos(&k, b), [false, false, true]);
    }
}

/// Runs `calls` on a fresh engine with the solo path on and off; both must return the same
/// reports and errors, and the peers must get the same bytes and datagrams.
fn same_as_general(mode: Mode, cfg: SimConfig, calls: impl Fn(&mut Engine, &SimHandle, bool)) {
    let run = |cfg: SimConfig, solo: bool| {
        let (mut e, k) = sim(mode, cfg);
        calls(&mut e, &k, solo);
        let peers: Vec<_> = (0..k.registrations())
            .map(|r| {
                let l = k.log(r);
                (l.received, l.datagrams)
            })
            .collect();
        let s = e.stats();
        (
            peers,
            s.writes_sent,
            s.bytes_sent,
            s.writes_failed,
            s.failures,
        )
    };
    assert_eq!(run(cfg.clone(), true), run(solo_off(cfg), false));
}

both! {
    fn a_short_write_resumes_at_the_exact_byte(mode) {
        same_as_general(mode, SimConfig::default(), |e, k, solo| {
            let h = stream(e, k);
            k.script(h, [Verdict::Short(7), Verdict::Short(0), Verdict::Short(5000)]);
            let want = send_all(e, h, 0, &[3, 10, 20]);
            let r = e.flush(h);
            assert_eq!(counts(&r), Ok((3, 33, 0)));
            assert_eq!(k.peer(h).received, want);
            if solo {
                let ops = k.peer(h).ops;
                assert!(ops[0].solo && ops[0].res == Some(7), "{ops:?}");
                assert!(ops[1..].iter().all(|o| !o.solo));
                assert_eq!(e.stats().short_sends, 2);
            }
            // A big write alone, cut short twice.
            k.script(h, [Verdict::Short(1000), Verdict::Short(1)]);
            let big = send_all(e, h, 3, &[5000]);
            assert_eq!(counts(&e.flush(h)), Ok((1, 5000, 0)));
            assert!(k.peer(h).received.ends_with(&big));
        });
    }
}

both! {
    fn eagain_and_a_held_op_end_as_on_the_general_path(mode) {
        same_as_general(mode, SimConfig::default(), |e, k, _| {
            let h = stream(e, k);
            let d = udp(e, k, Some(dest(3)), false);
            k.script(h, [Verdict::Errno(libc::EAGAIN), Verdict::Hold]);
            let want = send_all(e, h, 0, &[100]);
            k.stall(d);
            e.send(d, payload(1, 50)).unwrap();
            e.submit().unwrap();
            k.unstall(d);
            assert_eq!(counts(&e.flush(d)), Ok((1, 50, 0)));
            // EAGAIN, then an op held until the peer reads again (idle release).
            k.set_idle(crate::sim::Idle::Release);
            assert_eq!(counts(&e.flush(h)), Ok((1, 100, 0)));
            assert_eq!(k.peer(h).received, want);
        });
    }
}

both! {
    fn a_reset_fails_and_poisons_as_on_the_general_path(mode) {
        same_as_general(mode, SimConfig::default(), |e, k, solo| {
            let h = stream(e, k);
            send_all(e, h, 0, &[10]);
            assert_eq!(counts(&e.flush(h)), Ok((1, 10, 0)));
            k.reset(h, libc::ECONNRESET);
            send_all(e, h, 1, &[10, 20]);
            let r = e.flush(h);
            assert_eq!(counts(&r), Err(Some(Status::ConnectionReset)));
            let e2 = r.unwrap_err();
            assert!(matches!(e2, Error::Socket { errno: libc::ECONNRESET, socket, .. } if socket == h));
            if solo {
                assert_eq!(solos(k, h), [true, true]);
            }
            // Poisoned: later sends and flushes fail the same way.
            let refused = e.send(h, payload(9, 5)).unwrap_err();
            assert_eq!(refused.error().status(), Some(Status::ConnectionReset));
            assert_eq!(counts(&e.flush(h)), Err(Some(Status::ConnectionReset)));
            let all = e.flush_all().unwrap();
            assert_eq!(all.errors().len(), 1);
        });
    }
}

both! {
    fn a_datagram_error_is_counted_as_on_the_general_path(mode) {
        same_as_general(mode, SimConfig::default(), |e, k, _| {
            // Connected: the ICMP answer to the first datagram is the second one's pending
            // error; the second goes again (it was not sent), then the third meets its own.
            let c = udp(e, k, Some(dest(5)), false);
            k.close_port(dest(5));
            for i in 0..3 {
                e.send(c, payload(i, 20)).unwrap();
                let r = e.flush(c).unwrap();
                assert_eq!((r.writes + r.failed, r.bytes % 20), (1, 0), "datagram {i}");
            }
            // With IP_RECVERR on an unconnected socket, and an error of the datagram's own.
            let u = udp(e, k, None, true);
            send_to(e, u, 10, 6, 30);
            let r = e.flush(u).unwrap();
            assert_eq!((r.writes, r.failed), (1, 0));
            k.script(u, [Verdict::Errno(libc::EMSGSIZE)]);
            send_to(e, u, 11, 6, 30);
            let r = e.flush(u).unwrap();
            assert_eq!((r.writes, r.failed), (0, 1));
            assert_eq!(r.failed_with(Status::MessageTooLong), 1);
            assert_eq!(e.take_peer_errors(c).unwrap().len(), 0);
        });
    }
}

both! {
    fn the_solo_path_agrees_with_the_general_path_on_every_trace(mode) {
        let mut rng = SmallRng::seed_from_u64(1414);
        let mut solo_ops = [0usize; 2];
        for round in 0..80 {
            let cfg = random_cfg(&mut rng, false);
            // Mostly one write then its flush (the solo case), among the usual random steps.
            let mut steps = Vec::new();
            while steps.len() < 200 {
                if rng.gen_range(0..3) == 0 {
                    steps.push(random_step(&mut rng, true));
                    continue;
                }
                let sock = rng.gen_range(0..8);
                let len = [0u16, 1, 7, 100, 600, 1200, 3000][rng.gen_range(0..7)];
                steps.push(match rng.gen_range(0..3) {
                    0 => Step::SendTo { sock, port: rng.gen_range(0..4), len },
                    _ => Step::Send { sock, len },
                });
                steps.push(Step::Flush { sock });
            }
            let script = random_script(
                &mut rng,
                &[libc::ECONNRESET],
                &[None, None, None, Some(libc::EMSGSIZE), Some(libc::ECONNREFUSED)],
                4,
            );
            let run = |cfg: SimConfig, tally: &mut [usize; 2]| -> Observed {
                let mut r = Runner::new(Setup {
                    cfg,
                    mode,
                    behaviour: Box::new(script.clone()),
                    seed: round,
                    ..Setup::default()
                });
                r.run(steps.iter().copied());
                let k = r.kernel();
                for reg in 0..k.registrations() {
                    for op in k.log(reg).ops.iter().filter(|o| o.solo) {
                        let whole = op.res.is_some_and(|n| n >= 0 && (!op.stream || n as usize == op.bytes));
                        tally[usize::from(!whole)] += 1;
                    }
                }
                r.finish()
            };
            let on = run(cfg.clone(), &mut solo_ops);
            let off = run(solo_off(cfg), &mut [0; 2]);
            on.assert_same(&off, &format!("round {round}"));
        }
        // The traces reach the solo path, and the general path after it.
        let [whole, other] = solo_ops;
        assert!(whole > 300 && other > 300, "solo ops: {whole} whole, {other} otherwise");
    }
}

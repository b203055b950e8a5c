//! UDP system tests on real loopback sockets, on both backends (DESIGN.md invariant 3, FAILURES.md
//! items 10–17 and 32): every datagram arrives whole or fails alone, GSO on and off (and its kill
//! switch), the GSO boundary table, one batch to many ports, refused ports, oversized datagrams.
//!
//! Receivers are independent sockets on their own threads (`DgramSink`), with `SO_RCVTIMEO` set so a
//! lost datagram ends the wait instead of hanging; every engine has a flush timeout as a hang guard.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use volley::{Bytes, Engine, FlushReport, SocketId, Status};
use volley_tests::*;

/// How long a receiver waits for the next datagram before it decides none is coming.
const IDLE: Duration = Duration::from_millis(1500);

const V4: &str = "127.0.0.1:0";
const V6: &str = "[::1]:0";

/// Kernel GSO support as the engine sees it; `false` prints a SKIP line for the GSO-on checks.
/// The tests in this file run one at a time: two of them send to ports where nothing listens
/// (`closed_udp_port`), and a port closed by one test can be handed to another test's receiver by
/// the kernel's ephemeral allocator, which would then see foreign datagrams.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gso_supported(e: &Engine, ctx: &str) -> bool {
    if !e.gso_enabled() {
        eprintln!("SKIP: {ctx}: the kernel has no UDP GSO (UDP_SEGMENT); GSO-on checks skipped");
        return false;
    }
    true
}

/// Runs of equal sizes (so GSO has groups to make), some ended by a shorter datagram, sizes
/// log-uniform in `1..=max`.
fn mixed_sizes(seed: u64, n: usize, max: usize) -> Vec<usize> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 80);
    while out.len() < n {
        let size = random_sizes(rng.gen(), 1, max)[0];
        let run = *[1usize, 2, 3, 7, 40, 64, 70]
            .get(rng.gen_range(0..7))
            .expect("index in range");
        out.extend(std::iter::repeat_n(size, run));
        if size > 1 && rng.gen_bool(0.4) {
            out.push(rng.gen_range(1..size));
        }
    }
    out
}

fn check_clean(r: &FlushReport, sent: &[Bytes], ctx: &str) {
    let bytes: usize = sent.iter().map(Bytes::len).sum();
    assert_eq!(
        (r.writes, r.failed, r.bytes),
        (sent.len() as u64, 0, bytes as u64),
        "{ctx}: report (writes, failed, bytes); failures {:?}, first error {:?}",
        r.failures_by_status().collect::<Vec<_>>(),
        r.first_error
    );
}

/// Invariant 3 end to end: random sizes, IPv4 and IPv6, connected (`send`) and unconnected
/// (`send_to`), GSO on and off; `gso_sends` moves only with GSO on.
#[test]
fn datagrams_arrive_whole_v4_v6_gso_on_off() {
    let _serial = serial();
    let mut seed = 0;
    for b in BACKENDS {
        for bind in [V4, V6] {
            for gso in [true, false] {
                for connected in [true, false] {
                    seed += 1;
                    let ctx = format!(
                        "{b:?} {bind} gso={gso} {}",
                        if connected { "send" } else { "send_to" }
                    );
                    let sizes = mixed_sizes(seed, 300, if seed % 2 == 0 { 1472 } else { 9000 });
                    let sent: Vec<Bytes> = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| dgram(seed << 32 | i as u64, n))
                        .collect();
                    let sink = DgramSink::start(bind, sent.len(), IDLE);
                    let mut e = udp_engine(b, gso);
                    let check_gso = gso && gso_supported(&e, &ctx);
                    if !gso {
                        assert!(!e.gso_enabled(), "{ctx}: gso(false) left GSO enabled");
                    }
                    let id = if connected {
                        e.register_udp(udp_connected(sink.addr)).unwrap()
                    } else {
                        e.register_udp(UdpSocket::bind(unspecified(sink.addr)).unwrap())
                            .unwrap()
                    };
                    for d in &sent {
                        if connected {
                            e.send(id, d.clone()).unwrap();
                        } else {
                            e.send_to(id, d.clone(), sink.addr).unwrap();
                        }
                    }
                    let r = e
                        .flush(id)
                        .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                    check_clean(&r, &sent, &ctx);
                    assert_same_datagrams(&sink.finish(), &sent, &ctx);
                    let st = e.stats();
                    if check_gso {
                        assert!(st.gso_sends > 0, "{ctx}: GSO on but stats.gso_sends == 0");
                        assert!(e.socket_gso(id).unwrap(), "{ctx}: socket GSO turned off");
                    }
                    if !gso {
                        assert_eq!(st.gso_sends, 0, "{ctx}: GSO off but stats.gso_sends > 0");
                        assert!(!e.socket_gso(id).unwrap(), "{ctx}: socket_gso with GSO off");
                    }
                    assert_eq!(st.gso_fallbacks, 0, "{ctx}: GSO fallback on loopback");
                    assert_eq!(
                        st.writes_sent,
                        sent.len() as u64,
                        "{ctx}: stats.writes_sent"
                    );
                }
            }
        }
    }
}

/// One row of the GSO boundary table (FAILURES.md item 15).
struct Case {
    name: &'static str,
    sizes: Vec<usize>,
    /// GSO sends the engine should make with GSO on (0 with it off).
    gso_sends: u64,
    /// Datagrams that must fail with `MessageTooLong` (the rest must arrive).
    too_long: u64,
}

fn boundary_table() -> Vec<Case> {
    let rep = |n: usize, s: usize| std::iter::repeat_n(s, n).collect::<Vec<_>>();
    let cat = |a: Vec<usize>, b: &[usize]| a.into_iter().chain(b.iter().copied()).collect();
    vec![
        Case {
            name: "1 B",
            sizes: vec![1],
            gso_sends: 0,
            too_long: 0,
        },
        Case {
            name: "two 1 B (segment size 1)",
            sizes: vec![1, 1],
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "zero-length datagrams go alone",
            sizes: vec![0, 0, 5, 0],
            gso_sends: 0,
            too_long: 0,
        },
        Case {
            name: "MSS 1472 alone",
            sizes: vec![1472],
            gso_sends: 0,
            too_long: 0,
        },
        Case {
            name: "MSS+1 alone",
            sizes: vec![1473],
            gso_sends: 0,
            too_long: 0,
        },
        Case {
            name: "2 MSS + 1 (last shorter)",
            sizes: vec![1472, 1472, 1],
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "last segment shorter",
            sizes: vec![1000, 1000, 1000, 999],
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "larger after a shorter last starts a new op",
            sizes: vec![1000, 999, 1000],
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "64 segments",
            sizes: rep(64, 1000),
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "65 segments (64 + 1 alone)",
            sizes: rep(65, 1000),
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "128 segments",
            sizes: rep(128, 500),
            gso_sends: 2,
            too_long: 0,
        },
        Case {
            name: "1-byte segments x200",
            sizes: rep(200, 1),
            gso_sends: 4,
            too_long: 0,
        },
        Case {
            name: "max bytes: 59 x 1100 + 607 = 65507 in one group",
            sizes: cat(rep(59, 1100), &[607]),
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "max bytes + 1: 59 x 1100 + 608 (the 608 goes alone)",
            sizes: cat(rep(59, 1100), &[608]),
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "byte cap: 64 x 1200 (54 + 10)",
            sizes: rep(64, 1200),
            gso_sends: 2,
            too_long: 0,
        },
        Case {
            name: "two 32000-byte segments",
            sizes: rep(2, 32_000),
            gso_sends: 1,
            too_long: 0,
        },
        Case {
            name: "largest IPv4 datagram 65507",
            sizes: vec![65_507],
            gso_sends: 0,
            too_long: 0,
        },
        Case {
            name: "65508 alone fails, neighbours arrive",
            sizes: vec![100, 65_508, 100],
            gso_sends: 0,
            too_long: 1,
        },
    ]
}

/// The GSO boundary table on IPv4 loopback, GSO on and off: exact sizes and bytes at the receiver,
/// exactly the expected number of GSO sends, and only the impossible datagram failing.
#[test]
fn gso_boundary_table() {
    let _serial = serial();
    for b in BACKENDS {
        for gso in [true, false] {
            for (k, case) in boundary_table().into_iter().enumerate() {
                let ctx = format!("{b:?} gso={gso} [{}]", case.name);
                let sent: Vec<Bytes> = case
                    .sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| dgram((k as u64) << 32 | i as u64, n))
                    .collect();
                let want: Vec<Bytes> = sent.iter().filter(|d| d.len() <= 65_507).cloned().collect();
                let sink = DgramSink::start(V4, want.len(), IDLE);
                let mut e = udp_engine(b, gso);
                let check_gso = gso && gso_supported(&e, &ctx);
                let id = e.register_udp(udp_connected(sink.addr)).unwrap();
                for d in &sent {
                    e.send(id, d.clone()).unwrap();
                }
                let r = e
                    .flush(id)
                    .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                assert_eq!(
                    (r.writes, r.failed, r.failed_with(Status::MessageTooLong)),
                    (want.len() as u64, case.too_long, case.too_long),
                    "{ctx}: report (writes, failed, too long); failures {:?}",
                    r.failures_by_status().collect::<Vec<_>>()
                );
                let got = sink.finish();
                assert_same_datagrams(&got, &want, &ctx);
                let expect_gso = if check_gso { case.gso_sends } else { 0 };
                if gso && !check_gso {
                    continue;
                }
                assert_eq!(e.stats().gso_sends, expect_gso, "{ctx}: stats.gso_sends");
                assert_eq!(e.stats().gso_fallbacks, 0, "{ctx}: stats.gso_fallbacks");
            }
        }
    }
}

/// `VOLLEY_GSO=0` turns GSO off for engines that do not ask explicitly; `gso(true)` still wins.
/// Environment variables are process-wide, so each setting runs in a re-exec'd child.
#[test]
fn gso_env_kill_switch() {
    let _serial = serial();
    if is_child() {
        let want = std::env::var("VOLLEY_GSO").expect("VOLLEY_GSO set by the parent") != "0";
        for b in BACKENDS {
            let ctx = format!("{b:?} VOLLEY_GSO={}", std::env::var("VOLLEY_GSO").unwrap());
            let mut e = builder(b).build().expect("engine builds");
            if want && !gso_supported(&e, &ctx) {
                continue;
            }
            assert_eq!(
                e.gso_enabled(),
                want,
                "{ctx}: gso_enabled() with the default"
            );
            let sent: Vec<Bytes> = (0..40).map(|i| dgram(i, 1000)).collect();
            let sink = DgramSink::start(V4, sent.len(), IDLE);
            let id = e.register_udp(udp_connected(sink.addr)).unwrap();
            assert_eq!(e.socket_gso(id).unwrap(), want, "{ctx}: socket_gso");
            for d in &sent {
                e.send(id, d.clone()).unwrap();
            }
            check_clean(&e.flush(id).unwrap(), &sent, &ctx);
            assert_same_datagrams(&sink.finish(), &sent, &ctx);
            assert_eq!(e.stats().gso_sends > 0, want, "{ctx}: stats.gso_sends > 0");
            // An explicit builder call wins over the environment, both ways.
            let on = builder(b).gso(true).build().unwrap();
            assert!(
                on.gso_enabled(),
                "{ctx}: gso(true) must win over the environment"
            );
            let off = builder(b).gso(false).build().unwrap();
            assert!(
                !off.gso_enabled(),
                "{ctx}: gso(false) must win over the environment"
            );
            eprintln!("child ok: {ctx}");
        }
        return;
    }
    for v in ["0", "1"] {
        let out = run_child("gso_env_kill_switch", &[("VOLLEY_GSO", v)]);
        assert_child_passed(&out, &format!("VOLLEY_GSO={v}"));
    }
}

/// One batch from one unconnected socket to 64 receivers on 64 ports (FAILURES.md item 16): each
/// receives exactly its own datagrams, from one flush, in few kernel transitions.
#[test]
fn one_batch_to_64_ports() {
    let _serial = serial();
    const PORTS: usize = 64;
    const PER_PORT: usize = 6;
    for b in BACKENDS {
        for gso in [true, false] {
            let ctx = format!("{b:?} gso={gso}");
            let sinks: Vec<DgramSink> = (0..PORTS)
                .map(|_| DgramSink::start(V4, PER_PORT, IDLE))
                .collect();
            let mut e = udp_engine(b, gso);
            let id = e
                .register_udp(UdpSocket::bind(V4).expect("bind sender"))
                .unwrap();
            let mut per_port: Vec<Vec<Bytes>> = vec![Vec::new(); PORTS];
            // Interleaved: consecutive datagrams never share a destination, so every op needs
            // its own msghdr and address.
            for round in 0..PER_PORT / 2 {
                for (p, sink) in sinks.iter().enumerate() {
                    let d = dgram((p * 1000 + round) as u64, 40 + p);
                    e.send_to(id, d.clone(), sink.addr).unwrap();
                    per_port[p].push(d);
                }
            }
            // Then runs per destination, which GSO may group.
            for (p, sink) in sinks.iter().enumerate() {
                for round in PER_PORT / 2..PER_PORT {
                    let d = dgram((p * 1000 + round) as u64, 300);
                    e.send_to(id, d.clone(), sink.addr).unwrap();
                    per_port[p].push(d);
                }
            }
            let before = e.stats().clone();
            let r = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            let all: Vec<Bytes> = per_port.iter().flatten().cloned().collect();
            check_clean(&r, &all, &ctx);
            let transitions = e.stats().kernel_transitions - before.kernel_transitions;
            let batches = e.stats().batches - before.batches;
            eprintln!(
                "{ctx}: {} datagrams to {PORTS} ports: {transitions} kernel transitions, {batches} \
                 batches, {} ops",
                all.len(),
                e.stats().sqes - before.sqes
            );
            // One io_uring_enter (or one sendmmsg) carries the whole batch; allow a little slack
            // for a completion that needs a second wait, never one per datagram or per port.
            assert!(
                transitions <= 4,
                "{ctx}: the flush took {transitions} kernel transitions for {} datagrams",
                all.len()
            );
            for (p, (sink, want)) in sinks.into_iter().zip(&per_port).enumerate() {
                assert_same_datagrams(&sink.finish(), want, &format!("{ctx} port #{p}"));
            }
        }
    }
}

fn send_n(e: &mut Engine, id: SocketId, tag: u64, n: usize, len: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let d = dgram(tag << 16 | i as u64, len);
            e.send(id, d.clone()).unwrap();
            d
        })
        .collect()
}

/// A connected socket to a port where nothing listens (FAILURES.md items 11, 32): every datagram
/// leaves (a port-unreachable ICMP comes back about it later), so every flush reports each
/// datagram sent — exactly, on both backends: a send that picks up the pending error of an
/// earlier datagram is sent again instead of failing an innocent datagram. The ICMP errors are
/// read from the error queue as peer errors naming the closed port. Flush never hangs, and once a
/// receiver binds that port every later datagram arrives.
#[test]
fn closed_port_reported_as_peer_errors_then_usable() {
    let _serial = serial();
    for b in BACKENDS {
        for bind in [V4, V6] {
            for gso in [true, false] {
                let ctx = format!("{b:?} {bind} gso={gso}");
                let dead = closed_udp_port(bind);
                let mut e = udp_engine(b, gso);
                let id = e.register_udp(udp_connected(dead)).unwrap();
                let mut total = 0;
                for round in 0..5 {
                    let sent = send_n(
                        &mut e,
                        id,
                        1 + round,
                        1 + usize::try_from(round).unwrap() * 3,
                        100,
                    );
                    total += sent.len() as u64;
                    let r = e
                        .flush(id)
                        .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                    assert_eq!(r.writes, sent.len() as u64, "{ctx}: every datagram left");
                    assert_eq!(r.failed, 0, "{ctx}: no datagram fails for another's ICMP");
                }
                assert_eq!(e.stats().writes_sent, total, "{ctx}: writes sent");
                // IP_RECVERR (the default): the error queue was read when the error surfaced,
                // and its entries name the closed port.
                let pe = e.take_peer_errors(id).unwrap();
                assert!(
                    !pe.is_empty(),
                    "{ctx}: no peer error read from the error queue"
                );
                for p in &pe {
                    assert_eq!(p.status(), Some(Status::ConnectionRefused), "{ctx}: {p}");
                    assert_eq!(p.peer(), Some(dead), "{ctx}: {p}");
                }
                // Now a receiver on that very port: the socket still works, and every datagram
                // arrives (a last stale ICMP error is consumed by a resend, not by a datagram).
                let sink = DgramSink::start(&dead.to_string(), 16, Duration::from_millis(500));
                let first = send_n(&mut e, id, 100, 8, 200);
                let r1 = e
                    .flush(id)
                    .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                check_clean(&r1, &first, &format!("{ctx} (first batch after binding)"));
                let second = send_n(&mut e, id, 101, 8, 300);
                let r2 = e
                    .flush(id)
                    .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                check_clean(&r2, &second, &format!("{ctx} (after the receiver bound)"));
                let mut want = first.clone();
                want.extend(second.iter().cloned());
                assert_same_datagrams(&sink.finish(), &want, &format!("{ctx} after binding"));
            }
        }
    }
}

/// EMSGSIZE fails one datagram alone (invariant 3): a 70000-byte datagram between neighbours of
/// the same batch (some of them in GSO groups) fails with `MessageTooLong`, the others arrive.
#[test]
fn oversized_datagram_fails_alone() {
    let _serial = serial();
    for b in BACKENDS {
        for bind in [V4, V6] {
            for gso in [true, false] {
                let ctx = format!("{b:?} {bind} gso={gso}");
                let sizes = [1000, 1000, 1000, 70_000, 1000, 1000, 70_000, 5, 1000];
                let sent: Vec<Bytes> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| dgram(i as u64, n))
                    .collect();
                let want: Vec<Bytes> = sent.iter().filter(|d| d.len() < 70_000).cloned().collect();
                let sink = DgramSink::start(bind, want.len(), IDLE);
                let mut e = udp_engine(b, gso);
                let id = e.register_udp(udp_connected(sink.addr)).unwrap();
                for d in &sent {
                    e.send(id, d.clone()).unwrap();
                }
                let r = e
                    .flush(id)
                    .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                assert_eq!(
                    (r.writes, r.failed, r.failed_with(Status::MessageTooLong)),
                    (want.len() as u64, 2, 2),
                    "{ctx}: report (writes, failed, too long): {:?}",
                    r.failures_by_status().collect::<Vec<_>>()
                );
                match &r.first_error {
                    Some(volley::Error::Socket { status, errno, .. }) => {
                        assert_eq!(
                            (*status, *errno),
                            (Status::MessageTooLong, libc::EMSGSIZE),
                            "{ctx}: first error"
                        );
                    }
                    other => panic!("{ctx}: first error {other:?}"),
                }
                assert_same_datagrams(&sink.finish(), &want, &ctx);
            }
        }
    }
}

/// A mix of live and dead destinations in one batch through one unconnected socket (FAILURES.md
/// items 10, 11, 12): the live ones all arrive, the report accounts for every datagram, flush
/// returns, no datagram fails. With `IP_RECVERR` (the default) the kernel's ICMP port
/// unreachable errors come back as peer errors naming only dead destinations, and a send that
/// picked up such an error about an earlier datagram is sent again, not failed; without it the
/// kernel reports nothing for an unconnected socket.
#[test]
fn live_and_dead_destinations_in_one_batch() {
    let _serial = serial();
    for b in BACKENDS {
        for bind in [V4, V6] {
            for (gso, recverr) in [(true, true), (false, true), (true, false), (false, false)] {
                let ctx = format!("{b:?} {bind} gso={gso} recverr={recverr}");
                // 30 each, and one more for #0 after the batch (a sink that expected 30 could
                // stop lingering before that one arrived on a busy machine).
                let live: Vec<DgramSink> = (0..4)
                    .map(|k| DgramSink::start(bind, 30 + usize::from(k == 0), IDLE))
                    .collect();
                let dead: Vec<SocketAddr> = (0..4).map(|_| closed_udp_port(bind)).collect();
                let mut e = builder(b).gso(gso).udp_recverr(recverr).build().unwrap();
                let id = e
                    .register_udp(UdpSocket::bind(unspecified(live[0].addr)).unwrap())
                    .unwrap();
                let mut want: Vec<Vec<Bytes>> = vec![Vec::new(); live.len()];
                let mut total = 0u64;
                for round in 0..3u64 {
                    for k in 0..live.len() {
                        // Runs of 5 per destination (GSO groups), live and dead alternating,
                        // and single datagrams alternating.
                        for i in 0..5u64 {
                            let d = dgram(round << 40 | (k as u64) << 20 | i, 600);
                            e.send_to(id, d.clone(), live[k].addr).unwrap();
                            want[k].push(d);
                        }
                        for i in 0..5u64 {
                            let x = dgram(1 << 60 | round << 40 | (k as u64) << 20 | i, 600);
                            e.send_to(id, x, dead[k]).unwrap();
                        }
                        for (i, len) in (5..10u64).zip(105..) {
                            let d = dgram(round << 40 | (k as u64) << 20 | i, len);
                            e.send_to(id, d.clone(), live[k].addr).unwrap();
                            want[k].push(d);
                            let x = dgram(1 << 60 | round << 40 | (k as u64) << 20 | i, 100);
                            e.send_to(id, x, dead[k]).unwrap();
                        }
                        total += 20;
                    }
                }
                let r = e
                    .flush(id)
                    .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
                assert_eq!(r.writes + r.failed, total, "{ctx}: writes + failed == sent");
                assert_eq!(r.failed, 0, "{ctx}: a datagram failed: {r:?}");
                // Loopback ICMP is synchronous, but give a late one a moment, then let one more
                // datagram to a live peer pick up anything still pending.
                std::thread::sleep(Duration::from_millis(20));
                let d = dgram(7 << 56, 64);
                e.send_to(id, d.clone(), live[0].addr).unwrap();
                want[0].push(d);
                let r = e.flush(id).unwrap();
                assert_eq!(
                    (r.writes, r.failed),
                    (1, 0),
                    "{ctx}: after the batch: {r:?}"
                );
                let peer_errors = e.take_peer_errors(id).unwrap();
                let st = e.stats();
                if recverr {
                    assert!(!peer_errors.is_empty(), "{ctx}: no ICMP error reported");
                    for pe in &peer_errors {
                        assert_eq!(pe.status(), Some(Status::ConnectionRefused), "{ctx}: {pe}");
                        let at = pe.peer().expect("a peer error names its destination");
                        assert!(dead.contains(&at), "{ctx}: {at} is not a dead destination");
                    }
                    assert_eq!(st.peer_errors, peer_errors.len() as u64, "{ctx}");
                } else {
                    assert!(peer_errors.is_empty(), "{ctx}: {peer_errors:?}");
                    assert_eq!(st.stale_error_resends, 0, "{ctx}");
                }
                for (k, (sink, want)) in live.into_iter().zip(&want).enumerate() {
                    assert_same_datagrams(&sink.finish(), want, &format!("{ctx} live #{k}"));
                }
            }
        }
    }
}

/// FAILURES.md items 14 and 17, on loopback: when the kernel refuses GSO for a socket (`EINVAL`;
/// injected with a zero UDP checksum, see `refuse_gso`), the engine turns GSO off for that socket,
/// resends every refused group as single datagrams (all arrive, none fails), tolerates the other
/// groups already in flight failing the same way, and never tries GSO on that socket again.
/// Other sockets of the same engine keep GSO.
#[test]
fn gso_refused_turns_gso_off_for_the_socket() {
    let _serial = serial();
    for b in BACKENDS {
        for bind in [V4, V6] {
            let ctx = format!("{b:?} {bind} GSO refused (EINVAL)");
            // 4 GSO groups: 64 x 1000, 64 x 1000, 20 x 1200 + 700, 3 x 100 (the 5 goes alone).
            let sizes: Vec<usize> = std::iter::repeat_n(1000, 128)
                .chain(std::iter::repeat_n(1200, 20))
                .chain([700, 5, 100, 100, 100])
                .collect();
            let first: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| dgram(1 << 32 | i as u64, n))
                .collect();
            let second: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| dgram(2 << 32 | i as u64, n))
                .collect();
            let rx = UdpSocket::bind(bind).unwrap();
            if bind == V6 {
                accept_no_check6(&rx);
            }
            let sink = DgramSink::start_socket(rx, first.len() + second.len(), IDLE);
            let control_sink = DgramSink::start(bind, 10, IDLE);
            let mut e = udp_engine(b, true);
            if !gso_supported(&e, &ctx) {
                continue;
            }
            let tx = udp_connected(sink.addr);
            refuse_gso(&tx);
            let id = e.register_udp(tx).unwrap();
            let control = e.register_udp(udp_connected(control_sink.addr)).unwrap();
            assert!(
                e.socket_gso(id).unwrap(),
                "{ctx}: GSO on before the failure"
            );
            for d in &first {
                e.send(id, d.clone()).unwrap();
            }
            let r = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            check_clean(&r, &first, &ctx);
            let st = e.stats().clone();
            // io_uring: the 4 groups are in flight together and each is refused once. epoll:
            // the sendmmsg stops at the first refused group; the core turns GSO off and plans
            // the rest as single datagrams.
            let fallbacks = if e.backend() == volley::BackendKind::Uring {
                4
            } else {
                1
            };
            assert_eq!(
                st.gso_fallbacks, fallbacks,
                "{ctx}: every refused group falls back once"
            );
            assert_eq!(st.gso_sends, 0, "{ctx}: a refused GSO send counted as sent");
            assert!(
                !e.socket_gso(id).unwrap(),
                "{ctx}: GSO still on for the socket"
            );
            for d in &second {
                e.send(id, d.clone()).unwrap();
            }
            let r2 = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            check_clean(&r2, &second, &format!("{ctx} second batch"));
            assert_eq!(
                e.stats().gso_fallbacks,
                fallbacks,
                "{ctx}: GSO tried again after it was turned off"
            );
            assert_eq!(
                e.stats().sqes - st.sqes,
                second.len() as u64,
                "{ctx}: second batch: one op per datagram"
            );
            let all: Vec<Bytes> = first.iter().chain(&second).cloned().collect();
            assert_same_datagrams(&sink.finish(), &all, &ctx);
            // The engine's other socket still uses GSO.
            assert!(
                e.socket_gso(control).unwrap(),
                "{ctx}: GSO off for another socket"
            );
            let ctl: Vec<Bytes> = (0..10).map(|i| dgram(3 << 32 | i, 500)).collect();
            for d in &ctl {
                e.send(control, d.clone()).unwrap();
            }
            check_clean(&e.flush(control).unwrap(), &ctl, &ctx);
            assert_eq!(e.stats().gso_sends, 1, "{ctx}: the other socket's group");
            assert_same_datagrams(&control_sink.finish(), &ctl, &format!("{ctx} other socket"));
        }
    }
}

// ---- issue #11: errors read right ------------------------------------------------------------

per_backend!(local_emsgsize_leaves_nothing_on_the_error_queue);

/// A datagram of 65 508 B to 127.0.0.1 fails locally with `EMSGSIZE`; with `IP_RECVERR` (the
/// default) the kernel also queues an entry of local origin on the socket's error queue
/// (`ip_local_error`). The engine must drain it right away: left there, 4000 of them fill the
/// receive buffer of the socket (a relay receiving on it then loses incoming datagrams) and
/// surface later as "peer errors" naming `127.0.0.1:0`. Before the fix: 1 of the 10 incoming
/// datagrams arrived, and peer errors named port 0.
fn local_emsgsize_leaves_nothing_on_the_error_queue(b: volley::Backend) {
    let _serial = serial();
    let ctx = format!("{b:?}");
    let relay = UdpSocket::bind(V4).unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let rx = relay.try_clone().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let target = UdpSocket::bind(V4).unwrap();
    let mut e = engine(b);
    let id = e.register_udp(relay).unwrap();
    let big = Bytes::from(vec![7u8; 65_508]);
    for round in 0..8 {
        for _ in 0..500 {
            e.send_to(id, big.clone(), target.local_addr().unwrap())
                .unwrap();
        }
        let r = e.flush(id).unwrap();
        assert_eq!(
            (r.writes, r.failed_with(Status::MessageTooLong)),
            (0, 500),
            "{ctx} round {round}: {r:?}"
        );
    }
    let peer = UdpSocket::bind(V4).unwrap();
    for i in 0..10u64 {
        peer.send_to(&dgram(i, 100), relay_addr).unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while got < 10 && rx.recv(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(
        got, 10,
        "{ctx}: incoming datagrams received on the same socket"
    );
    // An ICMP error makes the engine read the error queue: only it is a peer error.
    let closed = closed_udp_port(V4);
    for tag in 0..3 {
        e.send_to(id, dgram(100 + tag, 10), closed).unwrap();
        e.flush(id).unwrap();
    }
    let pe = e.take_peer_errors(id).unwrap();
    for err in &pe {
        assert_eq!(err.peer(), Some(closed), "{ctx}: peer error {err}");
    }
    assert_eq!(e.stats().peer_errors, pe.len() as u64, "{ctx}");
}

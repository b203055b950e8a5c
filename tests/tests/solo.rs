//! One message per flush on real loopback sockets, on both backends: the flush's solo path
//! (`EngineBuilder::solo_flush`; `send(2)`/`sendto(2)` of the socket's one buffer, nothing in
//! flight) delivers exactly, reports exactly, resumes a short write at the exact byte, and ends
//! a reset stream or a refused datagram exactly as the general path does (the same calls with
//! `solo_flush(false)` give the same reports, errors and peer errors).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use volley::{Backend, Engine, Error, FlushReport, Status};
use volley_tests::*;

per_backend!(
    one_message_per_flush_arrives_exactly,
    one_datagram_per_flush_arrives_exactly,
    a_short_write_is_resumed_at_the_exact_byte,
    a_reset_peer_fails_the_flush_as_on_the_general_path,
    a_refused_datagram_is_reported_as_on_the_general_path,
);

/// Tests that send to ports where nothing listens run one at a time (see `udp.rs`: a closed port
/// may be handed to another test's receiver).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn solo_engine(b: Backend, solo: bool) -> Engine {
    builder(b).solo_flush(solo).build().expect("engine")
}

/// A flush's report or error, comparable across engines.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Report {
        writes: u64,
        bytes: u64,
        failed: u64,
        by_status: Vec<(Status, u64)>,
        peer_errors: u64,
    },
    Raised(Option<Status>, Option<i32>),
}

fn seen(r: &Result<FlushReport, Error>) -> Seen {
    match r {
        Ok(r) => Seen::Report {
            writes: r.writes,
            bytes: r.bytes,
            failed: r.failed,
            by_status: r.failures_by_status().collect(),
            peer_errors: r.peer_errors,
        },
        Err(e) => Seen::Raised(e.status(), e.raw_os_error()),
    }
}

fn one_message_per_flush_arrives_exactly(b: Backend) {
    let sink = TcpSink::start();
    let mut e = solo_engine(b, true);
    let id = e.register_tcp(sink.connect()).expect("register");
    let sizes = random_sizes(5, 2000, 3000);
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let data = payload(i as u64, len);
        sent.extend_from_slice(&data);
        if i % 2 == 0 {
            e.send(id, Bytes::from(data)).expect("send");
        } else {
            // Through a StreamWriter: its chunk is the one buffer.
            let mut w = e.writer(id).expect("writer");
            w.write(&data).expect("write");
        }
        let r = e
            .flush(id)
            .unwrap_or_else(|err| panic!("{b:?}: flush {i}: {err}"));
        assert_eq!(
            (r.writes, r.bytes, r.failed),
            (1, len as u64, 0),
            "{b:?}: report of message {i}"
        );
    }
    let s = e.stats();
    let n = sizes.len() as u64;
    assert_eq!(
        (s.writes_sent, s.bytes_sent),
        (n, sent.len() as u64),
        "{b:?}"
    );
    // A reader that keeps up never leaves a send to block: every flush sent its message
    // itself, with one system call.
    assert_eq!(s.solo_sends, n, "{b:?}: solo sends");
    assert_eq!(
        (s.kernel_transitions, s.sqes),
        (n, n),
        "{b:?}: one send(2) per flush"
    );
    drop(e.close(id).expect("close"));
    assert_bytes_eq(&sink.finish(), &sent, &format!("{b:?}"));
}

fn one_datagram_per_flush_arrives_exactly(b: Backend) {
    const N: usize = 300;
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let ctx = format!("{b:?} {bind}");
        let to_connected = DgramSink::start(bind, N, Duration::from_millis(1500));
        let to_unconnected = DgramSink::start(bind, N, Duration::from_millis(1500));
        let mut e = solo_engine(b, true);
        let c = e
            .register_udp(udp_connected(to_connected.addr))
            .expect("register");
        let u = e
            .register_udp(std::net::UdpSocket::bind(unspecified(to_unconnected.addr)).unwrap())
            .expect("register");
        let (mut sent_c, mut sent_u) = (Vec::new(), Vec::new());
        for i in 0..N {
            let len = 1 + (i * 37) % 1400;
            let d = dgram(i as u64, len);
            e.send(c, d.clone()).expect("send");
            check_one(&e.flush(c), len, &ctx);
            sent_c.push(d);
            let d = dgram(10_000 + i as u64, len);
            e.send_to(u, d.clone(), to_unconnected.addr)
                .expect("send_to");
            check_one(&e.flush(u), len, &ctx);
            sent_u.push(d);
        }
        assert_eq!(e.stats().solo_sends, 2 * N as u64, "{ctx}: solo sends");
        assert_same_datagrams(&to_connected.finish(), &sent_c, &format!("{ctx} connected"));
        assert_same_datagrams(&to_unconnected.finish(), &sent_u, &format!("{ctx} send_to"));
    }
}

fn check_one(r: &Result<FlushReport, Error>, len: usize, ctx: &str) {
    let r = r
        .as_ref()
        .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
    assert_eq!((r.writes, r.bytes, r.failed), (1, len as u64, 0), "{ctx}");
}

/// A small send buffer and a receiver that does not read yet: the message's direct send takes
/// part of it; the general path sends the rest, waiting for room, from the exact byte.
fn a_short_write_is_resumed_at_the_exact_byte(b: Backend) {
    for solo in [true, false] {
        let ctx = format!("{b:?} solo={solo}");
        let (sink, gate) = TcpSink::start_gated(Some(4096));
        let s = sink.connect();
        set_sndbuf(&s, 4096);
        let mut e = solo_engine(b, solo);
        let id = e.register_tcp(s).expect("register");
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gate.open();
        });
        let mut sent = Vec::new();
        let mut reports = Vec::new();
        for (i, len) in [1 << 20, 100, 300_000, 5].into_iter().enumerate() {
            let data = payload(77 + i as u64, len);
            sent.extend_from_slice(&data);
            e.send(id, Bytes::from(data)).expect("send");
            reports.push(seen(&e.flush(id)));
        }
        opener.join().expect("gate thread");
        let st = e.stats();
        assert!(st.short_sends > 0, "{ctx}: the send was cut short");
        if solo {
            assert!(
                st.solo_sends > 0,
                "{ctx}: the first message went out directly"
            );
        }
        drop(e.close(id).expect("close"));
        assert_bytes_eq(&sink.finish(), &sent, &ctx);
        for (i, (r, len)) in reports.iter().zip([1 << 20, 100, 300_000, 5]).enumerate() {
            let want = Seen::Report {
                writes: 1,
                bytes: len,
                failed: 0,
                by_status: Vec::new(),
                peer_errors: 0,
            };
            assert_eq!(r, &want, "{ctx}: message {i}");
        }
    }
}

/// The peer resets the connection (`SO_LINGER` 0, then close): the next message's flush fails
/// with the reset — the same error, socket and peer as on the general path — and the stream is
/// poisoned the same way.
fn a_reset_peer_fails_the_flush_as_on_the_general_path(b: Backend) {
    let run = |solo: bool| {
        let (client, server) = tcp_pair();
        let peer = client.peer_addr().ok();
        let mut e = solo_engine(b, solo);
        let id = e.register_tcp(client).expect("register");
        let mut out = Vec::new();
        e.send(id, Bytes::from_static(b"hello")).expect("send");
        out.push(seen(&e.flush(id)));
        reset(server);
        e.send(id, Bytes::from_static(b"after the reset"))
            .expect("send");
        let r = e.flush(id);
        if let Err(Error::Socket {
            socket, peer: p, ..
        }) = &r
        {
            assert_eq!(
                (*socket, *p),
                (id, peer),
                "{b:?} solo={solo}: the error names them"
            );
        }
        out.push(seen(&r));
        let refused = e.send(id, Bytes::from_static(b"late")).unwrap_err();
        out.push(Seen::Raised(
            refused.error().status(),
            refused.error().raw_os_error(),
        ));
        out.push(seen(&e.flush(id)));
        out.push(Seen::Raised(
            e.flush_all()
                .expect("flush_all")
                .errors()
                .first()
                .and_then(Error::status),
            None,
        ));
        (out, e.stats().solo_sends)
    };
    let (with, solos) = run(true);
    let (without, none) = run(false);
    assert_eq!(
        with, without,
        "{b:?}: the solo path ends as the general path"
    );
    assert_eq!((solos, none), (2, 0), "{b:?}: solo sends");
    assert!(
        matches!(
            with[1],
            Seen::Raised(Some(Status::ConnectionReset | Status::BrokenPipe), _)
        ),
        "{b:?}: {:?}",
        with[1]
    );
}

/// Resets the connection from the peer's end: `SO_LINGER` 0, then close (an RST, at once on
/// loopback).
fn reset(server: TcpStream) {
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(server);
}

/// A connected UDP socket to a port where nothing listens: each datagram leaves, and the ICMP
/// port unreachable it draws is the next send's pending `ECONNREFUSED` — which the direct send
/// meets first. The general path applies it (the datagram was not sent: it goes again), so
/// every flush reports what the general path reports, peer errors included, with `IP_RECVERR`
/// on and off.
fn a_refused_datagram_is_reported_as_on_the_general_path(b: Backend) {
    let _serial = serial();
    for recverr in [true, false] {
        let dead = closed_udp_port("127.0.0.1:0");
        let run = |solo: bool| {
            let mut e = builder(b)
                .solo_flush(solo)
                .udp_recverr(recverr)
                .build()
                .expect("engine");
            let id = e.register_udp(udp_connected(dead)).expect("register");
            let mut out = Vec::new();
            for (tag, len) in (0..6).zip(64..) {
                e.send(id, dgram(tag, len)).expect("send");
                out.push(seen(&e.flush(id)));
            }
            let peer_errors: Vec<Option<SocketAddr>> = e
                .take_peer_errors(id)
                .expect("peer errors")
                .iter()
                .map(Error::peer)
                .collect();
            let s = e.stats();
            let counts = (s.writes_sent, s.writes_failed, s.stale_error_resends);
            (out, peer_errors, counts, s.solo_sends)
        };
        let with = run(true);
        let without = run(false);
        let ctx = format!("{b:?} recverr={recverr}");
        assert_eq!(
            (&with.0, &with.1, with.2),
            (&without.0, &without.1, without.2),
            "{ctx}: the solo path ends as the general path"
        );
        assert!(with.3 > 0 && without.3 == 0, "{ctx}: solo sends {}", with.3);
        // Every datagram left (none fails for the ICMP answer to another); those that met a
        // pending error went again.
        let (sent, failed, resent) = with.2;
        assert_eq!((sent, failed), (6, 0), "{ctx}: sent, failed");
        assert!(resent > 0, "{ctx}: a direct send met the pending error");
        if recverr {
            assert!(!with.1.is_empty(), "{ctx}: peer errors read");
            assert!(
                with.1.iter().all(|p| *p == Some(dead)),
                "{ctx}: {:?}",
                with.1
            );
        }
    }
}

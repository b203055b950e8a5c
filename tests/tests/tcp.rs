//! The TCP stream path on real loopback sockets, on both backends (FAILURES.md A, D 29, E 31).
//!
//! Every test sends through the engine, compares the bytes that arrive with the bytes sent, and
//! names the backend in its assertion messages.

use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use volley::{Error, FlushReport, Limit};
use volley_tests::*;

/// Sums flush reports, so a test can check that they account for every write sent.
#[derive(Default)]
struct Tally {
    writes: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, r: &FlushReport) {
        assert_eq!(r.failed, 0, "a flush reported failures: {r:?}");
        self.writes += r.writes;
        self.bytes += r.bytes;
    }
}

/// Random sizes 1 B … 64 KiB over three sockets, with flush(id), flush_all and submit() mixed in
/// at random points; the flush reports add up to exactly what was sent (item 31, invariant 4).
#[test]
fn random_sizes_random_flush_points() {
    const SOCKETS: usize = 3;
    for b in BACKENDS {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7cb1);
        let sinks: Vec<TcpSink> = (0..SOCKETS).map(|_| TcpSink::start()).collect();
        let mut e = builder(b).build().expect("engine");
        let ids: Vec<_> = sinks
            .iter()
            .map(|s| e.register_tcp(s.connect()).expect("register"))
            .collect();
        let sizes = random_sizes(11, 1500, 64 * 1024);
        let mut sent = vec![Vec::new(); SOCKETS];
        let mut tally = Tally::default();
        let (mut flushes, mut flush_alls, mut submits) = (0, 0, 0);
        for (i, &len) in sizes.iter().enumerate() {
            let k = rng.gen_range(0..SOCKETS);
            let data = payload(i as u64, len);
            sent[k].extend_from_slice(&data);
            e.send(ids[k], Bytes::from(data)).expect("send");
            match rng.gen_range(0..100) {
                0..=3 => {
                    let r = e.flush(ids[rng.gen_range(0..SOCKETS)]).expect("flush");
                    tally.add(&r);
                    flushes += 1;
                }
                4..=5 => {
                    let r = e
                        .flush_all()
                        .and_then(volley::FlushAllReport::into_result)
                        .expect("flush_all");
                    tally.add(&r);
                    flush_alls += 1;
                }
                6..=11 => {
                    e.submit().expect("submit");
                    submits += 1;
                }
                _ => {}
            }
        }
        tally.add(
            &e.flush_all()
                .and_then(volley::FlushAllReport::into_result)
                .expect("final flush_all"),
        );
        assert!(
            flushes > 0 && flush_alls > 0 && submits > 0,
            "{b:?}: the seed exercises every kind of flush point"
        );
        let total: usize = sizes.iter().sum();
        assert_eq!(tally.writes, sizes.len() as u64, "{b:?}: reported writes");
        assert_eq!(tally.bytes, total as u64, "{b:?}: reported bytes");
        assert_eq!(e.stats().writes_sent, sizes.len() as u64, "{b:?}: stats");
        assert_eq!(e.stats().bytes_sent, total as u64, "{b:?}: stats bytes");
        assert_eq!(e.pending_writes(), 0, "{b:?}: nothing pending");
        for id in ids {
            let (_, fd) = e.close(id).expect("close");
            drop(fd);
        }
        for (k, s) in sinks.into_iter().enumerate() {
            assert_bytes_eq(&s.finish(), &sent[k], &format!("{b:?} socket {k}"));
        }
    }
}

/// Short sends: small SO_SNDBUF/SO_RCVBUF and a reader that sleeps between reads make the kernel
/// take part of a send; the rest resumes at the exact byte (item 1).
#[test]
fn short_sends_resume_at_exact_byte() {
    for b in BACKENDS {
        let sink = TcpSink::start_with(Some(4096), Duration::from_millis(1));
        let mut e = builder(b).build().expect("engine");
        let s = sink.connect();
        set_sndbuf(&s, 4096);
        let id = e.register_tcp(s).expect("register");
        let mut sent = Vec::new();
        for (i, len) in random_sizes(21, 200, 16 * 1024).into_iter().enumerate() {
            let data = payload(1000 + i as u64, len);
            sent.extend_from_slice(&data);
            e.send(id, Bytes::from(data)).expect("send");
        }
        // One big write as well, so a single buffer is split across many sends.
        let big = payload(7, 256 * 1024);
        sent.extend_from_slice(&big);
        e.send(id, Bytes::from(big)).expect("send big");
        let r = e.flush(id).expect("flush");
        assert_eq!(r.writes, 201, "{b:?}: writes");
        assert_eq!(r.bytes, sent.len() as u64, "{b:?}: bytes");
        assert!(
            e.stats().short_sends > 0,
            "{b:?}: a slow reader with small buffers forces short sends (stats {:?})",
            e.stats().short_sends
        );
        drop(e.close(id).expect("close"));
        assert_bytes_eq(&sink.finish(), &sent, &format!("{b:?}"));
    }
}

/// Short sends that cut through a run of small writes copied into one staging iovec: the resume
/// point is inside the copied run, and still at the exact byte (item 1 with write coalescing).
#[test]
fn short_sends_inside_coalesced_small_writes() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let sink = TcpSink::start_with(Some(4096), Duration::from_millis(1));
        let mut e = builder(b).build().expect("engine");
        let s = sink.connect();
        set_sndbuf(&s, 4096);
        let id = e.register_tcp(s).expect("register");
        let mut sent = Vec::new();
        let sizes = random_sizes(41, 4000, 512);
        for (i, &len) in sizes.iter().enumerate() {
            let data = payload(20_000 + i as u64, len);
            sent.extend_from_slice(&data);
            e.send(id, Bytes::from(data)).expect("send");
        }
        let r = e.flush(id).expect("flush");
        assert_eq!(r.writes, sizes.len() as u64, "{ctx}: writes");
        assert_eq!(r.bytes, sent.len() as u64, "{ctx}: bytes");
        assert!(e.stats().short_sends > 0, "{ctx}: short sends happened");
        drop(e.close(id).expect("close"));
        assert_bytes_eq(&sink.finish(), &sent, &ctx);
    }
}

/// 5000 buffers in one flush: more than IOV_MAX (1024) iovecs, so at least five sends, in order
/// (item 4). Run twice: with small-write copying off (tiny buffers, one iovec each), and with it on
/// (default) where small and large buffers alternate, so each still needs its own iovec.
#[test]
fn more_than_iov_max_buffers_in_one_flush() {
    for b in BACKENDS {
        for staging in [false, true] {
            let ctx = format!("{b:?} staging {staging}");
            let sink = TcpSink::start();
            let mut e = if staging {
                builder(b).build()
            } else {
                builder(b).coalesce_below(0).build()
            }
            .expect("engine");
            let id = e.register_tcp(sink.connect()).expect("register");
            let mut sent = Vec::new();
            for (i, len) in random_sizes(31, 5000, 64).into_iter().enumerate() {
                // With staging on, every other buffer is too large to be copied (> 512 B).
                let len = if staging && i % 2 == 1 {
                    600 + len
                } else {
                    len
                };
                let data = payload(5000 + i as u64, len);
                sent.extend_from_slice(&data);
                e.send(id, Bytes::from(data)).expect("send");
            }
            let r = e.flush(id).expect("flush");
            assert_eq!(r.writes, 5000, "{ctx}: writes");
            assert_eq!(r.bytes, sent.len() as u64, "{ctx}: bytes");
            assert!(
                e.stats().sqes >= 5,
                "{ctx}: 5000 iovecs need at least 5 sends of ≤ 1024, got {}",
                e.stats().sqes
            );
            drop(e.close(id).expect("close"));
            assert_bytes_eq(&sink.finish(), &sent, &ctx);
        }
    }
}

/// Sends until one is refused with backpressure at `limit`, checking the queue never exceeds
/// `max_bytes`; returns how many were accepted.
fn fill_until_backpressure(
    e: &mut volley::Engine,
    id: volley::SocketId,
    len: usize,
    seed: u64,
    sent: &mut Vec<u8>,
    (limit, max_bytes): (Limit, usize),
    ctx: &str,
) -> usize {
    for n in 0..10_000 {
        let data = payload(seed + n as u64, len);
        match e.send(id, Bytes::from(data.clone())).map_err(Error::from) {
            Ok(()) => sent.extend_from_slice(&data),
            Err(Error::Backpressure {
                socket,
                limit: l,
                max,
            }) => {
                assert_eq!(socket, id, "{ctx}: backpressure names the socket");
                assert_eq!(l, limit, "{ctx}: which limit");
                assert!(max > 0, "{ctx}: the limit's value");
                return n;
            }
            Err(other) => panic!("{ctx}: expected backpressure, got {other}"),
        }
        let q = e.queued_bytes(id).expect("queued_bytes");
        assert!(q <= max_bytes, "{ctx}: queued {q} > limit {max_bytes}");
    }
    panic!("{ctx}: 10000 sends without backpressure");
}

/// Each queue limit refuses the write that would exceed it with `Backpressure` naming the limit;
/// the queue does not grow past it; after a flush the same send succeeds; a refused write is
/// never delivered (invariant 6, item 29).
#[test]
fn backpressure_at_each_limit_then_recovers() {
    for b in BACKENDS {
        // Per-socket bytes.
        {
            let sink = TcpSink::start();
            let mut e = builder(b)
                .max_queued_bytes_per_socket(1000)
                .build()
                .expect("engine");
            let id = e.register_tcp(sink.connect()).expect("register");
            let mut sent = Vec::new();
            let ctx = format!("{b:?} per-socket bytes");
            let n = fill_until_backpressure(
                &mut e,
                id,
                300,
                1,
                &mut sent,
                (Limit::QueuedBytesPerSocket, 1000),
                &ctx,
            );
            assert_eq!(n, 3, "{ctx}: 3 × 300 fit in 1000, the 4th does not");
            // Memory does not grow: repeated refusals leave the queue where it was.
            for _ in 0..100 {
                assert!(e.send(id, Bytes::from(vec![0xEE; 300])).is_err());
            }
            assert_eq!(e.queued_bytes(id).unwrap(), 900, "{ctx}: queued bytes");
            // Too large to ever fit: a different error.
            match e
                .send(id, Bytes::from(vec![0xEE; 1001]))
                .map_err(Error::from)
            {
                Err(Error::BufferTooLarge { socket, len, max }) => {
                    assert_eq!((socket, len, max), (id, 1001, 1000), "{ctx}")
                }
                other => panic!("{ctx}: expected BufferTooLarge, got {other:?}"),
            }
            tally_flush(&mut e, id, 3, 900, &ctx);
            assert_eq!(e.queued_bytes(id).unwrap(), 0, "{ctx}: drained");
            let data = payload(99, 300);
            e.send(id, Bytes::from(data.clone()))
                .unwrap_or_else(|err| panic!("{ctx}: send after flush: {err}"));
            sent.extend_from_slice(&data);
            drop(e.close(id).expect("close"));
            assert_bytes_eq(&sink.finish(), &sent, &ctx);
        }
        // Engine-wide bytes, over two sockets.
        {
            let (s1, s2) = (TcpSink::start(), TcpSink::start());
            let mut e = builder(b).max_queued_bytes(1000).build().expect("engine");
            let a = e.register_tcp(s1.connect()).expect("register");
            let c = e.register_tcp(s2.connect()).expect("register");
            let ctx = format!("{b:?} total bytes");
            let (mut sent_a, mut sent_c) = (Vec::new(), Vec::new());
            let da = payload(3, 600);
            e.send(a, Bytes::from(da.clone())).expect("first 600");
            sent_a.extend_from_slice(&da);
            let n = fill_until_backpressure(
                &mut e,
                c,
                600,
                4,
                &mut sent_c,
                (Limit::QueuedBytesTotal, 1000),
                &ctx,
            );
            assert_eq!(n, 0, "{ctx}: 600 + 600 > 1000");
            let r = e
                .flush_all()
                .and_then(volley::FlushAllReport::into_result)
                .expect("flush_all");
            assert_eq!((r.writes, r.bytes), (1, 600), "{ctx}: report");
            let dc = payload(5, 600);
            e.send(c, Bytes::from(dc.clone()))
                .unwrap_or_else(|err| panic!("{ctx}: send after flush: {err}"));
            sent_c.extend_from_slice(&dc);
            drop(e.close(a).expect("close"));
            drop(e.close(c).expect("close"));
            assert_bytes_eq(&s1.finish(), &sent_a, &ctx);
            assert_bytes_eq(&s2.finish(), &sent_c, &ctx);
        }
        // Per-socket writes.
        {
            let sink = TcpSink::start();
            let mut e = builder(b)
                .max_queued_writes_per_socket(8)
                .build()
                .expect("engine");
            let id = e.register_tcp(sink.connect()).expect("register");
            let mut sent = Vec::new();
            let ctx = format!("{b:?} per-socket writes");
            let n = fill_until_backpressure(
                &mut e,
                id,
                10,
                6,
                &mut sent,
                (Limit::QueuedWritesPerSocket, usize::MAX),
                &ctx,
            );
            assert_eq!(n, 8, "{ctx}: 8 writes fit");
            tally_flush(&mut e, id, 8, 80, &ctx);
            let n2 = fill_until_backpressure(
                &mut e,
                id,
                10,
                600,
                &mut sent,
                (Limit::QueuedWritesPerSocket, usize::MAX),
                &ctx,
            );
            assert_eq!(n2, 8, "{ctx}: 8 more fit after the flush");
            tally_flush(&mut e, id, 8, 80, &ctx);
            drop(e.close(id).expect("close"));
            assert_bytes_eq(&sink.finish(), &sent, &ctx);
        }
    }
}

fn tally_flush(e: &mut volley::Engine, id: volley::SocketId, writes: u64, bytes: u64, ctx: &str) {
    let r = e
        .flush(id)
        .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
    assert_eq!((r.writes, r.bytes), (writes, bytes), "{ctx}: flush report");
}

/// Zero-length buffers are accepted, counted as writes, contribute no bytes, and never hang a
/// flush, alone or mixed with data.
#[test]
fn zero_length_buffers() {
    for b in BACKENDS {
        let sink = TcpSink::start();
        let mut e = builder(b).build().expect("engine");
        let id = e.register_tcp(sink.connect()).expect("register");
        let ctx = format!("{b:?}");
        // Only empty buffers.
        for _ in 0..5 {
            e.send(id, Bytes::new()).expect("send empty");
        }
        let r = e
            .flush(id)
            .unwrap_or_else(|err| panic!("{ctx}: flush of empties: {err}"));
        assert_eq!((r.writes, r.bytes), (5, 0), "{ctx}: empties only");
        // Mixed, with an empty one first and last.
        let mut sent = Vec::new();
        for i in 0..50u64 {
            if i % 3 == 0 {
                e.send(id, Bytes::new()).expect("send empty");
            } else {
                let d = payload(i, 17);
                sent.extend_from_slice(&d);
                e.send(id, Bytes::from(d)).expect("send");
            }
        }
        e.send(id, Bytes::new()).expect("send empty");
        let r = e
            .flush(id)
            .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
        assert_eq!(r.writes, 51, "{ctx}: every write counted");
        assert_eq!(r.bytes, sent.len() as u64, "{ctx}: bytes");
        drop(e.close(id).expect("close"));
        assert_bytes_eq(&sink.finish(), &sent, &ctx);
    }
}

/// flush_all over 64 sockets with pending data: one send per socket (coalesced, not one per
/// buffer), and on io_uring a handful of `io_uring_enter`s for all of them (invariant 5).
#[test]
fn flush_all_many_sockets_in_one_submission() {
    const SOCKETS: usize = 64;
    const PER_SOCKET: usize = 10;
    for b in BACKENDS {
        let sinks: Vec<TcpSink> = (0..SOCKETS).map(|_| TcpSink::start()).collect();
        let mut e = builder(b).build().expect("engine");
        let ids: Vec<_> = sinks
            .iter()
            .map(|s| e.register_tcp(s.connect()).expect("register"))
            .collect();
        let mut sent = vec![Vec::new(); SOCKETS];
        for (k, &id) in ids.iter().enumerate() {
            for j in 0..PER_SOCKET {
                let d = payload((k * 100 + j) as u64, 100);
                sent[k].extend_from_slice(&d);
                e.send(id, Bytes::from(d)).expect("send");
            }
        }
        let before = e.stats().clone();
        let r = e
            .flush_all()
            .and_then(volley::FlushAllReport::into_result)
            .expect("flush_all");
        let after = e.stats();
        let ctx = format!("{b:?}");
        assert_eq!(r.writes, (SOCKETS * PER_SOCKET) as u64, "{ctx}: writes");
        assert_eq!(r.bytes, (SOCKETS * PER_SOCKET * 100) as u64, "{ctx}: bytes");
        let sqes = after.sqes - before.sqes;
        assert_eq!(
            sqes, SOCKETS as u64,
            "{ctx}: one coalesced send per socket, not one per buffer"
        );
        let transitions = after.kernel_transitions - before.kernel_transitions;
        eprintln!("{ctx}: flush_all of {SOCKETS} sockets: {transitions} transitions, {sqes} sends");
        if e.backend() == volley::BackendKind::Uring {
            assert!(
                transitions <= 3,
                "{ctx}: one flush of {SOCKETS} sockets took {transitions} io_uring_enter calls"
            );
            assert_eq!(
                after.batches - before.batches,
                1,
                "{ctx}: all sockets' sends in one submission"
            );
        }
        for id in ids {
            drop(e.close(id).expect("close"));
        }
        for (k, s) in sinks.into_iter().enumerate() {
            assert_bytes_eq(&s.finish(), &sent[k], &format!("{ctx} socket {k}"));
        }
    }
}

/// close() flushes and hands back the very socket, in the mode its backend set (item 36): writing
/// to the returned fd continues the same stream after the engine's bytes.
#[test]
fn close_hands_back_the_fd() {
    use std::io::Write;
    for b in BACKENDS {
        let sink = TcpSink::start();
        let mut e = builder(b).build().expect("engine");
        let client = sink.connect();
        let local = client.local_addr().expect("local addr");
        // Hand it over in the mode the backend does not want: it must switch it (item 36).
        let uring = b == volley::Backend::Uring;
        client.set_nonblocking(uring).expect("set the wrong mode");
        let id = e.register_tcp(client).expect("register");
        let first = payload(1, 10_000);
        e.send(id, Bytes::from(first.clone())).expect("send");
        let (r, fd) = e.close(id).expect("close");
        let ctx = format!("{b:?}");
        assert_eq!((r.writes, r.bytes), (1, 10_000), "{ctx}: close flushed");
        assert!(fd.as_raw_fd() >= 0);
        let mut stream = std::net::TcpStream::from(fd);
        assert_eq!(stream.local_addr().unwrap(), local, "{ctx}: same socket");
        assert_eq!(stream.peer_addr().unwrap(), sink.addr, "{ctx}: same peer");
        let nonblocking = socket2::SockRef::from(&stream)
            .nonblocking()
            .expect("F_GETFL");
        assert_eq!(
            nonblocking, !uring,
            "{ctx}: io_uring wants blocking sockets (poll is armed instead of EAGAIN), epoll O_NONBLOCK"
        );
        stream.set_nonblocking(false).expect("blocking");
        let second = payload(2, 1000);
        stream.write_all(&second).expect("write on the returned fd");
        drop(stream);
        let mut sent = first;
        sent.extend_from_slice(&second);
        assert_bytes_eq(&sink.finish(), &sent, &ctx);
    }
}

/// Half-close after the barrier (FAILURES.md item 9): the peer reads every queued byte, then EOF
/// while the engine still holds the socket; later sends fail as a broken pipe.
#[test]
fn shutdown_write_after_the_barrier() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let sink = TcpSink::start();
        let mut e = builder(b).build().expect("engine");
        let id = e.register_tcp(sink.connect()).expect("register");
        let data = payload(7, 300_000);
        for chunk in data.chunks(1000) {
            e.send(id, Bytes::copy_from_slice(chunk)).expect("send");
        }
        let r = e.shutdown_write(id).expect("shutdown_write");
        assert_eq!((r.writes, r.bytes), (300, 300_000), "{ctx}");
        // The sink returns at EOF: it must come after every byte, with the socket still open.
        assert_bytes_eq(&sink.finish(), &data, &ctx);
        e.send(id, Bytes::from_static(b"late")).expect("queued");
        let err = e.flush(id).expect_err("a send after SHUT_WR fails");
        assert_eq!(
            err.status(),
            Some(volley::Status::BrokenPipe),
            "{ctx}: {err}"
        );
    }
}

/// After close (or abort), the id is dead for every call, even when its slot is reused.
#[test]
fn unknown_socket_after_close() {
    for b in BACKENDS {
        let (s1, s2) = (TcpSink::start(), TcpSink::start());
        let mut e = builder(b).build().expect("engine");
        let old = e.register_tcp(s1.connect()).expect("register");
        e.send(old, Bytes::from_static(b"before")).expect("send");
        drop(e.close(old).expect("close"));
        let ctx = format!("{b:?}");
        assert!(
            matches!(e.send(old, Bytes::from_static(b"x")).map_err(Error::from), Err(Error::UnknownSocket(s)) if s == old),
            "{ctx}: send after close"
        );
        assert!(
            matches!(e.flush(old), Err(Error::UnknownSocket(_))),
            "{ctx}: flush"
        );
        assert!(
            matches!(e.close(old), Err(Error::UnknownSocket(_))),
            "{ctx}: close"
        );
        assert!(
            matches!(e.abort(old), Err(Error::UnknownSocket(_))),
            "{ctx}: abort"
        );
        assert!(
            matches!(e.queued_bytes(old), Err(Error::UnknownSocket(_))),
            "{ctx}: queued_bytes"
        );
        // A new socket may reuse the slot; the old id stays dead and the new one works.
        let new = e.register_tcp(s2.connect()).expect("register");
        assert_ne!(new, old, "{ctx}: ids are generation-tagged");
        assert!(
            matches!(
                e.send(old, Bytes::from_static(b"x")).map_err(Error::from),
                Err(Error::UnknownSocket(_))
            ),
            "{ctx}: stale id after slot reuse"
        );
        let msg = e
            .send(old, Bytes::from_static(b"x"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not registered"), "{ctx}: message {msg:?}");
        e.send(new, Bytes::from_static(b"after")).expect("send");
        drop(e.close(new).expect("close"));
        assert_eq!(s1.finish(), b"before", "{ctx}: old stream");
        assert_eq!(s2.finish(), b"after", "{ctx}: new stream");
    }
}

/// A datagram-only call on a stream is refused without touching the stream.
#[test]
fn send_to_on_tcp_is_wrong_socket_kind() {
    for b in BACKENDS {
        let sink = TcpSink::start();
        let mut e = builder(b).build().expect("engine");
        let id = e.register_tcp(sink.connect()).expect("register");
        let ctx = format!("{b:?}");
        e.send(id, Bytes::from_static(b"one ")).expect("send");
        match e
            .send_to(id, Bytes::from_static(b"nope"), sink.addr)
            .map_err(Error::from)
        {
            Err(Error::WrongSocketKind { socket, .. }) => {
                assert_eq!(socket, id, "{ctx}: names the socket")
            }
            other => panic!("{ctx}: expected WrongSocketKind, got {other:?}"),
        }
        assert!(
            matches!(e.socket_gso(id), Err(Error::WrongSocketKind { .. })),
            "{ctx}: socket_gso on a stream"
        );
        e.send(id, Bytes::from_static(b"two")).expect("send");
        let r = e.flush(id).expect("flush");
        assert_eq!(
            (r.writes, r.failed),
            (2, 0),
            "{ctx}: the refused write never counted"
        );
        drop(e.close(id).expect("close"));
        assert_eq!(sink.finish(), b"one two", "{ctx}");
    }
}

// ---- issue #11: registration checks what it is given -----------------------------------------

per_backend!(unsuitable_sockets_are_refused_and_handed_back);

/// `TcpStream::from(OwnedFd)` is safe code, so a `TcpStream` can be a UDP socket, a listener, an
/// unconnected TCP socket or a Unix socket; a `UdpSocket` can be a TCP stream. Each is refused
/// with `UnsuitableSocket` and handed back open (the same descriptor, still usable). Before the
/// fix: the UDP socket was accepted as a stream (three writes arrived as one datagram) and a
/// refusal closed the descriptor.
fn unsuitable_sockets_are_refused_and_handed_back(b: volley::Backend) {
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::OwnedFd;
    let ctx = format!("{b:?}");
    let mut e = engine(b);
    let refused = |e: &mut volley::Engine, s: TcpStream, what: &str| -> TcpStream {
        let raw = s.as_raw_fd();
        let err = e
            .register_tcp(s)
            .expect_err(&format!("{ctx}: {what} registered as a TCP stream"));
        assert!(
            matches!(err.error(), Error::UnsuitableSocket { .. }),
            "{ctx}: {what}: {err}"
        );
        let back = err.into_inner();
        assert_eq!(
            back.as_raw_fd(),
            raw,
            "{ctx}: {what}: the same descriptor back"
        );
        back
    };
    // A UDP socket posing as a TcpStream: refused, and it still sends datagrams.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.connect(sink.local_addr().unwrap()).unwrap();
    let back = refused(&mut e, TcpStream::from(OwnedFd::from(udp)), "a UDP socket");
    let udp = UdpSocket::from(OwnedFd::from(back));
    udp.send(b"still open").unwrap();
    let mut buf = [0u8; 64];
    let n = sink.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still open", "{ctx}");
    // A listening socket.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let back = refused(
        &mut e,
        TcpStream::from(OwnedFd::from(listener)),
        "a listener",
    );
    let listener = TcpListener::from(OwnedFd::from(back));
    let client = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    // An unconnected TCP socket.
    let unconnected =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    refused(
        &mut e,
        TcpStream::from(OwnedFd::from(unconnected)),
        "an unconnected socket",
    );
    // A Unix stream socket.
    let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    refused(
        &mut e,
        TcpStream::from(OwnedFd::from(unix)),
        "a Unix socket",
    );
    // A TCP stream posing as a UdpSocket.
    let raw = client.as_raw_fd();
    let err = e
        .register_udp(UdpSocket::from(OwnedFd::from(client)))
        .expect_err("a TCP stream registered as UDP");
    assert!(
        matches!(err.error(), Error::UnsuitableSocket { .. }),
        "{ctx}: {err}"
    );
    let client = TcpStream::from(OwnedFd::from(err.into_inner()));
    assert_eq!(client.as_raw_fd(), raw, "{ctx}");
    // The refused stream is intact: registered properly now, its bytes arrive.
    let id = e.register_tcp(client).unwrap();
    e.send(id, Bytes::from_static(b"abc")).unwrap();
    e.close(id).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &server, &mut got).unwrap();
    assert_eq!(got, b"abc", "{ctx}");
    assert_eq!(e.stats().writes_sent, 1, "{ctx}");
}

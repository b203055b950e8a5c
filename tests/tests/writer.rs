//! `StreamWriter` (`Engine::writer`): borrowed writes copied into staging chunks, on both
//! backends — bytes exact when mixed with `send(Bytes)`, flushes and submits at random points;
//! every queue limit refuses exactly as `send` does; a poisoned stream fails fast; a leaked
//! writer loses only its own writes and leaves the engine consistent.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use volley::{Backend, Error, Limit, Status};
use volley_tests::{assert_bytes_eq, builder, payload, per_backend, set_sndbuf, TcpSink};

per_backend!(
    mixed_with_send_bytes_exact,
    every_queue_limit_refuses_like_send,
    poisoned_stream_fails_fast,
    leaked_writer_loses_only_its_own_writes,
);

/// Random sizes (tiny, around the staging threshold, and above the 64 KiB chunk), through the
/// writer, `std::io::Write` formatting and `send(Bytes)` in turn, with writer flushes, submits
/// and engine flushes at random points: the peer gets the exact concatenation, and the flush
/// reports count every write once.
fn mixed_with_send_bytes_exact(backend: Backend) {
    let ctx = format!("{backend:?}");
    let sink = TcpSink::start();
    let mut e = builder(backend).build().expect("engine");
    let id = e.register_tcp(sink.connect()).expect("register");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut sent = Vec::new();
    let (mut writes, mut reported, mut bytes) = (0u64, 0u64, 0usize);
    for round in 0..20u64 {
        // A few owned buffers first, then a writer, then owned buffers again.
        for i in 0..rng.gen_range(0..4u64) {
            let d = payload(round * 1000 + i, rng.gen_range(1..3000));
            sent.extend_from_slice(&d);
            e.send(id, Bytes::from(d)).expect("send");
            writes += 1;
        }
        {
            let mut w = e.writer(id).expect("writer");
            for i in 0..rng.gen_range(1..600u64) {
                let len = match rng.gen_range(0..60) {
                    0 => rng.gen_range(65 * 1024..100 * 1024),
                    1..=3 => rng.gen_range(400..700),
                    _ => rng.gen_range(1..100),
                };
                let d = payload(round * 100_000 + i, len);
                w.write(&d).expect("write");
                sent.extend_from_slice(&d);
                writes += 1;
                match rng.gen_range(0..200) {
                    0 => {
                        let r = w.flush().expect("writer flush");
                        reported += r.writes;
                        bytes += usize::try_from(r.bytes).unwrap();
                    }
                    1 => w.submit().expect("writer submit"),
                    2 => {
                        // std::io::Write (`write!` would make one write per formatted
                        // piece, as on any `Write`).
                        let line = format!("line {round}/{i}\n");
                        Write::write_all(&mut w, line.as_bytes()).expect("write_all");
                        sent.extend_from_slice(line.as_bytes());
                        writes += 1;
                    }
                    _ => {}
                }
            }
            // Dropped here: its last chunk goes to the engine's queue.
        }
        for i in 0..rng.gen_range(0..3u64) {
            let d = payload(round * 7000 + i, rng.gen_range(1..300));
            sent.extend_from_slice(&d);
            e.send(id, Bytes::from(d)).expect("send");
            writes += 1;
        }
        if rng.gen_bool(0.5) {
            let r = e.flush(id).expect("flush");
            reported += r.writes;
            bytes += usize::try_from(r.bytes).unwrap();
        }
    }
    let r = e.flush(id).expect("final flush");
    reported += r.writes;
    bytes += usize::try_from(r.bytes).unwrap();
    assert_eq!(r.failed, 0, "{ctx}: nothing failed");
    assert_eq!(reported, writes, "{ctx}: every write reported once");
    assert_eq!(bytes, sent.len(), "{ctx}: every byte reported once");
    assert_eq!(e.pending_writes(), 0, "{ctx}");
    drop(e.close(id).expect("close"));
    assert_bytes_eq(&sink.finish(), &sent, &ctx);
}

/// With the reader stopped, each queue limit refuses a writer's write with `Backpressure`
/// naming it — the writer's unsent chunk counted — and never queues it; the queue never holds
/// more than the limit; after the reader resumes and a flush, the refused write goes through.
/// The peer receives exactly the accepted writes.
fn every_queue_limit_refuses_like_send(backend: Backend) {
    let ctx = format!("{backend:?}");
    // Per-socket bytes (1000) and per-socket writes (16), on one stream.
    for (limit, engine) in [
        (
            Limit::QueuedBytesPerSocket,
            builder(backend).max_queued_bytes_per_socket(1000),
        ),
        (
            Limit::QueuedWritesPerSocket,
            builder(backend).max_queued_writes_per_socket(16),
        ),
        (
            Limit::QueuedBytesTotal,
            builder(backend).max_queued_bytes(1500),
        ),
    ] {
        let ctx = format!("{ctx} {limit:?}");
        let (sink, gate) = TcpSink::start_gated(Some(4096));
        let other = TcpSink::start();
        let mut e = engine
            .flush_timeout(Duration::from_secs(20))
            .build()
            .expect("engine");
        let client = sink.connect();
        set_sndbuf(&client, 4096);
        let id = e.register_tcp(client).expect("register");
        let id2 = e.register_tcp(other.connect()).expect("register other");
        // The other socket holds 600 bytes: they count against the total limit only.
        e.send(id2, Bytes::from(vec![b'o'; 600]))
            .expect("other send");
        let mut sent = Vec::new();
        let mut accepted = 0usize;
        let refused = {
            let mut w = e.writer(id).expect("writer");
            let mut refused = None;
            for i in 0..10_000u64 {
                let d = payload(i, 50);
                match w.write(&d) {
                    Ok(()) => {
                        sent.extend_from_slice(&d);
                        accepted += 1;
                    }
                    Err(err) => {
                        refused = Some((err, d));
                        break;
                    }
                }
            }
            refused
        };
        let (err, d) = refused.unwrap_or_else(|| panic!("{ctx}: a limit refused a write"));
        match &err {
            Error::Backpressure {
                limit: l, socket, ..
            } => {
                assert_eq!(*l, limit, "{ctx}: {err}");
                assert_eq!(*socket, id, "{ctx}: {err}");
            }
            other => panic!("{ctx}: expected backpressure, got {other}"),
        }
        assert!(err.is_backpressure(), "{ctx}");
        let expect_accepted = match limit {
            Limit::QueuedBytesPerSocket => 1000 / 50,
            Limit::QueuedWritesPerSocket => 16,
            _ => (1500 - 600) / 50,
        };
        assert_eq!(
            accepted, expect_accepted,
            "{ctx}: accepted up to the limit exactly"
        );
        let queued = e.queued_bytes(id).expect("queued");
        assert!(
            queued <= 1000 || limit != Limit::QueuedBytesPerSocket,
            "{ctx}: {queued}"
        );
        // A single write bigger than every limit allows is too large, not backpressure.
        {
            let mut w = e.writer(id).expect("writer");
            let huge = vec![0u8; 64 * 1024];
            match w.write(&huge) {
                Err(Error::BufferTooLarge { .. }) if limit != Limit::QueuedWritesPerSocket => {}
                Err(Error::Backpressure { .. }) if limit == Limit::QueuedWritesPerSocket => {}
                r => panic!("{ctx}: 64 KiB write: {r:?}"),
            }
        }
        gate.open();
        let r = e.flush(id).expect("flush after the reader resumed");
        assert_eq!(r.writes, accepted as u64, "{ctx}: accepted writes reported");
        // Room again: the refused write goes through now.
        let mut w = e.writer(id).expect("writer");
        w.write(&d).expect("the refused write, after the flush");
        sent.extend_from_slice(&d);
        let r = w.flush().expect("flush");
        assert_eq!(r.writes, 1, "{ctx}");
        drop(w);
        e.flush(id2).expect("flush other");
        drop(e.close(id).expect("close"));
        drop(e.close(id2).expect("close other"));
        assert_bytes_eq(&sink.finish(), &sent, &ctx);
        assert_eq!(other.finish(), vec![b'o'; 600], "{ctx}: other socket");
    }
}

/// A stream reset by its peer: the writer's flush fails with the reset, later writes fail fast
/// with the same status, and so does opening a new writer.
fn poisoned_stream_fails_fast(backend: Backend) {
    let ctx = format!("{backend:?}");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let reader = std::thread::spawn(move || {
        let mut server = server;
        let mut got = vec![0u8; 1024];
        server.read_exact(&mut got).expect("read the first KiB");
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(server); // RST
    });
    let mut e = builder(backend)
        .flush_timeout(Duration::from_secs(20))
        .build()
        .expect("engine");
    let id = e.register_tcp(client).expect("register");
    let mut w = e.writer(id).expect("writer");
    let mut status = None;
    for round in 0..200u64 {
        for i in 0..64u64 {
            if let Err(err) = w.write(&payload(round * 64 + i, 1024)) {
                status = Some(err);
                break;
            }
        }
        if status.is_some() {
            break;
        }
        if let Err(err) = w.flush() {
            status = Some(err);
            break;
        }
    }
    let err = status.unwrap_or_else(|| panic!("{ctx}: the reset reached the writer"));
    let st = err
        .status()
        .unwrap_or_else(|| panic!("{ctx}: a socket status: {err}"));
    assert!(
        matches!(st, Status::ConnectionReset | Status::BrokenPipe),
        "{ctx}: {err}"
    );
    let again = w.write(b"late").expect_err("poisoned: write refused");
    assert_eq!(again.status(), Some(st), "{ctx}: same status ({again})");
    drop(w);
    let opened = e.writer(id).expect_err("poisoned: writer refused");
    assert_eq!(opened.status(), Some(st), "{ctx}: same status ({opened})");
    reader.join().expect("reader");
    assert_eq!(e.pending_writes(), 0, "{ctx}: every write is terminal");
}

/// `mem::forget` on a writer loses the writes it had not handed over (as with a `BufWriter`)
/// and nothing else: earlier writes are delivered, the counts stay exact, later writers work.
/// Opening a writer on a UDP socket is refused as the wrong kind.
fn leaked_writer_loses_only_its_own_writes(backend: Backend) {
    let ctx = format!("{backend:?}");
    let sink = TcpSink::start();
    let mut e = builder(backend).build().expect("engine");
    let id = e.register_tcp(sink.connect()).expect("register");
    e.send(id, Bytes::from_static(b"first ")).expect("send");
    {
        let mut w = e.writer(id).expect("writer");
        w.write(b"second ").expect("write");
        w.submit().expect("submit hands the chunk over");
        w.write(b"lost ").expect("write");
        std::mem::forget(w);
    }
    let mut w = e.writer(id).expect("writer after a leaked one");
    w.write(b"third").expect("write");
    drop(w);
    let r = e.flush(id).expect("flush");
    assert_eq!(r.failed, 0, "{ctx}");
    assert_eq!(e.pending_writes(), 0, "{ctx}");
    assert_eq!(e.queued_bytes(id).expect("queued"), 0, "{ctx}");
    let udp = e
        .register_udp(std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"))
        .expect("register udp");
    assert!(
        matches!(e.writer(udp), Err(Error::WrongSocketKind { .. })),
        "{ctx}: a writer needs a stream"
    );
    drop(e.close(id).expect("close"));
    assert_eq!(sink.finish(), b"first second third", "{ctx}");
}

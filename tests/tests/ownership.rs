//! Never release a buffer early (DESIGN.md invariant 1; FAILURES.md items 8, 30), on both
//! backends.
//!
//! Every buffer handed to the engine is a slice of one big pool the test owns, wrapped in
//! `Bytes::from_owner`: when the engine lets go of the last reference, the owner's `Drop`
//! *scribbles* over its slice (the memory stays allocated, owned by the pool). So a buffer the
//! engine released while the kernel could still read it shows up at the peer as scribble bytes
//! instead of the original ones — no sanitizer needed, and it works for kernel reads through
//! io_uring, which ASan and valgrind cannot see.
//!
//! - `mixed_streams_and_datagrams`: 4 slow TCP peers (small receive buffers, a pause per read)
//!   and UDP datagrams (runs of equal sizes, so GSO groups on io_uring and epoll) on one engine,
//!   sizes from 1 B to 256 KiB (small writes are copied into staging at `send`, large ones stay
//!   referenced until their op completes): every peer receives exactly the original bytes, and
//!   every buffer is released exactly once by the end.
//! - `drop_engine_with_writes_in_flight`: stalled peers, megabytes in flight, the engine dropped:
//!   what the peers then read is an exact prefix of the original (nothing the kernel read after
//!   the drop was scribbled on), and every buffer was released.
//! - `control_scribble_before_completion_is_seen`: the control. It scribbles on a buffer while its
//!   write is in flight to a stalled peer (what an engine releasing early would cause) and
//!   asserts the peer *does* receive scribble bytes: the detection works.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use volley::Backend;
use volley_tests::scribble::{Pool, SCRIBBLE};
use volley_tests::*;

/// Sends `data` on `id`, flushing on backpressure and sending the same buffer again.
fn send_all(e: &mut volley::Engine, id: volley::SocketId, data: Bytes, ctx: &str) {
    let mut data = data;
    loop {
        match e.send(id, data) {
            Ok(()) => return,
            Err(err) if err.is_backpressure() => {
                data = err.into_inner();
                e.flush_all()
                    .and_then(volley::FlushAllReport::into_result)
                    .unwrap_or_else(|er| panic!("{ctx}: flush_all on backpressure: {er}"));
            }
            Err(err) => panic!("{ctx}: send: {err}"),
        }
    }
}

fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

fn mixed_streams_and_datagrams(b: Backend) {
    const SOCKETS: usize = 4;
    const PER_SOCKET: usize = 1 << 20;
    let ctx = format!("{b:?}");
    // Streams: one pool region per socket, cut into log-uniform sizes 1 B … 256 KiB.
    let originals: Vec<Vec<u8>> = (0..SOCKETS)
        .map(|k| payload(0x0E00 + k as u64, PER_SOCKET))
        .collect();
    let pools: Vec<Arc<Pool>> = originals.iter().map(|o| Pool::new(o)).collect();
    // Slow peers: 16 KiB receive buffers and a pause after each read keep sends in flight
    // (short sends, poll-armed retries) while other sockets' completions arrive.
    let sinks: Vec<TcpSink> = (0..SOCKETS)
        .map(|_| TcpSink::start_with(Some(16 << 10), Duration::from_micros(300)))
        .collect();
    let mut e = builder(b).build().expect("engine");
    let ids: Vec<_> = sinks
        .iter()
        .map(|s| {
            let c = s.connect();
            set_sndbuf(&c, 16 << 10);
            e.register_tcp(c).expect("register tcp")
        })
        .collect();
    // Datagrams: runs of equal sizes to one destination (GSO groups), a shorter one to end some
    // runs, interleaved with the stream writes.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x0E0D);
    let mut dgram_sizes = Vec::new();
    while dgram_sizes.len() < 1500 {
        let size = rng.gen_range(1..=1400usize);
        let run = rng.gen_range(1..=40usize);
        dgram_sizes.extend(std::iter::repeat_n(size, run));
        if rng.gen_bool(0.5) {
            dgram_sizes.push(rng.gen_range(1..=size));
        }
    }
    let dgram_total: usize = dgram_sizes.iter().sum();
    let dgram_original = payload(0x0E0E, dgram_total);
    let dgram_pool = Pool::new(&dgram_original);
    let dsink = DgramSink::start("127.0.0.1:0", dgram_sizes.len(), Duration::from_secs(5));
    let udp = e
        .register_udp(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
        .expect("register udp");

    let mut cursors = [0usize; SOCKETS];
    let mut sizes: Vec<std::vec::IntoIter<usize>> = (0..SOCKETS)
        .map(|k| random_sizes(0x0E10 + k as u64, 1 << 16, 256 << 10).into_iter())
        .collect();
    let (mut doff, mut di) = (0usize, 0usize);
    let mut sent_writes = 0usize;
    loop {
        let mut progressed = false;
        for k in 0..SOCKETS {
            if cursors[k] < PER_SOCKET {
                let want = sizes[k].next().unwrap_or(4096);
                let n = want.min(PER_SOCKET - cursors[k]);
                send_all(&mut e, ids[k], pools[k].take(cursors[k], n), &ctx);
                cursors[k] += n;
                sent_writes += 1;
                progressed = true;
            }
        }
        for _ in 0..4 {
            if di < dgram_sizes.len() {
                let n = dgram_sizes[di];
                let data = dgram_pool.take(doff, n);
                loop {
                    match e.send_to(udp, data.clone(), dsink.addr) {
                        Ok(()) => break,
                        Err(err) if err.is_backpressure() => {
                            e.flush_all().expect("flush_all on backpressure");
                        }
                        Err(err) => panic!("{ctx}: send_to: {err}"),
                    }
                }
                drop(data);
                doff += n;
                di += 1;
                sent_writes += 1;
                progressed = true;
            }
        }
        match rng.gen_range(0..10) {
            0 => e.submit().expect("submit"),
            1 => {
                let _ = e
                    .try_flush(ids[rng.gen_range(0..SOCKETS)])
                    .expect("try_flush");
            }
            2 => {
                e.flush(udp).expect("flush udp");
            }
            _ => {}
        }
        if !progressed {
            break;
        }
    }
    let r = e
        .flush_all()
        .and_then(volley::FlushAllReport::into_result)
        .unwrap_or_else(|er| panic!("{ctx}: final flush_all: {er}"));
    drop(r);
    for id in ids {
        drop(e.close(id).expect("close"));
    }
    for (k, s) in sinks.into_iter().enumerate() {
        let got = s.finish();
        assert_eq!(
            got.len(),
            PER_SOCKET,
            "{ctx}: socket {k}: byte count (first difference at {:?})",
            first_diff(&got, &originals[k])
        );
        if let Some(i) = first_diff(&got, &originals[k]) {
            panic!(
                "{ctx}: socket {k}: byte {i} differs (got {:#04x}, sent {:#04x}): a buffer was \
                 released while the kernel still read it",
                got[i], originals[k][i]
            );
        }
    }
    let got = dsink.finish();
    let mut want: Vec<Bytes> = Vec::with_capacity(dgram_sizes.len());
    let mut at = 0;
    for &n in &dgram_sizes {
        want.push(Bytes::copy_from_slice(&dgram_original[at..at + n]));
        at += n;
    }
    assert_same_datagrams(&got, &want, &format!("{ctx}: datagrams"));
    drop(e);
    let released: usize = pools
        .iter()
        .map(|p| p.released.load(Ordering::SeqCst))
        .sum::<usize>()
        + dgram_pool.released.load(Ordering::SeqCst);
    assert_eq!(
        released, sent_writes,
        "{ctx}: every buffer released exactly once"
    );
}

/// A listener whose one connection is read only after `gate` fires; small buffers both ways.
fn stalled_peer() -> (TcpStream, TcpSink, Gate) {
    let (sink, gate) = TcpSink::start_gated(Some(8 << 10));
    let c = sink.connect();
    set_sndbuf(&c, 8 << 10);
    (c, sink, gate)
}

fn drop_engine_with_writes_in_flight(b: Backend) {
    const SOCKETS: usize = 3;
    const PER_SOCKET: usize = 4 << 20;
    let ctx = format!("{b:?}");
    let originals: Vec<Vec<u8>> = (0..SOCKETS)
        .map(|k| payload(0x0F00 + k as u64, PER_SOCKET))
        .collect();
    let pools: Vec<Arc<Pool>> = originals.iter().map(|o| Pool::new(o)).collect();
    let mut peers = Vec::new();
    let mut e = builder(b).build().expect("engine");
    let mut writes = 0;
    for (k, pool) in pools.iter().enumerate() {
        let (c, sink, gate) = stalled_peer();
        let id = e.register_tcp(c).expect("register");
        // 64 KiB … 1 MiB writes, all referenced (far above the copy threshold).
        let mut off = 0;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(k as u64);
        while off < PER_SOCKET {
            let n = rng.gen_range(64 << 10..=1 << 20).min(PER_SOCKET - off);
            e.send(id, pool.take(off, n)).expect("send");
            off += n;
            writes += 1;
        }
        peers.push((sink, gate));
    }
    e.submit().expect("submit");
    // Let the kernel take what fits into the socket buffers; the rest stays in flight.
    std::thread::sleep(Duration::from_millis(50));
    let _ = e.submit();
    assert!(
        e.stats().sqes > 0 || b == Backend::Epoll,
        "{ctx}: nothing was submitted"
    );
    drop(e);
    let released: usize = pools
        .iter()
        .map(|p| p.released.load(Ordering::SeqCst))
        .sum();
    assert_eq!(
        released, writes,
        "{ctx}: after the engine's drop every buffer is released (none leaked)"
    );
    for (k, (sink, gate)) in peers.into_iter().enumerate() {
        gate.open();
        let got = sink.finish();
        assert!(
            got.len() < PER_SOCKET,
            "{ctx}: socket {k}: the peer got everything ({} bytes): nothing was in flight",
            got.len()
        );
        if let Some(i) = first_diff(&got, &originals[k]) {
            panic!(
                "{ctx}: socket {k}: byte {i} of {} differs (got {:#04x}): the kernel read a \
                 buffer after the engine released it",
                got.len(),
                got[i]
            );
        }
    }
}

fn control_scribble_before_completion_is_seen(b: Backend) {
    const LEN: usize = 4 << 20;
    let ctx = format!("{b:?} control");
    let original = payload(0x0C0C, LEN);
    let pool = Pool::new(&original);
    let (c, sink, gate) = stalled_peer();
    let mut e = builder(b).build().expect("engine");
    let id = e.register_tcp(c).expect("register");
    e.send(id, pool.take(0, LEN)).expect("send");
    e.submit().expect("submit");
    std::thread::sleep(Duration::from_millis(50));
    let _ = e.submit();
    // What an engine that released the buffer now would cause: the owner's memory rewritten
    // while the write is still in flight (the peer has read nothing yet).
    pool.scribble(0, LEN);
    gate.open();
    e.flush(id).expect("flush");
    drop(e.close(id).expect("close"));
    let got = sink.finish();
    assert_eq!(got.len(), LEN, "{ctx}: byte count");
    let first = first_diff(&got, &original)
        .unwrap_or_else(|| panic!("{ctx}: the peer got the original bytes: detection is blind"));
    assert!(
        got[first..].iter().all(|&x| x == SCRIBBLE),
        "{ctx}: after byte {first} the peer must see only scribble bytes"
    );
    assert!(
        first < LEN / 2,
        "{ctx}: the kernel had copied {first} bytes before the scribble (expected a small prefix)"
    );
    eprintln!("{ctx}: the peer got {first} original bytes, then scribble: detection works");
    drop(pool);
    // A scribbled buffer still releases exactly once.
}

per_backend!(
    mixed_streams_and_datagrams,
    drop_engine_with_writes_in_flight,
    control_scribble_before_completion_is_seen
);

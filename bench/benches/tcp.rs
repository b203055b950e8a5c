//! TCP: many small buffers into one loopback stream.
//!
//! Methods: `naive` (one `write_all` per buffer on a std `TcpStream`), `volley-epoll` and
//! `volley-uring` (N `Engine::send` + one `Engine::flush`). One iteration is one batch.
//!
//! Groups:
//! - `tcp/per_flush` — 64-byte buffers, 1..1024 buffers per flush; throughput in messages.
//! - `tcp/size` — 256 buffers per flush, 16 B..4 KiB each; throughput in bytes.
//!
//! The receiver reads to EOF on its own thread; every socket is `TCP_NODELAY`.

mod common;

use std::hint::black_box;
use std::io::Write;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Throughput};
use volley::{Backend, Engine, SocketId};

const PER_FLUSH: [usize; 6] = [1, 4, 16, 64, 256, 1024];
const PER_FLUSH_SIZE_BYTES: usize = 64;
const SIZES_BYTES: [usize; 5] = [16, 64, 256, 1024, 4096];
const SIZE_SWEEP_PER_FLUSH: usize = 256;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// One `write_all` per buffer.
fn naive(group: &mut Group<'_>, param: usize, bufs: &[Bytes]) {
    let (mut stream, sink) = common::tcp_pair();
    group.bench_with_input(BenchmarkId::new("naive", param), bufs, |b, bufs| {
        b.iter(|| {
            for buf in bufs {
                stream.write_all(buf).expect("naive tcp write");
            }
        });
    });
    drop(stream);
    sink.join();
}

/// N sends and one flush barrier per iteration.
fn volley(group: &mut Group<'_>, name: &str, backend: Backend, param: usize, bufs: &[Bytes]) {
    let Some(mut engine) = common::engine(name, backend) else {
        return;
    };
    let (stream, sink) = common::tcp_pair();
    let id: SocketId = engine.register_tcp(stream).expect("register tcp stream");
    group.bench_with_input(BenchmarkId::new(name, param), bufs, |b, bufs| {
        b.iter(|| batch(&mut engine, id, bufs));
    });
    drop(engine);
    sink.join();
}

fn batch(engine: &mut Engine, id: SocketId, bufs: &[Bytes]) {
    for buf in bufs {
        engine.send(id, buf.clone()).expect("queue tcp write");
    }
    let report = engine.flush(id).expect("flush tcp stream");
    black_box(report.bytes);
}

fn all_methods(group: &mut Group<'_>, param: usize, bufs: &[Bytes]) {
    naive(group, param, bufs);
    for (name, backend) in common::BACKENDS {
        volley(group, name, backend, param, bufs);
    }
}

fn per_flush(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("tcp/per_flush");
    for n in PER_FLUSH {
        let bufs = common::payload(n, PER_FLUSH_SIZE_BYTES);
        group.throughput(Throughput::Elements(n as u64));
        all_methods(&mut group, n, &bufs);
    }
    group.finish();
}

fn size(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("tcp/size");
    for size in SIZES_BYTES {
        let bufs = common::payload(SIZE_SWEEP_PER_FLUSH, size);
        group.throughput(Throughput::Bytes((SIZE_SWEEP_PER_FLUSH * size) as u64));
        all_methods(&mut group, size, &bufs);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = per_flush, size
}
criterion_main!(benches);

//! TCP: many small buffers into one loopback stream.
//!
//! Methods (`volley bench`'s, by the same names; one iteration is one batch):
//! - `naive` — one `write_all` per buffer on a std `TcpStream`;
//! - `bufwriter` — std `BufWriter` (64 KiB) over the stream, `write_all` per buffer, one flush;
//! - `tokio-bufwriter` — the same with tokio's `BufWriter` on a current-thread runtime
//!   (`per_flush` only);
//! - `tokio-uring-writev` — one tokio-uring `writev` of the batch (`per_flush` only);
//! - `raw-writev` — no library: one `sendmsg` over prebuilt iovecs, the floor;
//! - `volley-epoll`, `volley-uring` — N `Engine::send` + one `Engine::flush` (`epoll`, `uring`).
//!
//! Groups:
//! - `tcp/per_flush` — 64-byte buffers, 1..1024 buffers per flush; throughput in messages.
//! - `tcp/size` — 256 buffers per flush, 16 B..4 KiB each; throughput in bytes.
//!
//! The receiver reads on its own thread and checks every byte; after each benchmark it must have
//! got everything that was sent. Every socket is `TCP_NODELAY`.

mod common;

use criterion::{criterion_group, criterion_main, Throughput};
use volley_bench::scenario::{Payload, Spec};
use volley_bench::{MethodName, ScenarioName};

const PER_FLUSH: [usize; 6] = [1, 4, 16, 64, 256, 1024];
const PER_FLUSH_SIZE_BYTES: usize = 64;
const SIZES_BYTES: [usize; 5] = [16, 64, 256, 1024, 4096];
const SIZE_SWEEP_PER_FLUSH: usize = 256;

/// Benchmarks `method` as `id`, then checks that the receiver got every byte, in order.
fn method(
    group: &mut common::Group<'_>,
    id: &str,
    method: MethodName,
    param: usize,
    spec: Spec,
    payload: &Payload,
) {
    let Some(mut r) = common::runner(id, method, spec, payload) else {
        return;
    };
    let batches = common::bench(group, id, param, &mut r);
    r.rx.expect(
        spec.peers,
        batches * spec.per_peer as u64,
        spec.msg_size as u64,
    );
    if let Err(e) = r.rx.verify() {
        panic!("{id}/{param}: {e}");
    }
}

/// The peers and the floor both groups run, besides volley's backends.
const PEERS: [MethodName; 3] = [
    MethodName::Naive,
    MethodName::Bufwriter,
    MethodName::RawWritev,
];
/// The peers only `tcp/per_flush` runs.
const MORE_PEERS: [MethodName; 2] = [MethodName::TokioBufwriter, MethodName::TokioUringWritev];

fn all_methods(
    group: &mut common::Group<'_>,
    param: usize,
    spec: Spec,
    payload: &Payload,
    peers: &[MethodName],
) {
    for &m in peers {
        method(group, m.name(), m, param, spec, payload);
    }
    for (id, backend) in common::BACKENDS {
        method(group, id, backend, param, spec, payload);
    }
}

fn per_flush(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("tcp/per_flush");
    let payload = Payload::new(PER_FLUSH_SIZE_BYTES);
    for n in PER_FLUSH {
        group.throughput(Throughput::Elements(n as u64));
        let spec = common::spec(ScenarioName::TcpSmall, PER_FLUSH_SIZE_BYTES, n);
        let peers = [&PEERS[..], &MORE_PEERS[..]].concat();
        all_methods(&mut group, n, spec, &payload, &peers);
    }
    group.finish();
}

fn size(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("tcp/size");
    for size in SIZES_BYTES {
        group.throughput(Throughput::Bytes((SIZE_SWEEP_PER_FLUSH * size) as u64));
        let spec = common::spec(ScenarioName::TcpSmall, size, SIZE_SWEEP_PER_FLUSH);
        all_methods(&mut group, size, spec, &Payload::new(size), &PEERS);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = per_flush, size
}
criterion_main!(benches);

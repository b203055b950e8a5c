//! TLS: 64-byte messages, 1024 per flush, over TLS 1.3 to a receiver thread that decrypts and
//! checks every byte (`volley bench --scenario tls-small`'s methods, by the same names; one
//! iteration is one flush):
//! - `volley-uring`, `volley-epoll` — `TlsStream::send` per message, one `flush` (4 records);
//! - `rustls-naive` — rustls on a `TcpStream`, a record and a `write` per message;
//! - `rustls-bufwriter` — rustls over a 64 KiB `BufWriter<TcpStream>`;
//! - `bufwriter-rustls` — a 64 KiB `BufWriter` over rustls.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volley_bench::tls::TlsBench;

const PER_FLUSH: usize = 1024;

fn tls_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("tls/small");
    group.throughput(Throughput::Elements(PER_FLUSH as u64));
    for method in TlsBench::METHODS {
        let mut t = match TlsBench::new(method, PER_FLUSH) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP: tls/small/{method}: {e}");
                continue;
            }
        };
        group.bench_function(BenchmarkId::new(method, PER_FLUSH), |b| {
            b.iter(|| t.batch().expect("batch"));
        });
        if let Err(e) = t.verify() {
            panic!("tls/small/{method}: {e}");
        }
    }
    group.finish();
}

criterion_group!(benches, tls_small);
criterion_main!(benches);

//! UDP over loopback to draining receivers.
//!
//! Methods (one iteration = one batch; `volley bench`'s methods under the names used here):
//! - `send` — one `send()`/`send_to()` per datagram on a std `UdpSocket` (`naive`);
//! - `sendmmsg` — no library: one `sendmmsg` per 1024 datagrams over headers built before
//!   timing (`raw-sendmmsg`);
//! - `gso` — `sendmsg` with a `UDP_SEGMENT` control message, 1200-byte segments, as many segments
//!   per call as fit `volley::limits::GSO_MAX_SEGMENTS` and `UDP_MAX_PAYLOAD` (`raw-gso`;
//!   `udp/1200B` only);
//! - `volley-epoll`, `volley-uring` — N `Engine::send`/`send_to` + one `Engine::flush` (the
//!   engine uses GSO itself where the kernel has it).
//!
//! Groups:
//! - `udp/1200B` — 64 or 1024 datagrams of 1200 B per batch on one connected socket (udp-gso).
//! - `udp/relay` — 172-byte frames to 256 peers, frame-major, 16 frames per flush: 4096
//!   datagrams per batch through one unconnected socket (udp-relay).
//!
//! The receivers drain with `recvmmsg` on their own thread; loopback drops what they cannot keep
//! up with, so these numbers are the sender's cost (nothing is verified after a benchmark).

mod common;

use criterion::{criterion_group, criterion_main, Throughput};
use volley_bench::scenario::{Payload, Spec};
use volley_bench::{MethodName, ScenarioName};

const DATAGRAM_BYTES: usize = 1200;
const BATCHES: [usize; 2] = [64, 1024];

/// `method` as benchmark `id`.
fn method(
    group: &mut common::Group<'_>,
    id: &str,
    method: MethodName,
    spec: Spec,
    payload: &Payload,
) {
    let Some(mut r) = common::runner(id, method, spec, payload) else {
        return;
    };
    // Probe once: without kernel GSO (or with it refused on this path) `gso` is skipped.
    if method == MethodName::RawGso {
        if let Err(e) = r.method.batch(&mut r.work) {
            eprintln!("skipping {id}: {e}");
            return;
        }
    }
    common::bench(group, id, spec.batch_messages(), &mut r);
}

/// `send`, `sendmmsg`, `gso` (where `gso`) and volley's backends on `spec`.
fn all_methods(group: &mut common::Group<'_>, spec: Spec, payload: &Payload, gso: bool) {
    method(group, "send", MethodName::Naive, spec, payload);
    method(group, "sendmmsg", MethodName::RawSendmmsg, spec, payload);
    if gso {
        method(group, "gso", MethodName::RawGso, spec, payload);
    }
    for (id, backend) in common::BACKENDS {
        method(group, id, backend, spec, payload);
    }
}

fn datagrams(c: &mut criterion::Criterion) {
    let payload = Payload::new(DATAGRAM_BYTES);
    let mut group = c.benchmark_group("udp/1200B");
    for count in BATCHES {
        group.throughput(Throughput::Elements(count as u64));
        let spec = common::spec(ScenarioName::UdpGso, DATAGRAM_BYTES, count);
        all_methods(&mut group, spec, &payload, true);
    }
    group.finish();
}

fn relay(c: &mut criterion::Criterion) {
    let spec = Spec::new(ScenarioName::UdpRelay, None, false);
    let payload = Payload::new(spec.msg_size);
    let mut group = c.benchmark_group("udp/relay");
    group.throughput(Throughput::Elements(spec.batch_messages() as u64));
    all_methods(&mut group, spec, &payload, false);
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = datagrams, relay
}
criterion_main!(benches);

//! What a dead destination costs a relay (issue: "dead peers that cost nothing"): 160-byte
//! frames, each to 8 destinations in turn through one unconnected socket, 16 frames per flush,
//! 20 000 frames; once with all 8 destinations open and once with one closed (ICMP port
//! unreachable for every datagram sent to it). Prints kernel transitions per flush, stale-error
//! resends, peer errors, and the flush latency p50/p99 on both backends, and on epoll with
//! `sample_peer_errors(true)` (`Epoll+s`).
//!
//! ```sh
//! cargo run --release -p volley-bench --example relay_dead
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use bytes::Bytes;
use volley::{Backend, Engine};

const FRAMES: usize = 20_000;
const PER_FLUSH: usize = 16;
const DESTS: usize = 8;

fn main() {
    println!(
        "{:<7} {:<10} {:>10} {:>9} {:>12} {:>12} {:>11} {:>11}",
        "backend", "dead", "flushes", "trans", "trans/flush", "stale", "peer errs", "p50/p99 µs"
    );
    for (backend, sampled) in [
        (Backend::Uring, false),
        (Backend::Epoll, false),
        (Backend::Epoll, true),
    ] {
        let mut base = 0.0;
        for dead in [false, true] {
            let (flushes, trans, stale, peer, p50, p99) = run(backend, sampled, dead);
            let per = trans as f64 / flushes as f64;
            if !dead {
                base = per;
            }
            println!(
                "{:<7} {:<10} {:>10} {:>9} {:>12.2} {:>12} {:>11} {:>5.1}/{:<5.1}{}",
                format!("{backend:?}{}", if sampled { "+s" } else { "" }),
                if dead { "1 of 8" } else { "none" },
                flushes,
                trans,
                per,
                stale,
                peer,
                p50,
                p99,
                if dead {
                    format!("  ({:.2}× the transitions of none)", per / base)
                } else {
                    String::new()
                }
            );
        }
    }
}

/// One relay run: (flushes, transitions, stale resends, peer errors, flush p50 µs, p99 µs).
fn run(backend: Backend, sampled: bool, dead: bool) -> (usize, u64, u64, u64, f64, f64) {
    let mut receivers = Vec::new();
    let mut dests: Vec<SocketAddr> = Vec::new();
    for i in 0..DESTS {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = s.local_addr().expect("addr");
        if dead && i == 5 {
            drop(s); // closed: every datagram to it draws an ICMP port unreachable
        } else {
            receivers.push(s);
        }
        dests.push(addr);
    }
    let mut e = Engine::builder()
        .backend(backend)
        .sample_peer_errors(sampled)
        .write_latency_every(0)
        .flush_latency_every(0)
        .build()
        .expect("engine");
    let id = e
        .register_udp(UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .expect("register");
    let frame = Bytes::from(vec![0x5a; 160]);
    let mut lat = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let before = e.stats().kernel_transitions;
    let mut flushes = 0;
    let drain = |rx: &[UdpSocket]| {
        let mut buf = [0u8; 2048];
        for s in rx {
            s.set_nonblocking(true).expect("nonblocking");
            while s.recv(&mut buf).is_ok() {}
        }
    };
    for f in 0..FRAMES {
        for &d in &dests {
            e.send_to(id, frame.clone(), d).expect("send_to");
        }
        if (f + 1) % PER_FLUSH == 0 {
            let t = Instant::now();
            let r = e.flush(id).expect("flush");
            lat.record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX))
                .expect("record");
            assert_eq!(r.failed, 0, "no datagram fails");
            flushes += 1;
            if flushes % 64 == 0 {
                drain(&receivers);
                let _ = e.take_peer_errors(id);
            }
        }
    }
    let s = e.stats();
    (
        flushes,
        s.kernel_transitions - before,
        s.stale_error_resends,
        s.peer_errors,
        lat.value_at_quantile(0.5) as f64 / 1000.0,
        lat.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

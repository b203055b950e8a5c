//! The user-space cost per datagram of volley's GSO path, for `valgrind --tool=callgrind`:
//! `BATCHES` × 1024 datagrams of 1200 bytes on one connected UDP socket, one flush per 1024
//! (udp-gso's shape), to a bound socket nobody reads (the kernel drops what does not fit; the
//! sender is not affected).
//!
//! ```sh
//! cargo build --release -p volley-bench --example gso_path
//! valgrind --tool=callgrind --toggle-collect='gso_path::run*' \
//!     target/release/examples/gso_path epoll   # or: uring
//! ```
//! Instructions per datagram = the `run` function's inclusive count ÷ (BATCHES × 1024).

use std::net::UdpSocket;

use bytes::Bytes;
use volley::{Backend, Engine};

const BATCHES: usize = 200;
const PER_FLUSH: usize = 1024;
const SIZE: usize = 1200;

fn main() {
    let how = std::env::args().nth(1).unwrap_or_else(|| "epoll".into());
    let backend = match how.as_str() {
        "epoll" => Backend::Epoll,
        "uring" => Backend::Uring,
        other => panic!("unknown backend {other}: epoll or uring"),
    };
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    tx.connect(sink.local_addr().expect("addr"))
        .expect("connect");
    let payload = Bytes::from_static(vec![7u8; SIZE * PER_FLUSH].leak());
    let mut engine = Engine::builder()
        .backend(backend)
        .write_latency_every(0)
        .flush_latency_every(0)
        .build()
        .expect("engine");
    let id = engine.register_udp(tx).expect("register");
    let sent = run(&mut engine, id, &payload);
    assert_eq!(
        sent,
        (BATCHES * PER_FLUSH) as u64,
        "datagrams reported sent"
    );
    println!(
        "{how}: {sent} datagrams, {} GSO sends",
        engine.stats().gso_sends
    );
}

#[inline(never)]
fn run(engine: &mut Engine, id: volley::SocketId, payload: &Bytes) -> u64 {
    let mut sent = 0;
    for _ in 0..BATCHES {
        for i in 0..PER_FLUSH {
            engine
                .send(id, payload.slice(i * SIZE..(i + 1) * SIZE))
                .expect("send");
        }
        sent += engine.flush(id).expect("flush").writes;
    }
    sent
}

//! The per-message cost of each way to send small TCP messages, for `valgrind --tool=callgrind`
//! (instruction counts do not depend on the machine's load): `BATCHES` × 1024 messages of 64
//! bytes, one flush per 1024, to a loopback receiver thread that discards them.
//!
//! ```sh
//! cargo build --release -p volley-bench --example hotpath
//! valgrind --tool=callgrind --toggle-collect='hotpath::run*' \
//!     target/release/examples/hotpath writer   # or: send, bufwriter
//! ```
//! Instructions per message = the `run_*` function's inclusive count ÷ (BATCHES × 1024).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use bytes::Bytes;
use volley::{Backend, Engine};

const BATCHES: usize = 200;
const PER_FLUSH: usize = 1024;
const SIZE: usize = 64;

fn main() {
    let how = std::env::args().nth(1).unwrap_or_else(|| "writer".into());
    // `latency`: one message per flush (tcp-latency's shape), through `send` + `flush`.
    if how == "latency" || how == "latency-write" {
        return latency(&how);
    }
    let (stream, rx) = connected();
    let payload = Bytes::from_static(vec![7u8; SIZE * PER_FLUSH].leak());
    match how.as_str() {
        "bufwriter" => run_bufwriter(stream, &payload),
        "send" | "writer" => {
            let mut engine = engine();
            let id = engine.register_tcp(stream).expect("register");
            if how == "send" {
                run_send(&mut engine, id, &payload);
            } else {
                run_writer(&mut engine, id, &payload);
            }
            drop(engine);
        }
        other => panic!("unknown method {other}: writer, send or bufwriter"),
    }
    let got = rx.join().expect("receiver");
    assert_eq!(got, BATCHES * PER_FLUSH * SIZE, "bytes received");
    println!("{how}: {} messages", BATCHES * PER_FLUSH);
}

#[inline(never)]
fn run_bufwriter(stream: TcpStream, payload: &Bytes) {
    let mut w = std::io::BufWriter::with_capacity(64 << 10, stream);
    for _ in 0..BATCHES {
        for i in 0..PER_FLUSH {
            let b = payload.slice(i * SIZE..(i + 1) * SIZE);
            w.write_all(&b).expect("write");
        }
        w.flush().expect("flush");
    }
}

#[inline(never)]
fn run_send(engine: &mut Engine, id: volley::SocketId, payload: &Bytes) {
    for _ in 0..BATCHES {
        for i in 0..PER_FLUSH {
            let b = payload.slice(i * SIZE..(i + 1) * SIZE);
            engine.send(id, b).expect("send");
        }
        engine.flush(id).expect("flush");
    }
}

#[inline(never)]
fn run_writer(engine: &mut Engine, id: volley::SocketId, payload: &Bytes) {
    for _ in 0..BATCHES {
        let mut w = engine.writer(id).expect("writer");
        for i in 0..PER_FLUSH {
            let b = payload.slice(i * SIZE..(i + 1) * SIZE);
            w.write(&b).expect("write");
        }
        w.flush().expect("flush");
    }
}

/// One 64-byte message per flush, 20 000 times: `latency` through the engine (`send` +
/// `flush`), `latency-write` through a plain `write` per message.
fn latency(how: &str) {
    const N: usize = 20_000;
    let (stream, rx) = connected();
    let payload = Bytes::from_static(vec![7u8; SIZE].leak());
    if how == "latency-write" {
        run_latency_write(stream, &payload, N);
    } else {
        let mut engine = engine();
        let id = engine.register_tcp(stream).expect("register");
        run_latency(&mut engine, id, &payload, N);
        drop(engine);
    }
    assert_eq!(rx.join().expect("receiver"), N * SIZE, "bytes received");
    println!("{how}: {N} messages");
}

#[inline(never)]
fn run_latency(engine: &mut Engine, id: volley::SocketId, payload: &Bytes, n: usize) {
    for _ in 0..n {
        engine.send(id, payload.clone()).expect("send");
        engine.flush(id).expect("flush");
    }
}

#[inline(never)]
fn run_latency_write(mut stream: TcpStream, payload: &Bytes, n: usize) {
    for _ in 0..n {
        stream.write_all(payload).expect("write");
    }
}

/// A `TCP_NODELAY` stream to a loopback receiver thread that reads to EOF and returns the
/// bytes it got.
fn connected() -> (TcpStream, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rx = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    (stream, rx)
}

/// An io_uring engine with no latency sampling (the loops time nothing themselves).
fn engine() -> Engine {
    Engine::builder()
        .backend(Backend::Uring)
        .write_latency_every(0)
        .flush_latency_every(0)
        .build()
        .expect("engine")
}

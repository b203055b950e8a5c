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
//!
//! One message per flush (tcp-latency's and udp-latency's shape), 20 000 times: `latency`
//! (`send` + `flush`), `latency-writer` (a `StreamWriter` per message, as `volley bench`
//! writes small TCP messages), `latency-write` (a plain `write` per message), `latency-udp`
//! (172-byte datagrams on a connected UDP socket, `send` + `flush`) and `latency-udp-send` (a
//! plain `send` per datagram); instructions per message = the `run_*` function's count ÷
//! 20 000. The engine's backend: `VOLLEY_BACKEND` (default io_uring where it works); a second
//! argument `general` turns the flush's solo path off (`EngineBuilder::solo_flush(false)`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use bytes::Bytes;
use volley::{Backend, Engine};

const BATCHES: usize = 200;
const PER_FLUSH: usize = 1024;
const SIZE: usize = 64;

fn main() {
    let how = std::env::args().nth(1).unwrap_or_else(|| "writer".into());
    let solo = std::env::args().nth(2).as_deref() != Some("general");
    if how.starts_with("latency-udp") {
        return latency_udp(&how, solo);
    }
    if how.starts_with("latency") {
        return latency(&how, solo);
    }
    let (stream, rx) = connected();
    let payload = Bytes::from_static(vec![7u8; SIZE * PER_FLUSH].leak());
    match how.as_str() {
        "bufwriter" => run_bufwriter(stream, &payload),
        "send" | "writer" => {
            let mut engine = engine(solo);
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

/// One message per flush, 20 000 times (see the module docs).
const LATENCY_MESSAGES: usize = 20_000;

/// One 64-byte message per flush: `latency` through the engine (`send` + `flush`),
/// `latency-writer` through a `StreamWriter` per message, `latency-write` through a plain
/// `write` per message.
fn latency(how: &str, solo: bool) {
    const N: usize = LATENCY_MESSAGES;
    let (stream, rx) = connected();
    let payload = Bytes::from_static(vec![7u8; SIZE].leak());
    let t = std::time::Instant::now();
    match how {
        "latency-write" => run_latency_write(stream, &payload, N),
        "latency" | "latency-writer" => {
            let mut engine = engine(solo);
            let id = engine.register_tcp(stream).expect("register");
            if how == "latency" {
                run_latency(&mut engine, id, &payload, N);
            } else {
                run_latency_writer(&mut engine, id, &payload, N);
            }
            drop(engine);
        }
        other => panic!("unknown method {other}: latency, latency-writer or latency-write"),
    }
    let ns = t.elapsed().as_nanos() / N as u128;
    assert_eq!(rx.join().expect("receiver"), N * SIZE, "bytes received");
    println!("{how}: {N} messages, {ns} ns each (wall clock, with set-up and teardown)");
}

#[inline(never)]
fn run_latency(engine: &mut Engine, id: volley::SocketId, payload: &Bytes, n: usize) {
    for _ in 0..n {
        engine.send(id, payload.clone()).expect("send");
        engine.flush(id).expect("flush");
    }
}

#[inline(never)]
fn run_latency_writer(engine: &mut Engine, id: volley::SocketId, payload: &Bytes, n: usize) {
    for _ in 0..n {
        let mut w = engine.writer(id).expect("writer");
        w.write(payload).expect("write");
        drop(w);
        engine.flush(id).expect("flush");
    }
}

#[inline(never)]
fn run_latency_write(mut stream: TcpStream, payload: &Bytes, n: usize) {
    for _ in 0..n {
        stream.write_all(payload).expect("write");
    }
}

/// One 172-byte datagram per flush on a connected UDP socket: `latency-udp` through the engine
/// (`send` + `flush`), `latency-udp-send` through a plain `send` per datagram.
fn latency_udp(how: &str, solo: bool) {
    const N: usize = LATENCY_MESSAGES;
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    tx.connect(rx.local_addr().expect("addr")).expect("connect");
    let counter = std::thread::spawn(move || {
        rx.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .expect("SO_RCVTIMEO");
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < N && rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let payload = Bytes::from_static(vec![7u8; 172].leak());
    let t = std::time::Instant::now();
    match how {
        "latency-udp-send" => run_latency_udp_send(&tx, &payload, N),
        "latency-udp" => {
            let mut engine = engine(solo);
            let id = engine.register_udp(tx).expect("register");
            run_latency(&mut engine, id, &payload, N);
            drop(engine);
        }
        other => panic!("unknown method {other}: latency-udp or latency-udp-send"),
    }
    // Loopback drops nothing the receiver has room for; a slow receiver may lose a few.
    let ns = t.elapsed().as_nanos() / N as u128;
    let got = counter.join().expect("receiver");
    println!("{how}: {N} datagrams, {got} received, {ns} ns each (wall clock, with set-up)");
}

#[inline(never)]
fn run_latency_udp_send(tx: &UdpSocket, payload: &Bytes, n: usize) {
    for _ in 0..n {
        tx.send(payload).expect("send");
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

/// An engine on `VOLLEY_BACKEND` (default: io_uring where it works) with no latency sampling
/// (the loops time nothing themselves); `solo`: the flush's solo path.
fn engine(solo: bool) -> Engine {
    Engine::builder()
        .backend(Backend::from_env().expect("VOLLEY_BACKEND"))
        .write_latency_every(0)
        .flush_latency_every(0)
        .solo_flush(solo)
        .build()
        .expect("engine")
}

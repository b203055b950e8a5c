//! `volley::tokio` on real loopback sockets, one `#[test]` per backend: `TcpSender` as an
//! `AsyncWrite` (many writes and a flush, `FramedWrite` with a length-delimited codec,
//! `tokio::io::copy`, backpressure against a slow reader, shutdown then EOF), N tasks sharing
//! one sender at far fewer kernel transitions than writes, `UdpSender` as a `Sink` (connected,
//! and to addresses), the reading halves, and the README's tokio example kept in step with the
//! compiled one. Every payload is checked byte for byte.

use std::future::{poll_fn, Future};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ::tokio::task::LocalSet;
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};
use volley::tokio::Driver;
use volley::{Backend, Engine};
use volley_tests::*;

per_backend!(
    tcp_many_writes_then_flush,
    tcp_framed_write_length_delimited,
    tcp_io_copy,
    tcp_backpressure_slow_reader,
    tcp_tasks_share_one_sender,
    tcp_flush_yields_only_with_other_handles,
    tcp_shutdown_then_eof,
    tcp_owned_send_and_split_echo,
    udp_sink_connected,
    udp_sink_to_addresses,
    example_tcp_echo_server_python,
    example_tcp_echo_server_socat,
    example_udp_echo_server_python,
    example_accept_server_python,
    example_relay_python,
);

/// Runs `f` on a `current_thread` runtime inside a `LocalSet` (the senders are `!Send`).
fn run<F: Future>(f: F) -> F::Output {
    let rt = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = LocalSet::new().block_on(&rt, async {
        ::tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the test finished within 60 s")
    });
    out
}

/// A driver over a fresh engine on `b` (inside the runtime).
fn driver(b: Backend) -> Driver {
    Driver::new(engine(b)).expect("driver")
}

fn driver_with(e: Engine) -> Driver {
    Driver::new(e).expect("driver")
}

fn tcp_many_writes_then_flush(b: Backend) {
    let ctx = format!("{b:?} many writes");
    let sizes = random_sizes(0x70c1, 20_000, 3000);
    let data = payload(0x70c1, sizes.iter().sum());
    let sink = TcpSink::start();
    let stream = sink.connect();
    run(async {
        let d = driver(b);
        let mut tx = d.register_tcp(stream).expect("register");
        let mut at = 0;
        for (i, n) in sizes.iter().enumerate() {
            tx.write_all(&data[at..at + n]).await.expect("write");
            at += n;
            if i % 5000 == 4999 {
                let r = tx.flush().await.expect("flush");
                assert_eq!(r.failed, 0, "{ctx}");
            }
        }
        let r = tx.flush().await.expect("flush");
        assert_eq!(r.failed, 0, "{ctx}");
        assert_eq!(
            d.with_engine(|e| e.stats().bytes_sent),
            data.len() as u64,
            "{ctx}"
        );
        tx.shutdown().await.expect("shutdown");
    });
    assert_bytes_eq(&sink.finish(), &data, &ctx);
}

fn tcp_framed_write_length_delimited(b: Backend) {
    let ctx = format!("{b:?} FramedWrite");
    let sizes = random_sizes(0xf4a3, 3000, 9000);
    let frames: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from(payload(i as u64, n)))
        .collect();
    let sink = TcpSink::start();
    let stream = sink.connect();
    run(async {
        let d = driver(b);
        let tx = d.register_tcp(stream).expect("register");
        let mut framed = FramedWrite::new(tx, LengthDelimitedCodec::new());
        for (i, f) in frames.iter().enumerate() {
            if i % 100 == 99 {
                framed.send(f.clone()).await.expect("send + flush");
            } else {
                framed.feed(f.clone()).await.expect("feed");
            }
        }
        SinkExt::<Bytes>::flush(&mut framed).await.expect("flush");
        framed.get_mut().shutdown().await.expect("shutdown");
    });
    let got = sink.finish();
    // Decode: 4-byte big-endian length, then the frame.
    let mut at = 0;
    for (i, f) in frames.iter().enumerate() {
        assert!(at + 4 <= got.len(), "{ctx}: stream ends before frame {i}");
        let len = u32::from_be_bytes(got[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, f.len(), "{ctx}: length of frame {i}");
        assert_bytes_eq(&got[at + 4..at + 4 + len], f, &format!("{ctx}: frame {i}"));
        at += 4 + len;
    }
    assert_eq!(at, got.len(), "{ctx}: bytes after the last frame");
}

fn tcp_io_copy(b: Backend) {
    let ctx = format!("{b:?} io::copy");
    let data = payload(0xc09, 3 << 20);
    let sink = TcpSink::start();
    let stream = sink.connect();
    run(async {
        let d = driver(b);
        let mut tx = d.register_tcp(stream).expect("register");
        // A reader that hands out the data in pieces, through a pipe written by another task.
        let (mut pipe_w, mut pipe_r) = ::tokio::io::duplex(64 * 1024);
        let feed = data.clone();
        let writer = ::tokio::task::spawn_local(async move {
            for chunk in feed.chunks(7000) {
                pipe_w.write_all(chunk).await.expect("pipe write");
            }
        });
        let n = ::tokio::io::copy(&mut pipe_r, &mut tx).await.expect("copy");
        writer.await.expect("writer task");
        assert_eq!(n, data.len() as u64, "{ctx}");
        tx.shutdown().await.expect("shutdown");
    });
    assert_bytes_eq(&sink.finish(), &data, &ctx);
}

fn tcp_backpressure_slow_reader(b: Backend) {
    let ctx = format!("{b:?} backpressure");
    const LIMIT: usize = 64 * 1024;
    let data = payload(0xbacc, 4 << 20);
    let sink = TcpSink::start_with(Some(32 * 1024), Duration::from_micros(300));
    let stream = sink.connect();
    set_sndbuf(&stream, 32 * 1024);
    let e = builder(b)
        .max_queued_bytes_per_socket(LIMIT)
        .build()
        .expect("engine");
    let pendings = run(async {
        let d = driver_with(e);
        let mut tx = d.register_tcp(stream).expect("register");
        let mut pendings = 0usize;
        let mut max_queued = 0usize;
        for chunk in data.chunks(16 * 1024) {
            let mut at = 0;
            while at < chunk.len() {
                let n = poll_fn(|cx| {
                    let r = Pin::new(&mut tx).poll_write(cx, &chunk[at..]);
                    if r.is_pending() {
                        pendings += 1;
                    }
                    r
                })
                .await
                .expect("write (backpressure is never an error)");
                at += n;
                max_queued = max_queued.max(d.with_engine(|e| e.total_queued_bytes()));
            }
        }
        tx.flush().await.expect("flush");
        tx.shutdown().await.expect("shutdown");
        assert!(
            max_queued <= LIMIT,
            "{ctx}: {max_queued} bytes queued, limit {LIMIT}"
        );
        pendings
    });
    assert!(pendings > 0, "{ctx}: the writes never waited");
    assert_bytes_eq(&sink.finish(), &data, &ctx);
}

/// A record one task writes: task (u16), sequence (u32), filler up to 48 bytes.
const RECORD: usize = 48;

fn record(task: u16, seq: u32) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..2].copy_from_slice(&task.to_be_bytes());
    r[2..6].copy_from_slice(&seq.to_be_bytes());
    let mix = task.to_le_bytes()[0] ^ seq.to_le_bytes()[0];
    for (i, x) in (0u8..).zip(r[6..].iter_mut()) {
        *x = mix ^ i;
    }
    r
}

/// A flush yields once (so other tasks' writes can join its submission) only when another
/// sender handle exists on the engine: alone, its first poll already submits; with a clone
/// alive, its first poll only yields and submits nothing. Both flushes complete and every byte
/// arrives.
fn tcp_flush_yields_only_with_other_handles(b: Backend) {
    let ctx = format!("{b:?} flush yield");
    let sink = TcpSink::start();
    let stream = sink.connect();
    let data = payload(0xf1u64, 2 * 4096);
    run(async {
        let d = driver(b);
        let mut tx = d.register_tcp(stream).expect("register");
        let transitions = || d.with_engine(|e| e.stats().kernel_transitions);
        // Polls `tx.flush()` once: whether that poll submitted, then the flush to its end.
        async fn first_poll_submits(
            tx: &mut volley::tokio::TcpSender,
            transitions: &dyn Fn() -> u64,
        ) -> bool {
            let before = transitions();
            let mut flush = std::pin::pin!(tx.flush());
            let first = poll_fn(|cx| Poll::Ready(flush.as_mut().poll(cx))).await;
            let submitted = transitions() > before;
            if first.is_pending() {
                flush.await.expect("flush");
            }
            submitted
        }
        tx.write_all(&data[..4096]).await.expect("write");
        assert!(
            first_poll_submits(&mut tx, &transitions).await,
            "{ctx}: the only handle's flush submits at once"
        );
        let clone = tx.clone();
        tx.write_all(&data[4096..]).await.expect("write");
        assert!(
            !first_poll_submits(&mut tx, &transitions).await,
            "{ctx}: with a clone alive the flush yields first"
        );
        drop(clone);
        tx.shutdown().await.expect("shutdown");
    });
    assert_bytes_eq(&sink.finish(), &data, &ctx);
}

fn tcp_tasks_share_one_sender(b: Backend) {
    let ctx = format!("{b:?} 64 tasks, one sender");
    const TASKS: u16 = 64;
    const PER_TASK: u32 = 100;
    let sink = TcpSink::start();
    let stream = sink.connect();
    let (bytes, transitions) = run(async {
        let d = driver(b);
        let tx = d.register_tcp(stream).expect("register");
        d.with_engine(|e| e.reset_stats());
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let mut tx = tx.clone();
            tasks.push(::tokio::task::spawn_local(async move {
                for s in 0..PER_TASK {
                    tx.write_all(&record(t, s)).await.expect("write");
                    AsyncWriteExt::flush(&mut tx).await.expect("flush");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let mut tx = tx;
        tx.shutdown().await.expect("shutdown");
        let st = d.with_engine(|e| (e.stats().bytes_sent, e.stats().kernel_transitions));
        drop(tx);
        st
    });
    let total = u64::from(TASKS) * u64::from(PER_TASK);
    assert_eq!(bytes, total * RECORD as u64, "{ctx}: bytes sent");
    let writes = total;
    println!("{ctx}: {writes} writes, {transitions} kernel transitions");
    assert!(
        transitions < writes / 8,
        "{ctx}: {transitions} transitions for {writes} writes (want < {})",
        writes / 8
    );
    // Every record whole, each task's in order, none lost or twice.
    let got = sink.finish();
    assert_eq!(
        got.len() as u64,
        total * RECORD as u64,
        "{ctx}: bytes received"
    );
    let mut next = vec![0u32; usize::from(TASKS)];
    for r in got.chunks(RECORD) {
        let t = u16::from_be_bytes([r[0], r[1]]);
        let s = u32::from_be_bytes([r[2], r[3], r[4], r[5]]);
        assert!(t < TASKS, "{ctx}: bad task {t}");
        assert_eq!(s, next[usize::from(t)], "{ctx}: task {t} out of order");
        assert_eq!(r, record(t, s), "{ctx}: record {t}/{s} corrupted");
        next[usize::from(t)] += 1;
    }
}

fn tcp_shutdown_then_eof(b: Backend) {
    let ctx = format!("{b:?} shutdown");
    let data = payload(0x5d, 300_000);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to EOF");
        got
    });
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    run(async {
        let d = driver(b);
        let mut tx = d.register_tcp(stream).expect("register");
        for c in data.chunks(1000) {
            tx.write_all(c).await.expect("write");
        }
        // No flush: shutdown flushes first, then half-closes.
        tx.shutdown().await.expect("shutdown");
        // The sender is still alive: the EOF came from the shutdown, not from a close.
        let got = ::tokio::task::spawn_blocking(move || peer.join().expect("peer"))
            .await
            .expect("join");
        assert_bytes_eq(&got, &data, &ctx);
        let e = tx
            .write_all(b"late")
            .await
            .and(AsyncWriteExt::flush(&mut tx).await);
        assert!(e.is_err(), "{ctx}: a write after shutdown succeeded");
    });
}

fn tcp_owned_send_and_split_echo(b: Backend) {
    let ctx = format!("{b:?} split echo");
    let msgs: Vec<Bytes> = random_sizes(0xec0, 500, 20_000)
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from(payload(0xec0 ^ i as u64, n)))
        .collect();
    let want: Vec<u8> = msgs.iter().flat_map(|m| m.iter().copied()).collect();
    let got = run(async {
        let d = driver(b);
        let listener = ::tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The echo side: a reader and a sender on the accepted stream, one flush per read.
        let server_driver = d.clone();
        let server = ::tokio::task::spawn_local(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (mut rx, mut tx) = server_driver.split_tcp(s).expect("split");
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                buf.reserve(64 * 1024);
                let n = rx.read_buf(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                tx.send(buf.split().freeze()).await.expect("send");
                tx.flush().await.expect("flush");
            }
            tx.shutdown().await.expect("shutdown");
        });
        // The client: owned buffers out through volley, the echo read back.
        let s = ::tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let (mut rx, mut tx) = d.split_tcp(s).expect("split");
        let reader = ::tokio::task::spawn_local(async move {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).await.expect("read echo");
            got
        });
        for m in &msgs {
            tx.send(m.clone()).await.expect("send");
        }
        tx.shutdown().await.expect("shutdown");
        server.await.expect("server");
        reader.await.expect("reader")
    });
    assert_bytes_eq(&got, &want, &ctx);
}

fn udp_sink_connected(b: Backend) {
    let ctx = format!("{b:?} Sink<Bytes>");
    let sent: Vec<Bytes> = random_sizes(0xd9, 2000, 1400)
        .iter()
        .enumerate()
        .map(|(i, &n)| dgram(i as u64, n))
        .collect();
    let sink = DgramSink::start("127.0.0.1:0", sent.len(), Duration::from_secs(5));
    let sock = udp_connected(sink.addr);
    force_rcvbuf(&sock, 1 << 20);
    let report = run(async {
        let d = driver(b);
        let mut tx = d.register_udp(sock).expect("register");
        for (i, m) in sent.iter().enumerate() {
            if i % 250 == 249 {
                SinkExt::<Bytes>::send(&mut tx, m.clone())
                    .await
                    .expect("send");
            } else {
                SinkExt::<Bytes>::feed(&mut tx, m.clone())
                    .await
                    .expect("feed");
            }
        }
        SinkExt::<Bytes>::flush(&mut tx).await.expect("flush");
        let last = tx.last_report().expect("a report after the flush");
        assert_eq!(last.failed, 0, "{ctx}: failures in the last report");
        d.with_engine(|e| (e.stats().writes_sent, e.stats().bytes_sent))
    });
    let bytes: usize = sent.iter().map(|m| m.len()).sum();
    assert_eq!(report, (sent.len() as u64, bytes as u64), "{ctx}: sent");
    assert_same_datagrams(&sink.finish(), &sent, &ctx);
}

fn udp_sink_to_addresses(b: Backend) {
    let ctx = format!("{b:?} Sink<(Bytes, SocketAddr)>");
    let sent: Vec<Bytes> = (0..600)
        .map(|i: usize| dgram(0xa0 + i as u64, 40 + (i * 7) % 900))
        .collect();
    let sinks = [
        DgramSink::start("127.0.0.1:0", 300, Duration::from_secs(5)),
        DgramSink::start("127.0.0.1:0", 300, Duration::from_secs(5)),
    ];
    let addrs: Vec<SocketAddr> = sinks.iter().map(|s| s.addr).collect();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let report = run(async {
        let d = driver(b);
        let mut tx = d.register_udp(sock).expect("register");
        for (i, m) in sent.iter().enumerate() {
            tx.feed((m.clone(), addrs[i % 2])).await.expect("feed");
        }
        SinkExt::<(Bytes, SocketAddr)>::flush(&mut tx)
            .await
            .expect("flush");
        // A connected-socket send on this unconnected one is refused, not hung.
        let wrong = SinkExt::<Bytes>::send(&mut tx, Bytes::from_static(b"x")).await;
        assert!(
            wrong.is_err(),
            "{ctx}: Sink<Bytes> on an unconnected socket"
        );
        tx.last_report().expect("report")
    });
    assert_eq!(report.writes, sent.len() as u64, "{ctx}: report writes");
    assert_eq!(report.failed, 0, "{ctx}: report failures");
    assert_eq!(
        report.bytes,
        sent.iter().map(|m| m.len() as u64).sum::<u64>(),
        "{ctx}: report bytes"
    );
    for (k, s) in sinks.into_iter().enumerate() {
        let mine: Vec<Bytes> = sent.iter().skip(k).step_by(2).cloned().collect();
        assert_same_datagrams(&s.finish(), &mine, &format!("{ctx}: receiver {k}"));
    }
}

// ---- The examples' servers against clients nobody here wrote ----------------------------------

/// The examples' server code, included as modules: the test runs the same `serve` functions the
/// example programs run.
#[expect(dead_code, reason = "the examples' `main` runs only as a program")]
#[path = "../../engine/examples/tcp_echo_server.rs"]
mod tcp_echo_server;

#[expect(dead_code, reason = "the examples' `main` runs only as a program")]
#[expect(
    clippy::duplicate_mod,
    reason = "each server example includes the shared accept loop (examples/common) as its own \
              module, as its own program does"
)]
#[path = "../../engine/examples/accept_server.rs"]
mod accept_server;

#[expect(dead_code, reason = "the examples' `main` runs only as a program")]
#[path = "../../engine/examples/udp_echo_server.rs"]
mod udp_echo_server;

#[expect(dead_code, reason = "the examples' `main` runs only as a program")]
#[path = "../../engine/examples/relay.rs"]
mod relay;

/// A server running on its own thread, runtime and engine until [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: ::tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Starts `serve(driver, stop)` on a thread; `bind` makes its socket there and says where.
    fn start<S, F>(b: Backend, serve: S) -> Server
    where
        S: FnOnce(Driver, SocketAddrTx, ::tokio::sync::oneshot::Receiver<()>) -> F + Send + 'static,
        F: Future<Output = ()>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = ::tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            run(async move {
                serve(driver(b), addr_tx, stop_rx).await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the server started");
        Server { addr, stop, thread }
    }

    /// Stops it (the same path as Ctrl-C) and waits for it to return.
    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().expect("server thread");
    }
}

type SocketAddrTx = std::sync::mpsc::Sender<SocketAddr>;

async fn stopped(rx: ::tokio::sync::oneshot::Receiver<()>) {
    let _ = rx.await;
}

fn tcp_server(b: Backend, accept: bool) -> Server {
    Server::start(b, move |d, addr_tx, stop| async move {
        let listener = ::tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addr_tx
            .send(listener.local_addr().expect("addr"))
            .expect("addr");
        let r = if accept {
            accept_server::serve(listener, d, stopped(stop)).await
        } else {
            tcp_echo_server::serve(listener, d, stopped(stop)).await
        };
        r.expect("serve");
    })
}

/// Runs `python3 -c script args...`; panics with its output unless it exits 0.
fn python(ctx: &str, script: &str, args: &[String]) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{ctx}: the Python client failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{ctx}: {}", String::from_utf8_lossy(&out.stdout).trim());
}

/// Python echo clients: CONNS concurrent connections, each sending a random amount (up to
/// 300 000 bytes) in random pieces while reading the echo, then half-closing and checking the
/// echo byte for byte.
const PY_TCP_ECHO: &str = r#"
import os, random, socket, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
conns, seed = int(sys.argv[2]), int(sys.argv[3])
errors = []
def one(k):
    rnd = random.Random(seed * 1000 + k)
    data = rnd.randbytes(rnd.randint(1, 300000))
    s = socket.create_connection((host, int(port)), timeout=30)
    got = bytearray()
    def reader():
        while True:
            b = s.recv(65536)
            if not b:
                return
            got.extend(b)
    t = threading.Thread(target=reader); t.start()
    at = 0
    while at < len(data):
        n = rnd.randint(1, 20000)
        s.sendall(data[at:at + n]); at += n
    s.shutdown(socket.SHUT_WR)
    t.join(); s.close()
    if bytes(got) != data:
        errors.append(f"connection {k}: sent {len(data)} bytes, echo {len(got)} bytes, differ")
ts = [threading.Thread(target=one, args=(k,)) for k in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
if errors:
    print("; ".join(errors)); sys.exit(1)
print(f"{conns} connections echoed exactly")
"#;

fn example_tcp_echo_server_python(b: Backend) {
    let ctx = format!("{b:?} tcp_echo_server vs Python");
    let server = tcp_server(b, false);
    python(
        &ctx,
        PY_TCP_ECHO,
        &[server.addr.to_string(), "64".into(), "1".into()],
    );
    server.stop();
}

fn example_tcp_echo_server_socat(b: Backend) {
    let ctx = format!("{b:?} tcp_echo_server vs socat");
    let have = std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("SKIP: {ctx}: socat is not installed");
        return;
    }
    let server = tcp_server(b, false);
    let dir = std::env::temp_dir();
    let clients: Vec<_> = (0..16u64)
        .map(|k| {
            let data = payload(0x50ca7 + k, random_sizes(k, 1, 1 << 20)[0]);
            let path = dir.join(format!("volley-socat-{}-{b:?}-{k}", std::process::id()));
            std::fs::write(&path, &data).expect("write input");
            // stdin → the server, the echo → stdout; -t: after stdin's EOF (sent as a
            // half-close), wait up to 30 s for the echo's EOF.
            let child = std::process::Command::new("socat")
                .args(["-t", "30", "-T", "60", "-"])
                .arg(format!("TCP:{}", server.addr))
                .stdin(std::fs::File::open(&path).expect("open input"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("socat starts");
            (path, data, child)
        })
        .collect();
    for (k, (path, data, child)) in clients.into_iter().enumerate() {
        let out = child.wait_with_output().expect("socat");
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "{ctx}: socat {k} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_bytes_eq(&out.stdout, &data, &format!("{ctx}: connection {k}"));
    }
    server.stop();
}

/// A Python UDP client: COUNT datagrams of random sizes (each numbered), 32 unanswered at most;
/// every echo must be whole, none twice; counts and a hash of the echoed bytes are compared.
const PY_UDP_ECHO: &str = r#"
import hashlib, random, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
count = int(sys.argv[2])
rnd = random.Random(5)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.connect((host, int(port)))
s.settimeout(5)
sent = {}
h_sent, h_got = hashlib.sha256(), hashlib.sha256()
got, i = 0, 0
while got < count:
    while i < count and i - got < 32:
        d = i.to_bytes(4, "big") + rnd.randbytes(rnd.randint(0, 1400))
        sent[i] = d; s.send(d); i += 1
    d = s.recv(65536)
    k = int.from_bytes(d[:4], "big")
    if sent.pop(k, None) != d:
        print(f"datagram {k}: not what was sent (or twice)"); sys.exit(1)
    got += 1
print(f"{count} datagrams echoed whole")
"#;

fn example_udp_echo_server_python(b: Backend) {
    let ctx = format!("{b:?} udp_echo_server vs Python");
    let server = Server::start(b, |d, addr_tx, stop| async move {
        let sock = udp_echo_server::bind("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        addr_tx
            .send(sock.local_addr().expect("addr"))
            .expect("addr");
        udp_echo_server::serve(sock, d, stopped(stop))
            .await
            .expect("serve");
    });
    python(&ctx, PY_UDP_ECHO, &[server.addr.to_string(), "5000".into()]);
    server.stop();
}

/// 200 concurrent Python clients of the accept server: each sends 3 messages ending in `<EOF>`
/// (in random pieces, the marker itself split at times) on one connection and reads each
/// answer, which must be the whole message, marker included.
const PY_ACCEPT: &str = r#"
import random, socket, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
conns = int(sys.argv[2])
errors = []
def one(k):
    rnd = random.Random(k)
    s = socket.create_connection((host, int(port)), timeout=30)
    for m in range(3):
        body = bytes(rnd.choice(b"abcdefghij <>EOF") for _ in range(rnd.randint(0, 5000)))
        body = body.replace(b"<EOF>", b"<E0F>")
        msg = body + b"<EOF>"
        at = 0
        while at < len(msg):
            n = rnd.randint(1, 700); s.sendall(msg[at:at + n]); at += n
        got = b""
        while len(got) < len(msg):
            b = s.recv(65536)
            if not b:
                break
            got += b
        if got != msg:
            errors.append(f"client {k} message {m}: sent {len(msg)} bytes, answer {len(got)}"); break
    s.close()
ts = [threading.Thread(target=one, args=(k,)) for k in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
if errors:
    print("; ".join(errors[:10])); sys.exit(1)
print(f"{conns} clients answered exactly")
"#;

fn example_accept_server_python(b: Backend) {
    let ctx = format!("{b:?} accept_server vs Python");
    let server = tcp_server(b, true);
    python(&ctx, PY_ACCEPT, &[server.addr.to_string(), "200".into()]);
    server.stop();
}

/// Python receivers and sender for the relay: two receivers print their ports, then, given the
/// relay's address on stdin, COUNT datagrams of random sizes go to the relay, 32 at a time until
/// both receivers counted them; each receiver's count and SHA-256 over the datagrams (sorted:
/// datagrams may be reordered) must match what was sent.
const PY_RELAY: &str = r#"
import hashlib, random, socket, sys, threading, time
count = int(sys.argv[1])
rx = []
for _ in range(2):
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    r.bind(("127.0.0.1", 0)); r.settimeout(5); rx.append(r)
print(" ".join(str(r.getsockname()[1]) for r in rx), flush=True)
host, port = sys.stdin.readline().strip().rsplit(":", 1)
got = [[] for _ in rx]
def receive(k):
    while len(got[k]) < count:
        try:
            got[k].append(rx[k].recv(65536))
        except socket.timeout:
            return
ts = [threading.Thread(target=receive, args=(k,)) for k in range(2)]
[t.start() for t in ts]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rnd = random.Random(9)
sent = []
for i in range(count):
    d = i.to_bytes(4, "big") + rnd.randbytes(rnd.randint(0, 1200))
    sent.append(d); s.sendto(d, (host, int(port)))
    if i % 32 == 31:
        deadline = time.time() + 5
        while min(len(g) for g in got) <= i and time.time() < deadline:
            time.sleep(0.0005)
[t.join() for t in ts]
want = hashlib.sha256(b"".join(sorted(sent))).hexdigest()
for k in range(2):
    hk = hashlib.sha256(b"".join(sorted(got[k]))).hexdigest()
    if len(got[k]) != count or hk != want:
        print(f"receiver {k}: {len(got[k])} of {count} datagrams, sha256 {hk} vs {want}"); sys.exit(1)
print(f"2 receivers got all {count} datagrams whole, sha256 {want[:16]}")
"#;

fn example_relay_python(b: Backend) {
    use std::io::{BufRead, Write};
    let ctx = format!("{b:?} relay vs Python");
    let mut py = std::process::Command::new("python3")
        .arg("-c")
        .arg(PY_RELAY)
        .arg("3000")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut out = std::io::BufReader::new(py.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the receivers' ports");
    let peers: Vec<SocketAddr> = line
        .split_whitespace()
        .map(|p| format!("127.0.0.1:{p}").parse().expect("port"))
        .collect();
    assert_eq!(peers.len(), 2, "{ctx}: receivers: {line:?}");
    let server = Server::start(b, move |d, addr_tx, stop| async move {
        let sock = ::tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addr_tx
            .send(sock.local_addr().expect("addr"))
            .expect("addr");
        relay::serve(sock, peers, d, stopped(stop))
            .await
            .expect("serve");
    });
    let mut stdin = py.stdin.take().expect("stdin");
    writeln!(stdin, "{}", server.addr).expect("tell python the relay");
    drop(stdin);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("python output");
    let status = py.wait().expect("python exits");
    server.stop();
    assert!(status.success(), "{ctx}: {rest}");
    eprintln!("{ctx}: {}", rest.trim());
}

/// The README's "With tokio" example is the one `volley::tokio`'s module docs compile (the
/// doctest), line for line.
#[test]
fn readme_tokio_example_is_the_compiled_one() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let module =
        std::fs::read_to_string(format!("{root}/engine/src/tokio/mod.rs")).expect("mod.rs");
    let section = readme
        .split("\n## With tokio\n")
        .nth(1)
        .expect("README has a \"## With tokio\" section");
    let block = |text: &str| -> Vec<String> {
        let start = text.find("```rust").expect("a rust block") + "```rust".len();
        let rest = &text[start..];
        let end = rest.find("```").expect("the block ends");
        rest[..end]
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    let readme_lines = block(section);
    let doc: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let doc = doc.replace("```no_run", "```rust");
    let doc_lines: Vec<String> = block(&doc[doc.find("# Example").expect("an example")..])
        .into_iter()
        // Hidden lines (`# `) are the doctest's scaffolding, not shown in the README.
        .filter(|l| !l.starts_with("# ") && l != "#")
        .collect();
    assert_eq!(
        readme_lines, doc_lines,
        "README's tokio example drifted from the doctest"
    );
}

//! Zero-copy against copying sends, per op size: the crossover measurement behind the default
//! of `EngineBuilder::zerocopy_threshold` (docs/bench/zerocopy.md), and the cost of adaptive
//! zero-copy on loopback bulk transfers.
//!
//! ```sh
//! cargo build --release -p volley-bench --example zerocopy
//! Z=target/release/examples/zerocopy
//! $Z sink 127.0.0.1:7000 &                 # loopback
//! $Z send 127.0.0.1:7000 [ROUNDS]
//! scripts/zerocopy-bench                   # the same over a veth pair between namespaces
//! $Z bulk 127.0.0.1:7000 [ROUNDS]         # only the tcp-bulk comparison (default 31 rounds)
//! ZCDBG=1 $Z dbg 127.0.0.1:7000           # one 1 KiB round each, copy and adaptive, with stats
//! ```
//!
//! `send` measures, for op sizes 1 KiB … 256 KiB (one buffer per op, one flush per op, 64 MiB
//! per round on a fresh connection), three methods: `copy` (no zero-copy), `zc` (zero-copy on
//! every op, even after the kernel reported it copied: `zerocopy_adaptive(false)`) and
//! `adaptive` (the engine's zero-copy: back to copying on the first "copied" report). Then
//! `bulk`: 64 KiB × 16 per flush (the `tcp-bulk` scenario), `copy` against `adaptive` with a
//! 16 KiB threshold. Rounds interleave the methods (rotating order); it prints medians in MB/s
//! and the median of the per-round ratios (a round runs every method back to back).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use bytes::Bytes;
use volley::{Backend, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Copy,
    Zc,
    Adaptive,
}

fn engine(m: Method, threshold: usize) -> Engine {
    let b = Engine::builder().backend(Backend::Uring);
    match m {
        Method::Copy => b.zerocopy_threshold(None),
        Method::Zc => b
            .zerocopy_threshold(Some(threshold))
            .zerocopy_adaptive(false),
        Method::Adaptive => b.zerocopy_threshold(Some(threshold)),
    }
    .build()
    .expect("io_uring engine")
}

/// One round: `total` bytes as `size`-byte buffers, `per_flush` per flush, on a fresh
/// connection. Returns MB/s and the zero-copy counters.
fn round(
    addr: &str,
    m: Method,
    threshold: usize,
    data: &Bytes,
    size: usize,
    per_flush: usize,
) -> (f64, u64, u64) {
    let mut e = engine(m, threshold);
    let conn = TcpStream::connect(addr).expect("connect");
    conn.set_nodelay(true).unwrap();
    let s = e.register_tcp(conn).unwrap();
    let start = Instant::now();
    let mut n = 0;
    for at in (0..data.len()).step_by(size) {
        e.send(s, data.slice(at..at + size)).unwrap();
        n += 1;
        if n % per_flush == 0 {
            e.flush(s).unwrap();
        }
    }
    e.flush(s).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let st = e.stats().clone();
    if std::env::var_os("ZCDBG").is_some() {
        eprintln!(
            "{m:?} {size}: transitions {} batches {} sqes {} zc {} notifs {} pending {}",
            st.kernel_transitions,
            st.batches,
            st.sqes,
            st.zc_sends,
            st.zc_notifications,
            e.zerocopy_pending()
        );
    }
    drop(e);
    (data.len() as f64 / secs / 1e6, st.zc_sends, st.zc_copied)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn data() -> Bytes {
    let total = 64 << 20;
    Bytes::from(
        (0..total)
            .map(|i: u32| (i.wrapping_mul(7) + i / 4099).to_le_bytes()[0])
            .collect::<Vec<u8>>(),
    )
}

fn send(addr: &str, rounds: usize) {
    let data = data();
    let methods = [Method::Copy, Method::Zc, Method::Adaptive];
    println!(
        "| op size | copy MB/s | zc MB/s | zc/copy | adaptive MB/s | adaptive/copy | zc copied \
         | adaptive zc sends/round |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for kib in [1, 2, 4, 8, 16, 32, 64, 128, 256] {
        let size = kib << 10;
        let mut res: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let mut copied = (0, 0);
        let mut adaptive_zc = 0;
        for r in 0..rounds {
            for k in 0..3 {
                let i = (k + r) % 3;
                let (mbs, sends, c) = round(addr, methods[i], 1, &data, size, 1);
                match methods[i] {
                    Method::Zc => copied = (copied.0 + c, copied.1 + sends),
                    Method::Adaptive => adaptive_zc += sends,
                    Method::Copy => {}
                }
                res[i].push(mbs);
            }
        }
        let mut zr: Vec<f64> = res[1].iter().zip(&res[0]).map(|(z, c)| z / c).collect();
        let mut ar: Vec<f64> = res[2].iter().zip(&res[0]).map(|(a, c)| a / c).collect();
        let (zr, ar) = (median(&mut zr), median(&mut ar));
        let (c, z, a) = (
            median(&mut res[0]),
            median(&mut res[1]),
            median(&mut res[2]),
        );
        println!(
            "| {kib} KiB | {c:.0} | {z:.0} | {zr:.2} | {a:.0} | {ar:.2} | {}/{} | {:.1} |",
            copied.0,
            copied.1,
            adaptive_zc as f64 / rounds as f64
        );
    }
    bulk(addr, rounds.max(11), &data);
}

/// tcp-bulk: 64 KiB × 16 per flush, copying against adaptive zero-copy (16 KiB), same run,
/// interleaved rounds, medians.
fn bulk(addr: &str, rounds: usize, data: &Bytes) {
    let mut res: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut zc = 0;
    for r in 0..rounds {
        for k in 0..2 {
            let i = (k + r) % 2;
            let m = [Method::Copy, Method::Adaptive][i];
            let (mbs, sends, _) = round(addr, m, 16 << 10, data, 64 << 10, 16);
            zc += sends;
            res[i].push(mbs);
        }
    }
    let mut ratios: Vec<f64> = res[1].iter().zip(&res[0]).map(|(a, c)| a / c).collect();
    let paired = median(&mut ratios);
    let (c, a) = (median(&mut res[0]), median(&mut res[1]));
    println!(
        "bulk (64 KiB x 16 per flush, {rounds} rounds): copy {c:.0} MB/s, adaptive zc (16 KiB) \
         {a:.0} MB/s, {:+.1} %; median of per-round ratios {:+.1} % ({zc} zero-copy sends in \
         {rounds} rounds)",
        (a / c - 1.0) * 100.0,
        (paired - 1.0) * 100.0
    );
}

fn sink(addr: &str) {
    let l = TcpListener::bind(addr).expect("bind");
    println!("listening on {}", l.local_addr().unwrap());
    for c in l.incoming() {
        let mut c = c.expect("accept");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            while c.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sink") => sink(args.get(2).map_or("127.0.0.1:7000", String::as_str)),
        Some("send") => send(
            args.get(2).map_or("127.0.0.1:7000", String::as_str),
            args.get(3).and_then(|r| r.parse().ok()).unwrap_or(5),
        ),
        Some("dbg") => {
            let data = data();
            for m in [Method::Copy, Method::Adaptive] {
                let r = round(&args[2], m, 1, &data, 1024, 1);
                println!("{m:?} {:.0} MB/s", r.0);
            }
        }
        Some("bulk") => bulk(
            args.get(2).map_or("127.0.0.1:7000", String::as_str),
            args.get(3).and_then(|r| r.parse().ok()).unwrap_or(31),
            &data(),
        ),
        _ => eprintln!("usage: zerocopy sink ADDR | zerocopy send|bulk ADDR [ROUNDS]"),
    }
}

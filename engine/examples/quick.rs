use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;
use volley::{Backend, Engine};

fn sink() -> (std::net::SocketAddr, std::thread::JoinHandle<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (
        a,
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            n
        }),
    )
}

fn main() {
    let total: usize = std::env::var("N")
        .map(|s| s.parse().unwrap())
        .unwrap_or(5_000_000);
    let batch: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1024);
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    {
        let (a, h) = sink();
        let mut s = TcpStream::connect(a).unwrap();
        s.set_nodelay(true).unwrap();
        let n = total / 20;
        let t = Instant::now();
        for i in 0..n {
            s.write_all(&big[(i % 1000) * 64..(i % 1000) * 64 + 64])
                .unwrap();
        }
        let el = t.elapsed();
        drop(s);
        h.join().unwrap();
        println!("naive: {:.0} msg/s", n as f64 / el.as_secs_f64());
    }
    for b in [Backend::Epoll, Backend::Uring] {
        for lat in [true] {
            let (a, h) = sink();
            let mut e = Engine::builder()
                .backend(b)
                .write_latency_every(if lat { 16 } else { 0 })
                .build()
                .unwrap();
            let c = TcpStream::connect(a).unwrap();
            c.set_nodelay(true).unwrap();
            let id = e.register_tcp(c).unwrap();
            let t = Instant::now();
            let mut i = 0;
            while i < total {
                for _ in 0..batch {
                    let o = (i % 1000) * 64;
                    e.send(id, big.slice(o..o + 64)).unwrap();
                    i += 1;
                }
                e.flush(id).unwrap();
            }
            let el = t.elapsed();
            let st = e.stats().clone();
            drop(e.close(id).unwrap());
            h.join().unwrap();
            println!(
                "{:?} lat={lat}: {:.0} msg/s transitions/msg {:.5}",
                b,
                total as f64 / el.as_secs_f64(),
                st.kernel_transitions as f64 / total as f64
            );
        }
    }
}

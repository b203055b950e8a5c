use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;
use volley::{Backend, Engine};

fn main() {
    let conns = 64;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let big = Bytes::from(vec![7u8; 4096]);
    let mut results = vec![];
    for round in 0..6 {
        for b in [Some(Backend::Epoll), Some(Backend::Uring), None] {
            let mut clients = vec![];
            let mut servers = vec![];
            for _ in 0..conns {
                let c = TcpStream::connect(a).unwrap();
                c.set_nodelay(true).unwrap();
                clients.push(c);
                servers.push(l.accept().unwrap().0);
            }
            let h = std::thread::spawn(move || {
                // single reader thread polling all servers nonblocking
                for s in &servers {
                    s.set_nonblocking(true).unwrap();
                }
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                let mut open = servers.len();
                let mut closed = vec![false; servers.len()];
                while open > 0 {
                    let mut any = false;
                    for (i, mut s) in servers.iter().enumerate() {
                        if closed[i] {
                            continue;
                        }
                        match s.read(&mut buf) {
                            Ok(0) => {
                                closed[i] = true;
                                open -= 1
                            }
                            Ok(n) => {
                                total += n as u64;
                                any = true
                            }
                            Err(_) => {}
                        }
                    }
                    if !any {
                        std::thread::yield_now()
                    }
                }
                total
            });
            let rounds = 2000;
            let t;
            let el;
            match b {
                Some(b) => {
                    let mut e = Engine::builder().backend(b).build().unwrap();
                    let ids: Vec<_> = clients
                        .into_iter()
                        .map(|c| e.register_tcp(c).unwrap())
                        .collect();
                    t = Instant::now();
                    for _ in 0..rounds {
                        for id in &ids {
                            for k in 0..16 {
                                e.send(*id, big.slice(k * 64..k * 64 + 64)).unwrap();
                            }
                        }
                        e.flush_all().unwrap();
                    }
                    el = t.elapsed();
                    drop(e);
                }
                None => {
                    t = Instant::now();
                    for _ in 0..rounds / 10 {
                        for c in clients.iter_mut() {
                            for k in 0..16 {
                                c.write_all(&big[k * 64..k * 64 + 64]).unwrap();
                            }
                        }
                    }
                    el = t.elapsed() * 10;
                    drop(clients);
                }
            }
            h.join().unwrap();
            let rate = (rounds * conns * 16) as f64 / el.as_secs_f64();
            results.push((round, format!("{:?}", b), rate));
            println!("{round} {:?}: {:.0} msg/s", b, rate);
        }
    }
}

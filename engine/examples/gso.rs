use bytes::Bytes;
use std::net::UdpSocket;
use volley::{Backend, Engine};
fn main() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.connect(rx.local_addr().unwrap()).unwrap();
    let mut e = Engine::builder().backend(Backend::Uring).build().unwrap();
    println!("gso enabled {}", e.gso_enabled());
    let id = e.register_udp(tx).unwrap();
    let big = Bytes::from(vec![1u8; 1200 * 1024]);
    for i in 0..1024 {
        e.send(id, big.slice(i * 1200..i * 1200 + 1200)).unwrap();
    }
    let r = e.flush(id).unwrap();
    println!(
        "{:?} sqes {} gso_sends {} fallbacks {}",
        (r.writes, r.failed),
        e.stats().sqes,
        e.stats().gso_sends,
        e.stats().gso_fallbacks
    );
}

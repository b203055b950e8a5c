//! A UDP echo client for `udp_echo_server`: `cargo run --release -p volley --features tokio
//! --example udp_echo_client -- 127.0.0.1:7001 [COUNT]`.
//!
//! Sends COUNT datagrams of random sizes (each carries its number and a checksum) through a
//! connected `UdpSender`, 64 per flush, and checks that each comes back whole.

use std::error::Error;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use rand::{Rng, RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::LocalSet;
use volley::tokio::Driver;

/// Datagrams sent and not yet echoed, at most (so neither side's receive buffer overflows).
const WINDOW: usize = 128;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .parse()?;
    let count: usize = args.next().map_or(Ok(10_000), |c| c.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, run(server, count))
}

/// Datagram `i`: its number, a checksum of the rest, then random bytes.
fn datagram(rng: &mut rand::rngs::SmallRng, i: u32) -> Bytes {
    let mut d = vec![0u8; rng.gen_range(8..1400)];
    rng.fill_bytes(&mut d[8..]);
    d[..4].copy_from_slice(&i.to_be_bytes());
    let sum = checksum(&d[8..]);
    d[4..8].copy_from_slice(&sum.to_be_bytes());
    Bytes::from(d)
}

fn checksum(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    })
}

async fn run(server: SocketAddr, count: usize) -> Result<(), Box<dyn Error>> {
    let socket = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await?;
    socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20)?;
    socket.connect(server).await?;
    let driver = Driver::current()?;
    let (rx, mut tx) = driver.split_udp(socket)?;
    let t0 = Instant::now();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut seen = vec![false; count];
    let (mut sent, mut ok, mut bad) = (0usize, 0usize, 0usize);
    let mut buf = vec![0u8; 65536];
    while ok + bad < count {
        // Keep at most WINDOW datagrams unanswered, sent in batches of up to 64 per flush.
        let mut batch = 0;
        while sent < count && sent - ok - bad < WINDOW && batch < 64 {
            tx.feed(datagram(&mut rng, u32::try_from(sent)?)).await?;
            sent += 1;
            batch += 1;
        }
        SinkExt::<Bytes>::flush(&mut tx).await?;
        let r = tokio::time::timeout(Duration::from_secs(2), rx.recv_from(&mut buf)).await;
        let Ok(r) = r else {
            break; // the rest is lost
        };
        let (n, _) = r?;
        let d = &buf[..n];
        if n < 8 {
            bad += 1;
            continue;
        }
        let i = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        let sum = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        if i >= count || seen[i] || checksum(&d[8..]) != sum {
            bad += 1;
        } else {
            seen[i] = true;
            ok += 1;
        }
    }
    println!(
        "{ok} of {count} datagrams echoed whole, {bad} bad, {} lost, in {:.3} s",
        count - ok - bad,
        t0.elapsed().as_secs_f64()
    );
    if ok == count && bad == 0 {
        Ok(())
    } else {
        Err("some datagrams did not come back whole".into())
    }
}

//! A VoIP-style UDP fan-out on volley's tokio adapters: `cargo run --release -p volley --features
//! tokio --example relay -- 127.0.0.1:7002 --to 127.0.0.1:8000 --to 127.0.0.1:8001`.
//!
//! Every datagram received on ADDR is sent to every `--to` peer through the same unconnected
//! socket. The datagrams of one wake-up (the first, plus every one already waiting) go out as
//! one batch and one flush: with GSO the engine groups each peer's copies into few `sendmsg`s.
//! Ctrl-C flushes what was accepted and exits.

use std::error::Error;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::UdpSocket;
use tokio::task::LocalSet;
use volley::tokio::Driver;

/// The most datagrams one batch collects before it goes out.
const MAX_BATCH: usize = 256;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr: Option<SocketAddr> = None;
    let mut peers = Vec::new();
    while let Some(a) = args.next() {
        if a == "--to" {
            let p = args.next().ok_or("--to needs an address")?;
            peers.push(p.parse::<SocketAddr>()?);
        } else {
            addr = Some(a.parse()?);
        }
    }
    let addr = addr.ok_or("usage: relay ADDR --to ADDR [--to ADDR]...")?;
    if peers.is_empty() {
        return Err("usage: relay ADDR --to ADDR [--to ADDR]...".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, async {
        let socket = UdpSocket::bind(addr).await?;
        socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20)?;
        let driver = Driver::current()?;
        println!("listening on {}", socket.local_addr()?);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(socket, peers, driver, stop).await
    })
}

/// Relays every datagram `socket` receives to every peer until `stop` completes, then
/// flushes and returns.
///
/// # Errors
/// Receiving failed, or the engine did.
pub async fn serve(
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    driver: Driver,
    stop: impl Future<Output = ()>,
) -> Result<(), Box<dyn Error>> {
    let (rx, mut tx) = driver.split_udp(socket)?;
    let mut buf = vec![0u8; 65536];
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH);
    tokio::pin!(stop);
    loop {
        let (n, _) = tokio::select! {
            r = rx.recv_from(&mut buf) => r?,
            () = &mut stop => break,
        };
        batch.push(Bytes::copy_from_slice(&buf[..n]));
        while batch.len() < MAX_BATCH {
            match rx.try_recv_from(&mut buf) {
                Ok((n, _)) => batch.push(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Peer-major: each peer's copies are consecutive, so GSO can group them.
        for &peer in &peers {
            for d in &batch {
                tx.feed((d.clone(), peer)).await?;
            }
        }
        batch.clear();
        SinkExt::<(Bytes, SocketAddr)>::flush(&mut tx).await?;
        for e in tx.take_peer_errors()? {
            eprintln!(
                "{}: {e}",
                e.peer().map_or("?".to_string(), |p| p.to_string())
            );
        }
    }
    SinkExt::<(Bytes, SocketAddr)>::flush(&mut tx).await?;
    Ok(())
}

//! A UDP echo server on volley's tokio adapters: `cargo run --release -p volley --features tokio
//! --example udp_echo_server -- 127.0.0.1:7001 [--reuse-port]`.
//!
//! Each datagram goes back whole to its source. The datagrams of one wake-up (the first, plus
//! every one already waiting) go back as one batch through one unconnected `UdpSender` and one
//! flush. `--reuse-port` sets `SO_REUSEPORT`, so other sockets (another copy of this server)
//! can share the port. Ctrl-C flushes what was accepted and exits.

use std::error::Error;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::UdpSocket;
use tokio::task::LocalSet;
use volley::tokio::Driver;

/// The most datagrams one batch collects.
const MAX_BATCH: usize = 1024;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:7001".to_string();
    let mut reuse_port = false;
    for a in args.by_ref() {
        match a.as_str() {
            "--reuse-port" => reuse_port = true,
            _ => addr = a,
        }
    }
    let addr: SocketAddr = addr.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, async {
        let socket = bind(addr, reuse_port)?;
        let driver = Driver::current()?;
        println!("listening on {}", socket.local_addr()?);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(socket, driver, stop).await?;
        Ok(())
    })
}

/// A UDP socket on `addr`, sharing the port with other `SO_REUSEPORT` sockets if asked.
///
/// # Errors
/// The socket cannot be made or bound.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Room for the bursts that arrive while a batch of replies is on its way.
    s.set_recv_buffer_size(4 << 20)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Echoes every datagram `socket` receives until `stop` completes, then flushes and returns.
///
/// # Errors
/// Receiving failed, or the engine did.
pub async fn serve(
    socket: UdpSocket,
    driver: Driver,
    stop: impl Future<Output = ()>,
) -> Result<(), Box<dyn Error>> {
    let (rx, mut tx) = driver.split_udp(socket)?;
    let mut buf = vec![0u8; 65536];
    tokio::pin!(stop);
    loop {
        let (n, from) = tokio::select! {
            r = rx.recv_from(&mut buf) => r?,
            () = &mut stop => break,
        };
        tx.feed((Bytes::copy_from_slice(&buf[..n]), from)).await?;
        // Every datagram already waiting joins this batch.
        for _ in 1..MAX_BATCH {
            match rx.try_recv_from(&mut buf) {
                Ok((n, from)) => tx.feed((Bytes::copy_from_slice(&buf[..n]), from)).await?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        SinkExt::<(Bytes, SocketAddr)>::flush(&mut tx).await?;
        if let Some(r) = tx.last_report() {
            for (status, n) in r.failures_by_status() {
                eprintln!("{n} replies failed: {status}");
            }
        }
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

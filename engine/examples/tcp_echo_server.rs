//! A TCP echo server on volley's tokio adapters: `cargo run --release -p volley --features tokio
//! --example tcp_echo_server -- 127.0.0.1:7000`.
//!
//! One engine for the thread; each connection is split into a reader that never blocks and a
//! `TcpSender`. Everything read in one wake-up (the first read, plus whatever else has already
//! arrived) goes back as one owned buffer and one flush. Ctrl-C stops accepting, lets every
//! connection flush what it accepted, and exits.

use std::error::Error;
use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinSet, LocalSet};
use volley::tokio::Driver;

/// Bytes read per call.
const READ_BYTES: usize = 64 * 1024;
/// The most one batch (one reply) collects before it goes out.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, async {
        let listener = TcpListener::bind(&addr).await?;
        let driver = Driver::current()?;
        println!("listening on {}", listener.local_addr()?);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, driver, stop).await?;
        Ok(())
    })
}

/// Echoes every connection `listener` accepts until `stop` completes; then stops accepting,
/// lets each connection flush what it accepted and half-close, and returns.
///
/// # Errors
/// Accepting failed.
pub async fn serve(
    listener: TcpListener,
    driver: Driver,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, peer) = r?;
                let (driver, stop) = (driver.clone(), stop_rx.clone());
                conns.spawn_local(async move {
                    if let Err(e) = echo(&driver, stream, stop).await {
                        eprintln!("{peer}: {e}");
                    }
                });
            }
            // Reap finished connections as we go.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut stop => break,
        }
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Echoes one connection until EOF (or the stop signal); returns the bytes echoed.
async fn echo(
    driver: &Driver,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, Box<dyn Error>> {
    let (mut rx, mut tx) = driver.split_tcp(stream)?;
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    let mut eof = false;
    while !eof {
        buf.reserve(READ_BYTES);
        let n = tokio::select! {
            r = rx.read_buf(&mut buf) => r?,
            _ = stop.changed() => break,
        };
        eof = n == 0;
        // What else has already arrived joins this batch.
        while !eof && buf.len() < MAX_BATCH_BYTES {
            let at = buf.len();
            buf.resize(at + READ_BYTES, 0);
            match rx.try_read(&mut buf[at..]) {
                Ok(n) => {
                    buf.truncate(at + n);
                    eof = n == 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(at);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if buf.is_empty() {
            continue;
        }
        total += buf.len() as u64;
        // One owned buffer (no copy), one flush: one batch per wake-up.
        tx.send(buf.split().freeze()).await?;
        tx.flush().await?;
    }
    tx.shutdown().await?;
    Ok(total)
}

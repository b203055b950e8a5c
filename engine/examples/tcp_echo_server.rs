//! A TCP echo server on volley's tokio adapters: `cargo run --release -p volley --features tokio
//! --example tcp_echo_server -- 127.0.0.1:7000`.
//!
//! One engine for the thread; each connection is split into a reader that never blocks and a
//! `TcpSender`. Everything read in one wake-up (whatever has already arrived) goes back as one
//! owned buffer, and each burst ends with one flush (the barrier) before the task waits for
//! more. The flush yields once before it submits, so the replies of all the connections served
//! in one turn of the runtime go to the kernel in one submission. Ctrl-C stops accepting, lets
//! every connection flush what it accepted, and exits.
//!
//! `--plain` serves with tokio alone (`write_all` per read), for comparison on the same load.

use std::error::Error;
use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::LocalSet;
use volley::tokio::Driver;

#[path = "common/serve_tcp.rs"]
mod serve_tcp;

/// Bytes read per call.
const READ_BYTES: usize = 64 * 1024;
/// The most one batch (one reply) collects before it goes out.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

fn main() -> Result<(), Box<dyn Error>> {
    let mut addr = "127.0.0.1:7000".to_string();
    let mut plain = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--plain" => plain = true,
            _ => addr = a,
        }
    }
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
        if plain {
            serve_plain(listener, stop).await?;
        } else {
            serve(listener, driver, stop).await?;
        }
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
    serve_tcp::serve_each(listener, driver, stop, |driver, stream, stop| async move {
        echo(&driver, stream, stop).await
    })
    .await
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
    loop {
        buf.reserve(READ_BYTES);
        let spare = buf.capacity() - buf.len();
        let n = tokio::select! {
            r = rx.read_buf(&mut buf) => r?,
            _ = stop.changed() => break,
        };
        if n == 0 {
            break;
        }
        // Everything else that has already arrived joins the burst. A short read means the
        // socket is drained: no extra read just to hear EAGAIN.
        let (mut drained, mut eof) = (n < spare, false);
        while !drained && buf.len() < MAX_BATCH_BYTES {
            let at = buf.len();
            buf.resize(at + READ_BYTES, 0);
            match rx.try_read(&mut buf[at..]) {
                Ok(m) => {
                    buf.truncate(at + m);
                    (drained, eof) = (m < READ_BYTES, m == 0);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(at);
                    drained = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        total += buf.len() as u64;
        // One owned buffer (no copy), then the barrier. The flush yields first, so the
        // replies of every connection served in this turn of the runtime go to the kernel
        // in one submission.
        tx.send(buf.split().freeze()).await?;
        tx.flush().await?;
        if eof {
            break;
        }
    }
    tx.shutdown().await?;
    Ok(total)
}

/// The comparison: tokio alone, one `write_all` per read, until `stop` completes.
///
/// # Errors
/// Accepting failed.
pub async fn serve_plain(listener: TcpListener, stop: impl Future<Output = ()>) -> io::Result<()> {
    tokio::pin!(stop);
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => r?,
            () = &mut stop => return Ok(()),
        };
        tokio::task::spawn_local(async move {
            let (mut rx, mut tx) = stream.split();
            let mut buf = vec![0u8; READ_BYTES];
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = tx.write_all(&buf[..n]).await {
                            eprintln!("{peer}: {e}");
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("{peer}: {e}");
                        return;
                    }
                }
            }
            let _ = tx.shutdown().await;
        });
    }
}

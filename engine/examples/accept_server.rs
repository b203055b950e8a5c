//! The asynchronous server socket of the .NET sample, on volley's tokio adapters:
//! `cargo run --release -p volley --features tokio --example accept_server -- 127.0.0.1:11000`.
//!
//! Accepts connections on a tokio runtime and hands each to a task, which reads until the
//! end-of-message marker `<EOF>`, answers with the whole message (marker included) through a
//! `TcpSender` (one owned buffer, one flush), and keeps the connection for the next message.
//! Ctrl-C stops accepting, lets every connection flush what it accepted, and exits.

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

/// The end-of-message marker of the .NET sample.
const MARKER: &[u8] = b"<EOF>";

fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:11000".to_string());
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

/// Serves every connection `listener` accepts until `stop` completes; then stops accepting,
/// lets each connection flush what it accepted, and returns.
///
/// # Errors
/// Accepting failed.
pub async fn serve(
    listener: TcpListener,
    driver: Driver,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_tcp::serve_each(listener, driver, stop, |driver, stream, stop| async move {
        answer(&driver, stream, stop).await
    })
    .await
}

/// Answers every complete message on one connection until the peer closes it (or the stop
/// signal); returns how many messages it answered.
async fn answer(
    driver: &Driver,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, Box<dyn Error>> {
    let (mut rx, mut tx) = driver.split_tcp(stream)?;
    let mut buf = BytesMut::new();
    let mut scanned = 0; // bytes of `buf` known to hold no marker start
    let mut answered = 0u64;
    loop {
        // Every complete message in the buffer, each answered whole; one flush for them all.
        let mut batch = 0;
        while let Some(at) = find(&buf[scanned..], MARKER) {
            let msg = buf.split_to(scanned + at + MARKER.len()).freeze();
            scanned = 0;
            tx.send(msg).await?;
            batch += 1;
        }
        scanned = buf.len().saturating_sub(MARKER.len() - 1);
        if batch > 0 {
            tx.flush().await?;
            answered += batch;
        }
        buf.reserve(64 * 1024);
        let n = tokio::select! {
            r = rx.read_buf(&mut buf) => r?,
            _ = stop.changed() => break,
        };
        if n == 0 {
            break;
        }
    }
    tx.shutdown().await?;
    Ok(answered)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

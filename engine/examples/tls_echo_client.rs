//! A TLS echo client on volley's tokio adapters, with a client certificate: `cargo run
//! --release -p volley --features tokio,tls --example tls_echo_client -- 127.0.0.1:7443 --ca
//! ca.pem --cert client.pem --key client.key [--server-name localhost] [--count 1024]`.
//!
//! Writes `--count` 64-byte messages, flushes once (they leave as a handful of full TLS
//! records, not one per message), reads the echo back and checks it, then closes with
//! `close_notify` and waits for the server's.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::LocalSet;
use volley::tokio::Driver;

fn main() -> Result<(), Box<dyn Error>> {
    let mut addr = "127.0.0.1:7443".to_string();
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut name = "localhost".to_string();
    let mut count = 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ca" => ca = args.next().map(PathBuf::from),
            "--cert" => cert = args.next().map(PathBuf::from),
            "--key" => key = args.next().map(PathBuf::from),
            "--server-name" => name = args.next().unwrap_or(name),
            "--count" => count = args.next().and_then(|n| n.parse().ok()).unwrap_or(count),
            _ => addr = a,
        }
    }
    let auth = match (&cert, &key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let config = volley::tls::client_config(ca.as_deref(), auth)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, async {
        let driver = Driver::current()?;
        let stream = TcpStream::connect(&addr).await?;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) =
            volley::tokio::tls::connect(&driver, stream, config, &name, Duration::from_secs(10))
                .await?;
        let sent: Vec<u8> = (0..count)
            .flat_map(|i| format!("{i:>63}\n").into_bytes())
            .collect();
        for m in sent.chunks(64) {
            wr.write_all(m).await?;
        }
        wr.flush().await?;
        let mut back = vec![0u8; sent.len()];
        rd.read_exact(&mut back).await?;
        if back != sent {
            return Err("the echo differs from what was sent".into());
        }
        wr.shutdown().await?;
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await?;
        println!("echoed {} bytes in {count} messages", sent.len());
        Ok(())
    })
}

//! A TCP echo client for `tcp_echo_server`: `cargo run --release -p volley --features tokio
//! --example tcp_echo_client -- 127.0.0.1:7000 [CONNECTIONS] [BYTES]`.
//!
//! Opens CONNECTIONS connections (default 8); on each, sends BYTES random bytes (default 8 MiB)
//! in writes of random sizes through a `TcpSender` (one flush per 64 writes), half-closes, and
//! checks that the echo is the same bytes. Prints the throughput.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Instant;

use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::LocalSet;
use volley::tokio::Driver;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7000".into())
        .parse()?;
    let conns: usize = args.next().map_or(Ok(8), |c| c.parse())?;
    let bytes: usize = args.next().map_or(Ok(8 << 20), |c| c.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, async {
        let driver = Driver::current()?;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..conns {
            let driver = driver.clone();
            tasks.push(tokio::task::spawn_local(async move {
                one(&driver, server, c as u64, bytes).await
            }));
        }
        let mut failed = 0;
        for (c, t) in tasks.into_iter().enumerate() {
            if let Err(e) = t.await? {
                eprintln!("connection {c}: {e}");
                failed += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let total = (conns * bytes) as f64;
        println!(
            "{} of {conns} connections echoed {bytes} bytes exactly; {:.1} MB/s each way",
            conns - failed,
            total / secs / 1e6
        );
        if failed > 0 {
            return Err("some echoes differed".into());
        }
        Ok(())
    })
}

/// Sends `bytes` random bytes on one connection and checks the echo.
async fn one(
    driver: &Driver,
    server: SocketAddr,
    seed: u64,
    bytes: usize,
) -> Result<(), Box<dyn Error>> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut data = vec![0u8; bytes];
    rng.fill_bytes(&mut data);
    let (mut rx, mut tx) = driver.split_tcp(TcpStream::connect(server).await?)?;
    let len = data.len();
    let reader = tokio::task::spawn_local(async move {
        let mut got = Vec::with_capacity(len);
        rx.read_to_end(&mut got).await.map(|_| got)
    });
    let mut at = 0;
    let mut writes = 0u32;
    while at < data.len() {
        let n = rng.gen_range(1..=16 * 1024).min(data.len() - at);
        tx.write_all(&data[at..at + n]).await?;
        at += n;
        writes += 1;
        if writes % 64 == 0 {
            tx.flush().await?;
        }
    }
    tx.shutdown().await?;
    let got = reader.await??;
    if got != data {
        let first = got
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(data.len()));
        return Err(format!(
            "echo differs at byte {first} (got {} of {} bytes)",
            got.len(),
            data.len()
        )
        .into());
    }
    Ok(())
}

//! A TLS echo server on volley's tokio adapters: `cargo run --release -p volley --features
//! tokio,tls --example tls_echo_server -- 127.0.0.1:7443 --cert server.pem --key server.key
//! [--client-ca ca.pem]`.
//!
//! Each connection: the handshake (a client certificate required and verified with
//! `--client-ca`), then everything read in one wake-up is written back and flushed once: the
//! flush seals it into as few TLS records as possible and is the engine's barrier. The
//! client's `close_notify` ends the connection with ours. Try it with
//! `openssl s_client -connect 127.0.0.1:7443 -CAfile ca.pem -cert client.pem -key client.key`
//! or the `tls_echo_client` example.

use std::error::Error;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinSet, LocalSet};
use volley::tls::rustls::ServerConfig;
use volley::tokio::Driver;

fn main() -> Result<(), Box<dyn Error>> {
    let mut addr = "127.0.0.1:7443".to_string();
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cert" => cert = args.next().map(PathBuf::from),
            "--key" => key = args.next().map(PathBuf::from),
            "--client-ca" => client_ca = args.next().map(PathBuf::from),
            _ => addr = a,
        }
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err("usage: tls_echo_server ADDR --cert FILE --key FILE [--client-ca FILE]".into());
    };
    let config = volley::tls::server_config(&cert, &key, client_ca.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&rt, async {
        let listener = TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, Driver::current()?, config, stop).await?;
        Ok(())
    })
}

/// Serves TLS echo on every connection `listener` accepts until `stop` completes.
///
/// # Errors
/// Accepting failed.
pub async fn serve(
    listener: TcpListener,
    driver: Driver,
    config: Arc<ServerConfig>,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, peer) = r?;
                let (driver, config) = (driver.clone(), Arc::clone(&config));
                conns.spawn_local(async move {
                    if let Err(e) = echo(&driver, stream, config).await {
                        eprintln!("{peer}: {e}");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut stop => break,
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn echo(driver: &Driver, stream: TcpStream, config: Arc<ServerConfig>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) =
        volley::tokio::tls::accept(driver, stream, config, Duration::from_secs(10)).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            // The client's close_notify: answer with ours.
            return wr.shutdown().await;
        }
        wr.write_all(&buf[..n]).await?;
        wr.flush().await?;
    }
}

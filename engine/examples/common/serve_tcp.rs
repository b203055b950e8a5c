//! The accept loop the TCP server examples share (`tcp_echo_server`, `accept_server`): each
//! connection on a task of its own, on the thread's driver, and a clean stop.

use std::error::Error;
use std::future::Future;
use std::io;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use volley::tokio::Driver;

/// Runs `conn(driver, stream, stop)` on a task of its own for every connection `listener`
/// accepts, until `stop` completes; then stops accepting, turns every connection's `stop` to
/// `true` (each flushes what it accepted and finishes) and returns once all have. A
/// connection's error is logged with its peer's address.
///
/// # Errors
/// Accepting failed.
pub async fn serve_each<F, Fut>(
    listener: TcpListener,
    driver: Driver,
    stop: impl Future<Output = ()>,
    conn: F,
) -> io::Result<()>
where
    F: Fn(Driver, TcpStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<u64, Box<dyn Error>>> + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, peer) = r?;
                let task = conn(driver.clone(), stream, stop_rx.clone());
                conns.spawn_local(async move {
                    if let Err(e) = task.await {
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

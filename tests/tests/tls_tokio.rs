//! `volley::tokio::tls` against `openssl s_server -Verify 1`, one test per backend: the
//! sender's writes arrive exact (1 024 × 64 B in one flush, then random sizes and flush points), the
//! reader gets what s_server sends, `shutdown` ends the session with close_notify; without a
//! client certificate the reader reports the server's alert as `certificate required`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::task::LocalSet;
use rand::{Rng, SeedableRng};
use volley::tls::rustls;
use volley::tokio::Driver;
use volley::{Backend, Error, TlsStatus};
use volley_tests::tls::{Peer, Pki};
use volley_tests::*;

per_backend!(
    tokio_tls_to_s_server,
    tokio_tls_without_client_certificate,
    example_tls_echo_server_with_s_client,
);

/// The example server's code, included as a module: the test runs its `serve`.
#[expect(dead_code, reason = "the example's `main` runs only as a program")]
#[path = "../../engine/examples/tls_echo_server.rs"]
mod tls_echo_server;

fn run<F: Future>(f: F) -> F::Output {
    let rt = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    LocalSet::new().block_on(&rt, async {
        ::tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("the test finished within 60 s")
    })
}

fn config(pki: &Pki, with_cert: bool) -> Arc<rustls::ClientConfig> {
    let (c, k) = (pki.path("client.pem"), pki.path("client.key"));
    volley::tls::client_config(
        Some(&pki.path("ca.pem")),
        with_cert.then_some((c.as_path(), k.as_path())),
    )
    .expect("client config")
}

fn tokio_tls_to_s_server(b: Backend) {
    let pki = Pki::new();
    let mut peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let addr = peer.addr;
    peer.write_stdin(b"hello from s_server\n");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x70c5);
    let data = payload(0x70c5, 300_000);
    let sent = run(async {
        let d = Driver::new(engine(b)).expect("driver");
        let s = ::tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let (mut rd, mut wr) = volley::tokio::tls::connect(
            &d,
            s,
            config(&pki, true),
            "localhost",
            Duration::from_secs(10),
        )
        .await
        .expect("handshake");
        let mut hello = [0u8; 20];
        rd.read_exact(&mut hello).await.expect("read from s_server");
        assert_eq!(&hello, b"hello from s_server\n", "{b:?}");
        let mut at = 0;
        // 1024 writes of 64 bytes, one flush; then random sizes and flush points.
        for m in data[..65536].chunks(64) {
            wr.write_all(m).await.expect("write");
        }
        wr.flush().await.expect("flush");
        at += 65536;
        while at < data.len() {
            let n = rng.gen_range(1..=20_000).min(data.len() - at);
            wr.write_all(&data[at..at + n]).await.expect("write");
            at += n;
            if rng.gen_ratio(1, 3) {
                wr.flush().await.expect("flush");
            }
        }
        wr.shutdown().await.expect("shutdown: close_notify");
        // s_server answers with its close_notify: EOF on the reader.
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest)
            .await
            .expect("read to close_notify");
        assert!(rest.is_empty(), "{b:?}: unexpected data {rest:?}");
        at
    });
    assert_eq!(sent, data.len());
    let out = peer.finish();
    assert_bytes_eq(&out.stdout, &data, &format!("{b:?}: s_server received"));
}

fn tokio_tls_without_client_certificate(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let addr = peer.addr;
    run(async {
        let d = Driver::new(engine(b)).expect("driver");
        let s = ::tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let (mut rd, mut wr) = volley::tokio::tls::connect(
            &d,
            s,
            config(&pki, false),
            "localhost",
            Duration::from_secs(10),
        )
        .await
        .expect("TLS 1.3 handshake: the refusal comes after");
        let _ = wr.write_all(b"hello?").await;
        let _ = wr.flush().await;
        let mut buf = [0u8; 16];
        let e = rd.read(&mut buf).await.expect_err("the server's alert");
        let inner = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<Error>())
            .unwrap_or_else(|| panic!("{b:?}: not a volley error: {e}"));
        assert_eq!(
            inner.tls_status(),
            Some(TlsStatus::CertificateRequired),
            "{b:?}: {inner}"
        );
    });
    drop(peer.finish());
}

/// `openssl s_client` with a client certificate against the `tls_echo_server` example (client
/// certificates required): what s_client sends comes back exact.
fn example_tls_echo_server_with_s_client(b: Backend) {
    use std::io::Read;
    let pki = Pki::new();
    let config = volley::tls::server_config(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .expect("server config");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = ::tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        run(async move {
            let listener = ::tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("addr");
            let d = Driver::new(engine(b)).expect("driver");
            tls_echo_server::serve(listener, d, config, async {
                let _ = stop_rx.await;
            })
            .await
            .expect("serve");
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server started");
    let data = payload(0xec, 80_000);
    let input = std::env::temp_dir().join(format!("volley-tls-echo-{}-{b:?}", std::process::id()));
    std::fs::write(&input, &data).expect("input");
    // -quiet ignores EOF on stdin: read exactly the echo from its stdout, then stop it.
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-verify_return_error", "-quiet", "-CAfile"])
        .arg(pki.path("ca.pem"))
        .arg("-cert")
        .arg(pki.path("client.pem"))
        .arg("-key")
        .arg(pki.path("client.key"))
        .stdin(std::fs::File::open(&input).expect("open input"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s_client starts");
    let mut out = child.stdout.take().expect("stdout");
    let want = data.len();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = vec![0u8; want];
        let r = out.read_exact(&mut got).map(|()| got);
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&input);
    let _ = stop_tx.send(());
    server.join().expect("server thread");
    let got = got
        .expect("the echo within 30 s")
        .expect("s_client's stdout");
    assert_bytes_eq(&got, &data, &format!("{b:?}: echo through tls_echo_server"));
}

//! TLS over the engine (`volley::tls`) against OpenSSL, on both backends: `openssl s_server`
//! and `s_client` as peers, certificates made in the test with the `openssl` CLI.
//!
//! What arrives is compared byte for byte; every failure must be a named [`Error::Tls`], never
//! a hang (each peer process is killed after a guard time, and the test then fails).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use volley::tls::{self, rustls, TlsStream};
use volley::{Backend, Engine, Error, TlsStatus};
use volley_tests::tls::{Peer, Pki};
use volley_tests::*;

per_backend!(
    random_sizes_and_flush_points_arrive_exact,
    coalesces_1024_small_writes_into_4_records,
    missing_client_certificate_is_certificate_required,
    missing_client_certificate_tls12_is_handshake_failure,
    server_from_another_ca_is_unknown_ca,
    peer_alert_fails_a_later_flush,
    peer_closing_mid_record_fails_the_flush,
    starttls_upgrade_keeps_order,
    server_side_echo_to_s_client,
    handshake_times_out_on_a_silent_peer,
);

fn client_config(pki: &Pki, with_cert: bool) -> Arc<rustls::ClientConfig> {
    let auth = with_cert.then(|| (pki.path("client.pem"), pki.path("client.key")));
    tls::client_config(
        Some(&pki.path("ca.pem")),
        auth.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .expect("client config")
}

/// Connects to `peer`, registers the stream and runs the client handshake.
fn connect(
    e: &mut Engine,
    peer: &Peer,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream, Error> {
    let s = TcpStream::connect(peer.addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let id = e.register_tcp(s).expect("register");
    TlsStream::client(config, "localhost")?
        .timeout(Duration::from_secs(10))
        .complete(e, id)
}

fn tls_status(r: Result<impl std::fmt::Debug, Error>, ctx: &str) -> (TlsStatus, bool, String) {
    match r {
        Err(e @ Error::Tls { .. }) => {
            let Error::Tls {
                status, from_peer, ..
            } = &e
            else {
                unreachable!()
            };
            (*status, *from_peer, e.to_string())
        }
        other => panic!("{ctx}: expected a TLS error, got {other:?}"),
    }
}

/// Random sizes (1 B … 40 KiB) and random flush points, with a client certificate that
/// `s_server -Verify 1` checks: what s_server received is exactly what was sent, and `close`
/// (close_notify, then the peer's) succeeds.
fn random_sizes_and_flush_points_arrive_exact(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let mut e = builder(b).build().expect("engine");
    let mut tls = connect(&mut e, &peer, client_config(&pki, true)).expect("handshake");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7151);
    let data = payload(0x7151, 600_000);
    let mut at = 0;
    let mut flushes = 0;
    while at < data.len() {
        let n = rng.gen_range(1..=40 * 1024).min(data.len() - at);
        tls.send(&mut e, &data[at..at + n]).expect("send");
        at += n;
        if rng.gen_ratio(1, 4) {
            tls.flush(&mut e).expect("flush");
            flushes += 1;
        }
    }
    let st = *tls.stats();
    assert!(flushes > 5, "{b:?}: too few flushes to test ({flushes})");
    assert_eq!(
        st.plaintext_bytes + tls.queued_plaintext() as u64,
        data.len() as u64
    );
    tls.close(&mut e).expect("close: the peer's close_notify");
    let out = peer.finish();
    assert_bytes_eq(&out.stdout, &data, &format!("{b:?}: s_server received"));
}

/// 1 024 writes of 64 bytes, one flush: 64 KiB of plaintext in 4 records of 16 KiB (not
/// 1 024), one batch on the wire, and the bytes arrive exact.
fn coalesces_1024_small_writes_into_4_records(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let mut e = builder(b).build().expect("engine");
    let mut tls = connect(&mut e, &peer, client_config(&pki, true)).expect("handshake");
    let data = payload(64, 1024 * 64);
    let before = *tls.stats();
    assert_eq!(before.data_records, 0, "{b:?}: the handshake is not data");
    assert!(before.records > 0 && before.handshake > std::time::Duration::ZERO);
    let sends_before = e.stats().writes_sent;
    for m in data.chunks(64) {
        tls.send(&mut e, m).expect("send");
    }
    let report = tls.flush(&mut e).expect("flush");
    let st = *tls.stats();
    assert_eq!(st.data_records - before.data_records, 4, "{b:?}: records");
    let wire = st.wire_bytes - before.wire_bytes;
    // TLS 1.3 with an AEAD: 5-byte header, 1-byte content type, 16-byte tag per record.
    assert_eq!(
        tls.connection().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(wire, 65536 + 4 * 22, "{b:?}: wire bytes");
    assert_eq!(report.bytes, wire, "{b:?}: the flush sent the ciphertext");
    assert_eq!(
        e.stats().writes_sent - sends_before,
        1,
        "{b:?}: one engine buffer for the batch"
    );
    tls.close(&mut e).expect("close");
    let out = peer.finish();
    assert_bytes_eq(&out.stdout, &data, &format!("{b:?}: s_server received"));
}

/// TLS 1.3: the server refuses a client without a certificate only after the client's
/// handshake finished; the client learns it at the latest when it closes (the server's alert
/// instead of its close_notify): `certificate required`, said by the peer.
fn missing_client_certificate_is_certificate_required(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let mut e = builder(b).build().expect("engine");
    let r = connect(&mut e, &peer, client_config(&pki, false)).and_then(|mut tls| {
        tls.send(&mut e, b"not for a stranger")?;
        tls.flush(&mut e)?;
        tls.close(&mut e)
    });
    let (status, from_peer, msg) = tls_status(r, &format!("{b:?}"));
    assert_eq!(status, TlsStatus::CertificateRequired, "{b:?}: {msg}");
    assert!(from_peer, "{b:?}: {msg}");
    assert!(msg.contains("certificate required"), "{b:?}: {msg}");
    let out = peer.finish();
    assert!(out.stdout.is_empty(), "{b:?}: s_server printed data");
}

/// TLS 1.2: the refusal comes during the handshake, as `handshake_failure`.
fn missing_client_certificate_tls12_is_handshake_failure(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1", "-tls1_2"]);
    let mut e = builder(b).build().expect("engine");
    let (status, from_peer, msg) = tls_status(
        connect(&mut e, &peer, client_config(&pki, false)),
        &format!("{b:?}"),
    );
    assert_eq!(status, TlsStatus::HandshakeFailure, "{b:?}: {msg}");
    assert!(from_peer, "{b:?}: {msg}");
    drop(peer.finish());
}

/// A server certificate from a CA the client does not trust fails verification, on this side,
/// during the handshake, and the server hears why (`unknown_ca`).
fn server_from_another_ca_is_unknown_ca(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, true, &[]);
    let mut e = builder(b).build().expect("engine");
    let (status, from_peer, msg) = tls_status(
        connect(&mut e, &peer, client_config(&pki, true)),
        &format!("{b:?}"),
    );
    assert_eq!(status, TlsStatus::UnknownCa, "{b:?}: {msg}");
    assert!(!from_peer, "{b:?}: {msg}");
    let out = peer.finish();
    assert!(
        out.stderr.contains("unknown ca"),
        "{b:?}: s_server did not get the alert: {}",
        out.stderr
    );
}

/// An alert that arrives after the handshake fails the next flush (not only `close` or a
/// read): one-byte writes are flushed until one fails — bounded in time — and that flush names
/// the alert; the session is then poisoned, and a read says the same.
fn peer_alert_fails_a_later_flush(b: Backend) {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let mut e = builder(b).build().expect("engine");
    let mut tls = connect(&mut e, &peer, client_config(&pki, false)).expect("TLS 1.3 handshake");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut flushes = 0u32;
    let failed = loop {
        let r = tls.send(&mut e, b"x").and_then(|()| tls.flush(&mut e));
        match r {
            Ok(_) => flushes += 1,
            Err(err) => break err,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{b:?}: {flushes} flushes succeeded, no alert within 10 s"
        );
    };
    let (status, from_peer, msg) = tls_status(Err::<(), _>(failed), &format!("{b:?}: flush"));
    assert_eq!(status, TlsStatus::CertificateRequired, "{b:?}: {msg}");
    assert!(from_peer, "{b:?}: {msg}");
    // Poisoned: sends, flushes and reads fail the same way, at once.
    tls.send(&mut e, b"x").expect_err("send after the alert");
    let (status, ..) = tls_status(tls.flush(&mut e), &format!("{b:?}: flush again"));
    assert_eq!(status, TlsStatus::CertificateRequired);
    let mut buf = [0u8; 64];
    let (status, ..) = tls_status(tls.read(&mut buf), &format!("{b:?}: read"));
    assert_eq!(status, TlsStatus::CertificateRequired);
    drop(peer.finish());
}

/// A peer that sends half a record and closes fails the next flush with a truncation error,
/// and a read the same way: never a hang. The peer is rustls on a plain socket.
fn peer_closing_mid_record_fails_the_flush(b: Backend) {
    let pki = Pki::new();
    let config = tls::server_config(&pki.path("server.pem"), &pki.path("server.key"), None)
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut conn = rustls::ServerConnection::new(config).expect("conn");
        while conn.is_handshaking() {
            conn.complete_io(&mut s).expect("server handshake");
        }
        conn.writer().write_all(&[7u8; 1000]).expect("write");
        let mut rec = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut rec).expect("write_tls");
        }
        // Half of what is pending (the session tickets' records are whole, the data cut).
        let cut = rec.len() - 500;
        s.write_all(&rec[..cut]).expect("send half");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        closed_tx.send(()).expect("signal");
        // Drain what the client sends, so the close is a FIN, not a reset.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let mut e = builder(b).build().expect("engine");
    let s = TcpStream::connect(addr).expect("connect");
    let id = e.register_tcp(s).expect("register");
    let mut tls = TlsStream::client(client_config(&pki, false), "localhost")
        .expect("client")
        .complete(&mut e, id)
        .expect("handshake");
    closed_rx.recv().expect("server closed");
    tls.send(&mut e, b"anyone there?").expect("send");
    let (status, from_peer, msg) = tls_status(tls.flush(&mut e), &format!("{b:?}: flush"));
    assert_eq!(status, TlsStatus::Truncated, "{b:?}: {msg}");
    assert!(!from_peer);
    let mut buf = [0u8; 2000];
    let (status, ..) = tls_status(tls.read(&mut buf), &format!("{b:?}: read"));
    assert_eq!(status, TlsStatus::Truncated);
    // The session holds a duplicate of the socket for reads: both must go for the FIN.
    drop(tls);
    e.abort(id).expect("abort");
    server.join().expect("server thread");
}

/// STARTTLS: plaintext queued before the upgrade goes out first, in the clear and in order,
/// then the handshake; then TLS data. The peer reads the clear line byte by byte, answers,
/// and runs a rustls server on the same socket.
fn starttls_upgrade_keeps_order(b: Backend) {
    let pki = Pki::new();
    let config = tls::server_config(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut clear = Vec::new();
        let mut byte = [0u8; 1];
        while !clear.ends_with(b"STARTTLS\r\n") {
            s.read_exact(&mut byte).expect("clear byte");
            clear.push(byte[0]);
        }
        let mut conn = rustls::ServerConnection::new(config).expect("conn");
        let mut tls = rustls::Stream::new(&mut conn, &mut s);
        let mut got = Vec::new();
        tls.read_to_end(&mut got).expect("read until close_notify");
        conn.send_close_notify();
        conn.complete_io(&mut s).expect("send close_notify");
        (clear, got)
    });
    let mut e = builder(b).build().expect("engine");
    let s = TcpStream::connect(addr).expect("connect");
    let id = e.register_tcp(s).expect("register");
    e.send(id, bytes::Bytes::from_static(b"EHLO volley\r\n"))
        .expect("clear");
    e.send(id, bytes::Bytes::from_static(b"STARTTLS\r\n"))
        .expect("clear");
    let mut tls = TlsStream::client(client_config(&pki, true), "localhost")
        .expect("client")
        .complete(&mut e, id)
        .expect("upgrade");
    let data = payload(9, 100_000);
    tls.send(&mut e, &data).expect("send");
    tls.close(&mut e).expect("close");
    let (clear, got) = server.join().expect("server thread");
    assert_eq!(
        clear, b"EHLO volley\r\nSTARTTLS\r\n",
        "{b:?}: the clear part"
    );
    assert_bytes_eq(&got, &data, &format!("{b:?}: TLS part"));
}

/// volley as the TLS server (client certificate required), `openssl s_client` as the client:
/// what s_client sends is echoed back through the engine and arrives exact.
fn server_side_echo_to_s_client(b: Backend) {
    let pki = Pki::new();
    let config = tls::server_config(
        &pki.path("server.pem"),
        &pki.path("server.key"),
        Some(&pki.path("ca.pem")),
    )
    .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let data = payload(0xec40, 50_000);
    let args: Vec<String> = [
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "localhost",
        "-CAfile",
        &pki.arg("ca.pem"),
        "-cert",
        &pki.arg("client.pem"),
        "-key",
        &pki.arg("client.key"),
        "-verify_return_error",
        "-quiet",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut client = Peer::spawn(&args, ([127, 0, 0, 1], port).into());
    client.write_stdin(&data);
    let (s, _) = listener.accept().expect("accept");
    let mut e = builder(b).build().expect("engine");
    let id = e.register_tcp(s).expect("register");
    let mut tls = TlsStream::server(config)
        .expect("server")
        .complete(&mut e, id)
        .expect("server handshake");
    assert!(
        tls.connection().peer_certificates().is_some(),
        "{b:?}: the client's certificate"
    );
    tls.set_read_timeout(Some(Duration::from_secs(10)));
    let mut echoed = 0;
    let mut buf = vec![0u8; 8192];
    while echoed < data.len() {
        let n = tls.read(&mut buf).expect("read");
        assert!(n > 0, "{b:?}: s_client closed early");
        tls.send(&mut e, &buf[..n]).expect("echo");
        tls.flush(&mut e).expect("flush");
        echoed += n;
    }
    // s_client -quiet ignores EOF on stdin: our close_notify ends it. It may close the
    // connection without answering with its own, so only the flush counts here.
    tls.send(&mut e, b"").expect("send");
    let _ = tls.close(&mut e);
    client.close_stdin();
    let out = client.finish();
    assert_bytes_eq(&out.stdout, &data, &format!("{b:?}: s_client received"));
}

/// A peer that accepts and never answers: the handshake fails with a timeout, on time.
fn handshake_times_out_on_a_silent_peer(b: Backend) {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let s = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (_held, _) = listener.accept().expect("accept");
    let mut e = builder(b).build().expect("engine");
    let id = e.register_tcp(s).expect("register");
    let start = std::time::Instant::now();
    let r = TlsStream::client(client_config(&pki, true), "localhost")
        .expect("client")
        .timeout(Duration::from_millis(300))
        .complete(&mut e, id);
    let (status, _, msg) = tls_status(r, &format!("{b:?}"));
    assert_eq!(status, TlsStatus::Timeout, "{b:?}: {msg}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{b:?}: took {took:?}"
    );
}

//! `volley send tls://…` against `openssl s_server -Verify 1`, and `openssl s_client` against
//! `volley sink tls://…` and the `tls_echo_server` example: bytes exact, failures named, exit
//! status honest (a TLS 1.3 server that refuses the client certificate after the handshake
//! makes `volley send` fail, because it waits for the peer's close_notify).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use volley_tests::tls::{Peer, Pki};
use volley_tests::{assert_bytes_eq, payload};

const GUARD: Duration = Duration::from_secs(30);

fn wait_guarded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` with `input` on stdin, within the guard.
fn run(mut cmd: Command, input: Vec<u8>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_guarded(&mut child, "child");
    Output {
        status,
        stdout: t_out.join().expect("stdout"),
        stderr: t_err.join().expect("stderr"),
    }
}

fn send_tls(peer: &Peer, pki: &Pki, ca: &str, cert: bool, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volley"));
    c.arg("send")
        .arg(format!("tls://localhost:{}", peer.addr.port()))
        .arg("--ca")
        .arg(pki.path(ca));
    if cert {
        c.arg("--cert")
            .arg(pki.path("client.pem"))
            .arg("--key")
            .arg(pki.path("client.key"));
    }
    c.args(extra);
    c
}

/// stdin → `volley send tls://` (64-byte messages, 1024 per flush, client certificate) →
/// `s_server -Verify 1`, byte-exact, on each backend; the summary names the TLS version and
/// the records.
#[test]
fn send_tls_to_s_server() {
    for backend in ["uring", "epoll"] {
        let pki = Pki::new();
        let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
        let input = payload(0x5e4d, 200_003);
        let o = run(
            send_tls(
                &peer,
                &pki,
                "ca.pem",
                true,
                &["--size", "64", "--batch", "1024", "--backend", backend],
            ),
            input.clone(),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{backend}: send failed: {err}");
        assert!(err.contains("TLSv1_3") && err.contains("records"), "{err}");
        let out = peer.finish();
        assert_bytes_eq(&out.stdout, &input, backend);
    }
}

/// Without a client certificate the server's alert arrives after the (TLS 1.3) handshake:
/// `volley send` must not exit 0, and says why.
#[test]
fn send_tls_without_client_certificate_fails() {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &["-Verify", "1"]);
    let o = run(
        send_tls(&peer, &pki, "ca.pem", false, &["--size", "64"]),
        payload(3, 10_000),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "send exited 0 although refused: {err}");
    assert!(err.contains("certificate required"), "{err}");
    let out = peer.finish();
    assert!(out.stdout.is_empty(), "the server accepted data");
}

/// A server certificate from a CA not given with --ca: the handshake fails, named.
#[test]
fn send_tls_to_untrusted_server_fails() {
    let pki = Pki::new();
    let peer = Peer::s_server(&pki, false, &[]);
    let o = run(
        send_tls(&peer, &pki, "other-ca.pem", true, &[]),
        payload(4, 1000),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("TLS handshake") && err.contains("unknown CA"),
        "{err}"
    );
}

/// A server started by `cmd` that prints `listening on tls://ADDR` first; returns its port.
fn start_server(cmd: &mut Command) -> (Child, u16) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(GUARD).expect("the server's first line");
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .unwrap_or_default()
        .to_owned();
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

fn s_client(pki: &Pki, port: u16, cert: bool, extra: &[&str]) -> Command {
    let mut c = Command::new("openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(pki.path("ca.pem"));
    if cert {
        c.arg("-cert")
            .arg(pki.path("client.pem"))
            .arg("-key")
            .arg(pki.path("client.key"));
    }
    c.args(extra);
    c
}

/// `openssl s_client` (client certificate) → `volley sink tls:// --client-ca`: the sink's file
/// is exactly what s_client read from stdin; a client without a certificate is refused and
/// counted, and the sink goes on.
#[test]
fn s_client_to_volley_sink() {
    let pki = Pki::new();
    let out = std::env::temp_dir().join(format!("volley-cli-tls-sink-{}", std::process::id()));
    let (mut sink, port) = start_server(
        Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["sink", "tls://127.0.0.1:0", "--count", "2"])
            .arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server.key"))
            .arg("--client-ca")
            .arg(pki.path("ca.pem"))
            .arg("--out")
            .arg(&out),
    );
    // Refused in the handshake: its bytes must not reach the file (checked below).
    run(s_client(&pki, port, false, &["-brief"]), b"nope".to_vec());
    let input = payload(0x51c1, 150_000);
    let o = run(s_client(&pki, port, true, &["-brief"]), input.clone());
    assert!(
        o.status.success(),
        "s_client: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let st = wait_guarded(&mut sink, "volley sink");
    assert!(st.success(), "volley sink exited with {st}");
    let got = std::fs::read(&out).expect("sink output");
    let _ = std::fs::remove_file(&out);
    assert_bytes_eq(&got, &input, "sink file");
}

/// `--server-name` is the name checked in the server's certificate: a name it was not issued
/// for fails the handshake, named; the right one works with an IP address in the URL.
#[test]
fn send_tls_server_name() {
    let pki = Pki::new();
    for (name, ok) in [("wrong.example", false), ("localhost", true)] {
        let peer = Peer::s_server(&pki, false, &[]);
        let mut c = Command::new(env!("CARGO_BIN_EXE_volley"));
        c.arg("send")
            .arg(format!("tls://127.0.0.1:{}", peer.addr.port()))
            .arg("--ca")
            .arg(pki.path("ca.pem"))
            .args(["--server-name", name]);
        let input = payload(5, 5000);
        let o = run(c, input.clone());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.success(), ok, "--server-name {name}: {err}");
        if ok {
            assert_bytes_eq(&peer.finish().stdout, &input, name);
        } else {
            assert!(
                err.contains("bad certificate") && err.contains("wrong.example"),
                "{err}"
            );
        }
    }
}

//! End to end through the `volley` binary: `volley sink` receives what `volley send` reads from
//! stdin or a file, byte for byte, on each backend; failures exit non-zero naming the status; under
//! a seccomp filter that refuses io_uring, `--backend auto` falls back to epoll and says why, and
//! `--backend uring` fails clearly (FAILURES.md item 34).
//!
//! Interface under test:
//! `volley send tcp://HOST:PORT|udp://HOST:PORT [--size B] [--batch N] [--backend auto|uring|epoll]
//! [--input FILE]` (stdin by default; a summary line on stderr naming the backend and, if Auto
//! fell back, why; non-zero exit naming the status on failure), and
//! `volley sink tcp://BIND:PORT|udp://... [--out FILE] [--count N] [--idle-timeout SECS]`, which
//! prints `listening on ADDR` first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use volley_tests::{assert_bytes_eq, payload};

/// Longest any child may run: a guard against hangs, never the thing measured.
const GUARD: Duration = Duration::from_secs(30);

/// The backends as the CLI names them, and the word its summary uses for each.
const BACKENDS: [(&str, &str); 2] = [("uring", "io_uring"), ("epoll", "epoll")];

fn volley() -> Command {
    Command::new(env!("CARGO_BIN_EXE_volley"))
}

/// A temporary file path unique to this process and `tag`, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!("volley-cli-{}-{tag}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running `volley sink`, with the URL it announced.
struct Sink {
    child: Child,
    url: String,
}

impl Sink {
    /// Starts `volley sink <bind> --out <out> <extra…>` and waits for its `listening on` line.
    fn start(bind: &str, out: &TempPath, extra: &[&str]) -> Sink {
        let mut child = volley()
            .arg("sink")
            .arg(bind)
            .arg("--out")
            .arg(&out.0)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn volley sink");
        let stdout = child.stdout.take().expect("sink stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut r = BufReader::new(stdout);
            let _ = r.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so the sink never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let first = match rx.recv_timeout(GUARD) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("volley sink printed nothing within {GUARD:?}");
            }
        };
        let Some(url) = first.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!("volley sink's first line should be `listening on ADDR`, got {first:?} (exit {status:?})");
        };
        Sink {
            url: url.to_string(),
            child,
        }
    }

    /// Waits (within the guard) for the sink to exit on its own; it must succeed.
    fn finish(mut self) {
        let status = wait_guarded(&mut self.child, "volley sink");
        assert!(status.success(), "volley sink exited with {status}");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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

/// Runs `cmd` with `stdin_data` on its stdin (if any), within the guard; returns its output.
fn run(mut cmd: Command, stdin_data: Option<Vec<u8>>) -> Output {
    cmd.stdin(if stdin_data.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn volley");
    if let Some(data) = stdin_data {
        let mut stdin = child.stdin.take().expect("stdin");
        // A sender that fails early closes its stdin: ignore EPIPE here.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
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
    let status = wait_guarded(&mut child, "volley send");
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command to `volley send` to `url` with `args`.
fn send_cmd(url: &str, args: &[&str]) -> Command {
    let mut c = volley();
    c.arg("send").arg(url).args(args);
    c
}

/// stdin → `volley send tcp://…` → `volley sink` → file, byte-exact, on each backend; the summary
/// names the backend.
#[test]
fn send_tcp_from_stdin_to_sink() {
    for (backend, word) in BACKENDS {
        let ctx = format!("--backend {backend}");
        let input = payload(1, 300_001);
        let out = TempPath::new(&format!("tcp-stdin-{backend}"));
        let sink = Sink::start("tcp://127.0.0.1:0", &out, &["--count", "1"]);
        let o = run(
            send_cmd(
                &sink.url,
                &["--size", "1000", "--batch", "32", "--backend", backend],
            ),
            Some(input.clone()),
        );
        let err = stderr_of(&o);
        assert!(
            o.status.success(),
            "{ctx}: send failed ({}): {err}",
            o.status
        );
        assert!(
            err.contains(word),
            "{ctx}: the summary names the backend {word}: {err}"
        );
        assert!(
            !err.contains("fallback"),
            "{ctx}: no fallback when asked: {err}"
        );
        sink.finish();
        let got = std::fs::read(&out.0).expect("sink output");
        assert_bytes_eq(&got, &input, &ctx);
    }
}

/// `--input FILE` instead of stdin, default size and batch, `--backend auto`.
#[test]
fn send_tcp_from_input_file() {
    let input = payload(2, 1 << 20);
    let file = TempPath::new("tcp-input");
    std::fs::write(&file.0, &input).expect("write input");
    let out = TempPath::new("tcp-input-out");
    let sink = Sink::start("tcp://127.0.0.1:0", &out, &["--count", "1"]);
    let mut cmd = send_cmd(&sink.url, &["--backend", "auto", "--input"]);
    cmd.arg(&file.0);
    let o = run(cmd, None);
    let err = stderr_of(&o);
    assert!(o.status.success(), "send failed ({}): {err}", o.status);
    assert!(
        err.contains("io_uring") || err.contains("epoll"),
        "the summary names the backend: {err}"
    );
    sink.finish();
    assert_bytes_eq(
        &std::fs::read(&out.0).expect("sink output"),
        &input,
        "--input",
    );
}

/// UDP: each `--size` chunk is one datagram; the sink's file is their concatenation.
#[test]
fn send_udp_datagrams_to_sink() {
    for (backend, word) in BACKENDS {
        let ctx = format!("udp --backend {backend}");
        let input = payload(3, 64 * 512);
        let out = TempPath::new(&format!("udp-{backend}"));
        let sink = Sink::start(
            "udp://127.0.0.1:0",
            &out,
            &["--count", "64", "--idle-timeout", "10"],
        );
        let o = run(
            send_cmd(
                &sink.url,
                &["--size", "512", "--batch", "8", "--backend", backend],
            ),
            Some(input.clone()),
        );
        let err = stderr_of(&o);
        assert!(
            o.status.success(),
            "{ctx}: send failed ({}): {err}",
            o.status
        );
        assert!(err.contains(word), "{ctx}: summary names {word}: {err}");
        sink.finish();
        assert_bytes_eq(&std::fs::read(&out.0).expect("sink output"), &input, &ctx);
    }
}

/// Nothing listens: a non-zero exit whose message says the connection was refused.
#[test]
fn send_to_closed_port_fails_naming_it() {
    // Bound but not listening: connecting is refused, and the port stays ours for the whole
    // test (a closed port could be handed to a parallel test's listener).
    let holder =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    holder
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = holder
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    for (backend, _) in BACKENDS {
        let o = run(
            send_cmd(&format!("tcp://127.0.0.1:{port}"), &["--backend", backend]),
            Some(b"hello".to_vec()),
        );
        let err = stderr_of(&o).to_lowercase();
        assert!(!o.status.success(), "{backend}: exit should be non-zero");
        assert!(
            err.contains("refused"),
            "{backend}: the message says refused: {err}"
        );
    }
}

/// The peer resets mid-stream: a non-zero exit naming the status (reset or broken pipe).
#[test]
fn send_peer_reset_fails_naming_status() {
    for (backend, _) in BACKENDS {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        socket2::SockRef::from(&listener)
            .set_recv_buffer_size(4096)
            .expect("SO_RCVBUF");
        let url = format!("tcp://{}", listener.local_addr().expect("addr"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let peer = std::thread::spawn(move || {
            // Poll for the connection, so a sender that never connects cannot hang the test.
            let deadline = Instant::now() + GUARD;
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("no connection within {GUARD:?}: {e}"),
                }
            };
            s.set_nonblocking(false).expect("blocking");
            let mut buf = vec![0u8; 64 * 1024];
            let _ = s.read_exact(&mut buf);
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
            drop(s); // RST
        });
        let file = TempPath::new(&format!("reset-{backend}"));
        std::fs::write(&file.0, payload(4, 32 << 20)).expect("write input");
        let mut cmd = send_cmd(&url, &["--backend", backend, "--input"]);
        cmd.arg(&file.0);
        let o = run(cmd, None);
        let err = stderr_of(&o).to_lowercase();
        assert!(
            peer.join().is_ok(),
            "{backend}: volley send never connected ({}): {err}",
            o.status
        );
        assert!(
            !o.status.success(),
            "{backend}: exit should be non-zero: {err}"
        );
        assert!(
            err.contains("reset") || err.contains("broken pipe"),
            "{backend}: the message names the status: {err}"
        );
    }
}

/// `volley send` with a seccomp filter refusing io_uring_setup with EPERM (as Docker's default
/// profile does) installed in the child before exec.
fn send_under_seccomp(url: &str, backend: &str, input: Vec<u8>) -> Output {
    let mut cmd = send_cmd(url, &["--backend", backend]);
    // SAFETY: deny_io_uring only builds a stack array and calls prctl twice: async-signal-safe,
    // no allocation or locks between fork and exec.
    unsafe {
        cmd.pre_exec(|| volley_tests::seccomp::deny_io_uring(libc::EPERM));
    }
    run(cmd, Some(input))
}

/// Under the filter, `--backend auto` succeeds on epoll and the summary says why it fell back;
/// `--backend uring` exits non-zero with a message that says io_uring is unavailable and why.
#[test]
fn send_under_seccomp_falls_back_or_fails_clearly() {
    let input = payload(5, 200_000);
    let out = TempPath::new("seccomp");
    let sink = Sink::start("tcp://127.0.0.1:0", &out, &["--count", "1"]);
    let o = send_under_seccomp(&sink.url, "auto", input.clone());
    let err = stderr_of(&o);
    assert!(
        o.status.success(),
        "auto under seccomp failed ({}): {err}",
        o.status
    );
    assert!(err.contains("epoll"), "auto: the summary says epoll: {err}");
    assert!(
        err.contains("EPERM") || err.contains("seccomp"),
        "auto: the summary says why it fell back: {err}"
    );
    sink.finish();
    assert_bytes_eq(
        &std::fs::read(&out.0).expect("sink output"),
        &input,
        "auto under seccomp",
    );

    // Nothing needs to listen: the engine is built before connecting, and must refuse.
    // Bound but not listening: connecting is refused, and the port stays ours for the whole
    // test (a closed port could be handed to a parallel test's listener).
    let holder =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    holder
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let port = holder
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let o = send_under_seccomp(&format!("tcp://127.0.0.1:{port}"), "uring", b"x".to_vec());
    let err = stderr_of(&o);
    assert!(!o.status.success(), "uring under seccomp must fail: {err}");
    assert!(
        err.contains("io_uring") && (err.contains("EPERM") || err.contains("seccomp")),
        "uring: the message says io_uring is unavailable and why: {err}"
    );
}

/// `volley bench --json` on udp-gso: every GSO sender (volley's backends, quinn-udp and the
/// hand-built `raw-gso` floor) verifies with the receiver (`ok`), sends ≤ 1 system call per
/// 16 datagrams, and the row counts the messages it was asked to send; a TCP scenario reports
/// the UDP-only methods as `n/a`, not failed.
#[test]
fn bench_json_udp_gso_rows_verify() {
    let mut cmd = volley();
    cmd.args([
        "bench",
        "--quick",
        "--json",
        "--rounds",
        "2",
        "--scenario",
        "udp-gso",
        "--scenario",
        "tcp-small",
        "--method",
        "naive",
        "--method",
        "uring",
        "--method",
        "epoll",
        "--method",
        "quinn-udp",
        "--method",
        "raw-gso",
    ]);
    let o = run(cmd, None);
    assert!(o.status.success(), "bench failed: {}", stderr_of(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).expect("bench JSON");
    let row = |scenario: &str, method: &str| {
        rows.iter()
            .find(|r| r["scenario"] == scenario && r["method"] == method)
            .unwrap_or_else(|| panic!("no row for {scenario}/{method}"))
            .clone()
    };
    for m in ["naive", "uring", "epoll", "quinn-udp", "raw-gso"] {
        let r = row("udp-gso", m);
        assert_eq!(r["status"], "ok", "udp-gso/{m}: {r}");
        assert!(
            r["messages_per_sec"].as_f64().is_some_and(|v| v > 0.0),
            "{r}"
        );
        assert!(
            r["messages_per_round"].as_u64().is_some_and(|v| v > 0),
            "{r}"
        );
        if m != "naive" {
            // Kernel-counted where the counter works (null otherwise): GSO/batching keeps it low.
            if let Some(t) = r["transitions_per_message"].as_f64() {
                assert!(t <= 1.0 / 16.0, "udp-gso/{m}: {t} transitions per datagram");
            }
        }
    }
    for m in ["quinn-udp", "raw-gso"] {
        let r = row("tcp-small", m);
        assert_eq!(r["status"], "n/a", "tcp-small/{m}: {r}");
    }
}

/// `volley bench --threads 1 --threads 2`: both counts run side by side on tcp-small, each
/// thread on its own connection, receiver and engine; every row verifies (`ok`), the
/// two-thread rows say so, and the table reports the scaling.
#[test]
fn bench_threads_rows_verify_and_scale() {
    let args = [
        "bench",
        "--quick",
        "--rounds",
        "2",
        "--scenario",
        "tcp-small",
        "--method",
        "epoll",
        "--method",
        "naive",
        "--threads",
        "1",
        "--threads",
        "2",
    ];
    let mut cmd = volley();
    cmd.args(args).arg("--json");
    let o = run(cmd, None);
    assert!(o.status.success(), "bench failed: {}", stderr_of(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).expect("bench JSON");
    for m in ["epoll", "naive"] {
        for t in [1, 2] {
            let r = rows
                .iter()
                .find(|r| r["method"] == m && r["threads"] == t)
                .unwrap_or_else(|| panic!("no row for {m} × {t} threads"));
            assert_eq!(r["status"], "ok", "{m} × {t}: {r}");
            assert!(
                r["messages_per_sec"].as_f64().is_some_and(|v| v > 0.0),
                "{r}"
            );
        }
    }
    let mut cmd = volley();
    cmd.args(args);
    let o = run(cmd, None);
    assert!(o.status.success(), "bench failed: {}", stderr_of(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("epoll (2 threads)"), "{out}");
    assert!(out.contains("scaling epoll: 1 thread "), "{out}");
}

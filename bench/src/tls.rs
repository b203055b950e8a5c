//! `tls-small`: 64-byte messages over TLS, 1024 per flush, to a receiver thread in the same
//! process that decrypts (rustls) and verifies every byte. Compared:
//!
//! - `volley-uring`, `volley-epoll`: [`volley::tls::TlsStream`]: plaintext queued, one flush
//!   seals it into 16 KiB records and sends them as one batch;
//! - `rustls-naive`: rustls over a plain `TcpStream`, each message written and its record sent
//!   at once (one record and one `write` per message);
//! - `rustls-bufwriter`: rustls over a 64 KiB `BufWriter<TcpStream>`: one record per message,
//!   written to the socket 64 KiB at a time;
//! - `bufwriter-rustls`: a 64 KiB `BufWriter` *over* rustls: the plaintext is buffered, so
//!   rustls sees 64 KiB writes (full records), as volley does.
//!
//! Reported per method: msgs/s (median of interleaved rounds), TLS records, wire bytes and
//! socket writes (system calls for volley) per 1024 messages. Then handshake times, with and
//! without a client certificate, volley and plain rustls: connect until the first byte the
//! server sends after its side of the handshake (so the server's check of the client
//! certificate is included), median and p90.
//!
//! Certificates are made in process (rcgen, P-256): a CA, a server certificate for
//! `localhost`, a client certificate.

use std::io::{self, BufWriter, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use volley::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use volley::tls::rustls::server::WebPkiClientVerifier;
use volley::tls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use volley::tls::{provider, TlsStream};
use volley::{Backend, Engine};

use crate::say;

const MSG_BYTES: usize = 64;

/// The configurations of one run.
struct Configs {
    client: Arc<ClientConfig>,
    client_auth: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    server_auth: Arc<ServerConfig>,
}

fn certs() -> Result<Configs, String> {
    let e = |e: rcgen::Error| format!("making certificates: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "volley bench CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let leaf =
        |name: &str| -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
            let key = KeyPair::generate().map_err(e)?;
            let params = CertificateParams::new(vec![name.to_owned()]).map_err(e)?;
            let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            Ok((vec![cert.der().clone()], der))
        };
    let (server_chain, server_key) = leaf("localhost")?;
    let (client_chain, client_key) = leaf("volley-bench-client")?;
    let mut roots = RootCertStore::empty();
    roots
        .add(ca_cert.der().clone())
        .map_err(|e| format!("root store: {e}"))?;
    let roots = Arc::new(roots);
    let r = |e: rustls::Error| format!("rustls configuration: {e}");
    let client_builder = || {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(Arc::clone(&roots)))
    };
    let client = client_builder().map_err(r)?.with_no_client_auth();
    let client_auth = client_builder()
        .map_err(r)?
        .with_client_auth_cert(client_chain, client_key)
        .map_err(r)?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(r)?
        .with_no_client_auth()
        .with_single_cert(server_chain.clone(), server_key.clone_key())
        .map_err(r)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let server_auth = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(r)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)
        .map_err(r)?;
    Ok(Configs {
        client: Arc::new(client),
        client_auth: Arc::new(client_auth),
        server: Arc::new(server),
        server_auth: Arc::new(server_auth),
    })
}

/// Counts TLS records in a byte stream cut anywhere (5-byte headers, then the body).
#[derive(Debug, Default)]
struct RecordCount {
    header: [u8; 5],
    have: usize,
    body_left: usize,
    records: u64,
}

impl RecordCount {
    fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(buf.len());
                self.body_left -= k;
                buf = &buf[k..];
                continue;
            }
            let k = (5 - self.have).min(buf.len());
            self.header[self.have..self.have + k].copy_from_slice(&buf[..k]);
            self.have += k;
            buf = &buf[k..];
            if self.have == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
                self.records += 1;
            }
        }
    }
}

/// A socket that counts what is written through it: bytes, write calls, TLS records.
#[derive(Debug)]
struct Counted {
    sock: TcpStream,
    bytes: u64,
    writes: u64,
    records: RecordCount,
}

impl Counted {
    fn new(sock: TcpStream) -> Counted {
        Counted {
            sock,
            bytes: 0,
            writes: 0,
            records: RecordCount::default(),
        }
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(buf)?;
        self.writes += 1;
        self.bytes += n as u64;
        self.records.feed(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.sock.write_vectored(bufs)?;
        self.writes += 1;
        self.bytes += n as u64;
        let mut left = n;
        for b in bufs {
            let k = left.min(b.len());
            self.records.feed(&b[..k]);
            left -= k;
            if left == 0 {
                break;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// rustls as a `Write`: plaintext in, its records out to the counted socket at once.
struct RustlsWriter {
    conn: ClientConnection,
    sock: Counted,
}

impl Write for RustlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

/// The compared senders, each over its own connection.
enum Sender {
    Volley {
        engine: Box<Engine>,
        tls: Box<TlsStream>,
    },
    /// rustls over the socket (`buffered`: over a 64 KiB `BufWriter` of it).
    RustlsOver {
        conn: ClientConnection,
        sock: BufWriter<Counted>,
    },
    /// A 64 KiB `BufWriter` over rustls.
    BufOverRustls(BufWriter<RustlsWriter>),
}

/// Counters a sender reports: records, wire bytes, writes (system calls for volley).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    records: u64,
    wire: u64,
    writes: u64,
}

impl Sender {
    fn batch(&mut self, payload: &[u8]) -> Result<(), String> {
        match self {
            Sender::Volley { engine, tls } => {
                for m in payload.chunks(MSG_BYTES) {
                    tls.send(engine, m).map_err(|e| e.to_string())?;
                }
                tls.flush(engine).map_err(|e| e.to_string())?;
            }
            Sender::RustlsOver { conn, sock } => {
                let io = |e: io::Error| e.to_string();
                for m in payload.chunks(MSG_BYTES) {
                    conn.writer().write_all(m).map_err(io)?;
                    while conn.wants_write() {
                        conn.write_tls(sock).map_err(io)?;
                    }
                }
                sock.flush().map_err(io)?;
            }
            Sender::BufOverRustls(w) => {
                for m in payload.chunks(MSG_BYTES) {
                    w.write_all(m).map_err(|e| e.to_string())?;
                }
                w.flush().map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn counts(&self) -> Counts {
        match self {
            Sender::Volley { engine, tls } => Counts {
                records: tls.stats().data_records,
                wire: tls.stats().wire_bytes,
                writes: engine.stats().kernel_transitions,
            },
            Sender::RustlsOver { sock, .. } => {
                let c = sock.get_ref();
                Counts {
                    records: c.records.records,
                    wire: c.bytes,
                    writes: c.writes,
                }
            }
            Sender::BufOverRustls(w) => {
                let c = &w.get_ref().sock;
                Counts {
                    records: c.records.records,
                    wire: c.bytes,
                    writes: c.writes,
                }
            }
        }
    }
}

/// The decrypting receiver of one connection: checks every byte against the repeated batch
/// payload, counts them in `received`; sets `bad` on a mismatch or an error.
struct Receiver {
    received: Arc<AtomicU64>,
    bad: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Receiver {
    fn start(listener: TcpListener, config: Arc<ServerConfig>, payload: Arc<Vec<u8>>) -> Receiver {
        let received = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicBool::new(false));
        let (r, b) = (Arc::clone(&received), Arc::clone(&bad));
        let handle = std::thread::spawn(move || {
            let res = (|| -> Result<(), String> {
                let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
                let conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
                let mut s = rustls::StreamOwned::new(conn, sock);
                let mut buf = vec![0u8; 256 * 1024];
                let mut pos = 0usize;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // The sender dropped its socket at the end (no close_notify).
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => return Err(e.to_string()),
                    };
                    let mut got = &buf[..n];
                    while !got.is_empty() {
                        let at = pos % payload.len();
                        let k = got.len().min(payload.len() - at);
                        if got[..k] != payload[at..at + k] {
                            return Err(format!("byte mismatch near stream offset {pos}"));
                        }
                        got = &got[k..];
                        pos += k;
                    }
                    r.fetch_add(n as u64, Ordering::Release);
                }
            })();
            if res.is_err() {
                b.store(true, Ordering::Release);
            }
            res
        });
        Receiver {
            received,
            bad,
            handle: Some(handle),
        }
    }

    /// Waits (untimed) until `total` bytes arrived; an error if the receiver failed or it took
    /// longer than 60 s.
    fn wait_for(&mut self, total: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.received.load(Ordering::Acquire) < total {
            if self.bad.load(Ordering::Acquire) {
                return Err(self.join());
            }
            if Instant::now() > deadline {
                return Err("receiver did not get every byte within 60 s".into());
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    fn join(&mut self) -> String {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => "receiver panicked".into(),
            _ => "receiver failed".into(),
        }
    }
}

/// The method names, in report order.
const METHODS: [&str; 5] = [
    "volley-uring",
    "volley-epoll",
    "rustls-naive",
    "rustls-bufwriter",
    "bufwriter-rustls",
];

/// Connects one method's sender to a fresh receiver.
fn setup(name: &str, cfg: &Configs, payload: &Arc<Vec<u8>>) -> Result<(Sender, Receiver), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let rx = Receiver::start(listener, Arc::clone(&cfg.server), Arc::clone(payload));
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")
        .map_err(|e| e.to_string())?
        .to_owned();
    let rustls_handshake = |mut sock: TcpStream| -> Result<(ClientConnection, TcpStream), String> {
        let mut conn = ClientConnection::new(Arc::clone(&cfg.client), server_name.clone())
            .map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok((conn, sock))
    };
    let sender = match name {
        "volley-uring" | "volley-epoll" => {
            let backend = if name == "volley-uring" {
                Backend::Uring
            } else {
                Backend::Epoll
            };
            let mut engine = Engine::builder()
                .backend(backend)
                .build()
                .map_err(|e| e.to_string())?;
            let id = engine.register_tcp(sock).map_err(|e| e.to_string())?;
            let tls = TlsStream::client(Arc::clone(&cfg.client), "localhost")
                .and_then(|h| h.complete(&mut engine, id))
                .map_err(|e| e.to_string())?;
            Sender::Volley {
                engine: Box::new(engine),
                tls: Box::new(tls),
            }
        }
        "rustls-naive" | "rustls-bufwriter" => {
            let (conn, sock) = rustls_handshake(sock)?;
            // Capacity 0: every record goes straight to the socket.
            let cap = if name == "rustls-naive" { 0 } else { 64 * 1024 };
            Sender::RustlsOver {
                conn,
                sock: BufWriter::with_capacity(cap, Counted::new(sock)),
            }
        }
        _ => {
            let (conn, sock) = rustls_handshake(sock)?;
            Sender::BufOverRustls(BufWriter::with_capacity(
                64 * 1024,
                RustlsWriter {
                    conn,
                    sock: Counted::new(sock),
                },
            ))
        }
    };
    Ok((sender, rx))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The `num/den` quantile (nearest rank).
fn quantile(v: &mut [f64], num: usize, den: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = (v.len().saturating_sub(1) * num).div_ceil(den);
    v.get(i).copied().unwrap_or(0.0)
}

/// Runs tls-small and prints its tables.
///
/// # Errors
/// A setup failure, or a receiver that did not get exactly what was sent.
pub fn run(quick: bool, rounds: Option<usize>, batch: Option<usize>) -> Result<(), String> {
    let out = |l: &str| say(l).map_err(|e| format!("cannot write to stdout: {e}"));
    let batch = batch.unwrap_or(1024);
    let rounds = rounds.unwrap_or(if quick { 5 } else { 11 });
    let batches_per_round = if quick { 16 } else { 64 };
    let cfg = certs()?;
    let payload: Arc<Vec<u8>> = Arc::new(
        (0..batch * MSG_BYTES)
            .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect(),
    );
    let mut methods = Vec::new();
    for name in METHODS {
        match setup(name, &cfg, &payload) {
            Ok((s, r)) => methods.push((name, s, r, Vec::new(), 0u64)),
            Err(e) => out(&format!("tls-small: {name} skipped: {e}"))?,
        }
    }
    // Warm-up batch, then interleaved rounds (round r starts at method r mod n).
    let mut sent = vec![0u64; methods.len()];
    let mut before = Vec::new();
    for (i, (_, s, r, ..)) in methods.iter_mut().enumerate() {
        s.batch(&payload)?;
        sent[i] += payload.len() as u64;
        r.wait_for(sent[i])?;
        before.push(s.counts());
    }
    let n = methods.len();
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let (name, s, r, rates, _) = &mut methods[i];
            let start = Instant::now();
            for _ in 0..batches_per_round {
                s.batch(&payload).map_err(|e| format!("{name}: {e}"))?;
            }
            let secs = start.elapsed().as_secs_f64();
            sent[i] += (payload.len() * batches_per_round) as u64;
            r.wait_for(sent[i])
                .map_err(|e| format!("{name}: FAILED: {e}"))?;
            rates.push((batch * batches_per_round) as f64 / secs);
        }
    }
    out(&format!(
        "\ntls-small: {MSG_BYTES} B × {batch} per flush over TLS 1.3 ({}), receiver decrypts and verifies every byte; median of {rounds} rounds × {batches_per_round} flushes",
        methods
            .iter()
            .find_map(|(_, s, ..)| match s {
                Sender::Volley { tls, .. } => tls
                    .connection()
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite())),
                _ => None,
            })
            .unwrap_or_else(|| "?".into())
    ))?;
    out(&format!(
        "{:<18} {:>12} {:>10} {:>20} {:>22} {:>20}",
        "method",
        "msgs/s",
        "×naive",
        "records/1024 msgs",
        "wire bytes/1024 msgs",
        "writes/1024 msgs"
    ))?;
    let flushes = (rounds * batches_per_round) as f64;
    let per = |x: u64| x as f64 / flushes * 1024.0 / batch as f64;
    let naive = methods
        .iter_mut()
        .find(|m| m.0 == "rustls-naive")
        .map(|m| median(&mut m.3));
    for (i, (name, s, _, rates, _)) in methods.iter_mut().enumerate() {
        let c = s.counts();
        let b = before[i];
        let rate = median(rates);
        let ratio = naive.map_or_else(|| "-".into(), |n| format!("{:.2}×", rate / n));
        out(&format!(
            "{:<18} {:>12.0} {:>10} {:>20.1} {:>22.0} {:>20.2}",
            name,
            rate,
            ratio,
            per(c.records - b.records),
            per(c.wire - b.wire),
            per(c.writes - b.writes)
        ))?;
    }
    drop(methods);
    handshakes(&cfg, if quick { 30 } else { 200 }, &out)
}

/// Handshake times: connect, handshake, and the server's first byte (sent once its side of
/// the handshake, client certificate check included, is done).
fn handshakes(
    cfg: &Configs,
    n: usize,
    out: &dyn Fn(&str) -> Result<(), String>,
) -> Result<(), String> {
    out(&format!(
        "\ntls-small handshakes (connect → handshake → the server's first byte), {n} each, ms"
    ))?;
    out(&format!("{:<34} {:>8} {:>8}", "", "p50", "p90"))?;
    for (auth, label) in [
        (false, "no client certificate"),
        (true, "client certificate"),
    ] {
        let server_cfg = Arc::clone(if auth { &cfg.server_auth } else { &cfg.server });
        let client_cfg = Arc::clone(if auth { &cfg.client_auth } else { &cfg.client });
        for who in ["volley", "rustls"] {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let sc = Arc::clone(&server_cfg);
            let server = std::thread::spawn(move || -> Result<(), String> {
                for _ in 0..n {
                    let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
                    sock.set_nodelay(true).map_err(|e| e.to_string())?;
                    let conn = rustls::ServerConnection::new(Arc::clone(&sc))
                        .map_err(|e| e.to_string())?;
                    let mut s = rustls::StreamOwned::new(conn, sock);
                    s.write_all(b"!").map_err(|e| e.to_string())?;
                    s.flush().map_err(|e| e.to_string())?;
                    // Until the client's close_notify, then ours.
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink).map_err(|e| e.to_string())?;
                    s.conn.send_close_notify();
                    s.flush().map_err(|e| e.to_string())?;
                }
                Ok(())
            });
            let mut engine = Engine::builder().build().map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(|e| e.to_string())?
                .to_owned();
            let mut ms = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                sock.set_nodelay(true).map_err(|e| e.to_string())?;
                let mut one = [0u8; 1];
                if who == "volley" {
                    let id = engine.register_tcp(sock).map_err(|e| e.to_string())?;
                    let mut tls = TlsStream::client(Arc::clone(&client_cfg), "localhost")
                        .and_then(|h| h.complete(&mut engine, id))
                        .map_err(|e| e.to_string())?;
                    tls.read(&mut one).map_err(|e| e.to_string())?;
                    ms.push(start.elapsed().as_secs_f64() * 1e3);
                    tls.close(&mut engine).map_err(|e| e.to_string())?;
                } else {
                    let conn = ClientConnection::new(Arc::clone(&client_cfg), name.clone())
                        .map_err(|e| e.to_string())?;
                    let mut s = rustls::StreamOwned::new(conn, sock);
                    s.read_exact(&mut one).map_err(|e| e.to_string())?;
                    ms.push(start.elapsed().as_secs_f64() * 1e3);
                    s.conn.send_close_notify();
                    s.flush().map_err(|e| e.to_string())?;
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).map_err(|e| e.to_string())?;
                }
            }
            server
                .join()
                .map_err(|_| "handshake server panicked".to_string())??;
            let p50 = median(&mut ms);
            let p90 = quantile(&mut ms, 9, 10);
            out(&format!(
                "{:<34} {:>8.3} {:>8.3}",
                format!("{who}, {label}"),
                p50,
                p90
            ))?;
        }
    }
    Ok(())
}

/// One tls-small method on its own connection and verifying receiver, for the criterion
/// harness (`benches/tls.rs`): [`TlsBench::batch`] is one flush of `batch` 64-byte messages.
pub struct TlsBench {
    sender: Sender,
    rx: Receiver,
    payload: Arc<Vec<u8>>,
    sent: u64,
}

impl std::fmt::Debug for TlsBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsBench")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl TlsBench {
    /// The methods, as `volley bench --scenario tls-small` names them.
    pub const METHODS: [&'static str; 5] = METHODS;

    /// Certificates, a receiver, and `method`'s sender connected to it (handshake done).
    ///
    /// # Errors
    /// Setup failures, as text.
    pub fn new(method: &str, batch: usize) -> Result<TlsBench, String> {
        let cfg = certs()?;
        let payload: Arc<Vec<u8>> = Arc::new(
            (0..batch * MSG_BYTES)
                .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
                .collect(),
        );
        let (sender, rx) = setup(method, &cfg, &payload)?;
        Ok(TlsBench {
            sender,
            rx,
            payload,
            sent: 0,
        })
    }

    /// Sends one batch and flushes.
    ///
    /// # Errors
    /// The sender's error, as text.
    pub fn batch(&mut self) -> Result<(), String> {
        self.sender.batch(&self.payload)?;
        self.sent += self.payload.len() as u64;
        Ok(())
    }

    /// Waits until the receiver decrypted and checked everything sent so far.
    ///
    /// # Errors
    /// A receiver that failed, or did not get it all within 60 s.
    pub fn verify(&mut self) -> Result<(), String> {
        self.rx.wait_for(self.sent)
    }
}

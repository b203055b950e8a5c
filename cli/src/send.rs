//! `volley send`: stdin (or a file) cut into messages, queued on one socket (or a TLS session
//! over it), flushed per batch.

use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use volley::tls::TlsStream;
use volley::{Backend, Engine, Error, FlushReport, SocketId, Status};

use crate::addr::{self, Proto};
use crate::tls::SendTlsArgs;

/// Options of `volley send`.
#[derive(Debug)]
pub struct SendOpts {
    /// `tcp://HOST:PORT` or `udp://HOST:PORT`.
    pub url: String,
    /// Bytes per message (the last one may be shorter).
    pub size: usize,
    /// Messages per flush.
    pub batch: usize,
    /// Backend; `None` leaves the builder default (`VOLLEY_BACKEND`, else auto).
    pub backend: Option<Backend>,
    /// Read this file instead of stdin.
    pub input: Option<std::path::PathBuf>,
    /// `tls://`: CA, client certificate, server name.
    pub tls: SendTlsArgs,
}

/// What `volley send` writes to: the engine's socket, or a TLS session over it.
#[derive(Debug)]
enum Conn {
    Plain(SocketId),
    Tls(Box<TlsStream>),
}

/// What was sent, for the summary line and the exit status.
#[derive(Debug, Default)]
struct Totals {
    messages: u64,
    bytes_in: u64,
    accepted_bytes: u64,
    failures: [u64; Status::ALL.len()],
    failed: u64,
    /// tls://: records, wire bytes, handshake time, for the summary.
    tls: Option<String>,
}

impl Totals {
    fn add(&mut self, r: &FlushReport) {
        self.accepted_bytes += r.bytes;
        self.failed += r.failed;
        for (s, n) in r.failures_by_status() {
            self.failures[s.index()] += n;
        }
    }

    fn failures_text(&self) -> String {
        Status::ALL
            .iter()
            .filter(|s| self.failures[s.index()] > 0)
            .map(|s| format!("{}: {}", s, self.failures[s.index()]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `volley send`. Errors go to stderr first; once the engine has run, stderr ends with
/// the one summary line.
pub fn run(opts: &SendOpts) -> ExitCode {
    let (result, summary) = run_inner(opts);
    if let Err(e) = &result {
        eprintln!("volley: {e}");
    }
    if let Some(line) = summary {
        eprintln!("{line}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Sends, returning the outcome and (once the engine ran) the summary line.
fn run_inner(opts: &SendOpts) -> (Result<(), String>, Option<String>) {
    match setup(opts) {
        Ok((mut engine, mut conn, proto, mut input)) => {
            let mut totals = Totals::default();
            let result = pump(&mut engine, &mut conn, &mut *input, opts, &mut totals);
            // Close (flush) even after an error, so a UDP run still reports what it did send.
            let closed = match result {
                Ok(()) => close(&mut engine, conn, &mut totals),
                Err(e) => Err(e),
            };
            let line = summary(&engine, &totals);
            (verdict(opts, proto, closed, &totals), Some(line))
        }
        Err(e) => (Err(e), None),
    }
}

type Setup = (Engine, Conn, Proto, Box<dyn Read>);

fn setup(opts: &SendOpts) -> Result<Setup, String> {
    if opts.size == 0 {
        return Err("--size must be at least 1".into());
    }
    if opts.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let ep = addr::parse(&opts.url, None)?;
    let input: Box<dyn Read> = match &opts.input {
        Some(p) => {
            Box::new(File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    // The summary's flush percentiles: every flush (they are few next to the messages).
    let mut builder = Engine::builder().flush_latency_every(1);
    if let Some(b) = opts.backend {
        builder = builder.backend(b);
    }
    let mut engine = builder
        .build()
        .map_err(|e| format!("cannot start the engine: {e}"))?;
    let conn = match ep.proto {
        Proto::Tcp | Proto::Tls => {
            // Before connecting: a bad certificate file is the user's to fix, not the peer's.
            let config = match ep.proto {
                Proto::Tls => Some(opts.tls.config()?),
                _ => None,
            };
            let stream = connect_tcp(&ep.addrs)?;
            let id = engine
                .register_tcp(stream)
                .map_err(|e| format!("cannot register the socket: {e}"))?;
            match config {
                Some(config) => {
                    let name = opts.tls.server_name.as_deref().unwrap_or(&ep.host);
                    let tls = TlsStream::client(config, name)
                        .and_then(|h| h.complete(&mut engine, id))
                        .map_err(|e| format!("TLS handshake with {} failed: {e}", opts.url))?;
                    Conn::Tls(Box::new(tls))
                }
                None => Conn::Plain(id),
            }
        }
        Proto::Udp => {
            let sock = connect_udp(&ep.addrs)?;
            Conn::Plain(
                engine
                    .register_udp(sock)
                    .map_err(|e| format!("cannot register the socket: {e}"))?,
            )
        }
    };
    Ok((engine, conn, ep.proto, input))
}

fn verdict(
    opts: &SendOpts,
    proto: Proto,
    closed: Result<(), Error>,
    totals: &Totals,
) -> Result<(), String> {
    match (proto, closed) {
        (_, Err(e)) => Err(format!("send to {} failed: {e}", opts.url)),
        (Proto::Tcp | Proto::Tls, Ok(())) if totals.accepted_bytes != totals.bytes_in => {
            Err(format!(
                "only {} of {} bytes were accepted by the kernel",
                totals.accepted_bytes, totals.bytes_in
            ))
        }
        (Proto::Udp, Ok(())) if totals.failed > 0 => Err(format!(
            "{} of {} datagrams failed ({})",
            totals.failed,
            totals.messages,
            totals.failures_text()
        )),
        _ => Ok(()),
    }
}

fn connect_tcp(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a) {
            Ok(s) => {
                s.set_nodelay(true)
                    .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
                return Ok(s);
            }
            Err(e) => last = Some(format!("connect to {a} failed: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| "no address to connect to".into()))
}

fn connect_udp(addrs: &[SocketAddr]) -> Result<UdpSocket, String> {
    let mut last = None;
    for a in addrs {
        let local: SocketAddr = if a.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = UdpSocket::bind(local).and_then(|s| s.connect(a).map(|()| s));
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(format!("UDP connect to {a} failed: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| "no address to send to".into()))
}

/// Sends with backpressure handling: a full queue is flushed, then the send retried. TLS
/// queues plaintext (the session bounds it).
fn send(
    engine: &mut Engine,
    conn: &mut Conn,
    msg: Bytes,
    totals: &mut Totals,
) -> Result<(), Error> {
    let id = match conn {
        Conn::Plain(id) => *id,
        Conn::Tls(tls) => return tls.send(engine, &msg),
    };
    match engine.send(id, msg) {
        Err(e) if e.is_backpressure() => {
            totals.add(&engine.flush(id)?);
            // The refused buffer comes back unsent: send the same one again.
            Ok(engine.send(id, e.into_inner())?)
        }
        r => Ok(r?),
    }
}

/// The flush barrier; for TLS the accepted bytes are the plaintext flushed so far.
fn flush(engine: &mut Engine, conn: &mut Conn, totals: &mut Totals) -> Result<(), Error> {
    match conn {
        Conn::Plain(id) => totals.add(&engine.flush(*id)?),
        Conn::Tls(tls) => {
            tls.flush(engine)?;
            totals.accepted_bytes = tls.stats().plaintext_bytes;
        }
    }
    Ok(())
}

/// Flushes and closes. TLS: `close_notify`, then the peer's `close_notify` must come back (an
/// alert instead — a TLS 1.3 server refusing the client certificate after the handshake —
/// means it discarded everything): only then are the bytes counted as accepted.
fn close(engine: &mut Engine, conn: Conn, totals: &mut Totals) -> Result<(), Error> {
    match conn {
        Conn::Plain(id) => engine.close(id).map(|(r, _fd)| totals.add(&r)),
        Conn::Tls(mut tls) => {
            let plain = tls.stats().plaintext_bytes + tls.queued_plaintext() as u64;
            let shut = tls.shutdown(engine);
            let st = *tls.stats();
            let version = tls
                .connection()
                .protocol_version()
                .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
            totals.tls = Some(format!(
                "{version} ({} records, {} wire bytes, handshake {:.1} ms)",
                st.records,
                st.wire_bytes,
                st.handshake.as_secs_f64() * 1e3
            ));
            let id = tls.id();
            drop(tls);
            let closed = engine.close(id).map(|_| ());
            shut?;
            closed?;
            totals.accepted_bytes = plain;
            Ok(())
        }
    }
}

fn pump(
    engine: &mut Engine,
    conn: &mut Conn,
    input: &mut dyn Read,
    opts: &SendOpts,
    totals: &mut Totals,
) -> Result<(), Error> {
    let chunk = opts
        .size
        .saturating_mul(opts.batch)
        .clamp(64 * 1024, 4 << 20);
    let mut buf = BytesMut::new();
    let mut since_flush = 0usize;
    let mut eof = false;
    while !eof || !buf.is_empty() {
        if !eof && buf.len() < opts.size {
            buf.reserve(chunk);
            let start = buf.len();
            buf.resize(start + chunk, 0);
            let n = loop {
                match input.read(&mut buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::Io {
                            what: "reading the input",
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                        })
                    }
                }
            };
            buf.truncate(start + n);
            eof = n == 0;
            if !eof && buf.len() < opts.size {
                continue;
            }
        }
        let take = buf.len().min(opts.size);
        if take == 0 {
            break;
        }
        let msg = buf.split_to(take).freeze();
        totals.messages += 1;
        totals.bytes_in += msg.len() as u64;
        send(engine, conn, msg, totals)?;
        since_flush += 1;
        if since_flush == opts.batch {
            flush(engine, conn, totals)?;
            since_flush = 0;
        }
    }
    Ok(())
}

fn summary(engine: &Engine, t: &Totals) -> String {
    let st = engine.stats();
    let backend = match engine.fallback_reason() {
        Some(r) => format!("{} (fallback: {r})", engine.backend()),
        None => engine.backend().to_string(),
    };
    let us = |q: f64| st.flush_latency_ns.value_at_quantile(q) as f64 / 1000.0;
    let failed = if t.failed > 0 {
        format!(", {} failed ({})", t.failed, t.failures_text())
    } else {
        String::new()
    };
    let tls = t
        .tls
        .as_ref()
        .map_or_else(String::new, |v| format!(" over {v}"));
    format!(
        "volley send: backend {backend}{tls}, {} messages, {} bytes ({} accepted){failed}, {} kernel transitions, flush p50 {:.1} µs p99 {:.1} µs",
        t.messages,
        t.bytes_in,
        t.accepted_bytes,
        st.kernel_transitions,
        us(0.5),
        us(0.99)
    )
}

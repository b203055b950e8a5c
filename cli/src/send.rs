//! `volley send`: stdin (or a file) cut into messages, queued on one socket, flushed per batch.

use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use volley::{Backend, Engine, Error, FlushReport, SocketId, Status};

use crate::addr::{self, Proto};

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
}

/// What was sent, for the summary line and the exit status.
#[derive(Debug, Default)]
struct Totals {
    messages: u64,
    bytes_in: u64,
    accepted_bytes: u64,
    failures: [u64; Status::ALL.len()],
    failed: u64,
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
        Ok((mut engine, id, proto, mut input)) => {
            let mut totals = Totals::default();
            let result = pump(&mut engine, id, &mut *input, opts, &mut totals);
            // Close (flush) even after an error, so a UDP run still reports what it did send.
            let closed = match result {
                Ok(()) => engine.close(id).map(|(r, _fd)| totals.add(&r)),
                Err(e) => Err(e),
            };
            let line = summary(&engine, &totals);
            (verdict(opts, proto, closed, &totals), Some(line))
        }
        Err(e) => (Err(e), None),
    }
}

type Setup = (Engine, SocketId, Proto, Box<dyn Read>);

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
    let id = match ep.proto {
        Proto::Tcp => {
            let stream = connect_tcp(&ep.addrs)?;
            engine
                .register_tcp(stream)
                .map_err(|e| format!("cannot register the socket: {e}"))?
        }
        Proto::Udp => {
            let sock = connect_udp(&ep.addrs)?;
            engine
                .register_udp(sock)
                .map_err(|e| format!("cannot register the socket: {e}"))?
        }
    };
    Ok((engine, id, ep.proto, input))
}

fn verdict(
    opts: &SendOpts,
    proto: Proto,
    closed: Result<(), Error>,
    totals: &Totals,
) -> Result<(), String> {
    match (proto, closed) {
        (_, Err(e)) => Err(format!("send to {} failed: {e}", opts.url)),
        (Proto::Tcp, Ok(())) if totals.accepted_bytes != totals.bytes_in => Err(format!(
            "only {} of {} bytes were accepted by the kernel",
            totals.accepted_bytes, totals.bytes_in
        )),
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

/// Sends with backpressure handling: a full queue is flushed, then the send retried.
fn send(engine: &mut Engine, id: SocketId, msg: Bytes, totals: &mut Totals) -> Result<(), Error> {
    match engine.send(id, msg) {
        Err(e) if e.is_backpressure() => {
            totals.add(&engine.flush(id)?);
            // The refused buffer comes back unsent: send the same one again.
            Ok(engine.send(id, e.into_inner())?)
        }
        r => Ok(r?),
    }
}

fn pump(
    engine: &mut Engine,
    id: SocketId,
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
        send(engine, id, msg, totals)?;
        since_flush += 1;
        if since_flush == opts.batch {
            totals.add(&engine.flush(id)?);
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
    format!(
        "volley send: backend {backend}, {} messages, {} bytes ({} accepted){failed}, {} kernel transitions, flush p50 {:.1} µs p99 {:.1} µs",
        t.messages,
        t.bytes_in,
        t.accepted_bytes,
        st.kernel_transitions,
        us(0.5),
        us(0.99)
    )
}

//! `volley sink`: a receiver that counts what arrives (and optionally stores it).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley::tls::{rustls, TlsStream};
use volley::Engine;

use crate::addr::{self, Proto};
use crate::tls::SinkTlsArgs;

/// Options of `volley sink`.
#[derive(Debug)]
pub struct SinkOpts {
    /// `tcp://BIND[:PORT]` or `udp://BIND[:PORT]` (port 0 or none: any free port).
    pub url: String,
    /// Write what arrives here (TCP: connections one after another; UDP: datagrams back to back).
    pub out: Option<std::path::PathBuf>,
    /// TCP: exit after this many connections. UDP: exit after this many datagrams.
    pub count: Option<u64>,
    /// Exit after this long without traffic. UDP default 2 s; TCP only when given (the wait
    /// for the next connection).
    pub idle_timeout: Option<f64>,
    /// `tls://`: certificate, key, client CA.
    pub tls: SinkTlsArgs,
}

/// A TLS sink's server side: the configuration, and the engine that sends its handshakes.
struct TlsServer {
    config: Arc<rustls::ServerConfig>,
    engine: Engine,
}

/// Runs `volley sink`.
///
/// # Errors
/// A bad address, a bind failure, or an I/O error on the output file.
pub fn run(opts: &SinkOpts) -> Result<(), String> {
    let ep = addr::parse(&opts.url, Some(0))?;
    let mut out = match &opts.out {
        Some(p) => {
            Some(BufWriter::new(File::create(p).map_err(|e| {
                format!("cannot create {}: {e}", p.display())
            })?))
        }
        None => None,
    };
    let idle = match opts.idle_timeout {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(format!(
                "--idle-timeout must be a positive number of seconds, got {s}"
            ))
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let r = match ep.proto {
        Proto::Tcp => tcp(&ep.addrs, opts.count, idle, out.as_mut(), None),
        Proto::Tls => {
            let config = opts.tls.config()?;
            let engine = Engine::builder()
                .build()
                .map_err(|e| format!("cannot start the engine: {e}"))?;
            let mut server = TlsServer { config, engine };
            tcp(&ep.addrs, opts.count, idle, out.as_mut(), Some(&mut server))
        }
        Proto::Udp => udp(
            &ep.addrs,
            opts.count,
            idle.unwrap_or(Duration::from_secs(2)),
            out.as_mut(),
        ),
    };
    if let Some(o) = out.as_mut() {
        o.flush()
            .map_err(|e| format!("cannot write the output file: {e}"))?;
    }
    r
}

fn announce(proto: Proto, local: io::Result<SocketAddr>) -> Result<(), String> {
    let local = local.map_err(|e| format!("cannot read the bound address: {e}"))?;
    volley_bench::say(&format!("listening on {proto}://{local}"))
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn tcp(
    addrs: &[SocketAddr],
    count: Option<u64>,
    idle: Option<Duration>,
    mut out: Option<&mut BufWriter<File>>,
    mut tls: Option<&mut TlsServer>,
) -> Result<(), String> {
    let listener =
        TcpListener::bind(addrs).map_err(|e| format!("cannot bind TCP {addrs:?}: {e}"))?;
    let proto = if tls.is_some() {
        Proto::Tls
    } else {
        Proto::Tcp
    };
    announce(proto, listener.local_addr())?;
    if idle.is_some() {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot set the listener non-blocking: {e}"))?;
    }
    let mut connections = 0u64;
    let mut total = 0u64;
    while count.is_none_or(|c| connections < c) {
        let Some((stream, peer)) = accept(&listener, idle)? else {
            // Reports are best effort: a closed stdout must not stop the sink.
            let _ = volley_bench::say(&format!(
                "idle for {:.1} s: {connections} connections, {total} bytes",
                idle.map_or(0.0, |d| d.as_secs_f64())
            ));
            return Ok(());
        };
        connections += 1;
        let (n, end) = match tls.as_deref_mut() {
            Some(server) => drain_tls(stream, server, out.as_deref_mut())?,
            None => drain(stream, out.as_deref_mut())?,
        };
        total += n;
        let _ = volley_bench::say(&match end {
            None => format!("connection {connections} from {peer}: {n} bytes"),
            Some(e) => format!("connection {connections} from {peer}: {n} bytes (ended: {e})"),
        });
    }
    let _ = volley_bench::say(&format!("done: {connections} connections, {total} bytes"));
    Ok(())
}

/// Accepts one connection; `None` when `idle` passes without one.
fn accept(
    listener: &TcpListener,
    idle: Option<Duration>,
) -> Result<Option<(TcpStream, SocketAddr)>, String> {
    let deadline = idle.map(|d| Instant::now() + d);
    loop {
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false)
                    .map_err(|e| format!("cannot set the connection blocking: {e}"))?;
                return Ok(Some((s, peer)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accept failed: {e}")),
        }
    }
}

/// Runs the server handshake, reads the session until the client's `close_notify` and answers
/// with ours; returns the plaintext byte count and what ended the connection if not that (a
/// refused client certificate, an alert, a close without `close_notify`).
fn drain_tls(
    s: TcpStream,
    server: &mut TlsServer,
    mut out: Option<&mut BufWriter<File>>,
) -> Result<(u64, Option<String>), String> {
    let engine = &mut server.engine;
    let id = engine
        .register_tcp(s)
        .map_err(|e| format!("cannot register the connection: {e}"))?;
    let handshake =
        TlsStream::server(Arc::clone(&server.config)).and_then(|h| h.complete(engine, id));
    let mut tls = match handshake {
        Ok(t) => t,
        Err(e) => {
            let _ = engine.abort(id);
            return Ok((0, Some(format!("TLS handshake failed: {e}"))));
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match tls.read(&mut buf) {
            Ok(0) => {
                let closed = tls.close(engine);
                return Ok((n, closed.err().map(|e| e.to_string())));
            }
            Ok(k) => {
                n += k as u64;
                if let Some(o) = out.as_deref_mut() {
                    o.write_all(&buf[..k])
                        .map_err(|e| format!("cannot write the output file: {e}"))?;
                }
            }
            Err(e) => {
                drop(tls);
                let _ = engine.abort(id);
                return Ok((n, Some(e.to_string())));
            }
        }
    }
}

/// Reads a connection to EOF; returns the byte count and the error that ended it, if any.
fn drain(
    mut s: TcpStream,
    mut out: Option<&mut BufWriter<File>>,
) -> Result<(u64, Option<String>), String> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((n, None)),
            Ok(k) => {
                n += k as u64;
                if let Some(o) = out.as_deref_mut() {
                    o.write_all(&buf[..k])
                        .map_err(|e| format!("cannot write the output file: {e}"))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok((n, Some(e.to_string()))),
        }
    }
}

fn udp(
    addrs: &[SocketAddr],
    count: Option<u64>,
    idle: Duration,
    mut out: Option<&mut BufWriter<File>>,
) -> Result<(), String> {
    let sock = UdpSocket::bind(addrs).map_err(|e| format!("cannot bind UDP {addrs:?}: {e}"))?;
    volley_bench::net::grow_rcvbuf(&sock, 16 << 20);
    announce(Proto::Udp, sock.local_addr())?;
    sock.set_read_timeout(Some(idle))
        .map_err(|e| format!("cannot set the read timeout: {e}"))?;
    let mut buf = vec![0u8; 65536];
    let (mut n, mut total, mut min, mut max) = (0u64, 0u64, u64::MAX, 0u64);
    let why = loop {
        if count.is_some_and(|c| n >= c) {
            break "count reached".to_string();
        }
        match sock.recv(&mut buf) {
            Ok(k) => {
                n += 1;
                let len = k as u64;
                total += len;
                min = min.min(len);
                max = max.max(len);
                if let Some(o) = out.as_deref_mut() {
                    o.write_all(&buf[..k])
                        .map_err(|e| format!("cannot write the output file: {e}"))?;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break format!("idle for {:.1} s", idle.as_secs_f64());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // An ICMP error queued on the socket (e.g. after an earlier reply): not fatal.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(format!("recv failed: {e}")),
        }
    };
    if n == 0 {
        min = 0;
    }
    let _ = volley_bench::say(&format!(
        "{why}: {n} datagrams, {total} bytes, size min {min} max {max}"
    ));
    Ok(())
}

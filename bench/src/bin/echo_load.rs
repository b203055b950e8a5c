//! The load of `scripts/echo-bench`: many concurrent connections to an echo server, each
//! sending small messages of random sizes (at most `--window` of them ahead of the echo; those
//! the window lets go leave in one `write`, as from a pipelining client) and checking every
//! echoed byte; prints the round-trip rate.
//!
//! `echo_load ADDR [--connections N] [--messages N] [--min-size B] [--max-size B] [--window N]`
//!
//! A message is done when its last byte has come back. The rate is messages ÷ the time from the
//! first write to the last echoed byte, over all connections. The bytes of each connection come
//! from its own seeded generator, so the echo is checked against exactly what was sent: in
//! order, none lost, none twice. Exits non-zero (and says where) on any mismatch or early EOF.
//! Runs on one tokio thread, so on a small machine the server keeps the other cores.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
struct Opts {
    addr: SocketAddr,
    connections: usize,
    messages: usize,
    min_size: usize,
    max_size: usize,
    window: usize,
}

fn parse() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Opts {
        addr: ([127, 0, 0, 1], 7000).into(),
        connections: 64,
        messages: 2000,
        min_size: 16,
        max_size: 512,
        window: 16,
    };
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Result<usize, String> {
            let v = args.next().ok_or(format!("{what} needs a value"))?;
            v.parse().map_err(|e| format!("{what} {v}: {e}"))
        };
        match a.as_str() {
            "--connections" => o.connections = num("--connections")?,
            "--messages" => o.messages = num("--messages")?,
            "--min-size" => o.min_size = num("--min-size")?,
            "--max-size" => o.max_size = num("--max-size")?,
            "--window" => o.window = num("--window")?,
            addr => o.addr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?,
        }
    }
    if o.connections == 0 || o.messages == 0 || o.window == 0 {
        return Err("--connections, --messages and --window must be at least 1".into());
    }
    if o.min_size == 0 || o.min_size > o.max_size {
        return Err("sizes: need 1 ≤ --min-size ≤ --max-size".into());
    }
    Ok(o)
}

/// xorshift64*: a connection's sizes and bytes, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One connection's messages: their bytes back to back, and where each ends.
fn messages(o: &Opts, conn: usize) -> (Vec<u8>, Vec<usize>) {
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (conn as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let span = (o.max_size - o.min_size + 1) as u64;
    let mut data = Vec::new();
    let mut ends = Vec::with_capacity(o.messages);
    for _ in 0..o.messages {
        let size = o.min_size + usize::try_from(rng.next() % span).unwrap_or(0);
        data.extend((0..size).map(|_| rng.next().to_le_bytes()[3]));
        ends.push(data.len());
    }
    (data, ends)
}

/// Sends one connection's messages, at most `window` ahead of the echo, and checks the echo.
async fn run_conn(o: Opts, mut stream: TcpStream, conn: usize) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (data, ends) = messages(&o, conn);
    let (mut rx, mut tx) = stream.split();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut done, mut got) = (0usize, 0usize, 0usize);
    while done < o.messages {
        // The messages the window allows go out together, as a pipelining client sends them.
        let room = (o.messages - sent).min(o.window - (sent - done));
        if room > 0 {
            let start = if sent == 0 { 0 } else { ends[sent - 1] };
            sent += room;
            tx.write_all(&data[start..ends[sent - 1]])
                .await
                .map_err(|e| format!("connection {conn}: write: {e}"))?;
        }
        let n = rx
            .read(&mut buf)
            .await
            .map_err(|e| format!("connection {conn}: read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection {conn}: EOF after {got} of {} bytes",
                data.len()
            ));
        }
        let want = data.get(got..got + n).ok_or_else(|| {
            format!(
                "connection {conn}: {} bytes echoed, only {} sent",
                got + n,
                data.len()
            )
        })?;
        if let Some(i) = want.iter().zip(&buf[..n]).position(|(a, b)| a != b) {
            return Err(format!(
                "connection {conn}: echoed byte {} differs (sent {:#04x}, got {:#04x})",
                got + i,
                want[i],
                buf[i]
            ));
        }
        got += n;
        while done < o.messages && ends[done] <= got {
            done += 1;
        }
    }
    tx.shutdown()
        .await
        .map_err(|e| format!("connection {conn}: shutdown: {e}"))?;
    // The server closes after our EOF: nothing more may come.
    let n = rx
        .read(&mut buf)
        .await
        .map_err(|e| format!("connection {conn}: read: {e}"))?;
    if n != 0 {
        return Err(format!("connection {conn}: {n} bytes more than sent"));
    }
    Ok(())
}

/// Connects, retrying for a few seconds while the server starts.
async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(format!("connect {addr}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn run(o: Opts) -> Result<(f64, u64), String> {
    let mut streams = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        streams.push(connect(o.addr).await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::task::spawn_local(run_conn(o, s, i)))
        .collect();
    for t in tasks {
        t.await.map_err(|e| format!("task: {e}"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes: usize = (0..o.connections)
        .map(|c| *messages(&o, c).1.last().unwrap_or(&0))
        .sum();
    Ok((secs, bytes as u64))
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("echo_load: {e}");
            return ExitCode::from(2);
        }
    };
    let r: Result<(f64, u64), Box<dyn Error>> = (|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(tokio::task::LocalSet::new().block_on(&rt, run(o))?)
    })();
    match r {
        Ok((secs, bytes)) => {
            let msgs = (o.connections * o.messages) as f64;
            println!(
                "ok connections={} messages={} bytes={bytes} seconds={secs:.3} msgs_per_sec={:.0} \
                 mb_per_sec={:.1}",
                o.connections,
                o.connections * o.messages,
                msgs / secs,
                bytes as f64 / secs / 1e6
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo_load: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

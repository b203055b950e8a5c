//! `volley tunnel` end to end: two network namespaces joined by a veth pair (underlay
//! 10.210.N.1 ↔ 10.210.N.2), a tunnel in each (overlay 10.211.N.1 ↔ 10.211.N.2 on their TUN
//! devices), and a TCP stream of a few MiB each way through the tunnels, compared byte for byte, on
//! io_uring, on epoll (each also with `--offload`: TSO super-packets from the device cut in user
//! space, runs from the peer coalesced into one write), with `--naive`, under a 4 KiB queue limit
//! (constant backpressure), and over an IPv6 overlay. Then the faults: datagrams from a foreign source and
//! garbage from the peer's own address are counted as drops and never reach the TUN device (its
//! `rx_packets` counter says so); datagrams while the device is down are counted as
//! `drop_tun_down` and delivery resumes once it is up; a peer tunnel killed and restarted
//! mid-transfer does not end this one; a deleted device ends the tunnel with a message and a
//! non-zero exit.
//!
//! Interface under test: `volley tunnel --tun NAME --listen ADDR:PORT --peer ADDR:PORT [--mtu N]
//! [--backend uring|epoll|auto] [--naive]`, which prints `volley tunnel: ready: …` on stdout once
//! the device exists and, on SIGTERM, exits 0 with `volley tunnel: mode=… key=value …` as the
//! last stderr line.
//!
//! Needs root, /dev/net/tun and `ip` (iproute2); otherwise each test prints `SKIP: … (reason)` and
//! passes, unless `VOLLEY_REQUIRE_NETNS=1` (CI) makes that a failure. Namespaces are
//! `vt-a-<pid>-<N>`/`vt-b-<pid>-<N>`, one N per test, removed on drop; addresses exist only inside
//! them. TCP endpoints run on threads that joined a namespace with `setns` (a socket stays in the
//! namespace it was made in).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use volley_tests::{assert_bytes_eq, payload};

/// Longest any wait may take: a guard against hangs, never the thing measured.
const GUARD: Duration = Duration::from_secs(30);
/// The tunnels' UDP port on the underlay.
const PORT: u16 = 51_820;
/// Bytes moved each way per mode.
const FILE_BYTES: usize = 3 << 20;

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn ip(args: &[&str]) -> Result<String, String> {
    let exe = find_tool("ip").ok_or("`ip` (iproute2) is not installed")?;
    let out = Command::new(&exe)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TUN devices need root)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun does not exist (no tun module)".into());
    }
    if find_tool("ip").is_none() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Creates the pair, or prints why not and returns `None` (a failure under
/// `VOLLEY_REQUIRE_NETNS=1`).
fn pair_or_skip(test: &str, n: u8) -> Option<Pair> {
    let why = match unavailable() {
        None => match Pair::create(n) {
            Ok(p) => return Some(p),
            Err(e) => format!("cannot build the namespace pair: {e}"),
        },
        Some(why) => why,
    };
    if std::env::var("VOLLEY_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("{test}: {why}, and VOLLEY_REQUIRE_NETNS=1 forbids skipping");
    }
    println!("SKIP: {test}: {why}");
    None
}

/// Namespaces `a` and `b` joined by veth0 (a, 10.210.n.1) — veth1 (b, 10.210.n.2). Dropping it
/// deletes both, and with them the veth pair and any TUN device inside.
#[derive(Debug)]
struct Pair {
    a: String,
    b: String,
    n: u8,
}

/// One side of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn host(self) -> u8 {
        match self {
            Side::A => 1,
            Side::B => 2,
        }
    }
}

impl Pair {
    fn create(n: u8) -> Result<Pair, String> {
        let pid = std::process::id();
        let pair = Pair {
            a: format!("vt-a-{pid}-{n}"),
            b: format!("vt-b-{pid}-{n}"),
            n,
        };
        let _ = ip(&["netns", "del", &pair.a]);
        let _ = ip(&["netns", "del", &pair.b]);
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        let (cidr_a, cidr_b) = (format!("10.210.{n}.1/24"), format!("10.210.{n}.2/24"));
        #[rustfmt::skip]
        let steps: [&[&str]; 7] = [
            &["-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", b],
            &["-n", a, "addr", "add", &cidr_a, "dev", "veth0"],
            &["-n", b, "addr", "add", &cidr_b, "dev", "veth1"],
            &["-n", a, "link", "set", "veth0", "up"],
            &["-n", b, "link", "set", "veth1", "up"],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
        ];
        for s in &steps {
            ip(s)?;
        }
        Ok(pair)
    }

    fn ns(&self, side: Side) -> &str {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn underlay(&self, side: Side) -> SocketAddr {
        (Ipv4Addr::new(10, 210, self.n, side.host()), PORT).into()
    }

    /// The overlay's IPv6 address of `side` (fd11:N::1 / fd11:N::2), on the device with `nodad`.
    fn overlay6(&self, side: Side) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd11,
            u16::from(self.n),
            0,
            0,
            0,
            0,
            0,
            u16::from(side.host()),
        )
    }

    fn overlay(&self, side: Side) -> Ipv4Addr {
        Ipv4Addr::new(10, 211, self.n, side.host())
    }

    /// Starts `volley tunnel` in `side`'s namespace with `extra` options and waits until it is
    /// ready; `up` then gives its device the overlay address and brings it up.
    fn tunnel(&self, side: Side, extra: &[&str], up: bool) -> Tunnel {
        let listen = self.underlay(side).to_string();
        let peer = self.underlay(side.other()).to_string();
        let mut child = Command::new(find_tool("ip").expect("ip"))
            .args(["netns", "exec", self.ns(side), env!("CARGO_BIN_EXE_volley")])
            .args([
                "tunnel", "--tun", "vt0", "--listen", &listen, "--peer", &peer,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volley tunnel");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        // stderr is collected whole, and its lines are also sent as they come.
        let stderr = child.stderr.take().expect("stderr");
        let (ltx, lines) = mpsc::channel();
        let err_reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = ltx.send(line);
            }
            all
        });
        let first = rx.recv_timeout(GUARD).unwrap_or_default();
        if !first.starts_with("volley tunnel: ready:") {
            let _ = child.kill();
            let status = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!("tunnel in {side:?} did not get ready: stdout {first:?}, exit {status:?}, stderr:\n{err}");
        }
        if up {
            let ns = self.ns(side);
            let cidr = format!("{}/24", self.overlay(side));
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "vt0"]).expect("overlay address");
            let cidr6 = format!("{}/64", self.overlay6(side));
            ip(&["-n", ns, "addr", "add", &cidr6, "dev", "vt0", "nodad"]).expect("overlay v6");
            ip(&["-n", ns, "link", "set", "vt0", "up"]).expect("vt0 up");
        }
        Tunnel {
            child,
            err_reader: Some(err_reader),
            lines,
        }
    }

    /// Runs `f` on a thread inside `side`'s namespace.
    fn in_ns<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.ns(side));
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `ns` is an open namespace file for the call; setns changes only this
            // thread's network namespace.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Moves `len` bytes over TCP from `from`'s overlay address to `to`'s, checks them byte for
    /// byte at the receiver.
    fn move_bytes(&self, from: Side, to: Side, len: usize, seed: u64, port: u16) {
        self.move_bytes_to((self.overlay(to), port).into(), from, to, len, seed);
    }

    /// As `move_bytes`, to `dst` (an overlay address of `to`, IPv4 or IPv6).
    fn move_bytes_to(&self, dst: SocketAddr, from: Side, to: Side, len: usize, seed: u64) {
        let (ltx, lrx) = mpsc::channel();
        let rx = self.in_ns(to, move || {
            let l = TcpListener::bind(dst).expect("bind the receiver");
            ltx.send(()).expect("announce");
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(GUARD)).expect("timeout");
            let mut got = Vec::with_capacity(len);
            s.read_to_end(&mut got).expect("read through the tunnel");
            got
        });
        lrx.recv_timeout(GUARD).expect("receiver listening");
        let tx = self.in_ns(from, move || {
            let mut s = connect_retrying(dst);
            s.set_write_timeout(Some(GUARD)).expect("timeout");
            s.write_all(&payload(seed, len))
                .expect("write through the tunnel");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        });
        tx.join().expect("sender");
        let got = rx.join().expect("receiver");
        assert_bytes_eq(
            &got,
            &payload(seed, len),
            &format!("{len} bytes {from:?} → {to:?} through the tunnel"),
        );
    }

    /// The TUN device's `rx_packets`: packets written into it (by the tunnel).
    fn tun_rx_packets(&self, side: Side) -> u64 {
        let out = ip(&[
            "-n",
            self.ns(side),
            "-s",
            "-o",
            "link",
            "show",
            "dev",
            "vt0",
        ])
        .expect("ip -s link");
        // `-o` output: "... RX: bytes packets errors ... \    <bytes> <packets> ..."
        let after = out.split("RX:").nth(1).expect("RX stats");
        let nums: Vec<u64> = after
            .split(|c: char| c.is_whitespace() || c == '\\')
            .filter_map(|w| w.parse().ok())
            .collect();
        nums[1]
    }

    /// Bytes waiting in the receive queue of the tunnel's UDP socket in `side`.
    fn udp_recv_q(&self, side: Side) -> u64 {
        let exe = find_tool("ss").expect("`ss` (iproute2)");
        let out = Command::new(find_tool("ip").expect("ip"))
            .args(["netns", "exec", self.ns(side)])
            .arg(exe)
            .args(["-u", "-a", "-n", "-H"])
            .output()
            .expect("ss");
        let local = self.underlay(side).to_string();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&local))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn connect_retrying(dst: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + GUARD;
    loop {
        match TcpStream::connect_timeout(&dst, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {dst}: {e}; again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect {dst} through the tunnel: {e}"),
        }
    }
}

/// A running tunnel process.
struct Tunnel {
    child: Child,
    err_reader: Option<JoinHandle<String>>,
    lines: mpsc::Receiver<String>,
}

/// What a tunnel said when it ended.
#[derive(Debug)]
struct Ended {
    status: ExitStatus,
    stderr: String,
    summary: HashMap<String, String>,
}

impl Ended {
    fn get(&self, k: &str) -> u64 {
        self.summary
            .get(k)
            .unwrap_or_else(|| panic!("summary has no {k}:\n{}", self.stderr))
            .parse()
            .unwrap_or_else(|e| panic!("{k} is not a count ({e}):\n{}", self.stderr))
    }

    fn word(&self, k: &str) -> &str {
        self.summary.get(k).map_or("", String::as_str)
    }
}

impl Tunnel {
    /// Waits until a stderr line contains `needle`.
    fn wait_line(&self, needle: &str) {
        let deadline = Instant::now() + GUARD;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("the tunnel never printed {needle:?}");
    }

    /// SIGTERM, then the exit and the summary.
    fn stop(mut self) -> Ended {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child's pid (it has not been waited for, so the pid
        // cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait()
    }

    /// Waits (within the guard) for the exit.
    fn wait(&mut self) -> Ended {
        let deadline = Instant::now() + GUARD;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the tunnel did not exit within {GUARD:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = self
            .err_reader
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let summary = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("volley tunnel: mode="))
            .map(|rest| {
                format!("mode={rest}")
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_else(|| panic!("no summary line in stderr:\n{stderr}"));
        Ended {
            status,
            stderr,
            summary,
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every packet each way accounted for, and nothing dropped but the device's own start-up
/// packets (e.g. IPv6 router solicitations) that may arrive before the peer's device is up.
fn assert_clean(e: &Ended, ctx: &str) {
    assert!(
        e.status.success(),
        "{ctx}: exit {}:\n{}",
        e.status,
        e.stderr
    );
    assert_eq!(e.word("stop"), "SIGTERM", "{ctx}");
    for k in [
        "drop_foreign",
        "drop_garbage",
        "drop_oversize",
        "drop_bad_offload",
        "drop_tun_write",
        "drop_send_error",
        "drop_unsent_at_exit",
    ] {
        assert_eq!(e.get(k), 0, "{ctx}: {k}:\n{}", e.stderr);
    }
    assert_eq!(
        e.get("tx_sent_packets"),
        e.get("tx_read_packets"),
        "{ctx}: every packet read from the TUN device was sent:\n{}",
        e.stderr
    );
    assert_eq!(
        e.get("rx_written_packets") + e.get("drop_tun_down"),
        e.get("rx_recv_packets"),
        "{ctx}: every datagram received was written or counted:\n{}",
        e.stderr
    );
}

fn transfer(test: &str, n: u8, extra: &[&str], mode: &str, backend: &str) {
    let tight = extra.contains(&"--queue-bytes");
    let Some(pair) = pair_or_skip(test, n) else {
        return;
    };
    let a = pair.tunnel(Side::A, extra, true);
    let b = pair.tunnel(Side::B, extra, true);
    pair.move_bytes(Side::A, Side::B, FILE_BYTES, u64::from(n), 5001);
    pair.move_bytes(Side::B, Side::A, FILE_BYTES, u64::from(n) + 100, 5002);
    let (ea, eb) = (a.stop(), b.stop());
    for (e, side) in [(&ea, "a"), (&eb, "b")] {
        let ctx = format!("{test}, tunnel {side}");
        assert_clean(e, &ctx);
        assert_eq!(e.word("mode"), mode, "{ctx}");
        assert_eq!(e.word("backend"), backend, "{ctx}");
        // Both streams crossed this tunnel one way or the other: data and ACKs.
        assert!(
            e.get("tx_sent_bytes") > FILE_BYTES as u64,
            "{ctx}: the data went through it:\n{}",
            e.stderr
        );
        assert!(e.get("rx_written_bytes") > FILE_BYTES as u64, "{ctx}");
    }
    if mode == "volley-offload" {
        // TCP super-packets: far fewer reads than packets (the sender side of the bulk stream).
        let (reads, packets) = (ea.get("tun_reads"), ea.get("tx_read_packets"));
        assert!(
            reads * 2 < packets,
            "{reads} TUN reads for {packets} packets:\n{}",
            ea.stderr
        );
        // Runs of one flow from the peer coalesced: fewer TUN writes than packets written.
        for e in [&ea, &eb] {
            let (writes, packets) = (e.get("tun_writes"), e.get("rx_written_packets"));
            assert!(
                writes < packets,
                "{writes} TUN writes for {packets} packets:\n{}",
                e.stderr
            );
        }
    }
    if mode == "volley" {
        // The engine writes the TUN device (register_packet): no direct writes.
        for e in [&ea, &eb] {
            assert_eq!(e.get("tun_writes"), 0, "{}", e.stderr);
            assert_eq!(
                e.get("tun_engine_writes"),
                e.get("rx_recv_packets"),
                "{}",
                e.stderr
            );
        }
    }
    if tight {
        assert!(
            ea.get("backpressure_waits") > 0,
            "the queue limit was never reached:\n{}",
            ea.stderr
        );
    }
    if mode == "naive" {
        // One sendto per packet, no engine.
        assert_eq!(ea.get("udp_send_calls"), ea.get("tx_read_packets"));
        assert_eq!(ea.get("engine_transitions"), 0);
    } else {
        assert_eq!(ea.get("udp_send_calls"), 0);
    }
}

#[test]
fn transfer_uring() {
    transfer(
        "transfer_uring",
        1,
        &["--backend", "uring"],
        "volley",
        "io_uring",
    );
}

#[test]
fn transfer_epoll() {
    transfer(
        "transfer_epoll",
        2,
        &["--backend", "epoll"],
        "volley",
        "epoll",
    );
}

#[test]
fn transfer_uring_offload() {
    transfer(
        "transfer_uring_offload",
        10,
        &["--backend", "uring", "--offload"],
        "volley-offload",
        "io_uring",
    );
}

#[test]
fn transfer_epoll_offload() {
    transfer(
        "transfer_epoll_offload",
        11,
        &["--backend", "epoll", "--offload"],
        "volley-offload",
        "epoll",
    );
}

/// A queue limit of 4 KiB (three packets): the engine refuses packets for backpressure all the
/// time; they are held in order and nothing is lost or reordered.
#[test]
fn transfer_uring_backpressure() {
    transfer(
        "transfer_uring_backpressure",
        13,
        &["--backend", "uring", "--queue-bytes", "4096"],
        "volley",
        "io_uring",
    );
}

#[test]
fn transfer_naive() {
    transfer("transfer_naive", 3, &["--naive"], "naive", "none");
}

/// TCP over an IPv6 overlay both ways (IPv6 packet checks; with `--offload`, TCPv6 segmentation
/// and coalescing).
fn transfer_v6(test: &str, n: u8, extra: &[&str]) {
    let Some(pair) = pair_or_skip(test, n) else {
        return;
    };
    let a = pair.tunnel(Side::A, extra, true);
    let b = pair.tunnel(Side::B, extra, true);
    let (to_b, to_a) = (pair.overlay6(Side::B), pair.overlay6(Side::A));
    pair.move_bytes_to((to_b, 5011).into(), Side::A, Side::B, FILE_BYTES, 21);
    pair.move_bytes_to((to_a, 5012).into(), Side::B, Side::A, FILE_BYTES, 22);
    for (e, side) in [(a.stop(), "a"), (b.stop(), "b")] {
        let ctx = format!("{test}, tunnel {side}");
        assert_clean(&e, &ctx);
        assert!(e.get("rx_written_bytes") > FILE_BYTES as u64, "{ctx}");
        if extra.contains(&"--offload") {
            // TCPv6 super-packets were read and cut, and runs coalesced on the way in.
            let (reads, packets) = (e.get("tun_reads"), e.get("tx_read_packets"));
            assert!(
                reads * 2 < packets,
                "{ctx}: {reads} reads, {packets} packets"
            );
            let (writes, written) = (e.get("tun_writes"), e.get("rx_written_packets"));
            assert!(
                writes < written,
                "{ctx}: {writes} writes, {written} packets"
            );
        }
    }
}

#[test]
fn transfer_v6_uring() {
    transfer_v6("transfer_v6_uring", 14, &["--backend", "uring"]);
}

#[test]
fn transfer_v6_uring_offload() {
    transfer_v6(
        "transfer_v6_uring_offload",
        15,
        &["--backend", "uring", "--offload"],
    );
}

/// A minimal IPv4/UDP packet from the peer's overlay address to `dst`:`port` (checksums zero:
/// the UDP checksum is optional over IPv4, and the kernel accepts an IP header checksum of
/// 0 only if it is right, so it is computed).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(28 + body.len()).expect("small");
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !u16::try_from(sum).expect("folded");
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    p[20..22].copy_from_slice(&40_000u16.to_be_bytes());
    p[22..24].copy_from_slice(&port.to_be_bytes());
    p[24..26].copy_from_slice(&(total - 20).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// Foreign and garbage datagrams are counted and never reach the device; while the device is
/// down, datagrams are counted as `drop_tun_down`; once it is up they are delivered again.
fn faults(test: &str, n: u8, extra: &[&str]) {
    let Some(pair) = pair_or_skip(test, n) else {
        return;
    };
    let a = pair.tunnel(Side::A, extra, true);
    let (peer_addr, a_addr) = (pair.underlay(Side::B), pair.underlay(Side::A));
    let (src, dst) = (pair.overlay(Side::B), pair.overlay(Side::A));
    // Stand-ins in b: the peer's own address (no tunnel there) and a foreign port.
    let (stx, srx) = mpsc::channel();
    let senders = pair.in_ns(Side::B, move || {
        let peer = UdpSocket::bind(peer_addr).expect("bind as the peer");
        let foreign = UdpSocket::bind((peer_addr.ip(), 40_001)).expect("bind a foreign port");
        stx.send((peer, foreign)).expect("hand over");
    });
    senders.join().expect("sockets");
    let (peer, foreign) = srx.recv().expect("sockets");
    // The receiver behind the tunnel in a, on its overlay address.
    let (rtx, rrx) = mpsc::channel();
    pair.in_ns(Side::A, move || {
        let s = UdpSocket::bind((dst, 6000)).expect("bind the overlay receiver");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        rtx.send(s).expect("hand over");
    })
    .join()
    .expect("receiver");
    let receiver = rrx.recv().expect("receiver");
    let recv_all = |want: usize| -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + GUARD;
        let mut buf = [0u8; 2048];
        while got.len() < want && Instant::now() < deadline {
            if let Ok(k) = receiver.recv(&mut buf) {
                got.push(buf[..k].to_vec());
            }
        }
        got
    };
    let rx0 = pair.tun_rx_packets(Side::A);

    // 1. Foreign source: valid packets, wrong sender.
    for i in 0..5u8 {
        foreign
            .send_to(&ipv4_udp(src, dst, 6000, &[b'f', i]), a_addr)
            .expect("send");
    }
    // 2. Garbage from the peer's address: not IP, bad lengths, truncated.
    let mut short = ipv4_udp(src, dst, 6000, b"short");
    short.truncate(short.len() - 2);
    let mut long = ipv4_udp(src, dst, 6000, b"long");
    long.extend_from_slice(b"xx");
    let garbage: [&[u8]; 6] = [
        b"hello, tunnel",
        &[0u8; 64],
        &[0x45; 10],
        &short,
        &long,
        &[0x60; 39],
    ];
    for g in garbage {
        peer.send_to(g, a_addr).expect("send");
    }
    // 3. Valid packets from the peer: delivered (they also mark the end of the above: the
    //    tunnel handles datagrams in order).
    for i in 0..3u8 {
        peer.send_to(&ipv4_udp(src, dst, 6000, &[b'v', i]), a_addr)
            .expect("send");
    }
    let got = recv_all(3);
    assert_eq!(
        got,
        vec![b"v\0".to_vec(), b"v\x01".to_vec(), b"v\x02".to_vec()],
        "the valid packets from the peer arrive, nothing else"
    );
    assert_eq!(
        pair.tun_rx_packets(Side::A) - rx0,
        3,
        "only the 3 valid packets were written to the TUN device"
    );

    // 4. Device down: counted, then delivery resumes once it is up.
    ip(&["-n", pair.ns(Side::A), "link", "set", "vt0", "down"]).expect("down");
    for i in 0..4u8 {
        peer.send_to(&ipv4_udp(src, dst, 6000, &[b'd', i]), a_addr)
            .expect("send");
    }
    a.wait_line("vt0 is down");
    let deadline = Instant::now() + GUARD;
    while pair.udp_recv_q(Side::A) > 0 {
        assert!(
            Instant::now() < deadline,
            "the tunnel never read the datagrams"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The datagrams are read; give the loop that writes them (microseconds) time to finish.
    std::thread::sleep(Duration::from_millis(100));
    ip(&["-n", pair.ns(Side::A), "link", "set", "vt0", "up"]).expect("up");
    for i in 0..2u8 {
        peer.send_to(&ipv4_udp(src, dst, 6000, &[b'u', i]), a_addr)
            .expect("send");
    }
    let got = recv_all(2);
    assert_eq!(
        got,
        vec![b"u\0".to_vec(), b"u\x01".to_vec()],
        "delivery resumes once the device is up"
    );
    a.wait_line("vt0 is up again");

    let e = a.stop();
    assert!(e.status.success(), "exit {}:\n{}", e.status, e.stderr);
    assert_eq!(e.get("drop_foreign"), 5, "{}", e.stderr);
    assert_eq!(e.get("drop_garbage"), 6, "{}", e.stderr);
    assert_eq!(e.get("drop_tun_down"), 4, "{}", e.stderr);
    assert_eq!(e.get("rx_written_packets"), 5, "{}", e.stderr);
    assert_eq!(e.get("rx_recv_packets"), 5 + 6 + 3 + 4 + 2, "{}", e.stderr);
}

#[test]
fn faults_uring() {
    faults("faults_uring", 4, &["--backend", "uring"]);
}

#[test]
fn faults_epoll() {
    faults("faults_epoll", 5, &["--backend", "epoll"]);
}

#[test]
fn faults_uring_offload() {
    faults(
        "faults_uring_offload",
        12,
        &["--backend", "uring", "--offload"],
    );
}

#[test]
fn faults_naive() {
    faults("faults_naive", 6, &["--naive"]);
}

/// The peer tunnel killed (SIGKILL) and restarted between transfers: this tunnel goes on, and a
/// transfer after the restart is exact.
#[test]
fn peer_restart() {
    let Some(pair) = pair_or_skip("peer_restart", 7) else {
        return;
    };
    let a = pair.tunnel(Side::A, &[], true);
    let mut b = pair.tunnel(Side::B, &[], true);
    // b is killed (SIGKILL): no summary from it.
    pair.move_bytes(Side::A, Side::B, 1 << 20, 7, 5001);
    b.child.kill().expect("kill b");
    b.child.wait().expect("reap b");
    // While b is gone, a keeps sending into the void (the kernel answers with ICMP port
    // unreachable, which a must survive).
    let (dst, a_src) = ((pair.overlay(Side::B), 9), pair.overlay(Side::A));
    pair.in_ns(Side::A, move || {
        let s = UdpSocket::bind((a_src, 0)).expect("bind");
        for _ in 0..50 {
            let _ = s.send_to(&[0u8; 200], dst);
        }
    })
    .join()
    .expect("sends while b is down");
    // The device went with the process (not persistent): b's new tunnel makes it again.
    let b2 = pair.tunnel(Side::B, &[], true);
    pair.move_bytes(Side::A, Side::B, 1 << 20, 8, 5003);
    pair.move_bytes(Side::B, Side::A, 1 << 20, 9, 5004);
    let ea = a.stop();
    assert!(
        ea.status.success(),
        "a survived: exit {}:\n{}",
        ea.status,
        ea.stderr
    );
    assert_eq!(ea.get("drop_send_error"), 0, "{}", ea.stderr);
    assert!(ea.get("tx_sent_packets") >= 50, "{}", ea.stderr);
    let eb = b2.stop();
    assert!(eb.status.success(), "{}", eb.stderr);
}

/// Deleting the device ends the tunnel: a message naming it, a non-zero exit, the summary.
#[test]
fn deleted_device_ends_the_tunnel() {
    let Some(pair) = pair_or_skip("deleted_device_ends_the_tunnel", 8) else {
        return;
    };
    let mut a = pair.tunnel(Side::A, &[], true);
    ip(&["-n", pair.ns(Side::A), "link", "del", "vt0"]).expect("del");
    let e = a.wait();
    assert!(!e.status.success(), "exit {}:\n{}", e.status, e.stderr);
    assert!(
        e.stderr.contains("the TUN device vt0 was deleted"),
        "{}",
        e.stderr
    );
    assert_eq!(e.word("stop"), "error");
}

/// An MTU the underlay cannot carry is refused at start, naming the largest that fits.
#[test]
fn mtu_too_large_for_the_underlay() {
    let Some(pair) = pair_or_skip("mtu_too_large_for_the_underlay", 9) else {
        return;
    };
    let out = Command::new(find_tool("ip").expect("ip"))
        .args([
            "netns",
            "exec",
            pair.ns(Side::A),
            env!("CARGO_BIN_EXE_volley"),
        ])
        .args(["tunnel", "--tun", "vt0", "--mtu", "1473"])
        .args(["--listen", &pair.underlay(Side::A).to_string()])
        .args(["--peer", &pair.underlay(Side::B).to_string()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("too large for the underlay") && err.contains("use --mtu 1472 or less"),
        "{err}"
    );
}

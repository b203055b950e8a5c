//! Shared helpers for the system tests: loopback receivers, engines on both backends, payloads.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use volley::{Backend, Engine};

pub mod tls;

/// Both backends, for tests that must hold on each.
pub const BACKENDS: [Backend; 2] = [Backend::Uring, Backend::Epoll];

/// One test per backend for each named `fn(Backend)`: `per_backend!(a, b)` makes the tests
/// `a::uring`, `a::epoll`, `b::uring`, `b::epoll`, so a failure on one backend never hides the
/// other.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name(volley::Backend::Uring);
            }
            #[test]
            fn epoll() {
                super::$name(volley::Backend::Epoll);
            }
        }
    )*};
}

/// Cuts `data` into consecutive slices (zero-copy) of the given sizes; they must fit.
pub fn cut(data: &bytes::Bytes, sizes: &[usize]) -> Vec<bytes::Bytes> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&n| {
            let b = data.slice(at..at + n);
            at += n;
            b
        })
        .collect()
}

/// An engine on `backend` with the defaults.
pub fn engine(backend: Backend) -> Engine {
    Engine::builder()
        .backend(backend)
        .build()
        .expect("engine builds")
}

/// A TCP listener on loopback whose single connection is read to EOF on a thread; the thread
/// returns every byte received.
#[derive(Debug)]
pub struct TcpSink {
    /// Where to connect.
    pub addr: SocketAddr,
    handle: JoinHandle<Vec<u8>>,
}

impl TcpSink {
    /// Starts a sink that reads as fast as it can.
    pub fn start() -> TcpSink {
        TcpSink::start_with(None, Duration::ZERO)
    }

    /// Starts a sink with an optional `SO_RCVBUF` and a pause after every read (a slow reader).
    pub fn start_with(rcvbuf: Option<usize>, pause: Duration) -> TcpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        if let Some(n) = rcvbuf {
            socket2::SockRef::from(&listener)
                .set_recv_buffer_size(n)
                .expect("SO_RCVBUF");
        }
        let addr = listener.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            out
        });
        TcpSink { addr, handle }
    }

    /// A connected client stream.
    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).expect("connect")
    }

    /// Waits for EOF and returns what arrived.
    pub fn finish(self) -> Vec<u8> {
        self.handle.join().expect("sink thread")
    }
}

/// A UDP receiver that collects datagrams until `count` arrived or `idle` passes with none.
#[derive(Debug)]
pub struct UdpSink {
    /// Where to send.
    pub addr: SocketAddr,
    handle: JoinHandle<Vec<Vec<u8>>>,
}

impl UdpSink {
    /// Binds on `bind` (e.g. "127.0.0.1:0" or "[::1]:0") and collects up to `count` datagrams.
    pub fn start(bind: &str, count: usize, idle: Duration) -> UdpSink {
        let sock = UdpSocket::bind(bind).expect("bind udp");
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(8 << 20)
            .expect("SO_RCVBUF");
        sock.set_read_timeout(Some(idle)).expect("SO_RCVTIMEO");
        let addr = sock.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            while out.len() < count {
                match sock.recv(&mut buf) {
                    Ok(n) => out.push(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            out
        });
        UdpSink { addr, handle }
    }

    /// Waits for the receiver and returns the datagrams in arrival order.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.handle.join().expect("udp sink thread")
    }
}

/// A deterministic random payload of `len` bytes.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Random message sizes in `1..=max`, log-uniform so small and large both occur.
pub fn random_sizes(seed: u64, n: usize, max: usize) -> Vec<usize> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let max_bits = usize::BITS - max.leading_zeros();
    (0..n)
        .map(|_| {
            let bits = rng.gen_range(0..max_bits);
            rng.gen_range(1..=(1usize << bits).min(max))
        })
        .collect()
}

// ---- TCP, fault and soak helpers (tests/tests/{tcp,faults,soak}.rs) ---------------------------

pub mod seccomp;

/// A flush that takes longer than this is a hang: every engine the TCP and fault tests build gets
/// it as `flush_timeout`, as a guard (never as the thing measured).
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// A builder on `backend` with [`HANG_GUARD`] as its flush timeout.
pub fn builder(backend: Backend) -> volley::EngineBuilder {
    Engine::builder().backend(backend).flush_timeout(HANG_GUARD)
}

/// Sets `SO_SNDBUF` (the kernel doubles it and applies its minimum).
pub fn set_sndbuf(s: &TcpStream, bytes: usize) {
    socket2::SockRef::from(s)
        .set_send_buffer_size(bytes)
        .expect("SO_SNDBUF");
}

/// A connected loopback pair: (client, accepted server end).
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("local addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// Asserts that `got` is a prefix of `sent` (a stream that failed delivers a prefix, invariant 2).
pub fn assert_prefix(got: &[u8], sent: &[u8], ctx: &str) {
    assert!(
        got.len() <= sent.len(),
        "{ctx}: received {} bytes, more than the {} sent",
        got.len(),
        sent.len()
    );
    if let Some(i) = got.iter().zip(sent).position(|(a, b)| a != b) {
        panic!(
            "{ctx}: received bytes differ from the sent ones at offset {i} of {}",
            got.len()
        );
    }
}

/// Asserts that `got == sent` without printing megabytes on failure.
pub fn assert_bytes_eq(got: &[u8], sent: &[u8], ctx: &str) {
    if got != sent {
        let at = got.iter().zip(sent).position(|(a, b)| a != b);
        panic!(
            "{ctx}: received {} bytes, sent {}; first difference at {:?}",
            got.len(),
            sent.len(),
            at.unwrap_or(got.len().min(sent.len()))
        );
    }
}

/// A TCP sink whose reader does not start reading until [`Gate::open`]: a peer that stops reading.
#[derive(Debug)]
pub struct Gate(std::sync::mpsc::Sender<()>);

impl Gate {
    /// Lets the reader read (to EOF).
    pub fn open(self) {
        let _ = self.0.send(());
    }
}

impl TcpSink {
    /// Starts a sink that accepts at once but reads nothing until the returned gate opens.
    pub fn start_gated(rcvbuf: Option<usize>) -> (TcpSink, Gate) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        if let Some(n) = rcvbuf {
            socket2::SockRef::from(&listener)
                .set_recv_buffer_size(n)
                .expect("SO_RCVBUF");
        }
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let _ = rx.recv();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        });
        (TcpSink { addr, handle }, Gate(tx))
    }
}

/// A position-addressed pseudo-random byte stream: byte `i` depends only on `(seed, i)`, so a
/// sender can cut it into any messages and a receiver can check it without storing it.
pub fn pattern_fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let word = splitmix64(seed ^ (pos / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        *b = word.to_le_bytes()[(pos % 8) as usize];
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A TCP sink that checks every byte it reads against [`pattern_fill`] as it arrives.
#[derive(Debug)]
pub struct PatternSink {
    /// Where to connect.
    pub addr: SocketAddr,
    handle: JoinHandle<PatternResult>,
}

/// What a [`PatternSink`] saw: bytes read to EOF, and the offset of the first wrong byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternResult {
    /// Bytes received.
    pub bytes: u64,
    /// Offset of the first byte that differed from the pattern, if any.
    pub first_mismatch: Option<u64>,
}

impl PatternSink {
    /// Starts the sink for the pattern of `seed`.
    pub fn start(seed: u64) -> PatternSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 16];
            let mut want = vec![0u8; 1 << 16];
            let mut res = PatternResult {
                bytes: 0,
                first_mismatch: None,
            };
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if res.first_mismatch.is_none() {
                    pattern_fill(seed, res.bytes, &mut want[..n]);
                    if let Some(i) = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
                        res.first_mismatch = Some(res.bytes + i as u64);
                    }
                }
                res.bytes += n as u64;
            }
            res
        });
        PatternSink { addr, handle }
    }

    /// A connected client stream.
    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).expect("connect")
    }

    /// Waits for EOF and returns what the reader saw.
    pub fn finish(self) -> PatternResult {
        self.handle.join().expect("pattern sink thread")
    }
}

/// Set in a re-exec'd child test process (see [`run_child`]).
pub const CHILD_ENV: &str = "VOLLEY_CHILD";

/// Whether this process is a child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Re-runs the test named `test` of the current test binary in a child process, with
/// `VOLLEY_CHILD=1` and `env`, and returns its output. The test checks [`is_child`] to run its
/// child half: something that must not happen in the test harness process itself (a seccomp
/// filter, the default SIGPIPE disposition).
pub fn run_child(test: &str, env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().expect("current test binary");
    std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn the child test")
}

/// Asserts a [`run_child`] child ran its test and passed; on failure shows its output.
pub fn assert_child_passed(out: &std::process::Output, ctx: &str) {
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.signal().is_none(),
        "{ctx}: the child was killed by signal {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.signal()
    );
    assert!(
        out.status.success(),
        "{ctx}: the child failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // An --exact filter that matches nothing also exits 0: make sure the test really ran.
    assert!(
        stdout.contains("1 passed"),
        "{ctx}: the child ran no test\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

// ---- UDP helpers (tests/tests/{udp,udp_netns}.rs) ---------------------------------------------

/// A UDP engine on `backend` with GSO explicitly on or off and [`HANG_GUARD`] as flush timeout.
pub fn udp_engine(backend: Backend, gso: bool) -> Engine {
    builder(backend).gso(gso).build().expect("engine builds")
}

/// Sets `SO_RCVBUF` to `bytes` with `SO_RCVBUFFORCE` (root: past `net.core.rmem_max`), falling back
/// to a plain `SO_RCVBUF` (capped by `rmem_max`) where that is refused.
pub fn force_rcvbuf(sock: &UdpSocket, bytes: usize) {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if try_setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, val).is_err() {
        socket2::SockRef::from(sock)
            .set_recv_buffer_size(bytes)
            .expect("SO_RCVBUF");
    }
}

fn try_setsockopt_int(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("int size");
    // SAFETY: setsockopt on a socket the caller keeps open for the call; `val` lives across it and
    // `len` is its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&val as *const libc::c_int).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A UDP receiver that keeps every datagram it reads: until `count` arrived or `idle` passed with
/// none (`SO_RCVTIMEO`), then for [`DgramSink::LINGER`] more to catch duplicates or extras.
#[derive(Debug)]
pub struct DgramSink {
    /// Where to send.
    pub addr: SocketAddr,
    handle: JoinHandle<Vec<Vec<u8>>>,
}

impl DgramSink {
    /// How long a sink keeps listening after its count is reached.
    pub const LINGER: Duration = Duration::from_millis(30);

    /// Binds on `bind` ("127.0.0.1:0", "[::1]:0") and starts collecting.
    pub fn start(bind: &str, count: usize, idle: Duration) -> DgramSink {
        DgramSink::start_socket(UdpSocket::bind(bind).expect("bind udp"), count, idle)
    }

    /// Collects on an already bound socket (e.g. one made inside a network namespace).
    pub fn start_socket(sock: UdpSocket, count: usize, idle: Duration) -> DgramSink {
        force_rcvbuf(&sock, 16 << 20);
        sock.set_read_timeout(Some(idle)).expect("SO_RCVTIMEO");
        let addr = sock.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            let mut lingering = false;
            loop {
                if !lingering && out.len() >= count {
                    lingering = true;
                    sock.set_read_timeout(Some(DgramSink::LINGER))
                        .expect("SO_RCVTIMEO");
                }
                match sock.recv(&mut buf) {
                    Ok(n) => out.push(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            out
        });
        DgramSink { addr, handle }
    }

    /// Waits for the receiver and returns the datagrams in arrival order.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.handle.join().expect("datagram sink thread")
    }
}

/// A datagram of `len` bytes whose content depends on `tag` (so a receiver can tell them apart).
pub fn dgram(tag: u64, len: usize) -> bytes::Bytes {
    bytes::Bytes::from(payload(
        tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64,
        len,
    ))
}

/// Asserts that `got` holds exactly the datagrams of `sent`, each whole (same size, same bytes), none
/// lost, none extra, none twice, in any order (ops may complete out of order). `ctx` names the case.
pub fn assert_same_datagrams(got: &[Vec<u8>], sent: &[bytes::Bytes], ctx: &str) {
    let mut want: Vec<&[u8]> = sent.iter().map(|b| &b[..]).collect();
    let mut have: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
    want.sort_unstable();
    have.sort_unstable();
    if want == have {
        return;
    }
    let size_hist = |v: &[&[u8]]| {
        let mut m = std::collections::BTreeMap::<usize, usize>::new();
        for d in v {
            *m.entry(d.len()).or_default() += 1;
        }
        m
    };
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < want.len() || j < have.len() {
        match (want.get(i), have.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                missing.push(a.len());
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                extra.push(b.len());
                j += 1;
            }
            (Some(a), None) => {
                missing.push(a.len());
                i += 1;
            }
            (None, None) => break,
        }
    }
    panic!(
        "{ctx}: sent {} datagrams, received {}; missing (sizes) {:?}; unexpected or corrupted (sizes) \
         {:?}\n  sent sizes {:?}\n  received sizes {:?}",
        sent.len(),
        got.len(),
        &missing[..missing.len().min(40)],
        &extra[..extra.len().min(40)],
        size_hist(&want),
        size_hist(&have)
    );
}

/// An address on `bind`'s host where nothing listens now (bound, then closed).
pub fn closed_udp_port(bind: &str) -> SocketAddr {
    let s = UdpSocket::bind(bind).expect("bind udp");
    s.local_addr().expect("local addr")
}

/// A UDP socket bound to the wildcard of `peer`'s family, connected to `peer`.
pub fn udp_connected(peer: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(unspecified(peer)).expect("bind udp");
    s.connect(peer).expect("connect udp");
    s
}

/// The wildcard address of `peer`'s family with port 0 (a sender's bind address).
pub fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// `setsockopt(level, name, int)` on a UDP socket (e.g. `SO_NO_CHECK`, `IP_MTU_DISCOVER`).
pub fn setsockopt_int(sock: &UdpSocket, level: libc::c_int, name: libc::c_int, val: libc::c_int) {
    if let Err(e) = try_setsockopt_int(sock, level, name, val) {
        panic!("setsockopt({level}, {name}, {val}): {e}");
    }
}

/// Makes every GSO send of `sock` fail with `EINVAL` while single datagrams still go: no UDP
/// checksum (`SO_NO_CHECK` for IPv4, `UDP_NO_CHECK6_TX` for IPv6; `udp_send_skb` refuses GSO with
/// `sk_no_check_tx`). A deterministic stand-in for a device or route that cannot segment. An IPv6
/// receiver must then accept zero checksums (`UDP_NO_CHECK6_RX`, see [`accept_no_check6`]).
pub fn refuse_gso(sock: &UdpSocket) {
    match sock.local_addr().expect("local addr") {
        SocketAddr::V4(_) => setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1),
        SocketAddr::V6(_) => setsockopt_int(sock, libc::SOL_UDP, libc::UDP_NO_CHECK6_TX, 1),
    }
}

/// Lets an IPv6 receiver accept datagrams sent with a zero checksum.
pub fn accept_no_check6(sock: &UdpSocket) {
    setsockopt_int(sock, libc::SOL_UDP, libc::UDP_NO_CHECK6_RX, 1);
}

/// Running system tools (iproute2, ethtool, tc) from tests that build network namespaces.
pub mod tools {
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Duration;

    /// `name` on `PATH` or in the usual sbin/bin folders (root's tools are often not on a test's
    /// `PATH`).
    pub fn find_tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// Runs `tool args…`; an error names the command, its status and its stderr.
    ///
    /// # Errors
    /// The tool is missing, cannot start, or exits non-zero.
    pub fn run(tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = find_tool(tool).ok_or_else(|| format!("`{tool}` is not installed"))?;
        let out = Command::new(&exe)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{tool} {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Runs `f` on a thread that joined network namespace `ns` (`/run/netns/NS`, as `ip netns`
    /// makes it): sockets and descriptors it creates belong there.
    ///
    /// # Panics
    /// If the namespace cannot be opened or joined, or `f` panics.
    pub fn within_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let nsf = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we hold open; it changes only this thread's
            // network namespace, and the thread ends after `f`.
            let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// Waits (up to 10 s) until `dev` in namespace `ns` is `state UP` with its qdisc attached.
    ///
    /// # Errors
    /// `ip` is missing, or the device did not come up in time.
    pub fn wait_oper_up(ns: &str, dev: &str) -> Result<(), String> {
        let ip = find_tool("ip").ok_or("`ip` (iproute2) is not installed")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new(&ip)
                .args(["-n", ns, "-o", "link", "show", "dev", dev])
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            let line = String::from_utf8_lossy(&out.stdout);
            // linkwatch sets the operstate just before it swaps the noop qdisc for the real one.
            if line.contains("state UP") && !line.contains("qdisc noop") {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{dev} in {ns} did not come up: {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A buffer pool whose release overwrites what it released (`SCRIBBLE`): a buffer the engine
/// released while the kernel could still read it shows up at the peer as `SCRIBBLE` bytes
/// (`tests/ownership.rs`, `tests/zerocopy.rs`).
pub mod scribble {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;

    /// What a released buffer is overwritten with.
    pub const SCRIBBLE: u8 = 0xA5;

    /// A region the test owns; the engine gets slices of it.
    #[derive(Debug)]
    pub struct Pool {
        ptr: *mut u8,
        /// The region's length.
        pub len: usize,
        /// Keeps the allocation; never touched through the `Vec` after construction.
        _mem: Vec<u8>,
        /// Buffers released so far.
        pub released: AtomicUsize,
    }

    // SAFETY: the pool is a plain byte region; slices are disjoint and each is written only by its
    // owner's `Drop` (once no `Bytes` refers to it) or by the control test on purpose.
    unsafe impl Send for Pool {}
    // SAFETY: as above.
    unsafe impl Sync for Pool {}

    impl Pool {
        pub fn new(data: &[u8]) -> Arc<Pool> {
            let mut mem = data.to_vec();
            let ptr = mem.as_mut_ptr();
            Arc::new(Pool {
                ptr,
                len: mem.len(),
                _mem: mem,
                released: AtomicUsize::new(0),
            })
        }

        /// `len` bytes at `off` as an engine buffer whose release scribbles on them.
        pub fn take(self: &Arc<Pool>, off: usize, len: usize) -> Bytes {
            assert!(off + len <= self.len);
            Bytes::from_owner(Slot {
                pool: Arc::clone(self),
                off,
                len,
            })
        }

        /// Overwrites `len` bytes at `off` (what a release does; the control calls it early).
        pub fn scribble(&self, off: usize, len: usize) {
            assert!(off + len <= self.len);
            // SAFETY: in bounds of the live allocation; volatile so it is not elided. Nothing in
            // Rust reads this range meanwhile (its Bytes is gone, or the control owns the race).
            unsafe {
                for i in 0..len {
                    std::ptr::write_volatile(self.ptr.add(off + i), SCRIBBLE);
                }
            }
        }
    }

    #[derive(Debug)]
    struct Slot {
        pool: Arc<Pool>,
        off: usize,
        len: usize,
    }

    impl AsRef<[u8]> for Slot {
        fn as_ref(&self) -> &[u8] {
            // SAFETY: in bounds; written only by this slot's own Drop (or the control, on purpose).
            unsafe { std::slice::from_raw_parts(self.pool.ptr.add(self.off), self.len) }
        }
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            self.pool.scribble(self.off, self.len);
            self.pool.released.fetch_add(1, Ordering::SeqCst);
        }
    }
}

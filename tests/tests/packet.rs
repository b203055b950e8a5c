//! Packet descriptors (`Engine::register_packet`) on a real TUN device, on both backends.
//!
//! Each test makes its own network namespace (`vl-tun-<pid>-<n>`), creates a TUN device there
//! (`/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`, opened by a thread that joined the
//! namespace), gives it 10.77.0.1/24, brings it up, and binds a UDP socket on 10.77.0.1. The
//! engine writes hand-built IPv4/UDP packets (10.77.0.2 → 10.77.0.1, a correct header checksum,
//! UDP checksum 0) into the device: the kernel receives each as if it came in on the
//! interface and delivers its payload to the socket, synchronously within the `write`.
//!
//! What the kernel (6.18) answers, and what these tests pin down:
//! - interface down: every write fails with `EIO` (`Status::InputOutput`); after
//!   `ip link set up` the same descriptor takes packets again;
//! - a packet whose version nibble is neither 4 nor 6, or an empty one: `EINVAL` (TUN with
//!   `IFF_NO_PI` reads the protocol from that nibble), the packet fails alone;
//! - a well-formed-looking packet the IP layer rejects (a bad header checksum) is *accepted*
//!   by the write (its full length) and dropped silently by the stack: the engine counts it as
//!   sent — a TUN write reports the device's verdict, not the stack's;
//! - the device deleted (`ip link del`) while the descriptor is open: every later write fails
//!   with `EBADFD` (`Status::DeviceGone`), which poisons the descriptor.
//!
//! Needs root, `/dev/net/tun` and `ip` (iproute2); where one is missing the test prints a
//! `SKIP:` line with the reason and passes, unless `VOLLEY_REQUIRE_NETNS=1` makes that a failure.

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use volley::{Backend, BackendKind, Bytes, Engine, Error, FlushReport, SocketId, Status};
use volley_tests::tools::{find_tool, within_netns};
use volley_tests::*;

const IDLE: Duration = Duration::from_millis(1500);
const DEV: &str = "vltun0";
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 5000;

/// `TUNSETIFF` = `_IOW('T', 202, int)` (include/uapi/linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFF_TUN`, `IFF_NO_PI` (include/uapi/linux/if_tun.h): an IP-level device, no packet
/// information header before each packet.
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (40 bytes in all).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ip(args: &[&str]) -> Result<(), String> {
    volley_tests::tools::run("ip", args)
}

/// A namespace with a TUN device `vltun0` (10.77.0.1/24, up) and a UDP socket bound on
/// 10.77.0.1:5000 in it. Dropping it deletes the namespace (and the device with it, once the
/// descriptor is closed).
struct Tun {
    ns: String,
    tun: Option<OwnedFd>,
    rx: Option<UdpSocket>,
}

impl Tun {
    /// Runs `f` on a thread that joined the namespace (descriptors it makes belong there).
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        within_netns(&self.ns, f)
    }

    fn create() -> Result<Tun, String> {
        // Tests run in parallel in one process: each namespace gets its own number.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if find_tool("ip").is_none() {
            return Err("`ip` (iproute2) is not installed".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (a TUN device and a namespace need CAP_NET_ADMIN)".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing (no TUN driver)".into());
        }
        let ns = format!("vl-tun-{}-{n}", std::process::id());
        let _ = ip(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns])?;
        let mut t = Tun {
            ns,
            tun: None,
            rx: None,
        };
        let fd = t.within(|| -> Result<OwnedFd, String> {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .map_err(|e| format!("open /dev/net/tun: {e}"))?;
            let mut req = IfReq {
                name: [0; 16],
                flags: IFF_TUN | IFF_NO_PI,
                _pad: [0; 22],
            };
            req.name[..DEV.len()].copy_from_slice(DEV.as_bytes());
            // SAFETY: TUNSETIFF reads (and writes back the name into) a live `struct ifreq`.
            let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
            if rc < 0 {
                return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
            }
            Ok(OwnedFd::from(f))
        })?;
        t.tun = Some(fd);
        let ns = t.ns.clone();
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", "10.77.0.1/24", "dev", DEV])?;
        ip(&["-n", &ns, "link", "set", DEV, "up"])?;
        let rx = t.within(|| UdpSocket::bind((LOCAL, PORT)).map_err(|e| format!("bind: {e}")))?;
        t.rx = Some(rx);
        Ok(t)
    }

    fn link(&self, what: &[&str]) {
        let mut args = vec!["-n", self.ns.as_str(), "link"];
        args.extend_from_slice(what);
        ip(&args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Registers the TUN descriptor and starts a receiver for `count` datagrams.
    fn start(&mut self, e: &mut Engine, count: usize) -> (SocketId, DgramSink) {
        let id = e
            .register_packet(self.tun.take().expect("the TUN descriptor"))
            .expect("register_packet");
        let sink = DgramSink::start_socket(self.rx.take().expect("the socket"), count, IDLE);
        (id, sink)
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        drop(self.tun.take());
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!(
                "warning: could not remove network namespace {}: {e}",
                self.ns
            );
        }
    }
}

/// The namespace and device, or `None` after a `SKIP:` line (a panic with
/// `VOLLEY_REQUIRE_NETNS=1`).
fn tun_or_skip(test: &str) -> Option<Tun> {
    match Tun::create() {
        Ok(t) => Some(t),
        Err(reason) => {
            if std::env::var("VOLLEY_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                panic!("{test}: a TUN device in a namespace is required (VOLLEY_REQUIRE_NETNS=1): {reason}");
            }
            eprintln!("SKIP: {test}: {reason}");
            None
        }
    }
}

/// The IPv4 header checksum (RFC 791: one's complement of the one's complement sum).
fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded into 16 bits")
}

/// An IPv4/UDP packet 10.77.0.2:4000 → 10.77.0.1:5000 carrying `payload`: header checksum
/// correct, UDP checksum 0 (none, allowed over IPv4).
fn udp_packet(payload: &[u8], id: u16) -> Vec<u8> {
    let total = u16::try_from(20 + 8 + payload.len()).expect("fits one packet");
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum below
    p.extend_from_slice(&REMOTE.octets());
    p.extend_from_slice(&LOCAL.octets());
    let sum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp_len = u16::try_from(8 + payload.len()).expect("fits");
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&PORT.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// One flush report: (writes, bytes, failed, failures by status, first error's errno).
type ReportCounts = (u64, u64, u64, Vec<(Status, u64)>, Option<i32>);

/// What a scenario ended with, compared between backends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// Each report's counts.
    reports: Vec<ReportCounts>,
    /// Errors raised (flush or send), by status and errno.
    raised: Vec<(Option<Status>, Option<i32>)>,
    /// Payloads the UDP socket received, in order.
    received: Vec<Vec<u8>>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            reports: Vec::new(),
            raised: Vec::new(),
            received: Vec::new(),
        }
    }

    fn report(&mut self, r: &FlushReport) {
        self.reports.push((
            r.writes,
            r.bytes,
            r.failed,
            r.failures_by_status().collect(),
            r.first_error.as_ref().and_then(Error::raw_os_error),
        ));
    }

    fn raised(&mut self, e: &Error) {
        self.raised.push((e.status(), e.raw_os_error()));
    }
}

fn engine_on(b: Backend) -> Engine {
    builder(b).build().expect("engine")
}

/// 2000 packets of random sizes in random flush groups reach the UDP socket whole, once, in
/// order, and every flush report counts its group.
fn tun_delivers_every_packet_in_order(b: Backend) -> Option<Outcome> {
    let mut t = tun_or_skip("tun_delivers_every_packet_in_order")?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7075);
    let n: u16 = 2000;
    let payloads: Vec<Bytes> = (0..n)
        .map(|i| dgram(u64::from(i), rng.gen_range(0..=1400)))
        .collect();
    let mut e = engine_on(b);
    let (id, sink) = t.start(&mut e, usize::from(n));
    let mut out = Outcome::new();
    let mut i = 0;
    let mut flushes = 0u64;
    while i < payloads.len() {
        let group = rng.gen_range(1..=100).min(payloads.len() - i);
        let mut bytes = 0;
        for (k, p) in (0u16..).zip(&payloads[i..i + group]) {
            let ident = u16::try_from(i).expect("fewer than 65536 packets") + k;
            let pkt = Bytes::from(udp_packet(p, ident));
            bytes += pkt.len() as u64;
            e.send(id, pkt).expect("queued");
        }
        let r = e.flush(id).expect("flush");
        assert_eq!(
            (r.writes, r.bytes, r.failed),
            (group as u64, bytes, 0),
            "{b:?}: flush of {group} packets: {:?}",
            r.first_error
        );
        out.report(&r);
        flushes += 1;
        i += group;
    }
    out.received = sink.finish();
    assert_eq!(
        out.received.len(),
        payloads.len(),
        "{b:?}: packets received"
    );
    for (k, (got, want)) in out.received.iter().zip(&payloads).enumerate() {
        assert!(
            got[..] == want[..],
            "{b:?}: datagram {k} is not packet {k} (a packet lost, merged, split or reordered)"
        );
    }
    let s = e.stats();
    let n = u64::from(n);
    assert_eq!((s.writes_sent, s.writes_failed, s.sqes), (n, 0, n));
    eprintln!(
        "{b:?}: {n} packets in {flushes} flushes, {} kernel transitions",
        s.kernel_transitions
    );
    match e.backend() {
        // Each flush's packets in one io_uring_enter (a lone packet: one write(2)).
        BackendKind::Uring => assert!(
            s.kernel_transitions <= 3 * flushes,
            "{b:?}: {} transitions for {flushes} flushes",
            s.kernel_transitions
        ),
        // One write(2) per packet.
        _ => assert_eq!(s.kernel_transitions, n),
    }
    Some(out)
}

/// While the interface is down every packet fails with EIO, counted, and the descriptor stays
/// usable: after `ip link set up` the next packets arrive (and only those).
fn tun_down_fails_packets_with_eio(b: Backend) -> Option<Outcome> {
    let mut t = tun_or_skip("tun_down_fails_packets_with_eio")?;
    let mut e = engine_on(b);
    let (id, sink) = t.start(&mut e, 4);
    let mut out = Outcome::new();
    t.link(&["set", DEV, "down"]);
    for k in 0..5u16 {
        e.send(id, Bytes::from(udp_packet(b"down", k))).unwrap();
    }
    let r = e.flush(id).expect("failed packets are counted, not raised");
    assert_eq!((r.writes, r.failed), (0, 5), "{b:?}");
    assert_eq!(
        r.failed_with(Status::InputOutput),
        5,
        "{b:?}: {:?}",
        r.first_error
    );
    let err = r.first_error.clone().expect("EIO");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{b:?}: {err}");
    out.report(&r);
    t.link(&["set", DEV, "up"]);
    let want: Vec<Vec<u8>> = (0..4u16).map(|k| format!("up {k}").into_bytes()).collect();
    for (k, p) in (10u16..).zip(&want) {
        e.send(id, Bytes::from(udp_packet(p, k))).unwrap();
    }
    let r = e.flush(id).expect("flush after up");
    assert_eq!((r.writes, r.failed), (4, 0), "{b:?}: {:?}", r.first_error);
    out.report(&r);
    out.received = sink.finish();
    assert_eq!(
        out.received, want,
        "{b:?}: only the packets sent while up arrive"
    );
    assert_eq!(e.stats().failures[Status::InputOutput.index()], 5);
    Some(out)
}

/// A packet the device refuses (a version nibble that is neither 4 nor 6, an empty one) fails
/// alone with EINVAL; one the IP layer drops (a bad header checksum) is taken whole by the
/// device and counted as sent; the packets around them arrive in order.
fn malformed_packets_fail_alone(b: Backend) -> Option<Outcome> {
    let mut t = tun_or_skip("malformed_packets_fail_alone")?;
    let mut e = engine_on(b);
    let (id, sink) = t.start(&mut e, 4);
    let good: Vec<Vec<u8>> = (0..4).map(|k| format!("good {k}").into_bytes()).collect();
    let mut bad_version = udp_packet(b"bad version", 100);
    bad_version[0] = 0x55;
    let mut bad_checksum = udp_packet(b"bad checksum", 101);
    bad_checksum[10] ^= 0xff;
    let packets = [
        udp_packet(&good[0], 1),
        bad_version,
        udp_packet(&good[1], 2),
        Vec::new(),
        udp_packet(&good[2], 3),
        bad_checksum.clone(),
        udp_packet(&good[3], 4),
    ];
    for p in &packets {
        e.send(id, Bytes::from(p.clone())).unwrap();
    }
    let r = e.flush(id).expect("flush");
    let mut out = Outcome::new();
    out.report(&r);
    assert_eq!((r.writes, r.failed), (5, 2), "{b:?}: {:?}", r.first_error);
    assert_eq!(r.failed_with(Status::InvalidInput), 2, "{b:?}");
    assert_eq!(
        r.first_error.as_ref().and_then(Error::raw_os_error),
        Some(libc::EINVAL)
    );
    let sent: usize = [0, 2, 4, 5, 6].iter().map(|&k| packets[k].len()).sum();
    assert_eq!(
        r.bytes, sent as u64,
        "{b:?}: the bad checksum one counts as written"
    );
    out.received = sink.finish();
    assert_eq!(
        out.received, good,
        "{b:?}: the good packets, in order, and nothing else"
    );
    e.send(id, Bytes::from(udp_packet(b"after", 9))).unwrap();
    assert_eq!(e.flush(id).expect("still usable").writes, 1);
    Some(out)
}

/// Deleting the device while the engine holds its descriptor: every write fails with EBADFD,
/// which poisons the descriptor — flushes raise it, later sends are refused with it (the buffer
/// handed back), `flush_all` lists it, `close` raises it and still removes the descriptor.
fn deleted_device_poisons_the_descriptor(b: Backend) -> Option<Outcome> {
    let mut t = tun_or_skip("deleted_device_poisons_the_descriptor")?;
    let mut e = engine_on(b);
    let (id, sink) = t.start(&mut e, 2);
    let mut out = Outcome::new();
    for k in 0..2u16 {
        e.send(id, Bytes::from(udp_packet(b"before", k))).unwrap();
    }
    out.report(&e.flush(id).expect("flush before"));
    t.link(&["del", DEV]);
    for k in 0..3u16 {
        e.send(id, Bytes::from(udp_packet(b"after", k))).unwrap();
    }
    let err = e.flush(id).expect_err("a deleted device is raised");
    out.raised(&err);
    assert_eq!(
        (err.status(), err.raw_os_error()),
        (Some(Status::DeviceGone), Some(libc::EBADFD)),
        "{b:?}: {err}"
    );
    assert_eq!(e.stats().failures[Status::DeviceGone.index()], 3, "{b:?}");
    let pkt = Bytes::from(udp_packet(b"late", 7));
    let refused = e.send(id, pkt.clone()).expect_err("poisoned");
    out.raised(refused.error());
    assert_eq!(refused.error().status(), Some(Status::DeviceGone));
    assert_eq!(refused.into_inner(), pkt, "the refused buffer comes back");
    let all = e.flush_all().expect("flush_all");
    assert_eq!(
        all.errors().len(),
        1,
        "{b:?}: flush_all lists the poisoned descriptor"
    );
    let err = e.close(id).expect_err("close raises it");
    out.raised(&err);
    assert!(
        matches!(e.send(id, pkt), Err(ref r) if matches!(r.error(), Error::UnknownSocket(_))),
        "{b:?}: removed by close all the same"
    );
    out.received = sink.finish();
    assert_eq!(out.received, vec![b"before".to_vec(); 2], "{b:?}");
    Some(out)
}

fn delivers(b: Backend) {
    tun_delivers_every_packet_in_order(b);
}

fn down(b: Backend) {
    tun_down_fails_packets_with_eio(b);
}

fn malformed(b: Backend) {
    malformed_packets_fail_alone(b);
}

fn deleted(b: Backend) {
    deleted_device_poisons_the_descriptor(b);
}

per_backend!(delivers, down, malformed, deleted);

/// Every scenario ends exactly the same on io_uring and epoll: the same reports, the same
/// errors, the same packets received in the same order.
#[test]
fn backends_agree() {
    type Scenario = fn(Backend) -> Option<Outcome>;
    let scenarios: [(&str, Scenario); 4] = [
        ("delivers", tun_delivers_every_packet_in_order),
        ("down", tun_down_fails_packets_with_eio),
        ("malformed", malformed_packets_fail_alone),
        ("deleted", deleted_device_poisons_the_descriptor),
    ];
    for (name, f) in scenarios {
        let Some(uring) = f(Backend::Uring) else {
            return;
        };
        let epoll = f(Backend::Epoll).expect("the namespace worked for io_uring");
        assert!(
            uring == epoll,
            "{name}: io_uring and epoll differ:\n{uring:?}\n{epoll:?}"
        );
    }
}

/// A pipe in packet mode (`O_DIRECT`, no root needed): one `write` is one packet, one `read`
/// returns one. Its read end, read on a thread once `go` says so: every packet read, in
/// order, until EOF.
fn packet_pipe() -> (
    OwnedFd,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Vec<Vec<u8>>>,
) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the live array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_DIRECT | libc::O_CLOEXEC) };
    assert_eq!(
        rc,
        0,
        "pipe2(O_DIRECT): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        wait.recv().expect("go");
        let mut f = File::from(rd);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => return out,
                Ok(n) => out.push(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    (wr, go, reader)
}

/// `n` packets of random sizes (1..=4096, `PIPE_BUF`) go into a packet-mode pipe nobody
/// reads yet (it holds 16: the rest wait for room), in two submissions, then the reader
/// starts: every packet arrives whole, once, in order, and the reports count them. On
/// io_uring the waiting writes are one linked chain per descriptor (unlinked, the parked
/// writes are retried in another order), and the second submission's wait for the first's.
/// `ring_entries`: the io_uring SQ size, if not the default.
fn pipe_packets_in_order_through_backpressure(b: Backend, ring_entries: Option<u32>) {
    let ctx = format!("{b:?}, ring_entries {ring_entries:?}");
    let (wr, go, reader) = packet_pipe();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x9199);
    let n: u64 = 600;
    let sent: Vec<Bytes> = (0..n).map(|i| dgram(i, rng.gen_range(1..=4096))).collect();
    let mut e = match ring_entries {
        Some(r) => builder(b).ring_entries(r).build().expect("engine"),
        None => engine_on(b),
    };
    let id = e.register_packet(wr).expect("register_packet");
    for half in [&sent[..300], &sent[300..]] {
        for p in half {
            e.send(id, p.clone()).unwrap();
        }
        e.submit().unwrap();
    }
    go.send(()).unwrap();
    let r = e.flush(id).expect("flush");
    assert_eq!((r.writes, r.failed), (n, 0), "{ctx}: reports");
    let (_, wr) = e.close(id).expect("close");
    drop(wr);
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), sent.len(), "{ctx}: packets read (one per read)");
    for (k, (g, w)) in got.iter().zip(&sent).enumerate() {
        assert!(
            g[..] == w[..],
            "{ctx}: read {k} is not packet {k} (merged, split or reordered)"
        );
    }
}

/// `abort` and drop with packets waiting for room in a pipe nobody reads: they end (cancelled,
/// counted), promptly — on io_uring each op of the linked chain is cancelled once it starts —
/// and the reader then gets exactly the packets reported sent, in order.
fn pipe_abort_and_drop_with_packets_waiting(b: Backend) {
    let sent: Vec<Bytes> = (0..100).map(|i| dgram(i, 3000)).collect();
    for drop_engine in [false, true] {
        let ctx = format!("{b:?} {}", if drop_engine { "drop" } else { "abort" });
        let (wr, go, reader) = packet_pipe();
        let mut e = engine_on(b);
        let id = e.register_packet(wr).expect("register_packet");
        for p in &sent {
            e.send(id, p.clone()).unwrap();
        }
        e.submit().unwrap();
        let start = std::time::Instant::now();
        let written = if drop_engine {
            drop(e);
            None
        } else {
            e.abort(id).expect("abort");
            let s = e.stats();
            assert_eq!(
                s.writes_sent + s.failures[Status::Cancelled.index()],
                100,
                "{ctx}: every packet sent or cancelled"
            );
            assert_eq!(
                s.writes_failed,
                s.failures[Status::Cancelled.index()],
                "{ctx}"
            );
            assert_eq!(e.pending_writes(), 0, "{ctx}");
            Some(s.writes_sent)
        };
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{ctx}: took {:?} (a cancel that never reached a linked op waits out the drain)",
            start.elapsed()
        );
        go.send(()).unwrap();
        let got = reader.join().expect("reader");
        assert!(
            !got.is_empty() && got.len() < 100,
            "{ctx}: {} read",
            got.len()
        );
        if let Some(w) = written {
            assert_eq!(got.len() as u64, w, "{ctx}: read = reported sent");
        }
        for (k, g) in got.iter().enumerate() {
            assert!(g[..] == sent[k][..], "{ctx}: read {k} is not packet {k}");
        }
    }
}

fn pipe(b: Backend) {
    pipe_packets_in_order_through_backpressure(b, None);
}

/// The same with a 4-entry SQ on io_uring: a chain longer than the SQ goes in parts, each
/// after the one before ended (a link never spans two submissions).
fn pipe_tiny_ring(b: Backend) {
    pipe_packets_in_order_through_backpressure(b, Some(4));
}

per_backend!(
    pipe,
    pipe_tiny_ring,
    pipe_abort_and_drop_with_packets_waiting
);

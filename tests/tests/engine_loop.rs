//! The engine as a whole, on real loopback sockets, one `#[test]` per backend (DESIGN.md
//! invariants 4 and 6, FAILURES.md items 29, 31–33): a stalled peer never delays a healthy
//! socket's barrier (one stalled neighbour, then thousands), the engine driven from a `poll(2)`
//! loop through its descriptor without spinning, a differential trace that must give identical
//! flush results on io_uring and epoll, `flush_all` with a poisoned stream, the refused buffer
//! handed back, the flush timeout at its extremes, and `Engine: Send`.
//!
//! Tests that send UDP datagrams hold [`udp_serial`]: a port closed by one test can be handed to
//! another test's receiver by the kernel's ephemeral allocator.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use volley::{Backend, Engine, Error, FlushAllReport, FlushReport, Limit, SocketId, Status};
use volley_tests::*;

per_backend!(
    stalled_neighbour_no_timeout,
    stalled_neighbour_timeout_5s,
    many_stalled_peers,
    poll_loop_slow_reader,
    flush_all_poisoned_stream_and_udp,
    refused_stream_buffer_comes_back,
    refused_datagram_comes_back,
    flush_timeout_max_and_zero,
    engine_is_send,
);

/// Serialises the tests of this file that send UDP datagrams (see the module doc).
fn udp_serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `len` random bytes (fast even in a debug build: one `fill_bytes`).
fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

/// Sizes in `1..=max` (log-uniform) that sum to exactly `total`.
fn sizes_summing_to(seed: u64, total: usize, max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = total;
    let mut k = 0;
    while left > 0 {
        let n = random_sizes(seed ^ k, 1, max)[0].min(left);
        out.push(n);
        left -= n;
        k += 1;
    }
    out
}

/// `poll(2)` for `POLLIN` on `fd` for at most `timeout` (rounded up to whole milliseconds, so a
/// short timer never turns into a busy `poll(0)`); whether it is readable.
fn poll_in(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ms = i32::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
    poll_raw(fd.as_raw_fd(), libc::POLLIN, ms) & libc::POLLIN != 0
}

/// `poll(2)` on one descriptor, retried on `EINTR`; returns `revents`.
fn poll_raw(fd: RawFd, events: libc::c_short, ms: i32) -> libc::c_short {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid `pollfd`, alive across the call; the count (1) matches it.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return if rc == 0 { 0 } else { pfd.revents };
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
    }
}

/// A comparable form of the expected error, for `assert_eq!`.
fn socket_error(e: &Error) -> Option<(Status, i32, SocketId, Option<SocketAddr>)> {
    match e {
        Error::Socket {
            status,
            errno,
            socket,
            peer,
        } => Some((*status, *errno, *socket, *peer)),
        _ => None,
    }
}

/// A connected TCP stream whose peer has already reset it: the server end was accepted, set to
/// `SO_LINGER` 0 and closed (an RST), and the client has seen the RST (`POLLERR`), so the first
/// send on it fails with `ECONNRESET`, deterministically. Returns the stream and its peer.
fn reset_stream() -> (TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = listener.local_addr().expect("local addr");
    let client = TcpStream::connect(peer).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(server);
    // Wait (not sleep) for the RST: it sets the client's pending error, which poll reports.
    let revents = poll_raw(client.as_raw_fd(), libc::POLLIN, 5000);
    assert!(
        revents & (libc::POLLERR | libc::POLLHUP) != 0,
        "the client never saw the reset (revents {revents:#x})"
    );
    (client, peer)
}

/// A TCP peer that reads `chunk` bytes at a time with `pause` after each read (a slow reader,
/// the pause models its slowness) and compares every byte with `expect` as it arrives.
#[derive(Debug)]
struct SlowCheckingSink {
    addr: SocketAddr,
    handle: JoinHandle<PatternResult>,
}

impl SlowCheckingSink {
    fn start(expect: Bytes, rcvbuf: usize, chunk: usize, pause: Duration) -> SlowCheckingSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        socket2::SockRef::from(&listener)
            .set_recv_buffer_size(rcvbuf)
            .expect("SO_RCVBUF");
        let addr = listener.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; chunk];
            let mut res = PatternResult {
                bytes: 0,
                first_mismatch: None,
            };
            let mut at = 0usize;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if res.first_mismatch.is_none() {
                    let want = expect.get(at..at + n).unwrap_or(&[]);
                    if want.len() < n {
                        res.first_mismatch = Some((at + want.len()) as u64);
                    } else if let Some(i) = buf[..n].iter().zip(want).position(|(a, b)| a != b) {
                        res.first_mismatch = Some((at + i) as u64);
                    }
                }
                at += n;
                res.bytes += n as u64;
                std::thread::sleep(pause);
            }
            res
        });
        SlowCheckingSink { addr, handle }
    }

    fn finish(self) -> PatternResult {
        self.handle.join().expect("slow sink thread")
    }
}

// ---- 1. a stalled peer next to a healthy socket ---------------------------------------------

/// The longest a healthy socket's flush may take next to stalled ones (loopback: milliseconds).
const HEALTHY_FLUSH_BOUND: Duration = Duration::from_secs(1);

fn stalled_neighbour_no_timeout(b: Backend) {
    stalled_neighbour(b, None);
}

fn stalled_neighbour_timeout_5s(b: Backend) {
    stalled_neighbour(b, Some(Duration::from_secs(5)));
}

/// Invariant 4 (a barrier on one socket never waits for another): socket B queues 8 MiB to a
/// peer that reads nothing (4 KiB `SO_RCVBUF` and `SO_SNDBUF`), so after `submit` B is stuck
/// with an op in flight (io_uring) or waiting for writability (epoll). Healthy socket A's flush
/// then returns in well under a second with the exact report and never `FlushTimeout`; B's data
/// still all arrives once its peer reads.
fn stalled_neighbour(b: Backend, timeout: Option<Duration>) {
    let ctx = format!("{b:?} flush_timeout {timeout:?}");
    let (stalled, gate) = TcpSink::start_gated(Some(4096));
    let healthy = TcpSink::start();
    let mut builder = Engine::builder().backend(b);
    if let Some(t) = timeout {
        builder = builder.flush_timeout(t);
    }
    let mut e = builder.build().expect("engine");
    let sb = stalled.connect();
    set_sndbuf(&sb, 4096);
    let bid = e.register_tcp(sb).expect("register B");
    let aid = e.register_tcp(healthy.connect()).expect("register A");

    const B_BYTES: usize = 8 << 20;
    let b_data = random_bytes(0xB, B_BYTES);
    let b_writes = cut(&b_data, &[B_BYTES / 64; 64]);
    for w in &b_writes {
        e.send(bid, w.clone()).expect("send B");
    }
    e.submit().expect("submit");
    let b_left = e.queued_bytes(bid).expect("queued B");
    assert!(
        b_left > B_BYTES / 2 && e.stats().bytes_sent > 0,
        "{ctx}: B should be stuck mid-stream after submit (left {b_left}, sent {})",
        e.stats().bytes_sent
    );

    let a_sizes = random_sizes(0xA, 300, 16 * 1024);
    let a_total: usize = a_sizes.iter().sum();
    let a_data = random_bytes(0xA, a_total);
    for w in cut(&a_data, &a_sizes) {
        e.send(aid, w).expect("send A");
    }
    let t0 = Instant::now();
    let r = e
        .flush(aid)
        .unwrap_or_else(|err| panic!("{ctx}: flush(A) next to a stalled B: {err}"));
    let took = t0.elapsed();
    assert!(
        took < HEALTHY_FLUSH_BOUND,
        "{ctx}: flush(A) took {took:?} next to a stalled socket"
    );
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (a_sizes.len() as u64, a_total as u64, 0),
        "{ctx}: A's report {r:?}"
    );
    assert!(r.first_error.is_none(), "{ctx}: {r:?}");
    assert!(
        e.queued_bytes(bid).expect("queued B") > 0,
        "{ctx}: B cannot have finished: its peer reads nothing"
    );
    eprintln!("{ctx}: flush(A) took {took:?} with B stuck ({b_left} bytes left)");

    let (_, fd) = e.close(aid).expect("close A");
    drop(fd);
    assert_bytes_eq(&healthy.finish(), &a_data, &format!("{ctx} A"));

    // B completes once its peer reads: nothing lost, nothing twice.
    gate.open();
    let r = flush_patiently(&mut e, bid, &ctx);
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (64, B_BYTES as u64, 0),
        "{ctx}: B's report {r:?}"
    );
    let (_, fd) = e.close(bid).expect("close B");
    drop(fd);
    assert_bytes_eq(&stalled.finish(), &b_data, &format!("{ctx} B"));
}

/// `flush`, flushed again after a `FlushTimeout` (the barrier stays) for up to a minute: for a
/// flush whose duration is not what a test measures, under an engine with a short timeout.
fn flush_patiently(e: &mut Engine, id: SocketId, ctx: &str) -> FlushReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match e.flush(id) {
            Err(Error::FlushTimeout { .. }) if Instant::now() < deadline => {}
            r => return r.unwrap_or_else(|err| panic!("{ctx}: flush of {id}: {err}")),
        }
    }
}

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard limit (capped by `fs.nr_open`); returns the
/// soft limit now in force.
fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own, alive across the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let want = rl.rlim_max.min(nr_open);
    if rl.rlim_cur < want {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            rl.rlim_cur = want;
        } else {
            eprintln!(
                "note: setrlimit(RLIMIT_NOFILE, {want}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    rl.rlim_cur
}

/// Bytes waiting in a TCP socket's receive queue (`SIOCINQ`).
fn inq_bytes(s: &TcpStream) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) writes one int into `n`, alive across the call; the socket is
    // open for the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "SIOCINQ: {}", std::io::Error::last_os_error());
    n
}

/// Descriptors this process has open now.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Invariant 6 (stalled peers cannot take the in-flight slots healthy sockets need), at scale:
/// 4096 TCP sockets to peers that never read, each with one 256 KiB write stuck in the kernel
/// (an op in flight on io_uring, an EAGAIN waiting for writability on epoll), with the default
/// ring (1024 entries) and default `max_in_flight_ops` (1024): four times more stuck sockets
/// than in-flight slots. A healthy socket's flush still resolves at once, with the exact report.
fn many_stalled_peers(b: Backend) {
    const WANT: u64 = 4096;
    // One at a time: the descriptor budget below is for one such test.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Two descriptors per connection (client and accepted end), plus what is open, plus room
    // for the other tests of this binary running meanwhile.
    let limit = raise_nofile_limit();
    let spare = open_fds() + 512;
    let n = if limit >= 2 * WANT + spare {
        WANT
    } else {
        let n = limit.saturating_sub(spare) / 2;
        eprintln!(
            "note: RLIMIT_NOFILE is {limit} (hard limit), below the {} descriptors {WANT} \
             stalled peers need: running with {n}",
            2 * WANT + spare
        );
        n
    };
    if n < 64 {
        eprintln!("SKIP: {b:?}: RLIMIT_NOFILE {limit} leaves room for only {n} stalled peers");
        return;
    }
    let n = usize::try_from(n).expect("a small count");
    let ctx = format!("{b:?} {n} stalled peers");

    // One listener with a backlog for all of them; a thread accepts and holds every connection
    // without reading. SO_RCVBUF set before listen() is inherited by every accepted socket.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(i32::try_from(n).expect("backlog"))
        .expect("listen");
    let listener: TcpListener = sock.into();
    let addr = listener.local_addr().expect("local addr");
    let acceptor = std::thread::spawn(move || {
        (0..n)
            .map(|_| listener.accept().expect("accept").0)
            .collect::<Vec<TcpStream>>()
    });

    let t_setup = Instant::now();
    let mut e = Engine::builder()
        .backend(b)
        // 4096 × 256 KiB of (shared) queued bytes: above the 256 MiB default.
        .max_queued_bytes(2 << 30)
        // A guard: a healthy flush starved of in-flight slots fails instead of hanging.
        .flush_timeout(Duration::from_secs(5))
        .build()
        .expect("engine");
    let stuck = random_bytes(0x57a11, 256 * 1024);
    for _ in 0..n {
        let c = TcpStream::connect(addr).expect("connect");
        set_sndbuf(&c, 4096);
        let id = e.register_tcp(c).expect("register");
        e.send(id, stuck.clone()).expect("send");
    }
    let held = acceptor.join().expect("acceptor");
    assert_eq!(held.len(), n);
    e.submit().expect("submit");
    assert_eq!(
        e.pending_writes(),
        n as u64,
        "{ctx}: every stalled write should be stuck after submit"
    );
    // Every stalled socket's op was issued (not held back by the in-flight cap): each peer has
    // bytes waiting in its receive queue.
    let unsent = held.iter().filter(|s| inq_bytes(s) == 0).count();
    assert_eq!(
        unsent, 0,
        "{ctx}: peers that received nothing after submit (ops never issued)"
    );
    let setup = t_setup.elapsed();

    let sink = TcpSink::start();
    let hid = e.register_tcp(sink.connect()).expect("register healthy");
    let sizes = random_sizes(0x4ea1, 200, 16 * 1024);
    let total: usize = sizes.iter().sum();
    let data = random_bytes(0x4ea1, total);
    for w in cut(&data, &sizes) {
        e.send(hid, w).expect("send healthy");
    }
    let t0 = Instant::now();
    let r = e.flush(hid).expect("flush healthy");
    let took = t0.elapsed();
    assert!(
        took < HEALTHY_FLUSH_BOUND,
        "{ctx}: the healthy flush took {took:?}"
    );
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (sizes.len() as u64, total as u64, 0),
        "{ctx}: healthy report {r:?}"
    );
    assert!(r.first_error.is_none(), "{ctx}: {r:?}");
    assert_eq!(
        e.pending_writes(),
        n as u64,
        "{ctx}: the stalled writes are still stuck"
    );
    let (_, fd) = e.close(hid).expect("close healthy");
    drop(fd);
    assert_bytes_eq(&sink.finish(), &data, &ctx);

    let t_drop = Instant::now();
    drop(e);
    drop(held);
    eprintln!(
        "{ctx}: setup {setup:?}, healthy flush {took:?}, teardown {:?}",
        t_drop.elapsed()
    );
}

// ---- 2. driving the engine from a poll(2) loop ----------------------------------------------

/// Bytes the poll-loop test moves.
const LOOP_BYTES: usize = 8 << 20;

/// An 8 MiB stream of ~2000 writes to a slow reader (8 KiB reads, 200 µs pause after each;
/// 64 KiB socket buffers on both ends), driven only by `send`, `submit`, `try_flush` and
/// `poll(2)` on the engine's descriptor with `next_timeout()` (or 5 s) as the timeout. A 256 KiB
/// per-socket queue limit makes the loop feed the engine as writes complete, resending the
/// refused buffer each time.
///
/// A neighbour socket stays stuck behind a peer that reads nothing for the whole loop.
///
/// Checks: the transfer completes byte-exact with the exact `try_flush` report; the loop
/// really waited (poll blocked and the descriptor woke it); no poll ever timed out (with no
/// timer pending, a timeout is a lost wake-up); wake-ups after which nothing progressed are
/// few; the loop ran far fewer iterations than a busy loop would (see `max_iterations`); and
/// once nothing can progress the descriptor stays quiet.
fn poll_loop_slow_reader(b: Backend) {
    let ctx = format!("{b:?} poll loop");
    let data = random_bytes(0x5104, LOOP_BYTES);
    let sizes = sizes_summing_to(0x5104, LOOP_BYTES, 8 * 1024);
    let writes = cut(&data, &sizes);
    let reader = SlowCheckingSink::start(
        data.clone(),
        64 * 1024,
        8 * 1024,
        Duration::from_micros(200),
    );
    let mut e = Engine::builder()
        .backend(b)
        .max_queued_bytes_per_socket(256 * 1024)
        .build()
        .expect("engine");
    let s = TcpStream::connect(reader.addr).expect("connect");
    set_sndbuf(&s, 64 * 1024);
    let id = e.register_tcp(s).expect("register");
    // A neighbour stuck for the whole loop (its peer reads nothing until the end): its op stays
    // in flight (io_uring) or its socket stays armed (epoll) and must never wake the loop.
    let (stalled, gate) = TcpSink::start_gated(Some(4096));
    let st = stalled.connect();
    set_sndbuf(&st, 4096);
    let sid = e.register_tcp(st).expect("register stalled");
    let stuck = random_bytes(0x57, 256 * 1024);
    for w in cut(&stuck, &[64 * 1024; 4]) {
        e.send(sid, w).expect("send stalled");
    }
    e.submit().expect("submit");
    assert!(
        e.queued_bytes(sid).expect("queued") > 0,
        "{ctx}: the stalled neighbour should be stuck"
    );

    // The bound on iterations. Each iteration ends in one poll, or, when the step left the
    // engine with nothing pending, goes straight back to feed it. A poll either reports the
    // descriptor readable, after which the step moves bytes unless the wake-up was spurious
    // (counted, at most MAX_SPURIOUS), or times out, which is asserted never to happen with no
    // timer pending. The descriptor turns readable only when a watched socket became writable
    // (epoll) or a send op completed (io_uring), and the kernel wakes a TCP sender only once at
    // least a third of its send buffer is free (`sk_stream_is_writeable`); with SO_SNDBUF 64 KiB
    // (128 KiB once the kernel doubles it), a wake-up moves tens of KiB, far above 4 KiB. So
    // `LOOP_BYTES / 4 KiB` (2048) bounds the iterations with room to spare (about 90 here). A
    // busy loop would make one iteration every few microseconds for the whole transfer (hundreds
    // of milliseconds), so 50 000 or more.
    let max_iterations = LOOP_BYTES / 4096;
    const MAX_SPURIOUS: usize = 16;
    const POLL_CAP: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut next = 0usize;
    let mut refused: Option<Bytes> = None;
    let (mut backpressured, mut refilled) = (0usize, 0usize);
    let (mut iterations, mut readable_at_once, mut blocked, mut woken, mut spurious) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut woke = false;
    let mut last = (0u64, 0usize);
    let t0 = Instant::now();
    let report = loop {
        // Queue what the engine takes; a refused buffer comes back and goes first next time.
        while next < writes.len() {
            let w = refused.take().unwrap_or_else(|| writes[next].clone());
            match e.send(id, w) {
                Ok(()) => next += 1,
                Err(se) => {
                    assert!(se.is_backpressure(), "{ctx}: send: {}", se.error());
                    backpressured += 1;
                    refused = Some(se.into_inner());
                    break;
                }
            }
        }
        // The barrier goes up once everything is queued (it covers only writes before it).
        if next == writes.len() {
            if let Some(r) = e.try_flush(id).expect("try_flush") {
                break r;
            }
        } else {
            e.submit().expect("submit");
        }
        let now = (e.stats().bytes_sent, next);
        if woke && now == last {
            spurious += 1;
        }
        last = now;
        iterations += 1;
        assert!(
            iterations <= max_iterations && spurious <= MAX_SPURIOUS,
            "{ctx}: spinning: {iterations} iterations ({spurious} spurious wake-ups) for {} of \
             {LOOP_BYTES} bytes",
            now.0
        );
        if e.queued_bytes(id).expect("queued") == 0 {
            // The engine finished everything it held within the step: nothing to wait for, so
            // the descriptor will not turn readable; go and feed it (that accepts a write).
            refilled += 1;
            woke = false;
            continue;
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("{ctx}: no progress for 60 s ({} bytes sent)", now.0));
        let timer = e.next_timeout();
        let timeout = timer.unwrap_or(POLL_CAP).min(left);
        let fd = e.as_fd();
        woke = if poll_in(fd, Duration::ZERO) {
            readable_at_once += 1;
            true
        } else {
            blocked += 1;
            let r = poll_in(fd, timeout);
            if r {
                woken += 1;
            } else {
                assert!(
                    timer.is_some(),
                    "{ctx}: poll timed out after {timeout:?} with no engine timer pending: a \
                     lost wake-up ({} of {LOOP_BYTES} bytes sent)",
                    now.0
                );
            }
            r
        };
    };
    let took = t0.elapsed();
    eprintln!(
        "{ctx}: {took:?}, {iterations} iterations: {readable_at_once} readable at once, \
         {blocked} blocked ({woken} woken by the descriptor), {spurious} spurious, {refilled} \
         with the engine idle; {backpressured} refused sends; transitions {}",
        e.stats().kernel_transitions
    );
    assert_eq!(
        (report.writes, report.bytes, report.failed),
        (writes.len() as u64, LOOP_BYTES as u64, 0),
        "{ctx}: try_flush report {report:?}"
    );
    assert!(report.first_error.is_none(), "{ctx}: {report:?}");
    assert!(
        woken > 0,
        "{ctx}: the loop never waited on the descriptor and was woken by it"
    );
    assert!(
        backpressured > 0,
        "{ctx}: the queue limit never pushed back (the loop was not fed incrementally)"
    );
    assert_eq!(e.queued_bytes(id).expect("queued"), 0, "{ctx}");

    // Nothing can progress now (the stream is done, the neighbour's peer reads nothing): the
    // descriptor must stay quiet. A watch left armed on the finished, writable stream (say a
    // level-triggered EPOLLOUT) would make it readable at once, and an event loop would spin.
    assert!(
        !poll_in(e.as_fd(), Duration::from_millis(100)),
        "{ctx}: the descriptor is readable with nothing able to progress"
    );
    gate.open();
    let r = e.flush(sid).expect("flush the neighbour");
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (4, stuck.len() as u64, 0),
        "{ctx}: the neighbour's report {r:?}"
    );
    for sock in [id, sid] {
        let (_, fd) = e.close(sock).expect("close");
        drop(fd);
    }
    assert_bytes_eq(&stalled.finish(), &stuck, &format!("{ctx} neighbour"));
    assert_eq!(
        reader.finish(),
        PatternResult {
            bytes: LOOP_BYTES as u64,
            first_mismatch: None
        },
        "{ctx}: what the reader saw"
    );
}

// ---- 3. differential: the same trace through io_uring and epoll -----------------------------

/// The sockets of a differential trace, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A TCP stream to a reader that reads everything.
    TcpA,
    /// Another one.
    TcpB,
    /// A TCP stream whose peer reset it before the trace.
    TcpReset,
    /// A connected UDP socket to a closed port.
    UdpDead,
    /// An unconnected UDP socket sending to a live port and to a closed one.
    UdpMixed,
}

const ROLES: [Role; 5] = [
    Role::TcpA,
    Role::TcpB,
    Role::TcpReset,
    Role::UdpDead,
    Role::UdpMixed,
];

#[derive(Debug, Clone, Copy)]
enum Op {
    /// `len` bytes at `offset` of the shared random block; `live` picks `UdpMixed`'s destination.
    Send {
        role: Role,
        offset: usize,
        len: usize,
        live: bool,
    },
    Flush(Role),
    FlushAll,
    Submit,
}

/// The shared random block sends slice their payloads from.
const BLOCK: usize = 1 << 20;

/// The socket index of a role (sockets are registered in `ROLES` order).
fn role_index(r: Role) -> u32 {
    let i = ROLES.iter().position(|x| *x == r).expect("a role");
    u32::try_from(i).expect("five roles")
}

fn trace(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| match rng.gen_range(0..100) {
            0..=69 => {
                let role = ROLES[rng.gen_range(0..ROLES.len())];
                let len = match role {
                    Role::TcpA | Role::TcpB | Role::TcpReset => {
                        random_sizes(rng.gen(), 1, 64 * 1024)[0]
                    }
                    // Runs of equal sizes make GSO groups; the rest are single datagrams.
                    Role::UdpDead | Role::UdpMixed => match rng.gen_range(0..4) {
                        0 => 100,
                        1 => 1200,
                        _ => random_sizes(rng.gen(), 1, 1472)[0],
                    },
                };
                Op::Send {
                    role,
                    offset: rng.gen_range(0..BLOCK - len),
                    len,
                    live: rng.gen_bool(0.5),
                }
            }
            70..=81 => Op::Submit,
            82..=94 => Op::Flush(ROLES[rng.gen_range(0..ROLES.len())]),
            _ => Op::FlushAll,
        })
        .collect()
}

/// An error with everything that must agree across backends; a peer address becomes the name
/// of its role (each backend's run has its own peers).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SeenError {
    Socket {
        status: Status,
        errno: i32,
        socket: u32,
        peer: Option<String>,
    },
    Other(String),
}

/// A flush report minus timing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenReport {
    writes: u64,
    bytes: u64,
    failed: u64,
    failures: Vec<(Status, u64)>,
    first_error: Option<SeenError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenAll {
    total: SeenReport,
    sockets: Vec<(u32, SeenReport)>,
    errors: Vec<SeenError>,
}

/// What one trace step returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Send(Result<(), SeenError>),
    Submit(Result<(), SeenError>),
    Flush(Result<SeenReport, SeenError>),
    FlushAll(Result<SeenAll, SeenError>),
    Close(Result<SeenReport, SeenError>),
}

/// What one backend's run of a trace produced.
#[derive(Debug)]
struct TraceRun {
    steps: Vec<(usize, Seen)>,
    tcp_received: Vec<Vec<u8>>,
    tcp_sent: Vec<Vec<u8>>,
    udp_received: Vec<Vec<u8>>,
    udp_sent: Vec<Bytes>,
}

struct Names(Vec<(SocketAddr, &'static str)>);

impl Names {
    fn error(&self, e: &Error) -> SeenError {
        match e {
            Error::Socket {
                status,
                errno,
                socket,
                peer,
            } => SeenError::Socket {
                status: *status,
                errno: *errno,
                socket: socket.index(),
                peer: peer.map(|p| {
                    self.0
                        .iter()
                        .find(|(a, _)| *a == p)
                        .map_or_else(|| format!("unknown {p}"), |(_, n)| (*n).to_string())
                }),
            },
            other => SeenError::Other(format!("{other:?}")),
        }
    }

    fn report(&self, r: &FlushReport) -> SeenReport {
        SeenReport {
            writes: r.writes,
            bytes: r.bytes,
            failed: r.failed,
            failures: r.failures_by_status().collect(),
            first_error: r.first_error.as_ref().map(|e| self.error(e)),
        }
    }

    fn all(&self, r: &FlushAllReport) -> SeenAll {
        SeenAll {
            total: self.report(&r.total),
            sockets: r
                .sockets
                .iter()
                .map(|(id, r)| (id.index(), self.report(r)))
                .collect(),
            errors: r.errors().iter().map(|e| self.error(e)).collect(),
        }
    }
}

fn run_trace(b: Backend, recverr: bool, ops: &[Op], block: &Bytes) -> TraceRun {
    let live_count = ops
        .iter()
        .filter(|op| {
            matches!(
                op,
                Op::Send {
                    role: Role::UdpMixed,
                    live: true,
                    ..
                }
            )
        })
        .count();
    let sinks = [TcpSink::start(), TcpSink::start()];
    let udp_live = DgramSink::start("127.0.0.1:0", live_count, Duration::from_secs(5));
    let udp_dead = closed_udp_port("127.0.0.1:0");
    let mixed_dead = closed_udp_port("127.0.0.1:0");
    let (reset, reset_peer) = reset_stream();
    let names = Names(vec![
        (sinks[0].addr, "tcp A peer"),
        (sinks[1].addr, "tcp B peer"),
        (reset_peer, "reset peer"),
        (udp_dead, "closed port"),
        (udp_live.addr, "live port"),
        (mixed_dead, "closed port (unconnected)"),
    ]);

    let mut e = builder(b).udp_recverr(recverr).build().expect("engine");
    let ids = [
        e.register_tcp(sinks[0].connect()).expect("register A"),
        e.register_tcp(sinks[1].connect()).expect("register B"),
        e.register_tcp(reset).expect("register reset"),
        e.register_udp(udp_connected(udp_dead))
            .expect("register udp dead"),
        e.register_udp(UdpSocket::bind("127.0.0.1:0").expect("bind udp"))
            .expect("register udp mixed"),
    ];
    let id = |r: Role| ids[ROLES.iter().position(|x| *x == r).expect("a role")];

    let mut steps = Vec::new();
    let mut tcp_sent = vec![Vec::new(), Vec::new()];
    let mut udp_sent = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let seen = match *op {
            Op::Send {
                role,
                offset,
                len,
                live,
            } => {
                let data = block.slice(offset..offset + len);
                let r = if role == Role::UdpMixed {
                    let dest = if live { udp_live.addr } else { mixed_dead };
                    e.send_to(id(role), data.clone(), dest)
                } else {
                    e.send(id(role), data.clone())
                };
                if r.is_ok() {
                    match role {
                        Role::TcpA => tcp_sent[0].extend_from_slice(&data),
                        Role::TcpB => tcp_sent[1].extend_from_slice(&data),
                        Role::UdpMixed if live => udp_sent.push(data),
                        _ => {}
                    }
                }
                Seen::Send(r.map_err(|se| names.error(se.error())))
            }
            Op::Submit => Seen::Submit(e.submit().map_err(|err| names.error(&err))),
            Op::Flush(role) => Seen::Flush(
                e.flush(id(role))
                    .map(|r| names.report(&r))
                    .map_err(|err| names.error(&err)),
            ),
            Op::FlushAll => Seen::FlushAll(
                e.flush_all()
                    .map(|r| names.all(&r))
                    .map_err(|err| names.error(&err)),
            ),
        };
        steps.push((i, seen));
    }
    let end = ops.len();
    steps.push((
        end,
        Seen::FlushAll(
            e.flush_all()
                .map(|r| names.all(&r))
                .map_err(|err| names.error(&err)),
        ),
    ));
    for (k, &id) in ids[..2].iter().enumerate() {
        let r = e.close(id);
        steps.push((
            end + 1 + k,
            Seen::Close(
                r.map(|(r, fd)| {
                    drop(fd);
                    names.report(&r)
                })
                .map_err(|err| names.error(&err)),
            ),
        ));
    }
    drop(e);
    let [a, b_sink] = sinks;
    TraceRun {
        steps,
        tcp_received: vec![a.finish(), b_sink.finish()],
        tcp_sent,
        udp_received: udp_live.finish(),
        udp_sent,
    }
}

/// FAILURES.md item 33: random traces (seeded) of sends with random sizes, `submit`,
/// `flush(id)` and `flush_all` over two healthy TCP streams, a TCP stream reset by its peer
/// before the trace, a connected UDP socket to a closed port, and an unconnected UDP socket
/// sending to a live and a closed port. The io_uring and epoll runs of a trace must return the
/// identical sequence of results: every send's Ok/Err, every flush's Ok/Err (error kind, status,
/// errno, socket, peer) and its whole report (writes, bytes, failed, failures per status, first
/// error), every `flush_all`'s total, per-socket reports and errors. The live peers must get
/// exactly what was sent, on both backends, and only the reset stream ever fails a write.
/// Three seeds of 250 steps, with `udp_recverr` on and off (one test each). Peer errors,
/// transitions and resend counts may differ and are not compared.
fn differential(recverr: bool) {
    let _serial = udp_serial();
    let block = random_bytes(0xd1ff, BLOCK);
    for seed in [1u64, 2, 3] {
        let ctx = format!("seed {seed} recverr {recverr}");
        let ops = trace(seed, 250);
        let uring = run_trace(Backend::Uring, recverr, &ops, &block);
        let epoll = run_trace(Backend::Epoll, recverr, &ops, &block);
        assert_eq!(uring.steps.len(), epoll.steps.len());
        for ((i, u), (_, ep)) in uring.steps.iter().zip(&epoll.steps) {
            assert_eq!(
                u,
                ep,
                "{ctx}: step {i} ({:?}) differs: io_uring left, epoll right",
                ops.get(*i)
            );
        }
        assert_eq!(uring.tcp_sent, epoll.tcp_sent, "{ctx}: accepted TCP bytes");
        assert_eq!(uring.udp_sent, epoll.udp_sent, "{ctx}: accepted datagrams");
        // Only the reset stream ever fails a write: an ICMP error never fails a datagram.
        for (i, step) in &uring.steps {
            let reports: Vec<(u32, &SeenReport)> = match (step, ops.get(*i)) {
                (Seen::Flush(Ok(r)), Some(Op::Flush(role))) => vec![(role_index(*role), r)],
                (Seen::FlushAll(Ok(a)), _) => a.sockets.iter().map(|(k, r)| (*k, r)).collect(),
                (Seen::Close(Ok(r)), _) => vec![(0, r)],
                _ => Vec::new(),
            };
            for (k, r) in reports {
                assert!(
                    k == role_index(Role::TcpReset) || r.failed == 0,
                    "{ctx}: step {i}: socket {k} failed writes: {r:?}"
                );
            }
        }
        // The live peers got exactly what was accepted, on both backends (so the same).
        for (name, run) in [("io_uring", &uring), ("epoll", &epoll)] {
            for k in 0..2 {
                assert_bytes_eq(
                    &run.tcp_received[k],
                    &run.tcp_sent[k],
                    &format!("{ctx} {name} tcp #{k}"),
                );
            }
            assert_same_datagrams(
                &run.udp_received,
                &run.udp_sent,
                &format!("{ctx} {name} live UDP peer"),
            );
        }
        // The trace exercised what it is meant to: the reset stream failed a flush, later
        // sends on it failed fast, both UDP sockets sent, flush_all ran.
        let flush_errs = uring
            .steps
            .iter()
            .filter(|(_, s)| matches!(s, Seen::Flush(Err(SeenError::Socket { .. }))))
            .count();
        let send_errs = uring
            .steps
            .iter()
            .filter(|(_, s)| matches!(s, Seen::Send(Err(_))))
            .count();
        let all = ops.iter().filter(|o| matches!(o, Op::FlushAll)).count();
        assert!(
            flush_errs > 0 && send_errs > 0 && all > 0 && !uring.udp_sent.is_empty(),
            "{ctx}: the trace misses a case (flush errors {flush_errs}, send errors \
             {send_errs}, flush_alls {all}, live datagrams {})",
            uring.udp_sent.len()
        );
    }
}

#[test]
fn differential_uring_vs_epoll_recverr_on() {
    differential(true);
}

#[test]
fn differential_uring_vs_epoll_recverr_off() {
    differential(false);
}

// ---- 4. flush_all with a poisoned stream and a UDP socket -----------------------------------

/// `flush_all` over a healthy TCP stream (40 writes), a stream reset by its peer (5 writes) and a
/// connected UDP socket (60 datagrams to a live receiver): `Ok`, with the reset stream's
/// `ECONNRESET` in `errors()` and in its own report (all 5 writes failed with it), the UDP
/// socket's report exact (60 sent, none failed) and the receiver holding exactly those 60, the
/// healthy stream's report exact and its bytes delivered. Afterwards the reset stream fails fast:
/// a send is refused with the same error (and its buffer handed back), a flush returns it.
fn flush_all_poisoned_stream_and_udp(b: Backend) {
    let _serial = udp_serial();
    let ctx = format!("{b:?} flush_all");
    let sink = TcpSink::start();
    const DGRAMS: usize = 60;
    let rx = DgramSink::start("127.0.0.1:0", DGRAMS, Duration::from_secs(5));
    let (reset, _) = reset_stream();
    // The engine names a stream's peer as `peer_addr` gave it at registration: none for a
    // stream already reset.
    let reset_peer = reset.peer_addr().ok();
    let mut e = builder(b).build().expect("engine");
    let hid = e.register_tcp(sink.connect()).expect("register healthy");
    let rid = e.register_tcp(reset).expect("register reset");
    let uid = e
        .register_udp(udp_connected(rx.addr))
        .expect("register udp");

    let sizes = random_sizes(0xf1a, 40, 32 * 1024);
    let total: usize = sizes.iter().sum();
    let data = random_bytes(0xf1a, total);
    for w in cut(&data, &sizes) {
        e.send(hid, w).expect("send healthy");
    }
    for i in 0..5 {
        e.send(rid, random_bytes(100 + i, 1000))
            .expect("queue on the reset stream");
    }
    let dgrams: Vec<Bytes> = random_sizes(0xd6, DGRAMS, 1400)
        .into_iter()
        .enumerate()
        .map(|(i, n)| dgram(0xd6 << 32 | i as u64, n))
        .collect();
    for d in &dgrams {
        e.send(uid, d.clone()).expect("send udp");
    }
    let dgram_bytes: usize = dgrams.iter().map(Bytes::len).sum();

    let all = e
        .flush_all()
        .expect("flush_all is Ok with a poisoned stream");
    let reset_err = (Status::ConnectionReset, libc::ECONNRESET, rid, reset_peer);
    let errs: Vec<_> = all.errors().iter().map(socket_error).collect();
    assert_eq!(
        errs,
        vec![Some(reset_err)],
        "{ctx}: errors() {:?}",
        all.errors()
    );
    assert_eq!(all.sockets.len(), 3, "{ctx}: one report per socket");

    let h = all.socket(hid).expect("healthy report");
    assert_eq!(
        (h.writes, h.bytes, h.failed),
        (40, total as u64, 0),
        "{ctx}: healthy report {h:?}"
    );
    assert!(h.first_error.is_none(), "{ctx}: {h:?}");

    let r = all.socket(rid).expect("reset report");
    assert_eq!(
        (
            r.writes,
            r.bytes,
            r.failed,
            r.failed_with(Status::ConnectionReset)
        ),
        (0, 0, 5, 5),
        "{ctx}: reset stream report {r:?}"
    );
    assert_eq!(
        r.first_error.as_ref().and_then(socket_error),
        Some(reset_err),
        "{ctx}"
    );

    let u = all.socket(uid).expect("udp report");
    assert_eq!(
        (u.writes, u.bytes, u.failed),
        (DGRAMS as u64, dgram_bytes as u64, 0),
        "{ctx}: udp report {u:?}"
    );
    assert!(u.first_error.is_none(), "{ctx}: {u:?}");
    assert_eq!(
        (all.total.writes, all.total.failed),
        (40 + DGRAMS as u64, 5),
        "{ctx}: total {:?}",
        all.total
    );
    assert_eq!(
        all.total.bytes,
        (total + dgram_bytes) as u64,
        "{ctx}: total bytes"
    );

    // Poisoned: a later send fails fast with the same error and hands the buffer back.
    let again = random_bytes(7, 100);
    let se = e
        .send(rid, again.clone())
        .expect_err("send on a poisoned stream");
    assert_eq!(
        socket_error(se.error()),
        Some(reset_err),
        "{ctx}: {}",
        se.error()
    );
    assert_eq!(se.into_inner(), again, "{ctx}: the refused buffer");
    let fe = e.flush(rid).expect_err("flush of a poisoned stream");
    assert_eq!(socket_error(&fe), Some(reset_err), "{ctx}: {fe}");

    let (_, fd) = e.close(hid).expect("close healthy");
    drop(fd);
    assert_bytes_eq(&sink.finish(), &data, &ctx);
    assert_same_datagrams(&rx.finish(), &dgrams, &ctx);
}

// ---- 5. the refused buffer comes back ---------------------------------------------------------

/// `max_queued_bytes_per_socket` 64 KiB and 10 000-byte writes: exactly 6 are accepted and the
/// 7th is refused with backpressure at that limit; the buffer handed back is the very one passed
/// in (same pointer, same bytes). After a flush (exactly the 6), that same buffer is accepted;
/// the peer receives the exact concatenation of the 7 (nothing lost, nothing twice).
fn refused_stream_buffer_comes_back(b: Backend) {
    let ctx = format!("{b:?} refused stream buffer");
    const LIMIT: usize = 64 * 1024;
    const LEN: usize = 10_000;
    let sink = TcpSink::start();
    let mut e = builder(b)
        .max_queued_bytes_per_socket(LIMIT)
        .build()
        .expect("engine");
    let id = e.register_tcp(sink.connect()).expect("register");
    let block = random_bytes(0x4ef, 7 * LEN);
    let bufs = cut(&block, &[LEN; 7]);
    for w in &bufs[..6] {
        e.send(id, w.clone()).expect("within the limit");
    }
    let seventh = bufs[6].clone();
    let ptr = seventh.as_ptr();
    let se = e
        .send(id, seventh)
        .expect_err("the 7th write exceeds 64 KiB");
    assert!(se.is_backpressure(), "{ctx}: {}", se.error());
    assert!(
        matches!(
            se.error(),
            Error::Backpressure {
                socket,
                limit: Limit::QueuedBytesPerSocket,
                max: LIMIT,
            } if *socket == id
        ),
        "{ctx}: {:?}",
        se.error()
    );
    let back = se.into_inner();
    assert_eq!(back.as_ptr(), ptr, "{ctx}: not the same buffer");
    assert_eq!(back, bufs[6], "{ctx}: the returned buffer's bytes");
    assert_eq!(e.queued_bytes(id).expect("queued"), 6 * LEN, "{ctx}");

    let r = e.flush(id).expect("flush");
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (6, 6 * LEN as u64, 0),
        "{ctx}: {r:?}"
    );
    e.send(id, back).expect("the returned buffer, sent again");
    let r = e.flush(id).expect("flush");
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (1, LEN as u64, 0),
        "{ctx}: {r:?}"
    );
    let (_, fd) = e.close(id).expect("close");
    drop(fd);
    assert_bytes_eq(&sink.finish(), &block, &ctx);
}

/// The same for a datagram: `max_queued_writes_per_socket` 8 on an unconnected UDP socket;
/// `send_to` of the 9th datagram is refused at that limit and hands back the very buffer. After a
/// flush (exactly the 8), it is sent again, and the receiver gets exactly the 9, none twice.
fn refused_datagram_comes_back(b: Backend) {
    let _serial = udp_serial();
    let ctx = format!("{b:?} refused datagram");
    let rx = DgramSink::start("127.0.0.1:0", 9, Duration::from_secs(5));
    let mut e = builder(b)
        .max_queued_writes_per_socket(8)
        .build()
        .expect("engine");
    let id = e
        .register_udp(UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .expect("register");
    let sent: Vec<Bytes> = (0..9).map(|i| dgram(0x9_0000 + i, 500)).collect();
    for d in &sent[..8] {
        e.send_to(id, d.clone(), rx.addr).expect("within the limit");
    }
    let ptr = sent[8].as_ptr();
    let se = e
        .send_to(id, sent[8].clone(), rx.addr)
        .expect_err("the 9th datagram exceeds the write limit");
    let (err, back) = se.into_parts();
    assert!(
        matches!(
            err,
            Error::Backpressure {
                socket,
                limit: Limit::QueuedWritesPerSocket,
                max: 8,
            } if socket == id
        ),
        "{ctx}: {err:?}"
    );
    assert_eq!(back.as_ptr(), ptr, "{ctx}: not the same buffer");
    assert_eq!(back, sent[8], "{ctx}: the returned buffer's bytes");
    let r = e.flush(id).expect("flush");
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (8, 8 * 500, 0),
        "{ctx}: {r:?}"
    );
    e.send_to(id, back, rx.addr)
        .expect("the returned datagram, sent again");
    let r = e.flush(id).expect("flush");
    assert_eq!((r.writes, r.bytes, r.failed), (1, 500, 0), "{ctx}: {r:?}");
    assert_same_datagrams(&rx.finish(), &sent, &ctx);
}

// ---- 6. flush timeouts at the extremes ------------------------------------------------------

/// `flush_timeout(Duration::MAX)` means none: a flush of 200 writes completes with the exact
/// report (no overflow, no panic). `flush_timeout(Duration::ZERO)` means "submit, reap once,
/// then report": `close` of a socket with three small writes succeeds (loopback takes them
/// within the submitting call on both backends), and a flush of a stream stuck behind a peer
/// that reads nothing returns `FlushTimeout` for that socket at once, its writes still queued;
/// once the peer reads, `try_flush` and the descriptor finish them, byte-exact.
fn flush_timeout_max_and_zero(b: Backend) {
    let ctx = format!("{b:?} flush_timeout MAX");
    let sink = TcpSink::start();
    let mut e = Engine::builder()
        .backend(b)
        .flush_timeout(Duration::MAX)
        .build()
        .expect("engine");
    let id = e.register_tcp(sink.connect()).expect("register");
    let sizes = random_sizes(0x3a, 200, 8 * 1024);
    let total: usize = sizes.iter().sum();
    let data = random_bytes(0x3a, total);
    for w in cut(&data, &sizes) {
        e.send(id, w).expect("send");
    }
    let r = e.flush(id).expect("flush with flush_timeout(MAX)");
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (200, total as u64, 0),
        "{ctx}: {r:?}"
    );
    let (_, fd) = e.close(id).expect("close");
    drop(fd);
    assert_bytes_eq(&sink.finish(), &data, &ctx);

    let ctx = format!("{b:?} flush_timeout ZERO");
    let mut e = Engine::builder()
        .backend(b)
        .flush_timeout(Duration::ZERO)
        .build()
        .expect("engine");
    let sink = TcpSink::start();
    let id = e.register_tcp(sink.connect()).expect("register");
    let small = random_bytes(0x5a, 300);
    for w in cut(&small, &[100, 100, 100]) {
        e.send(id, w).expect("send");
    }
    let (r, fd) = e.close(id).expect("close with flush_timeout(ZERO)");
    assert_eq!((r.writes, r.bytes, r.failed), (3, 300, 0), "{ctx}: {r:?}");
    drop(fd);
    assert_bytes_eq(&sink.finish(), &small, &ctx);

    let (stalled, gate) = TcpSink::start_gated(Some(4096));
    let s = stalled.connect();
    set_sndbuf(&s, 4096);
    let id = e.register_tcp(s).expect("register stalled");
    const STUCK: usize = 4 << 20;
    let data = random_bytes(0x5e, STUCK);
    let writes = cut(&data, &[STUCK / 32; 32]);
    for w in &writes {
        e.send(id, w.clone()).expect("send");
    }
    let t0 = Instant::now();
    let err = e.flush(id).expect_err("a stuck flush with ZERO times out");
    let took = t0.elapsed();
    assert!(
        matches!(err, Error::FlushTimeout { socket: Some(s) } if s == id),
        "{ctx}: {err:?}"
    );
    assert!(
        took < Duration::from_millis(500),
        "{ctx}: FlushTimeout took {took:?}"
    );
    assert!(
        e.queued_bytes(id).expect("queued") > 0,
        "{ctx}: the writes stay queued after FlushTimeout"
    );

    gate.open();
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        if let Some(r) = e.try_flush(id).expect("try_flush") {
            break r;
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("{ctx}: not done after 30 s"));
        let t = e.next_timeout().unwrap_or(Duration::from_secs(5)).min(left);
        poll_in(e.as_fd(), t);
    };
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (32, STUCK as u64, 0),
        "{ctx}: {r:?}"
    );
    let (_, fd) = e.close(id).expect("close");
    drop(fd);
    assert_bytes_eq(&stalled.finish(), &data, &ctx);
}

// ---- 7. Engine: Send -----------------------------------------------------------------------

/// An engine with 500 queued writes moves to another thread, which flushes it (exact report)
/// and hands it back; the bytes arrive whole. `Engine: Send` is also checked at compile time.
fn engine_is_send(b: Backend) {
    fn assert_send<T: Send>() {}
    assert_send::<Engine>();

    let ctx = format!("{b:?} Send");
    let sink = TcpSink::start();
    let mut e = builder(b).build().expect("engine");
    let id = e.register_tcp(sink.connect()).expect("register");
    let sizes = random_sizes(0x5e4d, 500, 4096);
    let total: usize = sizes.iter().sum();
    let data = random_bytes(0x5e4d, total);
    for w in cut(&data, &sizes) {
        e.send(id, w).expect("send");
    }
    let (mut e, r) = std::thread::spawn(move || {
        let r = e.flush(id);
        (e, r)
    })
    .join()
    .expect("flush thread");
    let r = r.expect("flush on another thread");
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (500, total as u64, 0),
        "{ctx}: {r:?}"
    );
    let (_, fd) = e.close(id).expect("close back on this thread");
    drop(fd);
    assert_bytes_eq(&sink.finish(), &data, &ctx);
}

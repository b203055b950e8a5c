//! Zero-copy sends (`IORING_OP_SEND_ZC`/`SENDMSG_ZC`) on real sockets (FAILURES.md items 18–24).
//! io_uring only: epoll has no zero-copy send, so an epoll engine ignores the threshold
//! (`epoll_ignores_the_threshold` checks that it sends every byte copying).
//!
//! - Loopback: the kernel copies every zero-copy send to a local socket and says so in the
//!   notification (`IORING_NOTIF_USAGE_ZC_COPIED`): the engine goes back to copying on that
//!   socket (`Stats::zc_copied`), bytes exact.
//! - A veth pair between two network namespaces (made and removed by each test; needs root and
//!   `ip`, else `SKIP:` with the reason, a failure under `VOLLEY_REQUIRE_NETNS=1`): a TCP stream
//!   of large buffers arrives byte-exact; with buffers that are *scribbled on when released*
//!   (the pool idea of `tests/tests/ownership.rs`), the peer still gets the original bytes, so
//!   nothing was released before its notification; and the control shows the check can see
//!   an early release: scribbling after the send completion but before the notification
//!   reaches the peer.
//! - A socket without zero-copy (a UNIX-domain stream registered as a stream): the send fails
//!   with `EOPNOTSUPP`, the same bytes go again by copying (`Stats::zc_fallbacks`).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use volley::{Backend, Engine, SocketId};
use volley_tests::scribble::{Pool, SCRIBBLE};
use volley_tests::tools::{find_tool, run, wait_oper_up, within_netns};
use volley_tests::{assert_bytes_eq, payload, TcpSink};

/// An io_uring engine with zero-copy from `threshold` bytes; `adaptive` false keeps zero-copy
/// on where the kernel reports it copied (veth and loopback here), so that every op tests it.
fn zc_engine(threshold: usize, adaptive: bool) -> Engine {
    let e = Engine::builder()
        .backend(Backend::Uring)
        .zerocopy_threshold(Some(threshold))
        .zerocopy_adaptive(adaptive)
        .build()
        .expect("io_uring engine");
    assert!(
        e.uring_features().is_enabled("send_zc"),
        "send_zc not in effect: {:?}",
        e.uring_features()
    );
    e
}

/// Waits on the engine's descriptor until every zero-copy notification has come.
fn wait_notifications(e: &mut Engine) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while e.zerocopy_pending() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} notifications still pending after 20 s",
            e.zerocopy_pending()
        );
        let mut pfd = libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, live for the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        e.submit().unwrap();
    }
}

/// Queues `data` cut into `chunk`-byte buffers, flushing every 16.
fn send_chunks(e: &mut Engine, s: SocketId, data: &Bytes, chunk: usize) {
    for (i, at) in (0..data.len()).step_by(chunk).enumerate() {
        e.send(s, data.slice(at..(at + chunk).min(data.len())))
            .unwrap();
        if i % 16 == 15 {
            e.flush(s).unwrap();
        }
    }
    e.flush(s).unwrap();
}

/// Loopback: every notification says "copied"; the socket goes back to copying, bytes exact.
#[test]
fn loopback_reports_copied_and_socket_goes_back_to_copying() {
    let mut e = zc_engine(16 << 10, true);
    let sink = TcpSink::start();
    let s = e.register_tcp(sink.connect()).unwrap();
    let data = Bytes::from(payload(1, 32 << 20).to_vec());
    send_chunks(&mut e, s, &data.slice(..4 << 20), 256 << 10);
    wait_notifications(&mut e);
    let first = e.stats().clone();
    assert!(first.zc_sends >= 1, "no zero-copy send: {first:?}");
    assert_eq!(first.zc_notifications, first.zc_sends);
    assert!(
        first.zc_copied >= 1,
        "loopback: the kernel reports it copied: {first:?}"
    );
    // From now on the socket copies: 28 MiB more, no zero-copy send.
    send_chunks(&mut e, s, &data.slice(4 << 20..), 256 << 10);
    wait_notifications(&mut e);
    let st = e.stats().clone();
    assert_eq!(
        st.zc_sends, first.zc_sends,
        "zero-copy after a copied report"
    );
    assert_eq!(st.writes_failed, 0);
    drop(e);
    assert_bytes_eq(&sink.finish(), &data, "loopback zc");
}

/// Epoll has no zero-copy send: the threshold is ignored, every byte goes copying.
#[test]
fn epoll_ignores_the_threshold() {
    let mut e = Engine::builder()
        .backend(Backend::Epoll)
        .zerocopy_threshold(Some(1024))
        .build()
        .unwrap();
    assert!(!e.uring_features().is_enabled("send_zc"));
    let sink = TcpSink::start();
    let s = e.register_tcp(sink.connect()).unwrap();
    let data = Bytes::from(payload(2, 4 << 20).to_vec());
    send_chunks(&mut e, s, &data, 64 << 10);
    assert_eq!(e.stats().zc_sends, 0);
    drop(e);
    assert_bytes_eq(&sink.finish(), &data, "epoll");
}

// ---- veth between two namespaces ----------------------------------------------------------

/// A namespace pair joined by `veth0` (in `a`, 10.198.n.1) — `veth1` (in `b`, 10.198.n.2),
/// as `tests/tests/udp_netns.rs` makes it. Dropping it deletes both (and the veth pair).
#[derive(Debug)]
struct NetnsPair {
    a: String,
    b: String,
    subnet: u8,
}

impl NetnsPair {
    fn b_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 198, self.subnet, 2)
    }

    fn create(subnet: u8) -> Result<NetnsPair, String> {
        if find_tool("ip").is_none() {
            return Err("`ip` (iproute2) is not installed".into());
        }
        let pid = std::process::id();
        let pair = NetnsPair {
            a: format!("vz-a-{pid}-{subnet}"),
            b: format!("vz-b-{pid}-{subnet}"),
            subnet,
        };
        let _ = run("ip", &["netns", "del", &pair.a]);
        let _ = run("ip", &["netns", "del", &pair.b]);
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        let mac_a = format!("02:c8:{subnet:02x}:00:00:01");
        let mac_b = format!("02:c8:{subnet:02x}:00:00:02");
        let ip_a = Ipv4Addr::new(10, 198, subnet, 1).to_string();
        let ip_b = pair.b_ip().to_string();
        run("ip", &["netns", "add", a])?;
        run("ip", &["netns", "add", b])?;
        let (cidr_a, cidr_b) = (format!("{ip_a}/30"), format!("{ip_b}/30"));
        #[rustfmt::skip]
        let steps: [&[&str]; 7] = [
            &["-n", a, "link", "add", "veth0", "address", &mac_a, "type", "veth",
              "peer", "name", "veth1", "address", &mac_b, "netns", b],
            &["-n", a, "addr", "add", &cidr_a, "dev", "veth0"],
            &["-n", b, "addr", "add", &cidr_b, "dev", "veth1"],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
            &["-n", a, "link", "set", "veth0", "up"],
            &["-n", b, "link", "set", "veth1", "up"],
        ];
        for s in &steps {
            run("ip", s)?;
        }
        #[rustfmt::skip]
        run("ip", &["-n", a, "neigh", "replace", &ip_b, "lladdr", &mac_b, "dev", "veth0", "nud", "permanent"])?;
        #[rustfmt::skip]
        run("ip", &["-n", b, "neigh", "replace", &ip_a, "lladdr", &mac_a, "dev", "veth1", "nud", "permanent"])?;
        for (n, dev) in [(a, "veth0"), (b, "veth1")] {
            wait_oper_up(n, dev)?;
        }
        Ok(pair)
    }

    /// Runs `f` on a thread that joined namespace `ns` (sockets it makes live there).
    fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        within_netns(ns, f)
    }

    /// A listener in `b`, and a stream from `a` connected to it, with the accepted end.
    fn tcp(&self) -> (TcpStream, TcpStream) {
        let ip = self.b_ip();
        let listener = NetnsPair::within(&self.b, move || {
            TcpListener::bind((ip, 0)).expect("bind in b")
        });
        let addr: SocketAddr = listener.local_addr().unwrap();
        let client = NetnsPair::within(&self.a, move || {
            TcpStream::connect(addr).expect("connect from a")
        });
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("warning: could not remove network namespace {ns}: {e}");
            }
        }
    }
}

/// The pair, or `None` after a `SKIP:` line (a panic with `VOLLEY_REQUIRE_NETNS=1`).
fn netns_or_skip(test: &str, subnet: u8) -> Option<NetnsPair> {
    match NetnsPair::create(subnet) {
        Ok(p) => Some(p),
        Err(reason) => {
            if std::env::var("VOLLEY_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                panic!("{test}: network namespaces required (VOLLEY_REQUIRE_NETNS=1): {reason}");
            }
            eprintln!("SKIP: {test}: {reason}");
            None
        }
    }
}

fn read_all(mut s: TcpStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    })
}

/// A TCP stream of 256 KiB buffers over veth, every op zero-copy (not adaptive): byte-exact.
/// Delivery to a socket in the other namespace is still local delivery, which the kernel copies
/// (`msg_zerocopy.rst`: "all packets generated with MSG_ZEROCOPY that are looped to a local
/// socket will incur a deferred copy"), and the notifications report it.
#[test]
fn veth_stream_of_large_buffers_is_exact() {
    let Some(ns) = netns_or_skip("veth_stream_of_large_buffers_is_exact", 1) else {
        return;
    };
    let (client, server) = ns.tcp();
    let reader = read_all(server);
    let mut e = zc_engine(16 << 10, false);
    let s = e.register_tcp(client).unwrap();
    let data = Bytes::from(payload(4, 64 << 20).to_vec());
    send_chunks(&mut e, s, &data, 256 << 10);
    wait_notifications(&mut e);
    let st = e.stats().clone();
    eprintln!(
        "veth: zc sends {} notifications {} copied {} fallbacks {}",
        st.zc_sends, st.zc_notifications, st.zc_copied, st.zc_fallbacks
    );
    assert!(st.zc_sends >= 16, "every op zero-copy: {st:?}");
    assert_eq!(
        st.zc_sends, st.zc_notifications,
        "a notification per zero-copy send"
    );
    assert!(st.zc_copied >= 1, "veth to a local socket: copied: {st:?}");
    assert_eq!(st.writes_failed, 0);
    let (_, fd) = e.close(s).unwrap();
    drop(fd);
    assert_bytes_eq(&reader.join().unwrap(), &data, "veth zc");
}

// ---- the scribble-on-release pool (the idea of tests/tests/ownership.rs) --------------------

/// Sends the pool as `chunk`-byte buffers over a veth whose egress is a slow `tbf` qdisc
/// (4 Mbit/s) from a socket with a send buffer that takes it all: every send completes at once
/// (the bytes are in the socket's write queue), while the pages stay referenced by skbs that
/// have not left yet — the kernel copies them only at delivery to the peer's socket, so each
/// op's notification comes long after its result. Returns the engine right after the barrier,
/// the socket and the peer's end (read by the caller).
fn send_pool_through_slow_link(
    ns: &NetnsPair,
    pool: &Arc<Pool>,
    chunk: usize,
) -> (Engine, SocketId, TcpStream) {
    #[rustfmt::skip]
    run("tc", &["-n", &ns.a, "qdisc", "add", "dev", "veth0", "root", "tbf",
                "rate", "4mbit", "burst", "4kb", "latency", "10s"])
        .expect("tbf qdisc on veth0");
    let (client, server) = ns.tcp();
    socket2::SockRef::from(&client)
        .set_send_buffer_size(8 << 20)
        .unwrap();
    let mut e = zc_engine(16 << 10, false);
    let s = e.register_tcp(client).unwrap();
    for off in (0..pool.len).step_by(chunk) {
        e.send(s, pool.take(off, chunk.min(pool.len - off)))
            .unwrap();
    }
    // The barrier: every write's result is in (the kernel took every byte into the write
    // queue); most of it has not left through the qdisc yet.
    let r = e.flush(s).unwrap();
    assert_eq!(r.bytes, pool.len as u64);
    (e, s, server)
}

/// Buffers scribbled on release, sent through a slow link: the sends complete at once, the
/// notifications come as the bytes drain; the peer receives the original bytes — nothing was
/// released before its notification — and every buffer is released, once.
#[test]
fn veth_buffers_released_only_after_notification() {
    let Some(ns) = netns_or_skip("veth_buffers_released_only_after_notification", 2) else {
        return;
    };
    let data = payload(5, 256 << 10).to_vec();
    let pool = Pool::new(&data);
    let (mut e, s, server) = send_pool_through_slow_link(&ns, &pool, 32 << 10);
    let reader = read_all(server);
    let pending = e.zerocopy_pending();
    assert!(pending > 0, "no notification pending while the bytes drain");
    assert!(
        pool.released.load(Ordering::SeqCst) <= 8 - pending,
        "a buffer whose notification is pending was released"
    );
    wait_notifications(&mut e);
    assert_eq!(
        pool.released.load(Ordering::SeqCst),
        8,
        "every buffer released"
    );
    let (_, fd) = e.close(s).unwrap();
    drop(fd);
    assert_bytes_eq(&reader.join().unwrap(), &data, "veth ownership");
}

/// The control: scribbling on a buffer after its send completed but before its notification —
/// what an engine releasing at the send completion would cause — is seen by the peer on veth.
/// So the test above would catch such an engine.
#[test]
fn veth_control_scribble_before_notification_is_seen() {
    let Some(ns) = netns_or_skip("veth_control_scribble_before_notification_is_seen", 3) else {
        return;
    };
    let data = payload(6, 256 << 10).to_vec();
    let pool = Pool::new(&data);
    let (mut e, s, server) = send_pool_through_slow_link(&ns, &pool, 32 << 10);
    assert!(
        e.zerocopy_pending() > 0,
        "no notification pending: cannot race it"
    );
    // What an early release would do: the engine still owns the buffers.
    pool.scribble(0, pool.len);
    let reader = read_all(server);
    wait_notifications(&mut e);
    let (_, fd) = e.close(s).unwrap();
    drop(fd);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), data.len());
    let seen = got.iter().filter(|&&b| b == SCRIBBLE).count();
    assert!(
        seen > got.len() / 2,
        "the peer saw {seen} scribbled bytes of {}: zero-copy on veth would not show an early \
         release",
        got.len()
    );
}

// ---- memlock exhausted (FAILURES.md item 20: ENOMEM) -------------------------------------------

/// Drops `CAP_IPC_LOCK` from the calling thread's effective and permitted sets (`capset(2)`):
/// an io_uring created by this thread afterwards accounts zero-copy pages against
/// `RLIMIT_MEMLOCK` (`io_notif_account_mem`; with the capability nothing is accounted).
fn drop_ipc_lock() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3 and CAP_IPC_LOCK (include/uapi/linux/capability.h).
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for the two v3 data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    let bit = 1u32 << CAP_IPC_LOCK;
    data[0].effective &= !bit;
    data[0].permitted &= !bit;
    // SAFETY: capset with the same header and data, one bit cleared.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Sets `RLIMIT_MEMLOCK`'s soft limit to `bytes`, at most the hard one (left as it is).
fn limit_memlock(bytes: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit calls with a live struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    assert!(
        lim.rlim_max >= bytes,
        "hard RLIMIT_MEMLOCK {} < {bytes}",
        lim.rlim_max
    );
    lim.rlim_cur = bytes;
    // SAFETY: as above.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Sends `data` as 1 MiB buffers, one flush each (one op each); returns (zero-copy sends,
/// fallbacks to copying, writes failed).
fn send_mib_ops(e: &mut Engine, s: SocketId, data: &Bytes) -> (u64, u64, u64) {
    for at in (0..data.len()).step_by(1 << 20) {
        e.send(s, data.slice(at..(at + (1 << 20)).min(data.len())))
            .unwrap();
        e.flush(s).unwrap();
    }
    wait_notifications(e);
    let st = e.stats();
    (st.zc_sends, st.zc_fallbacks, st.writes_failed)
}

/// Without `CAP_IPC_LOCK` (in a child process) io_uring accounts its memory against
/// `RLIMIT_MEMLOCK`. At 64 KiB the ring itself does not fit where the kernel charges it (6.18;
/// 6.1 does not): `Backend::Uring` fails with `UringUnavailable` naming `ENOMEM` and the
/// limit, `Auto` falls back to epoll saying why. At
/// 512 KiB the ring fits but a zero-copy send of 1 MiB cannot pin its pages: the kernel refuses
/// it with `ENOMEM`; the engine sends the same bytes again by copying (`Stats::zc_fallbacks`)
/// and the socket copies from then on; the peer gets every byte exactly once. The control, in
/// the same child first: with the capability the same sends go zero-copy, none refused.
#[test]
fn memlock_exhausted_zerocopy_falls_back_to_copying() {
    const TEST: &str = "memlock_exhausted_zerocopy_falls_back_to_copying";
    if !volley_tests::is_child() {
        let out = volley_tests::run_child(TEST, &[]);
        volley_tests::assert_child_passed(&out, "memlock child");
        return;
    }
    let data = Bytes::from(payload(7, 8 << 20).to_vec());
    // Control: as root (CAP_IPC_LOCK) nothing is accounted (adaptive off: loopback reports
    // "copied", which must not turn zero-copy off here).
    {
        let mut e = zc_engine(64 << 10, false);
        let sink = TcpSink::start();
        let s = e.register_tcp(sink.connect()).unwrap();
        let (zc, fallbacks, failed) = send_mib_ops(&mut e, s, &data);
        assert_eq!((fallbacks, failed), (0, 0), "control");
        // (More than 8: the rest of a short send goes zero-copy again.)
        assert!(zc >= 8, "control: every 1 MiB op zero-copy: {zc}");
        drop(e);
        assert_bytes_eq(&sink.finish(), &data, "control");
    }
    drop_ipc_lock();
    limit_memlock(64 << 10);
    // Whether the ring's own memory counts against the limit depends on the kernel: 6.18
    // charges it (`io_create_region`), 6.1 does not (its rings are memcg-accounted).
    match Engine::builder().backend(Backend::Uring).build() {
        Err(volley::Error::UringUnavailable { reason }) => {
            assert!(
                reason.contains("ENOMEM") && reason.contains("RLIMIT_MEMLOCK"),
                "reason {reason:?}"
            );
            let auto = Engine::builder().backend(Backend::Auto).build().unwrap();
            assert_eq!(auto.backend(), volley::BackendKind::Epoll);
            let why = auto.fallback_reason().expect("a reason").to_string();
            assert!(why.contains("ENOMEM"), "fallback reason {why:?}");
        }
        Err(other) => panic!("64 KiB: expected UringUnavailable, got {other}"),
        Ok(_) => println!("64 KiB: this kernel does not charge the ring to RLIMIT_MEMLOCK"),
    }

    limit_memlock(512 << 10);
    let mut e = zc_engine(64 << 10, false);
    let sink = TcpSink::start();
    let s = e.register_tcp(sink.connect()).unwrap();
    let (zc, fallbacks, failed) = send_mib_ops(&mut e, s, &data);
    assert_eq!(
        (zc, fallbacks, failed),
        (1, 1, 0),
        "one zero-copy op, refused (ENOMEM) and sent again by copying; then copying"
    );
    drop(e);
    assert_bytes_eq(&sink.finish(), &data, "memlock 512 KiB");
}

//! The fault checklist on real loopback sockets, on both backends (FAILURES.md A 2/7/9, D 25/26/
//! 29/30, F 34): peer reset and close, SIGPIPE, a stopped reader, tiny rings, shutdown with writes
//! in flight, abort, and io_uring refused by seccomp.
//!
//! Tests that need what the harness process must not do (restore `SIG_DFL` for SIGPIPE, install a
//! seccomp filter) re-run themselves in a child process (`run_child`) and check it there.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use volley::{Backend, BackendKind, Engine, Error, SocketId, Status};
use volley_tests::*;

/// Asserts `r` is a stream error for `id` with status reset or broken pipe; returns the status.
fn expect_dead_peer<T: std::fmt::Debug>(r: Result<T, Error>, id: SocketId, ctx: &str) -> Status {
    let err = match r {
        Err(e) => e,
        Ok(v) => panic!("{ctx}: expected a reset/broken pipe error, got Ok({v:?})"),
    };
    match &err {
        Error::Socket { status, socket, .. } => {
            assert!(
                matches!(status, Status::ConnectionReset | Status::BrokenPipe),
                "{ctx}: status {status:?} ({err})"
            );
            assert_eq!(*socket, id, "{ctx}: the error names the socket");
            let msg = err.to_string();
            assert!(
                msg.contains(&id.to_string()),
                "{ctx}: message {msg:?} names {id}"
            );
            *status
        }
        other => panic!("{ctx}: expected Error::Socket, got {other:?} ({other})"),
    }
}

/// A listener with a small receive buffer, and the accepted end once connected.
fn small_pair(rcvbuf: usize) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    socket2::SockRef::from(&listener)
        .set_recv_buffer_size(rcvbuf)
        .expect("SO_RCVBUF");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    set_sndbuf(&client, 4096);
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// The peer reads a little, then resets (SO_LINGER 0 + close) while 4 MiB are still queued: the
/// flush fails with reset/broken pipe naming the socket, without hanging; the peer got a prefix;
/// later sends and flushes fail fast with the same status (items 2, 7; invariants 2, 4, 7). Another
/// socket on the same engine is unaffected.
#[test]
fn peer_reset_mid_stream() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let (client, server) = small_pair(4096);
        let reader = std::thread::spawn(move || {
            let mut server = server;
            let mut got = vec![0u8; 64 * 1024];
            server.read_exact(&mut got).expect("read the first 64 KiB");
            socket2::SockRef::from(&server)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
            drop(server); // RST
            got
        });
        let other = TcpSink::start();
        let mut e = builder(b).build().expect("engine");
        let id = e.register_tcp(client).expect("register");
        let ok = e.register_tcp(other.connect()).expect("register");
        let mut sent = Vec::new();
        for i in 0..64u64 {
            let d = payload(i, 64 * 1024);
            sent.extend_from_slice(&d);
            e.send(id, Bytes::from(d)).expect("send");
        }
        let status = expect_dead_peer(e.flush(id), id, &format!("{ctx} flush"));
        let got = reader.join().expect("reader");
        assert_prefix(&got, &sent, &ctx);
        assert!(
            e.stats().failed(status) > 0,
            "{ctx}: the failed writes are counted under {status:?}"
        );
        assert_eq!(e.pending_writes(), 0, "{ctx}: every write is terminal");
        assert_eq!(e.queued_bytes(id).unwrap(), 0, "{ctx}: queue released");
        // Poisoned: fails fast, same status, no new system calls.
        let before = e.stats().kernel_transitions;
        let s2 = expect_dead_peer(
            e.send(id, Bytes::from_static(b"late")).map_err(Error::from),
            id,
            &format!("{ctx} send after reset"),
        );
        let s3 = expect_dead_peer(e.flush(id), id, &format!("{ctx} flush after reset"));
        assert_eq!((s2, s3), (status, status), "{ctx}: same status");
        assert_eq!(
            e.stats().kernel_transitions,
            before,
            "{ctx}: a poisoned socket fails without a system call"
        );
        // The other socket still works.
        e.send(ok, Bytes::from_static(b"still fine"))
            .expect("send on the healthy socket");
        e.flush(ok).expect("flush the healthy socket");
        // close() of the poisoned socket reports the error but still removes it.
        expect_dead_peer(e.close(id), id, &format!("{ctx} close"));
        assert!(matches!(e.flush(id), Err(Error::UnknownSocket(_))));
        drop(e.close(ok).expect("close"));
        assert_eq!(other.finish(), b"still fine", "{ctx}: healthy socket");
    }
}

/// SIGPIPE with its default disposition (the Rust runtime ignores it, so a child restores
/// SIG_DFL): sends that hit EPIPE must not kill the process, because every send carries
/// MSG_NOSIGNAL (item 7, invariant 8). A control child shows the check can fail: a plain write()
/// to the same kind of socket is killed by signal 13.
#[test]
fn peer_close_no_sigpipe() {
    if is_child() {
        // SAFETY: signal() with SIG_DFL installs no handler code; nothing else in this
        // single-test child process depends on SIGPIPE being ignored.
        let prev = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(prev, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL)");
        if std::env::var_os("VOLLEY_SIGPIPE_CONTROL").is_some() {
            let (client, _server) = tcp_pair();
            client.shutdown(Shutdown::Write).expect("shutdown");
            let buf = [0u8; 16];
            // SAFETY: writes 16 bytes from a live stack buffer to a socket this process owns.
            let rc = unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&client),
                    buf.as_ptr().cast(),
                    buf.len(),
                )
            };
            panic!("the control write returned {rc} instead of raising SIGPIPE");
        }
        child_sigpipe_sends();
        return;
    }
    let out = run_child("peer_close_no_sigpipe", &[]);
    assert_child_passed(&out, "engine sends under SIG_DFL");
    let out = run_child("peer_close_no_sigpipe", &[("VOLLEY_SIGPIPE_CONTROL", "1")]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "control: a write without MSG_NOSIGNAL should die of SIGPIPE under SIG_DFL ({})",
        out.status
    );
}

fn child_sigpipe_sends() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        // Our own SHUT_WR: every send now gets EPIPE from the kernel, deterministically.
        {
            let (client, _server) = tcp_pair();
            let handle = client.try_clone().expect("dup");
            let mut e = builder(b).build().expect("engine");
            let id = e.register_tcp(client).expect("register");
            handle.shutdown(Shutdown::Write).expect("shutdown");
            e.send(id, Bytes::from_static(b"after shutdown"))
                .expect("queued");
            let st = expect_dead_peer(e.flush(id), id, &format!("{ctx} SHUT_WR"));
            assert_eq!(st, Status::BrokenPipe, "{ctx}: EPIPE after SHUT_WR");
            assert!(
                e.stats().sqes >= 1,
                "{ctx}: the send reached the kernel (it must have, to get EPIPE)"
            );
        }
        // The peer closes: the first send draws an RST, a later one gets EPIPE.
        {
            let (client, server) = tcp_pair();
            drop(server);
            let mut e = builder(b).build().expect("engine");
            let id = e.register_tcp(client).expect("register");
            let mut result = Ok(Default::default());
            for i in 0..200u64 {
                let sent = e.send(id, Bytes::from(payload(i, 1000)));
                result = sent.map_err(Error::from).and_then(|()| e.flush(id));
                if result.is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let st = expect_dead_peer(result, id, &format!("{ctx} peer close"));
            eprintln!("{ctx}: peer close surfaced as {st:?}");
            let again = expect_dead_peer(
                e.send(id, Bytes::from_static(b"x")).map_err(Error::from),
                id,
                &format!("{ctx} send after close"),
            );
            assert_eq!(again, st, "{ctx}: poisoned with the same status");
        }
    }
}

/// A peer that stops reading: the queue fills to its limit and `send` reports backpressure, a
/// flush times out (with the writes still queued), memory stays bounded; when the peer reads
/// again everything arrives exactly (items 29, 31; invariants 4, 6).
#[test]
fn stopped_reader_backpressure_then_recovers() {
    const LIMIT: usize = 256 * 1024;
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let (sink, gate) = TcpSink::start_gated(Some(4096));
        let mut e = Engine::builder()
            .backend(b)
            .flush_timeout(Duration::from_millis(200))
            .max_queued_bytes_per_socket(LIMIT)
            .build()
            .expect("engine");
        let s = sink.connect();
        set_sndbuf(&s, 4096);
        let id = e.register_tcp(s).expect("register");
        let mut sent = Vec::new();
        let mut refused = None;
        for i in 0..1000u64 {
            let d = payload(i, 16 * 1024);
            match e.send(id, Bytes::from(d.clone())) {
                Ok(()) => sent.extend_from_slice(&d),
                Err(err) => {
                    assert_eq!(
                        err.clone().into_inner(),
                        d,
                        "{ctx}: the refused buffer comes back"
                    );
                    refused = Some(err.into_parts().0);
                    break;
                }
            }
            e.submit().expect("submit");
            assert!(e.queued_bytes(id).unwrap() <= LIMIT, "{ctx}: bounded");
        }
        match refused {
            Some(Error::Backpressure { socket, limit, max }) => {
                assert_eq!(socket, id, "{ctx}");
                assert_eq!(limit, volley::Limit::QueuedBytesPerSocket, "{ctx}");
                assert_eq!(max, LIMIT, "{ctx}");
            }
            other => panic!("{ctx}: expected backpressure from a stopped reader, got {other:?}"),
        }
        let pending = e.pending_writes();
        match e.flush(id) {
            Err(Error::FlushTimeout { socket }) => {
                assert_eq!(socket, Some(id), "{ctx}: the timeout names the socket")
            }
            other => {
                panic!("{ctx}: expected FlushTimeout while the peer is stopped, got {other:?}")
            }
        }
        assert!(
            matches!(e.flush_all(), Err(Error::FlushTimeout { socket: None })),
            "{ctx}: flush_all times out too"
        );
        assert!(
            e.pending_writes() > 0 && e.pending_writes() <= pending,
            "{ctx}: writes stay queued after a timeout"
        );
        // The peer reads again.
        gate.open();
        let guard = Instant::now() + HANG_GUARD;
        let mut tally = (0u64, 0u64);
        loop {
            match e.flush(id) {
                Ok(r) => {
                    tally.0 += r.writes;
                    tally.1 += r.bytes;
                    break;
                }
                Err(Error::FlushTimeout { .. }) if Instant::now() < guard => {}
                Err(err) => panic!("{ctx}: flush after the peer resumed: {err}"),
            }
        }
        assert_eq!(tally.1, sent.len() as u64, "{ctx}: reported bytes");
        let d = payload(5000, 1000);
        e.send(id, Bytes::from(d.clone()))
            .expect("send after recovery");
        sent.extend_from_slice(&d);
        e.flush(id).expect("flush after recovery");
        drop(e.close(id).expect("close"));
        assert_bytes_eq(&sink.finish(), &sent, &ctx);
    }
}

/// Many sockets with data on a tiny ring (SQ of `ring_entries`, CQ of twice that, in-flight ops
/// clamped to the CQ size), slow or fast readers: no completion is lost, every byte arrives on
/// every socket (items 25, 26). On epoll the ring size is moot; the same traffic must still work.
fn many_sockets_tiny_ring(b: Backend, ring_entries: u32, sockets: usize, slow: bool, ctx: &str) {
    let sinks: Vec<TcpSink> = (0..sockets)
        .map(|_| {
            if slow {
                TcpSink::start_with(Some(4096), Duration::from_millis(1))
            } else {
                TcpSink::start()
            }
        })
        .collect();
    let mut e = builder(b)
        .ring_entries(ring_entries)
        .build()
        .expect("engine");
    let ids: Vec<_> = sinks
        .iter()
        .map(|s| {
            let c = s.connect();
            if slow {
                set_sndbuf(&c, 4096);
            }
            e.register_tcp(c).expect("register")
        })
        .collect();
    let mut sent = vec![Vec::new(); sockets];
    let sizes = random_sizes(u64::from(ring_entries), 40 * sockets, 8 * 1024);
    let mut writes = 0u64;
    for (i, len) in sizes.into_iter().enumerate() {
        let k = i % sockets;
        let d = payload(i as u64, len);
        sent[k].extend_from_slice(&d);
        e.send(ids[k], Bytes::from(d)).expect("send");
        writes += 1;
        if i % 97 == 0 {
            e.submit().expect("submit");
        }
    }
    let r = e
        .flush_all()
        .and_then(volley::FlushAllReport::into_result)
        .unwrap_or_else(|err| panic!("{ctx}: flush_all: {err}"));
    let total: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(r.writes, writes, "{ctx}: writes");
    assert_eq!(r.bytes, total as u64, "{ctx}: bytes");
    assert_eq!(e.stats().writes_failed, 0, "{ctx}: no failures");
    eprintln!(
        "{ctx}: {} sends, {} transitions, {} short",
        e.stats().sqes,
        e.stats().kernel_transitions,
        e.stats().short_sends
    );
    for id in ids {
        drop(e.close(id).expect("close"));
    }
    for (k, s) in sinks.into_iter().enumerate() {
        assert_bytes_eq(&s.finish(), &sent[k], &format!("{ctx} socket {k}"));
    }
}

/// ring_entries(4): CQ of 8, 32 slow sockets keep many ops in flight at once.
#[test]
fn tiny_ring_many_ops_in_flight_no_lost_completion() {
    for b in BACKENDS {
        many_sockets_tiny_ring(b, 4, 32, true, &format!("{b:?} ring 4"));
    }
}

/// ring_entries(2): the SQ fills after two pushes; 32 sockets' sends must all go out.
#[test]
fn sq_full_with_two_entry_ring() {
    for b in BACKENDS {
        many_sockets_tiny_ring(b, 2, 32, false, &format!("{b:?} ring 2"));
    }
}

/// Dropping the engine with writes queued and in flight to a slow reader: no crash, no hang, no
/// use after free (the `.ci/run` valgrind step runs this test), and the peer got a prefix of the
/// stream, then EOF (item 30, invariant 1). Kept small for valgrind.
#[test]
fn drop_engine_with_writes_in_flight() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let sink = TcpSink::start_with(Some(4096), Duration::from_millis(2));
        let mut e = builder(b).build().expect("engine");
        let s = sink.connect();
        set_sndbuf(&s, 4096);
        let id = e.register_tcp(s).expect("register");
        let mut sent = Vec::new();
        for i in 0..32u64 {
            let d = payload(i, 4096);
            sent.extend_from_slice(&d);
            e.send(id, Bytes::from(d)).expect("send");
        }
        e.submit().expect("submit");
        e.submit().expect("submit");
        assert!(
            e.pending_writes() > 0,
            "{ctx}: writes are still pending when the engine is dropped"
        );
        drop(e);
        let got = sink.finish();
        assert_prefix(&got, &sent, &ctx);
        assert!(
            got.len() < sent.len(),
            "{ctx}: the drop cut the stream short ({} of {})",
            got.len(),
            sent.len()
        );
    }
}

/// abort(id) with writes in flight: the kernel ops are cancelled and waited for, queued writes
/// fail as Cancelled, the peer sees a prefix then EOF, the id is dead, and the engine keeps
/// working for its other sockets (items 9, 30).
#[test]
fn abort_with_writes_in_flight() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let sink = TcpSink::start_with(Some(4096), Duration::from_millis(2));
        let other = TcpSink::start();
        let mut e = builder(b).build().expect("engine");
        let s = sink.connect();
        set_sndbuf(&s, 4096);
        let id = e.register_tcp(s).expect("register");
        let ok = e.register_tcp(other.connect()).expect("register");
        let mut sent = Vec::new();
        for i in 0..64u64 {
            let d = payload(i, 8192);
            sent.extend_from_slice(&d);
            e.send(id, Bytes::from(d)).expect("send");
        }
        e.send(ok, Bytes::from_static(b"other ")).expect("send");
        e.submit().expect("submit");
        assert!(e.queued_bytes(id).unwrap() > 0, "{ctx}: still queued");
        e.abort(id)
            .unwrap_or_else(|err| panic!("{ctx}: abort: {err}"));
        assert!(
            e.stats().failed(Status::Cancelled) > 0,
            "{ctx}: aborted writes count as cancelled"
        );
        assert!(
            matches!(
                e.send(id, Bytes::from_static(b"x")).map_err(Error::from),
                Err(Error::UnknownSocket(_))
            ),
            "{ctx}: the id is dead"
        );
        e.send(ok, Bytes::from_static(b"socket")).expect("send");
        let r = e
            .flush_all()
            .and_then(volley::FlushAllReport::into_result)
            .expect("flush_all");
        assert_eq!(r.failed, 0, "{ctx}: the aborted socket's report is gone");
        assert_eq!(e.pending_writes(), 0, "{ctx}: nothing pending");
        drop(e.close(ok).expect("close"));
        let got = sink.finish();
        assert_prefix(&got, &sent, &ctx);
        assert!(got.len() < sent.len(), "{ctx}: the abort cut the stream");
        assert_eq!(other.finish(), b"other socket", "{ctx}: other socket");
    }
}

/// io_uring refused by a seccomp filter (EPERM as under Docker's default profile, ENOSYS as on an
/// old kernel), in a child: Auto falls back to epoll and says why, a TCP send works byte-exact;
/// asking for io_uring explicitly is an error that says why (item 34).
#[test]
fn seccomp_denied_io_uring_falls_back_to_epoll() {
    if is_child() {
        let errno: i32 = std::env::var("VOLLEY_SECCOMP_ERRNO")
            .expect("VOLLEY_SECCOMP_ERRNO")
            .parse()
            .expect("errno");
        child_seccomp(errno);
        return;
    }
    for (errno, name) in [(libc::EPERM, "EPERM"), (libc::ENOSYS, "ENOSYS")] {
        let out = run_child(
            "seccomp_denied_io_uring_falls_back_to_epoll",
            &[("VOLLEY_SECCOMP_ERRNO", &errno.to_string())],
        );
        assert_child_passed(&out, &format!("seccomp {name}"));
    }
}

fn child_seccomp(errno: i32) {
    seccomp::deny_io_uring(errno).expect("install the seccomp filter");
    let (name, hint) = if errno == libc::EPERM {
        ("EPERM", "seccomp")
    } else {
        ("ENOSYS", "ENOSYS")
    };
    // Auto: falls back, with the reason.
    let sink = TcpSink::start();
    let mut e = builder(Backend::Auto).build().expect("Auto builds");
    assert_eq!(e.backend(), BackendKind::Epoll, "{name}: Auto fell back");
    let reason = e.fallback_reason().expect("a fallback reason").to_string();
    assert!(
        reason.contains(name) && reason.contains(hint),
        "{name}: reason {reason:?} says why"
    );
    let id = e.register_tcp(sink.connect()).expect("register");
    let mut sent = Vec::new();
    for (i, len) in random_sizes(errno as u64, 300, 4096)
        .into_iter()
        .enumerate()
    {
        let d = payload(i as u64, len);
        sent.extend_from_slice(&d);
        e.send(id, Bytes::from(d)).expect("send");
    }
    let r = e.flush(id).expect("flush");
    assert_eq!(r.writes, 300, "{name}: writes");
    drop(e.close(id).expect("close"));
    assert_bytes_eq(&sink.finish(), &sent, &format!("{name} Auto→epoll"));
    // Explicit io_uring: an error that says why, not a silent fallback.
    match Engine::builder().backend(Backend::Uring).build() {
        Err(Error::UringUnavailable { reason }) => {
            assert!(reason.contains(name), "{name}: reason {reason:?}");
            let msg = Error::UringUnavailable {
                reason: reason.clone(),
            }
            .to_string();
            assert!(msg.contains("io_uring"), "{name}: message {msg:?}");
        }
        Err(other) => panic!("{name}: expected UringUnavailable, got {other}"),
        Ok(e) => panic!(
            "{name}: io_uring built under the filter ({:?})",
            e.backend()
        ),
    }
    // The environment override is an explicit request too.
    // (VOLLEY_BACKEND is read only when the builder is not told.)
    std::env::set_var("VOLLEY_BACKEND", "uring");
    assert!(
        matches!(
            Engine::builder().build(),
            Err(Error::UringUnavailable { .. })
        ),
        "{name}: VOLLEY_BACKEND=uring under the filter is an error"
    );
    std::env::remove_var("VOLLEY_BACKEND");
    // Epoll, asked for, works and reports no fallback.
    let e = builder(Backend::Epoll).build().expect("epoll");
    assert_eq!(e.fallback_reason(), None, "{name}: no fallback when asked");
}

per_backend!(abort_of_one_registration_of_a_dup_spares_the_other);

/// Issue #11 item 5: two registrations of one TCP connection (`try_clone`, a `dup`), both with
/// writes in flight to a slow reader. Aborting one cancels its own ops only (io_uring: by
/// `user_data`, never by file, which would hit the other registration's ops on the same file):
/// the other's writes all complete, none cancelled, and its bytes reach the peer.
fn abort_of_one_registration_of_a_dup_spares_the_other(b: Backend) {
    let ctx = format!("{b:?}");
    let sink = TcpSink::start_with(Some(4096), Duration::from_millis(1));
    let s = sink.connect();
    set_sndbuf(&s, 4096);
    let dup = s.try_clone().expect("dup");
    let mut e = builder(b).build().expect("engine");
    let a = e.register_tcp(s).expect("register a");
    let other = e.register_tcp(dup).expect("register the dup");
    for i in 0..32u64 {
        e.send(a, Bytes::from(payload(i, 8192))).expect("send a");
    }
    e.submit().expect("submit");
    let mut theirs = 0;
    for i in 0..16u64 {
        let d = payload(100 + i, 8192);
        theirs += d.len();
        e.send(other, Bytes::from(d)).expect("send other");
    }
    e.submit().expect("submit");
    e.abort(a)
        .unwrap_or_else(|err| panic!("{ctx}: abort: {err}"));
    let r = e
        .flush(other)
        .unwrap_or_else(|err| panic!("{ctx}: the other registration's flush: {err}"));
    assert_eq!((r.writes, r.failed), (16, 0), "{ctx}: {r:?}");
    assert_eq!(r.bytes, theirs as u64, "{ctx}");
    drop(e.close(other).expect("close"));
    let got = sink.finish();
    assert!(got.len() >= theirs, "{ctx}: {} bytes arrived", got.len());
}

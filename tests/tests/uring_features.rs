//! The io_uring fast paths (`EngineBuilder::uring_*`, `VOLLEY_URING`), one test per switch: an
//! engine with only that switch on (the others explicitly off, so `VOLLEY_URING` cannot change
//! what is tested) moves TCP streams and UDP datagrams byte-exact through the ring, and
//! [`Engine::uring_features`] reports the switch in effect, or refused with a reason. A refused
//! switch prints a `SKIP:` line and skips the traffic checks that need it in effect
//! (`VOLLEY_REQUIRE_URING_FEATURES=1` makes it a failure instead).
//!
//! Then what each switch promises beyond "it works": `single_issuer` refuses another thread
//! (`EEXIST`) without losing the batch, `register_ring_fd` survives a move to another thread and
//! a drop there, the taskrun modes deliver completions to non-blocking steps, the file table is
//! reused across socket churn and never keeps a closed socket open, and `VOLLEY_URING` reaches
//! the engine.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use bytes::Bytes;
use volley::{Backend, Engine, EngineBuilder, Error, SocketId, UringFeatures};
use volley_tests::*;

/// A builder on io_uring with every fast path off except `name`.
fn only(name: &str) -> EngineBuilder {
    let b = builder(Backend::Uring)
        .uring_single_issuer(false)
        .uring_defer_taskrun(false)
        .uring_coop_taskrun(false)
        .uring_register_ring_fd(false)
        .uring_register_files(false)
        .uring_no_sqarray(false);
    match name {
        "single_issuer" => b.uring_single_issuer(true),
        "defer_taskrun" => b.uring_defer_taskrun(true),
        "coop_taskrun" => b.uring_coop_taskrun(true),
        "register_ring_fd" => b.uring_register_ring_fd(true),
        "register_files" => b.uring_register_files(true),
        "no_sqarray" => b.uring_no_sqarray(true),
        _ => panic!("unknown fast path {name}"),
    }
}

/// Whether `name` is in effect. Checks the report: in effect, or refused with a reason (a SKIP
/// line, or a panic under `VOLLEY_REQUIRE_URING_FEATURES=1`), never both or neither; and nothing
/// in effect that was not asked for (`defer_taskrun` brings `single_issuer`).
fn in_effect(e: &Engine, name: &str, ctx: &str) -> bool {
    let f = e.uring_features();
    let implied: &[&str] = if name == "defer_taskrun" {
        &["defer_taskrun", "single_issuer"]
    } else {
        &[name]
    };
    for n in &f.enabled {
        assert!(
            implied.contains(n),
            "{ctx}: {n} in effect, not asked for: {f:?}"
        );
    }
    if f.is_enabled(name) {
        assert!(
            f.refused_reason(name).is_none(),
            "{ctx}: {name} both in effect and refused: {f:?}"
        );
        return true;
    }
    let why = f
        .refused_reason(name)
        .unwrap_or_else(|| panic!("{ctx}: {name} neither in effect nor refused: {f:?}"));
    assert!(!why.is_empty(), "{ctx}: {name} refused without a reason");
    if std::env::var("VOLLEY_REQUIRE_URING_FEATURES").is_ok_and(|v| v == "1") {
        panic!("{ctx}: {name} refused (VOLLEY_REQUIRE_URING_FEATURES=1): {why}");
    }
    eprintln!("SKIP: {ctx}: {name} refused by this kernel ({why}); traffic checked without it");
    false
}

/// `len` random bytes.
fn random(seed: u64, len: usize) -> Bytes {
    Bytes::from(payload(seed, len))
}

/// Three TCP streams with 300 writes each (up to 16 KiB, so some are queued by reference and
/// the streams have several ops in flight together: the ring, not the lone-op direct send), one
/// `flush_all`, three rounds; then 400 datagrams on a connected UDP socket (runs of equal sizes
/// for GSO), flushed; every socket closed, so each sink sees EOF (a file table that kept a
/// socket open would hang it). Byte-exact on every socket.
fn traffic(e: &mut Engine, ctx: &str) {
    let sinks: Vec<TcpSink> = (0..3).map(|_| TcpSink::start()).collect();
    let ids: Vec<SocketId> = sinks
        .iter()
        .map(|s| e.register_tcp(s.connect()).expect("register tcp"))
        .collect();
    let mut sent: Vec<Vec<u8>> = vec![Vec::new(); ids.len()];
    for round in 0..3u64 {
        for (k, &id) in ids.iter().enumerate() {
            let seed = round * 16 + k as u64;
            let sizes = random_sizes(seed, 300, 16 * 1024);
            let data = random(seed, sizes.iter().sum());
            sent[k].extend_from_slice(&data);
            for w in cut(&data, &sizes) {
                e.send(id, w).expect("send");
            }
        }
        let all = e.flush_all().expect("flush_all");
        assert!(all.errors().is_empty(), "{ctx}: {all:?}");
    }
    for id in ids {
        let (_, fd) = e.close(id).expect("close tcp");
        drop(fd);
    }
    for (k, s) in sinks.into_iter().enumerate() {
        assert_bytes_eq(&s.finish(), &sent[k], &format!("{ctx} stream {k}"));
    }

    let sink = DgramSink::start("127.0.0.1:0", 400, Duration::from_secs(5));
    let id = e
        .register_udp(udp_connected(sink.addr))
        .expect("register udp");
    let dgrams: Vec<Bytes> = (0..400u64)
        .map(|i| dgram(0xd6 << 32 | i, if i % 50 == 49 { 333 } else { 1200 }))
        .collect();
    for d in &dgrams {
        e.send(id, d.clone()).expect("send datagram");
    }
    let r = e.flush(id).expect("flush udp");
    assert_eq!((r.writes, r.failed), (400, 0), "{ctx}: {r:?}");
    let (_, fd) = e.close(id).expect("close udp");
    drop(fd);
    assert_same_datagrams(&sink.finish(), &dgrams, &format!("{ctx} datagrams"));
}

/// The per-switch test: build with only `name` on, check the report, move the traffic.
fn one_switch(name: &str) {
    let ctx = format!("uring {name}");
    let mut e = only(name).build().expect("engine");
    assert_eq!(e.backend(), volley::BackendKind::Uring, "{ctx}");
    in_effect(&e, name, &ctx);
    traffic(&mut e, &ctx);
}

#[test]
fn single_issuer() {
    one_switch("single_issuer");
}

#[test]
fn defer_taskrun() {
    one_switch("defer_taskrun");
}

#[test]
fn coop_taskrun() {
    one_switch("coop_taskrun");
}

#[test]
fn register_ring_fd() {
    one_switch("register_ring_fd");
}

#[test]
fn register_files() {
    one_switch("register_files");
}

#[test]
fn no_sqarray() {
    one_switch("no_sqarray");
}

/// Every switch on at once (the combination the ablation's "all" column runs).
#[test]
fn all_switches_together() {
    let ctx = "uring all fast paths";
    let mut e = builder(Backend::Uring)
        .uring_single_issuer(true)
        .uring_defer_taskrun(true)
        .uring_coop_taskrun(true)
        .uring_register_ring_fd(true)
        .uring_register_files(true)
        .uring_no_sqarray(true)
        .build()
        .expect("engine");
    let f = e.uring_features().clone();
    for name in UringFeatures::SWITCHES {
        assert!(
            f.is_enabled(name) != f.refused_reason(name).is_some(),
            "{ctx}: {name}: {f:?}"
        );
    }
    traffic(&mut e, ctx);
}

/// Two TCP streams registered on `e`, each with `data[k]` queued in writes of `write` bytes
/// (several ops, so a flush needs the ring); their sinks and ids.
fn two_streams(e: &mut Engine, data: &[Bytes; 2], write: usize) -> (Vec<TcpSink>, Vec<SocketId>) {
    let sinks = vec![TcpSink::start(), TcpSink::start()];
    let ids: Vec<SocketId> = sinks
        .iter()
        .map(|s| e.register_tcp(s.connect()).expect("register"))
        .collect();
    for (id, d) in ids.iter().zip(data) {
        for w in cut(d, &vec![write; d.len() / write]) {
            e.send(*id, w).expect("send");
        }
    }
    (sinks, ids)
}

/// `single_issuer`: the ring belongs to the building thread. Moved to another thread, an engine
/// whose batch needs the ring (two sockets, so not the lone-op direct send) fails its flush with
/// `Error::Io` carrying `EEXIST`; nothing is lost: back on its thread the same batch completes,
/// byte-exact.
#[test]
fn single_issuer_refuses_another_thread() {
    let ctx = "uring single_issuer, other thread";
    let mut e = only("single_issuer").build().expect("engine");
    if !in_effect(&e, "single_issuer", ctx) {
        return;
    }
    let data = [random(0x51, 100_000), random(0x52, 100_000)];
    let (sinks, ids) = two_streams(&mut e, &data, 50_000);
    let (mut e, r) = std::thread::spawn(move || {
        let r = e.flush_all();
        (e, r)
    })
    .join()
    .expect("other thread");
    match r {
        Err(err @ Error::Io { .. }) => {
            assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{ctx}: {err}");
            assert!(err.to_string().contains("SINGLE_ISSUER"), "{ctx}: {err}");
        }
        other => panic!("{ctx}: expected EEXIST from the other thread, got {other:?}"),
    }
    let all = e
        .flush_all()
        .expect("flush_all back on the building thread");
    assert!(all.errors().is_empty(), "{ctx}: {all:?}");
    for id in ids {
        let (_, fd) = e.close(id).expect("close");
        drop(fd);
    }
    for (s, d) in sinks.into_iter().zip(&data) {
        assert_bytes_eq(&s.finish(), d, ctx);
    }
}

/// `register_ring_fd`: the index is the building thread's. Moved to another thread the engine
/// enters by its descriptor there, flushes, closes one socket, and is dropped there with the
/// other still registered; both peers see every byte and EOF. Then 40 engines in turn on this
/// thread each get the fast path (a thread holds 16 registered rings: each drop gave its slot
/// back), and of 20 held at once, those beyond the 16 slots (one still held for the engine
/// dropped elsewhere) are refused with the reason and still move data.
#[test]
fn register_ring_fd_moves_and_drops_elsewhere() {
    let ctx = "uring register_ring_fd, other thread";
    let mut e = only("register_ring_fd").build().expect("engine");
    if !in_effect(&e, "register_ring_fd", ctx) {
        return;
    }
    let data = [random(0x61, 300_000), random(0x62, 300_000)];
    let (sinks, ids) = two_streams(&mut e, &data, 100_000);
    std::thread::spawn(move || {
        let all = e.flush_all().expect("flush_all on another thread");
        assert!(all.errors().is_empty(), "{all:?}");
        let (_, fd) = e.close(ids[0]).expect("close");
        drop(fd);
        drop(e);
    })
    .join()
    .expect("other thread");
    for (s, d) in sinks.into_iter().zip(&data) {
        assert_bytes_eq(&s.finish(), d, ctx);
    }
    for i in 0..40 {
        let e = only("register_ring_fd").build().expect("engine");
        assert!(
            e.uring_features().is_enabled("register_ring_fd"),
            "{ctx}: engine {i}: {:?}",
            e.uring_features()
        );
    }
    // Held at once, 20 engines overflow the thread's 16 slots: the rest are refused, with the
    // reason, and work without it.
    let mut held: Vec<Engine> = (0..20)
        .map(|_| only("register_ring_fd").build().expect("engine"))
        .collect();
    let on = held
        .iter()
        .filter(|e| e.uring_features().is_enabled("register_ring_fd"))
        .count();
    // 16 slots, one still taken by the first engine: dropped on the other thread, it could
    // not unregister from this thread's table, which keeps it until this thread exits.
    assert_eq!(on, 15, "{ctx}: a thread holds 16 registered rings");
    let last = held.last_mut().expect("20 engines");
    let why = last
        .uring_features()
        .refused_reason("register_ring_fd")
        .unwrap_or_else(|| panic!("{ctx}: the 20th: {:?}", last.uring_features()))
        .to_string();
    assert!(why.contains("16"), "{ctx}: {why}");
    traffic(last, &format!("{ctx}, refused"));
}

/// The taskrun modes hold completion work until the engine enters with `GETEVENTS`: a caller
/// that only ever calls `try_flush` (never the blocking flush, never `poll`) must still see
/// every completion. A slow reader makes the sends wait in the kernel (poll armed), so their
/// completions arrive as deferred work.
fn nonblocking_steps_reap(name: &str) {
    let ctx = format!("uring {name}, try_flush only");
    let mut e = only(name)
        .max_queued_bytes_per_socket(8 << 20)
        .build()
        .expect("engine");
    if !in_effect(&e, name, &ctx) {
        return;
    }
    let sink = TcpSink::start_with(Some(16 * 1024), Duration::from_micros(50));
    let s = sink.connect();
    set_sndbuf(&s, 16 * 1024);
    let id = e.register_tcp(s).expect("register");
    let neighbour = TcpSink::start();
    let nid = e.register_tcp(neighbour.connect()).expect("register");
    let data = random(0x7a, 2 << 20);
    let sizes = random_sizes(0x7a, 2000, 2048);
    let total: usize = sizes.iter().sum();
    let data = data.slice(..total);
    for w in cut(&data, &sizes) {
        e.send(id, w).expect("send");
    }
    let small = random(0x7b, 4096);
    e.send(nid, small.clone()).expect("send neighbour");
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        if let Some(r) = e.try_flush(id).expect("try_flush") {
            break r;
        }
        assert!(Instant::now() < deadline, "{ctx}: not done after 30 s");
        std::thread::sleep(Duration::from_micros(200));
    };
    assert_eq!(
        (r.writes, r.bytes, r.failed),
        (2000, total as u64, 0),
        "{ctx}: {r:?}"
    );
    let n = loop {
        if let Some(r) = e.try_flush(nid).expect("try_flush neighbour") {
            break r;
        }
        assert!(Instant::now() < deadline, "{ctx}: neighbour not done");
        std::thread::sleep(Duration::from_micros(200));
    };
    assert_eq!((n.writes, n.bytes), (1, 4096), "{ctx}: {n:?}");
    for id in [id, nid] {
        let (_, fd) = e.close(id).expect("close");
        drop(fd);
    }
    assert_bytes_eq(&sink.finish(), &data, &ctx);
    assert_bytes_eq(&neighbour.finish(), &small, &ctx);
}

#[test]
fn coop_taskrun_nonblocking_steps_reap() {
    nonblocking_steps_reap("coop_taskrun");
}

#[test]
fn defer_taskrun_nonblocking_steps_reap() {
    nonblocking_steps_reap("defer_taskrun");
}

/// `register_files`: 300 sockets registered and closed in waves of 30 (table indices reused),
/// each with data; every peer sees its bytes and EOF. A UDP socket among them too.
#[test]
fn register_files_churn() {
    let ctx = "uring register_files churn";
    let mut e = only("register_files").build().expect("engine");
    if !in_effect(&e, "register_files", ctx) {
        return;
    }
    for wave in 0..10u64 {
        let sinks: Vec<TcpSink> = (0..30).map(|_| TcpSink::start()).collect();
        let mut ids = Vec::new();
        let mut sent = Vec::new();
        for (k, s) in sinks.iter().enumerate() {
            let id = e.register_tcp(s.connect()).expect("register");
            let d = random(wave << 8 | k as u64, 5000 + k * 100);
            for w in cut(&d, &[1000, d.len() - 1000]) {
                e.send(id, w).expect("send");
            }
            ids.push(id);
            sent.push(d);
        }
        let udp_sink = DgramSink::start("127.0.0.1:0", 20, Duration::from_secs(5));
        let uid = e
            .register_udp(UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .expect("register udp");
        let dgrams: Vec<Bytes> = (0..20).map(|i| dgram(wave << 16 | i, 700)).collect();
        for d in &dgrams {
            e.send_to(uid, d.clone(), udp_sink.addr).expect("send_to");
        }
        let all = e.flush_all().expect("flush_all");
        assert!(all.errors().is_empty(), "{ctx}: {all:?}");
        for id in ids.into_iter().chain([uid]) {
            let (_, fd) = e.close(id).expect("close");
            drop(fd);
        }
        for (k, (s, d)) in sinks.into_iter().zip(&sent).enumerate() {
            assert_bytes_eq(&s.finish(), d, &format!("{ctx} wave {wave} socket {k}"));
        }
        assert_same_datagrams(&udp_sink.finish(), &dgrams, &format!("{ctx} wave {wave}"));
    }
}

/// `n` sockets registered at once, one write each, flushed one by one (so a stalled neighbour
/// does not hold them), closed; each sink gets its bytes and EOF.
fn many_sockets(e: &mut Engine, n: usize, seed: u64, ctx: &str) {
    let sinks: Vec<TcpSink> = (0..n).map(|_| TcpSink::start()).collect();
    let mut ids = Vec::new();
    let mut sent = Vec::new();
    for (k, s) in sinks.iter().enumerate() {
        let id = e.register_tcp(s.connect()).expect("register");
        let d = random(seed << 16 | k as u64, 2000 + k);
        e.send(id, d.clone()).expect("send");
        ids.push(id);
        sent.push(d);
    }
    for &id in &ids {
        let r = e.flush(id).expect("flush");
        assert_eq!((r.writes, r.failed), (1, 0), "{ctx}: {r:?}");
    }
    for id in ids {
        let (_, fd) = e.close(id).expect("close");
        drop(fd);
    }
    for (k, (s, d)) in sinks.into_iter().zip(&sent).enumerate() {
        assert_bytes_eq(&s.finish(), d, &format!("{ctx}, socket {k} of {n}"));
    }
}

/// `register_files`: the table starts small and doubles to take higher socket indices, but
/// only while nothing is in flight. A stalled socket keeps an op in flight while 100 more
/// sockets register (those past the first table go by their descriptors); then, idle, 300
/// sockets at once (the table grows). Every socket's bytes arrive whole, with EOF.
#[test]
fn register_files_table_grows() {
    let ctx = "uring register_files growth";
    let mut e = only("register_files").build().expect("engine");
    if !in_effect(&e, "register_files", ctx) {
        return;
    }
    let (stalled, gate) = TcpSink::start_gated(Some(4096));
    let st = stalled.connect();
    set_sndbuf(&st, 4096);
    let sid = e.register_tcp(st).expect("register stalled");
    let stuck = random(0x99, 256 * 1024);
    e.send(sid, stuck.clone()).expect("send stalled");
    e.submit().expect("submit");
    assert!(e.queued_bytes(sid).expect("queued") > 0, "{ctx}: stuck");
    many_sockets(&mut e, 100, 1, &format!("{ctx}, op in flight"));
    gate.open();
    let r = e.flush(sid).expect("flush stalled");
    assert_eq!((r.writes, r.failed), (1, 0), "{ctx}: {r:?}");
    let (_, fd) = e.close(sid).expect("close stalled");
    drop(fd);
    assert_bytes_eq(&stalled.finish(), &stuck, ctx);
    many_sockets(&mut e, 300, 2, &format!("{ctx}, idle"));
}

/// `VOLLEY_URING` reaches the engine (a child process with `VOLLEY_URING=none,coop_taskrun`),
/// an explicit setter wins over it, and an unknown entry is an error naming it.
#[test]
fn env_var_sets_the_defaults() {
    if is_child() {
        let mode = std::env::var("VOLLEY_URING").expect("VOLLEY_URING in the child");
        let built = Engine::builder().backend(Backend::Uring).build();
        if mode.contains("bogus") {
            let err = built.expect_err("an unknown entry is an error");
            assert!(err.to_string().contains("bogus"), "{err}");
            return;
        }
        let e = built.expect("engine");
        let f = e.uring_features();
        assert!(
            f.is_enabled("coop_taskrun") || f.refused_reason("coop_taskrun").is_some(),
            "{f:?}"
        );
        assert_eq!(
            f.enabled.iter().filter(|n| **n != "coop_taskrun").count(),
            0,
            "{f:?}"
        );
        let e = Engine::builder()
            .backend(Backend::Uring)
            .uring_no_sqarray(true)
            .uring_coop_taskrun(false)
            .build()
            .expect("engine");
        let f = e.uring_features();
        assert!(!f.is_enabled("coop_taskrun"), "the setter wins: {f:?}");
        assert!(
            f.is_enabled("no_sqarray") || f.refused_reason("no_sqarray").is_some(),
            "{f:?}"
        );
        return;
    }
    for env in ["none,coop_taskrun", "coop_taskrun,bogus"] {
        let out = run_child("env_var_sets_the_defaults", &[("VOLLEY_URING", env)]);
        assert_child_passed(&out, &format!("VOLLEY_URING={env}"));
    }
}

/// Issue #11 item 7: the kernel features the engine uses without being asked are probed and
/// recorded, and each degraded path works. `VOLLEY_URING_WITHOUT` makes the engine treat
/// `IORING_FEAT_EXT_ARG` (5.11) and `IORING_OP_SEND` (5.6) as missing, as on an older kernel:
/// timed waits then `poll(2)` the ring descriptor and single buffers go as `SENDMSG`. A stream
/// still arrives byte-exact, and a flush on a stalled peer times out when it should (neither at
/// once nor never). In a child: the variable is read when the engine is built.
#[test]
fn without_ext_arg_and_op_send_the_engine_degrades() {
    let test = "without_ext_arg_and_op_send_the_engine_degrades";
    if !is_child() {
        let full = Engine::builder()
            .backend(Backend::Uring)
            .build()
            .expect("engine");
        let f = full.uring_features();
        for name in ["feat_nodrop", "feat_ext_arg", "op_send"] {
            assert!(
                f.has_kernel(name) != f.kernel_missing.iter().any(|(n, _)| *n == name),
                "{name}: {f:?}"
            );
        }
        let out = run_child(test, &[("VOLLEY_URING_WITHOUT", "feat_ext_arg,op_send")]);
        assert_child_passed(&out, test);
        return;
    }
    let timeout = Duration::from_millis(200);
    let mut e = Engine::builder()
        .backend(Backend::Uring)
        .flush_timeout(timeout)
        .build()
        .expect("engine");
    let f = e.uring_features().clone();
    for name in ["feat_ext_arg", "op_send"] {
        assert!(!f.has_kernel(name), "{name}: {f:?}");
        let (_, why) = f
            .kernel_missing
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} not reported missing: {f:?}"));
        assert!(why.contains("VOLLEY_URING_WITHOUT"), "{why}");
    }
    // Byte-exact through SENDMSG for single buffers.
    let sink = TcpSink::start();
    let id = e.register_tcp(sink.connect()).expect("register");
    let data = Bytes::from(payload(7, 1 << 20));
    for part in cut(&data, &[1, 100, 4096, 65_536, 200_000, 778_843]) {
        e.send(id, part).expect("send");
    }
    drop(e.close(id).expect("close"));
    assert_bytes_eq(&sink.finish(), &data, test);
    // A timed wait without EXT_ARG: the flush of a stalled peer times out on time.
    let (stalled, gate) = TcpSink::start_gated(Some(4096));
    let s = stalled.connect();
    set_sndbuf(&s, 4096);
    let id = e.register_tcp(s).expect("register");
    let big = Bytes::from(payload(8, 4 << 20));
    e.send(id, big.clone()).expect("send");
    let t0 = Instant::now();
    let r = e.flush(id);
    let took = t0.elapsed();
    assert!(matches!(r, Err(Error::FlushTimeout { .. })), "{r:?}");
    assert!(
        took >= timeout - Duration::from_millis(5) && took < Duration::from_secs(2),
        "{took:?}"
    );
    gate.open();
    let mut done = false;
    for _ in 0..200 {
        if e.flush(id).is_ok() {
            done = true;
            break;
        }
    }
    assert!(done, "the stalled peer's flush never ended");
    drop(e.close(id).expect("close"));
    assert_bytes_eq(&stalled.finish(), &big, test);
}

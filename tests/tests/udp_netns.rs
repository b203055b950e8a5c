//! UDP GSO failure paths that loopback cannot produce, inside a pair of network namespaces joined
//! by a veth pair that each test creates and removes itself (FAILURES.md items 13, 14, 17):
//!
//! - `ethtool -K veth0 tx off`: without TX checksum offload the kernel refuses every GSO send with
//!   `EIO` (`udp_send_skb`: `skb->ip_summed != CHECKSUM_PARTIAL`); the engine must turn GSO off for
//!   that socket and resend the group as single datagrams, all of which arrive.
//! - `mtu 1280` and 1400-byte segments: the kernel refuses the GSO send (a segment larger than the
//!   path MTU); the engine must re-split and end, never loop.
//! - a `tbf` qdisc on `veth0` (`tc`, from iproute2): a burst overflows it and the kernel drops at
//!   enqueue; with `IP_RECVERR` each drop must end as `NoBufferSpace` (FAILURES.md item 12).
//!
//! Needs root, `ip` (iproute2) and, for the first, `ethtool`. Where one is missing or a namespace
//! cannot be made, the test prints a `SKIP:` line with the reason and passes, unless
//! `VOLLEY_REQUIRE_NETNS=1` makes that a failure. `.ci/run` installs `ethtool iproute2`.
//!
//! Namespaces are `vl-a-<pid>-<n>` / `vl-b-<pid>-<n>` with addresses in `10.199.<n>.0/30` that
//! exist only inside them; the sockets are made by a thread that joined a namespace with `setns`
//! (a socket stays in the namespace it was made in), so the test itself runs in the host namespace
//! and its traffic never leaves the pair.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use volley::{Bytes, Status};
use volley_tests::tools::{find_tool, run, wait_oper_up, within_netns};
use volley_tests::*;

const IDLE: Duration = Duration::from_millis(1500);

/// A namespace pair joined by `veth0` (in `a`, 10.199.n.1) — `veth1` (in `b`, 10.199.n.2). Dropping
/// it deletes both namespaces, and with them the veth pair.
#[derive(Debug)]
struct NetnsPair {
    a: String,
    b: String,
    subnet: u8,
}

impl NetnsPair {
    fn a_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 199, self.subnet, 1)
    }

    fn b_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 199, self.subnet, 2)
    }

    /// Creates the pair; `mtu` for both veth ends; `tx_off` runs `ethtool -K veth0 tx off` in `a`.
    fn create(subnet: u8, mtu: Option<u32>, tx_off: bool) -> Result<NetnsPair, String> {
        if find_tool("ip").is_none() {
            return Err("`ip` (iproute2) is not installed".into());
        }
        if tx_off && find_tool("ethtool").is_none() {
            return Err("`ethtool` is not installed".into());
        }
        let pid = std::process::id();
        let pair = NetnsPair {
            a: format!("vl-a-{pid}-{subnet}"),
            b: format!("vl-b-{pid}-{subnet}"),
            subnet,
        };
        // Leftovers of a killed run with the same pid would make `add` fail.
        let _ = run("ip", &["netns", "del", &pair.a]);
        let _ = run("ip", &["netns", "del", &pair.b]);
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        let mac_a = format!("02:c7:{subnet:02x}:00:00:01");
        let mac_b = format!("02:c7:{subnet:02x}:00:00:02");
        let (ip_a, ip_b) = (pair.a_ip().to_string(), pair.b_ip().to_string());
        run("ip", &["netns", "add", a])?;
        run("ip", &["netns", "add", b])?;
        let (cidr_a, cidr_b) = (format!("{ip_a}/30"), format!("{ip_b}/30"));
        #[rustfmt::skip]
        let steps: [&[&str]; 5] = [
            &["-n", a, "link", "add", "veth0", "address", &mac_a, "type", "veth",
              "peer", "name", "veth1", "address", &mac_b, "netns", b],
            &["-n", a, "addr", "add", &cidr_a, "dev", "veth0"],
            &["-n", b, "addr", "add", &cidr_b, "dev", "veth1"],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
        ];
        for s in &steps {
            run("ip", s)?;
        }
        if let Some(mtu) = mtu {
            let m = mtu.to_string();
            run("ip", &["-n", a, "link", "set", "veth0", "mtu", &m])?;
            run("ip", &["-n", b, "link", "set", "veth1", "mtu", &m])?;
        }
        run("ip", &["-n", a, "link", "set", "veth0", "up"])?;
        run("ip", &["-n", b, "link", "set", "veth1", "up"])?;
        // Static neighbours: no ARP round trip, so a burst sent before resolution is not dropped
        // from the neighbour queue (unres_qlen_bytes).
        #[rustfmt::skip]
        run("ip", &["-n", a, "neigh", "replace", &ip_b, "lladdr", &mac_b, "dev", "veth0", "nud", "permanent"])?;
        #[rustfmt::skip]
        run("ip", &["-n", b, "neigh", "replace", &ip_a, "lladdr", &mac_a, "dev", "veth1", "nud", "permanent"])?;
        if tx_off {
            run(
                "ip",
                &["netns", "exec", a, "ethtool", "-K", "veth0", "tx", "off"],
            )?;
        }
        // Until linkwatch has activated the device (operstate UP), its qdisc is noop and every
        // packet is silently dropped; that can take up to a second after `link set up`.
        for (n, dev) in [(a, "veth0"), (b, "veth1")] {
            wait_oper_up(n, dev)?;
        }
        Ok(pair)
    }

    /// Runs `f` on a thread that joined namespace `ns` (sockets it makes live there).
    fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        within_netns(ns, f)
    }

    /// A datagram sink bound in `b`.
    fn sink(&self, count: usize) -> DgramSink {
        let ip = self.b_ip();
        let sock = NetnsPair::within(&self.b, move || {
            UdpSocket::bind((ip, 0)).expect("bind in b")
        });
        DgramSink::start_socket(sock, count, IDLE)
    }

    /// A UDP socket in `a` connected to `peer` (in `b`).
    fn sender(&self, peer: SocketAddr) -> UdpSocket {
        NetnsPair::within(&self.a, move || udp_connected(peer))
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
fn netns_or_skip(test: &str, subnet: u8, mtu: Option<u32>, tx_off: bool) -> Option<NetnsPair> {
    match NetnsPair::create(subnet, mtu, tx_off) {
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

fn batch(tag: u64, sizes: &[usize]) -> Vec<Bytes> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| dgram(tag << 32 | i as u64, n))
        .collect()
}

fn rep(n: usize, s: usize) -> impl Iterator<Item = usize> {
    std::iter::repeat_n(s, n)
}

/// FAILURES.md items 14 and 17 over a veth without TX checksum offload (`ethtool -K veth0 tx off`).
///
/// Kernels before 6.x refuse every GSO send there with `EIO` (`udp_send_skb`:
/// `skb->ip_summed != CHECKSUM_PARTIAL`); newer ones (6.18 here) checksum the segments in software
/// and accept it. The test takes either, but checks the engine is right for what happened: after a
/// refusal GSO is off for the socket and every datagram was resent alone and arrived; after an
/// acceptance GSO is still on and the groups arrived. A second case adds a zero UDP checksum
/// (`SO_NO_CHECK`), which makes every kernel refuse GSO (`EINVAL`), so the fallback is always
/// exercised on the veth path.
#[test]
fn gso_refused_on_veth_falls_back_to_single_datagrams() {
    let test = "gso_refused_on_veth_falls_back_to_single_datagrams";
    let Some(ns) = netns_or_skip(test, 1, None, true) else {
        return;
    };
    for b in BACKENDS {
        for no_check in [false, true] {
            let ctx = format!(
                "{b:?} veth tx off{}",
                if no_check { " + SO_NO_CHECK" } else { "" }
            );
            // 4 GSO groups, all in flight together on io_uring: 64 x 1000, 64 x 1000,
            // 20 x 1200 + 700, 3 x 100 (the 5 goes alone).
            let sizes: Vec<usize> = rep(128, 1000)
                .chain(rep(20, 1200))
                .chain([700, 5])
                .chain(rep(3, 100))
                .collect();
            let first = batch(1, &sizes);
            let second = batch(2, &sizes);
            let sink = ns.sink(first.len() + second.len());
            let mut e = udp_engine(b, true);
            if !e.gso_enabled() {
                eprintln!("SKIP: {test} ({b:?}): the kernel has no UDP GSO");
                continue;
            }
            let tx = ns.sender(sink.addr);
            if no_check {
                refuse_gso(&tx);
            }
            let id = e.register_udp(tx).unwrap();
            for d in &first {
                e.send(id, d.clone()).unwrap();
            }
            let r = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            let st = e.stats().clone();
            assert_eq!(
                (r.writes, r.failed),
                (first.len() as u64, 0),
                "{ctx}: every datagram must go (resent alone if its group was refused): {:?}",
                r.failures_by_status().collect::<Vec<_>>()
            );
            let refused = st.gso_fallbacks > 0;
            eprintln!(
                "{ctx}: GSO {} (gso_sends {}, gso_fallbacks {}, ops {})",
                if refused {
                    "refused: fell back"
                } else {
                    "accepted"
                },
                st.gso_sends,
                st.gso_fallbacks,
                st.sqes
            );
            if no_check {
                // io_uring: the 4 groups are in flight together, each refused once. epoll: the
                // sendmmsg stops at the first refused group; GSO goes off and the rest are
                // planned as single datagrams.
                let fallbacks = if e.backend() == volley::BackendKind::Uring {
                    4
                } else {
                    1
                };
                assert_eq!(
                    st.gso_fallbacks, fallbacks,
                    "{ctx}: each refused group falls back once"
                );
            }
            if refused {
                assert_eq!(
                    st.gso_sends, 0,
                    "{ctx}: a GSO send succeeded after a refusal"
                );
                assert!(
                    !e.socket_gso(id).unwrap(),
                    "{ctx}: GSO still on for the socket"
                );
            } else {
                assert!(
                    st.gso_sends > 0,
                    "{ctx}: no fallback and no GSO send either"
                );
                assert!(
                    e.socket_gso(id).unwrap(),
                    "{ctx}: GSO turned off without a refusal"
                );
            }
            for d in &second {
                e.send(id, d.clone()).unwrap();
            }
            let r2 = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            assert_eq!(
                (r2.writes, r2.failed),
                (second.len() as u64, 0),
                "{ctx}: second batch"
            );
            assert_eq!(
                e.stats().gso_fallbacks,
                st.gso_fallbacks,
                "{ctx}: a new fallback in the second batch"
            );
            if refused {
                assert_eq!(
                    e.stats().sqes - st.sqes,
                    second.len() as u64,
                    "{ctx}: after the fallback, one op per datagram"
                );
            }
            let all: Vec<Bytes> = first.iter().chain(&second).cloned().collect();
            assert_same_datagrams(&sink.finish(), &all, &ctx);
        }
    }
}

/// FAILURES.md item 13: a GSO group whose segments exceed the path MTU (veth mtu 1280, 1400-byte
/// segments) is refused by the kernel (`EMSGSIZE` since Linux 6.2's "udp: gso: do not drop small
/// packets when PMTU reduces"; `EINVAL` before, which also turns GSO off for the socket). The engine
/// re-splits the group and ends; it never loops. What the single 1400-byte datagrams do then
/// depends on path MTU discovery, and the test asserts exactly that:
/// - default (`IP_PMTUDISC_WANT`, `net.ipv4.ip_no_pmtu_disc = 0`): a datagram larger than the MTU
///   goes without DF and the kernel fragments it locally, so each arrives whole (reassembled);
/// - `IP_PMTUDISC_DO` (DF, no local fragmentation): each fails alone with `MessageTooLong`.
///
/// The datagrams of the same batch that fit the MTU (a 6 x 1000 group, 1200, 1252) arrive either way.
#[test]
fn gso_segment_above_mtu_resplits_and_ends() {
    let test = "gso_segment_above_mtu_resplits_and_ends";
    let Some(ns) = netns_or_skip(test, 2, Some(1280), false) else {
        return;
    };
    for b in BACKENDS {
        for df in [false, true] {
            let ctx = format!(
                "{b:?} mtu 1280 {}",
                if df {
                    "IP_PMTUDISC_DO"
                } else {
                    "default PMTU discovery"
                }
            );
            let big = batch(1, &rep(8, 1400).collect::<Vec<_>>());
            let small = batch(2, &rep(6, 1000).chain([1200, 1252]).collect::<Vec<_>>());
            let sent: Vec<Bytes> = big.iter().chain(&small).cloned().collect();
            let want: Vec<Bytes> = if df { small.clone() } else { sent.clone() };
            let sink = ns.sink(want.len());
            let mut e = udp_engine(b, true);
            if !e.gso_enabled() {
                eprintln!("SKIP: {test} ({b:?}): the kernel has no UDP GSO");
                continue;
            }
            let sock = ns.sender(sink.addr);
            if df {
                setsockopt_int(
                    &sock,
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_DO,
                );
            }
            let id = e.register_udp(sock).unwrap();
            for d in &sent {
                e.send(id, d.clone()).unwrap();
            }
            let r = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            let st = e.stats().clone();
            eprintln!(
                "{ctx}: writes {} failed {:?}; gso_sends {} gso_fallbacks {} ops {} socket GSO {}",
                r.writes,
                r.failures_by_status().collect::<Vec<_>>(),
                st.gso_sends,
                st.gso_fallbacks,
                st.sqes,
                e.socket_gso(id).unwrap()
            );
            let too_long = if df { big.len() as u64 } else { 0 };
            assert_eq!(
                (r.writes, r.failed, r.failed_with(Status::MessageTooLong)),
                (want.len() as u64, too_long, too_long),
                "{ctx}: report (writes, failed, too long): {:?}",
                r.failures_by_status().collect::<Vec<_>>()
            );
            assert_eq!(
                st.gso_fallbacks, 1,
                "{ctx}: the 1400-byte group re-splits exactly once"
            );
            // Bounded work: the ops handed to the kernel stay within a small multiple of the
            // datagrams (sendmmsg restarts after each failed datagram on epoll), never a loop.
            assert!(
                st.sqes <= 100,
                "{ctx}: {} ops for {} datagrams",
                st.sqes,
                sent.len()
            );
            assert_same_datagrams(&sink.finish(), &want, &ctx);
        }
    }
}

/// FAILURES.md item 12 on a real kernel: a token-bucket qdisc on `veth0` (1 MB/s, 16 KiB burst
/// and queue) refuses most of a 400-datagram burst at enqueue. With `IP_RECVERR` (the engine's
/// default) a refused datagram is retried after the socket's bounded backoff (1+2+4+8 ms) and
/// then ends as `NoBufferSpace`; flush returns, and the receiver gets exactly the datagrams
/// reported sent. Without it the
/// kernel swallows the `ENOBUFS` (`udp_send_skb`) and reports the drops as sent — the silent loss
/// the default avoids; the test asserts that too, so a kernel that changes it is noticed. With
/// GSO the accounting holds for what the kernel reports, but tbf splits a GSO packet larger than
/// its burst and reports success if any segment was queued, so some drops are invisible to any
/// sender (README, "UDP").
#[test]
fn qdisc_drops_fail_as_no_buffer_space_with_recverr() {
    let test = "qdisc_drops_fail_as_no_buffer_space_with_recverr";
    let Some(ns) = netns_or_skip(test, 3, None, false) else {
        return;
    };
    #[rustfmt::skip]
    let tbf = ["netns", "exec", &ns.a, "tc", "qdisc", "replace", "dev", "veth0", "root",
               "tbf", "rate", "8mbit", "burst", "16kb", "limit", "16kb"];
    if let Err(reason) = run("ip", &tbf) {
        if std::env::var("VOLLEY_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
            panic!("{test}: tbf qdisc required (VOLLEY_REQUIRE_NETNS=1): {reason}");
        }
        eprintln!("SKIP: {test}: {reason}");
        return;
    }
    const N: usize = 400;
    for b in BACKENDS {
        for (gso, recverr) in [(false, true), (false, false), (true, true)] {
            let ctx = format!("{b:?} tbf gso={gso} recverr={recverr}");
            let sent = batch(3, &rep(N, 1200).collect::<Vec<_>>());
            let sink = ns.sink(N);
            let mut e = builder(b).gso(gso).udp_recverr(recverr).build().unwrap();
            let id = e.register_udp(ns.sender(sink.addr)).unwrap();
            for d in &sent {
                e.send(id, d.clone()).unwrap();
            }
            let start = std::time::Instant::now();
            let r = e
                .flush(id)
                .unwrap_or_else(|err| panic!("{ctx}: flush: {err}"));
            let took = start.elapsed();
            let got = sink.finish();
            eprintln!(
                "{ctx}: writes {} failed {:?} in {took:?}; received {}",
                r.writes,
                r.failures_by_status().collect::<Vec<_>>(),
                got.len()
            );
            assert_eq!(r.writes + r.failed, N as u64, "{ctx}: every datagram ends");
            assert_eq!(
                r.failed_with(Status::NoBufferSpace),
                r.failed,
                "{ctx}: only NoBufferSpace failures: {r:?}"
            );
            assert!(took < Duration::from_secs(3), "{ctx}: flush took {took:?}");
            // Whatever arrived was sent, whole and once.
            let mut seen = std::collections::HashSet::new();
            for g in &got {
                assert!(
                    sent.iter().any(|s| s[..] == g[..]),
                    "{ctx}: a datagram that was not sent arrived"
                );
                assert!(seen.insert(g.clone()), "{ctx}: a datagram arrived twice");
            }
            match (gso, recverr) {
                (false, true) => {
                    // The qdisc was in the way: either datagrams ended as NoBufferSpace (io_uring:
                    // all 400 are in flight at once and most exhaust their retries), or the
                    // socket's backoff paced them to the qdisc's rate (epoll: the sendmmsg stops
                    // at the first ENOBUFS and the socket waits): 480 KB at 8 Mbit/s less the
                    // 16 KiB burst and queue take at least 0.44 s.
                    assert!(
                        r.failed > 0 || took >= Duration::from_millis(400),
                        "{ctx}: the qdisc dropped nothing and did not slow the flush?"
                    );
                    assert_eq!(
                        got.len() as u64,
                        r.writes,
                        "{ctx}: received exactly what was reported sent"
                    );
                }
                (false, false) => {
                    assert_eq!(r.failed, 0, "{ctx}: the kernel reported a drop");
                    assert!(
                        (got.len() as u64) < r.writes,
                        "{ctx}: no silent drop without IP_RECVERR (kernel changed?)"
                    );
                }
                _ => assert!(got.len() as u64 <= r.writes, "{ctx}"),
            }
        }
    }
}

per_backend!(route_error_fails_the_datagram_once);

/// Issue #11 item 3: a synchronous `ENETUNREACH` from the route lookup (namespace `a` has no
/// route to 10.1.2.3) is the datagram's own error, not a stale ICMP error: it fails once, after
/// one error-queue read that finds nothing, and the socket goes on. Before the fix the engine
/// resent it 32 times with an error-queue read each time (66 transitions on io_uring).
fn route_error_fails_the_datagram_once(b: volley::Backend) {
    let test = format!("route_error_fails_the_datagram_once::{b:?}");
    let subnet = if b == volley::Backend::Uring { 11 } else { 12 };
    let Some(ns) = netns_or_skip(&test, subnet, None, false) else {
        return;
    };
    let unroutable: SocketAddr = "10.1.2.3:9".parse().unwrap();
    let sink = ns.sink(3);
    let sock = NetnsPair::within(&ns.a, || UdpSocket::bind("0.0.0.0:0").expect("bind in a"));
    let mut e = builder(b).build().unwrap();
    let id = e.register_udp(sock).unwrap();
    e.reset_stats();
    e.send_to(id, dgram(1, 100), unroutable).unwrap();
    let r = e.flush(id).unwrap();
    assert_eq!(
        (
            r.writes,
            r.failed,
            r.failed_with(Status::NetworkUnreachable)
        ),
        (0, 1, 1),
        "{test}: {r:?}"
    );
    let t = e.stats().kernel_transitions;
    assert!(
        t <= 3,
        "{test}: {t} transitions for one unroutable datagram"
    );
    assert_eq!(e.stats().stale_error_resends, 0, "{test}");
    // Mixed with routable ones: each unroutable one fails once, the others arrive.
    let live: Vec<Bytes> = (0..3).map(|i| dgram(10 + i, 200)).collect();
    for d in &live {
        e.send_to(id, dgram(99, 50), unroutable).unwrap();
        e.send_to(id, d.clone(), sink.addr).unwrap();
    }
    let r = e.flush(id).unwrap();
    assert_eq!(
        (r.writes, r.failed_with(Status::NetworkUnreachable)),
        (3, 3),
        "{test}: {r:?}"
    );
    assert!(e.take_peer_errors(id).unwrap().is_empty(), "{test}");
    assert_same_datagrams(&sink.finish(), &live, &test);
}

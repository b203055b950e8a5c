//! The checks: the model (what the user did) against what the simulated kernel observed and
//! what the engine reports. Each panics naming the broken property.
//!
//! After every step ([`check`]):
//! - a stream peer holds a prefix of the concatenation of the accepted writes;
//! - every datagram delivered is an accepted one, whole, to its own destination, at most once;
//! - a resolved barrier stays resolved: no datagram before it is sent again or still in flight;
//! - reports never claim more than happened: writes ended ≤ writes accepted, bytes ≤ bytes
//!   the peer got; over the engine, bytes sent = bytes the peers got, writes ended = writes
//!   accepted − pending, writes sent = datagrams delivered + stream writes the peer got whole;
//! - ops in flight: per socket ≤ `max_in_flight_per_socket`; beyond each socket's first op
//!   (its reservation) fewer than `max_in_flight_ops`; queued bytes within their limits;
//! - ENOBUFS: a datagram sees at most `nobufs_retries + 1` of them, and after each backoff the
//!   socket sends nothing before it ends; an ICMP-class error is resent at most 32 times;
//! - peer errors counted = error-queue entries the kernel handed out.
//!
//! At a call: a refused send hands the same buffer back and says why truly
//! ([`check_send`]); a barrier resolves only once every write before it is terminal
//! ([`check_resolved`]); `flush_all` reports every socket once, with the errors of exactly the
//! failed streams ([`check_flush_all`]); once nothing is pending, each socket's reports add up
//! to exactly what its peer got ([`check_quiescent`]).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::kernel::{PeerLog, SimHandle};
use super::model::{Model, SockModel};
use crate::core::{is_icmp_errno, is_retry, Config};
use crate::error::{Error, Limit, SendError, Status};
use crate::report::FlushAllReport;
use crate::Engine;

const MS: u64 = 1_000_000;

/// The status a stream's kernel log says it is poisoned with: its first fatal result (a
/// zero-copy op's `EOPNOTSUPP`/`EINVAL`/`ENOMEM` is not fatal: the bytes go again, copying).
pub fn kernel_poison(log: &PeerLog) -> Option<Status> {
    log.ops.iter().find_map(|op| match op.res {
        // A zero-copy send refused for zero-copy's sake is sent again by copying.
        Some(r) if op.zerocopy && crate::core::ZC_FALLBACK_ERRNOS.contains(&r.wrapping_neg()) => {
            None
        }
        Some(r) if r < 0 && !is_retry(r.wrapping_neg()) => {
            Some(Status::from_errno(r.wrapping_neg()))
        }
        Some(r) if usize::try_from(r).is_ok_and(|n| n > op.bytes) => {
            Some(Status::from_errno(libc::EIO))
        }
        _ => None,
    })
}

/// The statuses a packet descriptor may be poisoned with: those of its results that say the
/// device is gone (several packets in flight may each get one; the first the engine applied
/// poisons it). Empty: not poisoned.
pub fn packet_poisons(log: &PeerLog) -> Vec<Status> {
    log.ops
        .iter()
        .filter_map(|op| match op.res {
            Some(r) if r < 0 && Status::is_fd_gone(r.wrapping_neg()) => {
                Some(Status::from_errno(r.wrapping_neg()))
            }
            _ => None,
        })
        .collect()
}

/// Stream writes the peer got whole: (surely sent, possibly sent). The difference is empty
/// writes right at the end of what arrived, which an op may or may not have covered yet.
fn stream_sent_bounds(s: &SockModel, received: usize) -> (u64, u64) {
    // A stream's writes end at nondecreasing offsets: those ending by `received` are a prefix
    // (found by binary search: this runs after every step), the empty ones right at its end
    // are its tail.
    let whole = s.writes.partition_point(|w| w.end() <= received);
    let maybe = s.writes[..whole]
        .iter()
        .rev()
        .take_while(|w| w.end() == received)
        .filter(|w| w.data.is_empty())
        .count();
    ((whole - maybe) as u64, whole as u64)
}

fn delivered_bytes(log: &PeerLog) -> usize {
    log.received.len() + log.datagrams.iter().map(|d| d.payload.len()).sum::<usize>()
}

/// What must hold after every step. `cfg` is the engine's (clamped) configuration; `engine` is
/// `None` once it was dropped.
///
/// # Panics
/// On the first property that does not hold.
pub fn check(cfg: &Config, model: &mut Model, engine: Option<&Engine>, k: &SimHandle) {
    let st = k.st();
    let (mut bytes, mut dgrams, mut sent_lo, mut sent_hi, mut taken) = (0usize, 0u64, 0, 0, 0);
    for (i, s) in model.socks.iter_mut().enumerate() {
        let log = st.log(s.reg);
        check_socket(cfg, i, s, log);
        bytes += log.received.len() + s.checked.datagram_bytes;
        dgrams += log.datagrams.len() as u64;
        if s.is_stream() {
            let (lo, hi) = stream_sent_bounds(s, log.received.len());
            sent_lo += lo;
            sent_hi += hi;
        }
        taken += log.errqueue_taken.len() as u64;
        if let Some((target, n)) = s.resolved {
            let below = s.checked.below(target, log);
            assert_eq!(
                below, n,
                "socket {i}: a datagram before a resolved barrier was sent again"
            );
        }
    }
    // A resolved barrier's datagrams are terminal: none is in flight (one pass over the ops in
    // flight, not one per socket).
    if model.socks.iter().any(|s| s.resolved.is_some()) {
        for (reg, op) in st.flights().filter(|(_, op)| !op.stream) {
            for (i, s) in model.socks.iter().enumerate().filter(|(_, s)| s.reg == reg) {
                if let Some((target, _)) = s.resolved {
                    assert!(
                        op.seqs.iter().all(|&q| q >= target),
                        "socket {i}: datagrams {:?} in flight behind a resolved barrier at \
                         {target}",
                        op.seqs
                    );
                }
            }
        }
    }
    let cap = cfg.max_in_flight_ops.max(1);
    assert!(
        st.max_extras < cap,
        "{} ops in flight beyond each socket's first, max_in_flight_ops {cap}",
        st.max_extras
    );
    let Some(engine) = engine else { return };
    let stats = engine.stats();
    let accepted: u64 = model.socks.iter().map(|s| s.writes.len() as u64).sum();
    assert_eq!(
        stats.bytes_sent, bytes as u64,
        "bytes sent != bytes the peers received"
    );
    assert_eq!(
        stats.writes_sent + stats.writes_failed,
        accepted - engine.pending_writes(),
        "writes ended != writes accepted - pending"
    );
    let stream_sent = stats.writes_sent.checked_sub(dgrams).unwrap_or_else(|| {
        panic!(
            "{} writes sent, but {dgrams} datagrams delivered",
            stats.writes_sent
        )
    });
    assert!(
        (sent_lo..=sent_hi).contains(&stream_sent),
        "stream writes sent {stream_sent}, but the peers got {sent_lo}..={sent_hi} whole"
    );
    assert_eq!(
        stats.peer_errors, taken,
        "peer errors != error-queue entries read"
    );
    assert!(
        engine.total_queued_bytes() <= cfg.max_queued_bytes,
        "over max_queued_bytes"
    );
    for s in model.socks.iter().filter(|s| !s.removed) {
        if let Ok(q) = engine.queued_bytes(s.id) {
            assert!(
                q <= cfg.max_queued_bytes_per_socket,
                "over max_queued_bytes_per_socket"
            );
        }
    }
}

fn check_socket(cfg: &Config, i: usize, s: &mut SockModel, log: &PeerLog) {
    assert!(
        log.max_in_flight <= cfg.max_in_flight_per_socket,
        "socket {i}: {} ops in flight, max_in_flight_per_socket {}",
        log.max_in_flight,
        cfg.max_in_flight_per_socket
    );
    // What arrived since the last step: the bytes up to `checked.received` and the first
    // `checked.datagrams` datagrams held then; the peer's log and the accepted writes only grow.
    if s.is_stream() {
        let from = s.checked.received;
        let got = log.received.len();
        assert!(
            got >= from && s.accepted.len() >= got && s.accepted[from..got] == log.received[from..],
            "socket {i}: the stream peer got {got} bytes that are not a prefix of the {} accepted",
            s.accepted.len()
        );
        s.checked.received = got;
    } else {
        let from = s.checked.datagrams;
        assert!(
            log.datagrams.len() >= from,
            "socket {i}: delivered datagrams vanished from the peer's log"
        );
        let seen = &mut s.checked.seen;
        seen.resize(s.writes.len(), false);
        for d in &log.datagrams[from..] {
            let w = usize::try_from(d.seq)
                .ok()
                .and_then(|k| s.writes.get(k))
                .unwrap_or_else(|| panic!("socket {i}: datagram {} was never accepted", d.seq));
            assert!(
                d.payload == w.data && d.dest == w.dest,
                "socket {i}: datagram {} arrived changed or to the wrong destination",
                d.seq
            );
            let k = usize::try_from(d.seq).expect("checked above");
            assert!(!seen[k], "socket {i}: datagram {} delivered twice", d.seq);
            seen[k] = true;
            s.checked.datagram_bytes += d.payload.len();
        }
        s.checked.datagrams = log.datagrams.len();
    }
    let delivered = log.received.len() + s.checked.datagram_bytes;
    let reported = &s.reported;
    assert!(
        reported.ended() <= s.writes.len() as u64,
        "socket {i}: reports end {} writes of {} accepted",
        reported.ended(),
        s.writes.len()
    );
    assert!(
        reported.bytes <= delivered as u64,
        "socket {i}: reports {} bytes, the peer got {delivered}",
        reported.bytes,
    );
    // The retry checks read the op log alone: again only once it changed.
    if !s.is_stream() && s.checked.ops_checked != Some(log.ops_changes) {
        check_retries(cfg, i, log);
        s.checked.ops_checked = Some(log.ops_changes);
    }
}

/// ENOBUFS and ICMP-class results per datagram, from the op log.
fn check_retries(cfg: &Config, i: usize, log: &PeerLog) {
    let mut nobufs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut icmp: BTreeMap<u64, u32> = BTreeMap::new();
    for (n, op) in log.ops.iter().enumerate() {
        let Some(res) = op.res else { continue };
        let errno = res.wrapping_neg();
        if res < 0 && is_icmp_errno(errno) {
            let c = icmp.entry(op.first_seq).or_default();
            *c += 1;
            assert!(
                *c <= 33,
                "socket {i}: datagram {} resent after 32 stale errors",
                op.first_seq
            );
        }
        // Packets fail alone on ENOBUFS, with no backoff.
        if errno != libc::ENOBUFS || op.count != 1 || log.packet {
            continue;
        }
        let c = nobufs.entry(op.first_seq).or_default();
        *c += 1;
        let retries = u32::from(cfg.nobufs_retries);
        assert!(
            *c <= retries + 1,
            "socket {i}: datagram {} got ENOBUFS {} times, nobufs_retries {retries}",
            op.first_seq,
            *c
        );
        if *c > retries {
            continue;
        }
        // Backed off: nothing goes out on the socket before the backoff ends.
        // Ops are logged in issue order, so the first handed to the kernel after this result
        // is the one to look at (the clock never goes back).
        let until = op.done_ns + (MS << (*c - 1));
        let rest = &log.ops[n + 1..];
        let after = rest.partition_point(|o| o.issued_at < op.done_at);
        if let Some(next) = rest[after..].iter().find(|o| !o.not_issued) {
            assert!(
                next.issued_ns >= until,
                "socket {i}: an op at {} ns, inside an ENOBUFS backoff that ends at {until}",
                next.issued_ns
            );
        }
    }
}

/// What the op log poisons socket `s` with (a stream: its first fatal result; a packet
/// descriptor: any result that says the device is gone), looked up again only once the log
/// changed (a send on a socket with thousands of ops scanned them all).
fn poisons(s: &mut SockModel, log: &PeerLog) -> Vec<Status> {
    if let Some((at, p)) = &s.checked.poisons {
        if *at == log.ops_changes {
            return p.clone();
        }
    }
    let p = match s.kind {
        super::kernel::Kind::Stream => kernel_poison(log).into_iter().collect(),
        super::kernel::Kind::Packet => packet_poisons(log),
        super::kernel::Kind::Udp { .. } => Vec::new(),
    };
    s.checked.poisons = Some((log.ops_changes, p.clone()));
    p
}

/// A send call's outcome, given the socket's queued bytes and the engine's before the call.
///
/// # Panics
/// If the send was accepted past a limit, refused without a reason, or the refused buffer is
/// not the one handed in.
pub fn check_send(
    cfg: &Config,
    s: &mut SockModel,
    log: &PeerLog,
    to: bool,
    data: &Bytes,
    before: (Option<usize>, usize),
    result: Result<(), SendError>,
) -> Result<(), Error> {
    let len = data.len();
    let kind_ok = match s.kind {
        super::kernel::Kind::Stream => !to,
        super::kernel::Kind::Udp { peer, .. } => peer.is_some() != to,
        super::kernel::Kind::Packet => !to,
    };
    let poisons = poisons(s, log);
    let (max_per, max_total) = (cfg.max_queued_bytes_per_socket, cfg.max_queued_bytes);
    let (sock_q, total_q) = before;
    let e = match result {
        Ok(()) => {
            assert!(!s.removed, "a send on a removed socket was accepted");
            assert!(kind_ok, "a send of the wrong kind was accepted");
            assert_eq!(
                poisons,
                [],
                "a send on a poisoned stream or packet fd was accepted"
            );
            let q = sock_q.expect("a live socket has a queue");
            assert!(
                q + len <= max_per && total_q + len <= max_total,
                "accepted past a limit"
            );
            return Ok(());
        }
        Err(e) => e,
    };
    let (err, back) = e.into_parts();
    assert!(
        back.as_ptr() == data.as_ptr() && back.len() == len,
        "a refused send did not hand the same buffer back"
    );
    match &err {
        Error::UnknownSocket(_) => {
            assert!(
                s.removed || s.maybe_closing,
                "a live socket refused as unknown: {err}"
            );
        }
        Error::WrongSocketKind { .. } => assert!(!kind_ok, "refused as the wrong kind: {err}"),
        Error::Socket { status, .. } => assert!(
            poisons.contains(status),
            "refused with {status:?}, a fatal error the stream or packet fd never got \
             ({poisons:?})"
        ),
        Error::BufferTooLarge { .. } => {
            assert!(len > max_per.min(max_total), "refused as too large: {err}");
        }
        Error::Backpressure { limit, .. } => match limit {
            Limit::QueuedBytesPerSocket => {
                assert!(sock_q.is_some_and(|q| q + len > max_per), "refused: {err}");
            }
            Limit::QueuedBytesTotal => assert!(total_q + len > max_total, "refused: {err}"),
            Limit::QueuedWritesPerSocket => {
                assert!(
                    cfg.max_queued_writes_per_socket <= s.writes.len(),
                    "refused: {err}"
                );
            }
        },
        _ => panic!("a send refused with {err}"),
    }
    if s.removed {
        assert!(
            matches!(err, Error::UnknownSocket(_)),
            "a removed socket refused with {err}"
        );
    }
    Err(err)
}

/// A barrier of socket `i` covering its first `target` writes resolved (`ok`: without raising
/// the stream's error). Records it in the model.
///
/// # Panics
/// If a write before the barrier is not terminal.
pub fn check_resolved(model: &mut Model, i: usize, target: u64, ok: bool, k: &SimHandle) {
    let st = k.st();
    let s = &model.socks[i];
    let log = st.log(s.reg);
    let t = usize::try_from(target).expect("target fits usize");
    if s.is_stream() {
        if ok && t > 0 {
            let end = s.writes[t - 1].end();
            assert!(
                log.received.len() >= end,
                "socket {i}: barrier resolved at write {t} (byte {end}), the peer has {}",
                log.received.len()
            );
        }
        if ok && !s.reports_lost {
            assert!(
                s.reported.ended() >= target,
                "socket {i}: barrier resolved, writes not ended"
            );
        }
        return;
    }
    for (reg, op) in st.flights() {
        assert!(
            reg != s.reg || op.seqs.iter().all(|&q| q >= target),
            "socket {i}: barrier at {target} resolved with datagrams {:?} in flight",
            op.seqs
        );
    }
    let below = log.datagrams.iter().filter(|d| d.seq < target).count();
    // A raised flush (a poisoned packet fd) took its counts with it.
    assert!(
        s.reports_lost
            || (s.reported.ended() >= target && s.reported.failed >= target - below as u64),
        "socket {i}: barrier at {target} resolved with {below} delivered and {:?} reported",
        s.reported
    );
    drop(st);
    let s = &mut model.socks[i];
    if s.resolved.is_none_or(|(t0, _)| t0 <= target) {
        s.resolved = Some((target, below));
    }
}

/// A `flush_all` report against the model: every live socket once, in socket order, the total
/// their sum, and the errors exactly those of the streams whose report has one and of the
/// poisoned packet descriptors.
///
/// # Panics
/// On any difference.
pub fn check_flush_all(model: &Model, all: &FlushAllReport, engine: &Engine, k: &SimHandle) {
    assert_eq!(
        engine.pending_writes(),
        0,
        "flush_all returned with writes pending"
    );
    let mut live: Vec<_> = model
        .socks
        .iter()
        .filter(|s| !s.removed)
        .map(|s| s.id)
        .collect();
    live.sort_by_key(|id| id.index());
    let got: Vec<_> = all.sockets.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        got, live,
        "flush_all reports other sockets than the live ones"
    );
    let mut total = super::model::Counts::default();
    let mut errors = Vec::new();
    for (id, r) in &all.sockets {
        total.add(&super::model::Counts::of(r));
        let s = model
            .socks
            .iter()
            .find(|s| s.id == *id)
            .expect("listed above");
        if s.is_stream() {
            if let Some(e) = &r.first_error {
                errors.push(e.status());
            }
        }
        if s.kind == super::kernel::Kind::Packet {
            let poisons = packet_poisons(k.st().log(s.reg));
            if !poisons.is_empty() {
                // Which of them poisoned it depends on the order completions were applied.
                let listed = all
                    .errors()
                    .iter()
                    .filter(|e| matches!(e, Error::Socket { socket, .. } if socket == id))
                    .map(Error::status)
                    .collect::<Vec<_>>();
                assert!(
                    matches!(listed[..], [Some(st)] if poisons.contains(&st)),
                    "flush_all lists {listed:?} for a packet fd poisoned with one of {poisons:?}"
                );
                errors.push(listed[0]);
            }
        }
    }
    assert_eq!(
        super::model::Counts::of(&all.total),
        total,
        "flush_all total != the sum"
    );
    let listed: Vec<_> = all.errors().iter().map(Error::status).collect();
    assert_eq!(
        listed, errors,
        "flush_all errors != the failed streams' errors"
    );
}

/// Once nothing is pending: each socket's reports add up to exactly what its peer got (unless
/// a raised error swallowed a report, or an abort ended the socket without one).
///
/// # Panics
/// On any difference.
pub fn check_quiescent(model: &Model, engine: &Engine, k: &SimHandle) {
    assert_eq!(engine.pending_writes(), 0, "writes pending");
    let st = k.st();
    for (i, s) in model.socks.iter().enumerate() {
        if s.aborted || s.reports_lost || s.maybe_closing {
            continue;
        }
        let log = st.log(s.reg);
        let r = &s.reported;
        let accepted = s.writes.len() as u64;
        assert_eq!(
            r.ended(),
            accepted,
            "socket {i}: reports end {} of {accepted}",
            r.ended()
        );
        assert_eq!(
            r.bytes,
            delivered_bytes(log) as u64,
            "socket {i}: reported bytes"
        );
        if s.is_stream() {
            let (lo, hi) = stream_sent_bounds(s, log.received.len());
            assert!(
                (lo..=hi).contains(&r.writes),
                "socket {i}: {} writes reported sent",
                r.writes
            );
            if r.failed == 0 {
                // The first `checked.received` bytes matched at the last step's check.
                let from = s.checked.received.min(log.received.len());
                assert!(
                    log.received.len() == s.accepted.len()
                        && log.received[from..] == s.accepted[from..],
                    "socket {i}: stream bytes lost"
                );
            }
        } else {
            assert_eq!(
                r.writes,
                log.datagrams.len() as u64,
                "socket {i}: datagrams reported sent"
            );
        }
    }
}

/// What a stale completion must not change: the engine's counters and the kernel's ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<u64>);

/// The engine's and the kernel's state that only real completions change.
pub fn fingerprint(engine: &Engine, k: &SimHandle) -> Fingerprint {
    let s = engine.stats();
    let st = k.st();
    let ops: usize = st.peers().map(|p| p.ops.len()).sum();
    Fingerprint(vec![
        engine.pending_writes(),
        engine.total_queued_bytes() as u64,
        s.bytes_sent,
        s.writes_sent,
        s.writes_failed,
        s.retries,
        s.short_sends,
        s.gso_sends,
        s.gso_fallbacks,
        s.stale_error_resends,
        s.peer_errors,
        st.flights().count() as u64,
        ops as u64,
    ])
}

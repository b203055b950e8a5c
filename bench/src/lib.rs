//! The benchmark methods behind `volley bench` and the criterion benches: every way of sending
//! that the benchmark compares ([`MethodName`]), the scenarios and their verifying receivers
//! ([`scenario`], [`receiver`]), the kernel's count of transitions ([`perf`]) and the harness
//! that runs them side by side ([`run`]).
//!
//! [`run`] runs every method side by side in one process, rounds interleaved, medians
//! reported. Round `r` runs every method once, starting at method `r mod n`, so drift (other
//! load, CPU frequency, page cache) hits all methods alike. Each (scenario, method) has its own
//! sockets and its own verifying receiver thread; the receiver runs outside the timed section,
//! and after every round the harness waits (untimed) for it to confirm that exactly what was
//! sent arrived — a method that lost, reordered or corrupted data is FAILED, not fast.
//!
//! What is timed: the whole send loop of a round (rates), and each batch — the writes a flush
//! covers, plus the flush — for the latency histogram. Transitions are the kernel's own count of
//! `sys_enter` events on the bench thread during the timed section ([`crate::perf`]).
//!
//! Every method has a [`Role`]: one of volley's backends, a peer (another library, or std, used
//! at its best) or a floor (no library, hand-built system calls). Every row carries its ratio to
//! naive, to the scenario's best peer (the fastest peer that ran ok) and to its floor (the
//! fastest floor that ran ok).
//!
//! The criterion benches (`benches/`) build the same methods with [`build`] and time
//! [`Method::batch`] themselves.

mod naive;
pub mod net;
pub mod perf;
mod quinn;
mod raw;
pub mod receiver;
mod report;
pub mod scenario;
mod threads;
pub mod tls;
mod tokio;
mod tokio_uring;
mod volley;
mod volley_tokio;

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::perf::SyscallCounter;
use receiver::Receiver;
pub use scenario::ScenarioName;
use scenario::{Payload, Spec, Workload};

/// Writes a line to stdout and flushes it; a closed pipe is an error, not a panic.
///
/// # Errors
/// The write or flush error.
pub fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// A way of sending that the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodName {
    /// std, one `write`/`send`/`send_to` per buffer.
    Naive,
    /// volley on its epoll backend.
    Epoll,
    /// volley on its io_uring backend.
    Uring,
    /// volley on epoll, driven as an event loop would: `try_flush` + `poll(2)` on the engine's
    /// descriptor instead of the blocking `flush`.
    EpollPoll,
    /// volley on io_uring, driven with `try_flush` + `poll(2)`.
    UringPoll,
    /// volley on epoll through its tokio adapters: `TcpSender::write_all` per buffer and one
    /// `flush().await` per batch; `UdpSender` as a `Sink` for UDP.
    EpollTokio,
    /// volley on io_uring through its tokio adapters.
    UringTokio,
    /// std `BufWriter` (64 KiB) per TCP socket, `write_all` per buffer, flushed per batch (TCP
    /// only).
    Bufwriter,
    /// tokio, one `write_all`/`send`/`send_to` per buffer, current-thread runtime.
    Tokio,
    /// tokio's `BufWriter` (64 KiB) per TCP socket, `write_all` per buffer, flushed per batch
    /// (TCP only).
    TokioBufwriter,
    /// tokio-uring, one owned-buffer future per buffer, joined per batch (TCP buffers up to
    /// 16 KiB: a short write of a larger one cannot be resumed in order).
    TokioUring,
    /// tokio-uring, one `writev` of the whole batch per TCP socket (TCP only).
    TokioUringWritev,
    /// quinn-udp with GSO `Transmit`s (udp-gso only).
    QuinnUdp,
    /// No library: one `sendmsg` per TCP socket per batch over prebuilt iovecs, the TCP floor.
    RawWritev,
    /// No library: one `sendmmsg` per 1024 datagrams over prebuilt headers (UDP), a UDP floor.
    RawSendmmsg,
    /// No library: one hand-built GSO `sendmsg` per group (udp-gso only), a UDP floor.
    RawGso,
}

/// The largest TCP buffer `tokio-uring` (one concurrent write per buffer) is run with: a short
/// write, which a larger buffer often gets, cannot be resumed in order.
const TOKIO_URING_MAX_WRITE: usize = 16 * 1024;

/// What a method is, for the ratios of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One of volley's backends.
    Volley,
    /// Another library (or std) at its best: the fastest of them is the scenario's best peer.
    Peer,
    /// No library, hand-written system calls: the fastest is the scenario's floor.
    Floor,
}

impl Role {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Volley => "volley",
            Role::Peer => "peer",
            Role::Floor => "floor",
        }
    }
}

impl MethodName {
    /// All methods in report order.
    pub const ALL: [MethodName; 16] = [
        MethodName::Naive,
        MethodName::Epoll,
        MethodName::Uring,
        MethodName::EpollPoll,
        MethodName::UringPoll,
        MethodName::EpollTokio,
        MethodName::UringTokio,
        MethodName::Bufwriter,
        MethodName::Tokio,
        MethodName::TokioBufwriter,
        MethodName::TokioUring,
        MethodName::TokioUringWritev,
        MethodName::QuinnUdp,
        MethodName::RawWritev,
        MethodName::RawSendmmsg,
        MethodName::RawGso,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            MethodName::Naive => "naive",
            MethodName::Epoll => "epoll",
            MethodName::Uring => "uring",
            MethodName::EpollPoll => "epoll-poll",
            MethodName::UringPoll => "uring-poll",
            MethodName::EpollTokio => "epoll-tokio",
            MethodName::UringTokio => "uring-tokio",
            MethodName::Bufwriter => "bufwriter",
            MethodName::Tokio => "tokio",
            MethodName::TokioBufwriter => "tokio-bufwriter",
            MethodName::TokioUring => "tokio-uring",
            MethodName::TokioUringWritev => "tokio-uring-writev",
            MethodName::QuinnUdp => "quinn-udp",
            MethodName::RawWritev => "raw-writev",
            MethodName::RawSendmmsg => "raw-sendmmsg",
            MethodName::RawGso => "raw-gso",
        }
    }

    /// Volley, peer or floor.
    pub fn role(self) -> Role {
        match self {
            MethodName::Epoll
            | MethodName::Uring
            | MethodName::EpollPoll
            | MethodName::UringPoll
            | MethodName::EpollTokio
            | MethodName::UringTokio => Role::Volley,
            MethodName::Naive
            | MethodName::Bufwriter
            | MethodName::Tokio
            | MethodName::TokioBufwriter
            | MethodName::TokioUring
            | MethodName::TokioUringWritev
            | MethodName::QuinnUdp => Role::Peer,
            MethodName::RawWritev | MethodName::RawSendmmsg | MethodName::RawGso => Role::Floor,
        }
    }

    /// Why the method does not apply to `spec`, if it does not.
    pub fn not_applicable(self, spec: &Spec) -> Option<String> {
        let what = self.name();
        match self {
            MethodName::Bufwriter
            | MethodName::TokioBufwriter
            | MethodName::TokioUringWritev
            | MethodName::RawWritev
                if !spec.is_tcp() =>
            {
                Some(format!("{what} is TCP only"))
            }
            MethodName::RawSendmmsg if spec.is_tcp() => Some(format!("{what} is UDP only")),
            // Concurrent writes on one stream cannot resume a short write in order, and a lone
            // 64 KiB write is often short.
            MethodName::TokioUring if spec.is_tcp() && spec.msg_size > TOKIO_URING_MAX_WRITE => {
                Some(format!(
                    "{what}'s concurrent per-buffer writes cannot resume a short write in order, \
                     and {} KiB writes are often short (tokio-uring-writev can)",
                    spec.msg_size / 1024
                ))
            }
            MethodName::QuinnUdp | MethodName::RawGso if spec.name != ScenarioName::UdpGso => {
                Some(if spec.is_tcp() {
                    format!("{what} is UDP only")
                } else {
                    format!("{what} is measured on udp-gso only")
                })
            }
            _ => None,
        }
    }
}

/// Options of `volley bench`.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Few short rounds (under a minute in all).
    pub quick: bool,
    /// JSON on stdout instead of tables.
    pub json: bool,
    /// Scenarios to run (empty: all).
    pub scenarios: Vec<ScenarioName>,
    /// Methods to run (empty: all).
    pub methods: Vec<MethodName>,
    /// Timed rounds per method (default 9 quick, 31 full).
    pub rounds: Option<usize>,
    /// Messages per flush for tcp-small and udp-gso.
    pub batch: Option<usize>,
    /// UDP receivers enable `UDP_GRO`: on loopback a GSO send then reaches the receiver as one
    /// buffer instead of being segmented in the sender's softirq — what a NIC with UDP
    /// segmentation offload and a GRO peer give. Off by default.
    pub udp_gro: bool,
    /// Sender threads per method (`--threads`, repeatable; empty: 1): each thread runs its
    /// own copy of the scenario (sockets, receivers, engine), see [`threads`]. Several counts
    /// run side by side, rounds interleaved, for the scaling.
    pub threads: Vec<usize>,
}

/// One method's send loop over its own sockets.
pub trait Method {
    /// Sends one batch of the workload: the writes a flush covers plus the flush (the harness
    /// times it).
    ///
    /// # Errors
    /// The first send error, as text.
    fn batch(&mut self, w: &mut Workload) -> Result<(), String>;

    /// Transitions the method counted itself so far (volley's `Stats::kernel_transitions`),
    /// to cross-check with the kernel's count; `None` for methods that do not count.
    fn own_transitions(&self) -> Option<u64> {
        None
    }
}

/// Records the time since `start` (ns) in `hist`.
#[inline]
fn record(hist: &mut Histogram<u64>, start: Instant) {
    let ns = u64::try_from(start.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    hist.saturating_record(ns);
}

/// Runs `batches` batches of `w` on `method`, recording each one's duration in `hist`, in
/// nanoseconds.
fn timed(
    method: &mut dyn Method,
    w: &mut Workload,
    batches: usize,
    hist: &mut Histogram<u64>,
) -> Result<(), String> {
    for _ in 0..batches {
        let start = Instant::now();
        method.batch(w)?;
        record(hist, start);
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Timing knobs of a run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rounds: usize,
    /// Aim for rounds this long (capped by the scenario's message limit).
    round_target: Duration,
    /// Warm-up (and calibration) runs at least this long per method.
    warm_min: Duration,
}

/// How a row ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every round verified.
    Ok,
    /// The combination does not apply or cannot run here (with why).
    NotApplicable(String),
    /// A send failed or the receiver did not get exactly what was sent.
    Failed(String),
}

/// One timed round of one method.
#[derive(Debug, Clone, Copy)]
struct RoundStat {
    /// When the timed section began.
    start: Instant,
    messages: u64,
    bytes: u64,
    ns: u64,
    transitions: Option<u64>,
    /// The method's own count of its transitions, where it keeps one.
    own_transitions: Option<u64>,
}

/// The sockets, workload and receiver of a method; the method (its sender sockets) drops first.
pub struct Runner {
    /// The method, owning the sender sockets.
    pub method: Box<dyn Method>,
    /// What it sends.
    pub work: Workload,
    /// The verifying receiver of what it sends.
    pub rx: Receiver,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("work", &self.work)
            .field("rx", &self.rx)
            .finish_non_exhaustive()
    }
}

impl RoundStat {
    /// The round of several threads that ran at once: their messages, bytes and transitions
    /// summed over the span from the first start to the last end.
    fn aggregate(stats: &[RoundStat]) -> RoundStat {
        let start = stats.iter().map(|s| s.start).min();
        let end = stats
            .iter()
            .map(|s| s.start + Duration::from_nanos(s.ns))
            .max();
        let sum = |f: fn(&RoundStat) -> Option<u64>| stats.iter().map(f).sum::<Option<u64>>();
        let ns = match (start, end) {
            (Some(a), Some(b)) => u64::try_from((b - a).as_nanos()).unwrap_or(u64::MAX),
            _ => 1,
        };
        RoundStat {
            start: start.unwrap_or_else(Instant::now),
            messages: stats.iter().map(|s| s.messages).sum(),
            bytes: stats.iter().map(|s| s.bytes).sum(),
            ns: ns.max(1),
            transitions: sum(|s| s.transitions),
            own_transitions: sum(|s| s.own_transitions),
        }
    }
}

/// A method's senders: on the bench thread, or on N threads of their own (`--threads`).
enum Lanes {
    One(Runner),
    Many(threads::Group),
}

impl Lanes {
    fn build(
        name: MethodName,
        spec: Spec,
        payload: &Payload,
        threads: usize,
    ) -> Result<Lanes, Outcome> {
        if threads == 1 {
            build(name, spec, payload).map(Lanes::One)
        } else {
            threads::Group::start(name, spec, payload, threads).map(Lanes::Many)
        }
    }

    /// [`run_verified`] on every thread.
    fn run(
        &mut self,
        spec: Spec,
        batches: usize,
        hist: &mut Histogram<u64>,
        counter: Option<&mut SyscallCounter>,
    ) -> Result<RoundStat, String> {
        match self {
            Lanes::One(r) => run_verified(r, spec, batches, hist, counter),
            Lanes::Many(g) => g.run(batches, counter.is_some(), hist),
        }
    }
}

struct Entry {
    name: MethodName,
    threads: usize,
    runner: Option<Lanes>,
    outcome: Outcome,
    rounds: Vec<RoundStat>,
    hist: Histogram<u64>,
    batches_per_round: usize,
}

impl Entry {
    fn fail(&mut self, why: String) {
        self.outcome = Outcome::Failed(why);
        self.runner = None;
    }
}

/// A finished row, also the JSON record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: &'static str,
    /// Method name.
    pub method: &'static str,
    /// "volley", "peer" (another library at its best) or "floor" (no library).
    pub role: &'static str,
    /// Whether the UDP receivers had `UDP_GRO` on (`--udp-gro`; always false for TCP).
    pub udp_gro: bool,
    /// Median over rounds.
    pub messages_per_sec: Option<f64>,
    /// Median over rounds (payload bytes).
    pub bytes_per_sec: Option<f64>,
    /// Median over rounds, counted by the kernel; `None` where it refused the counter.
    pub transitions_per_message: Option<f64>,
    /// The engine's own count of its transitions per message (volley methods), median.
    pub engine_transitions_per_message: Option<f64>,
    /// Batch (flush) latency percentiles over all timed batches, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile, µs.
    pub p99_us: Option<f64>,
    /// 99.9th percentile, µs.
    pub p999_us: Option<f64>,
    /// messages/s ÷ naive's messages/s in the same scenario.
    pub ratio_to_naive: Option<f64>,
    /// The scenario's best peer: the fastest (median messages/s) non-volley library method
    /// that ran ok (naive included).
    pub best_peer: Option<&'static str>,
    /// messages/s ÷ the best peer's messages/s.
    pub ratio_to_best_peer: Option<f64>,
    /// The scenario's floor: the fastest no-library method that ran ok.
    pub floor: Option<&'static str>,
    /// messages/s ÷ the floor's messages/s.
    pub ratio_to_floor: Option<f64>,
    /// Sender threads, each with its own sockets, receivers and engine (`--threads`); the
    /// rates are their sum.
    pub threads: usize,
    /// Whether every round ran and verified.
    pub ok: bool,
    /// "ok", "n/a" or "failed".
    pub status: &'static str,
    /// Why n/a or failed.
    pub error: Option<String>,
    /// Timed rounds that went into the medians.
    pub rounds: usize,
    /// Messages per timed round.
    pub messages_per_round: u64,
    /// Messages per flush.
    pub batch: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Sets up `spec`'s sockets and receiver and builds method `name` on them.
///
/// # Errors
/// [`Outcome::NotApplicable`] where the method does not apply to the scenario or cannot run
/// here (e.g. io_uring unavailable), [`Outcome::Failed`] where setting it up failed.
pub fn build(name: MethodName, spec: Spec, payload: &Payload) -> Result<Runner, Outcome> {
    if let Some(why) = name.not_applicable(&spec) {
        return Err(Outcome::NotApplicable(why));
    }
    let (conns, rx, work) = scenario::setup(spec, payload).map_err(Outcome::Failed)?;
    let method: Box<dyn Method> = match name {
        MethodName::Naive => Box::new(naive::Naive::new(conns)),
        MethodName::Bufwriter => Box::new(naive::Naive::buffered(conns).map_err(Outcome::Failed)?),
        MethodName::Epoll | MethodName::Uring | MethodName::EpollPoll | MethodName::UringPoll => {
            let event_loop = matches!(name, MethodName::EpollPoll | MethodName::UringPoll);
            let backend = if matches!(name, MethodName::Epoll | MethodName::EpollPoll) {
                ::volley::Backend::Epoll
            } else {
                ::volley::Backend::Uring
            };
            Box::new(
                volley::Volley::new(backend, conns, event_loop).map_err(|e| match e {
                    ::volley::Error::UringUnavailable { .. } => {
                        Outcome::NotApplicable(e.to_string())
                    }
                    e => Outcome::Failed(e.to_string()),
                })?,
            )
        }
        MethodName::EpollTokio | MethodName::UringTokio => {
            let backend = if name == MethodName::EpollTokio {
                ::volley::Backend::Epoll
            } else {
                ::volley::Backend::Uring
            };
            Box::new(
                volley_tokio::VolleyTokio::new(backend, conns).map_err(|e| match e {
                    ::volley::Error::UringUnavailable { .. } => {
                        Outcome::NotApplicable(e.to_string())
                    }
                    e => Outcome::Failed(e.to_string()),
                })?,
            )
        }
        MethodName::Tokio => Box::new(tokio::Tokio::new(conns).map_err(Outcome::Failed)?),
        MethodName::TokioBufwriter => {
            Box::new(tokio::Tokio::buffered(conns).map_err(Outcome::Failed)?)
        }
        MethodName::TokioUring | MethodName::TokioUringWritev => {
            let writev = name == MethodName::TokioUringWritev;
            Box::new(tokio_uring::TokioUring::new(conns, writev).map_err(Outcome::NotApplicable)?)
        }
        MethodName::QuinnUdp => {
            let dest = work.dests[0];
            Box::new(quinn::Quinn::new(conns, dest, spec.msg_size).map_err(Outcome::Failed)?)
        }
        MethodName::RawWritev => {
            Box::new(raw::writev::RawWritev::new(conns, payload).map_err(Outcome::Failed)?)
        }
        MethodName::RawSendmmsg => Box::new(
            raw::sendmmsg::RawSendmmsg::new(conns, spec, payload, &work.dests)
                .map_err(Outcome::Failed)?,
        ),
        MethodName::RawGso => {
            Box::new(raw::gso::RawGso::new(conns, spec.msg_size).map_err(Outcome::Failed)?)
        }
    };
    Ok(Runner { method, work, rx })
}

/// Runs `batches` batches and verifies them with the receiver (untimed part included).
fn run_verified(
    r: &mut Runner,
    spec: Spec,
    batches: usize,
    hist: &mut Histogram<u64>,
    counter: Option<&mut SyscallCounter>,
) -> Result<RoundStat, String> {
    let mut counter = counter;
    if let Some(c) = counter.as_deref_mut() {
        c.start().map_err(|e| format!("perf counter: {e}"))?;
    }
    let own_before = r.method.own_transitions();
    let t0 = Instant::now();
    let res = timed(r.method.as_mut(), &mut r.work, batches, hist);
    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let own_transitions = r
        .method
        .own_transitions()
        .zip(own_before)
        .map(|(after, before)| after - before);
    let transitions = match counter {
        Some(c) => Some(c.stop().map_err(|e| format!("perf counter: {e}"))?),
        None => None,
    };
    res?;
    let per_peer = (batches * spec.per_peer) as u64;
    r.rx.expect(spec.peers, per_peer, spec.msg_size as u64);
    r.rx.verify().map_err(|e| format!("verification: {e}"))?;
    let messages = per_peer * spec.peers as u64;
    Ok(RoundStat {
        start: t0,
        messages,
        bytes: messages * spec.msg_size as u64,
        ns: ns.max(1),
        transitions,
        own_transitions,
    })
}

fn run_scenario(
    spec: Spec,
    methods: &[MethodName],
    threads: &[usize],
    plan: Plan,
    counter: &mut Option<SyscallCounter>,
    pb: &ProgressBar,
) -> Vec<Row> {
    let payload = Payload::new(spec.msg_size);
    let max_batches = (spec.max_round_messages / spec.batch_messages()).max(1);
    let mut entries: Vec<Entry> = threads
        .iter()
        .flat_map(|&t| methods.iter().map(move |&name| (t, name)))
        .map(|(threads, name)| {
            let (runner, outcome) = match Lanes::build(name, spec, &payload, threads) {
                Ok(r) => (Some(r), Outcome::Ok),
                Err(o) => (None, o),
            };
            Entry {
                name,
                threads,
                runner,
                outcome,
                rounds: Vec::new(),
                hist: histogram(),
                batches_per_round: 1,
            }
        })
        .collect();

    // Warm up and calibrate: double the batch count until a run takes `warm_min`, then size
    // rounds for `round_target`.
    for e in &mut entries {
        pb.set_message(format!("{} {} warm-up", spec.name.name(), e.name.name()));
        let Some(r) = e.runner.as_mut() else {
            pb.inc(1 + plan.rounds as u64);
            continue;
        };
        let mut scratch = histogram();
        let mut k = 1usize;
        // (nanoseconds, batches) of the last warm-up run.
        let measured = loop {
            match r.run(spec, k, &mut scratch, None) {
                Ok(s) => {
                    if Duration::from_nanos(s.ns) >= plan.warm_min || k >= max_batches {
                        break Some((s.ns, k));
                    }
                    k = (k * 2).min(max_batches);
                }
                Err(why) => {
                    e.fail(format!("warm-up: {why}"));
                    pb.inc(plan.rounds as u64);
                    break None;
                }
            }
        };
        pb.inc(1);
        if let Some((ns, k)) = measured {
            let want = plan.round_target.as_nanos() * k as u128 / u128::from(ns.max(1));
            e.batches_per_round = usize::try_from(want)
                .unwrap_or(max_batches)
                .clamp(1, max_batches);
        }
    }

    let n = entries.len();
    for round in 0..plan.rounds {
        for i in 0..n {
            let e = &mut entries[(round + i) % n];
            let Some(r) = e.runner.as_mut() else {
                continue;
            };
            pb.set_message(format!(
                "{} {} round {}/{}",
                spec.name.name(),
                e.name.name(),
                round + 1,
                plan.rounds
            ));
            match r.run(spec, e.batches_per_round, &mut e.hist, counter.as_mut()) {
                Ok(s) => e.rounds.push(s),
                Err(why) => {
                    let left = plan.rounds - round - 1;
                    e.fail(format!("round {}: {why}", round + 1));
                    pb.inc(left as u64);
                }
            }
            pb.inc(1);
        }
    }

    let mut rows: Vec<Row> = entries.into_iter().map(|e| row(spec, e)).collect();
    // Ratios within one thread count: the entries are grouped by it.
    for group in rows.chunk_by_mut(|a, b| a.threads == b.threads) {
        set_ratios(group);
    }
    rows
}

/// The fastest ok row (median messages/s) that `pick` selects: (method, messages/s).
fn fastest(rows: &[Row], pick: impl Fn(&Row) -> bool) -> Option<(&'static str, f64)> {
    rows.iter()
        .filter(|r| r.ok && pick(r))
        .filter_map(|r| r.messages_per_sec.map(|m| (r.method, m)))
        .filter(|&(_, m)| m > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Sets every row's ratios to naive, the best peer and the floor of its scenario (`rows`).
fn set_ratios(rows: &mut [Row]) {
    let naive = fastest(rows, |r| r.method == MethodName::Naive.name());
    let peer = fastest(rows, |r| r.role == Role::Peer.name());
    let floor = fastest(rows, |r| r.role == Role::Floor.name());
    for r in rows {
        let ratio = |to: Option<(&str, f64)>| match (r.messages_per_sec, to) {
            (Some(m), Some((_, n))) if r.ok => Some(m / n),
            _ => None,
        };
        r.ratio_to_naive = ratio(naive);
        r.ratio_to_best_peer = ratio(peer);
        r.ratio_to_floor = ratio(floor);
        r.best_peer = peer.map(|p| p.0);
        r.floor = floor.map(|f| f.0);
    }
}

fn row(spec: Spec, e: Entry) -> Row {
    let ok = matches!(e.outcome, Outcome::Ok) && !e.rounds.is_empty();
    let (status, error) = match &e.outcome {
        Outcome::Ok if ok => ("ok", None),
        Outcome::Ok => ("failed", Some("no timed round ran".to_string())),
        Outcome::NotApplicable(w) => ("n/a", Some(w.clone())),
        Outcome::Failed(w) => ("failed", Some(w.clone())),
    };
    let per_sec = |f: fn(&RoundStat) -> u64| {
        median(
            e.rounds
                .iter()
                .map(|s| f(s) as f64 * 1e9 / s.ns as f64)
                .collect(),
        )
    };
    // The median per message of a count every round has (`None` if any round lacks it).
    let per_message = |f: fn(&RoundStat) -> Option<u64>| {
        let per: Option<Vec<f64>> = e
            .rounds
            .iter()
            .map(|s| f(s).map(|t| t as f64 / s.messages as f64))
            .collect();
        per.and_then(median)
    };
    let transitions = per_message(|s| s.transitions);
    let own = if ok {
        per_message(|s| s.own_transitions)
    } else {
        None
    };
    let q =
        |p: f64| (ok && !e.hist.is_empty()).then(|| e.hist.value_at_quantile(p) as f64 / 1000.0);
    Row {
        scenario: spec.name.name(),
        method: e.name.name(),
        role: e.name.role().name(),
        udp_gro: spec.udp_gro && !spec.is_tcp(),
        messages_per_sec: if ok { per_sec(|s| s.messages) } else { None },
        bytes_per_sec: if ok { per_sec(|s| s.bytes) } else { None },
        transitions_per_message: if ok { transitions } else { None },
        engine_transitions_per_message: own,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        ratio_to_naive: None,
        best_peer: None,
        ratio_to_best_peer: None,
        floor: None,
        ratio_to_floor: None,
        threads: e.threads,
        ok,
        status,
        error,
        rounds: e.rounds.len(),
        messages_per_round: (e.batches_per_round * spec.batch_messages()) as u64,
        batch: spec.batch_messages(),
    }
}

/// Runs `volley bench`.
///
/// # Errors
/// Only for unusable options or output failures; per-method failures are rows, not errors.
pub fn run(opts: &BenchOpts) -> Result<(), String> {
    let say = |line: &str| crate::say(line).map_err(|e| format!("cannot write to stdout: {e}"));
    if opts.batch == Some(0) {
        return Err("--batch must be at least 1".into());
    }
    let plan = if opts.quick {
        Plan {
            rounds: opts.rounds.unwrap_or(9),
            round_target: Duration::from_millis(40),
            warm_min: Duration::from_millis(10),
        }
    } else {
        Plan {
            rounds: opts.rounds.unwrap_or(31),
            round_target: Duration::from_millis(80),
            warm_min: Duration::from_millis(30),
        }
    };
    if plan.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let threads = if opts.threads.is_empty() {
        vec![1]
    } else {
        dedup(&opts.threads)
    };
    if threads.contains(&0) {
        return Err("--threads must be at least 1".into());
    }
    let mut scenarios = if opts.scenarios.is_empty() {
        ScenarioName::ALL.to_vec()
    } else {
        dedup(&opts.scenarios)
    };
    // tls-small has its own harness (`tls`), run after the others.
    let tls_small = scenarios.contains(&ScenarioName::TlsSmall);
    scenarios.retain(|s| *s != ScenarioName::TlsSmall);
    if scenarios.is_empty() {
        return tls::run(opts.quick, opts.rounds, opts.batch);
    }
    let methods = if opts.methods.is_empty() {
        MethodName::ALL.to_vec()
    } else {
        dedup(&opts.methods)
    };
    let (mut counter, counter_note) = match SyscallCounter::new() {
        Ok(c) => (
            Some(c),
            "kernel-counted (perf raw_syscalls:sys_enter, bench thread)".to_string(),
        ),
        Err(e) => (None, format!("n/a ({e})")),
    };
    let header = report::header(&plan_text(opts, plan, &threads), &counter_note);
    if opts.json {
        eprintln!("{header}");
    } else {
        say(&header)?;
    }

    let total = (scenarios.len() * methods.len() * threads.len() * (plan.rounds + 1)) as u64;
    let pb = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
        {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };

    let mut all = Vec::new();
    for &name in &scenarios {
        let mut spec = Spec::new(name, opts.batch, opts.quick);
        spec.udp_gro = opts.udp_gro;
        let rows = run_scenario(spec, &methods, &threads, plan, &mut counter, &pb);
        if !opts.json {
            pb.suspend(|| say(&format!("\n{}", report::table(spec, plan.rounds, &rows))))?;
            for line in report::scaling(&rows) {
                pb.suspend(|| say(&line))?;
            }
        }
        all.extend(rows);
    }
    pb.finish_and_clear();

    // The targets are set for one sender thread.
    let targets = report::targets(
        &all.iter()
            .filter(|r| r.threads == threads[0])
            .cloned()
            .collect::<Vec<_>>(),
    );
    if opts.json {
        let text = serde_json::to_string_pretty(&all).map_err(|e| format!("json: {e}"))?;
        say(&text)?;
        for line in targets {
            eprintln!("{line}");
        }
    } else {
        if !targets.is_empty() {
            say("")?;
        }
        for line in targets {
            say(&line)?;
        }
    }
    if tls_small {
        tls::run(opts.quick, opts.rounds, opts.batch)?;
    }
    Ok(())
}

fn plan_text(opts: &BenchOpts, plan: Plan, threads: &[usize]) -> String {
    let mut text = format!(
        "{} run: {} timed rounds per method (interleaved, rotating order), ~{} ms per round, medians",
        if opts.quick { "quick" } else { "full" },
        plan.rounds,
        plan.round_target.as_millis()
    );
    if threads != [1] {
        let list: Vec<String> = threads.iter().map(ToString::to_string).collect();
        text.push_str(&format!(
            "\n  threads: {} sender thread(s) per method, each with its own sockets, receivers \
             and engine (a copy of the scenario); rates are the sum over the threads",
            list.join(", ")
        ));
    }
    text
}

fn dedup<T: PartialEq + Copy>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method that applies to a scenario sends two batches that its receiver verifies;
    /// one that does not apply says so. Methods that cannot run here (io_uring disabled) are
    /// skipped.
    #[test]
    fn every_method_verifies_on_every_scenario() {
        for scenario in ScenarioName::ALL {
            let spec = Spec::new(scenario, None, true);
            let payload = Payload::new(spec.msg_size);
            for name in MethodName::ALL {
                let what = format!("{} {}", scenario.name(), name.name());
                let applies = name.not_applicable(&spec).is_none();
                let mut r = match build(name, spec, &payload) {
                    Ok(r) => r,
                    Err(Outcome::NotApplicable(why)) => {
                        assert!(!applies || why.contains("io_uring"), "{what}: {why}");
                        continue;
                    }
                    Err(o) => panic!("{what}: {o:?}"),
                };
                assert!(applies, "{what} built where it does not apply");
                let mut hist = histogram();
                run_verified(&mut r, spec, 2, &mut hist, None)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
        }
    }

    /// `--threads 2`: two threads, each with its own sockets, receivers and (for volley) engine,
    /// send at once, and every thread's receivers verify every byte (datagram) it sent; the
    /// aggregate round counts both threads' messages. On a TCP and a UDP scenario, for the
    /// blocking engine, the tokio adapters and a peer.
    #[test]
    fn two_threads_each_verify_their_own_receivers() {
        for scenario in [ScenarioName::TcpSmall, ScenarioName::UdpFanout] {
            let spec = Spec::new(scenario, None, true);
            let payload = Payload::new(spec.msg_size);
            for name in [MethodName::Epoll, MethodName::UringTokio, MethodName::Naive] {
                let what = format!("{} {} ×2", scenario.name(), name.name());
                let mut lanes = match Lanes::build(name, spec, &payload, 2) {
                    Ok(l) => l,
                    Err(Outcome::NotApplicable(why)) if why.contains("io_uring") => {
                        println!("SKIP: {what}: {why}");
                        continue;
                    }
                    Err(o) => panic!("{what}: {o:?}"),
                };
                assert!(matches!(lanes, Lanes::Many(_)), "{what}: not on threads");
                let mut hist = histogram();
                for round in 0..2 {
                    let s = lanes
                        .run(spec, 3, &mut hist, None)
                        .unwrap_or_else(|e| panic!("{what} round {round}: {e}"));
                    let want = 2 * 3 * spec.batch_messages() as u64;
                    assert_eq!(s.messages, want, "{what}: messages of both threads");
                    assert_eq!(s.bytes, want * spec.msg_size as u64, "{what}: bytes");
                }
                assert_eq!(
                    hist.len(),
                    2 * 2 * 3,
                    "{what}: every batch of both threads timed"
                );
            }
        }
    }

    /// Two threads' rounds: the sums over the span from the first start to the last end.
    #[test]
    fn aggregate_round_spans_first_start_to_last_end() {
        let t = Instant::now();
        let at = |ms: u64, len_ms: u64, m: u64, tr: Option<u64>| RoundStat {
            start: t + Duration::from_millis(ms),
            messages: m,
            bytes: m * 10,
            ns: len_ms * 1_000_000,
            transitions: tr,
            own_transitions: None,
        };
        let s = RoundStat::aggregate(&[at(0, 10, 100, Some(5)), at(2, 10, 50, Some(7))]);
        assert_eq!(s.messages, 150);
        assert_eq!(s.bytes, 1500);
        assert_eq!(s.ns, 12_000_000);
        assert_eq!(s.transitions, Some(12));
        let s = RoundStat::aggregate(&[at(0, 10, 1, Some(5)), at(0, 10, 1, None)]);
        assert_eq!(s.transitions, None, "a thread without a count: no sum");
    }

    fn row(method: MethodName, mps: Option<f64>) -> Row {
        Row {
            scenario: "s",
            method: method.name(),
            role: method.role().name(),
            udp_gro: false,
            messages_per_sec: mps,
            bytes_per_sec: None,
            transitions_per_message: None,
            engine_transitions_per_message: None,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            ratio_to_naive: None,
            best_peer: None,
            ratio_to_best_peer: None,
            floor: None,
            ratio_to_floor: None,
            threads: 1,
            ok: mps.is_some(),
            status: if mps.is_some() { "ok" } else { "failed" },
            error: None,
            rounds: 1,
            messages_per_round: 1,
            batch: 1,
        }
    }

    #[test]
    fn ratios_to_naive_best_peer_and_floor() {
        let mut rows = vec![
            row(MethodName::Naive, Some(100.0)),
            row(MethodName::Uring, Some(1000.0)),
            row(MethodName::Bufwriter, Some(500.0)),
            row(MethodName::Tokio, None),
            row(MethodName::RawWritev, Some(800.0)),
        ];
        set_ratios(&mut rows);
        let uring = &rows[1];
        assert_eq!(uring.best_peer, Some("bufwriter"));
        assert_eq!(uring.floor, Some("raw-writev"));
        assert_eq!(uring.ratio_to_naive, Some(10.0));
        assert_eq!(uring.ratio_to_best_peer, Some(2.0));
        assert_eq!(uring.ratio_to_floor, Some(1.25));
        assert_eq!(
            rows[3].ratio_to_best_peer, None,
            "a failed row has no ratio"
        );
        assert_eq!(rows[2].ratio_to_best_peer, Some(1.0));
    }
}

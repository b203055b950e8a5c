//! Traces: one plain-data [`Step`] per user call through the public [`Engine`] API or per
//! kernel event (a stalled, reset or closed peer, ENOBUFS, time, stale completions), and a
//! [`Runner`] that applies a trace to an engine over the simulated kernel and to the model,
//! and runs the checks after every step. Fuzz targets map their own `Arbitrary` input onto
//! `Step`s; socket and port numbers are taken modulo what exists.

use std::time::Duration;

use super::behaviour::{AllOk, Behaviour, Verdict};
use super::checks;
use super::kernel::{Cancel, Delivered, Idle, Kind, Mode, SimHandle, SimKernel};
use super::model::{dest, Counts, Model};
use crate::core::Config;
use crate::error::{Error, Status};
use crate::{Engine, SocketId};

/// Sockets a trace may register.
pub const MAX_SOCKETS: usize = 12;

/// Ports `send_to` and connected sockets use: `9000 + port % PORTS`.
pub const PORTS: u8 = 8;

/// Driver calls one step may take before the kernel calls it a livelock.
const STEP_BUDGET: u64 = 1_000_000;

/// Errnos a stream reset may carry.
const RESETS: [i32; 4] = [
    libc::ECONNRESET,
    libc::EPIPE,
    libc::ETIMEDOUT,
    libc::ENOTCONN,
];

/// How a run starts.
#[derive(Debug)]
pub struct Setup {
    /// The engine's limits (clamped as `EngineBuilder` clamps them).
    pub cfg: Config,
    /// The completion model.
    pub mode: Mode,
    /// What decides ops nothing else decides.
    pub behaviour: Box<dyn Behaviour>,
    /// Seeds the kernel's choices.
    pub seed: u64,
    /// io_uring: enters an op may take to complete.
    pub latency: u8,
    /// io_uring: completions of one enter in a seeded order.
    pub reorder: bool,
    /// What cancels do.
    pub cancel: Cancel,
    /// Sockets registered before the first step.
    pub sockets: Vec<Kind>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            cfg: Config::default(),
            mode: Mode::Uring,
            behaviour: Box::new(AllOk),
            seed: 1,
            latency: 0,
            reorder: false,
            cancel: Cancel::Cancels,
            sockets: vec![
                Kind::Stream,
                Kind::Udp {
                    peer: None,
                    recverr: true,
                },
            ],
        }
    }
}

/// One step of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Registers a stream (at most [`MAX_SOCKETS`] sockets in all).
    AddStream,
    /// Registers a packet descriptor (at most [`MAX_SOCKETS`] sockets in all).
    AddPacket,
    /// Registers a UDP socket, connected to port `port` or not.
    AddUdp {
        /// Connected (then `send`), else `send_to`.
        connected: bool,
        /// `IP_RECVERR`.
        recverr: bool,
        /// The connected peer's port.
        port: u8,
    },
    /// `Engine::send` of `len` fresh bytes.
    Send {
        /// Socket.
        sock: u8,
        /// Bytes.
        len: u16,
    },
    /// `Engine::send_to` of `len` fresh bytes to port `port`.
    SendTo {
        /// Socket.
        sock: u8,
        /// Port.
        port: u8,
        /// Bytes.
        len: u16,
    },
    /// `Engine::flush`.
    Flush {
        /// Socket.
        sock: u8,
    },
    /// `Engine::try_flush`.
    TryFlush {
        /// Socket.
        sock: u8,
    },
    /// `Engine::flush_all`.
    FlushAll,
    /// `Engine::close`.
    Close {
        /// Socket.
        sock: u8,
    },
    /// `Engine::abort`.
    Abort {
        /// Socket.
        sock: u8,
    },
    /// `Engine::shutdown_write`.
    ShutdownWrite {
        /// Socket.
        sock: u8,
    },
    /// `Engine::submit`.
    Submit,
    /// `Engine::take_peer_errors`.
    TakePeerErrors {
        /// Socket.
        sock: u8,
    },
    /// Sets the flush timeout: `None` none, `Some(0)` zero, `Some(u16::MAX)` `Duration::MAX`,
    /// else milliseconds.
    FlushTimeout {
        /// The timeout.
        ms: Option<u16>,
    },
    /// The socket's peer stops reading.
    Stall {
        /// Socket.
        sock: u8,
    },
    /// The socket's peer reads again.
    Unstall {
        /// Socket.
        sock: u8,
    },
    /// A stream peer resets the connection.
    Reset {
        /// Socket.
        sock: u8,
        /// Picks the errno (ECONNRESET, EPIPE, ETIMEDOUT, ENOTCONN).
        errno: u8,
    },
    /// Port `port` closes: datagrams to it bring ICMP port unreachable back.
    ClosePort {
        /// Port.
        port: u8,
    },
    /// Port `port` opens again.
    OpenPort {
        /// Port.
        port: u8,
    },
    /// The socket's next `count` datagram ops fail with ENOBUFS.
    NoBufs {
        /// Socket.
        sock: u8,
        /// Ops.
        count: u8,
    },
    /// The socket's next op gets `verdict`.
    Verdict {
        /// Socket.
        sock: u8,
        /// The verdict.
        verdict: Verdict,
    },
    /// The clock moves on.
    Tick {
        /// Microseconds.
        us: u32,
    },
    /// Completions for ops not in flight arrive (they must change nothing).
    Stale {
        /// Picks the tokens and events.
        pick: u64,
    },
    /// Drops the engine (ops in flight are cancelled and drained); the trace ends.
    Drop,
}

/// What a call returned, comparable across runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A send was accepted.
    Sent,
    /// A send was refused: the error's status, or the kind of refusal.
    Refused(Refusal),
    /// A flush (or resolved `try_flush`, `close`, `shutdown_write`) reported these counts.
    Report(Counts),
    /// `try_flush` is still pending.
    Pending,
    /// The stream's error was raised.
    Raised(Status),
    /// A flush timed out.
    Timeout,
    /// The socket is unknown (removed).
    Unknown,
    /// The call does not fit the socket.
    WrongKind,
    /// `flush_all`: each socket's counts, and a stream's error, in socket order (which of a UDP
    /// socket's failures came first depends on the order ops completed in, not on the trace).
    All(Vec<(Counts, Option<Status>)>),
    /// `abort` succeeded.
    Aborted,
    /// Peer errors taken: their statuses, in order.
    PeerErrors(Vec<Option<Status>>),
}

/// Why a send was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A poisoned stream's status.
    Status(Status),
    /// A queue limit.
    Backpressure,
    /// Larger than any queue.
    TooLarge,
    /// Removed or closing.
    Unknown,
    /// Wrong call for the socket.
    WrongKind,
}

/// What a finished run observed, comparable across completion models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Every call's outcome, in order.
    pub outcomes: Vec<Outcome>,
    /// Bytes each stream peer received, per registration (empty for UDP).
    pub streams: Vec<Vec<u8>>,
    /// Datagrams each socket delivered, sorted (arrival order may differ), per registration.
    pub datagrams: Vec<Vec<Delivered>>,
    /// Each socket's reports, summed, per registration.
    pub reported: Vec<Counts>,
    /// Registrations aborted while writes were pending: whether such a write went out before
    /// the cancel reached it is a race (an `ENOBUFS` retry or an op the kernel finishes first),
    /// which the two completion models may decide differently — their bytes, datagrams and
    /// reports are not compared.
    pub raced: Vec<bool>,
}

impl Observed {
    /// Counts every failure with any of `from` as one with `into`, in every report (for
    /// statuses whose choice between the completion models is a matter of timing).
    pub fn merge_failures(&mut self, into: Status, from: &[Status]) {
        for o in &mut self.outcomes {
            match o {
                Outcome::Report(c) => c.merge_failures(into, from),
                Outcome::All(all) => {
                    for (c, _) in all {
                        c.merge_failures(into, from);
                    }
                }
                _ => {}
            }
        }
        for c in &mut self.reported {
            c.merge_failures(into, from);
        }
    }

    /// Panics, naming the first difference, unless `self` and `other` are equal.
    ///
    /// # Panics
    /// On a difference.
    pub fn assert_same(&self, other: &Observed, what: &str) {
        if let Some(i) = (0..self.outcomes.len().max(other.outcomes.len()))
            .find(|&i| self.outcomes.get(i) != other.outcomes.get(i))
        {
            panic!(
                "{what}: call {i} differs: {:?} vs {:?}",
                self.outcomes.get(i),
                other.outcomes.get(i)
            );
        }
        let raced = |reg: usize| {
            self.raced.get(reg).copied().unwrap_or(false)
                || other.raced.get(reg).copied().unwrap_or(false)
        };
        assert_eq!(
            self.streams.len(),
            other.streams.len(),
            "{what}: registrations"
        );
        for (reg, (a, b)) in self.streams.iter().zip(&other.streams).enumerate() {
            assert!(
                raced(reg) || a == b,
                "{what}: stream bytes of registration {reg} differ"
            );
        }
        for (reg, (a, b)) in self.datagrams.iter().zip(&other.datagrams).enumerate() {
            assert!(
                raced(reg) || a == b,
                "{what}: datagrams of registration {reg} differ"
            );
        }
        assert_eq!(self.reported.len(), other.reported.len(), "{what}: reports");
        for (reg, (a, b)) in self.reported.iter().zip(&other.reported).enumerate() {
            assert!(
                raced(reg) || a == b,
                "{what}: reports of registration {reg} differ: {a:?} vs {b:?}"
            );
        }
    }
}

/// An engine over the simulated kernel, the model of what was done to it, and the checks.
#[derive(Debug)]
pub struct Runner {
    engine: Option<Engine>,
    k: SimHandle,
    model: Model,
    cfg: Config,
    outcomes: Vec<Outcome>,
    /// Registrations aborted with writes pending (see [`Observed::raced`]).
    raced: Vec<usize>,
    timeout: Option<Duration>,
    steps: Vec<Step>,
}

fn status_of(e: &Error) -> Outcome {
    match e {
        Error::Socket { status, .. } => Outcome::Raised(*status),
        Error::FlushTimeout { .. } => Outcome::Timeout,
        Error::UnknownSocket(_) => Outcome::Unknown,
        Error::WrongSocketKind { .. } => Outcome::WrongKind,
        e => panic!("unexpected error {e}"),
    }
}

impl Runner {
    /// A runner with `setup`'s engine and sockets.
    pub fn new(setup: Setup) -> Runner {
        let kernel = SimKernel::with_behaviour(setup.mode, setup.behaviour);
        let k = kernel.handle();
        k.seed(setup.seed);
        k.set_latency(setup.latency);
        k.set_reorder(setup.reorder);
        k.set_cancel(setup.cancel);
        k.set_idle(Idle::Release);
        let cfg = setup.cfg.clamped();
        let engine = Engine::with_sim(cfg.clone(), kernel);
        let mut r = Runner {
            engine: Some(engine),
            k,
            model: Model::default(),
            cfg,
            outcomes: Vec::new(),
            raced: Vec::new(),
            timeout: None,
            steps: Vec::new(),
        };
        for kind in setup.sockets {
            r.add(kind);
        }
        r.check();
        r
    }

    /// The engine (`None` after a `Drop` step).
    pub fn engine(&mut self) -> Option<&mut Engine> {
        self.engine.as_mut()
    }

    /// The kernel.
    pub fn kernel(&self) -> &SimHandle {
        &self.k
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Every call's outcome so far.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// The steps applied so far (to replay a failure).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    fn check(&mut self) {
        checks::check(&self.cfg, &mut self.model, self.engine.as_ref(), &self.k);
    }

    fn add(&mut self, kind: Kind) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let id = self.k.register(engine, kind);
        let reg = self.k.registration(id);
        self.model.add(id, reg, kind);
    }

    fn pick(&self, sock: u8) -> Option<(usize, SocketId)> {
        if self.model.socks.is_empty() {
            return None;
        }
        let i = usize::from(sock) % self.model.socks.len();
        Some((i, self.model.socks[i].id))
    }

    /// Applies `steps` in order.
    pub fn run(&mut self, steps: impl IntoIterator<Item = Step>) {
        for s in steps {
            self.step(s);
        }
    }

    /// Applies one step and checks every invariant.
    ///
    /// # Panics
    /// When a check fails.
    pub fn step(&mut self, step: Step) {
        if self.engine.is_none() {
            return;
        }
        self.steps.push(step);
        self.k.set_budget(STEP_BUDGET);
        self.apply(step);
        self.check();
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::AddStream => {
                if self.model.socks.len() < MAX_SOCKETS {
                    self.add(Kind::Stream);
                }
            }
            Step::AddPacket => {
                if self.model.socks.len() < MAX_SOCKETS {
                    self.add(Kind::Packet);
                }
            }
            Step::AddUdp {
                connected,
                recverr,
                port,
            } => {
                if self.model.socks.len() < MAX_SOCKETS {
                    let peer = connected.then(|| dest(9000 + u16::from(port % PORTS)));
                    self.add(Kind::Udp { peer, recverr });
                }
            }
            Step::Send { sock, len } => self.send(sock, None, len),
            Step::SendTo { sock, port, len } => {
                self.send(sock, Some(dest(9000 + u16::from(port % PORTS))), len);
            }
            Step::Flush { sock } => self.flush(sock),
            Step::TryFlush { sock } => self.try_flush(sock),
            Step::FlushAll => self.flush_all(),
            Step::Close { sock } => self.close(sock),
            Step::Abort { sock } => self.abort(sock),
            Step::ShutdownWrite { sock } => self.shutdown_write(sock),
            Step::Submit => {
                let e = self.engine.as_mut().expect("live");
                e.submit().expect("submit on the simulated kernel");
            }
            Step::TakePeerErrors { sock } => self.take_peer_errors(sock),
            Step::FlushTimeout { ms } => {
                let t = match ms {
                    None => None,
                    Some(u16::MAX) => Some(Duration::MAX),
                    Some(ms) => Some(Duration::from_millis(u64::from(ms))),
                };
                self.timeout = t;
                self.engine.as_mut().expect("live").set_flush_timeout(t);
            }
            Step::Stall { sock } => self.on_live(sock, |k, id| k.stall(id)),
            Step::Unstall { sock } => self.on_live(sock, |k, id| k.unstall(id)),
            Step::Reset { sock, errno } => {
                let e = RESETS[usize::from(errno) % RESETS.len()];
                self.on_live(sock, |k, id| k.reset(id, e));
            }
            Step::ClosePort { port } => self.k.close_port(dest(9000 + u16::from(port % PORTS))),
            Step::OpenPort { port } => self.k.open_port(dest(9000 + u16::from(port % PORTS))),
            Step::NoBufs { sock, count } => {
                self.on_live(sock, |k, id| k.nobufs(id, u32::from(count % 8)));
            }
            Step::Verdict { sock, verdict } => self.on_live(sock, |k, id| k.script(id, [verdict])),
            Step::Tick { us } => self.k.advance(u64::from(us) * 1000),
            Step::Stale { pick } => self.stale(pick),
            Step::Drop => self.drop_engine(),
        }
    }

    /// Applies a kernel-side change to a socket still registered.
    fn on_live(&self, sock: u8, f: impl FnOnce(&SimHandle, SocketId)) {
        if let Some((i, id)) = self.pick(sock) {
            if !self.model.socks[i].removed {
                f(&self.k, id);
            }
        }
    }

    fn send(&mut self, sock: u8, to: Option<std::net::SocketAddr>, len: u16) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        let data = self.model.next_payload(usize::from(len));
        let engine = self.engine.as_mut().expect("live");
        let before = (engine.queued_bytes(id).ok(), engine.total_queued_bytes());
        let res = match to {
            None => engine.send(id, data.clone()),
            Some(a) => engine.send_to(id, data.clone(), a),
        };
        let st = self.k.st();
        let s = &mut self.model.socks[i];
        let got = checks::check_send(
            &self.cfg,
            s,
            st.log(s.reg),
            to.is_some(),
            &data,
            before,
            res,
        );
        drop(st);
        let outcome = match got {
            Ok(()) => {
                self.model.accept(i, data, to);
                Outcome::Sent
            }
            Err(e) => {
                self.model.refused += 1;
                Outcome::Refused(match e {
                    Error::Socket { status, .. } => Refusal::Status(status),
                    Error::Backpressure { .. } => Refusal::Backpressure,
                    Error::BufferTooLarge { .. } => Refusal::TooLarge,
                    Error::UnknownSocket(_) => Refusal::Unknown,
                    _ => Refusal::WrongKind,
                })
            }
        };
        self.outcomes.push(outcome);
    }

    /// Handles what a flush-like call returned; `target` is the barrier it set.
    fn flushed(&mut self, i: usize, target: u64, r: Result<crate::FlushReport, Error>) -> Outcome {
        match r {
            Ok(rep) => {
                self.model.report(i, &rep);
                let s = &mut self.model.socks[i];
                s.pending_barrier = None;
                if s.is_stream() {
                    assert!(
                        rep.first_error.is_none(),
                        "socket {i}: Ok with a first error"
                    );
                }
                // As in `flush_all`: a stream that failed before (its error raised by an earlier
                // flush, or cancelled by an `abort` that timed out) resolves later barriers
                // without raising it again, but its peer holds only a prefix.
                let ok = !s.is_stream() || s.error.is_none();
                checks::check_resolved(&mut self.model, i, target, ok, &self.k);
                Outcome::Report(Counts::of(&rep))
            }
            Err(e @ Error::Socket { .. }) => {
                if self.model.socks[i].kind == Kind::Packet {
                    let poisons = checks::packet_poisons(self.k.st().log(self.model.socks[i].reg));
                    assert!(
                        e.status().is_some_and(|st| poisons.contains(&st)),
                        "socket {i}: a packet flush raised {e}, but the device is not gone \
                         (fatal results: {poisons:?})"
                    );
                }
                let s = &mut self.model.socks[i];
                assert!(
                    s.is_stream() || s.kind == Kind::Packet,
                    "socket {i}: a datagram flush raised {e}"
                );
                s.reports_lost = true;
                s.error = e.status();
                s.pending_barrier = None;
                checks::check_resolved(&mut self.model, i, target, false, &self.k);
                status_of(&e)
            }
            Err(e @ Error::FlushTimeout { .. }) => {
                assert!(
                    self.timeout.is_some(),
                    "socket {i}: a flush timed out without a timeout"
                );
                self.model.socks[i].pending_barrier = Some(target);
                status_of(&e)
            }
            Err(e) => {
                if matches!(e, Error::UnknownSocket(_)) {
                    let s = &self.model.socks[i];
                    assert!(s.removed || s.maybe_closing, "socket {i}: live but unknown");
                }
                status_of(&e)
            }
        }
    }

    /// A blocking call that waits for socket `id` only: the kernel panics if it waits while
    /// nothing of `id` is held.
    fn focused<R>(&mut self, id: SocketId, call: impl FnOnce(&mut Engine) -> R) -> R {
        self.k.set_focus(Some(id));
        let r = call(self.engine.as_mut().expect("live"));
        self.k.set_focus(None);
        r
    }

    fn flush(&mut self, sock: u8) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        let target = self.model.target(i);
        let r = self.focused(id, |e| e.flush(id));
        let o = self.flushed(i, target, r);
        self.outcomes.push(o);
    }

    fn try_flush(&mut self, sock: u8) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        let s = &mut self.model.socks[i];
        let target = *s.pending_barrier.get_or_insert(s.writes.len() as u64);
        let r = self.engine.as_mut().expect("live").try_flush(id);
        let o = match r {
            Ok(None) => Outcome::Pending,
            Ok(Some(rep)) => self.flushed(i, target, Ok(rep)),
            Err(e) => {
                if matches!(e, Error::UnknownSocket(_)) {
                    self.model.socks[i].pending_barrier = None;
                }
                self.flushed(i, target, Err(e))
            }
        };
        self.outcomes.push(o);
    }

    fn flush_all(&mut self) {
        self.k.set_focus(None);
        let engine = self.engine.as_mut().expect("live");
        match engine.flush_all() {
            Ok(all) => {
                checks::check_flush_all(&self.model, &all, engine, &self.k);
                let mut per = Vec::new();
                for (id, rep) in &all.sockets {
                    let i = self
                        .model
                        .socks
                        .iter()
                        .position(|s| s.id == *id && !s.removed)
                        .expect("checked");
                    let target = self.model.target(i);
                    self.model.report(i, rep);
                    let s = &mut self.model.socks[i];
                    s.pending_barrier = None;
                    if s.is_stream() && rep.first_error.is_some() {
                        s.error = rep.first_error.as_ref().and_then(Error::status);
                    }
                    let stream = s.is_stream();
                    // A stream that failed before (its error reported by an earlier flush, or
                    // cancelled by an `abort` that timed out) reports no error again, but its
                    // peer holds only a prefix: not "resolved without the stream's error".
                    let ok = (rep.first_error.is_none() && s.error.is_none()) || !stream;
                    checks::check_resolved(&mut self.model, i, target, ok, &self.k);
                    let error = rep.first_error.as_ref().and_then(Error::status);
                    per.push((Counts::of(rep), error.filter(|_| stream)));
                }
                checks::check_quiescent(&self.model, self.engine.as_ref().expect("live"), &self.k);
                self.outcomes.push(Outcome::All(per));
            }
            Err(e @ Error::FlushTimeout { .. }) => {
                assert!(
                    self.timeout.is_some(),
                    "flush_all timed out without a timeout"
                );
                for i in 0..self.model.socks.len() {
                    if !self.model.socks[i].removed {
                        let t = self.model.target(i);
                        self.model.socks[i].pending_barrier = Some(t);
                    }
                }
                self.outcomes.push(status_of(&e));
            }
            Err(e) => panic!("flush_all failed: {e}"),
        }
    }

    /// After a call that may remove socket `i`: the kernel says whether it did.
    fn sync_removed(&mut self, i: usize) {
        let reg = self.model.socks[i].reg;
        let registered = self.k.st().log(reg).registered;
        self.model.socks[i].removed = !registered;
    }

    fn close(&mut self, sock: u8) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        let target = self.model.target(i);
        let was_removed = self.model.socks[i].removed;
        let r = self.focused(id, |e| e.close(id));
        let (r, fd) = match r {
            Ok((rep, fd)) => (Ok(rep), Some(fd)),
            Err(e) => (Err(e), None),
        };
        drop(fd);
        let timed_out = matches!(r, Err(Error::FlushTimeout { .. }));
        let o = self.flushed(i, target, r);
        self.sync_removed(i);
        let s = &mut self.model.socks[i];
        if timed_out {
            s.maybe_closing = true;
        }
        if matches!(o, Outcome::Report(_) | Outcome::Raised(_)) {
            assert!(
                s.removed,
                "socket {i}: close returned but the socket is still registered"
            );
        }
        assert!(
            !was_removed || o == Outcome::Unknown,
            "socket {i}: closed twice"
        );
        self.outcomes.push(o);
    }

    fn abort(&mut self, sock: u8) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        // Writes, not bytes: empty datagrams race as well.
        let pending = self
            .engine
            .as_ref()
            .and_then(|e| e.queued_writes(id).ok())
            .is_some_and(|n| n > 0);
        if pending {
            self.raced.push(self.model.socks[i].reg);
        }
        let r = self.focused(id, |e| e.abort(id));
        let o = match r {
            Ok(()) => Outcome::Aborted,
            Err(e @ Error::FlushTimeout { .. }) => {
                assert!(
                    self.timeout.is_some(),
                    "socket {i}: abort timed out without a timeout"
                );
                self.model.socks[i].maybe_closing = true;
                status_of(&e)
            }
            Err(e) => status_of(&e),
        };
        let was_removed = self.model.socks[i].removed;
        self.sync_removed(i);
        let s = &mut self.model.socks[i];
        if o == Outcome::Aborted {
            assert!(
                s.removed && !was_removed,
                "socket {i}: aborted but still registered"
            );
            s.aborted = true;
            s.pending_barrier = None;
        }
        self.outcomes.push(o);
    }

    fn shutdown_write(&mut self, sock: u8) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        let target = self.model.target(i);
        let r = self.focused(id, |e| e.shutdown_write(id));
        if r.is_ok() {
            let s = &mut self.model.socks[i];
            assert!(s.is_stream(), "socket {i}: shutdown_write on UDP succeeded");
            let at = s.accepted.len();
            s.shut_at = Some(at);
            let shut = self.k.st().log(s.reg).shutdowns.last().copied();
            assert_eq!(
                shut,
                Some(at),
                "socket {i}: shutdown(SHUT_WR) before every accepted byte reached the peer"
            );
        }
        if matches!(r, Err(Error::WrongSocketKind { .. })) {
            assert!(!self.model.socks[i].is_stream());
            self.outcomes.push(Outcome::WrongKind);
            return;
        }
        let o = self.flushed(i, target, r);
        self.outcomes.push(o);
    }

    fn take_peer_errors(&mut self, sock: u8) {
        let Some((i, id)) = self.pick(sock) else {
            return;
        };
        let o = match self.engine.as_mut().expect("live").take_peer_errors(id) {
            Ok(errs) => {
                let st = self.k.st();
                let taken = &st.log(self.model.socks[i].reg).errqueue_taken;
                for e in &errs {
                    assert!(
                        taken.iter().any(|&(d, errno)| {
                            e.raw_os_error() == Some(errno) && (d.is_none() || e.peer() == d)
                        }),
                        "socket {i}: a peer error the kernel never reported: {e}"
                    );
                }
                // Each report must be one the kernel made (checked above). How many a given
                // call returns is not compared across completion models: they read the error
                // queue at different moments (io_uring in the submission, behind the sends;
                // epoll after its `sendmmsg`), as the real backends do, so a report can land in
                // an earlier or a later call (tests/tests/engine_loop.rs does not compare them
                // either).
                Outcome::PeerErrors(Vec::new())
            }
            Err(e) => status_of(&e),
        };
        self.outcomes.push(o);
    }

    /// Completions for ops not in flight arrive while nothing else can happen: they change
    /// nothing.
    fn stale(&mut self, pick: u64) {
        let engine = self.engine.as_mut().expect("live");
        engine.submit().expect("submit");
        let before = checks::fingerprint(engine, &self.k);
        self.k.freeze(true);
        for n in 0..=(pick % 3) {
            self.k
                .inject_stale(pick.rotate_left(u32::try_from(n * 17).unwrap_or(0)));
        }
        let r = engine.submit();
        self.k.freeze(false);
        r.expect("submit");
        assert_eq!(
            before,
            checks::fingerprint(engine, &self.k),
            "a stale completion changed state"
        );
    }

    fn drop_engine(&mut self) {
        self.k.set_focus(None);
        drop(self.engine.take());
        let left = self.k.in_flight();
        match self.k.leaked() {
            None => assert_eq!(left, 0, "the engine dropped with {left} ops in flight"),
            Some(n) => assert_eq!(n, left, "leaked {n} ops, {left} in flight"),
        }
    }

    /// Flushes everything (no timeout: stalled peers drain), checks that every report adds up,
    /// drops the engine, and returns what was observed.
    ///
    /// # Panics
    /// When a check fails.
    pub fn finish(mut self) -> Observed {
        self.k.set_budget(STEP_BUDGET);
        if let Some(e) = self.engine.as_mut() {
            e.set_flush_timeout(None);
            self.timeout = None;
            self.flush_all();
            self.check();
            self.drop_engine();
            assert_eq!(self.k.leaked(), None, "ops leaked after a full flush");
        }
        let st = self.k.st();
        let mut streams = Vec::new();
        let mut datagrams = Vec::new();
        for log in st.peers() {
            streams.push(log.received.clone());
            let mut d = log.datagrams.clone();
            d.sort();
            datagrams.push(d);
        }
        let reported = self
            .model
            .socks
            .iter()
            .map(|s| s.reported.clone())
            .collect();
        drop(st);
        let mut raced = vec![false; streams.len()];
        for &reg in &self.raced {
            if let Some(r) = raced.get_mut(reg) {
                *r = true;
            }
        }
        Observed {
            outcomes: std::mem::take(&mut self.outcomes),
            streams,
            datagrams,
            reported,
            raced,
        }
    }
}

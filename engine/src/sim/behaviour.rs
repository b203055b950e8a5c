//! What the simulated kernel answers for an op: a [`Verdict`], chosen by a [`Behaviour`] when
//! nothing else decides (a reset stream, a stalled peer, a pending socket error, a per-socket
//! script and injected ENOBUFS come first; see [`super::kernel`]).

use std::fmt;
use std::net::SocketAddr;

/// Errno values a kernel may return for a send, for fuzz targets to pick from.
pub const ERRNOS: [i32; 20] = [
    libc::EAGAIN,
    libc::EINTR,
    512, // ERESTARTSYS
    libc::ECONNRESET,
    libc::EPIPE,
    libc::ECONNREFUSED,
    libc::EMSGSIZE,
    libc::ENOBUFS,
    libc::EIO,
    libc::EINVAL,
    libc::ENOTCONN,
    libc::EHOSTUNREACH,
    libc::ENETUNREACH,
    libc::EPROTO,
    libc::ETIMEDOUT,
    libc::ECANCELED,
    libc::ENOMEM,
    libc::EPERM,
    // A packet descriptor whose device is gone (a deleted TUN device: EBADFD).
    libc::EBADFD,
    libc::ENODEV,
];

/// What the kernel does with one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sends every byte.
    Full,
    /// A stream takes `n` bytes (at most the op's); datagrams are all or nothing, so for them
    /// this is `Full`.
    Short(usize),
    /// Fails with this errno; nothing is sent.
    Errno(i32),
    /// The op stays in flight until the socket is unstalled (io_uring; a blocking send to a
    /// stalled peer). On epoll, where sends never block, the socket stalls: EAGAIN until then.
    Hold,
    /// This exact result, whatever it means: `0..=len` bytes taken, more than `len` (a broken
    /// kernel: nothing reaches the peer), any negative value (`i32::MIN` included).
    Raw(i32),
}

impl Verdict {
    /// A verdict from a fuzzer's byte: mostly `Full`, then short counts, every errno in
    /// [`ERRNOS`], holds, and a few raw values.
    pub fn from_byte(b: u8, n: u16) -> Verdict {
        match b % 16 {
            0..=5 => Verdict::Full,
            6 | 7 => Verdict::Short(usize::from(n)),
            8..=12 => Verdict::Errno(ERRNOS[usize::from(n) % ERRNOS.len()]),
            13 => Verdict::Hold,
            14 => Verdict::Short(0),
            _ => Verdict::Raw(match n % 4 {
                0 => i32::MIN,
                1 => -4096,
                2 => i32::MAX,
                _ => -i32::from(n),
            }),
        }
    }
}

/// One op as the kernel sees it when it decides.
#[derive(Debug, Clone, Copy)]
pub struct OpView<'a> {
    /// The socket's registration number (0, 1, … in registration order; never reused).
    pub reg: usize,
    /// The engine's socket index (reused after a socket is removed).
    pub sock: u32,
    /// The op's token.
    pub token: u64,
    /// A stream op (else datagrams).
    pub stream: bool,
    /// Streams: bytes the peer received before this op (the op's first byte is this one).
    pub offset: usize,
    /// Datagrams: the socket's sequence number of the first datagram (0 for the first ever
    /// sent on the socket).
    pub first_seq: u64,
    /// Datagrams: the sequence number of each, in order.
    pub seqs: &'a [u64],
    /// Datagrams in the op (stream ops: queued writes it covers).
    pub count: usize,
    /// The GSO segment size of a group.
    pub segment_size: Option<u16>,
    /// Payload bytes.
    pub bytes: usize,
    /// Destination: `send_to`'s, or the connected peer's.
    pub dest: Option<SocketAddr>,
    /// Position in the `sendmmsg` call (epoll datagrams; 0 otherwise).
    pub pos: usize,
    /// The payload, concatenated.
    pub payload: &'a [u8],
    /// The kernel clock.
    pub now_ns: u64,
}

/// Decides the ops nothing else decided.
pub trait Behaviour: fmt::Debug + Send {
    /// The verdict for `op`.
    fn verdict(&mut self, op: &OpView<'_>) -> Verdict;
}

/// Sends everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllOk;

impl Behaviour for AllOk {
    fn verdict(&mut self, _op: &OpView<'_>) -> Verdict {
        Verdict::Full
    }
}

/// A closure as a behaviour (tests).
pub struct FnBehaviour<F>(pub F);

impl<F> fmt::Debug for FnBehaviour<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnBehaviour")
    }
}

impl<F: FnMut(&OpView<'_>) -> Verdict + Send> Behaviour for FnBehaviour<F> {
    fn verdict(&mut self, op: &OpView<'_>) -> Verdict {
        (self.0)(op)
    }
}

/// Replays a list of verdicts, cycling, and sends everything once `max_faults` verdicts other
/// than `Full` were given (so every flush ends).
#[derive(Debug, Clone)]
pub struct Replay {
    verdicts: Vec<Verdict>,
    next: usize,
    faults_left: usize,
}

impl Replay {
    /// Replays `verdicts`, at most `max_faults` of them not `Full`.
    pub fn new(verdicts: Vec<Verdict>, max_faults: usize) -> Replay {
        Replay {
            verdicts,
            next: 0,
            faults_left: max_faults,
        }
    }
}

impl Behaviour for Replay {
    fn verdict(&mut self, _op: &OpView<'_>) -> Verdict {
        if self.verdicts.is_empty() || self.faults_left == 0 {
            return Verdict::Full;
        }
        let v = self.verdicts[self.next % self.verdicts.len()];
        self.next += 1;
        if v != Verdict::Full {
            self.faults_left -= 1;
        }
        v
    }
}

/// What the kernel does to one datagram, whatever op carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fate {
    /// Fails with this errno whenever sent (an ICMP-class errno is taken as a stale pending
    /// error and resent, boundedly, before it fails the datagram).
    pub errno: Option<i32>,
    /// ENOBUFS for this many of its first sends alone.
    pub nobufs: u8,
    /// EAGAIN the first time an op carries it.
    pub again: bool,
}

#[derive(Debug, Clone, Default)]
struct StreamScript {
    cuts: Vec<usize>,
    fail: Option<(usize, i32)>,
    again_at: Vec<(usize, bool)>,
}

/// A deterministic kernel whose verdicts depend only on stream offsets and datagram sequence
/// numbers (per registration), so the io_uring and the epoll model given clones of it see the
/// same kernel however ops are cut, grouped or batched:
///
/// - stream: an op never crosses a *cut* offset (a short send ends there); the first op starting
///   at an *again* offset gets EAGAIN; with `fail = (x, errno)` the op reaching offset `x` stops
///   there and the op starting at `x` fails with `errno`; an op of 0 bytes always succeeds;
/// - datagram: EAGAIN once for an op with a member flagged `again`; a group fails with its first
///   datagram's errno, else with the errno of a later member (EMSGSIZE in place of an errno the
///   core would pin on the group's *first* datagram), else with ENOBUFS if a member still has
///   one due, else is sent; a single datagram fails with its errno, or ENOBUFS `nobufs` times,
///   else is sent. A datagram behind the first of a `sendmmsg` call (`pos > 0`) that would get
///   EAGAIN or ENOBUFS gets it without using it up: the call stops there and the next one
///   starts with it, where it counts — as on io_uring, where every op is first.
#[derive(Debug, Clone, Default)]
pub struct Script {
    streams: Vec<StreamScript>,
    fates: Vec<Vec<Fate>>,
    used_nobufs: Vec<Vec<u8>>,
}

impl Script {
    /// An empty script (every send succeeds).
    pub fn new() -> Script {
        Script::default()
    }

    fn stream(&mut self, reg: usize) -> &mut StreamScript {
        if self.streams.len() <= reg {
            self.streams.resize_with(reg + 1, StreamScript::default);
        }
        &mut self.streams[reg]
    }

    /// Short sends of registration `reg` end at stream offset `at`.
    pub fn cut(&mut self, reg: usize, at: usize) {
        self.stream(reg).cuts.push(at);
    }

    /// The first op of `reg` that starts at stream offset `at` gets EAGAIN.
    pub fn again_at(&mut self, reg: usize, at: usize) {
        self.stream(reg).again_at.push((at, false));
    }

    /// The connection of `reg` dies at stream offset `at` with `errno`.
    pub fn fail_at(&mut self, reg: usize, at: usize, errno: i32) {
        self.stream(reg).fail = Some((at, errno));
    }

    /// The fate of datagram `seq` of registration `reg`.
    pub fn fate(&mut self, reg: usize, seq: usize, fate: Fate) {
        if self.fates.len() <= reg {
            self.fates.resize_with(reg + 1, Vec::new);
            self.used_nobufs.resize_with(reg + 1, Vec::new);
        }
        let f = &mut self.fates[reg];
        if f.len() <= seq {
            f.resize(seq + 1, Fate::default());
            self.used_nobufs[reg].resize(seq + 1, 0);
        }
        f[seq] = fate;
    }

    fn stream_verdict(&mut self, op: &OpView<'_>) -> Verdict {
        if op.bytes == 0 {
            return Verdict::Full;
        }
        let s = self.stream(op.reg);
        let o = op.offset;
        if let Some(a) = s.again_at.iter_mut().find(|(at, used)| *at == o && !*used) {
            a.1 = true;
            return Verdict::Errno(libc::EAGAIN);
        }
        let mut end = o + op.bytes;
        if let Some((x, errno)) = s.fail {
            if o >= x {
                return Verdict::Errno(errno);
            }
            end = end.min(x);
        }
        if let Some(c) = s.cuts.iter().copied().filter(|&c| c > o && c < end).min() {
            end = c;
        }
        Verdict::Short(end - o)
    }

    fn dgram_verdict(&mut self, op: &OpView<'_>) -> Verdict {
        let reg = op.reg;
        let (Some(fates), Some(used)) = (self.fates.get_mut(reg), self.used_nobufs.get_mut(reg))
        else {
            return Verdict::Full;
        };
        // The fates of the op's datagrams (those beyond the script have none).
        let members: Vec<usize> = op
            .seqs
            .iter()
            .filter_map(|&s| usize::try_from(s).ok().filter(|&i| i < fates.len()))
            .collect();
        if members.iter().any(|&i| fates[i].again) {
            if op.pos == 0 {
                for &i in &members {
                    fates[i].again = false;
                }
            }
            return Verdict::Errno(libc::EAGAIN);
        }
        let first = op
            .seqs
            .first()
            .and_then(|&s| usize::try_from(s).ok())
            .filter(|&i| i < fates.len());
        if op.count > 1 {
            if let Some(e) = first.and_then(|i| fates[i].errno) {
                return Verdict::Errno(e);
            }
            if let Some(e) = members.iter().find_map(|&i| fates[i].errno) {
                // An errno the core pins on a group's first datagram would hit the wrong one:
                // refuse the group as too big instead, so the datagram meets its fate alone.
                return Verdict::Errno(if matches!(e, libc::EIO | libc::EINVAL) {
                    e
                } else {
                    libc::EMSGSIZE
                });
            }
            if members.iter().any(|&i| used[i] < fates[i].nobufs) {
                return Verdict::Errno(libc::ENOBUFS);
            }
            return Verdict::Full;
        }
        if let Some(i) = first {
            if let Some(e) = fates[i].errno {
                return Verdict::Errno(e);
            }
            if used[i] < fates[i].nobufs {
                if op.pos == 0 {
                    used[i] += 1;
                }
                return Verdict::Errno(libc::ENOBUFS);
            }
        }
        Verdict::Full
    }
}

impl Behaviour for Script {
    fn verdict(&mut self, op: &OpView<'_>) -> Verdict {
        if op.stream {
            self.stream_verdict(op)
        } else {
            self.dgram_verdict(op)
        }
    }
}

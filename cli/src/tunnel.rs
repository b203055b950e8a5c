//! `volley tunnel`: a VPN-style data mover. Every IP packet the kernel routes into a TUN device
//! goes to the peer as one UDP datagram; every datagram from the peer that is one whole IP packet
//! goes into the TUN device. No encryption, no handshake: the data path only, to measure what
//! batching buys a tunnel.
//!
//! One thread, one `poll(2)` over four descriptors: the signalfd (SIGINT/SIGTERM), the TUN
//! device, the UDP socket and the engine's descriptor.
//!
//! - **TUN → UDP**: the TUN device is read until `EAGAIN` or `--batch` packets (one `read` per
//!   packet: the kernel hands TUN packets out one at a time), each packet is queued with
//!   `send_to` as its own `Bytes` cut from one 64 KiB buffer, and the wake-up ends with one
//!   `try_flush` (submit and reap, never blocking). The engine sends equal-sized runs to the peer
//!   as GSO groups: one `sendmsg`/SQE per up to 64 packets, one `io_uring_enter` per wake-up.
//! - **UDP → TUN**: `recvmmsg` of up to 64 datagrams per call; each is checked (source = peer,
//!   an IPv4/IPv6 header whose length field matches) and queued on the engine's packet
//!   descriptor for the device (`Engine::register_packet`: one `write` per packet, submitted in
//!   the wake-up's one `io_uring_enter` with the UDP sends; outcomes from its flush reports).
//!   Backpressure there holds the packet and stops reading the UDP socket, as on the send side.
//! - **Backpressure** (the engine refuses a packet at its queue limit): the packet is held and
//!   the TUN device is not read until the engine has made room (its descriptor wakes the loop).
//!   Dropping would waste a packet already read; waiting leaves the excess in the device's own
//!   queue (`txqueuelen`), where the kernel drops and counts it (`ip -s link`: TX dropped) and
//!   the sender's TCP sees the loss. Counted as `backpressure_waits`; a packet still held at exit
//!   is counted in `drop_unsent_at_exit`.
//! - `--naive`: the same loop with one `read` → `sendto` per packet and one `recvfrom` → `write`
//!   per datagram: the baseline.
//! - `--offload` (with the engine): the device is opened with `IFF_VNET_HDR` and TSO/checksum
//!   offload, so one read carries a TCP super-packet of up to 64 KiB, cut here into MTU-sized
//!   packets with their checksums ([`offload::split`]); on the way in, runs of one TCP flow are
//!   coalesced into one write ([`offload::gro_run`]). What wireguard-go does (tun/offload_linux.go).
//!
//! Nothing is lost silently: every packet read is sent or counted in a `drop_*` field of the
//! summary line, every datagram received is written or counted.

mod ip;
mod offload;
mod sys;
mod tun;
mod udp;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use volley::{Backend, Engine, FlushReport, SocketId, Status};

use tun::Tun;
use udp::RecvBatch;

/// Default TUN MTU: WireGuard's. It leaves room under a 1500-byte underlay for IPv6 (48 bytes of
/// IPv6 + UDP header) and a PPPoE or VLAN hop; IPv4 alone would allow 1472.
pub const DEFAULT_MTU: usize = 1420;
/// Default cap on TUN packets read per wake-up (and so per submission).
pub const DEFAULT_BATCH: usize = 128;
/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// `recvmmsg` calls per wake-up at most, so a flood from the peer cannot starve the TUN side.
const RECV_ROUNDS: usize = 8;
/// Receive slot: any UDP payload fits (65 507 bytes at most), so nothing is truncated.
const RECV_SLOT_BYTES: usize = 65_536;
/// TUN packets are read into 64 KiB buffers and split off as `Bytes` (≈ 45 packets each).
const CHUNK_BYTES: usize = 64 * 1024;
/// How long the final flush at exit may wait for the kernel.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

/// Options of `volley tunnel`.
#[derive(Debug)]
pub struct TunnelOpts {
    /// TUN device name (created, or attached if it exists).
    pub tun: String,
    /// Local UDP address.
    pub listen: String,
    /// The peer tunnel's UDP address.
    pub peer: String,
    /// TUN MTU.
    pub mtu: usize,
    /// Engine backend (`None`: `VOLLEY_BACKEND`, else auto).
    pub backend: Option<Backend>,
    /// One syscall per packet, no engine.
    pub naive: bool,
    /// TUN packets per wake-up at most.
    pub batch: usize,
    /// `IFF_VNET_HDR` + TSO/checksum offload: TCP super-packets in one read, cut here.
    pub offload: bool,
    /// The engine's queue limit per socket in bytes (`None`: the engine's default).
    pub queue_bytes: Option<usize>,
}

/// Everything counted, for the summary line. `tx`: TUN → peer; `rx`: peer → TUN.
#[derive(Debug, Default)]
struct Counters {
    tx_read_packets: u64,
    tx_read_bytes: u64,
    tx_sent_packets: u64,
    tx_sent_bytes: u64,
    rx_recv_packets: u64,
    rx_recv_bytes: u64,
    rx_written_packets: u64,
    rx_written_bytes: u64,
    /// Datagrams from a source other than the peer.
    drop_foreign: u64,
    /// Datagrams that are not one whole IPv4/IPv6 packet.
    drop_garbage: u64,
    /// TUN packets larger than the MTU (the device's MTU was raised behind our back).
    drop_oversize: u64,
    /// `--offload`: reads whose virtio header or TCP headers could not be cut into packets.
    drop_bad_offload: u64,
    /// Datagrams the TUN device refused with `EIO`: it is down.
    drop_tun_down: u64,
    /// Other TUN write failures.
    drop_tun_write: u64,
    /// Packets the engine refused for another reason than backpressure, or whose send failed.
    drop_send_error: u64,
    /// Packets still queued or held when the tunnel stopped.
    drop_unsent_at_exit: u64,
    send_errors: [u64; Status::ALL.len()],
    /// System calls made here (the engine counts its own).
    tun_reads: u64,
    udp_send_calls: u64,
    recv_calls: u64,
    tun_writes: u64,
    polls: u64,
    errqueue_reads: u64,
    /// `IP_RECVERR` reports drained (ICMP errors about sent datagrams, e.g. a restarting peer).
    icmp_reports: u64,
    /// Times the engine refused a packet for backpressure (held until it made room).
    backpressure_waits: u64,
    /// Packets handed to the engine for the TUN device (`register_packet`).
    tun_engine_writes: u64,
}

impl Counters {
    fn add_report(&mut self, r: &FlushReport) {
        self.tx_sent_packets += r.writes;
        self.tx_sent_bytes += r.bytes;
        self.drop_send_error += r.failed;
        for (s, n) in r.failures_by_status() {
            self.send_errors[s.index()] += n;
        }
    }
}

/// How packets reach the peer.
enum Path {
    /// Through the engine: `send_to` per packet, one `try_flush` per wake-up.
    Volley {
        engine: Box<Engine>,
        id: SocketId,
        /// A duplicate of the engine's socket, for receiving (`MSG_DONTWAIT`: the io_uring
        /// backend keeps the socket blocking).
        rx: UdpSocket,
        /// The TUN device's write side as an engine packet descriptor (`register_packet`): one
        /// `write` per packet, many per submission. `None` with `--offload`, whose coalesced
        /// writes (one per ~45 packets) go out directly.
        tun_id: Option<SocketId>,
    },
    /// One `sendto` per packet on a blocking socket.
    Naive { sock: UdpSocket },
}

impl std::fmt::Debug for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Volley { .. } => "Volley",
            Path::Naive { .. } => "Naive",
        })
    }
}

/// Why the loop ended.
#[derive(Debug)]
enum Stop {
    Signal(i32),
    Fatal(String),
}

#[derive(Debug)]
struct Tunnel {
    tun: Tun,
    /// The descriptor direct writes to the TUN device go through (a `dup` of `tun.fd`); `None`
    /// when the engine owns it (`Path::Volley::tun_id`).
    tun_tx: Option<OwnedFd>,
    peer: SocketAddr,
    mtu: usize,
    batch: usize,
    path: Path,
    c: Counters,
    /// Where the next TUN packet is read to.
    chunk: BytesMut,
    /// Packets behind one the engine refused for backpressure (it first), sent in order once it
    /// has room; the TUN device is not read meanwhile.
    held: VecDeque<Bytes>,
    /// `--offload`: one raw read (virtio header + up to 64 KiB), and the packets cut from it.
    raw: Vec<u8>,
    segs: Vec<Bytes>,
    /// `--offload`: one coalesced write (virtio header + super-packet).
    gro_buf: Vec<u8>,
    /// Packets for the TUN device behind one the engine refused for backpressure (it first),
    /// sent in order once it has room; the UDP socket is not read meanwhile.
    rx_held: VecDeque<Bytes>,
    /// Packets for the TUN device were queued on the engine in this wake-up.
    rx_queued: bool,
    /// Where packets for the TUN device are copied to as `Bytes` for the engine.
    rx_chunk: BytesMut,
    /// The device was opened with `IFF_VNET_HDR`.
    vnet: bool,
    recv: RecvBatch,
    /// The TUN device refused the last write with `EIO` (logged once per episode).
    tun_down: bool,
    /// First send error seen (logged once).
    logged_send_error: bool,
}

/// Runs `volley tunnel` until SIGINT/SIGTERM (exit 0) or a fatal error (exit 1). stderr ends
/// with the summary line.
pub fn run(opts: &TunnelOpts) -> ExitCode {
    // Before anything else (and before the engine exists), so that every thread inherits it.
    let sig = match sys::stop_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("volley tunnel: cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut t = match Tunnel::setup(opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("volley tunnel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = format!(
        "volley tunnel: ready: tun {} mtu {} listen {} peer {} mode {}",
        t.tun.name,
        t.mtu,
        opts.listen,
        t.peer,
        t.mode()
    );
    if volley_bench::say(&ready).is_err() {
        eprintln!("{ready}");
    }
    let stop = t.run_loop(&sig);
    t.finish();
    let code = match &stop {
        Stop::Signal(_) => ExitCode::SUCCESS,
        Stop::Fatal(e) => {
            eprintln!("volley tunnel: {e}");
            ExitCode::FAILURE
        }
    };
    eprintln!("{}", t.summary(&stop));
    code
}

fn resolve(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{what} {s:?}: {e} (expected ADDR:PORT)"))?
        .next()
        .ok_or_else(|| format!("{what} {s:?} resolved to no address"))
}

impl Tunnel {
    fn setup(opts: &TunnelOpts) -> Result<Tunnel, String> {
        if opts.batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        let listen = resolve("--listen", &opts.listen)?;
        let peer = resolve("--peer", &opts.peer)?;
        if listen.is_ipv4() != peer.is_ipv4() {
            return Err(format!(
                "--listen {listen} and --peer {peer} are of different address families"
            ));
        }
        if !(68..=65_535).contains(&opts.mtu) {
            return Err(format!("--mtu {} is outside 68..=65535", opts.mtu));
        }
        let route = udp::route_mtu(peer)?;
        let max = udp::max_tunnel_mtu(route, peer);
        if opts.mtu > max {
            let overhead = route - max;
            return Err(format!(
                "--mtu {} is too large for the underlay: the route to {peer} has MTU {route}, \
                 which carries packets of at most {max} bytes inside {overhead} bytes of IP and \
                 UDP headers without fragmenting; use --mtu {max} or less",
                opts.mtu
            ));
        }
        if opts.offload && opts.naive {
            return Err("--offload works with the engine, not with --naive".into());
        }
        let tun = Tun::open(&opts.tun, opts.offload)?;
        tun.set_mtu(opts.mtu)?;
        if opts.offload {
            offload::enable(tun.as_fd())
                .map_err(|e| format!("TUNSETOFFLOAD on {} failed: {e}", tun.name))?;
        }
        let mut tun_tx = Some(
            tun.fd
                .try_clone()
                .map_err(|e| format!("cannot dup the TUN descriptor: {e}"))?,
        );
        let sock = udp::bind(listen)?;
        let (path, recv) = if opts.naive {
            (Path::Naive { sock }, RecvBatch::new(1, RECV_SLOT_BYTES))
        } else {
            let mut b = Engine::builder().flush_timeout(EXIT_FLUSH);
            if let Some(backend) = opts.backend {
                b = b.backend(backend);
            }
            if let Some(n) = opts.queue_bytes {
                b = b.max_queued_bytes_per_socket(n);
            }
            let mut engine = b
                .build()
                .map_err(|e| format!("cannot start the engine: {e}"))?;
            if let Some(why) = engine.fallback_reason() {
                eprintln!("volley tunnel: io_uring unavailable, using epoll: {why}");
            }
            let rx = sock
                .try_clone()
                .map_err(|e| format!("cannot dup the UDP socket: {e}"))?;
            let id = engine
                .register_udp(sock)
                .map_err(|e| format!("cannot register the UDP socket: {e}"))?;
            let tun_id = if opts.offload {
                None
            } else {
                // The engine puts the descriptor in O_NONBLOCK mode: the flag belongs to the
                // open file, which our read side shares (already non-blocking).
                let fd = tun_tx
                    .take()
                    .ok_or("the TUN write descriptor is already taken")?;
                Some(
                    engine
                        .register_packet(fd)
                        .map_err(|e| format!("cannot register the TUN device: {e}"))?,
                )
            };
            (
                Path::Volley {
                    engine: Box::new(engine),
                    id,
                    rx,
                    tun_id,
                },
                RecvBatch::new(RECV_BATCH, RECV_SLOT_BYTES),
            )
        };
        Ok(Tunnel {
            tun,
            tun_tx,
            peer,
            mtu: opts.mtu,
            batch: opts.batch,
            path,
            c: Counters::default(),
            chunk: BytesMut::new(),
            held: VecDeque::new(),
            raw: if opts.offload {
                vec![0; offload::VNET_HDR_LEN + 65_536]
            } else {
                Vec::new()
            },
            segs: Vec::new(),
            gro_buf: Vec::new(),
            rx_held: VecDeque::new(),
            rx_queued: false,
            rx_chunk: BytesMut::new(),
            vnet: opts.offload,
            recv,
            tun_down: false,
            logged_send_error: false,
        })
    }

    fn mode(&self) -> String {
        match &self.path {
            Path::Volley { engine, .. } if self.vnet => {
                format!("volley backend {} offload", engine.backend())
            }
            Path::Volley { engine, .. } => format!("volley backend {}", engine.backend()),
            Path::Naive { .. } => "naive".into(),
        }
    }

    fn run_loop(&mut self, sig: &OwnedFd) -> Stop {
        loop {
            match self.step(sig) {
                Ok(None) => {}
                Ok(Some(signo)) => return Stop::Signal(signo),
                Err(e) => return Stop::Fatal(e),
            }
        }
    }

    /// One wake-up: poll, then serve what is ready. `Some(signal)` to stop.
    fn step(&mut self, sig: &OwnedFd) -> Result<Option<i32>, String> {
        const IN: libc::c_short = libc::POLLIN;
        let pfd = |fd: libc::c_int, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let (udp_fd, engine_fd, timeout_ms) = match &self.path {
            Path::Volley { engine, rx, .. } => (
                rx.as_raw_fd(),
                engine.as_raw_fd(),
                engine.next_timeout().map_or(-1, |t| {
                    i32::try_from(t.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
                }),
            ),
            Path::Naive { sock } => (sock.as_raw_fd(), -1, -1),
        };
        // While a packet is held the TUN device is not read (an fd < 0 is skipped by poll).
        let tun_fd = if !self.held.is_empty() {
            -1
        } else {
            self.tun.fd.as_raw_fd()
        };
        // Likewise the UDP socket while a packet for the TUN device is held.
        let udp_fd = if self.rx_held.is_empty() { udp_fd } else { -1 };
        let mut fds = [
            pfd(sig.as_raw_fd(), IN),
            pfd(tun_fd, IN),
            pfd(udp_fd, IN),
            pfd(engine_fd, IN),
        ];
        self.c.polls += 1;
        let ready = sys::poll(&mut fds, timeout_ms).map_err(|e| format!("poll failed: {e}"))?;
        if fds[0].revents != 0 {
            if let Some(signo) = sys::take_signal(sig.as_fd()) {
                return Ok(Some(signo));
            }
        }
        let mut queued = false;
        if fds[1].revents != 0 {
            queued |= self.read_tun_batch()?;
        }
        if fds[2].revents != 0 {
            self.recv_udp_batch()?;
            queued |= std::mem::take(&mut self.rx_queued);
        }
        // Reap after queueing (one submission for the whole wake-up), when the engine's
        // descriptor says completions are waiting, after a backoff timer, and while a packet is
        // held.
        let timer = ready == 0 && timeout_ms >= 0;
        let holding = !self.held.is_empty() || !self.rx_held.is_empty();
        if queued || fds[3].revents != 0 || timer || holding {
            self.reap()?;
            if !self.held.is_empty() {
                self.retry_held()?;
            }
            if !self.rx_held.is_empty() {
                self.retry_rx_held()?;
            }
        }
        Ok(None)
    }

    /// Reads the TUN device until `EAGAIN` or the batch cap (in packets), handing each packet
    /// on. `true` if something was queued on the engine.
    fn read_tun_batch(&mut self) -> Result<bool, String> {
        let mut queued = false;
        let mut packets = 0;
        while packets < self.batch && self.held.is_empty() {
            if self.vnet {
                if !self.read_tun_offload()? {
                    break;
                }
                let mut segs = std::mem::take(&mut self.segs);
                packets += segs.len();
                for pkt in segs.drain(..) {
                    queued |= self.offer(pkt) != Offer::Done;
                }
                self.segs = segs;
                continue;
            }
            packets += 1;
            match self.read_tun()? {
                Read::Packet(pkt) => queued |= self.offer(pkt) != Offer::Done,
                Read::Dropped => {}
                Read::Empty => break,
            }
        }
        Ok(queued)
    }

    /// `--offload`: one read (a TCP super-packet or a single packet behind a virtio header),
    /// cut into MTU-sized IP packets in `self.segs`. `false` on `EAGAIN`.
    fn read_tun_offload(&mut self) -> Result<bool, String> {
        self.c.tun_reads += 1;
        let n = match tun::read_packet_into(self.tun.as_fd(), &mut self.raw) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
            Err(e) => return Err(tun_error(&self.tun.name, "read from", &e)),
        };
        let segs = &mut self.segs;
        match offload::split(&mut self.raw[..n], self.mtu, &mut self.chunk, |b| {
            segs.push(b)
        }) {
            Ok(_) => {
                for p in &self.segs {
                    self.c.tx_read_packets += 1;
                    self.c.tx_read_bytes += p.len() as u64;
                }
            }
            Err(e) => {
                self.c.tx_read_packets += 1;
                self.c.tx_read_bytes += n.saturating_sub(offload::VNET_HDR_LEN) as u64;
                match e {
                    offload::SplitError::Oversize => self.c.drop_oversize += 1,
                    offload::SplitError::Malformed => self.c.drop_bad_offload += 1,
                }
            }
        }
        Ok(true)
    }

    /// One packet from the TUN device, split off the current 64 KiB buffer.
    fn read_tun(&mut self) -> Result<Read, String> {
        // One byte of room beyond the MTU, so an oversized packet shows as such.
        let room = self.mtu + 1;
        if self.chunk.capacity() < room {
            self.chunk = BytesMut::with_capacity(CHUNK_BYTES.max(room));
        }
        self.c.tun_reads += 1;
        let spare = &mut self.chunk.spare_capacity_mut()[..room];
        let n = match tun::read_packet(self.tun.as_fd(), spare) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Read::Empty),
            Err(e) => return Err(tun_error(&self.tun.name, "read from", &e)),
        };
        self.c.tx_read_packets += 1;
        self.c.tx_read_bytes += n as u64;
        if n > self.mtu {
            self.c.drop_oversize += 1;
            return Ok(Read::Dropped);
        }
        // SAFETY: `read` initialised the first `n` bytes of the spare capacity (n ≤ room ≤
        // spare length), and `chunk` is empty between reads, so its first `n` bytes are exactly
        // those.
        unsafe { self.chunk.set_len(n) };
        Ok(Read::Packet(self.chunk.split_to(n).freeze()))
    }

    /// Hands one TUN packet to the peer (behind any held ones).
    fn offer(&mut self, pkt: Bytes) -> Offer {
        if !self.held.is_empty() {
            self.held.push_back(pkt);
            return Offer::Held;
        }
        match self.send_now(pkt) {
            Ok(o) => o,
            Err(refused) => {
                self.c.backpressure_waits += 1;
                self.held.push_back(refused);
                Offer::Held
            }
        }
    }

    /// Sends or queues one packet; `Err` hands back a packet refused for backpressure.
    fn send_now(&mut self, pkt: Bytes) -> Result<Offer, Bytes> {
        match &mut self.path {
            Path::Volley { engine, id, .. } => match engine.send_to(*id, pkt, self.peer) {
                Ok(()) => Ok(Offer::Queued),
                Err(e) if e.is_backpressure() => Err(e.into_inner()),
                Err(e) => {
                    let msg = e.error().to_string();
                    self.send_failed(&msg, e.error().status());
                    Ok(Offer::Done)
                }
            },
            Path::Naive { sock } => {
                self.c.udp_send_calls += 1;
                match sock.send_to(&pkt, self.peer) {
                    Ok(_) => {
                        self.c.tx_sent_packets += 1;
                        self.c.tx_sent_bytes += pkt.len() as u64;
                    }
                    Err(e) => {
                        let status = e.raw_os_error().map(Status::from_errno);
                        self.send_failed(&format!("send to {}: {e}", self.peer), status);
                    }
                }
                Ok(Offer::Done)
            }
        }
    }

    fn send_failed(&mut self, msg: &str, status: Option<Status>) {
        self.c.drop_send_error += 1;
        self.c.send_errors[status.unwrap_or(Status::Other).index()] += 1;
        if !self.logged_send_error {
            self.logged_send_error = true;
            eprintln!("volley tunnel: dropping a packet: {msg} (further send errors only counted)");
        }
    }

    /// Sends the held packets again, in order (after the engine made room), until one is
    /// refused again.
    fn retry_held(&mut self) -> Result<(), String> {
        let mut queued = false;
        while let Some(pkt) = self.held.pop_front() {
            match self.send_now(pkt) {
                Ok(o) => queued |= o == Offer::Queued,
                Err(refused) => {
                    // Still full: the engine's descriptor wakes the loop when it has room.
                    self.held.push_front(refused);
                    break;
                }
            }
        }
        if queued {
            self.reap()?;
        }
        Ok(())
    }

    /// Submits what is queued and collects what completed, never blocking.
    fn reap(&mut self) -> Result<(), String> {
        if let Path::Volley {
            engine, id, tun_id, ..
        } = &mut self.path
        {
            match engine.try_flush(*id) {
                Ok(Some(r)) => self.c.add_report(&r),
                Ok(None) => {}
                Err(e) => return Err(format!("the engine failed: {e}")),
            }
            if let Some(t) = *tun_id {
                match engine.try_flush(t) {
                    Ok(Some(r)) => self.add_tun_report(&r),
                    Ok(None) => {}
                    Err(e) => return Err(self.tun_engine_error(&e)),
                }
            }
        }
        Ok(())
    }

    /// What the engine's writes to the TUN device came to.
    fn add_tun_report(&mut self, r: &FlushReport) {
        self.c.rx_written_packets += r.writes;
        self.c.rx_written_bytes += r.bytes;
        let down = r.failed_with(Status::InputOutput);
        self.c.drop_tun_down += down;
        self.c.drop_tun_write += r.failed - down;
        self.note_tun_state(down > 0, r.writes > 0);
    }

    /// Logs the device going down (`EIO`) and coming back, once per episode.
    fn note_tun_state(&mut self, refused_down: bool, wrote: bool) {
        if refused_down && !self.tun_down {
            self.tun_down = true;
            eprintln!(
                "volley tunnel: {} is down: dropping packets from the peer until it is up (counted)",
                self.tun.name
            );
        } else if wrote && !refused_down && self.tun_down {
            self.tun_down = false;
            eprintln!("volley tunnel: {} is up again", self.tun.name);
        }
    }

    /// The message for an engine error on the TUN device's packet descriptor.
    fn tun_engine_error(&self, e: &volley::Error) -> String {
        if e.status() == Some(Status::DeviceGone) {
            format!(
                "the TUN device {} was deleted (writing to it: {e}); stopping",
                self.tun.name
            )
        } else {
            format!("writing to the TUN device {} failed: {e}", self.tun.name)
        }
    }

    /// Sends the packets held for the TUN device again, in order, until one is refused again.
    fn retry_rx_held(&mut self) -> Result<(), String> {
        let Path::Volley {
            engine,
            tun_id: Some(t),
            ..
        } = &mut self.path
        else {
            return Ok(());
        };
        let mut queued = false;
        while let Some(pkt) = self.rx_held.pop_front() {
            match engine.send(*t, pkt) {
                Ok(()) => queued = true,
                Err(e) if e.is_backpressure() => {
                    self.rx_held.push_front(e.into_inner());
                    break;
                }
                Err(e) => {
                    if e.error().status() == Some(Status::DeviceGone) {
                        return Err(self.tun_engine_error(e.error()));
                    }
                    self.c.drop_tun_write += 1;
                }
            }
        }
        if queued {
            self.reap()?;
        }
        Ok(())
    }

    /// Receives from the peer: up to `RECV_ROUNDS` calls (volley: `recvmmsg` of 64; naive: one
    /// datagram per call).
    fn recv_udp_batch(&mut self) -> Result<(), String> {
        let fd = match &self.path {
            Path::Volley { rx, .. } => rx.as_fd(),
            Path::Naive { sock } => sock.as_fd(),
        };
        // The descriptor is borrowed from `self.path` while `self` is mutated below: a raw copy
        // is safe because the socket outlives this call.
        let raw = fd.as_raw_fd();
        let rounds = match self.path {
            Path::Volley { .. } => RECV_ROUNDS,
            Path::Naive { .. } => RECV_ROUNDS * RECV_BATCH,
        };
        for _ in 0..rounds {
            // SAFETY: `raw` is the descriptor of a socket owned by `self.path`, which is neither
            // dropped nor replaced during this loop.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
            self.c.recv_calls += 1;
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(e) if is_icmp_report(&e) => {
                    // An ICMP error about an earlier send (IP_RECVERR): drain the error queue so
                    // it cannot fill the receive buffer, and go on.
                    self.c.errqueue_reads += 1;
                    self.c.icmp_reports += udp::drain_errqueue(fd);
                    continue;
                }
                Err(e) => return Err(format!("receiving from the UDP socket failed: {e}")),
            };
            self.deliver(n)?;
            if n < self.recv_batch_len() {
                break;
            }
        }
        Ok(())
    }

    fn recv_batch_len(&self) -> usize {
        match self.path {
            Path::Volley { .. } => RECV_BATCH,
            Path::Naive { .. } => 1,
        }
    }

    /// Checks the `n` datagrams of the last receive and writes those that are IP packets from
    /// the peer to the TUN device (with `--offload`, runs of one TCP flow coalesced into one
    /// write each); counts the rest.
    fn deliver(&mut self, n: usize) -> Result<(), String> {
        let mut pkts: Vec<&[u8]> = Vec::with_capacity(n);
        for i in 0..n {
            let d = self.recv.get(i);
            self.c.rx_recv_packets += 1;
            self.c.rx_recv_bytes += d.data.len() as u64;
            if d.from != Some(self.peer) {
                self.c.drop_foreign += 1;
            } else if d.truncated || ip::check(d.data).is_err() {
                self.c.drop_garbage += 1;
            } else {
                pkts.push(d.data);
            }
        }
        if let Path::Volley {
            engine,
            tun_id: Some(t),
            ..
        } = &mut self.path
        {
            // Through the engine: each packet its own `Bytes` (copied out of the receive slot
            // into a shared 64 KiB buffer), one write each, submitted with the wake-up's other ops.
            for p in pkts {
                if self.rx_chunk.capacity() < p.len() {
                    self.rx_chunk = BytesMut::with_capacity(CHUNK_BYTES.max(p.len()));
                }
                self.rx_chunk.extend_from_slice(p);
                let b = self.rx_chunk.split().freeze();
                self.c.tun_engine_writes += 1;
                if !self.rx_held.is_empty() {
                    self.rx_held.push_back(b);
                    continue;
                }
                match engine.send(*t, b) {
                    Ok(()) => self.rx_queued = true,
                    Err(e) if e.is_backpressure() => {
                        self.c.backpressure_waits += 1;
                        self.rx_held.push_back(e.into_inner());
                    }
                    Err(e) if e.error().status() == Some(Status::DeviceGone) => {
                        let msg = e.error().to_string();
                        return Err(format!(
                            "the TUN device {} was deleted (writing to it: {msg}); stopping",
                            self.tun.name
                        ));
                    }
                    Err(_) => self.c.drop_tun_write += 1,
                }
            }
            return Ok(());
        }
        let Some(tun_tx) = &self.tun_tx else {
            return Err("no descriptor to write to the TUN device".into());
        };
        let mut k = 0;
        while k < pkts.len() {
            let run = if self.vnet {
                offload::gro_run(&pkts, k)
            } else {
                1
            };
            let bytes: usize = pkts[k..k + run].iter().map(|p| p.len()).sum();
            let outcome = if run > 1 {
                offload::gro_build(&pkts[k..k + run], &mut self.gro_buf);
                tun::write_packet(tun_tx.as_fd(), &self.gro_buf)
            } else {
                Self::to_tun(tun_tx, self.vnet, pkts[k])
            };
            self.c.tun_writes += 1;
            let run_packets = run as u64;
            match outcome {
                Ok(()) => {
                    self.c.rx_written_packets += run_packets;
                    self.c.rx_written_bytes += bytes as u64;
                    if self.tun_down {
                        self.tun_down = false;
                        eprintln!("volley tunnel: {} is up again", self.tun.name);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    self.c.drop_tun_down += run_packets;
                    if !self.tun_down {
                        self.tun_down = true;
                        eprintln!(
                            "volley tunnel: {} is down: dropping packets from the peer until it is up (counted)",
                            self.tun.name
                        );
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {
                    return Err(tun_error(&self.tun.name, "write to", &e));
                }
                Err(_) => self.c.drop_tun_write += run_packets,
            }
            k += run;
        }
        Ok(())
    }

    /// A packet from the peer written to the TUN device directly (`--naive`, and `--offload`'s
    /// packets that join no run; the engine writes the device otherwise): one `write(2)` (with
    /// `IFF_VNET_HDR`, one `writev` behind an all-zero virtio header: no GSO, and the kernel
    /// verifies the checksums itself). Coalesced runs go out in [`Self::deliver`].
    fn to_tun(fd: &OwnedFd, vnet: bool, p: &[u8]) -> io::Result<()> {
        if vnet {
            tun::write_packet_with(fd.as_fd(), &[0; offload::VNET_HDR_LEN], p)
        } else {
            tun::write_packet(fd.as_fd(), p)
        }
    }

    /// At exit: the final flush (bounded), and whatever could not go counted.
    fn finish(&mut self) {
        let rx_held = self.rx_held.len() as u64;
        self.c.drop_unsent_at_exit += self.held.len() as u64 + rx_held;
        self.held.clear();
        self.rx_held.clear();
        if let Path::Volley {
            engine,
            tun_id: Some(t),
            ..
        } = &mut self.path
        {
            match engine.close(*t) {
                Ok((r, _fd)) => self.add_tun_report(&r),
                Err(e) => {
                    eprintln!("volley tunnel: the final flush of the TUN device failed: {e}");
                    // Its last report is lost with the error: whatever no report covered did
                    // not reach the device.
                    let c = &mut self.c;
                    let accounted = c.rx_written_packets
                        + c.drop_foreign
                        + c.drop_garbage
                        + c.drop_tun_down
                        + c.drop_tun_write
                        + rx_held;
                    c.drop_unsent_at_exit += c.rx_recv_packets.saturating_sub(accounted);
                }
            }
        }
        if let Path::Volley { engine, id, .. } = &mut self.path {
            // `close` rather than `flush`: it also takes the socket out of the engine (and out of
            // io_uring's registered file table), so the port is free as soon as we exit instead
            // of when the kernel gets round to tearing the ring down.
            match engine.close(*id) {
                Ok((r, _fd)) => self.c.add_report(&r),
                Err(e) => {
                    self.c.drop_unsent_at_exit += engine.pending_writes();
                    eprintln!("volley tunnel: the final flush failed: {e}");
                }
            }
        }
    }

    fn summary(&self, stop: &Stop) -> String {
        let c = &self.c;
        let (backend, engine_transitions, epoll) = match &self.path {
            Path::Volley { engine, .. } => (
                engine.backend().to_string(),
                engine.stats().kernel_transitions,
                engine.backend() == volley::BackendKind::Epoll,
            ),
            Path::Naive { .. } => ("none".to_string(), 0, false),
        };
        let mode = match self.path {
            Path::Volley { .. } if self.vnet => "volley-offload",
            Path::Volley { .. } => "volley",
            Path::Naive { .. } => "naive",
        };
        let stop = match stop {
            Stop::Signal(libc::SIGINT) => "SIGINT".to_string(),
            Stop::Signal(libc::SIGTERM) => "SIGTERM".to_string(),
            Stop::Signal(n) => format!("signal-{n}"),
            Stop::Fatal(_) => "error".to_string(),
        };
        let per = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        // The engine's transitions carry both directions when it also writes the TUN device. On
        // epoll each packet write is its own `write(2)`, so the receive side's share is exactly
        // the packets it handed the engine; on io_uring one `io_uring_enter` carries a wake-up's
        // UDP sends and TUN writes together, so the transitions are shared out by the packets
        // each direction handed it. Send side: the sends proper (that share, or one sendto per
        // packet); the TUN reads are listed apart (one per packet, as the kernel hands them out,
        // unless --offload).
        let engine_packets = c.tx_read_packets + c.tun_engine_writes;
        let rx_engine = if epoll {
            c.tun_engine_writes.min(engine_transitions)
        } else if engine_packets == 0 {
            0
        } else {
            let share = u128::from(engine_transitions) * u128::from(c.tun_engine_writes)
                / u128::from(engine_packets);
            u64::try_from(share).unwrap_or(engine_transitions)
        };
        let tx_send = engine_transitions - rx_engine + c.udp_send_calls;
        let rx_all = c.recv_calls + c.errqueue_reads + c.tun_writes + rx_engine;
        let packets = c.tx_read_packets + c.rx_recv_packets;
        let mut s = format!("volley tunnel: mode={mode} backend={backend} stop={stop}");
        let fields: [(&str, u64); 28] = [
            ("tx_read_packets", c.tx_read_packets),
            ("tx_read_bytes", c.tx_read_bytes),
            ("tx_sent_packets", c.tx_sent_packets),
            ("tx_sent_bytes", c.tx_sent_bytes),
            ("rx_recv_packets", c.rx_recv_packets),
            ("rx_recv_bytes", c.rx_recv_bytes),
            ("rx_written_packets", c.rx_written_packets),
            ("rx_written_bytes", c.rx_written_bytes),
            ("drop_foreign", c.drop_foreign),
            ("drop_garbage", c.drop_garbage),
            ("drop_oversize", c.drop_oversize),
            ("drop_bad_offload", c.drop_bad_offload),
            ("drop_tun_down", c.drop_tun_down),
            ("drop_tun_write", c.drop_tun_write),
            ("drop_send_error", c.drop_send_error),
            ("drop_unsent_at_exit", c.drop_unsent_at_exit),
            ("backpressure_waits", c.backpressure_waits),
            ("icmp_reports", c.icmp_reports),
            ("tun_reads", c.tun_reads),
            ("udp_send_calls", c.udp_send_calls),
            ("engine_transitions", engine_transitions),
            ("recv_calls", c.recv_calls),
            ("errqueue_reads", c.errqueue_reads),
            ("tun_writes", c.tun_writes),
            ("tun_engine_writes", c.tun_engine_writes),
            ("polls", c.polls),
            ("tx_send_transitions", tx_send),
            ("rx_transitions", rx_all),
        ];
        for (k, v) in fields {
            let _ = write!(s, " {k}={v}");
        }
        let _ = write!(
            s,
            " tx_send_transitions_per_packet={:.4} tx_transitions_per_packet={:.4} \
             rx_transitions_per_packet={:.4} polls_per_packet={:.4}",
            per(tx_send, c.tx_read_packets),
            per(tx_send + c.tun_reads, c.tx_read_packets),
            per(rx_all, c.rx_recv_packets),
            per(c.polls, packets),
        );
        let errors: Vec<String> = Status::ALL
            .iter()
            .filter(|st| c.send_errors[st.index()] > 0)
            .map(|st| {
                format!(
                    "{}:{}",
                    st.describe().replace(' ', "-"),
                    c.send_errors[st.index()]
                )
            })
            .collect();
        if !errors.is_empty() {
            let _ = write!(s, " send_errors={}", errors.join(","));
        }
        s
    }
}

/// The message for a failed TUN read or write that ends the tunnel.
fn tun_error(name: &str, what: &str, e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EBADFD) {
        format!("the TUN device {name} was deleted ({what} it: {e}); stopping")
    } else {
        format!("cannot {what} the TUN device {name}: {e}")
    }
}

/// One read from the TUN device.
#[derive(Debug)]
enum Read {
    Packet(Bytes),
    /// Read and counted as dropped (larger than the MTU).
    Dropped,
    /// `EAGAIN`.
    Empty,
}

/// What became of a packet handed to [`Tunnel::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// Queued on the engine (reaped later).
    Queued,
    /// Sent or counted (naive, or refused for good).
    Done,
    /// Refused for backpressure and held.
    Held,
}

/// Errors a receive reports for ICMP messages about earlier sends (with `IP_RECVERR`): not
/// about the receive, not fatal.
fn is_icmp_report(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EMSGSIZE
                | libc::ENOPROTOOPT
                | libc::EPROTO
        )
    )
}

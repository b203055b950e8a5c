//! Receivers on their own thread, outside the timed sections, that verify what arrives.
//!
//! TCP: every byte of every stream is compared with the payload pattern (a lost, repeated or
//! reordered message breaks it). UDP: datagrams are drained with `recvmmsg` (64 per call, as a
//! relay or QUIC endpoint drains), counted per peer, and their sizes checked.
//! After each round the harness calls [`Receiver::verify`], which waits (untimed) until what was
//! sent has arrived, or until arrivals stall, and then compares.

use std::io::{self, Read};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::net::setsockopt_int;

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    bytes: AtomicU64,
    datagrams: AtomicU64,
    /// Datagrams of the wrong size.
    bad_size: AtomicU64,
    per_peer: Vec<AtomicU64>,
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(msg);
        }
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A verifying receiver thread and what it is expected to have received so far.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    tcp: bool,
    msg_size: u64,
    expect_bytes: u64,
    expect_datagrams: u64,
    expect_per_peer: Vec<u64>,
}

/// Waits on `fds` for input for up to 50 ms (so the stop flag is seen).
fn poll_in(fds: &mut [libc::pollfd]) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len()).map_err(|_| io::Error::other("too many fds"))?;
    // SAFETY: `fds` is a live, exclusively borrowed array of `n` pollfd structs.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, 50) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(usize::try_from(r).unwrap_or(0))
}

fn pollfds(fds: impl Iterator<Item = i32>) -> Vec<libc::pollfd> {
    fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    })
    .collect()
}

/// Whether `data` equals the payload repeated, starting at stream offset `off`.
fn matches_pattern(big: &[u8], off: u64, data: &[u8]) -> bool {
    let len = big.len();
    let mut o = usize::try_from(off % len as u64).unwrap_or(0);
    let mut rest = data;
    while !rest.is_empty() {
        let take = rest.len().min(len - o);
        if rest[..take] != big[o..o + take] {
            return false;
        }
        rest = &rest[take..];
        o = 0;
    }
    true
}

impl Receiver {
    /// Starts a receiver reading `streams` and checking every byte against `big` repeated.
    ///
    /// # Errors
    /// When a socket cannot be made non-blocking or the thread cannot start.
    pub fn tcp(streams: Vec<TcpStream>, big: Bytes) -> Result<Receiver, String> {
        for s in &streams {
            s.set_nonblocking(true)
                .map_err(|e| format!("set_nonblocking: {e}"))?;
        }
        let shared = Arc::new(Shared::default());
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tcp-receiver".into())
            .spawn(move || tcp_loop(&sh, streams, &big))
            .map_err(|e| format!("spawn: {e}"))?;
        Ok(Receiver {
            shared,
            thread: Some(thread),
            tcp: true,
            msg_size: 0,
            expect_bytes: 0,
            expect_datagrams: 0,
            expect_per_peer: Vec::new(),
        })
    }

    /// Starts a receiver counting datagrams on `socks`; each should be `size` bytes.
    ///
    /// # Errors
    /// As [`Receiver::tcp`].
    pub fn udp(socks: Vec<UdpSocket>, size: usize, gro: bool) -> Result<Receiver, String> {
        for s in &socks {
            s.set_nonblocking(true)
                .map_err(|e| format!("set_nonblocking: {e}"))?;
            if gro {
                setsockopt_int(s, libc::SOL_UDP, libc::UDP_GRO, 1)
                    .map_err(|e| format!("UDP_GRO: {e}"))?;
            }
        }
        let peers = socks.len();
        let shared = Arc::new(Shared {
            per_peer: (0..peers).map(|_| AtomicU64::new(0)).collect(),
            ..Shared::default()
        });
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("udp-receiver".into())
            .spawn(move || udp_loop(&sh, socks, size, gro))
            .map_err(|e| format!("spawn: {e}"))?;
        Ok(Receiver {
            shared,
            thread: Some(thread),
            tcp: false,
            msg_size: size as u64,
            expect_bytes: 0,
            expect_datagrams: 0,
            expect_per_peer: vec![0; peers],
        })
    }

    /// Records that `per_peer` messages of `size` bytes were sent to every peer.
    pub fn expect(&mut self, peers: usize, per_peer: u64, size: u64) {
        let n = per_peer * peers as u64;
        self.expect_bytes += n * size;
        self.expect_datagrams += n;
        for e in &mut self.expect_per_peer {
            *e += per_peer;
        }
    }

    /// Waits until everything expected has arrived (or arrivals stall) and compares.
    ///
    /// # Errors
    /// What is missing, extra or wrong.
    pub fn verify(&self) -> Result<(), String> {
        let sh = &self.shared;
        let (stall, target) = if self.tcp {
            (Duration::from_secs(5), self.expect_bytes)
        } else {
            (Duration::from_secs(1), self.expect_datagrams)
        };
        let current = || {
            if self.tcp {
                sh.bytes.load(Ordering::Acquire)
            } else {
                sh.datagrams.load(Ordering::Acquire)
            }
        };
        let mut last = current();
        let mut since = Instant::now();
        while last < target {
            if let Some(e) = sh.error() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
            let now = current();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > stall {
                break;
            }
        }
        if let Some(e) = sh.error() {
            return Err(e);
        }
        if self.tcp {
            let got = sh.bytes.load(Ordering::Acquire);
            if got != self.expect_bytes {
                return Err(format!(
                    "receiver got {got} bytes, {} were sent",
                    self.expect_bytes
                ));
            }
            return Ok(());
        }
        let got = sh.datagrams.load(Ordering::Acquire);
        if got != self.expect_datagrams {
            let lost = self.expect_datagrams.saturating_sub(got);
            return Err(format!(
                "receiver got {got} of {} datagrams ({lost} lost)",
                self.expect_datagrams
            ));
        }
        let bad = sh.bad_size.load(Ordering::Acquire);
        if bad > 0 {
            return Err(format!(
                "{bad} datagrams were not {} bytes long",
                self.msg_size
            ));
        }
        for (i, (want, got)) in self.expect_per_peer.iter().zip(&sh.per_peer).enumerate() {
            let got = got.load(Ordering::Acquire);
            if got != *want {
                return Err(format!("peer {i} got {got} datagrams, {want} were sent"));
            }
        }
        let bytes = sh.bytes.load(Ordering::Acquire);
        if bytes != self.expect_bytes {
            return Err(format!(
                "receiver got {bytes} bytes, {} were sent",
                self.expect_bytes
            ));
        }
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tcp_loop(sh: &Shared, mut streams: Vec<TcpStream>, big: &[u8]) {
    let mut fds = pollfds(streams.iter().map(AsRawFd::as_raw_fd));
    let mut offsets = vec![0u64; streams.len()];
    let mut buf = vec![0u8; 256 * 1024];
    while !sh.stop.load(Ordering::Acquire) {
        match poll_in(&mut fds) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => return sh.fail(format!("receiver poll failed: {e}")),
        }
        for (i, pfd) in fds.iter_mut().enumerate() {
            if pfd.revents == 0 || pfd.fd < 0 {
                continue;
            }
            pfd.revents = 0;
            loop {
                match streams[i].read(&mut buf) {
                    Ok(0) => {
                        if !sh.stop.load(Ordering::Acquire) {
                            sh.fail(format!("connection {i} closed by the sender"));
                        }
                        pfd.fd = -1;
                        break;
                    }
                    Ok(n) => {
                        if !matches_pattern(big, offsets[i], &buf[..n]) {
                            sh.fail(format!(
                                "connection {i}: data corrupt or reordered within bytes {}..{}",
                                offsets[i],
                                offsets[i] + n as u64
                            ));
                        }
                        offsets[i] += n as u64;
                        sh.bytes.fetch_add(n as u64, Ordering::Release);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        sh.fail(format!("connection {i}: read failed: {e}"));
                        pfd.fd = -1;
                        break;
                    }
                }
            }
        }
    }
    streams.clear();
}

/// Datagrams (or GRO buffers) taken per `recvmmsg`, as a high-rate relay or QUIC endpoint
/// drains its socket.
const RECV_BATCH: usize = 64;

/// The arrays of one `recvmmsg` call: `RECV_BATCH` buffers, iovecs, control buffers (for the
/// `UDP_GRO` segment size) and headers, built once. The headers point into the other vectors,
/// which are never resized, so the pointers stay valid for the life of the struct.
struct RecvBatch {
    bufs: Vec<u8>,
    buf_len: usize,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u64; 8]>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new(buf_len: usize) -> Box<RecvBatch> {
        let mut b = Box::new(RecvBatch {
            bufs: vec![0; buf_len * RECV_BATCH],
            buf_len,
            iovs: Vec::with_capacity(RECV_BATCH),
            cmsgs: vec![[0; 8]; RECV_BATCH],
            // SAFETY: an all-zero mmsghdr is a valid (empty) value.
            hdrs: vec![unsafe { std::mem::zeroed() }; RECV_BATCH],
        });
        let base = b.bufs.as_mut_ptr();
        for i in 0..RECV_BATCH {
            b.iovs.push(libc::iovec {
                // SAFETY: `i * buf_len` is inside `bufs` (RECV_BATCH × buf_len bytes).
                iov_base: unsafe { base.add(i * buf_len) }.cast(),
                iov_len: buf_len,
            });
        }
        b
    }

    /// One `recvmmsg` (non-blocking); returns, per datagram or GRO buffer received, its length
    /// and the segment size the kernel reports with `UDP_GRO` (a GRO buffer holds
    /// `len / seg` datagrams, the last possibly shorter).
    fn recv(&mut self, fd: i32, out: &mut Vec<(usize, Option<usize>)>) -> io::Result<()> {
        out.clear();
        for i in 0..RECV_BATCH {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_flags = 0;
        }
        let n = libc::c_uint::try_from(RECV_BATCH).unwrap_or(1);
        // SAFETY: every header points at its own live iovec (into `bufs`) and control buffer,
        // all owned by `self` and exclusively borrowed for the call; the kernel writes at most
        // `n` entries and within the lengths given.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        for m in &self.hdrs[..usize::try_from(r).unwrap_or(0)] {
            let mut seg = None;
            // SAFETY: the kernel filled `msg_controllen` bytes of this entry's control buffer;
            // CMSG_FIRSTHDR/NXTHDR stay within them and CMSG_DATA of a UDP_GRO header holds an
            // int.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                        seg = usize::try_from(v).ok().filter(|&s| s > 0);
                    }
                    c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
                }
            }
            let len = m.msg_len as usize;
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > self.buf_len {
                return Err(io::Error::other(format!(
                    "datagram longer than the {} B receive buffer",
                    self.buf_len
                )));
            }
            out.push((len, seg));
        }
        Ok(())
    }
}

fn udp_loop(sh: &Shared, socks: Vec<UdpSocket>, size: usize, gro: bool) {
    let mut fds = pollfds(socks.iter().map(AsRawFd::as_raw_fd));
    let mut batch = RecvBatch::new(if gro { 65536 } else { 2048 });
    let mut got = Vec::with_capacity(RECV_BATCH);
    while !sh.stop.load(Ordering::Acquire) {
        match poll_in(&mut fds) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => return sh.fail(format!("receiver poll failed: {e}")),
        }
        for (i, pfd) in fds.iter_mut().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            loop {
                match batch.recv(pfd.fd, &mut got) {
                    Ok(()) => {
                        let (mut datagrams, mut bytes) = (0u64, 0u64);
                        for &(n, seg) in &got {
                            // A GRO buffer is `n / seg` datagrams of `seg` bytes, the last shorter.
                            let seg = seg.unwrap_or(n).max(1);
                            if seg != size || n % size != 0 {
                                sh.bad_size.fetch_add(1, Ordering::Relaxed);
                            }
                            datagrams += n.div_ceil(seg).max(1) as u64;
                            bytes += n as u64;
                        }
                        sh.per_peer[i].fetch_add(datagrams, Ordering::Relaxed);
                        sh.bytes.fetch_add(bytes, Ordering::Relaxed);
                        sh.datagrams.fetch_add(datagrams, Ordering::Release);
                        if got.len() < RECV_BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        sh.fail(format!("peer {i}: recv failed: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

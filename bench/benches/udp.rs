//! UDP: batches of 1200-byte datagrams over loopback to a draining receiver.
//!
//! Methods (one iteration = one batch):
//! - `send` — one `send()` per datagram on a connected std `UdpSocket`;
//! - `sendmmsg` — one `sendmmsg` over the whole batch (looping on a partial count), with the
//!   `mmsghdr`/`iovec` arrays built before timing;
//! - `gso` — `sendmsg` with a `UDP_SEGMENT` control message, 1200-byte segments, as many segments
//!   per call as fit the limits below;
//! - `volley-epoll`, `volley-uring` — N `Engine::send` + one `Engine::flush` (the engine uses GSO
//!   itself where the kernel has it).
//!
//! The receiver drains on its own thread; loopback drops what it cannot keep up with, so these
//! numbers are the sender's cost.

mod common;

use std::hint::black_box;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Throughput};
use volley::limits::{GSO_MAX_SEGMENTS, UDP_MAX_PAYLOAD};
use volley::{Backend, SocketId};

const DATAGRAM_BYTES: usize = 1200;
const BATCHES: [usize; 2] = [64, 1024];

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// One `send()` per datagram.
fn send(group: &mut Group<'_>, drain: &common::Drain, bufs: &[Bytes]) {
    let socket = drain.connect();
    group.bench_with_input(BenchmarkId::new("send", bufs.len()), bufs, |b, bufs| {
        b.iter(|| {
            for buf in bufs {
                let n = socket.send(buf).expect("udp send");
                debug_assert_eq!(n, buf.len());
            }
        });
    });
}

/// An empty `msghdr` (no address: the sockets are connected).
fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a C struct of integers and raw pointers (plus padding on some libcs);
    // all-zero is a valid value for every field (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// The arrays for one `sendmmsg` over the batch, built once. The headers point into `iovs`,
/// which point into `payload`; neither vector is resized after construction, so the pointers
/// stay valid for the life of the struct.
struct Mmsg {
    fd: libc::c_int,
    _payload: Vec<u8>,
    _iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Mmsg {
    fn new(socket: &UdpSocket, count: usize) -> Mmsg {
        let mut payload = vec![0xa5u8; count * DATAGRAM_BYTES];
        let mut iovs: Vec<libc::iovec> = payload
            .chunks_exact_mut(DATAGRAM_BYTES)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let msgs = iovs
            .iter_mut()
            .map(|iov| {
                let mut hdr = zeroed_msghdr();
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        Mmsg {
            fd: socket.as_raw_fd(),
            _payload: payload,
            _iovs: iovs,
            msgs,
        }
    }

    /// Sends the whole batch, calling `sendmmsg` again after a partial count.
    fn send_all(&mut self) -> io::Result<()> {
        let mut sent = 0;
        while sent < self.msgs.len() {
            let rest = &mut self.msgs[sent..];
            let vlen = libc::c_uint::try_from(rest.len()).expect("batch fits c_uint");
            // SAFETY: `rest` is a live slice of initialised mmsghdrs whose iovecs and payload are
            // owned by `self` and unchanged since construction; the kernel writes only
            // `msg_len` in each entry, within the `vlen` entries of the slice.
            let r = unsafe { libc::sendmmsg(self.fd, rest.as_mut_ptr(), vlen, 0) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            sent += usize::try_from(r).expect("sendmmsg count is non-negative");
        }
        Ok(())
    }
}

fn sendmmsg(group: &mut Group<'_>, drain: &common::Drain, count: usize) {
    let socket = drain.connect();
    let mut mmsg = Mmsg::new(&socket, count);
    group.bench_function(BenchmarkId::new("sendmmsg", count), |b| {
        b.iter(|| mmsg.send_all().expect("sendmmsg"));
    });
}

/// One `sendmsg` per GSO group, each with a `UDP_SEGMENT` control message; everything built once
/// (same pointer-validity argument as [`Mmsg`]).
struct Gso {
    fd: libc::c_int,
    _payload: Vec<u8>,
    _iovs: Vec<libc::iovec>,
    /// Control buffers, `u64` for `cmsghdr` alignment.
    _control: Vec<u64>,
    msgs: Vec<libc::msghdr>,
}

impl Gso {
    fn segments_per_call() -> usize {
        GSO_MAX_SEGMENTS.min(UDP_MAX_PAYLOAD / DATAGRAM_BYTES)
    }

    fn new(socket: &UdpSocket, count: usize) -> Gso {
        let per_call_bytes = Self::segments_per_call() * DATAGRAM_BYTES;
        let mut payload = vec![0x5au8; count * DATAGRAM_BYTES];
        let mut iovs: Vec<libc::iovec> = payload
            .chunks_mut(per_call_bytes)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let seg = u16::try_from(DATAGRAM_BYTES).expect("segment size fits u16");
        let seg_len = u32::try_from(std::mem::size_of::<u16>()).expect("2 fits u32");
        // SAFETY: CMSG_SPACE only computes an aligned size from its argument.
        let space_bytes =
            usize::try_from(unsafe { libc::CMSG_SPACE(seg_len) }).expect("cmsg space fits usize");
        let space_words = space_bytes.div_ceil(std::mem::size_of::<u64>());
        let mut control = vec![0u64; space_words * iovs.len()];
        let msgs = iovs
            .iter_mut()
            .zip(control.chunks_exact_mut(space_words))
            .map(|(iov, ctl)| {
                let mut hdr = zeroed_msghdr();
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                hdr.msg_control = ctl.as_mut_ptr().cast();
                hdr.msg_controllen = space_bytes;
                // SAFETY: `hdr.msg_control` points at `space_bytes` zeroed, u64-aligned bytes
                // owned by `control` (which outlives `hdr` in the struct), and `msg_controllen`
                // says so, so CMSG_FIRSTHDR returns a non-null pointer to room for one cmsghdr
                // plus CMSG_LEN(2) bytes of data; we write the header fields and a u16 there.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                    assert!(!cmsg.is_null(), "control buffer holds one cmsghdr");
                    // UDP_SEGMENT: <linux/udp.h>, added in Linux 4.18 (commit bec1f6f69736).
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(seg_len).try_into().expect("cmsg len fits");
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
                }
                hdr
            })
            .collect();
        Gso {
            fd: socket.as_raw_fd(),
            _payload: payload,
            _iovs: iovs,
            _control: control,
            msgs,
        }
    }

    /// One `sendmsg` per group. A GSO send is all-or-nothing for a UDP socket.
    fn send_all(&self) -> io::Result<()> {
        for msg in &self.msgs {
            loop {
                // SAFETY: `msg` and the iovec, payload and control buffer it points to are owned
                // by `self` and unchanged since construction; sendmsg only reads them.
                let r = unsafe { libc::sendmsg(self.fd, msg, 0) };
                if r >= 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

fn gso(group: &mut Group<'_>, drain: &common::Drain, count: usize) {
    let socket = drain.connect();
    let gso = Gso::new(&socket, count);
    // Probe once: without kernel GSO (or with it refused on this path) the method is skipped.
    if let Err(e) = gso.send_all() {
        eprintln!("skipping gso: sendmsg with UDP_SEGMENT failed: {e}");
        return;
    }
    group.bench_function(BenchmarkId::new("gso", count), |b| {
        b.iter(|| gso.send_all().expect("gso sendmsg"));
    });
}

fn volley(
    group: &mut Group<'_>,
    drain: &common::Drain,
    name: &str,
    backend: Backend,
    bufs: &[Bytes],
) {
    let Some(mut engine) = common::engine(name, backend) else {
        return;
    };
    let id: SocketId = engine
        .register_udp(drain.connect())
        .expect("register udp socket");
    group.bench_with_input(BenchmarkId::new(name, bufs.len()), bufs, |b, bufs| {
        b.iter(|| {
            for buf in bufs {
                engine.send(id, buf.clone()).expect("queue datagram");
            }
            let report = engine.flush(id).expect("flush udp socket");
            black_box(report.writes);
        });
    });
}

fn datagrams(c: &mut criterion::Criterion) {
    let drain = common::Drain::start();
    let mut group = c.benchmark_group("udp/1200B");
    for count in BATCHES {
        let bufs = common::payload(count, DATAGRAM_BYTES);
        group.throughput(Throughput::Elements(count as u64));
        send(&mut group, &drain, &bufs);
        sendmmsg(&mut group, &drain, count);
        gso(&mut group, &drain, count);
        for (name, backend) in common::BACKENDS {
            volley(&mut group, &drain, name, backend, &bufs);
        }
    }
    group.finish();
    drain.stop();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = datagrams
}
criterion_main!(benches);

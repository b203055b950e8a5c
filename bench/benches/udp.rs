//! UDP: batches of 1200-byte datagrams over loopback to a draining receiver.
//!
//! Methods (one iteration = one batch):
//! - `send` — one `send()` per datagram on a connected std `UdpSocket` (`volley bench`'s
//!   `naive`);
//! - `sendmmsg` — one `sendmmsg` over the whole batch (looping on a partial count), with the
//!   `mmsghdr`/`iovec` arrays built before timing (here only);
//! - `gso` — `sendmsg` with a `UDP_SEGMENT` control message, 1200-byte segments, as many segments
//!   per call as fit `volley::limits::GSO_MAX_SEGMENTS` and `UDP_MAX_PAYLOAD` (`volley bench`'s
//!   `raw-gso`);
//! - `volley-epoll`, `volley-uring` — N `Engine::send` + one `Engine::flush` (the engine uses GSO
//!   itself where the kernel has it).
//!
//! The receiver drains with `recvmmsg` on its own thread; loopback drops what it cannot keep up
//! with, so these numbers are the sender's cost (nothing is verified after a benchmark).

mod common;

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use criterion::{criterion_group, criterion_main, Throughput};
use volley_bench::scenario::{self, Conns, Payload, Spec, Workload};
use volley_bench::{Method, MethodName, Runner, ScenarioName};

const DATAGRAM_BYTES: usize = 1200;
const BATCHES: [usize; 2] = [64, 1024];

/// An empty `msghdr` (no address: the sockets are connected).
fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a C struct of integers and raw pointers (plus padding on some libcs);
    // all-zero is a valid value for every field (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// The socket and the arrays for one `sendmmsg` over the batch, built once. The headers point
/// into `iovs`, which point into `payload`; neither vector is resized after construction, so the
/// pointers stay valid for the life of the struct.
struct Mmsg {
    socket: UdpSocket,
    _payload: Vec<u8>,
    _iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Mmsg {
    fn new(socket: UdpSocket, count: usize) -> Mmsg {
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
            socket,
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
            let r = unsafe { libc::sendmmsg(self.socket.as_raw_fd(), rest.as_mut_ptr(), vlen, 0) };
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

/// The batch is built once, so the workload's messages go unused.
impl Method for Mmsg {
    fn batch(&mut self, _: &mut Workload) -> Result<(), String> {
        self.send_all().map_err(|e| format!("sendmmsg: {e}"))
    }
}

/// `sendmmsg` on the sockets and receiver `volley bench` sets up for `spec`.
fn sendmmsg(group: &mut common::Group<'_>, spec: Spec, payload: &Payload) {
    let (conns, rx, work) = scenario::setup(spec, payload).expect("udp sockets");
    let Conns::Udp(socket) = conns else {
        unreachable!("a UDP scenario has a UDP socket");
    };
    let mut r = Runner {
        method: Box::new(Mmsg::new(socket, spec.per_peer)),
        work,
        rx,
    };
    common::bench(group, "sendmmsg", spec.per_peer, &mut r);
}

/// `method` as benchmark `id`.
fn method(
    group: &mut common::Group<'_>,
    id: &str,
    method: MethodName,
    spec: Spec,
    payload: &Payload,
) {
    let Some(mut r) = common::runner(id, method, spec, payload) else {
        return;
    };
    // Probe once: without kernel GSO (or with it refused on this path) `gso` is skipped.
    if method == MethodName::RawGso {
        if let Err(e) = r.method.batch(&mut r.work) {
            eprintln!("skipping {id}: {e}");
            return;
        }
    }
    common::bench(group, id, spec.per_peer, &mut r);
}

fn datagrams(c: &mut criterion::Criterion) {
    let payload = Payload::new(DATAGRAM_BYTES);
    let mut group = c.benchmark_group("udp/1200B");
    for count in BATCHES {
        group.throughput(Throughput::Elements(count as u64));
        let spec = common::spec(ScenarioName::UdpGso, DATAGRAM_BYTES, count);
        method(&mut group, "send", MethodName::Naive, spec, &payload);
        sendmmsg(&mut group, spec, &payload);
        method(&mut group, "gso", MethodName::RawGso, spec, &payload);
        for (id, backend) in common::BACKENDS {
            method(&mut group, id, backend, spec, &payload);
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = datagrams
}
criterion_main!(benches);

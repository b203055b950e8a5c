//! Shared set-up for the criterion benches: loopback receivers on their own threads, engines per
//! backend, pre-filled payloads, and the criterion configuration.
//!
//! Everything here runs outside the timed closures.

#![allow(
    dead_code,
    reason = "each bench binary includes this module and uses part of it"
)]

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use volley::{Backend, Engine};

/// Criterion settings that keep the whole `cargo bench -p volley-bench` run to a few minutes on
/// two cores.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// The two engine backends, with the name used in benchmark ids.
pub const BACKENDS: [(&str, Backend); 2] = [
    ("volley-epoll", Backend::Epoll),
    ("volley-uring", Backend::Uring),
];

/// An engine on `backend`, or `None` (with a note on stderr) where it cannot be built, e.g.
/// io_uring disabled by `kernel.io_uring_disabled` or seccomp. The bench is then skipped.
pub fn engine(name: &str, backend: Backend) -> Option<Engine> {
    match Engine::builder().backend(backend).build() {
        Ok(e) => Some(e),
        Err(e) => {
            eprintln!("skipping {name}: {e}");
            None
        }
    }
}

/// `count` buffers of `size` bytes, all slices of one allocation (so taking one per send is a
/// reference-count increment, not a copy).
pub fn payload(count: usize, size: usize) -> Vec<Bytes> {
    let all = Bytes::from(
        (0..count * size)
            .map(|i| u8::try_from(i % 251).expect("i % 251 < 256"))
            .collect::<Vec<u8>>(),
    );
    (0..count)
        .map(|i| all.slice(i * size..(i + 1) * size))
        .collect()
}

/// A TCP connection to a loopback receiver thread that reads to EOF into one reused buffer.
/// Both ends have `TCP_NODELAY`. Drop the stream (or the engine owning it), then [`Sink::join`].
pub struct Sink {
    thread: JoinHandle<u64>,
}

impl Sink {
    /// Waits for the receiver to see EOF; returns the bytes it read.
    pub fn join(self) -> u64 {
        self.thread.join().expect("tcp receiver thread panicked")
    }
}

/// A connected, `TCP_NODELAY` client stream and its receiver.
pub fn tcp_pair() -> (TcpStream, Sink) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback tcp listener");
    let addr = listener.local_addr().expect("listener address");
    let thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept bench connection");
        s.set_nodelay(true).expect("TCP_NODELAY on receiver");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        total
    });
    let client = TcpStream::connect(addr).expect("connect to loopback receiver");
    client.set_nodelay(true).expect("TCP_NODELAY on sender");
    (client, Sink { thread })
}

/// A loopback UDP receiver draining datagrams on its own thread until [`Drain::stop`].
pub struct Drain {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl Drain {
    /// Binds a receiver with a large receive buffer and starts draining.
    pub fn start() -> Drain {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback udp receiver");
        grow_recv_buffer(&socket, 64 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("receiver read timeout");
        let addr = socket.local_addr().expect("receiver address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut datagrams = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    datagrams += 1;
                }
            }
            datagrams
        });
        Drain { addr, stop, thread }
    }

    /// Where to send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh UDP socket connected to this receiver.
    pub fn connect(&self) -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind loopback udp sender");
        s.connect(self.addr).expect("connect udp sender");
        s
    }

    /// Stops the receiver; returns the datagrams it received (loopback drops under overload).
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("udp receiver thread panicked")
    }
}

/// Asks for `bytes` of receive buffer: `SO_RCVBUF` (capped by `net.core.rmem_max`), then
/// `SO_RCVBUFFORCE`, which ignores the cap but needs `CAP_NET_ADMIN` (fails harmlessly without).
fn grow_recv_buffer(socket: &UdpSocket, bytes: usize) {
    let _ = socket2::SockRef::from(socket).set_recv_buffer_size(bytes);
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .expect("sizeof(int) fits socklen_t");
    // SAFETY: the fd is a live socket borrowed from `socket`; `value` is a c_int that outlives
    // the call and `len` is its exact size, as SO_RCVBUFFORCE expects.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(value).cast(),
            len,
        )
    };
}

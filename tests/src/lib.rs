//! Shared helpers for the system tests: loopback receivers, engines on both backends, payloads.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use volley::{Backend, Engine};

/// Both backends, for tests that must hold on each.
pub const BACKENDS: [Backend; 2] = [Backend::Uring, Backend::Epoll];

/// An engine on `backend` with the defaults.
pub fn engine(backend: Backend) -> Engine {
    Engine::builder()
        .backend(backend)
        .build()
        .expect("engine builds")
}

/// A TCP listener on loopback whose single connection is read to EOF on a thread; the thread
/// returns every byte received.
pub struct TcpSink {
    /// Where to connect.
    pub addr: SocketAddr,
    handle: JoinHandle<Vec<u8>>,
}

impl TcpSink {
    /// Starts a sink that reads as fast as it can.
    pub fn start() -> TcpSink {
        TcpSink::start_with(None, Duration::ZERO)
    }

    /// Starts a sink with an optional `SO_RCVBUF` and a pause after every read (a slow reader).
    pub fn start_with(rcvbuf: Option<usize>, pause: Duration) -> TcpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        if let Some(n) = rcvbuf {
            socket2::SockRef::from(&listener)
                .set_recv_buffer_size(n)
                .expect("SO_RCVBUF");
        }
        let addr = listener.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            out
        });
        TcpSink { addr, handle }
    }

    /// A connected client stream.
    pub fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).expect("connect")
    }

    /// Waits for EOF and returns what arrived.
    pub fn finish(self) -> Vec<u8> {
        self.handle.join().expect("sink thread")
    }
}

/// A UDP receiver that collects datagrams until `count` arrived or `idle` passes with none.
pub struct UdpSink {
    /// Where to send.
    pub addr: SocketAddr,
    handle: JoinHandle<Vec<Vec<u8>>>,
}

impl UdpSink {
    /// Binds on `bind` (e.g. "127.0.0.1:0" or "[::1]:0") and collects up to `count` datagrams.
    pub fn start(bind: &str, count: usize, idle: Duration) -> UdpSink {
        let sock = UdpSocket::bind(bind).expect("bind udp");
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(8 << 20)
            .expect("SO_RCVBUF");
        sock.set_read_timeout(Some(idle)).expect("SO_RCVTIMEO");
        let addr = sock.local_addr().expect("local addr");
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            while out.len() < count {
                match sock.recv(&mut buf) {
                    Ok(n) => out.push(buf[..n].to_vec()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            out
        });
        UdpSink { addr, handle }
    }

    /// Waits for the receiver and returns the datagrams in arrival order.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.handle.join().expect("udp sink thread")
    }
}

/// A deterministic random payload of `len` bytes.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// Random message sizes in `1..=max`, log-uniform so small and large both occur.
pub fn random_sizes(seed: u64, n: usize, max: usize) -> Vec<usize> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let max_bits = usize::BITS - max.leading_zeros();
    (0..n)
        .map(|_| {
            let bits = rng.gen_range(0..max_bits);
            rng.gen_range(1..=(1usize << bits).min(max))
        })
        .collect()
}

//! The README's examples, compiled as doctests (`cargo test -p volley --doc`).
//! `tests/tests/readme.rs` keeps each one line for line in step with the README (the hidden
//! `# ` lines are the scaffolding the README leaves out); the "With tokio" example is
//! `volley::tokio`'s own doctest.
//!
//! # Using the library
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let frames: Vec<bytes::Bytes> = Vec::new();
//! # let log_lines: Vec<String> = Vec::new();
//! # let peers: Vec<std::net::SocketAddr> = Vec::new();
//! use bytes::Bytes;
//! use volley::{Backend, Engine};
//!
//! let mut engine = Engine::builder()
//!     .backend(Backend::Auto)              // or Uring / Epoll; VOLLEY_BACKEND=uring|epoll|auto
//!     .max_queued_bytes_per_socket(8 << 20)
//!     .build()?;
//! let tcp = engine.register_tcp(std::net::TcpStream::connect("127.0.0.1:9000")?)?;
//! for frame in frames {
//!     if let Err(refused) = engine.send(tcp, frame) {   // queued; returns at once
//!         if !refused.is_backpressure() {
//!             return Err(refused.into());
//!         }
//!         engine.flush(tcp)?;                           // make room, then the same frame again:
//!         engine.send(tcp, refused.into_inner())?;      // a refused send hands the buffer back
//!     }
//! }
//! engine.submit()?;                        // optional: hand everything to the kernel now, no wait
//! let report = engine.flush(tcp)?;         // barrier: all earlier writes terminal
//! println!("{} writes, {} bytes via {}", report.writes, report.bytes, engine.backend());
//!
//! let mut w = engine.writer(tcp)?;         // many small messages: copied, as a BufWriter copies
//! for line in &log_lines {                 // (Vec<String>)
//!     w.write(line.as_bytes())?;           // borrowed; each is one write with its own outcome
//! }
//! let report = w.flush()?;                 // the stream's barrier
//! drop(w);
//!
//! let udp = engine.register_udp(std::net::UdpSocket::bind("0.0.0.0:0")?)?;   // unconnected
//! let frame = Bytes::from_static(b"rtp...");
//! for peer in &peers {                     // a relay: each frame to every peer (Vec<SocketAddr>)
//!     // An address this socket can never reach (IPv6 on an IPv4 socket, port 0, 0.0.0.0) is
//!     // refused here with Error::BadDestination and the buffer back; nothing is queued.
//!     engine.send_to(udp, frame.clone(), *peer)?;
//! }
//! let r = engine.flush(udp)?;              // datagram failures are counted, not raised
//! println!("sent {}, failed {}", r.writes, r.failed);
//! // Peer errors: ICMP reports about datagrams that *left* (counted as sent above), per destination.
//! for u in engine.unreachable_destinations(udp)? {
//!     println!("{} unreachable: {} ({} ICMP reports)", u.dest, u.status, u.reports);
//! }
//! let all = engine.flush_all()?;           // every socket's report, even if some stream failed
//! for e in all.errors() { eprintln!("stream failed: {e}"); }
//! # Ok(())
//! # }
//! ```
//!
//! # Packet descriptors
//! ```no_run
//! # use std::os::fd::OwnedFd;
//! # fn open_tun(_name: &str) -> std::io::Result<OwnedFd> { unimplemented!() }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut engine = volley::Engine::builder().build()?;
//! # let packets_from_peer: Vec<bytes::Bytes> = Vec::new();
//! let tun: OwnedFd = open_tun("tun0")?;            // /dev/net/tun + TUNSETIFF(IFF_TUN | IFF_NO_PI)
//! let dev = engine.register_packet(tun)?;
//! for pkt in packets_from_peer {                    // each a whole IPv4/IPv6 packet (Bytes)
//!     engine.send(dev, pkt)?;                       // one packet, never merged, never split
//! }
//! let r = engine.flush(dev)?;                       // counted per packet, like datagrams
//! println!("{} packets in, {} refused", r.writes, r.failed);
//! # Ok(())
//! # }
//! ```
//!
//! # Driving the engine from an event loop
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut engine = volley::Engine::builder().build()?;
//! # let tcp = engine.register_tcp(std::net::TcpStream::connect("127.0.0.1:9000")?)?;
//! # let frame = bytes::Bytes::from_static(b"frame");
//! use std::os::fd::AsRawFd;
//! engine.send(tcp, frame)?;
//! loop {
//!     if let Some(report) = engine.try_flush(tcp)? { break; }
//!     let mut pfd = libc::pollfd { fd: engine.as_raw_fd(), events: libc::POLLIN, revents: 0 };
//!     let ms = engine.next_timeout().map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
//!     unsafe { libc::poll(&mut pfd, 1, ms) };          // or mio / epoll / your reactor
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # TLS
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use std::net::TcpStream;
//! # use std::path::Path;
//! # use std::time::Duration;
//! # let mut engine = volley::Engine::builder().build()?;
//! # let messages: Vec<&[u8]> = Vec::new();
//! use volley::tls::{self, TlsStream};
//!
//! let config = tls::client_config(
//!     Some(Path::new("ca.pem")),                                   // None: the system roots
//!     Some((Path::new("client.pem"), Path::new("client.key"))),  // a client certificate (PEM)
//! )?;
//! let id = engine.register_tcp(TcpStream::connect("127.0.0.1:8443")?)?;
//! let mut tls = TlsStream::client(config, "localhost")?   // the name checked in the certificate
//!     .timeout(Duration::from_secs(5))                   // the handshake's; default 10 s
//!     .complete(&mut engine, id)?;
//! for m in messages { tls.send(&mut engine, m)?; }       // plaintext, queued
//! tls.flush(&mut engine)?;                               // sealed into full records, one batch, the barrier
//! tls.close(&mut engine)?;                               // close_notify, then the peer's
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "tls"))]
//! # fn main() {}
//! ```

//! TLS over the engine with rustls (feature `tls`).
//!
//! A [`TlsStream`] runs a rustls session over a TCP stream registered with an [`Engine`]:
//! writes queue plaintext; a flush encrypts everything queued into as few records as possible
//! (≤ 16 KiB each) and hands the ciphertext to the engine as one batch ([`Engine::send`]), and
//! its barrier resolves when the ciphertext of every earlier write is sent ([`Engine::flush`]).
//! Reads go through rustls on the same socket (the engine only writes). Handshake, alerts and
//! `close_notify` are handled, and every TLS failure is an [`Error::Tls`] that names it
//! ([`TlsStatus`]), with timeouts instead of hangs.
//!
//! The handshake runs over the registered socket, so a stream that first talked in the clear
//! can be upgraded in place (STARTTLS): everything queued before [`Handshake::complete`] goes
//! out in the clear, in order, before the `ClientHello`.
//!
//! ```no_run
//! use std::net::TcpStream;
//! use std::path::Path;
//! use volley::tls::{self, TlsStream};
//! use volley::Engine;
//!
//! # fn main() -> Result<(), volley::Error> {
//! let mut engine = Engine::builder().build()?;
//! let id = engine.register_tcp(TcpStream::connect("127.0.0.1:8443").expect("connect"))?;
//! let config = tls::client_config(
//!     Some(Path::new("ca.pem")),                                  // None: the system roots
//!     Some((Path::new("client.pem"), Path::new("client.key"))), // a client certificate
//! )?;
//! let mut tls = TlsStream::client(config, "localhost")?.complete(&mut engine, id)?;
//! for _ in 0..1024 {
//!     tls.send(&mut engine, &[0u8; 64])?;   // queued plaintext
//! }
//! tls.flush(&mut engine)?;                  // 4 records of 16 KiB, one batch, the barrier
//! assert_eq!(tls.stats().data_records, 4);
//! tls.close(&mut engine)?;                  // close_notify, and the peer's answer
//! # Ok(()) }
//! ```
//!
//! [`Engine`]: crate::Engine
//! [`Engine::send`]: crate::Engine::send
//! [`Engine::flush`]: crate::Engine::flush
//! [`Error::Tls`]: crate::Error::Tls
//! [`TlsStatus`]: crate::TlsStatus

pub(crate) mod alert;
mod config;
mod stream;

pub use config::{client_config, load_certs, load_key, provider, root_store, server_config};
pub use stream::{Handshake, TlsStats, TlsStream};

/// The rustls crate this module is built on, for configurations of one's own.
pub use rustls;

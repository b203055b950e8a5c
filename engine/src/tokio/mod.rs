//! volley on tokio: senders whose flush is the barrier, over one engine per thread.
//!
//! A [`Driver`] wraps one [`Engine`](crate::Engine) for the tasks of one thread and makes it
//! progress through [`tokio::io::unix::AsyncFd`](::tokio::io::unix::AsyncFd) on the engine's
//! descriptor; there is no task of its own: a sender that waits (for its barrier, or for room
//! under backpressure) polls the descriptor, submits, and wakes the others.
//!
//! - [`TcpSender`] implements [`AsyncWrite`](::tokio::io::AsyncWrite): `poll_write` queues a
//!   copy (small writes end up in the engine's staging chunks, large ones go as one buffer),
//!   `poll_flush` is the barrier, `poll_shutdown` flushes then half-closes. It works with
//!   `tokio::io::copy`, `AsyncWriteExt` and `tokio_util::codec::FramedWrite`.
//!   [`TcpSender::send`] queues an owned [`Bytes`](bytes::Bytes) without copying.
//! - [`UdpSender`] implements `futures::Sink<Bytes>` (connected) and
//!   `Sink<(Bytes, SocketAddr)>` (unconnected); its flush is the barrier, and
//!   [`UdpSender::last_report`] says what happened to each datagram it covered.
//! - [`TcpReader`] and [`UdpReader`] ([`Driver::split_tcp`], [`Driver::split_udp`]) read the
//!   same sockets without ever blocking: the io_uring backend keeps its sockets in blocking
//!   mode, which a plain tokio read on a duplicate would inherit.
//!
//! Backpressure is `Poll::Pending` with a waker, never an error and never a growing queue.
//! Writes reach the kernel on a flush, as with a `BufWriter`; a flush first yields once, so
//! the writes every other ready task of the thread makes meanwhile join the same submission
//! (N tasks writing and flushing through one sender cost far fewer than N system calls). The
//! only sender handle of an engine does not yield: no other task can add to its batch.
//!
//! # Threads
//!
//! The driver and its senders are `!Send`: run them on a `current_thread` runtime, or with
//! `spawn_local` in a [`LocalSet`](::tokio::task::LocalSet). On a multi-thread runtime give
//! each worker its own engine: [`Driver::current`] keeps one per thread, and a `LocalSet` per
//! worker (or a `current_thread` runtime per core) runs the tasks that use it. A sender stays
//! on the thread whose driver made it. The runtime needs IO and time (`enable_all`).
//!
//! # Example
//!
//! ```no_run
//! use tokio::io::AsyncWriteExt;
//! use volley::tokio::Driver;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let driver = Driver::current()?; // this thread's engine
//! let mut tx = driver.register_tcp(std::net::TcpStream::connect("127.0.0.1:9000")?)?;
//! for i in 0..1000u32 {
//!     tx.write_all(format!("message {i}\n").as_bytes()).await?; // queued
//! }
//! let report = tx.flush().await?; // one submission, then the barrier
//! println!("{} bytes sent", report.bytes);
//! tx.shutdown().await?; // the peer reads all 1000, then EOF
//! # Ok(()) }
//! # fn main() {
//! #     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! #     rt.block_on(run()).unwrap();
//! # }
//! ```

mod driver;
mod flush;
mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
mod udp;

pub use driver::Driver;
pub use tcp::{TcpReader, TcpSender};
pub use udp::{UdpReader, UdpSender};

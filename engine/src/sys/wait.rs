//! Waiting for a socket to become readable, and reading without blocking, whatever mode the
//! backend put it in (feature `tls`: a TLS session reads its peer's records from a socket the
//! engine writes to).
//!
//! The io_uring backend keeps sockets blocking and epoll makes them `O_NONBLOCK`; both flags
//! belong to the open file, shared by every duplicate. So reads take `MSG_DONTWAIT` per call,
//! and a blocking read is `poll(2)` with a timeout, then such a read.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// `poll(2)` for `POLLIN` on `fd`: `Ok(true)` once it is readable (data, EOF or an error to
/// read), `Ok(false)` when `timeout` passed first (`None`: wait without limit). Retries `EINTR`.
pub(crate) fn readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        // Rounded up, so that a short timeout still waits instead of spinning.
        Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        None => -1,
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid, exclusively borrowed `pollfd` for the call (nfds = 1), and
        // its descriptor is borrowed, so open, for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

pub(crate) use super::recv_dontwait as recv;

//! The async adapters' own kernel edge (feature `tokio`): descriptors registered with tokio's
//! reactor, and `recv`/`recvfrom` with `MSG_DONTWAIT`.
//!
//! The io_uring backend keeps its sockets in blocking mode, and `O_NONBLOCK` belongs to the
//! open file, so every duplicate of such a socket blocks too; a read driven by a reactor must
//! still never block, hence the per-call flag.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{Interest, ReadBuf};

/// Registers `fd` with the current runtime's reactor for readability.
///
/// # Errors
/// The reactor's registration error.
///
/// # Panics
/// Outside a tokio runtime with IO enabled.
pub(crate) fn register_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor is open, and refers to the
    // same file, until the `AsyncFd` drops or hands it back; `OwnedFd::as_raw_fd` always
    // returns that one descriptor.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

pub(crate) use super::recv_dontwait as recv;

/// `recv(fd, MSG_DONTWAIT)` into the unfilled part of `buf`, which it then marks filled
/// (nothing at EOF), or `WouldBlock`. The unfilled part is not zeroed first: on a 64 KiB read
/// buffer that `memset` costs more than the read itself.
pub(crate) fn recv_buf(fd: BorrowedFd<'_>, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    // SAFETY: the kernel only writes bytes through the pointer, never de-initialises any,
    // which is what `unfilled_mut` asks of its caller.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: `unfilled` is valid for writes of `unfilled.len()` bytes (`MaybeUninit<u8>` has
    // the layout of `u8`) and exclusively borrowed for the call; `fd` is a descriptor
    // borrowed (so open) for the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            unfilled.as_mut_ptr().cast(),
            unfilled.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: `recv` returned `n` ≤ `unfilled.len()`: it wrote the first `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(())
}

/// `recvfrom(fd, buf, MSG_DONTWAIT)`: the datagram's length (truncated to `buf`) and source.
pub(crate) fn recv_from(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    let sock = socket2::SockRef::from(&fd);
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, so the slice cast keeps pointer and
    // length; `recv_from_with_flags` only writes initialised bytes through it, so `buf` stays
    // initialised.
    let uninit = unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) };
    let (n, from) = sock.recv_from_with_flags(uninit, libc::MSG_DONTWAIT)?;
    let from = from.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "recvfrom returned a source that is not an IP address",
        )
    })?;
    Ok((n, from))
}

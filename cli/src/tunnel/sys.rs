//! SIGINT/SIGTERM as a descriptor (`signalfd`, in the poll set: no race between checking a flag
//! and blocking in `poll`), and `poll(2)`.

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Blocks SIGINT and SIGTERM for this thread (call before any other thread starts, so they all
/// inherit the mask) and returns a non-blocking signalfd that becomes readable when one arrives.
///
/// # Errors
/// `sigprocmask`/`signalfd` failures.
pub fn stop_signals() -> io::Result<OwnedFd> {
    // SAFETY: `sigset_t` is plain data; all zeroes is a valid (if unspecified) set, which
    // `sigemptyset` then initialises.
    let mut set: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: `set` is a live, exclusively borrowed sigset_t for each call.
    unsafe {
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; the old mask is not asked for (null).
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: -1 asks for a new signalfd; `set` is initialised and read during the call only.
    let fd = unsafe { libc::signalfd(-1, &raw const set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by `signalfd`, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from the signalfd; its number, or `None` if none is pending.
pub fn take_signal(fd: BorrowedFd<'_>) -> Option<i32> {
    // SAFETY: `signalfd_siginfo` is plain data; all zeroes is valid.
    let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is writable for `size` bytes for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut info).cast(), size) };
    (usize::try_from(n).ok() == Some(size)).then(|| i32::try_from(info.ssi_signo).unwrap_or(0))
}

/// `poll(2)` on `fds` for up to `timeout_ms` (-1: no limit); `EINTR` counts as "nothing ready".
///
/// # Errors
/// Any other poll failure.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a live, exclusively borrowed array of `n` pollfds for the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r.unsigned_abs() as usize)
}

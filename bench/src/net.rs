//! Socket options shared by the sink and the benchmark.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `setsockopt(fd, level, opt, &value)` for an int option.
pub fn setsockopt_int(
    fd: &impl AsFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen overflow"))?;
    // SAFETY: `fd` is an open socket borrowed for the call; the option value is a live c_int
    // whose size is passed alongside.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for a receive buffer of `bytes`: `SO_RCVBUFFORCE` (root: ignores `rmem_max`), else
/// `SO_RCVBUF` (capped by `net.core.rmem_max`). Best effort.
pub fn grow_rcvbuf(fd: &impl AsFd, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, v);
    }
}

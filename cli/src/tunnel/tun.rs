//! The TUN device: `/dev/net/tun` + `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`: bare IP packets, no
//! 4-byte packet-information prefix; `IFF_VNET_HDR` for `--offload`), its MTU (`SIOCSIFMTU`),
//! and one packet per `read`/`write`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long `TUNSETIFF` retries a device that is still attached elsewhere.
const BUSY_RETRY: Duration = Duration::from_secs(3);

/// An attached TUN device; the descriptor is non-blocking.
#[derive(Debug)]
pub struct Tun {
    /// The queue descriptor: reads take packets the kernel routed into the device, writes inject.
    pub fd: OwnedFd,
    /// The device name the kernel settled on.
    pub name: String,
}

/// An `ifreq` naming `name`, everything else zero.
fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(format!(
            "bad TUN device name {name:?}: 1 to {} bytes, no '/', space or NUL",
            libc::IFNAMSIZ - 1
        ));
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, sockaddrs and a
    // pointer); all zeroes is a valid value of every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

impl Tun {
    /// Creates the device `name`, or attaches to it if it exists (a persistent device made with
    /// `ip tuntap add mode tun`), non-blocking; `vnet_hdr` adds `IFF_VNET_HDR` (every packet
    /// behind a `virtio_net_hdr`, for offloads).
    ///
    /// # Errors
    /// A message saying what failed and what to do (no `/dev/net/tun`, no `CAP_NET_ADMIN`, the
    /// device is busy or not a TUN device).
    pub fn open(name: &str, vnet_hdr: bool) -> Result<Tun, String> {
        let mut req = ifreq(name)?;
        let path = c"/dev/net/tun";
        // SAFETY: `path` is NUL-terminated and outlives the call; `open` only returns a new fd.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(format!(
                "cannot open /dev/net/tun: {e} (needs the tun module and root or CAP_NET_ADMIN)"
            ));
        }
        // SAFETY: `raw` was just returned by `open`, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
        req.ifr_ifru.ifru_flags = libc::c_short::try_from(libc::IFF_TUN | libc::IFF_NO_PI | vnet)
            .map_err(|_| "the TUN flags do not fit ifr_flags".to_string())?;
        // A tunnel that just exited (even killed) may hold its device a moment longer: io_uring
        // releases its registered files asynchronously after the process is gone. Retry EBUSY
        // briefly before calling it a conflict.
        let deadline = Instant::now() + BUSY_RETRY;
        let r = loop {
            // SAFETY: TUNSETIFF reads and writes one `ifreq` (linux/if_tun.h), which lives on
            // this stack frame for the whole call; `fd` is an open /dev/net/tun descriptor.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            let busy = r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
            if !busy || Instant::now() >= deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root or CAP_NET_ADMIN)",
                Some(libc::EBUSY) => " (another process has it attached)",
                Some(libc::EINVAL) => " (a device of that name exists and is not a TUN device)",
                _ => "",
            };
            return Err(format!("TUNSETIFF {name:?} failed: {e}{hint}"));
        }
        // SAFETY: the kernel NUL-terminates `ifr_name` (at most IFNAMSIZ - 1 name bytes), and
        // the array lives in `req` for the borrow.
        let name = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Tun { fd, name })
    }

    /// Sets the device's MTU.
    ///
    /// # Errors
    /// The ioctl's error, with the device name.
    pub fn set_mtu(&self, mtu: usize) -> Result<(), String> {
        let mut req = ifreq(&self.name)?;
        req.ifr_ifru.ifru_mtu =
            libc::c_int::try_from(mtu).map_err(|_| format!("--mtu {mtu} is out of range"))?;
        let ctl = control_socket()?;
        // SAFETY: SIOCSIFMTU reads one `ifreq` (name and `ifr_mtu`) that lives on this stack
        // frame for the call; `ctl` is an open socket.
        let r = unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &mut req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("cannot set the MTU of {} to {mtu}: {e}", self.name));
        }
        Ok(())
    }

    /// The descriptor, borrowed (for poll).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

/// An `AF_INET` datagram socket for interface ioctls.
fn control_socket() -> Result<OwnedFd, String> {
    // SAFETY: `socket` takes no pointers and returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!(
            "cannot open a control socket: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` was just returned by `socket`, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One `read(2)` of up to `len` bytes to `buf`. `Ok(None)` on `EAGAIN`.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes for the duration of the call.
unsafe fn read_raw(fd: BorrowedFd<'_>, buf: *mut u8, len: usize) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: the caller guarantees `buf` is writable for `len` bytes; `read` writes at most
        // that many and never reads them.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.cast(), len) };
        if n >= 0 {
            return Ok(Some(n.unsigned_abs()));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
}

/// One `read(2)`: one packet, into (possibly uninitialised) `buf`. `Ok(None)` on `EAGAIN`.
///
/// # Errors
/// The read's error (`EBADFD`: the device was deleted).
pub fn read_packet(
    fd: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is an exclusively borrowed slice of `buf.len()` bytes.
    unsafe { read_raw(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// [`read_packet`] into an initialised buffer.
///
/// # Errors
/// As [`read_packet`].
pub fn read_packet_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is an exclusively borrowed slice of `buf.len()` bytes.
    unsafe { read_raw(fd, buf.as_mut_ptr(), buf.len()) }
}

/// One `writev(2)` of `hdr` then `p`: one packet behind a virtio header (`IFF_VNET_HDR`).
///
/// # Errors
/// As [`write_packet`].
pub fn write_packet_with(fd: BorrowedFd<'_>, hdr: &[u8], p: &[u8]) -> io::Result<()> {
    let iov = [
        libc::iovec {
            iov_base: hdr.as_ptr().cast_mut().cast(),
            iov_len: hdr.len(),
        },
        libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        },
    ];
    loop {
        // SAFETY: both iovecs point at slices that are readable for their lengths for the
        // call; `writev` only reads them (the `*mut` is the C type, not a licence to write).
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// One `write(2)`: one packet.
///
/// # Errors
/// The write's error (`EIO`: the device is down; `EBADFD`: deleted).
pub fn write_packet(fd: BorrowedFd<'_>, p: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: `p` is readable for `p.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(fd.as_raw_fd(), p.as_ptr().cast(), p.len()) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

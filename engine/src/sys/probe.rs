//! Run-time capability probes: io_uring (setup and opcodes) and UDP GSO.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// Why io_uring cannot be used here, in words, or `Ok` with the ring it probed.
pub(crate) fn uring(entries: u32) -> Result<IoUring, String> {
    let ring = match IoUring::builder()
        .setup_cqsize(entries.saturating_mul(2))
        .build(entries)
    {
        Ok(r) => r,
        Err(e) => return Err(setup_error(&e)),
    };
    let mut probe = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Err(format!(
            "IORING_REGISTER_PROBE failed ({e}); the kernel is older than 5.6"
        ));
    }
    for (code, name) in [
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel does not support {name}"));
        }
    }
    Ok(ring)
}

fn setup_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "io_uring_setup returned ENOSYS: the kernel has no io_uring (older than \
             5.1 or CONFIG_IO_URING=n), or a seccomp filter answers ENOSYS"
                .to_string()
        }
        Some(libc::EPERM) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            match sysctl {
                Some(v @ 1..) => format!(
                    "io_uring_setup returned EPERM: the sysctl kernel.io_uring_disabled is {v}"
                ),
                _ => "io_uring_setup returned EPERM: blocked by a seccomp profile (Docker's default \
                      profile blocks io_uring; run with a profile that allows io_uring_setup/enter/register)"
                    .to_string(),
            }
        }
        Some(libc::ENOMEM) => {
            "io_uring_setup returned ENOMEM: raise RLIMIT_MEMLOCK or use a smaller ring".to_string()
        }
        _ => format!("io_uring_setup failed: {e}"),
    }
}

/// Whether the kernel accepts `UDP_SEGMENT` (GSO), asked once on a throwaway socket, as quinn-udp
/// does: a kernel without UDP GSO rejects `getsockopt(SOL_UDP, UDP_SEGMENT)`.
pub(crate) fn udp_gso() -> bool {
    let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
        return false;
    };
    let mut val: libc::c_int = 0;
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("4 fits socklen_t");
    // SAFETY: the fd is a valid socket for the duration; val/len point at writable memory of the
    // sizes given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}

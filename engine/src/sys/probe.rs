//! Run-time capability probes: io_uring (setup, its fast-path setup flags, and opcodes) and UDP
//! GSO.

use std::io;

use io_uring::{opcode, IoUring, Probe};

use super::uring::{FastPaths, UringFeatures};

/// One io_uring setup flag a fast path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetupFlag {
    SingleIssuer,
    DeferTaskrun,
    CoopTaskrun,
    NoSqArray,
}

impl SetupFlag {
    /// In the order they are reported.
    const ALL: [SetupFlag; 4] = [
        SetupFlag::SingleIssuer,
        SetupFlag::DeferTaskrun,
        SetupFlag::CoopTaskrun,
        SetupFlag::NoSqArray,
    ];

    fn name(self) -> &'static str {
        match self {
            SetupFlag::SingleIssuer => "single_issuer",
            SetupFlag::DeferTaskrun => "defer_taskrun",
            SetupFlag::CoopTaskrun => "coop_taskrun",
            SetupFlag::NoSqArray => "no_sqarray",
        }
    }

    /// The kernel's name and the release that added it.
    fn kernel(self) -> (&'static str, &'static str) {
        match self {
            // commit 97bbdc06a444 ("io_uring: add IORING_SETUP_SINGLE_ISSUER")
            SetupFlag::SingleIssuer => ("IORING_SETUP_SINGLE_ISSUER", "6.0"),
            // commit c0e0d6ba25f1 ("io_uring: add IORING_SETUP_DEFER_TASKRUN")
            SetupFlag::DeferTaskrun => ("IORING_SETUP_DEFER_TASKRUN", "6.1"),
            // commit e1169f06d5bb ("io_uring: use TWA_SIGNAL_NO_IPI if
            // IORING_SETUP_COOP_TASKRUN is used"), with IORING_SETUP_TASKRUN_FLAG
            // (ef060ea9e4fd), both 5.19
            SetupFlag::CoopTaskrun => ("IORING_SETUP_COOP_TASKRUN", "5.19"),
            // commit 2af89abda7d9 ("io_uring: add option to remove SQ indirection")
            SetupFlag::NoSqArray => ("IORING_SETUP_NO_SQARRAY", "6.6"),
        }
    }

    fn wanted(self, want: &FastPaths) -> bool {
        match self {
            // DEFER_TASKRUN needs SINGLE_ISSUER: asking for it asks for both.
            SetupFlag::SingleIssuer => want.single_issuer || want.defer_taskrun,
            SetupFlag::DeferTaskrun => want.defer_taskrun,
            SetupFlag::CoopTaskrun => want.coop_taskrun,
            SetupFlag::NoSqArray => want.no_sqarray,
        }
    }

    fn apply(self, b: &mut io_uring::Builder) {
        match self {
            SetupFlag::SingleIssuer => {
                b.setup_single_issuer();
            }
            SetupFlag::DeferTaskrun => {
                // The kernel sets IORING_SQ_TASKRUN when completion work waits: the driver
                // enters only then (not on every non-blocking step).
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
            SetupFlag::CoopTaskrun => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            SetupFlag::NoSqArray => {
                b.setup_no_sqarray();
            }
        }
    }
}

fn build(entries: u32, flags: &[SetupFlag]) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(entries.saturating_mul(2));
    for f in flags {
        f.apply(&mut b);
    }
    b.build(entries)
}

/// Sets up a ring with the setup flags `want` asks for. A flag the kernel refuses (`EINVAL`:
/// older than the release that added it) is probed alone, left off and recorded with why; the
/// ring is then built with the rest.
fn setup(entries: u32, want: &FastPaths) -> Result<(IoUring, UringFeatures), String> {
    let mut kept: Vec<SetupFlag> = SetupFlag::ALL
        .into_iter()
        .filter(|f| f.wanted(want))
        .collect();
    let mut features = UringFeatures::default();
    let ring = match build(entries, &kept) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !kept.is_empty() => {
            // Which one? Each alone (DEFER_TASKRUN brings SINGLE_ISSUER along).
            kept.retain(|&f| {
                let alone = build(entries, &[f]);
                if let Err(e) = &alone {
                    let (flag, release) = f.kernel();
                    features.refused.push((
                        f.name(),
                        format!("io_uring_setup refused {flag} ({e}): needs Linux {release}"),
                    ));
                }
                alone.is_ok()
            });
            match build(entries, &kept) {
                Ok(r) => r,
                Err(e) => {
                    // Accepted one by one, refused together: go without any.
                    for f in kept.drain(..) {
                        features.refused.push((
                            f.name(),
                            format!("io_uring_setup refused it with the other flags ({e})"),
                        ));
                    }
                    build(entries, &[]).map_err(|e| setup_error(&e))?
                }
            }
        }
        Err(e) => return Err(setup_error(&e)),
    };
    // DEFER_TASKRUN brought SINGLE_ISSUER along (`wanted`): both are listed.
    features.enabled = kept.iter().map(|f| f.name()).collect();
    Ok((ring, features))
}

/// Why io_uring cannot be used here, in words, or `Ok` with the ring it probed (set up with the
/// setup flags of `want` the kernel accepts) and the fast paths in effect so far.
pub(crate) fn uring(entries: u32, want: &FastPaths) -> Result<(IoUring, UringFeatures), String> {
    let (ring, mut features) = setup(entries, want)?;
    let mut probe = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Err(format!(
            "IORING_REGISTER_PROBE failed ({e}); the kernel is older than 5.6"
        ));
    }
    for (code, name) in [
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        // Packet descriptors (`Engine::register_packet`): Linux 5.6.
        (opcode::Write::CODE, "IORING_OP_WRITE"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel does not support {name}"));
        }
    }
    // Each used where present, degraded without (README, "Kernel requirements").
    let p = ring.params();
    features.kernel_feature(
        "feat_nodrop",
        p.is_feature_nodrop(),
        "IORING_FEAT_NODROP (5.5) missing: completions beyond a full CQ are dropped; the kernel \
         then answers EBADR and every op in flight fails with CompletionLost",
    );
    features.kernel_feature(
        "feat_ext_arg",
        p.is_feature_ext_arg(),
        "IORING_FEAT_EXT_ARG (5.11) missing: timed waits poll(2) the ring descriptor (one more \
         system call per wait)",
    );
    features.kernel_feature(
        "op_send",
        probe.is_supported(opcode::Send::CODE),
        "IORING_OP_SEND (5.6) missing: single buffers go as IORING_OP_SENDMSG",
    );
    // Zero-copy sends, per opcode: without both the engine never sends zero-copy.
    match [
        (opcode::SendZc::CODE, "IORING_OP_SEND_ZC (Linux 6.0)"),
        (opcode::SendMsgZc::CODE, "IORING_OP_SENDMSG_ZC (Linux 6.1)"),
    ]
    .into_iter()
    .find(|(code, _)| !probe.is_supported(*code))
    {
        None => features.enabled.push(SEND_ZC),
        Some((_, name)) => features
            .refused
            .push((SEND_ZC, format!("the kernel does not support {name}"))),
    }
    Ok((ring, features))
}

/// The name of zero-copy sends in [`UringFeatures`] (`enabled` when in effect, `refused` with
/// why when a threshold asked for them and the kernel lacks an opcode).
pub(crate) const SEND_ZC: &str = "send_zc";

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
/// The running kernel's (major, minor) version, from `uname(2)`'s release ("6.1.0-57-cloud…").
pub(crate) fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: `uname` fills the zeroed struct it is given; its fields are NUL-terminated.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return None;
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    parse_release(&release)
}

/// (major, minor) of a kernel release string.
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

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

/// What a socket handed to `register_tcp` (`tcp`) or `register_udp` is, if it is not what the
/// call takes: an IPv4 or IPv6 TCP socket, not listening, connected (or reset by its peer with
/// the error still pending); or an IPv4 or IPv6 UDP socket. `Err` holds the socket's description, in words.
pub(crate) fn unsuitable_socket(fd: std::os::fd::BorrowedFd<'_>, tcp: bool) -> Result<(), String> {
    use socket2::{Domain, Protocol, SockRef, Type};
    let sock = SockRef::from(&fd);
    let ask = |what: &str, e: io::Error| format!("a descriptor whose {what} cannot be read ({e})");
    let domain = sock.domain().map_err(|e| ask("SO_DOMAIN", e))?;
    let ty = sock.r#type().map_err(|e| ask("SO_TYPE", e))?;
    let proto = sock.protocol().map_err(|e| ask("SO_PROTOCOL", e))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(format!("a socket of another family ({domain:?})"));
    }
    let (want_ty, want_proto) = if tcp {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    if ty != want_ty || proto.is_some_and(|p| p != want_proto) {
        return Err(format!("a {ty:?} socket (protocol {proto:?})"));
    }
    if tcp {
        if sock.is_listener().map_err(|e| ask("SO_ACCEPTCONN", e))? {
            return Err("a listening TCP socket".to_string());
        }
        // Not connected: never connected (refused), or connected and then reset by its peer
        // (taken: the error is pending, and the first send reports it as that stream's error).
        // `POLLERR` tells a pending error without consuming it, as `SO_ERROR` would.
        if let Err(e) = sock.peer_addr() {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
                events: 0,
                revents: 0,
            };
            // SAFETY: one live pollfd for the call; a zero timeout never blocks.
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            if n != 1 || pfd.revents & libc::POLLERR == 0 {
                return Err(format!("a TCP socket that is not connected ({e})"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod release_tests {
    #[test]
    fn kernel_releases_parse() {
        assert_eq!(super::parse_release("6.1.0-57-cloud-amd64"), Some((6, 1)));
        assert_eq!(super::parse_release("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(super::parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(super::parse_release("garbage"), None);
    }
}

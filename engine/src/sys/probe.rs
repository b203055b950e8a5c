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
    let (ring, features) = setup(entries, want)?;
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
    let mut features = features;
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

//! What io_uring this kernel has, printed for `scripts/kernel-matrix` (run with `--nocapture`):
//! the kernel release, the ring's feature bits (`io_uring_params.features`), the opcodes
//! `IORING_REGISTER_PROBE` reports, the backend `Backend::Auto` picks (and why, if it fell back),
//! the kernel features the engine probes and uses (present, or missing with what it does
//! instead), and which of the engine's io_uring fast paths the kernel takes when all are asked for
//! ([`volley::Engine::uring_features`]). Every line starts with `PROBE `.
//!
//! It asserts only what must hold everywhere the engine runs on io_uring: if `Auto` picks
//! io_uring, the kernel supports the opcodes the engine needs (SENDMSG, ASYNC_CANCEL).

use volley::{Backend, BackendKind, Engine};

/// `IORING_FEAT_*`, bit by bit (include/uapi/linux/io_uring.h).
const FEATURES: [&str; 18] = [
    "SINGLE_MMAP",
    "NODROP",
    "SUBMIT_STABLE",
    "RW_CUR_POS",
    "CUR_PERSONALITY",
    "FAST_POLL",
    "POLL_32BITS",
    "SQPOLL_NONFIXED",
    "EXT_ARG",
    "NATIVE_WORKERS",
    "RSRC_TAGS",
    "CQE_SKIP",
    "LINKED_FILE",
    "REG_REG_RING",
    "RECVSEND_BUNDLE",
    "MIN_TIMEOUT",
    "RW_ATTR",
    "NO_IOWAIT",
];

/// `IORING_OP_*`, by number.
const OPS: [&str; 63] = [
    "NOP",
    "READV",
    "WRITEV",
    "FSYNC",
    "READ_FIXED",
    "WRITE_FIXED",
    "POLL_ADD",
    "POLL_REMOVE",
    "SYNC_FILE_RANGE",
    "SENDMSG",
    "RECVMSG",
    "TIMEOUT",
    "TIMEOUT_REMOVE",
    "ACCEPT",
    "ASYNC_CANCEL",
    "LINK_TIMEOUT",
    "CONNECT",
    "FALLOCATE",
    "OPENAT",
    "CLOSE",
    "FILES_UPDATE",
    "STATX",
    "READ",
    "WRITE",
    "FADVISE",
    "MADVISE",
    "SEND",
    "RECV",
    "OPENAT2",
    "EPOLL_CTL",
    "SPLICE",
    "PROVIDE_BUFFERS",
    "REMOVE_BUFFERS",
    "TEE",
    "SHUTDOWN",
    "RENAMEAT",
    "UNLINKAT",
    "MKDIRAT",
    "SYMLINKAT",
    "LINKAT",
    "MSG_RING",
    "FSETXATTR",
    "SETXATTR",
    "FGETXATTR",
    "GETXATTR",
    "SOCKET",
    "URING_CMD",
    "SEND_ZC",
    "SENDMSG_ZC",
    "READ_MULTISHOT",
    "WAITID",
    "FUTEX_WAIT",
    "FUTEX_WAKE",
    "FUTEX_WAITV",
    "FIXED_FD_INSTALL",
    "FTRUNCATE",
    "BIND",
    "LISTEN",
    "RECV_ZC",
    "EPOLL_WAIT",
    "READV_FIXED",
    "WRITEV_FIXED",
    "PIPE",
];

/// The opcodes that matter to a socket-write engine (used or planned), reported one by one.
const WATCHED: [&str; 8] = [
    "SENDMSG",
    "ASYNC_CANCEL",
    "SEND",
    "POLL_ADD",
    "SEND_ZC",
    "SENDMSG_ZC",
    "RECV",
    "FIXED_FD_INSTALL",
];

/// What a plain `io_uring_setup` with 8 entries says: the feature bits and the supported opcodes
/// (by number), or the errno.
fn probe_ring() -> Result<(u32, Vec<u8>, u8), std::io::Error> {
    // struct io_uring_params is 120 bytes; `features` is the sixth u32.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes the 120-byte params block we own.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).expect("a descriptor fits in c_int");
    let features = params[5];
    // struct io_uring_probe: last_op u8, ops_len u8, resv u16, resv2 [u32; 3], then 256 ops of
    // {op u8, resv u8, flags u16, resv2 u32}.
    let mut probe = vec![0u8; 16 + 256 * 8];
    const IORING_REGISTER_PROBE: libc::c_uint = 8;
    const IO_URING_OP_SUPPORTED: u16 = 1;
    // SAFETY: the probe buffer holds 256 entries, as nr_args says.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_PROBE,
            probe.as_mut_ptr(),
            256u32,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is the ring we created and nothing else holds it.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    let last_op = probe[0];
    let ops_len = probe[1] as usize;
    let supported = (0..ops_len.min(256))
        .filter_map(|i| {
            let e = &probe[16 + i * 8..16 + i * 8 + 8];
            let flags = u16::from_le_bytes([e[2], e[3]]);
            (flags & IO_URING_OP_SUPPORTED != 0).then_some(e[0])
        })
        .collect();
    Ok((features, supported, last_op))
}

fn op_name(op: u8) -> String {
    OPS.get(op as usize)
        .map_or_else(|| format!("OP_{op}"), |s| (*s).to_string())
}

#[test]
fn report() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_else(|e| format!("? ({e})"));
    println!("PROBE kernel {}", release.trim());
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) => println!("PROBE io_uring_disabled {}", v.trim()),
        Err(_) => println!("PROBE io_uring_disabled absent"),
    }
    let mut ops_ok = Vec::new();
    match probe_ring() {
        Ok((features, supported, last_op)) => {
            let names: Vec<&str> = FEATURES
                .iter()
                .enumerate()
                .filter(|(i, _)| features & (1 << i) != 0)
                .map(|(_, n)| *n)
                .collect();
            let unknown = features & !((1u32 << FEATURES.len()) - 1);
            println!(
                "PROBE ring_features 0x{features:x} {}{}",
                names.join(","),
                if unknown != 0 {
                    format!(",unknown:0x{unknown:x}")
                } else {
                    String::new()
                }
            );
            println!(
                "PROBE opcodes {} supported (last_op {} = {})",
                supported.len(),
                last_op,
                op_name(last_op)
            );
            for w in WATCHED {
                let ok = supported.iter().any(|&o| op_name(o) == w);
                println!("PROBE op {w} {}", if ok { "yes" } else { "no" });
                if ok {
                    ops_ok.push(w);
                }
            }
        }
        Err(e) => println!("PROBE ring unavailable: {e}"),
    }
    let auto = Engine::builder()
        .backend(Backend::Auto)
        .build()
        .expect("Auto always builds");
    // The kernel features the engine itself probes and uses (and what it does without them).
    let f = auto.uring_features();
    println!("PROBE engine_kernel_features {}", f.kernel.join(","));
    for (name, without) in &f.kernel_missing {
        println!("PROBE engine_kernel_missing {name}: {without}");
    }
    println!(
        "PROBE auto_backend {:?}{}",
        auto.backend(),
        auto.fallback_reason()
            .map(|r| format!(" (fell back: {r})"))
            .unwrap_or_default()
    );
    if auto.backend() == BackendKind::Uring {
        assert!(
            ops_ok.contains(&"SENDMSG") && ops_ok.contains(&"ASYNC_CANCEL"),
            "Auto picked io_uring without SENDMSG/ASYNC_CANCEL: {ops_ok:?}"
        );
    }
    drop(auto);
    // Every fast path asked for: which the kernel takes, which it refuses and why.
    let all = Engine::builder()
        .backend(Backend::Uring)
        .uring_single_issuer(true)
        .uring_defer_taskrun(true)
        .uring_coop_taskrun(false)
        .uring_register_ring_fd(true)
        .uring_register_files(true)
        .uring_no_sqarray(true)
        .build();
    match all {
        Ok(e) => {
            let f = e.uring_features();
            println!("PROBE fastpaths_enabled {}", f.enabled.join(","));
            for (n, why) in &f.refused {
                println!("PROBE fastpath_refused {n}: {why}");
            }
        }
        Err(e) => println!("PROBE fastpaths io_uring engine refused: {e}"),
    }
    // coop_taskrun excludes defer_taskrun, so it is asked for alone.
    if let Ok(e) = Engine::builder()
        .backend(Backend::Uring)
        .uring_coop_taskrun(true)
        .build()
    {
        let f = e.uring_features();
        match f.refused_reason("coop_taskrun") {
            Some(why) => println!("PROBE fastpath_refused coop_taskrun: {why}"),
            None => println!("PROBE fastpath coop_taskrun yes"),
        }
    }
}

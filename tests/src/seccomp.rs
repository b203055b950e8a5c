//! A classic-BPF seccomp filter that refuses `io_uring_setup` with a chosen errno, to test the
//! fallback to epoll (FAILURES.md item 34) the way Docker's default profile (EPERM) or an old
//! kernel (ENOSYS) would present it.
//!
//! The filter applies to the calling thread and everything it later spawns or execs, and cannot
//! be removed: install it only in a child process (a re-exec'd test, or `Command::pre_exec`).

use std::io;

/// `AUDIT_ARCH_*` of the running architecture (`include/uapi/linux/audit.h`:
/// `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`, `EM_AARCH64 | …`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// `io_uring_setup` is 425 on every architecture that uses the unified syscall table (added in
/// 5.1, `include/uapi/asm-generic/unistd.h` and `arch/x86/entry/syscalls/syscall_64.tbl`).
const NR_IO_URING_SETUP: u32 = 425;

/// Offsets in `struct seccomp_data` (`include/uapi/linux/seccomp.h`): `int nr; __u32 arch; …`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

#[expect(
    clippy::cast_possible_truncation,
    reason = "BPF opcodes fit in 16 bits by definition (include/uapi/linux/bpf_common.h); a const fn cannot use try_from"
)]
const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "BPF opcodes fit in 16 bits by definition; a const fn cannot use try_from"
)]
const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Installs (for this thread and its descendants, irrevocably) a seccomp filter under which
/// `io_uring_setup` fails with `errno` and every other system call is allowed. A syscall from a
/// foreign architecture (e.g. the x32 or i386 ABI) is allowed unchanged.
///
/// Async-signal-safe (no allocation), so it may run in `Command::pre_exec`.
///
/// # Errors
/// The `prctl` error if the kernel refuses the filter.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn deny_io_uring(errno: i32) -> io::Result<()> {
    let ret_errno = libc::SECCOMP_RET_ERRNO | (errno.unsigned_abs() & libc::SECCOMP_RET_DATA);
    let filter = [
        // 0: A = seccomp_data.arch
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFFSET_ARCH),
        // 1: foreign arch → 5 (allow)
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH,
            0,
            3,
        ),
        // 2: A = seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFFSET_NR),
        // 3: not io_uring_setup → 5 (allow)
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            NR_IO_URING_SETUP,
            0,
            1,
        ),
        // 4: io_uring_setup → errno
        stmt(libc::BPF_RET | libc::BPF_K, ret_errno),
        // 5: everything else
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `filter`, a valid array of `prog.len` instructions that outlives
    // the call; the kernel copies the program before returning.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

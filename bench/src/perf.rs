//! Counts user→kernel transitions of the calling thread with the kernel's own counter: a
//! `perf_event_open(2)` counter on the `raw_syscalls:sys_enter` tracepoint.
//!
//! Every method in the benchmark is measured with this same counter, so the numbers do not
//! depend on anyone's own bookkeeping (the engine counts its transitions too; this checks it).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `PERF_TYPE_TRACEPOINT` from `include/uapi/linux/perf_event.h`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_ATTR_SIZE_VER5` (Linux 4.1): the size of the struct below.
const PERF_ATTR_SIZE_VER5: u32 = 112;
/// `perf_event_attr.disabled`: bit 0 of the flag word.
const ATTR_FLAG_DISABLED: u64 = 1;
/// `_IO('$', 0)`, `_IO('$', 1)`, `_IO('$', 3)` from `perf_event.h`.
const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
const PERF_EVENT_IOC_RESET: u64 = 0x2403;
/// `PERF_FLAG_FD_CLOEXEC` (Linux 3.14).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5`; the kernel zero-extends shorter
/// structs, and every field we do not name stays 0.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == PERF_ATTR_SIZE_VER5 as usize);

/// A syscall counter for the calling thread (not inherited by threads it spawns).
#[derive(Debug)]
pub struct SyscallCounter {
    fd: OwnedFd,
    /// Syscalls the counter sees from its own enable/disable pair, subtracted from readings.
    overhead: u64,
}

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn tracepoint_id() -> io::Result<u64> {
    let read = || {
        TRACEFS.iter().find_map(|root| {
            fs::read_to_string(format!("{root}/events/raw_syscalls/sys_enter/id")).ok()
        })
    };
    let text = match read() {
        Some(t) => t,
        None => {
            mount_tracefs();
            read().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "raw_syscalls/sys_enter not found under /sys/kernel/tracing or \
                     /sys/kernel/debug/tracing (tracefs not mounted and mounting it failed)",
                )
            })?
        }
    };
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected tracepoint id {text:?}"),
        )
    })
}

/// Tries to mount tracefs at /sys/kernel/tracing (works as root, harmless otherwise).
fn mount_tracefs() {
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are NUL-terminated static strings and the data pointer may be null.
    let _ = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

impl SyscallCounter {
    /// Opens a disabled counter of `raw_syscalls:sys_enter` for the calling thread.
    ///
    /// # Errors
    /// When tracefs cannot be found or the kernel refuses the event (not root, a
    /// `perf_event_paranoid` setting, a seccomp profile, no `CONFIG_FTRACE_SYSCALLS`).
    pub fn new() -> io::Result<SyscallCounter> {
        let id = tracepoint_id()?;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: PERF_ATTR_SIZE_VER5,
            config: id,
            flags: ATTR_FLAG_DISABLED,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a valid, fully initialised perf_event_attr of the size it declares
        // and outlives the call; pid 0 / cpu -1 means "this thread, any CPU".
        let ret = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                0 as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("perf_event_open(raw_syscalls:sys_enter) refused: {e}"),
            ));
        }
        let raw = i32::try_from(ret)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "fd out of range"))?;
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut c = SyscallCounter { fd, overhead: 0 };
        // The disable ioctl enters the kernel while the counter is on: measure what an empty
        // section reads and subtract it from every reading.
        let mut least = u64::MAX;
        for _ in 0..5 {
            c.start()?;
            least = least.min(c.stop_raw()?);
        }
        c.overhead = least;
        Ok(c)
    }

    fn ioctl(&self, req: u64) -> io::Result<()> {
        // SAFETY: a perf event fd and an argument-less perf ioctl.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Zeroes and enables the counter.
    ///
    /// # Errors
    /// When an ioctl fails.
    pub fn start(&mut self) -> io::Result<()> {
        self.ioctl(PERF_EVENT_IOC_RESET)?;
        self.ioctl(PERF_EVENT_IOC_ENABLE)
    }

    fn stop_raw(&mut self) -> io::Result<u64> {
        self.ioctl(PERF_EVENT_IOC_DISABLE)?;
        let mut v = 0u64;
        // SAFETY: reads exactly 8 bytes into a live u64 (read_format 0: one u64 value).
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(v)
    }

    /// Disables the counter and returns the syscalls this thread entered since `start`.
    ///
    /// # Errors
    /// When an ioctl or the read fails.
    pub fn stop(&mut self) -> io::Result<u64> {
        Ok(self.stop_raw()?.saturating_sub(self.overhead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_syscalls_or_explains() {
        match SyscallCounter::new() {
            Ok(mut c) => {
                c.start().unwrap();
                for _ in 0..100 {
                    // SAFETY: getppid has no preconditions.
                    unsafe { libc::getppid() };
                }
                let n = c.stop().unwrap();
                assert!((100..110).contains(&n), "counted {n}");
            }
            Err(e) => eprintln!("skipped: syscall counter unavailable: {e}"),
        }
    }
}

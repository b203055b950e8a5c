//! The io_uring driver: one `IORING_OP_SEND`/`SENDMSG` per stream op or datagram group, all
//! sockets' ops in the SQ and one `io_uring_enter` that submits them (and, when asked, waits).
//!
//! The fast paths ([`FastPaths`]) are switches, each probed: the setup flags by `probe::uring`,
//! the registered ring fd and the registered file table here, at [`Uring::new`]. What was asked
//! for and refused is recorded with the reason ([`UringFeatures`]). `docs/bench/ablation.md` has
//! the measurement behind each default.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::msg::{ErrqMem, MsgMem};
use super::{nanos_since, Driver, FdKind, Tally, Wait};
use crate::core::{Core, Event, OpShape, Planned, Solo, Token};
use crate::error::Error;

/// `io_uring_enter` flags (include/uapi/linux/io_uring.h).
/// Wait for `min_complete` completions; on a `DEFER_TASKRUN` ring also the only enter that runs
/// the deferred completion work (Linux 5.1).
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
/// `arg` is a `struct io_uring_getevents_arg` (Linux 5.11, commit c73ebb685fb6).
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
/// `fd` is an index into the calling task's registered ring table (Linux 5.18, commit
/// e7a6c00dc77a).
const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;
/// `io_uring_register` opcodes for the ring table (Linux 5.18).
const IORING_REGISTER_RING_FDS: libc::c_uint = 20;
const IORING_UNREGISTER_RING_FDS: libc::c_uint = 21;

/// `IORING_SEND_ZC_REPORT_USAGE` (Linux 6.2, commit e307e6698165): the notification's `res`
/// says whether the kernel copied the data after all (`IORING_NOTIF_USAGE_ZC_COPIED`). A
/// kernel without it fails the send with `EINVAL`, which the core answers with a copying send.
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// Entries of the registered file table at first; it doubles (while nothing is in flight) to
/// take sockets with higher indices.
const FIXED_FILES_INITIAL: u32 = 64;
/// Entries of the registered file table, at most: a socket whose index is beyond it (or beyond
/// `RLIMIT_NOFILE`, which the kernel caps the table at) goes by its plain descriptor.
const FIXED_FILES_MAX: u32 = 65_536;

/// `struct io_uring_getevents_arg` (Linux 5.11).
#[repr(C)]
struct GetEventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `struct io_uring_rsrc_update` (Linux 5.13).
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// The io_uring fast paths, one switch each: [`crate::EngineBuilder`]'s `uring_*` setters or
/// `VOLLEY_URING` (see [`FastPaths::apply_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FastPaths {
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0): one task submits; the kernel skips the locking that
    /// several submitters need and refuses (`EEXIST`) any other task.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1, needs `SINGLE_ISSUER`): completion work runs only when
    /// the engine enters with `GETEVENTS`, batched, never interrupting the thread.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19): completion work waits for the thread's next kernel
    /// entry instead of interrupting it with an IPI.
    pub coop_taskrun: bool,
    /// `IORING_REGISTER_RING_FDS` (5.18): `io_uring_enter` by index, skipping the descriptor
    /// lookup (`fdget`/`fdput`) on every entry.
    pub register_ring_fd: bool,
    /// A registered (fixed) file table (sparse, 5.19): SQEs name sockets by table index,
    /// skipping the per-op file lookup and reference count.
    pub register_files: bool,
    /// `IORING_SETUP_NO_SQARRAY` (6.6): no SQ index array; the kernel reads SQEs in ring order.
    pub no_sqarray: bool,
}

impl FastPaths {
    /// The switch names, as the setters (`uring_<name>`) and `VOLLEY_URING` spell them.
    pub const NAMES: [&'static str; 6] = UringFeatures::SWITCHES;

    /// The defaults: what measured a gain and keeps every engine contract
    /// (docs/bench/ablation.md). On: the registered ring fd (~40-50 ns less per
    /// `io_uring_enter`) and file table (~50-100 ns less per send op). Off: `SINGLE_ISSUER` and
    /// `DEFER_TASKRUN` (no gain on sends, an engine may move between threads, and a
    /// `DEFER_TASKRUN` ring's descriptor does not wake an event loop), `COOP_TASKRUN` and
    /// `NO_SQARRAY` (no gain measurable).
    pub const DEFAULT: FastPaths = FastPaths {
        single_issuer: false,
        defer_taskrun: false,
        coop_taskrun: false,
        register_ring_fd: true,
        register_files: true,
        no_sqarray: false,
    };

    /// All off: the plain ring.
    pub const NONE: FastPaths = FastPaths {
        single_issuer: false,
        defer_taskrun: false,
        coop_taskrun: false,
        register_ring_fd: false,
        register_files: false,
        no_sqarray: false,
    };

    fn slot(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "single_issuer" => &mut self.single_issuer,
            "defer_taskrun" => &mut self.defer_taskrun,
            "coop_taskrun" => &mut self.coop_taskrun,
            "register_ring_fd" => &mut self.register_ring_fd,
            "register_files" => &mut self.register_files,
            "no_sqarray" => &mut self.no_sqarray,
            _ => return None,
        })
    }

    /// Turns the named switch on or off.
    ///
    /// # Panics
    /// On a name not in [`FastPaths::NAMES`] (the setters pass constants).
    pub fn set(&mut self, name: &str, on: bool) {
        *self.slot(name).expect("a FastPaths name") = on;
    }

    /// Applies a `VOLLEY_URING` value over `self`: entries separated by commas or spaces, applied
    /// in order; `name` turns a switch on, `-name` (or `!name`) off, `all` / `none` (or
    /// `default`) set every switch.
    ///
    /// # Errors
    /// An unknown entry, named, with the names that exist.
    pub fn apply_env(mut self, value: &str) -> Result<FastPaths, String> {
        for item in value
            .split([',', ' '])
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let item = item.to_ascii_lowercase();
            let (name, on) = match item.strip_prefix(['-', '!']) {
                Some(n) => (n, false),
                None => (item.strip_prefix('+').unwrap_or(&item), true),
            };
            match name {
                "all" if on => {
                    self = FastPaths::NONE;
                    for n in FastPaths::NAMES {
                        self.set(n, true);
                    }
                }
                "none" if on => self = FastPaths::NONE,
                "default" if on => self = FastPaths::DEFAULT,
                _ => match self.slot(name) {
                    Some(b) => *b = on,
                    None => {
                        return Err(format!(
                            "VOLLEY_URING: unknown entry {item:?} (expected all, none, default or \
                             [-]name with name one of {})",
                            FastPaths::NAMES.join(", ")
                        ))
                    }
                },
            }
        }
        Ok(self)
    }
}

/// The io_uring fast paths an engine runs with: those in effect, and those asked for but
/// refused, with why ([`crate::Engine::uring_features`]; empty on epoll).
///
/// Names are the switch names: `single_issuer`, `defer_taskrun`, `coop_taskrun`,
/// `register_ring_fd`, `register_files`, `no_sqarray` (see the `EngineBuilder::uring_*`
/// setters). Each is probed when the engine is built; one the kernel refuses is left off and
/// listed in `refused` with why, never an error.
///
/// # `VOLLEY_URING`
///
/// Sets the switches without recompiling (for ablation runs): entries separated by commas,
/// applied in order over the defaults — `name` on, `-name` off, `all`, `none`, `default` — e.g.
/// `VOLLEY_URING=none,coop_taskrun` or `VOLLEY_URING=-register_files`. An explicit
/// `EngineBuilder::uring_*` call wins over it; an unknown entry makes `build` fail with
/// [`crate::Error::UringUnavailable`] naming it. `docs/bench/ablation.md` has the measurements
/// behind the defaults.
///
/// # Kernel features
///
/// Besides the switches, the engine uses kernel features it does not ask for, each probed at
/// build and degraded without (README, "Kernel requirements"): `feat_nodrop`
/// (`IORING_FEAT_NODROP`, 5.5), `feat_ext_arg` (`IORING_FEAT_EXT_ARG`, 5.11: timed waits in
/// `io_uring_enter`; without it the engine waits with `poll(2)` on the ring descriptor),
/// `op_send` (`IORING_OP_SEND`, 5.6; without it single buffers go as `SENDMSG`). Those present
/// are in `kernel`, those missing in `kernel_missing` with what the engine does instead.
/// `VOLLEY_URING_WITHOUT=feat_ext_arg,op_send,…` makes the engine treat them as missing (to
/// test the degraded paths on a newer kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UringFeatures {
    /// Fast paths in effect.
    pub enabled: Vec<&'static str>,
    /// Fast paths asked for and refused: (name, why, in words).
    pub refused: Vec<(&'static str, String)>,
    /// Kernel features the engine uses, present.
    pub kernel: Vec<&'static str>,
    /// Kernel features the engine uses, missing: (name, what the engine does without it).
    pub kernel_missing: Vec<(&'static str, String)>,
}

impl UringFeatures {
    /// Every switch's name, as `enabled`, `refused`, the `EngineBuilder::uring_*` setters and
    /// `VOLLEY_URING` spell them.
    pub const SWITCHES: [&'static str; 6] = [
        "single_issuer",
        "defer_taskrun",
        "coop_taskrun",
        "register_ring_fd",
        "register_files",
        "no_sqarray",
    ];

    /// Whether the named fast path is in effect.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.enabled.contains(&name)
    }

    /// Why the named fast path was refused, if it was asked for and refused.
    pub fn refused_reason(&self, name: &str) -> Option<&str> {
        self.refused
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, why)| why.as_str())
    }

    pub(crate) fn refuse(&mut self, name: &'static str, why: String) {
        self.enabled.retain(|n| *n != name);
        self.refused.push((name, why));
    }

    /// Whether the kernel feature `name` (see "Kernel features") is present and used.
    pub fn has_kernel(&self, name: &str) -> bool {
        self.kernel.contains(&name)
    }

    /// Records kernel feature `name`: present (unless `VOLLEY_URING_WITHOUT` names it), or
    /// missing with what the engine does instead; returns whether it is used.
    pub(crate) fn kernel_feature(
        &mut self,
        name: &'static str,
        present: bool,
        without: &str,
    ) -> bool {
        let denied = std::env::var("VOLLEY_URING_WITHOUT").is_ok_and(|v| {
            v.split([',', ' '])
                .any(|n| n.trim().eq_ignore_ascii_case(name))
        });
        if present && !denied {
            self.kernel.push(name);
            true
        } else {
            let why = if present {
                " (VOLLEY_URING_WITHOUT)"
            } else {
                ""
            };
            self.kernel_missing.push((name, format!("{without}{why}")));
            false
        }
    }
}

/// A number that names the calling thread for the life of the process (never reused, unlike
/// thread ids): a registered ring index is valid only in the task that registered it.
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    KEY.with(|k| *k)
}

/// `io_uring_register(2)` with a plain argument array.
///
/// # Safety
/// `arg` points at `nr` entries of the layout `opcode` expects, valid for the call.
unsafe fn register(
    fd: RawFd,
    opcode: libc::c_uint,
    arg: *const libc::c_void,
    nr: libc::c_uint,
) -> io::Result<i64> {
    // SAFETY: the caller guarantees `arg`; the other arguments are plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_register, fd, opcode, arg, nr) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The ring descriptor registered in one thread's ring table.
#[derive(Debug, Clone, Copy)]
struct RegisteredRing {
    index: u32,
    /// [`thread_key`] of the registering thread: elsewhere the index means nothing (or another
    /// ring), so other threads enter by the plain descriptor.
    thread: u64,
}

pub(crate) struct Uring {
    ring: IoUring,
    /// Per op slot ([`Token::slot`]): the op's token and the msghdr memory the kernel reads.
    /// The token tells a late completion of a forgotten op (after `leak`) from the slot's
    /// new op.
    mem: Vec<Option<(Token, Box<MsgMem>)>>,
    #[expect(
        clippy::vec_box,
        reason = "boxes move between pool and slots; the kernel holds their addresses"
    )]
    pool: Vec<Box<MsgMem>>,
    /// Error-queue reads in the ring ([`Token::errq`] number → its memory and socket), and the
    /// free numbers.
    errq: Vec<Option<(Box<ErrqMem>, u32)>>,
    errq_free: Vec<u32>,
    /// Error-queue reads handed to the ring whose completion has not been reaped.
    errq_in_kernel: usize,
    /// The kernel dropped completions (`io_uring_enter` failed with `EBADR`), until nothing is
    /// in flight: only then does a cancel answered `ENOENT` mean the op's completion was lost
    /// (otherwise it may be an op linked behind another, not started yet).
    completions_lost: bool,
    base: Instant,
    /// Send SQEs pushed since the last `io_uring_enter`.
    pushed: usize,
    /// Reused by `issue`: the order ops go in (each packet descriptor's together).
    order: Vec<usize>,
    /// Other SQEs (cancels) pushed since the last `io_uring_enter`.
    extra: usize,
    /// Send ops handed to the ring whose completion has not been reaped.
    in_kernel: usize,
    /// The last `send_solo` would have blocked: the next `issue` (its op again) goes through
    /// the ring, which waits for room, not another direct try.
    solo_blocked: bool,
    tally: Tally,
    /// The ring's index in its builder thread's ring table (`register_ring_fd`).
    registered_ring: Option<RegisteredRing>,
    /// Entries in the registered file table (0: none, `register_files` off or refused).
    fixed_files: u32,
    /// Per socket index: its descriptor if it is in the file table (at that index), else -1.
    fixed_fd: Vec<RawFd>,
    /// `COOP_TASKRUN` or `DEFER_TASKRUN` (with `TASKRUN_FLAG`): completion work may wait for an
    /// enter with `GETEVENTS`, announced by `IORING_SQ_TASKRUN`.
    taskrun: bool,
    /// `SINGLE_ISSUER`: another thread's enter fails with `EEXIST`.
    single_issuer: bool,
    /// `IORING_FEAT_EXT_ARG` (5.11): a timed wait inside `io_uring_enter`; without it, `poll(2)`
    /// on the ring descriptor.
    ext_arg: bool,
    /// `IORING_OP_SEND` (5.6); without it single buffers go as `SENDMSG`.
    op_send: bool,
    features: UringFeatures,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("sq_entries", &self.ring.params().sq_entries())
            .field("cq_entries", &self.ring.params().cq_entries())
            .field("in_kernel", &self.in_kernel)
            .field("features", &self.features)
            .finish()
    }
}

pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> Result<(), Error> {
    // SAFETY: fcntl on an fd the engine owns; F_GETFL/F_SETFL take and return plain ints.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else if on {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(Error::io(
            "fcntl(O_NONBLOCK)",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Uring {
    /// A driver over `ring` (set up by `probe::uring` with the setup flags of `want`, whose
    /// outcome `features` records); registers the ring descriptor and the file table if `want`
    /// asks, recording a refusal instead of failing.
    pub fn new(
        ring: IoUring,
        base: Instant,
        want: FastPaths,
        mut features: UringFeatures,
    ) -> Uring {
        let taskrun = features.is_enabled("coop_taskrun") || features.is_enabled("defer_taskrun");
        let single_issuer = ring.params().is_setup_single_issuer();
        let mut u = Uring {
            ring,
            mem: Vec::new(),
            pool: Vec::new(),
            errq: Vec::new(),
            errq_free: Vec::new(),
            errq_in_kernel: 0,
            completions_lost: false,
            base,
            pushed: 0,
            order: Vec::new(),
            extra: 0,
            in_kernel: 0,
            solo_blocked: false,
            tally: Tally::default(),
            registered_ring: None,
            fixed_files: 0,
            fixed_fd: Vec::new(),
            taskrun,
            single_issuer,
            ext_arg: features.has_kernel("feat_ext_arg"),
            op_send: features.has_kernel("op_send"),
            features: UringFeatures::default(),
        };
        if want.register_ring_fd {
            match u.register_ring() {
                Ok(r) => {
                    u.registered_ring = Some(r);
                    features.enabled.push("register_ring_fd");
                }
                Err(e) => features.refuse(
                    "register_ring_fd",
                    match e.raw_os_error() {
                        Some(libc::EBUSY) => format!(
                            "IORING_REGISTER_RING_FDS failed ({e}): this thread already holds \
                             16 registered rings, the kernel's limit per thread"
                        ),
                        _ => format!("IORING_REGISTER_RING_FDS failed ({e}): needs Linux 5.18"),
                    },
                ),
            }
        }
        if want.register_files {
            match u.register_file_table() {
                Ok(n) => {
                    u.fixed_files = n;
                    features.enabled.push("register_files");
                }
                Err(why) => features.refuse("register_files", why),
            }
        }
        u.features = features;
        u
    }

    /// The fast paths in effect and those refused.
    pub fn features(&self) -> &UringFeatures {
        &self.features
    }

    fn register_ring(&self) -> io::Result<RegisteredRing> {
        let mut up = RsrcUpdate {
            // Any free slot (the kernel writes back which).
            offset: u32::MAX,
            resv: 0,
            data: u64::try_from(self.ring.as_raw_fd()).unwrap_or(u64::MAX),
        };
        // SAFETY: one `io_uring_rsrc_update`, live and writable for the call.
        unsafe {
            register(
                self.ring.as_raw_fd(),
                IORING_REGISTER_RING_FDS,
                (&mut up as *mut RsrcUpdate).cast(),
                1,
            )
        }?;
        Ok(RegisteredRing {
            index: up.offset,
            thread: thread_key(),
        })
    }

    /// The most entries a file table may have: `FIXED_FILES_MAX`, or `RLIMIT_NOFILE` if lower
    /// (the kernel refuses a larger table with `EMFILE`).
    fn file_table_cap() -> u32 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a writable rlimit for the call.
        let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            u32::try_from(lim.rlim_cur).unwrap_or(u32::MAX)
        } else {
            1024
        };
        FIXED_FILES_MAX.min(nofile)
    }

    /// A sparse file table of `FIXED_FILES_INITIAL` entries (fewer if capped); its size.
    fn register_file_table(&self) -> Result<u32, String> {
        // Before the 6.13 resource rework, a file removed from the table is put only once every
        // request submitted before the removal has ended: a send stalled on one peer would keep
        // every socket closed since open (its peer never sees EOF). Found by the kernel matrix
        // on 6.1 (docs/kernel-matrix.md).
        if let Some((major, minor)) = super::probe::kernel_version() {
            if (major, minor) < (6, 13) {
                return Err(format!(
                    "Linux {major}.{minor} < 6.13: a socket removed from the file table stays \
                     open until every older request ends (a stalled peer would keep closed \
                     sockets open)"
                ));
            }
        }
        let n = FIXED_FILES_INITIAL.min(Uring::file_table_cap());
        if n == 0 {
            return Err("RLIMIT_NOFILE is 0: no room for a file table".to_string());
        }
        self.ring
            .submitter()
            .register_files_sparse(n)
            .map_err(|e| {
                format!(
                    "a sparse file table of {n} entries was refused ({e}): needs Linux 5.19 \
                     (IORING_RSRC_REGISTER_SPARSE)"
                )
            })?;
        Ok(n)
    }

    /// The table index of socket `sock`'s descriptor, if it is in the table.
    #[inline]
    fn fixed_index(&self, sock: u32) -> Option<u32> {
        (self.fixed_fd.get(sock as usize).copied().unwrap_or(-1) >= 0).then_some(sock)
    }

    /// Replaces the file table with one that has room for index `sock` (doubling, within
    /// [`Uring::file_table_cap`]) and puts every registered socket back at its index. Only with
    /// nothing in flight: on older kernels unregistering a table waits for the requests that
    /// use it (a stalled peer's op would hang it). Returns whether `sock` fits now; if the new table is refused, the engine goes on
    /// without one (every socket by its descriptor).
    fn grow_file_table(&mut self, sock: u32) -> bool {
        let cap = Uring::file_table_cap();
        if sock >= cap || self.in_kernel > 0 || self.pushed > 0 {
            return false;
        }
        let n = sock
            .saturating_add(1)
            .checked_next_power_of_two()
            .unwrap_or(cap)
            .max(self.fixed_files.saturating_mul(2))
            .min(cap);
        let sub = self.ring.submitter();
        if sub.unregister_files().is_err() {
            return false;
        }
        if sub.register_files_sparse(n).is_err() {
            self.fixed_files = 0;
            self.fixed_fd.clear();
            return false;
        }
        let end = self.fixed_fd.len().min(n as usize);
        if end > 0 && sub.register_files_update(0, &self.fixed_fd[..end]).is_err() {
            self.fixed_fd.clear();
        }
        self.fixed_fd.truncate(end);
        self.fixed_files = n;
        true
    }

    /// `io_uring_enter(2)`: by the registered index on the registering thread, else by the
    /// descriptor.
    fn sys_enter(
        &self,
        to_submit: u32,
        min_complete: u32,
        mut flags: u32,
        arg: Option<&GetEventsArg>,
    ) -> io::Result<()> {
        let fd = match self.registered_ring {
            Some(r) if r.thread == thread_key() => {
                flags |= IORING_ENTER_REGISTERED_RING;
                i64::from(r.index)
            }
            _ => i64::from(self.ring.as_raw_fd()),
        };
        let (argp, argsz) = match arg {
            Some(a) => {
                flags |= IORING_ENTER_EXT_ARG;
                (
                    (a as *const GetEventsArg).cast::<libc::c_void>(),
                    std::mem::size_of::<GetEventsArg>(),
                )
            }
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `fd` names this ring (its descriptor, or its index in this thread's table);
        // `argp` is null (no signal mask) or an `io_uring_getevents_arg` whose timespec
        // outlives the call; the SQEs it submits point at memory kept alive until their
        // completions (see `issue`).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit,
                min_complete,
                flags,
                argp,
                argsz,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits up to `left` for the ring descriptor to become readable (a completion posted).
    fn poll_ring(&self, left: std::time::Duration) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up: a wait of 0.5 ms must not become a busy poll.
        let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live pollfd for the call.
        let _ = unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Pushes one SQE, first submitting what the SQ holds if it is full.
    fn push(&mut self, sqe: &squeue::Entry, out: &mut Vec<Event>) -> Result<bool, Error> {
        if self.ring.submission().is_full() {
            self.enter(Wait::No, out)?;
        }
        // SAFETY: the caller keeps everything the entry points at alive until its completion
        // (see `issue` and `cancel`).
        Ok(unsafe { self.ring.submission().push(sqe) }.is_ok())
    }

    /// One op alone, with nothing in flight: a plain `send`/`sendmsg` with `MSG_DONTWAIT` costs
    /// one transition like `io_uring_enter` would, without the ring's own per-op work — at one
    /// message per flush the engine is then no slower than a plain `send()`. Returns false
    /// (nothing sent) when the socket would block: the op then goes through the ring, which
    /// waits for writability itself.
    fn direct(&mut self, payload: &Core, p: &Planned, out: &mut Vec<Event>) -> bool {
        let mut m = self.pool.pop().unwrap_or_else(|| Box::new(MsgMem::new()));
        m.prepare(payload, p);
        self.tally.transitions += 1;
        let res = match p.shape {
            // Packet descriptors are `O_NONBLOCK` (`register`): EAGAIN, never a wait.
            OpShape::Packet { .. } => m.write_now(p.fd),
            _ => m.send_now(p.fd, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT),
        };
        self.pool.push(m);
        if res == -libc::EAGAIN {
            return false;
        }
        self.tally.batches += 1;
        self.tally.sqes += 1;
        out.push(Event::Done {
            token: p.token,
            res,
        });
        true
    }

    /// Returns the memory of op `token` to the pool, if its slot holds it (not a forgotten op's
    /// late completion, nor a cancel's); whether it did.
    #[expect(clippy::vec_box, reason = "the pool of `Uring`")]
    fn take_mem(
        mem: &mut [Option<(Token, Box<MsgMem>)>],
        pool: &mut Vec<Box<MsgMem>>,
        in_kernel: &mut usize,
        token: Token,
    ) -> bool {
        let slot = mem.get_mut(token.slot());
        let Some(e) = slot.filter(|e| e.as_ref().is_some_and(|(t, _)| *t == token)) else {
            return false;
        };
        let (_, m) = e.take().expect("checked");
        pool.push(m);
        *in_kernel -= 1;
        true
    }

    /// The SQE for op `p`, whose memory `m` has been prepared.
    fn sqe(&self, m: &MsgMem, p: &Planned) -> squeue::Entry {
        let flags = libc::MSG_NOSIGNAL;
        let fixed = self.fixed_index(p.sock);
        if let OpShape::Packet { .. } = p.shape {
            // IORING_OP_WRITE (Linux 5.6) at offset -1, "the current position", as write(2)
            // (a stream-like file, a pipe or a TUN device, has none). A packet beyond u32::MAX
            // bytes (possible only with raised queue limits) goes as u32::MAX and fails as a
            // short write, never silently.
            let (ptr, len) = m.packet_buffer();
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            return match fixed {
                None => opcode::Write::new(types::Fd(p.fd), ptr, len),
                Some(i) => opcode::Write::new(types::Fixed(i), ptr, len),
            }
            .offset(u64::MAX)
            .build()
            .user_data(p.token.0);
        }
        let single = m
            .single_buffer()
            .filter(|_| self.op_send)
            .and_then(|(ptr, len)| Some((ptr, u32::try_from(len).ok()?)));
        if p.zerocopy {
            return zerocopy_sqe(p, m, single, fixed);
        }
        match (single, fixed) {
            (Some((ptr, len)), None) => opcode::Send::new(types::Fd(p.fd), ptr, len)
                .flags(flags)
                .build(),
            (Some((ptr, len)), Some(i)) => opcode::Send::new(types::Fixed(i), ptr, len)
                .flags(flags)
                .build(),
            (None, None) => opcode::SendMsg::new(types::Fd(p.fd), &m.msg)
                .flags(flags as u32)
                .build(),
            (None, Some(i)) => opcode::SendMsg::new(types::Fixed(i), &m.msg)
                .flags(flags as u32)
                .build(),
        }
        .user_data(p.token.0)
    }

    fn reap(&mut self, out: &mut Vec<Event>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let token = Token(cqe.user_data());
            if token == Token::CANCEL {
                continue;
            }
            if let Some(n) = token.errq_index() {
                // An error-queue read: an entry read (`res >= 0`) is a peer error; `-EAGAIN`
                // (the queue was empty) reports nothing.
                if let Some((mut m, sock)) = self.errq.get_mut(n as usize).and_then(Option::take) {
                    self.errq_in_kernel -= 1;
                    self.errq_free.push(n);
                    if cqe.result() >= 0 {
                        if let Some((dest, errno)) = m.parse() {
                            out.push(Event::PeerError { sock, dest, errno });
                        }
                    }
                }
                continue;
            }
            if let Some(op) = token.cancelled_op() {
                // ENOENT: the op is not in the ring. Its completion was reaped already (a
                // race), or dropped by a CQ overflow (EBADR): then its slot still holds it, the
                // kernel is done with its memory, and it ends here as lost.
                if cqe.result() == -libc::ENOENT
                    && self.completions_lost
                    && Uring::take_mem(&mut self.mem, &mut self.pool, &mut self.in_kernel, op)
                {
                    out.push(Event::Done {
                        token: op,
                        res: -libc::EBADR,
                    });
                }
                continue;
            }
            let flags = cqe.flags();
            if cqueue::more(flags) {
                // A zero-copy op's result; its notification follows, and until then the kernel
                // may read the op's memory: `m` stays in `self.mem`, the op counts in flight.
                out.push(Event::DoneMore {
                    token,
                    res: cqe.result(),
                });
                continue;
            }
            Uring::take_mem(&mut self.mem, &mut self.pool, &mut self.in_kernel, token);
            let res = cqe.result();
            out.push(if cqueue::notif(flags) {
                Event::Notif { token, res }
            } else {
                Event::Done { token, res }
            });
        }
        if self.in_kernel == 0 {
            self.completions_lost = false;
        }
    }
}

/// The zero-copy SQE of a planned stream op (`IORING_OP_SEND_ZC` for one buffer, Linux 6.0;
/// `IORING_OP_SENDMSG_ZC` for an iovec array, 6.1), with `IORING_SEND_ZC_REPORT_USAGE`.
fn zerocopy_sqe(
    p: &Planned,
    m: &MsgMem,
    single: Option<(*const u8, u32)>,
    fixed: Option<u32>,
) -> squeue::Entry {
    let flags = libc::MSG_NOSIGNAL;
    match (single, fixed) {
        (Some((ptr, len)), None) => opcode::SendZc::new(types::Fd(p.fd), ptr, len)
            .flags(flags)
            .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
            .build(),
        (Some((ptr, len)), Some(i)) => opcode::SendZc::new(types::Fixed(i), ptr, len)
            .flags(flags)
            .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
            .build(),
        (None, None) => opcode::SendMsgZc::new(types::Fd(p.fd), &m.msg)
            .flags(flags as u32)
            .ioprio(IORING_SEND_ZC_REPORT_USAGE)
            .build(),
        (None, Some(i)) => opcode::SendMsgZc::new(types::Fixed(i), &m.msg)
            .flags(flags as u32)
            .ioprio(IORING_SEND_ZC_REPORT_USAGE)
            .build(),
    }
    .user_data(p.token.0)
}

impl Driver for Uring {
    fn register(&mut self, sock: u32, fd: RawFd, kind: FdKind) -> Result<(), Error> {
        // Sockets in blocking mode: io_uring then arms poll internally instead of completing
        // with EAGAIN. A packet descriptor (a character device, a pipe) in `O_NONBLOCK` mode:
        // io_uring tries a write inline only on a file that promises not to block
        // (`FMODE_NOWAIT`, or `O_NONBLOCK` on a non-regular file: `io_file_supports_nowait`),
        // else it hands each write to an io-wq worker — in parallel, so packets written
        // through one descriptor could leave out of order. With `O_NONBLOCK` they are written
        // in submission order, and one that would block waits on poll as a socket's does.
        set_nonblocking(fd, kind == FdKind::Packet)?;
        if self.fixed_files > 0 && (sock < self.fixed_files || self.grow_file_table(sock)) {
            // Into the file table at the socket's index; if the kernel refuses (say `EEXIST`
            // from another thread on a SINGLE_ISSUER ring), the socket goes by its descriptor.
            // Not booked as a transition: like the `fcntl` above, registration is set-up, and
            // booking it would charge it to whichever flush absorbs the tally next.
            let ok = matches!(
                self.ring.submitter().register_files_update(sock, &[fd]),
                Ok(1)
            );
            let i = sock as usize;
            if self.fixed_fd.len() <= i {
                self.fixed_fd.resize(i + 1, -1);
            }
            self.fixed_fd[i] = if ok { fd } else { -1 };
        }
        Ok(())
    }

    fn deregister(&mut self, sock: u32, _fd: RawFd) {
        if let Some(i) = self.fixed_index(sock) {
            // Drops the table's reference to the socket, so closing the descriptor closes it.
            let _ = self.ring.submitter().register_files_update(i, &[-1]);
            self.fixed_fd[sock as usize] = -1;
        }
    }

    fn issue(
        &mut self,
        payload: &Core,
        ops: &[Planned],
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let solo_blocked = std::mem::take(&mut self.solo_blocked);
        if let [p] = ops {
            if !solo_blocked
                && self.in_kernel == 0
                && self.pushed == 0
                && !p.zerocopy
                && self.direct(payload, p, out)
            {
                return Ok(());
            }
        }
        // A packet descriptor's ops (all planned in one round, in queue order: see
        // `Core::begin_round`) go as one chain linked with IOSQE_IO_HARDLINK (Linux 5.5): the
        // kernel starts each only when the one before it ended, whatever its result, so they
        // are written in order even when they wait for room (unlinked writes parked on a full
        // descriptor are retried in any order). Grouped by socket for that (stable).
        self.order.clear();
        self.order.extend(0..ops.len());
        if ops
            .iter()
            .any(|p| matches!(p.shape, OpShape::Packet { .. }))
        {
            self.order.sort_by_key(|&i| ops[i].sock);
        }
        let mut k = 0;
        while k < self.order.len() {
            let first = ops[self.order[k]];
            let chain = match first.shape {
                OpShape::Packet { .. } => self.order[k..]
                    .iter()
                    .take_while(|&&i| ops[i].sock == first.sock)
                    .count(),
                _ => 1,
            };
            // A chain goes into one submission whole: a link never spans two. One longer than
            // the SQ goes in part; the rest is reported unsent and waits for the next round
            // (after this chain ends).
            let cap = self.ring.submission().capacity();
            let take = chain.min(cap);
            if cap - self.ring.submission().len() < take {
                self.enter(Wait::No, out)?;
            }
            let room = cap - self.ring.submission().len();
            let take = if room < take { 0 } else { take };
            for j in 0..take {
                let p = ops[self.order[k + j]];
                let mut m = self.pool.pop().unwrap_or_else(|| Box::new(MsgMem::new()));
                m.prepare(payload, &p);
                let mut sqe = self.sqe(&m, &p);
                if j + 1 < take {
                    sqe = sqe.flags(squeue::Flags::IO_HARDLINK);
                }
                // The buffer (Send, Write) or the msghdr with its iovecs, address and cmsg
                // (SendMsg) live in the boxed `m`, kept in `self.mem` until this op's
                // completion (or leaked on a failed shutdown), and in the core, which owns the
                // payload until it applies this op's completion.
                if self.push(&sqe, out)? {
                    let slot = p.token.slot();
                    if self.mem.len() <= slot {
                        self.mem.resize_with(slot + 1, || None);
                    }
                    self.mem[slot] = Some((p.token, m));
                    self.pushed += 1;
                    self.in_kernel += 1;
                } else {
                    // Cannot happen (room was made above); if it does, nothing more goes.
                    self.pool.push(m);
                    let rest = self.order[k + j..].iter().map(|&i| ops[i].token);
                    out.extend(rest.map(|token| Event::NotIssued { token }));
                    return Ok(());
                }
            }
            let unsent = self.order[k + take..k + chain].iter();
            out.extend(unsent.map(|&i| Event::NotIssued {
                token: ops[i].token,
            }));
            k += chain;
        }
        Ok(())
    }

    fn enter(&mut self, wait: Wait, out: &mut Vec<Event>) -> Result<(), Error> {
        let (want, deadline) = match wait {
            Wait::No => (0, None),
            // Never block with nothing that could end the wait.
            Wait::Until(d) => (u32::from(self.in_kernel > 0 || d.is_some()), d),
        };
        // Completion work the kernel holds back for an enter with GETEVENTS (COOP_TASKRUN,
        // DEFER_TASKRUN with TASKRUN_FLAG), or completions beyond a full CQ.
        let held = {
            let sq = self.ring.submission();
            (self.taskrun && sq.taskrun()) || sq.cq_overflow()
        };
        if self.pushed == 0 && self.extra == 0 && want == 0 && !held {
            // Nothing to hand over and nothing to wait for: just look at the CQ (no syscall).
            self.reap(out);
            return Ok(());
        }
        self.tally.transitions += 1;
        let to_submit = u32::try_from(self.ring.submission().len()).unwrap_or(u32::MAX);
        let flags = if want > 0 || held || self.taskrun {
            IORING_ENTER_GETEVENTS
        } else {
            0
        };
        let rc = match super::until(self.base, deadline) {
            Some(left) if want > 0 && !self.ext_arg => {
                // No timed wait in io_uring_enter (before 5.11): submit, then poll(2) the ring
                // descriptor (readable once a completion is posted) for at most `left`.
                let rc = self.sys_enter(to_submit, 0, flags, None);
                if rc.is_ok() && self.ring.completion().is_empty() {
                    self.tally.transitions += 1;
                    self.poll_ring(left);
                }
                rc
            }
            Some(left) if want > 0 => {
                let ts = KernelTimespec {
                    tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(left.subsec_nanos()),
                };
                let arg = GetEventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec: 0,
                    ts: &ts as *const KernelTimespec as u64,
                };
                self.sys_enter(to_submit, want, flags, Some(&arg))
            }
            _ => self.sys_enter(to_submit, want, flags, None),
        };
        if let Err(e) = rc {
            match e.raw_os_error() {
                // Interrupted, timed out, or CQ full (EBUSY): reaping below makes room; the
                // caller loops.
                Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN) => {}
                // The CQ overflowed and completions were dropped (no room for the overflow list,
                // or no IORING_FEAT_NODROP): which ops ended is unknown. What is in the CQ is
                // reaped; the engine fails the rest (`Status::CompletionLost`) and forgets their
                // memory.
                Some(libc::EBADR) => {
                    self.completions_lost = true;
                    self.reap(out);
                    return Err(Error::io("io_uring_enter (completions dropped)", &e));
                }
                Some(libc::EEXIST) if self.single_issuer => {
                    return Err(Error::io(
                        "io_uring_enter on a SINGLE_ISSUER ring from a thread other than the one \
                         that built the engine (drive it from that thread, or turn \
                         uring_single_issuer and uring_defer_taskrun off)",
                        &e,
                    ))
                }
                _ => return Err(Error::io("io_uring_enter", &e)),
            }
        }
        // Handed over (a failed enter above leaves the SQ, and these counts, for the next one).
        if self.pushed > 0 {
            self.tally.batches += 1;
            self.tally.sqes += self.pushed as u64;
            self.pushed = 0;
        }
        self.extra = 0;
        self.reap(out);
        Ok(())
    }

    fn watch_writable(&mut self, sock: u32, _fd: RawFd, out: &mut Vec<Event>) -> Result<(), Error> {
        // Sockets are blocking here: io_uring arms poll itself, so an EAGAIN is spurious
        // (FAILURES.md item 5) and the op goes again at once.
        out.push(Event::Writable { sock });
        Ok(())
    }

    /// Like [`Uring::direct`]: a plain send costs one transition, as `io_uring_enter` would,
    /// without the ring's per-op work. Only while the ring holds nothing of the engine's (an op,
    /// a cancel, an error-queue read), so nothing it reports later can overtake it.
    #[inline]
    fn send_solo(&mut self, op: &Solo<'_>) -> Option<i32> {
        if self.in_kernel > 0 || !self.idle() {
            return None;
        }
        let res = super::msg::send_solo(op);
        self.solo_blocked = res == -libc::EAGAIN;
        Some(res)
    }

    fn cancel(&mut self, tokens: &[Token], out: &mut Vec<Event>) -> Result<(), Error> {
        if tokens.is_empty() {
            return Ok(());
        }
        for t in tokens {
            // By user_data (IORING_OP_ASYNC_CANCEL, Linux 5.5): exactly this op, never another
            // registration of a `dup`ed descriptor.
            let sqe = opcode::AsyncCancel::new(t.0)
                .build()
                .user_data(t.cancel_of().0);
            // A cancel SQE points at no user memory. If the SQ is still full after a submit,
            // submit again until it takes the entry: a cancel is never skipped.
            while !self.push(&sqe, out)? {
                self.enter(Wait::No, out)?;
            }
            self.extra += 1;
        }
        self.enter(Wait::No, out)
    }

    fn read_errqueue(&mut self, fd: RawFd, max: usize, out: &mut Vec<(Option<SocketAddr>, i32)>) {
        self.tally.transitions += super::msg::drain_errqueue(fd, max, out);
    }

    /// `count` `RECVMSG(MSG_ERRQUEUE | MSG_DONTWAIT)` SQEs behind the sends already in the SQ:
    /// the kernel runs them in order in the same `io_uring_enter`, so each reads the error an
    /// ICMP answer to a send before it left (on loopback the answer is there before the send
    /// returns), clearing the socket's pending error before it can fail a later send. No
    /// transition of its own; an empty queue completes with `-EAGAIN` (never waits:
    /// `MSG_DONTWAIT`).
    fn read_errqueue_after(&mut self, sock: u32, fd: RawFd, count: usize, out: &mut Vec<Event>) {
        for _ in 0..count {
            let n = match self.errq_free.pop() {
                Some(n) => n,
                None => {
                    let Ok(n) = u32::try_from(self.errq.len()) else {
                        return;
                    };
                    self.errq.push(None);
                    n
                }
            };
            let mut m = Box::new(ErrqMem::new());
            m.prepare();
            let flags = (libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) as u32;
            let sqe = match self.fixed_index(sock) {
                Some(i) => opcode::RecvMsg::new(types::Fixed(i), &mut m.msg),
                None => opcode::RecvMsg::new(types::Fd(fd), &mut m.msg),
            }
            .flags(flags)
            .build()
            .user_data(Token::errq(n).0);
            // `m` (the msghdr and the buffers it points to) is kept in `self.errq` until this
            // read's completion, or leaked on a failed shutdown.
            match self.push(&sqe, out) {
                Ok(true) => {
                    self.errq[n as usize] = Some((m, sock));
                    self.errq_in_kernel += 1;
                    self.extra += 1;
                }
                _ => {
                    self.errq_free.push(n);
                    return;
                }
            }
        }
    }

    fn set_recverr(&mut self, fd: RawFd, v6: bool, on: bool) -> bool {
        self.tally.transitions += 1 + u64::from(v6);
        super::msg::set_recverr(fd, v6, on)
    }

    fn shutdown_write(&mut self, fd: RawFd) -> Result<(), Error> {
        self.tally.transitions += 1;
        super::shutdown_write(fd)
    }

    /// Forgets the memory of ops still in flight, so the kernel never reads freed memory.
    fn leak(&mut self) {
        for m in self.mem.drain(..).flatten() {
            std::mem::forget(m);
        }
        for m in self.errq.drain(..).flatten() {
            std::mem::forget(m);
        }
        self.errq_in_kernel = 0;
        // Their completions, if they come, match no slot and are not waited for.
        self.in_kernel = 0;
    }

    fn now_ns(&self) -> u64 {
        nanos_since(self.base)
    }

    fn idle(&self) -> bool {
        self.pushed == 0 && self.extra == 0 && self.errq_in_kernel == 0
    }

    fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring's descriptor stays open as long as `self.ring`, which outlives the
        // borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }
}

impl Drop for Uring {
    /// Takes the ring out of the ring table. Only the registering thread can; elsewhere the
    /// table keeps the ring alive until that thread exits (at most 16 rings per thread: the
    /// table's size), so the file table is emptied first, entry by entry (an update never
    /// waits for requests in flight): the sockets it holds must close when the engine drops
    /// them.
    fn drop(&mut self) {
        let Some(r) = self.registered_ring else {
            return;
        };
        if r.thread != thread_key() {
            if !self.fixed_fd.is_empty() {
                let empty = vec![-1; self.fixed_fd.len()];
                let _ = self.ring.submitter().register_files_update(0, &empty);
            }
            return;
        }
        let up = RsrcUpdate {
            offset: r.index,
            resv: 0,
            data: 0,
        };
        // SAFETY: one `io_uring_rsrc_update`, live for the call.
        let _ = unsafe {
            register(
                self.ring.as_raw_fd(),
                IORING_UNREGISTER_RING_FDS,
                (&up as *const RsrcUpdate).cast(),
                1,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::FastPaths;

    #[test]
    fn env_entries_apply_in_order() {
        let d = FastPaths::DEFAULT;
        assert_eq!(d.apply_env(""), Ok(d));
        assert_eq!(d.apply_env(" none "), Ok(FastPaths::NONE));
        let all = FastPaths::NONE.apply_env("all").expect("all");
        for n in FastPaths::NAMES {
            let mut one = FastPaths::NONE;
            one.set(n, true);
            assert_eq!(FastPaths::NONE.apply_env(n), Ok(one), "{n}");
            let mut without = all;
            without.set(n, false);
            assert_eq!(d.apply_env(&format!("all,-{n}")), Ok(without), "{n}");
            assert_eq!(d.apply_env(&format!("ALL !{n}")), Ok(without), "{n}");
        }
        assert_eq!(
            FastPaths::NONE.apply_env("+coop_taskrun,default"),
            Ok(FastPaths::DEFAULT)
        );
        let e = d
            .apply_env("coop_taskrun,sqpoll")
            .expect_err("unknown entry");
        assert!(
            e.contains("\"sqpoll\"") && e.contains("register_files"),
            "{e}"
        );
    }
}

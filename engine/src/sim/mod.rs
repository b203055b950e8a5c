//! The simulated kernel and what checks the engine against it, for tests and fuzz targets (the
//! `sim` feature or `cfg(fuzzing)`; not public API).
//!
//! The simulator is just another driver: [`kernel::SimKernel`] implements the same contract as
//! the io_uring and epoll drivers, so tests and fuzz targets drive the *public engine API*
//! (`Engine::with_sim`, `send`, `flush`, `close`, …) and the real orchestration and core run
//! over it. Nothing here re-implements flush, close or abort.
//!
//! - [`kernel`]: the simulated kernel (io_uring or epoll completion model, stalled, reset and
//!   closed peers, ENOBUFS, a virtual clock, stale completions) and what it observed;
//! - [`behaviour`]: what it answers for an op when nothing else decides;
//! - [`model`]: what the user did through the API (accepted writes, flush reports, barriers);
//! - [`checks`]: the model against the kernel's observations and the engine's reports;
//! - [`trace`]: plain-data steps and a runner that applies them and checks after each.

pub mod behaviour;
pub mod checks;
pub mod kernel;
pub mod model;
pub mod trace;

pub use behaviour::{AllOk, Behaviour, Fate, FnBehaviour, OpView, Replay, Script, Verdict, ERRNOS};
pub use kernel::{
    Cancel, Delivered, Idle, Kind, Mode, OpRecord, PeerLog, SimHandle, SimKernel, ZcModel, ZcMore,
};
pub use model::{dest, payload, Counts, Model};
pub use trace::{Observed, Outcome, Refusal, Runner, Setup, Step};

/// The engine's limits and switches, as the simulated engine takes them (the core's own
/// configuration, clamped as `EngineBuilder` clamps it).
pub use crate::core::Config as SimConfig;

//! Criterion glue shared by the benches: the configuration, and `volley-bench`'s own methods
//! on their own loopback sockets and verifying receivers, built by [`volley_bench::build`] as
//! `volley bench` builds them.
//!
//! Everything but [`volley_bench::Method::batch`] runs outside the timed closures.

#![allow(
    dead_code,
    reason = "each bench binary includes this module and uses part of it"
)]

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use volley_bench::scenario::{Payload, Spec};
use volley_bench::{MethodName, Outcome, Runner, ScenarioName};

/// A benchmark group measured in wall time.
pub type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Criterion settings that keep the whole `cargo bench -p volley-bench` run to a few minutes on
/// two cores.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// volley's two backends, with the name used in benchmark ids.
pub const BACKENDS: [(&str, MethodName); 2] = [
    ("volley-epoll", MethodName::Epoll),
    ("volley-uring", MethodName::Uring),
];

/// `scenario`'s socket layout with `per_flush` messages of `msg_size` bytes per batch.
pub fn spec(scenario: ScenarioName, msg_size: usize, per_flush: usize) -> Spec {
    Spec {
        msg_size,
        ..Spec::new(scenario, Some(per_flush), false)
    }
}

/// `method` on its own sockets and receiver, or `None` (with a note on stderr) where it cannot
/// run here, e.g. io_uring disabled by `kernel.io_uring_disabled` or seccomp. The bench is then
/// skipped.
///
/// # Panics
/// When the sockets or the method cannot be set up for any other reason.
pub fn runner(id: &str, method: MethodName, spec: Spec, payload: &Payload) -> Option<Runner> {
    match volley_bench::build(method, spec, payload) {
        Ok(r) => Some(r),
        Err(Outcome::NotApplicable(why)) => {
            eprintln!("skipping {id}: {why}");
            None
        }
        Err(o) => panic!("{id}: {o:?}"),
    }
}

/// Benchmark `id`/`param`: one [`volley_bench::Method::batch`] per iteration. Returns how many
/// batches ran.
pub fn bench(group: &mut Group<'_>, id: &str, param: usize, r: &mut Runner) -> u64 {
    let mut batches = 0u64;
    group.bench_function(BenchmarkId::new(id, param), |b| {
        b.iter(|| {
            if let Err(e) = r.method.batch(&mut r.work) {
                panic!("{id}/{param}: {e}");
            }
            batches += 1;
        });
    });
    batches
}

//! `volley bench --threads N`: one engine per core. Each of N threads builds the method on its
//! own copy of the scenario — its own sockets, its own verifying receivers and, for volley, its
//! own engine — and runs every round's batches at the same time as the others. The engine has
//! no shared state, so nothing is shared between the threads but the CPUs, the loopback
//! device and the kernel's socket tables: the aggregate rate shows how the method scales with
//! cores until the receivers or the loopback saturate.
//!
//! A round's rate is the sum of the threads' messages over the span from the first thread's
//! start to the last thread's end (they start together at a barrier); every thread's receiver
//! verifies what its thread sent, as in a single-threaded round.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};

use hdrhistogram::Histogram;

use crate::perf::SyscallCounter;
use crate::scenario::{Payload, Spec};
use crate::{build, histogram, run_verified, MethodName, Outcome, RoundStat};

/// A round for every thread: how many batches, and whether to count transitions.
#[derive(Debug, Clone, Copy)]
struct Round {
    batches: usize,
    count: bool,
}

type Done = Result<(RoundStat, Histogram<u64>), String>;

/// N threads, each with its own copy of the scenario and the method built on it.
pub(crate) struct Group {
    rounds: Vec<Sender<Round>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

impl Group {
    /// Starts `n` threads; each builds `name` on its own sockets and receivers (in the
    /// thread: a method may be `!Send`, as volley's tokio driver is).
    ///
    /// # Errors
    /// The first thread's build failure (the others stop).
    pub(crate) fn start(
        name: MethodName,
        spec: Spec,
        payload: &Payload,
        n: usize,
    ) -> Result<Group, Outcome> {
        let start = Arc::new(Barrier::new(n));
        let (done_tx, done) = channel::<Done>();
        let (ready_tx, ready) = channel::<Result<(), Outcome>>();
        let mut group = Group {
            rounds: Vec::with_capacity(n),
            done,
            workers: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (round_tx, round_rx) = channel::<Round>();
            let (start, done_tx, ready_tx) =
                (Arc::clone(&start), done_tx.clone(), ready_tx.clone());
            let payload = payload.clone();
            let worker = thread::Builder::new()
                .name(format!("bench-sender-{i}"))
                .spawn(move || {
                    let mut r = match build(name, spec, &payload) {
                        Ok(r) => r,
                        Err(o) => {
                            let _ = ready_tx.send(Err(o));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    // This thread's own counter: the kernel counts per thread.
                    let mut counter = SyscallCounter::new().ok();
                    while let Ok(round) = round_rx.recv() {
                        let mut hist = histogram();
                        start.wait();
                        let counter = counter.as_mut().filter(|_| round.count);
                        let res = catch_unwind(AssertUnwindSafe(|| {
                            run_verified(&mut r, spec, round.batches, &mut hist, counter)
                        }))
                        .unwrap_or_else(|_| Err("the sender thread panicked".to_string()));
                        if done_tx.send(res.map(|s| (s, hist))).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| Outcome::Failed(format!("spawning a sender thread: {e}")))?;
            group.rounds.push(round_tx);
            group.workers.push(worker);
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(o)) => return Err(o),
                Err(_) => return Err(Outcome::Failed("a sender thread died".into())),
            }
        }
        Ok(group)
    }

    /// Runs `batches` batches on every thread at once (each verified by its receivers) and
    /// returns the aggregate round and the batch latencies of all threads; transitions are
    /// counted when `count` (each thread its own, summed).
    ///
    /// # Errors
    /// The first thread's error.
    pub(crate) fn run(
        &mut self,
        batches: usize,
        count: bool,
        hist: &mut Histogram<u64>,
    ) -> Result<RoundStat, String> {
        for tx in &self.rounds {
            // A thread that cannot take the round leaves the others at the start barrier:
            // they never die while the group lives (panics are caught), so this does not fail.
            tx.send(Round { batches, count })
                .map_err(|_| "a sender thread is gone".to_string())?;
        }
        let mut stats = Vec::with_capacity(self.rounds.len());
        let mut first_err = None;
        for _ in 0..self.rounds.len() {
            match self.done.recv() {
                Ok(Ok((s, h))) => {
                    stats.push(s);
                    hist.add(h)
                        .map_err(|e| format!("merging histograms: {e}"))?;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => return Err("a sender thread is gone".into()),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(RoundStat::aggregate(&stats)),
        }
    }
}

impl Drop for Group {
    /// Closes every thread's round channel, so each drops its sockets and receivers and ends.
    fn drop(&mut self) {
        self.rounds.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

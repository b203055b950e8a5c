//! Soak: 10^9 bytes (`SOAK_BYTES` to change) of random-size messages with random flush points over
//! 4 sockets, on each backend, every byte checked at the receivers, and the process's resident
//! memory sampled (`VmRSS` from /proc/self/status every 32 MiB sent) and printed as
//! `SOAK-RSS backend MiB-sent RSS-KiB` lines (`scripts/soak` turns them into docs/soak.md).
//! Memory must stay flat: the peak never exceeds the RSS before sending plus the configured queue
//! limit plus a margin, and the second half of the run never grows past the first half's peak by
//! more than 4 MiB (a leak of 32 bytes per write would: ~130 000 writes per half). `#[ignore]`d: run it with `scripts/soak`.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use volley_tests::*;

const SOCKETS: usize = 4;
const DEFAULT_BYTES: u64 = 1_000_000_000;
/// The engine's queue limits for the soak (all sockets; per socket).
const QUEUE_LIMIT: usize = 32 << 20;
const QUEUE_LIMIT_PER_SOCKET: usize = 8 << 20;
/// Sample RSS every this many bytes sent.
const SAMPLE_EVERY: u64 = 32 << 20;
/// Slack over the queue limit for the peak (allocator slack, receivers' buffers, thread stacks).
const PEAK_MARGIN_KIB: u64 = 64 << 10;
/// Most the second half may grow over the first half's peak.
const DRIFT_KIB: u64 = 4 << 10;

/// The process's resident set, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
#[ignore = "soak: moves 10^9 bytes per backend; run scripts/soak"]
fn soak_random_sizes_random_flushes() {
    let target_bytes: u64 = std::env::var("SOAK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BYTES);
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let seeds: Vec<u64> = (0..SOCKETS as u64).map(|k| 0x50A4_0000 + k).collect();
        let sinks: Vec<PatternSink> = seeds.iter().map(|&s| PatternSink::start(s)).collect();
        let rss_start = rss_kib();
        let mut samples: Vec<(u64, u64)> = vec![(0, rss_start)];
        let mut next_sample = SAMPLE_EVERY;
        println!("SOAK-RSS {ctx} 0 {rss_start}");
        let mut e = builder(b)
            .max_queued_bytes(QUEUE_LIMIT)
            .max_queued_bytes_per_socket(QUEUE_LIMIT_PER_SOCKET)
            .build()
            .expect("engine");
        let ids: Vec<_> = sinks
            .iter()
            .map(|s| e.register_tcp(s.connect()).expect("register"))
            .collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x50A4);
        let mut offsets = [0u64; SOCKETS];
        let (mut writes, mut reported_writes, mut reported_bytes) = (0u64, 0u64, 0u64);
        let mut total = 0u64;
        let start = std::time::Instant::now();
        while total < target_bytes {
            if total >= next_sample {
                let rss = rss_kib();
                samples.push((total, rss));
                println!("SOAK-RSS {ctx} {} {rss}", total >> 20);
                next_sample += SAMPLE_EVERY;
            }
            let k = rng.gen_range(0..SOCKETS);
            // Log-uniform 1 B … 64 KiB.
            let bits = rng.gen_range(0..=16u32);
            let len = rng.gen_range(1..=(1usize << bits));
            let mut buf = vec![0u8; len];
            pattern_fill(seeds[k], offsets[k], &mut buf);
            offsets[k] += len as u64;
            total += len as u64;
            writes += 1;
            let data = Bytes::from(buf);
            loop {
                match e.send(ids[k], data.clone()) {
                    Ok(()) => break,
                    Err(err) if err.is_backpressure() => {
                        let r = e
                            .flush_all()
                            .and_then(volley::FlushAllReport::into_result)
                            .expect("flush_all on backpressure");
                        reported_writes += r.writes;
                        reported_bytes += r.bytes;
                    }
                    Err(err) => panic!("{ctx}: send: {err}"),
                }
            }
            match rng.gen_range(0..1000) {
                0..=9 => {
                    let r = e.flush(ids[rng.gen_range(0..SOCKETS)]).expect("flush");
                    reported_writes += r.writes;
                    reported_bytes += r.bytes;
                }
                10..=14 => {
                    let r = e
                        .flush_all()
                        .and_then(volley::FlushAllReport::into_result)
                        .expect("flush_all");
                    reported_writes += r.writes;
                    reported_bytes += r.bytes;
                }
                15..=99 => e.submit().expect("submit"),
                _ => {}
            }
        }
        let r = e
            .flush_all()
            .and_then(volley::FlushAllReport::into_result)
            .expect("final flush_all");
        reported_writes += r.writes;
        reported_bytes += r.bytes;
        assert_eq!(reported_writes, writes, "{ctx}: reported writes");
        assert_eq!(reported_bytes, total, "{ctx}: reported bytes");
        let rss_end = rss_kib();
        samples.push((total, rss_end));
        println!("SOAK-RSS {ctx} {} {rss_end}", total >> 20);
        let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let bound = rss_start + (QUEUE_LIMIT as u64 >> 10) + PEAK_MARGIN_KIB;
        assert!(
            peak <= bound,
            "{ctx}: RSS peaked at {peak} KiB, above start {rss_start} KiB + queue limit {} KiB + \
             margin {PEAK_MARGIN_KIB} KiB",
            QUEUE_LIMIT >> 10
        );
        // Flat: after a 10% warm-up, the second half never exceeds the first half's peak + drift.
        let warm: Vec<&(u64, u64)> = samples
            .iter()
            .filter(|s| s.0 >= target_bytes / 10)
            .collect();
        let (first, second) = warm.split_at(warm.len() / 2);
        if let (Some(p1), Some(p2)) = (
            first.iter().map(|s| s.1).max(),
            second.iter().map(|s| s.1).max(),
        ) {
            assert!(
                p2 <= p1 + DRIFT_KIB,
                "{ctx}: RSS grew from a first-half peak of {p1} KiB to {p2} KiB in the second \
                 half (more than {DRIFT_KIB} KiB): memory is not flat"
            );
            println!(
                "SOAK-SUMMARY {ctx} bytes={total} start_kib={rss_start} peak_kib={peak} \
                 first_half_peak_kib={p1} second_half_peak_kib={p2} end_kib={rss_end}"
            );
        }
        let st = e.stats().clone();
        for id in ids {
            drop(e.close(id).expect("close"));
        }
        for (k, s) in sinks.into_iter().enumerate() {
            let got = s.finish();
            assert_eq!(
                got.first_mismatch, None,
                "{ctx} socket {k}: a received byte differs from the one sent"
            );
            assert_eq!(got.bytes, offsets[k], "{ctx} socket {k}: byte count");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "SOAK-DONE {ctx}: {total} bytes in {writes} writes over {SOCKETS} sockets, {:.1} s \
             ({:.0} MB/s); {} transitions, {} sends, {} short sends",
            secs,
            total as f64 / secs / 1e6,
            st.kernel_transitions,
            st.sqes,
            st.short_sends
        );
    }
}

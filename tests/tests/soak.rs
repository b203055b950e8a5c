//! Soak: ≥ 10^8 bytes of random-size messages with random flush points over 4 sockets, on each
//! backend, every byte checked at the receivers. `#[ignore]`d: run it with `scripts/soak`.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use volley_tests::*;

const SOCKETS: usize = 4;
const TARGET_BYTES: u64 = 100_000_000;

#[test]
#[ignore = "soak: moves 10^8 bytes per backend; run scripts/soak"]
fn soak_random_sizes_random_flushes() {
    for b in BACKENDS {
        let ctx = format!("{b:?}");
        let seeds: Vec<u64> = (0..SOCKETS as u64).map(|k| 0x50A4_0000 + k).collect();
        let sinks: Vec<PatternSink> = seeds.iter().map(|&s| PatternSink::start(s)).collect();
        let mut e = builder(b).build().expect("engine");
        let ids: Vec<_> = sinks
            .iter()
            .map(|s| e.register_tcp(s.connect()).expect("register"))
            .collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x50A4);
        let mut offsets = [0u64; SOCKETS];
        let (mut writes, mut reported_writes, mut reported_bytes) = (0u64, 0u64, 0u64);
        let mut total = 0u64;
        let start = std::time::Instant::now();
        while total < TARGET_BYTES {
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
        eprintln!(
            "{ctx}: {total} bytes in {writes} writes over {SOCKETS} sockets, {:.1} s \
             ({:.0} MB/s); {} transitions, {} sends, {} short sends",
            secs,
            total as f64 / secs / 1e6,
            st.kernel_transitions,
            st.sqes,
            st.short_sends
        );
    }
}

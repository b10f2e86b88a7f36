//! The cost of recording one latency on the inference path: `AtomicHistogram::record`
//! from one thread, and from four threads into the same histogram (contended), next to
//! the plain `Histogram::record` it replaces.
//!
//! ```sh
//! cargo bench -p perch-runtime --bench record
//! ```
//!
//! The issue's budget is 1 µs per inference; expect a few nanoseconds. Latencies cycle
//! through a spread of values so the bucket lookup is not always the same branch path.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use perch_runtime::histogram::{AtomicHistogram, Histogram};

/// 64 latencies from 2 µs to about 1.3 s, spread over many buckets.
fn latencies() -> [Duration; 64] {
    let mut out = [Duration::ZERO; 64];
    let mut ns: u64 = 2_000;
    for d in &mut out {
        *d = Duration::from_nanos(ns);
        ns = ns * 5 / 4;
    }
    out
}

fn record(c: &mut Criterion) {
    let samples = latencies();
    let mut group = c.benchmark_group("record");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));

    let atomic = AtomicHistogram::new();
    let mut i = 0;
    group.bench_function("atomic", |b| {
        b.iter(|| {
            i = (i + 1) % samples.len();
            atomic.record(black_box(samples[i]))
        })
    });

    let mut plain = Histogram::new();
    group.bench_function("plain", |b| {
        b.iter(|| {
            i = (i + 1) % samples.len();
            plain.record(black_box(samples[i]))
        })
    });

    // Four threads, one shared histogram; the figure is wall time per record per thread.
    const THREADS: usize = 4;
    group.bench_function("atomic_4_threads", |b| {
        b.iter_custom(|iters| {
            let shared = AtomicHistogram::new();
            let start = Barrier::new(THREADS + 1);
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let (shared, start) = (&shared, &start);
                    scope.spawn(move || {
                        start.wait();
                        for n in 0..iters as usize {
                            shared.record(black_box(samples[(n + t) % samples.len()]));
                        }
                    });
                }
                start.wait();
                let began = Instant::now();
                // Scope end joins the threads, inside the measured time.
                began
            })
            .elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);

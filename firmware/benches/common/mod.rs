//! What the HTTP and MQTT latency benches share: interleaved rounds and the table.

use std::path::Path;
use std::time::{Duration, Instant};

use perch_runtime::engine::{Golden, LoadOptions, Model};

/// Samples per stage and round: the first number among the arguments, 2,000 if none.
pub fn samples() -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000)
}

/// The R2 keyword spotter (kws-dscnn) and its golden files.
pub fn kws() -> (Model, Golden) {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/kws-dscnn");
    let model = Model::load(models.join("model.onnx"), &LoadOptions::new()).unwrap();
    let golden = Golden::load(models.join("golden")).unwrap();
    (model, golden)
}

/// Rounds over all stages; stages rotate so a noisy neighbour hits them alike.
pub const ROUNDS: usize = 3;

/// A named stage: one request per call, and its measured times.
pub type Stage<'a> = (&'static str, Box<dyn FnMut() + 'a>, Vec<Duration>);

/// Runs every stage `samples` times per round, after 300 ms of warm-up each time.
pub fn measure(stages: &mut [Stage<'_>], samples: usize) {
    let count = stages.len();
    for round in 0..ROUNDS {
        for i in 0..count {
            let (_, run, times) = &mut stages[(i + round) % count];
            let warm_up = Instant::now();
            while warm_up.elapsed() < Duration::from_millis(300) {
                run();
            }
            for _ in 0..samples {
                let t = Instant::now();
                run();
                times.push(t.elapsed());
            }
        }
    }
}

/// Prints p50/p90/p99/mean per stage as a Markdown table, then each stage's p50
/// overhead over the first stage (the engine alone).
pub fn report(stages: &mut [Stage<'_>], samples: usize) {
    println!(
        "kws-dscnn (R2), {ROUNDS} rounds x {samples} samples per stage, nearest-rank quantiles\n"
    );
    println!("| stage | p50 | p90 | p99 | mean |");
    println!("|---|---:|---:|---:|---:|");
    let engine_p50 = quantile(&mut stages[0].2, 0.5);
    for (name, _, times) in stages.iter_mut() {
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "| {name} | {} | {} | {} | {} |",
            us(quantile(times, 0.5)),
            us(quantile(times, 0.9)),
            us(quantile(times, 0.99)),
            us(mean),
        );
    }
    println!();
    for (name, _, times) in stages[1..].iter_mut() {
        let over = quantile(times, 0.5).saturating_sub(engine_p50);
        println!("{name}: p50 overhead over the engine {}", us(over));
    }
}

fn quantile(times: &mut [Duration], p: f64) -> Duration {
    times.sort_unstable();
    let rank = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
    times[rank - 1]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

//! Per-run latency of `Session::run` on a model's golden input, as one JSON line.
//!
//! Loads the model, checks one run against the golden output, warms up, then times
//! each of `--runs` calls to [`Session::run`] on its own with [`Instant`] (the time
//! includes input validation, copying the input into the session and dropping the
//! outputs: everything a caller pays per inference). Quantiles are nearest-rank over
//! the sorted samples, so each one is a latency that was actually measured.
//!
//! ```sh
//! cargo build --release -p perch-runtime --example latency
//! target/release/examples/latency models/kws-dscnn/model.w8.onnx --runs 2000
//! ```
//!
//! prints
//!
//! ```text
//! {"model":"kws-dscnn","variant":"w8","p50_ms":..,"p90_ms":..,"p99_ms":..,"mean_ms":..,"min_ms":..,"runs":2000,"load_ms":..,"max_rel_error":..}
//! ```
//!
//! The model name is the model file's folder; the variant is what sits between `model.`
//! and `.onnx` (`float` for `model.onnx`). The golden folder defaults to `golden/` next to
//! the model, with outputs `output_N.npy` (float) or `output_N.<variant>.npy`.
//!
//! Options: `--runs N` (default 1000), `--warmup-ms MS` (default 300; at least 10 runs),
//! `--golden DIR`, `--fix-shapes` (bind symbolic input dimensions to the golden input's
//! shape at load time, instead of resolving them on every run as a plain load does).
//!
//! Build with `--release`: the dev profile compiles this crate at opt-level 1.

mod common;

use std::error::Error;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perch_runtime::engine::{Dim, Golden, LoadOptions, Model, Tolerance};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

struct Args {
    model: PathBuf,
    runs: usize,
    warmup: Duration,
    golden: Option<PathBuf>,
    fix_shapes: bool,
}

const USAGE: &str =
    "usage: latency <model.onnx> [--runs N] [--warmup-ms MS] [--golden DIR] [--fix-shapes]";

fn parse_args() -> Result<Args> {
    let mut model = None;
    let mut runs = 1000;
    let mut warmup = Duration::from_millis(300);
    let mut golden = None;
    let mut fix_shapes = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--runs" => runs = value()?.parse()?,
            "--warmup-ms" => warmup = Duration::from_millis(value()?.parse()?),
            "--golden" => golden = Some(PathBuf::from(value()?)),
            "--fix-shapes" => fix_shapes = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ if arg.starts_with('-') => {
                return Err(format!("unknown option {arg}\n{USAGE}").into())
            }
            _ if model.is_none() => model = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}\n{USAGE}").into()),
        }
    }
    let model = model.ok_or(USAGE)?;
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(Args {
        model,
        runs,
        warmup,
        golden,
        fix_shapes,
    })
}

/// The nearest-rank `q`-quantile of sorted samples, in milliseconds.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

fn main() {
    if let Err(e) = run() {
        eprintln!("latency: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let (model_name, variant) = common::names(&args.model);
    let golden_dir = args
        .golden
        .clone()
        .unwrap_or_else(|| args.model.parent().unwrap_or(Path::new(".")).join("golden"));
    let golden = Golden::load_variant(&golden_dir, (variant != "float").then_some(&*variant))?;

    let mut options = LoadOptions::new();
    if args.fix_shapes {
        // Needs the declared input names, so load once untimed to read them.
        let declared = Model::load(&args.model, &LoadOptions::new())?;
        for (info, tensor) in declared.metadata().inputs.iter().zip(&golden.inputs) {
            if info.shape.iter().any(|d| matches!(d, Dim::Symbolic(_))) {
                options = options.input_shape(info.name.clone(), tensor.shape());
            }
        }
    }
    let started = Instant::now();
    let model = Model::load(&args.model, &options)?;
    let mut session = model.session()?;
    let load = started.elapsed();

    let report = session.self_test(&golden, Tolerance { relative: 1e-3 })?;
    let max_rel_error = report
        .outputs
        .iter()
        .map(|o| o.relative_error)
        .fold(0f32, f32::max);

    let inputs = golden.input_refs()?;
    let warmup_started = Instant::now();
    let mut warmup_runs = 0;
    while warmup_runs < 10 || warmup_started.elapsed() < args.warmup {
        black_box(session.run(black_box(&inputs))?);
        warmup_runs += 1;
    }

    let mut samples = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        let outputs = session.run(black_box(&inputs))?;
        drop(black_box(outputs));
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    let mean_ms = samples.iter().sum::<Duration>().as_secs_f64() * 1e3 / samples.len() as f64;

    println!(
        "{{\"model\":{},\"variant\":{},\"p50_ms\":{:.6},\"p90_ms\":{:.6},\"p99_ms\":{:.6},\
         \"mean_ms\":{:.6},\"min_ms\":{:.6},\"runs\":{},\"load_ms\":{:.3},\"fixed_shapes\":{},\
         \"max_rel_error\":{:.3e}}}",
        serde_json::Value::from(model_name),
        serde_json::Value::from(variant),
        quantile(&samples, 0.50),
        quantile(&samples, 0.90),
        quantile(&samples, 0.99),
        mean_ms,
        samples[0].as_secs_f64() * 1e3,
        args.runs,
        load.as_secs_f64() * 1e3,
        args.fix_shapes,
        max_rel_error,
    );
    Ok(())
}

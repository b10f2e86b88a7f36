//! `perch bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::{bench, parse_shape_override};

/// Measure a model on this machine: load and optimize time, warm latency
/// (p50/p95/p99 and mean), throughput, peak memory and achieved GFLOP/s.
///
/// Runs the golden inputs (from the bundle, or `golden/` beside the model) when they
/// fit, else a deterministic pseudo-random input with symbolic dimensions set to 1.
/// Quantiles are exact order statistics (nearest rank) of the per-run times. GFLOP/s is
/// 2 × MACs / p50, with MACs counted as `perch inspect` does.
///
/// `--threads N` runs N independent sessions in parallel, one per thread: the engine
/// (tract 0.23.9, built without `multithread-mm`) runs each inference on one core, so
/// threads raise throughput, not single-inference speed.
///
/// `--profile` also times every node of the optimized plan and prints the time per
/// operator type (percent of the time spent in nodes) and the slowest nodes.
#[derive(clap::Args)]
pub struct Args {
    /// An ONNX model, an NNEF archive or a bundle (.perch).
    model: PathBuf,
    /// Sessions running in parallel, one per thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed runs per thread.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Untimed runs per thread before timing.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Time every node of the optimized plan and report the time per operator type.
    #[arg(long)]
    profile: bool,
    /// Fix an input's shape, e.g. `--shape pixels=8,64` (repeatable).
    #[arg(long = "shape", value_name = "NAME=D1,D2,...", value_parser = parse_shape_override)]
    shapes: Vec<(String, Vec<usize>)>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let options = bench::BenchOptions {
        threads: args.threads,
        runs: args.runs,
        warmup: args.warmup,
        profile: args.profile,
        shapes: args.shapes,
    };
    let report = bench::bench(&args.model, &options)
        .with_context(|| format!("cannot benchmark {}", args.model.display()))?;
    super::print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

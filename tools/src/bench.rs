//! `perch bench`: load time, warm latency quantiles, throughput, peak memory and
//! achieved GFLOP/s of a model on this machine, and optionally where the time goes.
//!
//! Threads: tract 0.23.9 as Perch builds it has no intra-op parallelism (its
//! `multithread-mm` feature, which brings the rayon executor behind
//! `RunOptions { executor }`, is off, and the engine API does not expose plan options),
//! so one inference always runs on one core. `threads = N` runs N independent sessions
//! of the same model in parallel, one per thread: latency is per inference under that
//! load and throughput is the total over all threads, the way a device serving several
//! requests at once would use its cores.
//!
//! Quantiles are exact order statistics of the per-run samples (nearest rank: the
//! p-quantile of n sorted samples is sample ⌈p·n⌉).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use perch_runtime::bundle::{Bundle, Limits};
use perch_runtime::engine::internal::{ArrayExt, ModelExt, Tensor};
use perch_runtime::engine::{Model, ModelFormat};
use serde::Serialize;
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoTValue, TValue, TVec};
use tract_onnx::tract_core::internal::{EvalContext, OpState};
use tract_onnx::tract_core::model::TypedNode;
use tract_onnx::tract_core::plan::SimplePlan;

use crate::graph::{self, Compute, SampleSource};
use crate::inspect::si;
use crate::{load_options, ToolError};

/// How to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sessions running in parallel, one per thread (at least 1).
    pub threads: usize,
    /// Timed runs per thread (at least 1).
    pub runs: usize,
    /// Untimed runs per thread before timing starts.
    pub warmup: usize,
    /// Also time every node of the optimized plan (separate runs, after the timed ones).
    pub profile: bool,
    /// Input shape overrides (fix a symbolic batch size, say).
    pub shapes: Vec<(String, Vec<usize>)>,
}

impl Default for BenchOptions {
    /// One thread, 100 timed runs after 10 warm-up runs, no profile.
    fn default() -> Self {
        BenchOptions {
            threads: 1,
            runs: 100,
            warmup: 10,
            profile: false,
            shapes: vec![],
        }
    }
}

/// Load time, end to end and per stage.
#[derive(Debug, Clone, Serialize)]
pub struct LoadTimes {
    /// The engine's `Model::load`: read, check, type, declutter, optimize and plan, ms.
    pub total_ms: f64,
    /// The same stages measured one by one in a second load (informational; `None`
    /// where the stages cannot be separated).
    pub stages: Option<LoadStages>,
}

/// One load, stage by stage, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LoadStages {
    /// Decoding the file into the engine's graph (ONNX: the inference model; NNEF:
    /// the typed model).
    pub read_ms: f64,
    /// ONNX only: shape and type analysis into the typed model.
    pub type_ms: Option<f64>,
    /// Graph simplification (`into_decluttered`).
    pub declutter_ms: f64,
    /// Kernel selection, fusion and planning (`into_optimized`, `SimplePlan::new`).
    pub optimize_ms: f64,
}

/// Latency quantiles over every timed run, milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Number of samples.
    pub samples: usize,
    /// Fastest run.
    pub min_ms: f64,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 95th percentile (nearest rank).
    pub p95_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Exact nearest-rank quantiles of `samples`; `None` when there are none.
    pub fn from_samples(samples: &[Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let rank = |p: f64| ms[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Latency {
            samples: n,
            min_ms: ms[0],
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: ms[n - 1],
            mean_ms: ms.iter().sum::<f64>() / n as f64,
        })
    }
}

/// Time spent in one operator type of the optimized plan.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// The engine's op name (`OptMatMul`, `DepthWise`, ...).
    pub op: String,
    /// Nodes of that op in the plan.
    pub nodes: usize,
    /// Time per run (sum of its nodes' medians), milliseconds.
    pub ms_per_run: f64,
    /// Share of the time spent in nodes, percent.
    pub percent: f64,
    /// Multiply-accumulates of these nodes per run (engine cost model; 0 for ops that
    /// are not convolutions or matrix products).
    pub macs: u64,
    /// `2 × macs / time`: the GFLOP/s these nodes achieve, when they do MACs.
    pub gflops: Option<f64>,
}

/// Time spent in one node of the optimized plan.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTime {
    /// The node's name (derived from the source node's).
    pub node: String,
    /// Its op.
    pub op: String,
    /// Median time per run, milliseconds.
    pub ms_per_run: f64,
    /// Share of the time spent in nodes, percent.
    pub percent: f64,
    /// Its multiply-accumulates per run (engine cost model; 0 when it does none).
    pub macs: u64,
    /// `2 × macs / time`, when it does MACs.
    pub gflops: Option<f64>,
}

/// Where the time of one inference goes, per op type of the optimized plan.
///
/// Each node's time is its median over the profiled runs, so a run slowed down by
/// another process on the machine does not skew the shares; an op type's time is the
/// sum of its nodes' medians.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Profiled runs (after the same warm-up as the timed runs).
    pub runs: usize,
    /// Median wall time of a profiled run, milliseconds (includes the timing overhead).
    pub run_ms: f64,
    /// Sum of the nodes' median times, milliseconds; the rest of `run_ms` is the
    /// plan's own bookkeeping and the timer.
    pub nodes_ms: f64,
    /// Every op type, slowest first; percentages add up to 100.
    pub ops: Vec<OpTime>,
    /// The ten slowest nodes.
    pub top_nodes: Vec<NodeTime>,
}

/// The result of `perch bench`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The model file.
    pub model: String,
    /// `onnx` or `nnef`.
    pub format: &'static str,
    /// What the inputs were.
    pub sample: SampleSource,
    /// The input shapes run.
    pub input_shapes: Vec<Vec<usize>>,
    /// Load and optimize time.
    pub load: LoadTimes,
    /// The first inference on a fresh session, milliseconds.
    pub first_run_ms: f64,
    /// Parallel sessions.
    pub threads: usize,
    /// How `threads` is implemented (see the module documentation).
    pub threading: String,
    /// Warm-up runs per thread.
    pub warmup: usize,
    /// Timed runs per thread.
    pub runs: usize,
    /// Warm latency over all timed runs of all threads.
    pub latency: Latency,
    /// Inferences per second over all threads.
    pub throughput_per_s: f64,
    /// Peak resident memory of this process (VmHWM), KiB, after loading and running
    /// (before the profile and the load-stage measurement); `None` off Linux.
    pub peak_rss_kib: Option<u64>,
    /// Multiply-accumulates of one inference on these inputs.
    pub compute: Option<Compute>,
    /// `2 × MACs / p50`, GFLOP/s per inference stream.
    pub gflops_at_p50: Option<f64>,
    /// Per-op profile (`--profile`).
    pub profile: Option<Profile>,
}

/// The threading note for reports.
pub const THREADING: &str = "independent sessions, one per thread (tract 0.23.9 is built \
    without multithread-mm, so each inference runs on one core)";

/// Loads, warms up, times and optionally profiles a model.
pub fn bench(path: &Path, options: &BenchOptions) -> Result<BenchReport, ToolError> {
    if options.threads == 0 || options.runs == 0 {
        return Err(ToolError::Usage(
            "--threads and --runs must be at least 1".into(),
        ));
    }
    let load_options = load_options(&options.shapes);
    let started = Instant::now();
    let (model, manifest) = crate::bundle::load_model(path, &load_options)?;
    let total_ms = ms(started.elapsed());
    let format = match model.metadata().format {
        ModelFormat::Onnx => "onnx",
        ModelFormat::Nnef => "nnef",
    };
    // A bundle's model is analysed from a copy in a temporary folder, under its name
    // in the bundle (which carries its format), and runs the bundle's golden inputs.
    let unpacked = match manifest {
        Some(manifest) => Some(unpack(path, &manifest.model.path)?),
        None => None,
    };
    let (samples, sample) = match &unpacked {
        Some(u) if graph::inputs_fit(&model, &u.golden_inputs) => (
            u.golden_inputs.clone(),
            SampleSource {
                kind: "golden",
                description: format!("the golden inputs in {}", path.display()),
                notes: vec![],
            },
        ),
        Some(u) => graph::sample_inputs(&model, &u.model),
        None => graph::sample_inputs(&model, path),
    };
    let inputs = crate::input_refs(&samples, "input")?;
    let input_shapes: Vec<Vec<usize>> = samples.iter().map(|t| t.shape().to_vec()).collect();

    let mut session = model.session()?;
    let started = Instant::now();
    session.run(&inputs)?;
    let first_run_ms = ms(started.elapsed());
    drop(session);

    let (latency, throughput_per_s) = timed_runs(&model, &samples, options)?;
    let peak_rss_kib = peak_rss_kib();

    let profile = if options.profile {
        Some(profile(&model, &samples, options.warmup, options.runs)?)
    } else {
        None
    };
    let model_file = unpacked.as_ref().map_or(path, |u| u.model.as_path());
    let (stages, compute) = analyse(model_file, format, &model, &input_shapes);
    let gflops_at_p50 = compute
        .as_ref()
        .filter(|_| latency.p50_ms > 0.0)
        .map(|c| c.flops as f64 / (latency.p50_ms * 1e-3) / 1e9);
    Ok(BenchReport {
        model: path.display().to_string(),
        format,
        sample,
        input_shapes,
        load: LoadTimes { total_ms, stages },
        first_run_ms,
        threads: options.threads,
        threading: THREADING.into(),
        warmup: options.warmup,
        runs: options.runs,
        latency,
        throughput_per_s,
        peak_rss_kib,
        compute,
        gflops_at_p50,
        profile,
    })
}

/// A bundle's model file copied out for analysis, and its golden inputs.
struct Unpacked {
    _dir: tempfile::TempDir,
    model: PathBuf,
    golden_inputs: Vec<Tensor>,
}

fn unpack(path: &Path, model_name: &str) -> Result<Unpacked, ToolError> {
    let bundle = Bundle::read_file(path, &Limits::default())?;
    let dir = crate::temp_dir()?;
    let name = Path::new(model_name)
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "model".into());
    let model = dir.path().join(name);
    std::fs::write(&model, bundle.model_bytes()).map_err(|e| ToolError::write(&model, e))?;
    Ok(Unpacked {
        _dir: dir,
        model,
        golden_inputs: bundle
            .decode_golden()?
            .inputs
            .into_iter()
            .map(ArrayExt::into_tensor)
            .collect(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `warmup` then `runs` timed inferences on each of `threads` sessions, all
/// threads starting their timed runs together.
fn timed_runs(
    model: &Model,
    samples: &[Tensor],
    options: &BenchOptions,
) -> Result<(Latency, f64), ToolError> {
    let barrier = Arc::new(Barrier::new(options.threads + 1));
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..options.threads)
            .map(|_| {
                let barrier = barrier.clone();
                scope.spawn(move || -> Result<Vec<Duration>, ToolError> {
                    let prepared = (|| {
                        let inputs = crate::input_refs(samples, "input")?;
                        let mut session = model.session()?;
                        for _ in 0..options.warmup {
                            session.run(&inputs)?;
                        }
                        Ok::<_, ToolError>((session, inputs))
                    })();
                    // Reach the barrier even on error, or the others would wait forever.
                    barrier.wait();
                    let (mut session, inputs) = prepared?;
                    let mut times = Vec::with_capacity(options.runs);
                    for _ in 0..options.runs {
                        let started = Instant::now();
                        let outputs = session.run(&inputs)?;
                        times.push(started.elapsed());
                        drop(outputs);
                    }
                    Ok(times)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        (joined, started.elapsed())
    });
    let (joined, wall) = results;
    let mut all = vec![];
    for result in joined {
        match result {
            Ok(times) => all.extend(times?),
            Err(_) => return Err(ToolError::Internal("a benchmark thread panicked".into())),
        }
    }
    let latency =
        Latency::from_samples(&all).ok_or_else(|| ToolError::Internal("no timed runs".into()))?;
    let throughput = all.len() as f64 / wall.as_secs_f64().max(f64::MIN_POSITIVE);
    Ok((latency, throughput))
}

/// Peak resident set size of this process (`VmHWM` in /proc/self/status), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Times every node of the optimized plan over `runs` runs (after `warmup` untimed
/// ones) by wrapping the engine's node evaluation, and sums the times per op name.
pub fn profile(
    model: &Model,
    samples: &[Tensor],
    warmup: usize,
    runs: usize,
) -> Result<Profile, ToolError> {
    let shapes: Vec<Vec<usize>> = samples.iter().map(|t| t.shape().to_vec()).collect();
    let engine = |e: tract_onnx::prelude::TractError| {
        ToolError::Internal(format!("profiling failed: {e:#}"))
    };
    let optimized = model.optimized_model().clone();
    let plan = SimplePlan::new(optimized).map_err(engine)?;
    let mut state = plan.spawn().map_err(engine)?;
    let node_count = plan.model().nodes().len();
    let runs = runs.max(1);
    // samples[node][run]: every node's time in every profiled run.
    let mut samples_per_node = vec![Vec::with_capacity(runs); node_count];
    let mut walls = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let record = i >= warmup;
        let inputs: TVec<TValue> = samples.iter().map(|t| t.clone().into_tvalue()).collect();
        let started = Instant::now();
        state
            .run_plan_with_eval(
                inputs,
                |ctx: &EvalContext,
                 op_state: Option<&mut (dyn OpState + 'static)>,
                 node: &TypedNode,
                 inputs: TVec<TValue>| {
                    let t = Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                    if record {
                        samples_per_node[node.id].push(t.elapsed());
                    }
                    out
                },
            )
            .map_err(engine)?;
        if record {
            walls.push(started.elapsed());
        }
    }
    // Medians resist the interference of other processes on a shared machine.
    let per_node: Vec<f64> = samples_per_node.iter().map(|s| median_ms(s)).collect();
    let nodes_ms: f64 = per_node.iter().sum();
    let share = |ms: f64| 100.0 * ms / nodes_ms.max(f64::MIN_POSITIVE);
    let macs = graph::macs_per_node(plan.model(), &shapes);
    let mut by_op: BTreeMap<String, (usize, f64, u64)> = BTreeMap::new();
    let mut nodes = vec![];
    for node in plan.model().nodes() {
        let spent = per_node[node.id];
        let op = node.op.name().to_string();
        let node_macs = match macs.get(node.id) {
            Some(graph::NodeMacs::Counted { macs, .. }) => *macs,
            _ => 0,
        };
        let entry = by_op.entry(op.clone()).or_default();
        entry.0 += 1;
        entry.1 += spent;
        entry.2 += node_macs;
        nodes.push(NodeTime {
            node: node.name.clone(),
            op,
            ms_per_run: spent,
            percent: share(spent),
            macs: node_macs,
            gflops: gflops(node_macs, spent),
        });
    }
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (count, spent, macs))| OpTime {
            op,
            nodes: count,
            ms_per_run: spent,
            percent: share(spent),
            macs,
            gflops: gflops(macs, spent),
        })
        .collect();
    ops.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run).then(a.op.cmp(&b.op)));
    nodes.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
    nodes.truncate(10);
    Ok(Profile {
        runs,
        run_ms: median_ms(&walls),
        nodes_ms,
        ops,
        top_nodes: nodes,
    })
}

/// `2 × macs / time` in GFLOP/s; `None` without MACs or time.
fn gflops(macs: u64, ms: f64) -> Option<f64> {
    (macs > 0 && ms > 0.0).then(|| 2.0 * macs as f64 / (ms * 1e-3) / 1e9)
}

/// The median of some durations, milliseconds (0 for none).
fn median_ms(samples: &[Duration]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => ms(sorted[n / 2]),
        n => (ms(sorted[n / 2 - 1]) + ms(sorted[n / 2])) / 2.0,
    }
}

/// Load stages measured one by one, and the MACs of one inference on `input_shapes`.
fn analyse(
    path: &Path,
    format: &str,
    model: &Model,
    input_shapes: &[Vec<usize>],
) -> (Option<LoadStages>, Option<Compute>) {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if format == "onnx" {
            let proto = crate::onnx::read_model(path).ok()?;
            let named: Vec<(String, Vec<usize>)> = model
                .metadata()
                .inputs
                .iter()
                .zip(input_shapes)
                .map(|(i, s)| (i.name.clone(), s.clone()))
                .collect();
            let compute = graph::typed_onnx(&proto, path, &named)
                .ok()
                .map(|typed| graph::onnx_compute(&proto, &typed));

            let started = Instant::now();
            let inference = perch_runtime::engine::internal::onnx_contrib::onnx_framework()
                .model_for_path(path)
                .ok()?;
            let read_ms = ms(started.elapsed());
            let started = Instant::now();
            let typed = inference.into_typed().ok()?;
            let type_ms = ms(started.elapsed());
            Some((typed, read_ms, Some(type_ms), compute))
        } else {
            let started = Instant::now();
            let typed = graph::typed_nnef(path).ok()?;
            let read_ms = ms(started.elapsed());
            let compute = typed
                .clone()
                .into_decluttered()
                .ok()
                .map(|d| graph::typed_compute(&d, input_shapes));
            Some((typed, read_ms, None, compute))
        }
        .and_then(|(typed, read_ms, type_ms, compute)| {
            let started = Instant::now();
            let decluttered = typed.into_decluttered().ok()?;
            let declutter_ms = ms(started.elapsed());
            let started = Instant::now();
            let optimized = decluttered.into_optimized().ok()?;
            SimplePlan::new(optimized).ok()?;
            let optimize_ms = ms(started.elapsed());
            Some((
                LoadStages {
                    read_ms,
                    type_ms,
                    declutter_ms,
                    optimize_ms,
                },
                compute,
            ))
        })
    }));
    match attempt {
        Ok(Some((stages, compute))) => (Some(stages), compute),
        _ => (None, None),
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.model, self.format)?;
        let shapes: Vec<String> = self.input_shapes.iter().map(|s| format!("{s:?}")).collect();
        writeln!(
            f,
            "  input      {} {} ({})",
            self.sample.kind,
            shapes.join(" "),
            self.sample.description
        )?;
        for note in &self.sample.notes {
            writeln!(f, "    note: {note}")?;
        }
        write!(f, "  load       {:.1} ms", self.load.total_ms)?;
        if let Some(s) = &self.load.stages {
            write!(f, " (separately: read {:.1}", s.read_ms)?;
            if let Some(t) = s.type_ms {
                write!(f, ", type {t:.1}")?;
            }
            write!(
                f,
                ", declutter {:.1}, optimize {:.1} ms)",
                s.declutter_ms, s.optimize_ms
            )?;
        }
        writeln!(f)?;
        writeln!(f, "  first run  {:.3} ms", self.first_run_ms)?;
        let l = &self.latency;
        writeln!(
            f,
            "  warm       p50 {:.3} ms  p95 {:.3} ms  p99 {:.3} ms  mean {:.3} ms  (min {:.3}, max {:.3}; {} runs after {} warm-up, {} thread{})",
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.mean_ms,
            l.min_ms,
            l.max_ms,
            l.samples,
            self.warmup,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )?;
        writeln!(f, "  throughput {:.1} inferences/s", self.throughput_per_s)?;
        if self.threads > 1 {
            writeln!(f, "             threads: {}", self.threading)?;
        }
        if let Some(kib) = self.peak_rss_kib {
            writeln!(f, "  peak RSS   {:.1} MiB", kib as f64 / 1024.0)?;
        }
        if let Some(c) = &self.compute {
            write!(f, "  compute    {}MACs per inference", si(c.macs as f64))?;
            if let Some(g) = self.gflops_at_p50 {
                write!(f, ", {g:.2} GFLOP/s at p50")?;
            }
            writeln!(f)?;
        }
        if let Some(p) = &self.profile {
            writeln!(
                f,
                "  profile    {:.3} ms per run in nodes, {:.3} ms wall (medians of {} runs, timing included)",
                p.nodes_ms, p.run_ms, p.runs
            )?;
            for op in &p.ops {
                profile_line(
                    f,
                    (op.percent, op.ms_per_run),
                    format_args!("{} ({} nodes", op.op, op.nodes),
                    (op.macs, op.gflops),
                )?;
            }
            writeln!(f, "  slowest nodes")?;
            for n in &p.top_nodes {
                profile_line(
                    f,
                    (n.percent, n.ms_per_run),
                    format_args!("{} ({}", n.node, n.op),
                    (n.macs, n.gflops),
                )?;
            }
        }
        write!(
            f,
            "  (timings are of this machine and this moment; compare ratios taken in one run)"
        )
    }
}

/// One line of a profile: the share and time per run of an op type or a node, what it
/// is (`what`, an open parenthesis left for the MACs to close), and its MACs and
/// GFLOP/s when it does MACs.
fn profile_line(
    f: &mut fmt::Formatter<'_>,
    (percent, ms_per_run): (f64, f64),
    what: fmt::Arguments<'_>,
    (macs, gflops): (u64, Option<f64>),
) -> fmt::Result {
    write!(f, "    {percent:>5.1} %  {ms_per_run:>8.3} ms  {what}")?;
    match gflops {
        Some(g) => writeln!(f, ", {}MACs, {g:.2} GFLOP/s)", si(macs as f64)),
        None => writeln!(f, ")"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_order_statistics_of_unsorted_samples() {
        // 1..=100 ms, shuffled deterministically.
        let mut samples: Vec<Duration> = (1..=100u64).map(Duration::from_millis).collect();
        samples.reverse();
        samples.swap(3, 71);
        let l = Latency::from_samples(&samples).unwrap();
        assert_eq!(l.samples, 100);
        assert_eq!((l.min_ms, l.max_ms), (1.0, 100.0));
        assert_eq!((l.p50_ms, l.p95_ms, l.p99_ms), (50.0, 95.0, 99.0));
        assert!((l.mean_ms - 50.5).abs() < 1e-9);
    }

    #[test]
    fn one_sample_is_every_quantile_and_none_is_no_latency() {
        let l = Latency::from_samples(&[Duration::from_micros(1500)]).unwrap();
        assert_eq!((l.p50_ms, l.p95_ms, l.p99_ms), (1.5, 1.5, 1.5));
        assert!(Latency::from_samples(&[]).is_none());
    }

    #[test]
    fn peak_rss_is_read_from_proc_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().unwrap() > 0);
        }
    }
}

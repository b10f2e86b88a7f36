//! `perch batch`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::batch::{self, BatchRequest, Task};
use perch_tools::parse_shape_override;

/// Score a file of rows with a model, one output row per input row, in input order.
///
/// MODEL is a model file or a bundle (`.perch`, from `perch pack`), loaded as
/// `perch run` loads it. Rows are read from --input in chunks and scored on --workers
/// threads, one engine session each; a progress bar on stderr shows rows/s and the
/// time left.
///
/// Each output row holds `prediction` (the class, the index of the largest value of the
/// first output, for a classifier; the value, for a regressor with one value per row;
/// no column for a regressor with several), every output value (`probabilities_0`,
/// ... named after the model's outputs), `model_version` and `scored_at` (RFC 3339 UTC,
/// when the row's chunk was scored). `model_version` is `NAME@VERSION` from a bundle's
/// manifest, or `FILE@sha256:HASH` (the first 12 hex digits of the file's SHA-256) for a
/// model file. An .npy output is a structured array with those fields (the strings as
/// byte strings); it loads with numpy.load once the run has finished.
///
/// Resuming: the output is made durable every second (--checkpoint-every), then a
/// checkpoint beside it
/// (OUTPUT.checkpoint) records the rows written. If the run is interrupted (Ctrl-C,
/// kill, power cut), run the same command again: it continues after the last
/// checkpoint, cutting off anything written after it, so no row is scored twice or
/// lost. A checkpoint of another model, input file or settings is refused; --restart
/// starts over. A Parquet output is written as part files (OUTPUT.parts/) and merged
/// at the end. An existing output without a checkpoint is not replaced without
/// --restart. On success the checkpoint is removed.
#[derive(clap::Args)]
pub struct Args {
    /// An ONNX model, an NNEF archive, or a bundle.
    model: PathBuf,
    /// The rows: .csv (with a header row), .npy (rows × features, or rows × the
    /// model's input shape) or .parquet.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Where the scores go: .csv, .npy or .parquet.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// The feature columns of a CSV or Parquet input, in the model's input order
    /// (default: every numeric column in file order; for CSV, the columns whose first
    /// data row holds numbers).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Rows per chunk. A model with a symbolic batch dimension scores a chunk in one
    /// run; one with a fixed batch dimension B scores it B rows per run (row by row
    /// when B is 1; the last group is padded and the padding's outputs dropped).
    #[arg(long, default_value_t = 256, value_name = "N")]
    chunk: usize,
    /// Scoring threads, one engine session each (default: one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// What `prediction` holds: `classify` (argmax of the first output) or `regress`
    /// (its value). Default: classify when the first output comes from a softmax.
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
    /// Start over: ignore a checkpoint and replace the output.
    #[arg(long)]
    restart: bool,
    /// Score at most N rows in this run, then stop, leaving the checkpoint: the same
    /// command continues later. Splits a long job over several sessions (a night's
    /// window, a spot instance).
    #[arg(long, value_name = "N")]
    max_rows: Option<u64>,
    /// Seconds between checkpoints (each one flushes and fsyncs the output); 0
    /// checkpoints after every chunk, at the cost of more fsyncs.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    checkpoint_every: f64,
    /// Fix an input's shape, e.g. `--shape features=1,640` (repeatable).
    #[arg(long = "shape", value_name = "NAME=D1,D2,...", value_parser = parse_shape_override)]
    shapes: Vec<(String, Vec<usize>)>,
    /// Check a bundle's signature with this public key file (repeatable).
    #[arg(long = "pubkey", value_name = "FILE")]
    pubkeys: Vec<PathBuf>,
    /// Print a JSON summary (rows, seconds, rows/s, output path) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TaskArg {
    Classify,
    Regress,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let mut request = BatchRequest::new(&args.model, &args.input, &args.output);
    request.columns = args.columns;
    request.chunk = args.chunk;
    if let Some(workers) = args.workers {
        request.workers = workers;
    }
    request.task = args.task.map(|t| match t {
        TaskArg::Classify => Task::Classify,
        TaskArg::Regress => Task::Regress,
    });
    request.restart = args.restart;
    request.max_rows = args.max_rows;
    request.checkpoint_every = std::time::Duration::try_from_secs_f64(args.checkpoint_every)
        .context("--checkpoint-every takes a number of seconds, 0 or more")?;
    request.shapes = args.shapes;
    request.pubkeys = args.pubkeys;

    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "scoring {bar:30} {pos}/{len} rows, {per_sec}, {eta} left",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut started = false;
    let report = batch::batch(&request, &mut |done, total| {
        if !started {
            bar.set_length(total);
            bar.set_position(done);
            bar.reset_eta();
            started = true;
        }
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report.with_context(|| {
        format!(
            "cannot score {} with {}",
            args.input.display(),
            args.model.display()
        )
    })?;
    super::print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

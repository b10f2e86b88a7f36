//! `perch batch`: scores a CSV, `.npy` or Parquet file of feature rows with a model or
//! bundle, writing one output row per input row, in input order.
//!
//! Rows are read in chunks and scored on `workers` threads, one engine session each
//! (tract runs one inference on one core, see [`crate::bench`]); the calling thread
//! writes the chunks back in order. Every second or so the output is flushed and
//! fsynced, then the checkpoint beside it ([`checkpoint`]) is replaced to count the
//! rows written. A run that is interrupted (Ctrl-C, `kill -9`, a power cut) continues
//! from that checkpoint when run again with the same model, input and settings: what
//! was written after it is cut off and scored again, so no row is lost or written twice.
//!
//! ```no_run
//! use perch_tools::batch::{batch, BatchRequest};
//! let request = BatchRequest::new("models/digits-mlp/model.onnx", "rows.csv", "scores.csv");
//! let report = batch(&request, &mut |_done, _total| {})?;
//! println!("{report}");
//! # Ok::<(), perch_tools::ToolError>(())
//! ```

pub mod checkpoint;
pub mod input;
pub mod output;
pub mod parquet;
pub mod score;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use perch_runtime::bundle::rfc3339;
use perch_runtime::engine::Model;
use perch_runtime::model_files;
use serde::Serialize;

use self::checkpoint::{Checkpoint, Fingerprint};
use self::input::Source;
use self::output::Sink;
pub use self::score::Task;
use crate::{load_options, ToolError};

/// A file format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.csv`: a header row, comma-separated.
    Csv,
    /// `.npy`: a NumPy array.
    Npy,
    /// `.parquet`.
    Parquet,
}

impl Format {
    /// The format of `path`, named by `flag` in the error.
    pub fn of(path: &Path, flag: &str) -> Result<Format, ToolError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Format::Csv),
            "npy" => Ok(Format::Npy),
            "parquet" | "pq" => Ok(Format::Parquet),
            _ => Err(ToolError::Usage(format!(
                "{flag} {}: expected a .csv, .npy or .parquet file",
                path.display()
            ))),
        }
    }
}

/// What to score, and how.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    /// The model file or bundle.
    pub model: PathBuf,
    /// The rows: `.csv`, `.npy` or `.parquet`.
    pub input: PathBuf,
    /// Where the scores go: `.csv`, `.npy` or `.parquet`.
    pub output: PathBuf,
    /// Feature columns in the model's input order (CSV, Parquet); `None`: every
    /// numeric column, in file order.
    pub columns: Option<Vec<String>>,
    /// Rows per chunk.
    pub chunk: usize,
    /// Scoring threads, one engine session each.
    pub workers: usize,
    /// What the prediction is; `None`: classify when the first output comes from a
    /// softmax, otherwise regress.
    pub task: Option<Task>,
    /// Start over, ignoring (and replacing) a checkpoint and an existing output.
    pub restart: bool,
    /// Score at most this many rows in this run, then stop with a checkpoint (a long
    /// job split over several sessions); `None`: every row.
    pub max_rows: Option<u64>,
    /// How often the output is made durable and the checkpoint replaced; zero: after
    /// every chunk.
    pub checkpoint_every: Duration,
    /// Input shape overrides.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Public keys to check a bundle's signature with; empty runs it unchecked.
    pub pubkeys: Vec<PathBuf>,
}

impl BatchRequest {
    /// Scores `input` into `output` with the defaults: chunks of 256 rows, one worker
    /// per core, the task guessed from the model.
    pub fn new(
        model: impl Into<PathBuf>,
        input: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> BatchRequest {
        BatchRequest {
            model: model.into(),
            input: input.into(),
            output: output.into(),
            columns: None,
            chunk: 256,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            task: None,
            restart: false,
            max_rows: None,
            checkpoint_every: Duration::from_secs(1),
            shapes: vec![],
            pubkeys: vec![],
        }
    }
}

/// What `perch batch` did.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// The model file or bundle.
    pub model: String,
    /// The `model_version` written into every row.
    pub model_version: String,
    /// The input file.
    pub input: String,
    /// The output file.
    pub output: String,
    /// Rows in the input, all of them now in the output.
    pub rows: u64,
    /// Rows an interrupted run had already written.
    pub resumed_from: u64,
    /// Rows this run scored.
    pub scored: u64,
    /// Whether every row is scored; `false` after `max_rows`, with a checkpoint left to
    /// continue from.
    pub complete: bool,
    /// Time spent scoring and writing them, seconds.
    pub seconds: f64,
    /// `scored / seconds`.
    pub rows_per_s: f64,
    /// The prediction column's meaning (`None`: no prediction column).
    pub task: Option<Task>,
    /// Scoring threads.
    pub workers: usize,
    /// Rows per chunk.
    pub chunk: usize,
}

/// A chunk on its way to a worker.
struct Job {
    index: u64,
    rows: usize,
    features: Vec<f32>,
}

/// Scores `request.input` into `request.output`, resuming from a checkpoint when one
/// fits. `progress` is called with (rows written, rows in the input).
pub fn batch(
    request: &BatchRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BatchReport, ToolError> {
    if request.chunk == 0 || request.workers == 0 {
        return Err(ToolError::Usage(
            "--chunk and --workers must be at least 1".into(),
        ));
    }
    let in_format = Format::of(&request.input, "--input")?;
    let out_format = Format::of(&request.output, "--output")?;
    let (model, model_sha256, model_version) = load(request)?;
    let shape = score::input_shape(model.metadata())?;
    let task = request.task.unwrap_or(if score::ends_in_softmax(&model) {
        Task::Classify
    } else {
        Task::Regress
    });
    let layout = score::probe_layout(&mut model.session()?, &shape, task, model_version)?;

    let columns = request.columns.as_deref();
    let mut source: Box<dyn Source> = match in_format {
        Format::Csv => Box::new(input::CsvSource::open(
            &request.input,
            columns,
            shape.features,
        )?),
        Format::Npy => {
            if columns.is_some() {
                return Err(ToolError::Usage(
                    "--columns names CSV or Parquet columns; an .npy input has none".into(),
                ));
            }
            Box::new(input::NpySource::open(&request.input, shape.features)?)
        }
        Format::Parquet => Box::new(parquet::ParquetSource::open(
            &request.input,
            columns,
            shape.features,
            request.chunk,
        )?),
    };
    let total = source.rows();

    let fingerprint = Fingerprint {
        model_sha256,
        input_sha256: checkpoint::sha256_file(&request.input)?,
        settings: format!(
            "columns={:?} task={task:?} output={out_format:?} shapes={:?}",
            request.columns, request.shapes
        ),
    };
    let folder = match request.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(ToolError::Refused {
            path: request.output.clone(),
            reason: format!("{} is not a folder", folder.display()),
        });
    }
    let checkpoint_path = checkpoint::path_for(&request.output);
    let resume = if request.restart {
        None
    } else {
        checkpoint::load(&checkpoint_path)?
    };
    match &resume {
        Some(c) => {
            checkpoint::check(&checkpoint_path, &c.fingerprint, &fingerprint)?;
            if c.rows > total {
                return Err(ToolError::Data(format!(
                    "{} counts {} rows, but {} has {total}; pass --restart to start over",
                    checkpoint_path.display(),
                    c.rows,
                    request.input.display()
                )));
            }
        }
        None if !request.restart && request.output.exists() => {
            return Err(ToolError::Refused {
                path: request.output.clone(),
                reason: format!(
                    "it exists and no checkpoint ({}) says it is an interrupted run of \
                     this one; pass --restart to replace it",
                    checkpoint_path.display()
                ),
            });
        }
        None => {}
    }
    let (resumed_from, position) = resume
        .as_ref()
        .map_or((0, None), |c| (c.rows, Some(c.position)));
    let mut state = Checkpoint {
        fingerprint,
        rows: resumed_from,
        position: position.unwrap_or(0),
    };
    if resume.is_none() {
        // A new run is resumable from its first moment: rows 0, nothing written.
        checkpoint::store(&checkpoint_path, &state)?;
    }
    let opened: Result<Box<dyn Sink>, ToolError> = match out_format {
        Format::Csv => output::CsvSink::open(&request.output, &layout, position)
            .map(|s| Box::new(s) as Box<dyn Sink>),
        Format::Npy => output::NpySink::open(&request.output, &layout, total, position)
            .map(|s| Box::new(s) as Box<dyn Sink>),
        Format::Parquet => parquet::ParquetSink::open(&request.output, &layout, position)
            .map(|s| Box::new(s) as Box<dyn Sink>),
    };
    let mut sink = match opened {
        Ok(sink) => sink,
        Err(e) => {
            if resume.is_none() {
                let _ = std::fs::remove_file(&checkpoint_path);
            }
            return Err(e);
        }
    };
    source.skip(resumed_from)?;

    let started = Instant::now();
    progress(resumed_from, total);
    let outcome = pipeline(
        request,
        &model,
        &shape,
        &layout,
        source,
        &mut sink,
        &mut |rows, position| {
            state.rows = resumed_from + rows;
            state.position = position;
            checkpoint::store(&checkpoint_path, &state)
        },
        &mut |rows| progress(resumed_from + rows, total),
    );
    let scored = match outcome {
        Ok(rows) => rows,
        Err(e) => {
            sink.abandon();
            return Err(e);
        }
    };
    let complete = resumed_from + scored == total;
    let stopped = request.max_rows.is_some_and(|m| scored >= m);
    if !complete && !stopped {
        sink.abandon();
        return Err(ToolError::Data(format!(
            "{} ended after {} rows, but held {total} when the run started",
            request.input.display(),
            resumed_from + scored
        )));
    }
    if complete {
        sink.finish()?;
        std::fs::remove_file(&checkpoint_path)
            .map_err(|e| ToolError::write(&checkpoint_path, e))?;
        if out_format == Format::Parquet {
            parquet::remove_parts(&request.output);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(BatchReport {
        model: request.model.display().to_string(),
        model_version: layout.model_version.clone(),
        input: request.input.display().to_string(),
        output: request.output.display().to_string(),
        rows: total,
        resumed_from,
        scored,
        complete,
        seconds,
        rows_per_s: if seconds > 0.0 {
            scored as f64 / seconds
        } else {
            0.0
        },
        task: layout.prediction,
        workers: request.workers,
        chunk: request.chunk,
    })
}

/// Loads the model through the same paths as `perch run`: the model, its file's
/// SHA-256, and its `model_version` (`name@version` from a bundle's manifest,
/// `file@sha256:<12 hex digits>` for a model file).
fn load(request: &BatchRequest) -> Result<(Model, String, String), ToolError> {
    let options = load_options(&request.shapes);
    let sha256 = checkpoint::sha256_file(&request.model)?;
    if model_files::is_bundle_file(&request.model) {
        let (bundle, source) = crate::run::open_bundle(&request.model, &request.pubkeys)?;
        let model = bundle.load_model(&options)?;
        return Ok((model, sha256, format!("{}@{}", source.name, source.version)));
    }
    if !request.pubkeys.is_empty() {
        return Err(ToolError::Usage(format!(
            "--pubkey checks bundle signatures, but {} is a model file",
            request.model.display()
        )));
    }
    let model = Model::load(&request.model, &options)?;
    let name = request
        .model
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let version = format!("{name}@sha256:{}", &sha256[..12]);
    Ok((model, sha256, version))
}

/// Reads, scores on `request.workers` threads and writes in order; calls `commit` with
/// (rows written, sink position) after each durable commit and `progress` with rows
/// written. Returns the rows written.
///
/// An input or scoring error stops the run after committing the rows before it; a
/// write error stops it at once (the caller cuts the output back to the last commit).
#[allow(clippy::too_many_arguments)]
fn pipeline(
    request: &BatchRequest,
    model: &Model,
    shape: &score::InputShape,
    layout: &score::Layout,
    mut source: Box<dyn Source>,
    sink: &mut Box<dyn Sink>,
    commit: &mut dyn FnMut(u64, u64) -> Result<(), ToolError>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ToolError> {
    let workers = request.workers;
    let chunk = request.chunk;
    let mut left = request.max_rows.unwrap_or(u64::MAX);
    let stop = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(workers);
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(u64, Result<score::Scored, ToolError>)>();
    // Chunks read but not yet written: bounds memory when one chunk is slow.
    let in_flight = 2 * workers + 2;
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = credit_tx.send(());
    }
    let mut credit_tx = Some(credit_tx);

    std::thread::scope(|scope| {
        let done = done_tx.clone();
        let stop_ref = &stop;
        scope.spawn(move || {
            let mut index = 0;
            while left > 0 && credit_rx.recv().is_ok() && !stop_ref.load(Ordering::Relaxed) {
                let mut features = vec![];
                let max = usize::try_from(left).map_or(chunk, |l| l.min(chunk));
                match source.read(max, &mut features) {
                    Ok(0) => break,
                    Ok(rows) => {
                        left -= rows as u64;
                        let job = Job {
                            index,
                            rows,
                            features,
                        };
                        if job_tx.send(job).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = done.send((index, Err(e)));
                        break;
                    }
                }
                index += 1;
            }
        });
        for _ in 0..workers {
            let done = done_tx.clone();
            let job_rx = &job_rx;
            scope.spawn(move || {
                let mut session = match model.session() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = done.send((0, Err(e.into())));
                        return;
                    }
                };
                loop {
                    let job = job_rx
                        .lock()
                        .map_err(drop)
                        .and_then(|rx| rx.recv().map_err(drop));
                    let Ok(job) = job else { break };
                    let at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let scored = score::score(
                        &mut session,
                        shape,
                        layout,
                        &job.features,
                        job.rows,
                        rfc3339(at),
                    );
                    if done.send((job.index, scored)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);

        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut written = 0u64;
        let mut uncommitted = false;
        let mut last_commit = Instant::now();
        let mut failed: Option<(u64, ToolError)> = None;
        let mut write_error: Option<ToolError> = None;
        for (index, result) in done_rx {
            match result {
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    credit_tx = None;
                    if failed.as_ref().is_none_or(|(i, _)| index < *i) {
                        failed = Some((index, e));
                    }
                    continue;
                }
                Ok(scored) => {
                    pending.insert(index, scored);
                }
            }
            if write_error.is_some() {
                continue;
            }
            while let Some(scored) = pending.remove(&next) {
                if failed.as_ref().is_some_and(|(i, _)| next >= *i) {
                    break;
                }
                let step = sink.append(&scored).and_then(|()| {
                    written += scored.rows as u64;
                    uncommitted = true;
                    if last_commit.elapsed() < request.checkpoint_every {
                        return Ok(());
                    }
                    last_commit = Instant::now();
                    uncommitted = false;
                    let position = sink.commit()?;
                    commit(written, position)
                });
                if let Err(e) = step {
                    stop.store(true, Ordering::Relaxed);
                    credit_tx = None;
                    write_error = Some(e);
                    break;
                }
                next += 1;
                progress(written);
                if let Some(credits) = &credit_tx {
                    let _ = credits.send(());
                }
            }
        }
        if let Some(e) = write_error {
            return Err(e);
        }
        if uncommitted {
            let position = sink.commit()?;
            commit(written, position)?;
        }
        match failed {
            Some((_, e)) => Err(e),
            None => Ok(written),
        }
    })
}

impl fmt::Display for BatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resumed = if self.resumed_from > 0 {
            format!(" (resumed after row {})", self.resumed_from)
        } else {
            String::new()
        };
        writeln!(
            f,
            "{} -> {}: {} rows{resumed}",
            self.input, self.output, self.rows
        )?;
        writeln!(f, "  model {} ({})", self.model, self.model_version)?;
        if !self.complete {
            writeln!(
                f,
                "  stopped after {} of {} rows; run the same command again to continue",
                self.resumed_from + self.scored,
                self.rows
            )?;
        }
        write!(
            f,
            "  scored {} rows in {:.2} s ({:.0} rows/s, {} workers, chunks of {})",
            self.scored, self.seconds, self.rows_per_s, self.workers, self.chunk
        )
    }
}

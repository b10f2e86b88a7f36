//! `perch convert`: ONNX to tract's NNEF archive, checked by loading it back.
//!
//! The archive holds the decluttered typed model written with tract's NNEF writer and
//! its ONNX operator extensions (`tract_onnx_opl`), so a device build without the ONNX
//! parser can load it. tract's writer does not always produce an archive its reader
//! accepts, so the archive is loaded back through the engine and run on a sample input
//! next to the source model; it is written only when its outputs agree.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use perch_runtime::engine::internal::{compare_tensors, OutputsExt};
use perch_runtime::engine::{LoadOptions, Model, ModelFormat, Tolerance};
use serde::Serialize;
use tract_onnx::prelude::{Framework, InferenceModelExt};

use crate::graph::{self, SampleSource};
use perch_runtime::error::Chain;

use crate::ToolError;

/// What to convert.
#[derive(Debug, Clone)]
pub struct ConvertRequest {
    /// The ONNX model.
    pub model: PathBuf,
    /// The archive to write; `None` writes `<name>.nnef.tgz` beside the model
    /// (`model.w8.onnx` → `model.w8.nnef.tgz`).
    pub output: Option<PathBuf>,
    /// The largest relative error accepted between the two forms, as
    /// [`Tolerance`] defines it.
    pub tolerance: f32,
}

impl ConvertRequest {
    /// A request with the engine's golden tolerance (1e-4).
    pub fn new(model: impl Into<PathBuf>) -> ConvertRequest {
        ConvertRequest {
            model: model.into(),
            output: None,
            tolerance: Tolerance::default().relative,
        }
    }
}

/// Load-to-first-inference time of one form of the model (informational).
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Reading, checking and optimizing, milliseconds.
    pub load_ms: f64,
    /// The first inference, milliseconds.
    pub first_run_ms: f64,
    /// Both, milliseconds.
    pub total_ms: f64,
}

/// How one output of the archive compared with the source model's.
#[derive(Debug, Clone, Serialize)]
pub struct OutputAgreement {
    /// The output's name.
    pub name: String,
    /// The largest absolute difference.
    pub max_abs_error: f32,
    /// `max |nnef - onnx| / max |onnx|`.
    pub relative_error: f32,
}

/// The result of a conversion that was checked and written.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The ONNX model.
    pub source: String,
    /// The archive written.
    pub output: String,
    /// Size of the ONNX file, bytes.
    pub onnx_bytes: u64,
    /// Size of the archive, bytes.
    pub nnef_bytes: u64,
    /// The input both forms were run on.
    pub sample: SampleSource,
    /// Agreement per output.
    pub outputs: Vec<OutputAgreement>,
    /// The tolerance applied.
    pub tolerance: f32,
    /// Load and first inference of the ONNX model.
    pub onnx: Timing,
    /// Load and first inference of the archive (from memory).
    pub nnef: Timing,
    /// The operator registries the archive declares (`tract_core`, `tract_onnx`, ...).
    pub registries: Vec<String>,
    /// Whether loading the archive needs tract's ONNX operator extensions, which device
    /// builds of perchd leave out unless built with the `onnx-ops` feature.
    pub needs_onnx_ops: bool,
}

/// Converts an ONNX model to an NNEF archive, checks it against the source with
/// [`check_archive`] and writes it atomically.
///
/// Refuses, writing nothing, a model the engine refuses, an archive that does not load
/// back, and an archive whose outputs differ from the source's by more than the
/// tolerance.
pub fn convert(request: &ConvertRequest) -> Result<ConvertReport, ToolError> {
    let source = &request.model;
    if ModelFormat::detect(source)? != ModelFormat::Onnx {
        return Err(ToolError::Model(format!(
            "{} is already an NNEF archive; convert takes an ONNX model",
            source.display()
        )));
    }
    let output = match &request.output {
        Some(o) => o.clone(),
        None => default_output(source),
    };
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(ToolError::Usage(format!(
                "cannot write {}: folder {} does not exist",
                output.display(),
                dir.display()
            )));
        }
    }
    // Load the source first: the engine's checks refuse what it would mis-run before
    // anything is converted. This also warms the engine up (its registries and kernel
    // selection), so the timed loads of both forms below start on an equal footing.
    Model::load(source, &LoadOptions::new())?;
    let (bytes, registries) = write_archive(source)?;
    let check =
        check_archive(source, &bytes, request.tolerance).map_err(|e| ToolError::Refused {
            path: output.clone(),
            reason: Chain(&e).to_string(),
        })?;
    crate::fsio::write_atomic(&output, &bytes).map_err(|e| ToolError::write(&output, e))?;
    Ok(ConvertReport {
        source: source.display().to_string(),
        output: output.display().to_string(),
        onnx_bytes: std::fs::metadata(source).map(|m| m.len()).unwrap_or(0),
        nnef_bytes: bytes.len() as u64,
        sample: check.sample,
        outputs: check.outputs,
        tolerance: request.tolerance,
        onnx: check.onnx,
        nnef: check.nnef,
        needs_onnx_ops: registries.iter().any(|r| r == "tract_onnx"),
        registries,
    })
}

/// The outcome of [`check_archive`]: the archive runs like its source.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveCheck {
    /// The input both forms were run on.
    pub sample: SampleSource,
    /// Agreement per output.
    pub outputs: Vec<OutputAgreement>,
    /// Load and first inference of the ONNX model.
    pub onnx: Timing,
    /// Load and first inference of the archive (from memory).
    pub nnef: Timing,
}

/// Loads an NNEF archive (bytes) through the engine and runs it next to its ONNX
/// source on a sample input (see [`graph::sample_inputs`]); refuses with the reason
/// when the archive does not load or run, or when an output's relative error
/// (`max |nnef - onnx| / max |onnx|`) exceeds `tolerance`.
pub fn check_archive(
    source: &Path,
    archive: &[u8],
    tolerance: f32,
) -> Result<ArchiveCheck, ToolError> {
    let started = Instant::now();
    let onnx_model = Model::load(source, &LoadOptions::new())?;
    let onnx_load_ms = ms(started);
    let (samples, sample) = graph::sample_inputs(&onnx_model, source);
    let inputs = crate::input_refs(&samples, "sample input")?;
    let started = Instant::now();
    let onnx_out = onnx_model.session()?.run(&inputs).map_err(|e| {
        ToolError::Model(format!(
            "the ONNX model itself does not run on the {} input: {e}",
            sample.kind
        ))
    })?;
    let onnx_first_ms = ms(started);

    let started = Instant::now();
    let nnef_model = Model::from_nnef_bytes(archive, &LoadOptions::new()).map_err(|e| {
        ToolError::Model(format!(
            "the engine cannot load the NNEF archive back ({e})"
        ))
    })?;
    let nnef_load_ms = ms(started);
    let started = Instant::now();
    let nnef_out = nnef_model
        .session()
        .and_then(|mut s| s.run(&inputs))
        .map_err(|e| {
            ToolError::Model(format!(
                "the NNEF archive loads but does not run on the {} input ({e})",
                sample.kind
            ))
        })?;
    let nnef_first_ms = ms(started);

    if nnef_out.len() != onnx_out.len() {
        return Err(ToolError::Model(format!(
            "the NNEF archive has {} outputs, the ONNX model {}",
            nnef_out.len(),
            onnx_out.len()
        )));
    }
    let mut outputs = vec![];
    for i in 0..onnx_out.len() {
        let name = onnx_out.info(i).map(|t| t.name.clone()).unwrap_or_default();
        let (max_abs_error, relative_error) = compare_tensors(nnef_out.tensor(i)?, onnx_out.tensor(i)?)
            .map_err(|why| {
                ToolError::Model(format!(
                    "output {i} ({name:?}) of the NNEF archive cannot be compared with the ONNX model's: {why}"
                ))
            })?;
        if relative_error.is_nan() || relative_error > tolerance {
            return Err(ToolError::Model(format!(
                "output {i} ({name:?}) of the NNEF archive differs from the ONNX model's by {relative_error:.3e} relative (max abs {max_abs_error:.3e}), more than {tolerance:.1e}, on the {} input",
                sample.kind
            )));
        }
        outputs.push(OutputAgreement {
            name,
            max_abs_error,
            relative_error,
        });
    }
    Ok(ArchiveCheck {
        sample,
        outputs,
        onnx: Timing {
            load_ms: onnx_load_ms,
            first_run_ms: onnx_first_ms,
            total_ms: onnx_load_ms + onnx_first_ms,
        },
        nnef: Timing {
            load_ms: nnef_load_ms,
            first_run_ms: nnef_first_ms,
            total_ms: nnef_load_ms + nnef_first_ms,
        },
    })
}

/// `dir/model.w8.onnx` → `dir/model.w8.nnef.tgz`.
pub fn default_output(source: &Path) -> PathBuf {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    let stem = name.strip_suffix(".onnx").unwrap_or(&name);
    source.with_file_name(format!("{stem}.nnef.tgz"))
}

/// The decluttered typed model as a gzipped NNEF tar, in memory, and the operator
/// registries it declares.
fn write_archive(source: &Path) -> Result<(Vec<u8>, Vec<String>), ToolError> {
    let fail = |what: &str, e: String| ToolError::Model(format!("{what}: {e}"));
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let typed = perch_runtime::engine::internal::onnx_contrib::onnx_framework()
            .model_for_path(source)?
            .into_typed()?;
        let typed = perch_runtime::engine::internal::ops::declutter(typed)?;
        // Perch's operators go into the archive as the engine would plan them, so a
        // device loads them without rewriting (PERCH_KERNELS=off writes tract's own).
        let typed = if LoadOptions::new().kernels_on() {
            perch_runtime::engine::internal::ops::rewrite(
                typed,
                perch_runtime::kernels::Cpu::detect(),
            )?
            .0
        } else {
            typed
        };
        let nnef = perch_runtime::engine::internal::nnef_framework();
        let registries = tract_nnef::ser::to_proto_model(&nnef, &typed)?
            .doc
            .extension
            .into_iter()
            .filter(|(id, _)| id.0 == "tract_registry")
            .map(|(_, registry)| registry.trim().to_string())
            .collect::<Vec<_>>();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let gz = nnef.write_to_tar(&typed, gz)?;
        Ok::<_, tract_onnx::prelude::TractError>((gz, registries))
    }));
    let (mut gz, registries) = match written {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => {
            return Err(fail(
                "the engine's NNEF writer cannot write this model",
                format!("{e:#}"),
            ))
        }
        Err(_) => {
            return Err(ToolError::Model(
                "the engine's NNEF writer panicked on this model".into(),
            ))
        }
    };
    gz.flush()
        .map_err(|e| fail("compressing the archive", e.to_string()))?;
    let bytes = gz
        .finish()
        .map_err(|e| fail("compressing the archive", e.to_string()))?;
    Ok((bytes, registries))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} bytes) -> {} ({} bytes, {:.0} %)",
            self.source,
            self.onnx_bytes,
            self.output,
            self.nnef_bytes,
            100.0 * self.nnef_bytes as f64 / self.onnx_bytes.max(1) as f64
        )?;
        writeln!(
            f,
            "  checked on the {} input ({})",
            self.sample.kind, self.sample.description
        )?;
        for note in &self.sample.notes {
            writeln!(f, "    note: {note}")?;
        }
        writeln!(f, "  operator registries: {}", self.registries.join(", "))?;
        if self.needs_onnx_ops {
            writeln!(
                f,
                "    note: uses tract's ONNX operator extensions: a device build of perchd \
                 loads it only when built with `--features onnx-ops`"
            )?;
        }
        for o in &self.outputs {
            writeln!(
                f,
                "  output {:<16} relative error {:.2e} (max abs {:.2e}), tolerance {:.0e}",
                o.name, o.relative_error, o.max_abs_error, self.tolerance
            )?;
        }
        writeln!(f, "  load to first inference   load      first run  total")?;
        for (label, t) in [("ONNX", &self.onnx), ("NNEF", &self.nnef)] {
            writeln!(
                f,
                "    {label:<22} {:>7.1} ms {:>7.2} ms {:>7.1} ms",
                t.load_ms, t.first_run_ms, t.total_ms
            )?;
        }
        write!(f, "  (informational: one cold measurement each)")
    }
}

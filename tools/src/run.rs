//! `perch run`: one inference on given or golden inputs, optionally checked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use perch_runtime::engine::{read_npy, Golden, Input, Model, NonFinitePolicy, Tensor, Tolerance};
use serde::Serialize;

use crate::{load_options, ToolError};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The model file.
    pub model: PathBuf,
    /// `.npy` inputs in the model's input order; empty means the golden inputs.
    pub inputs: Vec<PathBuf>,
    /// A golden folder; defaults to `golden/` beside the model when inputs are not given.
    pub golden: Option<PathBuf>,
    /// Golden output variant (`w8` reads `output_N.w8.npy`); guessed from `model.w8.onnx`.
    pub variant: Option<String>,
    /// Input shape overrides.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Pass NaN and infinities to the model instead of refusing them.
    pub allow_non_finite: bool,
}

/// One output of the run.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    /// Its name.
    pub name: String,
    /// Its concrete shape.
    pub shape: Vec<usize>,
    /// Its element type.
    pub dtype: String,
    /// Its values, as floats.
    pub values: Vec<f32>,
    /// Index of the largest value along the last axis, per row (classification outputs).
    pub argmax: Vec<usize>,
}

/// The golden comparison, when one was made.
#[derive(Debug, Clone, Serialize)]
pub struct GoldenCheck {
    /// The golden folder.
    pub dir: String,
    /// Relative error per output (max |got - want| / max |want|).
    pub relative_error: Vec<f32>,
    /// The tolerance applied.
    pub tolerance: f32,
    /// Whether every output is within the tolerance.
    pub passed: bool,
}

/// The result of `perch run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The model file.
    pub model: String,
    /// Where the inputs came from.
    pub inputs: Vec<String>,
    /// The outputs.
    pub outputs: Vec<OutputSummary>,
    /// The golden comparison.
    pub golden: Option<GoldenCheck>,
    /// Load and optimize time, milliseconds (informational).
    pub load_ms: f64,
    /// Time of this one cold inference, milliseconds (informational; use `perch bench`).
    pub first_run_ms: f64,
}

/// Loads the model, runs it once and compares with golden outputs when available.
pub fn run(request: &RunRequest) -> Result<RunReport, ToolError> {
    let mut options = load_options(&request.shapes);
    if request.allow_non_finite {
        options = options.non_finite(NonFinitePolicy::Allow);
    }
    let started = Instant::now();
    let model = Model::load(&request.model, &options)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let golden_dir = request.golden.clone().or_else(|| {
        let beside = request.model.parent()?.join("golden");
        (request.inputs.is_empty() && beside.join("input_0.npy").exists()).then_some(beside)
    });
    let variant = request
        .variant
        .clone()
        .or_else(|| guess_variant(&request.model));
    let golden = match &golden_dir {
        Some(dir) => Some(Golden::load_variant(dir, variant.as_deref())?),
        None => None,
    };

    let (tensors, sources): (Vec<Tensor>, Vec<String>) = if request.inputs.is_empty() {
        let golden = golden.as_ref().ok_or_else(|| {
            ToolError::Usage(format!(
                "no --input given and no golden/ folder beside {}",
                request.model.display()
            ))
        })?;
        let sources = (0..golden.inputs.len())
            .map(|i| {
                golden
                    .dir
                    .join(format!("input_{i}.npy"))
                    .display()
                    .to_string()
            })
            .collect();
        (golden.inputs.clone(), sources)
    } else {
        let tensors = request
            .inputs
            .iter()
            .map(read_npy)
            .collect::<Result<Vec<_>, _>>()?;
        (
            tensors,
            request
                .inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        )
    };
    let inputs = tensors
        .iter()
        .zip(&sources)
        .map(|(t, src)| {
            Input::from_tensor(t).ok_or_else(|| {
                ToolError::Usage(format!(
                    "{src}: element type {:?} is not supported",
                    t.datum_type()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut session = model.session()?;
    let started = Instant::now();
    let outputs = session.run(&inputs)?;
    let first_run_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut summaries = vec![];
    for i in 0..outputs.len() {
        let tensor = outputs.tensor(i)?;
        let name = outputs.info(i).map(|t| t.name.clone()).unwrap_or_default();
        let values = tensor
            .cast_to::<f32>()
            .ok()
            .and_then(|t| {
                t.try_as_plain_ram()
                    .ok()?
                    .as_slice::<f32>()
                    .ok()
                    .map(<[f32]>::to_vec)
            })
            .unwrap_or_default();
        let row = tensor.shape().last().copied().unwrap_or(1).max(1);
        let argmax = values
            .chunks(row)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |m| m.0)
            })
            .collect();
        summaries.push(OutputSummary {
            name,
            shape: tensor.shape().to_vec(),
            dtype: format!("{:?}", tensor.datum_type()).to_lowercase(),
            values,
            argmax,
        });
    }

    let golden = match golden {
        Some(g) if request.inputs.is_empty() => {
            let tolerance = Tolerance::default().relative;
            let mut relative_error = vec![];
            for (i, want) in g.outputs.iter().enumerate() {
                let got = outputs.tensor(i)?;
                let rel = perch_runtime::engine::compare(got, want)
                    .map_err(|e| ToolError::Usage(format!("golden output {i}: {e}")))?
                    .1;
                relative_error.push(rel);
            }
            let passed = relative_error.len() == outputs.len()
                && relative_error.iter().all(|e| *e <= tolerance);
            Some(GoldenCheck {
                dir: g.dir.display().to_string(),
                relative_error,
                tolerance,
                passed,
            })
        }
        _ => None,
    };

    Ok(RunReport {
        model: request.model.display().to_string(),
        inputs: sources,
        outputs: summaries,
        golden,
        load_ms,
        first_run_ms,
    })
}

/// `model.w8.onnx` → `w8`: the variant suffix its golden outputs carry.
fn guess_variant(model: &Path) -> Option<String> {
    let name = model.file_name()?.to_str()?;
    let stem = name
        .strip_suffix(".onnx")
        .or_else(|| name.strip_suffix(".nnef.tgz"))?;
    let (_, variant) = stem.split_once('.')?;
    Some(variant.to_string())
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.model)?;
        for src in &self.inputs {
            writeln!(f, "  input  {src}")?;
        }
        for o in &self.outputs {
            let shown: Vec<String> = o.values.iter().take(8).map(|v| format!("{v:.5}")).collect();
            let more = if o.values.len() > 8 { ", ..." } else { "" };
            writeln!(
                f,
                "  output {} {} {:?}: [{}{more}]",
                o.name,
                o.dtype,
                o.shape,
                shown.join(", ")
            )?;
            if o.shape.len() == 2 && o.shape[1] > 1 {
                writeln!(f, "         argmax per row: {:?}", o.argmax)?;
            }
        }
        if let Some(g) = &self.golden {
            let verdict = if g.passed { "matches" } else { "DIFFERS FROM" };
            let errs: Vec<String> = g
                .relative_error
                .iter()
                .map(|e| format!("{e:.2e}"))
                .collect();
            writeln!(
                f,
                "  golden {verdict} {} (relative error {}; tolerance {:.0e})",
                g.dir,
                errs.join(", "),
                g.tolerance
            )?;
        }
        write!(
            f,
            "  load {:.1} ms, first inference {:.2} ms",
            self.load_ms, self.first_run_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_golden_variant_is_read_from_the_model_file_name() {
        assert_eq!(
            guess_variant(Path::new("m/model.w8.onnx")).as_deref(),
            Some("w8")
        );
        assert_eq!(guess_variant(Path::new("m/model.onnx")), None);
    }
}

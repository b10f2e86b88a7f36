//! `perch run`: one inference on given or golden inputs, optionally checked.
//!
//! The model is a model file or a bundle ([`perch_runtime::model_files::is_bundle_file`]). Inputs are
//! files in the model's input order:
//!
//! - `.npy`: one array;
//! - `.npz`: its arrays, in archive order, or matched to the model's inputs by name
//!   when any array is named after an input;
//! - `.json`: `{"inputs": [{"name": ..., "shape": [...], "datatype": "FP32", "data": [...]}]}`,
//!   which is an Open Inference Protocol (KServe v2) inference request. `name` and
//!   `datatype` are optional here (inputs are then taken in order, with the model's
//!   element type), `shape` is optional for inputs whose shape the model fixes, and
//!   `data` may be flat (row-major) or nested.
//!
//! Arrays from every file are concatenated in the order given.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use perch_runtime::bundle::{read_verifying_key, Bundle, Limits};
use perch_runtime::engine::internal::{compare_tensors, ArrayExt, InputExt, OutputsExt, Tensor};
use perch_runtime::engine::{
    read_npy, DType, Dim, Golden, Input, Metadata, Model, NonFinitePolicy, Tolerance,
};
use perch_runtime::model_files;
use serde::Serialize;

use crate::{load_options, ToolError};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// The model file or bundle.
    pub model: PathBuf,
    /// `.npy`, `.npz` or `.json` inputs (see the module docs); empty means the golden inputs.
    pub inputs: Vec<PathBuf>,
    /// A golden folder; defaults to the bundle's golden data, or `golden/` beside a model
    /// file, when inputs are not given.
    pub golden: Option<PathBuf>,
    /// Golden output variant (`w8` reads `output_N.w8.npy`); guessed from `model.w8.onnx`.
    pub variant: Option<String>,
    /// Input shape overrides.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Pass NaN and infinities to the model instead of refusing them.
    pub allow_non_finite: bool,
    /// Public key files to check a bundle's signature with; empty runs it unchecked.
    pub pubkeys: Vec<PathBuf>,
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

/// The bundle a run's model came from.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSource {
    /// The manifest's model name.
    pub name: String,
    /// The manifest's version.
    pub version: String,
    /// The manifest's sequence number.
    pub sequence: u64,
    /// Whether the signature was checked (and verified: a failed check is an error).
    pub signature_checked: bool,
    /// The id of the key the manifest names as its signer (verified when checked).
    pub key_id: String,
}

/// The result of `perch run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The model file.
    pub model: String,
    /// The bundle, when the model came from one.
    pub bundle: Option<BundleSource>,
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

/// Loads the model (from a file or a bundle), runs it once and compares with golden
/// outputs when available.
///
/// A bundle's structure and hashes are always checked; its signature only when
/// `pubkeys` are given, and then a bundle that fails it is an error.
pub fn run(request: &RunRequest) -> Result<RunReport, ToolError> {
    let mut options = load_options(&request.shapes);
    if request.allow_non_finite {
        options = options.non_finite(NonFinitePolicy::Allow);
    }
    let is_bundle = model_files::is_bundle_file(&request.model);
    if !is_bundle && !request.pubkeys.is_empty() {
        return Err(ToolError::Usage(format!(
            "--pubkey checks bundle signatures, but {} is a model file",
            request.model.display()
        )));
    }
    let started = Instant::now();
    let (model, bundle, bundle_golden) = if is_bundle {
        let (bundle, source) = open_bundle(&request.model, &request.pubkeys)?;
        let model = bundle.load_model(&options)?;
        let golden = (bundle.decode_golden()?, bundle.tolerance());
        (model, Some(source), Some(golden))
    } else {
        (Model::load(&request.model, &options)?, None, None)
    };
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let variant = request
        .variant
        .clone()
        .or_else(|| model_files::golden_variant(&request.model));
    let golden: Option<(Golden, Tolerance)> = match (&request.golden, bundle_golden) {
        (Some(dir), _) => Some((
            Golden::load_variant(dir, variant.as_deref())?,
            Tolerance::default(),
        )),
        (None, Some(g)) if request.inputs.is_empty() => Some(g),
        (None, Some(_)) => None,
        (None, None) => {
            let beside = request
                .model
                .parent()
                .map(|p| p.join("golden"))
                .filter(|b| request.inputs.is_empty() && b.join("input_0.npy").exists());
            match beside {
                Some(dir) => Some((
                    Golden::load_variant(&dir, variant.as_deref())?,
                    Tolerance::default(),
                )),
                None => None,
            }
        }
    };
    let golden_label = |g: &Golden| match bundle {
        Some(_) if request.golden.is_none() => {
            format!("{}:{}", request.model.display(), g.dir.display())
        }
        _ => g.dir.display().to_string(),
    };

    let (tensors, sources): (Vec<Tensor>, Vec<String>) = if request.inputs.is_empty() {
        let (golden, _) = golden.as_ref().ok_or_else(|| {
            ToolError::Usage(format!(
                "no --input given and no golden/ folder beside {}",
                request.model.display()
            ))
        })?;
        let sources = (0..golden.inputs.len())
            .map(|i| format!("{}/input_{i}.npy", golden_label(golden)))
            .collect();
        let inputs = golden.inputs.iter().map(|a| a.tensor().clone()).collect();
        (inputs, sources)
    } else {
        read_inputs(&request.inputs, model.metadata())?
    };
    let inputs = tensors
        .iter()
        .zip(&sources)
        .map(|(t, src)| {
            Input::from_tensor(t).ok_or_else(|| {
                ToolError::Data(format!(
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
        let values = crate::f32_values(tensor).unwrap_or_default();
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
        Some((g, tolerance)) if request.inputs.is_empty() => {
            let tolerance = tolerance.relative;
            let mut relative_error = vec![];
            for (i, want) in g.outputs.iter().enumerate() {
                let got = outputs.tensor(i)?;
                let rel = compare_tensors(got, want.tensor())
                    .map_err(|e| ToolError::Data(format!("golden output {i}: {e}")))?
                    .1;
                relative_error.push(rel);
            }
            let passed = relative_error.len() == outputs.len()
                && relative_error.iter().all(|e| *e <= tolerance);
            Some(GoldenCheck {
                dir: golden_label(&g),
                relative_error,
                tolerance,
                passed,
            })
        }
        _ => None,
    };

    Ok(RunReport {
        model: request.model.display().to_string(),
        bundle,
        inputs: sources,
        outputs: summaries,
        golden,
        load_ms,
        first_run_ms,
    })
}

/// Reads a bundle, checking its signature when public keys are given.
pub(crate) fn open_bundle(
    path: &Path,
    pubkeys: &[PathBuf],
) -> Result<(Bundle, BundleSource), ToolError> {
    let bundle = Bundle::read_file(path, &Limits::default())?;
    let (bundle, signature_checked) = if pubkeys.is_empty() {
        (bundle, false)
    } else {
        let keys = pubkeys
            .iter()
            .map(read_verifying_key)
            .collect::<Result<Vec<_>, _>>()?;
        (bundle.verify(&keys)?.into_bundle(), true)
    };
    let m = bundle.manifest();
    let source = BundleSource {
        name: m.name.clone(),
        version: m.version.to_string(),
        sequence: m.sequence,
        signature_checked,
        key_id: m.key_id.clone(),
    };
    Ok((bundle, source))
}

/// One array read from an input file, before it is matched to a model input.
struct Item {
    /// Its name in the file (npz array name, JSON `name`), if any.
    name: Option<String>,
    /// Where it came from, for messages and the report.
    source: String,
    value: Value,
}

enum Value {
    Tensor(Tensor),
    /// A JSON tensor, typed once its model input is known.
    Json {
        shape: Option<Vec<usize>>,
        dtype: Option<DType>,
        data: Vec<serde_json::Number>,
    },
}

/// Reads input files (`.npy`, `.npz`, `.json`) into tensors in the model's input order.
fn read_inputs(
    paths: &[PathBuf],
    meta: &Metadata,
) -> Result<(Vec<Tensor>, Vec<String>), ToolError> {
    let mut items = vec![];
    for path in paths {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "npz" => items.extend(read_npz(path)?),
            "json" => items.extend(read_json(path)?),
            _ => items.push(Item {
                name: None,
                source: path.display().to_string(),
                value: Value::Tensor(read_npy(path)?.into_tensor()),
            }),
        }
    }
    let names: Vec<&str> = meta.inputs.iter().map(|i| i.name.as_str()).collect();
    let by_name = items
        .iter()
        .any(|i| i.name.as_deref().is_some_and(|n| names.contains(&n)));
    if by_name {
        let mut ordered = Vec::with_capacity(names.len());
        for item in &items {
            let name = item.name.as_deref().unwrap_or("(unnamed)");
            if !names.contains(&name) {
                return Err(ToolError::Data(format!(
                    "{}: {name:?} is not an input of the model (its inputs: {})",
                    item.source,
                    names.join(", ")
                )));
            }
        }
        for name in &names {
            let mut matching = items.iter().filter(|i| i.name.as_deref() == Some(name));
            let found = matching.next().ok_or_else(|| {
                ToolError::Data(format!("no value given for the model's input {name:?}"))
            })?;
            if let Some(again) = matching.next() {
                return Err(ToolError::Data(format!(
                    "input {name:?} is given twice ({} and {})",
                    found.source, again.source
                )));
            }
            ordered.push(found);
        }
        materialize(ordered, meta)
    } else {
        materialize(items.iter().collect(), meta)
    }
}

/// Turns items, already in input order, into tensors: JSON data takes the model input's
/// element type (unless it names one) and fixed shape (unless it gives one).
fn materialize(
    items: Vec<&Item>,
    meta: &Metadata,
) -> Result<(Vec<Tensor>, Vec<String>), ToolError> {
    let mut tensors = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let tensor = match &item.value {
            Value::Tensor(t) => t.clone(),
            Value::Json { shape, dtype, data } => {
                let info = meta.inputs.get(index);
                let usage = |m: String| ToolError::Data(format!("{}: {m}", item.source));
                let shape = match (shape, info) {
                    (Some(s), _) => s.clone(),
                    (None, Some(info)) => info
                        .shape
                        .iter()
                        .map(|d| match d {
                            Dim::Fixed(n) => Some(*n),
                            Dim::Symbolic(_) => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            usage(format!(
                                "no shape given, and input {:?} has shape {}",
                                info.name,
                                info.shape_string()
                            ))
                        })?,
                    (None, None) => return Err(usage("no shape given".into())),
                };
                let dtype = dtype.or(info.map(|i| i.dtype)).unwrap_or(DType::F32);
                json_tensor(&shape, dtype, data).map_err(usage)?
            }
        };
        tensors.push(tensor);
    }
    Ok((tensors, items.iter().map(|i| i.source.clone()).collect()))
}

fn json_tensor(
    shape: &[usize],
    dtype: DType,
    data: &[serde_json::Number],
) -> Result<Tensor, String> {
    let expected = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    if expected != Some(data.len()) {
        return Err(format!(
            "shape {shape:?} needs {} values, data has {}",
            expected.map_or("too many".to_string(), |n| n.to_string()),
            data.len()
        ));
    }
    fn ints<T: TryFrom<i64> + tract_onnx::prelude::Datum + Copy>(
        shape: &[usize],
        data: &[serde_json::Number],
        dtype: DType,
    ) -> Result<Tensor, String> {
        let values = data
            .iter()
            .map(|n| {
                n.as_i64()
                    .and_then(|v| T::try_from(v).ok())
                    .ok_or_else(|| format!("value {n} is not a valid {dtype}"))
            })
            .collect::<Result<Vec<T>, _>>()?;
        Tensor::from_shape(shape, &values).map_err(|e| format!("{e:#}"))
    }
    match dtype {
        DType::F32 => {
            let values: Vec<f32> = data
                .iter()
                .map(|n| n.as_f64().unwrap_or(f64::NAN) as f32)
                .collect();
            Tensor::from_shape(shape, &values).map_err(|e| format!("{e:#}"))
        }
        DType::I8 => ints::<i8>(shape, data, dtype),
        DType::U8 => ints::<u8>(shape, data, dtype),
        DType::I32 => ints::<i32>(shape, data, dtype),
        DType::I64 => ints::<i64>(shape, data, dtype),
        other => Err(format!(
            "element type {other} is not supported (FP32, INT8, UINT8, INT32 or INT64)"
        )),
    }
}

/// Every array of an `.npz` file, in archive order.
fn read_npz(path: &Path) -> Result<Vec<Item>, ToolError> {
    use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError};
    use tract_onnx::prelude::tract_ndarray::{IxDyn, OwnedRepr};

    let fail = |e: String| ToolError::Data(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| ToolError::read(path, e))?;
    let mut npz =
        NpzReader::new(file).map_err(|e| ToolError::decode(path, "an .npz archive", e))?;
    let names = npz
        .names()
        .map_err(|e| ToolError::decode(path, "an .npz archive", e))?;
    if names.is_empty() {
        return Err(fail("the archive holds no arrays".into()));
    }
    fn attempt<T>(
        npz: &mut NpzReader<std::fs::File>,
        name: &str,
    ) -> Result<Option<Tensor>, ReadNpzError>
    where
        T: ndarray_npy::ReadableElement + tract_onnx::prelude::Datum,
    {
        match npz.by_name::<OwnedRepr<T>, IxDyn>(name) {
            Ok(a) => Ok(Some(Tensor::from(a))),
            Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }
    let mut items = vec![];
    for name in names {
        let source = format!("{}:{name}", path.display());
        let mut tensor = None;
        for read in [
            attempt::<f32>,
            attempt::<f64>,
            attempt::<i64>,
            attempt::<i32>,
            attempt::<i8>,
            attempt::<u8>,
        ] {
            if let Some(t) =
                read(&mut npz, &name).map_err(|e| fail(format!("array {name:?}: {e}")))?
            {
                tensor = Some(t);
                break;
            }
        }
        let tensor = tensor.ok_or_else(|| {
            fail(format!(
                "array {name:?} has an unsupported element type (expected f32, f64, i64, i32, i8 or u8)"
            ))
        })?;
        items.push(Item {
            name: Some(name),
            source,
            value: Value::Tensor(tensor),
        });
    }
    Ok(items)
}

/// The tensors of a JSON request: `{"inputs": [{"name", "shape", "datatype", "data"}]}`.
fn read_json(path: &Path) -> Result<Vec<Item>, ToolError> {
    let fail = |e: String| ToolError::Data(format!("{}: {e}", path.display()));
    let text = std::fs::read(path).map_err(|e| ToolError::read(path, e))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| ToolError::decode(path, "valid JSON", e))?;
    let inputs = json
        .get("inputs")
        .and_then(|i| i.as_array())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| {
            fail(r#"expected {"inputs": [{"name", "shape", "datatype", "data"}, ...]} (an Open Inference Protocol v2 request)"#.into())
        })?;
    let mut items = vec![];
    for (i, input) in inputs.iter().enumerate() {
        let name = input
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let label = name.clone().unwrap_or_else(|| format!("#{i}"));
        let source = format!("{}:{label}", path.display());
        let fail = |e: String| ToolError::Data(format!("{source}: {e}"));
        let shape = match input.get("shape") {
            None => None,
            Some(s) => Some(
                s.as_array()
                    .and_then(|dims| {
                        dims.iter()
                            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                            .collect::<Option<Vec<usize>>>()
                    })
                    .ok_or_else(|| fail(format!("shape {s} is not a list of sizes")))?,
            ),
        };
        let dtype = match input.get("datatype").or_else(|| input.get("dtype")) {
            None => None,
            Some(d) => Some(d.as_str().and_then(parse_datatype).ok_or_else(|| {
                fail(format!(
                    "datatype {d} is not supported (FP32, INT8, UINT8, INT32 or INT64)"
                ))
            })?),
        };
        let mut data = vec![];
        flatten(
            input
                .get("data")
                .ok_or_else(|| fail("no \"data\" (binary tensor data is not supported)".into()))?,
            &mut data,
        )
        .map_err(fail)?;
        items.push(Item {
            name,
            source,
            value: Value::Json { shape, dtype, data },
        });
    }
    Ok(items)
}

/// An Open Inference Protocol datatype (`FP32`) or engine type name (`f32`).
fn parse_datatype(name: &str) -> Option<DType> {
    Some(match name.to_ascii_uppercase().as_str() {
        "FP32" | "F32" => DType::F32,
        "INT8" | "I8" => DType::I8,
        "UINT8" | "U8" => DType::U8,
        "INT32" | "I32" => DType::I32,
        "INT64" | "I64" => DType::I64,
        _ => return None,
    })
}

/// Collects the numbers of a flat or nested JSON array, row-major.
fn flatten(value: &serde_json::Value, out: &mut Vec<serde_json::Number>) -> Result<(), String> {
    match value {
        serde_json::Value::Number(n) => out.push(n.clone()),
        serde_json::Value::Array(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        other => return Err(format!("data holds {other}, not a number")),
    }
    Ok(())
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.model)?;
        if let Some(b) = &self.bundle {
            let signature = if b.signature_checked {
                format!("signature verified with key {}", b.key_id)
            } else {
                format!(
                    "signature NOT checked (signed by key {}; pass --pubkey to check it)",
                    b.key_id
                )
            };
            writeln!(
                f,
                "  bundle {} {} (sequence {}), {signature}",
                b.name, b.version, b.sequence
            )?;
        }
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
            model_files::golden_variant(Path::new("m/model.w8.onnx")).as_deref(),
            Some("w8")
        );
        assert_eq!(model_files::golden_variant(Path::new("m/model.onnx")), None);
    }
}

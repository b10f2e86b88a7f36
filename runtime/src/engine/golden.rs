//! Golden inputs and outputs, and the self-test a device runs before serving a model.
//!
//! A golden folder holds `input_0.npy`, `input_1.npy`, ... in the model's input order
//! and `output_0.npy`, ... computed by a reference runtime (ONNX Runtime for the
//! reference models). A variant's outputs are `output_0.<variant>.npy`, so the float
//! model and its quantized variant share their inputs.

use std::path::{Path, PathBuf};

use tract_core::prelude::Tensor;

use super::error::{EngineError, Result};
use super::session::Session;
use super::tensor::{plain, Array, Input, TensorView};

/// How close outputs must be to golden outputs.
///
/// The relative error of an output is `max |got - want| / max |want|` over its
/// elements: the worst deviation measured against the output's own scale, which
/// stays meaningful when individual elements are near zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// The largest relative error accepted.
    pub relative: f32,
}

impl Default for Tolerance {
    /// `1e-4`: float kernels reorder sums, so bit-exact agreement is not expected.
    fn default() -> Self {
        Tolerance { relative: 1e-4 }
    }
}

/// Golden inputs and the outputs they must produce.
#[derive(Debug, Clone)]
pub struct Golden {
    /// The folder they were read from.
    pub dir: PathBuf,
    /// Inputs, in the model's order.
    pub inputs: Vec<Array>,
    /// Expected outputs, in the model's order.
    pub outputs: Vec<Array>,
}

impl Golden {
    /// Reads `input_N.npy` and `output_N.npy` from `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Golden> {
        Self::load_variant(dir, None)
    }

    /// Reads `input_N.npy` and `output_N.<variant>.npy` (or `output_N.npy` when
    /// `variant` is `None`) from `dir`.
    pub fn load_variant(dir: impl AsRef<Path>, variant: Option<&str>) -> Result<Golden> {
        let dir = dir.as_ref();
        let inputs = read_numbered(dir, |i| format!("input_{i}.npy"))?;
        let outputs = read_numbered(dir, |i| match variant {
            Some(v) => format!("output_{i}.{v}.npy"),
            None => format!("output_{i}.npy"),
        })?;
        if inputs.is_empty() || outputs.is_empty() {
            return Err(EngineError::Golden {
                path: dir.into(),
                reason: "needs input_0.npy and a matching output_0 file".into(),
            });
        }
        Ok(Golden {
            dir: dir.into(),
            inputs,
            outputs,
        })
    }

    /// The inputs as borrowed buffers for [`Session::run`].
    pub fn input_refs(&self) -> Result<Vec<Input<'_>>> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.input().ok_or_else(|| EngineError::Golden {
                    path: self.dir.join(format!("input_{i}.npy")),
                    reason: format!("element type {:?} cannot be a model input", a.dtype()),
                })
            })
            .collect()
    }
}

fn read_numbered(dir: &Path, name: impl Fn(usize) -> String) -> Result<Vec<Array>> {
    let mut tensors = vec![];
    loop {
        let path = dir.join(name(tensors.len()));
        if !path.exists() {
            return Ok(tensors);
        }
        tensors.push(read_npy(&path)?);
    }
}

/// Reads a `.npy` file of f32, f64, i8, u8, i32 or i64 elements into an array
/// (see [`decode_npy`]).
pub fn read_npy(path: impl AsRef<Path>) -> Result<Array> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|cause| EngineError::Io {
        path: path.into(),
        cause,
    })?;
    decode_npy(&bytes).map_err(|reason| EngineError::Golden {
        path: path.into(),
        reason,
    })
}

/// Decodes a `.npy` file held in memory (f32, f64, i64, i32, i8 or u8, little-endian);
/// the header is parsed strictly and the data must be exactly what it declares
/// ([`npy`](super::internal::npy)).
pub fn decode_npy(bytes: &[u8]) -> std::result::Result<Array, String> {
    let tensor = super::npy::decode(bytes)?;
    let dtype = tensor.datum_type();
    Array::from_tensor(tensor)
        .ok_or_else(|| format!("element type {dtype:?} is not one an array holds"))
}

/// How one output compared with its golden value.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputCheck {
    /// The output's name.
    pub name: String,
    /// The largest absolute difference.
    pub max_abs_error: f32,
    /// The relative error as [`Tolerance`] defines it.
    pub relative_error: f32,
}

/// The outcome of a passing self-test.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestReport {
    /// One entry per output.
    pub outputs: Vec<OutputCheck>,
}

/// Compares two tensors of the same shape, elements converted to `f32`: `Ok((max
/// absolute error, relative error))` as [`Tolerance`] defines them, `Err` saying why
/// they cannot be compared (shapes differ, `got` holds NaN).
pub fn compare(
    got: TensorView<'_>,
    want: TensorView<'_>,
) -> std::result::Result<(f32, f32), String> {
    same_shape(got.shape(), want.shape())?;
    errors(&got.to_f32_vec(), &want.to_f32_vec())
}

fn same_shape(got: &[usize], want: &[usize]) -> std::result::Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("shape {got:?}, golden {want:?}"))
    }
}

/// [`compare`] for engine tensors of any element type that converts to `f32`.
pub(crate) fn compare_tensors(
    got: &Tensor,
    want: &Tensor,
) -> std::result::Result<(f32, f32), String> {
    same_shape(got.shape(), want.shape())?;
    let got = got.cast_to::<f32>().map_err(|e| format!("{e:#}"))?;
    let want = want.cast_to::<f32>().map_err(|e| format!("{e:#}"))?;
    errors(
        plain::<f32>(&got).map_err(|e| format!("{e:#}"))?,
        plain::<f32>(&want).map_err(|e| format!("{e:#}"))?,
    )
}

/// The maximum absolute and the relative error of `got` against `want`.
fn errors(got: &[f32], want: &[f32]) -> std::result::Result<(f32, f32), String> {
    let mut max_abs = 0f32;
    let mut scale = 0f32;
    for (g, w) in got.iter().zip(want) {
        let d = (g - w).abs();
        if d.is_nan() {
            return Err("the output holds NaN".into());
        }
        max_abs = max_abs.max(d);
        scale = scale.max(w.abs());
    }
    Ok((max_abs, max_abs / scale.max(f32::MIN_POSITIVE)))
}

impl Session {
    /// Runs the golden inputs and checks every output against its golden value.
    pub fn self_test(&mut self, golden: &Golden, tolerance: Tolerance) -> Result<SelfTestReport> {
        let inputs = golden.input_refs()?;
        let outputs = self.run(&inputs)?;
        if outputs.len() != golden.outputs.len() {
            return Err(EngineError::SelfTest {
                index: outputs.len().min(golden.outputs.len()),
                name: String::new(),
                reason: format!(
                    "the model has {} outputs, the golden data {}",
                    outputs.len(),
                    golden.outputs.len()
                ),
            });
        }
        let mut checks = vec![];
        for (index, want) in golden.outputs.iter().enumerate() {
            let name = outputs
                .info(index)
                .map(|i| i.name.clone())
                .unwrap_or_default();
            let got = outputs.tensor(index)?;
            let fail = |reason| EngineError::SelfTest {
                index,
                name: name.clone(),
                reason,
            };
            let (max_abs_error, relative_error) =
                compare_tensors(got, want.tensor()).map_err(fail)?;
            if relative_error > tolerance.relative || relative_error.is_nan() {
                return Err(fail(format!(
                    "relative error {relative_error:.3e} (max abs {max_abs_error:.3e}) exceeds {:.1e}",
                    tolerance.relative
                )));
            }
            checks.push(OutputCheck {
                name,
                max_abs_error,
                relative_error,
            });
        }
        Ok(SelfTestReport { outputs: checks })
    }
}

//! What to quantize and how: the request `perch quantize` runs.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::calibrate::Method;

/// Which quantization to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Weight-only int8: per-channel int8 weights, float activations (float speed).
    #[default]
    Weights,
    /// Static QDQ: calibrated uint8 activations and int8 weights.
    Static,
    /// Dynamic: activations quantized at run time, MatMulInteger / ConvInteger.
    Dynamic,
    /// Measure the candidates on the engine and choose per layer.
    Auto,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Weights => "weights",
            Mode::Static => "static",
            Mode::Dynamic => "dynamic",
            Mode::Auto => "auto",
        })
    }
}

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    /// The float ONNX model.
    pub model: PathBuf,
    /// Where to write the quantized model.
    pub output: PathBuf,
    /// The quantization to produce.
    pub mode: Mode,
    /// Calibration samples (.npy, .npz with `x`, or a folder of them); needed by static.
    pub calibration: Option<PathBuf>,
    /// Held-out evaluation samples (.npz with `x` and optional labels `y`, .npy, or a
    /// folder); defaults to `golden/input_0.npy` beside the model.
    pub eval: Option<PathBuf>,
    /// How static calibration picks activation ranges.
    pub method: Method,
    /// The percentile for [`Method::Percentile`] (99.99 by default).
    pub percentile: f64,
    /// Per-output-channel weight scales (opsets 11 and 12 are converted to 13 for them;
    /// per tensor below 11).
    pub per_channel: bool,
    /// Auto mode's budget: accuracy drop in points (or top-1 disagreement without labels).
    pub max_accuracy_drop: f64,
    /// Auto mode's budget for outputs that are not classification-shaped: relative error.
    pub max_output_error: f64,
}

impl QuantizeRequest {
    /// Defaults: weight-only, per-channel, minmax, a 1-point budget, 10% output error.
    pub fn new(model: impl Into<PathBuf>, output: impl Into<PathBuf>) -> QuantizeRequest {
        QuantizeRequest {
            model: model.into(),
            output: output.into(),
            mode: Mode::Weights,
            calibration: None,
            eval: None,
            method: Method::Minmax,
            percentile: 99.99,
            per_channel: true,
            max_accuracy_drop: 1.0,
            max_output_error: 0.1,
        }
    }
}

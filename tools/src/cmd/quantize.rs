//! `perch quantize`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::quantize::{self, Method, Mode, QuantizeRequest};

/// Quantize a float ONNX model to int8, check it on the engine, and report how it compares.
///
/// The default, `--mode weights`, stores Conv/Gemm/MatMul weights as int8 with one scale
/// per output channel and keeps activations float: on this engine (tract) it runs at
/// float speed from a 2.5-3x smaller file. Integer execution (static, dynamic) is slower
/// than float on the engine today; those modes exist for targets and runtimes (ONNX
/// Runtime) with fast integer kernels. `--mode auto` measures the candidates here and
/// picks per layer the fastest precision within the accuracy budget.
///
/// The report compares each model with the float one on held-out data (--eval; by
/// default the golden input beside the model): top-1 agreement, max/mean absolute error,
/// accuracy and its drop when labels are present, file size, and median latency of
/// float and quantized measured in the same interleaved runs.
///
/// Graphs as exporters write them are prepared first, as ONNX Runtime's
/// `quant_pre_process` does: weights in `Constant` nodes become initializers,
/// BatchNormalization after a Conv is folded into it (static, dynamic, auto), and opsets 11
/// and 12 are converted to 13 for per-channel scales; the report lists what was done.
///
/// Refused with exit code 2 and nothing written: models the engine refuses (vendor
/// operators, per-axis quantization below opset 13), already-quantized models, corrupt
/// or empty files, data of the wrong shape, and outputs the engine cannot run.
#[derive(clap::Args)]
pub struct Args {
    /// The float ONNX model.
    model: PathBuf,
    /// Where to write the quantized model (written atomically).
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,
    /// weights: int8 weights, float activations (float speed on the engine). static:
    /// calibrated QDQ (uint8 activations, needs --calibration). dynamic: DynamicQuantizeLinear
    /// + MatMulInteger/ConvInteger. auto: measure and choose per layer.
    #[arg(long, value_enum, default_value_t = Mode::Weights)]
    mode: Mode,
    /// Calibration samples for static (and auto): .npy, .npz with `x`, or a folder of them;
    /// the first axis counts samples.
    #[arg(long, value_name = "DATA")]
    calibration: Option<PathBuf>,
    /// Held-out evaluation samples: .npz with `x` and optional integer labels `y`, .npy,
    /// or a folder of them. Default: golden/input_0.npy beside the model (not held-out).
    #[arg(long, value_name = "DATA")]
    eval: Option<PathBuf>,
    /// How static calibration picks activation ranges: minmax, percentile (see
    /// --percentile) or entropy (KL-divergence threshold, TensorRT style).
    #[arg(long, value_enum, default_value_t = Method::Minmax)]
    method: Method,
    /// Percentile of activation values kept by --method percentile.
    #[arg(long, default_value_t = 99.99, value_name = "P")]
    percentile: f64,
    /// One weight scale per output channel (the default; converts opsets 11 and 12 to 13,
    /// where per-channel DequantizeLinear is defined; per tensor below 11).
    #[arg(long, overrides_with = "per_tensor")]
    per_channel: bool,
    /// One weight scale per tensor.
    #[arg(long, overrides_with = "per_channel")]
    per_tensor: bool,
    /// Auto mode's budget: the largest accuracy drop in points against the labels (without
    /// labels: points of top-1 disagreement with the float model).
    #[arg(long, default_value_t = 1.0, value_name = "POINTS")]
    max_accuracy_drop: f64,
    /// Auto mode's budget when outputs are not class scores and there are no labels: the
    /// largest relative error max|q - f| / max|f|.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    max_output_error: f64,
    /// Also write the report as JSON to this file (atomically).
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let request = QuantizeRequest {
        mode: args.mode,
        calibration: args.calibration,
        eval: args.eval,
        method: args.method,
        percentile: args.percentile,
        per_channel: !args.per_tensor,
        max_accuracy_drop: args.max_accuracy_drop,
        max_output_error: args.max_output_error,
        ..QuantizeRequest::new(&args.model, &args.output)
    };
    let report = quantize::quantize(&request)
        .with_context(|| format!("cannot quantize {}", args.model.display()))?;
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&report)?;
        perch_tools::fsio::write_atomic(path, &json)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    super::print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

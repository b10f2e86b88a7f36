//! `perch inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::{inspect, parse_shape_override};

/// Show a model's inputs, outputs, opset, operators, parameters, compute and
/// quantization, and check that the engine runs it.
///
/// Compute counts multiply-accumulates (MACs) of Conv (grouped and depthwise too),
/// ConvTranspose, Gemm, MatMul and their integer forms (ConvInteger, QLinearConv,
/// MatMulInteger, QLinearMatMul) for one run, with the shapes the engine infers;
/// FLOPs are 2 × MACs. Symbolic dimensions count as 1 unless fixed with --shape.
///
/// Quantization is one of: none; QDQ (QuantizeLinear/DequantizeLinear on
/// activations), QOperator (QLinearConv, QLinearMatMul, ...), dynamic
/// (DynamicQuantizeLinear, MatMulInteger, ConvInteger), weight-only (DequantizeLinear on
/// constant weights only), each per-tensor or per-channel.
///
/// Loading runs every check the device would: unsupported or vendor operators and
/// invalid quantization are refused with the node that caused it. A refused ONNX model
/// is still described from its file, and the command exits 2.
#[derive(clap::Args)]
pub struct Args {
    /// An ONNX model (.onnx) or a tract NNEF archive (.nnef.tgz, .tar, folder).
    model: PathBuf,
    /// Fix an input's shape, e.g. `--shape pixels=8,64` (repeatable).
    #[arg(long = "shape", value_name = "NAME=D1,D2,...", value_parser = parse_shape_override)]
    shapes: Vec<(String, Vec<usize>)>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let report = inspect::inspect(&args.model, &args.shapes)
        .with_context(|| format!("cannot inspect {}", args.model.display()))?;
    super::print(&report, args.json)?;
    if !report.engine.supported {
        let error = report.engine.error.as_deref().unwrap_or("no reason given");
        eprintln!(
            "perch: the engine refuses {}: {error}",
            args.model.display()
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

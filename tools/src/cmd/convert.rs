//! `perch convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::convert;

/// Convert an ONNX model to a tract NNEF archive (.nnef.tgz) for devices built
/// without the ONNX parser.
///
/// The archive (with tract's ONNX operator extensions) is loaded back through the
/// engine and run next to the ONNX model on a sample input: the golden inputs in
/// `golden/` beside the model when they fit, else a deterministic pseudo-random input
/// (symbolic dimensions set to 1, and said so). It is written, atomically, only when
/// every output agrees within the relative tolerance; otherwise nothing is written and
/// the command exits 2. Load-to-first-inference times of both forms are printed side
/// by side (informational, one cold measurement).
#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model (.onnx).
    model: PathBuf,
    /// The archive to write (default: beside the model, `.onnx` replaced by `.nnef.tgz`).
    #[arg(short, long, value_name = "FILE.nnef.tgz")]
    output: Option<PathBuf>,
    /// Largest relative error accepted between the two forms' outputs:
    /// max |nnef - onnx| / max |onnx| per output.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let request = convert::ConvertRequest {
        model: args.model.clone(),
        output: args.output,
        tolerance: args.tolerance,
    };
    let report = convert::convert(&request)
        .with_context(|| format!("cannot convert {}", args.model.display()))?;
    super::print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

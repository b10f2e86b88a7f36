//! `perch pack`.

use std::path::PathBuf;
use std::process::ExitCode;

use perch_runtime::bundle::{BundleError, Slo};
use perch_tools::bundle::{self, PackRequest};
use perch_tools::ToolError;

/// Pack a model, its golden data and SLOs into a signed bundle for devices.
///
/// The bundle (an uncompressed tar, by convention `NAME-VERSION.perch`) holds
/// manifest.json (name, version, sequence, the sha256 of every part, the model's
/// input/output signature, golden files, SLOs), manifest.sig (ed25519 over the
/// manifest) and the files. The model must load in the engine and pass its golden
/// self-test, since devices self-test every bundle before serving it; otherwise
/// nothing is written (exit 1 for a failed self-test, 2 for other errors). The
/// output is written atomically. Set SOURCE_DATE_EPOCH for byte-reproducible bundles.
#[derive(clap::Args)]
pub struct Args {
    /// The model: ONNX (.onnx) or an NNEF archive file (.nnef.tgz, .tar).
    model: PathBuf,
    /// The model's name: letters, digits, `.`, `_`, `-` (at most 32, what device reports carry).
    #[arg(long)]
    name: String,
    /// The model's semantic version, e.g. 1.2.0.
    #[arg(long, value_name = "SEMVER")]
    version: String,
    /// The release sequence number; devices install only bundles with a higher
    /// sequence than the last one they installed (no downgrades, no replays).
    #[arg(long, value_name = "N")]
    sequence: u64,
    /// The secret key file (from `perch keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Where to write the bundle.
    #[arg(short = 'o', long = "out", value_name = "BUNDLE")]
    out: PathBuf,
    /// Golden folder with input_N.npy and output_N.npy [default: golden/ beside the model].
    #[arg(long, value_name = "DIR")]
    golden: Option<PathBuf>,
    /// Golden output variant: `w8` packs output_N.w8.npy [default: from the model's file
    /// name, e.g. model.w8.onnx, when those files exist].
    #[arg(long)]
    variant: Option<String>,
    /// Largest relative error the device's self-test accepts.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// SLO: 99th-percentile latency budget per inference, in milliseconds.
    #[arg(long, value_name = "MS")]
    p99_ms: Option<f64>,
    /// SLO: largest acceptable fraction of failed requests (0.01 = 1 %).
    #[arg(long, value_name = "FRACTION")]
    max_error_rate: Option<f64>,
    /// SLO: smallest acceptable throughput, in inferences per second.
    #[arg(long, value_name = "PER_SECOND")]
    min_throughput: Option<f64>,
    /// Feature schema for /predict (TOML if the name ends in .toml, else JSON): feature
    /// names in input order, numeric ones standardized (mean, std), categorical ones
    /// one-hot (categories), and the class labels. Signed into the manifest.
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let request = PackRequest {
        golden: args.golden,
        variant: args.variant,
        tolerance: args.tolerance,
        schema: args.schema,
        slo: Slo {
            p99_ms: args.p99_ms,
            max_error_rate: args.max_error_rate,
            min_throughput: args.min_throughput,
        },
        ..PackRequest::new(
            &args.model,
            args.name,
            args.version,
            args.sequence,
            args.key,
            &args.out,
        )
    };
    match bundle::pack(&request) {
        Ok(report) => {
            super::print(&report, args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(ToolError::Bundle(e @ BundleError::SelfTest(_))) => {
            eprintln!(
                "perch: refusing to pack {}: {e}; nothing was written",
                args.model.display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot pack {} into {}",
            args.model.display(),
            args.out.display()
        ))),
    }
}

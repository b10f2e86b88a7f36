//! `perch run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::{parse_shape_override, run};

/// Run one inference and print the outputs.
///
/// MODEL is a model file or a bundle (`.perch`, from `perch pack`). Without --input,
/// runs the golden inputs (the bundle's, or the `golden/` folder beside a model file)
/// and compares the outputs with the golden outputs (exit code 1 when they differ).
/// A bundle's hashes are always checked; its signature only with --pubkey, and the
/// output says which.
#[derive(clap::Args)]
pub struct Args {
    /// An ONNX model, an NNEF archive, or a bundle.
    model: PathBuf,
    /// Input file, repeatable, in the model's input order: .npy (one array), .npz
    /// (its arrays in order, or by input name when named after the model's inputs),
    /// or .json: {"inputs": [{"name", "shape", "datatype", "data"}]}, an Open
    /// Inference Protocol v2 request (name, shape and datatype optional).
    #[arg(long = "input", value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// A golden folder (input_N.npy, output_N.npy) to run and check against.
    #[arg(long, value_name = "DIR")]
    golden: Option<PathBuf>,
    /// Golden output variant: `w8` compares with output_N.w8.npy (default: from the file name).
    #[arg(long)]
    variant: Option<String>,
    /// Fix an input's shape, e.g. `--shape pixels=8,64` (repeatable).
    #[arg(long = "shape", value_name = "NAME=D1,D2,...", value_parser = parse_shape_override)]
    shapes: Vec<(String, Vec<usize>)>,
    /// Pass NaN and infinite inputs to the model instead of refusing them.
    #[arg(long)]
    allow_non_finite: bool,
    /// Check a bundle's signature with this public key file (repeatable).
    #[arg(long = "pubkey", value_name = "FILE")]
    pubkeys: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let request = run::RunRequest {
        model: args.model.clone(),
        inputs: args.inputs,
        golden: args.golden,
        variant: args.variant,
        shapes: args.shapes,
        allow_non_finite: args.allow_non_finite,
        pubkeys: args.pubkeys,
    };
    let report =
        run::run(&request).with_context(|| format!("cannot run {}", args.model.display()))?;
    super::print(&report, args.json)?;
    let failed = report.golden.as_ref().is_some_and(|g| !g.passed);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

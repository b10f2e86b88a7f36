//! `perch`: inspect and run models on the host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use perch_tools::{inspect, parse_shape_override, run};

/// Perch's host workbench: prepare and check models for a fleet of edge devices.
#[derive(Parser)]
#[command(name = "perch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, opset and operators, and check the engine loads it.
    ///
    /// Loading runs every check the device would: unsupported or vendor operators and
    /// invalid quantization are refused with the node that caused it.
    Inspect {
        /// An ONNX model (.onnx) or a tract NNEF archive (.nnef.tgz, .tar, folder).
        model: PathBuf,
        /// Fix an input's shape, e.g. `--shape pixels=8,64` (repeatable).
        #[arg(long = "shape", value_name = "NAME=D1,D2,...", value_parser = parse_shape_override)]
        shapes: Vec<(String, Vec<usize>)>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one inference and print the outputs.
    ///
    /// Without --input, runs the golden inputs in the `golden/` folder beside the model
    /// and compares the outputs with the golden outputs (exit code 1 when they differ).
    Run {
        /// An ONNX model or NNEF archive.
        model: PathBuf,
        /// An input tensor as .npy, in the model's input order (repeatable).
        #[arg(long = "input", value_name = "FILE.npy")]
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
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perch: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Inspect {
            model,
            shapes,
            json,
        } => {
            let report = inspect::inspect(&model, &shapes)
                .with_context(|| format!("cannot inspect {}", model.display()))?;
            print(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            model,
            inputs,
            golden,
            variant,
            shapes,
            allow_non_finite,
            json,
        } => {
            let request = run::RunRequest {
                model: model.clone(),
                inputs,
                golden,
                variant,
                shapes,
                allow_non_finite,
            };
            let report =
                run::run(&request).with_context(|| format!("cannot run {}", model.display()))?;
            print(&report, json)?;
            let failed = report.golden.as_ref().is_some_and(|g| !g.passed);
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn print<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

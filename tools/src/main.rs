//! `perch`: Perch's host workbench.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Perch's host workbench: prepare, check, sign and measure models for a fleet of
/// edge devices.
#[derive(Parser)]
#[command(name = "perch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: `rollout start`'s many flags cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    Inspect(cmd::inspect::Args),
    Quantize(cmd::quantize::Args),
    Convert(cmd::convert::Args),
    Keygen(cmd::keygen::Args),
    Pack(cmd::pack::Args),
    Verify(cmd::verify::Args),
    Run(cmd::run::Args),
    Bench(cmd::bench::Args),
    Batch(cmd::batch::Args),
    Rollout(cmd::rollout::Args),
    Experiment(cmd::experiment::Args),
    Device(cmd::device::Args),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match Cli::parse().command {
        Command::Inspect(args) => cmd::inspect::execute(args),
        Command::Quantize(args) => cmd::quantize::execute(args),
        Command::Convert(args) => cmd::convert::execute(args),
        Command::Keygen(args) => cmd::keygen::execute(args),
        Command::Pack(args) => cmd::pack::execute(args),
        Command::Verify(args) => cmd::verify::execute(args),
        Command::Run(args) => cmd::run::execute(args),
        Command::Bench(args) => cmd::bench::execute(args),
        Command::Batch(args) => cmd::batch::execute(args),
        Command::Rollout(args) => cmd::rollout::execute(args),
        Command::Experiment(args) => cmd::experiment::execute(args),
        Command::Device(args) => cmd::device::execute(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perch: {e:#}");
            ExitCode::from(2)
        }
    }
}

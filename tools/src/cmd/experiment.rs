//! `perch experiment`.

use std::process::ExitCode;

use perch_tools::experiment::status;

/// Look at the A/B experiments a device runs.
///
/// An experiment (perchd's [[experiments]]) routes the requests addressed to its name
/// to one of its variants, each a model of the device's repository, by hashing the
/// request's entity id into the variants' traffic shares; shadow models score a copy
/// of each request after the reply has gone out, and their answers are only compared.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Status(StatusArgs),
}

/// Show an experiment's figures on one device: per variant its requests, errors, error
/// rate and p50/p99 service time, with a two-proportion z-test (two-sided p-value) of
/// its error rate against the default variant's; per shadow its runs, errors, drops
/// (the shadow queue was full), p50/p99 and agreement with the served answers (argmax
/// match for classifiers, max relative difference for regressors).
///
/// A small p-value (say below 0.05) says the two error rates differ by more than
/// chance would explain; with few requests no difference is significant. Figures count
/// from the agent's start.
#[derive(clap::Args)]
struct StatusArgs {
    /// The agent's HTTP API, http://HOST:PORT (perchd's http_listen).
    #[arg(long, value_name = "URL")]
    device: String,
    /// The experiment's name.
    name: String,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Sub::Status(a) => {
            let report = status::fetch(&a.device, &a.name)?;
            super::print(&report, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

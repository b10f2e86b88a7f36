//! `perch verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::bundle::{self, VerifyRequest};

/// Check a bundle as a device would: structure, every part's sha256, and the ed25519
/// signature over its manifest against trusted public keys.
///
/// Prints the manifest on success. A bundle that fails a check exits with code 1 and
/// a message naming what failed (the part whose hash differs, the untrusted key id,
/// ...); an unreadable key or bundle file exits with 2. With --json the report is
/// printed either way, with `ok`, and `failure.kind` as a stable code.
#[derive(clap::Args)]
pub struct Args {
    /// The bundle file.
    bundle: PathBuf,
    /// A trusted public key file (from `perch keygen`); repeat for several.
    #[arg(long = "pubkey", value_name = "FILE", required = true)]
    pubkeys: Vec<PathBuf>,
    /// Also load the model and run its golden self-test, as a device does before serving.
    #[arg(long)]
    self_test: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let request = VerifyRequest {
        bundle: args.bundle.clone(),
        pubkeys: args.pubkeys,
        self_test: args.self_test,
    };
    let report = bundle::verify(&request)
        .with_context(|| format!("cannot verify {}", args.bundle.display()))?;
    if report.ok || args.json {
        super::print(&report, args.json)?;
    } else {
        eprintln!("perch: {report}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

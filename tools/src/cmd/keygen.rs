//! `perch keygen`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perch_tools::bundle;

/// Generate an ed25519 key pair for signing model bundles.
///
/// Writes the secret key to OUT (mode 0600) and the public key beside it (`x.key` →
/// `x.pub`), and prints the key id that bundle manifests will name. Give the public
/// key to devices and to `perch verify --pubkey`; keep the secret key private.
/// Existing key files are never replaced without --force.
#[derive(clap::Args)]
pub struct Args {
    /// The secret key file to write; the public key goes beside it with `.pub`.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "FILE",
        default_value = "perch.key"
    )]
    out: PathBuf,
    /// Replace existing key files (bundles signed by the old key then no longer verify
    /// against the new public key).
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let report = bundle::keygen(&args.out, args.force)
        .with_context(|| format!("cannot generate a key into {}", args.out.display()))?;
    super::print(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

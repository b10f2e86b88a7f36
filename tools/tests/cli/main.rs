//! The `perch` binary as a user runs it: one module per command, in one test binary
//! (a binary per file would link the engine once per file).

mod batch;
mod bench;
mod bundle;
mod convert;
mod experiment;
mod inspect;
mod quantize;
mod quickstart;
mod rollout;
mod rollout_report;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

/// The repository's reference models.
fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The `perch` binary of this build, unaffected by a SOURCE_DATE_EPOCH in the caller's
/// environment (which would change the bundles it writes).
fn perch() -> Command {
    let mut cmd = Command::cargo_bin("perch").unwrap();
    cmd.env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Parses a command's stdout as JSON, showing it when it is not.
fn json(output: &[u8]) -> Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(output)))
}

/// `perch keygen` into `dir`: the secret and public key files.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let secret = dir.join(format!("{name}.key"));
    perch()
        .arg("keygen")
        .arg("-o")
        .arg(&secret)
        .assert()
        .success();
    (secret, dir.join(format!("{name}.pub")))
}

//! The checkpoint beside a batch output: how many rows are durably written, and for
//! which run.
//!
//! It is replaced atomically ([`crate::fsio::write_atomic`]) only after the rows it
//! counts are flushed and fsynced, so it never claims a row that is not on disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ToolError;

/// What a checkpoint belongs to: a checkpoint of another run is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 of the model file or bundle.
    pub model_sha256: String,
    /// SHA-256 of the input file.
    pub input_sha256: String,
    /// The settings that change what is written (columns, task, output format).
    pub settings: String,
}

/// The checkpoint file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run it belongs to.
    pub fingerprint: Fingerprint,
    /// Input rows whose output is durably written.
    pub rows: u64,
    /// Where the output's durable part ends: bytes (CSV, npy) or part files (Parquet).
    pub position: u64,
}

/// `out.csv` → `out.csv.checkpoint`.
pub fn path_for(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

/// Reads the checkpoint at `path`, if there is one.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, ToolError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ToolError::decode(path, "a batch checkpoint (pass --restart)", e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ToolError::read(path, e)),
    }
}

/// Replaces the checkpoint at `path` atomically.
pub fn store(path: &Path, checkpoint: &Checkpoint) -> Result<(), ToolError> {
    let bytes = serde_json::to_vec_pretty(checkpoint)
        .map_err(|e| ToolError::Internal(format!("checkpoint: {e}")))?;
    crate::fsio::write_atomic(path, &bytes).map_err(|e| ToolError::write(path, e))
}

/// Refuses a checkpoint written for another model, input or settings, naming which.
pub fn check(path: &Path, found: &Fingerprint, want: &Fingerprint) -> Result<(), ToolError> {
    let differs = if found.model_sha256 != want.model_sha256 {
        "model"
    } else if found.input_sha256 != want.input_sha256 {
        "input file"
    } else if found.settings != want.settings {
        "settings"
    } else {
        return Ok(());
    };
    Err(ToolError::Usage(format!(
        "{} belongs to a run with a different {differs} ({} there, {} now); pass --restart \
         to start over",
        path.display(),
        describe(differs, found),
        describe(differs, want)
    )))
}

fn describe(what: &str, f: &Fingerprint) -> String {
    match what {
        "model" => format!("sha256 {}", &f.model_sha256[..f.model_sha256.len().min(12)]),
        "input file" => format!("sha256 {}", &f.input_sha256[..f.input_sha256.len().min(12)]),
        _ => format!("{:?}", f.settings),
    }
}

/// SHA-256 of a file's contents, hex.
pub fn sha256_file(path: &Path) -> Result<String, ToolError> {
    let mut file = std::fs::File::open(path).map_err(|e| ToolError::read(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| ToolError::read(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(settings: &str) -> Fingerprint {
        Fingerprint {
            model_sha256: "aa".repeat(32),
            input_sha256: "bb".repeat(32),
            settings: settings.into(),
        }
    }

    #[test]
    fn a_checkpoint_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("out.csv"));
        assert_eq!(load(&path).unwrap(), None);
        let c = Checkpoint {
            fingerprint: print("x"),
            rows: 512,
            position: 9000,
        };
        store(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), Some(c));
    }

    #[test]
    fn a_checkpoint_of_other_settings_is_refused_naming_what_differs() {
        let p = Path::new("out.csv.checkpoint");
        check(p, &print("a"), &print("a")).unwrap();
        let err = check(p, &print("a"), &print("b")).unwrap_err().to_string();
        assert!(
            err.contains("different settings") && err.contains("--restart"),
            "{err}"
        );
        let mut other = print("a");
        other.input_sha256 = "cc".repeat(32);
        let err = check(p, &print("a"), &other).unwrap_err().to_string();
        assert!(err.contains("different input file"), "{err}");
    }
}

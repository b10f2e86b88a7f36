//! Shared ground for Perch's integration tests: where the reference models are and
//! what the generator recorded about them (`models/models.json`), and the host-side
//! fleet simulator ([`sim`], binary `perch-sim`).
//!
//! ```
//! let models = perch_tests::reference_models().unwrap();
//! assert_eq!(models[0].id, "R1");
//! ```
#![warn(missing_docs)]

pub mod sim;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The repository's `models/` folder.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A tensor as the generator declared it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeclaredTensor {
    /// Name in the ONNX graph.
    pub name: String,
    /// numpy dtype name (`float32`).
    pub dtype: String,
    /// Dimensions: numbers, or strings for symbolic ones.
    pub shape: Vec<serde_json::Value>,
}

/// One reference workload from `models/models.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceModel {
    /// R1..R4.
    pub id: String,
    /// Folder name under `models/`.
    pub name: String,
    /// Inputs in order.
    pub inputs: Vec<DeclaredTensor>,
    /// Outputs in order.
    pub outputs: Vec<DeclaredTensor>,
    /// Parameter count.
    pub params: u64,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Size of `model.onnx`.
    pub float_bytes: u64,
    /// Size of `model.w8.onnx`.
    pub w8_bytes: u64,
    /// Held-out accuracy of trained models.
    pub accuracy: Option<f64>,
}

impl ReferenceModel {
    /// The model's folder.
    pub fn dir(&self) -> PathBuf {
        models_dir().join(&self.name)
    }
}

/// Reads `models/models.json`.
pub fn reference_models() -> Result<Vec<ReferenceModel>, String> {
    let path = models_dir().join("models.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

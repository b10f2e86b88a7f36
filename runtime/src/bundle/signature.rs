//! The input/output signature a manifest records: what the engine saw at pack time.

use serde::{Deserialize, Serialize};

use crate::engine::{Dim, Metadata, TensorInfo};

/// A model's inputs and outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSignature {
    /// Inputs, in the order the model takes them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order the model returns them.
    pub outputs: Vec<TensorSpec>,
}

impl TensorSignature {
    /// The signature of a loaded model.
    pub fn from_metadata(meta: &Metadata) -> TensorSignature {
        TensorSignature {
            inputs: meta.inputs.iter().map(TensorSpec::from).collect(),
            outputs: meta.outputs.iter().map(TensorSpec::from).collect(),
        }
    }
}

/// Name, element type and shape of one input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The name in the model.
    pub name: String,
    /// The element type as the engine names it (`f32`, `i8`, ...).
    pub dtype: String,
    /// The shape: numbers for fixed dimensions, names for symbolic ones.
    pub shape: Vec<ShapeDim>,
}

impl From<&TensorInfo> for TensorSpec {
    fn from(info: &TensorInfo) -> TensorSpec {
        TensorSpec {
            name: info.name.clone(),
            dtype: info.dtype.name().to_string(),
            shape: info
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => ShapeDim::Fixed(*n as u64),
                    Dim::Symbolic(s) => ShapeDim::Symbolic(s.clone()),
                })
                .collect(),
        }
    }
}

/// One dimension of a [`TensorSpec`]: a JSON number or a symbol name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShapeDim {
    /// A fixed size.
    Fixed(u64),
    /// A size chosen at run time (a batch dimension), by symbol name.
    Symbolic(String),
}

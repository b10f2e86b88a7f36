//! What a loaded model is: its format, its inputs and outputs, what it is made of, and
//! the input policy its sessions apply. Below both the loader and the sessions.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{EngineError, Result};
use super::ops::KernelNode;
use super::tensor::TensorInfo;

/// The file format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// An ONNX protobuf (`.onnx`).
    Onnx,
    /// A tract NNEF archive (`.nnef.tgz`, `.tar`, or a folder).
    Nnef,
}

impl ModelFormat {
    /// Guesses the format from the path, then from the first bytes of the file.
    ///
    /// Folders and tar/gzip files are NNEF; everything else is taken as ONNX.
    pub fn detect(path: &Path) -> Result<ModelFormat> {
        if path.is_dir() {
            return Ok(ModelFormat::Nnef);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".onnx") {
            return Ok(ModelFormat::Onnx);
        }
        if [".tgz", ".tar.gz", ".tar", ".nnef"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            return Ok(ModelFormat::Nnef);
        }
        let mut magic = [0u8; 2];
        let mut file = std::fs::File::open(path).map_err(|cause| EngineError::Io {
            path: path.into(),
            cause,
        })?;
        let n = std::io::Read::read(&mut file, &mut magic).map_err(|cause| EngineError::Io {
            path: path.into(),
            cause,
        })?;
        Ok(if n == 2 && magic == [0x1f, 0x8b] {
            ModelFormat::Nnef
        } else {
            ModelFormat::Onnx
        })
    }
}

/// What to do with NaN and infinite values in float inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// Refuse the request with [`EngineError::NonFinite`] (the default: a NaN from a
    /// broken sensor should be an error, not a silently wrong prediction).
    #[default]
    Reject,
    /// Pass them to the model.
    Allow,
}

/// What a loaded model takes and returns, and what it is made of.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The format it was loaded from.
    pub format: ModelFormat,
    /// Inputs, in the order `Session::run` takes them.
    pub inputs: Vec<TensorInfo>,
    /// Outputs, in the order runs return them.
    pub outputs: Vec<TensorInfo>,
    /// The default-domain ONNX opset (ONNX models only).
    pub opset: Option<i64>,
    /// How many nodes use each operator in the source model (before optimization).
    pub op_histogram: BTreeMap<String, usize>,
    /// The tool that wrote the model, when recorded.
    pub producer: Option<String>,
    /// The nodes Perch's kernel pass considered: the kernel that runs each, or why
    /// it stays on tract's operator. Empty when the pass was off and the model holds
    /// no Perch operators.
    pub kernels: Vec<KernelNode>,
    /// Whether the kernel pass ran.
    pub kernel_pass: bool,
}

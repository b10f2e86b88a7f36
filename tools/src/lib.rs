//! The library behind `perch`, the host workbench.
//!
//! Each command is a function that returns a report; the binary only parses
//! arguments and prints. Reports serialize to JSON for scripts (`--json`) and
//! render as text for people.
//!
//! ```no_run
//! let report = perch_tools::inspect::inspect("models/kws-dscnn/model.onnx".as_ref(), &[])?;
//! println!("{report}");
//! # Ok::<(), perch_tools::ToolError>(())
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod bench;
pub mod bundle;
pub mod convert;
pub mod experiment;
pub use perch_runtime::fsio;
pub mod graph;
pub mod inspect;
pub mod onnx;
pub mod quantize;
pub mod rollout;
pub mod run;

use std::path::PathBuf;

use perch_runtime::engine::internal::InputExt;
use perch_runtime::engine::EngineError;

/// What can go wrong in a `perch` command.
///
/// Errors that wrap another keep it as their [`source`](std::error::Error::source)
/// rather than repeating its text: print them with their chain (`perch` does, as
/// `anyhow`'s `{:#}`; [`perch_runtime::error::Chain`] does in a library).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The engine refused the model or the inputs.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A bundle or key file is unreadable, malformed or fails verification.
    #[error(transparent)]
    Bundle(#[from] perch_runtime::bundle::BundleError),
    /// A command-line value, or a combination of them, is not usable.
    #[error("{0}")]
    Usage(String),
    /// A file or folder could not be read, written or created.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file or folder.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A file is not in the format it should be in.
    #[error("{} is not {what}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What it should be (`an ONNX model`, `an .npz archive`).
        what: &'static str,
        /// Why it does not decode.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The model does not allow what was asked of it (it is already quantized, holds
    /// nothing to quantize, declares too old an opset...).
    #[error("{0}")]
    Model(String),
    /// Input, golden or calibration data does not fit the model.
    #[error("{0}")]
    Data(String),
    /// An output was not written: checked before writing, it would not serve.
    #[error("refusing to write {}: {reason}", path.display())]
    Refused {
        /// The output that was not written.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Something failed inside the tool itself (a worker thread, the random source).
    #[error("{0}")]
    Internal(String),
}

/// What a failed [`ToolError::Io`] was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Reading a file or folder.
    Read,
    /// Writing a file.
    Write,
    /// Creating a file or folder.
    Create,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Create => "create",
        })
    }
}

impl ToolError {
    /// Reading `path` failed.
    pub fn read(path: impl Into<PathBuf>, source: std::io::Error) -> ToolError {
        ToolError::Io {
            op: IoOp::Read,
            path: path.into(),
            source,
        }
    }

    /// Writing `path` failed.
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> ToolError {
        ToolError::Io {
            op: IoOp::Write,
            path: path.into(),
            source,
        }
    }

    /// `path` is not `what`, because of `source`.
    pub fn decode(
        path: impl Into<PathBuf>,
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ToolError {
        ToolError::Decode {
            path: path.into(),
            what,
            source: source.into(),
        }
    }
}

/// Borrows tensors (read from files) as engine inputs, in order; an element type the
/// engine cannot take is an error naming `what` held it.
pub fn input_refs<'t>(
    tensors: &'t [perch_runtime::engine::internal::Tensor],
    what: &str,
) -> Result<Vec<perch_runtime::engine::Input<'t>>, ToolError> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            perch_runtime::engine::Input::from_tensor(t).ok_or_else(|| {
                ToolError::Data(format!(
                    "{what} {i}: element type {:?} cannot be a model input",
                    t.datum_type()
                ))
            })
        })
        .collect()
}

/// A tensor's elements as `f32`, converted from its element type; `None` when they
/// cannot be (strings, say).
pub fn f32_values(tensor: &perch_runtime::engine::internal::Tensor) -> Option<Vec<f32>> {
    tensor.cast_to::<f32>().ok().and_then(|t| {
        t.try_as_plain_ram()
            .ok()?
            .as_slice::<f32>()
            .ok()
            .map(<[f32]>::to_vec)
    })
}

/// A new temporary folder, removed when the returned value drops.
fn temp_dir() -> Result<tempfile::TempDir, ToolError> {
    tempfile::tempdir().map_err(|e| ToolError::Io {
        op: IoOp::Create,
        path: std::env::temp_dir(),
        source: e,
    })
}

/// Parses `name=1,3,224,224` into an input name and a shape.
pub fn parse_shape_override(text: &str) -> Result<(String, Vec<usize>), ToolError> {
    let (name, dims) = text
        .split_once('=')
        .ok_or_else(|| ToolError::Usage(format!("--shape {text:?}: expected NAME=D1,D2,...")))?;
    let shape = dims
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ToolError::Usage(format!("--shape {text:?}: {e}")))?;
    if name.is_empty() || shape.is_empty() {
        return Err(ToolError::Usage(format!(
            "--shape {text:?}: expected NAME=D1,D2,..."
        )));
    }
    Ok((name.to_string(), shape))
}

/// Load options from `--shape` overrides.
pub fn load_options(shapes: &[(String, Vec<usize>)]) -> perch_runtime::engine::LoadOptions {
    shapes.iter().fold(
        perch_runtime::engine::LoadOptions::new(),
        |o, (name, shape)| o.input_shape(name.clone(), shape),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_override_parses_name_and_dims() {
        assert_eq!(
            parse_shape_override("pixels=8,64").unwrap(),
            ("pixels".into(), vec![8, 64])
        );
    }

    #[test]
    fn a_malformed_shape_override_says_what_is_expected() {
        for bad in ["pixels", "=1,2", "pixels=", "pixels=1,x"] {
            let err = parse_shape_override(bad).unwrap_err().to_string();
            assert!(err.contains("--shape"), "{bad}: {err}");
        }
    }
}

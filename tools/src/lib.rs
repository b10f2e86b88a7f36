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

pub mod bench;
pub mod bundle;
pub mod convert;
pub use perch_runtime::fsio;
pub mod graph;
pub mod inspect;
pub mod onnx;
pub mod quantize;
pub mod rollout;
pub mod run;

use perch_runtime::engine::EngineError;

/// What can go wrong in a `perch` command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The engine refused the model or the inputs.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A command-line value is not usable.
    #[error("{0}")]
    Usage(String),
    /// A bundle or key file is unreadable, malformed or fails verification.
    #[error(transparent)]
    Bundle(#[from] perch_runtime::bundle::BundleError),
}

/// Borrows tensors (read from files) as engine inputs, in order; an element type the
/// engine cannot take is an error naming `what` held it.
pub fn input_refs<'t>(
    tensors: &'t [perch_runtime::engine::Tensor],
    what: &str,
) -> Result<Vec<perch_runtime::engine::Input<'t>>, ToolError> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            perch_runtime::engine::Input::from_tensor(t).ok_or_else(|| {
                ToolError::Usage(format!(
                    "{what} {i}: element type {:?} cannot be a model input",
                    t.datum_type()
                ))
            })
        })
        .collect()
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

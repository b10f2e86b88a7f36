//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading, validating or running a model.
///
/// Each variant names the thing at fault (the file, the node, the input) so the
/// message can be shown to a user as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A model or golden file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason (in the message, so not repeated as a source).
        cause: std::io::Error,
    },
    /// The bytes are not a model of the expected format (truncated, corrupt, wrong file).
    #[error("{what} is not a valid model: {reason}")]
    Malformed {
        /// What was being read (a path or "ONNX bytes").
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The model uses an operator the engine does not implement.
    #[error("node {node:?} uses operator {op} that the engine does not support: {hint}")]
    UnsupportedOp {
        /// The node's name (or its first output's name when unnamed).
        node: String,
        /// `domain:op_type` for ONNX, the operator name for NNEF.
        op: String,
        /// What the user can do about it.
        hint: String,
    },
    /// The model is invalid in a way the engine would not detect by itself
    /// (it would run and return wrong numbers), so it is refused.
    #[error("node {node:?} ({op}) is refused: {reason}")]
    Refused {
        /// The node's name.
        node: String,
        /// The operator.
        op: String,
        /// Why running it would be wrong.
        reason: String,
    },
    /// The engine failed to type, declutter or optimize the model.
    #[error("cannot prepare the model while {stage}: {reason}")]
    Prepare {
        /// The preparation stage that failed.
        stage: &'static str,
        /// The engine's error chain, which names the node at fault.
        reason: String,
    },
    /// The engine panicked on this model; the panic was contained.
    #[error("the engine panicked while {stage}: {message}")]
    EnginePanic {
        /// What the engine was doing.
        stage: &'static str,
        /// The panic payload.
        message: String,
    },
    /// An integer input holds an index outside the axis it gathers from (the engine
    /// does not check them; see [`super::guards`]).
    #[error("input {index} ({name:?}) holds {value} at position {position}, an index outside -{len}..{len} for node {node:?}")]
    IndexOutOfRange {
        /// The input's position.
        index: usize,
        /// The input's name.
        name: String,
        /// The element's index, row-major.
        position: usize,
        /// The value.
        value: i64,
        /// The node it indexes for.
        node: String,
        /// The gathered axis's length.
        len: i64,
    },
    /// An ONNX model was given to a build without the `onnx` feature.
    #[error("{} is an ONNX model but this build only loads NNEF archives (feature `onnx` is off); convert it on the host with `perch convert`", path.display())]
    OnnxDisabled {
        /// The model file.
        path: PathBuf,
    },
    /// A load option named an input the model does not have.
    #[error("no input named {name:?} (the model's inputs are: {available})")]
    UnknownInput {
        /// The name given.
        name: String,
        /// The model's input names, comma-separated.
        available: String,
    },
    /// The caller passed the wrong number of inputs.
    #[error("the model takes {expected} input(s), {got} given")]
    InputCount {
        /// The model's input count.
        expected: usize,
        /// The number passed.
        got: usize,
    },
    /// An input has the wrong element type.
    #[error("input {index} ({name:?}) must be {expected}, got {got}")]
    InputDType {
        /// Position of the input.
        index: usize,
        /// Its name.
        name: String,
        /// The model's dtype.
        expected: String,
        /// The dtype passed.
        got: String,
    },
    /// An input has a shape the model does not accept.
    #[error("input {index} ({name:?}) must have shape {expected}, got {got:?}")]
    InputShape {
        /// Position of the input.
        index: usize,
        /// Its name.
        name: String,
        /// The model's shape, symbolic dimensions by name.
        expected: String,
        /// The shape passed.
        got: Vec<usize>,
    },
    /// The buffer does not hold as many elements as the shape says.
    #[error("input {index} ({name:?}) has shape {shape:?} ({expected} elements) but its buffer holds {got}")]
    InputLength {
        /// Position of the input.
        index: usize,
        /// Its name.
        name: String,
        /// The shape passed.
        shape: Vec<usize>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements in the buffer.
        got: usize,
    },
    /// A float input holds NaN or an infinity and the policy rejects them.
    #[error(
        "input {index} ({name:?}) element {position} is {value}; non-finite inputs are rejected"
    )]
    NonFinite {
        /// Position of the input.
        index: usize,
        /// Its name.
        name: String,
        /// Flat index of the first offending element.
        position: usize,
        /// The value found.
        value: f32,
    },
    /// The engine failed while running the plan.
    #[error("inference failed: {reason}")]
    Run {
        /// The engine's error chain.
        reason: String,
    },
    /// An output was read as the wrong type.
    #[error("output {index} ({name:?}) is {actual}, not {requested}")]
    OutputDType {
        /// Position of the output.
        index: usize,
        /// Its name.
        name: String,
        /// Its dtype.
        actual: String,
        /// The dtype asked for.
        requested: String,
    },
    /// No output at this position.
    #[error("the model has {count} output(s); there is no output {index}")]
    NoSuchOutput {
        /// The position asked for.
        index: usize,
        /// The model's output count.
        count: usize,
    },
    /// Golden data is missing or unreadable.
    #[error("golden data {}: {reason}", path.display())]
    Golden {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The self-test produced outputs that differ from the golden ones.
    #[error("self-test failed on output {index} ({name:?}): {reason}")]
    SelfTest {
        /// Position of the output.
        index: usize,
        /// Its name.
        name: String,
        /// How it differs.
        reason: String,
    },
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Renders an engine (anyhow) error with its whole context chain on one line.
pub(crate) fn chain(e: &tract_core::prelude::TractError) -> String {
    format!("{e:#}")
}

//! The inference engine: tract behind a small, checked API.
//!
//! [`Model::load`] reads an ONNX model (feature `onnx`) or a tract NNEF archive,
//! refuses what the engine would mis-run, and optimizes it into a plan.
//! [`Model::session`] gives the per-thread state that runs it on caller-owned buffers;
//! [`Session::self_test`] checks it against golden outputs before a device serves it.
//!
//! ```no_run
//! use perch_runtime::engine::{Golden, Input, LoadOptions, Model, Tolerance};
//!
//! # fn main() -> Result<(), perch_runtime::engine::EngineError> {
//! let model = Model::load("models/kws-dscnn/model.onnx", &LoadOptions::new())?;
//! let mut session = model.session()?;
//! session.self_test(&Golden::load("models/kws-dscnn/golden")?, Tolerance::default())?;
//!
//! let mfcc = vec![0.0f32; 49 * 10];
//! let outputs = session.run(&[Input::f32(&[1, 1, 49, 10], &mfcc)])?;
//! let logits = outputs.f32(0)?;
//! # Ok(()) }
//! ```
//!
//! The values a caller holds are Perch's own types, so upgrading tract does not break
//! the callers: [`Outputs::view`] lends an output as a [`TensorView`] (shape and typed
//! slice), and golden values are [`Array`]s ([`read_npy`], [`Golden`]), compared with
//! [`compare`]. What does name tract's types (its `Tensor` and `TypedModel`, the graph
//! passes, the ONNX checks, the `.npy` parser) lives in [`internal`], which is
//! unstable and exists for Perch's own tools.

mod error;
mod golden;
mod guards;
pub mod internal;
mod metadata;
mod model;
mod npy;
#[cfg(feature = "onnx")]
mod onnx_check;
#[cfg(feature = "onnx")]
mod onnx_contrib;
mod ops;
mod session;
mod tensor;

pub use error::{EngineError, Result};
pub use golden::{compare, decode_npy, read_npy, Golden, OutputCheck, SelfTestReport, Tolerance};
pub use metadata::{Metadata, ModelFormat, NonFinitePolicy};
pub use model::{LoadOptions, Model, PERCH_KERNELS_ENV};
pub use ops::KernelNode;
pub use session::{Outputs, Session};
pub use tensor::{Array, DType, Dim, Input, TensorData, TensorInfo, TensorView};

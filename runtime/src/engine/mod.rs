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

mod error;
mod golden;
pub mod guards;
mod metadata;
mod model;
pub mod npy;
#[cfg(feature = "onnx")]
pub mod onnx_check;
#[cfg(feature = "onnx")]
pub mod onnx_contrib;
pub mod ops;
mod session;
mod tensor;

pub use error::{EngineError, Result};
pub use golden::{compare, decode_npy, read_npy, Golden, OutputCheck, SelfTestReport, Tolerance};
pub use metadata::{Metadata, ModelFormat, NonFinitePolicy};
pub use model::{nnef_framework, LoadOptions, Model, PERCH_KERNELS_ENV};
pub use ops::KernelNode;
pub use session::{Outputs, Session};
pub use tensor::{DType, Dim, Input, TensorData, TensorInfo};

/// The engine's tensor type, for callers that need more than slices.
pub use tract_core::prelude::Tensor;

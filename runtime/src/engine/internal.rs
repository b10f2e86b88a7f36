//! The engine's insides, for Perch's own tools: **unstable, not covered by semver**.
//!
//! Everything here names tract's types (tract is pinned, and every upgrade changes
//! them) or exposes a pass of the engine that only the host tools drive: converting
//! and quantizing models, inspecting the optimized graph, benchmarking tract's plan.
//! The public API in [`crate::engine`] ([`TensorView`], [`Array`], [`Golden`]) is what
//! applications should use; this module may change in any release.
//!
//! The extension traits put the tract-typed methods back on the public types for the
//! code that imports them:
//!
//! ```no_run
//! use perch_runtime::engine::internal::{ModelExt, OutputsExt};
//! use perch_runtime::engine::{LoadOptions, Model};
//!
//! # fn main() -> Result<(), perch_runtime::engine::EngineError> {
//! let model = Model::load("models/kws-dscnn/model.onnx", &LoadOptions::new())?;
//! println!("{} nodes", model.optimized_model().nodes().len());
//! # Ok(()) }
//! ```
//!
//! [`Golden`]: super::Golden

pub use tract_core::prelude::{Tensor, TypedModel};

pub use super::model::nnef_framework;

use super::error::Result;
use super::model::Model;
use super::session::Outputs;
use super::tensor::{Array, Input, TensorView};

/// The engine's operators and graph passes: Perch's kernel operators, the rewrite
/// that puts them in a graph ([`ops::rewrite`]) and the decluttering it runs first
/// ([`ops::declutter`]).
pub mod ops {
    pub use crate::engine::ops::*;
}

/// Limits on dimensions and index inputs the engine enforces at load and run time.
pub mod guards {
    pub use crate::engine::guards::*;
}

/// The strict `.npy` reader behind [`read_npy`](super::super::read_npy): its header
/// parser and limits.
pub mod npy {
    pub use crate::engine::npy::*;
}

/// The checks an ONNX model passes before tract reads it.
#[cfg(feature = "onnx")]
pub mod onnx_check {
    pub use crate::engine::onnx_check::*;
}

/// The ONNX Runtime contrib operators (`com.microsoft`) the engine reads.
#[cfg(feature = "onnx")]
pub mod onnx_contrib {
    pub use crate::engine::onnx_contrib::*;
}

/// Compares two engine tensors of any element type that converts to `f32`, as
/// [`compare`](super::compare) compares views.
///
/// # Errors
///
/// Why they cannot be compared (shapes differ, a type does not convert, NaN).
pub fn compare_tensors(got: &Tensor, want: &Tensor) -> std::result::Result<(f32, f32), String> {
    super::golden::compare_tensors(got, want)
}

/// A borrowed view of an engine tensor; `None` for an element type [`TensorView`]
/// does not hold (`f16`, strings) or a tensor not in host memory.
pub fn view(tensor: &Tensor) -> Option<TensorView<'_>> {
    TensorView::of_tensor(tensor)
}

/// The optimized graph of a [`Model`].
pub trait ModelExt {
    /// The optimized graph the engine runs.
    fn optimized_model(&self) -> &TypedModel;
}

impl ModelExt for Model {
    fn optimized_model(&self) -> &TypedModel {
        Model::optimized_model(self)
    }
}

/// The engine tensors of [`Outputs`].
pub trait OutputsExt {
    /// Output `index` as an engine tensor (any element type).
    ///
    /// # Errors
    ///
    /// [`EngineError::NoSuchOutput`](super::EngineError::NoSuchOutput).
    fn tensor(&self, index: usize) -> Result<&Tensor>;
}

impl OutputsExt for Outputs {
    fn tensor(&self, index: usize) -> Result<&Tensor> {
        Outputs::tensor(self, index)
    }
}

/// An [`Input`] borrowed from an engine tensor.
pub trait InputExt<'a>: Sized {
    /// A view of `tensor` as an input, when the engine takes its element type (f32, i8,
    /// u8, i32, i64).
    fn from_tensor(tensor: &'a Tensor) -> Option<Self>;
}

impl<'a> InputExt<'a> for Input<'a> {
    fn from_tensor(tensor: &'a Tensor) -> Option<Self> {
        TensorView::of_tensor(tensor)?.input()
    }
}

/// Conversions between an [`Array`] and the engine tensor it holds.
pub trait ArrayExt: Sized {
    /// An array holding `tensor`; `None` for an element type [`TensorView`] does not
    /// hold.
    fn from_tensor(tensor: Tensor) -> Option<Self>;
    /// The engine tensor the array holds.
    fn tensor(&self) -> &Tensor;
    /// The engine tensor the array holds, by value.
    fn into_tensor(self) -> Tensor;
}

impl ArrayExt for Array {
    fn from_tensor(tensor: Tensor) -> Option<Self> {
        Array::from_tensor(tensor)
    }

    fn tensor(&self) -> &Tensor {
        Array::tensor(self)
    }

    fn into_tensor(self) -> Tensor {
        Array::into_tensor(self)
    }
}

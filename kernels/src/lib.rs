//! Perch's own compute kernels, for the patterns tract runs slowly.
//!
//! The kernel layer is plain Rust over slices: no tract types, no allocation. The
//! engine's op layer (`engine::ops`) wraps a kernel in a tract operator, and a rewrite
//! pass puts those operators into a model's graph where a kernel covers the node.
//!
//! Each kernel family has one module (`f32_dwconv`, ...) holding:
//! - a geometry type that says what one call computes, checked on construction;
//! - a portable reference implementation, written for clarity, that every other
//!   implementation is tested against;
//! - microkernels for each instruction set, generated from one generic template over
//!   [`simd::F32Lanes`] (the same source compiled for NEON, SSE4.1 and AVX2+FMA, plus a
//!   portable instantiation), and C for 32-bit ARM NEON, whose Rust intrinsics are not
//!   stable;
//! - a table of variants, each with the instruction set it needs: [`Cpu::detect`] finds
//!   what this machine has, and planning picks the best variant it can run. The op
//!   layer names an operation and a shape; the table decides which code runs it.
//!
//! `PERCH_KERNEL_ISA` caps the instruction set planning may use (`portable`, `sse41`,
//! `avx2`, `avxvnni`, `neon`, ...: [`Isa::ALL`]), to measure a slower machine's path on a faster one.
//!
//! ```
//! use perch_kernels::{f32_dwconv::{DwConv, DwGeometry, Layout}, Activation, Cpu};
//!
//! // A 3x3 depthwise convolution over 2 channels of 4x4, stride 1, "same" padding.
//! let geo = DwGeometry::new(2, [4, 4], [3, 3], [1, 1], [1, 1, 1, 1]).unwrap();
//! let conv = DwConv::plan(geo, Layout::Chw, Activation::Relu, Cpu::detect()).unwrap();
//! let input = vec![1.0f32; 2 * 16];
//! let weights = vec![0.5f32; 2 * 9];
//! let bias = [0.0f32, -100.0];
//! let mut output = vec![0.0f32; 2 * 16];
//! let mut scratch = vec![0.0f32; conv.scratch_len()];
//! conv.run(1, &input, &weights, Some(&bias), &mut output, &mut scratch).unwrap();
//! assert_eq!(output[5], 4.5); // an inner point sees all 9 taps
//! assert_eq!(output[0], 2.0); // a corner sees 4
//! assert_eq!(output[16], 0.0); // ReLU of a negative sum
//! ```

pub mod f32_dwconv;
pub mod q8;
pub mod requant;
pub mod simd;
pub mod transpose;

mod cpu;

pub use cpu::{Cpu, Isa};

/// Why an operation is not covered by these kernels (its shape, its constants, or its
/// buffers): shown to users as the reason a node stayed on the engine's own operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// An element-wise function fused into a kernel's output: `min(max(x, lo), hi)`.
///
/// ReLU, ReLU6 and ONNX `Clip` are all clamps; `None` is the identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No activation.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, lo), hi)`, `lo <= hi` (ReLU6 is `Clamp(0, 6)`).
    Clamp(f32, f32),
}

impl Activation {
    /// The clamp bounds, infinite where the activation has none.
    pub fn bounds(self) -> (f32, f32) {
        match self {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Clamp(lo, hi) => (lo, hi),
        }
    }

    /// A clamp with these bounds, named as the graph would name it.
    ///
    /// `None` when the bounds are not a valid clamp (NaN, or `lo > hi`).
    pub fn from_bounds(lo: f32, hi: f32) -> Option<Activation> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return None;
        }
        Some(match (lo, hi) {
            (f32::NEG_INFINITY, f32::INFINITY) => Activation::None,
            (0.0, f32::INFINITY) => Activation::Relu,
            (lo, hi) => Activation::Clamp(lo, hi),
        })
    }

    /// Applies it to one value (NaN stays NaN).
    pub fn apply(self, x: f32) -> f32 {
        let (lo, hi) = self.bounds();
        if x.is_nan() {
            x
        } else {
            x.max(lo).min(hi)
        }
    }

    /// A short name for reports: `none`, `relu`, `relu6`, `clip(lo,hi)`.
    pub fn name(self) -> String {
        match self {
            Activation::None => "none".into(),
            Activation::Relu => "relu".into(),
            Activation::Clamp(lo, hi) if lo == 0.0 && hi == 6.0 => "relu6".into(),
            Activation::Clamp(lo, hi) => format!("clip({lo},{hi})"),
        }
    }
}

impl Eq for Activation {}

impl std::hash::Hash for Activation {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (lo, hi) = self.bounds();
        lo.to_bits().hash(state);
        hi.to_bits().hash(state);
    }
}

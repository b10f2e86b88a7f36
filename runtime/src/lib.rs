//! Perch's device runtime.
//!
//! The core (default features off) is `#![no_std]` and never allocates:
//! [`canary`] decides deterministically whether a device is in a rollout's cohort,
//! [`histogram`] records latencies in fixed log-spaced buckets, and [`wire`] encodes
//! the messages a device sends (metrics reports, health) with postcard.
//!
//! With the `std` feature, `engine` loads ONNX models (feature `onnx`) and tract
//! NNEF archives into optimized plans and runs them on caller-owned buffers, and
//! `bundle` parses, verifies and writes the signed model bundles devices install.
//! The engine's public API holds only Perch's own types (`TensorView`, `Array`,
//! `Golden`), so a tract upgrade is not a breaking change for its users; what names
//! tract's types is in `engine::internal`, unstable and meant for Perch's own tools.
//!
//! ```
//! use core::time::Duration;
//! use perch_runtime::{canary, histogram::Histogram};
//!
//! let percent = canary::Percent::from_whole(10).unwrap();
//! let _in_canary = canary::in_cohort(b"pi-kitchen-01", b"rollout-7", percent);
//!
//! let mut h = Histogram::new();
//! h.record(Duration::from_micros(850));
//! assert_eq!(h.count(), 1);
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]

pub mod canary;
pub mod error;
pub mod histogram;
pub mod slo;
pub mod units;
pub mod wire;

#[cfg(feature = "std")]
pub mod engine;

/// Perch's compute kernels (the `perch-kernels` crate), which the engine's operators
/// run.
#[cfg(feature = "std")]
pub use perch_kernels as kernels;

#[cfg(feature = "std")]
pub mod bundle;

#[cfg(feature = "std")]
pub mod fsio;

#[cfg(feature = "std")]
pub mod model_files;

#[cfg(feature = "std")]
pub mod repository_command;
#[cfg(feature = "std")]
pub mod rollout;

/// Helpers for the unit tests of several modules.
#[cfg(all(test, feature = "onnx"))]
pub(crate) mod testing {
    use std::path::Path;

    use tract_onnx::prelude::{Framework, InferenceModelExt};
    use tract_onnx_opl::WithOnnx;

    /// The ONNX model at `path`, decluttered and written as an (uncompressed) NNEF tar
    /// with tract's ONNX operator extensions, as `perch convert` writes it.
    pub(crate) fn nnef_tar(path: &Path) -> Vec<u8> {
        let typed = tract_onnx::onnx()
            .model_for_path(path)
            .and_then(|m| m.into_typed())
            .and_then(|m| m.into_decluttered())
            .unwrap();
        let mut tar = Vec::new();
        tract_nnef::nnef()
            .with_onnx()
            .write_to_tar(&typed, &mut tar)
            .unwrap();
        tar
    }
}

pub use error::Error;

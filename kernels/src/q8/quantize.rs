//! Float to 8-bit quantization, `y = saturate(round(x · inverse_scale) + zero_point)`:
//! the engine's `QuantizeLinear`, which quantizes every integer graph's float input and
//! whatever a float operator hands back to the integer kernels.
//!
//! # Arithmetic
//! Exactly the engine's: `x` times the reciprocal of ONNX's scale (the engine's
//! `QuantizeLinear` multiplies by it too) in one IEEE single-precision multiplication,
//! rounded half to even; the conversion to an integer saturates (NaN gives 0, as Rust's
//! `as` does), the zero point is added and the sum saturated to the output type. Every
//! variant agrees with the reference bit for bit, special values included. (The engine
//! adds the zero point without saturating, which overflows only for a product beyond
//! ±2^31, where its result wraps; here it saturates, as ONNX Runtime does.)
//!
//! An `i8` output is computed in an unsigned form, as every 8-bit kernel here does: its
//! zero point raised by 128, the byte's top bit flipped on the way out.

use super::{ElementWise, QType, Unsupported};
use crate::{Cpu, Isa};
pub use job::Job;

/// How a float becomes a stored 8-bit value: multiplied by `inverse_scale` (the
/// reciprocal of ONNX's scale, which the engine's `QuantizeLinear` multiplies by),
/// rounded, offset by `zero_point`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantize {
    /// The stored type.
    pub dtype: QType,
    /// Its zero point, in the type's range.
    pub zero_point: i32,
    /// The factor, finite and positive.
    pub inverse_scale: f32,
}

impl Quantize {
    /// Checks the zero point against the type and the factor for being positive and
    /// finite.
    pub fn check(&self, what: &str) -> Result<(), Unsupported> {
        check(
            what,
            self.dtype,
            self.zero_point,
            "inverse scale",
            self.inverse_scale,
        )
    }
}

/// Checks a zero point against its type and a scale (or inverse scale) for being
/// positive and finite.
pub(super) fn check(
    what: &str,
    dtype: QType,
    zero_point: i32,
    scale: &str,
    v: f32,
) -> Result<(), Unsupported> {
    let (lo, hi) = dtype.range();
    if !(v.is_finite() && v > 0.0) {
        return Err(Unsupported(format!(
            "{what} {scale} {v} (must be positive and finite)"
        )));
    }
    if !(lo..=hi).contains(&zero_point) {
        return Err(Unsupported(format!(
            "{what} zero point {zero_point} out of {} range",
            dtype.name()
        )));
    }
    Ok(())
}

/// The unsigned form of a type: `(flip, zero point of the unsigned form)`.
pub(super) fn unsigned(dtype: QType, zero_point: i32) -> (u8, i32) {
    match dtype {
        QType::U8 => (0, zero_point),
        QType::I8 => (0x80, zero_point + 128),
    }
}

/// One implementation: `run` computes `y[i]` for the `n` elements.
pub type Variant = ElementWise<unsafe fn(&Job, *const f32, *mut u8, usize)>;

/// Every variant this build has, best first.
pub static VARIANTS: &[Variant] = &[
    #[cfg(target_arch = "aarch64")]
    Variant {
        name: "q8_quantize_neon",
        isa: Isa::Aarch64Neon,
        run: neon::quantize,
    },
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "q8_quantize_sse41",
        isa: Isa::Sse41,
        run: sse41::quantize,
    },
    Variant {
        name: "q8_quantize_portable",
        isa: Isa::Portable,
        run: portable,
    },
];

/// A planned quantization.
#[derive(Debug, Clone)]
pub struct QQuantize {
    output: Quantize,
    job: Job,
    variant: &'static Variant,
}

impl PartialEq for QQuantize {
    fn eq(&self, o: &Self) -> bool {
        self.output == o.output && self.variant.name == o.variant.name
    }
}

impl QQuantize {
    /// Plans `y = q(x)` on the best variant `cpu` runs.
    pub fn plan(output: Quantize, cpu: Cpu) -> Result<QQuantize, Unsupported> {
        let variant = VARIANTS
            .iter()
            .find(|v| cpu.has(v.isa))
            .ok_or_else(|| Unsupported("no quantization kernel for this CPU".into()))?;
        Self::plan_on(output, variant)
    }

    /// Plans on one given variant (tests compare them).
    pub fn plan_on(output: Quantize, variant: &'static Variant) -> Result<QQuantize, Unsupported> {
        output.check("output")?;
        let (flip, zero_point) = unsigned(output.dtype, output.zero_point);
        Ok(QQuantize {
            output,
            job: Job {
                inverse_scale: output.inverse_scale,
                zero_point,
                flip,
            },
            variant,
        })
    }

    /// The quantization, as planned.
    pub fn output(&self) -> Quantize {
        self.output
    }

    /// The variant that runs it.
    pub fn variant(&self) -> &'static Variant {
        self.variant
    }

    /// Quantizes `x` into `y`, element by element. Fails, touching nothing, when the
    /// lengths differ.
    // Never inlined: see `q8::im2col::im2col`.
    #[inline(never)]
    pub fn run(&self, x: &[f32], y: &mut [u8]) -> Result<(), Unsupported> {
        if x.len() != y.len() {
            return Err(Unsupported(format!(
                "{} input values for {} output bytes",
                x.len(),
                y.len()
            )));
        }
        // SAFETY: both slices hold `y.len()` elements.
        unsafe { (self.variant.run)(&self.job, x.as_ptr(), y.as_mut_ptr(), y.len()) };
        Ok(())
    }
}

/// The reference, in plain Rust.
///
/// # Safety
/// `x` and `y` must hold `n` elements.
unsafe fn portable(job: &Job, x: *const f32, y: *mut u8, n: usize) {
    for i in 0..n {
        *y.add(i) = job.one(*x.add(i));
    }
}

mod job;

#[cfg(target_arch = "aarch64")]
pub(in crate::q8) mod neon;

#[cfg(target_arch = "x86_64")]
pub(in crate::q8) mod sse41;

#[cfg(test)]
mod tests;

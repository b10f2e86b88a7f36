//! Element-wise addition of two 8-bit quantized tensors into a third: the residual
//! connection of MobileNetV2-style networks, which quantizers write as
//! `QuantizeLinear(DequantizeLinear(a) + DequantizeLinear(b))`.
//!
//! # Arithmetic
//! Exactly the float graph's, so that a model gives the same bytes with or without the
//! kernel: each operand is dequantized in `f32` as the engine's `DequantizeLinear` does,
//! `(a − za) · sa`; the two are added; the sum is multiplied by the reciprocal of the
//! output scale (the engine's `QuantizeLinear` multiplies by it too), rounded half to
//! even, offset by the output's zero point and saturated to the output type. Every step
//! is one IEEE single-precision operation in the same order in every variant (no fused
//! multiply-add), so the variants agree bit for bit with the reference and with the
//! float graph.
//!
//! Each byte is read in an unsigned form: an `i8` value has its top bit flipped (`a +
//! 128`) and its zero point raised by 128, which leaves `a − za` unchanged; an `i8`
//! output is computed as `u8` with its zero point raised by 128 and flipped back. One
//! kernel then serves every combination of types.
//!
//! Layouts do not matter to an element-wise operation: the engine gives the kernel
//! three tensors in the same order.

pub use super::quantize::Quantize;
use super::quantize::{check, unsigned};
use super::{ElementWise, QType, Unsupported};
use crate::{Cpu, Isa};
pub use job::Job;

/// One operand's type, zero point and scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Operand {
    /// The stored type.
    pub dtype: QType,
    /// Its zero point, in the type's range.
    pub zero_point: i32,
    /// Its scale, finite and positive.
    pub scale: f32,
}

impl Operand {
    fn check(&self, what: &str) -> Result<(), Unsupported> {
        check(what, self.dtype, self.zero_point, "scale", self.scale)
    }
}

/// One implementation: `run` computes `y[i]` for the `n` elements.
pub type Variant = ElementWise<unsafe fn(&Job, *const u8, *const u8, *mut u8, usize)>;

/// Every variant this build has, best first.
pub static VARIANTS: &[Variant] = &[
    #[cfg(target_arch = "aarch64")]
    Variant {
        name: "q8_add_neon",
        isa: Isa::Aarch64Neon,
        run: neon::add,
    },
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "q8_add_sse41",
        isa: Isa::Sse41,
        run: sse41::add,
    },
    Variant {
        name: "q8_add_portable",
        isa: Isa::Portable,
        run: portable,
    },
];

/// A planned addition of two quantized tensors.
#[derive(Debug, Clone)]
pub struct QAdd {
    a: Operand,
    b: Operand,
    output: Quantize,
    job: Job,
    variant: &'static Variant,
}

impl PartialEq for QAdd {
    fn eq(&self, o: &Self) -> bool {
        (self.a, self.b, self.output) == (o.a, o.b, o.output) && self.variant.name == o.variant.name
    }
}

impl QAdd {
    /// Plans `y = q(dq(a) + dq(b))` on the best variant `cpu` runs.
    pub fn plan(a: Operand, b: Operand, output: Quantize, cpu: Cpu) -> Result<QAdd, Unsupported> {
        let variant = VARIANTS
            .iter()
            .find(|v| cpu.has(v.isa))
            .ok_or_else(|| Unsupported("no addition kernel for this CPU".into()))?;
        Self::plan_on(a, b, output, variant)
    }

    /// Plans on one given variant (tests compare them).
    pub fn plan_on(
        a: Operand,
        b: Operand,
        output: Quantize,
        variant: &'static Variant,
    ) -> Result<QAdd, Unsupported> {
        a.check("first input")?;
        b.check("second input")?;
        output.check("output")?;
        let inverse_scale = output.inverse_scale;
        // The largest sum's magnitude in output steps: under 2^24, every f32 step is
        // exact enough for the conversion to integers not to saturate anywhere.
        let reach = (255.0 * a.scale as f64 + 255.0 * b.scale as f64) * inverse_scale as f64;
        if reach >= (1 << 24) as f64 {
            return Err(Unsupported(format!(
                "input scales {} and {} span {reach:.0} output steps (at most 2^24)",
                a.scale, b.scale
            )));
        }
        let (a_flip, a_zero_point) = unsigned(a.dtype, a.zero_point);
        let (b_flip, b_zero_point) = unsigned(b.dtype, b.zero_point);
        let (y_flip, zero_point) = unsigned(output.dtype, output.zero_point);
        Ok(QAdd {
            a,
            b,
            output,
            job: Job {
                a_flip,
                a_zero_point,
                a_scale: a.scale,
                b_flip,
                b_zero_point,
                b_scale: b.scale,
                inverse_scale,
                zero_point,
                y_flip,
            },
            variant,
        })
    }

    /// The operands, as planned.
    pub fn operands(&self) -> [Operand; 2] {
        [self.a, self.b]
    }

    /// The output's quantization, as planned.
    pub fn output(&self) -> Quantize {
        self.output
    }

    /// The variant that runs it.
    pub fn variant(&self) -> &'static Variant {
        self.variant
    }

    /// Adds `a` and `b` into `y`, element by element. Fails, touching nothing, when the
    /// lengths differ.
    // Never inlined: see `q8::im2col::im2col`.
    #[inline(never)]
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8]) -> Result<(), Unsupported> {
        if a.len() != y.len() || b.len() != y.len() {
            return Err(Unsupported(format!(
                "{} and {} input bytes for {} output bytes",
                a.len(),
                b.len(),
                y.len()
            )));
        }
        // SAFETY: the three slices hold `y.len()` bytes each.
        unsafe { (self.variant.run)(&self.job, a.as_ptr(), b.as_ptr(), y.as_mut_ptr(), y.len()) };
        Ok(())
    }
}

/// The reference, in plain Rust.
///
/// # Safety
/// `a`, `b` and `y` must hold `n` bytes.
unsafe fn portable(job: &Job, a: *const u8, b: *const u8, y: *mut u8, n: usize) {
    for i in 0..n {
        *y.add(i) = job.one(*a.add(i), *b.add(i));
    }
}

mod job;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "x86_64")]
mod sse41;

#[cfg(test)]
mod tests;

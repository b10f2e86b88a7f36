//! Requantization: an `i32` accumulator times a real multiplier, rounded to an integer.
//!
//! An integer convolution accumulates `Σ (x − zx)·w` in `i32`; its output is
//! `zy + round(acc · M)` with `M = sx · sw / sy` (input, weight and output scales),
//! saturated to the output type. Perch computes it as ONNX Runtime's MLAS and XNNPACK's
//! `fp32` kernels do: the accumulator converted to `f32`, one `f32` multiplication by `M`
//! held as an `f32` ([`Scale`]), and a conversion back that rounds half to even, as ONNX
//! specifies:
//!
//! `requantize(acc) = round_half_even(f32(acc) · M)`, saturated to `i32`
//!
//! On aarch64 that is `SCVTF`, `FMUL`, `FCVTNS`: three instructions per four lanes where
//! the Q31 fixed-point form with one exact rounding (`SMULL`, `SMULL2`, two `SRSHL`, two
//! narrowings) took six, and the gemmlowp/TFLite `SQRDMULH` form, though as short, rounds
//! twice. The Q31 form rounded ties up where ONNX rounds them to even, and R4's QDQ file
//! came out 4 output steps from ONNX Runtime's fused run; in `f32` it is 2, the rest
//! coming from the residual additions, which MLAS computes in its own fixed point. The
//! convolutions and matrix products are ONNX Runtime's own arithmetic: the two agree
//! wherever the scale is the same `f32` ([`Scale::of_quantization`]).
//!
//! `f32(acc)` is exact up to `2^24`; beyond it ONNX Runtime rounds the same way. On x86
//! `CVTPS2DQ` turns an overflow into `i32::MIN` whatever its sign, so the x86 kernels clamp
//! in `f32` to the output's bounds first, as MLAS does (the same result: rounding is
//! monotonic and the bounds are integers).
//!
//! [`Scale::apply`] is the definition every kernel matches bit for bit.

/// A real multiplier `M` as an `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale(f32);

impl Scale {
    /// `m` as an `f32`, or `None` when it is not finite (there or after rounding to `f32`).
    pub fn new(m: f64) -> Option<Scale> {
        let s = m as f32;
        s.is_finite().then_some(Scale(s))
    }

    /// `sx · sw / sy` computed in `f32` in that order, as ONNX Runtime computes a
    /// quantized convolution's or matrix product's output scale, so that both round the
    /// same products the same way; `None` when not finite.
    pub fn of_quantization(sx: f32, sw: f32, sy: f32) -> Option<Scale> {
        let s = sx * sw / sy;
        s.is_finite().then_some(Scale(s))
    }

    /// An `f32` as a scale (`None` when not finite).
    pub fn from_f32(s: f32) -> Option<Scale> {
        s.is_finite().then_some(Scale(s))
    }

    /// The multiplier.
    pub fn value(self) -> f32 {
        self.0
    }

    /// `round_half_even(f32(acc) · M)`, saturated to `i32` (see the module documentation).
    #[inline(always)]
    pub fn apply(self, acc: i32) -> i32 {
        // `as` saturates (and the product is never NaN: `M` is finite).
        (acc as f32 * self.0).round_ties_even() as i32
    }
}

impl Eq for Scale {}

impl std::hash::Hash for Scale {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unusable_multipliers_are_refused() {
        assert_eq!(Scale::new(f64::NAN), None);
        assert_eq!(Scale::new(f64::INFINITY), None);
        assert_eq!(Scale::new(1e300), None, "finite in f64 but not in f32");
        assert_eq!(Scale::of_quantization(1e30, 1e30, 1e-30), None);
        assert_eq!(Scale::from_f32(f32::NAN), None);
        assert_eq!(Scale::new(0.0).unwrap().apply(i32::MIN), 0);
    }

    #[test]
    fn ties_round_to_even_and_large_products_saturate() {
        let half = Scale::new(0.5).unwrap();
        assert_eq!(half.apply(5), 2); // 2.5 to 2
        assert_eq!(half.apply(7), 4); // 3.5 to 4
        assert_eq!(half.apply(-5), -2);
        assert_eq!(half.apply(-7), -4);
        let big = Scale::new(1e9).unwrap();
        assert_eq!(big.apply(1_000_000), i32::MAX);
        assert_eq!(big.apply(-1_000_000), i32::MIN);
    }

    #[test]
    fn the_scale_is_computed_as_onnx_runtime_computes_it() {
        // A quarter of random scale triples give a different f32 in ONNX Runtime's f32
        // order than from the f64 quotient rounded once; this is one of them.
        let (sx, sw, sy) = (0.025_581_395f32, 0.049_593_966f32, 0.045_004_16f32);
        let ort = sx * sw / sy;
        let once = (sx as f64 * sw as f64 / sy as f64) as f32;
        assert_ne!(ort, once);
        assert_eq!(Scale::of_quantization(sx, sw, sy).unwrap().value(), ort);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Within `2^24`, where `f32(acc)` is exact, `apply` is the product rounded
        /// half to even to within the product's own `f32` rounding.
        #[test]
        fn apply_rounds_the_product_half_to_even(
            acc in -(1i32 << 24)..(1i32 << 24),
            m in prop_oneof![1e-6f64..1.0, 1.0f64..64.0, -1.0f64..-1e-6],
        ) {
            let s = Scale::new(m).unwrap();
            let exact = acc as f64 * s.value() as f64;
            let got = s.apply(acc) as f64;
            let window = exact.abs() * 2f64.powi(-23) + 1e-9;
            prop_assert!((got - exact).abs() <= 0.5 + window, "acc {acc} m {m}: got {got}, exact {exact}");
            if (exact - exact.floor() - 0.5).abs() > window {
                prop_assert_eq!(got, exact.round(), "acc {} m {}", acc, m);
            }
        }

        #[test]
        fn apply_never_panics_on_any_accumulator(acc in any::<i32>(), m in -1e6f64..1e6) {
            if let Some(s) = Scale::new(m) {
                let _ = s.apply(acc);
            }
        }
    }
}

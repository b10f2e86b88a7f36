//! Requantization: an `i32` accumulator times a real multiplier, rounded, in integers.
//!
//! An integer convolution accumulates `Σ (x − zx)·w` in `i32`; its output is
//! `zy + round(acc · M)` with `M = sx · sw / sy` (input, weight and output scales),
//! saturated to the output type. As in gemmlowp and TFLite, `M` is held as a Q31
//! fixed-point multiplier and a power of two, chosen once per output channel when a
//! model is loaded. Unlike their `SQRDMULH` form, which rounds twice (the product to
//! `2^−right` of a step, then to a step), Perch multiplies into 64 bits and rounds once:
//!
//! `round(acc · M) = (acc · multiplier + 2^(shift − 1)) >> shift`, `shift = 31 − exponent`
//!
//! (`SMULL` then `SRSHL` on aarch64 and armv7, `PMULDQ` and 64-bit shifts on x86). With a
//! 31-bit mantissa the product is exact and the result is ONNX's `round(acc · M)` except
//! at exact ties, which round up where ONNX rounds to even: rounding twice instead flips
//! about one output in a thousand against ONNX Runtime at every layer, and those flips
//! compound over a deep network.
//!
//! [`Requant::apply`] is the definition every kernel matches bit for bit.

/// A real multiplier `M ≈ multiplier · 2^(exponent − 31)`, `multiplier` in
/// `[2^30, 2^31)` (or its negation, or zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Requant {
    /// The Q31 mantissa.
    pub multiplier: i32,
    /// The power of two, `−31 ..= 30`.
    pub exponent: i32,
}

impl Requant {
    /// The fixed-point form of `m`, or `None` when `m` is not finite or is too large to
    /// hold (`|m| ≥ 2^30`). Multipliers below `2^−32` in magnitude become zero: every
    /// accumulator an `i32` holds rounds to zero with them.
    pub fn new(m: f64) -> Option<Requant> {
        if !m.is_finite() {
            return None;
        }
        if m == 0.0 || m.abs() < (2f64).powi(-32) {
            return Some(Requant {
                multiplier: 0,
                exponent: 0,
            });
        }
        // m = q · 2^e with |q| in [0.5, 1).
        let mut e = m.abs().log2().floor() as i32 + 1;
        let mut q = m / (2f64).powi(e);
        if q.abs() >= 1.0 {
            q /= 2.0;
            e += 1;
        }
        if q.abs() < 0.5 {
            q *= 2.0;
            e -= 1;
        }
        let mut multiplier = (q * (1u64 << 31) as f64).round() as i64;
        if multiplier.abs() == 1 << 31 {
            multiplier /= 2;
            e += 1;
        }
        if e > 30 {
            return None;
        }
        if e < -31 {
            // The shift would pass 62 bits: fold the excess into the mantissa.
            multiplier >>= -31 - e;
            e = -31;
        }
        Some(Requant {
            multiplier: multiplier as i32,
            exponent: e,
        })
    }

    /// The multiplier this represents.
    pub fn value(&self) -> f64 {
        self.multiplier as f64 * (2f64).powi(self.exponent - 31)
    }

    /// The right shift after the 64-bit product: `31 − exponent`, `1 ..= 62`.
    pub fn shift(&self) -> u32 {
        (31 - self.exponent) as u32
    }

    /// `round(acc · M)`, ties up, saturated to `i32` (see the module documentation).
    pub fn apply(&self, acc: i32) -> i32 {
        let product = acc as i64 * self.multiplier as i64;
        let shift = self.shift();
        let rounded = (product + (1i64 << (shift - 1))) >> shift;
        rounded.clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn multipliers_round_trip_to_within_one_part_in_two_to_the_thirty() {
        for m in [
            1.0,
            0.5,
            0.75,
            1e-3,
            3.1e-7,
            12345.678,
            -0.25,
            2f64.powi(-31),
            0.999_999_999_9,
        ] {
            let r = Requant::new(m).unwrap();
            assert!(
                (r.value() - m).abs() <= m.abs() * 2f64.powi(-30),
                "{m}: {r:?}"
            );
            assert!((-31..=30).contains(&r.exponent), "{m}: {r:?}");
            assert!(r.multiplier.unsigned_abs() >= 1 << 30, "{m}: {r:?}");
            assert!((1..=62).contains(&r.shift()), "{m}: {r:?}");
        }
    }

    #[test]
    fn unusable_multipliers_are_refused_and_tiny_ones_are_zero() {
        assert_eq!(Requant::new(f64::NAN), None);
        assert_eq!(Requant::new(f64::INFINITY), None);
        assert_eq!(Requant::new(2f64.powi(31)), None);
        assert_eq!(Requant::new(1e-12).unwrap().apply(i32::MAX), 0);
        assert_eq!(Requant::new(0.0).unwrap().apply(i32::MIN), 0);
    }

    #[test]
    fn ties_round_up_and_large_products_saturate() {
        let half = Requant::new(0.5).unwrap();
        assert_eq!(half.apply(5), 3); // 2.5 up
        assert_eq!(half.apply(-5), -2); // -2.5 up
        assert_eq!(half.apply(-6), -3);
        let big = Requant::new(1e9).unwrap();
        assert_eq!(big.apply(1_000_000), i32::MAX);
        assert_eq!(big.apply(-1_000_000), i32::MIN);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// `apply` is `round(acc · m)` to within the multiplier's own representation
        /// error: exactly so wherever `acc · m` is not within that error of a tie.
        #[test]
        fn apply_rounds_the_exact_product_once(
            acc in -(1i32 << 24)..(1i32 << 24),
            m in prop_oneof![1e-6f64..1.0, 1.0f64..64.0, -1.0f64..-1e-6],
        ) {
            let r = Requant::new(m).unwrap();
            let exact = acc as f64 * m;
            let got = r.apply(acc) as f64;
            let window = exact.abs() * 2f64.powi(-30) + 1e-9;
            prop_assert!((got - exact).abs() <= 0.5 + window, "acc {acc} m {m}: got {got}, exact {exact}");
            if (exact - exact.floor() - 0.5).abs() > window {
                prop_assert_eq!(got, exact.round(), "acc {} m {}", acc, m);
            }
        }

        #[test]
        fn apply_never_panics_on_any_accumulator(acc in any::<i32>(), m in -1e6f64..1e6) {
            if let Some(r) = Requant::new(m) {
                let _ = r.apply(acc);
            }
        }
    }
}

//! The statistics `perch experiment status` reports: the standard normal distribution
//! through the complementary error function, and the two-proportion z-test.

/// The complementary error function, `erfc(x) = 1 − erf(x)`, with a relative error
/// below 1.2 × 10⁻⁷ for every `x` (Numerical Recipes' Chebyshev fit, `erfcc`): the
/// relative bound holds in the tails too, so small p-values keep their digits.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let tail = t * poly.exp();
    if x >= 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

/// The standard normal cumulative distribution function, `Φ(z) = erfc(−z / √2) / 2`.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// A two-proportion z-test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ZTest {
    /// `(p₁ − p₂) / SE` with the pooled standard error.
    pub z: f64,
    /// The two-sided p-value, `2 (1 − Φ(|z|)) = erfc(|z| / √2)`.
    pub p_value: f64,
}

/// Tests whether `x1` successes of `n1` and `x2` of `n2` come from the same proportion:
/// `z = (x1/n1 − x2/n2) / sqrt(p̂ (1 − p̂) (1/n1 + 1/n2))` with the pooled
/// `p̂ = (x1 + x2) / (n1 + n2)`, and its two-sided p-value. `None` when a sample is
/// empty or a count exceeds its sample; when both proportions are 0 or both 1 there is
/// no evidence of a difference (`z = 0`, `p = 1`).
pub fn two_proportion(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<ZTest> {
    if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 {
        return None;
    }
    let (x1, n1, x2, n2) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return Some(ZTest {
            z: 0.0,
            p_value: 1.0,
        });
    }
    let z = (x1 / n1 - x2 / n2) / se;
    let p_value = erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0);
    Some(ZTest { z, p_value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, relative: f64) -> bool {
        (got - want).abs() <= relative * want.abs()
    }

    /// Reference values from Python's `math.erfc` (the C library's, accurate to a few
    /// ulps): `0.5 * math.erfc(-z / math.sqrt(2))`.
    #[test]
    fn the_normal_cdf_matches_reference_values_in_the_body_and_the_tails() {
        let cases = [
            (0.0, 0.5),
            (1.96, 0.975_002_104_851_779_5),
            (-3.0, 0.001_349_898_031_630_095_7),
            (-6.0, 9.865_876_450_377_012e-10),
        ];
        for (z, want) in cases {
            let got = normal_cdf(z);
            assert!(close(got, want, 2e-7), "Φ({z}) = {got}, want {want}");
        }
        assert!(close(erfc(0.5), 0.479_500_122_186_953_5, 2e-7));
        assert!(close(erfc(-1.0), 1.842_700_792_949_715, 2e-7));
        assert!(erfc(f64::NAN).is_nan());
        assert_eq!(normal_cdf(f64::INFINITY), 1.0);
        assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
    }

    /// Reference values computed with the pooled formula and `math.erfc` in Python.
    #[test]
    fn the_two_proportion_test_matches_reference_values() {
        let cases = [
            (
                (20, 100, 10, 100),
                1.980_295_085_953_348_8,
                0.047_670_380_656_161_44,
            ),
            (
                (30, 1000, 10, 1000),
                3.194_382_824_999_699_3,
                0.001_401_301_580_960_216_8,
            ),
            (
                (5, 10_000, 7, 10_000),
                -0.577_523_552_251_660_5,
                0.563_585_833_043_945_8,
            ),
        ];
        for ((x1, n1, x2, n2), z, p) in cases {
            let test = two_proportion(x1, n1, x2, n2).unwrap();
            assert!(close(test.z, z, 1e-12), "{test:?}");
            assert!(close(test.p_value, p, 2e-7), "{test:?} want p {p}");
        }
        assert_eq!(
            two_proportion(0, 50, 0, 80),
            Some(ZTest {
                z: 0.0,
                p_value: 1.0
            })
        );
        assert_eq!(two_proportion(1, 0, 1, 10), None);
        assert_eq!(two_proportion(11, 10, 1, 10), None);
    }
}

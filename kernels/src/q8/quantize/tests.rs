//! Every variant against the portable reference, bit for bit, and the reference against
//! the engine's `QuantizeLinear` arithmetic (`quantize_linear_f32_u8`/`_i8` in tract),
//! special values and saturated ends included.

use proptest::prelude::*;

use super::*;

/// The engine's formula for one value, with the stored type as it is (the zero point
/// added in 64 bits, where the engine's 32-bit addition cannot overflow).
fn engine(q: Quantize, x: f32) -> u8 {
    let (lo, hi) = q.dtype.range();
    let v = ((x * q.inverse_scale).round_ties_even() as i32) as i64 + q.zero_point as i64;
    v.clamp(lo as i64, hi as i64) as i32 as u8
}

fn quantize(dtype: QType, zero_point: i32, inverse_scale: f32) -> Quantize {
    Quantize {
        dtype,
        zero_point,
        inverse_scale,
    }
}

/// Values that test every edge: ties at each parity, the ends of both types, values
/// beyond the 16-bit and 32-bit ranges, signed zeros, infinities and NaN.
fn edges() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e10,
        -1e10,
        65535.5,
        -65536.5,
        32767.5,
        -32768.5,
        0.49999997,
        -0.49999997,
    ];
    for k in -300..300 {
        v.push(k as f32 * 0.5);
        v.push(k as f32 * 0.5 + f32::EPSILON);
    }
    v
}

fn check(q: Quantize, x: &[f32]) {
    let expected: Vec<u8> = x.iter().map(|v| engine(q, *v)).collect();
    let cpu = Cpu::detect();
    for variant in VARIANTS.iter().filter(|v| cpu.has(v.isa)) {
        let mut out = vec![0u8; x.len()];
        QQuantize::plan_on(q, variant)
            .unwrap()
            .run(x, &mut out)
            .unwrap();
        for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
            assert_eq!(
                got, want,
                "{} for {q:?}: x[{i}] = {} gave {got}, the engine {want}",
                variant.name, x[i]
            );
        }
    }
}

#[test]
fn every_variant_gives_the_engines_bytes_at_the_edges() {
    for dtype in [QType::U8, QType::I8] {
        let (lo, hi) = dtype.range();
        for zero_point in [lo, 0.clamp(lo, hi), 3.clamp(lo, hi), hi] {
            for inverse_scale in [1.0, 0.5, 2.0, 127.0 / 6.0, 1e-3] {
                check(quantize(dtype, zero_point, inverse_scale), &edges());
            }
        }
    }
}

proptest! {
    #[test]
    fn every_variant_gives_the_engines_bytes(
        x in prop::collection::vec(-400f32..400.0, 0..100),
        signed in any::<bool>(),
        zero in 0i32..256,
        inverse_scale in 0.01f32..50.0,
    ) {
        let dtype = if signed { QType::I8 } else { QType::U8 };
        let zero_point = dtype.range().0 + zero;
        check(quantize(dtype, zero_point, inverse_scale), &x);
    }
}

#[test]
fn unusable_parameters_and_lengths_are_refused() {
    let variant = &VARIANTS[VARIANTS.len() - 1];
    for (q, what) in [
        (quantize(QType::U8, 256, 1.0), "zero point"),
        (quantize(QType::I8, 128, 1.0), "zero point"),
        (quantize(QType::U8, 0, 0.0), "inverse scale"),
        (quantize(QType::U8, 0, f32::NAN), "inverse scale"),
        (quantize(QType::U8, 0, f32::INFINITY), "inverse scale"),
    ] {
        let err = QQuantize::plan_on(q, variant).unwrap_err();
        assert!(err.0.contains(what), "{q:?}: {err}");
    }
    let planned = QQuantize::plan_on(quantize(QType::U8, 0, 1.0), variant).unwrap();
    let mut out = [7u8; 3];
    assert!(planned.run(&[1.0; 4], &mut out).is_err());
    assert_eq!(out, [7; 3], "a refused run writes nothing");
}

//! Every variant against the portable reference, bit for bit; the reference against
//! the float graph's arithmetic (dequantize, add, quantize as the engine's operators
//! do), bit for bit.

use proptest::prelude::*;

use super::*;
use crate::q8::test_bytes as bytes;

fn qtype(seed: u64) -> QType {
    if seed.is_multiple_of(2) {
        QType::U8
    } else {
        QType::I8
    }
}

/// A zero point within the type's range.
fn zero_point(dtype: QType, seed: u64) -> i32 {
    let (lo, hi) = dtype.range();
    lo + ((seed % 997) as i32 * 37).rem_euclid(hi - lo + 1)
}

fn operands(seed: u64) -> (Operand, Operand, Quantize) {
    let [ta, tb, ty] = [qtype(seed), qtype(seed / 2), qtype(seed / 4)];
    let scale = |k: u64| 1e-3 * (1.0 + ((seed / k) % 200) as f32);
    (
        Operand {
            dtype: ta,
            zero_point: zero_point(ta, seed),
            scale: scale(3),
        },
        Operand {
            dtype: tb,
            zero_point: zero_point(tb, seed / 5),
            scale: scale(7),
        },
        Quantize {
            dtype: ty,
            zero_point: zero_point(ty, seed / 11),
            inverse_scale: scale(13).recip(),
        },
    )
}

/// The float graph: `DequantizeLinear` twice, `Add`, `QuantizeLinear`, with the
/// stored types as they are.
fn float_graph(a: Operand, b: Operand, y: Quantize, xa: u8, xb: u8) -> u8 {
    let value = |t: QType, x: u8| match t {
        QType::U8 => x as i32,
        QType::I8 => x as i8 as i32,
    };
    let fa = (value(a.dtype, xa) - a.zero_point) as f32 * a.scale;
    let fb = (value(b.dtype, xb) - b.zero_point) as f32 * b.scale;
    let (lo, hi) = y.dtype.range();
    let q = ((fa + fb) * y.inverse_scale).round_ties_even() as i32 + y.zero_point;
    q.clamp(lo, hi) as u8
}

fn check(n: usize, seed: u64) {
    let (a, b, y) = operands(seed);
    let xa = bytes(n, seed + 1);
    let xb = bytes(n, seed + 2);
    let expected: Vec<u8> = xa
        .iter()
        .zip(&xb)
        .map(|(p, q)| float_graph(a, b, y, *p, *q))
        .collect();
    let cpu = Cpu::detect();
    for variant in VARIANTS.iter().filter(|v| cpu.has(v.isa)) {
        let add = QAdd::plan_on(a, b, y, variant).unwrap();
        let mut out = vec![0u8; n];
        add.run(&xa, &xb, &mut out).unwrap();
        assert_eq!(
            out, expected,
            "{} on {n} elements, seed {seed}",
            variant.name
        );
    }
}

proptest! {
    #[test]
    fn every_variant_gives_the_float_graphs_bytes(n in 0usize..200, seed in any::<u64>()) {
        check(n, seed);
    }
}

#[test]
fn every_type_combination_and_the_saturated_ends() {
    let cpu = Cpu::detect();
    for (ta, tb, ty) in [
        (QType::U8, QType::U8, QType::U8),
        (QType::I8, QType::I8, QType::I8),
        (QType::U8, QType::I8, QType::I8),
        (QType::I8, QType::U8, QType::U8),
    ] {
        // Scales that push sums far past both ends of the output type.
        let a = Operand {
            dtype: ta,
            zero_point: ta.range().0 + 3,
            scale: 0.5,
        };
        let b = Operand {
            dtype: tb,
            zero_point: tb.range().1 - 3,
            scale: 0.25,
        };
        let y = Quantize {
            dtype: ty,
            zero_point: 0,
            inverse_scale: 10.0,
        };
        let all: Vec<(u8, u8)> = (0..=255u8)
            .flat_map(|p| (0..=255u8).map(move |q| (p, q)))
            .collect();
        let (xa, xb): (Vec<u8>, Vec<u8>) = all.into_iter().unzip();
        let expected: Vec<u8> = xa
            .iter()
            .zip(&xb)
            .map(|(p, q)| float_graph(a, b, y, *p, *q))
            .collect();
        let (lo, hi) = ty.range();
        let stored = |v: i32| match ty {
            QType::U8 => v as u8,
            QType::I8 => v as i8 as u8,
        };
        assert!(expected.contains(&stored(lo)) && expected.contains(&stored(hi)));
        for variant in VARIANTS.iter().filter(|v| cpu.has(v.isa)) {
            let mut out = vec![0u8; xa.len()];
            QAdd::plan_on(a, b, y, variant)
                .unwrap()
                .run(&xa, &xb, &mut out)
                .unwrap();
            assert_eq!(
                out, expected,
                "{} for {ta:?} + {tb:?} -> {ty:?}",
                variant.name
            );
        }
    }
}

#[test]
fn unusable_parameters_and_lengths_are_refused() {
    let (a, b, y) = operands(42);
    let cpu = Cpu::detect();
    let bad_scale = Operand {
        scale: f32::NAN,
        ..a
    };
    assert!(QAdd::plan(bad_scale, b, y, cpu)
        .unwrap_err()
        .0
        .contains("scale"));
    let bad_zero = Operand {
        dtype: QType::I8,
        zero_point: 200,
        ..b
    };
    assert!(QAdd::plan(a, bad_zero, y, cpu)
        .unwrap_err()
        .0
        .contains("zero point"));
    let zero_inverse = Quantize {
        inverse_scale: 0.0,
        ..y
    };
    assert!(QAdd::plan(a, b, zero_inverse, cpu).is_err());
    let huge = Quantize {
        inverse_scale: 1e30,
        ..y
    };
    assert!(QAdd::plan(a, b, huge, cpu).unwrap_err().0.contains("2^24"));
    let add = QAdd::plan(a, b, y, cpu).unwrap();
    let mut out = [7u8; 4];
    assert!(add.run(&[1, 2, 3, 4], &[1, 2, 3], &mut out).is_err());
    assert_eq!(out, [7; 4], "a refused run touches nothing");
}

//! Every variant against the portable reference, bit for bit; the reference against
//! the real-number definition, within one output step.

use proptest::prelude::*;

use super::*;
use crate::q8::{channel_outputs, test_bytes as bytes};

/// The variants this CPU runs that take rows of `k`.
fn runnable(k: usize) -> Vec<&'static Variant> {
    let cpu = Cpu::detect();
    VARIANTS
        .iter()
        .filter(|v| cpu.has(v.isa) && k <= v.max_k)
        .collect()
}

struct Case {
    m: usize,
    k: usize,
    n: usize,
    input: QType,
    zx: i32,
    weights: Vec<i8>,
    bias: Vec<i32>,
    multipliers: Vec<f64>,
    output: OutputQuant,
    x: Vec<u8>,
}

fn case(m: usize, k: usize, n: usize, seed: u64, any_weight: bool) -> Case {
    let input = if seed.is_multiple_of(2) {
        QType::U8
    } else {
        QType::I8
    };
    let (lo, hi) = input.range();
    let zx = lo + ((seed % 1000) as i32 * 37).rem_euclid(hi - lo + 1);
    let weights: Vec<i8> = bytes(m * k, seed + 1)
        .into_iter()
        .map(|b| {
            if !any_weight && b == 0x80 {
                0x81u8 as i8
            } else {
                b as i8
            }
        })
        .collect();
    let bias: Vec<i32> = bytes(m, seed + 2)
        .iter()
        .map(|b| (*b as i32 - 128) * 97)
        .collect();
    let multipliers: Vec<f64> = bytes(m, seed + 3)
        .iter()
        .map(|b| (1.0 + *b as f64) * 1e-5 * (k as f64).sqrt().recip() * 64.0)
        .collect();
    let out_type = if seed.is_multiple_of(3) {
        QType::I8
    } else {
        QType::U8
    };
    let (olo, ohi) = out_type.range();
    let zy = olo + ((seed % 1000) as i32 * 11).rem_euclid(ohi - olo + 1);
    let clamp = if seed.is_multiple_of(5) {
        (0.0, 6.0)
    } else {
        (f32::NEG_INFINITY, f32::INFINITY)
    };
    let output = OutputQuant::new(out_type, 0.05, zy, clamp.0, clamp.1).unwrap();
    Case {
        m,
        k,
        n,
        input,
        zx,
        weights,
        bias,
        multipliers,
        output,
        x: bytes(n * k, seed + 4),
    }
}

fn run(c: &Case, variant: &'static Variant) -> Vec<u8> {
    let sums: Vec<i32> = c
        .weights
        .chunks(c.k)
        .map(|r| r.iter().map(|w| *w as i32).sum())
        .collect();
    let channels = channel_outputs(c.input, c.zx, &sums, &c.bias, &c.multipliers).unwrap();
    let gemm = Gemm::plan_on(c.m, c.k, &c.weights, c.input, &channels, c.output, variant).unwrap();
    // Followed by a guard no write may reach.
    let mut y = vec![0xAB; c.n * c.m + 64];
    let mut scratch = vec![0u8; gemm.scratch_len(c.n)];
    gemm.run(c.n, &c.x, &mut y[..c.n * c.m], &mut scratch)
        .unwrap();
    assert!(
        y[c.n * c.m..].iter().all(|b| *b == 0xAB),
        "{} wrote past the output",
        variant.name
    );
    y.truncate(c.n * c.m);
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_variant_matches_the_portable_reference_bit_for_bit(
        m in 1usize..21, k in 1usize..70, n in 1usize..11, seed in any::<u64>(),
    ) {
        let portable = VARIANTS.iter().find(|v| v.isa == Isa::Portable).unwrap();
        for any_weight in [false, true] {
            let c = case(m, k, n, seed, any_weight);
            let want = run(&c, portable);
            for variant in runnable(k).into_iter().filter(|v| any_weight <= v.any_weight) {
                prop_assert_eq!(&run(&c, variant), &want, "{} m{} k{} n{}", variant.name, m, k, n);
            }
        }
    }

    #[test]
    fn the_reference_is_within_one_step_of_the_real_numbers(
        m in 1usize..9, k in 1usize..40, n in 1usize..5, seed in any::<u64>(),
    ) {
        let c = case(m, k, n, seed, true);
        let portable = VARIANTS.iter().find(|v| v.isa == Isa::Portable).unwrap();
        let got = run(&c, portable);
        for p in 0..n {
            for ch in 0..m {
                let mut acc = c.bias[ch] as f64;
                for i in 0..k {
                    let x = match c.input {
                        QType::U8 => c.x[p * k + i] as f64,
                        QType::I8 => c.x[p * k + i] as i8 as f64,
                    };
                    acc += (x - c.zx as f64) * c.weights[ch * k + i] as f64;
                }
                let want = ((acc * c.multipliers[ch]).round_ties_even() + c.output.zero_point as f64)
                    .clamp(c.output.lo as f64, c.output.hi as f64);
                let b = got[p * m + ch];
                let got = match c.output.dtype { QType::U8 => b as f64, QType::I8 => b as i8 as f64 };
                prop_assert!((got - want).abs() <= 1.0, "pixel {p} channel {ch}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn a_weight_of_minus_128_is_planned_on_a_variant_that_takes_it() {
    let c = case(4, 32, 4, 8, true);
    let mut weights = c.weights.clone();
    weights[5] = i8::MIN;
    let sums = vec![0; 4];
    let channels = channel_outputs(c.input, 0, &sums, &[0; 4], &[0.01; 4]).unwrap();
    let gemm = Gemm::plan(4, 32, &weights, c.input, &channels, c.output, Cpu::detect()).unwrap();
    assert!(gemm.variant().any_weight, "{}", gemm.variant().name);
    for variant in VARIANTS.iter().filter(|v| !v.any_weight) {
        let err =
            Gemm::plan_on(4, 32, &weights, c.input, &channels, c.output, variant).unwrap_err();
        assert!(err.0.contains("-128"), "{err}");
    }
}

#[test]
fn bad_sizes_are_refused_before_anything_runs() {
    let c = case(2, 3, 1, 1, true);
    let channels = channel_outputs(c.input, 0, &[0, 0], &[0, 0], &[0.1, 0.1]).unwrap();
    let gemm = Gemm::plan(
        2,
        3,
        &c.weights,
        c.input,
        &channels,
        c.output,
        Cpu::detect(),
    )
    .unwrap();
    let mut y = [0u8; 2];
    assert!(gemm.run(1, &[0; 4], &mut y, &mut [0; 16]).is_err());
    if gemm.scratch_len(1) > 0 {
        assert!(
            gemm.run(1, &[0; 3], &mut y, &mut []).is_err(),
            "scratch too small"
        );
    } else {
        // A variant that reads rows of k bytes in place (the portable one) needs none.
        assert!(gemm.run(1, &[0; 3], &mut y, &mut []).is_ok());
    }
    assert!(Gemm::plan(0, 3, &[], c.input, &[], c.output, Cpu::detect()).is_err());
    assert!(Gemm::plan(
        1,
        MAX_K + 1,
        &vec![0; MAX_K + 1],
        c.input,
        &channels[..1],
        c.output,
        Cpu::detect()
    )
    .is_err());
}

#[test]
fn values_far_outside_the_sixteen_bit_range_saturate_as_the_reference_does() {
    // Multipliers up to 4 put requantized accumulators of up to ~1.5 M far past ±32767
    // (and 1e6 past i32, where x86 converts an overflowing f32 to i32::MIN whatever its sign),
    // where the NEON kernel narrows to 16 bits before adding the zero point and clamping.
    let portable = VARIANTS.iter().find(|v| v.isa == Isa::Portable).unwrap();
    // Rows of 67 for the general kernels, of 40 for those of short rows too.
    for (seed, k) in (0..30u64).zip([67, 40].into_iter().cycle()) {
        let (m, n) = (9, 7);
        let mut c = case(m, k, n, seed, false);
        for (i, mult) in c.multipliers.iter_mut().enumerate() {
            *mult = [4.0, 0.5, 1e-3, 1e6][i % 4];
        }
        let want = run(&c, portable);
        // The output's bounds as bytes (the type's, or a fused clamp's).
        let bounds = [c.output.lo as u8, c.output.hi as u8];
        let extremes = want.iter().filter(|b| bounds.contains(b)).count();
        assert!(extremes > want.len() / 3, "seed {seed}: the case saturates");
        for variant in runnable(k) {
            assert_eq!(run(&c, variant), want, "{} seed {seed}", variant.name);
        }
    }
}

//! Every variant against the portable reference, bit for bit; the reference against
//! the real-number definition, within one output step.

use proptest::prelude::*;

use super::*;
use crate::q8::{channel_outputs, test_bytes as bytes};

struct Case {
    g: DwGeometry,
    images: usize,
    input: QType,
    zx: i32,
    weights: Vec<i8>,
    bias: Vec<i32>,
    multipliers: Vec<f64>,
    output: OutputQuant,
    x: Vec<u8>,
}

fn case(g: DwGeometry, images: usize, seed: u64, any_weight: bool) -> Case {
    let input = if seed.is_multiple_of(2) {
        QType::U8
    } else {
        QType::I8
    };
    let (lo, hi) = input.range();
    let zx = lo + ((seed % 1000) as i32 * 37).rem_euclid(hi - lo + 1);
    let weights: Vec<i8> = bytes(g.weights_len(), seed + 1)
        .into_iter()
        .map(|b| {
            if !any_weight && b == 0x80 {
                0x81u8 as i8
            } else {
                b as i8
            }
        })
        .collect();
    let bias: Vec<i32> = bytes(g.channels, seed + 2)
        .iter()
        .map(|b| (*b as i32 - 128) * 41)
        .collect();
    let multipliers: Vec<f64> = bytes(g.channels, seed + 3)
        .iter()
        .map(|b| (1.0 + *b as f64) * 2e-5)
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
    let x = bytes(images * g.input_len(), seed + 4);
    Case {
        g,
        images,
        input,
        zx,
        weights,
        bias,
        multipliers,
        output,
        x,
    }
}

fn run(c: &Case, variant: &'static Variant) -> Vec<u8> {
    let taps = c.g.kernel[0] * c.g.kernel[1];
    let sums: Vec<i32> = c
        .weights
        .chunks(taps)
        .map(|r| r.iter().map(|w| *w as i32).sum())
        .collect();
    let channels = channel_outputs(c.input, c.zx, &sums, &c.bias, &c.multipliers).unwrap();
    let conv =
        QDwConv::plan_on(c.g, c.input, c.zx, &c.weights, &channels, c.output, variant).unwrap();
    let n = c.images * c.g.output_len();
    let mut y = vec![0xAB; n + 64];
    let mut scratch = vec![0x5A; conv.scratch_len()];
    conv.run(c.images, &c.x, &mut y[..n], &mut scratch).unwrap();
    assert!(
        y[n..].iter().all(|b| *b == 0xAB),
        "{} wrote past the output",
        variant.name
    );
    y.truncate(n);
    y
}

fn geometry() -> impl Strategy<Value = DwGeometry> {
    (
        1usize..40,
        1usize..12,
        1usize..12,
        prop_oneof![Just(3usize), Just(5)],
        [1usize..=2, 1usize..=2],
        [0usize..3, 0usize..3, 0usize..3, 0usize..3],
    )
        .prop_filter_map(
            "padded input smaller than the filter",
            |(c, h, w, k, s, pad)| DwGeometry::new(c, [h, w], [k, k], s, pad).ok(),
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_variant_matches_the_portable_reference_bit_for_bit(
        g in geometry(), images in 1usize..3, seed in any::<u64>(),
    ) {
        let cpu = Cpu::detect();
        let same = |v: &&Variant| v.kernel == g.kernel && v.stride == g.stride[1];
        let portable = VARIANTS.iter().filter(same).find(|v| v.isa == Isa::Portable).unwrap();
        for any_weight in [false, true] {
            let c = case(g, images, seed, any_weight);
            let want = run(&c, portable);
            for variant in VARIANTS.iter().filter(same).filter(|v| cpu.has(v.isa) && any_weight <= v.any_weight) {
                prop_assert_eq!(&run(&c, variant), &want, "{} {:?}", variant.name, g);
            }
        }
    }

    #[test]
    fn the_reference_is_within_one_step_of_the_real_numbers(g in geometry(), seed in any::<u64>()) {
        let c = case(g, 1, seed, true);
        let same = |v: &&Variant| v.kernel == g.kernel && v.stride == g.stride[1];
        let portable = VARIANTS.iter().filter(same).find(|v| v.isa == Isa::Portable).unwrap();
        let got = run(&c, portable);
        let [h, w] = g.input;
        let [kh, kw] = g.kernel;
        let [top, left, ..] = g.padding;
        let value = |b: u8| match c.input { QType::U8 => b as f64, QType::I8 => b as i8 as f64 };
        for oy in 0..g.output[0] {
            for ox in 0..g.output[1] {
                for ch in 0..g.channels {
                    let mut acc = c.bias[ch] as f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * g.stride[0] + ky) as isize - top as isize;
                            let ix = (ox * g.stride[1] + kx) as isize - left as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let x = value(c.x[(iy as usize * w + ix as usize) * g.channels + ch]);
                            acc += (x - c.zx as f64) * c.weights[(ch * kh + ky) * kw + kx] as f64;
                        }
                    }
                    let want = ((acc * c.multipliers[ch]).round_ties_even() + c.output.zero_point as f64)
                        .clamp(c.output.lo as f64, c.output.hi as f64);
                    let b = got[(oy * g.output[1] + ox) * g.channels + ch];
                    let got = match c.output.dtype { QType::U8 => b as f64, QType::I8 => b as i8 as f64 };
                    prop_assert!((got - want).abs() <= 1.0, "({oy},{ox}) ch {ch}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn values_far_outside_the_sixteen_bit_range_saturate_as_the_reference_does() {
    // Multipliers up to 64 put requantized sums of nine taps far past ±32767, where the
    // NEON kernel narrows to 16 bits before adding the zero point and clamping.
    let cpu = Cpu::detect();
    for (seed, kernel) in (0..24u64).zip([3usize, 5].into_iter().cycle()) {
        let g = DwGeometry::new(
            37,
            [6, 7],
            [kernel, kernel],
            [1 + seed as usize % 2, 1 + seed as usize / 2 % 2],
            [1; 4],
        )
        .unwrap();
        let mut c = case(g, 1, seed, false);
        for (i, mult) in c.multipliers.iter_mut().enumerate() {
            *mult = [64.0, 0.5, 1e-3, 1e6][i % 4];
        }
        let same = |v: &&Variant| v.kernel == g.kernel && v.stride == g.stride[1];
        let portable = VARIANTS
            .iter()
            .filter(same)
            .find(|v| v.isa == Isa::Portable)
            .unwrap();
        let want = run(&c, portable);
        let bounds = [c.output.lo as u8, c.output.hi as u8];
        let extremes = want.iter().filter(|b| bounds.contains(b)).count();
        assert!(extremes > want.len() / 3, "seed {seed}: the case saturates");
        for variant in VARIANTS.iter().filter(same).filter(|v| cpu.has(v.isa)) {
            assert_eq!(run(&c, variant), want, "{} seed {seed}", variant.name);
        }
    }
}

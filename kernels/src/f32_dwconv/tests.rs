//! Every variant this machine runs, against the reference.

use proptest::prelude::*;

use super::*;

/// Variants this CPU can run.
fn runnable() -> Vec<&'static Variant> {
    let cpu = Cpu::detect();
    variants().filter(|v| cpu.has(v.isa)).collect()
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

const GUARD: usize = 32;
const GUARD_VALUE: f32 = 12345.0;

/// Runs `variant` and the reference on the same data; returns the largest error
/// relative to the largest reference magnitude.
fn compare(
    variant: &'static Variant,
    g: DwGeometry,
    activation: Activation,
    with_bias: bool,
    images: usize,
    seed: u64,
) -> f32 {
    let conv = DwConv::plan_on(g, activation, variant).unwrap();
    let input = values(images * g.input_len(), seed);
    let weights = values(g.weights_len(), seed + 1);
    let bias = values(g.channels, seed + 2);
    let bias = with_bias.then_some(&bias[..]);
    let mut want = vec![0.0; images * g.output_len()];
    for (x, y) in input
        .chunks(g.input_len())
        .zip(want.chunks_mut(g.output_len()))
    {
        reference(&g, variant.layout(), activation, x, &weights, bias, y);
    }
    // NaN-filled, so a point the kernel forgets to write is caught, and followed by a
    // guard that no write may reach.
    let n = images * g.output_len();
    let mut buffer = vec![f32::NAN; n + GUARD];
    buffer[n..].fill(GUARD_VALUE);
    let mut scratch = vec![f32::NAN; conv.scratch_len() + 7];
    conv.run(
        images,
        &input,
        &weights,
        bias,
        &mut buffer[..n],
        &mut scratch,
    )
    .unwrap();
    assert!(
        buffer[n..].iter().all(|v| *v == GUARD_VALUE),
        "{} wrote past the output",
        variant.name
    );
    let got = &buffer[..n];
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(&want)
        .map(|(g, w)| {
            if g.is_nan() {
                f32::INFINITY
            } else {
                (g - w).abs() / scale
            }
        })
        .fold(0.0, f32::max)
}

fn geometry() -> impl Strategy<Value = (DwGeometry, Activation, bool)> {
    (
        1usize..6,
        1usize..24,
        1usize..24,
        prop_oneof![Just(3usize), Just(5)],
        1usize..=2,
        [0usize..4, 0usize..4, 0usize..4, 0usize..4],
        prop_oneof![
            Just(Activation::None),
            Just(Activation::Relu),
            Just(Activation::Clamp(0.0, 6.0)),
            Just(Activation::Clamp(-0.25, 0.5)),
        ],
        any::<bool>(),
    )
        .prop_filter_map(
            "padded input smaller than the filter",
            |(c, h, w, k, s, pad, act, bias)| {
                DwGeometry::new(c, [h, w], [k, k], [s; 2], pad)
                    .ok()
                    .map(|g| (g, act, bias))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn every_variant_matches_the_reference_on_random_geometries(
        (g, activation, with_bias) in geometry(),
        images in 1usize..4,
        seed in any::<u64>(),
    ) {
        for variant in runnable()
            .into_iter()
            .filter(|v| [v.stride; 2] == g.stride && v.kernel == g.kernel)
        {
            let err = compare(variant, g, activation, with_bias, images, seed);
            prop_assert!(err <= 1e-5, "{} on {g:?} {activation:?}: relative error {err}", variant.name);
        }
    }
}

#[test]
fn the_shapes_of_the_reference_models_match_the_reference() {
    // R2's depthwise layers (64 x 25x5, pad 1) and R4's (stride 2 from even and odd
    // sizes, 7x7 maps), with the activations those models fuse.
    let cases = [
        (
            DwGeometry::new(64, [25, 5], [3, 3], [1; 2], [1, 1, 1, 1]),
            Activation::Relu,
        ),
        (
            DwGeometry::new(48, [48, 48], [3, 3], [2; 2], [1, 1, 1, 1]),
            Activation::Clamp(0.0, 6.0),
        ),
        (
            DwGeometry::new(96, [13, 13], [3, 3], [2; 2], [1, 1, 1, 1]),
            Activation::Clamp(0.0, 6.0),
        ),
        (
            DwGeometry::new(336, [3, 3], [3, 3], [1; 2], [1, 1, 1, 1]),
            Activation::Clamp(0.0, 6.0),
        ),
        (
            DwGeometry::new(8, [17, 9], [5, 5], [2; 2], [2, 2, 2, 2]),
            Activation::None,
        ),
        (
            DwGeometry::new(8, [16, 31], [5, 5], [1; 2], [2, 1, 0, 3]),
            Activation::Relu,
        ),
    ];
    for (g, activation) in cases {
        let g = g.unwrap();
        for variant in runnable()
            .into_iter()
            .filter(|v| [v.stride; 2] == g.stride && v.kernel == g.kernel)
        {
            let err = compare(variant, g, activation, true, 2, 7);
            assert!(
                err <= 1e-5,
                "{} on {g:?}: relative error {err}",
                variant.name
            );
        }
    }
}

#[test]
fn every_layout_filter_size_and_stride_has_a_portable_variant_and_plans_the_best_one_this_cpu_runs()
{
    for layout in [Layout::Chw, Layout::Hwc] {
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            let matching = || {
                runnable()
                    .into_iter()
                    .filter(move |v| v.kernel == [k, k] && v.stride == s && v.layout() == layout)
            };
            let case = format!("{layout:?} {k}x{k}s{s}");
            assert!(
                matching().any(|v| v.isa == Isa::Portable),
                "{case}: no portable variant"
            );
            let best = matching().map(|v| v.isa).max().unwrap();
            let g = DwGeometry::new(1, [8, 8], [k, k], [s; 2], [1; 4]).unwrap();
            let planned = DwConv::plan(g, layout, Activation::None, Cpu::detect()).unwrap();
            assert_eq!(
                planned.variant().isa,
                best,
                "{case}: planned {}",
                planned.variant().name
            );
            assert_eq!(planned.layout(), layout, "{case}");
            if cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
                && Cpu::detect().best() != Isa::Portable
            {
                assert_ne!(best, Isa::Portable, "{case}: no SIMD variant for this CPU");
            }
        }
    }
}

#[test]
fn a_nan_input_gives_nan_outputs_where_it_is_read_whatever_the_activation() {
    // One channel: both layouts have the same memory order.
    let g = DwGeometry::new(1, [6, 6], [3, 3], [1; 2], [1, 1, 1, 1]).unwrap();
    for variant in runnable()
        .into_iter()
        .filter(|v| v.kernel == [3, 3] && v.stride == 1)
    {
        for activation in [
            Activation::None,
            Activation::Relu,
            Activation::Clamp(0.0, 6.0),
        ] {
            let conv = DwConv::plan_on(g, activation, variant).unwrap();
            let mut input = vec![1.0; 36];
            input[0] = f32::NAN;
            let mut out = vec![0.0; 36];
            let mut scratch = vec![0.0; conv.scratch_len()];
            conv.run(1, &input, &[1.0; 9], None, &mut out, &mut scratch)
                .unwrap();
            assert!(
                out[0].is_nan() && out[7].is_nan(),
                "{}: {activation:?}",
                variant.name
            );
            assert!(
                !out[2].is_nan() && !out[35].is_nan(),
                "{}: {activation:?}",
                variant.name
            );
        }
    }
}

#[test]
fn planning_says_why_a_convolution_is_not_covered() {
    let cpu = Cpu::detect();
    let plan = |k: usize, s: usize| {
        DwConv::plan(
            DwGeometry::new(4, [16, 16], [k, k], [s; 2], [1; 4]).unwrap(),
            Layout::Chw,
            Activation::None,
            cpu,
        )
        .unwrap_err()
        .0
    };
    assert_eq!(plan(7, 1), "7x7 filter (the kernels cover 3x3 and 5x5)");
    assert_eq!(plan(3, 3), "stride 3 (the kernels cover 1 and 2)");
    let unequal = DwGeometry::new(4, [16, 16], [3, 3], [2, 1], [1; 4]).unwrap();
    assert_eq!(
        DwConv::plan(unequal, Layout::Hwc, Activation::None, cpu)
            .unwrap_err()
            .0,
        "strides 2x1 (the float kernels take equal strides)"
    );
    let err = DwGeometry::new(4, [1, 1], [3, 3], [1; 2], [0; 4])
        .unwrap_err()
        .0;
    assert_eq!(err, "the padded input 1x1 is smaller than the filter 3x3");
    assert!(DwGeometry::new(usize::MAX, [2, 2], [3, 3], [1; 2], [1; 4]).is_err());
    assert!(DwGeometry::new(1, [usize::MAX, 2], [3, 3], [1; 2], [1; 4]).is_err());
}

#[test]
fn slices_of_the_wrong_length_are_refused_before_anything_is_written() {
    let g = DwGeometry::new(2, [4, 4], [3, 3], [1; 2], [1; 4]).unwrap();
    let conv = DwConv::plan(g, Layout::Chw, Activation::None, Cpu::detect()).unwrap();
    let mut out = vec![9.0; 32];
    let mut scratch = vec![0.0; conv.scratch_len()];
    let err = conv
        .run(1, &[0.0; 31], &[0.0; 18], None, &mut out, &mut scratch)
        .unwrap_err();
    assert_eq!(
        err.0,
        "input has 31 elements, 1 image(s) of this geometry need 32"
    );
    let err = conv
        .run(
            1,
            &[0.0; 32],
            &[0.0; 18],
            Some(&[0.0]),
            &mut out,
            &mut scratch,
        )
        .unwrap_err();
    assert_eq!(
        err.0,
        "bias has 1 elements, 1 image(s) of this geometry need 2"
    );
    let err = conv
        .run(2, &[0.0; 32], &[0.0; 18], None, &mut out, &mut scratch)
        .unwrap_err();
    assert_eq!(
        err.0,
        "input has 32 elements, 2 image(s) of this geometry need 64"
    );
    let err = conv
        .run(
            usize::MAX,
            &[0.0; 32],
            &[0.0; 18],
            None,
            &mut out,
            &mut scratch,
        )
        .unwrap_err();
    assert!(err.0.contains("more than addressable"), "{err}");
    let err = conv
        .run(1, &[0.0; 32], &[0.0; 18], None, &mut out, &mut [0.0; 3])
        .unwrap_err();
    assert!(err.0.starts_with("scratch has 3 elements"), "{err}");
    assert!(out.iter().all(|v| *v == 9.0));
}

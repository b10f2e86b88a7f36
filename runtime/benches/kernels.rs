//! Perch's kernels alone, every variant this machine runs, on the shapes of the
//! reference models: the shared harness for the kernel layer (the `perch-kernels` crate, `kernels/`).
//!
//! ```sh
//! cargo bench -p perch-runtime --bench kernels                 # every case
//! cargo bench -p perch-runtime --bench kernels -- dwconv/r4     # one family, one model
//! ```
//!
//! Criterion reports the time per call and, as throughput, the multiply-accumulates
//! per second (`Melem/s` = million MACs/s; GFLOP/s = 2 × GMAC/s). Each case is checked
//! against the reference implementation before it is measured.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use perch_runtime::kernels::f32_dwconv::{reference, variants, DwConv, DwGeometry};
use perch_runtime::kernels::{Activation, Cpu};

/// Depthwise layers of R2 (kws-dscnn) and R4 (mobilenetv2-035, 128x128 input).
fn dwconv_cases() -> Vec<(&'static str, DwGeometry)> {
    let g = |c, h, w, s| DwGeometry::new(c, [h, w], [3, 3], [s, s], [1, 1, 1, 1]).unwrap();
    vec![
        ("r2/64x25x5", g(64, 25, 5, 1)),
        ("r4/16x64x64", g(16, 64, 64, 1)),
        ("r4/48x64x64s2", g(48, 64, 64, 2)),
        ("r4/48x32x32", g(48, 32, 32, 1)),
        ("r4/96x16x16", g(96, 16, 16, 1)),
        ("r4/144x8x8", g(144, 8, 8, 1)),
        ("r4/336x4x4", g(336, 4, 4, 1)),
    ]
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn dwconv(c: &mut Criterion) {
    let mut group = c.benchmark_group("dwconv");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let cpu = Cpu::detect();
    for (name, g) in dwconv_cases() {
        let input = values(g.input_len());
        let weights = values(g.weights_len());
        let bias = values(g.channels);
        group.throughput(Throughput::Elements(g.macs()));
        for variant in variants()
            .filter(|v| cpu.has(v.isa) && v.kernel == g.kernel && [v.stride; 2] == g.stride)
        {
            let mut want = vec![0.0; g.output_len()];
            let act = Activation::Clamp(0.0, 6.0);
            reference(
                &g,
                variant.layout(),
                act,
                &input,
                &weights,
                Some(&bias),
                &mut want,
            );
            let conv = DwConv::plan_on(g, Activation::Clamp(0.0, 6.0), variant).unwrap();
            let mut out = vec![0.0; g.output_len()];
            let mut scratch = vec![0.0; conv.scratch_len()];
            conv.run(1, &input, &weights, Some(&bias), &mut out, &mut scratch)
                .unwrap();
            let err = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                err < 1e-4,
                "{}: {name} differs from the reference by {err}",
                variant.name
            );
            let id = format!("{}/{}", variant.layout().name(), variant.isa.name());
            group.bench_function(BenchmarkId::new(name, id), |b| {
                b.iter(|| {
                    conv.run(1, &input, &weights, Some(&bias), &mut out, &mut scratch)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dwconv);
criterion_main!(benches);

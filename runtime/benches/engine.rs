//! `Session::run` on each reference model's golden input, float and weight-only int8.
//!
//! Eight cases, `engine/<model>/<variant>` (models R1..R4 of `models/README.md`, variants
//! `float` for `model.onnx` and `w8` for `model.w8.onnx`), each on one thread, in a session
//! that has already run (criterion warms up before measuring). The time includes input
//! validation, the copy into the session's input tensor and dropping the outputs. Each
//! case is checked once against its golden output before it is measured.
//!
//! ```sh
//! cargo bench -p perch-runtime --bench engine
//! cargo bench -p perch-runtime --bench engine -- kws-dscnn   # one model
//! ```
//!
//! The whole run takes about a minute. Criterion's numbers do not put the engine next
//! to ONNX Runtime; `models/bench_ort.py` does, with the `latency` example.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use perch_runtime::engine::{Golden, LoadOptions, Model, Tolerance};

const MODELS: [&str; 4] = ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"];

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for name in MODELS {
        let dir = models_dir().join(name);
        for (variant, file, golden) in [
            ("float", "model.onnx", None),
            ("w8", "model.w8.onnx", Some("w8")),
        ] {
            let model = Model::load(dir.join(file), &LoadOptions::new())
                .unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            let golden = Golden::load_variant(dir.join("golden"), golden)
                .unwrap_or_else(|e| panic!("{name} golden: {e}"));
            let mut session = model.session().unwrap();
            session
                .self_test(&golden, Tolerance { relative: 1e-3 })
                .unwrap_or_else(|e| panic!("{name}/{variant}: {e}"));
            let inputs = golden.input_refs().unwrap();
            group.bench_function(BenchmarkId::new(name, variant), |b| {
                b.iter(|| session.run(&inputs).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);

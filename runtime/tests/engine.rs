#![cfg(feature = "onnx")]
//! The engine against the reference models: golden outputs, bad models, bad inputs.

use std::path::{Path, PathBuf};

use perch_runtime::engine::{
    EngineError, Golden, Input, LoadOptions, Model, ModelFormat, NonFinitePolicy, Tolerance,
};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

const REFERENCE: [&str; 4] = ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"];

fn load(path: &Path) -> Model {
    match Model::load(path, &LoadOptions::new()) {
        Ok(m) => m,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perch-engine-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

mod golden_outputs {
    use super::*;

    #[test]
    fn every_float_reference_model_matches_onnx_runtime() {
        for name in REFERENCE {
            let model = load(&models().join(name).join("model.onnx"));
            let golden = Golden::load(models().join(name).join("golden")).unwrap();
            let report = model
                .session()
                .unwrap()
                .self_test(&golden, Tolerance::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(report.outputs.len(), 1, "{name}");
            assert!(
                report.outputs[0].relative_error <= 1e-4,
                "{name}: {report:?}"
            );
        }
    }

    #[test]
    fn every_weight_only_int8_model_matches_onnx_runtime() {
        for name in REFERENCE {
            let model = load(&models().join(name).join("model.w8.onnx"));
            let golden =
                Golden::load_variant(models().join(name).join("golden"), Some("w8")).unwrap();
            model
                .session()
                .unwrap()
                .self_test(&golden, Tolerance::default())
                .unwrap_or_else(|e| panic!("{name} w8: {e}"));
        }
    }

    /// R2 quantized by ONNX Runtime's own `quantize_dynamic` (ConvInteger, MatMulInteger
    /// on uint8, DynamicQuantizeLinear): tract runs it on its integer kernels, so this is
    /// the golden test of those (on ARM under qemu too, by `.ci/arm`).
    #[test]
    fn a_dynamically_quantized_model_matches_onnx_runtime_on_integer_kernels() {
        let model = load(&models().join("kws-dscnn/model.dyn.onnx"));
        let golden = Golden::load_variant(models().join("kws-dscnn/golden"), Some("dyn")).unwrap();
        let report = model
            .session()
            .unwrap()
            .self_test(&golden, Tolerance::default())
            .unwrap_or_else(|e| panic!("kws-dscnn dyn: {e}"));
        assert!(report.outputs[0].relative_error <= 1e-4, "{report:?}");
    }

    /// Issue 13: tract 0.23.9 folds `DequantizeLinear → Softmax → QuantizeLinear` into a
    /// lookup table as if Softmax were element-wise, and answers 1.0 for every class of
    /// an ONNX Runtime-quantized classifier. The engine's guard (engine::ops::guard)
    /// keeps Softmax out of the table. Both the five-node fixture and R1 quantized by
    /// ONNX Runtime end that way; each must give ONNX Runtime's probabilities within one
    /// output step (1/255).
    #[test]
    fn a_quantized_softmax_gives_onnx_runtimes_probabilities_not_all_ones() {
        let step = 1.0 / 255.0 + 1e-6;
        let fixtures = models().join("fixtures");
        let model = load(&fixtures.join("quantized-softmax.onnx"));
        let x = perch_runtime::engine::read_npy(fixtures.join("quantized-softmax.input_0.npy"))
            .unwrap();
        let want = perch_runtime::engine::read_npy(fixtures.join("quantized-softmax.output_0.npy"))
            .unwrap();
        let got = model.run(&[x.input().unwrap()]).unwrap();
        let (max_abs, _) =
            perch_runtime::engine::compare(got.view(0).unwrap(), want.view()).unwrap();
        assert!(max_abs <= step, "{:?} vs {want:?}", got.f32(0).unwrap());
        let sum: f32 = got.f32(0).unwrap().iter().sum();
        assert!((sum - 1.0).abs() <= 2.0 * step, "{sum}");

        let model = load(&models().join("digits-mlp/model.qdq.onnx"));
        let golden = Golden::load_variant(models().join("digits-mlp/golden"), Some("qdq")).unwrap();
        let got = model.run(&golden.input_refs().unwrap()).unwrap();
        let (max_abs, _) =
            perch_runtime::engine::compare(got.view(0).unwrap(), golden.outputs[0].view()).unwrap();
        assert!(max_abs <= step, "R1 QDQ: {max_abs}");
    }

    #[test]
    fn a_model_converted_to_nnef_loads_back_and_gives_the_same_outputs() {
        for name in ["kws-dscnn", "digits-mlp"] {
            let source = models().join(name).join("model.onnx");
            let typed = tract_onnx::onnx()
                .model_for_path(&source)
                .and_then(|m| m.into_typed())
                .and_then(|m| m.into_decluttered())
                .unwrap();
            let archive = scratch("nnef").join(format!("{name}.nnef.tgz"));
            let file = std::fs::File::create(&archive).unwrap();
            let gz = flate2_writer(file);
            tract_nnef::nnef()
                .with_onnx()
                .write_to_tar(&typed, gz)
                .unwrap()
                .finish()
                .unwrap();

            let model = load(&archive);
            assert_eq!(model.metadata().format, ModelFormat::Nnef);
            let golden = Golden::load(models().join(name).join("golden")).unwrap();
            model
                .session()
                .unwrap()
                .self_test(&golden, Tolerance::default())
                .unwrap();
        }
    }

    fn flate2_writer(file: std::fs::File) -> flate2::write::GzEncoder<std::fs::File> {
        flate2::write::GzEncoder::new(file, flate2::Compression::default())
    }

    use tract_onnx::prelude::{Framework, InferenceModelExt};
    use tract_onnx_opl::WithOnnx;

    #[test]
    fn digits_mlp_keeps_its_held_out_accuracy_on_the_engine() {
        // heldout.npz holds every held-out sample; the accuracy the generator recorded
        // is in models/models.json.
        let npz = std::fs::File::open(models().join("digits-mlp/heldout.npz")).unwrap();
        let mut npz = ndarray_npy::NpzReader::new(npz).unwrap();
        let x: ndarray::Array2<f32> = npz.by_name("x").unwrap();
        let y: ndarray::Array1<i64> = npz.by_name("y").unwrap();
        let model = load(&models().join("digits-mlp/model.onnx"));
        let mut session = model.session().unwrap();
        let x = x.as_standard_layout();
        let batch = [x.nrows(), x.ncols()];
        let out = session
            .run(&[Input::f32(&batch, x.as_slice().unwrap())])
            .unwrap();
        let probs = out.f32(0).unwrap();
        let correct = probs
            .chunks(10)
            .zip(y.iter())
            .filter(|(p, label)| {
                let best = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0;
                best as i64 == **label
            })
            .count();
        let accuracy = correct as f64 / y.len() as f64;
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(models().join("models.json")).unwrap())
                .unwrap();
        let recorded = json
            .as_array()
            .and_then(|a| a.iter().find(|m| m["name"] == "digits-mlp"))
            .and_then(|m| m["accuracy"].as_f64())
            .unwrap();
        assert!(
            (accuracy - recorded).abs() < 1e-9,
            "engine {accuracy}, recorded {recorded}"
        );
        assert!(accuracy > 0.9, "{accuracy}");
    }
}

/// The public API round-trips without tract's types: golden `.npy` files read into
/// [`Array`]s, a run's outputs lent as [`TensorView`]s, both compared as Perch's own.
mod public_api {
    use super::*;
    use perch_runtime::engine::{
        compare, decode_npy, read_npy, Array, DType, TensorData, TensorView,
    };

    fn argmax(row: &[f32]) -> usize {
        (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
    }

    #[test]
    fn a_golden_array_read_from_npy_agrees_with_the_view_of_the_output_it_checks() {
        for name in REFERENCE {
            let golden = models().join(name).join("golden");
            let input = read_npy(golden.join("input_0.npy")).unwrap();
            let want = read_npy(golden.join("output_0.npy")).unwrap();
            assert_eq!(
                (input.dtype(), want.dtype()),
                (DType::F32, DType::F32),
                "{name}"
            );
            let model = load(&models().join(name).join("model.onnx"));
            let outputs = model.run(&[input.input().unwrap()]).unwrap();
            let got = outputs.view(0).unwrap();
            assert_eq!(got.shape(), want.shape(), "{name}");
            assert_eq!(got.shape(), outputs.shape(0).unwrap(), "{name}");
            assert_eq!(got.dtype(), DType::F32, "{name}");
            assert_eq!(got.as_f32().unwrap(), outputs.f32(0).unwrap(), "{name}");
            let (_, relative) = compare(got, want.view()).unwrap();
            assert!(
                relative <= Tolerance::default().relative,
                "{name}: {relative:e}"
            );
            // What self_test measures is what compare measures.
            let report = model
                .session()
                .unwrap()
                .self_test(&Golden::load(&golden).unwrap(), Tolerance::default())
                .unwrap();
            assert_eq!(report.outputs[0].relative_error, relative, "{name}");
            // An output copied into an Array holds the same shape and elements.
            let owned = Array::from_view(got);
            assert_eq!(owned.shape(), got.shape(), "{name}");
            assert_eq!(owned.view().as_f32(), got.as_f32(), "{name}");
            assert_eq!(compare(owned.view(), got).unwrap(), (0.0, 0.0), "{name}");
        }
    }

    #[test]
    fn the_digit_classifier_picks_onnx_runtimes_classes_read_through_views() {
        let golden = models().join("digits-mlp/golden");
        let want = read_npy(golden.join("output_0.npy")).unwrap();
        let model = load(&models().join("digits-mlp/model.onnx"));
        let input = read_npy(golden.join("input_0.npy")).unwrap();
        let outputs = model.run(&[input.input().unwrap()]).unwrap();
        let got = outputs.view(0).unwrap();
        let classes = got.shape()[1];
        let picks = |v: TensorView<'_>| -> Vec<usize> {
            v.as_f32().unwrap().chunks(classes).map(argmax).collect()
        };
        assert_eq!(picks(got), picks(want.view()));
        // Integer golden files read as integers.
        let labels = read_npy(golden.join("labels_0.npy")).unwrap();
        assert_eq!(labels.dtype(), DType::I64);
        assert_eq!(labels.shape(), &[got.shape()[0]]);
    }

    #[test]
    fn views_hold_exactly_their_shape_and_say_what_cannot_be_an_input() {
        let x = [1.0f64, 2.5, -3.0, 4.0, 0.0, 6.0];
        assert!(TensorView::new(&[2, 2], TensorData::F64(&x)).is_none());
        let view = TensorView::new(&[2, 3], TensorData::F64(&x)).unwrap();
        assert_eq!(view.dtype(), DType::F64);
        assert!(view.input().is_none(), "the engine takes no f64 input");
        assert_eq!(view.to_f32_vec(), vec![1.0, 2.5, -3.0, 4.0, 0.0, 6.0]);
        let array = Array::from_view(view);
        assert_eq!((array.dtype(), array.shape()), (DType::F64, &[2, 3][..]));
        let ints = [7i64, -1];
        let view = TensorView::new(&[2], TensorData::I64(&ints)).unwrap();
        assert_eq!(view.input().unwrap().data.dtype(), DType::I64);
        assert_eq!(view.as_i64(), Some(&ints[..]));
        assert_eq!(view.as_f32(), None);
        // A scalar has an empty shape and one element.
        let scalar = TensorView::new(&[], TensorData::F32(&[0.5])).unwrap();
        assert_eq!(
            Array::from_view(scalar).view().as_f32(),
            Some(&[0.5f32][..])
        );
        assert!(compare(scalar, view).unwrap_err().contains("shape"));
        assert!(decode_npy(b"not a numpy file").is_err());
    }
}

mod kernels {
    use super::*;
    use perch_runtime::engine::internal::ModelExt;
    use tract_core::internal::tract_linalg;
    use tract_core::ops::matmul::optimized::OptMatMul;

    /// The matrix-multiplication kernels tract planned for a model on the running CPU, each
    /// with whether it is written for this architecture (false: tract's portable Rust).
    fn planned_kernels(model: &Model) -> Vec<(String, bool)> {
        let mut kernels: Vec<(String, bool)> = model
            .optimized_model()
            .nodes()
            .iter()
            .filter_map(|node| node.op_as::<OptMatMul>())
            .flat_map(|op| op.mmm.iter())
            .map(|k| (k.name().to_string(), k.arch().is_some()))
            .collect();
        kernels.sort();
        kernels.dedup();
        kernels
    }

    /// tract picks its kernels at run time from the CPU it finds, so a test binary for an
    /// ARM target run under qemu could silently fall back to slower code. The float and
    /// w8 reference models plan float kernels; R2 dynamically quantized plans integer ones. `.ci/arm` sets
    /// PERCH_EXPECT_KERNELS to the kernel family the emulated board must use (`arm64simd`,
    /// `armv7neon`); without it the kernels need only be written for this architecture.
    #[test]
    fn every_reference_model_runs_on_kernels_written_for_this_cpu() {
        let expected = std::env::var("PERCH_EXPECT_KERNELS").ok();
        println!(
            "{} CPU as tract sees it: {:?}",
            std::env::consts::ARCH,
            tract_linalg::isa::native()
        );
        let mut cases: Vec<(&str, &str)> = REFERENCE
            .iter()
            .flat_map(|name| [(*name, "model.onnx"), (*name, "model.w8.onnx")])
            .collect();
        cases.push(("kws-dscnn", "model.dyn.onnx"));
        for (name, file) in cases {
            {
                let kernels = planned_kernels(&load(&models().join(name).join(file)));
                let names: Vec<&str> = kernels.iter().map(|(n, _)| n.as_str()).collect();
                println!("{name}/{file}: {}", names.join(" "));
                assert!(!kernels.is_empty(), "{name}/{file}: no matmul planned");
                assert!(
                    kernels.iter().all(|(_, native)| *native),
                    "{name}/{file}: portable kernels planned: {names:?}"
                );
                if file == "model.dyn.onnx" {
                    // ConvInteger / MatMulInteger: tract's integer kernels.
                    assert!(
                        names.iter().any(|n| n.contains("i32")),
                        "{name}/{file}: no integer kernel planned: {names:?}"
                    );
                }
                if let Some(prefix) = &expected {
                    assert!(
                        names.iter().all(|n| n.starts_with(prefix.as_str())),
                        "{name}/{file}: expected {prefix}* kernels, planned {names:?}"
                    );
                }
            }
        }
    }
}

mod metadata {
    use super::*;
    use perch_runtime::engine::{DType, Dim};

    #[test]
    fn metadata_reports_names_shapes_dtypes_opset_and_ops() {
        let model = load(&models().join("kws-dscnn/model.onnx"));
        let meta = model.metadata();
        assert_eq!(meta.format, ModelFormat::Onnx);
        assert_eq!(meta.opset, Some(13));
        assert_eq!(meta.inputs.len(), 1);
        assert_eq!(meta.inputs[0].name, "mfcc");
        assert_eq!(meta.inputs[0].dtype, DType::F32);
        assert_eq!(
            meta.inputs[0].shape,
            vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(49), Dim::Fixed(10)]
        );
        assert_eq!(meta.outputs[0].name, "logits");
        assert_eq!(meta.outputs[0].shape, vec![Dim::Fixed(1), Dim::Fixed(12)]);
        assert_eq!(meta.op_histogram.get("Conv"), Some(&9));
    }

    #[test]
    fn a_symbolic_batch_is_kept_and_accepts_any_batch_size() {
        let model = load(&models().join("digits-mlp/model.onnx"));
        let input = &model.metadata().inputs[0];
        assert!(matches!(input.shape[0], Dim::Symbolic(_)), "{input:?}");
        let mut session = model.session().unwrap();
        for batch in [1usize, 3, 8] {
            let x = vec![0.5f32; batch * 64];
            let out = session.run(&[Input::f32(&[batch, 64], &x)]).unwrap();
            assert_eq!(out.shape(0).unwrap(), &[batch, 10]);
        }
    }

    #[test]
    fn an_input_shape_override_fixes_the_batch_size() {
        let options = LoadOptions::new().input_shape("pixels", &[4, 64]);
        let model = Model::load(models().join("digits-mlp/model.onnx"), &options).unwrap();
        assert_eq!(
            model.metadata().inputs[0].shape,
            vec![Dim::Fixed(4), Dim::Fixed(64)]
        );
        let mut session = model.session().unwrap();
        let x = vec![0.0f32; 2 * 64];
        let err = session.run(&[Input::f32(&[2, 64], &x)]).unwrap_err();
        assert!(matches!(err, EngineError::InputShape { .. }), "{err}");
    }

    #[test]
    fn an_override_for_an_unknown_input_names_the_real_inputs() {
        let options = LoadOptions::new().input_shape("image", &[1, 64]);
        let err = Model::load(models().join("digits-mlp/model.onnx"), &options).unwrap_err();
        assert!(matches!(err, EngineError::UnknownInput { .. }), "{err}");
        assert!(err.to_string().contains("pixels"), "{err}");
    }
}

mod bad_models {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let path = scratch("bad").join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = Model::load("/nonexistent/model.onnx", &LoadOptions::new()).unwrap_err();
        assert!(matches!(err, EngineError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/model.onnx"), "{err}");
    }

    #[test]
    fn a_truncated_model_is_refused_without_panicking() {
        let bytes = std::fs::read(models().join("mobilenetv2-035/model.onnx")).unwrap();
        for cut in [1, 100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 7] {
            let path = write(&format!("truncated-{cut}.onnx"), &bytes[..cut]);
            let err = Model::load(&path, &LoadOptions::new()).unwrap_err();
            assert!(
                matches!(
                    err,
                    EngineError::Malformed { .. } | EngineError::Prepare { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn garbage_bytes_and_an_empty_file_are_not_models() {
        for (name, bytes) in [
            ("empty.onnx", &b""[..]),
            ("text.onnx", b"this is not a model at all"),
        ] {
            let err = Model::load(write(name, bytes), &LoadOptions::new()).unwrap_err();
            assert!(
                matches!(err, EngineError::Malformed { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn a_corrupt_nnef_archive_is_refused() {
        let err = Model::load(
            write("broken.nnef.tgz", &[0x1f, 0x8b, 8, 0, 1, 2, 3]),
            &LoadOptions::new(),
        )
        .unwrap_err();
        assert!(matches!(err, EngineError::Malformed { .. }), "{err}");
    }

    #[test]
    fn per_axis_dequantize_below_opset_13_is_refused_with_the_reason() {
        let path = models().join("fixtures/per-axis-dq-opset11.onnx");
        let err = Model::load(&path, &LoadOptions::new()).unwrap_err();
        let EngineError::Refused { op, reason, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(op, "DequantizeLinear");
        assert!(
            reason.contains("opset 13") && reason.contains("opset 11"),
            "{err}"
        );
    }

    #[test]
    fn the_same_per_axis_graph_at_opset_13_runs_and_matches_onnx_runtime() {
        let fixtures = models().join("fixtures");
        let model = load(&fixtures.join("per-axis-dq-opset13.onnx"));
        let input =
            perch_runtime::engine::read_npy(fixtures.join("per-axis-dq-opset13.input_0.npy"))
                .unwrap();
        let want =
            perch_runtime::engine::read_npy(fixtures.join("per-axis-dq-opset13.output_0.npy"))
                .unwrap();
        let out = model.run(&[input.input().unwrap()]).unwrap();
        let (_, rel) = perch_runtime::engine::compare(out.view(0).unwrap(), want.view()).unwrap();
        assert!(rel <= 1e-4, "{rel}");
    }

    #[test]
    fn an_unsupported_operator_is_named_with_its_node() {
        let path = models().join("fixtures/unsupported-op.onnx");
        let err = Model::load(&path, &LoadOptions::new()).unwrap_err();
        let EngineError::UnsupportedOp { node, op, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(op, "com.microsoft:FusedConv");
        assert_eq!(node, "vendor_conv", "{err}");
    }
}

mod bad_inputs {
    use super::*;

    fn kws() -> (Model, Vec<f32>) {
        (
            load(&models().join("kws-dscnn/model.onnx")),
            vec![0.1f32; 490],
        )
    }

    #[test]
    fn a_wrong_input_count_is_refused() {
        let (model, x) = kws();
        let mut s = model.session().unwrap();
        let err = s.run(&[]).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InputCount {
                    expected: 1,
                    got: 0
                }
            ),
            "{err}"
        );
        let one = Input::f32(&[1, 1, 49, 10], &x);
        let err = s.run(&[one, one]).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InputCount {
                    expected: 1,
                    got: 2
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_shape_is_refused_and_the_session_keeps_working() {
        let (model, x) = kws();
        let mut s = model.session().unwrap();
        let err = s.run(&[Input::f32(&[1, 1, 10, 49], &x)]).unwrap_err();
        assert!(matches!(err, EngineError::InputShape { .. }), "{err}");
        assert!(err.to_string().contains("[1,1,49,10]"), "{err}");
        s.run(&[Input::f32(&[1, 1, 49, 10], &x)]).unwrap();
    }

    #[test]
    fn a_buffer_shorter_than_its_shape_is_refused() {
        let (model, x) = kws();
        let err = model
            .run(&[Input::f32(&[1, 1, 49, 10], &x[..489])])
            .unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InputLength {
                    expected: 490,
                    got: 489,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_dtype_is_refused() {
        let (model, _) = kws();
        let bytes = vec![0u8; 490];
        let input = Input {
            shape: &[1, 1, 49, 10],
            data: perch_runtime::engine::TensorData::U8(&bytes),
        };
        let err = model.run(&[input]).unwrap_err();
        assert!(matches!(err, EngineError::InputDType { .. }), "{err}");
    }

    #[test]
    fn nan_and_infinity_are_refused_by_default_and_allowed_by_policy() {
        let (model, mut x) = kws();
        x[17] = f32::NAN;
        let err = model.run(&[Input::f32(&[1, 1, 49, 10], &x)]).unwrap_err();
        assert!(
            matches!(err, EngineError::NonFinite { position: 17, .. }),
            "{err}"
        );
        x[17] = f32::INFINITY;
        assert!(model.run(&[Input::f32(&[1, 1, 49, 10], &x)]).is_err());

        let options = LoadOptions::new().non_finite(NonFinitePolicy::Allow);
        let lenient = Model::load(models().join("kws-dscnn/model.onnx"), &options).unwrap();
        lenient.run(&[Input::f32(&[1, 1, 49, 10], &x)]).unwrap();
    }

    #[test]
    fn reading_a_float_output_as_another_output_index_is_an_error() {
        let (model, x) = kws();
        let out = model.run(&[Input::f32(&[1, 1, 49, 10], &x)]).unwrap();
        assert!(matches!(
            out.f32(1),
            Err(EngineError::NoSuchOutput { index: 1, count: 1 })
        ));
    }
}

mod self_test {
    use super::*;

    #[test]
    fn a_self_test_against_another_models_goldens_fails_and_says_why() {
        let model = load(&models().join("anomaly-ae/model.onnx"));
        let golden = Golden::load(models().join("kws-dscnn/golden")).unwrap();
        let err = model
            .session()
            .unwrap()
            .self_test(&golden, Tolerance::default())
            .unwrap_err();
        assert!(matches!(err, EngineError::InputShape { .. }), "{err}");
    }

    #[test]
    fn a_self_test_with_perturbed_goldens_reports_the_relative_error() {
        let dir = scratch("perturbed");
        let src = models().join("anomaly-ae/golden");
        std::fs::copy(src.join("input_0.npy"), dir.join("input_0.npy")).unwrap();
        // The float model checked against the int8 model's outputs: close, but not 1e-4 close.
        std::fs::copy(src.join("output_0.w8.npy"), dir.join("output_0.npy")).unwrap();
        let model = load(&models().join("anomaly-ae/model.onnx"));
        let err = model
            .session()
            .unwrap()
            .self_test(&Golden::load(&dir).unwrap(), Tolerance::default())
            .unwrap_err();
        assert!(matches!(err, EngineError::SelfTest { .. }), "{err}");
        assert!(err.to_string().contains("relative error"), "{err}");
    }

    #[test]
    fn a_missing_golden_folder_is_an_error() {
        let err = Golden::load("/nonexistent/golden").unwrap_err();
        assert!(matches!(err, EngineError::Golden { .. }), "{err}");
    }
}

mod corrupted_models {
    use super::*;

    /// xorshift64*: a reproducible byte-flipping sequence without a dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn randomly_corrupted_models_load_or_fail_cleanly_and_never_take_the_process_down() {
        // Corrupt the small models: the structure (not the weights) is where a parser
        // breaks, and small files put most flips in the structure.
        let mut state = 0x5eed_u64;
        let mut refused = 0;
        for name in ["digits-mlp", "kws-dscnn"] {
            let original = std::fs::read(models().join(name).join("model.onnx")).unwrap();
            for _ in 0..150 {
                let mut bytes = original.clone();
                for _ in 0..1 + next(&mut state) % 4 {
                    let at = (next(&mut state) % bytes.len() as u64) as usize;
                    bytes[at] = next(&mut state) as u8;
                }
                match Model::from_onnx_bytes(&bytes, &LoadOptions::new()) {
                    Ok(model) => {
                        // A model that still loads must still answer (or refuse) a run.
                        let meta = model.metadata().clone();
                        if let Some(len) = meta.inputs.first().and_then(|i| i.fixed_len()) {
                            let shape: Vec<usize> = meta.inputs[0]
                                .shape
                                .iter()
                                .map(|d| match d {
                                    perch_runtime::engine::Dim::Fixed(n) => *n,
                                    perch_runtime::engine::Dim::Symbolic(_) => 1,
                                })
                                .collect();
                            if meta.inputs.len() == 1 && len < 1 << 20 {
                                let x = vec![0.5f32; len];
                                let _ = model.run(&[Input::f32(&shape, &x)]);
                            }
                        }
                    }
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 0, "no corruption was detected at all");
    }
}

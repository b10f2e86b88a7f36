//! `perch convert`: ONNX → NNEF archives that run like their source, or nothing.

use crate::{json, models, perch};

use std::path::{Path, PathBuf};

use perch_runtime::engine::{compare, Golden, LoadOptions, Model};
use serde_json::Value;

const MODELS: [&str; 4] = ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"];

/// Converts `models/<name>/<file>` into `dir`, returning the archive and the report.
fn convert(dir: &Path, name: &str, file: &str) -> (PathBuf, Value) {
    let archive = dir.join(format!(
        "{name}.{}",
        file.replace(".onnx", ".nnef.tgz")
            .trim_start_matches("model.")
    ));
    let out = perch()
        .args(["convert", "--json"])
        .arg(models().join(name).join(file))
        .arg("-o")
        .arg(&archive)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    (archive, json(&out))
}

/// Converts `source` into `dir` with the text report; returns the finished command.
fn convert_text(dir: &Path, source: &Path) -> assert_cmd::assert::Assert {
    perch()
        .arg("convert")
        .arg(source)
        .arg("-o")
        .arg(dir.join("text.nnef.tgz"))
        .assert()
}

#[test]
fn converted_reference_models_give_the_onnx_outputs_within_1e_5() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        for file in ["model.onnx", "model.w8.onnx"] {
            let (archive, report) = convert(dir.path(), name, file);
            assert!(archive.exists(), "{name}/{file}");
            assert_eq!(report["sample"]["kind"], "golden", "{report}");
            assert!(report["nnef_bytes"].as_u64().unwrap() > 0);
            // What a device build (without `onnx-ops`) can load: tract's core operators,
            // and Perch's where the model has layers its kernels run.
            let perch_ops = matches!(name, "kws-dscnn" | "mobilenetv2-035");
            let registries = if perch_ops {
                serde_json::json!(["perch", "tract_core"])
            } else {
                serde_json::json!(["tract_core"])
            };
            assert_eq!(report["registries"], registries, "{name}/{file}");
            assert_eq!(report["needs_onnx_ops"], false);

            // Independently of convert's own check: both forms through the engine.
            let onnx = Model::load(models().join(name).join(file), &LoadOptions::new()).unwrap();
            let nnef = Model::load(&archive, &LoadOptions::new()).unwrap();
            let golden = Golden::load(models().join(name).join("golden")).unwrap();
            let inputs = golden.input_refs().unwrap();
            let want = onnx.run(&inputs).unwrap();
            let got = nnef.run(&inputs).unwrap();
            assert_eq!(got.len(), want.len());
            for i in 0..want.len() {
                let (_, rel) = compare(got.tensor(i).unwrap(), want.tensor(i).unwrap()).unwrap();
                assert!(rel <= 1e-5, "{name}/{file} output {i}: {rel:e}");
            }
        }
    }
}

#[test]
fn converted_archives_pass_the_golden_check_through_perch_run() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        for file in ["model.onnx", "model.w8.onnx"] {
            let archive = dir.path().join(file.replace(".onnx", ".nnef.tgz"));
            perch()
                .arg("convert")
                .arg(models().join(name).join(file))
                .arg("-o")
                .arg(&archive)
                .assert()
                .success();
            // `model.w8.nnef.tgz` is checked against the w8 golden outputs.
            let out = perch()
                .args(["run", "--json"])
                .arg(&archive)
                .arg("--golden")
                .arg(models().join(name).join("golden"))
                .assert()
                .success()
                .get_output()
                .stdout
                .clone();
            assert_eq!(json(&out)["golden"]["passed"], true, "{name}/{file}");
        }
    }
}

#[test]
fn the_report_shows_both_load_times_and_the_agreement_per_output() {
    let dir = tempfile::tempdir().unwrap();
    let (_, report) = convert(dir.path(), "kws-dscnn", "model.onnx");
    for form in ["onnx", "nnef"] {
        let t = &report[form];
        let total = t["total_ms"].as_f64().unwrap();
        let parts = t["load_ms"].as_f64().unwrap() + t["first_run_ms"].as_f64().unwrap();
        assert!(total > 0.0 && (total - parts).abs() < 1e-6, "{t}");
    }
    assert_eq!(report["outputs"][0]["name"], "logits");
    assert!(report["outputs"][0]["relative_error"].as_f64().unwrap() <= 1e-4);
    assert_eq!(report["tolerance"].as_f64().unwrap() as f32, 1e-4);

    convert_text(dir.path(), &models().join("kws-dscnn/model.onnx"))
        .success()
        .stdout(predicates::str::contains("ONNX"))
        .stdout(predicates::str::contains("NNEF"))
        .stdout(predicates::str::contains("golden input"));
}

#[test]
fn without_golden_inputs_a_symbolic_batch_is_set_to_1_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("mlp.onnx");
    std::fs::copy(models().join("digits-mlp/model.onnx"), &source).unwrap();
    let out = perch()
        .args(["convert", "--json"])
        .arg(&source)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report = json(&out);
    assert_eq!(report["sample"]["kind"], "synthetic");
    let notes = report["sample"]["notes"].to_string();
    assert!(notes.contains("N") && notes.contains("set to 1"), "{notes}");
    // The default output sits beside the model.
    assert!(dir.path().join("mlp.nnef.tgz").exists());
    assert_eq!(
        report["output"],
        dir.path().join("mlp.nnef.tgz").display().to_string()
    );
}

#[test]
fn refused_models_exit_2_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for fixture in ["per-axis-dq-opset11.onnx", "unsupported-op.onnx"] {
        let out = dir.path().join("out.nnef.tgz");
        let assert = perch()
            .arg("convert")
            .arg(models().join("fixtures").join(fixture))
            .arg("-o")
            .arg(&out)
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("node"), "{stderr}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{fixture}"
        );
    }
}

#[test]
fn an_output_in_a_missing_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no-such-folder").join("m.nnef.tgz");
    perch()
        .arg("convert")
        .arg(models().join("kws-dscnn/model.onnx"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no-such-folder"))
        .stderr(predicates::str::contains("does not exist"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_archive_that_computes_something_else_is_refused_with_the_difference() {
    // The archive of the int8-weight twin is a real, loadable archive whose outputs
    // differ from the float source by about 2 % relative.
    let dir = tempfile::tempdir().unwrap();
    let (w8_archive, _) = convert(dir.path(), "kws-dscnn", "model.w8.onnx");
    let bytes = std::fs::read(&w8_archive).unwrap();
    let err =
        perch_tools::convert::check_archive(&models().join("kws-dscnn/model.onnx"), &bytes, 1e-4)
            .unwrap_err()
            .to_string();
    assert!(err.contains("differs") && err.contains("logits"), "{err}");

    // The same archive against its own source passes.
    let check = perch_tools::convert::check_archive(
        &models().join("kws-dscnn/model.w8.onnx"),
        &bytes,
        1e-4,
    )
    .unwrap();
    assert!(check.outputs[0].relative_error <= 1e-4);
}

#[test]
fn an_archive_that_does_not_load_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = convert(dir.path(), "kws-dscnn", "model.onnx");
    let bytes = std::fs::read(&archive).unwrap();
    for broken in [&bytes[..bytes.len() / 2], &b"\x1f\x8b\x08\x00garbage"[..]] {
        let err = perch_tools::convert::check_archive(
            &models().join("kws-dscnn/model.onnx"),
            broken,
            1e-4,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot load the NNEF archive"), "{err}");
    }
}

#[test]
fn a_tolerance_the_conversion_cannot_meet_refuses_and_writes_nothing() {
    // Relative errors are never negative, so a negative tolerance cannot be met.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.nnef.tgz");
    perch()
        .args(["convert", "--tolerance=-1"])
        .arg(models().join("kws-dscnn/model.w8.onnx"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("refusing to write"))
        .stderr(predicates::str::contains("differs"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_archive_that_needs_the_onnx_operator_extensions_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_, report) = convert(dir.path(), "fixtures", "onnx-extension-op.onnx");
    assert_eq!(report["needs_onnx_ops"], true, "{report}");
    assert!(report["registries"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("tract_onnx")));
    convert_text(
        dir.path(),
        &models().join("fixtures/onnx-extension-op.onnx"),
    )
    .success()
    .stdout(predicates::str::contains("--features onnx-ops"));
}

#[test]
fn an_nnef_archive_or_a_corrupt_file_is_not_converted() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07garbage").unwrap();
    perch()
        .arg("convert")
        .arg(&corrupt)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("corrupt.onnx"));
    assert!(!dir.path().join("corrupt.nnef.tgz").exists());

    let archive = dir.path().join("a.nnef.tgz");
    perch()
        .arg("convert")
        .arg(models().join("kws-dscnn/model.onnx"))
        .arg("-o")
        .arg(&archive)
        .assert()
        .success();
    perch()
        .arg("convert")
        .arg(&archive)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("already an NNEF archive"));
}

/// x f32 [1,3,6,6] → QuantizeLinear → DequantizeLinear → Conv 3x3 → y [1,2,4,4]: the
/// activation quantization of a static QDQ model, as ONNX Runtime's tools write it.
fn qdq_model(dir: &Path) -> PathBuf {
    use pb::tensor_proto::DataType as Dt;
    use perch_tools::onnx::pb;
    let value_info = |name: &str, dims: &[i64]| {
        use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Dt::Float as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                value: Some(D::DimValue(*d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "qdq".into(),
            node: vec![
                node("QuantizeLinear", &["x", "s", "z"], "xq"),
                node("DequantizeLinear", &["xq", "s", "z"], "xdq"),
                node("Conv", &["xdq", "w"], "y"),
            ],
            initializer: vec![
                pb::TensorProto {
                    name: "s".into(),
                    data_type: Dt::Float as i32,
                    float_data: vec![0.01],
                    ..Default::default()
                },
                pb::TensorProto {
                    name: "z".into(),
                    data_type: Dt::Uint8 as i32,
                    raw_data: vec![128],
                    ..Default::default()
                },
                pb::TensorProto {
                    name: "w".into(),
                    dims: vec![2, 3, 3, 3],
                    data_type: Dt::Float as i32,
                    float_data: (0..54).map(|i| (i as f32 - 27.0) / 27.0).collect(),
                    ..Default::default()
                },
            ],
            input: vec![value_info("x", &[1, 3, 6, 6])],
            output: vec![value_info("y", &[1, 2, 4, 4])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("qdq.onnx");
    perch_tools::onnx::write_model(&path, &model).unwrap();
    path
}

#[test]
fn a_model_the_nnef_writer_cannot_write_is_refused_and_leaves_nothing() {
    // tract 0.23.9's NNEF writer has no serializer for activation QuantizeLinear.
    let dir = tempfile::tempdir().unwrap();
    let source = qdq_model(dir.path());
    let assert = perch()
        .arg("convert")
        .arg(&source)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("NNEF writer cannot write"))
        .stderr(predicates::str::contains("QuantizeLinear"));
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("qdq.onnx")]);
}

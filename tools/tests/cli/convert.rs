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
                let (_, rel) = compare(got.view(i).unwrap(), want.view(i).unwrap()).unwrap();
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

#[test]
fn int8_models_become_archives_a_third_of_the_float_ones_that_run_on_integer_kernels() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let (_, float) = convert(dir.path(), name, "model.onnx");
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let (archive, int8) = convert(&sub, name, "model.qdq.onnx");
        // Integer weights stay integers: the archive is not re-inflated to f32.
        let (f, q) = (
            float["nnef_bytes"].as_u64().unwrap(),
            int8["nnef_bytes"].as_u64().unwrap(),
        );
        assert!(q * 100 <= f * 35, "{name}: int8 {q} bytes, float {f}");
        // A device build (without `onnx-ops`) loads it: Perch's and tract's core operators.
        assert_eq!(
            int8["registries"],
            serde_json::json!(["perch", "tract_core"]),
            "{int8}"
        );
        assert_eq!(int8["needs_onnx_ops"], false);
        assert_eq!(int8["outputs"][0]["max_abs_error"], 0.0, "{int8}");
        // On integer kernels, and against ONNX Runtime's int8 result
        // (golden/output_0.qdq.npy): exactly, through `perch run`, except R4, which is
        // checked against ONNX Runtime's fused run (golden/output_0.qdq.fused.npy, the
        // arithmetic the kernels share): within 2 output steps of 0.0079, as ONNX
        // Runtime's own aarch64 run is (BENCHMARKS.md).
        let renamed = sub.join("model.qdq.nnef.tgz");
        std::fs::rename(&archive, &renamed).unwrap();
        let model = Model::load(&renamed, &LoadOptions::new()).unwrap();
        let integer = model
            .metadata()
            .kernels
            .iter()
            .filter(|k| k.kernel.as_deref().is_some_and(|k| k.starts_with("q8_")))
            .count();
        assert!(integer >= 3, "{name}: {:?}", model.metadata().kernels);
        if name == "mobilenetv2-035" {
            let golden =
                Golden::load_variant(models().join(name).join("golden"), Some("qdq.fused"))
                    .unwrap();
            let got = model.run(&golden.input_refs().unwrap()).unwrap();
            let (max_abs, _) = compare(got.view(0).unwrap(), golden.outputs[0].view()).unwrap();
            assert!(max_abs <= 0.0159, "{name}: {max_abs}");
            continue;
        }
        let out = perch()
            .args(["run", "--json"])
            .arg(&renamed)
            .arg("--golden")
            .arg(models().join(name).join("golden"))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert_eq!(json(&out)["golden"]["passed"], true, "{name}");
    }
}

#[test]
fn a_model_the_nnef_writer_cannot_write_is_refused_and_leaves_nothing() {
    // Dynamic quantization's DynamicQuantizeLinear has no NNEF form (tract's or Perch's).
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("dyn.onnx");
    std::fs::copy(models().join("kws-dscnn/model.dyn.onnx"), &source).unwrap();
    let assert = perch()
        .arg("convert")
        .arg(&source)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("NNEF writer cannot write"))
        .stderr(predicates::str::contains("DynamicQuantizeLinear"));
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("dyn.onnx")]);
}

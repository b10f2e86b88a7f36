//! The `perch` binary as a user runs it.

use crate::{json, models, perch};
use perch_runtime::engine::internal::ArrayExt;

mod run {
    use super::*;

    #[test]
    fn run_without_inputs_checks_the_golden_outputs_beside_the_model() {
        for name in ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"] {
            for file in ["model.onnx", "model.w8.onnx"] {
                let out = perch()
                    .args(["run", "--json"])
                    .arg(models().join(name).join(file))
                    .assert()
                    .success()
                    .get_output()
                    .stdout
                    .clone();
                let report = json(&out);
                assert_eq!(report["golden"]["passed"], true, "{name}/{file}: {report}");
            }
        }
    }

    #[test]
    fn run_with_an_input_file_prints_the_predicted_class() {
        let golden = models().join("digits-mlp/golden");
        let out = perch()
            .args(["run", "--json", "--input"])
            .arg(golden.join("input_0.npy"))
            .arg(models().join("digits-mlp/model.onnx"))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let report = json(&out);
        assert!(report["golden"].is_null());
        let labels = perch_runtime::engine::read_npy(golden.join("labels_0.npy")).unwrap();
        let labels: Vec<u64> = labels
            .tensor()
            .cast_to::<i64>()
            .unwrap()
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<i64>()
            .unwrap()
            .iter()
            .map(|l| *l as u64)
            .collect();
        let argmax: Vec<u64> = report["outputs"][0]["argmax"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(argmax, labels);
    }

    #[test]
    fn run_against_the_wrong_golden_outputs_exits_non_zero() {
        // The float model checked against its int8 twin's outputs differs by more than 1e-4.
        perch()
            .args(["run", "--variant", "w8"])
            .arg(models().join("anomaly-ae/model.onnx"))
            .assert()
            .code(1)
            .stdout(predicates::str::contains("DIFFERS FROM"));
    }

    #[test]
    fn an_input_of_the_wrong_shape_is_reported_with_the_expected_shape() {
        perch()
            .args(["run", "--input"])
            .arg(models().join("kws-dscnn/golden/input_0.npy"))
            .arg(models().join("digits-mlp/model.onnx"))
            .assert()
            .code(2)
            .stderr(predicates::str::contains("must have shape [N,64]"));
    }
}

mod inspect {
    use super::*;

    #[test]
    fn inspect_json_lists_inputs_outputs_opset_and_ops() {
        let out = perch()
            .args(["inspect", "--json"])
            .arg(models().join("mobilenetv2-035/model.onnx"))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let report = json(&out);
        assert_eq!(report["format"], "onnx");
        assert_eq!(report["opset"], 13);
        assert_eq!(report["inputs"][0]["name"], "image");
        assert_eq!(
            report["inputs"][0]["shape"],
            serde_json::json!(["1", "3", "128", "128"])
        );
        assert_eq!(report["outputs"][0]["name"], "logits");
        assert!(report["ops"]["Conv"].as_u64().unwrap() > 30, "{report}");
    }

    #[test]
    fn inspect_refuses_an_invalid_per_axis_model_and_names_the_node() {
        perch()
            .arg("inspect")
            .arg(models().join("fixtures/per-axis-dq-opset11.onnx"))
            .assert()
            .code(2)
            .stderr(predicates::str::contains("DequantizeLinear"))
            .stderr(predicates::str::contains("opset 13"));
    }

    #[test]
    fn a_shape_override_fixes_a_symbolic_batch() {
        let out = perch()
            .args(["inspect", "--json", "--shape", "pixels=8,64"])
            .arg(models().join("digits-mlp/model.onnx"))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert_eq!(
            json(&out)["inputs"][0]["shape"],
            serde_json::json!(["8", "64"])
        );
    }

    #[test]
    fn a_missing_model_file_is_one_readable_line() {
        let assert = perch()
            .args(["inspect", "/nonexistent/m.onnx"])
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("/nonexistent/m.onnx"), "{stderr}");
    }
}

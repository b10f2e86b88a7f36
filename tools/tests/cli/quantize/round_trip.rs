use super::*;

#[test]
fn weight_only_int8_keeps_digit_accuracy_within_one_point_on_held_out_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits.w8.onnx");
    let heldout_path = models().join("digits-mlp/heldout.npz");
    let float = models().join("digits-mlp/model.onnx");
    let report = quantize(&[s(&float), "-o", s(&out), "--eval", s(&heldout_path)]);

    // Accuracy measured here, on the engine, from the written file.
    let (x, y) = heldout();
    let float_accuracy = engine_accuracy(&float, &x, &y);
    let quantized_accuracy = engine_accuracy(&out, &x, &y);
    let drop = (float_accuracy - quantized_accuracy) * 100.0;
    assert!(
        drop <= 1.0,
        "accuracy {float_accuracy} -> {quantized_accuracy}"
    );

    // The report says the same.
    let candidate = &report["candidates"][0];
    assert_eq!(candidate["mode"], "weights");
    assert_eq!(candidate["written"], true);
    let reported = candidate["agreement"]["accuracy"].as_f64().unwrap();
    assert!((reported - quantized_accuracy).abs() < 1e-9, "{report}");
    let reported_drop = candidate["accuracy_drop_points"].as_f64().unwrap();
    assert!((reported_drop - drop).abs() < 1e-6, "{report}");
    assert!(candidate["agreement"]["top1_agreement"].as_f64().unwrap() >= 0.98);
    assert_eq!(report["evaluation"]["samples"], 450);
    assert_eq!(report["evaluation"]["held_out"], true);
    assert!(candidate["latency_ratio"].as_f64().unwrap() > 0.0);
    let size = std::fs::metadata(&out).unwrap().len();
    assert_eq!(candidate["size_bytes"].as_u64().unwrap(), size);
}

#[test]
fn static_quantization_calibrated_on_one_split_keeps_accuracy_within_one_point_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let (calibration, eval) = split_heldout(dir.path());
    let (x, y) = heldout();
    let x_eval = x
        .slice(tract_onnx::prelude::tract_ndarray::s![150.., ..])
        .to_owned();
    let y_eval = y
        .slice(tract_onnx::prelude::tract_ndarray::s![150..])
        .to_owned();
    let float = models().join("digits-mlp/model.onnx");
    let float_accuracy = engine_accuracy(&float, &x_eval, &y_eval);
    for method in ["minmax", "percentile", "entropy"] {
        let out = dir.path().join(format!("digits.static.{method}.onnx"));
        let report = quantize(&[
            s(&float),
            "-o",
            s(&out),
            "--mode",
            "static",
            "--method",
            method,
            "--calibration",
            s(&calibration),
            "--eval",
            s(&eval),
        ]);
        assert_eq!(report["calibration_samples"], 150);
        assert_eq!(report["evaluation"]["samples"], 300);
        let accuracy = engine_accuracy(&out, &x_eval, &y_eval);
        let drop = (float_accuracy - accuracy) * 100.0;
        assert!(
            drop <= 1.0,
            "{method}: accuracy {float_accuracy} -> {accuracy}"
        );

        // QDQ on every layer's activation input, per-channel int8 weights, float biases.
        let model = read_model(&out).unwrap();
        let graph = model.graph.as_ref().unwrap();
        for gemm in graph.node.iter().filter(|n| n.op_type == "Gemm") {
            let producer = |name: &str| {
                graph
                    .node
                    .iter()
                    .find(|n| n.output.iter().any(|o| o == name))
            };
            assert_eq!(
                producer(&gemm.input[0]).unwrap().op_type,
                "DequantizeLinear",
                "{}",
                gemm.name
            );
            assert_eq!(
                producer(&gemm.input[1]).unwrap().op_type,
                "DequantizeLinear",
                "{}",
                gemm.name
            );
            assert_eq!(
                initializer(&model, &gemm.input[2]).unwrap().data_type,
                1,
                "bias stays float"
            );
        }
        let quantize_nodes = graph
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .count();
        assert_eq!(quantize_nodes, 3, "{method}");
    }
}

#[test]
fn dynamic_quantization_keeps_digit_accuracy_within_one_point_and_uses_integer_matmuls() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits.dynamic.onnx");
    let float = models().join("digits-mlp/model.onnx");
    let heldout_path = models().join("digits-mlp/heldout.npz");
    quantize(&[
        s(&float),
        "-o",
        s(&out),
        "--mode",
        "dynamic",
        "--eval",
        s(&heldout_path),
    ]);
    let (x, y) = heldout();
    let drop = (engine_accuracy(&float, &x, &y) - engine_accuracy(&out, &x, &y)) * 100.0;
    assert!(drop <= 1.0, "drop {drop}");
    let model = read_model(&out).unwrap();
    let ops: Vec<&str> = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(
        ops.iter().filter(|o| **o == "MatMulInteger").count(),
        3,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter()
            .filter(|o| **o == "DynamicQuantizeLinear")
            .count(),
        3,
        "{ops:?}"
    );
    assert!(!ops.contains(&"Gemm"), "{ops:?}");
}

#[test]
fn auto_mode_measures_every_candidate_and_explains_each_layer_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (calibration, eval) = split_heldout(dir.path());
    let out = dir.path().join("digits.auto.onnx");
    let float = models().join("digits-mlp/model.onnx");
    let report = quantize(&[
        s(&float),
        "-o",
        s(&out),
        "--mode",
        "auto",
        "--calibration",
        s(&calibration),
        "--eval",
        s(&eval),
        "--max-accuracy-drop",
        "1",
    ]);
    let modes: Vec<&str> = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["weights", "dynamic", "static", "auto"]);
    for c in report["candidates"].as_array().unwrap() {
        assert!(c["engine_error"].is_null(), "{c}");
        assert!(c["latency_ratio"].as_f64().unwrap() > 0.0, "{c}");
    }
    let auto = &report["auto"];
    assert_eq!(auto["loss_unit"], "accuracy_drop_points");
    assert!(auto["combined_loss"].as_f64().unwrap() <= 1.0, "{auto}");
    let layers = auto["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for layer in layers {
        assert!(!layer["reason"].as_str().unwrap().is_empty(), "{layer}");
        assert!(!layer["trials"].as_array().unwrap().is_empty(), "{layer}");
    }
    // What was written is what the report describes, and it is within budget.
    let (x, y) = heldout();
    let x_eval = x
        .slice(tract_onnx::prelude::tract_ndarray::s![150.., ..])
        .to_owned();
    let y_eval = y
        .slice(tract_onnx::prelude::tract_ndarray::s![150..])
        .to_owned();
    let drop = (engine_accuracy(&float, &x_eval, &y_eval)
        - engine_accuracy(&out, &x_eval, &y_eval))
        * 100.0;
    assert!(drop <= 1.0, "drop {drop}");
    let written = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["written"] == true)
        .unwrap();
    assert_eq!(written["mode"], "auto");
    assert_eq!(
        written["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );
}

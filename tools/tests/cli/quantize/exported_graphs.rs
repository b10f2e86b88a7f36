//! `models/fixtures/exported-opset11.onnx` is a small CNN as exporters write it
//! (paddle2onnx, PyTorch without constant folding): 25 Constant nodes and no
//! initializer, a BatchNormalization after each of its 4 Conv (one depthwise), a Gemm,
//! a Squeeze with an opset-11 `axes` attribute, and a Softmax, at opset 11.

use super::*;

const EXPORTED: &str = "fixtures/exported-opset11.onnx";

/// 16 calibration and 32 evaluation samples [S, 3, 16, 32], drawn like the golden input.
fn data(dir: &Path) -> (PathBuf, PathBuf) {
    let calibration = dir.join("calibration.npy");
    let eval = dir.join("eval.npy");
    for (path, n, seed) in [(&calibration, 16, 11), (&eval, 32, 12)] {
        ArrayD::from_shape_vec(IxDyn(&[n, 3, 16, 32]), pseudo_normal(n * 3 * 16 * 32, seed))
            .unwrap()
            .write_npy(File::create(path).unwrap())
            .unwrap();
    }
    (calibration, eval)
}

/// Quantizes the fixture in `mode`, checks the written file on the engine against the
/// float golden output, and returns the report.
fn quantize_exported(mode: &str, dir: &Path) -> serde_json::Value {
    let (calibration, eval) = data(dir);
    let out = dir.join(format!("exported.{mode}.onnx"));
    let mut args = vec![
        s(&models().join(EXPORTED)).to_string(),
        "-o".into(),
        s(&out).into(),
        "--mode".into(),
        mode.into(),
        "--eval".into(),
        s(&eval).into(),
    ];
    if mode == "static" || mode == "auto" {
        args.extend(["--calibration".into(), s(&calibration).into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    quantize(&args)
}

/// Relative error (max |q − f| / max |f|) of the written model against the fixture's
/// ONNX Runtime golden output, and whether its top-1 class is the golden one.
fn against_golden(path: &Path) -> (f32, bool) {
    let fixtures = models().join("fixtures");
    let input = read_npy(fixtures.join("exported-opset11.input_0.npy")).unwrap();
    let want = read_npy(fixtures.join("exported-opset11.output_0.npy")).unwrap();
    let model = Model::load(path, &LoadOptions::new()).unwrap();
    let outputs = model.run(&[input.input().unwrap()]).unwrap();
    let (_, relative) =
        perch_runtime::engine::compare(outputs.view(0).unwrap(), want.view()).unwrap();
    let want = want.view().as_f32().unwrap();
    (relative, argmax(outputs.f32(0).unwrap()) == argmax(want))
}

/// Bounds on the relative error against float, per mode. Weight-only int8 moves each
/// weight by at most half a step of 255 per channel (as for the reference models:
/// `WEIGHT_ONLY_RELATIVE_ERROR`; 0.9 % measured here); static and dynamic also round
/// every layer's input to 256 levels of its range, up to 0.2 % per layer over 5 layers
/// (1.3 % measured). Auto picks among those.
const RELATIVE_ERROR: [(&str, f32); 4] = [
    ("weights", 0.08),
    ("static", 0.05),
    ("dynamic", 0.05),
    ("auto", 0.05),
];

#[test]
fn every_mode_quantizes_an_export_with_constant_weights_unfolded_batch_norms_and_opset_11() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, bound) in RELATIVE_ERROR {
        let report = quantize_exported(mode, dir.path());
        assert_eq!(report["source_opset"], 11, "{mode}");
        assert_eq!(report["opset"], 13, "{mode}");
        assert_eq!(report["per_channel"], true, "{mode}");
        assert_eq!(report["layer_count"], 5, "{mode}: 4 Conv and 1 Gemm");
        let preparation = report["preparation"].to_string();
        assert!(
            preparation.contains("25 Constant nodes became initializers"),
            "{mode}: {preparation}"
        );
        assert!(
            preparation.contains("opset 11 converted to 13"),
            "{mode}: {preparation}"
        );
        let folds = preparation.contains("4 BatchNormalization nodes folded");
        assert_eq!(folds, mode != "weights", "{mode}: {preparation}");
        let written = report["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["written"] == true)
            .unwrap()
            .clone();
        assert!(written["engine_error"].is_null(), "{mode}: {written}");
        if mode == "static" || mode == "dynamic" {
            assert_eq!(written["layers_quantized"], 5, "{mode}: {report}");
        }
        let agreement = &written["agreement"];
        assert!(
            agreement["top1_agreement"].as_f64().unwrap() >= 0.9,
            "{mode}: {agreement}"
        );

        let out = dir.path().join(format!("exported.{mode}.onnx"));
        let (relative, top1) = against_golden(&out);
        assert!(relative <= bound, "{mode}: relative error {relative}");
        assert!(top1, "{mode}: the golden input's class changed");
        let model = read_model(&out).unwrap();
        let graph = model.graph.as_ref().unwrap();
        assert!(
            graph.node.iter().all(|n| n.op_type != "BatchNormalization") || mode == "weights",
            "{mode}"
        );
        for conv in graph.node.iter().filter(|n| n.op_type == "Conv") {
            let producer = graph
                .node
                .iter()
                .find(|n| n.output.contains(&conv.input[1]))
                .map(|n| n.op_type.as_str());
            assert_ne!(producer, Some("Constant"), "{mode}: {}", conv.name);
        }
    }
}

#[test]
fn weight_only_int8_of_an_export_is_smaller_than_its_float_file() {
    let dir = tempfile::tempdir().unwrap();
    let report = quantize_exported("weights", dir.path());
    let written = &report["candidates"][0];
    assert!(
        written["layers_quantized"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert!(written["size_ratio"].as_f64().unwrap() > 1.5, "{written}");
}

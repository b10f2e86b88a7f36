use super::*;

/// Runs a quantize that must fail: exit code 2, one line on stderr containing `needle`,
/// and nothing written in the output folder.
fn refused(args: &[&str], out_dir: &Path, needle: &str) {
    let before = files_in(out_dir);
    let assert = perch().arg("quantize").args(args).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("perch: cannot quantize"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert_eq!(files_in(out_dir), before, "{args:?} left files behind");
}

#[test]
fn models_the_engine_refuses_corrupt_files_and_quantized_models_are_refused_with_nothing_written() {
    let inputs = tempfile::tempdir().unwrap();
    let empty = inputs.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let garbage = inputs.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07this is not a protobuf \xff\xff\xff\xff").unwrap();
    let truncated = inputs.path().join("truncated.onnx");
    let bytes = std::fs::read(models().join("kws-dscnn/model.onnx")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.onnx");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            models().join("fixtures/unsupported-op.onnx"),
            "com.microsoft:FusedConv",
        ),
        (
            models().join("fixtures/per-axis-dq-opset11.onnx"),
            "opset 13",
        ),
        (
            models().join("digits-mlp/model.w8.onnx"),
            "already quantized (weight-only int8 per-channel",
        ),
        (
            models().join("fixtures/per-axis-dq-opset13.onnx"),
            "already quantized",
        ),
        (empty, "empty"),
        (garbage, "not a valid model"),
        (truncated, "not a valid model"),
        (inputs.path().join("missing.onnx"), "No such file"),
    ];
    for (model, needle) in cases {
        refused(&[s(&model), "-o", s(&out)], out_dir.path(), needle);
    }
}

#[test]
fn a_model_this_tool_quantized_is_refused_as_already_quantized_with_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = dir.path().join("dynamic.onnx");
    quantize(&[
        s(&models().join("digits-mlp/model.onnx")),
        "-o",
        s(&dynamic),
        "--mode",
        "dynamic",
    ]);
    let out_dir = tempfile::tempdir().unwrap();
    refused(
        &[s(&dynamic), "-o", s(&out_dir.path().join("again.onnx"))],
        out_dir.path(),
        "dynamic quantization",
    );
}

#[test]
fn calibration_data_of_the_wrong_shape_is_refused_naming_the_file_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.npy");
    ArrayD::from_shape_vec(IxDyn(&[4, 640]), pseudo_normal(4 * 640, 4))
        .unwrap()
        .write_npy(File::create(&wrong).unwrap())
        .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let (kws, out) = (
        models().join("kws-dscnn/model.onnx"),
        out_dir.path().join("kws.static.onnx"),
    );
    let args = [
        s(&kws),
        "-o",
        s(&out),
        "--mode",
        "static",
        "--calibration",
        s(&wrong),
    ];
    refused(&args, out_dir.path(), "wrong.npy has shape [4, 640]");
    refused(&args, out_dir.path(), "expected [S,1,49,10]");
    let labels = models().join("digits-mlp/golden/labels_0.npy");
    let digits = models().join("digits-mlp/model.onnx");
    let args = [
        s(&digits),
        "-o",
        s(&out),
        "--mode",
        "static",
        "--calibration",
        s(&labels),
    ];
    refused(&args, out_dir.path(), "expected float32");
}

#[test]
fn static_quantization_without_calibration_data_is_refused() {
    let out_dir = tempfile::tempdir().unwrap();
    let (digits, out) = (
        models().join("digits-mlp/model.onnx"),
        out_dir.path().join("x.onnx"),
    );
    let args = [s(&digits), "-o", s(&out), "--mode", "static"];
    refused(&args, out_dir.path(), "--calibration");
}

use super::*;

#[test]
fn the_report_file_is_the_json_report_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r3.w8.onnx");
    let report_path = dir.path().join("report.json");
    let printed = quantize(&[
        s(&models().join("anomaly-ae/model.onnx")),
        "-o",
        s(&out),
        "--report",
        s(&report_path),
    ]);
    let written = json(&std::fs::read(&report_path).unwrap());
    // Latencies are measured once; everything in the file is what was printed.
    assert_eq!(written, printed);
    assert_eq!(written["mode"], "weights");
    let candidate = &written["candidates"][0];
    assert!(
        candidate["agreement"]["top1_agreement"].is_null(),
        "a reconstruction has no classes"
    );
    assert!(candidate["agreement"]["relative_error"].as_f64().unwrap() < 0.08);
    assert!(candidate["size_ratio"].as_f64().unwrap() > 3.0);
    assert_eq!(files_in(dir.path()), ["r3.w8.onnx", "report.json"]);
}

#[test]
fn the_text_report_names_the_mode_the_sizes_and_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits.w8.onnx");
    let assert = perch()
        .arg("quantize")
        .arg(models().join("digits-mlp/model.onnx"))
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    for needle in [
        "weights",
        "[written]",
        "fc1",
        "fc2",
        "fc3",
        "64 scales",
        "NOT held-out",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

use super::*;

/// With PERCH_QUANTIZED_OUT=DIR, writes R1, R2 and the exported-graph fixture in every
/// mode to DIR for
/// `python3 tools/ort_check.py DIR/*.onnx` (ONNX checker + ONNX Runtime). Without it,
/// does nothing: the tests never need Python.
#[test]
fn every_mode_is_written_for_the_onnx_runtime_check_when_a_folder_is_given() {
    let Some(target) = std::env::var_os("PERCH_QUANTIZED_OUT").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&target).unwrap();
    let data = tempfile::tempdir().unwrap();
    let (r1_calibration, r1_eval) = split_heldout(data.path());
    let r2_calibration = data.path().join("kws-calibration.npy");
    ArrayD::from_shape_vec(IxDyn(&[8, 1, 49, 10]), pseudo_normal(8 * 490, 5))
        .unwrap()
        .write_npy(File::create(&r2_calibration).unwrap())
        .unwrap();
    let exported_calibration = data.path().join("exported-calibration.npy");
    ArrayD::from_shape_vec(IxDyn(&[8, 3, 16, 32]), pseudo_normal(8 * 1536, 6))
        .unwrap()
        .write_npy(File::create(&exported_calibration).unwrap())
        .unwrap();
    for (name, model, calibration, eval) in [
        (
            "digits-mlp",
            models().join("digits-mlp/model.onnx"),
            r1_calibration,
            Some(r1_eval),
        ),
        (
            "kws-dscnn",
            models().join("kws-dscnn/model.onnx"),
            r2_calibration,
            None,
        ),
        // An export as paddle2onnx writes one: Constant weights, batch norms, opset 11.
        (
            "exported-opset11",
            models().join("fixtures/exported-opset11.onnx"),
            exported_calibration,
            Some(models().join("fixtures/exported-opset11.input_0.npy")),
        ),
    ] {
        for mode in ["weights", "static", "dynamic", "auto"] {
            let out = target.join(format!("{name}.{mode}.onnx"));
            let mut args = vec![
                s(&model).to_string(),
                "-o".into(),
                s(&out).into(),
                "--mode".into(),
                mode.into(),
            ];
            if mode == "static" || mode == "auto" {
                args.extend(["--calibration".into(), s(&calibration).into()]);
            }
            if let Some(eval) = &eval {
                args.extend(["--eval".into(), s(eval).into()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            quantize(&args);
            assert!(out.is_file());
        }
    }
}

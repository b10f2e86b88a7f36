//! `perch inspect` on the reference models, on the refused fixtures, and on small
//! quantized graphs written here in each ONNX quantization format.

use crate::{json, models, perch};

use std::path::{Path, PathBuf};

use perch_tools::onnx::pb;
use serde_json::Value;

fn inspect_json(path: &Path, extra: &[&str]) -> Value {
    let out = perch()
        .args(["inspect", "--json"])
        .args(extra)
        .arg(path)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    json(&out)
}

/// The reference models' catalog entries (models/models.json).
fn catalog() -> Vec<Value> {
    let text = std::fs::read_to_string(models().join("models.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn multiply_accumulates_match_the_model_catalog_for_float_and_int8_weights() {
    for entry in catalog() {
        let folder = models().join(entry["name"].as_str().unwrap());
        let want = entry["macs"].as_u64().unwrap();
        for file in ["model.onnx", "model.w8.onnx"] {
            let report = inspect_json(&folder.join(file), &[]);
            let compute = &report["compute"];
            assert_eq!(compute["macs"].as_u64(), Some(want), "{file} {report}");
            assert_eq!(compute["flops"].as_u64(), Some(2 * want));
            assert_eq!(compute["unknown"], serde_json::json!([]));
            let by_op_total: u64 = compute["by_op"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v["macs"].as_u64().unwrap())
                .sum();
            assert_eq!(by_op_total, want);
            assert_eq!(report["engine"]["supported"], true);
        }
    }
}

#[test]
fn depthwise_convolutions_are_counted_apart_with_one_input_channel_per_tap() {
    let report = inspect_json(&models().join("kws-dscnn/model.onnx"), &[]);
    let by_op = &report["compute"]["by_op"];
    // DS-CNN: 4 depthwise 3x3 convs of 64 channels over 25x5, one input channel each.
    assert_eq!(by_op["Conv (depthwise)"]["nodes"], 4);
    assert_eq!(
        by_op["Conv (depthwise)"]["macs"].as_u64(),
        Some(4 * 64 * 25 * 5 * 3 * 3)
    );
}

#[test]
fn a_fixed_batch_multiplies_the_multiply_accumulates() {
    let want = catalog()
        .iter()
        .find(|e| e["name"] == "digits-mlp")
        .unwrap()["macs"]
        .as_u64()
        .unwrap();
    let per_sample = inspect_json(&models().join("digits-mlp/model.onnx"), &[]);
    assert_eq!(per_sample["compute"]["symbolic_dims_as_one"], true);
    let batch = inspect_json(
        &models().join("digits-mlp/model.onnx"),
        &["--shape", "pixels=8,64"],
    );
    assert_eq!(batch["compute"]["macs"].as_u64(), Some(8 * want));
    assert_eq!(batch["compute"]["symbolic_dims_as_one"], false);
}

#[test]
fn parameters_count_every_initializer_element_and_its_bytes() {
    for entry in catalog() {
        let folder = models().join(entry["name"].as_str().unwrap());
        let float = inspect_json(&folder.join("model.onnx"), &[]);
        // The catalog leaves out the Clip bounds of ReLU6 (initializers named relu6.*).
        let proto = perch_tools::onnx::read_model(&folder.join("model.onnx")).unwrap();
        let clip_bounds: i64 = proto
            .graph
            .unwrap()
            .initializer
            .iter()
            .filter(|t| t.name.starts_with("relu6."))
            .map(|t| t.dims.iter().product::<i64>())
            .sum();
        let count = float["parameters"]["count"].as_u64().unwrap();
        assert_eq!(
            count,
            entry["params"].as_u64().unwrap() + clip_bounds as u64,
            "{}",
            entry["name"]
        );
        assert_eq!(float["parameters"]["bytes"].as_u64(), Some(4 * count));

        let w8 = inspect_json(&folder.join("model.w8.onnx"), &[]);
        let w8_bytes = w8["parameters"]["bytes"].as_u64().unwrap();
        assert!(w8_bytes * 2 < 4 * count, "{}: {w8_bytes}", entry["name"]);
        assert!(w8["parameters"]["by_dtype"]["i8"].as_u64().unwrap() > 0);
    }
}

#[test]
fn float_models_are_not_quantized_and_w8_models_are_weight_only_per_channel() {
    for name in ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"] {
        let float = inspect_json(&models().join(name).join("model.onnx"), &[]);
        assert_eq!(float["quantization"]["formats"], serde_json::json!([]));
        assert_eq!(float["quantization"]["summary"], "none");
        let w8 = inspect_json(&models().join(name).join("model.w8.onnx"), &[]);
        let q = &w8["quantization"];
        assert_eq!(
            q["formats"],
            serde_json::json!(["weight-only"]),
            "{name}: {q}"
        );
        assert_eq!(q["granularity"], "per-channel", "{name}: {q}");
        assert_eq!(q["weight_dtypes"], serde_json::json!(["i8"]));
        assert_eq!(q["dequantize_nodes"], q["dequantized_constants"]);
    }
}

#[test]
fn text_output_shows_compute_parameters_quantization_and_engine_support() {
    perch()
        .arg("inspect")
        .arg(models().join("mobilenetv2-035/model.w8.onnx"))
        .assert()
        .success()
        .stdout(predicates::str::contains("MACs"))
        .stdout(predicates::str::contains("Conv (depthwise)"))
        .stdout(predicates::str::contains("parameters"))
        .stdout(predicates::str::contains("weight-only i8, per-channel"))
        .stdout(predicates::str::contains("supports every operator"));
}

#[test]
fn a_refused_model_is_still_described_and_the_refusal_names_node_and_hint() {
    let assert = perch()
        .args(["inspect", "--json"])
        .arg(models().join("fixtures/per-axis-dq-opset11.onnx"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("w.dequantize"))
        .stderr(predicates::str::contains("opset 13"));
    let report = json(&assert.get_output().stdout);
    assert_eq!(report["opset"], 11);
    assert_eq!(report["inputs"][0]["name"], "x");
    assert_eq!(report["ops"]["DequantizeLinear"], 1);
    assert!(report["parameters"]["count"].as_u64().unwrap() > 0);
    assert_eq!(report["engine"]["supported"], false);
    assert_eq!(report["engine"]["node"], "w.dequantize");
    assert_eq!(report["engine"]["op"], "DequantizeLinear");
    assert!(report["engine"]["hint"].as_str().unwrap().contains("opset"));
    assert!(report["optimized_nodes"].is_null());
}

#[test]
fn a_vendor_operator_the_engine_lacks_is_refused_with_its_domain() {
    let assert = perch()
        .arg("inspect")
        .arg(models().join("fixtures/unsupported-op.onnx"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("vendor_conv"));
    let stdout = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(stdout.contains("REFUSES node \"vendor_conv\""), "{stdout}");
    assert!(stdout.contains("com.microsoft:FusedConv"), "{stdout}");
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn onnx_runtime_qoperator_files_with_contrib_operators_are_accepted_and_show_their_format() {
    for folder in ["kws-dscnn", "mobilenetv2-035"] {
        let report = inspect_json(&models().join(folder).join("model.qop.onnx"), &[]);
        assert_eq!(report["engine"]["supported"], true, "{folder}: {report}");
        let q = &report["quantization"];
        // The QuantizeLinear of the input and the DequantizeLinear of the output belong to
        // the QOperator format: no QDQ island.
        assert_eq!(
            q["formats"],
            serde_json::json!(["q-operator"]),
            "{folder}: {q}"
        );
        assert_eq!(q["granularity"], "per-channel", "{folder}: {q}");
        assert_eq!(
            q["weight_dtypes"],
            serde_json::json!(["i8"]),
            "{folder}: {q}"
        );
        // QLinearConv, QGemm and the com.microsoft QLinear* nodes.
        let ops = report["ops"].as_object().unwrap();
        let quantized: u64 = ops
            .iter()
            .filter(|(op, _)| op.starts_with("QLinear") || *op == "QGemm")
            .map(|(_, n)| n.as_u64().unwrap())
            .sum();
        assert_eq!(q["qoperator_nodes"].as_u64(), Some(quantized), "{folder}");
        // Every multiply-accumulate of the float model is found in the quantized one.
        let float = inspect_json(&models().join(folder).join("model.onnx"), &[]);
        assert_eq!(
            report["compute"]["macs"], float["compute"]["macs"],
            "{folder}: {}",
            report["compute"]
        );
    }
    let text = perch()
        .arg("inspect")
        .arg(models().join("mobilenetv2-035/model.qop.onnx"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&text).to_string();
    assert!(text.contains("QOperator i8, per-channel"), "{text}");
}

#[test]
fn a_file_that_is_not_onnx_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.onnx");
    std::fs::write(&path, b"definitely not protobuf \xff\xff\xff").unwrap();
    let assert = perch().arg("inspect").arg(&path).assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("garbage.onnx"), "{stderr}");
}

#[test]
fn an_nnef_archive_is_inspected_with_the_engine_cost_model() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("kws.nnef.tgz");
    perch()
        .arg("convert")
        .arg(models().join("kws-dscnn/model.onnx"))
        .arg("-o")
        .arg(&archive)
        .assert()
        .success();
    let report = inspect_json(&archive, &[]);
    assert_eq!(report["format"], "nnef");
    assert_eq!(report["compute"]["method"], "engine cost model");
    let want = catalog().iter().find(|e| e["name"] == "kws-dscnn").unwrap()["macs"]
        .as_u64()
        .unwrap();
    assert_eq!(report["compute"]["macs"].as_u64(), Some(want));
    assert!(report["parameters"]["count"].as_u64().unwrap() > 0);
}

// ---------------------------------------------------------------------------------
// Small graphs in each quantization format, written as real ONNX files.

fn tensor_u8(
    name: &str,
    dims: &[i64],
    data: Vec<u8>,
    dtype: pb::tensor_proto::DataType,
) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dtype as i32,
        raw_data: data,
        ..Default::default()
    }
}

fn tensor_f32(name: &str, dims: &[i64], data: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data,
        ..Default::default()
    }
}

fn value_info(name: &str, dtype: pb::tensor_proto::DataType, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dtype as i32,
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
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    ints: &[(&str, i64)],
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: ints
            .iter()
            .map(|(n, v)| pb::AttributeProto {
                name: n.to_string(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: *v,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn write_model(
    dir: &Path,
    file: &str,
    nodes: Vec<pb::NodeProto>,
    initializer: Vec<pb::TensorProto>,
    input: Vec<pb::ValueInfoProto>,
    output: Vec<pb::ValueInfoProto>,
) -> PathBuf {
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: nodes,
            initializer,
            input,
            output,
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(file);
    perch_tools::onnx::write_model(&path, &model).unwrap();
    path
}

use pb::tensor_proto::DataType as Dt;

#[test]
fn qoperator_convolution_and_matmul_are_found_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // x u8 [1,4,8,8] -> depthwise QLinearConv 3x3 pad 1 -> [1,4,8,8]
    //   -> Reshape [1,256] -> QLinearMatMul with w [256,5] -> [1,5]
    let scalar = |n: &str, v: f32| tensor_f32(n, &[], vec![v]);
    let zp = |n: &str| tensor_u8(n, &[], vec![128], Dt::Uint8);
    let path = write_model(
        dir.path(),
        "qop.onnx",
        vec![
            pb::NodeProto {
                attribute: vec![
                    pb::AttributeProto {
                        name: "pads".into(),
                        r#type: pb::attribute_proto::AttributeType::Ints as i32,
                        ints: vec![1, 1, 1, 1],
                        ..Default::default()
                    },
                    pb::AttributeProto {
                        name: "group".into(),
                        r#type: pb::attribute_proto::AttributeType::Int as i32,
                        i: 4,
                        ..Default::default()
                    },
                ],
                ..node(
                    "QLinearConv",
                    "dw",
                    &["x", "s", "z", "w", "ws", "z", "s", "z"],
                    &["y"],
                    &[],
                )
            },
            node("Reshape", "flat", &["y", "shape"], &["yf"], &[]),
            node(
                "QLinearMatMul",
                "fc",
                &["yf", "s", "z", "m", "s", "z", "s", "z"],
                &["out"],
                &[],
            ),
        ],
        vec![
            scalar("s", 0.05),
            zp("z"),
            tensor_u8("w", &[4, 1, 3, 3], vec![130; 36], Dt::Uint8),
            tensor_f32("ws", &[4], vec![0.01, 0.02, 0.03, 0.04]),
            pb::TensorProto {
                name: "shape".into(),
                dims: vec![2],
                data_type: Dt::Int64 as i32,
                int64_data: vec![1, 256],
                ..Default::default()
            },
            tensor_u8("m", &[256, 5], vec![129; 1280], Dt::Uint8),
        ],
        vec![value_info("x", Dt::Uint8, &[1, 4, 8, 8])],
        vec![value_info("out", Dt::Uint8, &[1, 5])],
    );
    let report = inspect_json(&path, &[]);
    let q = &report["quantization"];
    assert_eq!(q["formats"], serde_json::json!(["q-operator"]), "{q}");
    assert_eq!(q["qoperator_nodes"], 2);
    assert_eq!(q["granularity"], "mixed");
    let by_op = &report["compute"]["by_op"];
    assert_eq!(
        by_op["QLinearConv (depthwise)"]["macs"].as_u64(),
        Some(4 * 8 * 8 * 3 * 3)
    );
    assert_eq!(by_op["QLinearMatMul"]["macs"].as_u64(), Some(5 * 256));
}

#[test]
fn dynamic_quantization_is_found_and_integer_products_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    // a f32 [2,16] -> DynamicQuantizeLinear -> MatMulInteger with b u8 [16,8] -> i32 [2,8]
    // c u8 [1,3,5,5] -> ConvInteger with k u8 [2,3,3,3] -> i32 [1,2,3,3]
    let path = write_model(
        dir.path(),
        "dynamic.onnx",
        vec![
            node(
                "DynamicQuantizeLinear",
                "dq",
                &["a"],
                &["aq", "as", "az"],
                &[],
            ),
            node(
                "MatMulInteger",
                "mm",
                &["aq", "b", "az", "bz"],
                &["ab"],
                &[],
            ),
            node("ConvInteger", "conv", &["c", "k"], &["ck"], &[]),
        ],
        vec![
            tensor_u8("b", &[16, 8], vec![3; 128], Dt::Uint8),
            tensor_u8("bz", &[], vec![1], Dt::Uint8),
            tensor_u8("k", &[2, 3, 3, 3], vec![2; 54], Dt::Uint8),
        ],
        vec![
            value_info("a", Dt::Float, &[2, 16]),
            value_info("c", Dt::Uint8, &[1, 3, 5, 5]),
        ],
        vec![
            value_info("ab", Dt::Int32, &[2, 8]),
            value_info("ck", Dt::Int32, &[1, 2, 3, 3]),
        ],
    );
    let report = inspect_json(&path, &[]);
    let q = &report["quantization"];
    assert_eq!(q["formats"], serde_json::json!(["dynamic"]), "{q}");
    assert_eq!(q["dynamic_nodes"], 3);
    assert_eq!(q["weight_dtypes"], serde_json::json!(["u8"]));
    let by_op = &report["compute"]["by_op"];
    assert_eq!(by_op["MatMulInteger"]["macs"].as_u64(), Some(2 * 8 * 16));
    assert_eq!(
        by_op["ConvInteger"]["macs"].as_u64(),
        Some(2 * 3 * 3 * 3 * 3 * 3)
    );
}

/// x f32 [1,3,6,6] -> Q -> DQ -> Conv (weights: i8 through DQ, `scale` of `scale_dims`)
fn qdq_conv(dir: &Path, file: &str, weight_scale: Vec<f32>, scale_dims: &[i64]) -> PathBuf {
    write_model(
        dir,
        file,
        vec![
            node("QuantizeLinear", "xq", &["x", "s", "z"], &["x_q"], &[]),
            node(
                "DequantizeLinear",
                "xdq",
                &["x_q", "s", "z"],
                &["x_dq"],
                &[],
            ),
            node(
                "DequantizeLinear",
                "wdq",
                &["w", "ws", "wz"],
                &["w_dq"],
                &[("axis", 0)],
            ),
            node("Conv", "conv", &["x_dq", "w_dq"], &["y"], &[]),
        ],
        vec![
            tensor_f32("s", &[], vec![0.02]),
            tensor_u8("z", &[], vec![0], Dt::Int8),
            tensor_u8("w", &[2, 3, 3, 3], vec![5; 54], Dt::Int8),
            tensor_f32("ws", scale_dims, weight_scale.clone()),
            tensor_u8("wz", scale_dims, vec![0; weight_scale.len()], Dt::Int8),
        ],
        vec![value_info("x", Dt::Float, &[1, 3, 6, 6])],
        vec![value_info("y", Dt::Float, &[1, 2, 4, 4])],
    )
}

#[test]
fn qdq_models_are_found_per_tensor_or_per_channel_by_their_weight_scales() {
    let dir = tempfile::tempdir().unwrap();
    let per_channel = inspect_json(&qdq_conv(dir.path(), "pc.onnx", vec![0.1, 0.2], &[2]), &[]);
    let q = &per_channel["quantization"];
    assert_eq!(q["formats"], serde_json::json!(["qdq"]), "{q}");
    assert_eq!(q["granularity"], "per-channel");
    assert_eq!(q["quantize_nodes"], 1);
    assert_eq!(q["dequantize_nodes"], 2);
    assert_eq!(q["dequantized_constants"], 1);
    assert_eq!(
        per_channel["compute"]["by_op"]["Conv"]["macs"].as_u64(),
        Some(2 * 4 * 4 * 3 * 3 * 3)
    );
    assert_eq!(per_channel["engine"]["supported"], true);

    let per_tensor = inspect_json(&qdq_conv(dir.path(), "pt.onnx", vec![0.1], &[]), &[]);
    assert_eq!(per_tensor["quantization"]["granularity"], "per-tensor");
    assert_eq!(
        per_tensor["quantization"]["formats"],
        serde_json::json!(["qdq"])
    );
}

#[test]
fn inspect_names_the_perch_kernel_of_every_depthwise_layer_and_why_others_stay_on_tract() {
    let report = inspect_json(&models().join("mobilenetv2-035/model.onnx"), &[]);
    let kernels = report["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 17);
    assert!(kernels.iter().all(|k| k["kernel"]
        .as_str()
        .is_some_and(|n| n.starts_with("f32_dwconv_3x3s"))));
    let text = perch()
        .arg("inspect")
        .arg(models().join("fixtures/depthwise-variants.onnx"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("Perch runs 2 of 7 nodes it considered"),
        "{text}"
    );
    assert!(text.contains("dilated (depthwise conv"), "{text}");
    assert!(text.contains("dilation (the kernel has none)"), "{text}");
}

#[test]
fn perch_kernels_off_in_the_environment_leaves_every_layer_on_tract() {
    let out = perch()
        .args(["inspect", "--json"])
        .arg(models().join("kws-dscnn/model.onnx"))
        .env("PERCH_KERNELS", "off")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json(&out)["kernels"], serde_json::json!([]));
}

//! Helpers shared by the tests of quantized models: ONNX protobuf access and distances
//! in steps of an output's quantization.
#![allow(dead_code)]

use std::path::Path;

use perch_runtime::engine::{TensorData, TensorView};
use prost::Message;
use tract_onnx::pb;

pub fn proto(path: &Path) -> pb::ModelProto {
    pb::ModelProto::decode(&*std::fs::read(path).unwrap()).unwrap()
}

pub fn f32_values(t: &pb::TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// The single value of a float initializer.
pub fn scalar(graph: &pb::GraphProto, name: &str) -> f32 {
    let t = graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer {name}"));
    let values = f32_values(t);
    assert_eq!(values.len(), 1, "{name}");
    values[0]
}

/// The scale of the DequantizeLinear that produces graph output 0: one quantization step
/// of the output.
pub fn output_step(path: &Path) -> f32 {
    let model = proto(path);
    let graph = model.graph.as_ref().unwrap();
    let output = &graph.output[0].name;
    let dq = graph
        .node
        .iter()
        .find(|n| n.output.contains(output))
        .unwrap();
    assert_eq!(dq.op_type, "DequantizeLinear", "{}", path.display());
    scalar(graph, &dq.input[1])
}

/// Elementwise distance between two tensors in steps of `step` (for integer tensors, in
/// integer units): (largest distance, fraction of elements at distance 0).
pub fn steps(got: TensorView<'_>, want: TensorView<'_>, step: f32) -> (i64, f64) {
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got.dtype(), want.dtype());
    let as_f64 = |t: TensorView<'_>| -> Vec<f64> {
        match t.data() {
            TensorData::F32(d) => d.iter().map(|&v| f64::from(v)).collect(),
            TensorData::F64(d) => d.to_vec(),
            TensorData::I8(d) => d.iter().map(|&v| f64::from(v)).collect(),
            TensorData::U8(d) => d.iter().map(|&v| f64::from(v)).collect(),
            TensorData::I32(d) => d.iter().map(|&v| f64::from(v)).collect(),
            TensorData::I64(d) => d.iter().map(|&v| v as f64).collect(),
            other => panic!("{} elements", other.dtype()),
        }
    };
    let (got, want) = (as_f64(got), as_f64(want));
    let distances: Vec<i64> = got
        .iter()
        .zip(&want)
        .map(|(g, w)| ((g - w).abs() / step as f64).round() as i64)
        .collect();
    let exact = distances.iter().filter(|d| **d == 0).count();
    (
        distances.iter().copied().max().unwrap_or(0),
        exact as f64 / distances.len() as f64,
    )
}

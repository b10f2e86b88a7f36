//! Checks on the ONNX protobuf made before the engine sees the model.
//!
//! The engine looks operators up by `op_type` alone, ignores the domain, and accepts
//! per-axis quantization on opsets that do not define it; each of these would turn an
//! invalid model into wrong numbers instead of an error, so they are caught here.

use std::collections::HashMap;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb;

use super::error::{EngineError, Result};

/// The first default-domain opset that allows `axis` on QuantizeLinear/DequantizeLinear.
pub const PER_AXIS_QUANTIZATION_OPSET: i64 = 13;

/// The default-domain (`ai.onnx`) opset the model imports, if any.
pub fn default_opset(proto: &pb::ModelProto) -> Option<i64> {
    proto
        .opset_import
        .iter()
        .find(|i| i.domain.is_empty() || i.domain == "ai.onnx")
        .map(|i| i.version)
}

/// Refuses models whose nodes the engine would not run, or would run wrongly.
pub fn check(proto: &pb::ModelProto, ops: &OnnxOpRegister) -> Result<()> {
    let graph = proto.graph.as_ref().ok_or_else(|| EngineError::Malformed {
        what: "ONNX model".into(),
        reason: "it holds no graph".into(),
    })?;
    let opset = default_opset(proto).unwrap_or(0);
    check_graph(graph, opset, ops)
}

fn check_graph(graph: &pb::GraphProto, opset: i64, ops: &OnnxOpRegister) -> Result<()> {
    let scale_len = constant_lengths(graph);
    for node in &graph.node {
        let name = node_name(node);
        let standard = node.domain.is_empty() || node.domain == "ai.onnx";
        if !standard {
            return Err(EngineError::UnsupportedOp {
                node: name,
                op: format!("{}:{}", node.domain, node.op_type),
                hint: "only the standard ONNX domain is supported; vendor operators (such as \
                       ONNX Runtime's com.microsoft contrib ops) must be re-exported as standard \
                       ONNX operators"
                    .into(),
            });
        }
        if !ops.0.contains_key(&node.op_type) {
            return Err(EngineError::UnsupportedOp {
                node: name,
                op: node.op_type.clone(),
                hint: "the engine (tract 0.23) has no implementation of this operator; \
                       re-export the model without it or replace it by supported operators"
                    .into(),
            });
        }
        if (node.op_type == "QuantizeLinear" || node.op_type == "DequantizeLinear")
            && opset < PER_AXIS_QUANTIZATION_OPSET
        {
            let has_axis = node.attribute.iter().any(|a| a.name == "axis");
            let scale_elements = node.input.get(1).and_then(|s| scale_len.get(s.as_str()));
            let per_axis_scale = scale_elements.is_some_and(|n| *n > 1);
            if has_axis || per_axis_scale {
                return Err(EngineError::Refused {
                    node: name,
                    op: node.op_type.clone(),
                    reason: format!(
                        "per-axis quantization (an `axis` attribute or a non-scalar scale) needs \
                         default-domain opset {PER_AXIS_QUANTIZATION_OPSET} or later, but the model \
                         declares opset {opset}. This is invalid ONNX: ONNX Runtime rejects it, while \
                         the engine would run it anyway with semantics ONNX does not define. \
                         Re-export the model with opset >= {PER_AXIS_QUANTIZATION_OPSET}, or \
                         quantize per tensor"
                    ),
                });
            }
        }
        for attr in &node.attribute {
            for sub in attr.g.iter().chain(attr.graphs.iter()) {
                check_graph(sub, opset, ops)?;
            }
        }
    }
    Ok(())
}

/// Element counts of the graph's constant tensors (initializers and Constant nodes), by name.
fn constant_lengths(graph: &pb::GraphProto) -> HashMap<&str, i64> {
    let mut lengths: HashMap<&str, i64> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.iter().product()))
        .collect();
    for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let value = node
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref());
        if let (Some(out), Some(t)) = (node.output.first(), value) {
            lengths.insert(out.as_str(), t.dims.iter().product());
        }
    }
    lengths
}

/// A node's name, or its first output when it has none, as the engine itself names it.
pub fn node_name(node: &pb::NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output
            .first()
            .cloned()
            .unwrap_or_else(|| node.op_type.clone())
    }
}

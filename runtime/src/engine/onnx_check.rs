//! Checks on the ONNX protobuf made before the engine sees the model.
//!
//! The engine looks operators up by `op_type` alone, ignores the domain, accepts per-axis
//! quantization on opsets that do not define it, and takes quantization parameters as it
//! finds them (a zero scale, an int8 zero point of 300 wrapped to 44); each of these would
//! turn an invalid model into wrong numbers instead of an error, so they are caught here.

use std::collections::HashMap;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb;

use super::error::{EngineError, Result};
use super::onnx_contrib;

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
    check_outputs(graph)?;
    let opset = default_opset(proto).unwrap_or(0);
    check_graph(graph, opset, ops)
}

/// Every graph output must be a value of the graph: the engine's parser indexes its table
/// of values by output name and would panic on one that nothing produces.
fn check_outputs(graph: &pb::GraphProto) -> Result<()> {
    let produced = |name: &str| {
        graph.input.iter().any(|i| i.name == name)
            || graph.initializer.iter().any(|t| t.name == name)
            || graph
                .node
                .iter()
                .any(|n| n.output.iter().any(|o| o == name))
    };
    match graph.output.iter().find(|o| !produced(&o.name)) {
        Some(output) => Err(EngineError::Malformed {
            what: "ONNX model".into(),
            reason: format!(
                "graph output {:?} is not produced by any node, input or initializer",
                output.name
            ),
        }),
        None => Ok(()),
    }
}

fn check_graph(graph: &pb::GraphProto, opset: i64, ops: &OnnxOpRegister) -> Result<()> {
    let constants = constants(graph);
    for node in &graph.node {
        let name = node_name(node);
        let standard = node.domain.is_empty() || node.domain == "ai.onnx";
        if !standard && !onnx_contrib::supports(&node.domain, &node.op_type) {
            return Err(EngineError::UnsupportedOp {
                node: name,
                op: format!("{}:{}", node.domain, node.op_type),
                hint: format!(
                    "besides the standard ONNX domain, the engine runs only these {} operators \
                     of ONNX Runtime's: {}; other vendor operators must be re-exported as \
                     standard ONNX operators",
                    onnx_contrib::DOMAIN,
                    onnx_contrib::OPERATORS.join(", ")
                ),
            });
        }
        if standard && onnx_contrib::OPERATORS.contains(&node.op_type.as_str()) {
            return Err(EngineError::UnsupportedOp {
                node: name,
                op: node.op_type.clone(),
                hint: format!(
                    "it is not a standard ONNX operator: ONNX Runtime defines it in the {} \
                     domain, which the node must name",
                    onnx_contrib::DOMAIN
                ),
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
            let scale_elements = node
                .input
                .get(1)
                .and_then(|s| constants.get(s.as_str()))
                .and_then(|t| element_count(t));
            let per_axis_scale = scale_elements.is_some_and(|n| n > 1);
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
        check_constant_inputs(node, &constants).map_err(|reason| EngineError::Refused {
            node: node_name(node),
            op: node.op_type.clone(),
            reason,
        })?;
        for attr in &node.attribute {
            for sub in attr.g.iter().chain(attr.graphs.iter()) {
                check_graph(sub, opset, ops)?;
            }
        }
    }
    Ok(())
}

/// What a quantization parameter input of an operator must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    /// A scale, one value.
    Scale,
    /// A scale, one value or one per channel.
    ScalePerAxis,
    /// A zero point, one value.
    ZeroPoint,
    /// A zero point, one value or one per channel.
    ZeroPointPerAxis,
}

/// The quantization parameters among an operator's inputs, by input position.
fn quantization_params(node: &pb::NodeProto) -> Vec<(usize, Param)> {
    use Param::*;
    let standard = node.domain.is_empty() || node.domain == "ai.onnx";
    match (standard, node.op_type.as_str()) {
        (true, "QuantizeLinear" | "DequantizeLinear") => {
            vec![(1, ScalePerAxis), (2, ZeroPointPerAxis)]
        }
        (true, "QLinearConv" | "QLinearMatMul") => vec![
            (1, Scale),
            (2, ZeroPoint),
            (4, ScalePerAxis),
            (5, ZeroPointPerAxis),
            (6, Scale),
            (7, ZeroPoint),
        ],
        (true, "MatMulInteger" | "ConvInteger") => {
            vec![(2, ZeroPointPerAxis), (3, ZeroPointPerAxis)]
        }
        (false, "QLinearAdd" | "QLinearMul") => vec![
            (1, Scale),
            (2, ZeroPoint),
            (4, Scale),
            (5, ZeroPoint),
            (6, Scale),
            (7, ZeroPoint),
        ],
        (
            false,
            "QLinearSigmoid"
            | "QLinearLeakyRelu"
            | "QLinearGlobalAveragePool"
            | "QLinearAveragePool",
        ) => vec![(1, Scale), (2, ZeroPoint), (3, Scale), (4, ZeroPoint)],
        (false, "QGemm") => vec![
            (1, Scale),
            (2, ZeroPoint),
            (4, ScalePerAxis),
            (5, ZeroPointPerAxis),
            (7, Scale),
            (8, ZeroPoint),
        ],
        (false, "QLinearConcat") => {
            let mut params = vec![(0, Scale), (1, ZeroPoint)];
            for i in 0..node.input.len().saturating_sub(2) / 3 {
                params.extend([(3 + 3 * i, Scale), (4 + 3 * i, ZeroPoint)]);
            }
            params
        }
        _ => vec![],
    }
}

/// Refuses constant inputs the engine would read wrongly: quantization scales that are not
/// finite and positive, parameters with several values where the operator takes one, and
/// 8- or 16-bit integers stored (as ONNX allows) in 32-bit fields with values their type
/// cannot hold, which the engine would silently wrap.
fn check_constant_inputs(
    node: &pb::NodeProto,
    constants: &HashMap<&str, &pb::TensorProto>,
) -> std::result::Result<(), String> {
    for input in node.input.iter().filter(|i| !i.is_empty()) {
        if let Some(t) = constants.get(input.as_str()) {
            check_integer_range(input, t)?;
        }
    }
    for (position, param) in quantization_params(node) {
        let Some(t) = node
            .input
            .get(position)
            .filter(|i| !i.is_empty())
            .and_then(|i| constants.get(i.as_str()))
        else {
            continue;
        };
        let input = &node.input[position];
        let scalar = matches!(param, Param::Scale | Param::ZeroPoint);
        if scalar && element_count(t).is_some_and(|n| n != 1) {
            return Err(format!(
                "its input {position} ({input:?}, a {}) holds {} values where {} takes one \
                 (per-tensor quantization); per-axis parameters are not supported there",
                if matches!(param, Param::Scale) {
                    "scale"
                } else {
                    "zero point"
                },
                element_count(t).unwrap_or(0),
                node.op_type
            ));
        }
        if matches!(param, Param::Scale | Param::ScalePerAxis) {
            if let Some(values) = f32_values(t) {
                if let Some(bad) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return Err(format!(
                        "its scale {input:?} holds {bad}: a quantization scale must be a finite \
                         positive number"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Integers of 8 or 16 bits that ONNX stores in `int32_data` must fit their type.
fn check_integer_range(name: &str, t: &pb::TensorProto) -> std::result::Result<(), String> {
    use pb::tensor_proto::DataType;
    let range = match DataType::try_from(t.data_type) {
        Ok(DataType::Int8) => (i8::MIN as i32, i8::MAX as i32, "int8"),
        Ok(DataType::Uint8) => (u8::MIN as i32, u8::MAX as i32, "uint8"),
        Ok(DataType::Int16) => (i16::MIN as i32, i16::MAX as i32, "int16"),
        Ok(DataType::Uint16) => (u16::MIN as i32, u16::MAX as i32, "uint16"),
        _ => return Ok(()),
    };
    if !t.raw_data.is_empty() {
        return Ok(());
    }
    match t.int32_data.iter().find(|v| **v < range.0 || **v > range.1) {
        Some(bad) => Err(format!(
            "its constant input {name:?} is {} but holds {bad}, outside that type's range \
             [{}, {}]; the engine would wrap it to another value",
            range.2, range.0, range.1
        )),
        None => Ok(()),
    }
}

/// The elements of a float32 tensor stored in the model, when it is one.
fn f32_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Some(t.float_data.clone())
}

/// The number of elements a tensor's dims describe.
fn element_count(t: &pb::TensorProto) -> Option<i64> {
    t.dims.iter().try_fold(1i64, |acc, d| {
        (*d >= 0).then(|| acc.checked_mul(*d)).flatten()
    })
}

/// The graph's constant tensors (initializers and Constant nodes' values), by name.
pub fn constants(graph: &pb::GraphProto) -> HashMap<&str, &pb::TensorProto> {
    let mut constants: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for node in &graph.node {
        if let Some((out, t)) = constant_value(node) {
            constants.insert(out, t);
        }
    }
    constants
}

/// A `Constant` node's output name and its tensor value (`value` attribute), if it is
/// one that holds a tensor.
fn constant_value(node: &pb::NodeProto) -> Option<(&str, &pb::TensorProto)> {
    if node.op_type != "Constant" {
        return None;
    }
    let value = node
        .attribute
        .iter()
        .find(|a| a.name == "value")?
        .t
        .as_ref()?;
    Some((node.output.first()?.as_str(), value))
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

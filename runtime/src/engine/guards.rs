//! Guards for what tract does not check itself: index values a request feeds into
//! `Gather`, and dimensions an ONNX file declares.
//!
//! **Indices.** tract's `Gather` and `GatherElements` look elements up by the index
//! values they are given without checking them against the gathered axis: an index
//! past the end reads another row's data, or indexes past the buffer and panics, and a
//! device build aborts on a panic. When an integer model input reaches such an index
//! operand, directly or through operators that do not change values (casts, reshapes,
//! added or removed axes), [`index_bounds`] records the axis length at load time and
//! [`check_indices`] refuses a request holding an index outside `[-len, len)` before
//! the engine sees it. Index operands computed from inputs by arithmetic are not
//! covered: such a model is refused at load ([`index_bounds`] says which node).
//!
//! **Dimensions.** [`check_onnx_dims`] refuses an ONNX file whose graph inputs,
//! outputs, value infos or initializers declare a negative dimension, a dimension
//! above [`MAX_DIM`], or a shape of more than [`MAX_ELEMENTS`] elements, before the
//! engine multiplies them together (which overflows in debug builds, and allocates what
//! the file asks for in release builds).

use tract_core::internal::*;
use tract_core::ops::array::{Gather, GatherElements};
use tract_core::ops::cast::Cast;
use tract_core::ops::change_axes::AxisOp;

use super::error::{EngineError, Result};
use super::tensor::{Input, TensorData, TensorInfo};

/// The largest dimension an ONNX file may declare (2^31 − 1).
pub const MAX_DIM: i64 = i32::MAX as i64;
/// The most elements a declared shape may hold (2^34: 64 GiB of `f32`, far beyond any
/// edge model, far below any overflow).
pub const MAX_ELEMENTS: u64 = 1 << 34;

/// The values a model input may hold because it feeds an index operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBound {
    /// The model input, by position.
    pub input: usize,
    /// The node whose index operand it is.
    pub node: String,
    /// The length of the gathered axis: valid indices are `-len..len`.
    pub len: i64,
}

/// The bounds integer inputs must respect because they feed `Gather` or
/// `GatherElements` indices (see the [module docs](self)).
///
/// # Errors
///
/// [`EngineError::Refused`] when an integer input reaches an index operand through
/// operators that may change its values, or the gathered axis has no fixed length, so
/// its indices cannot be checked.
pub fn index_bounds(model: &TypedModel) -> Result<Vec<IndexBound>> {
    let inputs = model.input_outlets().map_err(prep)?;
    let mut bounds = Vec::new();
    for node in model.nodes() {
        let axis = if let Some(g) = node.op_as::<Gather>() {
            g.axis
        } else if let Some(g) = node.op_as::<GatherElements>() {
            g.axis
        } else {
            continue;
        };
        let (Some(data), Some(indices)) = (node.inputs.first(), node.inputs.get(1)) else {
            continue;
        };
        let refuse = |reason: String| EngineError::Refused {
            node: node.name.clone(),
            op: node.op.name().to_string(),
            reason,
        };
        // Every model input the index operand depends on, and whether only operators
        // that keep values lie on the way.
        let mut stack = vec![(*indices, true)];
        let mut seen = std::collections::HashSet::new();
        while let Some((outlet, preserved)) = stack.pop() {
            if !seen.insert((outlet, preserved)) {
                continue;
            }
            if let Some(input) = inputs.iter().position(|i| *i == outlet) {
                if !preserved {
                    return Err(refuse(format!(
                        "its indices are computed from model input {input} by operators \
                         that change values, so a request's indices cannot be checked \
                         against the gathered axis (which the engine does not check)"
                    )));
                }
                let fact = model.outlet_fact(*data).map_err(prep)?;
                let len = fact
                    .shape
                    .get(axis)
                    .and_then(|d| d.to_i64().ok())
                    .ok_or_else(|| {
                        refuse(format!(
                            "its gathered axis {axis} has no fixed length, so indices from \
                             model input {input} cannot be checked"
                        ))
                    })?;
                let bound = IndexBound {
                    input,
                    node: node.name.clone(),
                    len,
                };
                if !bounds.contains(&bound) {
                    bounds.push(bound);
                }
                continue;
            }
            let source = model.node(outlet.node);
            let keeps_values = source.inputs.len() == 1
                && (source.op_is::<AxisOp>()
                    || (source.op_as::<Cast>().is_some_and(|c| c.to.is_integer())
                        && model
                            .outlet_fact(source.inputs[0])
                            .is_ok_and(|f| f.datum_type.is_integer())));
            for operand in &source.inputs {
                stack.push((*operand, preserved && keeps_values));
            }
        }
    }
    Ok(bounds)
}

/// Refuses inputs holding an index outside its bound, naming the input, the position
/// and the node; allocates nothing.
///
/// # Errors
///
/// [`EngineError::IndexOutOfRange`].
pub fn check_indices(
    bounds: &[IndexBound],
    infos: &[TensorInfo],
    inputs: &[Input<'_>],
) -> Result<()> {
    for bound in bounds {
        let (Some(info), Some(input)) = (infos.get(bound.input), inputs.get(bound.input)) else {
            continue;
        };
        let (name, data) = (&info.name, &input.data);
        let out_of_range = |v: i64| v < -bound.len || v >= bound.len;
        let found = match data {
            TensorData::I64(d) => d.iter().position(|v| out_of_range(*v)).map(|p| (p, d[p])),
            TensorData::I32(d) => d
                .iter()
                .position(|v| out_of_range(i64::from(*v)))
                .map(|p| (p, i64::from(d[p]))),
            TensorData::I8(d) => d
                .iter()
                .position(|v| out_of_range(i64::from(*v)))
                .map(|p| (p, i64::from(d[p]))),
            TensorData::U8(d) => d
                .iter()
                .position(|v| out_of_range(i64::from(*v)))
                .map(|p| (p, i64::from(d[p]))),
            TensorData::I16(d) => d
                .iter()
                .position(|v| out_of_range(i64::from(*v)))
                .map(|p| (p, i64::from(d[p]))),
            TensorData::F32(_) | TensorData::F64(_) | TensorData::Bool(_) => None,
        };
        if let Some((position, value)) = found {
            return Err(EngineError::IndexOutOfRange {
                index: bound.input,
                name: name.to_string(),
                position,
                value,
                node: bound.node.clone(),
                len: bound.len,
            });
        }
    }
    Ok(())
}

/// Refuses declared dimensions the engine would overflow on or allocate blindly (see
/// the [module docs](self)).
///
/// # Errors
///
/// [`EngineError::Malformed`] naming the tensor and the dimension.
#[cfg(feature = "onnx")]
pub fn check_onnx_dims(proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;

    let Some(graph) = proto.graph.as_ref() else {
        return Ok(());
    };
    let infos = graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info);
    for info in infos {
        let dims = info
            .r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
            .and_then(|tract_onnx::pb::type_proto::Value::TensorType(t)| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .filter_map(|d| match d.value {
                        Some(Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        check_dims(&info.name, &dims)?;
    }
    for tensor in &graph.initializer {
        check_dims(&tensor.name, &tensor.dims)?;
    }
    for node in &graph.node {
        for attribute in &node.attribute {
            if let Some(t) = &attribute.t {
                check_dims(&format!("{} ({})", node.name, attribute.name), &t.dims)?;
            }
        }
    }
    Ok(())
}

#[cfg(feature = "onnx")]
fn check_dims(name: &str, dims: &[i64]) -> Result<()> {
    let bad = |reason: String| EngineError::Malformed {
        what: "ONNX model".into(),
        reason: format!("tensor {name:?} {reason}"),
    };
    let mut elements: u64 = 1;
    for &d in dims {
        if !(0..=MAX_DIM).contains(&d) {
            return Err(bad(format!(
                "declares dimension {d} (dimensions are 0 to {MAX_DIM})"
            )));
        }
        elements = elements.saturating_mul(d as u64);
    }
    if elements > MAX_ELEMENTS {
        return Err(bad(format!(
            "declares shape {dims:?}, over {MAX_ELEMENTS} elements"
        )));
    }
    Ok(())
}

fn prep(e: TractError) -> EngineError {
    EngineError::Prepare {
        stage: "finding index operands",
        reason: super::error::chain(&e),
    }
}

//! Finding the layers to quantize and rewriting the graph for a per-layer plan.
//!
//! A *layer* is a Conv, Gemm or MatMul whose weight (input 1) is a float initializer.
//! Every precision rewrites the layer in place, so plans can mix precisions freely:
//!
//! - [`Precision::Weights`]: the weight becomes an int8 initializer + float scale (+ int8
//!   zero point 0) feeding a `DequantizeLinear` whose output the layer reads;
//! - [`Precision::Static`]: the same for the weight, plus a `QuantizeLinear` /
//!   `DequantizeLinear` pair (uint8, calibrated scale and zero point) on the layer's
//!   activation input; the bias stays float (valid QDQ);
//! - [`Precision::Dynamic`]: ONNX Runtime's `quantize_dynamic` form:
//!   `DynamicQuantizeLinear` on the activation, `MatMulInteger` / `ConvInteger` with an
//!   int8 weight, `Cast` to float, `Mul` by activation scale × weight scales, `Add` of the
//!   float bias.
//!
//! New names never collide with existing ones; a float weight is removed once nothing
//! reads it any more.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::graph::{self, Names, FLOAT};
use super::math::{quantize_symmetric, uint8_params, QuantizedWeight};
use crate::onnx::pb;

/// How one layer is computed in the output model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Unchanged, float weights and activations.
    Float,
    /// Weight-only int8: int8 weights dequantized (at load time, by the engine), float
    /// activations.
    Weights,
    /// Calibrated QDQ: uint8 activations and int8 weights between Quantize/DequantizeLinear.
    Static,
    /// Dynamic quantization: activations quantized at run time, integer matmul/conv.
    Dynamic,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Float => "float",
            Precision::Weights => "int8 weights",
            Precision::Static => "static int8 (QDQ)",
            Precision::Dynamic => "dynamic int8",
        })
    }
}

/// A Conv, Gemm or MatMul with a constant float weight.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// Index of the node in the graph.
    pub node: usize,
    /// The node's name (its first output when unnamed).
    pub name: String,
    /// `Conv`, `Gemm` or `MatMul`.
    pub op: String,
    /// The weight initializer's name.
    pub weight: String,
    /// The weight's shape.
    pub dims: Vec<i64>,
    /// The weight's output-channel axis (`None` for a 1-D MatMul weight).
    pub axis: Option<usize>,
    /// The weight's values (empty when it cannot be quantized).
    pub values: Vec<f32>,
    /// Why this layer must stay float, if it must.
    pub keep_float: Option<String>,
}

impl Layer {
    /// The number of weight elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().map(|d| (*d).max(0) as usize).product()
    }
}

/// The layers of a model's main graph, in graph order.
pub(crate) fn find_layers(model: &pb::ModelProto) -> Vec<Layer> {
    let Some(graph) = model.graph.as_ref() else {
        return vec![];
    };
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let graph_inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let sub_reads = graph::subgraph_reads(graph);
    let consumers = graph::consumers(graph);
    let candidates: Vec<usize> = (0..graph.node.len())
        .filter(|ix| is_layer_op(&graph.node[*ix]))
        .collect();
    let axis_of = |node: &pb::NodeProto, rank: usize| -> Result<Option<usize>, String> {
        match node.op_type.as_str() {
            "Conv" if rank >= 3 => Ok(Some(0)),
            "Gemm" if rank == 2 => Ok(Some(if graph::attr_i(node, "transB", 0) != 0 {
                0
            } else {
                1
            })),
            "MatMul" if rank >= 2 => Ok(Some(rank - 1)),
            "MatMul" if rank == 1 => Ok(None),
            op => Err(format!("its weight has rank {rank}, unexpected for {op}")),
        }
    };
    let mut layers = vec![];
    for ix in candidates {
        let node = &graph.node[ix];
        let Some(weight) = node.input.get(1).filter(|w| !w.is_empty()) else {
            continue;
        };
        let mut layer = Layer {
            node: ix,
            name: graph::display_name(node),
            op: node.op_type.clone(),
            weight: weight.clone(),
            dims: vec![],
            axis: None,
            values: vec![],
            keep_float: None,
        };
        let Some(init) = inits.get(weight.as_str()) else {
            // A weight computed at run time (or a Constant node): not a layer we quantize.
            layer.keep_float = Some(format!(
                "its weight {weight:?} is not an initializer (computed at run time)"
            ));
            layers.push(layer);
            continue;
        };
        layer.dims = init.dims.clone();
        let reason = (|| -> Result<(Option<usize>, Vec<f32>), String> {
            let axis = axis_of(node, init.dims.len())?;
            if graph_inputs.contains(weight.as_str()) && model.ir_version >= 4 {
                return Err(format!(
                    "its weight {weight:?} is also a graph input, so a caller may replace it"
                ));
            }
            if graph_outputs.contains(weight.as_str()) || sub_reads.contains(weight) {
                return Err(format!(
                    "its weight {weight:?} is also a graph output or read inside a subgraph"
                ));
            }
            for (other, slot) in consumers.get(weight).into_iter().flatten() {
                let other_node = &graph.node[*other];
                let same_kind = *slot == 1
                    && is_layer_op(other_node)
                    && axis_of(other_node, init.dims.len()).ok() == Some(axis);
                if !same_kind {
                    return Err(format!(
                        "its weight {weight:?} is shared with node {:?} ({}), which reads it \
                         differently",
                        graph::display_name(other_node),
                        other_node.op_type
                    ));
                }
            }
            let values = graph::f32_values(init)
                .map_err(|e| format!("its weight {weight:?} cannot be quantized: {e}"))?;
            Ok((axis, values))
        })();
        match reason {
            Ok((axis, values)) => {
                layer.axis = axis;
                layer.values = values;
            }
            Err(why) => layer.keep_float = Some(why),
        }
        layers.push(layer);
    }
    layers
}

fn is_layer_op(node: &pb::NodeProto) -> bool {
    (node.domain.is_empty() || node.domain == "ai.onnx")
        && matches!(node.op_type.as_str(), "Conv" | "Gemm" | "MatMul")
}

/// What the rewrite did to one layer.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    /// The precision the layer ended up with.
    pub precision: Precision,
    /// Why it differs from the plan, or a detail worth reporting.
    pub note: Option<String>,
    /// How many weight scales were written (channels, or 1 per tensor).
    pub scales: usize,
}

/// Options of a rewrite.
#[derive(Debug, Clone, Default)]
pub(crate) struct RewriteOptions {
    /// Per-output-channel weight scales (needs opset >= 13 for DequantizeLinear).
    pub per_channel: bool,
    /// Calibrated activation ranges (min, max), by tensor name, for static layers.
    pub ranges: HashMap<String, (f32, f32)>,
}

/// A weight-only int8 weight must shrink its tensor's encoded size to at most this
/// fraction of the float initializer's, or the layer stays float.
pub(crate) const WEIGHT_ONLY_MAX_SIZE_FRACTION: f64 = 0.75;

/// Rewrites `model` so that `layers[i]` runs at `plan[i]`. Layers that must stay float,
/// or whose plan cannot be applied, keep float and say why in their [`Applied`].
pub(crate) fn rewrite(
    model: &pb::ModelProto,
    layers: &[Layer],
    plan: &[Precision],
    options: &RewriteOptions,
) -> (pb::ModelProto, Vec<Applied>) {
    let mut out = model.clone();
    let (Some(source), Some(graph)) = (model.graph.as_ref(), out.graph.as_mut()) else {
        return (out, vec![]);
    };
    let mut r = Rewriter {
        names: Names::of(graph),
        source: source
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect(),
        options,
        inits: vec![],
        weight_dq: HashMap::new(),
        weight_int8: HashMap::new(),
        act_qdq: HashMap::new(),
        act_dynamic: HashMap::new(),
        touched_weights: HashSet::new(),
    };
    let by_node: HashMap<usize, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.node, i))
        .collect();
    let old_nodes = std::mem::take(&mut graph.node);
    let mut applied: Vec<Option<Applied>> = vec![None; layers.len()];
    let mut nodes = Vec::with_capacity(old_nodes.len());
    for (ix, node) in old_nodes.into_iter().enumerate() {
        let Some(&li) = by_node.get(&ix) else {
            nodes.push(node);
            continue;
        };
        let layer = &layers[li];
        let wanted = plan.get(li).copied().unwrap_or(Precision::Float);
        let result = match (&layer.keep_float, wanted) {
            (_, Precision::Float) => Ok((vec![node.clone()], Applied::float(None))),
            (Some(why), _) => Err(why.clone()),
            (None, Precision::Weights) => r.weights_only(node.clone(), layer),
            (None, Precision::Static) => r.static_qdq(node.clone(), layer),
            (None, Precision::Dynamic) => r.dynamic(node.clone(), layer),
        };
        let (new_nodes, outcome) = match result {
            Ok(done) => done,
            Err(why) => (vec![node], Applied::float(Some(why))),
        };
        nodes.extend(new_nodes);
        applied[li] = Some(outcome);
    }
    graph.node = nodes;
    let new_inits = std::mem::take(&mut r.inits);
    if out.ir_version < 4 {
        // Before IR 4 every initializer must also be declared as a graph input.
        let graph = out.graph.get_or_insert_with(Default::default);
        graph.input.extend(new_inits.iter().map(value_info));
    }
    let graph = out.graph.get_or_insert_with(Default::default);
    graph.initializer.extend(new_inits);
    // Drop float weights nothing reads any more.
    let mut read: HashSet<String> = graph::subgraph_reads(graph);
    read.extend(graph.node.iter().flat_map(|n| n.input.iter().cloned()));
    read.extend(graph.output.iter().map(|o| o.name.clone()));
    let unused = |name: &str| r.touched_weights.contains(name) && !read.contains(name);
    graph.initializer.retain(|t| !unused(&t.name));
    graph.input.retain(|i| !unused(&i.name));
    let applied = applied
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Applied::float(None)))
        .collect();
    (out, applied)
}

impl Applied {
    fn float(note: Option<String>) -> Applied {
        Applied {
            precision: Precision::Float,
            note,
            scales: 0,
        }
    }
}

type Rewritten = Result<(Vec<pb::NodeProto>, Applied), String>;

struct Rewriter<'a> {
    names: Names,
    /// The source model's initializers, by name.
    source: HashMap<&'a str, &'a pb::TensorProto>,
    options: &'a RewriteOptions,
    inits: Vec<pb::TensorProto>,
    /// weight name -> (DequantizeLinear output, scale count)
    weight_dq: HashMap<String, (String, usize)>,
    /// (weight name, transposed) -> (int8 initializer, scales)
    weight_int8: HashMap<(String, bool), (String, Vec<f32>)>,
    /// activation -> DequantizeLinear output
    act_qdq: HashMap<String, String>,
    /// activation -> (uint8 value, scale, zero point) from DynamicQuantizeLinear
    act_dynamic: HashMap<String, [String; 3]>,
    touched_weights: HashSet<String>,
}

impl Rewriter<'_> {
    fn axis(&self, layer: &Layer) -> Option<usize> {
        layer.axis.filter(|_| self.options.per_channel)
    }

    /// The int8 DequantizeLinear of a layer's weight (shared by every layer reading it),
    /// plus the nodes to emit before the layer when it is new. With `size_rule`, returns
    /// `Err` when the int8 form does not shrink the weight enough to pay.
    fn weight_dequantized(
        &mut self,
        layer: &Layer,
        size_rule: bool,
    ) -> Result<(String, usize, Vec<pb::NodeProto>), String> {
        if let Some((dq, scales)) = self.weight_dq.get(&layer.weight) {
            return Ok((dq.clone(), *scales, vec![]));
        }
        let axis = self.axis(layer);
        let QuantizedWeight { q, scales } = quantize_symmetric(&layer.values, &layer.dims, axis);
        let scale_dims: Vec<i64> = if axis.is_some() {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        let mut names = self.names.clone();
        let qn = names.fresh(&format!("{}.q", layer.weight));
        let sn = names.fresh(&format!("{}.scale", layer.weight));
        let zn = names.fresh(&format!("{}.zero_point", layer.weight));
        let dn = names.fresh(&format!("{}.dq", layer.weight));
        let node_name = names.fresh(&format!("{}.weight_dequantize", layer.name));
        let tensors = [
            graph::i8_tensor(qn.clone(), &layer.dims, &q),
            graph::f32_tensor(sn.clone(), &scale_dims, &scales),
            graph::i8_tensor(zn.clone(), &scale_dims, &vec![0; scales.len()]),
        ];
        let mut attrs = vec![];
        if let Some(a) = axis {
            attrs.push(graph::int_attr("axis", a as i64));
        }
        let dq = graph::node(
            "DequantizeLinear",
            node_name,
            vec![qn, sn, zn],
            vec![dn.clone()],
            attrs,
        );
        if size_rule {
            use prost::Message;
            let float_bytes = layer.elements() * 4 + layer.weight.len() + 16;
            let int8_bytes: usize =
                tensors.iter().map(|t| t.encoded_len()).sum::<usize>() + dq.encoded_len();
            if int8_bytes as f64 > WEIGHT_ONLY_MAX_SIZE_FRACTION * float_bytes as f64 {
                return Err(format!(
                    "too small to pay: its int8 form takes {int8_bytes} B against {float_bytes} B \
                     in float (kept float below a 25% saving)"
                ));
            }
        }
        self.names = names;
        self.inits.extend(tensors);
        self.touched_weights.insert(layer.weight.clone());
        self.weight_dq
            .insert(layer.weight.clone(), (dn.clone(), scales.len()));
        Ok((dn, scales.len(), vec![dq]))
    }

    fn weights_only(&mut self, mut node: pb::NodeProto, layer: &Layer) -> Rewritten {
        let (dq, scales, mut nodes) = self.weight_dequantized(layer, true)?;
        node.input[1] = dq;
        nodes.push(node);
        Ok((
            nodes,
            Applied {
                precision: Precision::Weights,
                note: None,
                scales,
            },
        ))
    }

    fn static_qdq(&mut self, mut node: pb::NodeProto, layer: &Layer) -> Rewritten {
        let x = node.input[0].clone();
        let Some(&(min, max)) = self.options.ranges.get(&x) else {
            return Err(format!("no calibrated range for its input {x:?}"));
        };
        let mut nodes = vec![];
        let x_dq = match self.act_qdq.get(&x) {
            Some(dq) => dq.clone(),
            None => {
                let (scale, zero_point) = uint8_params(min, max);
                let sn = self.names.fresh(&format!("{x}.scale"));
                let zn = self.names.fresh(&format!("{x}.zero_point"));
                let qn = self.names.fresh(&format!("{x}.quantized"));
                let dn = self.names.fresh(&format!("{x}.dequantized"));
                self.inits
                    .push(graph::f32_tensor(sn.clone(), &[], &[scale]));
                self.inits
                    .push(graph::u8_tensor(zn.clone(), &[], &[zero_point]));
                let q_name = self.names.fresh(&format!("{x}.quantize"));
                let dq_name = self.names.fresh(&format!("{x}.dequantize"));
                nodes.push(graph::node(
                    "QuantizeLinear",
                    q_name,
                    vec![x.clone(), sn.clone(), zn.clone()],
                    vec![qn.clone()],
                    vec![],
                ));
                nodes.push(graph::node(
                    "DequantizeLinear",
                    dq_name,
                    vec![qn, sn, zn],
                    vec![dn.clone()],
                    vec![],
                ));
                self.act_qdq.insert(x.clone(), dn.clone());
                dn
            }
        };
        let (w_dq, scales, w_nodes) = self.weight_dequantized(layer, false)?;
        nodes.extend(w_nodes);
        node.input[0] = x_dq;
        node.input[1] = w_dq;
        nodes.push(node);
        Ok((
            nodes,
            Applied {
                precision: Precision::Static,
                note: None,
                scales,
            },
        ))
    }

    /// An int8 copy of a layer's weight as `[K, N]` for MatMulInteger (transposed from a
    /// Gemm's `transB` layout) or as stored for ConvInteger, with its scales.
    fn weight_int8(&mut self, layer: &Layer, transpose: bool) -> (String, Vec<f32>) {
        let key = (layer.weight.clone(), transpose);
        if let Some(found) = self.weight_int8.get(&key) {
            return found.clone();
        }
        let axis = self.axis(layer);
        let QuantizedWeight { q, scales } = quantize_symmetric(&layer.values, &layer.dims, axis);
        let (q, dims) = if transpose {
            let (rows, cols) = (layer.dims[0] as usize, layer.dims[1] as usize);
            let mut t = vec![0i8; q.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = q[r * cols + c];
                }
            }
            (t, vec![layer.dims[1], layer.dims[0]])
        } else {
            (q, layer.dims.clone())
        };
        let name = self.names.fresh(&format!("{}.int8", layer.weight));
        self.inits.push(graph::i8_tensor(name.clone(), &dims, &q));
        self.touched_weights.insert(layer.weight.clone());
        self.weight_int8.insert(key, (name.clone(), scales.clone()));
        (name, scales)
    }

    fn dynamic(&mut self, node: pb::NodeProto, layer: &Layer) -> Rewritten {
        let (transpose, alpha, bias, scale_shape) = match layer.op.as_str() {
            "MatMul" if layer.dims.len() == 2 => (false, 1.0, None, vec![]),
            "MatMul" => return Err("dynamic quantization handles 2-D MatMul weights only".into()),
            "Gemm" => {
                if graph::attr_i(&node, "transA", 0) != 0 {
                    return Err("dynamic quantization does not handle Gemm with transA=1".into());
                }
                let beta = graph::attr_f(&node, "beta", 1.0);
                let bias = node.input.get(2).filter(|c| !c.is_empty()).cloned();
                let bias = match bias {
                    Some(c) if beta != 1.0 => Some(self.scaled_constant(&c, beta, None)?),
                    other => other,
                };
                let alpha = graph::attr_f(&node, "alpha", 1.0);
                (graph::attr_i(&node, "transB", 0) != 0, alpha, bias, vec![])
            }
            _ => {
                // Conv: per-channel scales and the bias broadcast over [N, M, spatial...].
                let spatial = layer.dims.len() - 2;
                let mut shape = vec![layer.dims[0]];
                shape.extend(std::iter::repeat_n(1, spatial));
                let bias = node.input.get(2).filter(|b| !b.is_empty()).cloned();
                let bias = match bias {
                    Some(b) => Some(self.scaled_constant(&b, 1.0, Some(&shape))?),
                    None => None,
                };
                (false, 1.0, bias, shape)
            }
        };
        let x = node.input[0].clone();
        let mut nodes = vec![];
        let [xq, xs, xz] = match self.act_dynamic.get(&x) {
            Some(found) => found.clone(),
            None => {
                let outs = [
                    self.names.fresh(&format!("{x}.uint8")),
                    self.names.fresh(&format!("{x}.scale")),
                    self.names.fresh(&format!("{x}.zero_point")),
                ];
                let name = self.names.fresh(&format!("{x}.dynamic_quantize"));
                nodes.push(graph::node(
                    "DynamicQuantizeLinear",
                    name,
                    vec![x.clone()],
                    outs.to_vec(),
                    vec![],
                ));
                self.act_dynamic.insert(x.clone(), outs.clone());
                outs
            }
        };
        let (wq, scales) = self.weight_int8(layer, transpose);
        let scales: Vec<f32> = scales.iter().map(|s| s * alpha).collect();
        let scale_dims: Vec<i64> = match (scales.len(), scale_shape.is_empty()) {
            (1, _) => vec![],
            (n, true) => vec![n as i64],
            (_, false) => scale_shape,
        };
        let base = &layer.name;
        let ws = self.names.fresh(&format!("{}.scale", layer.weight));
        self.inits
            .push(graph::f32_tensor(ws.clone(), &scale_dims, &scales));
        let acc = self.names.fresh(&format!("{base}.int32"));
        let acc_f = self.names.fresh(&format!("{base}.int32_float"));
        let s = self.names.fresh(&format!("{base}.output_scale"));
        let integer_op = if layer.op == "Conv" {
            "ConvInteger"
        } else {
            "MatMulInteger"
        };
        let attrs = if layer.op == "Conv" {
            node.attribute.clone()
        } else {
            vec![]
        };
        let name = self
            .names
            .fresh(&format!("{base}.{}", integer_op.to_lowercase()));
        nodes.push(graph::node(
            integer_op,
            name,
            vec![xq, wq, xz],
            vec![acc.clone()],
            attrs,
        ));
        let cast = self.names.fresh(&format!("{base}.cast"));
        nodes.push(graph::node(
            "Cast",
            cast,
            vec![acc],
            vec![acc_f.clone()],
            vec![graph::int_attr("to", FLOAT as i64)],
        ));
        let mul_s = self.names.fresh(&format!("{base}.scale_product"));
        nodes.push(graph::node(
            "Mul",
            mul_s,
            vec![xs, ws],
            vec![s.clone()],
            vec![],
        ));
        let out = node.output[0].clone();
        let mul_name = self.names.fresh(&format!("{base}.rescale"));
        match bias {
            None => nodes.push(graph::node(
                "Mul",
                mul_name,
                vec![acc_f, s],
                vec![out],
                vec![],
            )),
            Some(b) => {
                let scaled = self.names.fresh(&format!("{base}.rescaled"));
                nodes.push(graph::node(
                    "Mul",
                    mul_name,
                    vec![acc_f, s],
                    vec![scaled.clone()],
                    vec![],
                ));
                let add = self.names.fresh(&format!("{base}.bias_add"));
                nodes.push(graph::node("Add", add, vec![scaled, b], vec![out], vec![]));
            }
        }
        let count = scales.len();
        Ok((
            nodes,
            Applied {
                precision: Precision::Dynamic,
                note: None,
                scales: count,
            },
        ))
    }

    /// A new float initializer holding `factor` × the initializer `name`, optionally
    /// reshaped; `Err` when `name` is not a float initializer of the right size.
    fn scaled_constant(
        &mut self,
        name: &str,
        factor: f32,
        shape: Option<&[i64]>,
    ) -> Result<String, String> {
        if factor == 1.0 && shape.is_none() {
            return Ok(name.to_string());
        }
        let init = self
            .source
            .get(name)
            .ok_or_else(|| format!("its bias {name:?} is not an initializer"))?;
        let values = graph::f32_values(init).map_err(|e| format!("its bias {name:?}: {e}"))?;
        let dims = shape
            .map(<[i64]>::to_vec)
            .unwrap_or_else(|| init.dims.clone());
        let wanted: i64 = dims.iter().product();
        if wanted != values.len() as i64 {
            return Err(format!(
                "its bias {name:?} has {} elements, expected {wanted}",
                values.len()
            ));
        }
        let scaled: Vec<f32> = values.iter().map(|v| v * factor).collect();
        let new_name = self.names.fresh(&format!("{name}.folded"));
        self.inits
            .push(graph::f32_tensor(new_name.clone(), &dims, &scaled));
        self.touched_weights.insert(name.to_string());
        Ok(new_name)
    }
}

/// A graph input declaring an initializer (needed before IR version 4).
pub(crate) fn value_info(t: &pb::TensorProto) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = t
        .dims
        .iter()
        .map(|d| Dimension {
            value: Some(Value::DimValue(*d)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: t.name.clone(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: t.data_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::graph::f32_tensor;

    fn input(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        let mut v = value_info(&f32_tensor(name.into(), dims, &[]));
        v.name = name.into();
        v
    }

    /// x[1,64] -> Gemm a (w, transB=1) -> Gemm b (same w) -> Add(w_row?) ...
    fn model(nodes: Vec<pb::NodeProto>, inits: Vec<pb::TensorProto>) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![input("x", &[1, 64])],
                output: vec![input("y", &[1, 64])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    fn gemm(name: &str, x: &str, w: &str, y: &str) -> pb::NodeProto {
        graph::node(
            "Gemm",
            name.into(),
            vec![x.into(), w.into()],
            vec![y.into()],
            vec![graph::int_attr("transB", 1)],
        )
    }

    #[test]
    fn a_weight_shared_by_two_layers_is_dequantized_once() {
        let m = model(
            vec![gemm("a", "x", "w", "h"), gemm("b", "h", "w", "y")],
            vec![f32_tensor("w".into(), &[64, 64], &ramp(64 * 64))],
        );
        let layers = find_layers(&m);
        assert!(layers.iter().all(|l| l.keep_float.is_none()));
        let options = RewriteOptions {
            per_channel: true,
            ..Default::default()
        };
        let (out, applied) = rewrite(&m, &layers, &[Precision::Weights; 2], &options);
        let g = out.graph.unwrap();
        let dq: Vec<_> = g
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear")
            .collect();
        assert_eq!(dq.len(), 1);
        let gemms: Vec<_> = g.node.iter().filter(|n| n.op_type == "Gemm").collect();
        assert_eq!(gemms[0].input[1], dq[0].output[0]);
        assert_eq!(gemms[1].input[1], dq[0].output[0]);
        assert!(
            g.initializer.iter().all(|t| t.name != "w"),
            "the float weight is gone"
        );
        assert!(applied
            .iter()
            .all(|a| a.precision == Precision::Weights && a.scales == 64));
    }

    #[test]
    fn a_weight_also_read_by_another_operator_stays_float() {
        let add = graph::node(
            "Add",
            "add".into(),
            vec!["h".into(), "w".into()],
            vec!["y".into()],
            vec![],
        );
        let m = model(
            vec![gemm("a", "x", "w", "h"), add],
            vec![f32_tensor("w".into(), &[64, 64], &ramp(64 * 64))],
        );
        let layers = find_layers(&m);
        let why = layers[0].keep_float.clone().unwrap();
        assert!(why.contains("shared with node \"add\" (Add)"), "{why}");
        let (out, applied) = rewrite(
            &m,
            &layers,
            &[Precision::Weights],
            &RewriteOptions::default(),
        );
        assert_eq!(out, m);
        assert_eq!(applied[0].precision, Precision::Float);
    }

    #[test]
    fn new_names_do_not_collide_with_names_already_in_the_graph() {
        // The graph already uses the names the rewrite would pick first.
        let relu = graph::node(
            "Relu",
            "a.weight_dequantize".into(),
            vec!["h".into()],
            vec!["w.dq".into()],
            vec![],
        );
        let m = model(
            vec![gemm("a", "x", "w", "h"), relu],
            vec![
                f32_tensor("w".into(), &[64, 64], &ramp(64 * 64)),
                f32_tensor("w.q".into(), &[1], &[0.0]),
            ],
        );
        let layers = find_layers(&m);
        let (out, _) = rewrite(
            &m,
            &layers,
            &[Precision::Weights],
            &RewriteOptions::default(),
        );
        let g = out.graph.unwrap();
        let mut node_names: Vec<_> = g.node.iter().map(|n| n.name.clone()).collect();
        let mut values: Vec<_> = g.node.iter().flat_map(|n| n.output.clone()).collect();
        values.extend(g.initializer.iter().map(|t| t.name.clone()));
        for list in [&mut node_names, &mut values] {
            let n = list.len();
            list.sort();
            list.dedup();
            assert_eq!(list.len(), n, "duplicate names: {list:?}");
        }
    }

    #[test]
    fn a_tiny_weight_stays_float_in_weight_only_mode() {
        let m = model(
            vec![gemm("a", "x", "w", "y")],
            vec![f32_tensor("w".into(), &[4, 64], &ramp(4 * 64))],
        );
        let layers = find_layers(&m);
        let tiny = pb::ModelProto {
            graph: Some(pb::GraphProto {
                initializer: vec![f32_tensor("w".into(), &[2, 3], &ramp(6))],
                ..m.graph.clone().unwrap()
            }),
            ..m.clone()
        };
        let tiny_layers = find_layers(&tiny);
        let (_, applied) = rewrite(
            &tiny,
            &tiny_layers,
            &[Precision::Weights],
            &RewriteOptions::default(),
        );
        assert_eq!(applied[0].precision, Precision::Float);
        assert!(applied[0]
            .note
            .as_ref()
            .unwrap()
            .contains("too small to pay"));
        let (_, applied) = rewrite(
            &m,
            &layers,
            &[Precision::Weights],
            &RewriteOptions::default(),
        );
        assert_eq!(applied[0].precision, Precision::Weights, "256 elements pay");
    }

    #[test]
    fn the_output_channel_axis_follows_the_operator_and_its_layout() {
        let nodes = vec![
            graph::node(
                "Gemm",
                "plain".into(),
                vec!["x".into(), "w1".into()],
                vec!["a".into()],
                vec![],
            ),
            gemm("transposed", "a", "w2", "b"),
            graph::node(
                "MatMul",
                "mm".into(),
                vec!["b".into(), "w3".into()],
                vec!["y".into()],
                vec![],
            ),
        ];
        let inits = vec![
            f32_tensor("w1".into(), &[64, 32], &ramp(64 * 32)),
            f32_tensor("w2".into(), &[16, 32], &ramp(16 * 32)),
            f32_tensor("w3".into(), &[16, 8], &ramp(16 * 8)),
        ];
        let layers = find_layers(&model(nodes, inits));
        let axes: Vec<_> = layers.iter().map(|l| l.axis).collect();
        assert_eq!(axes, vec![Some(1), Some(0), Some(1)]);
    }
}

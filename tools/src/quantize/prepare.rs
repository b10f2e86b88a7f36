//! Bringing an exported graph into the form the quantizer works on, as ONNX Runtime's
//! `quant_pre_process` does for its users (with `onnx.version_converter` for the opset):
//!
//! 1. [`constants_to_initializers`]: exporters such as paddle2onnx (and PyTorch's without
//!    constant folding) write every weight as a `Constant` node; each becomes an
//!    initializer of the same name, so the layers reading it can be quantized.
//! 2. [`fold_batch_norms`]: a `BatchNormalization` that alone reads a `Conv`'s output is
//!    folded into that Conv's weight and bias, per output channel, so an integer Conv is
//!    followed by its activation directly.
//! 3. [`to_opset_13`]: opsets 11 and 12 become 13, the first where per-channel
//!    `DequantizeLinear` is defined. The operators whose meaning or signature changed on
//!    the way are rewritten (`Softmax`, `LogSoftmax`, `Hardmax`, `Squeeze`, `Unsqueeze`,
//!    `ReduceSum`, `Split`, `Dropout`); every other default-domain operator only gained
//!    element types between 11 and 13.
//!
//! Each step keeps what the graph computes; folding a batch norm moves the output by float
//! rounding only.

use std::collections::{HashMap, HashSet};

use super::graph::{self, Names};
use crate::onnx::pb;
use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;

/// The first opset that [`to_opset_13`] converts from.
pub(crate) const CONVERTIBLE_OPSET: i64 = 11;

/// Turns the main graph's `Constant` nodes into initializers; returns how many.
///
/// Constants given as tensors or as float/int scalars and lists are converted; string and
/// sparse constants, and constants that are graph outputs, stay nodes.
pub(crate) fn constants_to_initializers(model: &mut pb::ModelProto) -> usize {
    let ir_version = model.ir_version;
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut converted = vec![];
    graph.node.retain(|node| {
        let standard = node.domain.is_empty() || node.domain == "ai.onnx";
        let tensor = match node.output.as_slice() {
            [out] if standard && node.op_type == "Constant" && !outputs.contains(out) => {
                constant_value(node).map(|mut t| {
                    t.name = out.clone();
                    t
                })
            }
            _ => None,
        };
        match tensor {
            Some(t) => {
                converted.push(t);
                false
            }
            None => true,
        }
    });
    let count = converted.len();
    if ir_version < 4 {
        // Before IR 4 every initializer must also be declared as a graph input.
        graph
            .input
            .extend(converted.iter().map(super::rewrite::value_info));
    }
    graph.initializer.extend(converted);
    count
}

/// The tensor a Constant node holds, when it is a tensor or a number or list of numbers.
fn constant_value(node: &pb::NodeProto) -> Option<pb::TensorProto> {
    let [attr] = node.attribute.as_slice() else {
        return None;
    };
    let ty = AttributeType::try_from(attr.r#type).ok();
    match (attr.name.as_str(), ty) {
        ("value", _) => attr.t.clone(),
        ("value_float", _) => Some(graph::f32_tensor(String::new(), &[], &[attr.f])),
        ("value_floats", _) => Some(graph::f32_tensor(
            String::new(),
            &[attr.floats.len() as i64],
            &attr.floats,
        )),
        ("value_int", _) => Some(i64_tensor(String::new(), &[], &[attr.i])),
        ("value_ints", _) => Some(i64_tensor(
            String::new(),
            &[attr.ints.len() as i64],
            &attr.ints,
        )),
        _ => None,
    }
}

fn i64_tensor(name: String, dims: &[i64], values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name,
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Folds each `BatchNormalization` that is the only reader of a `Conv`'s output into the
/// Conv, per output channel: `w' = w·γ/√(σ²+ε)`, `b' = (b − μ)·γ/√(σ²+ε) + β`. Returns
/// the names of the batch norms folded.
///
/// A pair is left as it is unless every parameter is a float initializer that nothing else
/// reads, with one value per output channel, and the batch norm is in inference mode.
pub(crate) fn fold_batch_norms(model: &mut pb::ModelProto) -> Vec<String> {
    let ir_version = model.ir_version;
    let Some(graph) = model.graph.as_mut() else {
        return vec![];
    };
    let mut folded = vec![];
    let mut names = Names::of(graph);
    while let Some(plan) = next_fold(graph, ir_version) {
        folded.push(graph::display_name(&graph.node[plan.bn]));
        apply_fold(graph, plan, &mut names);
    }
    // Batch-norm parameters nothing reads any more.
    let mut read: HashSet<String> = graph::subgraph_reads(graph);
    read.extend(graph.node.iter().flat_map(|n| n.input.iter().cloned()));
    read.extend(graph.output.iter().map(|o| o.name.clone()));
    let inputs: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let dropped: HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| !read.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    if !folded.is_empty() {
        graph.initializer.retain(|t| !dropped.contains(&t.name));
        if ir_version < 4 {
            graph
                .input
                .retain(|i| !(dropped.contains(&i.name) && inputs.contains(&i.name)));
        }
    }
    folded
}

/// One Conv + BatchNormalization pair to fold, with the folded weight and bias.
struct Fold {
    conv: usize,
    bn: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The first foldable pair of the graph, computed.
fn next_fold(graph: &pb::GraphProto, ir_version: i64) -> Option<Fold> {
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let consumers = graph::consumers(graph);
    let sub_reads = graph::subgraph_reads(graph);
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(ix, n)| n.output.iter().map(move |o| (o.as_str(), ix)))
        .collect();
    // A value only `reader` reads (at one slot), that nobody outside the graph sees or
    // overrides (from IR 4 on, an initializer that is also a graph input can be fed; before
    // IR 4 every initializer is listed as an input).
    let private = |name: &str, reader: usize| {
        consumers
            .get(name)
            .is_some_and(|c| c.len() == 1 && c[0].0 == reader)
            && !outputs.contains(name)
            && !sub_reads.contains(name)
            && (ir_version < 4 || !inputs.contains(name))
    };
    let floats = |name: &str| {
        inits
            .get(name)
            .and_then(|t| graph::f32_values(t).ok().map(|v| (v, t.dims.clone())))
    };
    let standard = |n: &pb::NodeProto| n.domain.is_empty() || n.domain == "ai.onnx";
    graph.node.iter().enumerate().find_map(|(bn_ix, bn)| {
        if !standard(bn) || bn.op_type != "BatchNormalization" || bn.input.len() != 5 {
            return None;
        }
        if bn.output.first().is_none_or(String::is_empty)
            || bn.output.iter().skip(1).any(|o| !o.is_empty())
            || graph::attr_i(bn, "spatial", 1) != 1
            || graph::attr_i(bn, "training_mode", 0) != 0
        {
            return None;
        }
        let x = bn.input[0].as_str();
        let conv_ix = *producer.get(x)?;
        let conv = &graph.node[conv_ix];
        if !standard(conv) || conv.op_type != "Conv" || !private(x, bn_ix) {
            return None;
        }
        let (mut weight, dims) = floats(conv.input.get(1)?)?;
        if dims.len() < 3 || !private(&conv.input[1], conv_ix) {
            return None;
        }
        let channels = usize::try_from(dims[0]).ok().filter(|c| *c > 0)?;
        if weight.is_empty() || weight.len() % channels != 0 {
            return None;
        }
        let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => {
                let (values, _) = floats(b)?;
                if !private(b, conv_ix) {
                    return None;
                }
                values
            }
            None => vec![0.0; channels],
        };
        let params: Vec<Vec<f32>> = bn.input[1..5]
            .iter()
            .map(|p| floats(p).map(|(v, _)| v))
            .collect::<Option<_>>()?;
        if bias.len() != channels || params.iter().any(|p| p.len() != channels) {
            return None;
        }
        let (gamma, beta, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
        let epsilon = graph::attr_f(bn, "epsilon", 1e-5) as f64;
        let factor: Vec<f64> = (0..channels)
            .map(|c| gamma[c] as f64 / (var[c] as f64 + epsilon).sqrt())
            .collect();
        if factor.iter().any(|f| !f.is_finite()) {
            return None;
        }
        let per_channel = weight.len() / channels;
        for (i, w) in weight.iter_mut().enumerate() {
            *w = (*w as f64 * factor[i / per_channel]) as f32;
        }
        let bias = (0..channels)
            .map(|c| ((bias[c] as f64 - mean[c] as f64) * factor[c] + beta[c] as f64) as f32)
            .collect();
        Some(Fold {
            conv: conv_ix,
            bn: bn_ix,
            weight,
            bias,
        })
    })
}

fn apply_fold(graph: &mut pb::GraphProto, fold: Fold, names: &mut Names) {
    let conv = graph.node[fold.conv].clone();
    let set = |graph: &mut pb::GraphProto, name: &str, values: &[f32]| {
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == name)
            .expect("checked by next_fold");
        let dims = t.dims.clone();
        *t = graph::f32_tensor(name.to_string(), &dims, values);
    };
    set(graph, &conv.input[1], &fold.weight);
    let bias_name = match conv.input.get(2).filter(|b| !b.is_empty()) {
        Some(b) => {
            set(graph, b, &fold.bias);
            b.clone()
        }
        None => {
            let name = names.fresh(&format!("{}.bias", graph::display_name(&conv)));
            graph.initializer.push(graph::f32_tensor(
                name.clone(),
                &[fold.bias.len() as i64],
                &fold.bias,
            ));
            name
        }
    };
    let bn_output = graph.node[fold.bn].output[0].clone();
    let conv_node = &mut graph.node[fold.conv];
    conv_node.input.resize(2, String::new());
    conv_node.input.push(bias_name);
    conv_node.output[0] = bn_output;
    graph.node.remove(fold.bn);
}

/// Converts a model of opset 11 or 12 to opset 13, in place; returns what was rewritten
/// (empty when nothing needed to be), or why the model cannot be converted.
///
/// `ranks` gives the rank of tensors by name where known: a `Softmax` over the last axis
/// means the same at every opset; elsewhere it is rewritten as `Flatten` → `Softmax` →
/// `Reshape` to the input's shape, which is what it meant before opset 13.
pub(crate) fn to_opset_13(
    model: &mut pb::ModelProto,
    ranks: &HashMap<String, usize>,
) -> Result<Vec<String>, String> {
    let opset = graph::default_opset(model);
    if opset >= 13 {
        return Ok(vec![]);
    }
    if opset < CONVERTIBLE_OPSET {
        return Err(format!(
            "the model declares opset {opset}, and this tool converts opsets \
             {CONVERTIBLE_OPSET} and 12 to 13, not older ones"
        ));
    }
    let graph = model.graph.as_mut().ok_or("the model holds no graph")?;
    let mut names = Names::of(graph);
    let mut changes: Vec<String> = vec![];
    convert_graph(graph, opset, ranks, &mut names, &mut changes);
    for import in model
        .opset_import
        .iter_mut()
        .filter(|i| i.domain.is_empty() || i.domain == "ai.onnx")
    {
        import.version = 13;
    }
    Ok(changes)
}

fn convert_graph(
    graph: &mut pb::GraphProto,
    opset: i64,
    ranks: &HashMap<String, usize>,
    names: &mut Names,
    changes: &mut Vec<String>,
) {
    let mut inits = vec![];
    let old = std::mem::take(&mut graph.node);
    let mut nodes = Vec::with_capacity(old.len());
    for mut node in old {
        for attr in node.attribute.iter_mut() {
            for sub in attr.g.iter_mut().chain(attr.graphs.iter_mut()) {
                convert_graph(sub, opset, ranks, names, changes);
            }
        }
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            nodes.push(node);
            continue;
        }
        if node.input.is_empty() || node.output.is_empty() {
            // Malformed; the engine's own checks name it.
            nodes.push(node);
            continue;
        }
        let label = format!("{} ({})", graph::display_name(&node), node.op_type);
        match node.op_type.as_str() {
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = graph::attr_i(&node, "axis", 1);
                let rank = node.input.first().and_then(|x| ranks.get(x)).copied();
                let last = rank.is_some_and(|r| axis == r as i64 - 1 || axis == -1);
                if last {
                    nodes.push(node);
                    continue;
                }
                // Before 13: coerce to 2-D at `axis`, normalize each row, restore the shape.
                let base = graph::display_name(&node);
                let x = node.input[0].clone();
                let y = node.output[0].clone();
                let flat = names.fresh(&format!("{x}.flat"));
                let shape = names.fresh(&format!("{x}.shape"));
                let flat_y = names.fresh(&format!("{y}.flat"));
                nodes.push(graph::node(
                    "Flatten",
                    names.fresh(&format!("{base}.flatten")),
                    vec![x.clone()],
                    vec![flat.clone()],
                    vec![graph::int_attr("axis", axis)],
                ));
                nodes.push(graph::node(
                    "Shape",
                    names.fresh(&format!("{base}.shape")),
                    vec![x],
                    vec![shape.clone()],
                    vec![],
                ));
                node.attribute.retain(|a| a.name != "axis");
                node.attribute.push(graph::int_attr("axis", 1));
                node.input[0] = flat;
                node.output[0] = flat_y.clone();
                nodes.push(node);
                nodes.push(graph::node(
                    "Reshape",
                    names.fresh(&format!("{base}.reshape")),
                    vec![flat_y, shape],
                    vec![y],
                    vec![],
                ));
                changes.push(format!("{label}: over 2-D rows, as before opset 13"));
                continue;
            }
            "Squeeze" | "Unsqueeze" | "ReduceSum" => {
                if let Some(axes) = take_ints(&mut node, "axes") {
                    let name = names.fresh(&format!("{}.axes", graph::display_name(&node)));
                    inits.push(i64_tensor(name.clone(), &[axes.len() as i64], &axes));
                    node.input.truncate(1);
                    node.input.push(name);
                    changes.push(format!("{label}: axes as an input"));
                }
            }
            "Split" => {
                if let Some(split) = take_ints(&mut node, "split") {
                    let name = names.fresh(&format!("{}.split", graph::display_name(&node)));
                    inits.push(i64_tensor(name.clone(), &[split.len() as i64], &split));
                    node.input.truncate(1);
                    node.input.push(name);
                    changes.push(format!("{label}: split sizes as an input"));
                }
            }
            "Dropout" if opset < 12 => {
                let ratio = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "ratio")
                    .map(|a| a.f);
                node.attribute.retain(|a| a.name != "ratio");
                if let Some(ratio) = ratio {
                    let name = names.fresh(&format!("{}.ratio", graph::display_name(&node)));
                    inits.push(graph::f32_tensor(name.clone(), &[], &[ratio]));
                    node.input.truncate(1);
                    node.input.push(name);
                    changes.push(format!("{label}: ratio as an input"));
                }
            }
            _ => {}
        }
        nodes.push(node);
    }
    graph.node = nodes;
    graph.initializer.extend(inits);
}

/// Removes an integer-list attribute from a node and returns its values.
fn take_ints(node: &mut pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    let ix = node.attribute.iter().position(|a| a.name == name)?;
    Some(node.attribute.remove(ix).ints)
}

/// The rank of every tensor the engine's typed model knows, by ONNX name.
pub(crate) fn ranks(typed: &tract_onnx::prelude::TypedModel) -> HashMap<String, usize> {
    use tract_onnx::prelude::OutletId;
    let mut ranks = HashMap::new();
    for node in typed.nodes() {
        for slot in 0..node.outputs.len() {
            let outlet = OutletId::new(node.id, slot);
            let Ok(fact) = typed.outlet_fact(outlet) else {
                continue;
            };
            if let Some(label) = typed.outlet_label(outlet) {
                ranks.insert(label.to_string(), fact.rank());
            }
            if node.outputs.len() == 1 {
                ranks.entry(node.name.clone()).or_insert(fact.rank());
            }
        }
    }
    ranks
}

/// Whether a tensor is a float initializer (what the quantizer can read as a weight).
#[cfg(test)]
fn is_float_initializer(graph: &pb::GraphProto, name: &str) -> bool {
    graph
        .initializer
        .iter()
        .any(|t| t.name == name && t.data_type == graph::FLOAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::graph::{f32_tensor, int_attr, node};

    fn model(nodes: Vec<pb::NodeProto>, inits: Vec<pb::TensorProto>, opset: i64) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 6,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![super::super::rewrite::value_info(&f32_tensor(
                    "x".into(),
                    &[1, 2, 3, 3],
                    &[],
                ))],
                output: vec![super::super::rewrite::value_info(&f32_tensor(
                    "y".into(),
                    &[1, 2, 3, 3],
                    &[],
                ))],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn constant(name: &str, t: pb::TensorProto) -> pb::NodeProto {
        pb::NodeProto {
            op_type: "Constant".into(),
            name: format!("{name}.constant"),
            output: vec![name.into()],
            attribute: vec![pb::AttributeProto {
                name: "value".into(),
                r#type: AttributeType::Tensor as i32,
                t: Some(t),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn conv_bn(gamma: f32) -> pb::ModelProto {
        let w = f32_tensor(String::new(), &[2, 2, 1, 1], &[1.0, 2.0, -1.0, 0.5]);
        let bn = |v: [f32; 2]| f32_tensor(String::new(), &[2], &v);
        model(
            vec![
                constant("w", w),
                constant("gamma", bn([gamma, 1.0])),
                constant("beta", bn([0.5, -0.5])),
                constant("mean", bn([1.0, 0.0])),
                constant("var", bn([3.0, 0.0])),
                node(
                    "Conv",
                    "conv".into(),
                    vec!["x".into(), "w".into()],
                    vec!["c".into()],
                    vec![],
                ),
                node(
                    "BatchNormalization",
                    "bn".into(),
                    vec![
                        "c".into(),
                        "gamma".into(),
                        "beta".into(),
                        "mean".into(),
                        "var".into(),
                    ],
                    vec!["y".into()],
                    vec![pb::AttributeProto {
                        name: "epsilon".into(),
                        r#type: AttributeType::Float as i32,
                        f: 1.0,
                        ..Default::default()
                    }],
                ),
            ],
            vec![],
            11,
        )
    }

    #[test]
    fn constant_nodes_become_initializers_of_the_same_name() {
        let mut m = conv_bn(2.0);
        assert_eq!(constants_to_initializers(&mut m), 5);
        let g = m.graph.as_ref().unwrap();
        assert!(g.node.iter().all(|n| n.op_type != "Constant"));
        assert!(is_float_initializer(g, "w"));
        assert_eq!(
            graph::f32_values(g.initializer.iter().find(|t| t.name == "gamma").unwrap()).unwrap(),
            vec![2.0, 1.0]
        );
    }

    #[test]
    fn a_batch_norm_after_a_conv_is_folded_into_its_weight_and_a_new_bias() {
        let mut m = conv_bn(4.0);
        constants_to_initializers(&mut m);
        assert_eq!(fold_batch_norms(&mut m), vec!["bn".to_string()]);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 1);
        let conv = &g.node[0];
        assert_eq!(conv.output, vec!["y".to_string()]);
        let value = |name: &str| {
            graph::f32_values(g.initializer.iter().find(|t| t.name == name).unwrap()).unwrap()
        };
        // Channel 0: γ/√(σ²+ε) = 4/√4 = 2; channel 1: 1/√1 = 1.
        assert_eq!(value("w"), vec![2.0, 4.0, -1.0, 0.5]);
        // b' = (0 − μ)·f + β: channel 0 (0 − 1)·2 + 0.5, channel 1 (0 − 0)·1 − 0.5.
        assert_eq!(value(&conv.input[2]), vec![-1.5, -0.5]);
        assert_eq!(
            g.initializer.len(),
            2,
            "the batch norm's parameters are gone"
        );
    }

    #[test]
    fn a_batch_norm_whose_conv_output_is_read_elsewhere_is_left_alone() {
        let mut m = conv_bn(2.0);
        constants_to_initializers(&mut m);
        let g = m.graph.as_mut().unwrap();
        g.output.push(pb::ValueInfoProto {
            name: "c".into(),
            ..Default::default()
        });
        assert!(fold_batch_norms(&mut m).is_empty());
    }

    #[test]
    fn opset_11_attribute_forms_become_inputs_at_opset_13() {
        let mut m = model(
            vec![
                node(
                    "Squeeze",
                    "squeeze".into(),
                    vec!["x".into()],
                    vec!["s".into()],
                    vec![pb::AttributeProto {
                        name: "axes".into(),
                        r#type: AttributeType::Ints as i32,
                        ints: vec![0],
                        ..Default::default()
                    }],
                ),
                node(
                    "Softmax",
                    "softmax".into(),
                    vec!["s".into()],
                    vec!["y".into()],
                    vec![int_attr("axis", 0)],
                ),
            ],
            vec![],
            11,
        );
        let ranks = HashMap::from([("s".to_string(), 3)]);
        let changes = to_opset_13(&mut m, &ranks).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(graph::default_opset(&m), 13);
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            ["Squeeze", "Flatten", "Shape", "Softmax", "Reshape"],
            "softmax over axis 0 of a rank-3 tensor meant rows of a 2-D view"
        );
        assert_eq!(g.node[0].input.len(), 2);
        assert!(g.node[0].attribute.is_empty());
        assert_eq!(g.node.last().unwrap().output, vec!["y".to_string()]);
    }

    #[test]
    fn a_softmax_over_the_last_axis_is_kept_and_old_opsets_are_refused() {
        let softmax = || {
            node(
                "Softmax",
                "softmax".into(),
                vec!["x".into()],
                vec!["y".into()],
                vec![int_attr("axis", 3)],
            )
        };
        let ranks = HashMap::from([("x".to_string(), 4)]);
        let mut m = model(vec![softmax()], vec![], 12);
        assert!(to_opset_13(&mut m, &ranks).unwrap().is_empty());
        assert_eq!(m.graph.unwrap().node.len(), 1);
        let mut old = model(vec![softmax()], vec![], 10);
        assert!(to_opset_13(&mut old, &ranks)
            .unwrap_err()
            .contains("opset 10"));
    }
}

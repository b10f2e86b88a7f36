//! Small helpers over tract's prost types for reading and rewriting ONNX graphs.

use std::collections::{HashMap, HashSet};

use crate::onnx::pb;
use pb::tensor_proto::DataType;

/// The ONNX element type codes this module writes.
pub(crate) const FLOAT: i32 = DataType::Float as i32;
pub(crate) const UINT8: i32 = DataType::Uint8 as i32;
pub(crate) const INT8: i32 = DataType::Int8 as i32;

/// The default-domain opset of a model (0 when it imports none).
pub(crate) fn default_opset(model: &pb::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|i| i.domain.is_empty() || i.domain == "ai.onnx")
        .map(|i| i.version)
        .unwrap_or(0)
}

/// An integer attribute, or `default` when the node does not set it.
pub(crate) fn attr_i(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.i)
        .unwrap_or(default)
}

/// A float attribute, or `default` when the node does not set it.
pub(crate) fn attr_f(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.f)
        .unwrap_or(default)
}

/// An integer attribute.
pub(crate) fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// A node in the default domain.
pub(crate) fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name,
        input: inputs,
        output: outputs,
        attribute: attributes,
        ..Default::default()
    }
}

/// A float tensor (raw little-endian data).
pub(crate) fn f32_tensor(name: String, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name,
        dims: dims.to_vec(),
        data_type: FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int8 tensor.
pub(crate) fn i8_tensor(name: String, dims: &[i64], values: &[i8]) -> pb::TensorProto {
    pb::TensorProto {
        name,
        dims: dims.to_vec(),
        data_type: INT8,
        raw_data: values.iter().map(|v| *v as u8).collect(),
        ..Default::default()
    }
}

/// A uint8 tensor.
pub(crate) fn u8_tensor(name: String, dims: &[i64], values: &[u8]) -> pb::TensorProto {
    pb::TensorProto {
        name,
        dims: dims.to_vec(),
        data_type: UINT8,
        raw_data: values.to_vec(),
        ..Default::default()
    }
}

/// The elements of a float tensor stored in the file, or why they cannot be read.
pub(crate) fn f32_values(t: &pb::TensorProto) -> Result<Vec<f32>, String> {
    if t.data_type != FLOAT {
        let name = DataType::try_from(t.data_type)
            .map(|d| d.as_str_name())
            .unwrap_or("an unknown type");
        return Err(format!("its elements are {name}, not FLOAT"));
    }
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
        || !t.external_data.is_empty()
    {
        return Err("its data is stored outside the model file (external data)".into());
    }
    let n = element_count(t).ok_or("its shape is invalid")?;
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != n * 4 {
            return Err(format!(
                "it holds {} bytes of raw data for {n} elements",
                t.raw_data.len()
            ));
        }
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if values.len() != n {
        return Err(format!("it holds {} values for {n} elements", values.len()));
    }
    Ok(values)
}

/// The number of elements a tensor's dims describe.
pub(crate) fn element_count(t: &pb::TensorProto) -> Option<usize> {
    t.dims.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Every name used in a graph (values and nodes, in subgraphs too), to make new
/// ones unique.
#[derive(Debug, Default, Clone)]
pub(crate) struct Names {
    used: HashSet<String>,
}

impl Names {
    /// Collects the names of `graph` and its subgraphs.
    pub(crate) fn of(graph: &pb::GraphProto) -> Names {
        let mut names = Names::default();
        names.collect(graph);
        names
    }

    fn collect(&mut self, graph: &pb::GraphProto) {
        let values = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .map(|v| v.name.clone());
        self.used.extend(values);
        self.used
            .extend(graph.initializer.iter().map(|t| t.name.clone()));
        for node in &graph.node {
            self.used.insert(node.name.clone());
            self.used.extend(node.input.iter().cloned());
            self.used.extend(node.output.iter().cloned());
            for attr in &node.attribute {
                for sub in attr.g.iter().chain(&attr.graphs) {
                    self.collect(sub);
                }
            }
        }
    }

    /// `base` if unused, else `base.1`, `base.2`, ...; the result is marked used.
    pub(crate) fn fresh(&mut self, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut n = 1;
        while self.used.contains(&candidate) || candidate.is_empty() {
            candidate = format!("{base}.{n}");
            n += 1;
        }
        self.used.insert(candidate.clone());
        candidate
    }
}

/// Names read anywhere inside a node's subgraphs (If/Loop/Scan bodies).
pub(crate) fn subgraph_reads(graph: &pb::GraphProto) -> HashSet<String> {
    fn walk(graph: &pb::GraphProto, into: &mut HashSet<String>) {
        for node in &graph.node {
            into.extend(node.input.iter().cloned());
            for attr in &node.attribute {
                for sub in attr.g.iter().chain(&attr.graphs) {
                    walk(sub, into);
                }
            }
        }
    }
    let mut reads = HashSet::new();
    for node in &graph.node {
        for attr in &node.attribute {
            for sub in attr.g.iter().chain(&attr.graphs) {
                walk(sub, &mut reads);
            }
        }
    }
    reads
}

/// For each value name, the (node index, input slot) pairs that read it.
pub(crate) fn consumers(graph: &pb::GraphProto) -> HashMap<String, Vec<(usize, usize)>> {
    let mut map: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (ix, node) in graph.node.iter().enumerate() {
        for (slot, input) in node.input.iter().enumerate() {
            if !input.is_empty() {
                map.entry(input.clone()).or_default().push((ix, slot));
            }
        }
    }
    map
}

/// A node's display name: its name, else its first output.
pub(crate) fn display_name(node: &pb::NodeProto) -> String {
    perch_runtime::engine::internal::onnx_check::node_name(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_never_collide_with_existing_ones() {
        let graph = pb::GraphProto {
            initializer: vec![f32_tensor("w.q".into(), &[1], &[1.0])],
            node: vec![node("Relu", "w.q.1".into(), vec![], vec![], vec![])],
            ..Default::default()
        };
        let mut names = Names::of(&graph);
        assert_eq!(names.fresh("w.q"), "w.q.2");
        assert_eq!(names.fresh("w.q"), "w.q.3");
        assert_eq!(names.fresh("other"), "other");
    }

    #[test]
    fn float_values_read_raw_and_typed_storage_alike() {
        let raw = f32_tensor("a".into(), &[2], &[1.5, -2.0]);
        let typed = pb::TensorProto {
            dims: vec![2],
            data_type: FLOAT,
            float_data: vec![1.5, -2.0],
            ..Default::default()
        };
        assert_eq!(f32_values(&raw).unwrap(), vec![1.5, -2.0]);
        assert_eq!(f32_values(&typed).unwrap(), vec![1.5, -2.0]);
        let truncated = pb::TensorProto {
            raw_data: vec![0; 5],
            ..raw
        };
        assert!(f32_values(&truncated).is_err());
    }
}

//! What a model is made of: parameters, multiply-accumulates, quantization format,
//! and a sample input to run it on.
//!
//! ONNX models are measured on their own nodes, with the tensor shapes the engine
//! infers (the graph is parsed and typed by tract, and shapes are read back by the
//! ONNX tensor names, which tract keeps as outlet labels). NNEF archives have no ONNX
//! nodes left; their multiply-accumulates come from the engine's own cost model.
//!
//! ```no_run
//! use perch_tools::{graph, onnx};
//! let path = std::path::Path::new("models/kws-dscnn/model.onnx");
//! let proto = onnx::read_model(path)?;
//! let typed = graph::typed_onnx(&proto, path, &[]).map_err(perch_tools::ToolError::Model)?;
//! let compute = graph::onnx_compute(&proto, &typed);
//! println!("{} MACs, {}", compute.macs, graph::quantization(&proto).summary);
//! # Ok::<(), perch_tools::ToolError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use perch_runtime::engine::internal::{onnx_check, ArrayExt, InputExt, Tensor};
use perch_runtime::engine::{Dim, Golden, Model};
use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::{
    Framework, InferenceFact, InferenceModelExt, OutletId, SymbolValues, TDim, TypedModel,
};
use tract_onnx::tract_core::ops::Cost;
use tract_onnx::tract_hir::infer::Factoid;

/// Parameters stored in a model: ONNX initializers, or an NNEF archive's constants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Parameters {
    /// Elements over all parameter tensors.
    pub count: u64,
    /// Bytes those elements occupy at their element type (not the file size).
    pub bytes: u64,
    /// Elements per element type (`f32`, `i8`, ...).
    pub by_dtype: BTreeMap<String, u64>,
}

/// ONNX element type code → (name, bytes per element).
fn onnx_dtype(code: i32) -> (&'static str, u64) {
    match code {
        1 => ("f32", 4),
        2 => ("u8", 1),
        3 => ("i8", 1),
        4 => ("u16", 2),
        5 => ("i16", 2),
        6 => ("i32", 4),
        7 => ("i64", 8),
        8 => ("string", 0),
        9 => ("bool", 1),
        10 => ("f16", 2),
        11 => ("f64", 8),
        12 => ("u32", 4),
        13 => ("u64", 8),
        16 => ("bf16", 2),
        17..=20 => ("f8", 1),
        21 => ("u4", 1),
        22 => ("i4", 1),
        _ => ("other", 0),
    }
}

/// The ONNX element type name (`f32`, `i8`, ...) for a `TensorProto.DataType` code.
pub fn onnx_dtype_name(code: i32) -> &'static str {
    onnx_dtype(code).0
}

/// Counts the elements and bytes of a graph's initializers.
pub fn parameters(graph: &pb::GraphProto) -> Parameters {
    let mut p = Parameters::default();
    for t in &graph.initializer {
        let n: u64 = t.dims.iter().map(|d| (*d).max(0) as u64).product();
        let (name, size) = onnx_dtype(t.data_type);
        p.count += n;
        p.bytes += n * size;
        *p.by_dtype.entry(name.to_string()).or_insert(0) += n;
    }
    p
}

/// Counts the elements and bytes of a typed model's constants (NNEF archives).
pub fn typed_parameters(model: &TypedModel) -> Parameters {
    let mut p = Parameters::default();
    for node in model.nodes() {
        if let Some(k) = node
            .op_as::<tract_onnx::tract_core::ops::konst::Const>()
            .map(|c| c.val())
        {
            let n = k.len() as u64;
            let dt = k.datum_type();
            p.count += n;
            p.bytes += n * dt.size_of() as u64;
            *p.by_dtype
                .entry(format!("{:?}", dt.unquantized()).to_lowercase())
                .or_insert(0) += n;
        }
    }
    p
}

/// Multiply-accumulates of one operator type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpCompute {
    /// Nodes of this type that were counted.
    pub nodes: usize,
    /// Their multiply-accumulates for one run.
    pub macs: u64,
    /// `2 × macs`: one multiply and one add per MAC.
    pub flops: u64,
}

/// Where multiply-accumulates happen in a model, for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compute {
    /// Per operator type. For ONNX models the keys are ONNX op types, except that
    /// depthwise convolutions (one input channel per group) are counted under
    /// `Conv (depthwise)` and other grouped ones under `Conv (grouped)`, since the
    /// engine runs them with different kernels. For NNEF they are the engine's op names.
    pub by_op: BTreeMap<String, OpCompute>,
    /// Total multiply-accumulates.
    pub macs: u64,
    /// Total floating-point (or integer) operations, `2 × macs`.
    pub flops: u64,
    /// Where the numbers come from: `onnx nodes` or `engine cost model`.
    pub method: &'static str,
    /// Symbolic dimensions (a batch size, say) were taken as 1.
    pub symbolic_dims_as_one: bool,
    /// Nodes that do multiply-accumulates but whose shapes could not be found.
    pub unknown: Vec<String>,
}

impl Compute {
    fn add(&mut self, op: &str, macs: u64) {
        let entry = self.by_op.entry(op.to_string()).or_default();
        entry.nodes += 1;
        entry.macs += macs;
        entry.flops += 2 * macs;
        self.macs += macs;
        self.flops += 2 * macs;
    }
}

/// Parses an ONNX model with the engine and types it, applying input shape overrides
/// as the engine does; the error is the engine's reason, on one line.
pub fn typed_onnx(
    proto: &pb::ModelProto,
    path: &Path,
    shapes: &[(String, Vec<usize>)],
) -> Result<TypedModel, String> {
    let dir = path.parent().and_then(Path::to_str);
    let onnx = perch_runtime::engine::internal::onnx_contrib::onnx_framework();
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut model = onnx.parse(proto, dir)?.model;
        for (name, shape) in shapes {
            let inputs = model.input_outlets()?.to_vec();
            let ix = inputs
                .iter()
                .position(|o| model.node(o.node).name == *name)
                .ok_or_else(|| anyhow::anyhow!("no input named {name:?}"))?;
            let fact = match model.input_fact(ix)?.datum_type.concretize() {
                Some(dt) => InferenceFact::dt_shape(dt, shape),
                None => InferenceFact::shape(shape),
            };
            model.set_input_fact(ix, fact)?;
        }
        model.into_typed()
    }));
    match attempt {
        Ok(Ok(typed)) => Ok(typed),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the engine panicked while typing the graph".into()),
    }
}

/// Parses an NNEF archive (tar, gzipped or not, or a folder) into the engine's typed model.
pub fn typed_nnef(path: &Path) -> Result<TypedModel, String> {
    let nnef = perch_runtime::engine::internal::nnef_framework();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| nnef.model_for_path(path))) {
        Ok(Ok(typed)) => Ok(typed),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the engine panicked while reading the archive".into()),
    }
}

/// A dimension with every symbol taken as 1; `None` when it cannot be evaluated.
fn dim_as_one(d: &TDim) -> Option<u64> {
    let mut values = SymbolValues::default();
    for s in d.symbols() {
        values.set(&s, 1);
    }
    d.eval_to_i64(&values)
        .ok()
        .and_then(|v| u64::try_from(v).ok())
}

/// Counts the multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul and their
/// integer forms (ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul, QGemm) in an ONNX
/// graph, reading tensor shapes from the engine's typed model.
///
/// Per node: a convolution costs `output elements × C/group × kernel surface`; a
/// transposed one `input elements × M/group × kernel surface`; a matrix product
/// `output elements × K`. Bias additions are not counted.
pub fn onnx_compute(proto: &pb::ModelProto, typed: &TypedModel) -> Compute {
    let mut by_label: HashMap<&str, OutletId> = HashMap::new();
    for node in typed.nodes() {
        // Sources and constants are named after the ONNX tensor they hold.
        if node.outputs.len() == 1 {
            by_label.insert(node.name.as_str(), OutletId::new(node.id, 0));
        }
    }
    for node in typed.nodes() {
        for slot in 0..node.outputs.len() {
            let outlet = OutletId::new(node.id, slot);
            if let Some(label) = typed.outlet_label(outlet) {
                by_label.insert(label, outlet);
            }
        }
    }
    let initializer_dims: HashMap<&str, Vec<u64>> = proto
        .graph
        .iter()
        .flat_map(|g| g.initializer.iter())
        .map(|t| {
            (
                t.name.as_str(),
                t.dims.iter().map(|d| (*d).max(0) as u64).collect(),
            )
        })
        .collect();
    let mut compute = Compute {
        method: "onnx nodes",
        ..Compute::default()
    };
    let mut symbolic = false;
    let mut shape_of = |name: &str| -> Option<Vec<u64>> {
        if let Some(outlet) = by_label.get(name) {
            if let Ok(fact) = typed.outlet_fact(*outlet) {
                symbolic |= fact.shape.iter().any(|d| d.to_i64().is_err());
                return fact.shape.iter().map(dim_as_one).collect();
            }
        }
        initializer_dims.get(name).cloned()
    };
    for node in proto.graph.iter().flat_map(|g| g.node.iter()) {
        let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
        let output = node.output.first().map(String::as_str).unwrap_or("");
        let int_attr = |name: &str, default: i64| {
            node.attribute
                .iter()
                .find(|a| a.name == name)
                .map_or(default, |a| a.i)
        };
        let product = |s: &[u64]| s.iter().product::<u64>();
        let counted = match node.op_type.as_str() {
            "Conv" | "ConvInteger" | "QLinearConv" => {
                let w = if node.op_type == "QLinearConv" { 3 } else { 1 };
                match (shape_of(output), shape_of(input(w)), shape_of(input(0))) {
                    (Some(out), Some(w), x) if w.len() >= 2 => {
                        let group = int_attr("group", 1).max(1) as u64;
                        let c_in = x.as_ref().and_then(|x| x.get(1).copied());
                        let key = if group == 1 {
                            node.op_type.clone()
                        } else if w[1] == 1 && c_in == Some(group) {
                            format!("{} (depthwise)", node.op_type)
                        } else {
                            format!("{} (grouped)", node.op_type)
                        };
                        Some((key, product(&out) * product(&w[1..])))
                    }
                    _ => None,
                }
            }
            "ConvTranspose" => match (shape_of(input(0)), shape_of(input(1))) {
                (Some(x), Some(w)) if w.len() >= 2 => {
                    Some((node.op_type.clone(), product(&x) * product(&w[1..])))
                }
                _ => None,
            },
            "Gemm" | "QGemm" => match (shape_of(input(0)), shape_of(output)) {
                (Some(a), Some(out)) if a.len() == 2 => {
                    let k = if int_attr("transA", 0) != 0 {
                        a[0]
                    } else {
                        a[1]
                    };
                    Some((node.op_type.clone(), product(&out) * k))
                }
                _ => None,
            },
            "MatMul" | "MatMulInteger" | "QLinearMatMul" => {
                match (shape_of(input(0)), shape_of(output)) {
                    (Some(a), Some(out)) if !a.is_empty() => {
                        let k = a[a.len() - 1];
                        Some((node.op_type.clone(), product(&out) * k))
                    }
                    _ => None,
                }
            }
            _ => continue,
        };
        match counted {
            Some((key, macs)) => compute.add(&key, macs),
            None => compute
                .unknown
                .push(perch_runtime::engine::internal::onnx_check::node_name(node)),
        }
    }
    compute.symbolic_dims_as_one = symbolic;
    compute
}

/// Counts multiply-accumulates with the engine's cost model (`Cost::FMA` per node) of
/// its convolution and contraction operators (`Conv`, `Deconv`, `EinSum`, matrix
/// products), keyed by the engine's op names; used for NNEF archives, which have no
/// ONNX nodes. Element-wise products and reductions are left out, as for ONNX.
///
/// Symbolic dimensions of the inputs take their sizes from `input_shapes` (in input
/// order; may be empty); any other symbol counts as 1.
pub fn typed_compute(typed: &TypedModel, input_shapes: &[Vec<usize>]) -> Compute {
    let mut compute = Compute {
        method: "engine cost model",
        ..Compute::default()
    };
    for (node, macs) in typed.nodes().iter().zip(macs_per_node(typed, input_shapes)) {
        match macs {
            NodeMacs::None => {}
            NodeMacs::Counted { macs, symbolic } => {
                compute.symbolic_dims_as_one |= symbolic;
                if macs > 0 {
                    compute.add(node.op.name().as_ref(), macs);
                }
            }
            NodeMacs::Unknown => compute.unknown.push(node.name.clone()),
        }
    }
    compute
}

/// Multiply-accumulates of one node of a typed model, by the engine's cost model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMacs {
    /// Not a convolution or contraction operator.
    None,
    /// Counted; `symbolic` when some symbol had to be taken as 1.
    Counted {
        /// Multiply-accumulates of one run.
        macs: u64,
        /// A symbol other than the inputs' was taken as 1.
        symbolic: bool,
    },
    /// A convolution or contraction whose cost could not be evaluated.
    Unknown,
}

/// [`NodeMacs`] of every node of a typed model (decluttered or optimized), indexed by
/// node id: the `Cost::FMA` of ops whose name contains `Conv`, `EinSum` or `MatMul`.
/// Symbolic input dimensions take their sizes from `input_shapes` (input order, may be
/// empty); other symbols count as 1.
pub fn macs_per_node(typed: &TypedModel, input_shapes: &[Vec<usize>]) -> Vec<NodeMacs> {
    let mut bound = SymbolValues::default();
    for (ix, shape) in input_shapes.iter().enumerate() {
        if let Ok(fact) = typed.input_fact(ix) {
            for (dim, n) in fact.shape.iter().zip(shape) {
                if let TDim::Sym(s) = dim {
                    bound.set(s, *n as i64);
                }
            }
        }
    }
    typed
        .nodes()
        .iter()
        .map(|node| {
            let name = node.op.name();
            if !["Conv", "EinSum", "MatMul"]
                .iter()
                .any(|k| name.contains(k))
            {
                return NodeMacs::None;
            }
            let Ok(facts) = typed.node_input_facts(node.id) else {
                return NodeMacs::Unknown;
            };
            let Ok(costs) = node.op.cost(&facts) else {
                return NodeMacs::Unknown;
            };
            let (mut macs, mut symbolic) = (0u64, false);
            for (cost, n) in costs {
                if let Cost::FMA(_) = cost {
                    let n = n.eval(&bound);
                    symbolic |= n.to_i64().is_err();
                    match dim_as_one(&n) {
                        Some(v) => macs += v,
                        None => return NodeMacs::Unknown,
                    }
                }
            }
            NodeMacs::Counted { macs, symbolic }
        })
        .collect()
}

/// A quantization scheme found in a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantFormat {
    /// QuantizeLinear/DequantizeLinear pairs around float operators (activations quantized).
    Qdq,
    /// Quantized operators (QLinearConv, QLinearMatMul, ...; also vendor QLinear ops).
    QOperator,
    /// Dynamic quantization: DynamicQuantizeLinear, MatMulInteger, ConvInteger.
    Dynamic,
    /// DequantizeLinear on constant weights only: integer storage, float arithmetic.
    WeightOnly,
}

impl QuantFormat {
    fn label(self) -> &'static str {
        match self {
            QuantFormat::Qdq => "QDQ",
            QuantFormat::QOperator => "QOperator",
            QuantFormat::Dynamic => "dynamic",
            QuantFormat::WeightOnly => "weight-only",
        }
    }
}

/// Whether quantization scales cover a whole tensor or one channel each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One scale per tensor everywhere.
    PerTensor,
    /// One scale per channel everywhere.
    PerChannel,
    /// Some tensors of each kind.
    Mixed,
}

/// The quantization a model uses, read from its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quantization {
    /// The schemes found; empty for a float model.
    pub formats: Vec<QuantFormat>,
    /// Scale granularity of the quantized weights (activations are quantized per
    /// tensor in ONNX); of every Q/DQ scale when no weight is quantized.
    pub granularity: Option<Granularity>,
    /// Integer element types of quantized constants (`i8`, `u8`).
    pub weight_dtypes: Vec<String>,
    /// QuantizeLinear nodes.
    pub quantize_nodes: usize,
    /// DequantizeLinear nodes.
    pub dequantize_nodes: usize,
    /// DequantizeLinear nodes whose input is a constant (stored quantized weights).
    pub dequantized_constants: usize,
    /// QLinear*/QGemm nodes.
    pub qoperator_nodes: usize,
    /// DynamicQuantizeLinear, MatMulInteger and ConvInteger nodes.
    pub dynamic_nodes: usize,
    /// One line for people: `none`, `weight-only i8, per-channel (...)`, ...
    pub summary: String,
}

/// Finds the quantization format of an ONNX model (see [`QuantFormat`]).
pub fn quantization(proto: &pb::ModelProto) -> Quantization {
    let graph = proto.graph.as_ref();
    let nodes: Vec<&pb::NodeProto> = graph.iter().flat_map(|g| g.node.iter()).collect();
    // Every constant's element count and type.
    let constants: HashMap<&str, (u64, i32)> = graph
        .map(onnx_check::constants)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, t)| {
            let n = t.dims.iter().map(|d| (*d).max(0) as u64).product();
            (name, (n, t.data_type))
        })
        .collect();
    let input = |n: &pb::NodeProto, i: usize| n.input.get(i).cloned().unwrap_or_default();
    // (per-tensor, per-channel) counts over the scales of quantized weights, and over
    // every scale (activations included) for models that quantize no weights.
    let (mut weights, mut all) = ((0usize, 0usize), (0usize, 0usize));
    let per_channel = |name: &str| constants.get(name).is_some_and(|(n, _)| *n > 1);
    let tally = |counts: &mut (usize, usize), per_channel: bool| {
        if per_channel {
            counts.1 += 1
        } else {
            counts.0 += 1
        }
    };
    let mut weight_dtypes = std::collections::BTreeSet::new();
    let mut q = Quantization {
        formats: vec![],
        granularity: None,
        weight_dtypes: vec![],
        quantize_nodes: 0,
        dequantize_nodes: 0,
        dequantized_constants: 0,
        qoperator_nodes: 0,
        dynamic_nodes: 0,
        summary: String::new(),
    };
    for node in &nodes {
        let op = node.op_type.as_str();
        match op {
            "QuantizeLinear" => {
                q.quantize_nodes += 1;
                tally(&mut all, per_channel(&input(node, 1)));
            }
            "DequantizeLinear" => {
                q.dequantize_nodes += 1;
                let pc = per_channel(&input(node, 1));
                tally(&mut all, pc);
                if let Some((_, dt)) = constants.get(input(node, 0).as_str()) {
                    q.dequantized_constants += 1;
                    weight_dtypes.insert(onnx_dtype_name(*dt));
                    tally(&mut weights, pc);
                }
            }
            "DynamicQuantizeLinear" | "MatMulInteger" | "ConvInteger" => {
                q.dynamic_nodes += 1;
                if let Some((_, dt)) = constants.get(input(node, 1).as_str()) {
                    weight_dtypes.insert(onnx_dtype_name(*dt));
                    // Per-channel integer weights carry one zero point per channel.
                    let zero_point = if op == "DynamicQuantizeLinear" {
                        None
                    } else {
                        Some(3)
                    };
                    if let Some(zp) = zero_point.map(|i| input(node, i)) {
                        tally(&mut weights, per_channel(&zp));
                    }
                }
            }
            _ if op.starts_with("QLinear") || op == "QGemm" => {
                q.qoperator_nodes += 1;
                // QLinearConv/QLinearMatMul/QGemm: x, x_scale, x_zp, w, w_scale, ...
                if matches!(op, "QLinearConv" | "QLinearMatMul" | "QGemm") {
                    let pc = per_channel(&input(node, 4));
                    tally(&mut all, pc);
                    if let Some((_, dt)) = constants.get(input(node, 3).as_str()) {
                        weight_dtypes.insert(onnx_dtype_name(*dt));
                        tally(&mut weights, pc);
                    }
                }
            }
            _ => {}
        }
    }
    if q.qoperator_nodes > 0 {
        q.formats.push(QuantFormat::QOperator);
    }
    if q.dynamic_nodes > 0 {
        q.formats.push(QuantFormat::Dynamic);
    }
    // A QOperator graph quantizes its float inputs and dequantizes its outputs: Q/DQ at
    // the graph's edges only are part of that format, not QDQ islands.
    let graph_inputs: std::collections::HashSet<&str> = graph
        .iter()
        .flat_map(|g| g.input.iter().map(|i| i.name.as_str()))
        .collect();
    let graph_outputs: std::collections::HashSet<&str> = graph
        .iter()
        .flat_map(|g| g.output.iter().map(|o| o.name.as_str()))
        .collect();
    let read: std::collections::HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let at_edges = nodes.iter().all(|n| match n.op_type.as_str() {
        "QuantizeLinear" => graph_inputs.contains(input(n, 0).as_str()),
        "DequantizeLinear" => {
            constants.contains_key(input(n, 0).as_str())
                || n.output
                    .iter()
                    .all(|o| graph_outputs.contains(o.as_str()) && !read.contains(o.as_str()))
        }
        _ => true,
    });
    let qdq = q.quantize_nodes > 0 || q.dequantize_nodes > q.dequantized_constants;
    if qdq && !(q.qoperator_nodes > 0 && at_edges) {
        q.formats.push(QuantFormat::Qdq);
    } else if !qdq && q.dequantize_nodes > 0 {
        q.formats.push(QuantFormat::WeightOnly);
    }
    let (per_tensor, per_channel) = if weights != (0, 0) { weights } else { all };
    q.granularity = match (per_tensor, per_channel) {
        (0, 0) => None,
        (_, 0) => Some(Granularity::PerTensor),
        (0, _) => Some(Granularity::PerChannel),
        _ => Some(Granularity::Mixed),
    };
    q.weight_dtypes = weight_dtypes.into_iter().map(String::from).collect();
    q.summary = if q.formats.is_empty() {
        "none".into()
    } else {
        let formats: Vec<&str> = q.formats.iter().map(|f| f.label()).collect();
        let mut s = formats.join(" + ");
        if !q.weight_dtypes.is_empty() {
            s.push_str(&format!(" {}", q.weight_dtypes.join("/")));
        }
        match q.granularity {
            Some(Granularity::PerTensor) => s.push_str(", per-tensor"),
            Some(Granularity::PerChannel) => s.push_str(", per-channel"),
            Some(Granularity::Mixed) => s.push_str(", per-tensor and per-channel"),
            None => {}
        }
        let mut counts = vec![];
        if q.quantize_nodes > 0 {
            counts.push(format!("{} QuantizeLinear", q.quantize_nodes));
        }
        if q.dequantize_nodes > 0 {
            counts.push(format!(
                "{} DequantizeLinear, {} on constants",
                q.dequantize_nodes, q.dequantized_constants
            ));
        }
        if q.qoperator_nodes > 0 {
            counts.push(format!("{} quantized operators", q.qoperator_nodes));
        }
        if q.dynamic_nodes > 0 {
            counts.push(format!("{} dynamic-quantization nodes", q.dynamic_nodes));
        }
        format!("{s} ({})", counts.join("; "))
    };
    q
}

/// Where a sample input came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleSource {
    /// `golden` or `synthetic`.
    pub kind: &'static str,
    /// The golden folder, or how the synthetic values were drawn.
    pub description: String,
    /// Anything the user should know (symbolic dimensions fixed to 1, a golden
    /// input that did not fit the model).
    pub notes: Vec<String>,
}

/// Whether `tensors` can be the model's inputs: count, rank, sizes and element types.
pub fn inputs_fit(model: &Model, tensors: &[Tensor]) -> bool {
    let infos = &model.metadata().inputs;
    tensors.len() == infos.len()
        && tensors.iter().zip(infos).all(|(t, info)| {
            t.rank() == info.shape.len()
                && t.shape()
                    .iter()
                    .zip(&info.shape)
                    .all(|(n, d)| d.accepts(*n))
                && perch_runtime::engine::Input::from_tensor(t)
                    .is_some_and(|i| i.data.dtype() == info.dtype)
        })
}

/// Seed of the synthetic inputs: the same model always gets the same input.
pub const SYNTHETIC_SEED: u64 = 0x7065_7263_6821;

/// Inputs to run a model on: the golden inputs in `golden/` beside the model when they
/// fit its inputs, otherwise deterministic pseudo-random values (uniform in [-1, 1)
/// for floats, 0..16 for integers; seed [`SYNTHETIC_SEED`]) of the model's shapes with
/// symbolic dimensions set to 1.
pub fn sample_inputs(model: &Model, path: &Path) -> (Vec<Tensor>, SampleSource) {
    let infos = &model.metadata().inputs;
    let mut notes = vec![];
    if let Some(dir) = path.parent().map(|d| d.join("golden")) {
        if dir.join("input_0.npy").exists() {
            match Golden::load(&dir) {
                Ok(g) => {
                    let inputs: Vec<Tensor> =
                        g.inputs.into_iter().map(ArrayExt::into_tensor).collect();
                    if inputs_fit(model, &inputs) {
                        return (
                            inputs,
                            SampleSource {
                                kind: "golden",
                                description: dir.display().to_string(),
                                notes,
                            },
                        );
                    }
                    notes.push(format!(
                        "the golden inputs in {} do not fit the model's inputs",
                        dir.display()
                    ));
                }
                Err(e) => notes.push(format!("golden inputs not usable: {e}")),
            }
        }
    }
    let mut state = SYNTHETIC_SEED;
    let mut next = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut tensors = vec![];
    for info in infos {
        let shape: Vec<usize> = info
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Symbolic(s) => {
                    notes.push(format!(
                        "input {:?}: symbolic dimension {s} set to 1",
                        info.name
                    ));
                    1
                }
            })
            .collect();
        let len: usize = shape.iter().product();
        let unit = |r: u64| (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        use perch_runtime::engine::DType;
        let tensor = match info.dtype {
            DType::I8 => Tensor::from_shape(
                &shape,
                &(0..len).map(|_| (next() % 16) as i8).collect::<Vec<_>>(),
            ),
            DType::U8 => Tensor::from_shape(
                &shape,
                &(0..len).map(|_| (next() % 16) as u8).collect::<Vec<_>>(),
            ),
            DType::I32 => Tensor::from_shape(
                &shape,
                &(0..len).map(|_| (next() % 16) as i32).collect::<Vec<_>>(),
            ),
            DType::I64 => Tensor::from_shape(
                &shape,
                &(0..len).map(|_| (next() % 16) as i64).collect::<Vec<_>>(),
            ),
            _ => Tensor::from_shape(&shape, &(0..len).map(|_| unit(next())).collect::<Vec<_>>()),
        };
        // from_shape only fails when the length does not match the shape, which it does.
        if let Ok(t) = tensor {
            tensors.push(t);
        }
    }
    (
        tensors,
        SampleSource {
            kind: "synthetic",
            description: format!(
                "pseudo-random (splitmix64, seed {SYNTHETIC_SEED:#x}): floats uniform in [-1, 1), integers in 0..16"
            ),
            notes,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_path(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(rel)
    }

    #[test]
    fn a_float_model_has_no_quantization() {
        let proto = crate::onnx::read_model(&model_path("kws-dscnn/model.onnx")).unwrap();
        let q = quantization(&proto);
        assert!(q.formats.is_empty());
        assert_eq!(q.summary, "none");
    }

    #[test]
    fn onnx_and_engine_cost_model_agree_on_multiply_accumulates() {
        for name in ["kws-dscnn", "mobilenetv2-035", "anomaly-ae"] {
            let path = model_path(&format!("{name}/model.onnx"));
            let proto = crate::onnx::read_model(&path).unwrap();
            let typed = typed_onnx(&proto, &path, &[]).unwrap();
            let from_onnx = onnx_compute(&proto, &typed);
            let from_engine = typed_compute(&typed.into_decluttered().unwrap(), &[]);
            assert!(
                from_onnx.unknown.is_empty(),
                "{name}: {:?}",
                from_onnx.unknown
            );
            assert_eq!(
                from_onnx.macs, from_engine.macs,
                "{name}: {from_onnx:?} vs {from_engine:?}"
            );
        }
    }
}

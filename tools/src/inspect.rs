//! `perch inspect`: what a model takes, returns and is made of, and whether the engine
//! runs it.
//!
//! For an ONNX model everything that can be read from the protobuf is reported even
//! when the engine refuses the model; the refusal is part of the report
//! ([`EngineCheck`]) and the command exits 2.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use perch_runtime::bundle::{Bundle, Limits, Manifest};
use perch_runtime::engine::internal::ModelExt;
use perch_runtime::engine::{EngineError, KernelNode, Model, ModelFormat, TensorInfo};
use perch_runtime::model_files;
use serde::Serialize;

use crate::graph::{self, Compute, Parameters, Quantization};
use crate::{load_options, onnx, ToolError};

/// One input or output.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tensor {
    /// Its name in the model.
    pub name: String,
    /// Its shape; symbolic dimensions by name.
    pub shape: Vec<String>,
    /// Its element type (`f32`, `i8`, ...).
    pub dtype: String,
}

impl From<&TensorInfo> for Tensor {
    fn from(t: &TensorInfo) -> Tensor {
        Tensor {
            name: t.name.clone(),
            shape: t.shape.iter().map(|d| d.to_string()).collect(),
            dtype: t.dtype.to_string(),
        }
    }
}

/// Whether the engine loads and optimizes the model, and if not, why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EngineCheck {
    /// The engine loaded, checked and optimized the model.
    pub supported: bool,
    /// The engine's full error when it did not.
    pub error: Option<String>,
    /// The node it refused, when the refusal names one.
    pub node: Option<String>,
    /// That node's operator.
    pub op: Option<String>,
    /// What the user can do about it (or why running it would be wrong).
    pub hint: Option<String>,
}

impl EngineCheck {
    fn refused(e: &EngineError) -> EngineCheck {
        let (node, op, hint) = match e {
            EngineError::UnsupportedOp { node, op, hint } => {
                (Some(node.clone()), Some(op.clone()), Some(hint.clone()))
            }
            EngineError::Refused { node, op, reason } => {
                (Some(node.clone()), Some(op.clone()), Some(reason.clone()))
            }
            _ => (None, None, None),
        };
        EngineCheck {
            supported: false,
            error: Some(e.to_string()),
            node,
            op,
            hint,
        }
    }
}

/// The result of `perch inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The model file.
    pub path: String,
    /// `onnx` or `nnef`.
    pub format: &'static str,
    /// File size in bytes (archive or folder total).
    pub file_bytes: u64,
    /// Default-domain ONNX opset.
    pub opset: Option<i64>,
    /// The tool that wrote it.
    pub producer: Option<String>,
    /// Inputs in run order (as the engine sees them, or as the file declares them when
    /// the engine refuses the model).
    pub inputs: Vec<Tensor>,
    /// Outputs in run order.
    pub outputs: Vec<Tensor>,
    /// Operator counts in the source graph.
    pub ops: BTreeMap<String, usize>,
    /// Parameter tensors: ONNX initializers, or an NNEF archive's constants.
    pub parameters: Option<Parameters>,
    /// Multiply-accumulates and FLOPs per operator type and in total, for one run.
    pub compute: Option<Compute>,
    /// Why `compute` is missing (the engine could not infer the shapes).
    pub compute_error: Option<String>,
    /// The quantization format found (ONNX only).
    pub quantization: Option<Quantization>,
    /// Whether the engine runs the model.
    pub engine: EngineCheck,
    /// Nodes in the optimized plan the engine runs (when it loads).
    pub optimized_nodes: Option<usize>,
    /// What Perch's kernel pass did with each node it considered: the kernel that runs
    /// it, or why it stays on tract's operator (when the engine loads the model).
    pub kernels: Option<Vec<KernelNode>>,
    /// Load, check and optimize time in milliseconds (informational; when it loads).
    pub load_ms: Option<f64>,
    /// The manifest, when the file is a bundle (its structure and hashes checked, its
    /// signature not: `perch verify` does that). The rest describes its model.
    pub bundle: Option<Manifest>,
}

/// Describes a model and checks that the engine loads it.
///
/// Errors only when there is nothing to describe: an unreadable file, bytes that are
/// not an ONNX protobuf, an NNEF archive the engine cannot read. An ONNX model the
/// engine refuses is described from its protobuf, with the refusal in
/// [`InspectReport::engine`].
pub fn inspect(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<InspectReport, ToolError> {
    if model_files::is_bundle_file(path) {
        return inspect_bundle(path, shapes);
    }
    match ModelFormat::detect(path)? {
        ModelFormat::Onnx => inspect_onnx(path, shapes),
        ModelFormat::Nnef => inspect_nnef(path, shapes),
    }
}

fn inspect_onnx(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<InspectReport, ToolError> {
    let proto = onnx::read_model(path)?;
    let graph = proto.graph.clone().unwrap_or_default();
    let mut ops = BTreeMap::new();
    for node in &graph.node {
        *ops.entry(node.op_type.clone()).or_insert(0) += 1;
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let declared = |vi: &onnx::pb::ValueInfoProto| declared_tensor(vi);
    let mut inputs: Vec<Tensor> = graph
        .input
        .iter()
        .filter(|vi| !initializers.contains(vi.name.as_str()))
        .map(declared)
        .collect();
    let mut outputs: Vec<Tensor> = graph.output.iter().map(declared).collect();
    let producer = Some(format!(
        "{} {}",
        proto.producer_name, proto.producer_version
    ))
    .map(|p| p.trim().to_string())
    .filter(|p| !p.is_empty());

    let (compute, compute_error) = match graph::typed_onnx(&proto, path, shapes) {
        Ok(typed) => (Some(graph::onnx_compute(&proto, &typed)), None),
        Err(e) => (None, Some(e)),
    };

    let started = Instant::now();
    let loaded = Model::load(path, &load_options(shapes));
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let kernels = loaded.as_ref().ok().map(|m| m.metadata().kernels.clone());
    let (engine, optimized_nodes, load_ms) = match &loaded {
        Ok(model) => {
            inputs = model.metadata().inputs.iter().map(Tensor::from).collect();
            outputs = model.metadata().outputs.iter().map(Tensor::from).collect();
            (
                EngineCheck {
                    supported: true,
                    error: None,
                    node: None,
                    op: None,
                    hint: None,
                },
                Some(model.optimized_model().nodes().len()),
                Some(load_ms),
            )
        }
        Err(e) => (EngineCheck::refused(e), None, None),
    };
    Ok(InspectReport {
        path: path.display().to_string(),
        format: "onnx",
        file_bytes: size_on_disk(path),
        opset: perch_runtime::engine::internal::onnx_check::default_opset(&proto),
        producer,
        inputs,
        outputs,
        ops,
        parameters: Some(graph::parameters(&graph)),
        compute,
        compute_error,
        quantization: Some(graph::quantization(&proto)),
        engine,
        optimized_nodes,
        kernels,
        load_ms,
        bundle: None,
    })
}

/// A bundle's manifest, and its model described as a model file is.
fn inspect_bundle(
    path: &Path,
    shapes: &[(String, Vec<usize>)],
) -> Result<InspectReport, ToolError> {
    let bundle = Bundle::read_file(path, &Limits::default())?;
    let dir = crate::temp_dir()?;
    let model = dir.path().join(&bundle.manifest().model.path);
    std::fs::write(&model, bundle.model_bytes()).map_err(|e| ToolError::write(&model, e))?;
    let mut report = inspect(&model, shapes)?;
    report.path = path.display().to_string();
    report.file_bytes = bundle.as_bytes().len() as u64;
    report.bundle = Some(bundle.manifest().clone());
    Ok(report)
}

fn inspect_nnef(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<InspectReport, ToolError> {
    let started = Instant::now();
    let model = Model::load(path, &load_options(shapes))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let meta = model.metadata();
    let (parameters, compute, compute_error) = match graph::typed_nnef(path) {
        Ok(typed) => {
            let decluttered = typed.clone().into_decluttered();
            let compute = decluttered
                .as_ref()
                .map(|d| graph::typed_compute(d, &[]))
                .map_err(|e| format!("{e:#}"));
            let params = graph::typed_parameters(&typed);
            match compute {
                Ok(c) => (Some(params), Some(c), None),
                Err(e) => (Some(params), None, Some(e)),
            }
        }
        Err(e) => (None, None, Some(e)),
    };
    Ok(InspectReport {
        path: path.display().to_string(),
        format: "nnef",
        file_bytes: size_on_disk(path),
        opset: meta.opset,
        producer: meta.producer.clone(),
        inputs: meta.inputs.iter().map(Tensor::from).collect(),
        outputs: meta.outputs.iter().map(Tensor::from).collect(),
        ops: meta.op_histogram.clone(),
        parameters,
        compute,
        compute_error,
        quantization: None,
        engine: EngineCheck {
            supported: true,
            error: None,
            node: None,
            op: None,
            hint: None,
        },
        optimized_nodes: Some(model.optimized_model().nodes().len()),
        kernels: Some(meta.kernels.clone()),
        load_ms: Some(load_ms),
        bundle: None,
    })
}

/// A graph input or output as the ONNX file declares it.
fn declared_tensor(vi: &onnx::pb::ValueInfoProto) -> Tensor {
    use onnx::pb::tensor_shape_proto::dimension::Value as D;
    use onnx::pb::type_proto::Value as T;
    let tensor_type = vi.r#type.as_ref().and_then(|t| match &t.value {
        Some(T::TensorType(tt)) => Some(tt),
        _ => None,
    });
    let shape = tensor_type
        .and_then(|tt| tt.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(D::DimValue(v)) => v.to_string(),
                    Some(D::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Tensor {
        name: vi.name.clone(),
        shape,
        dtype: tensor_type
            .map(|tt| graph::onnx_dtype_name(tt.elem_type).to_string())
            .unwrap_or_else(|| "?".into()),
    }
}

fn size_on_disk(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| size_on_disk(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// `2656768` → `2.66 M`: a count with three significant digits and an SI prefix.
pub fn si(n: f64) -> String {
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, " G")
    } else if n >= 1e6 {
        (n / 1e6, " M")
    } else if n >= 1e3 {
        (n / 1e3, " k")
    } else {
        return format!("{n:.0} ");
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}{unit}")
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}, {} bytes)",
            self.path, self.format, self.file_bytes
        )?;
        if let Some(opset) = self.opset {
            writeln!(f, "  opset      {opset}")?;
        }
        if let Some(p) = &self.producer {
            writeln!(f, "  producer   {p}")?;
        }
        if let Some(m) = &self.bundle {
            writeln!(
                f,
                "  bundle     {} {} (sequence {}), {} model, signed by key {} (not checked \
                 here: perch verify)",
                m.name, m.version, m.sequence, m.model.path, m.key_id
            )?;
            if let Some(schema) = &m.schema {
                crate::bundle::write_schema(f, schema)?;
            }
        }
        for (label, tensors) in [("input", &self.inputs), ("output", &self.outputs)] {
            for t in tensors {
                writeln!(
                    f,
                    "  {label:<10} {} {} [{}]",
                    t.name,
                    t.dtype,
                    t.shape.join(",")
                )?;
            }
        }
        let total: usize = self.ops.values().sum();
        match self.optimized_nodes {
            Some(n) => writeln!(f, "  ops        {total} nodes, {n} after optimization")?,
            None => writeln!(f, "  ops        {total} nodes")?,
        }
        let mut ops: Vec<_> = self.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            writeln!(f, "    {n:>5}  {op}")?;
        }
        if let Some(p) = &self.parameters {
            let by: Vec<String> = p.by_dtype.iter().map(|(d, n)| format!("{d} {n}")).collect();
            writeln!(
                f,
                "  parameters {} ({}B; {})",
                p.count,
                si(p.bytes as f64),
                by.join(", ")
            )?;
        }
        match (&self.compute, &self.compute_error) {
            (Some(c), _) => {
                let per = if c.symbolic_dims_as_one {
                    " (symbolic dimensions taken as 1)"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  compute    {}MACs, {}FLOPs per run{per}",
                    si(c.macs as f64),
                    si(c.flops as f64)
                )?;
                let mut by: Vec<_> = c.by_op.iter().collect();
                by.sort_by(|a, b| b.1.macs.cmp(&a.1.macs).then(a.0.cmp(b.0)));
                for (op, oc) in by {
                    let share = 100.0 * oc.macs as f64 / (c.macs.max(1)) as f64;
                    writeln!(
                        f,
                        "    {:>8}MACs {share:>5.1} %  {op} ({} nodes)",
                        si(oc.macs as f64),
                        oc.nodes
                    )?;
                }
                if !c.unknown.is_empty() {
                    writeln!(f, "    shapes unknown for: {}", c.unknown.join(", "))?;
                }
            }
            (None, Some(e)) => writeln!(f, "  compute    unknown: {e}")?,
            (None, None) => {}
        }
        if let Some(q) = &self.quantization {
            writeln!(f, "  quantized  {}", q.summary)?;
        }
        if let Some(kernels) = &self.kernels {
            write_kernels(f, kernels)?;
        }
        if self.engine.supported {
            write!(f, "  engine     supports every operator")?;
            if let Some(ms) = self.load_ms {
                write!(f, "; loaded and optimized in {ms:.1} ms")?;
            }
            Ok(())
        } else {
            match (&self.engine.node, &self.engine.op, &self.engine.hint) {
                (Some(node), Some(op), Some(hint)) => {
                    write!(f, "  engine     REFUSES node {node:?} ({op}): {hint}")
                }
                _ => write!(
                    f,
                    "  engine     REFUSES the model: {}",
                    self.engine.error.as_deref().unwrap_or("")
                ),
            }
        }
    }
}

/// The kernel pass's decisions: a count per kernel, then every node it left on tract's
/// operator with the reason.
fn write_kernels(f: &mut fmt::Formatter<'_>, kernels: &[KernelNode]) -> fmt::Result {
    if kernels.is_empty() {
        return Ok(());
    }
    let planned = kernels.iter().filter(|k| k.is_planned()).count();
    writeln!(
        f,
        "  kernels    Perch runs {planned} of {} nodes it considered",
        kernels.len()
    )?;
    let mut by_kernel: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for k in kernels {
        if let Some(name) = &k.kernel {
            let entry = by_kernel.entry(name).or_default();
            entry.0 += 1;
            entry.1 += k.fused.len();
        }
    }
    for (name, (nodes, fused)) in by_kernel {
        writeln!(f, "    {nodes:>5}  {name} ({fused} following nodes fused)")?;
    }
    for k in kernels.iter().filter(|k| !k.is_planned()) {
        writeln!(
            f,
            "    tract  {} ({}, {}): {}",
            k.node,
            k.pattern,
            k.detail,
            k.reason.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

//! `perch inspect`: what a model takes, returns and is made of.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use perch_runtime::engine::{Model, ModelFormat, TensorInfo};
use serde::Serialize;

use crate::{load_options, ToolError};

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
    /// Inputs in run order.
    pub inputs: Vec<Tensor>,
    /// Outputs in run order.
    pub outputs: Vec<Tensor>,
    /// Operator counts in the source graph.
    pub ops: BTreeMap<String, usize>,
    /// Nodes in the optimized plan the engine runs.
    pub optimized_nodes: usize,
    /// Load, check and optimize time in milliseconds (informational).
    pub load_ms: f64,
}

/// Loads and describes a model; refuses with the engine's error when it cannot load.
pub fn inspect(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<InspectReport, ToolError> {
    let started = Instant::now();
    let model = Model::load(path, &load_options(shapes))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let meta = model.metadata();
    Ok(InspectReport {
        path: path.display().to_string(),
        format: match meta.format {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Nnef => "nnef",
        },
        file_bytes: size_on_disk(path),
        opset: meta.opset,
        producer: meta.producer.clone(),
        inputs: meta.inputs.iter().map(Tensor::from).collect(),
        outputs: meta.outputs.iter().map(Tensor::from).collect(),
        ops: meta.op_histogram.clone(),
        optimized_nodes: model.optimized_model().nodes().len(),
        load_ms,
    })
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
        writeln!(
            f,
            "  ops        {total} nodes, {} after optimization",
            self.optimized_nodes
        )?;
        let mut ops: Vec<_> = self.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            writeln!(f, "    {n:>5}  {op}")?;
        }
        write!(f, "  loaded and optimized in {:.1} ms", self.load_ms)
    }
}

//! Small ONNX models written in the test that needs them: the protobuf is encoded here
//! by hand (a few message types of `onnx.proto3`), so tests can build exactly the model
//! a scenario needs (a slow one, one that answers NaN, one whose dimensions overflow,
//! a Gather fed by an integer input) without Python or a model zoo.
//!
//! ```
//! use perch_testkit::onnx::{Dim, OnnxModel, FLOAT};
//!
//! let bytes = OnnxModel::new(13)
//!     .input("x", FLOAT, &[Dim::Value(1), Dim::Value(4)])
//!     .node("Sqrt", &["x"], &["y"], &[])
//!     .output("y", FLOAT, &[Dim::Value(1), Dim::Value(4)])
//!     .to_bytes();
//! assert!(bytes.len() > 20);
//! ```

/// ONNX `TensorProto.DataType` of 32-bit floats.
pub const FLOAT: i32 = 1;
/// ONNX `TensorProto.DataType` of 32-bit integers.
pub const INT32: i32 = 6;
/// ONNX `TensorProto.DataType` of 64-bit integers.
pub const INT64: i32 = 7;

/// One dimension of a declared shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim<'a> {
    /// A fixed size (any `i64`, so tests can declare hostile ones).
    Value(i64),
    /// A named, symbolic size.
    Param(&'a str),
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr<'a> {
    /// An integer.
    Int(&'a str, i64),
    /// A list of integers.
    Ints(&'a str, &'a [i64]),
    /// A float.
    Float(&'a str, f32),
}

/// An ONNX model under construction (one graph, default domain).
#[derive(Debug, Clone, Default)]
pub struct OnnxModel {
    opset: i64,
    nodes: Vec<Vec<u8>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
}

impl OnnxModel {
    /// An empty model importing the default-domain `opset`.
    pub fn new(opset: i64) -> OnnxModel {
        OnnxModel {
            opset,
            ..OnnxModel::default()
        }
    }

    /// Declares a graph input.
    pub fn input(mut self, name: &str, elem_type: i32, dims: &[Dim<'_>]) -> OnnxModel {
        self.inputs.push(value_info(name, elem_type, dims));
        self
    }

    /// Declares a graph output.
    pub fn output(mut self, name: &str, elem_type: i32, dims: &[Dim<'_>]) -> OnnxModel {
        self.outputs.push(value_info(name, elem_type, dims));
        self
    }

    /// Adds a node (named after its first output).
    pub fn node(
        mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: &[Attr<'_>],
    ) -> OnnxModel {
        let mut node = Vec::new();
        for i in inputs {
            string(&mut node, 1, i);
        }
        for o in outputs {
            string(&mut node, 2, o);
        }
        string(&mut node, 3, outputs.first().copied().unwrap_or(op_type));
        string(&mut node, 4, op_type);
        for attribute in attributes {
            let mut a = Vec::new();
            match attribute {
                Attr::Int(name, v) => {
                    string(&mut a, 1, name);
                    varint_field(&mut a, 3, *v as u64);
                    varint_field(&mut a, 20, 2);
                }
                Attr::Ints(name, vs) => {
                    string(&mut a, 1, name);
                    for v in *vs {
                        varint_field(&mut a, 8, *v as u64);
                    }
                    varint_field(&mut a, 20, 7);
                }
                Attr::Float(name, v) => {
                    string(&mut a, 1, name);
                    key(&mut a, 2, 5);
                    a.extend_from_slice(&v.to_le_bytes());
                    varint_field(&mut a, 20, 1);
                }
            }
            message(&mut node, 5, &a);
        }
        self.nodes.push(node);
        self
    }

    /// Adds an initializer of `elem_type` and `dims` holding `raw` (little-endian
    /// elements, as ONNX's `raw_data`); `raw` need not match the dimensions.
    pub fn initializer(
        mut self,
        name: &str,
        elem_type: i32,
        dims: &[i64],
        raw: &[u8],
    ) -> OnnxModel {
        let mut t = Vec::new();
        for d in dims {
            varint_field(&mut t, 1, *d as u64);
        }
        varint_field(&mut t, 2, elem_type as u64);
        string(&mut t, 8, name);
        bytes_field(&mut t, 9, raw);
        self.initializers.push(t);
        self
    }

    /// An `f32` initializer.
    pub fn initializer_f32(self, name: &str, dims: &[i64], values: &[f32]) -> OnnxModel {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, FLOAT, dims, &raw)
    }

    /// An `i64` initializer.
    pub fn initializer_i64(self, name: &str, dims: &[i64], values: &[i64]) -> OnnxModel {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, INT64, dims, &raw)
    }

    /// The model's protobuf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut graph = Vec::new();
        for n in &self.nodes {
            message(&mut graph, 1, n);
        }
        string(&mut graph, 2, "test");
        for t in &self.initializers {
            message(&mut graph, 5, t);
        }
        for i in &self.inputs {
            message(&mut graph, 11, i);
        }
        for o in &self.outputs {
            message(&mut graph, 12, o);
        }
        let mut model = Vec::new();
        varint_field(&mut model, 1, 8); // ir_version
        string(&mut model, 2, "perch-testkit");
        message(&mut model, 7, &graph);
        let mut opset = Vec::new();
        string(&mut opset, 1, "");
        varint_field(&mut opset, 2, self.opset as u64);
        message(&mut model, 8, &opset);
        model
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim<'_>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Value(v) => varint_field(&mut dim, 1, *v as u64),
            Dim::Param(p) => string(&mut dim, 2, p),
        }
        message(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    varint_field(&mut tensor, 1, elem_type as u64);
    message(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    message(&mut ty, 1, &tensor);
    let mut info = Vec::new();
    string(&mut info, 1, name);
    message(&mut info, 2, &ty);
    info
}

/// A model that takes far longer than a few milliseconds on any machine: 64 products of
/// a 512×1024 input with a 1024×1024 matrix (34 billion multiply-adds), for tests of
/// deadlines and of requests in flight.
pub fn slow_matmul_chain() -> Vec<u8> {
    let onnx = OnnxModel::new(13).input("x", FLOAT, &[Dim::Value(512), Dim::Value(1024)]);
    matmul_chain(onnx, "x")
}

/// The same chain behind a `[1, width]` input named `input` (a model's own signature,
/// for a slow stand-in of that model), the row tiled to 512×1024 first; `width` divides
/// 1024.
pub fn slow_matmul_chain_after_row(input: &str, width: usize) -> Vec<u8> {
    assert!(
        width > 0 && 1024 % width == 0,
        "{width} does not divide 1024"
    );
    let onnx = OnnxModel::new(13)
        .input(input, FLOAT, &[Dim::Value(1), Dim::Value(width as i64)])
        .initializer_i64("repeats", &[2], &[512, (1024 / width) as i64])
        .node("Tile", &[input, "repeats"], &["t"], &[]);
    matmul_chain(onnx, "t")
}

/// `onnx` with 64 products of its 512×1024 tensor `first` with one 1024×1024 matrix.
fn matmul_chain(onnx: OnnxModel, first: &str) -> Vec<u8> {
    let w: Vec<f32> = (0..1024 * 1024)
        .map(|i| ((i % 7) as f32 - 3.0) * 1e-3)
        .collect();
    let mut onnx = onnx.initializer_f32("w", &[1024, 1024], &w);
    let mut last = first.to_string();
    for i in 0..64 {
        let next = format!("h{i}");
        onnx = onnx.node("MatMul", &[&last, "w"], &[&next], &[]);
        last = next;
    }
    onnx.output(&last, FLOAT, &[Dim::Value(512), Dim::Value(1024)])
        .to_bytes()
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes_field(out, field, s.as_bytes());
}

fn message(out: &mut Vec<u8>, field: u32, m: &[u8]) {
    bytes_field(out, field, m);
}

//! Tensor descriptions and caller-owned input buffers.

use std::fmt;

use tract_core::prelude::{Datum, DatumType, TDim, Tensor, TractResult};

/// Element type of a model input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 64-bit float.
    F64,
    /// Signed 8-bit integer (quantized or not).
    I8,
    /// Unsigned 8-bit integer (quantized or not).
    U8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean.
    Bool,
    /// Any other engine type (strings, complex, opaque).
    Other,
}

impl DType {
    pub(crate) fn from_datum(dt: DatumType) -> DType {
        match dt.unquantized() {
            DatumType::F32 => DType::F32,
            DatumType::F16 => DType::F16,
            DatumType::F64 => DType::F64,
            DatumType::I8 => DType::I8,
            DatumType::U8 => DType::U8,
            DatumType::I16 => DType::I16,
            DatumType::I32 => DType::I32,
            DatumType::I64 => DType::I64,
            DatumType::Bool => DType::Bool,
            _ => DType::Other,
        }
    }

    /// The lower-case name used in messages and JSON (`f32`, `i8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::Other => "other",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a model's input or output shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A size chosen by the caller at run time (a batch dimension, say), by symbol name.
    Symbolic(String),
}

impl Dim {
    pub(crate) fn from_tdim(d: &TDim) -> Dim {
        match d.to_i64() {
            Ok(n) if n >= 0 => Dim::Fixed(n as usize),
            _ => Dim::Symbolic(d.to_string()),
        }
    }

    /// Whether a concrete size is allowed here.
    pub fn accepts(&self, n: usize) -> bool {
        match self {
            Dim::Fixed(f) => *f == n,
            Dim::Symbolic(_) => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// Name, shape and element type of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The name in the model file.
    pub name: String,
    /// The shape; symbolic dimensions are resolved from the inputs at run time.
    pub shape: Vec<Dim>,
    /// The element type.
    pub dtype: DType,
}

impl TensorInfo {
    /// The shape as text, `[N,64]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(","))
    }

    /// The number of elements when every dimension is fixed.
    pub fn fixed_len(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |acc, d| match d {
            Dim::Fixed(n) => acc.checked_mul(*n),
            Dim::Symbolic(_) => None,
        })
    }
}

/// A borrowed, typed element buffer.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum TensorData<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// Signed bytes.
    I8(&'a [i8]),
    /// Unsigned bytes.
    U8(&'a [u8]),
    /// 32-bit integers.
    I32(&'a [i32]),
    /// 64-bit integers.
    I64(&'a [i64]),
}

impl TensorData<'_> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::I8(d) => d.len(),
            TensorData::U8(d) => d.len(),
            TensorData::I32(d) => d.len(),
            TensorData::I64(d) => d.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A caller-owned input: a shape and a buffer borrowed for the duration of a run.
///
/// The engine copies the buffer into a tensor it keeps between runs, so repeated
/// runs with the same shape do not allocate for their inputs.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The concrete shape of this input.
    pub shape: &'a [usize],
    /// The elements, row-major.
    pub data: TensorData<'a>,
}

impl<'a> Input<'a> {
    /// A float input.
    pub fn f32(shape: &'a [usize], data: &'a [f32]) -> Self {
        Input {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// A view of an engine tensor (as loaded from golden files), when its type is supported.
    pub fn from_tensor(t: &'a Tensor) -> Option<Self> {
        let data = match t.datum_type().unquantized() {
            DatumType::F32 => TensorData::F32(plain::<f32>(t).ok()?),
            DatumType::I8 => TensorData::I8(plain::<i8>(t).ok()?),
            DatumType::U8 => TensorData::U8(plain::<u8>(t).ok()?),
            DatumType::I32 => TensorData::I32(plain::<i32>(t).ok()?),
            DatumType::I64 => TensorData::I64(plain::<i64>(t).ok()?),
            _ => return None,
        };
        Some(Input {
            shape: t.shape(),
            data,
        })
    }
}

/// The elements of a plain tensor in host memory.
pub(crate) fn plain<T: Datum>(tensor: &Tensor) -> TractResult<&[T]> {
    tensor.try_as_plain_ram()?.as_slice::<T>()
}

//! Tensor descriptions, caller-owned input buffers, and Perch's own tensor values:
//! [`TensorView`] borrows a tensor (an output, an [`Array`]) and [`Array`] owns one (a
//! golden file).

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
    /// 64-bit floats.
    F64(&'a [f64]),
    /// Signed bytes.
    I8(&'a [i8]),
    /// Unsigned bytes.
    U8(&'a [u8]),
    /// 32-bit integers.
    I32(&'a [i32]),
    /// 16-bit integers.
    I16(&'a [i16]),
    /// 64-bit integers.
    I64(&'a [i64]),
    /// Booleans.
    Bool(&'a [bool]),
}

impl TensorData<'_> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::I16(_) => DType::I16,
            TensorData::I32(_) => DType::I32,
            TensorData::I64(_) => DType::I64,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::F64(d) => d.len(),
            TensorData::I8(d) => d.len(),
            TensorData::U8(d) => d.len(),
            TensorData::I16(d) => d.len(),
            TensorData::I32(d) => d.len(),
            TensorData::I64(d) => d.len(),
            TensorData::Bool(d) => d.len(),
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
}

/// A borrowed tensor: its shape and its typed elements, row-major.
///
/// [`Outputs::view`](super::Outputs::view) gives one per output and [`Array::view`] one
/// of a golden value; neither copies.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Holds exactly `data.len()` elements.
    shape: &'a [usize],
    data: TensorData<'a>,
}

impl<'a> TensorView<'a> {
    /// A view of `data` as a tensor of `shape`; `None` when the shape does not hold
    /// exactly `data.len()` elements.
    pub fn new(shape: &'a [usize], data: TensorData<'a>) -> Option<Self> {
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        (len == data.len()).then_some(TensorView { shape, data })
    }

    /// The concrete shape (empty for a scalar).
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// The elements.
    pub fn data(&self) -> TensorData<'a> {
        self.data
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements when they are `f32`.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.data {
            TensorData::F32(d) => Some(d),
            _ => None,
        }
    }

    /// The elements when they are `i8`.
    pub fn as_i8(&self) -> Option<&'a [i8]> {
        match self.data {
            TensorData::I8(d) => Some(d),
            _ => None,
        }
    }

    /// The elements when they are `u8`.
    pub fn as_u8(&self) -> Option<&'a [u8]> {
        match self.data {
            TensorData::U8(d) => Some(d),
            _ => None,
        }
    }

    /// The elements when they are `i32`.
    pub fn as_i32(&self) -> Option<&'a [i32]> {
        match self.data {
            TensorData::I32(d) => Some(d),
            _ => None,
        }
    }

    /// The elements when they are `i64`.
    pub fn as_i64(&self) -> Option<&'a [i64]> {
        match self.data {
            TensorData::I64(d) => Some(d),
            _ => None,
        }
    }

    /// The elements converted to `f32` (`as` casts; `true` is 1).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.data {
            TensorData::F32(d) => d.to_vec(),
            TensorData::F64(d) => d.iter().map(|&v| v as f32).collect(),
            TensorData::I8(d) => d.iter().map(|&v| f32::from(v)).collect(),
            TensorData::U8(d) => d.iter().map(|&v| f32::from(v)).collect(),
            TensorData::I16(d) => d.iter().map(|&v| f32::from(v)).collect(),
            TensorData::I32(d) => d.iter().map(|&v| v as f32).collect(),
            TensorData::I64(d) => d.iter().map(|&v| v as f32).collect(),
            TensorData::Bool(d) => d.iter().map(|&v| f32::from(u8::from(v))).collect(),
        }
    }

    /// The elements as little-endian bytes, as `.npy` files and binary wire formats
    /// carry them (`bool` as one byte, 0 or 1).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self.data {
            TensorData::F32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::F64(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::I8(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::U8(d) => d.to_vec(),
            TensorData::I16(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::I32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::I64(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorData::Bool(d) => d.iter().map(|&v| u8::from(v)).collect(),
        }
    }

    /// This tensor as a model input, when the engine takes its element type (f32, i8,
    /// u8, i32, i64).
    pub fn input(&self) -> Option<Input<'a>> {
        match self.data {
            TensorData::F32(_)
            | TensorData::I8(_)
            | TensorData::U8(_)
            | TensorData::I32(_)
            | TensorData::I64(_) => Some(Input {
                shape: self.shape,
                data: self.data,
            }),
            _ => None,
        }
    }

    /// A borrowed view of an engine tensor; `None` for element types [`TensorData`]
    /// does not hold.
    pub(crate) fn of_tensor(t: &'a Tensor) -> Option<Self> {
        let data = match t.datum_type().unquantized() {
            DatumType::F32 => TensorData::F32(plain::<f32>(t).ok()?),
            DatumType::F64 => TensorData::F64(plain::<f64>(t).ok()?),
            DatumType::I8 => TensorData::I8(plain::<i8>(t).ok()?),
            DatumType::U8 => TensorData::U8(plain::<u8>(t).ok()?),
            DatumType::I16 => TensorData::I16(plain::<i16>(t).ok()?),
            DatumType::I32 => TensorData::I32(plain::<i32>(t).ok()?),
            DatumType::I64 => TensorData::I64(plain::<i64>(t).ok()?),
            DatumType::Bool => TensorData::Bool(plain::<bool>(t).ok()?),
            _ => return None,
        };
        Some(TensorView {
            shape: t.shape(),
            data,
        })
    }
}

/// An owned tensor: a golden input or output read from a `.npy` file
/// ([`read_npy`](super::read_npy)), or a copy of a [`TensorView`].
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Always of an element type [`TensorData`] holds, in host memory.
    tensor: Tensor,
}

impl Array {
    /// A copy of `view`'s shape and elements.
    pub fn from_view(view: TensorView<'_>) -> Array {
        Array {
            tensor: to_tensor(view.shape, view.data)
                .expect("a TensorView's shape holds its elements"),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.view().dtype()
    }

    /// The shape (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.tensor.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A borrowed view of the elements.
    pub fn view(&self) -> TensorView<'_> {
        TensorView::of_tensor(&self.tensor).expect("an Array holds a TensorData type")
    }

    /// This array as a model input, when the engine takes its element type (see
    /// [`TensorView::input`]).
    pub fn input(&self) -> Option<Input<'_>> {
        self.view().input()
    }

    /// An array holding `tensor`, when [`TensorData`] holds its element type.
    pub(crate) fn from_tensor(tensor: Tensor) -> Option<Array> {
        TensorView::of_tensor(&tensor)
            .is_some()
            .then_some(Array { tensor })
    }

    /// The engine tensor it holds.
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The engine tensor it holds, by value.
    pub(crate) fn into_tensor(self) -> Tensor {
        self.tensor
    }
}

/// An engine tensor of `shape` holding a copy of `data`; fails when the shape does not
/// hold the elements.
pub(crate) fn to_tensor(shape: &[usize], data: TensorData<'_>) -> TractResult<Tensor> {
    match data {
        TensorData::F32(d) => Tensor::from_shape(shape, d),
        TensorData::F64(d) => Tensor::from_shape(shape, d),
        TensorData::I8(d) => Tensor::from_shape(shape, d),
        TensorData::U8(d) => Tensor::from_shape(shape, d),
        TensorData::I16(d) => Tensor::from_shape(shape, d),
        TensorData::I32(d) => Tensor::from_shape(shape, d),
        TensorData::I64(d) => Tensor::from_shape(shape, d),
        TensorData::Bool(d) => Tensor::from_shape(shape, d),
    }
}

/// The elements of a plain tensor in host memory.
pub(crate) fn plain<T: Datum>(tensor: &Tensor) -> TractResult<&[T]> {
    tensor.try_as_plain_ram()?.as_slice::<T>()
}

//! Running a model: input validation, reusable input tensors, outputs.

use std::sync::Arc;

use tract_core::prelude::{
    tvec, Datum, DatumType, TValue, TVec, Tensor, TractResult, TypedSimpleState,
};

use super::error::{chain, EngineError, Result};
use super::metadata::{Metadata, NonFinitePolicy};
use super::tensor::{plain, to_tensor, DType, Input, TensorData, TensorInfo, TensorView};

/// The mutable state for running one model on one thread.
///
/// A session keeps one tensor per input and refills it on each run, so repeated runs
/// with the same shapes allocate nothing on Perch's side: whatever allocations remain
/// are the engine's own (see BENCHMARKS.md).
#[derive(Debug)]
pub struct Session {
    state: TypedSimpleState,
    meta: Arc<Metadata>,
    non_finite: NonFinitePolicy,
    index_bounds: Arc<Vec<super::guards::IndexBound>>,
    buffers: Vec<Option<Arc<Tensor>>>,
}

impl Session {
    pub(crate) fn new(
        state: TypedSimpleState,
        meta: Arc<Metadata>,
        non_finite: NonFinitePolicy,
        index_bounds: Arc<Vec<super::guards::IndexBound>>,
    ) -> Session {
        let buffers = vec![None; meta.inputs.len()];
        Session {
            state,
            meta,
            non_finite,
            index_bounds,
            buffers,
        }
    }

    /// The model's inputs and outputs.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Runs the model on caller-owned buffers, one per model input, in the model's order.
    ///
    /// Count, element type, shape, buffer length, (by the model's policy) finiteness and
    /// the range of inputs that feed index operands are checked first; a bad input is
    /// answered with the matching [`EngineError`] and leaves the session usable.
    pub fn run(&mut self, inputs: &[Input<'_>]) -> Result<Outputs> {
        validate(&self.meta.inputs, self.non_finite, inputs)?;
        super::guards::check_indices(&self.index_bounds, &self.meta.inputs, inputs)?;
        let mut values: TVec<TValue> = tvec![];
        for (slot, input) in self.buffers.iter_mut().zip(inputs) {
            values.push(fill(slot, input)?);
        }
        let values =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.state.run(values)))
            {
                Ok(Ok(values)) => values,
                Ok(Err(e)) => return Err(EngineError::Run { reason: chain(&e) }),
                Err(_) => {
                    // The state may be half-updated; start the next run from a clean one.
                    self.state =
                        TypedSimpleState::new(self.state.plan()).map_err(|e| EngineError::Run {
                            reason: format!("engine panicked, and {}", chain(&e)),
                        })?;
                    return Err(EngineError::Run {
                        reason: "the engine panicked".into(),
                    });
                }
            };
        Ok(Outputs {
            values,
            meta: self.meta.clone(),
        })
    }
}

/// Checks inputs against the model's declared inputs without allocating.
fn validate(infos: &[TensorInfo], policy: NonFinitePolicy, inputs: &[Input<'_>]) -> Result<()> {
    if inputs.len() != infos.len() {
        return Err(EngineError::InputCount {
            expected: infos.len(),
            got: inputs.len(),
        });
    }
    for (index, (input, info)) in inputs.iter().zip(infos).enumerate() {
        if input.data.dtype() != info.dtype {
            return Err(EngineError::InputDType {
                index,
                name: info.name.clone(),
                expected: info.dtype.to_string(),
                got: input.data.dtype().to_string(),
            });
        }
        let shape_ok = input.shape.len() == info.shape.len()
            && input
                .shape
                .iter()
                .zip(&info.shape)
                .all(|(n, d)| *n > 0 && d.accepts(*n));
        if !shape_ok {
            return Err(EngineError::InputShape {
                index,
                name: info.name.clone(),
                expected: info.shape_string(),
                got: input.shape.to_vec(),
            });
        }
        let expected = input
            .shape
            .iter()
            .try_fold(1usize, |acc, n| acc.checked_mul(*n));
        if expected != Some(input.data.len()) {
            return Err(EngineError::InputLength {
                index,
                name: info.name.clone(),
                shape: input.shape.to_vec(),
                expected: expected.unwrap_or(usize::MAX),
                got: input.data.len(),
            });
        }
        if let (NonFinitePolicy::Reject, TensorData::F32(data)) = (policy, input.data) {
            if let Some(position) = first_non_finite(data) {
                return Err(EngineError::NonFinite {
                    index,
                    name: info.name.clone(),
                    position,
                    value: data[position],
                });
            }
        }
    }
    Ok(())
}

/// The position of the first NaN or infinity. Chunk by chunk without an early exit
/// inside a chunk, so that the test vectorizes: a camera frame's 50,000 values cost
/// about one instruction each instead of five.
fn first_non_finite(data: &[f32]) -> Option<usize> {
    const CHUNK: usize = 64;
    data.chunks(CHUNK).enumerate().find_map(|(i, chunk)| {
        let any = chunk.iter().fold(false, |any, v| {
            any | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        });
        any.then(|| {
            chunk
                .iter()
                .position(|v| !v.is_finite())
                .map(|p| i * CHUNK + p)
        })
        .flatten()
    })
}

/// Copies an input into the session's tensor for it, reusing the tensor when the
/// engine has released it and the shape is unchanged.
fn fill(slot: &mut Option<Arc<Tensor>>, input: &Input<'_>) -> Result<TValue> {
    if let Some(arc) = slot.as_mut() {
        if let Some(tensor) = Arc::get_mut(arc) {
            if tensor.shape() == input.shape
                && DType::from_datum(tensor.datum_type()) == input.data.dtype()
            {
                copy_into(tensor, &input.data)?;
                return Ok(TValue::from_const(arc.clone()));
            }
        }
    }
    let tensor = Arc::new(new_tensor(input)?);
    *slot = Some(tensor.clone());
    Ok(TValue::from_const(tensor))
}

fn copy_into(tensor: &mut Tensor, data: &TensorData<'_>) -> Result<()> {
    let copied = match data {
        TensorData::F32(d) => copy(tensor, d),
        TensorData::F64(d) => copy(tensor, d),
        TensorData::I8(d) => copy(tensor, d),
        TensorData::U8(d) => copy(tensor, d),
        TensorData::I16(d) => copy(tensor, d),
        TensorData::I32(d) => copy(tensor, d),
        TensorData::I64(d) => copy(tensor, d),
        TensorData::Bool(d) => copy(tensor, d),
    };
    copied.map_err(|e| EngineError::Run { reason: chain(&e) })
}

fn copy<T: Datum + Copy>(tensor: &mut Tensor, data: &[T]) -> TractResult<()> {
    tensor
        .try_as_plain_ram_mut()?
        .as_slice_mut::<T>()?
        .copy_from_slice(data);
    Ok(())
}

fn new_tensor(input: &Input<'_>) -> Result<Tensor> {
    to_tensor(input.shape, input.data).map_err(|e| EngineError::Run { reason: chain(&e) })
}

/// The outputs of one run, in the model's output order.
///
/// They borrow nothing from the session; drop them to give their memory back.
#[derive(Debug, Clone)]
pub struct Outputs {
    values: TVec<TValue>,
    meta: Arc<Metadata>,
}

impl Outputs {
    /// The number of outputs.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the model has no outputs.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The declared name, shape and dtype of output `index`.
    pub fn info(&self, index: usize) -> Option<&TensorInfo> {
        self.meta.outputs.get(index)
    }

    /// Output `index`: its shape and typed elements.
    ///
    /// # Errors
    ///
    /// [`EngineError::NoSuchOutput`], or [`EngineError::OutputDType`] when its element
    /// type is one [`TensorData`] does not hold (`f16`, strings).
    pub fn view(&self, index: usize) -> Result<TensorView<'_>> {
        let tensor = self.tensor(index)?;
        TensorView::of_tensor(tensor).ok_or_else(|| EngineError::OutputDType {
            index,
            name: self.info(index).map(|i| i.name.clone()).unwrap_or_default(),
            actual: DType::from_datum(tensor.datum_type()).to_string(),
            requested: "one of TensorData's types".into(),
        })
    }

    /// Output `index` as an engine tensor (any dtype); tools reach it through
    /// [`internal::OutputsExt`](super::internal::OutputsExt).
    pub(crate) fn tensor(&self, index: usize) -> Result<&Tensor> {
        self.values
            .get(index)
            .map(|v| &**v)
            .ok_or(EngineError::NoSuchOutput {
                index,
                count: self.values.len(),
            })
    }

    /// The concrete shape of output `index`.
    pub fn shape(&self, index: usize) -> Result<&[usize]> {
        Ok(self.tensor(index)?.shape())
    }

    /// Output `index` as floats; an error names the output if it is not `f32`.
    pub fn f32(&self, index: usize) -> Result<&[f32]> {
        let tensor = self.tensor(index)?;
        if tensor.datum_type() != DatumType::F32 {
            return Err(EngineError::OutputDType {
                index,
                name: self.info(index).map(|i| i.name.clone()).unwrap_or_default(),
                actual: DType::from_datum(tensor.datum_type()).to_string(),
                requested: "f32".into(),
            });
        }
        plain::<f32>(tensor).map_err(|e| EngineError::Run { reason: chain(&e) })
    }
}

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    #[test]
    fn the_first_non_finite_value_is_found_in_any_chunk() {
        let mut data = vec![1.5f32; 300];
        assert_eq!(first_non_finite(&data), None);
        data[299] = f32::INFINITY;
        assert_eq!(first_non_finite(&data), Some(299));
        data[130] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&data), Some(130));
        data[64] = f32::NAN;
        assert_eq!(first_non_finite(&data), Some(64));
        data[0] = -f32::NAN;
        assert_eq!(first_non_finite(&data), Some(0));
        assert_eq!(first_non_finite(&[f32::MAX, f32::MIN_POSITIVE, -0.0]), None);
        assert_eq!(first_non_finite(&[]), None);
    }
}

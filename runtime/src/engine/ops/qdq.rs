//! The quantize and dequantize nodes around a float operator, as the kernel pass's
//! patterns read them: a DequantizeLinear of 8-bit integers before it, a single
//! QuantizeLinear after it.

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

use crate::kernels::q8::add::Operand;
use crate::kernels::q8::quantize::Quantize;
use crate::kernels::q8::QType;

/// A dequantized 8-bit tensor feeding `outlet`: the dequantize node and the operand.
pub(super) fn dequantized(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(&TypedNode, Operand)>> {
    let node = model.node(outlet.node);
    let Some(dq) = node.op_as::<DequantizeLinearF32>() else {
        return Ok(None);
    };
    let dt = model.outlet_fact(node.inputs[0])?.datum_type.unquantized();
    let dtype = if dt == u8::datum_type() {
        QType::U8
    } else if dt == i8::datum_type() {
        QType::I8
    } else {
        return Ok(None);
    };
    Ok(Some((
        node,
        Operand {
            dtype,
            zero_point: dq.zero_point,
            scale: dq.scale,
        },
    )))
}

/// A quantize node's type, inverse scale (tract's form: what it multiplies by) and zero
/// point.
pub(super) fn quantize_inverse(node: &TypedNode) -> Option<Quantize> {
    let op = node.op_as::<ElementWiseOp>()?;
    if let Some(q) = op.0.downcast_ref::<QuantizeLinearU8>() {
        return Some(Quantize {
            dtype: QType::U8,
            zero_point: q.zero_point as i32,
            inverse_scale: q.scale,
        });
    }
    op.0.downcast_ref::<QuantizeLinearI8>().map(|q| Quantize {
        dtype: QType::I8,
        zero_point: q.zero_point as i32,
        inverse_scale: q.scale,
    })
}

/// A quantize node and its parameters: `(node, type, scale, zero point)`.
pub(super) type OutputQuantize<'m> = (&'m TypedNode, QType, f32, i32);

/// The single QuantizeLinear after a layer's epilogue (ending at `end`) and its
/// parameters, or why the layer's output is not quantized.
pub(super) fn output_quantize(
    model: &TypedModel,
    end: OutletId,
) -> TractResult<Result<OutputQuantize<'_>, String>> {
    Ok(single_quantize(model, end)?
        .map(|(node, q)| (node, q.dtype, q.inverse_scale.recip(), q.zero_point))
        .ok_or_else(|| "its output is not quantized (no single QuantizeLinear after it)".into()))
}

/// The single QuantizeLinear that `outlet` feeds, and its parameters, unless `outlet`
/// is also a model output.
pub(super) fn single_quantize(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(&TypedNode, Quantize)>> {
    Ok(match model.outlet_successors(outlet) {
        [only] if !model.output_outlets()?.contains(&outlet) => {
            let node = model.node(only.node);
            quantize_inverse(node).map(|q| (node, q))
        }
        _ => None,
    })
}

/// Whether an input's scale and zero point can be run on: a finite positive scale and a
/// zero point within the type's range.
pub(super) fn usable_input(input: QType, sx: f32, zx: i32) -> Result<(), String> {
    let (tlo, thi) = input.range();
    if sx.is_finite() && sx > 0.0 && (tlo..=thi).contains(&zx) {
        Ok(())
    } else {
        Err(format!("input scale {sx} or zero point {zx} unusable"))
    }
}

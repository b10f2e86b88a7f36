//! A guard against a tract 0.23.9 bug that gives wrong numbers on quantized graphs.
//!
//! tract's declutter turns `DequantizeLinear → f → QuantizeLinear` into a 256-entry
//! lookup table when every op of `f` maps each axis of its input to the same axis of
//! its output (`AxesMapping::is_element_wise_unary`), taking that to mean "element-wise".
//! Softmax and RmsNorm map their axes that way but reduce along one of them, so the
//! table applies a softmax to the 256 possible inputs at once: an ONNX Runtime-quantized
//! classifier ending in `Q/DQ → Softmax → Q/DQ` answers 1.0 for every class
//! (`models/fixtures/quantized-softmax.onnx`).
//!
//! Before tract declutters a model, [`guard`] follows every DequantizeLinear the way
//! tract does and puts a [`PerchBarrier`] in front of the first op on the chain that
//! claims that axis mapping without being element-wise; the barrier's mapping does not
//! claim it, so tract stops there. [`remove_barriers`] takes them out of the optimized
//! plan, after tract's last declutter.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::identity::Identity;
use tract_core::ops::quant::DequantizeLinearF32;

/// An identity that claims no axis mapping, so that tract's quantization folding stops
/// at it. It forwards its input without copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerchBarrier;

impl Op for PerchBarrier {
    fn name(&self) -> StaticName {
        "PerchBarrier".into()
    }

    op_as_typed_op!();
}

impl EvalOp for PerchBarrier {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(inputs)
    }

    fn forwards_input(&self) -> Option<usize> {
        Some(0)
    }
}

impl TypedOp for PerchBarrier {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1, "PerchBarrier takes one input");
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// Whether an op computes each output element from the input element at the same
/// place only, as tract's folding assumes.
fn element_wise(model: &TypedModel, node: &TypedNode) -> bool {
    node.op_is::<ElementWiseOp>()
        || node.op_is::<Cast>()
        || node.op_is::<Identity>()
        || node.op_is::<DequantizeLinearF32>()
        || (node.op_is::<TypedBinOp>()
            && node
                .inputs
                .iter()
                .filter(|i| model.outlet_fact(**i).is_ok_and(|f| f.konst.is_none()))
                .count()
                <= 1)
}

/// Puts a barrier before every op that tract would wrongly fold into a lookup table
/// with the DequantizeLinear before it; returns how many.
pub(crate) fn guard(model: &mut TypedModel) -> TractResult<usize> {
    let mut wrap = vec![];
    for dq in model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<DequantizeLinearF32>())
    {
        let mut current = dq.id;
        while let Some(next) = model.single_succ(current)? {
            if element_wise(model, next) {
                current = next.id;
                continue;
            }
            let (inputs, outputs) = model.node_facts(next.id)?;
            if next.inputs.len() == 1
                && next
                    .op
                    .axes_mapping(&inputs, &outputs)
                    .is_ok_and(|m| m.is_element_wise_unary())
            {
                wrap.push(next.inputs[0]);
            }
            break;
        }
    }
    wrap.sort();
    wrap.dedup();
    for outlet in &wrap {
        let name = format!("{}.perch_barrier", model.node(outlet.node).name);
        let fact = model.outlet_fact(*outlet)?.without_value();
        let patch = TypedModelPatch::intercept(model, *outlet, name, PerchBarrier, fact)?;
        patch.apply(model)?;
    }
    Ok(wrap.len())
}

/// Takes the barriers out of an optimized model (tract declutters no more after it).
pub(crate) fn remove_barriers(mut model: TypedModel) -> TractResult<TypedModel> {
    let barriers: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<PerchBarrier>())
        .map(|n| n.id)
        .collect();
    if barriers.is_empty() {
        return Ok(model);
    }
    for id in barriers {
        if let Some(patch) = TypedModelPatch::shunt_one_op(&model, model.node(id))? {
            patch.apply(&mut model)?;
        }
    }
    model.into_compact()
}

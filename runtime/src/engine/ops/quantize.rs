//! `PerchQuantize`: the engine's `QuantizeLinear` of a float tensor on
//! [`crate::kernels::q8::quantize`]: the entry of every integer graph (its float input
//! quantized) and wherever a float operator hands its result back to integer ones.
//!
//! The kernel's bytes are the engine's own, so the replacement changes no output. It
//! runs after the other patterns, on the quantize nodes they left: a layer's output
//! quantize goes into the layer's operator instead.

use tract_core::internal::*;

use super::common::{datum, kernel_op};
use super::kernel_node::{replacement, Considered, KernelNode};
use super::qdq::quantize_inverse;
use crate::kernels::q8::quantize::{QQuantize, Quantize};
use crate::kernels::Cpu;

/// A float tensor quantized to 8 bits, element by element.
#[derive(Debug, Clone, PartialEq)]
pub struct PerchQuantize {
    pub(super) output: Quantize,
    kernel: QQuantize,
}

// Equality is total: a planned operator's factor is finite.
impl Eq for PerchQuantize {}

const PATTERN: &str = "quantize";

impl PerchQuantize {
    /// Plans a quantization on `cpu`, or says why no kernel covers it.
    pub(super) fn plan(output: Quantize, cpu: Cpu) -> Result<PerchQuantize, String> {
        let kernel = QQuantize::plan(output, cpu).map_err(|e| e.0)?;
        Ok(PerchQuantize { output, kernel })
    }

    /// The kernel that runs it.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.variant().name
    }

    pub(super) fn report(&self, node: &str) -> KernelNode {
        KernelNode::planned(node, PATTERN, self.detail(), self.kernel_name(), vec![])
    }

    fn detail(&self) -> String {
        let q = &self.output;
        format!(
            "f32 -> {}, zero point {}, 1/scale {}",
            q.dtype.name(),
            q.zero_point,
            q.inverse_scale
        )
    }
}

kernel_op!(PerchQuantize, "PerchQuantize");

impl EvalOp for PerchQuantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let values = x.try_as_plain_ram()?;
        let values = values
            .as_slice::<f32>()
            .context("PerchQuantize planned for f32 input")?;
        let mut output = unsafe { Tensor::uninitialized_dt(datum(self.output.dtype), x.shape())? };
        self.kernel
            .run(values, output.as_bytes_mut())
            .map_err(|e| format_err!("PerchQuantize: {}", e.0))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for PerchQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "PerchQuantize takes one f32 input"
        );
        Ok(tvec!(datum(self.output.dtype).fact(inputs[0].shape.clone())))
    }

    fn axes_mapping(
        &self,
        inputs: &[&TypedFact],
        outputs: &[&TypedFact],
    ) -> TractResult<AxesMapping> {
        AxesMapping::natural(inputs, outputs)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), n)))
    }

    as_op!();
}

/// Whether `node` quantizes a float tensor; if it does, the patch that runs it on the
/// kernel, or the reason it stays on the engine's operator.
pub(super) fn consider(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> TractResult<Considered> {
    let Some(output) = quantize_inverse(node) else {
        return Ok(None);
    };
    if model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let op = match PerchQuantize::plan(output, cpu) {
        Ok(op) => op,
        Err(reason) => {
            let detail = format!("f32 -> {}", output.dtype.name());
            let report = KernelNode::declined(&node.name, PATTERN, detail, reason);
            return Ok(Some((None, report)));
        }
    };
    let patch = replacement(
        model,
        node,
        op.clone(),
        &[node.inputs[0]],
        OutletId::new(node.id, 0),
    )?;
    Ok(Some((Some(patch), op.report(&node.name))))
}

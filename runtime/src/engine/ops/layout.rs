//! Channels last between Perch's integer operators.
//!
//! The integer kernels work channels last, so on a channels-first graph (tract keeps
//! ONNX's NCHW) a [`PerchQConv`] transposes its input in and its output back, and so
//! does a [`PerchQMatMul`] that runs a 1x1 convolution (tract turns those into matrix
//! products over `[n, c, h, w]`). Where an operator's output goes only to other integer
//! operators (MobileNetV2's expansion → depthwise → projection, DS-CNN's depthwise →
//! pointwise), the transposes between them undo each other: this pass has the producer
//! write channels last and its consumers read channels last, so the tensor between
//! them never leaves the kernels' layout. The graph's other tensors keep their layout;
//! residual additions, pooling and the model's outputs still see what the model
//! declared.

use tract_core::internal::*;

use super::qadd::PerchQAdd;
use super::qconv::PerchQConv;
use super::qmatmul::PerchQMatMul;
use crate::kernels::f32_dwconv::Layout;

/// Switches every channels-first image between two integer operators to channels last;
/// returns the nodes whose operator changed.
pub(super) fn chain(model: &mut TypedModel) -> TractResult<Vec<usize>> {
    let mut changed = vec![];
    for id in model.eval_order()? {
        let Some(producer) = writing_channels_last(model.node(id)) else {
            continue;
        };
        let outlet = OutletId::new(id, 0);
        let successors = model.node(id).outputs[0].successors.clone();
        if model.outputs.contains(&outlet) || successors.is_empty() {
            continue;
        }
        let consumers: Option<Vec<Box<dyn TypedOp>>> = successors
            .iter()
            .map(|inlet| reading_channels_last(model, *inlet))
            .collect::<TractResult<_>>()?;
        let Some(consumers) = consumers else {
            continue;
        };
        let input_facts: TVec<TypedFact> =
            model.node_input_facts(id)?.into_iter().cloned().collect();
        let refs: TVec<&TypedFact> = input_facts.iter().collect();
        let fact = producer.output_facts(&refs)?.remove(0);
        model.node_mut(id).op = producer;
        model.node_mut(id).outputs[0].fact = fact;
        changed.push(id);
        for (inlet, op) in successors.iter().zip(consumers) {
            model.node_mut(inlet.node).op = op;
            changed.push(inlet.node);
        }
    }
    changed.sort_unstable();
    changed.dedup();
    Ok(changed)
}

/// The node's operator writing its channels-first image output channels last, when it
/// is an integer operator that has one.
fn writing_channels_last(node: &TypedNode) -> Option<Box<dyn TypedOp>> {
    if let Some(op) = node.op_as::<PerchQConv>() {
        return (op.spec.output_layout == Layout::Chw).then(|| {
            let mut op = op.clone();
            op.spec.output_layout = Layout::Hwc;
            Box::new(op) as Box<dyn TypedOp>
        });
    }
    if let Some(op) = node.op_as::<PerchQAdd>() {
        return op
            .channels_first(2)
            .then(|| Box::new(op.with_channels_last(&[2])) as Box<dyn TypedOp>);
    }
    let op = node.op_as::<PerchQMatMul>()?;
    op.writes_channels_first()
        .then(|| Box::new(op.writing_channels_last()) as Box<dyn TypedOp>)
}

/// The consumer's operator reading its channels-first image input channels last, when
/// it is an integer operator that can.
fn reading_channels_last(
    model: &TypedModel,
    inlet: InletId,
) -> TractResult<Option<Box<dyn TypedOp>>> {
    let node = model.node(inlet.node);
    if let Some(op) = node.op_as::<PerchQAdd>() {
        // Both inputs at once when they are the same tensor (`x + x`): the pass sets
        // each reader's operator from the graph as it was.
        let slots: Vec<usize> = (0..2)
            .filter(|s| node.inputs[*s] == node.inputs[inlet.slot])
            .collect();
        return Ok(slots
            .iter()
            .all(|s| op.channels_first(*s))
            .then(|| Box::new(op.with_channels_last(&slots)) as Box<dyn TypedOp>));
    }
    if inlet.slot != 0 {
        return Ok(None);
    }
    if let Some(op) = node.op_as::<PerchQConv>() {
        return Ok((op.spec.layout == Layout::Chw).then(|| {
            let mut op = op.clone();
            op.spec.layout = Layout::Hwc;
            Box::new(op) as Box<dyn TypedOp>
        }));
    }
    let Some(op) = node.op_as::<PerchQMatMul>() else {
        return Ok(None);
    };
    let input = model.outlet_fact(node.inputs[0])?;
    Ok(op
        .reads_channels_first(input)
        .then(|| Box::new(op.reading_channels_last(input.rank())) as Box<dyn TypedOp>))
}

//! Perch's operators inside tract, and the pass that puts them into a graph.
//!
//! [`rewrite`] runs on the decluttered graph, just before tract's own optimizer: it
//! finds the patterns Perch's kernels ([`crate::kernels`]) run better than tract, and
//! replaces each with a Perch operator (a tract `TypedOp` whose evaluation calls the
//! kernel), fusing the element-wise nodes that follow where the kernel can apply them.
//! tract's optimizer then leaves those nodes alone and optimizes the rest. Because the
//! rewrite happens on the decluttered graph, the same graph serializes to NNEF: each
//! operator has a fragment in Perch's registry (`perch`), so `perch convert` writes
//! archives with Perch operators and a device build loads them (and plans the kernel
//! for its own CPU when it does).
//!
//! Every node the pass considers is reported as a [`KernelNode`]: the kernel that runs
//! it, or why it stays on tract's operator. A pattern the kernels do not cover is never
//! an error.
//!
//! The pass is on by default; [`crate::engine::LoadOptions::perch_kernels`] or
//! `PERCH_KERNELS=off` in the environment turn it off, for A/B measurement and as an
//! escape hatch.

mod common;
mod dwconv;
mod fuse;
mod guard;
mod kernel_node;
mod layout;
mod lut;
mod nnef;
mod nnef_quant;
mod qadd;
mod qconv;
mod qdq;
mod qmatmul;
mod quantize;

use std::collections::HashSet;

use tract_core::internal::*;

pub use dwconv::PerchDwConv;
pub(crate) use guard::remove_barriers;
pub use guard::PerchBarrier;
pub use kernel_node::KernelNode;
pub(crate) use nnef::registry;
pub use qadd::PerchQAdd;
pub use qconv::PerchQConv;
pub use qmatmul::PerchQMatMul;
pub use quantize::PerchQuantize;

use crate::kernels::Cpu;

/// Declutters a typed model as the engine does: with the guard against tract's folding
/// of non-element-wise ops into lookup tables (see `guard`), then tract's declutter.
/// Host tools that write archives use it so that they write what the engine runs.
pub fn declutter(mut model: TypedModel) -> TractResult<TypedModel> {
    guard::guard(&mut model)?;
    model.into_decluttered()
}

/// Rewrites `model` with Perch operators where a kernel covers a node, planning each
/// kernel for `cpu`; returns the rewritten model and what was done with every node
/// considered.
///
/// Nodes already holding Perch operators (from an NNEF archive) are reported as they
/// are.
pub fn rewrite(mut model: TypedModel, cpu: Cpu) -> TractResult<(TypedModel, Vec<KernelNode>)> {
    let mut report = vec![];
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(existing) = report_existing(node) {
            report.push(existing);
            continue;
        }
        // A quantized convolution first; if it stays float, the float kernels may
        // still take it.
        if let Some((patch, decision)) = qconv::consider(&model, node, cpu)? {
            report.push(decision);
            if let Some(patch) = patch {
                patch.apply(&mut model)?;
                continue;
            }
        }
        if let Some((patch, decision)) = qmatmul::consider(&model, node, cpu)? {
            report.push(decision);
            if let Some(patch) = patch {
                patch.apply(&mut model)?;
            }
            continue;
        }
        let node = model.node(id);
        if let Some((patch, decision)) = qadd::consider(&model, node, cpu)? {
            if let Some(patch) = patch {
                patch.apply(&mut model)?;
            }
            report.push(decision);
            continue;
        }
        if let Some((patch, decision)) = dwconv::consider(&model, node, cpu)? {
            if let Some(patch) = patch {
                patch.apply(&mut model)?;
            }
            report.push(decision);
        }
    }
    // The reports name each node's layouts: refresh those the chaining changed.
    for id in layout::chain(&mut model)? {
        let node = model.node(id);
        let Some(entry) = report.iter_mut().find(|k| k.node == node.name) else {
            continue;
        };
        if let Some(fresh) = report_existing(node) {
            entry.detail = fresh.detail;
        }
    }
    // Element-wise float regions between 8-bit tensors, as lookup tables: after the
    // layers took their output quantize nodes. A table only takes its sink's output
    // over, so the nodes later in the order stay live and see the tables before them.
    for id in model.eval_order()? {
        let Some((Some(patch), mut decision)) = lut::consider(&model, model.node(id), cpu)? else {
            continue;
        };
        patch.apply(&mut model)?;
        // A table this one took in, and that nothing else reads, is reported as part
        // of it.
        let order = model.eval_order()?;
        let live: HashSet<&str> = order.iter().map(|n| &*model.node(*n).name).collect();
        let (taken, kept) = report.into_iter().partition(|k: &KernelNode| {
            decision.fused.contains(&k.node) && !live.contains(&*k.node)
        });
        report = kept;
        for k in taken {
            decision.fused.extend(k.fused);
        }
        decision.fused.sort();
        decision.fused.dedup();
        report.push(decision);
    }
    lut::replan_tables(&mut model, cpu)?;
    // The quantize nodes left: the graph's float inputs, and float operators' results
    // going back to integer ones. Last, so that the layers' own output quantize nodes
    // went into their operators first; the fresh order holds only live nodes.
    for id in model.eval_order()? {
        if let Some((patch, decision)) = quantize::consider(&model, model.node(id), cpu)? {
            if let Some(patch) = patch {
                patch.apply(&mut model)?;
            }
            report.push(decision);
        }
    }
    let model = model.into_compact()?;
    Ok((model, report))
}

/// The Perch operators a model already holds (an NNEF archive written with them),
/// reported as the pass would.
pub(crate) fn existing(model: &TypedModel) -> Vec<KernelNode> {
    model.nodes().iter().filter_map(report_existing).collect()
}

/// The report of a node that already holds a Perch operator.
fn report_existing(node: &TypedNode) -> Option<KernelNode> {
    if let Some(op) = node.op_as::<PerchDwConv>() {
        return Some(op.report(&node.name, vec![]));
    }
    if let Some(op) = node.op_as::<PerchQConv>() {
        return Some(op.report(&node.name, vec![]));
    }
    if let Some(op) = node.op_as::<PerchQAdd>() {
        return Some(op.report(&node.name, vec![]));
    }
    if let Some(op) = node.op_as::<PerchQuantize>() {
        return Some(op.report(&node.name));
    }
    node.op_as::<PerchQMatMul>()
        .map(|op| op.report(&node.name, vec![]))
}

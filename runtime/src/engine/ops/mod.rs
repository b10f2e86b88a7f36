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

mod dwconv;
mod fuse;
mod guard;
mod layout;
mod nnef;
mod nnef_quant;
mod qadd;
mod qconv;
mod qdq;
mod qmatmul;
mod quantize;

use serde::Serialize;
use tract_core::internal::*;

pub use dwconv::PerchDwConv;
pub(crate) use guard::remove_barriers;
pub use guard::PerchBarrier;
pub(crate) use nnef::registry;
pub use qadd::PerchQAdd;
pub use qconv::PerchQConv;
pub use qmatmul::PerchQMatMul;
pub use quantize::PerchQuantize;

use crate::kernels::q8::QType;
use crate::kernels::Cpu;

/// The tensor type of an 8-bit kernel type.
fn datum(q: QType) -> DatumType {
    match q {
        QType::U8 => u8::datum_type(),
        QType::I8 => i8::datum_type(),
    }
}

/// Checks that an input of an 8-bit operator holds `dtype`'s integers, quantized or
/// not (an archive's graph is untrusted input).
fn ensure_integers(x: &Tensor, dtype: QType, op: &str, input: usize) -> TractResult<()> {
    ensure!(
        x.datum_type().unquantized() == datum(dtype).unquantized(),
        "{op} planned for {} input {input}, got {:?}",
        dtype.name(),
        x.datum_type()
    );
    Ok(())
}

/// An image operator's input shape, `[n, a, b, c]` or `[a, b, c]`: the number of
/// images and one image's shape.
fn images(shape: &[usize]) -> (usize, &[usize]) {
    match shape {
        [n, image @ ..] if image.len() == 3 => (*n, image),
        image => (1, image),
    }
}

/// tract's `Op` for a Perch operator on a kernel: its name, and the kernel and the
/// geometry it was planned for (`kernel_name()`, `detail()`) as its info.
macro_rules! kernel_op {
    ($op:ty, $name:literal) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![self.kernel_name().into(), self.detail()])
            }

            op_as_typed_op!();
        }
    };
}
use kernel_op;

/// A 2-D convolution's padding for an input of `hw`: top, left, bottom, right.
fn padding(ps: &tract_core::ops::cnn::PoolSpec, hw: [usize; 2]) -> [usize; 4] {
    let pads = ps.computed_padding(&hw);
    [
        pads[0].pad_before,
        pads[1].pad_before,
        pads[0].pad_after,
        pads[1].pad_after,
    ]
}

/// Declutters a typed model as the engine does: with the guard against tract's folding
/// of non-element-wise ops into lookup tables (see `guard`), then tract's declutter.
/// Host tools that write archives use it so that they write what the engine runs.
pub fn declutter(mut model: TypedModel) -> TractResult<TypedModel> {
    guard::guard(&mut model)?;
    model.into_decluttered()
}

/// What the kernel pass did with one node it considered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelNode {
    /// The node's name in the model.
    pub node: String,
    /// The pattern it matched: `depthwise conv`, ...
    pub pattern: &'static str,
    /// Shape and parameters, for people: `48 ch 56x56 -> 28x28, 3x3 stride 2, pad 1,1,1,1`.
    pub detail: String,
    /// The kernel that runs it (`f32_dwconv_3x3s2_neon`), or `None` when it stays on
    /// tract's operator.
    pub kernel: Option<String>,
    /// Why it stays on tract's operator, when it does.
    pub reason: Option<String>,
    /// Nodes fused into the Perch operator (a ReLU after a convolution, say).
    pub fused: Vec<String>,
}

impl KernelNode {
    /// Whether a Perch kernel runs this node.
    pub fn is_planned(&self) -> bool {
        self.kernel.is_some()
    }

    /// A node that `kernel` runs, with the nodes fused into it.
    fn planned(
        node: &str,
        pattern: &'static str,
        detail: String,
        kernel: &str,
        fused: Vec<String>,
    ) -> KernelNode {
        KernelNode {
            node: node.into(),
            pattern,
            detail,
            kernel: Some(kernel.into()),
            reason: None,
            fused,
        }
    }

    /// A node that stays on tract's operator, and why.
    fn declined(node: &str, pattern: &'static str, detail: String, reason: String) -> KernelNode {
        KernelNode {
            node: node.into(),
            pattern,
            detail,
            kernel: None,
            reason: Some(reason),
            fused: vec![],
        }
    }
}

/// What a pattern makes of a node: `None` when the node is not the pattern's, else the
/// patch that puts a Perch operator in (none when it stays on tract's) and the report.
type Considered = Option<(Option<TypedModelPatch>, KernelNode)>;

/// A patch that wires `op` on `inputs` (outlets of `model`) under `node`'s name, in place
/// of what `replaced` gave.
fn replacement(
    model: &TypedModel,
    node: &TypedNode,
    op: impl Into<Box<dyn TypedOp>>,
    inputs: &[OutletId],
    replaced: OutletId,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::new(format!("perch {}", node.name));
    let taps = inputs
        .iter()
        .map(|i| patch.tap_model(model, *i))
        .collect::<TractResult<TVec<_>>>()?;
    let out = patch.wire_node(&node.name, op, &taps)?[0];
    patch.shunt_outside(model, replaced, out)?;
    Ok(patch)
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

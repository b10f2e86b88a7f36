//! What the pass makes of one node: the report ([`KernelNode`]) and the patch that puts
//! a Perch operator in its place.

use serde::Serialize;
use tract_core::internal::*;

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
    pub(super) fn planned(
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
    pub(super) fn declined(
        node: &str,
        pattern: &'static str,
        detail: String,
        reason: String,
    ) -> KernelNode {
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
pub(super) type Considered = Option<(Option<TypedModelPatch>, KernelNode)>;

/// A patch that wires `op` on `inputs` (outlets of `model`) under `node`'s name, in place
/// of what `replaced` gave.
pub(super) fn replacement(
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

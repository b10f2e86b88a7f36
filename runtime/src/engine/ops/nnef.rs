//! Perch's NNEF registry: a fragment per Perch operator, so archives can carry them.
//!
//! An archive that uses them declares `extension tract_registry perch`; any build of
//! the engine loads it (the registry is always on), and plans each kernel for the CPU
//! that loads it.

use tract_nnef::internal::*;
use tract_nnef::ser::ints;

use super::dwconv::PerchDwConv;
use super::guard::PerchBarrier;
use crate::kernels::f32_dwconv::{DwGeometry, Layout};
use crate::kernels::{Activation, Cpu};

/// The registry's name in archives.
pub(crate) const REGISTRY: &str = "perch";

/// Perch's operators for tract's NNEF reader and writer.
pub(crate) fn registry() -> Registry {
    let mut registry = Registry::new(REGISTRY)
        .with_doc("Extension `perch`: Perch's kernel operators.")
        .with_doc("")
        .with_doc("Add `extension tract_registry perch` to `graph.nnef`");
    registry.register_dumper(dump_barrier);
    registry.register_primitive(
        "perch_barrier",
        &[TypeName::Scalar.tensor().named("input")],
        &[("output", TypeName::Scalar.tensor())],
        load_barrier,
    );
    registry.register_dumper(dump_dwconv);
    registry.register_primitive(
        "perch_dwconv",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.tensor().named("filter"),
            TypeName::Scalar.tensor().named("bias"),
            TypeName::Integer.array().named("kernel"),
            TypeName::Integer.named("stride"),
            TypeName::Integer.array().named("padding"),
            TypeName::String.named("activation"),
            TypeName::String.named("layout").default("chw"),
            TypeName::Scalar.named("lo").default(0.0),
            TypeName::Scalar.named("hi").default(0.0),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_dwconv,
    );
    registry
}

fn dump_barrier(
    ast: &mut IntoAst,
    node: &TypedNode,
    _op: &PerchBarrier,
) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation("perch_barrier", &[input], &[])))
}

fn load_barrier(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    builder.wire(PerchBarrier, &[input])
}

fn dump_dwconv(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &PerchDwConv,
) -> TractResult<Option<Arc<RValue>>> {
    let inputs: TVec<Arc<RValue>> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    let g = op.kernel().geometry();
    let (activation, lo, hi) = match op.kernel().activation() {
        Activation::None => ("none", 0.0, 0.0),
        Activation::Relu => ("relu", 0.0, 0.0),
        Activation::Clamp(lo, hi) => ("clamp", lo, hi),
    };
    Ok(Some(invocation(
        "perch_dwconv",
        &inputs,
        &[
            ("kernel", ints(&g.kernel)),
            ("stride", numeric(g.stride)),
            ("padding", ints(&g.padding)),
            ("activation", string(activation)),
            ("layout", string(op.kernel().layout().name())),
            ("lo", numeric(lo)),
            ("hi", numeric(hi)),
        ],
    )))
}

fn load_dwconv(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let filter: OutletId = invocation.named_arg_as(builder, "filter")?;
    let bias: OutletId = invocation.named_arg_as(builder, "bias")?;
    let kernel: TVec<usize> = invocation.named_arg_as(builder, "kernel")?;
    let stride: usize = invocation.named_arg_as(builder, "stride")?;
    let padding: TVec<usize> = invocation.named_arg_as(builder, "padding")?;
    let activation: String = invocation.named_arg_as(builder, "activation")?;
    let layout: String = invocation.named_arg_as(builder, "layout")?;
    let layout = match &*layout {
        "chw" => Layout::Chw,
        "hwc" => Layout::Hwc,
        other => bail!("perch_dwconv: unknown layout {other:?}"),
    };
    let lo: f32 = invocation.named_arg_as(builder, "lo")?;
    let hi: f32 = invocation.named_arg_as(builder, "hi")?;
    let activation = match &*activation {
        "none" => Activation::None,
        "relu" => Activation::Relu,
        "clamp" => Activation::from_bounds(lo, hi)
            .with_context(|| format!("perch_dwconv: invalid clamp [{lo}, {hi}]"))?,
        other => bail!("perch_dwconv: unknown activation {other:?}"),
    };
    let (&[kh, kw], &[t, l, b, r]) = (&*kernel, &*padding) else {
        bail!("perch_dwconv: kernel {kernel:?} and padding {padding:?} must have 2 and 4 values");
    };
    let shape = builder.model.outlet_fact(input)?.shape.clone();
    ensure!(
        shape.rank() == 3 || shape.rank() == 4,
        "perch_dwconv: input of rank {} (NCHW or CHW expected)",
        shape.rank()
    );
    let dims: Vec<usize> = shape
        .iter()
        .skip(shape.rank() - 3)
        .map(|d| d.to_usize().ok())
        .collect::<Option<_>>()
        .context("perch_dwconv: channels, height and width must be known")?;
    let (c, hw) = match layout {
        Layout::Chw => (dims[0], [dims[1], dims[2]]),
        Layout::Hwc => (dims[2], [dims[0], dims[1]]),
    };
    let geometry = DwGeometry::new(c, hw, [kh, kw], stride, [t, l, b, r])
        .map_err(|e| format_err!("perch_dwconv: {e}"))?;
    let op = PerchDwConv::plan(geometry, layout, activation, Cpu::detect())
        .map_err(|e| format_err!("perch_dwconv: {e}"))?;
    builder.wire(op, &[input, filter, bias])
}

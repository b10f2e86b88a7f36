//! Perch's NNEF registry: a fragment per Perch operator, so archives can carry them.
//!
//! An archive that uses them declares `extension tract_registry perch`; any build of
//! the engine loads it (the registry is always on), and plans each kernel for the CPU
//! that loads it.

use tract_nnef::internal::*;
use tract_nnef::ser::{array, ints};

use super::dwconv::PerchDwConv;
use super::guard::PerchBarrier;
use super::nnef_quant::quantize_invocation;
use super::qadd::{PerchQAdd, QAddSpec};
use super::qconv::{PerchQConv, QConvSpec};
use super::qmatmul::{PerchQMatMul, QMatMulSpec};
use super::quantize::PerchQuantize;
use crate::kernels::f32_dwconv::{DwGeometry, Layout};
use crate::kernels::q8::add::Operand;
use crate::kernels::q8::quantize::Quantize;
use crate::kernels::q8::{ChannelOutput, OutputQuant, QType};
use crate::kernels::requant::Scale;
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
    registry.register_dumper(dump_qconv);
    registry.register_primitive(
        "perch_qconv",
        &gemm_parameters([
            TypeName::String.named("layout"),
            // Absent in archives written before it existed, and written only when it
            // differs from `layout`, so that older agents still load the others.
            TypeName::String.named("output_layout").default(""),
            TypeName::Integer.named("group"),
            TypeName::Integer.array().named("kernel"),
            TypeName::Integer.array().named("stride"),
            TypeName::Integer.array().named("padding"),
        ]),
        &[("output", TypeName::Integer.tensor())],
        load_qconv,
    );
    registry.register_dumper(dump_qmatmul);
    registry.register_primitive(
        "perch_qmatmul",
        &gemm_parameters([
            TypeName::Integer.named("inner"),
            TypeName::Integer.array().named("output_axes"),
            TypeName::Integer.named("m_axis"),
        ]),
        &[("output", TypeName::Integer.tensor())],
        load_qmatmul,
    );
    registry.register_dumper(dump_qadd);
    registry.register_primitive(
        "perch_qadd",
        &[
            TypeName::Integer.tensor().named("a"),
            TypeName::Integer.tensor().named("b"),
            TypeName::String.named("a_type"),
            TypeName::Integer.named("a_zero_point"),
            TypeName::Scalar.named("a_scale"),
            TypeName::String.named("b_type"),
            TypeName::Integer.named("b_zero_point"),
            TypeName::Scalar.named("b_scale"),
            TypeName::String.named("output_type"),
            TypeName::Integer.named("output_zero_point"),
            // tract's form, as `perch_quantize` has it: what the sum is multiplied by.
            TypeName::Scalar.named("output_inverse_scale"),
            // For images: the layouts of `a`, `b` and the output, `chw` as declared or
            // `hwc`, comma-separated; empty for tensors that are not images.
            TypeName::String.named("layouts").default(""),
        ],
        &[("output", TypeName::Integer.tensor())],
        load_qadd,
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
    registry.register_dumper(dump_quantize);
    super::nnef_quant::register(&mut registry);
    registry
}

/// The parameters of an operator on the 8-bit GEMM: the input and its constants, the
/// operator's own, then the input and output quantization.
fn gemm_parameters<const N: usize>(own: [Parameter; N]) -> Vec<Parameter> {
    let constants = ["input", "weights", "bias"];
    let quantization = [
        TypeName::String.named("input_type"),
        TypeName::Integer.named("input_zero_point"),
        TypeName::String.named("output_type"),
        TypeName::Integer.named("output_zero_point"),
        TypeName::Integer.named("output_lo"),
        TypeName::Integer.named("output_hi"),
    ];
    constants
        .map(|name| TypeName::Integer.tensor().named(name))
        .into_iter()
        .chain([TypeName::Scalar.tensor().named("scale")])
        .chain(own)
        .chain(quantization)
        .collect()
}

/// The quantization attributes of an operator on the 8-bit GEMM, as
/// [`gemm_parameters`] lists them.
fn gemm_quantization(
    input: QType,
    input_zero_point: i32,
    output: &OutputQuant,
) -> [(&'static str, RValue); 6] {
    [
        ("input_type", string(input.name())),
        ("input_zero_point", numeric(input_zero_point)),
        ("output_type", string(output.dtype.name())),
        ("output_zero_point", numeric(output.zero_point)),
        ("output_lo", numeric(output.lo)),
        ("output_hi", numeric(output.hi)),
    ]
}

/// `PerchQuantize` as the engine's own quantize (`perch_quantize`): the loader gives
/// the engine's operator back, which the kernel pass replaces again.
fn dump_quantize(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &PerchQuantize,
) -> TractResult<Option<Arc<RValue>>> {
    Ok(Some(quantize_invocation(ast, node, op.output)))
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
            // The float kernels take equal strides only.
            ("stride", numeric(g.stride[0])),
            ("padding", ints(&g.padding)),
            ("activation", string(activation)),
            ("layout", string(op.kernel().layout().name())),
            ("lo", numeric(lo)),
            ("hi", numeric(hi)),
        ],
    )))
}

fn load_dwconv(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    const OP: &str = "perch_dwconv";
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
    let (kernel, padding) = window(&kernel, &padding, OP)?;
    let [c, h, w] = image(builder, input, layout, OP)?;
    let geometry = DwGeometry::new(c, [h, w], kernel, [stride; 2], padding)
        .map_err(|e| format_err!("perch_dwconv: {e}"))?;
    let op = PerchDwConv::plan(geometry, layout, activation, Cpu::detect())
        .map_err(|e| format_err!("perch_dwconv: {e}"))?;
    builder.wire(op, &[input, filter, bias])
}

fn dump_qconv(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &PerchQConv,
) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    let s = &op.spec;
    let shape = [s.cout, s.cin / s.group, s.kernel[0], s.kernel[1]];
    let weights = Tensor::from_shape(&shape, &s.weights)?;
    let constants = dump_constants(ast, &node.name, weights, &s.channels)?;
    let mut attributes = vec![("layout", string(s.layout.name()))];
    if s.output_layout != s.layout {
        attributes.push(("output_layout", string(s.output_layout.name())));
    }
    attributes.extend([
        ("group", numeric(s.group)),
        ("kernel", ints(&s.kernel)),
        ("stride", ints(&s.stride)),
        ("padding", ints(&s.padding)),
    ]);
    attributes.extend(gemm_quantization(s.input, s.input_zero_point, &s.output));
    Ok(Some(invocation(
        "perch_qconv",
        &[[input].as_slice(), &constants].concat(),
        &attributes,
    )))
}

/// Weights, biases and requantization multipliers as variables of the archive.
fn dump_constants(
    ast: &mut IntoAst,
    name: &str,
    weights: Tensor,
    channels: &[ChannelOutput],
) -> TractResult<[Arc<RValue>; 3]> {
    let bias: Vec<i32> = channels.iter().map(|c| c.bias).collect();
    let scale: Vec<f32> = channels.iter().map(|c| c.scale.value()).collect();
    Ok([
        ast.konst_variable(format!("{name}.weights"), &Arc::new(weights))?,
        ast.konst_variable(format!("{name}.bias"), &Arc::new(tensor1(&bias)))?,
        ast.konst_variable(format!("{name}.scale"), &Arc::new(tensor1(&scale)))?,
    ])
}

/// Weights and per-channel constants read back: `(weights, channels)`, checked.
fn load_constants(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
    op: &str,
) -> TractResult<(Arc<Tensor>, Vec<ChannelOutput>)> {
    let weights: Arc<Tensor> = invocation.named_arg_as(builder, "weights")?;
    let bias: Arc<Tensor> = invocation.named_arg_as(builder, "bias")?;
    let scale: Arc<Tensor> = invocation.named_arg_as(builder, "scale")?;
    ensure!(
        weights.datum_type() == i8::datum_type() && weights.rank() >= 2,
        "{op}: weights must be i8, got {:?} {:?}",
        weights.datum_type(),
        weights.shape()
    );
    let outputs = weights.shape()[0];
    for (t, dt) in [(&bias, i32::datum_type()), (&scale, f32::datum_type())] {
        ensure!(
            t.datum_type() == dt && t.shape() == [outputs],
            "{op}: per-channel constants must be {dt:?} [{outputs}], got {:?} {:?}",
            t.datum_type(),
            t.shape()
        );
    }
    let bias = bias
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<i32>().map(<[i32]>::to_vec))?;
    let scale = scale
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))?;
    let mut channels = vec![];
    for c in 0..outputs {
        let s = Scale::from_f32(scale[c])
            .ok_or_else(|| format_err!("{op}: channel {c}: scale {} is not finite", scale[c]))?;
        channels.push(ChannelOutput {
            bias: bias[c],
            scale: s,
        });
    }
    Ok((weights, channels))
}

/// The input quantization from its arguments: `(type, zero point)`, checked.
fn load_input(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
    op: &str,
) -> TractResult<(QType, i32)> {
    let dtype = qtype(&invocation.named_arg_as::<String>(builder, "input_type")?)?;
    let zero_point: i64 = invocation.named_arg_as(builder, "input_zero_point")?;
    let zero_point = i32::try_from(zero_point)
        .map_err(|_| format_err!("{op}: input zero point out of range"))?;
    Ok((dtype, zero_point))
}

/// The output quantization from its arguments, checked.
fn load_output(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
    op: &str,
) -> TractResult<OutputQuant> {
    let dtype = qtype(&invocation.named_arg_as::<String>(builder, "output_type")?)?;
    let small = |v: i64| i32::try_from(v).map_err(|_| format_err!("{op}: {v} out of range"));
    let zero_point = small(invocation.named_arg_as(builder, "output_zero_point")?)?;
    let lo = small(invocation.named_arg_as(builder, "output_lo")?)?;
    let hi = small(invocation.named_arg_as(builder, "output_hi")?)?;
    let (tlo, thi) = dtype.range();
    ensure!(
        tlo <= lo && lo <= hi && hi <= thi && (tlo..=thi).contains(&zero_point),
        "{op}: output zero point {zero_point} or clamp [{lo}, {hi}] out of {} range",
        dtype.name()
    );
    Ok(OutputQuant {
        dtype,
        zero_point,
        lo,
        hi,
    })
}

fn dump_qmatmul(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &PerchQMatMul,
) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    let s = &op.spec;
    let weights = Tensor::from_shape(&[s.m, s.k], &s.weights)?;
    let constants = dump_constants(ast, &node.name, weights, &s.channels)?;
    let axes: Vec<i64> = s
        .output_axes
        .iter()
        .map(|a| a.map_or(-1, |a| a as i64))
        .collect();
    let mut attributes = vec![
        ("inner", numeric(s.inner)),
        (
            "output_axes",
            array(axes.iter().map(|a| numeric(*a)).collect::<Vec<_>>()),
        ),
        ("m_axis", numeric(s.m_axis)),
    ];
    attributes.extend(gemm_quantization(s.input, s.input_zero_point, &s.output));
    Ok(Some(invocation(
        "perch_qmatmul",
        &[[input].as_slice(), &constants].concat(),
        &attributes,
    )))
}

fn load_qmatmul(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    const OP: &str = "perch_qmatmul";
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let (weights, channels) = load_constants(builder, invocation, OP)?;
    ensure!(
        weights.rank() == 2,
        "{OP}: weights must be [m, k], got {:?}",
        weights.shape()
    );
    let (m, k) = (weights.shape()[0], weights.shape()[1]);
    let inner: usize = invocation.named_arg_as(builder, "inner")?;
    let axes: TVec<i64> = invocation.named_arg_as(builder, "output_axes")?;
    let m_axis: usize = invocation.named_arg_as(builder, "m_axis")?;
    let (input_type, input_zero_point) = load_input(builder, invocation, OP)?;
    let output = load_output(builder, invocation, OP)?;
    let rank = builder.model.outlet_fact(input)?.rank();
    let output_axes = axes
        .iter()
        .map(|a| match *a {
            -1 => Ok(None),
            a if a >= 0 && (a as usize) < rank => Ok(Some(a as usize)),
            a => bail!("{OP}: output axis {a} is not an input axis"),
        })
        .collect::<TractResult<Vec<_>>>()?;
    ensure!(
        m_axis < output_axes.len(),
        "{OP}: m_axis {m_axis} out of range"
    );
    let spec = QMatMulSpec {
        k,
        m,
        inner,
        output_axes,
        m_axis,
        input: input_type,
        input_zero_point,
        output,
        weights: weights.try_as_plain_ram()?.as_slice::<i8>()?.to_vec(),
        channels,
    };
    let op = PerchQMatMul::plan(spec, Cpu::detect()).map_err(|e| format_err!("{OP}: {e}"))?;
    builder.wire(op, &[input])
}

/// A kernel window's `kernel` (2 values) and `padding` (4) arguments.
fn window(kernel: &[usize], padding: &[usize], op: &str) -> TractResult<([usize; 2], [usize; 4])> {
    let (&[kh, kw], &[t, l, b, r]) = (kernel, padding) else {
        bail!("{op}: kernel {kernel:?} and padding {padding:?} must have 2 and 4 values");
    };
    Ok(([kh, kw], [t, l, b, r]))
}

/// The `[channels, height, width]` of an image input (CHW or HWC, with or without a
/// batch axis), which must be known.
fn image(
    builder: &ModelBuilder,
    input: OutletId,
    layout: Layout,
    op: &str,
) -> TractResult<[usize; 3]> {
    let shape = &builder.model.outlet_fact(input)?.shape;
    let rank = shape.rank();
    ensure!(
        rank == 3 || rank == 4,
        "{op}: an image input of rank {rank} (CHW or HWC, with or without a batch axis)"
    );
    let dims: Vec<usize> = shape
        .iter()
        .skip(rank - 3)
        .map(|d| d.to_usize().ok())
        .collect::<Option<_>>()
        .with_context(|| format!("{op}: channels, height and width must be known"))?;
    Ok(match layout {
        Layout::Chw => [dims[0], dims[1], dims[2]],
        Layout::Hwc => [dims[2], dims[0], dims[1]],
    })
}

fn qtype(name: &str) -> TractResult<QType> {
    match name {
        "u8" => Ok(QType::U8),
        "i8" => Ok(QType::I8),
        other => bail!("perch_qconv: unknown type {other:?}"),
    }
}

/// A layout argument: `chw`, `hwc`, or empty for none.
fn layout_arg(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
    name: &str,
    op: &str,
) -> TractResult<Option<Layout>> {
    layout_named(&invocation.named_arg_as::<String>(builder, name)?, name, op)
}

/// A layout by its name: `chw`, `hwc`, or empty for none.
fn layout_named(layout: &str, name: &str, op: &str) -> TractResult<Option<Layout>> {
    match layout {
        "chw" => Ok(Some(Layout::Chw)),
        "hwc" => Ok(Some(Layout::Hwc)),
        "" => Ok(None),
        other => bail!("{op}: unknown {name} {other:?}"),
    }
}

fn load_qconv(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    const OP: &str = "perch_qconv";
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let (weights, channels) = load_constants(builder, invocation, OP)?;
    ensure!(
        weights.rank() == 4,
        "{OP}: weights must be [cout, cin/group, kh, kw], got {:?}",
        weights.shape()
    );
    let layout = layout_arg(builder, invocation, "layout", OP)?
        .with_context(|| format!("{OP}: no layout"))?;
    let output_layout = layout_arg(builder, invocation, "output_layout", OP)?.unwrap_or(layout);
    let group: usize = invocation.named_arg_as(builder, "group")?;
    let kernel: TVec<usize> = invocation.named_arg_as(builder, "kernel")?;
    let stride: TVec<usize> = invocation.named_arg_as(builder, "stride")?;
    let &[sh, sw] = stride.as_slice() else {
        bail!("{OP}: stride {stride:?} must have 2 values");
    };
    let stride = [sh, sw];
    let padding: TVec<usize> = invocation.named_arg_as(builder, "padding")?;
    let (input_type, input_zero_point) = load_input(builder, invocation, OP)?;
    let output = load_output(builder, invocation, OP)?;
    let (kernel, padding) = window(&kernel, &padding, OP)?;
    let [cin, h, w] = image(builder, input, layout, OP)?;
    let spec = QConvSpec {
        layout,
        output_layout,
        cin,
        cout: weights.shape()[0],
        group,
        input_hw: [h, w],
        kernel,
        stride,
        padding,
        input: input_type,
        input_zero_point,
        output,
        weights: weights.try_as_plain_ram()?.as_slice::<i8>()?.to_vec(),
        channels,
    };
    let op = PerchQConv::plan(spec, Cpu::detect()).map_err(|e| format_err!("{OP}: {e}"))?;
    builder.wire(op, &[input])
}

fn dump_qadd(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &PerchQAdd,
) -> TractResult<Option<Arc<RValue>>> {
    let a = ast.mapping[&node.inputs[0]].clone();
    let b = ast.mapping[&node.inputs[1]].clone();
    let s = &op.spec;
    let layouts = match s.image {
        Some(_) => s.layouts.map(|l| l.name()).join(","),
        None => String::new(),
    };
    Ok(Some(invocation(
        "perch_qadd",
        &[a, b],
        &[
            ("a_type", string(s.a.dtype.name())),
            ("a_zero_point", numeric(s.a.zero_point)),
            ("a_scale", numeric(s.a.scale)),
            ("b_type", string(s.b.dtype.name())),
            ("b_zero_point", numeric(s.b.zero_point)),
            ("b_scale", numeric(s.b.scale)),
            ("output_type", string(s.output.dtype.name())),
            ("output_zero_point", numeric(s.output.zero_point)),
            ("output_inverse_scale", numeric(s.output.inverse_scale)),
            ("layouts", string(layouts)),
        ],
    )))
}

fn load_qadd(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    const OP: &str = "perch_qadd";
    let a: OutletId = invocation.named_arg_as(builder, "a")?;
    let b: OutletId = invocation.named_arg_as(builder, "b")?;
    let mut quantization = |prefix: &str, scale: &str| -> TractResult<(QType, i32, f32)> {
        let dtype = qtype(&invocation.named_arg_as::<String>(builder, &format!("{prefix}_type"))?)?;
        let zero_point: i64 = invocation.named_arg_as(builder, &format!("{prefix}_zero_point"))?;
        let zero_point = i32::try_from(zero_point)
            .map_err(|_| format_err!("{OP}: {prefix} zero point {zero_point} out of range"))?;
        let scale: f32 = invocation.named_arg_as(builder, &format!("{prefix}_{scale}"))?;
        Ok((dtype, zero_point, scale))
    };
    let operand = |(dtype, zero_point, scale)| Operand {
        dtype,
        zero_point,
        scale,
    };
    let a_quant = operand(quantization("a", "scale")?);
    let b_quant = operand(quantization("b", "scale")?);
    let (dtype, zero_point, inverse_scale) = quantization("output", "inverse_scale")?;
    let layouts: String = invocation.named_arg_as(builder, "layouts")?;
    let layouts: Vec<&str> = layouts.split(',').filter(|l| !l.is_empty()).collect();
    let (image, layouts) = match &*layouts {
        [] => (None, [Layout::Chw; 3]),
        [la, lb, ly] => {
            let parse = |l: &str| {
                layout_named(l, "layout", OP)?.with_context(|| format!("{OP}: empty layout"))
            };
            let layouts = [parse(la)?, parse(lb)?, parse(ly)?];
            (Some(image(builder, a, layouts[0], OP)?), layouts)
        }
        other => bail!("{OP}: {} layouts (three, or none)", other.len()),
    };
    let spec = QAddSpec {
        a: a_quant,
        b: b_quant,
        output: Quantize {
            dtype,
            zero_point,
            inverse_scale,
        },
        image,
        layouts,
    };
    let op = PerchQAdd::plan(spec, Cpu::detect()).map_err(|e| format_err!("{OP}: {e}"))?;
    builder.wire(op, &[a, b])
}

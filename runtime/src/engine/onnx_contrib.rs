//! ONNX Runtime's quantized contrib operators (domain `com.microsoft`), which its
//! `quantize_static` writes in QOperator format next to the standard `QLinearConv` and
//! `QLinearMatMul`.
//!
//! Each node is expanded into tract's own operators as the equivalent QDQ graph would be:
//! every quantized input goes through `DequantizeLinear`, the float operator runs, and its
//! result goes through `QuantizeLinear` with the node's output scale and zero point. That is
//! ONNX Runtime's definition of these operators (it computes them the same way, up to the
//! rounding of its fused integer kernels: within one step of the output), and it is the
//! pattern the engine's integer rewrite recognizes in QDQ files.
//!
//! tract looks operators up by `op_type` alone; the builders here refuse a node of another
//! domain, and [`super::onnx_check`] refuses a default-domain node that borrows one of these
//! names, and a `com.microsoft` node that is not one of [`OPERATORS`].
//!
//! Parameters are checked when the graph is built: scales must be constant, finite and
//! positive; zero points constant and of their tensor's type; both scalar, except `QGemm`'s
//! weight parameters, which may hold one value per output column. Anything else is an error
//! naming the node, never a guess.

use tract_onnx::model::{optional_inputs, OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir;

use tract_hir::internal::*;
use tract_hir::ops::nn::GlobalAvgPool;
use tract_hir::tract_core::broadcast::multi_broadcast;
use tract_hir::tract_core::ops::array::TypedConcat;
use tract_hir::tract_core::ops::cast::cast;
use tract_hir::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_hir::tract_core::ops::einsum::EinSum;
use tract_hir::tract_core::ops::math::{add, mul, sub};
use tract_hir::tract_core::ops::nn::{leaky_relu, sigmoid};
use tract_hir::tract_core::ops::quant::{
    quantize_linear_i8, quantize_linear_u8, DequantizeLinearF32,
};

/// The domain of ONNX Runtime's contrib operators.
pub const DOMAIN: &str = "com.microsoft";

/// The `com.microsoft` operators the engine runs, by `op_type`.
pub const OPERATORS: [&str; 8] = [
    "QGemm",
    "QLinearAdd",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearLeakyRelu",
    "QLinearMul",
    "QLinearSigmoid",
];

/// Whether the engine runs the operator `op_type` of `domain` from this module.
pub fn supports(domain: &str, op_type: &str) -> bool {
    domain == DOMAIN && OPERATORS.contains(&op_type)
}

/// tract's ONNX framework with these operators registered: what the engine parses ONNX
/// models with, and what tools that parse ONNX themselves should use.
pub fn onnx_framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    register(&mut onnx.op_register);
    onnx
}

/// Adds the builders of [`OPERATORS`] to a register.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("QLinearAdd", |ctx, node| build(ctx, node, Kind::Add));
    reg.insert("QLinearMul", |ctx, node| build(ctx, node, Kind::Mul));
    reg.insert("QLinearSigmoid", |ctx, node| {
        build(ctx, node, Kind::Sigmoid)
    });
    reg.insert("QLinearLeakyRelu", |ctx, node| {
        let alpha = node.get_attr_opt("alpha")?.unwrap_or(0.01f32);
        build(ctx, node, Kind::LeakyRelu(alpha))
    });
    reg.insert("QLinearGlobalAveragePool", |ctx, node| {
        channels_first(node)?;
        build(ctx, node, Kind::GlobalAveragePool)
    });
    reg.insert("QLinearAveragePool", |ctx, node| {
        channels_first(node)?;
        // The float pool is tract's own AveragePool, built from the same attributes
        // (kernel_shape, pads, auto_pad, strides, ceil_mode, count_include_pad).
        let builder = ctx
            .framework
            .op_register
            .0
            .get("AveragePool")
            .context("tract's AveragePool is not registered")?;
        let (pool, _) = builder(ctx, node)?;
        let pool = pool
            .as_op()
            .downcast_ref::<Box<dyn Expansion>>()
            .context("tract's AveragePool is not an expansion")?
            .clone();
        build(ctx, node, Kind::AveragePool(pool))
    });
    reg.insert("QGemm", |ctx, node| {
        let alpha = node.get_attr_opt("alpha")?.unwrap_or(1.0f32);
        let trans_a = node.get_attr_opt("transA")?.unwrap_or(false);
        let trans_b = node.get_attr_opt("transB")?.unwrap_or(false);
        build(
            ctx,
            node,
            Kind::Gemm {
                alpha,
                trans_a,
                trans_b,
            },
        )
    });
    reg.insert("QLinearConcat", |ctx, node| {
        let axis = node.get_attr::<i64>("axis")?;
        let operands = node.input.len().saturating_sub(2) / 3;
        ensure!(
            operands >= 1 && node.input.len() == 2 + 3 * operands,
            "QLinearConcat takes Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per \
             input; this node has {} inputs",
            node.input.len()
        );
        build(ctx, node, Kind::Concat { axis, operands })
    });
}

/// The pooling operators' `channels_last` layout is not supported.
fn channels_first(node: &NodeProto) -> TractResult<()> {
    let channels_last = node.get_attr_opt::<i64>("channels_last")?.unwrap_or(0);
    ensure!(
        channels_last == 0,
        "channels_last={channels_last} (NHWC) is not supported, only the NCHW layout"
    );
    Ok(())
}

/// The float operation inside a quantized contrib operator.
#[derive(Debug, Clone)]
enum Kind {
    Add,
    Mul,
    Sigmoid,
    LeakyRelu(f32),
    GlobalAveragePool,
    AveragePool(Box<dyn Expansion>),
    Gemm {
        alpha: f32,
        trans_a: bool,
        trans_b: bool,
    },
    Concat {
        axis: i64,
        operands: usize,
    },
}

/// A quantized tensor among an operator's inputs: the positions (in the operator's own
/// input list, absent optional inputs included) of its value, scale and zero point.
#[derive(Debug, Clone, Copy)]
struct Operand {
    x: usize,
    scale: usize,
    zero_point: usize,
}

const fn operand(x: usize) -> Operand {
    Operand {
        x,
        scale: x + 1,
        zero_point: x + 2,
    }
}

impl Kind {
    /// The number of inputs of the operator's signature.
    fn arity(&self) -> usize {
        match self {
            Kind::Add | Kind::Mul => 8,
            Kind::Gemm { .. } => 9,
            Kind::Concat { operands, .. } => 2 + 3 * operands,
            _ => 5,
        }
    }

    /// The quantized inputs.
    fn operands(&self) -> Vec<Operand> {
        match self {
            Kind::Add | Kind::Mul | Kind::Gemm { .. } => vec![operand(0), operand(3)],
            Kind::Concat { operands, .. } => (0..*operands).map(|i| operand(2 + 3 * i)).collect(),
            _ => vec![operand(0)],
        }
    }

    /// Positions of the output's scale and zero point.
    fn output(&self) -> (usize, usize) {
        match self {
            Kind::Add | Kind::Mul => (6, 7),
            Kind::Gemm { .. } => (7, 8),
            Kind::Concat { .. } => (0, 1),
            _ => (3, 4),
        }
    }

    /// Whether the output may be left float (no output scale): only QGemm's.
    fn float_output_allowed(&self) -> bool {
        matches!(self, Kind::Gemm { .. })
    }

    fn name(&self) -> &'static str {
        match self {
            Kind::Add => "QLinearAdd",
            Kind::Mul => "QLinearMul",
            Kind::Sigmoid => "QLinearSigmoid",
            Kind::LeakyRelu(_) => "QLinearLeakyRelu",
            Kind::GlobalAveragePool => "QLinearGlobalAveragePool",
            Kind::AveragePool(_) => "QLinearAveragePool",
            Kind::Gemm { .. } => "QGemm",
            Kind::Concat { .. } => "QLinearConcat",
        }
    }
}

fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
    kind: Kind,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(
        node.domain == DOMAIN,
        "{} is an ONNX Runtime contrib operator (domain {DOMAIN}), not one of domain {:?}",
        node.op_type,
        node.domain
    );
    let arity = kind.arity();
    ensure!(
        node.input.len() <= arity,
        "{} takes at most {arity} inputs, this node has {}",
        kind.name(),
        node.input.len()
    );
    let slots: Vec<Option<usize>> = optional_inputs(node).take(arity).collect();
    let mut required: Vec<usize> = kind
        .operands()
        .iter()
        .flat_map(|o| [o.x, o.scale])
        .collect();
    if !kind.float_output_allowed() {
        required.push(kind.output().0);
    }
    for slot in required {
        ensure!(
            slots[slot].is_some(),
            "{}: input {slot} is required but missing",
            kind.name()
        );
    }
    let (out_scale, out_zero_point) = kind.output();
    if slots[out_zero_point].is_some() {
        ensure!(
            slots[out_scale].is_some(),
            "{}: an output zero point without an output scale",
            kind.name()
        );
    }
    Ok((expand(QLinearContrib { kind, slots }), vec![]))
}

/// One contrib node: its float operation and where each of its inputs is wired.
#[derive(Debug, Clone)]
struct QLinearContrib {
    kind: Kind,
    /// For each input of the signature, its index among the node's wired inputs (absent
    /// optional inputs are `None`).
    slots: Vec<Option<usize>>,
}

impl QLinearContrib {
    fn wired(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    fn slot(&self, position: usize) -> Option<usize> {
        self.slots.get(position).copied().flatten()
    }

    /// The index of a required input.
    fn at(&self, position: usize) -> TractResult<usize> {
        self.slot(position)
            .with_context(|| format!("{}: input {position} is missing", self.kind.name()))
    }
}

impl Expansion for QLinearContrib {
    fn name(&self) -> StaticName {
        self.kind.name().into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.wired())?;
        check_output_arity(outputs, 1)?;
        let operands = self.kind.operands();
        for o in &operands {
            let x = self.at(o.x)?;
            s.equals(&inputs[self.at(o.scale)?].datum_type, f32::datum_type())?;
            if let Some(z) = self.slot(o.zero_point) {
                s.equals(&inputs[z].datum_type, &inputs[x].datum_type)?;
            }
        }
        let first = self.at(operands[0].x)?;
        let (out_scale, out_zero_point) = self.kind.output();
        match (self.slot(out_scale), self.slot(out_zero_point)) {
            (Some(scale), zero_point) => {
                s.equals(&inputs[scale].datum_type, f32::datum_type())?;
                let dt_from = zero_point.unwrap_or(first);
                s.equals(&outputs[0].datum_type, &inputs[dt_from].datum_type)?;
            }
            (None, _) => s.equals(&outputs[0].datum_type, f32::datum_type())?,
        }
        match &self.kind {
            Kind::Add | Kind::Mul => {
                let (a, b) = (self.at(0)?, self.at(3)?);
                s.given_2(&inputs[a].shape, &inputs[b].shape, move |s, a, b| {
                    s.equals(&outputs[0].shape, multi_broadcast(&[a, b])?)
                })?;
            }
            Kind::Sigmoid | Kind::LeakyRelu(_) => {
                s.equals(&inputs[first].shape, &outputs[0].shape)?;
            }
            Kind::GlobalAveragePool => {
                // The float pool's shape rules, over the quantized input (same type in
                // and out, as ONNX Runtime requires).
                GlobalAvgPool.rules(s, &inputs[first..first + 1], outputs)?;
            }
            Kind::AveragePool(pool) => {
                pool.as_ref().rules(s, &inputs[first..first + 1], outputs)?;
            }
            Kind::Gemm {
                trans_a, trans_b, ..
            } => {
                let (a, b) = (self.at(0)?, self.at(3)?);
                s.equals(&inputs[a].rank, 2)?;
                s.equals(&inputs[b].rank, 2)?;
                s.equals(&outputs[0].rank, 2)?;
                let (ca, ra) = if *trans_a { (0, 1) } else { (1, 0) };
                let (cb, rb) = if *trans_b { (0, 1) } else { (1, 0) };
                s.equals(&inputs[a].shape[ra], &outputs[0].shape[0])?;
                s.equals(&inputs[a].shape[ca], &inputs[b].shape[rb])?;
                s.equals(&inputs[b].shape[cb], &outputs[0].shape[1])?;
                if let Some(c) = self.slot(6) {
                    s.equals(&inputs[c].datum_type, i32::datum_type())?;
                }
            }
            Kind::Concat { axis, .. } => {
                let axis = *axis;
                let xs: Vec<usize> = operands
                    .iter()
                    .map(|o| self.at(o.x))
                    .collect::<TractResult<_>>()?;
                s.equals(&outputs[0].rank, &inputs[first].rank)?;
                s.equals_all(xs.iter().map(|x| inputs[*x].rank.bex()).collect())?;
                s.given(&inputs[first].rank, move |s, rank| {
                    let axis = resolve_axis(axis, rank as usize)?;
                    s.equals(
                        tract_hir::infer::rules::expr::SumExp::new(
                            xs.iter().map(|x| inputs[*x].shape[axis].bex()).collect(),
                        ),
                        &outputs[0].shape[axis],
                    )?;
                    for other in (0..rank as usize).filter(|a| *a != axis) {
                        s.equals(&outputs[0].shape[other], &inputs[first].shape[other])?;
                        s.equals_all(xs.iter().map(|x| inputs[*x].shape[other].bex()).collect())?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let input = |position: usize| self.slot(position).map(|i| inputs[i]);
        let operands = self.kind.operands();
        let first_dt = target
            .outlet_fact(inputs[self.at(operands[0].x)?])?
            .datum_type;
        let mut floats = tvec![];
        for (k, o) in operands.iter().enumerate() {
            // Only QGemm's weight (its second operand) may be quantized per output column.
            let axis = match &self.kind {
                Kind::Gemm { trans_b, .. } if k == 1 => Some(if *trans_b { 0 } else { 1 }),
                _ => None,
            };
            let wire = dequantize(
                target,
                &format!("{prefix}.dequantize_{k}"),
                inputs[self.at(o.x)?],
                inputs[self.at(o.scale)?],
                input(o.zero_point),
                axis,
            )?;
            floats.push(wire);
        }
        let (out_scale, out_zero_point) = self.kind.output();
        let quantized = input(out_scale).is_some();
        let float_name = if quantized {
            format!("{prefix}.float")
        } else {
            prefix.to_string()
        };
        let y = match &self.kind {
            Kind::Add => wire_with_rank_broadcast(&float_name, target, add(), &floats)?[0],
            Kind::Mul => wire_with_rank_broadcast(&float_name, target, mul(), &floats)?[0],
            Kind::Sigmoid => target.wire_node(&float_name, sigmoid(), &floats)?[0],
            Kind::LeakyRelu(alpha) => {
                target.wire_node(&float_name, leaky_relu(*alpha), &floats)?[0]
            }
            Kind::GlobalAveragePool => GlobalAvgPool.wire(&float_name, target, &floats)?[0],
            Kind::AveragePool(pool) => pool.as_ref().wire(&float_name, target, &floats)?[0],
            Kind::Concat { axis, .. } => {
                let rank = target.outlet_fact(floats[0])?.rank();
                let op = TypedConcat::new(resolve_axis(*axis, rank)?);
                target.wire_node(&float_name, op, &floats)?[0]
            }
            Kind::Gemm {
                alpha,
                trans_a,
                trans_b,
            } => {
                let axes = AxesMapping::for_numpy_matmul(2, *trans_a, *trans_b, false)?;
                let mut y = target.wire_node(
                    format!("{prefix}.matmul"),
                    EinSum::new(axes, f32::datum_type()),
                    &floats,
                )?[0];
                if *alpha != 1.0 {
                    let alpha = target.add_const(
                        format!("{prefix}.alpha"),
                        tensor0(*alpha).broadcast_into_rank(2)?,
                    )?;
                    y = target.wire_node(format!("{prefix}.scaled"), mul(), &[y, alpha])?[0];
                }
                if let Some(c) = input(6) {
                    // C is int32 at scale alpha × a_scale × b_scale (per output column),
                    // zero point 0.
                    let a_scale =
                        scalar_scale(&*constant(target, inputs[self.at(1)?], "a_scale")?)?;
                    let b_scale = constant(target, inputs[self.at(4)?], "b_scale")?;
                    let bias_scales: Vec<f32> = scales(&b_scale)?
                        .iter()
                        .map(|b| alpha * a_scale * b)
                        .collect();
                    let scale = if bias_scales.len() == 1 {
                        tensor0(bias_scales[0])
                    } else {
                        tensor1(&bias_scales)
                    };
                    let scale = target.add_const(format!("{prefix}.bias_scale"), scale)?;
                    let c = target.wire_node(
                        format!("{prefix}.bias_cast"),
                        cast(f32::datum_type()),
                        &[c],
                    )?;
                    let c = wire_with_rank_broadcast(
                        format!("{prefix}.bias_dequantize"),
                        target,
                        mul(),
                        &[c[0], scale],
                    )?;
                    y = wire_with_rank_broadcast(
                        if quantized {
                            format!("{prefix}.bias")
                        } else {
                            float_name.clone()
                        },
                        target,
                        add(),
                        &[y, c[0]],
                    )?[0];
                } else if !quantized && *alpha == 1.0 {
                    // Nothing after the product: it is the node's output.
                    return Ok(tvec![y]);
                }
                y
            }
        };
        match input(out_scale) {
            Some(scale) => Ok(tvec![quantize(
                target,
                prefix,
                y,
                scale,
                input(out_zero_point),
                first_dt
            )?]),
            None => Ok(tvec![y]),
        }
    }
}

/// An axis attribute, negative counting from the end, as a position in a rank.
fn resolve_axis(axis: i64, rank: usize) -> TractResult<usize> {
    let resolved = if axis < 0 { axis + rank as i64 } else { axis };
    ensure!(
        (0..rank as i64).contains(&resolved),
        "axis {axis} is out of range for rank {rank}"
    );
    Ok(resolved as usize)
}

/// The value of a constant input.
fn constant(target: &TypedModel, outlet: OutletId, what: &str) -> TractResult<Arc<Tensor>> {
    target
        .outlet_fact(outlet)?
        .konst
        .clone()
        .with_context(|| format!("{what} must be a constant (an initializer)"))
}

/// A scale's values, each finite and positive.
fn scales(t: &Tensor) -> TractResult<Vec<f32>> {
    ensure!(
        t.datum_type() == f32::datum_type(),
        "a scale must be float32, not {:?}",
        t.datum_type()
    );
    let values = t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    ensure!(!values.is_empty(), "a scale is empty");
    if let Some(bad) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        bail!("scale {bad} is not a finite positive number");
    }
    Ok(values)
}

/// A scale that must hold one value.
fn scalar_scale(t: &Tensor) -> TractResult<f32> {
    let values = scales(t)?;
    ensure!(
        values.len() == 1,
        "a scale of {} values where one is required",
        values.len()
    );
    Ok(values[0])
}

/// Zero points as i32, of the type `dt` of the tensor they belong to.
fn zero_points(t: &Tensor, dt: DatumType) -> TractResult<Vec<i32>> {
    ensure!(
        t.datum_type() == dt,
        "a zero point of type {:?} for a tensor of type {dt:?}",
        t.datum_type()
    );
    let values = match dt {
        DatumType::U8 => t
            .try_as_plain_ram()?
            .as_slice::<u8>()?
            .iter()
            .map(|v| *v as i32)
            .collect(),
        DatumType::I8 => t
            .try_as_plain_ram()?
            .as_slice::<i8>()?
            .iter()
            .map(|v| *v as i32)
            .collect(),
        _ => bail!("quantized tensors must be uint8 or int8, not {dt:?}"),
    };
    Ok(values)
}

/// `(x - zero_point) * scale` in float, per tensor, or per `axis` when given.
fn dequantize(
    target: &mut TypedModel,
    name: &str,
    x: OutletId,
    scale: OutletId,
    zero_point: Option<OutletId>,
    axis: Option<usize>,
) -> TractResult<OutletId> {
    let fact = target.outlet_fact(x)?.clone();
    let scale = scales(&*constant(target, scale, "a scale")?)?;
    let zero_point = match zero_point {
        Some(z) => zero_points(&*constant(target, z, "a zero point")?, fact.datum_type)?,
        None => vec![0],
    };
    if scale.len() == 1 && zero_point.len() == 1 {
        let op = DequantizeLinearF32::new(scale[0], zero_point[0]);
        return Ok(target.wire_node(name, op, &[x])?[0]);
    }
    let axis = axis.context("scale and zero point must be scalars here")?;
    let channels = fact
        .shape
        .get(axis)
        .and_then(|d| d.to_usize().ok())
        .context("per-channel parameters need a known number of channels")?;
    let per_channel = |values: Vec<f32>, what: &str| -> TractResult<Tensor> {
        let values = match values.len() {
            1 => vec![values[0]; channels],
            n if n == channels => values,
            n => bail!("{n} {what}s for {channels} channels on axis {axis}"),
        };
        let mut shape = tvec![1; fact.rank()];
        shape[axis] = channels;
        tensor1(&values).into_shape(&shape)
    };
    let scale = per_channel(scale, "scale")?;
    let zero_point = per_channel(zero_point.iter().map(|z| *z as f32).collect(), "zero point")?;
    let scale = target.add_const(format!("{name}.scale"), scale)?;
    let zero_point = target.add_const(format!("{name}.zero_point"), zero_point)?;
    let x = target.wire_node(format!("{name}.cast"), cast(f32::datum_type()), &[x])?;
    let x = target.wire_node(format!("{name}.sub"), sub(), &[x[0], zero_point])?;
    Ok(target.wire_node(name, mul(), &[x[0], scale])?[0])
}

/// `saturate(round(y / scale) + zero_point)`, to the zero point's type (`default_dt`
/// without one), as tract runs ONNX's QuantizeLinear.
fn quantize(
    target: &mut TypedModel,
    name: &str,
    y: OutletId,
    scale: OutletId,
    zero_point: Option<OutletId>,
    default_dt: DatumType,
) -> TractResult<OutletId> {
    let scale = scalar_scale(&*constant(target, scale, "the output scale")?)?;
    let (dt, zero_point) = match zero_point {
        Some(z) => {
            let z = constant(target, z, "the output zero point")?;
            let dt = z.datum_type();
            let values = zero_points(&z, dt)?;
            ensure!(
                values.len() == 1,
                "the output zero point holds {} values where one is required",
                values.len()
            );
            (dt, values[0])
        }
        None => (default_dt, 0),
    };
    let op: Box<dyn TypedOp> = match dt {
        DatumType::U8 => Box::new(quantize_linear_u8(scale.recip(), zero_point as u8)),
        DatumType::I8 => Box::new(quantize_linear_i8(scale.recip(), zero_point as i8)),
        _ => bail!("the output must be uint8 or int8, not {dt:?}"),
    };
    Ok(target.wire_node(name, op, &[y])?[0])
}

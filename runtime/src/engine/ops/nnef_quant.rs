//! NNEF fragments for tract's own quantization operators, which tract's NNEF writer
//! has no serializer for: `QuantizeLinear` (u8 and i8), `DequantizeLinear` and the
//! 256-entry lookup tables tract folds element-wise chains between them into. Every
//! integer graph has them at its edges (the float input is quantized, the output
//! dequantized), so without them no int8 model could go into an archive.
//!
//! Each loads back as the very operator tract made, so an archive runs as the ONNX file
//! it came from did.

use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::{
    quantize_linear_i8, quantize_linear_u8, DequantizeLinearF32, LookupTable, QuantizeLinearI8,
    QuantizeLinearU8,
};
use tract_nnef::internal::*;

use super::qdq::quantize_inverse;
use crate::kernels::q8::quantize::Quantize;

/// Adds the fragments to Perch's registry.
pub(super) fn register(registry: &mut Registry) {
    registry.register_element_wise(
        "perch_quantize",
        std::any::TypeId::of::<QuantizeLinearU8>(),
        Box::new(dump_quantize),
        quantize_params(),
        load_quantize,
    );
    registry.register_element_wise(
        "perch_quantize",
        std::any::TypeId::of::<QuantizeLinearI8>(),
        Box::new(dump_quantize),
        quantize_params(),
        load_quantize,
    );
    registry.register_primitive(
        "perch_quantize",
        &quantize_params(),
        &[("output", TypeName::Integer.tensor())],
        load_quantize,
    );
    registry.register_element_wise(
        "perch_lut",
        std::any::TypeId::of::<LookupTable>(),
        Box::new(dump_lut),
        lut_params(),
        load_lut,
    );
    registry.register_primitive(
        "perch_lut",
        &lut_params(),
        &[("output", TypeName::Integer.tensor())],
        load_lut,
    );
    registry.register_dumper(dump_dequantize);
    registry.register_primitive(
        "perch_dequantize",
        &[
            TypeName::Integer.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            TypeName::Integer.named("zero_point"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_dequantize,
    );
}

fn quantize_params() -> Vec<tract_nnef::ast::Parameter> {
    vec![
        TypeName::Scalar.tensor().named("input"),
        // tract's form: the reciprocal of ONNX's scale, which it multiplies by.
        TypeName::Scalar.named("inverse_scale"),
        TypeName::Integer.named("zero_point"),
        TypeName::String.named("output_type"),
    ]
}

fn lut_params() -> Vec<tract_nnef::ast::Parameter> {
    vec![
        TypeName::Integer.tensor().named("input"),
        TypeName::Integer.tensor().named("table"),
    ]
}

fn dump_quantize(ast: &mut IntoAst, node: &TypedNode) -> TractResult<Option<Arc<RValue>>> {
    node.op_as::<ElementWiseOp>()
        .context("not an element-wise op")?;
    Ok(quantize_inverse(node).map(|q| quantize_invocation(ast, node, q)))
}

/// `perch_quantize` of a node's input: the engine's quantize, and Perch's
/// `PerchQuantize`, which loads back as it.
pub(super) fn quantize_invocation(ast: &IntoAst, node: &TypedNode, q: Quantize) -> Arc<RValue> {
    invocation(
        "perch_quantize",
        &[ast.mapping[&node.inputs[0]].clone()],
        &[
            ("inverse_scale", numeric(q.inverse_scale)),
            ("zero_point", numeric(q.zero_point)),
            ("output_type", string(q.dtype.name())),
        ],
    )
}

fn load_quantize(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
) -> TractResult<Value> {
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let scale: f32 = invocation.named_arg_as(builder, "inverse_scale")?;
    ensure!(
        scale.is_finite() && scale > 0.0,
        "perch_quantize: inverse scale {scale} must be finite and positive"
    );
    let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
    let dtype: String = invocation.named_arg_as(builder, "output_type")?;
    let op = match &*dtype {
        "u8" => quantize_linear_u8(
            scale,
            u8::try_from(zero_point)
                .map_err(|_| format_err!("perch_quantize: u8 zero point {zero_point}"))?,
        ),
        "i8" => quantize_linear_i8(
            scale,
            i8::try_from(zero_point)
                .map_err(|_| format_err!("perch_quantize: i8 zero point {zero_point}"))?,
        ),
        other => bail!("perch_quantize: output type {other:?} (u8 or i8)"),
    };
    builder.wire(op, &[input])
}

fn dump_lut(ast: &mut IntoAst, node: &TypedNode) -> TractResult<Option<Arc<RValue>>> {
    let op = node
        .op_as::<ElementWiseOp>()
        .context("not an element-wise op")?;
    let Some(lut) = op.0.downcast_ref::<LookupTable>() else {
        return Ok(None);
    };
    let input = ast.mapping[&node.inputs[0]].clone();
    let table = Arc::new(tensor1(lut.table.table()));
    let table = ast.konst_variable(format!("{}.table", node.name), &table)?;
    Ok(Some(invocation("perch_lut", &[input, table], &[])))
}

fn load_lut(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let table: Arc<Tensor> = invocation.named_arg_as(builder, "table")?;
    ensure!(
        table.datum_type() == u8::datum_type() && table.shape() == [256],
        "perch_lut: table must be u8 [256], got {:?} {:?}",
        table.datum_type(),
        table.shape()
    );
    let table = table.try_as_plain_ram()?.as_slice::<u8>()?;
    let (op, _) = super::lut::table_op(table, crate::kernels::Cpu::detect())?;
    builder.wire(op, &[input])
}

fn dump_dequantize(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &DequantizeLinearF32,
) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation(
        "perch_dequantize",
        &[input],
        &[
            ("scale", numeric(op.scale)),
            ("zero_point", numeric(op.zero_point)),
        ],
    )))
}

fn load_dequantize(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
) -> TractResult<Value> {
    let input: OutletId = invocation.named_arg_as(builder, "input")?;
    let scale: f32 = invocation.named_arg_as(builder, "scale")?;
    ensure!(
        scale.is_finite() && scale > 0.0,
        "perch_dequantize: scale {scale} must be finite and positive"
    );
    let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
    let zero_point = i32::try_from(zero_point)
        .map_err(|_| format_err!("perch_dequantize: zero point {zero_point}"))?;
    builder.wire(DequantizeLinearF32::new(scale, zero_point), &[input])
}

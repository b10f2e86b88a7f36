//! `PerchQMatMul`: a quantized matrix product with constant weights on
//! [`crate::kernels::q8::gemm`], replacing `DequantizeLinear → EinSum → … →
//! QuantizeLinear`. tract declutters pointwise (1x1) convolutions, ONNX `Gemm` and
//! `MatMul` into `EinSum`, so this is where most multiply-accumulates of a CNN go.
//!
//! The einsum must contract one axis `k` of the activations with a constant 2-D weight
//! (`k` and an output axis `o`), every other axis of the activations passing to the
//! output in order, with `o` anywhere among them; axes of size 1 may appear or vanish
//! anywhere. With `k` innermost the activations are already rows of `k` bytes; otherwise
//! (channels first) each `[k, inner]` block is transposed in scratch. With `o`
//! innermost the kernel writes the output's rows; otherwise each `[inner, m]` block of
//! its rows is transposed into the output's `[m, inner]`. tract lays 1x1 convolutions
//! out every way: channels first on x86, channels last on aarch64, and mixed where the
//! layout changes (`NIHW,OI->HWO`).

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use super::common::{datum, ensure_integers, kernel_op};
use super::fuse::epilogue_after;
use super::kernel_node::{replacement, Considered, KernelNode};
use super::qconv::{integer_weights, quantized_channels};
use super::qdq::{dequantized, output_quantize, usable_input};
use crate::kernels::q8::gemm::Gemm;
use crate::kernels::q8::{ChannelOutput, OutputQuant, QType};
use crate::kernels::transpose::transpose;
use crate::kernels::Cpu;

/// Everything a quantized matrix product is, as written to an NNEF archive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QMatMulSpec {
    /// Inputs and outputs per row.
    pub k: usize,
    /// See `k`.
    pub m: usize,
    /// Elements of the activations after the `k` axis (1 when `k` is innermost).
    pub inner: usize,
    /// The output's shape, each axis `Some(i)` (the activations' axis `i`), or `None`
    /// (the `m` axis, or an axis of size 1 — told apart by `m_axis`).
    pub output_axes: Vec<Option<usize>>,
    /// Where the `m` axis is in the output.
    pub m_axis: usize,
    /// The activations' type and zero point.
    pub input: QType,
    /// See `input`.
    pub input_zero_point: i32,
    /// The output's type, zero point and clamp.
    pub output: OutputQuant,
    /// Weights, `m × k`.
    pub weights: Vec<i8>,
    /// Per output channel: bias with the zero-point correction, requantization.
    pub channels: Vec<ChannelOutput>,
}

/// A quantized matrix product of 8-bit activations with constant weights.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerchQMatMul {
    pub(super) spec: QMatMulSpec,
    gemm: Gemm,
}

const PATTERN: &str = "quantized matmul";

impl PerchQMatMul {
    /// Plans a specification on `cpu`, or says why no kernel covers it.
    pub(super) fn plan(spec: QMatMulSpec, cpu: Cpu) -> Result<PerchQMatMul, String> {
        let gemm = Gemm::plan(
            spec.m,
            spec.k,
            &spec.weights,
            spec.input,
            &spec.channels,
            spec.output,
            cpu,
        )
        .map_err(|e| e.0)?;
        if spec.inner == 0 || spec.m_axis >= spec.output_axes.len() {
            return Err(format!("{spec:?} is not a matrix product"));
        }
        Ok(PerchQMatMul { spec, gemm })
    }

    /// The kernel that runs it.
    pub fn kernel_name(&self) -> &'static str {
        self.gemm.variant().name
    }

    fn detail(&self) -> String {
        let s = &self.spec;
        let columns = |first: bool| if first { "channels first" } else { "rows" };
        format!(
            "{} -> {}, {} -> {}, {} -> {}",
            s.k,
            s.m,
            columns(s.inner != 1),
            columns(s.m_axis + 1 < s.output_axes.len()),
            s.input.name(),
            s.output.dtype.name()
        )
    }

    pub(super) fn report(&self, node: &str, fused: Vec<String>) -> KernelNode {
        KernelNode::planned(node, PATTERN, self.detail(), self.kernel_name(), fused)
    }

    /// Whether the output is a channels-first image `[m, h, w]` or `[n, m, h, w]` (a 1x1
    /// convolution that tract turned into a matrix product).
    pub(super) fn writes_channels_first(&self) -> bool {
        let rank = self.spec.output_axes.len();
        (rank == 3 || rank == 4) && self.spec.m_axis == rank - 3
    }

    /// The same product writing `[.., h, w, m]`: no transpose after the kernel.
    pub(super) fn writing_channels_last(&self) -> PerchQMatMul {
        let mut op = self.clone();
        let m = op.spec.output_axes.remove(op.spec.m_axis);
        op.spec.output_axes.push(m);
        op.spec.m_axis = op.spec.output_axes.len() - 1;
        op
    }

    /// Whether `input` is a channels-first image `[k, h, w]` or `[n, k, h, w]`.
    pub(super) fn reads_channels_first(&self, input: &TypedFact) -> bool {
        let shape: Option<Vec<usize>> = input.shape.iter().map(|d| d.to_usize().ok()).collect();
        let Some(shape) = shape.filter(|s| s.len() == 3 || s.len() == 4) else {
            return false;
        };
        let [k, h, w] = shape[shape.len() - 3..] else {
            return false;
        };
        k == self.spec.k && self.spec.inner != 1 && h * w == self.spec.inner
    }

    /// The same product reading `[.., h, w, k]` (an input of `rank` axes): no transpose
    /// before the kernel. The output is unchanged: its axes name the input's axes after
    /// `k`, which move down by one.
    pub(super) fn reading_channels_last(&self, rank: usize) -> PerchQMatMul {
        let mut op = self.clone();
        op.spec.inner = 1;
        let k_axis = rank - 3;
        for axis in op.spec.output_axes.iter_mut().flatten() {
            if *axis > k_axis {
                *axis -= 1;
            }
        }
        op
    }

    /// The output's shape for an input's, or an error when the specification names an
    /// axis the input does not have (an archive is untrusted input).
    fn output_shape<D: DimLike>(&self, input: &[D]) -> TractResult<TVec<D>> {
        self.spec
            .output_axes
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Some(a) => input.get(*a).cloned().with_context(|| {
                    format!(
                        "PerchQMatMul: output axis {i} is input axis {a}, of {}",
                        input.len()
                    )
                }),
                None if i == self.spec.m_axis => Ok(D::from(self.spec.m)),
                None => Ok(D::one()),
            })
            .collect()
    }
}

kernel_op!(PerchQMatMul, "PerchQMatMul");

thread_local! {
    /// Transposes and padded rows, reused across runs and nodes.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl EvalOp for PerchQMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let s = &self.spec;
        ensure_integers(&x, s.input, "PerchQMatMul", 0)?;
        let len = x.len();
        ensure!(
            len % (s.k * s.inner) == 0,
            "PerchQMatMul planned for {} x {} blocks, got {:?}",
            s.k,
            s.inner,
            x.shape()
        );
        let outer = len / (s.k * s.inner);
        let shape = self.output_shape(x.shape())?;
        let mut output = unsafe { Tensor::uninitialized_dt(datum(s.output.dtype), &shape)? };
        ensure!(
            output.len() == outer * s.inner * s.m,
            "PerchQMatMul: output shape {shape:?}"
        );
        // Elements of the output after its `m` axis: 1 when it is rows.
        let out_inner = shape[s.m_axis + 1..].iter().product::<usize>();
        let x = x.try_as_plain_ram()?.as_bytes();
        let y = output.as_bytes_mut();
        SCRATCH.with(|scratch| self.run(outer, out_inner, x, y, &mut scratch.borrow_mut()))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl PerchQMatMul {
    /// `outer` blocks of `[k, inner]` activations into blocks of `[m, out_inner]`
    /// outputs, through rows of `k` and of `m` where either is not innermost.
    fn run(
        &self,
        outer: usize,
        out_inner: usize,
        x: &[u8],
        y: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> TractResult<()> {
        let s = &self.spec;
        let fail = |e: crate::kernels::q8::Unsupported| format_err!("PerchQMatMul: {}", e.0);
        let rows = outer * s.inner;
        ensure!(
            out_inner > 0 && rows.is_multiple_of(out_inner) && y.len() == rows * s.m,
            "PerchQMatMul: {rows} rows do not make blocks of {out_inner} outputs"
        );
        let in_rows = if s.inner == 1 { 0 } else { x.len() };
        let out_rows = if out_inner == 1 { 0 } else { y.len() };
        let need = in_rows + out_rows + self.gemm.scratch_len(rows);
        if scratch.len() < need {
            scratch.resize(need, 0);
        }
        let (x_rows, rest) = scratch.split_at_mut(in_rows);
        let (y_rows, rest) = rest.split_at_mut(out_rows);
        let x: &[u8] = if s.inner == 1 {
            x
        } else {
            let block = s.k * s.inner;
            for (from, to) in x.chunks_exact(block).zip(x_rows.chunks_exact_mut(block)) {
                transpose(from, s.k, s.inner, to);
            }
            x_rows
        };
        if out_inner == 1 {
            return self.gemm.run(rows, x, y, rest).map_err(fail);
        }
        self.gemm.run(rows, x, y_rows, rest).map_err(fail)?;
        let block = out_inner * s.m;
        for (from, to) in y_rows.chunks_exact(block).zip(y.chunks_exact_mut(block)) {
            transpose(from, out_inner, s.m, to);
        }
        Ok(())
    }
}

impl TypedOp for PerchQMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1, "PerchQMatMul takes one input");
        let shape = self.output_shape(&inputs[0].shape)?;
        Ok(tvec!(datum(self.spec.output.dtype).fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().product::<TDim>() / self.spec.k as i64;
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            rows * (self.spec.k * self.spec.m) as i64
        )))
    }

    as_op!();
}

/// Whether `node` is an einsum with constant weights between quantize/dequantize pairs;
/// if it is, the patch that runs it on integer kernels, or the reason it stays float.
pub(super) fn consider(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> TractResult<Considered> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if node.inputs.len() != 2 || einsum.q_params.is_some() {
        return Ok(None);
    }
    // The activations come from a DequantizeLinear, the weights are a constant.
    let (xi, wi) = if model.outlet_fact(node.inputs[1])?.konst.is_some() {
        (0, 1)
    } else {
        (1, 0)
    };
    let Some((dq_node, dq)) = dequantized(model, node.inputs[xi])? else {
        return Ok(None);
    };
    let (input, x_fact) = (dq.dtype, model.outlet_fact(dq_node.inputs[0])?);
    let detail = format!("{}", einsum.axes);
    let declined = |reason: String| {
        let report = KernelNode::declined(&node.name, PATTERN, detail.clone(), reason);
        Ok(Some((None, report)))
    };
    let Some(weights) = model.outlet_fact(node.inputs[wi])?.konst.clone() else {
        return declined("weights computed at run time".into());
    };
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    let x_shape = &x_fact.shape;
    let dim = |d: &TDim| d.to_usize().ok();
    // Classify the axes, ignoring those of size 1.
    let (mut k_axis, mut m_axes) = (None, None);
    let mut passing = vec![];
    for axis in einsum.axes.iter_all_axes() {
        let (ix, iw, io) = (&axis.inputs[xi], &axis.inputs[wi], &axis.outputs[0]);
        let size = ix
            .first()
            .map(|p| x_shape[*p].clone())
            .or_else(|| iw.first().map(|p| weights.shape()[*p].to_dim()))
            .or_else(|| io.first().map(|p| out_fact.shape[*p].clone()))
            .unwrap_or_else(|| 1.to_dim());
        if ix.len() > 1 || iw.len() > 1 || io.len() > 1 {
            return declined("an axis repeated within one operand".into());
        }
        match (ix.first(), iw.first(), io.first()) {
            (Some(x), Some(w), None) => k_axis = Some((*x, *w)),
            (None, Some(w), Some(o)) => m_axes = Some((*w, *o)),
            (Some(x), None, Some(o)) => passing.push((*x, *o)),
            _ if size.is_one() => {}
            _ => return declined(format!("axis {} is not a matrix product's", axis.repr)),
        }
    }
    let (Some((kx, kw)), Some((mw, mo))) = (k_axis, m_axes) else {
        return declined("no single contracted axis and output axis".into());
    };
    if weights.rank() != 2 || weights.datum_type() != f32::datum_type() {
        return declined("weights not a 2-D f32 constant".into());
    }
    let (k, m) = (weights.shape()[kw], weights.shape()[mw]);
    // Activations: [outer..., k, inner...] with the passing axes in output order and
    // `m` where `k` was.
    let x_rank = x_shape.rank();
    let inner: Option<usize> = x_shape.iter().skip(kx + 1).map(dim).product();
    let Some(inner) = inner else {
        return declined("symbolic axes after the contracted one".into());
    };
    let non_trivial = |axes: Vec<(usize, usize)>| -> Vec<(usize, usize)> {
        axes.into_iter()
            .filter(|(x, _)| !x_shape[*x].is_one())
            .collect()
    };
    let passing = non_trivial(passing);
    let ordered = passing
        .windows(2)
        .all(|w| (w[0].0 < w[1].0) == (w[0].1 < w[1].1));
    if !ordered || kx >= x_rank {
        return declined(format!(
            "axes of {} not laid out as rows or channels-first columns",
            einsum.axes
        ));
    }
    let mut output_axes: Vec<Option<usize>> = vec![None; out_fact.rank()];
    for (x, o) in &passing {
        output_axes[*o] = Some(*x);
    }
    for (o, axis) in output_axes.iter().enumerate() {
        if axis.is_none() && o != mo && !out_fact.shape[o].is_one() {
            return declined("an output axis that is not the activations' nor the weights'".into());
        }
    }
    // Weights as m rows of k.
    let values = weights.try_as_plain_ram()?.as_slice::<f32>()?;
    let rows: Vec<f32> = (0..m)
        .flat_map(|o| (0..k).map(move |i| (o, i)))
        .map(|(o, i)| {
            if mw == 0 {
                values[o * k + i]
            } else {
                values[i * m + o]
            }
        })
        .collect();
    let Some((q_weights, w_scales)) = integer_weights(&rows, k) else {
        return declined("its weights are not int8 values with one scale per output".into());
    };
    let epilogue = epilogue_after(model, OutletId::new(node.id, 0), m, mo)?;
    let (q_node, output_type, sy, zy) = match output_quantize(model, epilogue.end)? {
        Ok(q) => q,
        Err(reason) => return declined(reason),
    };
    let (sx, zx) = (dq.scale, dq.zero_point);
    if let Err(reason) = usable_input(input, sx, zx) {
        return declined(reason);
    }
    let (lo, hi) = epilogue.activation.bounds();
    let output = match OutputQuant::new(output_type, sy, zy, lo, hi) {
        Ok(o) => o,
        Err(e) => return declined(e.0),
    };
    let channels =
        match quantized_channels(input, zx, sx, &q_weights, &w_scales, None, &epilogue, sy) {
            Ok(c) => c,
            Err(reason) => return declined(reason),
        };
    let spec = QMatMulSpec {
        k,
        m,
        inner,
        output_axes,
        m_axis: mo,
        input,
        input_zero_point: zx,
        output,
        weights: q_weights,
        channels,
    };
    let op = match PerchQMatMul::plan(spec, cpu) {
        Ok(op) => op,
        Err(reason) => return declined(reason),
    };
    let q_out = OutletId::new(q_node.id, 0);
    let patch = replacement(model, node, op.clone(), &[dq_node.inputs[0]], q_out)?;
    let mut fused = vec![dq_node.name.clone()];
    fused.extend(epilogue.fused);
    fused.push(q_node.name.clone());
    Ok(Some((Some(patch), op.report(&node.name, fused))))
}

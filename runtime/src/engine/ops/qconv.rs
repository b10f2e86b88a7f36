//! `PerchQConv`: a quantized convolution (pointwise, depthwise or general) on
//! [`crate::kernels::q8`], replacing `DequantizeLinear → Conv → … → QuantizeLinear`.
//!
//! # The pattern
//! ONNX Runtime's `quantize_static` (QDQ) and `perch quantize --mode static` write a
//! quantized convolution as float operators between quantize/dequantize pairs; after
//! tract's declutter it reads
//! `u8 → DequantizeLinear(sx, zx) → Conv(W, B) → [per-channel mul/add] → [max/min] →
//! QuantizeLinear(sy, zy) → u8`, where tract has already folded the weights' and the
//! bias's DequantizeLinear into float constants. The weights are recovered as integers:
//! per output channel `sw = max|W| / 127` and `w = W / sw`, which must be integers in
//! `−127 ..= 127` (as both quantizers write them: symmetric, per channel) or the node
//! stays float. The bias becomes `round(B / (sx · sw))`, ONNX Runtime's own int32 bias.
//!
//! # Execution
//! The kernels are channels last. On channels-first tensors (tract's layout on x86-64)
//! the operator transposes the input into scratch and the output back (the kernels'
//! tiled transpose); general convolutions then copy whole kernel rows of the
//! channels-last image into im2col rows.

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::nn::DataFormat;

use super::common::{datum, ensure_integers, images, kernel_op, padding};
use super::fuse::epilogue_after;
use super::kernel_node::{replacement, Considered, KernelNode};
use super::qdq::{dequantized, output_quantize, usable_input};
use crate::kernels::f32_dwconv::{DwGeometry, Layout};
use crate::kernels::q8::dwconv::QDwConv;
use crate::kernels::q8::gemm::Gemm;
use crate::kernels::q8::im2col;
use crate::kernels::q8::{ChannelOutput, OutputQuant, QType};
use crate::kernels::requant::Scale;
use crate::kernels::transpose::transpose;
use crate::kernels::Cpu;

/// Everything a quantized convolution is, as written to an NNEF archive: the integers
/// and fixed-point constants, not the float scales they came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QConvSpec {
    /// The input's layout: channels first or last.
    pub layout: Layout,
    /// The output's layout: the input's, unless the output goes only to other Perch
    /// integer convolutions, which then take it channels last (`ops::layout`).
    pub output_layout: Layout,
    /// Input channels, output channels, groups (1, or the channels for depthwise).
    pub cin: usize,
    /// See `cin`.
    pub cout: usize,
    /// See `cin`.
    pub group: usize,
    /// Input height and width.
    pub input_hw: [usize; 2],
    /// Filter height and width.
    pub kernel: [usize; 2],
    /// Stride: vertical, horizontal.
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// The input's type and zero point.
    pub input: QType,
    /// See `input`.
    pub input_zero_point: i32,
    /// The output's type, zero point and clamp.
    pub output: OutputQuant,
    /// Filters, `cout × cin/group × kh × kw`.
    pub weights: Vec<i8>,
    /// Per output channel: the quantized bias with the zero-point correction, and the
    /// requantization.
    pub channels: Vec<ChannelOutput>,
}

/// How a planned convolution runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Plan {
    /// 1x1, stride 1, no padding: one matrix product over the pixels.
    Pointwise(Gemm),
    /// One filter per channel.
    Depthwise(QDwConv),
    /// Anything else with one group: im2col rows, then a matrix product.
    General(Gemm, DwGeometry),
}

/// A quantized 2-D convolution of 8-bit tensors, with bias, requantization and clamp.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerchQConv {
    pub(super) spec: QConvSpec,
    geometry: DwGeometry,
    plan: Plan,
}

impl PerchQConv {
    /// Plans a specification on `cpu`, or says why no kernel covers it.
    pub(super) fn plan(spec: QConvSpec, cpu: Cpu) -> Result<PerchQConv, String> {
        let s = &spec;
        let geometry =
            DwGeometry::new(s.cout, s.input_hw, s.kernel, s.stride, s.padding).map_err(|e| e.0)?;
        let taps = s.kernel[0] * s.kernel[1];
        if s.channels.len() != s.cout
            || s.weights.len() != s.cout * (s.cin / s.group.max(1)) * taps
            || s.group == 0
        {
            return Err(format!(
                "{} weights and {} channel constants for {} x {} / {} filters of {}x{}",
                s.weights.len(),
                s.channels.len(),
                s.cout,
                s.cin,
                s.group,
                s.kernel[0],
                s.kernel[1]
            ));
        }
        let plan = if s.group == s.cin && s.cin == s.cout && s.group > 1 {
            Plan::Depthwise(
                QDwConv::plan(
                    geometry,
                    s.input,
                    s.input_zero_point,
                    &s.weights,
                    &s.channels,
                    s.output,
                    cpu,
                )
                .map_err(|e| e.0)?,
            )
        } else if s.group == 1 {
            let pointwise = s.kernel == [1, 1] && s.stride == [1, 1] && s.padding == [0; 4];
            // Filters as rows of (ky, kx, ci): the order of channels-last im2col rows.
            let mut rows = vec![0i8; s.weights.len()];
            for co in 0..s.cout {
                for ci in 0..s.cin {
                    for t in 0..taps {
                        rows[(co * taps + t) * s.cin + ci] =
                            s.weights[(co * s.cin + ci) * taps + t];
                    }
                }
            }
            let k = s.cin * taps;
            let gemm = Gemm::plan(s.cout, k, &rows, s.input, &s.channels, s.output, cpu)
                .map_err(|e| e.0)?;
            if pointwise {
                Plan::Pointwise(gemm)
            } else {
                let im2col = DwGeometry::new(s.cin, s.input_hw, s.kernel, s.stride, s.padding)
                    .map_err(|e| e.0)?;
                Plan::General(gemm, im2col)
            }
        } else {
            return Err(format!(
                "{} groups of {} input and {} output channels (the kernels take one group, or one channel per group)",
                s.group,
                s.cin / s.group,
                s.cout / s.group
            ));
        };
        Ok(PerchQConv {
            spec,
            geometry,
            plan,
        })
    }

    /// The kernel that runs it.
    pub fn kernel_name(&self) -> &'static str {
        match &self.plan {
            Plan::Pointwise(g) | Plan::General(g, _) => g.variant().name,
            Plan::Depthwise(d) => d.variant().name,
        }
    }

    fn kind(&self) -> &'static str {
        match self.plan {
            Plan::Pointwise(_) => "pointwise",
            Plan::Depthwise(_) => "depthwise",
            Plan::General(..) => "im2col",
        }
    }

    pub(super) fn report(&self, node: &str, fused: Vec<String>) -> KernelNode {
        KernelNode::planned(node, PATTERN, self.detail(), self.kernel_name(), fused)
    }

    fn detail(&self) -> String {
        let s = &self.spec;
        let layout = if s.output_layout == s.layout {
            s.layout.name().to_uppercase()
        } else {
            format!(
                "{}->{}",
                s.layout.name().to_uppercase(),
                s.output_layout.name().to_uppercase()
            )
        };
        // "stride 2", or "stride 2x1" where the axes differ.
        let stride = match s.stride {
            [sh, sw] if sh == sw => sh.to_string(),
            [sh, sw] => format!("{sh}x{sw}"),
        };
        format!(
            "{} {} {}x{}x{} -> {} ch, {}x{} stride {}, {} -> {}",
            self.kind(),
            layout,
            s.cin,
            s.input_hw[0],
            s.input_hw[1],
            s.cout,
            s.kernel[0],
            s.kernel[1],
            stride,
            s.input.name(),
            s.output.dtype.name()
        )
    }

    fn image(layout: Layout, channels: usize, [h, w]: [usize; 2]) -> [usize; 3] {
        match layout {
            Layout::Chw => [channels, h, w],
            Layout::Hwc => [h, w, channels],
        }
    }
}

const PATTERN: &str = "quantized conv";

kernel_op!(PerchQConv, "PerchQConv");

thread_local! {
    /// Transposes, im2col rows and padded copies, reused across runs and nodes.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl EvalOp for PerchQConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let s = &self.spec;
        let expected = Self::image(s.layout, s.cin, s.input_hw);
        let shape = x.shape();
        let (images, image) = images(shape);
        ensure!(
            image == expected,
            "PerchQConv planned for {expected:?} images, got {shape:?}"
        );
        ensure_integers(&x, s.input, "PerchQConv", 0)?;
        let out_image = Self::image(s.output_layout, s.cout, self.geometry.output);
        let mut out_shape: TVec<usize> = shape[..shape.len() - 3].into();
        out_shape.extend(out_image);
        let mut output = unsafe { Tensor::uninitialized_dt(datum(s.output.dtype), &out_shape)? };
        let x = x.try_as_plain_ram()?.as_bytes();
        let y = output.as_bytes_mut();
        SCRATCH.with(|scratch| self.run(images, x, y, &mut scratch.borrow_mut()))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl PerchQConv {
    /// Runs every image, transposing a channels-first input to channels last and the
    /// output back when it is channels first.
    fn run(&self, images: usize, x: &[u8], y: &mut [u8], scratch: &mut Vec<u8>) -> TractResult<()> {
        let s = &self.spec;
        let [h, w] = s.input_hw;
        let [ho, wo] = self.geometry.output;
        let (in_len, out_len) = (s.cin * h * w, s.cout * ho * wo);
        let (in_chw, out_chw) = (s.layout == Layout::Chw, s.output_layout == Layout::Chw);
        let fail = |e: crate::kernels::q8::Unsupported| format_err!("PerchQConv: {}", e.0);
        for i in 0..images {
            let x = &x[i * in_len..(i + 1) * in_len];
            let y = &mut y[i * out_len..(i + 1) * out_len];
            // Scratch: [channels-last input | channels-last output | kernel scratch].
            let kernel_scratch = match &self.plan {
                Plan::Pointwise(g) => g.scratch_len(h * w),
                Plan::Depthwise(d) => d.scratch_len(),
                Plan::General(g, g_im2col) => {
                    ho * wo * g.padded_k() + im2col::scratch_len(g_im2col)
                }
            };
            let (in_copy, out_copy) = (
                if in_chw { in_len } else { 0 },
                if out_chw { out_len } else { 0 },
            );
            let need = in_copy + out_copy + kernel_scratch;
            if scratch.len() < need {
                scratch.resize(need, 0);
            }
            let (hwc_in, rest) = scratch.split_at_mut(in_copy);
            let (hwc_out, rest) = rest.split_at_mut(out_copy);
            let x_hwc: &[u8] = if in_chw {
                transpose(x, s.cin, h * w, hwc_in);
                hwc_in
            } else {
                x
            };
            let out: &mut [u8] = if out_chw { hwc_out } else { &mut *y };
            match &self.plan {
                Plan::Pointwise(g) => g.run(h * w, x_hwc, out, rest).map_err(fail)?,
                Plan::Depthwise(d) => d.run(1, x_hwc, out, rest).map_err(fail)?,
                Plan::General(g, g_im2col) => {
                    let kp = g.padded_k();
                    let (rows, padded) = rest.split_at_mut(ho * wo * kp);
                    let pad = s.input_zero_point as u8;
                    im2col::im2col(g_im2col, pad, x_hwc, rows, kp, padded);
                    g.run_padded(ho * wo, rows, kp, out).map_err(fail)?
                }
            }
            if out_chw {
                transpose(hwc_out, ho * wo, s.cout, y);
            }
        }
        Ok(())
    }
}

impl TypedOp for PerchQConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1, "PerchQConv takes one input");
        let rank = inputs[0].rank();
        ensure!(
            rank == 3 || rank == 4,
            "PerchQConv takes images with an optional batch"
        );
        let mut shape: TVec<TDim> = inputs[0].shape.iter().take(rank - 3).cloned().collect();
        shape.extend(
            Self::image(
                self.spec.output_layout,
                self.spec.cout,
                self.geometry.output,
            )
            .map(|d| d.to_dim()),
        );
        Ok(tvec!(datum(self.spec.output.dtype).fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &self.spec;
        let per_image = (s.cout * self.geometry.output[0] * self.geometry.output[1]) as i64
            * (s.cin / s.group * s.kernel[0] * s.kernel[1]) as i64;
        let images: TDim = inputs[0].shape.iter().take(inputs[0].rank() - 3).product();
        Ok(tvec!((Cost::FMA(i32::datum_type()), images * per_image)))
    }

    as_op!();
}

/// Integer filters and their per-output-channel scales from the float constants tract
/// folded them into: for each output channel, the scale `sw = max|W| / a`, `a <= 127`,
/// such that every `W / sw` is an integer within one part in 2^16. Symmetric quantizers
/// give `a = 127`, tried first. A channel whose scale the quantizer floored has a smaller
/// `a` (ONNX Runtime leaves a nearly dead unit of R1's fc2 at `a = 9`, with a bias near
/// the int32 limit); there the smallest `a` that fits is the quantizer's own grid (any
/// multiple of it fits too, and would scale the bias out of the accumulator). `None`
/// when a channel fits no grid (a float layer, or another quantization scheme).
pub(super) fn integer_weights(values: &[f32], per_channel: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    let mut q = Vec::with_capacity(values.len());
    let mut scales = vec![];
    for row in values.chunks(per_channel) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        if !amax.is_finite() {
            return None;
        }
        if amax == 0.0 {
            q.extend(std::iter::repeat_n(0i8, row.len()));
            scales.push(1.0);
            continue;
        }
        let scale = std::iter::once(127u8)
            .chain(1..127)
            .map(|a| amax / f32::from(a))
            .find(|&scale| row.iter().all(|v| on_grid(v / scale)))?;
        q.extend(row.iter().map(|v| (v / scale).round() as i8));
        scales.push(scale);
    }
    Some((q, scales))
}

/// Whether `r` is an integer in `-127..=127` within one part in 2^16.
fn on_grid(r: f32) -> bool {
    let i = r.round();
    (r - i).abs() <= 1.0 / 65536.0 && (-127.0..=127.0).contains(&i)
}

/// Whether `node` is a convolution between quantize/dequantize pairs; if it is, the
/// patch that runs it on integer kernels, or the reason it stays float.
pub(super) fn consider(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> TractResult<Considered> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let Some((dq_node, dq)) = dequantized(model, node.inputs[0])? else {
        return Ok(None);
    };
    let (input, x_fact) = (dq.dtype, model.outlet_fact(dq_node.inputs[0])?);
    let ps = &conv.pool_spec;
    let detail = format!(
        "{} -> {} ch, {:?} filter, group {}",
        conv.input_channels(),
        conv.output_channels(),
        ps.kernel_shape.as_slice(),
        conv.group
    );
    let declined = |reason: String| {
        let report = KernelNode::declined(&node.name, PATTERN, detail.clone(), reason);
        Ok(Some((None, report)))
    };
    // Where the chain ends: the single quantize after the epilogue.
    let (cin, cout, group) = (conv.input_channels(), conv.output_channels(), conv.group);
    let layout = match ps.data_format {
        DataFormat::NCHW | DataFormat::CHW => Layout::Chw,
        DataFormat::NHWC | DataFormat::HWC => Layout::Hwc,
    };
    let shape: Vec<Option<usize>> = x_fact.shape.iter().map(|d| d.to_usize().ok()).collect();
    let rank = shape.len();
    if ps.rank() != 2 || rank != ps.data_format.has_n() as usize + 3 {
        return declined(format!("{}-D convolution (the kernels are 2-D)", ps.rank()));
    }
    let (c_axis, h_axis) = match layout {
        Layout::Chw => (rank - 3, rank - 2),
        Layout::Hwc => (rank - 1, rank - 3),
    };
    let epilogue = epilogue_after(model, OutletId::new(node.id, 0), cout, c_axis)?;
    let (q_node, output_type, sy, zy) = match output_quantize(model, epilogue.end)? {
        Ok(q) => q,
        Err(reason) => return declined(reason),
    };
    let (sx, zx) = (dq.scale, dq.zero_point);
    if let Err(reason) = usable_input(input, sx, zx) {
        return declined(reason);
    }
    if ps.dilations().iter().any(|d| *d != 1) {
        return declined("dilation (the kernels have none)".into());
    }
    let strides = ps.strides();
    let (Some(h), Some(w)) = (shape[h_axis], shape[h_axis + 1]) else {
        return declined("symbolic height or width".into());
    };
    let kernel = [ps.kernel_shape[0], ps.kernel_shape[1]];
    let Some(weights) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return declined("filters computed at run time".into());
    };
    let Some(weights) = oihw(&weights, conv.kernel_fmt, cout, cin / group.max(1), kernel) else {
        return declined(format!(
            "filters {:?} in {:?} unexpected",
            weights.shape(),
            conv.kernel_fmt
        ));
    };
    let per_channel = weights.len() / cout;
    let Some((q_weights, w_scales)) = integer_weights(&weights, per_channel) else {
        return declined(
            "its filters are not int8 values with one scale per output channel".into(),
        );
    };
    let Some(bias) = model.outlet_fact(node.inputs[2])?.konst.clone() else {
        return declined("bias computed at run time".into());
    };
    let bias: Vec<f32> = match bias.try_as_plain_ram()?.as_slice::<f32>() {
        Ok(b) if b.len() == cout => b.to_vec(),
        Ok(b) if b.len() == 1 => vec![b[0]; cout],
        _ => return declined("bias not one f32 per output channel".into()),
    };
    let padding = padding(ps, [h, w]);
    let (lo, hi) = epilogue.activation.bounds();
    let output = match OutputQuant::new(output_type, sy, zy, lo, hi) {
        Ok(o) => o,
        Err(e) => return declined(e.0),
    };
    let channels = match quantized_channels(
        input,
        zx,
        sx,
        &q_weights,
        &w_scales,
        Some(&bias),
        &epilogue,
        sy,
    ) {
        Ok(c) => c,
        Err(reason) => return declined(reason),
    };
    let spec = QConvSpec {
        layout,
        output_layout: layout,
        cin,
        cout,
        group,
        input_hw: [h, w],
        kernel,
        stride: [strides[0], strides[1]],
        padding,
        input,
        input_zero_point: zx,
        output,
        weights: q_weights,
        channels,
    };
    let op = match PerchQConv::plan(spec, cpu) {
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

/// The per-output-channel constants of an integer layer whose real output is
/// `a[o] · (sx · sw[o] · acc + B[o]) + b[o]` (`a`, `b` from the epilogue, `B` the layer's
/// own bias if any), quantized with scale `sy`: `M = a·sx·sw / sy`, and the accumulator's
/// bias `(a·B + b) / (a·sx·sw)` rounded, plus the zero-point correction.
#[allow(clippy::too_many_arguments)]
pub(super) fn quantized_channels(
    input: QType,
    zx: i32,
    sx: f32,
    q_weights: &[i8],
    w_scales: &[f32],
    bias: Option<&[f32]>,
    epilogue: &super::fuse::Epilogue,
    sy: f32,
) -> Result<Vec<ChannelOutput>, String> {
    let outputs = w_scales.len();
    let per_channel = q_weights.len() / outputs.max(1);
    let mut channels = Vec::with_capacity(outputs);
    for o in 0..outputs {
        let a = epilogue.scale[o] as f64;
        let scale = a * sx as f64 * w_scales[o] as f64;
        if scale == 0.0 || !scale.is_finite() {
            return Err(format!("output channel {o} is scaled by {a}"));
        }
        let own = bias.map_or(0.0, |b| b[o] as f64);
        let b = (a * own + epilogue.shift[o] as f64) / scale;
        let row = &q_weights[o * per_channel..(o + 1) * per_channel];
        let sum: i64 = row.iter().map(|w| *w as i64).sum();
        // Every partial sum of a kernel stays within |bias| + Σ|w| · 255 (plus 128 · |Σw|
        // for kernels that shift signed activations to unsigned ones): that must fit
        // 32 bits. ONNX Runtime's biases can sit near the limit (a dead unit of R1).
        let reach = row.iter().map(|w| (*w as i64).abs()).sum::<i64>() * 255 + 128 * sum.abs();
        if !b.is_finite() || b.abs() + reach as f64 >= i32::MAX as f64 {
            return Err(format!(
                "output channel {o}: bias {b} does not fit the accumulator"
            ));
        }
        let correction = input.offset(zx) as i64 * sum;
        // ONNX Runtime's own f32 arithmetic where nothing is folded in, so that both
        // round the same products the same way (`kernels::requant`).
        let multiplier = if a == 1.0 {
            Scale::of_quantization(sx, w_scales[o], sy)
        } else {
            Scale::new(scale / sy as f64)
        }
        .ok_or_else(|| format!("output channel {o}: requantization scale out of range"))?;
        let bias = i32::try_from(b.round() as i64 + correction)
            .map_err(|_| format!("output channel {o}: bias does not fit the accumulator"))?;
        channels.push(ChannelOutput {
            bias,
            scale: multiplier,
        });
    }
    Ok(channels)
}

/// Filters as f32 `[cout, cin_per_group, kh, kw]` values, whatever the format tract
/// holds them in.
fn oihw(
    weights: &Tensor,
    format: KernelFormat,
    cout: usize,
    cin: usize,
    [kh, kw]: [usize; 2],
) -> Option<Vec<f32>> {
    if weights.datum_type() != f32::datum_type() {
        return None;
    }
    let values = weights.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
    let index: Box<dyn Fn(usize, usize, usize, usize) -> usize> = match (format, weights.shape()) {
        (KernelFormat::OIHW, s) if s == [cout, cin, kh, kw] => {
            Box::new(|o, i, y, x| ((o * cin + i) * kh + y) * kw + x)
        }
        (KernelFormat::HWIO, s) if s == [kh, kw, cin, cout] => {
            Box::new(|o, i, y, x| ((y * kw + x) * cin + i) * cout + o)
        }
        (KernelFormat::OHWI, s) if s == [cout, kh, kw, cin] => {
            Box::new(|o, i, y, x| ((o * kh + y) * kw + x) * cin + i)
        }
        _ => return None,
    };
    let mut out = Vec::with_capacity(cout * cin * kh * kw);
    for o in 0..cout {
        for i in 0..cin {
            for y in 0..kh {
                for x in 0..kw {
                    out.push(values[index(o, i, y, x)]);
                }
            }
        }
    }
    Some(out)
}

//! `PerchDwConv`: a depthwise convolution on [`crate::kernels::f32_dwconv`].

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::nn::DataFormat;

use super::common::padding;
use super::fuse::epilogue_after;
use super::kernel_node::{Considered, KernelNode};
use crate::kernels::f32_dwconv::{DwConv, DwGeometry, Layout};
use crate::kernels::{Activation, Cpu};

/// A depthwise convolution of an `f32` tensor, channels first (`[N, C, H, W]` or
/// `[C, H, W]`) or last (`[N, H, W, C]` or `[H, W, C]`), with bias and a clamp fused.
///
/// Inputs: the data (a leading `N` may be symbolic), the filters `[C, 1, kh, kw]` and
/// the bias `[C]`. The kernel variant is planned for the CPU the model is loaded on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerchDwConv {
    pub(super) conv: DwConv,
}

impl PerchDwConv {
    /// Plans the operator for a geometry and activation on `cpu`.
    pub(super) fn plan(
        geometry: DwGeometry,
        layout: Layout,
        activation: Activation,
        cpu: Cpu,
    ) -> Result<PerchDwConv, String> {
        DwConv::plan(geometry, layout, activation, cpu)
            .map(|conv| PerchDwConv { conv })
            .map_err(|e| e.0)
    }

    /// The planned kernel.
    pub fn kernel(&self) -> &DwConv {
        &self.conv
    }

    /// An image's shape in the planned layout, for a height and width.
    fn image_shape(&self, [h, w]: [usize; 2]) -> [usize; 3] {
        let c = self.conv.geometry().channels;
        match self.conv.layout() {
            Layout::Chw => [c, h, w],
            Layout::Hwc => [h, w, c],
        }
    }

    pub(super) fn report(&self, node: &str, fused: Vec<String>) -> KernelNode {
        let conv = &self.conv;
        let detail = detail(conv.geometry(), conv.layout(), conv.activation());
        KernelNode::planned(node, PATTERN, detail, conv.variant().name, fused)
    }
}

const PATTERN: &str = "depthwise conv";

fn detail(g: &DwGeometry, layout: Layout, activation: Activation) -> String {
    let [t, l, b, r] = g.padding;
    format!(
        "{} {} ch {}x{} -> {}x{}, {}x{} stride {}, pad {t},{l},{b},{r}, {}",
        layout.name().to_uppercase(),
        g.channels,
        g.input[0],
        g.input[1],
        g.output[0],
        g.output[1],
        g.kernel[0],
        g.kernel[1],
        g.stride[0],
        activation.name()
    )
}

impl Op for PerchDwConv {
    fn name(&self) -> StaticName {
        "PerchDwConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![
            self.conv.variant().name.to_string(),
            detail(
                self.conv.geometry(),
                self.conv.layout(),
                self.conv.activation(),
            ),
        ])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

thread_local! {
    /// The kernel's scratch, grown to the largest plane any depthwise node of this
    /// thread has needed and reused: runs allocate nothing once warm.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl EvalOp for PerchDwConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, w, b) = args_3!(inputs);
        let g = self.conv.geometry();
        let shape = x.shape();
        let (images, image) = super::common::images(shape);
        let expected = self.image_shape(g.input);
        ensure!(
            image == expected,
            "PerchDwConv planned for {expected:?} images, got {shape:?}"
        );
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let w = w.try_as_plain_ram()?.as_slice::<f32>()?;
        let b = b.try_as_plain_ram()?.as_slice::<f32>()?;
        let out = self.image_shape(g.output);
        let mut output = if shape.len() == 4 {
            unsafe { Tensor::uninitialized::<f32>(&[images, out[0], out[1], out[2]])? }
        } else {
            unsafe { Tensor::uninitialized::<f32>(&out)? }
        };
        {
            let mut view = output.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            SCRATCH.with(|scratch| -> TractResult<()> {
                let mut scratch = scratch.borrow_mut();
                if scratch.len() < self.conv.scratch_len() {
                    scratch.resize(self.conv.scratch_len(), 0.0);
                }
                self.conv
                    .run(images, x, w, Some(b), out, &mut scratch)
                    .map_err(|e| format_err!("PerchDwConv: {e}"))
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for PerchDwConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.conv.geometry();
        ensure!(
            inputs.len() == 3,
            "PerchDwConv takes data, filters and bias"
        );
        ensure!(inputs[0].datum_type == f32::datum_type());
        let rank = inputs[0].rank();
        ensure!(
            rank == 3 || rank == 4,
            "PerchDwConv takes images with an optional batch"
        );
        ensure!(
            inputs[1].shape.volume() == g.weights_len().to_dim()
                && inputs[2].shape.volume() == g.channels.to_dim(),
            "PerchDwConv planned for {} filters of {}x{} and {} biases, given {:?} and {:?}",
            g.channels,
            g.kernel[0],
            g.kernel[1],
            g.channels,
            inputs[1].shape,
            inputs[2].shape
        );
        let mut shape: TVec<TDim> = inputs[0].shape.iter().take(rank - 3).cloned().collect();
        shape.extend(self.image_shape(g.output).map(|d| d.to_dim()));
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let per_image = self.conv.geometry().macs() as i64;
        let images: TDim = inputs[0].shape.iter().take(inputs[0].rank() - 3).product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), images * per_image)))
    }

    as_op!();
}

/// Whether `node` is a depthwise convolution; if it is, the patch that puts a
/// `PerchDwConv` in its place (with the clamp after it fused), or the reason it stays.
pub(super) fn consider(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> TractResult<Considered> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    if conv.group <= 1 {
        return Ok(None);
    }
    let c = conv.input_channels();
    let x_fact = model.outlet_fact(node.inputs[0])?;
    let shape: Vec<Option<usize>> = x_fact.shape.iter().map(|d| d.to_usize().ok()).collect();
    let declined = |detail, reason| KernelNode::declined(&node.name, PATTERN, detail, reason);
    let ps = &conv.pool_spec;
    let summary = format!(
        "{c} ch, {:?} filter, strides {:?}, dilations {:?}",
        ps.kernel_shape.as_slice(),
        ps.strides().as_ref(),
        ps.dilations().as_ref()
    );
    let refuse = |reason: &str| Ok(Some((None, declined(summary.clone(), reason.into()))));
    if conv.group != c || conv.output_channels() != c {
        return refuse(&format!(
            "{} groups of {} input and {} output channels (the kernel takes one of each)",
            conv.group,
            c / conv.group,
            conv.output_channels() / conv.group
        ));
    }
    if conv.q_params.is_some() || x_fact.datum_type != f32::datum_type() {
        return refuse(&format!(
            "{:?} data (the float kernel takes f32)",
            x_fact.datum_type
        ));
    }
    let layout = match ps.data_format {
        DataFormat::NCHW | DataFormat::CHW => Layout::Chw,
        DataFormat::NHWC | DataFormat::HWC => Layout::Hwc,
    };
    let rank = shape.len();
    if ps.rank() != 2 || rank != ps.data_format.has_n() as usize + 3 {
        return refuse(&format!("{}-D convolution (the kernel is 2-D)", ps.rank()));
    }
    // Where the channels and the rows are.
    let (c_axis, h_axis) = match layout {
        Layout::Chw => (rank - 3, rank - 2),
        Layout::Hwc => (rank - 1, rank - 3),
    };
    if ps.dilations().iter().any(|d| *d != 1) {
        return refuse("dilation (the kernel has none)");
    }
    let strides = ps.strides();
    if strides[0] != strides[1] {
        return refuse(&format!(
            "strides {}x{} (the kernel takes equal strides)",
            strides[0], strides[1]
        ));
    }
    let (Some(h), Some(w)) = (shape[h_axis], shape[h_axis + 1]) else {
        return refuse("symbolic height or width");
    };
    let kernel = [ps.kernel_shape[0], ps.kernel_shape[1]];
    let Some(weights) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return refuse("filters computed at run time");
    };
    let Some(weights) = filters_per_channel(&weights, conv.kernel_fmt, c, kernel) else {
        return refuse(&format!(
            "filters of {:?} {:?} in {:?} (expected f32, one {}x{} filter per channel)",
            weights.datum_type(),
            weights.shape(),
            conv.kernel_fmt,
            kernel[0],
            kernel[1]
        ));
    };
    let Some(mut bias) = bias_values(model, node.inputs[2], c)? else {
        return refuse("bias computed at run time, or not one per channel");
    };
    let pads = ps.computed_padding(&[h, w]);
    let padding = padding(ps, [h, w]);
    let geometry = match DwGeometry::new(c, [h, w], kernel, [strides[0], strides[1]], padding) {
        Ok(g) => g,
        Err(e) => return refuse(&e.0),
    };
    if geometry.output != [pads[0].convoluted, pads[1].convoluted] {
        return refuse(&format!(
            "output {}x{} where the engine computes {}x{}",
            geometry.output[0], geometry.output[1], pads[0].convoluted, pads[1].convoluted
        ));
    }
    let epilogue = epilogue_after(model, OutletId::new(node.id, 0), c, c_axis)?;
    let op = match PerchDwConv::plan(geometry, layout, epilogue.activation, cpu) {
        Ok(op) => op,
        Err(reason) => {
            return Ok(Some((
                None,
                declined(detail(&geometry, layout, epilogue.activation), reason),
            )))
        }
    };
    // The slopes of a batch normalization scale the filters and the bias.
    let mut weights = weights;
    let taps = kernel[0] * kernel[1];
    scale_channels(&mut weights, taps, |ch, v| v * epilogue.scale[ch])?;
    scale_channels(&mut bias, 1, |ch, b| {
        b * epilogue.scale[ch] + epilogue.shift[ch]
    })?;
    let mut patch = TypedModelPatch::new(format!("perch {}", node.name));
    let x = patch.tap_model(model, node.inputs[0])?;
    let w = patch.add_const(format!("{}.filters", node.name), weights)?;
    let b = patch.add_const(format!("{}.bias", node.name), bias)?;
    let out = patch.wire_node(&node.name, op.clone(), &[x, w, b])?[0];
    patch.shunt_outside(model, epilogue.end, out)?;
    Ok(Some((Some(patch), op.report(&node.name, epilogue.fused))))
}

/// The depthwise filters as an f32 `[c, 1, kh, kw]` tensor, whatever the format tract
/// holds them in; `None` when they are not one `kh × kw` filter per channel.
fn filters_per_channel(
    weights: &Tensor,
    format: KernelFormat,
    c: usize,
    [kh, kw]: [usize; 2],
) -> Option<Tensor> {
    if weights.datum_type() != f32::datum_type() {
        return None;
    }
    let values = weights.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
    // Index of channel ch, tap (y, x) in each format.
    let index: Box<dyn Fn(usize, usize, usize) -> usize> = match (format, weights.shape()) {
        (KernelFormat::OIHW, s) if s == [c, 1, kh, kw] => {
            Box::new(|ch, y, x| (ch * kh + y) * kw + x)
        }
        (KernelFormat::HWIO, s) if s == [kh, kw, 1, c] => {
            Box::new(|ch, y, x| (y * kw + x) * c + ch)
        }
        (KernelFormat::OHWI, s) if s == [c, kh, kw, 1] => {
            Box::new(|ch, y, x| (ch * kh + y) * kw + x)
        }
        _ => return None,
    };
    let mut out = vec![0f32; c * kh * kw];
    for ch in 0..c {
        for y in 0..kh {
            for x in 0..kw {
                out[(ch * kh + y) * kw + x] = values[index(ch, y, x)];
            }
        }
    }
    Tensor::from_shape(&[c, 1, kh, kw], &out).ok()
}

/// Applies `f(channel, value)` to every value of an f32 tensor holding `per` values per
/// channel, channel-major.
fn scale_channels(
    tensor: &mut Tensor,
    per: usize,
    f: impl Fn(usize, f32) -> f32,
) -> TractResult<()> {
    let mut view = tensor.try_as_plain_ram_mut()?;
    for (ch, values) in view
        .as_slice_mut::<f32>()?
        .chunks_exact_mut(per)
        .enumerate()
    {
        values.iter_mut().for_each(|v| *v = f(ch, *v));
    }
    Ok(())
}

/// The bias as a `[c]` f32 tensor, when it is a constant with one value per channel or
/// one value for all.
fn bias_values(model: &TypedModel, outlet: OutletId, c: usize) -> TractResult<Option<Tensor>> {
    let Some(konst) = model.outlet_fact(outlet)?.konst.clone() else {
        return Ok(None);
    };
    if konst.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let values = konst.try_as_plain_ram()?.as_slice::<f32>()?;
    Ok(match values.len() {
        n if n == c => Some(tensor1(values)),
        1 => Some(tensor1(&vec![values[0]; c])),
        _ => None,
    })
}

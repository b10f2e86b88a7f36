//! `PerchQAdd`: the sum of two quantized tensors on [`crate::kernels::q8::add`],
//! replacing `DequantizeLinear(a) + DequantizeLinear(b) → QuantizeLinear`: the
//! residual connections of MobileNetV2-style networks, as quantizers write them.
//!
//! The kernel's arithmetic is the float graph's, so the bytes are those of the nodes
//! it replaces. Being element-wise, it runs in any layout; what it needs to know is
//! whether its tensors are images and, if so, which of them are channels last
//! (`ops::layout` switches the tensors between Perch's integer operators to channels
//! last, the residual sums included). An input whose layout differs from the output's
//! is transposed in scratch first.

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::Add;

use super::common::{datum, ensure_integers, kernel_op};
use super::kernel_node::{replacement, Considered, KernelNode};
use super::qdq::{dequantized, single_quantize};
use crate::kernels::f32_dwconv::Layout;
use crate::kernels::q8::add::{Operand, QAdd};
use crate::kernels::q8::quantize::Quantize;
use crate::kernels::transpose::transpose;
use crate::kernels::Cpu;

/// Everything the operator is, as written to an NNEF archive.
#[derive(Debug, Clone, PartialEq)]
pub struct QAddSpec {
    /// The inputs' types, zero points and scales.
    pub a: Operand,
    /// See `a`.
    pub b: Operand,
    /// The output's quantization.
    pub output: Quantize,
    /// Channels, height and width when the tensors are images (`[c, h, w]` or `[n, c,
    /// h, w]` as the model declares them), else `None`.
    pub image: Option<[usize; 3]>,
    /// The layouts of `a`, `b` and the output, when they are images: channels first as
    /// declared, or switched to channels last.
    pub layouts: [Layout; 3],
}

/// The quantized sum of two tensors of the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PerchQAdd {
    pub(super) spec: QAddSpec,
    add: QAdd,
}

// Equality is total: a planned operator's scales are finite.
impl Eq for PerchQAdd {}

const PATTERN: &str = "quantized add";

impl PerchQAdd {
    /// Plans a specification on `cpu`, or says why no kernel covers it.
    pub(super) fn plan(spec: QAddSpec, cpu: Cpu) -> Result<PerchQAdd, String> {
        if spec.image.is_none() && spec.layouts != [Layout::Chw; 3] {
            return Err("layouts given for tensors that are not images".into());
        }
        let add = QAdd::plan(spec.a, spec.b, spec.output, cpu).map_err(|e| e.0)?;
        Ok(PerchQAdd { spec, add })
    }

    /// The kernel that runs it.
    pub fn kernel_name(&self) -> &'static str {
        self.add.variant().name
    }

    pub(super) fn report(&self, node: &str, fused: Vec<String>) -> KernelNode {
        KernelNode::planned(node, PATTERN, self.detail(), self.kernel_name(), fused)
    }

    fn detail(&self) -> String {
        let s = &self.spec;
        let shape = match s.image {
            Some([c, h, w]) => {
                let [a, b, y] = s.layouts.map(|l| l.name().to_uppercase());
                let layouts = if a == b && b == y {
                    y
                } else {
                    format!("{a}+{b}->{y}")
                };
                format!("{layouts} {c}x{h}x{w}, ")
            }
            None => String::new(),
        };
        format!(
            "{shape}{} + {} -> {}",
            s.a.dtype.name(),
            s.b.dtype.name(),
            s.output.dtype.name()
        )
    }

    /// Whether the tensors are images with input `slot` (0, 1; 2 for the output)
    /// channels first, which the layout pass can switch.
    pub(super) fn channels_first(&self, slot: usize) -> bool {
        self.spec.image.is_some() && self.spec.layouts[slot] == Layout::Chw
    }

    /// The same sum with tensors `slots` channels last.
    pub(super) fn with_channels_last(&self, slots: &[usize]) -> PerchQAdd {
        let mut op = self.clone();
        for slot in slots {
            op.spec.layouts[*slot] = Layout::Hwc;
        }
        op
    }

    /// Tensor `slot`'s image axes in its layout, when the tensors are images.
    fn image_axes(&self, slot: usize) -> Option<[usize; 3]> {
        let [c, h, w] = self.spec.image?;
        Some(match self.spec.layouts[slot] {
            Layout::Chw => [c, h, w],
            Layout::Hwc => [h, w, c],
        })
    }

    /// The shape of tensor `slot`, from the first input's.
    fn shape_of<D: DimLike>(&self, first: &[D], slot: usize) -> TVec<D> {
        match self.image_axes(slot) {
            Some(image) => {
                let batch = &first[..first.len().saturating_sub(3)];
                batch.iter().cloned().chain(image.map(D::from)).collect()
            }
            None => first.into(),
        }
    }
}

kernel_op!(PerchQAdd, "PerchQAdd");

thread_local! {
    /// Inputs transposed to the output's layout, reused across runs and nodes.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl EvalOp for PerchQAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let s = &self.spec;
        ensure_integers(&a, s.a.dtype, "PerchQAdd", 0)?;
        ensure_integers(&b, s.b.dtype, "PerchQAdd", 1)?;
        ensure!(
            self.spec.image.is_none() || a.rank() == 3 || a.rank() == 4,
            "PerchQAdd planned for images, got {:?}",
            a.shape()
        );
        for (slot, x) in [&a, &b].into_iter().enumerate() {
            let expected = self.shape_of(a.shape(), slot);
            ensure!(
                x.shape() == &*expected,
                "PerchQAdd planned for input {slot} of shape {expected:?}, got {:?}",
                x.shape()
            );
        }
        let out_shape = self.shape_of(a.shape(), 2);
        let mut output = unsafe { Tensor::uninitialized_dt(datum(s.output.dtype), &out_shape)? };
        let (a, b) = (
            a.try_as_plain_ram()?.as_bytes(),
            b.try_as_plain_ram()?.as_bytes(),
        );
        let y = output.as_bytes_mut();
        SCRATCH.with(|scratch| self.run(a, b, y, &mut scratch.borrow_mut()))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl PerchQAdd {
    /// Adds, transposing first each input whose layout is not the output's.
    fn run(&self, a: &[u8], b: &[u8], y: &mut [u8], scratch: &mut Vec<u8>) -> TractResult<()> {
        let [la, lb, ly] = self.spec.layouts;
        let fail = |e: crate::kernels::q8::Unsupported| format_err!("PerchQAdd: {}", e.0);
        let (Some([c, h, w]), false) = (self.spec.image, la == ly && lb == ly) else {
            return self.add.run(a, b, y).map_err(fail);
        };
        let image = c * h * w;
        if scratch.len() < 2 * y.len() {
            scratch.resize(2 * y.len(), 0);
        }
        let (sa, sb) = scratch.split_at_mut(y.len());
        let relaid = |x: &'_ [u8], from: Layout, into: &'_ mut [u8]| -> bool {
            if from == ly {
                return false;
            }
            for (src, dst) in x.chunks_exact(image).zip(into.chunks_exact_mut(image)) {
                match from {
                    Layout::Chw => transpose(src, c, h * w, dst),
                    Layout::Hwc => transpose(src, h * w, c, dst),
                }
            }
            true
        };
        let a = if relaid(a, la, sa) { &*sa } else { a };
        let b = if relaid(b, lb, &mut sb[..]) {
            &sb[..]
        } else {
            b
        };
        self.add.run(a, b, y).map_err(fail)
    }
}

impl TypedOp for PerchQAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2, "PerchQAdd takes two inputs");
        let declared = &inputs[0].shape;
        if self.spec.image.is_some() {
            ensure!(
                declared.rank() == 3 || declared.rank() == 4,
                "PerchQAdd planned for images, got rank {}",
                declared.rank()
            );
        }
        let shape = self.shape_of(declared.as_ref(), 2);
        Ok(tvec!(datum(self.spec.output.dtype).fact(shape)))
    }

    as_op!();
}

/// Whether `node` is a sum of two dequantized tensors, quantized; if it is, the patch
/// that runs it on the integer kernel, or the reason it stays float.
pub(super) fn consider(model: &TypedModel, node: &TypedNode, cpu: Cpu) -> TractResult<Considered> {
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !bin.0.is::<Add>() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (Some((dq_a, a)), Some((dq_b, b))) = (
        dequantized(model, node.inputs[0])?,
        dequantized(model, node.inputs[1])?,
    ) else {
        return Ok(None);
    };
    let sum = OutletId::new(node.id, 0);
    let shape = model.outlet_fact(sum)?.shape.clone();
    let detail = format!("{shape:?}, {} + {}", a.dtype.name(), b.dtype.name());
    let declined = |reason: String| {
        let report = KernelNode::declined(&node.name, PATTERN, detail.clone(), reason);
        Ok(Some((None, report)))
    };
    let Some((q_node, output)) = single_quantize(model, sum)? else {
        return declined("its sum is not quantized (no single QuantizeLinear after it)".into());
    };
    let same = [dq_a.inputs[0], dq_b.inputs[0]]
        .iter()
        .map(|o| model.outlet_fact(*o).map(|f| f.shape.clone()))
        .collect::<TractResult<Vec<_>>>()?;
    if same[0] != shape || same[1] != shape {
        return declined(format!(
            "inputs {:?} and {:?} broadcast (the kernel adds tensors of one shape)",
            same[0], same[1]
        ));
    }
    // An image: rank 3 or 4, its last three axes known (a batch axis may be symbolic).
    let dims: Option<Vec<usize>> = (shape.rank() == 3 || shape.rank() == 4)
        .then(|| {
            shape
                .iter()
                .skip(shape.rank() - 3)
                .map(|d| d.to_usize().ok())
                .collect()
        })
        .flatten();
    let image = dims.map(|d| [d[0], d[1], d[2]]);
    let spec = QAddSpec {
        a,
        b,
        output,
        image,
        layouts: [Layout::Chw; 3],
    };
    let op = match PerchQAdd::plan(spec, cpu) {
        Ok(op) => op,
        Err(reason) => return declined(reason),
    };
    let inputs = [dq_a.inputs[0], dq_b.inputs[0]];
    let patch = replacement(
        model,
        node,
        op.clone(),
        &inputs,
        OutletId::new(q_node.id, 0),
    )?;
    let fused = vec![dq_a.name.clone(), dq_b.name.clone(), q_node.name.clone()];
    Ok(Some((Some(patch), op.report(&node.name, fused))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::q8::QType;

    /// `[c, h, w]` bytes as `[h, w, c]`.
    fn hwc(x: &[u8], [c, h, w]: [usize; 3]) -> Vec<u8> {
        let mut y = vec![0; x.len()];
        for ci in 0..c {
            for p in 0..h * w {
                y[p * c + ci] = x[ci * h * w + p];
            }
        }
        y
    }

    #[test]
    fn inputs_in_another_layout_than_the_output_are_transposed_first() {
        let image = [19, 3, 5];
        let n = 19 * 3 * 5 * 2;
        let a: Vec<u8> = (0..n).map(|i| (i * 31 + 5) as u8).collect();
        let b: Vec<u8> = (0..n).map(|i| (i * 17 + 200) as u8).collect();
        let operand = |zero_point, scale| Operand {
            dtype: QType::U8,
            zero_point,
            scale,
        };
        let spec = |layouts| QAddSpec {
            a: operand(120, 0.02),
            b: operand(3, 0.011),
            output: Quantize {
                dtype: QType::U8,
                zero_point: 128,
                inverse_scale: 40.0,
            },
            image: Some(image),
            layouts,
        };
        let run = |layouts, a: &[u8], b: &[u8]| {
            let op = PerchQAdd::plan(spec(layouts), Cpu::detect()).unwrap();
            let mut y = vec![0; n];
            op.run(a, b, &mut y, &mut vec![]).unwrap();
            y
        };
        let per_image =
            |x: &[u8]| -> Vec<u8> { x.chunks(n / 2).flat_map(|i| hwc(i, image)).collect() };
        let (chw, hwc_) = (Layout::Chw, Layout::Hwc);
        let planar = run([chw; 3], &a, &b);
        assert_eq!(
            run([hwc_; 3], &per_image(&a), &per_image(&b)),
            per_image(&planar)
        );
        assert_eq!(
            run([chw, hwc_, hwc_], &a, &per_image(&b)),
            per_image(&planar)
        );
        assert_eq!(run([hwc_, chw, chw], &per_image(&a), &b), planar);
        assert_eq!(run([chw, chw, hwc_], &a, &b), per_image(&planar));
    }

    #[test]
    fn layouts_for_tensors_that_are_not_images_are_refused() {
        let operand = Operand {
            dtype: QType::I8,
            zero_point: 0,
            scale: 0.1,
        };
        let spec = QAddSpec {
            a: operand,
            b: operand,
            output: Quantize {
                dtype: QType::I8,
                zero_point: 0,
                inverse_scale: 10.0,
            },
            image: None,
            layouts: [Layout::Chw, Layout::Hwc, Layout::Chw],
        };
        assert!(PerchQAdd::plan(spec, Cpu::detect()).is_err());
    }
}

//! Finding the element-wise nodes after an operator that a kernel can apply itself.
//!
//! After a convolution, an unfolded batch normalization (`mul` by a per-channel slope,
//! `add` of a per-channel intercept) and ReLU, ReLU6 or `Clip` (`max`/`min` with a
//! constant) are common: tract declutters BatchNormalization into that form and does
//! not always fold it into the convolution. A kernel with a per-channel bias and a
//! clamp can apply all of it: the slopes scale its filters and bias, the intercepts
//! add to the bias, the bounds become its clamp.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Add, Max, Min, Mul};

use crate::kernels::Activation;

/// What follows an outlet that a kernel can take over.
pub(super) struct Epilogue {
    /// Per-channel factors for the filters and the bias (all 1 when none).
    pub scale: Vec<f32>,
    /// Per-channel terms added to the bias after scaling.
    pub shift: Vec<f32>,
    /// The clamp at the end.
    pub activation: Activation,
    /// The outlet that now ends the chain: the kernel's output replaces it.
    pub end: OutletId,
    /// The names of the nodes taken over.
    pub fused: Vec<String>,
}

/// Follows `outlet`, a tensor with `channels` channels on axis `channel_axis`, through
/// `mul`/`add` by per-channel constants, then `max`/`min` by uniform constants, as long
/// as each link is the only reader of the one before, is not a model output and keeps
/// the tensor's shape.
pub(super) fn epilogue_after(
    model: &TypedModel,
    outlet: OutletId,
    channels: usize,
    channel_axis: usize,
) -> TractResult<Epilogue> {
    let (epilogue, lo, hi) = follow(model, outlet, channels, channel_axis, true)?;
    match Activation::from_bounds(lo, hi) {
        Some(activation) => Ok(Epilogue {
            activation,
            ..epilogue
        }),
        // `max` then `min` with lo > hi is a constant, which no clamp expresses: take
        // the chain only up to its clamp.
        None => Ok(follow(model, outlet, channels, channel_axis, false)?.0),
    }
}

/// The chain after `outlet` and its clamp bounds (infinite without one).
fn follow(
    model: &TypedModel,
    outlet: OutletId,
    channels: usize,
    channel_axis: usize,
    clamps: bool,
) -> TractResult<(Epilogue, f32, f32)> {
    let mut scale = vec![1f32; channels];
    let mut shift = vec![0f32; channels];
    let (mut lo, mut hi) = (f32::NEG_INFINITY, f32::INFINITY);
    let mut end = outlet;
    let mut fused = vec![];
    let shape = model.outlet_fact(outlet)?.shape.clone();
    while let [reader] = model.outlet_successors(end) {
        let next = model.node(reader.node);
        let Some(bin) = next.op_as::<TypedBinOp>() else {
            break;
        };
        if model.output_outlets()?.contains(&end)
            || model.outlet_fact(OutletId::new(next.id, 0))?.shape != shape
        {
            break;
        }
        let other = next.inputs[1 - reader.slot];
        // Affine links must come before the clamp: the kernel clamps last.
        let affine = lo == f32::NEG_INFINITY && hi == f32::INFINITY;
        let is_mul = bin.0.is::<Mul>();
        if affine && (is_mul || bin.0.is::<Add>()) {
            let Some(k) = per_channel(model, other, shape.rank(), channels, channel_axis)? else {
                break;
            };
            for c in 0..channels {
                if is_mul {
                    scale[c] *= k[c];
                    shift[c] *= k[c];
                } else {
                    shift[c] += k[c];
                }
            }
        } else if clamps && (bin.0.is::<Max>() || bin.0.is::<Min>()) {
            let Some(bound) = uniform(model, other)?.filter(|b| b.is_finite()) else {
                break;
            };
            if bin.0.is::<Max>() {
                lo = lo.max(bound);
            } else {
                hi = hi.min(bound);
            }
        } else {
            break;
        }
        fused.push(next.name.clone());
        end = OutletId::new(next.id, 0);
    }
    let epilogue = Epilogue {
        scale,
        shift,
        activation: Activation::None,
        end,
        fused,
    };
    Ok((epilogue, lo, hi))
}

/// A constant `f32` outlet that broadcasts along every axis but the channel axis of a
/// rank-`rank` tensor, as one value per channel.
fn per_channel(
    model: &TypedModel,
    outlet: OutletId,
    rank: usize,
    channels: usize,
    channel_axis: usize,
) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    let Some(values) = const_f32(fact) else {
        return Ok(None);
    };
    let shape = fact.shape.as_concrete().unwrap_or(&[]);
    if shape.len() > rank {
        return Ok(None);
    }
    // Right-aligned against the tensor: every axis 1 but the channel axis.
    let offset = rank - shape.len();
    let mut along_channels = false;
    for (i, d) in shape.iter().enumerate() {
        match (*d, i + offset == channel_axis) {
            (1, _) => {}
            (n, true) if n == channels => along_channels = true,
            _ => return Ok(None),
        }
    }
    Ok(Some(if along_channels {
        values.to_vec()
    } else {
        vec![values[0]; channels]
    }))
}

/// The value of a constant `f32` outlet whose elements are all equal.
fn uniform(model: &TypedModel, outlet: OutletId) -> TractResult<Option<f32>> {
    let fact = model.outlet_fact(outlet)?;
    Ok(
        const_f32(fact).and_then(|values| match values.split_first() {
            Some((first, rest)) if rest.iter().all(|v| v.to_bits() == first.to_bits()) => {
                Some(*first)
            }
            _ => None,
        }),
    )
}

fn const_f32(fact: &TypedFact) -> Option<&[f32]> {
    if fact.datum_type != f32::datum_type() {
        return None;
    }
    let konst = fact.konst.as_ref()?;
    konst
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()
        .filter(|v| !v.is_empty())
}

//! The reference: the definition of a depthwise convolution, written for clarity.

use super::geometry::{DwGeometry, Layout};
use crate::Activation;

/// Convolves one image by the definition: for every output point, the sum over the
/// filter's taps that fall inside the input (padding is zero), plus the bias, clamped.
///
/// Slices are laid out as for [`super::DwConv::run`], images in `layout`. Panics if
/// they are too short.
pub fn reference(
    g: &DwGeometry,
    layout: Layout,
    activation: Activation,
    input: &[f32],
    weights: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [ho, wo] = g.output;
    let [top, left, ..] = g.padding;
    let channels = g.channels;
    // Where channel c of pixel (y, x) is in an image of `rows × cols`.
    let at = |rows: usize, cols: usize, c: usize, y: usize, x: usize| match layout {
        Layout::Chw => (c * rows + y) * cols + x,
        Layout::Hwc => (y * cols + x) * channels + c,
    };
    for c in 0..channels {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut sum = bias.map_or(0.0, |b| b[c]);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * g.stride[0] + ky) as isize - top as isize;
                        let ix = (ox * g.stride[1] + kx) as isize - left as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let x = input[at(h, w, c, iy as usize, ix as usize)];
                        sum += weights[(c * kh + ky) * kw + kx] * x;
                    }
                }
                output[at(ho, wo, c, oy, ox)] = activation.apply(sum);
            }
        }
    }
}

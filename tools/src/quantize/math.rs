//! The arithmetic of quantization: symmetric int8 weights and asymmetric uint8 activations.

/// Weights quantized to symmetric int8 (zero point 0), per channel or per tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantizedWeight {
    /// The int8 values, in the float tensor's layout.
    pub q: Vec<i8>,
    /// One scale per channel along the axis, or one scale for the tensor.
    pub scales: Vec<f32>,
}

impl QuantizedWeight {
    /// The float values the int8 values stand for (`q * scale`).
    #[cfg(test)]
    pub(crate) fn dequantize(&self, dims: &[i64], axis: Option<usize>) -> Vec<f32> {
        let (channels, inner) = channel_layout(dims, axis);
        self.q
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let c = if channels == 1 {
                    0
                } else {
                    (i / inner) % channels
                };
                *q as f32 * self.scales[c]
            })
            .collect()
    }
}

/// (number of channels, elements after the axis) for a per-channel layout; (1, 1)
/// per tensor.
fn channel_layout(dims: &[i64], axis: Option<usize>) -> (usize, usize) {
    match axis {
        Some(a) if a < dims.len() => {
            let channels = dims[a].max(1) as usize;
            let inner = dims[a + 1..].iter().map(|d| (*d).max(1) as usize).product();
            (channels, inner)
        }
        _ => (1, 1),
    }
}

/// Quantizes `values` (shaped `dims`) to int8 with scale `max|w| / 127` per channel
/// along `axis` (per tensor when `axis` is `None`), rounding half to even and clamping
/// to [-127, 127] so the range stays symmetric. An all-zero channel gets scale 1.
///
/// This is what `models/generate.py` (`quantize_weights_w8`) does with numpy, in the
/// same float32 arithmetic.
pub(crate) fn quantize_symmetric(
    values: &[f32],
    dims: &[i64],
    axis: Option<usize>,
) -> QuantizedWeight {
    let (channels, inner) = channel_layout(dims, axis);
    let mut amax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = (i / inner) % channels;
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|a| if *a > 0.0 { a / 127.0 } else { 1.0 })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / inner) % channels;
            (v / scales[c]).round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    QuantizedWeight { q, scales }
}

/// Scale and uint8 zero point for an activation range, as ONNX Runtime computes them:
/// the range is widened to include 0 (so 0 is exact, which padding and ReLU need),
/// scale = (max - min) / 255, zero point = round(-min / scale).
pub(crate) fn uint8_params(min: f32, max: f32) -> (f32, u8) {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    if !(hi - lo).is_finite() || hi - lo <= f32::EPSILON {
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_output_channel_gets_its_own_scale() {
        // Two channels along axis 0 whose ranges differ by 100x.
        let w = [1.0, -0.5, 0.25, 100.0, 50.0, -25.0];
        let q = quantize_symmetric(&w, &[2, 3], Some(0));
        assert_eq!(q.scales.len(), 2);
        assert!((q.scales[0] - 1.0 / 127.0).abs() < 1e-9);
        assert!((q.scales[1] - 100.0 / 127.0).abs() < 1e-6);
        assert_eq!(q.q[0], 127);
        assert_eq!(q.q[3], 127);
        let back = q.dequantize(&[2, 3], Some(0));
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            // Rounding to the nearest step: at most half the channel's step away.
            assert!((a - b).abs() <= q.scales[i / 3] / 2.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn channels_along_a_later_axis_are_strided() {
        // [K=2, N=3], channels along axis 1: column j is {w[j], w[3 + j]}.
        let w = [1.0, 10.0, 100.0, -1.0, -10.0, -100.0];
        let q = quantize_symmetric(&w, &[2, 3], Some(1));
        assert_eq!(q.q, vec![127, 127, 127, -127, -127, -127]);
        assert!((q.scales[2] / q.scales[0] - 100.0).abs() < 1e-3);
    }

    #[test]
    fn per_tensor_quantization_uses_one_scale_and_zero_channels_stay_zero() {
        let q = quantize_symmetric(&[0.0, 0.0, 2.0, -1.0], &[2, 2], None);
        assert_eq!(q.scales.len(), 1);
        assert_eq!(q.q, vec![0, 0, 127, -64]);
        let zero = quantize_symmetric(&[0.0; 4], &[2, 2], Some(0));
        assert_eq!(zero.scales, vec![1.0, 1.0]);
        assert_eq!(zero.q, vec![0; 4]);
    }

    #[test]
    fn activation_ranges_always_represent_zero_exactly() {
        let (scale, zp) = uint8_params(0.5, 6.0);
        assert_eq!(zp, 0);
        assert!((scale - 6.0 / 255.0).abs() < 1e-7);
        let (scale, zp) = uint8_params(-1.0, 3.0);
        assert_eq!(zp, 64);
        assert!((scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(uint8_params(0.0, 0.0), (1.0, 0));
    }
}

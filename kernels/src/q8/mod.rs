//! Integer (8-bit) convolutions and matrix products, channels last, with requantization,
//! bias and the activation's clamp fused.
//!
//! # Arithmetic
//! Activations are `u8` or `i8` with a zero point, weights `i8` with zero point 0 (one
//! scale per output channel: ONNX Runtime's and Perch's quantizers write them so), and
//! the accumulator is `i32`. The kernels multiply signed bytes: a `u8` activation `x` is
//! read as `x − 128` (its top bit flipped), and the difference to `x − zx` is a constant
//! per output channel, `(128 − zx) · Σ w`, folded into the bias when the operation is
//! planned; for `i8` activations the constant is `−zx · Σ w`. Padding holds the input's
//! zero point, so every tap of a padded convolution contributes `(x − zx) · w`
//! uniformly. The output is `zy + requantize(acc)` ([`super::requant`]), clamped to the
//! output type and to the activation's bounds in that type.
//!
//! # Layout
//! Channels last: pixel after pixel, the channels of each contiguous, as tract lays out
//! a model on aarch64. The engine's operators transpose channels-first tensors in and
//! out (`engine::ops`).
//!
//! # Kernels
//! - [`gemm`]: `out[n][m] = Σ_k x[n][k] · w[m][k]`, the pointwise (1x1) convolution and
//!   the matrix product, and general convolutions after im2col;
//! - [`dwconv`]: the depthwise convolution;
//! - [`im2col`]: the rows a general convolution's matrix product reads;
//! - [`add`]: the element-wise sum of two quantized tensors (residual connections);
//! - [`quantize`]: float to 8-bit, the integer graph's entry.

pub mod add;
pub mod dwconv;
pub mod gemm;
pub mod im2col;
pub mod lut;
pub mod quantize;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::requant::Scale;

/// The 8-bit type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    /// Unsigned, 0 ..= 255.
    U8,
    /// Signed, −128 ..= 127.
    I8,
}

impl QType {
    /// The smallest and largest value.
    pub fn range(self) -> (i32, i32) {
        match self {
            QType::U8 => (0, 255),
            QType::I8 => (-128, 127),
        }
    }

    /// `u8` or `i8`.
    pub fn name(self) -> &'static str {
        match self {
            QType::U8 => "u8",
            QType::I8 => "i8",
        }
    }

    /// The byte a kernel multiplies for a stored byte: `u8` values have their top bit
    /// flipped (`x − 128`), `i8` values are used as they are.
    pub fn to_signed(self, byte: u8) -> i8 {
        match self {
            QType::U8 => (byte ^ 0x80) as i8,
            QType::I8 => byte as i8,
        }
    }

    /// What the kernels' signed reading of a value is off by: `x − zx` is the signed
    /// byte plus this.
    pub fn offset(self, zero_point: i32) -> i32 {
        match self {
            QType::U8 => 128 - zero_point,
            QType::I8 => -zero_point,
        }
    }
}

use crate::Isa;
pub use crate::Unsupported;

/// Runs `tile::<G.., WIDE>(args.., i)` (written `tile[G..]`) for each whole tile of `WIDE` indices in
/// `0..n`, then `tile::<G.., 1>(args.., i)` for each index left: a microkernel's
/// driver over pixels, expanded inside the variant's `#[target_feature]` function so
/// that the tiles inline into it. Only the aarch64 and x86-64 variants have tiles.
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
macro_rules! in_tiles {
    ($tile:ident[$($g:tt),*], $wide:expr, $n:expr, ($($arg:expr),*)) => {{
        let n = $n;
        let mut i = 0;
        while i + $wide <= n {
            $tile::<$($g,)* { $wide }>($($arg,)* i);
            i += $wide;
        }
        while i < n {
            $tile::<$($g,)* 1>($($arg,)* i);
            i += 1;
        }
    }};
}
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
pub(crate) use in_tiles;

/// A per-channel value of every channel, then `fill` up to `len` channels (a kernel's
/// padded channel blocks).
fn padded<T: Copy>(
    channels: &[ChannelOutput],
    len: usize,
    fill: T,
    f: impl Fn(&ChannelOutput) -> T,
) -> Vec<T> {
    let mut v: Vec<T> = channels.iter().map(f).collect();
    v.resize(len, fill);
    v
}

/// Per-channel requantization multipliers (`requant::Scale`), padded to `len` channels
/// with zero.
fn padded_scales(channels: &[ChannelOutput], len: usize) -> Vec<f32> {
    padded(channels, len, 0.0, |c| c.scale.value())
}

/// One implementation of an element-wise kernel (`run` takes the kernel's `Job`, its
/// pointers and the element count).
pub struct ElementWise<F> {
    /// Kernel name, as reports show it: `q8_add_neon`.
    pub name: &'static str,
    /// The instruction set it needs.
    pub isa: Isa,
    pub(crate) run: F,
}

impl<F> std::fmt::Debug for ElementWise<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// How the accumulators of one output channel become output values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelOutput {
    /// Added to the accumulator first: the quantized bias and the zero-point correction.
    pub bias: i32,
    /// The multiplier `sx · sw / sy` (and any per-channel scale folded in).
    pub scale: Scale,
}

/// The quantization of the output and the clamp of the fused activation, in the output
/// type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutputQuant {
    /// The output type.
    pub dtype: QType,
    /// Its zero point.
    pub zero_point: i32,
    /// The smallest and largest value stored: the type's range narrowed by the
    /// activation (ReLU's 0 becomes the zero point).
    pub lo: i32,
    /// See `lo`.
    pub hi: i32,
}

impl OutputQuant {
    /// The output of an operation whose real result `r` is clamped to `[lo, hi]` (`±∞`
    /// for none) and quantized with `scale` and `zero_point` into `dtype`. Fails when the
    /// parameters are unusable: a scale that is not positive and finite, a zero point
    /// out of the type's range, or bounds that leave nothing.
    pub fn new(
        dtype: QType,
        scale: f32,
        zero_point: i32,
        lo: f32,
        hi: f32,
    ) -> Result<OutputQuant, Unsupported> {
        let (tlo, thi) = dtype.range();
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Unsupported(format!(
                "output scale {scale} (must be positive and finite)"
            )));
        }
        if !(tlo..=thi).contains(&zero_point) {
            return Err(Unsupported(format!(
                "output zero point {zero_point} out of {} range",
                dtype.name()
            )));
        }
        // The clamp in the output's steps; quantizing lo and hi as ONNX would round them
        // (any value below lo quantizes to at most q(lo), and q is monotonic).
        let q =
            |v: f32| -> f64 { ((v as f64) / scale as f64).round_ties_even() + zero_point as f64 };
        let qlo = if lo.is_finite() {
            q(lo).max(tlo as f64) as i32
        } else {
            tlo
        };
        let qhi = if hi.is_finite() {
            q(hi).min(thi as f64) as i32
        } else {
            thi
        };
        if qlo > qhi {
            return Err(Unsupported(format!(
                "the activation bounds [{lo}, {hi}] leave no output value"
            )));
        }
        Ok(OutputQuant {
            dtype,
            zero_point,
            lo: qlo.max(tlo),
            hi: qhi.min(thi),
        })
    }

    /// The stored byte for an accumulator of a channel.
    pub fn store(&self, acc: i32, channel: &ChannelOutput) -> u8 {
        let v = channel
            .scale
            .apply(acc.saturating_add(channel.bias))
            .saturating_add(self.zero_point)
            .clamp(self.lo, self.hi);
        v as u8
    }
}

/// Per-output-channel constants of a quantized convolution or matrix product: its
/// bias with the zero-point correction folded in, and its requantization.
///
/// `weight_sums[m]` is `Σ_k w[m][k]`; `bias[m]` the quantized bias (`round(B / (sx ·
/// sw[m]))`); `multipliers[m]` is `sx · sw[m] / sy`.
pub fn channel_outputs(
    input: QType,
    input_zero_point: i32,
    weight_sums: &[i32],
    bias: &[i32],
    multipliers: &[f64],
) -> Result<Vec<ChannelOutput>, Unsupported> {
    let offset = input.offset(input_zero_point) as i64;
    weight_sums
        .iter()
        .zip(bias)
        .zip(multipliers)
        .enumerate()
        .map(|(m, ((sum, b), mul))| {
            let bias = *b as i64 + offset * *sum as i64;
            let bias = i32::try_from(bias)
                .map_err(|_| Unsupported(format!("channel {m}: bias {bias} overflows i32")))?;
            let scale = Scale::new(*mul).ok_or_else(|| {
                Unsupported(format!(
                    "channel {m}: requantization multiplier {mul} out of range"
                ))
            })?;
            Ok(ChannelOutput { bias, scale })
        })
        .collect()
}

/// The portable references' output byte: `acc` requantized with a kernel table's
/// multiplier (see `requant`), the zero point added with saturation, clamped to
/// `[lo, hi]`, and narrowed (the byte of a `u8` or of an `i8` alike).
pub(crate) fn reference_output(acc: i32, scale: f32, [zero_point, lo, hi]: [i32; 3]) -> u8 {
    // Tables hold finite scales only (`Scale`); a non-finite one would give zero.
    let r = Scale::from_f32(scale).map_or(0, |s| s.apply(acc));
    r.saturating_add(zero_point).clamp(lo, hi) as u8
}

/// Deterministic pseudo-random bytes (xorshift), for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

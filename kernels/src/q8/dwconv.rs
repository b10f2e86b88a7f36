//! Depthwise 8-bit convolution, channels last, 3x3 and 5x5 at stride 1 and 2, any
//! padding.
//!
//! Each image is copied once into scratch, padded with the input's zero point and with
//! every byte already in the signed form the kernels multiply (see the module
//! documentation of `q8`); the microkernel then vectorizes along channels with no
//! border cases, like the float channels-last kernel (`f32_dwconv::hwc`).

use super::{padded, padded_scales, ChannelOutput, OutputQuant, QType, Unsupported};
use crate::f32_dwconv::DwGeometry;
use crate::{Cpu, Isa};
use job::Job;

/// Channels are padded to a multiple of this in the packed filters and constants.
const C_BLOCK: usize = 16;
/// Bytes a vector may read past the padded image.
const SLACK: usize = 16;

/// One implementation for a filter size and stride.
pub struct Variant {
    /// Kernel name, as reports show it: `q8_dwconv_3x3s1_neon`.
    pub name: &'static str,
    /// The instruction set it needs.
    pub isa: Isa,
    /// Filter height and width.
    pub kernel: [usize; 2],
    /// Horizontal stride (any vertical one is taken: `Job::row_step`).
    pub stride: usize,
    /// Whether it takes weights of −128.
    pub any_weight: bool,
    run: unsafe fn(&Job),
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! variant {
    ($isa:expr, $suffix:literal, $any:expr, $($kernel:ident)::+, $k:literal, $s:literal) => {
        Variant {
            name: concat!("q8_dwconv_", $k, "x", $k, "s", $s, "_", $suffix),
            isa: $isa,
            kernel: [$k, $k],
            stride: $s,
            any_weight: $any,
            run: {
                unsafe fn run(job: &Job) {
                    $($kernel)::+::<$k, $k, $s>(job)
                }
                run
            },
        }
    };
}

/// Every variant this build has, best first.
pub static VARIANTS: &[Variant] = &[
    #[cfg(target_arch = "aarch64")]
    variant!(Isa::Aarch64Neon, "neon", false, neon::image, 3, 1),
    #[cfg(target_arch = "aarch64")]
    variant!(Isa::Aarch64Neon, "neon", false, neon::image, 3, 2),
    #[cfg(target_arch = "aarch64")]
    variant!(Isa::Aarch64Neon, "neon", false, neon::image, 5, 1),
    #[cfg(target_arch = "aarch64")]
    variant!(Isa::Aarch64Neon, "neon", false, neon::image, 5, 2),
    #[cfg(target_arch = "x86_64")]
    variant!(Isa::Avx2Fma, "avx2", true, avx2::image, 3, 1),
    #[cfg(target_arch = "x86_64")]
    variant!(Isa::Avx2Fma, "avx2", true, avx2::image, 3, 2),
    #[cfg(target_arch = "x86_64")]
    variant!(Isa::Avx2Fma, "avx2", true, avx2::image, 5, 1),
    #[cfg(target_arch = "x86_64")]
    variant!(Isa::Avx2Fma, "avx2", true, avx2::image, 5, 2),
    variant!(Isa::Portable, "portable", true, portable, 3, 1),
    variant!(Isa::Portable, "portable", true, portable, 3, 2),
    variant!(Isa::Portable, "portable", true, portable, 5, 1),
    variant!(Isa::Portable, "portable", true, portable, 5, 2),
];

/// A planned depthwise 8-bit convolution.
#[derive(Debug, Clone)]
pub struct QDwConv {
    geometry: DwGeometry,
    input: QType,
    input_zero_point: i32,
    output: OutputQuant,
    cp: usize,
    weights: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    variant: &'static Variant,
}

impl PartialEq for QDwConv {
    fn eq(&self, o: &Self) -> bool {
        (
            self.geometry,
            self.input,
            self.input_zero_point,
            self.output,
        ) == (o.geometry, o.input, o.input_zero_point, o.output)
            && (&self.weights, &self.bias, &self.scale) == (&o.weights, &o.bias, &o.scale)
            && self.variant.name == o.variant.name
    }
}

impl Eq for QDwConv {}

impl std::hash::Hash for QDwConv {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            self.geometry,
            self.input,
            self.input_zero_point,
            self.output,
        )
            .hash(state);
        (&self.weights, &self.bias).hash(state);
        self.scale
            .iter()
            .map(|s| s.to_bits())
            .for_each(|b| b.hash(state));
        self.variant.name.hash(state);
    }
}

impl QDwConv {
    /// Plans a depthwise convolution of `input`-typed images with zero point
    /// `input_zero_point`, filters `weights` (`channels × kh × kw`), each channel's
    /// output by `channels[c]`, on the best variant `cpu` runs.
    pub fn plan(
        geometry: DwGeometry,
        input: QType,
        input_zero_point: i32,
        weights: &[i8],
        channels: &[ChannelOutput],
        output: OutputQuant,
        cpu: Cpu,
    ) -> Result<QDwConv, Unsupported> {
        let has_min = weights.contains(&i8::MIN);
        let candidates = VARIANTS
            .iter()
            .filter(|v| cpu.has(v.isa) && (v.any_weight || !has_min));
        Self::plan_among(
            geometry,
            input,
            input_zero_point,
            weights,
            channels,
            output,
            candidates,
        )
    }

    /// Plans on one given variant (tests compare them).
    pub fn plan_on(
        geometry: DwGeometry,
        input: QType,
        input_zero_point: i32,
        weights: &[i8],
        channels: &[ChannelOutput],
        output: OutputQuant,
        variant: &'static Variant,
    ) -> Result<QDwConv, Unsupported> {
        if !variant.any_weight && weights.contains(&i8::MIN) {
            return Err(Unsupported(format!(
                "{} takes no weight of -128",
                variant.name
            )));
        }
        let candidates = std::iter::once(variant);
        Self::plan_among(
            geometry,
            input,
            input_zero_point,
            weights,
            channels,
            output,
            candidates,
        )
    }

    fn plan_among(
        g: DwGeometry,
        input: QType,
        input_zero_point: i32,
        weights: &[i8],
        channels: &[ChannelOutput],
        output: OutputQuant,
        mut candidates: impl Iterator<Item = &'static Variant>,
    ) -> Result<QDwConv, Unsupported> {
        let [kh, kw] = g.kernel;
        if !matches!((kh, kw), (3, 3) | (5, 5)) {
            return Err(Unsupported(format!(
                "{kh}x{kw} filter (the kernels cover 3x3 and 5x5)"
            )));
        }
        let [sh, sw] = g.stride;
        if !matches!(sw, 1 | 2) || !matches!(sh, 1 | 2) {
            return Err(Unsupported(format!(
                "strides {sh}x{sw} (the kernels cover 1 and 2 along each axis)"
            )));
        }
        let (tlo, thi) = input.range();
        if !(tlo..=thi).contains(&input_zero_point) {
            return Err(Unsupported(format!(
                "input zero point {input_zero_point} out of {} range",
                input.name()
            )));
        }
        if weights.len() != g.weights_len() || channels.len() != g.channels {
            return Err(Unsupported(format!(
                "{} weights and {} channels for {} filters of {kh}x{kw}",
                weights.len(),
                channels.len(),
                g.channels
            )));
        }
        let variant = candidates
            .find(|v| v.kernel == g.kernel && v.stride == sw)
            .ok_or_else(|| {
                Unsupported(format!(
                    "no {kh}x{kw} kernel of horizontal stride {sw} for this CPU"
                ))
            })?;
        let c = g.channels;
        let cp = c.div_ceil(C_BLOCK) * C_BLOCK;
        let taps = kh * kw;
        let mut packed = vec![0i8; taps * cp];
        for (ch, filter) in weights.chunks_exact(taps).enumerate() {
            for (t, w) in filter.iter().enumerate() {
                packed[t * cp + ch] = *w;
            }
        }
        let scale = padded_scales(channels, cp);
        Ok(QDwConv {
            geometry: g,
            input,
            input_zero_point,
            output,
            cp,
            weights: packed,
            bias: padded(channels, cp, 0, |c| c.bias),
            scale,
            variant,
        })
    }

    /// The geometry it computes.
    pub fn geometry(&self) -> &DwGeometry {
        &self.geometry
    }

    /// The variant that runs it.
    pub fn variant(&self) -> &'static Variant {
        self.variant
    }

    /// Scratch bytes [`QDwConv::run`] needs.
    pub fn scratch_len(&self) -> usize {
        let [hp, wp] = self.geometry.padded_shape();
        hp * wp * self.geometry.channels + SLACK
    }

    /// Convolves `images` channels-last images (`H × W × C` bytes each) into `Ho × Wo
    /// × C` bytes each. Fails, touching nothing, on wrong lengths.
    // Never inlined: see `q8::im2col::im2col`.
    #[inline(never)]
    pub fn run(
        &self,
        images: usize,
        x: &[u8],
        y: &mut [u8],
        scratch: &mut [u8],
    ) -> Result<(), Unsupported> {
        let g = &self.geometry;
        if Some(x.len()) != images.checked_mul(g.input_len())
            || Some(y.len()) != images.checked_mul(g.output_len())
            || scratch.len() < self.scratch_len()
        {
            return Err(Unsupported(format!(
                "{} input, {} output and {} scratch bytes for {images} image(s)",
                x.len(),
                y.len(),
                scratch.len()
            )));
        }
        let c = g.channels;
        let [h, w] = g.input;
        let [hp, wp] = self.geometry.padded_shape();
        let [top, left, ..] = g.padding;
        let scratch = &mut scratch[..self.scratch_len()];
        let rows = h.min(hp.saturating_sub(top));
        let cols = w.min(wp.saturating_sub(left));
        // The padding holds the zero point, in the kernels' signed form: the rows above
        // and below the image, the columns beside it and the slack. The interior cells
        // are copied per image, so only the border is filled.
        let pad = self.input.to_signed(self.input_zero_point as u8) as u8;
        let row = wp * c;
        scratch[..top * row].fill(pad);
        for r in top..top + rows {
            scratch[r * row..(r * wp + left) * c].fill(pad);
            scratch[(r * wp + left + cols) * c..(r + 1) * row].fill(pad);
        }
        scratch[(top + rows) * row..].fill(pad);
        let flip = if self.input == QType::U8 { 0x80 } else { 0 };
        for i in 0..images {
            let image = &x[i * g.input_len()..(i + 1) * g.input_len()];
            for r in 0..rows {
                let src = &image[r * w * c..(r * w + cols) * c];
                let at = ((r + top) * wp + left) * c;
                xor_copy(&mut scratch[at..at + cols * c], src, flip);
            }
            let job = Job {
                padded: scratch.as_ptr() as *const i8,
                wp,
                row_step: g.stride[0],
                c,
                ho: g.output[0],
                wo: g.output[1],
                out: y[i * g.output_len()..].as_mut_ptr(),
                room: (images - i - 1) * g.output_len(),
                weights: self.weights.as_ptr(),
                cp: self.cp,
                bias: self.bias.as_ptr(),
                scale: self.scale.as_ptr(),
                zero_point: self.output.zero_point,
                lo: self.output.lo,
                hi: self.output.hi,
                unsigned_output: self.output.dtype == QType::U8,
            };
            // SAFETY: lengths checked above; the padded image covers every tap of every
            // output pixel, with SLACK after it for vector reads past the last channel;
            // packed filters and constants hold cp (a multiple of 16) channels; writes
            // stay within this image's output and the `room` after it.
            unsafe { (self.variant.run)(&job) };
        }
        Ok(())
    }
}

/// `dst[i] = src[i] ^ flip` for every byte of `dst` (`src` is as long): sixteen bytes
/// at a time with NEON on aarch64, where a device build (LTO at opt-level "z") left the
/// plain loop scalar: R4's padded copies cost 2.6 M instructions there, 0.1 M in release.
#[inline(always)]
fn xor_copy(dst: &mut [u8], src: &[u8], flip: u8) {
    let n = dst.len().min(src.len());
    #[allow(unused_mut)]
    let mut i = 0;
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::aarch64::*;
        // SAFETY: every 16-byte access is within the first n bytes of both slices.
        unsafe {
            let f = vdupq_n_u8(flip);
            while i + 16 <= n {
                let v = veorq_u8(vld1q_u8(src.as_ptr().add(i)), f);
                vst1q_u8(dst.as_mut_ptr().add(i), v);
                i += 16;
            }
        }
    }
    for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = s ^ flip;
    }
}

/// The reference, in plain Rust: every variant matches it bit for bit.
///
/// # Safety
/// `job` must describe valid buffers.
unsafe fn portable<const KH: usize, const KW: usize, const S: usize>(job: &Job) {
    let c = job.c;
    for y in 0..job.ho {
        for x in 0..job.wo {
            for ch in 0..c {
                let mut acc = *job.bias.add(ch);
                for ky in 0..KH {
                    for kx in 0..KW {
                        let v = *job
                            .padded
                            .add(((y * job.row_step + ky) * job.wp + x * S + kx) * c + ch);
                        let w = *job.weights.add((ky * KW + kx) * job.cp + ch);
                        acc = acc.wrapping_add(v as i32 * w as i32);
                    }
                }
                *job.out.add((y * job.wo + x) * c + ch) = super::reference_output(
                    acc,
                    *job.scale.add(ch),
                    [job.zero_point, job.lo, job.hi],
                );
            }
        }
    }
}

mod job;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests;

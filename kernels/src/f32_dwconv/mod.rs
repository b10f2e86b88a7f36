//! Depthwise 2-D convolution of `f32` images (one filter per channel), with bias and a
//! clamp fused, in both layouts tract gives a model: channels first (CHW) and channels
//! last (HWC). tract's declutter picks the layout per platform: on x86-64 it keeps
//! ONNX's NCHW, on aarch64 it moves channels last around the matrix products.
//!
//! # Algorithms
//! - **CHW** (`chw`): each channel's plane is copied into zero-padded scratch, split by
//!   stride phase (plane `(a, b)` holds the padded input's rows `s·r + a`, columns
//!   `s·c + b`), so that every tap reads a contiguous run whatever the stride and
//!   padding. The microkernel vectorizes along output rows and computes two rows at a
//!   time, sharing the loads of the input rows both read (3x3 at stride 1: 12 loads for
//!   18 multiply-adds). Borders never reach the inner loop, which matters on the small
//!   maps of keyword-spotting and MobileNet models (5 to 14 columns).
//! - **HWC** (`hwc`): the image is copied into zero-padded scratch once; the
//!   microkernel vectorizes along channels (as XNNPACK's does), keeps a block of
//!   channels' filter taps in registers and computes four adjacent output pixels at a
//!   time, so that at stride 1 each input vector loaded serves several taps.
//!
//! # Variants
//! [`VARIANTS`] lists every microkernel with the layout, filter size, stride and
//! instruction set it needs; [`DwConv::plan`] picks the best one the CPU has. Filters
//! other than 3x3 and 5x5, strides other than 1 and 2, dilation and unequal strides are
//! not covered: the caller keeps its own implementation for them ([`DwConv::plan`]
//! says why).

mod chw;
mod geometry;
mod hwc;
mod reference;

pub use geometry::{DwGeometry, Layout};
pub use reference::reference;

use super::{Activation, Cpu, Isa};
use geometry::Call;

pub use crate::Unsupported;

/// A microkernel of one layout.
#[derive(Clone, Copy)]
pub(crate) enum Microkernel {
    /// Fills one channel's stride-phase planes and computes its output plane.
    Chw(unsafe fn(&chw::Job)),
    /// Computes one image from its padded copy.
    Hwc(unsafe fn(&hwc::Job)),
}

/// One implementation of the microkernel for a layout, filter size and stride.
pub struct Variant {
    /// Kernel name, as reports show it: `f32_dwconv_3x3s1_avx2`, `f32_dwconv_hwc_3x3s2_neon`.
    pub name: &'static str,
    /// The instruction set it needs.
    pub isa: Isa,
    /// Filter height and width.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: usize,
    run: Microkernel,
}

impl Variant {
    /// The layout it computes.
    pub fn layout(&self) -> Layout {
        match self.run {
            Microkernel::Chw(_) => Layout::Chw,
            Microkernel::Hwc(_) => Layout::Hwc,
        }
    }
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Defines one variant: a function compiled for the instruction set that instantiates
/// a layout's template, and its table entry.
macro_rules! variant {
    (chw, $isa:expr, $lanes:ty, $suffix:literal, $k:literal, $s:literal $(, $feature:literal)?) => {
        Variant {
            name: concat!("f32_dwconv_", $k, "x", $k, "s", $s, "_", $suffix),
            isa: $isa,
            kernel: [$k, $k],
            stride: $s,
            run: Microkernel::Chw({
                $(#[target_feature(enable = $feature)])?
                unsafe fn run(job: &chw::Job) {
                    chw::fill::<$s>(job);
                    chw::plane::<$lanes, $k, $k, $s>(job)
                }
                run
            }),
        }
    };
    (hwc, $isa:expr, $lanes:ty, $suffix:literal, $k:literal, $s:literal $(, $feature:literal)?) => {
        Variant {
            name: concat!("f32_dwconv_hwc_", $k, "x", $k, "s", $s, "_", $suffix),
            isa: $isa,
            kernel: [$k, $k],
            stride: $s,
            run: Microkernel::Hwc({
                $(#[target_feature(enable = $feature)])?
                unsafe fn run(job: &hwc::Job) {
                    hwc::image::<$lanes, $k, $k, $s>(job)
                }
                run
            }),
        }
    };
}

/// The eight variants (two layouts, 3x3 and 5x5, stride 1 and 2) of one instruction set.
macro_rules! variants {
    ($isa:expr, $lanes:ty, $suffix:literal $(, $feature:literal)?) => {
        [
            variant!(chw, $isa, $lanes, $suffix, 3, 1 $(, $feature)?),
            variant!(chw, $isa, $lanes, $suffix, 3, 2 $(, $feature)?),
            variant!(chw, $isa, $lanes, $suffix, 5, 1 $(, $feature)?),
            variant!(chw, $isa, $lanes, $suffix, 5, 2 $(, $feature)?),
            variant!(hwc, $isa, $lanes, $suffix, 3, 1 $(, $feature)?),
            variant!(hwc, $isa, $lanes, $suffix, 3, 2 $(, $feature)?),
            variant!(hwc, $isa, $lanes, $suffix, 5, 1 $(, $feature)?),
            variant!(hwc, $isa, $lanes, $suffix, 5, 2 $(, $feature)?),
        ]
    };
}

#[cfg(target_arch = "x86_64")]
static AVX2: [Variant; 8] = variants!(Isa::Avx2Fma, super::simd::Avx2, "avx2", "avx2,fma");
#[cfg(target_arch = "x86_64")]
static SSE41: [Variant; 8] = variants!(Isa::Sse41, super::simd::Sse41, "sse41", "sse4.1");
#[cfg(target_arch = "aarch64")]
static NEON: [Variant; 8] = variants!(Isa::Aarch64Neon, super::simd::Neon, "neon");
static PORTABLE: [Variant; 8] = variants!(Isa::Portable, super::simd::Portable4, "portable");

/// Every variant this build has, best instruction set first. Planning takes the first
/// one the CPU can run for the layout, filter size and stride.
pub static VARIANTS: &[&[Variant]] = &[
    #[cfg(target_arch = "x86_64")]
    &AVX2,
    #[cfg(target_arch = "x86_64")]
    &SSE41,
    #[cfg(target_arch = "aarch64")]
    &NEON,
    #[cfg(all(target_arch = "arm", target_os = "linux"))]
    &neon32::VARIANTS,
    &PORTABLE,
];

/// Every variant, flattened.
pub fn variants() -> impl Iterator<Item = &'static Variant> {
    VARIANTS.iter().flat_map(|set| set.iter())
}

/// The C microkernels for 32-bit ARM NEON (`neon32.c`, built by `build.rs`): Rust's
/// 32-bit NEON intrinsics are not stable.
#[cfg(all(target_arch = "arm", target_os = "linux"))]
mod neon32 {
    use super::{chw, hwc, Isa, Microkernel, Variant};

    macro_rules! c_variants {
        ($([$layout:ident, $k:literal, $s:literal, $name:literal, $symbol:ident]),* $(,)?) => {
            extern "C" {
                $(fn $symbol(job: &c_variants!(@job $layout));)*
            }
            pub(super) static VARIANTS: [Variant; 8] = [$(
                Variant {
                    name: $name,
                    isa: Isa::ArmNeon,
                    kernel: [$k, $k],
                    stride: $s,
                    run: c_variants!(@run $layout, $s, $symbol),
                },
            )*];
        };
        (@job chw) => { chw::Job };
        (@job hwc) => { hwc::Job };
        (@run chw, $s:literal, $symbol:ident) => {
            Microkernel::Chw({
                unsafe fn run(job: &chw::Job) {
                    chw::fill::<$s>(job);
                    $symbol(job)
                }
                run
            })
        };
        (@run hwc, $s:literal, $symbol:ident) => {
            Microkernel::Hwc({
                unsafe fn run(job: &hwc::Job) {
                    $symbol(job)
                }
                run
            })
        };
    }

    c_variants!(
        [
            chw,
            3,
            1,
            "f32_dwconv_3x3s1_neon32",
            perch_f32_dwconv_3x3s1_neon32
        ],
        [
            chw,
            3,
            2,
            "f32_dwconv_3x3s2_neon32",
            perch_f32_dwconv_3x3s2_neon32
        ],
        [
            chw,
            5,
            1,
            "f32_dwconv_5x5s1_neon32",
            perch_f32_dwconv_5x5s1_neon32
        ],
        [
            chw,
            5,
            2,
            "f32_dwconv_5x5s2_neon32",
            perch_f32_dwconv_5x5s2_neon32
        ],
        [
            hwc,
            3,
            1,
            "f32_dwconv_hwc_3x3s1_neon32",
            perch_f32_dwconv_hwc_3x3s1_neon32
        ],
        [
            hwc,
            3,
            2,
            "f32_dwconv_hwc_3x3s2_neon32",
            perch_f32_dwconv_hwc_3x3s2_neon32
        ],
        [
            hwc,
            5,
            1,
            "f32_dwconv_hwc_5x5s1_neon32",
            perch_f32_dwconv_hwc_5x5s1_neon32
        ],
        [
            hwc,
            5,
            2,
            "f32_dwconv_hwc_5x5s2_neon32",
            perch_f32_dwconv_hwc_5x5s2_neon32
        ],
    );
}

/// A depthwise convolution planned on one of [`VARIANTS`].
#[derive(Debug, Clone, Copy)]
pub struct DwConv {
    geometry: DwGeometry,
    activation: Activation,
    variant: &'static Variant,
}

impl PartialEq for DwConv {
    fn eq(&self, other: &Self) -> bool {
        self.geometry == other.geometry
            && self.activation == other.activation
            && self.variant.name == other.variant.name
    }
}

impl Eq for DwConv {}

impl std::hash::Hash for DwConv {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.geometry.hash(state);
        self.activation.hash(state);
        self.variant.name.hash(state);
    }
}

impl DwConv {
    /// Picks the best variant `cpu` runs for this geometry and layout, or says why none
    /// covers it.
    pub fn plan(
        geometry: DwGeometry,
        layout: Layout,
        activation: Activation,
        cpu: Cpu,
    ) -> Result<DwConv, Unsupported> {
        Self::plan_among(
            geometry,
            layout,
            activation,
            variants().filter(|v| cpu.has(v.isa)),
        )
    }

    /// Plans on one named variant (tests and benchmarks compare them).
    pub fn plan_on(
        geometry: DwGeometry,
        activation: Activation,
        variant: &'static Variant,
    ) -> Result<DwConv, Unsupported> {
        Self::plan_among(
            geometry,
            variant.layout(),
            activation,
            std::iter::once(variant),
        )
    }

    fn plan_among(
        geometry: DwGeometry,
        layout: Layout,
        activation: Activation,
        mut candidates: impl Iterator<Item = &'static Variant>,
    ) -> Result<DwConv, Unsupported> {
        let [kh, kw] = geometry.kernel;
        let [s, sw] = geometry.stride;
        if !matches!((kh, kw), (3, 3) | (5, 5)) {
            return Err(Unsupported(format!(
                "{kh}x{kw} filter (the kernels cover 3x3 and 5x5)"
            )));
        }
        if s != sw {
            return Err(Unsupported(format!(
                "strides {s}x{sw} (the float kernels take equal strides)"
            )));
        }
        if !matches!(s, 1 | 2) {
            return Err(Unsupported(format!(
                "stride {s} (the kernels cover 1 and 2)"
            )));
        }
        let variant = candidates
            .find(|v| v.kernel == geometry.kernel && v.stride == s && v.layout() == layout)
            .ok_or_else(|| {
                Unsupported(format!(
                    "no {} {kh}x{kw} stride-{s} kernel for this CPU",
                    layout.name()
                ))
            })?;
        Ok(DwConv {
            geometry,
            activation,
            variant,
        })
    }

    /// The geometry it computes.
    pub fn geometry(&self) -> &DwGeometry {
        &self.geometry
    }

    /// The layout of its images.
    pub fn layout(&self) -> Layout {
        self.variant.layout()
    }

    /// The fused activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The variant that runs it.
    pub fn variant(&self) -> &'static Variant {
        self.variant
    }

    /// Scratch elements [`DwConv::run`] needs.
    pub fn scratch_len(&self) -> usize {
        match self.layout() {
            Layout::Chw => chw::scratch_len(&self.geometry),
            Layout::Hwc => hwc::scratch_len(&self.geometry),
        }
    }

    /// Convolves `images` images in the planned layout: `input` is `images` images of
    /// `channels × H × W` values, `weights` is `channels × kh × kw` (one filter per
    /// channel, whatever the layout), `bias` one per channel (zero when absent),
    /// `output` `images` images of `channels × Ho × Wo` values.
    ///
    /// Fails, touching nothing, when a slice has the wrong length.
    pub fn run(
        &self,
        images: usize,
        input: &[f32],
        weights: &[f32],
        bias: Option<&[f32]>,
        output: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Unsupported> {
        let g = &self.geometry;
        let lengths = [
            ("input", input.len(), images.checked_mul(g.input_len())),
            ("weights", weights.len(), Some(g.weights_len())),
            (
                "bias",
                bias.map_or(g.channels, <[f32]>::len),
                Some(g.channels),
            ),
            ("output", output.len(), images.checked_mul(g.output_len())),
        ];
        for (what, got, want) in lengths {
            if Some(got) != want {
                return Err(Unsupported(format!(
                    "{what} has {got} elements, {images} image(s) of this geometry need {}",
                    want.map_or("more than addressable".into(), |w| w.to_string())
                )));
            }
        }
        if scratch.len() < self.scratch_len() {
            return Err(Unsupported(format!(
                "scratch has {} elements, {} needed",
                scratch.len(),
                self.scratch_len()
            )));
        }
        let scratch = &mut scratch[..self.scratch_len()];
        let (lo, hi) = self.activation.bounds();
        let call = Call {
            images,
            input,
            weights,
            bias,
            output,
            scratch,
            lo,
            hi,
        };
        match self.variant.run {
            Microkernel::Chw(kernel) => chw::run(kernel, g, call),
            Microkernel::Hwc(kernel) => hwc::run(kernel, g, call),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

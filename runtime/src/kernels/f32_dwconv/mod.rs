//! Depthwise 2-D convolution of `f32` planes (NCHW, one filter per channel), with bias
//! and a clamp fused.
//!
//! # Algorithm
//! Each channel's input plane is copied once into zero-padded scratch, split by stride
//! phase: with stride `s`, plane `(a, b)` holds the padded input's rows `s·r + a` and
//! columns `s·c + b`. On those planes every tap of the filter reads a contiguous run,
//! whatever the stride and padding, so one microkernel shape serves stride 1 and 2 and
//! any padding: for each output row it loads a vector of input per tap and
//! multiply-accumulates it. Two output rows are computed together, sharing the loads of
//! the input rows they both read (with a 3x3 filter at stride 1: 12 loads for 18
//! multiply-adds). The copy costs one pass over the input and keeps borders out of the
//! inner loop, which matters on the small maps of keyword-spotting and MobileNet models
//! (5 to 14 columns), where edge cases would otherwise be most of the work.
//!
//! # Variants
//! [`VARIANTS`] lists every microkernel with the filter size, stride and instruction set
//! it needs; [`DwConv::plan`] picks the best one the CPU has. Filters other than 3x3 and
//! 5x5, strides other than 1 and 2, dilation and unequal strides are not covered: the
//! caller keeps its own implementation for them ([`DwConv::plan`] says why).

mod reference;
mod template;

pub use reference::reference;

use super::{Activation, Cpu, Isa};

/// Why a convolution is not covered by these kernels; shown to users as the reason a
/// node stayed on the engine's own operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// The shape of one depthwise convolution: per image, `channels` planes of
/// `input[0] x input[1]`, one `kernel[0] x kernel[1]` filter per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DwGeometry {
    /// Channels (input = output: a multiplier of one).
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Filter height and width.
    pub kernel: [usize; 2],
    /// Stride, the same along both axes.
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Output height and width (computed).
    pub output: [usize; 2],
}

impl DwGeometry {
    /// Checks a geometry and computes its output size.
    pub fn new(
        channels: usize,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 4],
    ) -> Result<DwGeometry, Unsupported> {
        let [t, l, b, r] = padding;
        let padded = [
            input[0].checked_add(t).and_then(|v| v.checked_add(b)),
            input[1].checked_add(l).and_then(|v| v.checked_add(r)),
        ];
        let (Some(ph), Some(pw)) = (padded[0], padded[1]) else {
            return Err(Unsupported("padding overflows".into()));
        };
        if channels == 0 || input.contains(&0) || kernel.contains(&0) || stride == 0 {
            return Err(Unsupported(format!(
                "empty geometry ({channels} channels, input {input:?}, filter {kernel:?}, stride {stride})"
            )));
        }
        if ph < kernel[0] || pw < kernel[1] {
            return Err(Unsupported(format!(
                "the padded input {ph}x{pw} is smaller than the filter {}x{}",
                kernel[0], kernel[1]
            )));
        }
        let output = [(ph - kernel[0]) / stride + 1, (pw - kernel[1]) / stride + 1];
        // Every buffer this geometry implies must be addressable.
        let fits = [input, output].iter().all(|hw| {
            channels
                .checked_mul(hw[0])
                .and_then(|v| v.checked_mul(hw[1]))
                .is_some()
        });
        if !fits {
            return Err(Unsupported("tensor sizes overflow".into()));
        }
        Ok(DwGeometry {
            channels,
            input,
            kernel,
            stride,
            padding,
            output,
        })
    }

    /// Elements of one image's input (`channels × H × W`).
    pub fn input_len(&self) -> usize {
        self.channels * self.input[0] * self.input[1]
    }

    /// Elements of one image's output.
    pub fn output_len(&self) -> usize {
        self.channels * self.output[0] * self.output[1]
    }

    /// Elements of the filters (`channels × kh × kw`).
    pub fn weights_len(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// Multiply-accumulates of one image.
    pub fn macs(&self) -> u64 {
        (self.output_len() * self.kernel[0] * self.kernel[1]) as u64
    }

    /// Rows and columns of each stride-phase plane in scratch.
    fn plane_shape(&self) -> [usize; 2] {
        let s = self.stride;
        [
            self.output[0] + self.kernel[0].div_ceil(s) - 1,
            self.output[1] + self.kernel[1].div_ceil(s) - 1,
        ]
    }

    /// Elements of one plane in scratch, with room for a vector read past its end.
    fn plane_len(&self) -> usize {
        let [hq, wq] = self.plane_shape();
        hq * wq + SLACK
    }
}

/// Elements after each scratch plane that a vector may read past the last column
/// (the widest vector has 16 lanes; its extra lanes are never stored).
const SLACK: usize = 16;

/// Everything a microkernel needs for one channel (`repr(C)`: the 32-bit ARM kernels are
/// C, `neon32.c`, which declares the same struct).
#[repr(C)]
pub(crate) struct Job {
    /// The channel's input plane, `h × w`, row-major.
    pub input: *const f32,
    pub h: usize,
    pub w: usize,
    /// Padding above and left of the input.
    pub top: usize,
    pub left: usize,
    /// Scratch for the stride-phase planes: plane `(a, b)` starts at
    /// `(a·s + b) · plane_len`, is `hq × wq`, and only its cells that hold input are
    /// written (the rest stay zero).
    pub planes: *mut f32,
    pub plane_len: usize,
    pub hq: usize,
    pub wq: usize,
    /// Output rows and columns.
    pub ho: usize,
    pub wo: usize,
    /// The channel's output plane, `ho × wo`, row-major.
    pub out: *mut f32,
    /// Elements of the output buffer after this plane. A row's last vector is stored
    /// whole, spilling past the row into memory written afterwards (the next row, the
    /// next planes), as long as it stays within the buffer; otherwise lane by lane.
    pub room: usize,
    /// The channel's filter, `kh × kw`, row-major.
    pub weights: *const f32,
    pub bias: f32,
    pub lo: f32,
    pub hi: f32,
}

/// A microkernel: fills one channel's stride-phase planes and computes its output plane.
pub(crate) type Microkernel = unsafe fn(&Job);

/// One implementation of the microkernel for a filter size and stride.
pub struct Variant {
    /// Kernel name, as reports show it: `f32_dwconv_3x3s1_avx2`.
    pub name: &'static str,
    /// The instruction set it needs.
    pub isa: Isa,
    /// Filter height and width.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: usize,
    run: Microkernel,
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Defines one variant: a function compiled for the instruction set that instantiates
/// the template, and its table entry.
macro_rules! paste_variant {
    ($isa:expr, $lanes:ty, $suffix:literal, $kh:literal, $kw:literal, $s:literal $(, $feature:literal)?) => {
        Variant {
            name: concat!("f32_dwconv_", $kh, "x", $kw, "s", $s, "_", $suffix),
            isa: $isa,
            kernel: [$kh, $kw],
            stride: $s,
            run: {
                $(#[target_feature(enable = $feature)])?
                unsafe fn run(job: &Job) {
                    template::fill::<$s>(job);
                    template::plane::<$lanes, $kh, $kw, $s>(job)
                }
                run
            },
        }
    };
}

/// Every variant this build has, best first within an architecture. Planning takes the
/// first one the CPU can run for the filter size and stride.
pub static VARIANTS: &[Variant] = &[
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Avx2Fma, super::simd::Avx2, "avx2", 3, 3, 1, "avx2,fma"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Avx2Fma, super::simd::Avx2, "avx2", 3, 3, 2, "avx2,fma"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Avx2Fma, super::simd::Avx2, "avx2", 5, 5, 1, "avx2,fma"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Avx2Fma, super::simd::Avx2, "avx2", 5, 5, 2, "avx2,fma"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Sse41, super::simd::Sse41, "sse41", 3, 3, 1, "sse4.1"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Sse41, super::simd::Sse41, "sse41", 3, 3, 2, "sse4.1"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Sse41, super::simd::Sse41, "sse41", 5, 5, 1, "sse4.1"),
    #[cfg(target_arch = "x86_64")]
    paste_variant!(Isa::Sse41, super::simd::Sse41, "sse41", 5, 5, 2, "sse4.1"),
    #[cfg(target_arch = "aarch64")]
    paste_variant!(Isa::Aarch64Neon, super::simd::Neon, "neon", 3, 3, 1),
    #[cfg(target_arch = "aarch64")]
    paste_variant!(Isa::Aarch64Neon, super::simd::Neon, "neon", 3, 3, 2),
    #[cfg(target_arch = "aarch64")]
    paste_variant!(Isa::Aarch64Neon, super::simd::Neon, "neon", 5, 5, 1),
    #[cfg(target_arch = "aarch64")]
    paste_variant!(Isa::Aarch64Neon, super::simd::Neon, "neon", 5, 5, 2),
    #[cfg(all(target_arch = "arm", target_os = "linux"))]
    neon32::variant(neon32::K3S1),
    #[cfg(all(target_arch = "arm", target_os = "linux"))]
    neon32::variant(neon32::K3S2),
    #[cfg(all(target_arch = "arm", target_os = "linux"))]
    neon32::variant(neon32::K5S1),
    #[cfg(all(target_arch = "arm", target_os = "linux"))]
    neon32::variant(neon32::K5S2),
    paste_variant!(Isa::Portable, super::simd::Portable4, "portable", 3, 3, 1),
    paste_variant!(Isa::Portable, super::simd::Portable4, "portable", 3, 3, 2),
    paste_variant!(Isa::Portable, super::simd::Portable4, "portable", 5, 5, 1),
    paste_variant!(Isa::Portable, super::simd::Portable4, "portable", 5, 5, 2),
];

/// The C microkernels for 32-bit ARM NEON (`neon32.c`, built by `build.rs`).
#[cfg(all(target_arch = "arm", target_os = "linux"))]
mod neon32 {
    use super::{Isa, Job, Microkernel, Variant};

    extern "C" {
        fn perch_f32_dwconv_3x3s1_neon32(job: &Job);
        fn perch_f32_dwconv_3x3s2_neon32(job: &Job);
        fn perch_f32_dwconv_5x5s1_neon32(job: &Job);
        fn perch_f32_dwconv_5x5s2_neon32(job: &Job);
    }

    pub(super) type Entry = (&'static str, usize, usize, Microkernel);

    pub(super) const K3S1: Entry = ("f32_dwconv_3x3s1_neon32", 3, 1, call_3x3s1);
    pub(super) const K3S2: Entry = ("f32_dwconv_3x3s2_neon32", 3, 2, call_3x3s2);
    pub(super) const K5S1: Entry = ("f32_dwconv_5x5s1_neon32", 5, 1, call_5x5s1);
    pub(super) const K5S2: Entry = ("f32_dwconv_5x5s2_neon32", 5, 2, call_5x5s2);

    unsafe fn call_3x3s1(job: &Job) {
        super::template::fill::<1>(job);
        perch_f32_dwconv_3x3s1_neon32(job)
    }
    unsafe fn call_3x3s2(job: &Job) {
        super::template::fill::<2>(job);
        perch_f32_dwconv_3x3s2_neon32(job)
    }
    unsafe fn call_5x5s1(job: &Job) {
        super::template::fill::<1>(job);
        perch_f32_dwconv_5x5s1_neon32(job)
    }
    unsafe fn call_5x5s2(job: &Job) {
        super::template::fill::<2>(job);
        perch_f32_dwconv_5x5s2_neon32(job)
    }

    pub(super) const fn variant((name, k, stride, run): Entry) -> Variant {
        Variant {
            name,
            isa: Isa::ArmNeon,
            kernel: [k, k],
            stride,
            run,
        }
    }
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
    /// Picks the best variant `cpu` runs for this geometry, or says why none covers it.
    pub fn plan(
        geometry: DwGeometry,
        activation: Activation,
        cpu: Cpu,
    ) -> Result<DwConv, Unsupported> {
        Self::plan_among(
            geometry,
            activation,
            VARIANTS.iter().filter(|v| cpu.has(v.isa)),
        )
    }

    /// Plans on one named variant (tests and benchmarks compare them).
    pub fn plan_on(
        geometry: DwGeometry,
        activation: Activation,
        variant: &'static Variant,
    ) -> Result<DwConv, Unsupported> {
        Self::plan_among(geometry, activation, std::iter::once(variant))
    }

    fn plan_among(
        geometry: DwGeometry,
        activation: Activation,
        mut candidates: impl Iterator<Item = &'static Variant>,
    ) -> Result<DwConv, Unsupported> {
        let [kh, kw] = geometry.kernel;
        let s = geometry.stride;
        if !matches!((kh, kw), (3, 3) | (5, 5)) {
            return Err(Unsupported(format!(
                "{kh}x{kw} filter (the kernels cover 3x3 and 5x5)"
            )));
        }
        if !matches!(s, 1 | 2) {
            return Err(Unsupported(format!(
                "stride {s} (the kernels cover 1 and 2)"
            )));
        }
        let variant = candidates
            .find(|v| v.kernel == geometry.kernel && v.stride == s)
            .ok_or_else(|| Unsupported(format!("no {kh}x{kw} stride-{s} kernel for this CPU")))?;
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
        self.geometry.stride * self.geometry.stride * self.geometry.plane_len()
    }

    /// Convolves `images` images: `input` is `images × channels × H × W`, `weights`
    /// `channels × kh × kw`, `bias` one per channel (zero when absent), `output`
    /// `images × channels × Ho × Wo`.
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
        // Padding and slack stay zero: every channel writes the same interior cells.
        scratch.fill(0.0);
        let [h, w] = g.input;
        let [ho, wo] = g.output;
        let [hq, wq] = g.plane_shape();
        let taps = g.kernel[0] * g.kernel[1];
        let (lo, hi) = self.activation.bounds();
        let planes = images * g.channels;
        for p in 0..planes {
            let c = p % g.channels;
            let job = Job {
                input: input[p * h * w..].as_ptr(),
                h,
                w,
                top: g.padding[0],
                left: g.padding[1],
                planes: scratch.as_mut_ptr(),
                plane_len: g.plane_len(),
                hq,
                wq,
                ho,
                wo,
                out: output[p * ho * wo..].as_mut_ptr(),
                room: (planes - p - 1) * ho * wo,
                weights: weights[c * taps..].as_ptr(),
                bias: bias.map_or(0.0, |b| b[c]),
                lo,
                hi,
            };
            // SAFETY: the variant's instruction set was checked when it was planned.
            // Reads: the input plane (h × w, checked above), and the stride-phase
            // planes, which hold hq × wq cells plus SLACK each: that covers every read
            // of the template (see `template::plane`). Writes: the planes' input
            // cells, and the output from this plane's start to the buffer's end (a
            // row spills past its end only into memory written afterwards; the last
            // plane's last row never does).
            unsafe { (self.variant.run)(&job) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

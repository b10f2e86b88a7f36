//! `out[n][m] = requantize(Σ_k x[n][k] · w[m][k] + bias[m])`: 8-bit matrix products with
//! the activations' rows (pixels) contiguous along `k`, as channels-last convolutions
//! and row-major matrix products have them.
//!
//! Variants ([`VARIANTS`]) differ in how they multiply; they share the planning, the
//! per-channel constants and the packing of the weights in `k` blocks of 16 bytes.

use super::{padded_scales, ChannelOutput, OutputQuant, QType, Unsupported};
use crate::{Cpu, Isa};
use job::Job;

/// `k` is padded to a multiple of this in packed weights; activation rows are padded to
/// a variant's `row_align` (at most this).
pub const K_BLOCK: usize = 16;
/// Output channels are padded to a multiple of this in packed weights and constants.
pub const M_BLOCK: usize = 16;

/// The largest `k`: `k · 128 · 127` plus any bias must fit an `i32` accumulator.
pub const MAX_K: usize = 1 << 16;

/// One implementation.
pub struct Variant {
    /// Kernel name, as reports show it: `q8_gemm_neon`.
    pub name: &'static str,
    /// The instruction set it needs.
    pub isa: Isa,
    /// Whether it takes weights of −128 (kernels that add two products in 16 bits
    /// before widening do not).
    pub any_weight: bool,
    /// How it wants the weights packed.
    pub layout: WeightLayout,
    /// The most inputs per output it takes (a kernel for short rows gives way to a
    /// later one); `usize::MAX` for no limit.
    pub max_k: usize,
    /// It reads each activation row to `k` rounded up to a multiple of this: rows of
    /// such a length are used in place, others are first copied, padded.
    pub row_align: usize,
    /// Whether it multiplies the activations as unsigned bytes (`x + 128` for `i8`, `x`
    /// for `u8`) rather than signed ones: its bias is adjusted by `−128 · Σ w`.
    pub unsigned_activations: bool,
    run: unsafe fn(&Job),
}

/// How a variant wants the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Each output channel's `kp` bytes in a row (`mp × kp`).
    Rows,
    /// Blocks of 8 output channels, in each 4 consecutive `k` of each channel: `mp / 8`
    /// blocks of `kp / 4` groups of 32 bytes (`vpdpbusd`'s operand).
    Quads8,
    /// Blocks of 8 output channels, in each one `k` of the 8 channels after another,
    /// each weight widened to 16 bits (two bytes, little-endian): `mp / 8` blocks of
    /// `kp` groups of 16 bytes (one plain load per `k`).
    Octets16,
}

impl WeightLayout {
    /// Bytes per weight.
    fn width(self) -> usize {
        match self {
            WeightLayout::Octets16 => 2,
            WeightLayout::Rows | WeightLayout::Quads8 => 1,
        }
    }

    fn pack(self, weights: &[i8], m: usize, k: usize, mp: usize, kp: usize) -> Vec<i8> {
        let mut packed = vec![0i8; mp * kp * self.width()];
        for (row, w) in weights.chunks_exact(k).enumerate().take(m) {
            for (i, v) in w.iter().enumerate() {
                let at = match self {
                    WeightLayout::Rows => row * kp + i,
                    WeightLayout::Quads8 => {
                        (row / 8) * 8 * kp + (i / 4) * 32 + (row % 8) * 4 + i % 4
                    }
                    WeightLayout::Octets16 => 2 * ((row / 8) * 8 * kp + i * 8 + row % 8),
                };
                // The low byte, then (for 16 bits) the sign's.
                packed[at] = *v;
                if self.width() == 2 {
                    packed[at + 1] = if *v < 0 { -1 } else { 0 };
                }
            }
        }
        packed
    }
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every variant this build has, best first.
pub static VARIANTS: &[Variant] = &[
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "q8_gemm_avxvnni",
        isa: Isa::AvxVnni,
        any_weight: true,
        layout: WeightLayout::Quads8,
        max_k: usize::MAX,
        row_align: 4,
        unsigned_activations: true,
        run: vnni::run,
    },
    #[cfg(target_arch = "aarch64")]
    Variant {
        name: "q8_gemm_neon_lane",
        isa: Isa::Aarch64Neon,
        any_weight: true,
        layout: WeightLayout::Octets16,
        max_k: neon_lane::LANE_MAX_K,
        row_align: 8,
        unsigned_activations: false,
        run: neon_lane::run,
    },
    #[cfg(target_arch = "aarch64")]
    Variant {
        name: "q8_gemm_neon",
        isa: Isa::Aarch64Neon,
        any_weight: false,
        layout: WeightLayout::Rows,
        max_k: usize::MAX,
        row_align: K_BLOCK,
        unsigned_activations: false,
        run: neon::run,
    },
    Variant {
        name: "q8_gemm_portable",
        isa: Isa::Portable,
        any_weight: true,
        layout: WeightLayout::Rows,
        max_k: usize::MAX,
        row_align: 1,
        unsigned_activations: false,
        run: portable,
    },
];

/// A planned 8-bit matrix product: `m` output channels, `k` inputs each.
#[derive(Debug, Clone)]
pub struct Gemm {
    m: usize,
    k: usize,
    kp: usize,
    /// The activation row length the variant reads (`k` rounded up to its `row_align`).
    row: usize,
    mp: usize,
    input: QType,
    output: OutputQuant,
    packed: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    variant: &'static Variant,
}

impl PartialEq for Gemm {
    fn eq(&self, other: &Self) -> bool {
        (self.m, self.k, self.input, self.output) == (other.m, other.k, other.input, other.output)
            && self.packed == other.packed
            && self.bias == other.bias
            && self.scale == other.scale
            && self.variant.name == other.variant.name
    }
}

impl Eq for Gemm {}

impl std::hash::Hash for Gemm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.m, self.k, self.input, self.output).hash(state);
        self.packed.hash(state);
        self.bias.hash(state);
        self.scale
            .iter()
            .map(|s| s.to_bits())
            .for_each(|b| b.hash(state));
        self.variant.name.hash(state);
    }
}

impl Gemm {
    /// Plans the product of `weights` (`m × k`, row-major) with activations of type
    /// `input`, each output channel turned into `output` by `channels[m]` (see
    /// [`super::channel_outputs`]), on the best variant `cpu` runs.
    pub fn plan(
        m: usize,
        k: usize,
        weights: &[i8],
        input: QType,
        channels: &[ChannelOutput],
        output: OutputQuant,
        cpu: Cpu,
    ) -> Result<Gemm, Unsupported> {
        let has_min = weights.contains(&i8::MIN);
        let variant = VARIANTS
            .iter()
            .find(|v| cpu.has(v.isa) && (v.any_weight || !has_min) && k <= v.max_k)
            .expect("a portable variant");
        Self::plan_on(m, k, weights, input, channels, output, variant)
    }

    /// Plans on one given variant (tests and benchmarks compare them).
    pub fn plan_on(
        m: usize,
        k: usize,
        weights: &[i8],
        input: QType,
        channels: &[ChannelOutput],
        output: OutputQuant,
        variant: &'static Variant,
    ) -> Result<Gemm, Unsupported> {
        if m == 0 || k == 0 {
            return Err(Unsupported(format!("empty product ({m} x {k})")));
        }
        if k > MAX_K {
            return Err(Unsupported(format!(
                "{k} inputs per output (at most {MAX_K} fit an i32 accumulator)"
            )));
        }
        if k > variant.max_k {
            return Err(Unsupported(format!(
                "{} takes at most {} inputs per output, not {k}",
                variant.name, variant.max_k
            )));
        }
        if !variant.any_weight && weights.contains(&i8::MIN) {
            return Err(Unsupported(format!(
                "{} takes no weight of -128",
                variant.name
            )));
        }
        if Some(weights.len()) != m.checked_mul(k) || channels.len() != m {
            return Err(Unsupported(format!(
                "{} weights and {} channels for {m} x {k}",
                weights.len(),
                channels.len()
            )));
        }
        let kp = k.div_ceil(K_BLOCK) * K_BLOCK;
        let mp = m.div_ceil(M_BLOCK) * M_BLOCK;
        let packed = variant.layout.pack(weights, m, k, mp, kp);
        // A variant reading activations unsigned sums (x_s + 128)·w: 128·Σw more.
        let unsigned_offset = |row: usize| -> i64 {
            if variant.unsigned_activations {
                -128 * weights[row * k..(row + 1) * k]
                    .iter()
                    .map(|w| *w as i64)
                    .sum::<i64>()
            } else {
                0
            }
        };
        let mut bias = vec![0i32; mp];
        for (row, c) in channels.iter().enumerate() {
            bias[row] = i32::try_from(c.bias as i64 + unsigned_offset(row))
                .map_err(|_| Unsupported(format!("channel {row}: bias overflows i32")))?;
        }
        let scale = padded_scales(channels, mp);
        Ok(Gemm {
            m,
            k,
            kp,
            row: k.div_ceil(variant.row_align) * variant.row_align,
            mp,
            input,
            output,
            packed,
            bias,
            scale,
            variant,
        })
    }

    /// The variant that runs it.
    pub fn variant(&self) -> &'static Variant {
        self.variant
    }

    /// Output channels.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Inputs per output.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The row length the activations need for [`Gemm::run_padded`]: `k` rounded up to
    /// what the variant reads (at most [`K_BLOCK`] more).
    pub fn padded_k(&self) -> usize {
        self.row
    }

    /// Scratch bytes [`Gemm::run`] needs for `n` rows (none when rows of `k` bytes can
    /// be read in place).
    pub fn scratch_len(&self, n: usize) -> usize {
        if self.k == self.row {
            0
        } else {
            n * self.row
        }
    }

    /// `n` rows of `k` activation bytes, contiguous, into `n` rows of `m` output bytes.
    /// Rows shorter than [`Gemm::padded_k`] are first copied into `scratch`, padded.
    // Never inlined: see `q8::im2col::im2col`.
    #[inline(never)]
    pub fn run(
        &self,
        n: usize,
        x: &[u8],
        y: &mut [u8],
        scratch: &mut [u8],
    ) -> Result<(), Unsupported> {
        if Some(x.len()) != n.checked_mul(self.k) || Some(y.len()) != n.checked_mul(self.m) {
            return Err(Unsupported(format!(
                "{} input and {} output bytes for {n} rows of {} x {}",
                x.len(),
                y.len(),
                self.k,
                self.m
            )));
        }
        if self.k == self.row {
            // SAFETY: lengths checked; rows are row = k bytes long.
            unsafe { self.call(n, x.as_ptr(), self.k, y) };
            return Ok(());
        }
        let have = scratch.len();
        let padded = scratch.get_mut(..n * self.row).ok_or_else(|| {
            Unsupported(format!("scratch has {have} bytes, {} needed", n * self.row))
        })?;
        for (dst, src) in padded
            .chunks_exact_mut(self.row)
            .zip(x.chunks_exact(self.k))
        {
            dst[..self.k].copy_from_slice(src);
        }
        // SAFETY: `padded` holds n rows of `row` bytes.
        unsafe { self.call(n, padded.as_ptr(), self.row, y) };
        Ok(())
    }

    /// [`Gemm::run`] on rows already padded to [`Gemm::padded_k`] bytes (im2col writes
    /// them so), `x_stride` apart.
    // Never inlined: see `q8::im2col::im2col`.
    #[inline(never)]
    pub fn run_padded(
        &self,
        n: usize,
        x: &[u8],
        x_stride: usize,
        y: &mut [u8],
    ) -> Result<(), Unsupported> {
        let need = n
            .checked_sub(1)
            .map(|r| r * x_stride + self.row)
            .unwrap_or(0);
        if x_stride < self.row || x.len() < need || Some(y.len()) != n.checked_mul(self.m) {
            return Err(Unsupported(format!(
                "{} input bytes (stride {x_stride}) and {} output bytes for {n} rows of {} x {}",
                x.len(),
                y.len(),
                self.row,
                self.m
            )));
        }
        // SAFETY: lengths checked.
        unsafe { self.call(n, x.as_ptr(), x_stride, y) };
        Ok(())
    }

    /// # Safety
    /// `x` must hold `n` rows of `row` bytes `x_stride` apart; `y` `n × m` bytes.
    unsafe fn call(&self, n: usize, x: *const u8, x_stride: usize, y: &mut [u8]) {
        if n == 0 {
            return;
        }
        let job = Job {
            x,
            x_stride,
            n,
            w: self.packed.as_ptr(),
            kp: self.kp,
            k: self.k,
            m: self.m,
            mp: self.mp,
            y: y.as_mut_ptr(),
            y_stride: self.m,
            bias: self.bias.as_ptr(),
            scale: self.scale.as_ptr(),
            zero_point: self.output.zero_point,
            lo: self.output.lo,
            hi: self.output.hi,
            unsigned_input: self.input == QType::U8,
            unsigned_output: self.output.dtype == QType::U8,
        };
        (self.variant.run)(&job)
    }
}

/// The reference, in plain Rust: every variant matches it bit for bit.
///
/// # Safety
/// `job` must describe valid buffers.
unsafe fn portable(job: &Job) {
    for n in 0..job.n {
        let x = std::slice::from_raw_parts(job.x.add(n * job.x_stride), job.k);
        for m in 0..job.m {
            let w = std::slice::from_raw_parts(job.w.add(m * job.kp), job.kp);
            let mut acc = *job.bias.add(m);
            for (x, w) in x.iter().zip(w) {
                let x = if job.unsigned_input {
                    (x ^ 0x80) as i8
                } else {
                    *x as i8
                };
                acc = acc.wrapping_add(x as i32 * *w as i32);
            }
            *job.y.add(n * job.y_stride + m) =
                super::reference_output(acc, *job.scale.add(m), [job.zero_point, job.lo, job.hi]);
        }
    }
}

mod job;

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_lane;

#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(test)]
mod tests;

//! x86-64 AVX-VNNI: `VPDPBUSD` multiplies 4 unsigned activation bytes by 4 signed weight
//! bytes and adds the four products to a 32-bit lane, for eight output channels at once:
//! 32 multiply-accumulates per instruction, none saturating.
//!
//! The activations are read unsigned (an `i8` input has its top bit flipped: `x + 128`);
//! planning subtracted `128 · Σ w` from the bias for it (`Variant::unsigned_activations`).
//! Weights are packed in blocks of 8 channels × 4 `k` (`WeightLayout::Quads8`), so each
//! group of 4 activation bytes is broadcast and meets one 32-byte load per block. A tile
//! is 4 pixels × 16 channels: 8 accumulators, 4 broadcasts and 2 loads per 8 `VPDPBUSD`.
//! Requantization (`kernels::requant`): 64-bit products with `VPMULDQ` on even and odd
//! lanes, one rounding shift done as a logical shift of a biased value (AVX2 has no
//! arithmetic 64-bit shift), saturation to 32 bits, the zero point and the clamp.

use std::arch::x86_64::*;

use super::Job;

/// Pixels per tile.
const PIXELS: usize = 4;

/// # Safety
/// `job` must describe valid buffers with weights packed as `Quads8`, `mp` a multiple of
/// 16; the CPU must have AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn run(job: &Job) {
    let mut n0 = 0;
    while n0 + PIXELS <= job.n {
        tile::<PIXELS>(job, n0);
        n0 += PIXELS;
    }
    while n0 < job.n {
        tile::<1>(job, n0);
        n0 += 1;
    }
}

/// Pixels `n0 .. n0 + P`, every output channel; 16-channel tiles from the last down and
/// within each the upper 8 first, so a block stored whole past the last channel spills
/// only into later pixels' first channels, stored afterwards.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const P: usize>(job: &Job, n0: usize) {
    let flip = _mm256_set1_epi32(if job.unsigned_input {
        0
    } else {
        0x8080_8080u32 as i32
    });
    let end = job.n * job.y_stride;
    let quads = job.kp / 4;
    let mut tile16 = job.mp / 16;
    while tile16 > 0 {
        tile16 -= 1;
        let m0 = tile16 * 16;
        let w0 = job.w.add(m0 * job.kp) as *const __m256i;
        let w1 = job.w.add((m0 + 8) * job.kp) as *const __m256i;
        let mut acc = [[_mm256_setzero_si256(); 2]; P];
        for q in 0..quads {
            let a = _mm256_loadu_si256(w0.add(q));
            let b = _mm256_loadu_si256(w1.add(q));
            for j in 0..P {
                let x = (job.x.add((n0 + j) * job.x_stride + 4 * q) as *const i32).read_unaligned();
                let x = _mm256_xor_si256(_mm256_set1_epi32(x), flip);
                acc[j][0] = _mm256_dpbusd_avx_epi32(acc[j][0], x, a);
                acc[j][1] = _mm256_dpbusd_avx_epi32(acc[j][1], x, b);
            }
        }
        for half in [1, 0] {
            let c0 = m0 + 8 * half;
            let consts = Constants::load(job, c0);
            for j in 0..P {
                let bytes = consts.output(acc[j][half]);
                let at = (n0 + j) * job.y_stride + c0;
                let out = job.y.add(at);
                if at + 8 <= end {
                    _mm_storel_epi64(out as *mut __m128i, bytes);
                } else {
                    let mut lanes = [0u8; 16];
                    _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, bytes);
                    let n = job.m.saturating_sub(c0).min(8);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), out, n);
                }
            }
        }
    }
}

/// One 8-channel block's bias, requantization, zero point and clamp, in registers.
struct Constants {
    bias: __m256i,
    multiplier: __m256i,
    multiplier_odd: __m256i,
    /// Per even/odd lane: the shift, the bias making the product positive plus the
    /// rounding half, and that bias shifted back out.
    shift: [__m256i; 2],
    add: [__m256i; 2],
    sub: [__m256i; 2],
    lo: __m256i,
    hi: __m256i,
    zero_point: __m256i,
    unsigned_output: bool,
}

impl Constants {
    #[inline(always)]
    unsafe fn load(job: &Job, c0: usize) -> Constants {
        let multiplier = _mm256_loadu_si256(job.multiplier.add(c0) as *const __m256i);
        // Shifts of channels c0..c0+8, split into even and odd lanes of 64 bits.
        let shifts: [i64; 8] = std::array::from_fn(|i| -*job.shift.add(c0 + i));
        let lanes = |odd: usize, f: &dyn Fn(i64) -> i64| {
            _mm256_setr_epi64x(
                f(shifts[odd]),
                f(shifts[2 + odd]),
                f(shifts[4 + odd]),
                f(shifts[6 + odd]),
            )
        };
        const BIAS: i64 = 1 << 62;
        let shift = [lanes(0, &|s| s), lanes(1, &|s| s)];
        let add = [
            lanes(0, &|s| BIAS + (1 << (s - 1))),
            lanes(1, &|s| BIAS + (1 << (s - 1))),
        ];
        let sub = [lanes(0, &|s| BIAS >> s), lanes(1, &|s| BIAS >> s)];
        Constants {
            bias: _mm256_loadu_si256(job.bias.add(c0) as *const __m256i),
            multiplier,
            multiplier_odd: _mm256_srli_epi64(multiplier, 32),
            shift,
            add,
            sub,
            lo: _mm256_set1_epi32(job.lo - job.zero_point),
            hi: _mm256_set1_epi32(job.hi - job.zero_point),
            zero_point: _mm256_set1_epi32(job.zero_point),
            unsigned_output: job.unsigned_output,
        }
    }

    /// The eight output bytes (in the low 8 of a vector) of eight accumulators.
    #[inline(always)]
    unsafe fn output(&self, acc: __m256i) -> __m128i {
        let v = _mm256_add_epi32(acc, self.bias);
        let even = _mm256_mul_epi32(v, self.multiplier);
        let odd = _mm256_mul_epi32(_mm256_srli_epi64(v, 32), self.multiplier_odd);
        let even = self.round(even, 0);
        let odd = self.round(odd, 1);
        let v = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0b1010_1010);
        // Clamp before adding the zero point: the same as a saturating add, then clamp.
        let v = _mm256_min_epi32(_mm256_max_epi32(v, self.lo), self.hi);
        let v = _mm256_add_epi32(v, self.zero_point);
        let words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        if self.unsigned_output {
            _mm_packus_epi16(words, words)
        } else {
            _mm_packs_epi16(words, words)
        }
    }

    /// `(p + 2^(s−1)) >> s` arithmetic, saturated to `i32`, in the low half of each
    /// 64-bit lane: `p + 2^62` is positive for every product, so a logical shift does.
    #[inline(always)]
    unsafe fn round(&self, p: __m256i, lane: usize) -> __m256i {
        let shifted = _mm256_srlv_epi64(_mm256_add_epi64(p, self.add[lane]), self.shift[lane]);
        let r = _mm256_sub_epi64(shifted, self.sub[lane]);
        let max = _mm256_set1_epi64x(i32::MAX as i64);
        let min = _mm256_set1_epi64x(i32::MIN as i64);
        let r = _mm256_blendv_epi8(r, max, _mm256_cmpgt_epi64(r, max));
        _mm256_blendv_epi8(r, min, _mm256_cmpgt_epi64(min, r))
    }
}

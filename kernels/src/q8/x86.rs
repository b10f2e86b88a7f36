//! x86-64 pieces the 8-bit kernels share (AVX2).

use std::arch::x86_64::*;

/// One 8-channel block's bias, requantization (`kernels::requant`: `CVTDQ2PS`, `MULPS`,
/// a clamp in `f32` to the output's bounds less the zero point, `CVTPS2DQ` rounding half
/// to even), zero point and narrowing, in registers.
pub(crate) struct Requant8 {
    bias: __m256i,
    scale: __m256,
    lo: __m256,
    hi: __m256,
    zero_point: __m256i,
    unsigned_output: bool,
}

impl Requant8 {
    #[inline(always)]
    pub(crate) unsafe fn load(
        bias: *const i32,
        scale: *const f32,
        [lo, hi, zero_point]: [i32; 3],
        unsigned_output: bool,
    ) -> Requant8 {
        Requant8 {
            bias: _mm256_loadu_si256(bias as *const __m256i),
            scale: _mm256_loadu_ps(scale),
            lo: _mm256_set1_ps((lo - zero_point) as f32),
            hi: _mm256_set1_ps((hi - zero_point) as f32),
            zero_point: _mm256_set1_epi32(zero_point),
            unsigned_output,
        }
    }

    /// The eight output bytes (in the low 8 of a vector) of eight accumulators.
    #[inline(always)]
    pub(crate) unsafe fn output(&self, acc: __m256i) -> __m128i {
        let v = _mm256_cvtepi32_ps(_mm256_add_epi32(acc, self.bias));
        let v = _mm256_mul_ps(v, self.scale);
        // Clamped before rounding: `CVTPS2DQ` overflows to `i32::MIN` whatever the sign,
        // and rounding commutes with a clamp to integers.
        let v = _mm256_min_ps(_mm256_max_ps(v, self.lo), self.hi);
        let v = _mm256_add_epi32(_mm256_cvtps_epi32(v), self.zero_point);
        let words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        if self.unsigned_output {
            _mm_packus_epi16(words, words)
        } else {
            _mm_packs_epi16(words, words)
        }
    }
}

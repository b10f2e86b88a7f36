//! x86-64 pieces the 8-bit kernels share (AVX2).

use std::arch::x86_64::*;

/// One 8-channel block's bias, requantization (`kernels::requant`: 64-bit products with
/// `VPMULDQ` on even and odd lanes, one rounding shift done as a logical shift of a
/// biased value, as AVX2 has no arithmetic 64-bit shift), zero point and clamp, in
/// registers.
pub(crate) struct Requant8 {
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

impl Requant8 {
    #[inline(always)]
    pub(crate) unsafe fn load(
        bias: *const i32,
        multiplier: *const i32,
        shift: *const i64,
        [lo, hi, zero_point]: [i32; 3],
        unsigned_output: bool,
    ) -> Requant8 {
        let multiplier = _mm256_loadu_si256(multiplier as *const __m256i);
        // Shifts of the eight channels, split into even and odd lanes of 64 bits.
        let shifts: [i64; 8] = std::array::from_fn(|i| -*shift.add(i));
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
        Requant8 {
            bias: _mm256_loadu_si256(bias as *const __m256i),
            multiplier,
            multiplier_odd: _mm256_srli_epi64(multiplier, 32),
            shift,
            add,
            sub,
            lo: _mm256_set1_epi32(lo - zero_point),
            hi: _mm256_set1_epi32(hi - zero_point),
            zero_point: _mm256_set1_epi32(zero_point),
            unsigned_output,
        }
    }

    /// The eight output bytes (in the low 8 of a vector) of eight accumulators.
    #[inline(always)]
    pub(crate) unsafe fn output(&self, acc: __m256i) -> __m128i {
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

//! x86-64 SSE4.1: sixteen values per step. `CVTPS2DQ` rounds half to even under the
//! default rounding mode but gives `i32::MIN` for NaN and for anything beyond ±2^31, so
//! the product is first made 0 where it is NaN (`CMPORDPS`) and clamped to ±65536,
//! which changes nothing after the 16-bit saturation (the clamp's bounds are integers,
//! so rounding commutes with it). `PACKSSDW`, `PADDSW` and `PACKUSWB` then add the
//! zero point and saturate to bytes as the NEON kernel does. The last `n % 16` values
//! go through the reference.

use std::arch::x86_64::*;

use super::job::Job;

/// # Safety
/// `x` and `y` hold `n` elements; the CPU has SSE4.1.
#[target_feature(enable = "sse4.1")]
pub(super) unsafe fn quantize(job: &Job, x: *const f32, y: *mut u8, n: usize) {
    let flip = _mm_set1_epi8(job.flip as i8);
    let zero_point = _mm_set1_epi16(job.zero_point as i16);
    let inverse = _mm_set1_ps(job.inverse_scale);
    let (lo, hi) = (_mm_set1_ps(-65536.0), _mm_set1_ps(65536.0));
    let mut i = 0;
    while i + 16 <= n {
        let q: [__m128i; 4] = std::array::from_fn(|j| {
            let f = _mm_mul_ps(_mm_loadu_ps(x.add(i + 4 * j)), inverse);
            let f = _mm_and_ps(f, _mm_cmpord_ps(f, f));
            _mm_cvtps_epi32(_mm_min_ps(_mm_max_ps(f, lo), hi))
        });
        _mm_storeu_si128(y.add(i) as *mut __m128i, pack_bytes(q, zero_point, flip));
        i += 16;
    }
    for j in i..n {
        *y.add(j) = job.one(*x.add(j));
    }
}

/// Sixteen rounded 32-bit values as output bytes: narrowed to 16 bits, the zero point
/// added and saturated to bytes in the unsigned form (`PACKSSDW`, `PADDSW`, `PACKUSWB`),
/// then flipped to the stored type. The addition kernel ends the same way.
///
/// # Safety
/// The CPU has SSE2 (every x86-64 does).
#[inline(always)]
pub(in crate::q8) unsafe fn pack_bytes(
    q: [__m128i; 4],
    zero_point: __m128i,
    flip: __m128i,
) -> __m128i {
    let lo = _mm_adds_epi16(_mm_packs_epi32(q[0], q[1]), zero_point);
    let hi = _mm_adds_epi16(_mm_packs_epi32(q[2], q[3]), zero_point);
    _mm_xor_si128(_mm_packus_epi16(lo, hi), flip)
}

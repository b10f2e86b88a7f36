//! x86-64 SSE4.1: sixteen elements per step, four bytes at a time widened to 32 bits
//! (`PMOVZXBD`), the zero point subtracted, converted (`CVTDQ2PS`) and scaled; the
//! sum scaled by the inverse output scale is rounded by `CVTPS2DQ` under the default
//! rounding mode, half to even as the reference rounds (the plan keeps it within
//! ±2^24, far from the conversion's overflow). `PACKSSDW`, `PADDSW` and `PACKUSWB`
//! add the zero point and saturate to bytes as the NEON kernel does. The last
//! `n % 16` elements go through the reference.

use std::arch::x86_64::*;

use super::job::Job;
use crate::q8::quantize::sse41::pack_bytes;

/// Four vectors of `(x − zx) · sx` from sixteen bytes at `p`.
#[inline(always)]
unsafe fn dequantize(
    p: *const u8,
    flip: __m128i,
    zero_point: __m128i,
    scale: __m128,
) -> [__m128; 4] {
    let x = _mm_xor_si128(_mm_loadu_si128(p as *const __m128i), flip);
    let f = |v: __m128i| {
        _mm_mul_ps(
            _mm_cvtepi32_ps(_mm_sub_epi32(_mm_cvtepu8_epi32(v), zero_point)),
            scale,
        )
    };
    [
        f(x),
        f(_mm_srli_si128::<4>(x)),
        f(_mm_srli_si128::<8>(x)),
        f(_mm_srli_si128::<12>(x)),
    ]
}

/// # Safety
/// `a`, `b` and `y` hold `n` bytes; the CPU has SSE4.1.
#[target_feature(enable = "sse4.1")]
pub(super) unsafe fn add(job: &Job, a: *const u8, b: *const u8, y: *mut u8, n: usize) {
    let (a_flip, b_flip, y_flip) = (
        _mm_set1_epi8(job.a_flip as i8),
        _mm_set1_epi8(job.b_flip as i8),
        _mm_set1_epi8(job.y_flip as i8),
    );
    let (za, zb) = (
        _mm_set1_epi32(job.a_zero_point),
        _mm_set1_epi32(job.b_zero_point),
    );
    let (sa, sb, inverse) = (
        _mm_set1_ps(job.a_scale),
        _mm_set1_ps(job.b_scale),
        _mm_set1_ps(job.inverse_scale),
    );
    let zy = _mm_set1_epi16(job.zero_point as i16);
    let mut i = 0;
    while i + 16 <= n {
        let fa = dequantize(a.add(i), a_flip, za, sa);
        let fb = dequantize(b.add(i), b_flip, zb, sb);
        let q: [__m128i; 4] =
            std::array::from_fn(|j| _mm_cvtps_epi32(_mm_mul_ps(_mm_add_ps(fa[j], fb[j]), inverse)));
        _mm_storeu_si128(y.add(i) as *mut __m128i, pack_bytes(q, zy, y_flip));
        i += 16;
    }
    for j in i..n {
        *y.add(j) = job.one(*a.add(j), *b.add(j));
    }
}

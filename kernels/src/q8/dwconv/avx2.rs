//! x86-64 AVX2: sixteen channels per block, two output pixels at a time.
//!
//! Each tap's sixteen input and filter bytes are widened to 16 bits (`VPMOVSXBW`), and
//! taps go in pairs: the two taps' values interleaved (`VPUNPCKLWD`/`VPUNPCKHWD`) meet
//! the two taps' filters interleaved the same way in `VPMADDWD`, which adds both
//! products of a channel into its 32-bit lane, exactly (any weight, −128 included). The
//! interleave leaves channels `0–3, 8–11` in one accumulator and `4–7, 12–15` in the
//! other; they are put back in order before the shared requantization
//! (`q8::x86::Requant8`).

use std::arch::x86_64::*;

use super::job::Job;
use crate::q8::in_tiles;
use crate::q8::x86::Requant8;

/// Pixels computed together (sharing the filter taps loaded for a channel block).
const PIXELS: usize = 2;

/// # Safety
/// As for `Job`; the CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn image<const KH: usize, const KW: usize, const S: usize>(job: &Job) {
    for y in 0..job.ho {
        in_tiles!(pixels[KH, KW, S], PIXELS, job.wo, (job, y));
    }
}

/// Pixels `x .. x + P` of output row `y`, every channel, in `Job`'s store order.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn pixels<const KH: usize, const KW: usize, const S: usize, const P: usize>(
    job: &Job,
    y: usize,
    x: usize,
) {
    let c = job.c;
    let end = job.ho * job.wo * c + job.room;
    let mut c0 = (c - 1) / 16 * 16;
    loop {
        // [0] channels 0-3 and 8-11, [1] channels 4-7 and 12-15 of the block.
        let mut acc = [[_mm256_setzero_si256(); 2]; P];
        // Tap `t` of pixel `x + j`'s input, and tap `t`'s weights, for the block's channels.
        let input = |j: usize, t: usize| {
            let (ky, kx) = (t / KW, t % KW);
            job.padded
                .add(((y * job.row_step + ky) * job.wp + (x + j) * S + kx) * c + c0)
        };
        let weight = |t: usize| job.weights.add(t * job.cp + c0);
        let taps = KH * KW;
        let mut t = 0;
        while t < taps {
            let w0 = widen(weight(t));
            let w1 = if t + 1 < taps {
                widen(weight(t + 1))
            } else {
                _mm256_setzero_si256()
            };
            let (wl, wh) = (_mm256_unpacklo_epi16(w0, w1), _mm256_unpackhi_epi16(w0, w1));
            for j in 0..P {
                let x0 = widen(input(j, t));
                // A zero filter for the odd tap out: its input may be anything read.
                let x1 = if t + 1 < taps {
                    widen(input(j, t + 1))
                } else {
                    x0
                };
                let (xl, xh) = (_mm256_unpacklo_epi16(x0, x1), _mm256_unpackhi_epi16(x0, x1));
                acc[j][0] = _mm256_add_epi32(acc[j][0], _mm256_madd_epi16(xl, wl));
                acc[j][1] = _mm256_add_epi32(acc[j][1], _mm256_madd_epi16(xh, wh));
            }
            t += 2;
        }
        let params = [job.lo, job.hi, job.zero_point];
        let halves = [0, 8].map(|h| {
            Requant8::load(
                job.bias.add(c0 + h),
                job.scale.add(c0 + h),
                params,
                job.unsigned_output,
            )
        });
        for j in 0..P {
            let [a, b] = acc[j];
            let first = _mm256_permute2x128_si256::<0x20>(a, b);
            let second = _mm256_permute2x128_si256::<0x31>(a, b);
            let bytes = _mm_unpacklo_epi64(halves[0].output(first), halves[1].output(second));
            let at = (y * job.wo + x + j) * c + c0;
            if at + 16 <= end {
                _mm_storeu_si128(job.out.add(at) as *mut __m128i, bytes);
            } else {
                let mut lanes = [0u8; 16];
                _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, bytes);
                let n = (c - c0).min(16);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), job.out.add(at), n);
            }
        }
        if c0 == 0 {
            break;
        }
        c0 -= 16;
    }
}

/// Sixteen signed bytes at `p` widened to 16 bits. Not in a closure: a closure does not
/// inherit `image`'s AVX2, so intrinsics in one stay calls wherever the closure is not
/// inlined (dev builds: the 8-bit depthwise ran at 2.4–2.9 GFLOP/s on R4). The closures
/// above only compute addresses.
///
/// # Safety
/// `p` readable for 16 bytes; the CPU has AVX2.
#[inline(always)]
unsafe fn widen(p: *const i8) -> __m256i {
    _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i))
}

//! aarch64 Advanced SIMD: sixteen elements per step.
//!
//! `USUBL`/`USUBL2` take the zero point off each operand's bytes into 16-bit lanes
//! (`a − za` is within ±255), `SXTL` widens them to 32 bits, `SCVTF` converts and
//! `FMUL` scales; the sum is multiplied by the inverse output scale and `FCVTNS`
//! rounds it half to even, as the reference does. `SQXTN` and `SQADD` add the zero
//! point in 16 bits and `SQXTUN` saturates to bytes, which equals the reference's clamp
//! of the 32-bit value (the plan keeps it within ±2^24, so only a 16-bit saturation to
//! a value beyond 0 ..= 255 can happen, and `SQXTUN` then clamps it to the same end).
//! The last `n % 16` elements go through the reference.

use std::arch::aarch64::*;

use super::job::Job;
use crate::q8::quantize::neon::pack_bytes;

/// One operand's sixteen bytes as four vectors of `(x − zx) · sx`.
#[inline(always)]
unsafe fn dequantize(
    p: *const u8,
    flip: uint8x16_t,
    zero_point: uint8x8_t,
    scale: f32,
) -> [float32x4_t; 4] {
    let x = veorq_u8(vld1q_u8(p), flip);
    let lo = vreinterpretq_s16_u16(vsubl_u8(vget_low_u8(x), zero_point));
    let hi = vreinterpretq_s16_u16(vsubl_high_u8(x, vcombine_u8(zero_point, zero_point)));
    let f = |v: int32x4_t| vmulq_n_f32(vcvtq_f32_s32(v), scale);
    [
        f(vmovl_s16(vget_low_s16(lo))),
        f(vmovl_high_s16(lo)),
        f(vmovl_s16(vget_low_s16(hi))),
        f(vmovl_high_s16(hi)),
    ]
}

/// # Safety
/// `a`, `b` and `y` hold `n` bytes.
pub(super) unsafe fn add(job: &Job, a: *const u8, b: *const u8, y: *mut u8, n: usize) {
    let (a_flip, b_flip, y_flip) = (
        vdupq_n_u8(job.a_flip),
        vdupq_n_u8(job.b_flip),
        vdupq_n_u8(job.y_flip),
    );
    // The unsigned forms' zero points are 0 ..= 255.
    let (za, zb) = (
        vdup_n_u8(job.a_zero_point as u8),
        vdup_n_u8(job.b_zero_point as u8),
    );
    let zy = vdupq_n_s16(job.zero_point as i16);
    let mut i = 0;
    while i + 16 <= n {
        let fa = dequantize(a.add(i), a_flip, za, job.a_scale);
        let fb = dequantize(b.add(i), b_flip, zb, job.b_scale);
        let q: [int32x4_t; 4] = std::array::from_fn(|j| {
            vcvtnq_s32_f32(vmulq_n_f32(vaddq_f32(fa[j], fb[j]), job.inverse_scale))
        });
        vst1q_u8(y.add(i), pack_bytes(q, zy, y_flip));
        i += 16;
    }
    for j in i..n {
        *y.add(j) = job.one(*a.add(j), *b.add(j));
    }
}

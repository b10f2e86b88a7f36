//! aarch64 Advanced SIMD: sixteen values per step. `FMUL` scales, `FCVTNS` rounds half to
//! even and saturates to 32 bits (NaN to 0), as the reference's `as` does; `SQXTN`,
//! `SQADD` and `SQXTUN` narrow, add the zero point and saturate to bytes, which equals
//! the reference's saturating add and clamp (each step saturates towards the same end).
//! The last `n % 16` values go through the reference.

use std::arch::aarch64::*;

use super::Job;

/// # Safety
/// `x` and `y` hold `n` elements.
pub(super) unsafe fn quantize(job: &Job, x: *const f32, y: *mut u8, n: usize) {
    let flip = vdupq_n_u8(job.flip);
    let zero_point = vdupq_n_s16(job.zero_point as i16);
    let mut i = 0;
    while i + 16 <= n {
        let q: [int32x4_t; 4] = std::array::from_fn(|j| {
            vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x.add(i + 4 * j)), job.inverse_scale))
        });
        let lo = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(q[0]), q[1]), zero_point);
        let hi = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(q[2]), q[3]), zero_point);
        let bytes = vqmovun_high_s16(vqmovun_s16(lo), hi);
        vst1q_u8(y.add(i), veorq_u8(bytes, flip));
        i += 16;
    }
    for j in i..n {
        *y.add(j) = job.one(*x.add(j));
    }
}

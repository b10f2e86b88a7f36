//! aarch64 Advanced SIMD: sixteen values per step. `FMUL` scales, `FCVTNS` rounds half to
//! even and saturates to 32 bits (NaN to 0), as the reference's `as` does; `SQXTN`,
//! `SQADD` and `SQXTUN` narrow, add the zero point and saturate to bytes, which equals
//! the reference's saturating add and clamp (each step saturates towards the same end).
//! The last `n % 16` values go through the reference.

use std::arch::aarch64::*;

use super::job::Job;

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
        vst1q_u8(y.add(i), pack_bytes(q, zero_point, flip));
        i += 16;
    }
    for j in i..n {
        *y.add(j) = job.one(*x.add(j));
    }
}

/// Sixteen rounded 32-bit values as output bytes: narrowed to 16 bits, the zero point
/// added and saturated to bytes in the unsigned form (`SQXTN`, `SQADD`, `SQXTUN`), then
/// flipped to the stored type. The addition kernel ends the same way.
#[inline(always)]
pub(in crate::q8) unsafe fn pack_bytes(
    q: [int32x4_t; 4],
    zero_point: int16x8_t,
    flip: uint8x16_t,
) -> uint8x16_t {
    let lo = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(q[0]), q[1]), zero_point);
    let hi = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(q[2]), q[3]), zero_point);
    veorq_u8(vqmovun_high_s16(vqmovun_s16(lo), hi), flip)
}

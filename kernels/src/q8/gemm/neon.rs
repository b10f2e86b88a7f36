//! aarch64 Advanced SIMD, without the dot-product instructions (Cortex-A53/A72: Pi 3/4).
//!
//! Four pixels by four output channels per tile. For each 16-byte block of `k`, one
//! pixel and one channel: `SMULL` multiplies the low 8 byte pairs into 16-bit lanes,
//! `SMLAL2` adds the high 8 products to the same lanes (two products of at most
//! 128 · 127 fit 16 bits, hence weights must not be −128: planning checks), and `SADALP`
//! adds the pairs of lanes into four 32-bit partial sums: 16 multiply-accumulates in three
//! instructions, where `FMLA` does four. The partial sums are added across at the end and
//! requantized in `f32` (see `kernels::requant`).

use std::arch::aarch64::*;

use super::job::Job;
use crate::q8::in_tiles;

/// Pixels per tile.
const PIXELS: usize = 4;

/// # Safety
/// `job` must describe valid buffers (see `Job`), and every weight must be in
/// `−127 ..= 127`.
pub(super) unsafe fn run(job: &Job) {
    in_tiles!(tile[], PIXELS, job.n, (job));
}

/// Pixels `n0 .. n0 + P`, every output channel. Channel blocks go from the last down,
/// so that a block stored whole past the last channel spills only into later pixels'
/// first block, stored afterwards; a store that would pass the output's end is made
/// byte by byte.
// `c` and `j` index weights, inputs and accumulators alike.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const P: usize>(job: &Job, n0: usize) {
    let flip = vdupq_n_u8(if job.unsigned_input { 0x80 } else { 0 });
    let zero_point = vdupq_n_s32(job.zero_point);
    let lo = vdupq_n_s32(job.lo);
    let hi = vdupq_n_s32(job.hi);
    // The same in 16 and 8 bits (the bounds as the output type's bytes).
    let zero_point16 = vdupq_n_s16(job.zero_point as i16);
    let lo8 = vdup_n_u8(job.lo as u8);
    let hi8 = vdup_n_u8(job.hi as u8);
    // Blocks of four that hold a real channel: `mp` is padded for wider kernels.
    let mut block = job.m.div_ceil(4);
    while block > 0 {
        block -= 1;
        let m0 = block * 4;
        let w = job.w.add(m0 * job.kp);
        let mut acc = [[vdupq_n_s32(0); 4]; P];
        let mut k = 0;
        while k < job.kp {
            let mut xs = [vdupq_n_s8(0); P];
            for j in 0..P {
                let x = vld1q_u8(job.x.add((n0 + j) * job.x_stride + k));
                xs[j] = vreinterpretq_s8_u8(veorq_u8(x, flip));
            }
            let mut ws = [vdupq_n_s8(0); 4];
            for c in 0..4 {
                ws[c] = vld1q_s8(w.add(c * job.kp + k));
            }
            for j in 0..P {
                for c in 0..4 {
                    let p = vmull_s8(vget_low_s8(xs[j]), vget_low_s8(ws[c]));
                    let p = vmlal_high_s8(p, xs[j], ws[c]);
                    acc[j][c] = vpadalq_s16(acc[j][c], p);
                }
            }
            k += 16;
        }
        let bias = vld1q_s32(job.bias.add(m0));
        let scale = vld1q_f32(job.scale.add(m0));
        let mut r = [vdupq_n_s32(0); P];
        for j in 0..P {
            // [c0, c1, c2, c3]: each channel's four partial sums added.
            let s01 = vpaddq_s32(acc[j][0], acc[j][1]);
            let s23 = vpaddq_s32(acc[j][2], acc[j][3]);
            r[j] = requantize(vaddq_s32(vpaddq_s32(s01, s23), bias), scale);
        }
        // Two pixels' four channels at a time, in 16 and then 8 bits (`output_bytes`).
        let mut j = 0;
        while j + 2 <= P {
            let wide = with_zero_point(r[j], r[j + 1], zero_point16);
            let bytes = output_bytes(wide, job.unsigned_output, lo8, hi8);
            let words = vreinterpret_u32_u8(bytes);
            store4(job, n0 + j, m0, vget_lane_u32::<0>(words));
            store4(job, n0 + j + 1, m0, vget_lane_u32::<1>(words));
            j += 2;
        }
        if j < P {
            let v = vmaxq_s32(vminq_s32(vqaddq_s32(r[j], zero_point), hi), lo);
            // In [lo, hi], a byte's range: narrowing keeps the value (or its two's
            // complement byte for i8).
            let narrow = vmovn_s32(v);
            let bytes = vreinterpret_u8_s8(vmovn_s16(vcombine_s16(narrow, narrow)));
            store4(
                job,
                n0 + j,
                m0,
                vget_lane_u32::<0>(vreinterpret_u32_u8(bytes)),
            );
        }
    }
}

/// Eight requantized values saturated to 16 bits, with the output's zero point added
/// with saturation.
#[inline(always)]
pub(crate) unsafe fn with_zero_point(
    r0: int32x4_t,
    r1: int32x4_t,
    zero_point: int16x8_t,
) -> int16x8_t {
    vqaddq_s16(vqmovn_high_s32(vqmovn_s32(r0), r1), zero_point)
}

/// The output bytes of [`with_zero_point`]'s eight values: saturated to the output type
/// (`u8` when `unsigned`) and clamped to `[lo, hi]` given as that type's bytes. This
/// equals adding the zero point in 32 bits and clamping there: a value that saturates
/// at 16 bits is far outside `[lo, hi]` either way, and it takes half the instructions.
#[inline(always)]
pub(crate) unsafe fn output_bytes(
    wide: int16x8_t,
    unsigned: bool,
    lo: uint8x8_t,
    hi: uint8x8_t,
) -> uint8x8_t {
    if unsigned {
        vmin_u8(vmax_u8(vqmovun_s16(wide), lo), hi)
    } else {
        let (lo, hi) = (vreinterpret_s8_u8(lo), vreinterpret_s8_u8(hi));
        vreinterpret_u8_s8(vmin_s8(vmax_s8(vqmovn_s16(wide), lo), hi))
    }
}

/// Stores the four output bytes of channels `m0 ..` of pixel `n` (little-endian in
/// `word`); near the output's end only those of real channels, a byte at a time.
#[inline(always)]
unsafe fn store4(job: &Job, n: usize, m0: usize, word: u32) {
    let at = n * job.y_stride + m0;
    let out = job.y.add(at);
    if at + 4 <= job.n * job.y_stride {
        std::ptr::write_unaligned(out as *mut u32, word);
    } else {
        store_partial(out, word as u64, 0, job.m - m0);
    }
}

/// Stores the first `n` (< 16) of the 16 little-endian bytes `lo`, `hi` at `out` in at
/// most four stores, without a call: a `memcpy` call in a kernel's loop made the
/// compiler save its vector registers on every iteration, whether or not the call ran.
#[inline(always)]
pub(crate) unsafe fn store_partial(out: *mut u8, lo: u64, hi: u64, n: usize) {
    let mut at = out;
    let mut word = lo;
    if n & 8 != 0 {
        std::ptr::write_unaligned(at as *mut u64, lo);
        at = at.add(8);
        word = hi;
    }
    if n & 4 != 0 {
        std::ptr::write_unaligned(at as *mut u32, word as u32);
        at = at.add(4);
        word >>= 32;
    }
    if n & 2 != 0 {
        std::ptr::write_unaligned(at as *mut u16, word as u16);
        at = at.add(2);
        word >>= 16;
    }
    if n & 1 != 0 {
        *at = word as u8;
    }
}

/// `round_half_even(f32(v) · M)` per lane, saturated to 32 bits: `SCVTF`, `FMUL`,
/// `FCVTNS` (`kernels::requant::Scale::apply`).
#[inline(always)]
pub(crate) unsafe fn requantize(v: int32x4_t, scale: float32x4_t) -> int32x4_t {
    vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(v), scale))
}

//! aarch64 Advanced SIMD, without the dot-product instructions (Cortex-A53/A72: Pi 3/4).
//!
//! Four pixels by four output channels per tile. For each 16-byte block of `k`, one
//! pixel and one channel: `SMULL` multiplies the low 8 byte pairs into 16-bit lanes,
//! `SMLAL2` adds the high 8 products to the same lanes (two products of at most
//! 128 · 127 fit 16 bits, hence weights must not be −128: planning checks), and `SADALP`
//! adds the pairs of lanes into four 32-bit partial sums: 16 multiply-accumulates in three
//! instructions, where `FMLA` does four. The partial sums are added across at the end and
//! requantized with `SMULL` into 64 bits and one rounding `SRSHL` (see
//! `kernels::requant`).

use std::arch::aarch64::*;

use super::Job;

/// Pixels per tile.
const PIXELS: usize = 4;

/// # Safety
/// `job` must describe valid buffers (see `Job`), and every weight must be in
/// `−127 ..= 127`.
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
    let end = job.n * job.y_stride;
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
        let multiplier = vld1q_s32(job.multiplier.add(m0));
        let shift = [
            vld1q_s64(job.shift.add(m0)),
            vld1q_s64(job.shift.add(m0 + 2)),
        ];
        for j in 0..P {
            // [c0, c1, c2, c3]: each channel's four partial sums added.
            let s01 = vpaddq_s32(acc[j][0], acc[j][1]);
            let s23 = vpaddq_s32(acc[j][2], acc[j][3]);
            let v = vaddq_s32(vpaddq_s32(s01, s23), bias);
            let v = requantize(v, multiplier, shift);
            let v = vmaxq_s32(vminq_s32(vqaddq_s32(v, zero_point), hi), lo);
            // In [lo, hi], a byte's range: narrowing keeps the value (or its two's
            // complement byte for i8).
            let narrow = vmovn_s32(v);
            let bytes = vreinterpret_u8_s8(vmovn_s16(vcombine_s16(narrow, narrow)));
            let at = (n0 + j) * job.y_stride + m0;
            let out = job.y.add(at);
            if at + 4 <= end {
                let word = vget_lane_u32::<0>(vreinterpret_u32_u8(bytes));
                std::ptr::write_unaligned(out as *mut u32, word);
            } else {
                let mut lanes = [0u8; 8];
                vst1_u8(lanes.as_mut_ptr(), bytes);
                for (i, b) in lanes.iter().take(job.m - m0).enumerate() {
                    *out.add(i) = *b;
                }
            }
        }
    }
}

/// `round(v · M)` per lane: 64-bit products, one rounding shift, saturated back to 32 bits
/// (`kernels::requant::Requant::apply`).
#[inline(always)]
pub(crate) unsafe fn requantize(
    v: int32x4_t,
    multiplier: int32x4_t,
    shift: [int64x2_t; 2],
) -> int32x4_t {
    let lo = vrshlq_s64(
        vmull_s32(vget_low_s32(v), vget_low_s32(multiplier)),
        shift[0],
    );
    let hi = vrshlq_s64(vmull_high_s32(v, multiplier), shift[1]);
    vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi))
}

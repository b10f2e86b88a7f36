//! aarch64 Advanced SIMD: sixteen channels per vector, two output pixels at a time.
//!
//! Taps go in pairs: `SMULL`/`SMULL2` multiply a tap's sixteen byte pairs into 16-bit
//! lanes, `SMLAL`/`SMLAL2` add the next tap's products (two products of at most
//! 128 · 127 fit 16 bits: planning refuses weights of −128 here), and `SADDW`/`SADDW2`
//! widen the sums into four 32-bit accumulators. The pair's filter taps are loaded once
//! for both pixels.

use std::arch::aarch64::*;

use super::job::Job;
use crate::q8::gemm::neon::{requantize, store_partial, with_zero_point};
use crate::q8::in_tiles;

/// Pixels computed together (sharing the filter taps loaded for a channel block).
const PIXELS: usize = 2;

/// # Safety
/// As for `Job`; weights in `−127 ..= 127`.
#[inline(always)]
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
    let zero_point16 = vdupq_n_s16(job.zero_point as i16);
    // The bounds as the output type's bytes.
    let lo8 = vdupq_n_u8(job.lo as u8);
    let hi8 = vdupq_n_u8(job.hi as u8);
    let mut c0 = (c - 1) / 16 * 16;
    loop {
        let mut acc = [[vdupq_n_s32(0); 4]; P];
        for (q, slot) in acc[0].iter_mut().enumerate() {
            *slot = vld1q_s32(job.bias.add(c0 + 4 * q));
        }
        for j in 1..P {
            acc[j] = acc[0];
        }
        // Input vector of pixel j at tap t = (ky, kx).
        let input = |j: usize, t: usize| {
            let (ky, kx) = (t / KW, t % KW);
            vld1q_s8(
                job.padded
                    .add(((y * job.row_step + ky) * job.wp + (x + j) * S + kx) * c + c0),
            )
        };
        let weight = |t: usize| vld1q_s8(job.weights.add(t * job.cp + c0));
        let taps = KH * KW;
        let mut t = 0;
        while t < taps {
            let w0 = weight(t);
            let w1 = if t + 1 < taps {
                Some(weight(t + 1))
            } else {
                None
            };
            for j in 0..P {
                let x0 = input(j, t);
                let mut lo16 = vmull_s8(vget_low_s8(x0), vget_low_s8(w0));
                let mut hi16 = vmull_high_s8(x0, w0);
                if let Some(w1) = w1 {
                    let x1 = input(j, t + 1);
                    lo16 = vmlal_s8(lo16, vget_low_s8(x1), vget_low_s8(w1));
                    hi16 = vmlal_high_s8(hi16, x1, w1);
                }
                acc[j][0] = vaddw_s16(acc[j][0], vget_low_s16(lo16));
                acc[j][1] = vaddw_high_s16(acc[j][1], lo16);
                acc[j][2] = vaddw_s16(acc[j][2], vget_low_s16(hi16));
                acc[j][3] = vaddw_high_s16(acc[j][3], hi16);
            }
            t += 2;
        }
        let mut scale = [vdupq_n_f32(0.0); 4];
        for q in 0..4 {
            scale[q] = vld1q_f32(job.scale.add(c0 + 4 * q));
        }
        for j in 0..P {
            let mut r = [vdupq_n_s32(0); 4];
            for q in 0..4 {
                r[q] = requantize(acc[j][q], scale[q]);
            }
            // As the GEMM's `output_bytes`, sixteen lanes at a time.
            let h0 = with_zero_point(r[0], r[1], zero_point16);
            let h1 = with_zero_point(r[2], r[3], zero_point16);
            let bytes = if job.unsigned_output {
                vminq_u8(vmaxq_u8(vqmovun_high_s16(vqmovun_s16(h0), h1), lo8), hi8)
            } else {
                let (lo, hi) = (vreinterpretq_s8_u8(lo8), vreinterpretq_s8_u8(hi8));
                let v = vqmovn_high_s16(vqmovn_s16(h0), h1);
                vreinterpretq_u8_s8(vminq_s8(vmaxq_s8(v, lo), hi))
            };
            let at = (y * job.wo + x + j) * c + c0;
            if at + 16 <= end {
                vst1q_u8(job.out.add(at), bytes);
            } else {
                // Only the last pixel's last block gets here, with c − c0 < 16.
                let words = vreinterpretq_u64_u8(bytes);
                store_partial(
                    job.out.add(at),
                    vgetq_lane_u64::<0>(words),
                    vgetq_lane_u64::<1>(words),
                    c - c0,
                );
            }
        }
        if c0 == 0 {
            break;
        }
        c0 -= 16;
    }
}

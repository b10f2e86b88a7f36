//! aarch64 Advanced SIMD for short rows (small `k`): four pixels by eight output channels
//! per tile, one `k` at a time, as XNNPACK's `neon-mlal-lane` kernels do.
//!
//! For each `k` the eight channels' weights (packed already widened to 16 bits) are
//! multiplied by one pixel's activation (a lane of its widened row) with `SMLAL`/`SMLAL2`
//! by element into the eight channels' 32-bit accumulators: 32 multiply-accumulates in
//! nine instructions. A tile widens its pixels' rows to 16 bits once, for every channel
//! block. [`super::neon`] does 16 per three instructions but pads `k` to 16 (half its
//! work is zeros when `k` = 8), adds its partial sums across at the end and starts each
//! tile from zero; here `k` is padded to 8 only, the accumulators start at the bias and
//! each holds four outputs, so an output's fixed cost is about a third. On the Cortex-A72
//! this is the cheaper of the two up to [`LANE_MAX_K`] inputs per output.
//!
//! The weights are packed in blocks of eight channels, each `k`'s eight together
//! (`WeightLayout::Octets16`). Products are 16 × 16 bits into 32, so any weight is taken.

use std::arch::aarch64::*;

use super::job::Job;
use super::neon::{output_bytes, requantize, store_partial, with_zero_point};
use crate::q8::in_tiles;

/// The most inputs per output this kernel takes (planning refuses longer rows; up to
/// here planning prefers it to [`super::neon`]: the crossover counted under qemu on
/// MobileNetV2's and DS-CNN's layers).
pub const LANE_MAX_K: usize = 48;

/// Pixels per tile.
const PIXELS: usize = 4;
/// Output channels per tile.
const CHANNELS: usize = 8;
/// Groups of eight inputs in the longest row.
const MAX_OCTETS: usize = LANE_MAX_K / 8;

/// # Safety
/// `job` must describe valid buffers (see `Job`), weights packed as `Octets16`, and
/// `k ≤ LANE_MAX_K`.
pub(super) unsafe fn run(job: &Job) {
    in_tiles!(tile[], PIXELS, job.n, (job));
}

/// Pixels `n0 .. n0 + P`, every output channel, channel blocks from the last down (a
/// block stored whole past the last channel spills only into later pixels' first
/// channels, stored afterwards; a store that would pass the output's end is cut).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const P: usize>(job: &Job, n0: usize) {
    let flip = vdup_n_u8(if job.unsigned_input { 0x80 } else { 0 });
    let zero_point = vdupq_n_s16(job.zero_point as i16);
    let lo = vdup_n_u8(job.lo as u8);
    let hi = vdup_n_u8(job.hi as u8);
    let end = job.n * job.y_stride;
    // Rows are read to `k` rounded up to 8 (within the `kp` bytes a row has), and
    // widened once for every channel block.
    let octets = job.k.div_ceil(8).min(MAX_OCTETS);
    let mut xs = [[vdupq_n_s16(0); P]; MAX_OCTETS];
    for o in 0..octets {
        for j in 0..P {
            let x = vld1_u8(job.x.add((n0 + j) * job.x_stride + 8 * o));
            xs[o][j] = vmovl_s8(vreinterpret_s8_u8(veor_u8(x, flip)));
        }
    }
    let weights = job.w as *const i16;
    let mut block = job.m.div_ceil(CHANNELS);
    while block > 0 {
        block -= 1;
        let m0 = block * CHANNELS;
        let w = weights.add(m0 * job.kp);
        let bias = [vld1q_s32(job.bias.add(m0)), vld1q_s32(job.bias.add(m0 + 4))];
        let mut acc = [bias; P];
        for o in 0..octets {
            let w = w.add(o * 8 * CHANNELS);
            let xs = &xs[o];
            step::<0, P>(&mut acc, w, xs);
            step::<1, P>(&mut acc, w, xs);
            step::<2, P>(&mut acc, w, xs);
            step::<3, P>(&mut acc, w, xs);
            step::<4, P>(&mut acc, w, xs);
            step::<5, P>(&mut acc, w, xs);
            step::<6, P>(&mut acc, w, xs);
            step::<7, P>(&mut acc, w, xs);
        }
        let scale = [
            vld1q_f32(job.scale.add(m0)),
            vld1q_f32(job.scale.add(m0 + 4)),
        ];
        for j in 0..P {
            let r0 = requantize(acc[j][0], scale[0]);
            let r1 = requantize(acc[j][1], scale[1]);
            let wide = with_zero_point(r0, r1, zero_point);
            let bytes = output_bytes(wide, job.unsigned_output, lo, hi);
            let at = (n0 + j) * job.y_stride + m0;
            let out = job.y.add(at);
            if at + CHANNELS <= end {
                vst1_u8(out, bytes);
            } else {
                let word = vget_lane_u64::<0>(vreinterpret_u64_u8(bytes));
                store_partial(out, word, 0, end - at);
            }
        }
    }
}

/// Adds `k + L`'s products: its eight widened weights (at `w + 8·L`) times lane `L` of
/// each pixel's widened activations.
#[inline(always)]
unsafe fn step<const L: i32, const P: usize>(
    acc: &mut [[int32x4_t; 2]; P],
    w: *const i16,
    xs: &[int16x8_t; P],
) {
    let wv = vld1q_s16(w.add(L as usize * CHANNELS));
    let (w_lo, w_hi) = (vget_low_s16(wv), wv);
    for j in 0..P {
        acc[j][0] = vmlal_laneq_s16::<L>(acc[j][0], w_lo, xs[j]);
        acc[j][1] = vmlal_high_laneq_s16::<L>(acc[j][1], w_hi, xs[j]);
    }
}

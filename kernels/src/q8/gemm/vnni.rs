//! x86-64 AVX-VNNI: `VPDPBUSD` multiplies 4 unsigned activation bytes by 4 signed weight
//! bytes and adds the four products to a 32-bit lane, for eight output channels at once:
//! 32 multiply-accumulates per instruction, none saturating.
//!
//! The activations are read unsigned (an `i8` input has its top bit flipped: `x + 128`);
//! planning subtracted `128 · Σ w` from the bias for it (`Variant::unsigned_activations`).
//! Weights are packed in blocks of 8 channels × 4 `k` (`WeightLayout::Quads8`), so each
//! group of 4 activation bytes is broadcast and meets one 32-byte load per block. A tile
//! is 4 pixels × 16 channels: 8 accumulators, 4 broadcasts and 2 loads per 8 `VPDPBUSD`.
//! Requantization in `f32` (`kernels::requant`, `q8::x86::Requant8`), the zero point and
//! the clamp.

use std::arch::x86_64::*;

use super::job::Job;
use crate::q8::in_tiles;
use crate::q8::x86::Requant8;

/// Pixels per tile.
const PIXELS: usize = 4;

/// # Safety
/// `job` must describe valid buffers with weights packed as `Quads8`, `mp` a multiple of
/// 16; the CPU must have AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn run(job: &Job) {
    in_tiles!(tile[], PIXELS, job.n, (job));
}

/// Pixels `n0 .. n0 + P`, every output channel; 16-channel tiles from the last down and
/// within each the upper 8 first, so a block stored whole past the last channel spills
/// only into later pixels' first channels, stored afterwards.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<const P: usize>(job: &Job, n0: usize) {
    let flip = _mm256_set1_epi32(if job.unsigned_input {
        0
    } else {
        0x8080_8080u32 as i32
    });
    let end = job.n * job.y_stride;
    // Rows are read to `k` rounded up to 4 (the variant's `row_align`).
    let quads = job.k.div_ceil(4);
    let mut tile16 = job.mp / 16;
    while tile16 > 0 {
        tile16 -= 1;
        let m0 = tile16 * 16;
        let w0 = job.w.add(m0 * job.kp) as *const __m256i;
        let w1 = job.w.add((m0 + 8) * job.kp) as *const __m256i;
        let mut acc = [[_mm256_setzero_si256(); 2]; P];
        for q in 0..quads {
            let a = _mm256_loadu_si256(w0.add(q));
            let b = _mm256_loadu_si256(w1.add(q));
            for j in 0..P {
                let x = (job.x.add((n0 + j) * job.x_stride + 4 * q) as *const i32).read_unaligned();
                let x = _mm256_xor_si256(_mm256_set1_epi32(x), flip);
                acc[j][0] = _mm256_dpbusd_avx_epi32(acc[j][0], x, a);
                acc[j][1] = _mm256_dpbusd_avx_epi32(acc[j][1], x, b);
            }
        }
        for half in [1, 0] {
            let c0 = m0 + 8 * half;
            let consts = Requant8::load(
                job.bias.add(c0),
                job.scale.add(c0),
                [job.lo, job.hi, job.zero_point],
                job.unsigned_output,
            );
            for j in 0..P {
                let bytes = consts.output(acc[j][half]);
                let at = (n0 + j) * job.y_stride + c0;
                let out = job.y.add(at);
                if at + 8 <= end {
                    _mm_storel_epi64(out as *mut __m128i, bytes);
                } else {
                    let mut lanes = [0u8; 16];
                    _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, bytes);
                    let n = job.m.saturating_sub(c0).min(8);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr(), out, n);
                }
            }
        }
    }
}

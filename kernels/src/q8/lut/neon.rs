//! aarch64 Advanced SIMD: sixteen bytes per step. The table sits in four groups of four
//! registers (64 entries each); `TBL` looks the bytes up in the first group (giving 0
//! for indices past 63) and each `TBX` in the next group at the index less 64, 128 or
//! 192 (leaving the lanes whose index is out of its range as they were). The last
//! `n % 16` bytes go through the reference.

use std::arch::aarch64::*;

/// # Safety
/// `x` and `y` hold `n` bytes; `y` may be `x` (each step loads before it stores).
pub(super) unsafe fn lookup(table: &[u8; 256], x: *const u8, y: *mut u8, n: usize) {
    let t = table.as_ptr();
    let group = |g: usize| {
        uint8x16x4_t(
            vld1q_u8(t.add(64 * g)),
            vld1q_u8(t.add(64 * g + 16)),
            vld1q_u8(t.add(64 * g + 32)),
            vld1q_u8(t.add(64 * g + 48)),
        )
    };
    let (t0, t1, t2, t3) = (group(0), group(1), group(2), group(3));
    let step = vdupq_n_u8(64);
    let mut i = 0;
    while i + 16 <= n {
        let i0 = vld1q_u8(x.add(i));
        let i1 = vsubq_u8(i0, step);
        let i2 = vsubq_u8(i1, step);
        let i3 = vsubq_u8(i2, step);
        let mut r = vqtbl4q_u8(t0, i0);
        r = vqtbx4q_u8(r, t1, i1);
        r = vqtbx4q_u8(r, t2, i2);
        r = vqtbx4q_u8(r, t3, i3);
        vst1q_u8(y.add(i), r);
        i += 16;
    }
    for j in i..n {
        *y.add(j) = table[*x.add(j) as usize];
    }
}

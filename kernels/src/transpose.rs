//! Byte matrix transposes: channels first to channels last and back.
//!
//! tract keeps some tensors channels first (`C × H·W`) while the 8-bit kernels want
//! channels last (`H·W × C`), so the engine's integer operators transpose their input
//! and output (`engine::ops`). Done a byte at a time that costs several instructions per
//! byte, as much as the requantization after a small matrix product; here it is done in
//! 16 × 16 tiles held in sixteen 128-bit registers.
//!
//! A tile is transposed by four perfect shuffles: each interleaves register `i` with
//! register `i + 8` byte by byte (`ZIP1`/`ZIP2` on aarch64, `PUNPCKLBW`/`PUNPCKHBW` on
//! x86-64), writing the two halves to registers `2i` and `2i + 1`. Numbering a byte by
//! its register and lane, 4 bits each, one shuffle rotates that 8-bit number left by
//! one; four rotate it by four, which swaps register and lane: the transpose. 64
//! interleaves and 32 loads and stores move 256 bytes.
//!
//! A matrix of two to four rows or columns (a 3-channel image going channels last, say)
//! fills too little of a tile; on aarch64 it is interleaved or de-interleaved by the
//! structure loads and stores instead (`ST2`–`ST4`, `LD2`–`LD4`), sixteen columns or
//! rows at a time.
//!
//! Both instruction sets are part of their architecture's baseline, so there is no
//! run-time selection; other targets (armv7) use [`reference`].

/// A tile's side.
const TILE: usize = 16;

/// `dst[c · rows + r] = src[r · cols + c]`: the `rows × cols` matrix `src` (row after
/// row) transposed into `dst`.
///
/// # Panics
/// If `src` or `dst` is shorter than `rows · cols` bytes.
pub fn transpose(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) {
    let len = rows.checked_mul(cols).expect("rows · cols overflows");
    assert!(
        src.len() >= len && dst.len() >= len,
        "transpose of {rows} × {cols} bytes given {} and {}",
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "aarch64")]
    if narrow(&src[..len], rows, cols, &mut dst[..len]) {
        return;
    }
    let mut r0 = 0;
    while r0 < rows {
        let rr = TILE.min(rows - r0);
        let mut c0 = 0;
        while c0 < cols {
            let cc = TILE.min(cols - c0);
            let from = r0 * cols + c0;
            let to = c0 * rows + r0;
            if cc == TILE && (rr == TILE || rr == TILE / 2) {
                // SAFETY: rows r0 .. r0 + rr of src hold 16 bytes from c0 (cc == 16), and
                // rows c0 .. c0 + 16 of dst hold rr bytes from r0; both are in bounds by
                // the length check above.
                unsafe {
                    tile(
                        src.as_ptr().add(from),
                        cols,
                        rr,
                        dst.as_mut_ptr().add(to),
                        rows,
                    )
                };
            } else {
                edge(&src[from..], cols, rr, cc, &mut dst[to..], rows);
            }
            c0 += TILE;
        }
        r0 += TILE;
    }
}

/// Two to four rows interleaved, or two to four columns de-interleaved, with the
/// structure stores and loads; `false` (nothing written) for other shapes.
#[cfg(target_arch = "aarch64")]
fn narrow(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) -> bool {
    use std::arch::aarch64::*;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY (every block below): `src` and `dst` hold `rows · cols` bytes; a block
    // reads 16 bytes of each row from column `c0` (or 16 rows of `cols` bytes from row
    // `r0`) and writes the 16 · n bytes they become, all within `rows · cols` as
    // `c0 + 16 <= cols` (or `r0 + 16 <= rows`).
    let full = |n: usize| n / TILE * TILE;
    match (rows, cols) {
        (2..=4, 16..) => {
            let row = |r: usize, c0: usize| unsafe { vld1q_u8(s.add(r * cols + c0)) };
            for c0 in (0..full(cols)).step_by(TILE) {
                let to = unsafe { d.add(c0 * rows) };
                unsafe {
                    match rows {
                        2 => vst2q_u8(to, uint8x16x2_t(row(0, c0), row(1, c0))),
                        3 => vst3q_u8(to, uint8x16x3_t(row(0, c0), row(1, c0), row(2, c0))),
                        _ => vst4q_u8(
                            to,
                            uint8x16x4_t(row(0, c0), row(1, c0), row(2, c0), row(3, c0)),
                        ),
                    }
                }
            }
            for c in full(cols)..cols {
                for r in 0..rows {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
            true
        }
        (16.., 2..=4) => {
            for r0 in (0..full(rows)).step_by(TILE) {
                let from = unsafe { s.add(r0 * cols) };
                let put = |c: usize, v: uint8x16_t| unsafe { vst1q_u8(d.add(c * rows + r0), v) };
                unsafe {
                    match cols {
                        2 => {
                            let v = vld2q_u8(from);
                            put(0, v.0);
                            put(1, v.1);
                        }
                        3 => {
                            let v = vld3q_u8(from);
                            put(0, v.0);
                            put(1, v.1);
                            put(2, v.2);
                        }
                        _ => {
                            let v = vld4q_u8(from);
                            put(0, v.0);
                            put(1, v.1);
                            put(2, v.2);
                            put(3, v.3);
                        }
                    }
                }
            }
            for r in full(rows)..rows {
                for c in 0..cols {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
            true
        }
        _ => false,
    }
}

/// The transpose a byte at a time: what [`transpose`] is tested against.
pub fn reference(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// A tile of `rr` rows and `cc` columns (either under 16) through a padded copy.
fn edge(src: &[u8], src_stride: usize, rr: usize, cc: usize, dst: &mut [u8], dst_stride: usize) {
    let mut a = [0u8; TILE * TILE];
    for r in 0..rr {
        a[r * TILE..r * TILE + cc].copy_from_slice(&src[r * src_stride..r * src_stride + cc]);
    }
    let mut b = [0u8; TILE * TILE];
    // SAFETY: both buffers are 16 × 16.
    unsafe { tile(a.as_ptr(), TILE, TILE, b.as_mut_ptr(), TILE) };
    for c in 0..cc {
        dst[c * dst_stride..c * dst_stride + rr].copy_from_slice(&b[c * TILE..c * TILE + rr]);
    }
}

/// Transposes 16 columns of `rows` (16 or 8; missing rows read as zero) rows, `src_stride`
/// apart, into 16 rows of `rows` bytes, `dst_stride` apart.
///
/// # Safety
/// `src` must be readable for `rows` rows of 16 bytes and `dst` writable for 16 rows of
/// `rows` bytes at those strides.
#[cfg(target_arch = "aarch64")]
#[inline]
unsafe fn tile(src: *const u8, src_stride: usize, rows: usize, dst: *mut u8, dst_stride: usize) {
    use std::arch::aarch64::*;
    let mut x = [vdupq_n_u8(0); TILE];
    for (r, v) in x.iter_mut().enumerate().take(rows) {
        *v = vld1q_u8(src.add(r * src_stride));
    }
    for _ in 0..4 {
        let mut y = [vdupq_n_u8(0); TILE];
        for i in 0..TILE / 2 {
            y[2 * i] = vzip1q_u8(x[i], x[i + 8]);
            y[2 * i + 1] = vzip2q_u8(x[i], x[i + 8]);
        }
        x = y;
    }
    for (c, v) in x.iter().enumerate() {
        if rows == TILE {
            vst1q_u8(dst.add(c * dst_stride), *v);
        } else {
            vst1_u8(dst.add(c * dst_stride), vget_low_u8(*v));
        }
    }
}

/// See the aarch64 `tile`.
///
/// # Safety
/// As the aarch64 `tile`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn tile(src: *const u8, src_stride: usize, rows: usize, dst: *mut u8, dst_stride: usize) {
    use std::arch::x86_64::*;
    let mut x = [_mm_setzero_si128(); TILE];
    for (r, v) in x.iter_mut().enumerate().take(rows) {
        *v = _mm_loadu_si128(src.add(r * src_stride) as *const __m128i);
    }
    for _ in 0..4 {
        let mut y = [_mm_setzero_si128(); TILE];
        for i in 0..TILE / 2 {
            y[2 * i] = _mm_unpacklo_epi8(x[i], x[i + 8]);
            y[2 * i + 1] = _mm_unpackhi_epi8(x[i], x[i + 8]);
        }
        x = y;
    }
    for (c, v) in x.iter().enumerate() {
        let at = dst.add(c * dst_stride) as *mut __m128i;
        if rows == TILE {
            _mm_storeu_si128(at, *v);
        } else {
            _mm_storel_epi64(at, *v);
        }
    }
}

/// See the aarch64 `tile`: a byte at a time on targets without a baseline SIMD.
///
/// # Safety
/// As the aarch64 `tile`.
#[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
#[inline]
unsafe fn tile(src: *const u8, src_stride: usize, rows: usize, dst: *mut u8, dst_stride: usize) {
    for c in 0..TILE {
        for r in 0..rows {
            *dst.add(c * dst_stride + r) = *src.add(r * src_stride + c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(rows: usize, cols: usize) {
        let src: Vec<u8> = (0..rows * cols).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut want = vec![0xAAu8; rows * cols + 3];
        let mut got = want.clone();
        reference(&src, rows, cols, &mut want);
        transpose(&src, rows, cols, &mut got);
        assert_eq!(got, want, "{rows} × {cols}");
    }

    #[test]
    fn tiles_halves_and_edges_match_the_reference() {
        for rows in [1, 2, 3, 4, 5, 8, 15, 16, 17, 24, 40, 48] {
            for cols in [1, 2, 3, 4, 9, 16, 31, 32, 36, 49] {
                check(rows, cols);
            }
        }
    }

    #[test]
    fn a_transpose_twice_is_the_identity() {
        let (rows, cols) = (24, 36);
        let src: Vec<u8> = (0..rows * cols).map(|i| i as u8).collect();
        let mut once = vec![0; rows * cols];
        let mut twice = vec![0; rows * cols];
        transpose(&src, rows, cols, &mut once);
        transpose(&once, cols, rows, &mut twice);
        assert_eq!(twice, src);
    }

    #[test]
    #[should_panic(expected = "transpose of 4 × 4 bytes")]
    fn a_short_buffer_is_refused() {
        transpose(&[0; 15], 4, 4, &mut [0; 16]);
    }

    proptest! {
        #[test]
        fn any_shape_matches_the_reference(rows in 0usize..70, cols in 0usize..70) {
            check(rows, cols);
        }
    }
}

//! im2col for 8-bit images, channels last: one row per output pixel holding its taps'
//! input channels in `(ky, kx, ci)` order, so that a general convolution becomes one
//! matrix product ([`super::gemm`]) with filters laid out the same way.
//!
//! In a padded copy of the channels-last image every kernel row is one contiguous run
//! of `kw · cin` bytes; taps in the padding hold the input's zero point, so they
//! contribute `(zx − zx) · w = 0` like ONNX's zero padding of the real values.

use crate::f32_dwconv::DwGeometry;

/// Scratch bytes [`im2col`] needs: the padded image.
pub fn scratch_len(g: &DwGeometry) -> usize {
    let [hp, wp] = g.padded_shape();
    hp * wp * g.channels
}

/// Fills `rows` (`Ho · Wo` rows of `kp` bytes, `kp >= kh · kw · C`) from the
/// channels-last image `x` (`H · W · C` bytes) of geometry `g` (`g.channels` = C), with
/// `pad` in the padding and zeros after each row's `kh · kw · C` values.
///
/// The image is first copied into `scratch` ([`scratch_len`] bytes) with its padding,
/// as the depthwise kernels do, so that every kernel row of every pixel is one run of
/// `kw · C` bytes there, with no bounds to test per tap.
///
/// Never inlined: a device build compiles this crate at opt-level 3 and its callers at
/// "z", and inlined into `PerchQConv`'s evaluation the loop was re-optimized for size
/// (R4's im2col: 0.55 M aarch64 instructions in release, 3.0 M in a device build).
///
/// # Panics
/// If `x`, `rows` or `scratch` is shorter than the geometry says or `kp` is too small.
#[inline(never)]
pub fn im2col(g: &DwGeometry, pad: u8, x: &[u8], rows: &mut [u8], kp: usize, scratch: &mut [u8]) {
    let c = g.channels;
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [top, left, ..] = g.padding;
    let [ho, wo] = g.output;
    let [hp, wp] = g.padded_shape();
    let span = kw * c;
    assert!(
        kp >= kh * span,
        "im2col rows of {kp} bytes for {kh} x {span}"
    );
    let padded = &mut scratch[..hp * wp * c];
    padded.fill(pad);
    // The image rows and columns the padded image holds (a stride may leave the last
    // ones out).
    let (rows_in, cols_in) = (
        h.min(hp.saturating_sub(top)),
        w.min(wp.saturating_sub(left)),
    );
    for r in 0..rows_in {
        let at = ((r + top) * wp + left) * c;
        padded[at..at + cols_in * c].copy_from_slice(&x[r * w * c..(r * w + cols_in) * c]);
    }
    let padded = &*padded;
    let zeros = [0u8; 16];
    let mut pixel = rows[..ho * wo * kp].chunks_exact_mut(kp);
    for oy in 0..ho {
        for ox in 0..wo {
            let Some(row) = pixel.next() else { return };
            let (taps, tail) = row.split_at_mut(kh * span);
            fill(tail, &zeros);
            let mut at = (oy * g.stride[0] * wp + ox * g.stride[1]) * c;
            for dst in taps.chunks_exact_mut(span) {
                copy_short(dst, &padded[at..at + span]);
                at += wp * c;
            }
        }
    }
}

/// Fills `dst` with the byte `with` repeats: from `with` itself when it is short.
#[inline(always)]
fn fill(dst: &mut [u8], with: &[u8; 16]) {
    if dst.len() <= 16 {
        copy_short(dst, &with[..dst.len()]);
    } else {
        dst.fill(with[0]);
    }
}

/// `dst.copy_from_slice(src)`, without a call to `memcpy` for the short kernel rows of
/// images with few channels (a 3x3 filter over 3 channels copies 9 bytes): two
/// overlapping 8- or 4-byte moves cover 4 to 16 bytes, bytes one by one below.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    match n {
        8..=16 => {
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
            dst[..8].copy_from_slice(&src[..8]);
        }
        4..=7 => {
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
            dst[..4].copy_from_slice(&src[..4]);
        }
        0..=3 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        _ => dst.copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8::test_bytes;

    /// Tap by tap, from the definition.
    fn reference(g: &DwGeometry, pad: u8, x: &[u8], kp: usize) -> Vec<u8> {
        let c = g.channels;
        let [kh, kw] = g.kernel;
        let mut rows = vec![0u8; g.output[0] * g.output[1] * kp];
        for oy in 0..g.output[0] {
            for ox in 0..g.output[1] {
                let row = &mut rows[(oy * g.output[1] + ox) * kp..][..kp];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (oy * g.stride[0] + ky) as isize - g.padding[0] as isize;
                        let ix = (ox * g.stride[1] + kx) as isize - g.padding[1] as isize;
                        for ci in 0..c {
                            let inside = (0..g.input[0] as isize).contains(&iy)
                                && (0..g.input[1] as isize).contains(&ix);
                            row[(ky * kw + kx) * c + ci] = if inside {
                                x[(iy as usize * g.input[1] + ix as usize) * c + ci]
                            } else {
                                pad
                            };
                        }
                    }
                }
            }
        }
        rows
    }

    #[test]
    fn rows_hold_every_tap_the_padding_and_trailing_zeros() {
        for (c, hw, k, stride, padding) in [
            (3, [9, 11], [3, 3], [2, 2], [1, 1, 1, 1]),
            (1, [7, 7], [3, 3], [1, 1], [1, 1, 1, 1]),
            (2, [6, 5], [5, 5], [1, 1], [2, 2, 2, 2]),
            (5, [8, 8], [3, 3], [2, 2], [0, 0, 1, 1]),
            (16, [5, 6], [3, 3], [1, 1], [1, 0, 1, 2]),
            (3, [4, 4], [1, 7], [1, 1], [0, 3, 0, 3]),
            (2, [8, 8], [3, 3], [2, 2], [0, 0, 0, 0]),
        ] {
            let g = DwGeometry::new(c, hw, k, stride, padding).unwrap();
            let x = test_bytes(hw[0] * hw[1] * c, c as u64);
            let kp = (k[0] * k[1] * c).div_ceil(16) * 16;
            let want = reference(&g, 77, &x, kp);
            let mut got = vec![0xEE; want.len()];
            let mut scratch = vec![0xEE; scratch_len(&g)];
            im2col(&g, 77, &x, &mut got, kp, &mut scratch);
            assert_eq!(got, want, "{c} ch {hw:?} {k:?} s{stride:?} {padding:?}");
        }
    }
}

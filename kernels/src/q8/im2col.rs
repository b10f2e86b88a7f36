//! im2col for 8-bit images, channels last: one row per output pixel holding its taps'
//! input channels in `(ky, kx, ci)` order, so that a general convolution becomes one
//! matrix product ([`super::gemm`]) with filters laid out the same way.
//!
//! A kernel row that lies inside the image is one contiguous run of `kw · cin` bytes of
//! the channels-last image; taps in the padding hold the input's zero point, so they
//! contribute `(zx − zx) · w = 0` like ONNX's zero padding of the real values.

use crate::f32_dwconv::DwGeometry;

/// Fills `rows` (`Ho · Wo` rows of `kp` bytes, `kp >= kh · kw · C`) from the
/// channels-last image `x` (`H · W · C` bytes) of geometry `g` (`g.channels` = C), with
/// `pad` in the padding and zeros after each row's `kh · kw · C` values.
///
/// # Panics
/// If `x` or `rows` is shorter than the geometry says or `kp` is too small.
pub fn im2col(g: &DwGeometry, pad: u8, x: &[u8], rows: &mut [u8], kp: usize) {
    let cin = g.channels;
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [top, left, ..] = g.padding;
    let [ho, wo] = g.output;
    let span = kw * cin;
    assert!(
        kp >= kh * span,
        "im2col rows of {kp} bytes for {kh} x {span}"
    );
    assert!(
        x.len() >= h * w * cin,
        "im2col of a {h}x{w}x{cin} image from {} bytes",
        x.len()
    );
    let rows = &mut rows[..ho * wo * kp];
    let pads = [pad; 16];
    let mut pixel = rows.chunks_exact_mut(kp);
    for oy in 0..ho {
        for ox in 0..wo {
            let Some(row) = pixel.next() else { return };
            let (taps, tail) = row.split_at_mut(kh * span);
            fill(tail, &[0; 16]);
            // The first tap's column, when the whole kernel row is inside the image.
            let inside = (ox * g.stride).checked_sub(left).filter(|x0| x0 + kw <= w);
            for (ky, dst) in taps.chunks_exact_mut(span).enumerate() {
                let Some(iy) = (oy * g.stride + ky).checked_sub(top).filter(|v| *v < h) else {
                    fill(dst, &pads);
                    continue;
                };
                let line = &x[iy * w * cin..(iy + 1) * w * cin];
                if let Some(x0) = inside {
                    copy_short(dst, &line[x0 * cin..(x0 + kw) * cin]);
                    continue;
                }
                for (kx, d) in dst.chunks_exact_mut(cin).enumerate() {
                    match (ox * g.stride + kx).checked_sub(left).filter(|v| *v < w) {
                        Some(ix) => copy_short(d, &line[ix * cin..(ix + 1) * cin]),
                        None => fill(d, &pads),
                    }
                }
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
                        let iy = (oy * g.stride + ky) as isize - g.padding[0] as isize;
                        let ix = (ox * g.stride + kx) as isize - g.padding[1] as isize;
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
            (3, [9, 11], [3, 3], 2, [1, 1, 1, 1]),
            (1, [7, 7], [3, 3], 1, [1, 1, 1, 1]),
            (2, [6, 5], [5, 5], 1, [2, 2, 2, 2]),
            (5, [8, 8], [3, 3], 2, [0, 0, 1, 1]),
            (16, [5, 6], [3, 3], 1, [1, 0, 1, 2]),
            (3, [4, 4], [1, 7], 1, [0, 3, 0, 3]),
        ] {
            let g = DwGeometry::new(c, hw, k, stride, padding).unwrap();
            let x = test_bytes(hw[0] * hw[1] * c, c as u64);
            let kp = (k[0] * k[1] * c).div_ceil(16) * 16;
            let want = reference(&g, 77, &x, kp);
            let mut got = vec![0xEE; want.len()];
            im2col(&g, 77, &x, &mut got, kp);
            assert_eq!(got, want, "{c} ch {hw:?} {k:?} s{stride} {padding:?}");
        }
    }
}

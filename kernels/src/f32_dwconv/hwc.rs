//! Channels last: the image through one zero-padded copy, vectors along channels (see
//! the module documentation of `f32_dwconv`). The template is instantiated per
//! instruction set by `VARIANTS`.

use super::geometry::{Call, DwGeometry, SLACK};
use crate::simd::F32Lanes;

/// Everything a microkernel needs for one image (`repr(C)`: the 32-bit ARM kernels are
/// C, `neon32.c`, which declares the same struct).
#[repr(C)]
pub(crate) struct Job {
    /// The zero-padded image, `hp × wp × c`, with `SLACK` more elements after it.
    pub padded: *const f32,
    /// Pixels per padded row.
    pub wp: usize,
    /// Channels.
    pub c: usize,
    /// Output rows and columns.
    pub ho: usize,
    pub wo: usize,
    /// The image's output, `ho × wo × c`.
    pub out: *mut f32,
    /// Elements of the output buffer after this image: a pixel's last channel vector
    /// is stored whole, spilling into the next pixel (written afterwards) as long as it
    /// stays within the buffer; otherwise lane by lane.
    pub room: usize,
    /// The filters tap-major, `kh × kw × cp` with `cp` = `c` rounded up to 16 and the
    /// padding zero.
    pub weights: *const f32,
    /// `cp` biases, the padding zero.
    pub bias: *const f32,
    pub cp: usize,
    pub lo: f32,
    pub hi: f32,
}

/// Channels rounded up to the widest vector, for the packed filters and biases.
fn padded_channels(g: &DwGeometry) -> usize {
    g.channels.div_ceil(SLACK) * SLACK
}

/// Scratch elements: the padded image and slack, then the packed filters and biases.
pub(super) fn scratch_len(g: &DwGeometry) -> usize {
    let [hp, wp] = g.padded_shape();
    let cp = padded_channels(g);
    hp * wp * g.channels + SLACK + g.kernel[0] * g.kernel[1] * cp + cp
}

/// Runs `kernel` on every image (lengths checked by the caller).
pub(super) fn run(kernel: unsafe fn(&Job), g: &DwGeometry, call: Call) {
    let c = g.channels;
    let [h, w] = g.input;
    let [hp, wp] = g.padded_shape();
    let cp = padded_channels(g);
    let taps = g.kernel[0] * g.kernel[1];
    let (padded, rest) = call.scratch.split_at_mut(hp * wp * c + SLACK);
    let (packed, packed_bias) = rest.split_at_mut(taps * cp);
    // Filters from one per channel (`c × taps`) to tap-major (`taps × cp`).
    packed.fill(0.0);
    for (ch, filter) in call.weights.chunks_exact(taps).enumerate() {
        for (t, v) in filter.iter().enumerate() {
            packed[t * cp + ch] = *v;
        }
    }
    packed_bias.fill(0.0);
    if let Some(bias) = call.bias {
        packed_bias[..c].copy_from_slice(bias);
    }
    // Padding and slack stay zero: every image writes the same interior cells.
    padded.fill(0.0);
    let [top, left, ..] = g.padding;
    // The padded copy holds input columns left.. of rows top.., as far as it reaches.
    let rows = h.min(hp.saturating_sub(top));
    let cols = w.min(wp.saturating_sub(left));
    let out_len = g.output_len();
    for i in 0..call.images {
        let image = &call.input[i * g.input_len()..(i + 1) * g.input_len()];
        for y in 0..rows {
            let src = &image[y * w * c..(y * w + cols) * c];
            let at = ((y + top) * wp + left) * c;
            padded[at..at + cols * c].copy_from_slice(src);
        }
        let job = Job {
            padded: padded.as_ptr(),
            wp,
            c,
            ho: g.output[0],
            wo: g.output[1],
            out: call.output[i * out_len..].as_mut_ptr(),
            room: (call.images - i - 1) * out_len,
            weights: packed.as_ptr(),
            bias: packed_bias.as_ptr(),
            cp,
            lo: call.lo,
            hi: call.hi,
        };
        // SAFETY: the variant's instruction set was checked when it was planned.
        // Reads: the padded image (hp × wp × c plus SLACK: a channel vector read past
        // the last channel of the last pixel stays in the slack), the packed filters
        // and biases (cp per tap, a multiple of every vector width). Writes: the output
        // from this image's start to the buffer's end (a pixel spills past its last
        // channel only into memory written afterwards, never past the buffer).
        unsafe { kernel(&job) };
    }
}

/// Pixels computed together: at stride 1 their taps share input vectors.
const PIXELS: usize = 4;

/// One image: every output row, `PIXELS` pixels at a time, then the rest one by one.
///
/// # Safety
/// `job` must describe a padded image covering every output pixel's taps, with SLACK
/// after it, an output writable for `ho × wo × c + room` values, filters and biases
/// packed to `cp` channels; the instruction set of `V` must be present.
#[inline(always)]
pub(crate) unsafe fn image<V: F32Lanes, const KH: usize, const KW: usize, const S: usize>(
    job: &Job,
) {
    let lo = V::splat(job.lo);
    let hi = V::splat(job.hi);
    for y in 0..job.ho {
        let mut x = 0;
        while x + PIXELS <= job.wo {
            pixels::<V, KH, KW, S, PIXELS>(job, y, x, lo, hi);
            x += PIXELS;
        }
        while x < job.wo {
            pixels::<V, KH, KW, S, 1>(job, y, x, lo, hi);
            x += 1;
        }
    }
}

/// Output pixels `x .. x + P` of row `y`, every channel.
///
/// Channel blocks go from the last down, so that a pixel's last block, stored whole,
/// spills only into channels of later pixels, which are stored afterwards (pixels in
/// increasing order within a block, blocks down to the first, rows in order).
// `kx` picks a weight and a column: an index reads better than zips.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn pixels<V: F32Lanes, const KH: usize, const KW: usize, const S: usize, const P: usize>(
    job: &Job,
    y: usize,
    x: usize,
    lo: V,
    hi: V,
) {
    let c = job.c;
    let end = job.ho * job.wo * c + job.room;
    let mut c0 = (c - 1) / V::LANES * V::LANES;
    loop {
        let mut w = [[V::splat(0.0); KW]; KH];
        for ky in 0..KH {
            for kx in 0..KW {
                w[ky][kx] = V::load(job.weights.add((ky * KW + kx) * job.cp + c0));
            }
        }
        let mut acc = [V::load(job.bias.add(c0)); P];
        for ky in 0..KH {
            let row = job.padded.add(((y * S + ky) * job.wp + x * S) * c + c0);
            for kx in 0..KW {
                for (j, acc) in acc.iter_mut().enumerate() {
                    // At stride 1, pixel j's tap kx and pixel j + 1's tap kx − 1 read
                    // the same vector: the compiler loads it once.
                    let v = V::load(row.add((j * S + kx) * c));
                    *acc = acc.mul_add(w[ky][kx], v);
                }
            }
        }
        for (j, acc) in acc.into_iter().enumerate() {
            // `lo.max(acc)` keeps a NaN sum NaN on every instruction set.
            let r = hi.min(lo.max(acc));
            let at = ((y * job.wo + x + j) * c) + c0;
            if at + V::LANES <= end {
                r.store(job.out.add(at));
            } else {
                r.store_first(job.out.add(at), c - c0);
            }
        }
        if c0 == 0 {
            break;
        }
        c0 -= V::LANES;
    }
}

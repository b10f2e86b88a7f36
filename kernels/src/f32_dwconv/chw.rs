//! Channels first: each channel's plane through stride-phase planes (see the module
//! documentation of `f32_dwconv`). The template is instantiated per instruction set by
//! `VARIANTS`.

use super::geometry::{Call, DwGeometry, SLACK};
use crate::simd::F32Lanes;

/// Everything a microkernel needs for one channel (`repr(C)`: the 32-bit ARM kernels are
/// C, `neon32.c`, which declares the same struct).
#[repr(C)]
pub(crate) struct Job {
    /// The channel's input plane, `h × w`, row-major.
    pub input: *const f32,
    pub h: usize,
    pub w: usize,
    /// Padding above and left of the input.
    pub top: usize,
    pub left: usize,
    /// Scratch for the stride-phase planes: plane `(a, b)` starts at
    /// `(a·s + b) · plane_len`, is `hq × wq`, and only its cells that hold input are
    /// written (the rest stay zero).
    pub planes: *mut f32,
    pub plane_len: usize,
    pub hq: usize,
    pub wq: usize,
    /// Output rows and columns.
    pub ho: usize,
    pub wo: usize,
    /// The channel's output plane, `ho × wo`, row-major.
    pub out: *mut f32,
    /// Elements of the output buffer after this plane. A row's last vector is stored
    /// whole, spilling past the row into memory written afterwards (the next row, the
    /// next planes), as long as it stays within the buffer; otherwise lane by lane.
    pub room: usize,
    /// The channel's filter, `kh × kw`, row-major.
    pub weights: *const f32,
    pub bias: f32,
    pub lo: f32,
    pub hi: f32,
}

/// Rows and columns of each stride-phase plane.
fn plane_shape(g: &DwGeometry) -> [usize; 2] {
    // Planning took equal strides only.
    let s = g.stride[0];
    [
        g.output[0] + g.kernel[0].div_ceil(s) - 1,
        g.output[1] + g.kernel[1].div_ceil(s) - 1,
    ]
}

/// Elements of one plane in scratch, with room for a vector read past its end.
fn plane_len(g: &DwGeometry) -> usize {
    let [hq, wq] = plane_shape(g);
    hq * wq + SLACK
}

/// Scratch elements: `s²` planes.
pub(super) fn scratch_len(g: &DwGeometry) -> usize {
    g.stride[0] * g.stride[1] * plane_len(g)
}

/// Runs `kernel` on every channel of every image (lengths checked by the caller).
pub(super) fn run(kernel: unsafe fn(&Job), g: &DwGeometry, call: Call) {
    // Padding and slack stay zero: every channel writes the same interior cells.
    call.scratch.fill(0.0);
    let [h, w] = g.input;
    let [ho, wo] = g.output;
    let [hq, wq] = plane_shape(g);
    let taps = g.kernel[0] * g.kernel[1];
    let planes = call.images * g.channels;
    for p in 0..planes {
        let c = p % g.channels;
        let job = Job {
            input: call.input[p * h * w..].as_ptr(),
            h,
            w,
            top: g.padding[0],
            left: g.padding[1],
            planes: call.scratch.as_mut_ptr(),
            plane_len: plane_len(g),
            hq,
            wq,
            ho,
            wo,
            out: call.output[p * ho * wo..].as_mut_ptr(),
            room: (planes - p - 1) * ho * wo,
            weights: call.weights[c * taps..].as_ptr(),
            bias: call.bias.map_or(0.0, |b| b[c]),
            lo: call.lo,
            hi: call.hi,
        };
        // SAFETY: the variant's instruction set was checked when it was planned.
        // Reads: the input plane (h × w, checked by the caller), and the stride-phase
        // planes, which hold hq × wq cells plus SLACK each: that covers every read of
        // `plane`. Writes: the planes' input cells, and the output from this plane's
        // start to the buffer's end (a row spills past its end only into memory
        // written afterwards, never past the buffer).
        unsafe { kernel(&job) };
    }
}

/// Copies one channel's input into its stride-phase planes: plane `(a, b)` cell
/// `(r, c)` is input `(S·r + a − top, S·c + b − left)` where that is inside the input.
///
/// Generic over the stride so that the copy is a constant-stride loop the compiler
/// vectorizes (a deinterleave at stride 2) with the variant's instruction set.
///
/// # Safety
/// `job.input` must hold `h × w` values and `job.planes` `S²` planes of `plane_len`
/// with `plane_len ≥ hq × wq`.
#[inline(always)]
pub(crate) unsafe fn fill<const S: usize>(job: &Job) {
    let (h, w, top, left) = (job.h, job.w, job.top, job.left);
    for a in 0..S {
        // The columns of every phase b that hold input: plane column c is input column
        // S·c + b − left, so c starts at ⌈(left − b)/S⌉ and ends before the first c
        // past the input.
        let mut spans = [(0usize, 0usize); S];
        for (b, span) in spans.iter_mut().enumerate() {
            let lo = left.saturating_sub(b).div_ceil(S);
            let hi = if w - 1 + left < b {
                0
            } else {
                ((w - 1 + left - b) / S + 1).min(job.wq)
            };
            *span = (lo, hi.max(lo));
        }
        for r in 0..job.hq {
            // Plane row r is input row S·r + a − top.
            let Some(ir) = (S * r + a).checked_sub(top).filter(|ir| *ir < h) else {
                continue;
            };
            let src = job.input.add(ir * w);
            for (b, &(lo, hi)) in spans.iter().enumerate() {
                let dst = job.planes.add((a * S + b) * job.plane_len + r * job.wq);
                let first = src.add(S * lo + b - left);
                // Raw pointers and a counted loop: the compiler turns the stride-S reads
                // into vector loads and shuffles (ld2 on aarch64).
                for i in 0..hi - lo {
                    *dst.add(lo + i) = *first.add(S * i);
                }
            }
        }
    }
}

/// One channel: output rows two at a time, then the odd one.
///
/// # Safety
/// `job` must describe valid planes (`S²` planes of `plane_len` elements, each at least
/// `hq × wq + 16` with `hq = ho + ⌈KH/S⌉ − 1`, `wq = wo + ⌈KW/S⌉ − 1`), an output
/// writable from `out` for `ho × wo + room` values, and a `KH × KW` filter; the
/// instruction set of `V` must be present.
///
/// Reads: for output columns `x .. x + LANES` (`x < wo`) of output row `y`, tap
/// `(ky, kx)` reads plane `(ky % S, kx % S)` at row `y + ky / S`, columns
/// `x + kx / S ..` for `LANES`: at most `LANES − 1` past the last valid column, which
/// stays within the plane's next row or its slack.
#[inline(always)]
pub(crate) unsafe fn plane<V: F32Lanes, const KH: usize, const KW: usize, const S: usize>(
    job: &Job,
) {
    let mut w = [[V::splat(0.0); KW]; KH];
    for (ky, row) in w.iter_mut().enumerate() {
        for (kx, tap) in row.iter_mut().enumerate() {
            *tap = V::splat(*job.weights.add(ky * KW + kx));
        }
    }
    let bias = V::splat(job.bias);
    let lo = V::splat(job.lo);
    let hi = V::splat(job.hi);
    let mut y = 0;
    while y + 2 <= job.ho {
        rows::<V, KH, KW, S, 2>(job, &w, y, bias, lo, hi);
        y += 2;
    }
    if y < job.ho {
        rows::<V, KH, KW, S, 1>(job, &w, y, bias, lo, hi);
    }
}

/// Output rows `y .. y + R`, every column.
///
/// Filter rows with `ky % S == a` read plane row `y + j + ky / S` for output row
/// `y + j`; one load of plane row `y + q` serves every output row `j` with
/// `q − j = ky / S` in range, which is where the two-row blocking saves loads.
///
/// A row's last vector is stored whole, spilling past the row into the next one.
/// Columns go from the last vector down to the first, so whatever a row spills into
/// is written afterwards: the next row of the band at its first vector, the next band
/// or plane later still. A vector that would pass the end of the buffer (`job.room`
/// after the plane) is stored lane by lane.
// `kx` picks a plane, a column offset and a weight: an index reads better than zips.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn rows<V: F32Lanes, const KH: usize, const KW: usize, const S: usize, const R: usize>(
    job: &Job,
    w: &[[V; KW]; KH],
    y: usize,
    bias: V,
    lo: V,
    hi: V,
) {
    let end = job.ho * job.wo + job.room;
    let mut x = (job.wo - 1) / V::LANES * V::LANES;
    loop {
        let mut acc = [bias; R];
        for a in 0..S {
            // Filter rows of this phase: ky = a + S·m for m < taps_a.
            let taps_a = (KH + S - 1 - a) / S;
            for q in 0..taps_a + R - 1 {
                let row = job.planes.add((y + q) * job.wq + x);
                for kx in 0..KW {
                    let plane = (a * S + kx % S) * job.plane_len;
                    let v = V::load(row.add(plane + kx / S));
                    for (j, acc) in acc.iter_mut().enumerate() {
                        if q >= j && q - j < taps_a {
                            *acc = acc.mul_add(w[a + S * (q - j)][kx], v);
                        }
                    }
                }
            }
        }
        for (j, acc) in acc.into_iter().enumerate() {
            // `lo.max(acc)` keeps a NaN sum NaN on every instruction set.
            let r = hi.min(lo.max(acc));
            let at = (y + j) * job.wo + x;
            let out = job.out.add(at);
            if at + V::LANES <= end {
                r.store(out);
            } else {
                r.store_first(out, job.wo - x);
            }
        }
        if x == 0 {
            break;
        }
        x -= V::LANES;
    }
}

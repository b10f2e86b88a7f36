//! What a depthwise microkernel computes, shared by the planner and the variants.

/// What a microkernel computes: one image from its padded signed copy.
///
/// Store order: a pixel's channel blocks go from the last down, so that a block stored
/// whole past the last channel spills only into later pixels' first block, stored
/// afterwards (`room` says how far the buffer goes on).
#[repr(C)]
pub(crate) struct Job {
    /// The padded image, `hp × wp × c` signed bytes, then [`SLACK`](super::SLACK) more.
    pub padded: *const i8,
    pub wp: usize,
    /// Padded rows from one output row to the next: the vertical stride (the variant's
    /// own stride is the horizontal one).
    pub row_step: usize,
    pub c: usize,
    pub ho: usize,
    pub wo: usize,
    /// `ho × wo × c` output bytes, and `room` more that may be written before they are
    /// (later images).
    pub out: *mut u8,
    pub room: usize,
    /// Filters tap-major, `kh × kw × cp` (`cp` = `c` rounded up to 16, zero-padded).
    pub weights: *const i8,
    pub cp: usize,
    /// Per padded channel: bias and requantization multiplier (`kernels::requant`).
    pub bias: *const i32,
    pub scale: *const f32,
    pub zero_point: i32,
    pub lo: i32,
    pub hi: i32,
    /// Whether the output bytes are `u8` (else `i8`).
    pub unsigned_output: bool,
}

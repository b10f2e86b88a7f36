//! What a matrix-product microkernel computes, shared by the planner and the variants.

/// What a microkernel computes: `n` rows of output from `n` rows of input.
#[repr(C)]
pub(crate) struct Job {
    /// `n` rows of at least `k` bytes rounded up to the variant's `row_align` (the
    /// padding is ignored, its weights being zero), `x_stride` apart.
    pub x: *const u8,
    pub x_stride: usize,
    pub n: usize,
    /// Weights as the variant packed them (`Variant::layout`).
    pub w: *const i8,
    pub kp: usize,
    /// Inputs per output before padding (`k ≤ kp`).
    pub k: usize,
    /// Output channels (`m`) and the padded count (`mp`).
    pub m: usize,
    pub mp: usize,
    /// `n` rows of `m` bytes, `y_stride` apart.
    pub y: *mut u8,
    pub y_stride: usize,
    /// Per padded channel: bias (adjusted for the variant's reading of the activations)
    /// and requantization multiplier (`kernels::requant`).
    pub bias: *const i32,
    pub scale: *const f32,
    /// The output's zero point and clamp.
    pub zero_point: i32,
    pub lo: i32,
    pub hi: i32,
    /// Whether the input is `u8` (its top bit flipped before multiplying).
    pub unsigned_input: bool,
    /// Whether the output is `u8`.
    pub unsigned_output: bool,
}

//! What a quantization microkernel computes, shared by the planner and the variants.

/// What a microkernel computes, in the unsigned form (opaque outside the crate: a
/// variant's `run` takes it).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub(crate) inverse_scale: f32,
    /// The zero point in the unsigned form, `0 ..= 255`.
    pub(crate) zero_point: i32,
    pub(crate) flip: u8,
}

impl Job {
    /// One output byte: the reference every variant matches.
    #[inline(always)]
    pub(crate) fn one(&self, x: f32) -> u8 {
        let q = (x * self.inverse_scale).round_ties_even() as i32;
        q.saturating_add(self.zero_point).clamp(0, 255) as u8 ^ self.flip
    }
}

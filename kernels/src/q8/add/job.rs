//! What an addition microkernel computes, shared by the planner and the variants.

/// What a microkernel computes, in the unsigned form of every tensor (opaque outside
/// the crate: a variant's `run` takes it).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub(crate) a_flip: u8,
    pub(crate) a_zero_point: i32,
    pub(crate) a_scale: f32,
    pub(crate) b_flip: u8,
    pub(crate) b_zero_point: i32,
    pub(crate) b_scale: f32,
    /// The reciprocal of the output's scale.
    pub(crate) inverse_scale: f32,
    /// The output's zero point in the unsigned form.
    pub(crate) zero_point: i32,
    pub(crate) y_flip: u8,
}

impl Job {
    /// One output byte: the reference every variant matches.
    #[inline(always)]
    pub(crate) fn one(&self, a: u8, b: u8) -> u8 {
        let fa = ((a ^ self.a_flip) as i32 - self.a_zero_point) as f32 * self.a_scale;
        let fb = ((b ^ self.b_flip) as i32 - self.b_zero_point) as f32 * self.b_scale;
        // |fa + fb| · inverse_scale < 2^24 (checked when planned): the conversion is
        // exact and cannot saturate.
        let q = ((fa + fb) * self.inverse_scale).round_ties_even() as i32;
        (q + self.zero_point).clamp(0, 255) as u8 ^ self.y_flip
    }
}

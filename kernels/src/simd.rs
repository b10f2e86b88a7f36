//! One vector of `f32` lanes per instruction set, so a microkernel is written once.
//!
//! A microkernel template is a generic `#[inline(always)]` function over [`F32Lanes`];
//! each variant instantiates it inside a function compiled for its instruction set
//! (`#[target_feature]`), where the lane operations below, also `#[inline(always)]`,
//! become single instructions.
//!
//! Every method is `unsafe`: pointers must be valid for `LANES` elements, and the
//! instruction set must be present (the variant tables check it before calling).

/// A vector of `LANES` `f32`s.
pub trait F32Lanes: Copy {
    /// Lanes per vector.
    const LANES: usize;

    /// Every lane `x`.
    ///
    /// # Safety
    /// The instruction set must be available.
    unsafe fn splat(x: f32) -> Self;

    /// `LANES` values from `p` (no alignment needed).
    ///
    /// # Safety
    /// `p` must be readable for `LANES` elements.
    unsafe fn load(p: *const f32) -> Self;

    /// Writes the lanes to `p` (no alignment needed).
    ///
    /// # Safety
    /// `p` must be writable for `LANES` elements.
    unsafe fn store(self, p: *mut f32);

    /// `self + a * b`, fused where the instruction set has it.
    ///
    /// # Safety
    /// The instruction set must be available.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;

    /// Lane-wise `max(self, o)`; where either lane is NaN, the result is NaN when `o`
    /// is (so `bound.max(x)` keeps a NaN `x`).
    ///
    /// # Safety
    /// The instruction set must be available.
    unsafe fn max(self, o: Self) -> Self;

    /// Lane-wise `min(self, o)`, with NaN as for [`F32Lanes::max`].
    ///
    /// # Safety
    /// The instruction set must be available.
    unsafe fn min(self, o: Self) -> Self;

    /// Writes the first `n` lanes (`n <= LANES`) to `p`.
    ///
    /// # Safety
    /// `p` must be writable for `n` elements.
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        let mut lanes = [0f32; 16];
        self.store(lanes.as_mut_ptr());
        std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
    }
}

/// Four lanes in plain Rust: the portable variants (the compiler vectorizes it where the
/// target's baseline allows, as SSE2 on x86-64).
#[derive(Clone, Copy)]
pub struct Portable4([f32; 4]);

impl F32Lanes for Portable4 {
    const LANES: usize = 4;

    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Portable4([x; 4])
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable4(std::ptr::read_unaligned(p as *const [f32; 4]))
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 4], self.0)
    }

    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for (r, (a, b)) in r.iter_mut().zip(a.0.iter().zip(&b.0)) {
            *r += a * b;
        }
        Portable4(r)
    }

    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r = if *r > o { *r } else { o };
        }
        Portable4(r)
    }

    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r = if *r < o { *r } else { o };
        }
        Portable4(r)
    }
}

#[cfg(target_arch = "aarch64")]
pub use neon::Neon;

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::F32Lanes;
    use std::arch::aarch64::*;

    /// Four lanes of aarch64 Advanced SIMD (baseline on every aarch64 CPU).
    #[derive(Clone, Copy)]
    pub struct Neon(float32x4_t);

    impl F32Lanes for Neon {
        const LANES: usize = 4;

        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Neon(vdupq_n_f32(x))
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Neon(vld1q_f32(p))
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            vst1q_f32(p, self.0)
        }

        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Neon(vfmaq_f32(self.0, a.0, b.0))
        }

        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Neon(vmaxq_f32(self.0, o.0))
        }

        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            Neon(vminq_f32(self.0, o.0))
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Sse41};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::F32Lanes;
    use std::arch::x86_64::*;

    /// Four lanes of SSE (used with SSE4.1; no FMA: multiply, then add).
    #[derive(Clone, Copy)]
    pub struct Sse41(__m128);

    impl F32Lanes for Sse41 {
        const LANES: usize = 4;

        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Sse41(_mm_set1_ps(x))
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Sse41(_mm_loadu_ps(p))
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm_storeu_ps(p, self.0)
        }

        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Sse41(_mm_add_ps(self.0, _mm_mul_ps(a.0, b.0)))
        }

        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Sse41(_mm_max_ps(self.0, o.0))
        }

        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            Sse41(_mm_min_ps(self.0, o.0))
        }
    }

    /// Eight lanes of AVX2 with FMA.
    #[derive(Clone, Copy)]
    pub struct Avx2(__m256);

    impl F32Lanes for Avx2 {
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            Avx2(_mm256_set1_ps(x))
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }

        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Avx2(_mm256_fmadd_ps(a.0, b.0, self.0))
        }

        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            Avx2(_mm256_max_ps(self.0, o.0))
        }

        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            Avx2(_mm256_min_ps(self.0, o.0))
        }
    }
}

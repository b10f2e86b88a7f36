//! Byte-to-byte lookup through a 256-entry table, `y = table[x]`: the engine's element-wise
//! regions between 8-bit tensors (MobileNetV3's quantized hard-swish and hard-sigmoid,
//! a dequantize-requantize pair), each folded into one table of what the region gives
//! for every byte.
//!
//! tract's own table routine loads, looks up and stores one byte at a time on every
//! architecture (about three instructions a byte on aarch64). The NEON variant keeps the
//! table in sixteen vector registers and looks sixteen bytes up with one `TBL` and three
//! `TBX` of four registers each: about nine instructions per sixteen bytes. Every variant
//! gives the reference's bytes.

use super::{ElementWise, Unsupported};
use crate::{Cpu, Isa};

/// One implementation: `run` looks the `n` bytes of `x` up in `table` into `y` (which
/// may be `x`).
pub type Variant = ElementWise<unsafe fn(&[u8; 256], *const u8, *mut u8, usize)>;

/// Every variant this build has, best first.
pub static VARIANTS: &[Variant] = &[
    #[cfg(target_arch = "aarch64")]
    Variant {
        name: "q8_lut_neon",
        isa: Isa::Aarch64Neon,
        run: neon::lookup,
    },
    Variant {
        name: "q8_lut_portable",
        isa: Isa::Portable,
        run: portable,
    },
];

/// A planned table.
#[derive(Clone)]
pub struct QLut {
    table: Box<[u8; 256]>,
    variant: &'static Variant,
}

impl std::fmt::Debug for QLut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QLut({})", self.variant.name)
    }
}

impl PartialEq for QLut {
    fn eq(&self, o: &Self) -> bool {
        self.table == o.table && self.variant.name == o.variant.name
    }
}

impl QLut {
    /// Plans `table` on the best variant `cpu` runs; the table must have 256 entries.
    pub fn plan(table: &[u8], cpu: Cpu) -> Result<QLut, Unsupported> {
        let variant = VARIANTS
            .iter()
            .find(|v| cpu.has(v.isa))
            .ok_or_else(|| Unsupported("no table kernel for this CPU".into()))?;
        Self::plan_on(table, variant)
    }

    /// Plans on one given variant (tests compare them).
    pub fn plan_on(table: &[u8], variant: &'static Variant) -> Result<QLut, Unsupported> {
        let table: [u8; 256] = table.try_into().map_err(|_| {
            Unsupported(format!("a table of {} entries (must be 256)", table.len()))
        })?;
        Ok(QLut {
            table: Box::new(table),
            variant,
        })
    }

    /// The table.
    pub fn table(&self) -> &[u8; 256] {
        &self.table
    }

    /// The variant that runs it.
    pub fn variant(&self) -> &'static Variant {
        self.variant
    }

    /// Replaces every byte of `buf` with its table entry.
    pub fn run_in_place(&self, buf: &mut [u8]) {
        // SAFETY: the variants read each byte before writing it, so `x` may be `y`.
        unsafe { (self.variant.run)(&self.table, buf.as_ptr(), buf.as_mut_ptr(), buf.len()) }
    }

    /// Looks `x` up into `y`. Fails, touching nothing, when the lengths differ.
    pub fn run(&self, x: &[u8], y: &mut [u8]) -> Result<(), Unsupported> {
        if x.len() != y.len() {
            return Err(Unsupported(format!(
                "{} input bytes for {} output bytes",
                x.len(),
                y.len()
            )));
        }
        // SAFETY: both slices hold `y.len()` bytes.
        unsafe { (self.variant.run)(&self.table, x.as_ptr(), y.as_mut_ptr(), y.len()) };
        Ok(())
    }
}

/// The reference, in plain Rust.
///
/// # Safety
/// `x` and `y` must hold `n` bytes; `y` may be `x`.
unsafe fn portable(table: &[u8; 256], x: *const u8, y: *mut u8, n: usize) {
    for i in 0..n {
        *y.add(i) = table[*x.add(i) as usize];
    }
}

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod tests;

//! What this machine can run: the instruction sets kernels are written for.

use std::fmt;
use std::sync::OnceLock;

/// An instruction set a kernel variant needs, in increasing order of preference within
/// an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, on any CPU.
    Portable,
    /// x86-64 with SSE4.1 (every x86-64 gateway of the last decade, Atom-class included).
    Sse41,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// x86-64 with AVX2 and the VEX-encoded vector neural network instructions
    /// (AVX-VNNI: Alder Lake, Zen 4 and later).
    AvxVnni,
    /// 32-bit ARM with NEON (Raspberry Pi 2 and later running a 32-bit OS).
    ArmNeon,
    /// 64-bit ARM Advanced SIMD (every aarch64 CPU).
    Aarch64Neon,
    /// 64-bit ARM with the dot-product instructions (Cortex-A55/A76 and later: Pi 5).
    Aarch64DotProd,
}

impl Isa {
    /// Every instruction set, for listing.
    pub const ALL: [Isa; 7] = [
        Isa::Portable,
        Isa::Sse41,
        Isa::Avx2Fma,
        Isa::AvxVnni,
        Isa::ArmNeon,
        Isa::Aarch64Neon,
        Isa::Aarch64DotProd,
    ];

    /// The name used in kernel names, reports and `PERCH_KERNEL_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Sse41 => "sse41",
            Isa::Avx2Fma => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::ArmNeon => "neon32",
            Isa::Aarch64Neon => "neon",
            Isa::Aarch64DotProd => "dotprod",
        }
    }

    fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The instruction sets this machine has, as far as kernels may use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cpu {
    has: [bool; Isa::ALL.len()],
}

impl Cpu {
    /// The machine this runs on, capped by `PERCH_KERNEL_ISA` when it is set. Probed once.
    pub fn detect() -> Cpu {
        static DETECTED: OnceLock<Cpu> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let cpu = Cpu::probe();
            match std::env::var("PERCH_KERNEL_ISA") {
                Ok(cap) => match Isa::from_name(cap.trim()) {
                    Some(isa) => cpu.capped(isa),
                    None => {
                        log::warn!(
                            "PERCH_KERNEL_ISA={cap:?} names no instruction set (one of: {}); ignored",
                            Isa::ALL.map(Isa::name).join(", ")
                        );
                        cpu
                    }
                },
                Err(_) => cpu,
            }
        })
    }

    /// A CPU with only the portable kernels.
    pub fn portable() -> Cpu {
        let mut has = [false; Isa::ALL.len()];
        has[Isa::Portable as usize] = true;
        Cpu { has }
    }

    /// Whether kernels for `isa` may run here.
    pub fn has(&self, isa: Isa) -> bool {
        self.has[isa as usize]
    }

    /// The best instruction set this CPU has.
    pub fn best(&self) -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|isa| self.has(*isa))
            .unwrap_or(Isa::Portable)
    }

    /// This CPU without the instruction sets above `cap` (within the same architecture;
    /// `portable` removes them all).
    pub fn capped(mut self, cap: Isa) -> Cpu {
        for isa in Isa::ALL {
            if isa > cap || (cap == Isa::Portable && isa != Isa::Portable) {
                self.has[isa as usize] = false;
            }
        }
        self
    }

    fn probe() -> Cpu {
        let mut cpu = Cpu::portable();
        #[cfg(target_arch = "x86_64")]
        {
            cpu.has[Isa::Sse41 as usize] = std::arch::is_x86_feature_detected!("sse4.1");
            cpu.has[Isa::Avx2Fma as usize] = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            cpu.has[Isa::AvxVnni as usize] =
                cpu.has[Isa::Avx2Fma as usize] && std::arch::is_x86_feature_detected!("avxvnni");
        }
        #[cfg(target_arch = "aarch64")]
        {
            cpu.has[Isa::Aarch64Neon as usize] = true;
            cpu.has[Isa::Aarch64DotProd as usize] =
                std::arch::is_aarch64_feature_detected!("dotprod");
        }
        #[cfg(target_arch = "arm")]
        {
            cpu.has[Isa::ArmNeon as usize] = arm_neon();
        }
        cpu
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Isa::ALL
            .into_iter()
            .filter(|isa| self.has(*isa))
            .map(Isa::name)
            .collect();
        f.write_str(&names.join(" "))
    }
}

/// NEON on 32-bit ARM: `TRACT_CPU_ARM32_NEON` when set (the knob tract reads too, so
/// both layers agree), else the kernel's hardware capabilities (`AT_HWCAP` in
/// `/proc/self/auxv`, which qemu-user emulates for the guest, unlike `/proc/cpuinfo`).
#[cfg(target_arch = "arm")]
fn arm_neon() -> bool {
    if let Ok(forced) = std::env::var("TRACT_CPU_ARM32_NEON") {
        return forced.trim() == "true" || forced.trim() == "1";
    }
    const AT_HWCAP: u32 = 16;
    const HWCAP_NEON: u32 = 1 << 12;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return false;
    };
    auxv.chunks_exact(8).any(|pair| {
        let key = u32::from_ne_bytes([pair[0], pair[1], pair[2], pair[3]]);
        let value = u32::from_ne_bytes([pair[4], pair[5], pair[6], pair[7]]);
        key == AT_HWCAP && value & HWCAP_NEON != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_runs_portable_kernels() {
        assert!(Cpu::detect().has(Isa::Portable));
        assert!(Cpu::portable().has(Isa::Portable));
        assert_eq!(Cpu::portable().best(), Isa::Portable);
    }

    #[test]
    fn capping_removes_what_is_above_the_cap() {
        let mut all = Cpu::portable();
        all.has = [true; Isa::ALL.len()];
        let sse = all.capped(Isa::Sse41);
        assert!(sse.has(Isa::Sse41));
        assert!(!sse.has(Isa::Avx2Fma));
        assert_eq!(all.capped(Isa::Portable).best(), Isa::Portable);
        assert_eq!(all.capped(Isa::Aarch64Neon).best(), Isa::Aarch64Neon);
    }

    #[test]
    fn isa_names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
    }
}

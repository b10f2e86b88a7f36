//! Builds the C kernels of targets whose SIMD intrinsics Rust does not offer on stable:
//! 32-bit ARM NEON (`src/**/neon32.c`). Other targets build nothing here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // 32-bit ARM Linux only (a Cortex-M build of perch-runtime's no_std core does not
    // depend on this crate at all).
    if arch != "arm" || os != "linux" {
        return;
    }
    let sources = ["src/f32_dwconv/neon32.c"];
    for source in sources {
        println!("cargo:rerun-if-changed={source}");
    }
    cc::Build::new()
        .files(sources)
        // NEON for these files only: the Rust side calls them after checking the CPU.
        .flag("-mfpu=neon")
        .flag("-O3")
        .warnings_into_errors(true)
        .compile("perch_kernels_neon32");
}

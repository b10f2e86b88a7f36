//! Builds the C kernels of targets whose SIMD intrinsics Rust does not offer on stable:
//! 32-bit ARM NEON (`src/kernels/**/neon32.c`). Other targets build nothing here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // The kernels are part of the engine (feature `std`); the no_std core built for a
    // Cortex-M is also `arm` but has neither.
    if arch != "arm" || os != "linux" || std::env::var_os("CARGO_FEATURE_STD").is_none() {
        return;
    }
    let sources = ["src/kernels/f32_dwconv/neon32.c"];
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

//! Puts memory.x where cortex-m-rt's link.x finds it and links with link.x.
//!
//! Done here rather than in a `.cargo/config.toml` so that the build works from any
//! folder (`--manifest-path` from the repository root does not read this folder's
//! cargo configuration).

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("memory.x is readable");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}

//! Link LibTorch so the binary finds it and registers CUDA without `LD_LIBRARY_PATH`.
//!
//! `libtorch_cuda.so` has no symbol the program names directly, so a linker that drops
//! unneeded libraries (`--as-needed`) removes it and CUDA never registers; `--no-as-needed`
//! around `-ltorch` keeps it. The rpath points at the torch library folder that torch-sys
//! found (it exports it as `DEP_TCH_LIBTORCH_LIB`), so the binary runs as built.
//!
//! The dashboard's files under `static/` are built into the binary; a file added there
//! (the chart library that `scripts/web-deps` copies into `static/vendor/`) rebuilds it.
fn main() {
    println!("cargo:rerun-if-changed=static");
    if !std::path::Path::new("static/vendor/uPlot.esm.js").exists() {
        println!(
            "cargo:warning=static/vendor/ has no chart library: the built-in dashboard will draw no charts; \
             run scripts/web-deps, then build again"
        );
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

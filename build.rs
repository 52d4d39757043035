//! Link LibTorch so the binary finds it and registers CUDA without `LD_LIBRARY_PATH`.
//!
//! `libtorch_cuda.so` has no symbol the program names directly, so a linker that drops
//! unneeded libraries (`--as-needed`) removes it and CUDA never registers; `--no-as-needed`
//! around `-ltorch` keeps it. The rpath points at the torch library folder that torch-sys
//! found (it exports it as `DEP_TCH_LIBTORCH_LIB`), so the binary runs as built.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

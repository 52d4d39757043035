#!/bin/bash
# Builds what bench/gpu.sh runs on a GPU machine and packs it small enough to travel:
#   bench/gpu-bundle.sh [DIR]     (default .gpu, a folder git ignores)
# Release builds of the service, the `jobs`, `steps` and `stream` benchmarks and the
# library's unit tests, linked against the project's torch venv (the GPU machine's PyTorch
# is the same build), stripped of debug information and packed into DIR/bin.tar.xz. On the
# GPU machine:
#   mkdir -p /tmp/g && tar -xJf .gpu/bin.tar.xz -C /tmp/g && bash bench/gpu.sh /tmp/g/bin "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.gpu}
run() { scripts/with-torch "$@"; }
run cargo build --locked --release --bin gradscope
# Cargo names each test and benchmark executable it built ("Executable benches/jobs.rs
# (target/release/deps/jobs-<hash>)").
built=$(run cargo bench --locked --no-run --bench jobs --bench steps --bench stream 2>&1 | tee /dev/stderr
        run cargo test --locked --release --lib --no-run 2>&1 | tee /dev/stderr)
executable() { sed -n "s|.*Executable $1 (\(.*\))|\1|p" <<<"$built" | head -1; }
rm -rf "$dir/bin" && mkdir -p "$dir/bin"
cp target/release/gradscope "$dir/bin/gradscope"
for bench in jobs steps stream; do cp "$(executable "benches/$bench.rs")" "$dir/bin/$bench"; done
cp "$(executable "unittests src/lib.rs")" "$dir/bin/lib-tests"
strip --strip-debug "$dir"/bin/*
tar -cJf "$dir/bin.tar.xz" -C "$dir" bin
rm -rf "$dir/bin"
ls -l "$dir/bin.tar.xz"

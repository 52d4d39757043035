#!/bin/bash
# The GPU figures of the README's "On a GPU", in one pass:
#   bench/gpu.sh BIN_DIR OUT_DIR
# BIN_DIR holds release builds of `gradscope` and of the `jobs`, `steps` and `stream`
# benchmarks (target/release/deps/<name>-<hash>, copied under their plain names), and,
# when it has it, the library's unit tests as `lib-tests` (`cargo test --release --lib
# --no-run`: the statistics' tests then run on CUDA too), all linked
# against the same LibTorch as the machine's PyTorch, whose library folder is put on
# LD_LIBRARY_PATH here (bench/gpu-bundle.sh builds and packs them). Each benchmark's
# output goes to OUT_DIR; a summary is printed.
# Ordered by what matters most, within one device call of 600 s: the kernels' tests,
# then the kernels against LibTorch's reductions through real jobs, then the peers.
set -u
bin=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export PYTHONUNBUFFERED=1
shape=(--hidden 2048 --blocks 24 --batch-size 1024 --torch-threads 4)
mlp=("${shape[@]}" --steps "${STEPS:-200}")
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c 'import torch; print(torch.__version__)'; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
if [ -x "$bin/lib-tests" ]; then
  # The kernels run on the GPU itself here; their CPU emulation needs a C++ compiler.
  echo "== the statistics' unit tests, on CUDA as well"
  timeout 90 "$bin/lib-tests" train:: --skip kernels_on_the_cpu > "$out/lib-tests.txt" 2>&1
  grep -E "test result|FAILED|panicked" "$out/lib-tests.txt"
fi
echo "== real jobs, fp32: the statistics kernels against LibTorch's reductions"
timeout 240 "$bin/jobs" --bench --device cuda "${mlp[@]}" --rounds 3 \
  --variants default,default-libtorch,no-histogram,no-histogram-libtorch,bare > "$out/jobs-cuda.txt" 2>&1
grep -v autocast "$out/jobs-cuda.txt" | sed -n '/^steps\/s through/,/^training thread/p'
echo "== real jobs, fp32, each phase waited for (where the GPU time goes)"
timeout 90 "$bin/jobs" --bench --device cuda "${shape[@]}" --steps 100 --rounds 1 --sync-phases \
  --variants default,default-libtorch,no-histogram,bare > "$out/jobs-cuda-phases.txt" 2>&1
grep -E "^  round" "$out/jobs-cuda-phases.txt"
echo "== eager PyTorch"
timeout 90 python3 "$here/pytorch_bench.py" --device cuda --model mlp --rounds 7 --steps 20 > "$out/pytorch-cuda.txt" 2>&1
tail -7 "$out/pytorch-cuda.txt"
echo "== the job's step"
timeout 90 "$bin/steps" --bench --device cuda --large --model mlp --rounds 7 --steps 20 > "$out/steps-cuda.txt" 2>&1
tail -12 "$out/steps-cuda.txt"
echo "== real jobs, fp16"
timeout 100 "$bin/jobs" --bench --device cuda --precision fp16 "${mlp[@]}" --rounds 2 \
  --variants default,bare > "$out/jobs-cuda-fp16.txt" 2>&1
grep -v autocast "$out/jobs-cuda-fp16.txt" | sed -n '/^cost against/,/^$/p'
echo "== 500 subscribers on this machine's cores"
timeout 90 "$bin/stream" --bench --rounds 2 --worker-binary "$bin/gradscope" > "$out/stream.txt" 2>&1
tail -14 "$out/stream.txt"

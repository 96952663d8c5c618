#!/usr/bin/env bash
# The CUDA path end to end, for a machine with an NVIDIA GPU and driver (no
# CUDA toolkit needed: tract-cuda loads the driver, cuBLAS and NVRTC at run
# time). Builds neorun with `--features cuda`, compiles the sample neural
# models for `cuda-sm80`, then for each bundle:
#   1. `neorun check` — loads it on the GPU and runs its test vectors (the
#      outputs the compiler verified on the CPU) within the manifest tolerance,
#      and prints where tract's CUDA runtime put each operator on this GPU
#      next to neoc's dry-run placement from the manifest, with every
#      difference (kept in bench/out/gpu/MODEL.check.txt);
#   2. `neorun bench` on the GPU, and the same bundle with --cpu-fallback on
#      the CPU, at batch 1 and 64.
# Prints one line per run and writes bench/out/gpu.json. Refuses to start
# without nvidia-smi, so it never reports a GPU number it did not measure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu: no NVIDIA GPU here (nvidia-smi fails); nothing was run" >&2
  exit 2
fi
nvidia-smi -L
cargo build --release -q -p neoc-compiler
cargo build --release -q -p neorun --features cuda
mkdir -p bench/out/gpu
cd bench/out/gpu
../../../target/release/neoc keygen -o k --force >/dev/null
out=()
for m in fraud-mlp image-cnn; do
  ../../../target/release/neoc compile "$m:1" --registry "$root/models/registry" \
    --target cuda-sm80 --key k.key -o "$m.cuda.neo" -q
  echo "== $m: health check on the GPU (test vectors vs the CPU-verified outputs)"
  ../../../target/release/neorun check "$m.cuda.neo" --trusted-key k.pub | tee "$m.check.txt"
  for batch in 1 64; do
    gpu=$(../../../target/release/neorun bench "$m.cuda.neo" --trusted-key k.pub --batch "$batch" --json)
    cpu=$(../../../target/release/neorun bench "$m.cuda.neo" --trusted-key k.pub --batch "$batch" --cpu-fallback --json)
    echo "$m batch $batch: gpu $gpu"
    echo "$m batch $batch: cpu $cpu"
    out+=("{\"model\":\"$m\",\"batch\":$batch,\"gpu\":$gpu,\"cpu\":$cpu}")
  done
done
(IFS=,; echo "[${out[*]}]") > ../gpu.json
echo "wrote bench/out/gpu.json"

#!/usr/bin/env bash
# onnxruntime's CUDA execution provider end to end, for a machine with an
# NVIDIA GPU and driver. neoc compiles the sample neural models with
# `--engine onnxruntime --target cuda-sm80` (verified on onnxruntime's CPU
# execution provider, the only one the compiling host may have), then for
# each bundle:
#   1. `neorun check` — opens it on the GPU (refused, not quietly run on the
#      CPU, if the CUDA provider cannot start) and runs its test vectors
#      within the manifest tolerance; the script fails unless neorun says it
#      runs on the CUDA execution provider;
#   2. `neorun bench` on the GPU, and the model's x86_64 onnxruntime bundle
#      (the CPU execution provider of the same library) beside it, at batch 1
#      and 64.
# onnxruntime-gpu comes from ORT_DYLIB_PATH (its capi folder or the
# library) when set, else from a venv made here (bench/out/venv-ort-gpu,
# `pip install onnxruntime-gpu`: needs PyPI, and the CUDA and cuDNN
# libraries onnxruntime-gpu's release notes name for its version).
# Prints one line per run and writes bench/out/gpu-onnxruntime.json.
# Refuses to start without nvidia-smi, so it never reports a GPU number it
# did not measure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu/onnxruntime.sh: no NVIDIA GPU here (nvidia-smi fails); nothing was run" >&2
  exit 2
fi
nvidia-smi -L
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  venv=bench/out/venv-ort-gpu
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "onnxruntime-gpu==$(grep -i '^onnxruntime==' models/requirements.txt | cut -d= -f3)" \
      || "$venv/bin/pip" install -q onnxruntime-gpu
  fi
  ORT_DYLIB_PATH="$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
  # onnxruntime-gpu finds the CUDA and cuDNN wheels' libraries through the
  # python package's preload; neorun is not python, so name them
  for d in "$venv"/lib/python3*/site-packages/nvidia/*/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
fi
export ORT_DYLIB_PATH
ls "$(dirname "$ORT_DYLIB_PATH")"/libonnxruntime_providers_cuda.so "$ORT_DYLIB_PATH"/libonnxruntime_providers_cuda.so 2>/dev/null \
  || { echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH has no libonnxruntime_providers_cuda.so: not onnxruntime-gpu" >&2; exit 1; }
cargo build --release -q --workspace
mkdir -p bench/out/gpu-ort
cd bench/out/gpu-ort
neoc=../../../target/release/neoc
neorun=../../../target/release/neorun
$neoc keygen -o k --force >/dev/null
out=()
for m in fraud-mlp image-cnn; do
  $neoc compile "$m:1" --registry "$root/models/registry" --engine onnxruntime \
    --target cuda-sm80 --key k.key -o "$m.ort-cuda.neo" -q
  $neoc compile "$m:1" --registry "$root/models/registry" --engine onnxruntime \
    --target x86_64 --key k.key -o "$m.ort-cpu.neo" -q
  echo "== $m: health check on the GPU (test vectors vs the outputs verified on the CPU provider)"
  $neorun check "$m.ort-cuda.neo" --trusted-key k.pub | tee "$m.check.txt"
  grep -q "CUDA execution provider" "$m.check.txt" || { echo "$m did not run on the CUDA execution provider" >&2; exit 1; }
  for batch in 1 64; do
    gpu=$($neorun bench "$m.ort-cuda.neo" --trusted-key k.pub --batch "$batch" --json)
    cpu=$($neorun bench "$m.ort-cpu.neo" --trusted-key k.pub --batch "$batch" --json)
    echo "$m batch $batch: gpu $gpu"
    echo "$m batch $batch: cpu $cpu"
    out+=("{\"model\":\"$m\",\"batch\":$batch,\"gpu\":$gpu,\"cpu\":$cpu}")
  done
done
(IFS=,; echo "[${out[*]}]") > ../gpu-onnxruntime.json
echo "wrote bench/out/gpu-onnxruntime.json"

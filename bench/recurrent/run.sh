#!/usr/bin/env bash
# Recurrent models (#23 item 4): neorun's whole-sequence LSTM (`neoc_lstm`)
# against tract's per-step Scan lowering (NEOC_LSTM=tract at compile time),
# onnxruntime's InferenceSession.run in Python, and the same onnxruntime
# library inside neorun (`--engine onnxruntime`: no Python call overhead), at
# 1 and 2 threads, rounds alternating between the engines; medians of the
# rounds' medians.
# Usage: bash bench/recurrent/run.sh [ROUNDS]
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
rounds="${1:-3}"
lscpu | grep 'Model name'
grep -o -w -E 'avx512f|avx2|fma|amx_tile|avx512_bf16|asimd' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
out=bench/out/recurrent
rm -rf "$out" && mkdir -p "$out"
"$venv/bin/python" bench/recurrent/models.py "$out"
neoc=target/release/neoc
neorun=target/release/neorun
$neoc keygen -o "$out/k" --force >/dev/null
ORT_DYLIB_PATH="$(ls -d "$venv"/lib/python3*/site-packages/onnxruntime/capi | head -1)"
export ORT_DYLIB_PATH
models="lstm-head lstm-speech bilstm lstm-batch8 gru-head"
for m in $models; do
  $neoc compile "$out/$m.onnx" --target host --engine tract --key "$out/k.key" -o "$out/$m.neo" -q
  NEOC_LSTM=tract $neoc compile "$out/$m.onnx" --target host --engine tract --key "$out/k.key" -o "$out/$m.scan.neo" -q
  $neoc compile "$out/$m.onnx" --target host --engine onnxruntime --key "$out/k.key" -o "$out/$m.ort.neo" -q
done
us() { sed -E 's/.*median ([0-9.]+) µs.*/\1/'; }
printf '%-12s %3s %10s %10s %10s %10s %8s %8s %9s\n' model thr neoc_lstm tract_scan ort_python ort_neorun ours/ort scan/ort ours/ortN
for m in $models; do
  for t in 1 2; do
    a=(); b=(); c=(); e=()
    for r in $(seq "$rounds"); do
      a+=("$($neorun bench "$out/$m.neo" --trusted-key "$out/k.pub" --threads $t --iterations 300 | us)")
      b+=("$($neorun bench "$out/$m.scan.neo" --trusted-key "$out/k.pub" --threads $t --iterations 300 | us)")
      c+=("$("$venv/bin/python" bench/exporters/ort_time.py "$out/$m.onnx" $t | sed 's/ µs//')")
      e+=("$($neorun bench "$out/$m.ort.neo" --trusted-key "$out/k.pub" --threads $t --iterations 300 | us)")
    done
    "$venv/bin/python" - "$m" "$t" "${a[*]}" "${b[*]}" "${c[*]}" "${e[*]}" <<'PY'
import statistics, sys
m, t = sys.argv[1], sys.argv[2]
a, b, c, e = (statistics.median(map(float, s.split())) for s in sys.argv[3:7])
print(f"{m:<12} {t:>3} {a:>10.1f} {b:>10.1f} {c:>10.1f} {e:>10.1f} {a / c:>8.2f} {b / c:>8.2f} {a / e:>9.2f}")
PY
  done
done

#!/usr/bin/env bash
# Recurrent models (#23 item 4): neorun's whole-sequence LSTM (`neoc_lstm`)
# against tract's per-step Scan lowering (NEOC_LSTM=tract at compile time)
# and onnxruntime's InferenceSession.run, at 1 and 2 threads, rounds
# alternating between the engines; medians of the rounds' medians.
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
models="lstm-head lstm-speech bilstm lstm-batch8 gru-head"
for m in $models; do
  $neoc compile "$out/$m.onnx" --target host --engine tract --key "$out/k.key" -o "$out/$m.neo" -q
  NEOC_LSTM=tract $neoc compile "$out/$m.onnx" --target host --engine tract --key "$out/k.key" -o "$out/$m.scan.neo" -q
done
us() { sed -E 's/.*median ([0-9.]+) µs.*/\1/'; }
printf '%-12s %3s %10s %10s %12s %8s %8s\n' model thr neoc_lstm tract_scan onnxruntime ours/ort scan/ort
for m in $models; do
  for t in 1 2; do
    a=(); b=(); c=()
    for r in $(seq "$rounds"); do
      a+=("$($neorun bench "$out/$m.neo" --trusted-key "$out/k.pub" --threads $t --iterations 300 | us)")
      b+=("$($neorun bench "$out/$m.scan.neo" --trusted-key "$out/k.pub" --threads $t --iterations 300 | us)")
      c+=("$("$venv/bin/python" bench/exporters/ort_time.py "$out/$m.onnx" $t | sed 's/ µs//')")
    done
    "$venv/bin/python" - "$m" "$t" "${a[*]}" "${b[*]}" "${c[*]}" <<'PY'
import statistics, sys
m, t = sys.argv[1], sys.argv[2]
a, b, c = (statistics.median(map(float, s.split())) for s in sys.argv[3:6])
print(f"{m:<12} {t:>3} {a:>10.1f} {b:>10.1f} {c:>12.1f} {a / c:>8.2f} {b / c:>8.2f}")
PY
  done
done

#!/usr/bin/env bash
# The figures of #21 (what real exporters write), one run, with the peer:
#  - an image-sized detector-like model (1x3x416x416): bundle size, cold
#    `neorun predict` with a JSON and a .npy request, `neorun check`, next to
#    a Python onnxruntime process doing the same (hyperfine medians);
#  - a 16-step LSTM head and MobileNetV3-style blocks: `neorun bench` median
#    next to onnxruntime's InferenceSession.run, at 1 and 2 threads.
# Needs hyperfine. Usage: bash bench/exporters/run.sh
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
lscpu | grep 'Model name'
out=bench/out/exporters
rm -rf "$out" && mkdir -p "$out"
"$venv/bin/python" bench/exporters/models.py "$out"
neoc=target/release/neoc
neorun=target/release/neorun
$neoc keygen -o "$out/k" --force >/dev/null
for m in det lstm mb; do
  $neoc compile "$out/$m.onnx" --target host --key "$out/k.key" -o "$out/$m.neo" -q
done
echo "det.neo: $(stat -c %s "$out/det.neo") bytes"
hyperfine -N -w 2 -r 10 --export-json "$out/cold.json" \
  "$neorun predict $out/det.neo --trusted-key $out/k.pub --input $out/img.json" \
  "$neorun predict $out/det.neo --trusted-key $out/k.pub --input $out/img.npy" \
  "$neorun check $out/det.neo --trusted-key $out/k.pub" \
  "$venv/bin/python bench/exporters/ort_once.py $out/det.onnx $out/img.npy" >/dev/null
"$venv/bin/python" - "$out/cold.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['median']*1e3:8.1f} ms  {r['command']}")
PY
for m in lstm mb; do
  for t in 1 2; do
    echo "$m, $t thread(s): neorun $($neorun bench "$out/$m.neo" --trusted-key "$out/k.pub" --threads $t --iterations 300 | sed -E 's/.*median ([0-9.]+ µs).*/\1/'), onnxruntime $("$venv/bin/python" bench/exporters/ort_time.py "$out/$m.onnx" $t)"
  done
done

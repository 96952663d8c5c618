#!/usr/bin/env bash
# HTTP serving benchmark on loopback: neorun serve (dynamic batching on and
# off) vs onnxruntime behind FastAPI + uvicorn, same models, same requests,
# wrk at 1, 8 and 64 connections. Prints a table; writes bench/out/serve.json.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
out=bench/out
for m in fraud-xgb fraud-mlp image-cnn; do
  ./target/release/neoc compile $m:1 --target host --unsigned -o $out/$m.neo -q
done
DUR="${BENCH_SECONDS:-5}"
"$venv/bin/python" bench/serve/bench.py "$DUR" "$venv/bin/python" $out/serve.json

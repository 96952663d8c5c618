#!/usr/bin/env bash
# Batch transform benchmark: `neorun batch` against ONNX Runtime in a Python
# chunked loop (pyarrow's multithreaded CSV reader and writer, the fastest
# CSV path in Python), on the same CSV, the same CPUs, in one run, rounds
# alternating. Models: fraud-xgb (100 trees) and fraud-mlp.
#   bash bench/batch/run.sh [ROWS]     (default 1,000,000; ROUNDS=3)
# Prints a table (rows/s, median of the rounds) and writes bench/out/batch.json.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
rows="${1:-1000000}"
for m in fraud-xgb fraud-mlp; do
  ./target/release/neoc compile "$m:1" --target host --unsigned -o "bench/out/$m.neo" -q
done
"$venv/bin/python" bench/batch/bench.py ./target/release/neorun "$rows" bench/out/batch.json

#!/usr/bin/env bash
# Tree-ensemble benchmark (fraud-xgb: 100 trees, depth 6) against ONNX Runtime,
# XGBoost inplace_predict and tl2cgen. Prints a table, writes bench/out/trees.json.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
venv="${NEOC_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r models/requirements.txt -r bench/requirements.txt
cargo build --release -q
mkdir -p bench/out
./target/release/neoc compile fraud-xgb:1 --target host --unsigned -o bench/out/fraud-xgb.neo -q
"$venv/bin/python" bench/trees/bench.py ./target/release/neorun bench/out/fraud-xgb.neo \
  models/fraud-xgb/xgboost-model.json models/fraud-xgb/model.onnx bench/out/trees.json

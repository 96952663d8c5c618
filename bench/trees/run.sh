#!/usr/bin/env bash
# Tree-ensemble benchmark (fraud-xgb: 100 trees, depth 6) against ONNX Runtime,
# XGBoost inplace_predict and tl2cgen. Prints a table, writes bench/out/trees.json.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
./target/release/neoc compile fraud-xgb:1 --target host --unsigned -o bench/out/fraud-xgb.neo -q
"$venv/bin/python" bench/trees/bench.py ./target/release/neorun bench/out/fraud-xgb.neo \
  models/fraud-xgb/xgboost-model.json models/fraud-xgb/model.onnx bench/out/trees.json

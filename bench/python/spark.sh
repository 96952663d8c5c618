#!/usr/bin/env bash
# Spark local mode: the neorun UDF (contrib/spark/score.py) vs the same UDF
# with onnxruntime inside, on fraud-xgb; 1,000,000 rows by default.
#   bash bench/python/spark.sh [ROWS]      (ROUNDS=3)
# Needs the neorun wheel installed in the venv (bash bench/python/run.sh does it).
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
rows="${1:-1000000}"
./target/release/neoc keygen -o bench/out/spark-key --force >/dev/null
./target/release/neoc compile fraud-xgb:1 --target host --key bench/out/spark-key.key -o bench/out/fraud-xgb-signed.neo -q
NEORUN_BENCH_KEY="$root/bench/out/spark-key.pub" "$venv/bin/python" bench/python/spark_bench.py \
  ./target/release/neorun "$root/bench/out/fraud-xgb-signed.neo" models/fraud-xgb/model.onnx "$rows" bench/out/spark.json

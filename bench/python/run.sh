#!/usr/bin/env bash
# The Python package against onnxruntime in the same process: Model.predict
# vs InferenceSession.run on fraud-xgb and fraud-mlp, batch 1 and 64, rounds
# alternating, medians; and 4 threads sharing one model (the GIL released).
#   bash bench/python/run.sh            (ROUNDS=5, ITER=2000)
# Prints a table and writes bench/out/python.json.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
rm -f target/wheels/neorun-*.whl
"$venv/bin/maturin" build --release --locked -q -m python/Cargo.toml -i "$venv/bin/python"
"$venv/bin/pip" install -q --force-reinstall --no-deps target/wheels/neorun-*.whl
for m in fraud-xgb fraud-mlp; do
  ./target/release/neoc compile "$m:1" --target host --unsigned -o "bench/out/$m.neo" -q
done
"$venv/bin/python" bench/python/bench.py bench/out bench/out/python.json

#!/usr/bin/env bash
# Soak test: 64 connections of mixed valid and malformed traffic for
# SOAK_SECONDS (600) against one `neorun serve` with every feature on (see
# soak.py); 0 crashes, 0 wedges, RSS flat, or it exits 1. Writes
# bench/out/soak.json (the totals and a sample every 5 s).
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
work=bench/out/soak
rm -rf "$work" && mkdir -p "$work"
./target/release/neoc keygen -o "$work/k" >/dev/null
for m in fraud-xgb fraud-mlp; do
  ./target/release/neoc compile $m:1 --target host --key "$work/k.key" -o "$work/$m.neo" -q
done
# an integer Mod: a zero divisor makes the engine fail on that input (424)
"$venv/bin/python" - "$work" <<'PY'
import os, sys, numpy as np, onnx
from onnx import helper as h, TensorProto as T, numpy_helper
d = sys.argv[1] + "/mod"
os.makedirs(d + "/test_data_set_0")
io = [h.make_tensor_value_info(n, T.INT32, ["N", 2]) for n in ("a", "b", "r")]
onnx.save(h.make_model(h.make_graph([h.make_node("Mod", ["a", "b"], ["r"])], "mod", io[:2], io[2:]),
                       opset_imports=[h.make_opsetid("", 13)], ir_version=8), d + "/mod.onnx")
x, y = np.array([[7, -7]], np.int32), np.array([[3, 3]], np.int32)
for i, (a, n) in enumerate([(x, "a"), (y, "b")]):
    open(f"{d}/test_data_set_0/input_{i}.pb", "wb").write(numpy_helper.from_array(a, n).SerializeToString())
open(f"{d}/test_data_set_0/output_0.pb", "wb").write(numpy_helper.from_array(np.mod(x, y), "r").SerializeToString())
PY
tar -C "$work/mod" -czf "$work/mod.tar.gz" mod.onnx test_data_set_0
./target/release/neoc compile "$work/mod.tar.gz" --target host --key "$work/k.key" -o "$work/mod.neo" -q
"$venv/bin/python" bench/soak/soak.py "${SOAK_SECONDS:-600}" bench/out/soak.json "$work"

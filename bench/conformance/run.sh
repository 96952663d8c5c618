#!/usr/bin/env bash
# Conformance figure: the ONNX backend node tests through `neoc compile`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
venv="${NEOC_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r models/requirements.txt
cargo build --release -q
mkdir -p bench/out
"$venv/bin/python" bench/conformance/run.py "$root/target/release/neoc" bench/out

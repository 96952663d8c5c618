#!/usr/bin/env bash
# Conformance figure: the ONNX backend node tests through `neoc compile`.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
"$venv/bin/python" bench/conformance/run.py "$root/target/release/neoc" bench/out

#!/usr/bin/env bash
# An endpoint (two production variants of fraud-xgb, data capture at 100%)
# vs the same bundle served alone, under wrk at 1, 8 and 64 connections, and
# capture's records/s and drops. Prints a table; writes bench/out/endpoints.json.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
./target/release/neoc compile fraud-xgb:1 --target host --unsigned -o bench/out/fraud-xgb.neo -q
"$venv/bin/python" bench/serve/endpoints.py "${BENCH_SECONDS:-5}" bench/out/endpoints.json

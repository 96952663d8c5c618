#!/usr/bin/env bash
# Runs neoc's fuzz targets (fuzz/, cargo-fuzz on nightly) for EXECS
# executions each (default 10^6; the issue asks 10^7 for a release) and
# prints, per target, the executions, the speed, the coverage and the
# crashes (their inputs are left in fuzz/artifacts/TARGET/).
#   bash bench/fuzz/run.sh [EXECS] [TARGET …]
# Needs: rustup toolchain install nightly; cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/../.."
execs="${1:-1000000}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bundle_reader unpack request_codecs oip_request)
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is needed: cargo install cargo-fuzz" >&2; exit 1; }
seeds=bench/out/fuzz-seeds
mkdir -p "$seeds"/{bundle_reader,unpack,request_codecs,oip_request}
# seed corpora from the sample models and the tests' request shapes
if [ ! -f "$seeds/bundle_reader/fraud-xgb.neo" ]; then
  cargo build --release -q -p neoc-compiler
  ./target/release/neoc compile fraud-xgb:1 --target host --unsigned -o "$seeds/bundle_reader/fraud-xgb.neo" -q
fi
cp models/fraud-xgb/model.tar.gz "$seeds/unpack/xgb.tar.gz"
cp models/fraud-mlp/model.tar.gz "$seeds/unpack/mlp.tar.gz" 2>/dev/null || true
head -3 models/fraud-xgb/sample.csv > "$seeds/request_codecs/rows.csv"
printf '{"instances": [[1,2,3],[4,5,6]]}' > "$seeds/request_codecs/instances.json"
printf '{"inputs": {"a": [[7, 5]], "b": [[3, 2]]}}' > "$seeds/request_codecs/named.json"
printf '[1,2,3]\n[4,5,6]\n' > "$seeds/request_codecs/lines.jsonl"
# a .npy body: f32 (1, 30)
{ printf '\x93NUMPY\x01\x00\x76\x00'; printf "%-117s\n" "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 30), }"; head -c 120 /dev/zero; } > "$seeds/request_codecs/row.npy"
printf '\0\0{"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1,2,3,4,5,6,7,8]}]}' > "$seeds/oip_request/json"
printf '\x58\0{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}0123456789abcdef' > "$seeds/oip_request/binary"
printf '%-16s %12s %10s %8s %8s\n' target executions exec/s cov crashes
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="bench/out/fuzz-$t.log"
  # archives expand, so the unpacker gets smaller inputs
  max_len=65536
  [ "$t" = unpack ] && max_len=8192
  ( cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" "../$seeds/$t" -- \
      -runs="$execs" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" -print_final_stats=1 ) > "$log" 2>&1 || true
  done_line=$(grep -E '^#[0-9]+\s+DONE' "$log" | tail -1 || true)
  n=$(echo "$done_line" | sed -E 's/^#([0-9]+).*/\1/')
  cov=$(echo "$done_line" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
  speed=$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
  printf '%-16s %12s %10s %8s %8s\n' "$t" "${n:-?}" "${speed:-?}" "${cov:-?}" "$crashes"
  [ -n "$done_line" ] || { echo "  $t did not finish: see $log" >&2; tail -20 "$log" >&2; }
done

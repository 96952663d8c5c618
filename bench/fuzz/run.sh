#!/usr/bin/env bash
# Runs neoc's fuzz targets (fuzz/, cargo-fuzz on nightly) for EXECS
# executions each (default 10^6; the hardening issue asks 10^7) and prints,
# per target, the executions, the speed, the coverage and the crashes
# (their inputs are left in fuzz/artifacts/TARGET/).
#   bash bench/fuzz/run.sh [EXECS] [TARGET …]
# JOBS=2 runs two targets at a time; FUZZ_SANITIZER=address builds with
# AddressSanitizer (default none: Rust code is memory-safe, and without it
# the targets run several times faster; panics, aborts, timeouts and
# over-large allocations are caught either way).
# Seeds: fuzz/harness/seeds/TARGET/ (the same ones CI's stable run of the
# targets uses); the corpus grows in fuzz/corpus/TARGET/.
# Needs: rustup toolchain install nightly; cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/../.."
execs="${1:-1000000}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bundle_reader unpack request_codecs oip_request xgboost lightgbm onnx_preflight nnef_round_trip)
jobs="${JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-none}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is needed: cargo install cargo-fuzz" >&2; exit 1; }
mkdir -p bench/out
( cd fuzz && cargo +nightly fuzz build -O -s "$sanitizer" ) >bench/out/fuzz-build.log 2>&1 \
  || { tail -30 bench/out/fuzz-build.log >&2; exit 1; }

one() {
  local t=$1 log="bench/out/fuzz-$1.log" max_len=65536
  # archives expand, so the unpacker gets smaller inputs
  [ "$t" = unpack ] && max_len=8192
  mkdir -p "fuzz/corpus/$t"
  ( cd fuzz && cargo +nightly fuzz run -O -s "$sanitizer" "$t" "corpus/$t" "harness/seeds/$t" -- \
      -runs="$execs" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" -print_final_stats=1 ) > "$log" 2>&1 || true
}

running=0
for t in "${targets[@]}"; do
  one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

printf '%-16s %12s %10s %8s %8s\n' target executions exec/s cov crashes
for t in "${targets[@]}"; do
  log="bench/out/fuzz-$t.log"
  done_line=$(grep -aE '^#[0-9]+\s+DONE' "$log" | tail -1 || true)
  n=$(echo "$done_line" | sed -E 's/^#([0-9]+).*/\1/')
  cov=$(echo "$done_line" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
  speed=$(grep -aE '^stat::average_exec_per_sec' "$log" | tail -1 | awk '{print $2}')
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
  printf '%-16s %12s %10s %8s %8s\n' "$t" "${n:-?}" "${speed:-?}" "${cov:-?}" "$crashes"
  [ -n "$done_line" ] || { echo "  $t did not finish: see $log" >&2; tail -20 "$log" >&2; }
done

#!/usr/bin/env bash
# Guarded rollouts under load (8 boto3 clients): requests failed during each
# kind of update, the caller's latency during it, and for rollbacks the time
# from the alarm (and from the first green failure) to every request on
# blue. Repeats each ROLLOUT_RUNS times (3); prints medians; writes
# bench/out/rollouts.json.
set -euo pipefail
source "$(dirname "$0")/../setup.sh"
"$venv/bin/python" bench/serve/rollouts.py "${ROLLOUT_RUNS:-3}" bench/out/rollouts.json

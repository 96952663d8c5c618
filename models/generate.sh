#!/usr/bin/env bash
# Regenerate the sample models (see generate.py) in the pinned venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${NEOC_VENV:-$here/../.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
exec "$venv/bin/python" "$here/generate.py"

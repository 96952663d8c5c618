# Sourced by the bench scripts: cd to the repository root, make the pinned
# venv ($venv) with the peers in it, build the release binaries, make bench/out.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${NEOC_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r models/requirements.txt -r bench/requirements.txt
cargo build --release -q
mkdir -p bench/out

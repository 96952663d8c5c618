#!/usr/bin/env bash
# The aarch64 libonnxruntime for the ARM test under qemu (tests/tests/arm.rs):
# onnxruntime's own manylinux aarch64 wheel from PyPI, the same version as
# the venv's x86-64 one, unpacked to target/onnxruntime-aarch64/.
# usage: fetch-aarch64.sh [VENV]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.venv}"
out="$root/target/onnxruntime-aarch64"
version="$("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
if ls "$out"/libonnxruntime.so."$version" >/dev/null 2>&1; then
  echo "aarch64 onnxruntime $version already in $out"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
  "onnxruntime==$version" -d "$tmp"
mkdir -p "$out"
"$venv/bin/python" - "$tmp" "$out" <<'PY'
import pathlib, sys, zipfile
tmp, out = map(pathlib.Path, sys.argv[1:])
wheel = next(tmp.glob("onnxruntime-*aarch64*.whl"))
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if pathlib.PurePath(n).name.startswith("libonnxruntime.so")]
    if not libs:
        sys.exit(f"{wheel.name} holds no libonnxruntime.so")
    for n in libs:
        (out / pathlib.PurePath(n).name).write_bytes(z.read(n))
        print("unpacked", pathlib.PurePath(n).name, "from", wheel.name)
PY

#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels that benchmarks/gpu/run.sh installs on a GPU
# machine without one: the competitors Liger-Kernel and Apple's Cut Cross-Entropy, and whatever
# they require besides torch and triton (which the GPU machine's own PyTorch install provides).
#
#   bash benchmarks/gpu/prepare.sh                     # into benchmarks/gpu/wheels/
#   PYTHON_VERSION=3.12 bash benchmarks/gpu/prepare.sh # wheels for another Python
#   PACKAGES="liger-kernel==0.8.5" bash benchmarks/gpu/prepare.sh
#
# Versions are pinned to the ones the benchmark was written against; override with PACKAGES.
# Requirements are followed transitively (extras are not), torch, triton and nvidia-* skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
wheels="$here/wheels"
packages="${PACKAGES:-liger-kernel==0.8.5 cut-cross-entropy==25.1.1}"
if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then
    python="$root/.venv/bin/python"
else
    python=python3
fi
args=(--no-deps --only-binary=:all: -d "$wheels")
if [ -n "${PYTHON_VERSION:-}" ]; then
    args+=(--python-version "$PYTHON_VERSION" --implementation cp
           --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
fi
mkdir -p "$wheels"

# shellcheck disable=SC2086  # the package list is meant to split
"$python" -m pip download -q "${args[@]}" $packages
# Follow Requires-Dist (no extras) until nothing new is needed.
while true; do
    missing="$("$python" - "$wheels" <<'PY'
import re
import sys
import zipfile
from pathlib import Path

SKIP = re.compile(r"^(torch|triton|nvidia-.*|pytorch-triton.*)$")
folder = Path(sys.argv[1])
have, need = set(), {}
for wheel in folder.glob("*.whl"):
    have.add(re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower())
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        for line in archive.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            spec, _, marker = line.split(":", 1)[1].partition(";")
            if "extra" in marker:
                continue
            name = re.match(r"\s*([A-Za-z0-9_.-]+)", spec)[1]
            key = re.sub(r"[-_.]+", "-", name).lower()
            if not SKIP.match(key):
                need[key] = spec.strip().replace(" ", "")
print(" ".join(spec for key, spec in sorted(need.items()) if key not in have))
PY
)"
    [ -z "$missing" ] && break
    echo "prepare.sh: also downloading $missing"
    # shellcheck disable=SC2086
    "$python" -m pip download -q "${args[@]}" $missing
done
echo "prepare.sh: wheels in $wheels:"
ls -l "$wheels"

#!/usr/bin/env bash
# One prepared GPU run, on a machine with one CUDA GPU and no network, in under 8 minutes:
#
#   1. installs the competitors from benchmarks/gpu/wheels/ (made beforehand by prepare.sh;
#      pip --no-index --find-links, into a private folder: nothing else is touched);
#   2. compiles the Triton kernels' representative configurations for this GPU with the local
#      Triton and checks registers, spills and shared memory (labelsmooth.kernels.gpu_check);
#   3. runs the tests that use CUDA: tests/test_triton.py (the cross-entropy kernel against the
#      reference, on the GPU) and tests/test_gpu_check.py (the linear-head kernels on the GPU
#      against the chunked path, their loaded binaries free of spills);
#   4. runs benchmarks/gpu/bench_gpu.py (N 8192 and 32768, V 128256, H 4096, bf16).
#
#   bash benchmarks/gpu/run.sh [OUTDIR]      # default OUTDIR: $OUT, else benchmarks/gpu/out
#
# Every step's output goes to OUTDIR (gpu_check.json, tests.log, bench.md, bench.json); a step
# that fails does not stop the next. Exit status: 1 if any step failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-${OUT:-$here/out}}"
python="${PYTHON:-python3}"
mkdir -p "$out"
cd "$root" || exit 1
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
status=0
started=$SECONDS

site="$(mktemp -d /tmp/labelsmooth-gpu-site.XXXXXX)"
if compgen -G "$here/wheels/*.whl" >/dev/null; then
    # shellcheck disable=SC2046  # one requirement per wheel in the folder
    "$python" -m pip install -q --no-index --no-deps --no-compile --find-links "$here/wheels" \
        --target "$site" $(ls "$here"/wheels/*.whl) || echo "run.sh: installing the wheels failed"
else
    echo "run.sh: no wheels in $here/wheels (run prepare.sh where there is network);" \
         "Liger-Kernel and Cut Cross-Entropy will be skipped"
fi
export PYTHONPATH="$root/src:$site${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
    "cuda", torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'

echo "== gpu_check (representative configurations, this GPU's arch, local Triton)"
arch="$("$python" -c 'import torch; a, b = torch.cuda.get_device_capability(); print(f"sm_{a}{b}")')"
case "$arch" in sm_80|sm_86|sm_89|sm_90) ;; *) arch=sm_90 ;; esac
timeout 120 "$python" -m labelsmooth.kernels.gpu_check --arch "$arch" --subset representative \
    --specializations aligned,unaligned --jobs "$(nproc)" --json \
    >"$out/gpu_check.json" 2>"$out/gpu_check.log"
code=$?
"$python" - "$out/gpu_check.json" <<'PY' || true
import json, sys
reports = json.load(open(sys.argv[1]))
bad = [r for r in reports if not r["ok"]]
print(f"{len(reports)} configurations, {len(bad)} not ok;",
      f"max registers {max(r['registers'] for r in reports)},",
      f"max stack {max(r['stack_bytes'] for r in reports)} B")
for r in bad[:20]:
    print("  NOT OK", r["kernel"], r["dtype"], r["specialization"], r["constexprs"], r["problems"])
PY
[ $code -ne 0 ] && { echo "gpu_check: exit $code (see $out/gpu_check.log)"; status=1; }

echo "== tests on CUDA ($(( SECONDS - started )) s so far)"
timeout 150 "$python" -m pytest -q -p no:cacheprovider tests/test_triton.py \
    tests/test_gpu_check.py 2>&1 | tee "$out/tests.log" | tail -25
[ "${PIPESTATUS[0]}" -ne 0 ] && { echo "tests failed (see $out/tests.log)"; status=1; }

echo "== benchmarks ($(( SECONDS - started )) s so far)"
budget=$(( 440 - (SECONDS - started) - 60 ))  # leave a minute for the last case and the table
[ $budget -lt 60 ] && budget=60
timeout $(( budget + 90 )) "$python" benchmarks/gpu/bench_gpu.py --budget "$budget" \
    --json "$out/bench.json" 2>&1 | tee "$out/bench.md"
[ "${PIPESTATUS[0]}" -ne 0 ] && { echo "bench_gpu.py failed"; status=1; }

echo "== done in $(( SECONDS - started )) s, status $status"
rm -rf "$site"
exit $status

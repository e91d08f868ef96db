"""The Triton kernels compile for A100 (sm_80) and H100/H200 (sm_90) without spilling.

:mod:`labelsmooth.kernels.gpu_check` compiles ahead of time, with no GPU, the configurations the
launchers can choose (their own ``launch_config`` functions enumerate them) and reads registers,
stack (spills) and shared memory from the cubins. The default suite compiles a small subset
(``smoke``: per kernel, dtype and warp count, the largest block with every option on; about 40 s
with a cold Triton cache on 2 cores); the slow test compiles every configuration
(``make test-slow``). On a CUDA machine the linear-head kernels also run on the GPU, against the
chunked path, and the loaded binaries report no spills. The GPU benchmark's argument handling is
checked with ``--dry-run``. Skipped without Triton.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("gpu_check compiles for GPUs, not for the interpreter", allow_module_level=True)

from labelsmooth.kernels import gpu_check, linear_triton, triton_ce

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
ARCHS = ("sm_80", "sm_90")


def _assert_all_ok(reports):
    assert reports, "nothing was compiled"
    bad = [
        f"{r.kernel} {r.dtype} {r.arch} {r.specialization} {r.constexprs} "
        f"warps={r.num_warps}: {r.problems}"
        for r in reports
        if not r.ok
    ]
    assert not bad, "\n".join(bad)
    for r in reports:  # ok means exactly this
        assert r.registers > 0 and r.stack_bytes == 0 and 0 <= r.shared_bytes <= r.shared_limit


def test_launch_configs_are_pure_functions_of_the_shape():
    assert triton_ce.launch_config(10) == {"BLOCK": 16, "num_warps": 4}
    assert triton_ce.launch_config(1000) == {"BLOCK": 1024, "num_warps": 4}
    assert triton_ce.launch_config(128256) == {"BLOCK": 2048, "num_warps": 8}
    flags = triton_ce.kernel_flags(
        grad=True,
        w_rows=False,
        z_rows=False,
        kl=False,
        class_mass=True,
        uniform_mass=True,
        softcap=False,
        z_loss=True,
    )
    assert flags["HAS_WB"] and not flags["HAS_B"]  # a per-class mass replaces the uniform one
    space = list(triton_ce.launch_space())
    blocks = {triton_ce.launch_config(n)["BLOCK"] for n, _ in space}
    assert blocks == {16 << i for i in range(8)}  # 16 .. 2048
    # blocks x (grad states x mass states, plus per-element rates: without a gradient or with
    # the W/Z rows, times a per-class or uniform mass) x kl/cap/zloss
    assert len(space) == 8 * (3 * 3 + 2 * 2) * 8
    with_rates = [flags for _, flags in space if flags["HAS_RATES"]]
    assert all(f["HAS_WB"] or f["HAS_B"] for f in with_rates)
    assert all(f["HAS_GW"] and f["HAS_GZ"] for f in with_rates if f["HAS_GRAD"])
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        for kernel in ("forward", "backward"):
            config = linear_triton.launch_config(kernel, dtype, tf32=False, interpret=False)
            assert config == linear_triton.launch_config(kernel, dtype, tf32=False, interpret=False)
            assert {"BLOCK_N", "BLOCK_V", "BLOCK_D", "num_warps", "num_stages"} <= set(config)
    tf32 = linear_triton.launch_config("forward", torch.float32, tf32=True, interpret=False)
    assert tf32["PRECISION"] == "tf32"
    interpreted = linear_triton.launch_config("backward", torch.bfloat16, tf32=True, interpret=True)
    assert interpreted["UPCAST"] and interpreted["BLOCK_N"] == 16 and "num_warps" not in interpreted
    with pytest.raises(ValueError, match="kernel"):
        linear_triton.launch_config("sideways", torch.float32, tf32=False)


def test_every_launch_is_enumerated_once():
    launches = gpu_check.launches("all")
    assert len(launches) == len(set(launches))
    assert {launch.kernel for launch in launches} == {
        "triton_ce._ce_rows_kernel",
        "triton_ce._scale_rows_kernel",
        "linear_triton.forward",
        "linear_triton.backward",
    }
    dtypes = {(launch.kernel, launch.dtype) for launch in launches}
    assert ("triton_ce._ce_rows_kernel", "fp16") in dtypes
    assert ("linear_triton.backward", "fp64") in dtypes
    smoke = gpu_check.launches("smoke")
    representative = gpu_check.launches("representative")
    assert set(smoke) <= set(representative) <= set(launches)
    with pytest.raises(ValueError, match="subset"):
        gpu_check.launches("some")
    with pytest.raises(ValueError, match="specializations"):
        gpu_check.launches("smoke", ("generic",))


def test_smoke_configurations_compile_without_spills_on_sm80_and_sm90():
    reports = gpu_check.check(ARCHS, subset="smoke", jobs=2)
    _assert_all_ok(reports)
    assert {r.arch for r in reports} == set(ARCHS)


@pytest.mark.slow
def test_every_configuration_compiles_without_spills_on_sm80_and_sm90():
    # Every launch with aligned inputs (about 4000 compiles, 20 minutes on 2 cores with a cold
    # Triton cache); unaligned ones for every linear-head launch and the large-block
    # cross-entropy ones, and a representative few of the rest.
    reports = gpu_check.check(ARCHS, subset="all", jobs=2)
    unaligned = gpu_check.check(ARCHS, subset="all", specializations=("unaligned",), jobs=2,
                                kernels="linear_triton")  # fmt: skip
    unaligned += gpu_check.check(ARCHS, subset="representative", specializations=("unaligned",),
                                 jobs=2, kernels="triton_ce")  # fmt: skip
    _assert_all_ok(reports + unaligned)


def test_the_command_line_reports_json():
    command = [sys.executable, "-m", "labelsmooth.kernels.gpu_check"]
    done = subprocess.run(
        [*command, "--arch", "sm_90", "--subset", "smoke", "--kernel", "_scale_rows", "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = json.loads(done.stdout)
    assert reports and all(r["ok"] and r["arch"] == "sm_90" for r in reports)
    assert {"registers", "stack_bytes", "shared_bytes", "constexprs", "num_warps"} <= set(
        reports[0]
    )
    bad = subprocess.run(
        [*command, "--arch", "sm_70"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert bad.returncode == 2 and "sm_70" in bad.stderr


def test_the_gpu_benchmark_lists_its_cases_without_a_gpu():
    folder = ROOT / "benchmarks" / "gpu"
    script = folder / "bench_gpu.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--rows", "64", "--classes", "1000"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "14 cases"
    for name in ("native+compile", "liger", "ours:triton", "cce", "torch:linear_cross_entropy"):
        assert any(name in line for line in lines), name
    assert all(("ready" in line) or ("skipped:" in line) for line in lines[:-1])
    bad = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--only", "attention"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "--only" in bad.stderr
    for shell in ("run.sh", "prepare.sh"):
        assert subprocess.run(["bash", "-n", str(folder / shell)], check=False).returncode == 0


# --- on a GPU: the kernels run, match the chunked path, and their binaries do not spill -------


def _loaded_kernels(*jits):
    kernels = [k for jit in jits for cache in jit.device_caches.values() for k in cache[0].values()]
    assert kernels
    for kernel in kernels:
        kernel._init_handles()
    return kernels


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("options", [{}, {"bias": True, "softcap": 20.0, "z_loss": 1e-4}])
def test_linear_triton_on_the_gpu_matches_chunked_without_spills(dtype, options):
    import labelsmooth as ls

    generator = torch.Generator(device="cuda").manual_seed(0)
    n, h, v = 300, 256, 1000  # several row, class and feature blocks, with ragged edges
    hidden = torch.randn(n, h, device="cuda", generator=generator) / h**0.5
    weight = torch.randn(v, h, device="cuda", generator=generator)
    target = torch.randint(0, v, (n,), device="cuda", generator=generator)
    target[::7] = -100
    bias = torch.randn(v, device="cuda", generator=generator) if options.get("bias") else None
    extra = {k: options[k] for k in ("softcap", "z_loss") if k in options}
    results = []
    for impl in ("triton", "chunked"):
        tensors = [t.to(dtype).requires_grad_(True) for t in (hidden, weight)]
        b = None if bias is None else bias.to(dtype).requires_grad_(True)
        loss = ls.linear_cross_entropy(*tensors, target, 0.1, bias=b, impl=impl, **extra)
        loss.backward()
        grads = [t.grad.float() for t in tensors] + ([] if b is None else [b.grad.float()])
        results.append((loss.float(), grads))
    (loss, grads), (expected, expected_grads) = results
    tolerance = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}[dtype]
    torch.testing.assert_close(loss, expected, atol=tolerance, rtol=tolerance)
    for got, want in zip(grads, expected_grads, strict=True):
        scale = want.abs().max().clamp_min(1e-6)
        assert float((got - want).abs().max() / scale) < tolerance * 3
    for kernel in _loaded_kernels(*linear_triton._kernels()):
        assert kernel.n_spills == 0, (kernel.name, kernel.n_regs, kernel.n_spills)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cross_entropy_kernel_on_the_gpu_does_not_spill():
    import labelsmooth as ls

    for k in (1000, 128256):
        x = torch.randn(64, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        y = torch.randint(0, k, (64,), device="cuda")
        ls.cross_entropy(x, y, 0.1, impl="triton", z_loss=1e-4, softcap=30.0).backward()
    for kernel in _loaded_kernels(triton_ce._ce_rows_kernel, triton_ce._scale_rows_kernel):
        assert kernel.n_spills == 0, (kernel.name, kernel.n_regs, kernel.n_spills)

"""Compiles the Triton kernels ahead of time for sm_80 and sm_90 on a machine without a GPU.

    .venv/bin/python scripts/aot_compile_triton.py

Every ``@triton.jit`` kernel of ``labelsmooth.kernels`` is compiled with ``triton.compile``
for both targets (float32 and bfloat16 inputs, the launch's constexprs and ``num_warps``), and
the ``cuobjdump`` shipped in the Triton wheel reports each cubin's registers, spills (stack)
and shared memory. Exits 1 if a kernel fails to compile or spills. This proves the kernels
compile for real GPUs; it says nothing about their speed.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from labelsmooth.kernels import linear_triton, triton_ce

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def _signature(fn, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Pointers as named, constexprs as given, ``n_*``/``stride_*``/``*_cols`` i32, else fp32."""
    signature = {}
    for name in inspect.signature(fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name.startswith(("n_", "stride_")) or name.endswith("_cols"):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    return signature


def _cases():
    for dtype, kind in TYPES.items():
        ce_pointers = {
            "x_ptr": f"*{kind}",
            "grad_ptr": f"*{kind}",
            "target_ptr": "*i64",
            **{
                name: "*fp32"
                for name in [
                    "coef_ptr",
                    "wy_ptr",
                    "klc_ptr",
                    "wb_ptr",
                    "mass_ptr",
                    "gp_ptr",
                    "gy_ptr",
                    "gw_ptr",
                    "gz_ptr",
                    "loss_ptr",
                    "nll_ptr",
                ]
            },
        }
        flags = dict.fromkeys(
            ("HAS_GRAD", "HAS_KL", "HAS_WB", "HAS_B", "HAS_GW", "HAS_GZ", "HAS_CAP", "HAS_ZLOSS"),
            True,
        )
        flags["HAS_B"] = False  # excludes HAS_WB
        yield (
            "triton_ce._ce_rows_kernel",
            kind,
            triton_ce._ce_rows_kernel,
            ce_pointers,
            {"BLOCK": 1024, **flags},
            {},
        )
        yield (
            "triton_ce._scale_rows_kernel",
            kind,
            triton_ce._scale_rows_kernel,
            {"grad_ptr": f"*{kind}", "factor_ptr": "*fp32"},
            {"BLOCK": 1024},
            {},
        )
        config = linear_triton._config(dtype)
        options = {"num_warps": 8}
        linear_pointers = {
            "H": f"*{kind}",
            "W": f"*{kind}",
            "B": f"*{kind}",
            "Y": "*i64",
            **{
                name: "*fp32"
                for name in ["BETA", "LSE", "ZY", "SMOOTH", "CP", "CY", "CB", "GH", "GW", "GB"]
            },
        }
        common = {"HAS_BIAS": True, "BETA_IS_VECTOR": True, "HAS_SOFTCAP": True, **config}
        yield (
            "linear_triton forward",
            kind,
            triton.jit(linear_triton._forward_kernel),
            linear_pointers,
            common,
            options,
        )
        yield (
            "linear_triton backward",
            kind,
            triton.jit(linear_triton._backward_kernel),
            linear_pointers,
            {**common, "NEED_GH": True, "NEED_GW": True, "NEED_GB": True},
            options,
        )


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack bytes, shared bytes) from cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run(
            [str(CUOBJDUMP), "-res-usage", handle.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def number(key: str) -> int:
        match = re.search(rf"{key}:(\d+)", text)
        return int(match[1]) if match else -1

    return number("REG"), number("STACK"), number("SHARED")


def main() -> int:
    failed = 0
    for name, kind, kernel, pointers, constexprs, options in _cases():
        signature = _signature(kernel.fn, pointers, constexprs)
        for capability in (80, 90):
            label = f"{name:30s} {kind} sm_{capability}"
            try:
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs),
                    target=GPUTarget("cuda", capability, 32),
                    options=options,
                )
                registers, stack, shared = _resources(compiled.asm["cubin"])
            except Exception as err:  # report every kernel, then fail
                failed += 1
                print(f"{label}: FAILED {type(err).__name__}: {str(err).splitlines()[0][:200]}")
                continue
            spills = "no spills" if stack == 0 else f"STACK {stack} B (spills)"
            failed += stack > 0
            print(f"{label}: {registers} registers, {spills}, shared {shared} B")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

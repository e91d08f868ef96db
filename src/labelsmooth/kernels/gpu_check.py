"""Compile every Triton kernel ahead of time for real GPUs, without one, and check the cubins.

::

    python -m labelsmooth.kernels.gpu_check                      # sm_80 and sm_90, a table
    python -m labelsmooth.kernels.gpu_check --arch sm_80,sm_90 --json
    python -m labelsmooth.kernels.gpu_check --subset representative --jobs 2

For every launch configuration the dispatchers can choose — each dtype the kernel accepts, each
combination of boolean constexprs the launchers can pass, each block size, ``num_warps`` and
``num_stages`` that :func:`labelsmooth.kernels.triton_ce.launch_config` and
:func:`labelsmooth.kernels.linear_triton.launch_config` can return (the same functions the
launchers call) — and for each target architecture, :func:`triton.compile` builds the cubin and the
``cuobjdump`` shipped in the Triton wheel reports its registers, its stack (local memory: spills)
and its static shared memory; Triton's metadata gives the dynamic shared memory it launches with.
A configuration is ``ok`` when it compiles, uses no stack, and its shared memory and registers fit
the architecture (shared memory per block, opt-in maximum: 163 KiB on sm_80, 227 KiB on sm_90).

Arguments are specialised as Triton specialises a launch: unit feature strides folded into
constants (the linear head's launcher makes them 1), and either pointers 16-byte aligned and
sizes and row strides multiples of 16 (``aligned``: the usual case, e.g. V = 128256, H = 4096)
or, with ``--specializations aligned,unaligned``, no such hint (``unaligned``: V = 50257, a
hidden size that is not a multiple of 16, a view starting at an odd offset). Integers equal to 1
(a single row) are folded by Triton too: a special case not compiled here.

This proves the kernels compile for and fit real GPUs; it says nothing about their speed.
Needs Triton (CUDA backend), not a GPU; refuses to run under ``TRITON_INTERPRET=1``.
Exit status 1 when a configuration is not ``ok``, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ARCHS",
    "SUBSETS",
    "KernelReport",
    "Launch",
    "check",
    "compile_launch",
    "launches",
    "main",
    "summary",
]

# Shared memory per block (the opt-in maximum of cudaFuncSetAttribute), bytes; registers per
# thread (255) and per block (65536) are the same on all of them.
ARCHS: dict[str, int] = {
    "sm_80": 163 * 1024,  # A100
    "sm_86": 99 * 1024,  # RTX 30xx, A10, A40
    "sm_89": 99 * 1024,  # RTX 40xx, L4, L40
    "sm_90": 227 * 1024,  # H100, H200
}
MAX_REGISTERS = 255
REGISTERS_PER_BLOCK = 65536
DEFAULT_ARCHS = ("sm_80", "sm_90")
SUBSETS = ("all", "representative", "smoke")

_NAMES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
}


@dataclass(frozen=True)
class Launch:
    """One configuration a launcher can choose: what ``triton.compile`` needs besides the arch.

    ``kernel`` names the module and function; ``dtype`` is the input's (``fp32``, ``bf16``,
    ``fp16``, ``fp64``); ``constexprs`` the compile-time arguments (Triton dtypes by name, e.g.
    ``"fp32"``); ``pointers`` the element type of the pointer arguments that are not in the
    compute dtype; ``num_stages`` is ``None`` where the launcher leaves Triton's default.
    """

    kernel: str
    dtype: str
    constexprs: tuple[tuple[str, Any], ...]
    pointers: tuple[tuple[str, str], ...]
    num_warps: int
    num_stages: int | None = None
    specialization: str = "aligned"

    def label(self) -> str:
        flags = [k for k, v in self.constexprs if v is True]
        sizes = [f"{k}={v}" for k, v in self.constexprs if type(v) is int]
        others = [f"{k}={v}" for k, v in self.constexprs if isinstance(v, str)]
        return " ".join([*sizes, *others, *flags])


@dataclass
class KernelReport:
    """What the compile of one :class:`Launch` for one architecture found."""

    kernel: str
    arch: str
    dtype: str
    specialization: str
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    registers: int = -1
    stack_bytes: int = -1
    shared_bytes: int = -1
    shared_limit: int = 0
    compile_seconds: float = 0.0
    ok: bool = False
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# The configurations: from the launchers' own pure functions.


def _tl_name(value: Any) -> Any:
    """Triton dtypes (``tl.float32``) by name, so that launches hash, print and pickle."""
    name = getattr(value, "name", None)
    return str(name) if name is not None and type(value).__module__.startswith("triton") else value


def _split_options(config: dict[str, Any]) -> tuple[dict[str, Any], int, int | None]:
    config = dict(config)
    return config, config.pop("num_warps"), config.pop("num_stages", None)


def _ce_launches(dtypes: Iterable[torch.dtype]) -> Iterator[Launch]:
    from . import triton_ce

    for dtype in dtypes:
        kind = _NAMES[dtype]
        blocks_seen: set[int] = set()
        for n_cols, flags in triton_ce.launch_space():
            config, warps, stages = _split_options(triton_ce.launch_config(n_cols))
            pointers = {
                "x_ptr": kind,
                # without a gradient the launcher passes the float32 loss buffer in its place
                "grad_ptr": kind if flags["HAS_GRAD"] else "fp32",
                "target_ptr": "i64",
            }
            yield Launch(
                "triton_ce._ce_rows_kernel",
                kind,
                tuple({**config, **flags}.items()),
                tuple(pointers.items()),
                warps,
                stages,
            )
            if config["BLOCK"] not in blocks_seen:
                blocks_seen.add(config["BLOCK"])
                yield Launch(
                    "triton_ce._scale_rows_kernel",
                    kind,
                    tuple(config.items()),
                    (("grad_ptr", kind),),
                    warps,
                    stages,
                )


def _linear_launches(dtypes: Iterable[torch.dtype]) -> Iterator[Launch]:
    from . import linear_triton

    for dtype in dtypes:
        kind = _NAMES[dtype]
        compute = "fp64" if dtype == torch.float64 else "fp32"
        for kernel, tf32, flags in linear_triton.launch_space(dtype):
            config, warps, stages = _split_options(
                linear_triton.launch_config(kernel, dtype, tf32=tf32, interpret=False)
            )
            constexprs = {k: _tl_name(v) for k, v in {**config, **flags}.items()}
            pointers = {
                "H": kind,
                "W": kind,
                "B": kind,  # the bias, or the weight standing in for an absent one
                "Y": "i64",
                # a vector beta is the per-class offset in the compute dtype; a scalar one is
                # passed as the weight (never read)
                "BETA": compute if flags["BETA_IS_VECTOR"] else kind,
            }
            yield Launch(
                f"linear_triton.{kernel}",
                kind,
                tuple(constexprs.items()),
                tuple(pointers.items()),
                warps,
                stages,
            )


def _kernel_dtypes() -> tuple[tuple[torch.dtype, ...], tuple[torch.dtype, ...]]:
    from . import _TRITON_DTYPES  # the dtypes impl="triton" sends to the cross-entropy kernel

    # the linear head takes any floating dtype (float64 computes in float64)
    return tuple(_TRITON_DTYPES), (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def launches(subset: str = "all", specializations: Sequence[str] = ("aligned",)) -> list[Launch]:
    """Every configuration the launchers can choose (``subset="all"``), or fewer of them.

    The boolean constexprs of a kernel only add code, so the register and shared-memory
    extremes are the launches whose set of options is maximal (no reachable launch has more)
    or minimal. ``"representative"``: per kernel, dtype, block sizes and warps, those maximal
    and minimal option sets. ``"smoke"``: per kernel, dtype and warp count, the largest blocks
    with maximal option sets (a few dozen compiles: the default test suite's).
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    for spec in specializations:
        if spec not in ("aligned", "unaligned"):
            raise ValueError(f"specializations must be 'aligned' or 'unaligned', got {spec!r}")
    ce_dtypes, linear_dtypes = _kernel_dtypes()
    found = [*_ce_launches(ce_dtypes), *_linear_launches(linear_dtypes)]
    if subset != "all":
        found = _extremes(found, minimal=subset == "representative")
    if subset == "smoke":
        largest: dict[tuple, int] = {}
        for launch in found:
            key = _group(launch, sizes=False)
            largest[key] = max(largest.get(key, 0), _size(launch))
        found = [launch for launch in found if _size(launch) == largest[_group(launch, False)]]
    out = []
    for spec in specializations:
        out += [Launch(**{**launch.__dict__, "specialization": spec}) for launch in found]
    return out


def _flags(launch: Launch) -> frozenset[str]:
    return frozenset(k for k, v in launch.constexprs if v is True and k != "UPCAST")


def _size(launch: Launch) -> int:
    size = 1
    for _, value in launch.constexprs:
        if type(value) is int:
            size *= value
    return size


def _group(launch: Launch, sizes: bool = True) -> tuple:
    """Kernel, dtype, warps, and the non-boolean constexprs (all, or without the sizes)."""
    rest = tuple(
        (k, v)
        for k, v in launch.constexprs
        if not isinstance(v, bool) and (sizes or type(v) is not int)
    )
    return (launch.kernel, launch.dtype, launch.num_warps, launch.num_stages, rest)


def _extremes(found: list[Launch], minimal: bool) -> list[Launch]:
    groups: dict[tuple, list[frozenset[str]]] = {}
    for launch in found:
        groups.setdefault(_group(launch), []).append(_flags(launch))
    chosen = []
    for launch in found:
        mine, others = _flags(launch), groups[_group(launch)]
        if not any(mine < other for other in others) or (
            minimal and not any(other < mine for other in others)
        ):
            chosen.append(launch)
    return chosen


# ---------------------------------------------------------------------------------------------
# Compiling one configuration.


@cache
def _cuobjdump() -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found in the Triton wheel at {path}")
    return path


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """(registers, stack bytes, static shared bytes) of the kernel from ``cuobjdump -res-usage``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run(
            [str(_cuobjdump()), "-res-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def number(key: str) -> int:
        match = re.search(rf"\b{key}:(\d+)", text)
        if match is None:
            raise RuntimeError(f"cuobjdump -res-usage printed no {key}: {text[:500]}")
        return int(match[1])

    return number("REG"), number("STACK"), number("SHARED")


def _kernel_fn(name: str) -> Any:
    from . import linear_triton, triton_ce

    module, function = name.split(".")
    if module == "triton_ce":
        return getattr(triton_ce, function)
    forward, backward = linear_triton._kernels()
    return {"forward": forward, "backward": backward}[function]


def _source(launch: Launch) -> Any:
    """The ``ASTSource`` of a launch: signature and constants as a real launch specialises."""
    import triton.language as tl
    from triton.compiler import ASTSource

    kernel = _kernel_fn(launch.kernel)
    constexprs: dict[str, Any] = {}
    for key, value in launch.constexprs:
        constexprs[key] = tl.dtype(value) if key == "ACC" else value
    pointers = dict(launch.pointers)
    compute = "fp64" if launch.dtype == "fp64" else "fp32"
    aligned = launch.specialization == "aligned"
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for index, name in enumerate(inspect.signature(kernel.fn).parameters):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.startswith("stride_") and name.endswith("d"):
            # linear_triton.apply makes the feature stride 1, and Triton folds ints equal to 1
            signature[name] = "constexpr"
            constexprs[name] = 1
            continue
        if name.endswith("_ptr") or name.isupper():  # pointers: x_ptr (CE), H, W (linear)
            signature[name] = "*" + pointers.get(name, compute)
        elif name.startswith(("n_", "stride_")):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"  # Python floats
            continue
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(kernel, signature, constexprs, attrs)


def compile_launch(launch: Launch, arch: str) -> KernelReport:
    """Compiles one configuration for ``arch`` (``"sm_80"``) and checks its resources."""
    import triton
    from triton.backends.compiler import GPUTarget

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    report = KernelReport(
        kernel=launch.kernel,
        arch=arch,
        dtype=launch.dtype,
        specialization=launch.specialization,
        constexprs=dict(launch.constexprs),
        num_warps=launch.num_warps,
        num_stages=-1 if launch.num_stages is None else launch.num_stages,
        shared_limit=ARCHS[arch],
    )
    options: dict[str, int] = {"num_warps": launch.num_warps}
    if launch.num_stages is not None:
        options["num_stages"] = launch.num_stages
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = triton.compile(
                _source(launch),
                target=GPUTarget("cuda", int(arch.removeprefix("sm_")), 32),
                options=options,
            )
        registers, stack, static_shared = _resources(compiled.asm["cubin"])
    except Exception as err:  # report every configuration, then fail
        lines = str(err).strip().splitlines() or [""]
        report.problems.append(f"compile failed: {type(err).__name__}: {lines[0][:300]}")
        report.compile_seconds = time.perf_counter() - start
        return report
    report.compile_seconds = time.perf_counter() - start
    report.num_stages = int(compiled.metadata.num_stages)
    report.registers, report.stack_bytes = registers, stack
    report.shared_bytes = static_shared + int(compiled.metadata.shared)
    if stack > 0:
        report.problems.append(f"spills: {stack} B of stack per thread")
    if report.shared_bytes > report.shared_limit:
        report.problems.append(
            f"shared memory {report.shared_bytes} B > {report.shared_limit} B per block on {arch}"
        )
    if registers > MAX_REGISTERS or registers * 32 * launch.num_warps > REGISTERS_PER_BLOCK:
        report.problems.append(f"{registers} registers x {32 * launch.num_warps} threads")
    report.ok = not report.problems
    return report


def _compile_task(task: tuple[Launch, str]) -> KernelReport:
    return compile_launch(*task)


def check(
    archs: Sequence[str] = DEFAULT_ARCHS,
    *,
    subset: str = "all",
    specializations: Sequence[str] = ("aligned",),
    jobs: int = 1,
    kernels: str | None = None,
) -> list[KernelReport]:
    """Compiles the configurations of :func:`launches` for every arch; one report each.

    ``kernels``: only those whose name contains this text. ``jobs``: worker processes.
    """
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("gpu_check compiles for GPUs: unset TRITON_INTERPRET")
    for arch in archs:
        if arch not in ARCHS:
            raise ValueError(f"arch must be among {sorted(ARCHS)}, got {arch!r}")
    tasks = [
        (launch, arch)
        for launch in launches(subset, specializations)
        if kernels is None or kernels in launch.kernel
        for arch in archs
    ]
    if jobs <= 1 or len(tasks) < 2:
        return [compile_launch(launch, arch) for launch, arch in tasks]
    # Worker processes are spawned, not forked: no Triton or CUDA state is shared.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_compile_task, tasks, chunksize=4))


# ---------------------------------------------------------------------------------------------
# Command line.


def _table(reports: list[KernelReport]) -> str:
    rows = [
        f"{'kernel':28s} {'arch':5s} {'dtype':4s} {'spec':9s} {'warps':>5s} {'stages':>6s} "
        f"{'regs':>4s} {'stack':>5s} {'shared':>7s}  config"
    ]
    for r in reports:
        constexprs = Launch("", "", tuple(r.constexprs.items()), (), 0).label()
        status = "" if r.ok else "  <-- " + "; ".join(r.problems)
        rows.append(
            f"{r.kernel:28s} {r.arch:5s} {r.dtype:4s} {r.specialization:9s} {r.num_warps:5d} "
            f"{r.num_stages:6d} {r.registers:4d} {r.stack_bytes:5d} {r.shared_bytes:7d}  "
            f"{constexprs}{status}"
        )
    return "\n".join(rows)


def summary(reports: list[KernelReport]) -> str:
    """Per kernel, dtype, arch and specialisation: configurations and the largest resources."""
    groups: dict[tuple[str, str, str, str], list[KernelReport]] = {}
    for r in reports:
        precision = r.constexprs.get("PRECISION")
        dtype = r.dtype + ("/tf32" if precision == "tf32" else "")
        groups.setdefault((r.kernel, dtype, r.arch, r.specialization), []).append(r)
    lines = [
        f"{'kernel':28s} {'dtype':9s} {'arch':5s} {'spec':9s} {'configs':>7s} {'regs':>7s} "
        f"{'max stack':>9s} {'max shared':>10s} {'not ok':>6s}"
    ]
    for (kernel, dtype, arch, spec), group in sorted(groups.items()):
        regs = [r.registers for r in group]
        lines.append(
            f"{kernel:28s} {dtype:9s} {arch:5s} {spec:9s} {len(group):7d} "
            f"{min(regs):3d}-{max(regs):3d} {max(r.stack_bytes for r in group):9d} "
            f"{max(r.shared_bytes for r in group):10d} {sum(not r.ok for r in group):6d}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labelsmooth.kernels.gpu_check",
        description="Compile every Triton kernel configuration for GPUs (no GPU needed) and "
        "check registers, spills and shared memory.",
    )
    parser.add_argument(
        "--arch",
        default=",".join(DEFAULT_ARCHS),
        help=f"comma-separated targets among {', '.join(ARCHS)} (default: %(default)s)",
    )
    parser.add_argument("--subset", choices=SUBSETS, default="all")
    parser.add_argument(
        "--specializations",
        default="aligned",
        help="comma-separated among aligned, unaligned (default: %(default)s)",
    )
    parser.add_argument("--kernel", default=None, help="only kernels whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="one JSON list of reports")
    parser.add_argument("--summary", action="store_true", help="one line per kernel/dtype/arch")
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"unknown --arch {', '.join(unknown)}; choose among {', '.join(ARCHS)}")
    specs = [s.strip() for s in args.specializations.split(",") if s.strip()]
    try:
        reports = check(
            archs,
            subset=args.subset,
            specializations=specs,
            jobs=args.jobs,
            kernels=args.kernel,
        )
    except (RuntimeError, ValueError) as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=1))
    else:
        print(summary(reports) if args.summary else _table(reports))
    bad = sum(not r.ok for r in reports)
    print(f"{len(reports)} configurations, {bad} not ok", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

r"""``impl="compiled"``: the fused rows as a small C++ library, built on first use.

Why not ``torch.utils.cpp_extension.load_inline``: that needs ninja and compiles the torch
headers (tens of seconds on a 2-core machine, every cold CI run). The kernel needs none of
torch: it reads raw row-major buffers. So it is plain C++17, compiled by the system compiler
(``$CXX``, else ``c++``) in about a second into a shared library that is loaded with
:mod:`ctypes` (which releases the GIL during the call). No extra Python package is needed.

* Source: ``cpu_ce.cpp``, shipped next to this module as package data.
* Cache: ``$LABELSMOOTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/labelsmooth``, else
  ``~/.cache/labelsmooth``, else a per-user ``labelsmooth-<uid>`` directory under the system
  temporary directory. A directory is used only if it is owned by the current user and not
  writable by anyone else; a cached library is loaded only if it is a regular file owned by the
  user, not writable by anyone else, whose SHA-256 matches the digest recorded at build time;
  anything else is rebuilt (never loaded: a truncated library would kill the process). The
  file name hashes the source, the compiler's version, the flags and the CPU's feature flags,
  so a shared home directory never hands a library built with ``-march=native`` to a
  different CPU. Installation is atomic and durable (temporary file, fsync, rename), so
  concurrent first uses (pytest-xdist, several ranks) are safe; a full or read-only cache
  directory moves on to the next one. The rules are in :mod:`labelsmooth.kernels._build`.
* Flags: ``-O3 -march=native -fopenmp-simd`` (``omp simd`` pragmas vectorise the reductions
  without ``-ffast-math``, which would break the -inf handling); retried without
  ``-march=native`` where the compiler rejects it.
* Threads: rows are split into ``torch.get_num_threads()`` contiguous ranges, one
  ``std::thread`` each (no second OpenMP runtime next to the one torch ships).
* Numerics: float32 accumulation for float32/bfloat16/float16 logits (float64 for float64);
  ``exp`` is a vectorisable Cephes polynomial (about 1 ulp; arguments are always ``<= 0``,
  below -87.3 it returns 0), ``tanh`` (soft-cap) an odd polynomial near 0 and
  ``(1 - e^{-2|u|}) / (1 + e^{-2|u|})`` elsewhere; row sums are blocked (float within blocks
  of 2048, double across). bf16/fp16 gradients are rounded to nearest even.
* Memory: per thread two scratch rows of K accumulators; the gradient row is finished in
  scratch and then stored, with streaming stores when the destination pages are already
  resident (see :func:`_resident`).

:func:`available` compiles (once per process; the library is cached on disk) and says whether
it worked; ``impl="auto"`` uses it for large CPU problems and otherwise falls back to the
chunked path, with one ``RuntimeWarning`` that says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import _build
from .fused import CHUNKED, RowPlan, fused_rows, grad_rows

if TYPE_CHECKING:
    from .._problem import CrossEntropyProblem

__all__ = ["available", "build_error", "compiled", "library_path"]

_SOURCE_FILE = "cpu_ce.cpp"  # package data next to this module
_ABI_VERSION = 2  # ls_abi_version() of cpu_ce.cpp
_FORMATS = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp-simd", "-pthread"]


class _Args(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        ("grad", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("target", ctypes.c_void_p),
        ("coef", ctypes.c_void_p),
        ("wy", ctypes.c_void_p),
        ("klc", ctypes.c_void_p),
        ("wb", ctypes.c_void_p),
        ("mass", ctypes.c_void_p),
        ("b", ctypes.c_double),
        ("z_loss", ctypes.c_double),
        ("softcap", ctypes.c_double),
        ("gp", ctypes.c_void_p),
        ("gy", ctypes.c_void_p),
        ("gw", ctypes.c_void_p),
        ("gz", ctypes.c_void_p),
        ("loss", ctypes.c_void_p),
        ("nll", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("rates", ctypes.c_void_p),
        ("format", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("stream", ctypes.c_int32),
        ("pad", ctypes.c_int32),
    ]


_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _configure(lib: ctypes.CDLL) -> None:
    """Declares the C signatures; AttributeError if the library lacks one of the symbols."""
    if lib.ls_abi_version() != _ABI_VERSION:
        raise AttributeError(f"ls_abi_version() is not {_ABI_VERSION}")
    lib.ls_ce_rows.argtypes = [ctypes.POINTER(_Args)]
    lib.ls_ce_rows.restype = ctypes.c_int
    lib.ls_scale_rows.argtypes = [
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int32,
    ]
    lib.ls_scale_rows.restype = ctypes.c_int


def _variants(compiler: str, text: str) -> list[tuple[str, list[str]]]:
    """(file name, flags) to try in order: with ``-march=native``, then without. The name
    hashes everything the binary depends on, so a shared cache never mixes them up."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False, timeout=60
    ).stdout
    variants = []
    for arch in (["-march=native"], []):
        flags = _BASE_FLAGS + arch
        key = "\n".join([text, compiler, version, " ".join(flags), _cpu_flags()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        variants.append((f"labelsmooth_ce_{digest}.so", flags))
    return variants


def _library() -> ctypes.CDLL:
    """The loaded library; compiles it on first use. Raises RuntimeError if that fails."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        if "error" in _state:
            raise RuntimeError(str(_state["error"]))
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
            text = _build.source(_SOURCE_FILE)
            lib, path = _build.load(_variants(compiler, text), compiler, text, _configure)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _state["error"] = err
            raise RuntimeError(str(err)) from err
        _state["lib"], _state["path"] = lib, path
        return lib


def available() -> bool:
    """True when the kernel compiles and loads here (compiles at the first call, then cached)."""
    try:
        _library()
    except RuntimeError as err:
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(
                f"labelsmooth: impl='compiled' is unavailable, falling back ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
        return False
    return True


def build_error() -> str | None:
    """Why the kernel is unavailable, or None (after :func:`available` was called)."""
    error = _state.get("error")
    return None if error is None else str(error)


def library_path() -> Path | None:
    """Where the compiled library lives (None before the first successful build)."""
    path = _state.get("path")
    return path if isinstance(path, Path) else None


def _resident(tensor: Tensor) -> bool:
    """Whether the page in the middle of ``tensor`` is already in memory (Linux ``mincore``).

    Decides how the kernel writes the gradient: fresh pages (a new ``mmap``, the usual case
    for a large buffer with glibc) are best written with ordinary stores, which land in the
    cache lines the kernel has just zeroed; pages a caching allocator hands back are best
    written with streaming stores, which skip reading the old contents. Either is correct.
    """
    libc = _state.get("libc")
    if libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
            libc.mincore.restype = ctypes.c_int
        except (OSError, AttributeError):
            libc = False
        _state["libc"] = libc
    if not libc or tensor.numel() == 0:
        return False
    page = mmap.PAGESIZE
    middle = tensor.data_ptr() + tensor.numel() * tensor.element_size() // 2
    status = ctypes.create_string_buffer(1)
    if libc.mincore(middle - middle % page, page, status) != 0:  # type: ignore[union-attr]
        return False
    return bool(status.raw[0] & 1)


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class CompiledBackend:
    """The C++ rows on CPU tensors of dtype float32, float64, bfloat16 or float16."""

    name = "compiled"

    def run(
        self, x: Tensor, plan: RowPlan, grad: Tensor | None, g: Tensor | None, h: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        lib = _library()
        assert plan.target is not None and plan.coef is not None and plan.wy is not None
        m, k = x.shape
        loss = torch.empty(m, dtype=plan.dtype)
        nll = torch.empty_like(loss)
        gp, gy, gw, gz = grad_rows(plan, g, h)
        args = _Args(
            x=x.data_ptr(),
            grad=_pointer(grad),
            rows=m,
            cols=k,
            target=plan.target.data_ptr(),
            coef=plan.coef.data_ptr(),
            wy=plan.wy.data_ptr(),
            klc=_pointer(plan.klc),
            wb=_pointer(plan.wb),
            mass=plan.mass.data_ptr(),
            b=plan.b,
            z_loss=plan.z_loss,
            softcap=plan.softcap or 0.0,
            gp=gp.data_ptr(),
            gy=gy.data_ptr(),
            gw=_pointer(gw),
            gz=_pointer(gz),
            loss=loss.data_ptr(),
            nll=nll.data_ptr(),
            lse=None,
            rates=_pointer(plan.rates),
            format=_FORMATS[x.dtype],
            threads=torch.get_num_threads(),
            stream=int(grad is not None and grad.data_ptr() != x.data_ptr() and _resident(grad)),
        )
        status = lib.ls_ce_rows(ctypes.byref(args))
        if status == 3:
            raise ValueError(
                f"target contains a class index >= num_classes={k} or a negative one other "
                f"than ignore_index (validate=False skipped the check); class indices must be "
                f"in [0, {k - 1}] or equal ignore_index"
            )
        if status != 0:
            raise RuntimeError(f"labelsmooth compiled kernel failed (status {status})")
        return loss, nll

    def scale_(self, grad: Tensor, factor: Tensor) -> None:
        lib = _library()
        m, k = grad.shape
        factor = factor.to(dtype=torch.float64 if grad.dtype == torch.float64 else torch.float32)
        factor = factor.contiguous()
        status = lib.ls_scale_rows(
            _FORMATS[grad.dtype], grad.data_ptr(), factor.data_ptr(), m, k, torch.get_num_threads()
        )
        if status != 0:
            raise RuntimeError(f"labelsmooth compiled kernel failed (status {status})")


COMPILED = CompiledBackend()


def compiled(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    """``impl="compiled"``: the fused C++ kernel for CPU tensors (index targets).

    Probability targets take the chunked path (the same fused autograd function in eager
    torch). Raises ``ValueError`` for tensors that are not on the CPU and ``RuntimeError``
    when the kernel cannot be compiled here (``impl="auto"`` falls back instead).
    """
    device = problem.logits.device
    if device.type != "cpu":
        raise ValueError(
            f"impl='compiled' is the CPU kernel, but input is on {device}; use impl='triton' "
            f"or impl='chunked' (or impl='auto')"
        )
    if problem.soft or problem.logits.dtype not in _FORMATS:
        return fused_rows(problem, need_nll, CHUNKED)
    _library()
    return fused_rows(problem, need_nll, COMPILED)

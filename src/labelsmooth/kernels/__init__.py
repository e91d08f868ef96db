"""Fused label-smoothed cross-entropy kernels behind ``impl=`` of :func:`labelsmooth.cross_entropy`.

Every kernel computes, per row of the (M, K) logits, the loss *and* its gradient in one forward
pass (online log-sum-exp; the smoothing term in closed form from
:func:`labelsmooth.smoothing_coefficients`) and keeps only the gradient, in the logits' dtype,
for backward (see :mod:`labelsmooth.kernels.fused` for the math and the memory contract):

* ``"chunked"`` (:func:`chunked`): eager torch, a chunk of rows at a time; any device.
* ``"compiled"`` (:func:`compiled`): a C++ library built with the system compiler at first
  use (:mod:`labelsmooth.kernels.cpu_ce`); CPU.
* ``"triton"`` (:func:`triton`): a Triton kernel (:mod:`labelsmooth.kernels.triton_ce`);
  CUDA, or CPU tensors under ``TRITON_INTERPRET=1``. Triton is imported only when used.

Each is an ``Implementation`` of :mod:`labelsmooth._problem`: ``(problem, need_nll) ->
(loss_rows, nll_rows | None)``.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import cpu_ce
from .cpu_ce import compiled
from .fused import CHUNKED, chunked, fused_rows

if TYPE_CHECKING:
    from .._problem import CrossEntropyProblem

__all__ = [
    "AUTO_MIN_CLASSES",
    "AUTO_MIN_CLASSES_HALF",
    "AUTO_MIN_ELEMENTS",
    "AUTO_MIN_ELEMENTS_HALF",
    "chunked",
    "compiled",
    "compiled_available",
    "triton",
    "triton_available",
]

# impl="auto" uses a kernel only from this many logits on, only with at least this many
# classes, and only with the class dimension last: elsewhere F.cross_entropy (or the closed
# form) was measured to be faster (the crossover is in labelsmooth.functional.auto_impl).
AUTO_MIN_ELEMENTS = 1 << 19
AUTO_MIN_CLASSES = 256
# bf16/fp16 logits: F.cross_entropy runs on a float32 copy there (float32 accumulation), whose
# memory traffic makes the kernel win with fewer classes once the input is this large.
AUTO_MIN_ELEMENTS_HALF = 1 << 20
AUTO_MIN_CLASSES_HALF = 32

_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_triton_state: dict[str, object] = {}


def compiled_available() -> bool:
    """Whether the C++ kernel builds and loads on this machine (builds it on first call)."""
    return cpu_ce.available()


def _triton_module() -> ModuleType:
    """labelsmooth.kernels.triton_ce, imported on first use; RuntimeError without Triton."""
    if "module" in _triton_state:
        return _triton_state["module"]  # type: ignore[return-value]
    if "error" in _triton_state:
        raise RuntimeError(str(_triton_state["error"]))
    try:
        if importlib.util.find_spec("triton") is None:
            raise ImportError("the triton package is not installed")
        from . import triton_ce
    except Exception as err:  # a broken Triton install can raise anything at import
        _triton_state["error"] = f"impl='triton' needs a working Triton install: {err}"
        raise RuntimeError(str(_triton_state["error"])) from err
    _triton_state["module"] = triton_ce
    return triton_ce


def triton_available() -> bool:
    """Whether Triton imports here (imports it on first call)."""
    try:
        _triton_module()
    except RuntimeError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    """``impl="triton"``: the fused Triton kernel for index targets.

    Needs CUDA tensors, or ``TRITON_INTERPRET=1`` (then CPU tensors work, slowly). Probability
    targets and float64 logits take the chunked path (same fused autograd function).
    """
    device = problem.logits.device
    if device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1), but input is on "
            f"{device}; use impl='compiled' or impl='chunked' (or impl='auto')"
        )
    module = _triton_module()
    if problem.soft or problem.logits.dtype not in _TRITON_DTYPES:
        return fused_rows(problem, need_nll, CHUNKED)
    return fused_rows(problem, need_nll, module.TRITON)

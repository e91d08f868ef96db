r"""``impl="triton"``: the fused rows as a Triton kernel (CUDA; CPU under ``TRITON_INTERPRET=1``).

One program per row. Pass 1 streams the row in blocks of ``BLOCK`` columns and keeps, per
lane, a running maximum and the running sum of ``exp(z - max)`` rescaled when the maximum
grows (online log-sum-exp), plus the smoothing sum :math:`\sum_c w_c b_c z_c`; the lanes are
combined at the end. Pass 2 streams the row again and writes the gradient
(:mod:`labelsmooth.kernels.fused` has the formulas) in the logits' dtype, so the logits are
read twice and the gradient written once. All math is float32 whatever the input
(float32/bfloat16/float16); float64 and probability targets take the chunked path.
Per-element eps (``RowPlan.rates``) is read per row through ``rate_ptr``: only its presence is
a constexpr (``HAS_RATES``), so new rates reuse the compiled kernel.

Launch configuration (:func:`launch_config`, :func:`kernel_flags`): ``BLOCK =
min(MAX_BLOCK, next_power_of_2(K))`` with ``MAX_BLOCK = 2048``; 4 warps up to 1024 columns, 8 for
2048; not autotuned (the kernels were verified under the interpreter, against
``impl="reference"``, not timed on a GPU). :mod:`labelsmooth.kernels.gpu_check` compiles every
configuration these functions can return for sm_80 and sm_90 and checks registers, spills and
shared memory.

This module imports :mod:`triton` at import time: import it only when Triton is wanted.
``TRITON_INTERPRET=1`` must be set before this module is first imported (``triton.jit``
reads it when the kernels are defined); the interpreter then runs the kernels on CPU tensors.
"""

# ruff: noqa: N803  (Triton's convention: compile-time constants are UPPER_CASE)

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import product

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused import RowPlan, grad_rows

__all__ = [
    "MAX_BLOCK",
    "TritonBackend",
    "interpreting",
    "kernel_flags",
    "launch_config",
    "launch_space",
]

# Columns per block of a row (a power of two); tests lower it to exercise several blocks.
MAX_BLOCK = 2048


def interpreting() -> bool:
    """Whether the Triton interpreter is on (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _tanh(u):
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    u2 = u * u
    small = a * (
        1.0
        + u2
        * (-0.333333333333 + u2 * (0.133333333333 + u2 * (-0.0539682539683 + u2 * 0.0218694885362)))
    )
    t = tl.where(a < 0.125, small, big)
    return tl.where(u < 0.0, -t, t)


@triton.jit
def _load_row(x_row, offs, mask, softcap, HAS_CAP: tl.constexpr):
    x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CAP:
        x = softcap * _tanh(x / softcap)
    return tl.where(mask, x, float("-inf"))


@triton.jit
def _ce_rows_kernel(
    x_ptr,
    grad_ptr,
    target_ptr,
    coef_ptr,
    wy_ptr,
    klc_ptr,
    wb_ptr,
    mass_ptr,
    rate_ptr,
    gp_ptr,
    gy_ptr,
    gw_ptr,
    gz_ptr,
    loss_ptr,
    nll_ptr,
    n_cols,
    b,
    z_loss,
    softcap,
    BLOCK: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_KL: tl.constexpr,
    HAS_WB: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_GW: tl.constexpr,
    HAS_GZ: tl.constexpr,
    HAS_CAP: tl.constexpr,
    HAS_ZLOSS: tl.constexpr,
    HAS_RATES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    g_row = grad_ptr + row * n_cols
    y = tl.load(target_ptr + row)
    if y < 0:  # ignored element: zero loss, zero gradient
        tl.store(loss_ptr + row, 0.0)
        tl.store(nll_ptr + row, 0.0)
        if HAS_GRAD:
            for start in range(0, n_cols, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                zero = tl.zeros((BLOCK,), dtype=tl.float32)
                tl.store(g_row + offs, zero.to(grad_ptr.dtype.element_ty), mask=offs < n_cols)
        return

    # Pass 1: per-lane online max and sum of exp, and the smoothing sum.
    m_lane = tl.full((BLOCK,), float("-inf"), tl.float32)
    s_lane = tl.zeros((BLOCK,), dtype=tl.float32)
    w_lane = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_cols
        z = _load_row(x_row, offs, mask, softcap, HAS_CAP)
        m_new = tl.maximum(m_lane, z)
        finite = m_new != float("-inf")
        rescale = tl.where(finite, tl.exp(m_lane - m_new), 0.0)
        s_lane = s_lane * rescale + tl.where(finite, tl.exp(z - m_new), 0.0)
        m_lane = m_new
        z_in = tl.where(mask, z, 0.0)  # padding lanes add 0, not 0 * -inf
        if HAS_WB:
            wb = tl.load(wb_ptr + offs, mask=mask, other=0.0)
            w_lane += tl.where(wb == 0.0, 0.0, wb * z_in)
        elif HAS_B:
            w_lane += z_in
    m = tl.max(m_lane, axis=0)
    shift = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.where(m_lane == float("-inf"), 0.0, s_lane * tl.exp(m_lane - shift)), axis=0)
    # A target >= K (validate=False) is never read out of bounds: loss, nll and gradient are nan.
    in_range = y < n_cols
    total = tl.where(in_range, total, float("nan"))
    lse = shift + tl.log(total)
    weighted = tl.sum(w_lane, axis=0)
    if HAS_B:
        weighted = b * weighted

    # Loss and nll of the row.
    z_y = tl.load(x_row + y, mask=in_range, other=float("nan")).to(tl.float32)
    if HAS_CAP:
        z_y = softcap * _tanh(z_y / softcap)
    gap = lse - z_y
    coef = tl.load(coef_ptr + row)
    mass = tl.load(mass_ptr)
    value = tl.where(coef == 0.0, 0.0, coef * gap)
    if HAS_RATES:  # per-element eps: the unit-rate smoothing term times the row's rate
        rate = tl.load(rate_ptr + row)
        smooth = tl.where(mass == 0.0, 0.0, mass * lse) - weighted
        value += tl.where(rate == 0.0, 0.0, rate * smooth)
    else:
        value = value - weighted
        value += tl.where(mass == 0.0, 0.0, mass * lse)
    if HAS_KL:
        value += tl.load(klc_ptr + row)
    if HAS_ZLOSS:
        value += z_loss * lse * lse
    tl.store(loss_ptr + row, value)
    wy = tl.load(wy_ptr + row)
    tl.store(nll_ptr + row, tl.where(wy == 0.0, 0.0, wy * gap))

    # Pass 2: the gradient, d * [(P + Z lse) p - W w b - Y [c = y]].
    if HAS_GRAD:
        p_coef = tl.load(gp_ptr + row)
        if HAS_GZ:
            p_coef += tl.load(gz_ptr + row) * lse
        elif HAS_ZLOSS:
            p_coef += 2.0 * z_loss * lse
        scale = p_coef / total
        w_coef = 1.0
        if HAS_GW:
            w_coef = tl.load(gw_ptr + row)
        y_coef = tl.load(gy_ptr + row)
        for start in range(0, n_cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_cols
            z = _load_row(x_row, offs, mask, softcap, HAS_CAP)
            grad = tl.exp(z - shift) * scale
            if HAS_WB:
                grad -= w_coef * tl.load(wb_ptr + offs, mask=mask, other=0.0)
            elif HAS_B:
                grad -= w_coef * b
            grad = tl.where(offs == y, grad - y_coef, grad)
            if HAS_CAP:
                t = z / softcap
                grad = grad * (1.0 - t * t)
            tl.store(g_row + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_rows_kernel(grad_ptr, factor_ptr, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    factor = tl.load(factor_ptr + row)
    grad = tl.load(grad_ptr + row * n_cols + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        grad_ptr + row * n_cols + offs, (grad * factor).to(grad_ptr.dtype.element_ty), mask=mask
    )


def launch_config(n_cols: int) -> dict[str, int]:
    """``BLOCK`` and ``num_warps`` of both kernels for rows of ``n_cols`` classes.

    The one place the launch is chosen: the launchers below and
    :mod:`labelsmooth.kernels.gpu_check` (which compiles every configuration ahead of time)
    call it. ``BLOCK = next_power_of_2(n_cols)`` clamped to ``[16, MAX_BLOCK]``; 4 warps up to
    1024 columns, 8 for 2048 (16 above, only if ``MAX_BLOCK`` is raised): at most 8 elements per
    thread. ``MAX_BLOCK`` was 4096; there the bf16/fp16 kernel with class weights spills 8 bytes
    on sm_90, with 8 warps and aligned rows as with 16 warps and unaligned ones.
    """
    block = max(16, min(MAX_BLOCK, triton.next_power_of_2(max(1, n_cols))))
    return {"BLOCK": block, "num_warps": 4 if block <= 1024 else (8 if block <= 2048 else 16)}


def kernel_flags(
    *,
    grad: bool,
    w_rows: bool,
    z_rows: bool,
    kl: bool,
    class_mass: bool,
    uniform_mass: bool,
    softcap: bool,
    z_loss: bool,
    rates: bool = False,
) -> dict[str, bool]:
    """The boolean constexprs of :func:`_ce_rows_kernel` for one launch.

    ``grad``: a gradient buffer is written; ``w_rows``, ``z_rows``: the per-row ``W`` and ``Z``
    coefficients of :func:`~labelsmooth.kernels.fused.grad_rows` are given; ``kl``:
    ``plan.klc`` exists; ``class_mass``: a per-class smoothing mass ``plan.wb``;
    ``uniform_mass``: the same mass ``b != 0`` for every class (ignored with ``class_mass``);
    ``softcap``, ``z_loss``: those options are on; ``rates``: per-element eps, read per row
    from ``rate_ptr`` (runtime data: only its presence is a constexpr, never its values).
    """
    return {
        "HAS_GRAD": grad,
        "HAS_KL": kl,
        "HAS_WB": class_mass,
        "HAS_B": uniform_mass and not class_mass,
        "HAS_GW": w_rows,
        "HAS_GZ": z_rows,
        "HAS_CAP": softcap,
        "HAS_ZLOSS": z_loss,
        "HAS_RATES": rates,
    }


def launch_space() -> Iterator[tuple[int, dict[str, bool]]]:
    """Every ``(n_cols, flags)`` class the launcher can meet: one ``n_cols`` per power of two up
    to twice ``MAX_BLOCK`` (beyond that :func:`launch_config` no longer changes) times every
    reachable :func:`kernel_flags`, duplicates removed. What ``gpu_check`` compiles.

    Reachable: :func:`~labelsmooth.kernels.fused.grad_rows` returns ``W`` and ``Z`` together
    (backward's recomputation, or forward's prescaled gradient) and only when a gradient buffer
    is written; per-element rates (``rates``) come with a smoothing mass (the unit-rate one is
    never zero) and, with a gradient, with ``W`` and ``Z`` (the launcher passes ``Z`` with the
    rate-scaled ``W``); everything else is independent.
    """
    seen: set[tuple] = set()
    top = 2 * MAX_BLOCK
    sizes = [1 << i for i in range(top.bit_length())]
    for n_cols in sizes:
        for grad, recompute, kl, class_mass, uniform_mass, softcap, z_loss, rates in product(
            (False, True), repeat=8
        ):
            if recompute and not grad:
                continue
            if rates and (not (class_mass or uniform_mass) or (grad and not recompute)):
                continue
            flags = kernel_flags(
                grad=grad,
                w_rows=recompute,
                z_rows=recompute,
                kl=kl,
                class_mass=class_mass,
                uniform_mass=uniform_mass,
                softcap=softcap,
                z_loss=z_loss,
                rates=rates,
            )
            key = (launch_config(n_cols)["BLOCK"], tuple(flags.values()))
            if key not in seen:
                seen.add(key)
                yield n_cols, flags


class TritonBackend:
    """The Triton rows on CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``)."""

    name = "triton"

    def run(
        self, x: Tensor, plan: RowPlan, grad: Tensor | None, g: Tensor | None, h: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        assert plan.target is not None and plan.coef is not None and plan.wy is not None
        m, k = x.shape
        loss = torch.empty(m, dtype=torch.float32, device=x.device)
        nll = torch.empty_like(loss)
        if m == 0:
            return loss, nll
        gp, gy, gw, gz = grad_rows(plan, g, h)
        if gw is not None and gz is None:  # forward with rates: W = rates, Z = 2 z_loss
            gz = torch.full_like(gw, 2.0 * plan.z_loss)
        config = launch_config(k)
        dummy = loss  # stands in for absent pointers; never read (the flags say so)
        _ce_rows_kernel[(m,)](
            x,
            dummy if grad is None else grad,
            plan.target,
            plan.coef,
            plan.wy,
            dummy if plan.klc is None else plan.klc,
            dummy if plan.wb is None else plan.wb,
            plan.mass,
            dummy if plan.rates is None else plan.rates,
            gp,
            gy,
            dummy if gw is None else gw,
            dummy if gz is None else gz,
            loss,
            nll,
            k,
            float(plan.b),
            float(plan.z_loss),
            float(plan.softcap or 1.0),
            **config,
            **kernel_flags(
                grad=grad is not None,
                w_rows=gw is not None,
                z_rows=gz is not None,
                kl=plan.klc is not None,
                class_mass=plan.wb is not None,
                uniform_mass=plan.b != 0,
                softcap=plan.softcap is not None,
                z_loss=plan.z_loss != 0,
                rates=plan.rates is not None,
            ),
        )
        return loss, nll

    def scale_(self, grad: Tensor, factor: Tensor) -> None:
        m, k = grad.shape
        if m == 0:
            return
        config = launch_config(k)
        factor = factor.to(torch.float32).contiguous()
        _scale_rows_kernel[(m, triton.cdiv(k, config["BLOCK"]))](grad, factor, k, **config)


TRITON = TritonBackend()

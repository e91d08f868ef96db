# ruff: noqa: N803  (Triton convention: pointer and constexpr kernel arguments in capitals)
r"""Triton path of :func:`labelsmooth.kernels.linear.linear_cross_entropy` (``impl="triton"``).

The scheme of Apple's Cut Cross-Entropy (Wijmans et al. 2024), with label smoothing, z-loss and
softcap added:

* forward: one program per block of ``BLOCK_N`` rows walks the vocabulary in blocks of
  ``BLOCK_V`` classes; each (BLOCK_N, BLOCK_V) block of logits is built in registers/SRAM by
  ``tl.dot`` over the features and folded into an online log-sum-exp, the target logit
  :math:`z_y` and the smoothing sum :math:`\sum_c \beta_c z_c` (free here, the block is on
  chip). Only three numbers per row reach global memory.
* backward: one program per (row block, class block) recomputes its block of logits, forms the
  logits-gradient :math:`g = c_p p - c_y\,\mathrm{onehot}(y) - c_\beta \beta` (times the
  softcap derivative) and adds :math:`g W` into the hidden gradient and :math:`g^\top h` into the
  weight gradient with atomic adds in float32 (so the summation order, and the last bits, vary
  between runs on a GPU; the interpreter runs the programs one after the other, so there it is
  deterministic).

First-order only: a backward with ``create_graph=True`` raises ``RuntimeError`` (use
``impl="reference"`` for higher-order gradients).

The per-row coefficients :math:`c_p, c_y, c_\beta` carry the reduction, ``grad_output``, the
z-loss and gradients flowing into ``nll``; they are computed in torch (N values).

With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors in Triton's interpreter (how the
tests check them without a GPU). The variable must be set before triton is first imported
(Triton jits its own standard library at import), so the tests use a fresh process. The
interpreter cannot ``tl.dot`` bfloat16 (triton issue 11584): there the tiles are upcast to
float32 after ``g`` is rounded to bfloat16, as on the GPU. The float32 products follow
``torch.backends.cuda.matmul.allow_tf32``.

Launch configuration: :func:`launch_config` (tiles, warps and stages per dtype, from ``TILES``)
and :func:`forward_flags` / :func:`backward_flags`, the functions the launchers call;
:mod:`labelsmooth.kernels.gpu_check` compiles every configuration they can return for sm_80
and sm_90 ahead of time and checks that none spills registers or overflows shared memory. The
tiles are not autotuned and this path has not yet been timed on a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import product
from typing import Any

import torch
from torch import Tensor

from ._linear_common import _reduce, _row_scale

try:  # Triton is optional: the chunked torch path works everywhere.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is missing
    triton = None
    tl = None

__all__ = [
    "apply",
    "backward_flags",
    "check_usable",
    "forward_flags",
    "interpreting",
    "launch_config",
    "launch_space",
]


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_usable(device: torch.device) -> None:
    """``impl="triton"`` needs triton, and CUDA tensors unless the interpreter is on."""
    if triton is None:
        raise ImportError(
            "impl='triton' needs the triton package, which is not importable here "
            "(pip install triton; or use impl='chunked')"
        )
    if device.type != "cuda" and not interpreting():
        raise ValueError(
            f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), "
            f"got tensors on device={device}; use impl='chunked' or impl='auto'"
        )


def _forward_kernel(
    H,
    W,
    B,
    Y,
    BETA,
    LSE,
    ZY,
    SMOOTH,
    n_rows,
    n_classes,
    n_features,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    softcap,
    HAS_BIAS: tl.constexpr,
    BETA_IS_VECTOR: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Per row: lse (online over class blocks), z_y and sum_c beta_c z_c (or sum_c z_c)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    y = tl.load(Y + rows, mask=row_mask, other=0)
    m = tl.full((BLOCK_N,), float("-inf"), ACC)
    s = tl.zeros((BLOCK_N,), ACC)
    z_y = tl.zeros((BLOCK_N,), ACC)
    smooth = tl.zeros((BLOCK_N,), ACC)
    for v0 in range(0, n_classes, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < n_classes
        z = tl.zeros((BLOCK_N, BLOCK_V), ACC)
        for d0 in range(0, n_features, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_mask = ds < n_features
            h = tl.load(
                H + rows[:, None] * stride_hn + ds[None, :] * stride_hd,
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            w = tl.load(
                W + cols[:, None] * stride_wv + ds[None, :] * stride_wd,
                mask=col_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST:  # the interpreter cannot tl.dot bfloat16 (triton issue 11584)
                h, w = h.to(ACC), w.to(ACC)
            z = tl.dot(h, tl.trans(w), z, input_precision=PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            z += tl.load(B + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
        if HAS_SOFTCAP:
            # softcap * tanh(z / softcap), tanh from exp(-2|t|) (stable for any |t|)
            t = z / softcap
            e = tl.exp(-2.0 * tl.abs(t))
            th = (1.0 - e) / (1.0 + e)
            z = softcap * tl.where(t < 0, -th, th)
        z_y += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        if BETA_IS_VECTOR:
            beta = tl.load(BETA + cols, mask=col_mask, other=0.0).to(ACC)
            smooth += tl.sum(tl.where(col_mask[None, :], z * beta[None, :], 0.0), axis=1)
        else:
            smooth += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
    tl.store(LSE + rows, m + tl.log(s), mask=row_mask)
    tl.store(ZY + rows, z_y, mask=row_mask)
    tl.store(SMOOTH + rows, smooth, mask=row_mask)


def _backward_kernel(
    H,
    W,
    B,
    Y,
    BETA,
    LSE,
    CP,
    CY,
    CB,
    GH,
    GW,
    GB,
    n_rows,
    n_classes,
    n_features,
    stride_hn,
    stride_hd,
    stride_wv,
    stride_wd,
    beta_scalar,
    softcap,
    HAS_BIAS: tl.constexpr,
    BETA_IS_VECTOR: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    NEED_GH: tl.constexpr,
    NEED_GW: tl.constexpr,
    NEED_GB: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One (row block, class block): recompute logits, form g, atomically add gW, gh, gb."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < n_rows
    col_mask = cols < n_classes
    z = tl.zeros((BLOCK_N, BLOCK_V), ACC)
    for d0 in range(0, n_features, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_mask = ds < n_features
        h = tl.load(
            H + rows[:, None] * stride_hn + ds[None, :] * stride_hd,
            mask=row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        w = tl.load(
            W + cols[:, None] * stride_wv + ds[None, :] * stride_wd,
            mask=col_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        if UPCAST:
            h, w = h.to(ACC), w.to(ACC)
        z = tl.dot(h, tl.trans(w), z, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        z += tl.load(B + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
    if HAS_SOFTCAP:
        t = z / softcap
        e = tl.exp(-2.0 * tl.abs(t))
        th = tl.where(t < 0, -1.0, 1.0) * (1.0 - e) / (1.0 + e)
        z = softcap * th
        dcap = 1.0 - th * th
    y = tl.load(Y + rows, mask=row_mask, other=0)
    lse = tl.load(LSE + rows, mask=row_mask, other=0.0)
    c_p = tl.load(CP + rows, mask=row_mask, other=0.0)
    c_y = tl.load(CY + rows, mask=row_mask, other=0.0)
    c_b = tl.load(CB + rows, mask=row_mask, other=0.0)
    p = tl.exp(z - lse[:, None])
    g = c_p[:, None] * p - tl.where(cols[None, :] == y[:, None], c_y[:, None], 0.0)
    if BETA_IS_VECTOR:
        beta = tl.load(BETA + cols, mask=col_mask, other=0.0).to(ACC)
        g -= c_b[:, None] * beta[None, :]
    else:
        g -= c_b[:, None] * beta_scalar
    if HAS_SOFTCAP:
        g *= dcap
    g = tl.where(row_mask[:, None] & col_mask[None, :], g, 0.0)
    if NEED_GB:
        tl.atomic_add(GB + cols, tl.sum(g, axis=0), mask=col_mask)
    g_mm = g.to(H.dtype.element_ty)
    if UPCAST:
        g_mm = g_mm.to(ACC)
    for d0 in range(0, n_features, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_mask = ds < n_features
        if NEED_GH:
            w = tl.load(
                W + cols[:, None] * stride_wv + ds[None, :] * stride_wd,
                mask=col_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                w = w.to(ACC)
            gh = tl.dot(g_mm, w, input_precision=PRECISION, out_dtype=ACC)
            tl.atomic_add(
                GH + rows[:, None] * n_features + ds[None, :],
                gh,
                mask=row_mask[:, None] & d_mask[None, :],
            )
        if NEED_GW:
            h = tl.load(
                H + rows[:, None] * stride_hn + ds[None, :] * stride_hd,
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                h = h.to(ACC)
            gw = tl.dot(tl.trans(g_mm), h, input_precision=PRECISION, out_dtype=ACC)
            tl.atomic_add(
                GW + cols[:, None] * n_features + ds[None, :],
                gw,
                mask=col_mask[:, None] & d_mask[None, :],
            )


_built: dict[bool, tuple[Any, Any]] = {}


def _kernels() -> tuple[Any, Any]:
    """The jitted kernels; built per interpreter setting, since ``triton.jit`` reads it."""
    key = interpreting()
    if key not in _built:
        _built[key] = (triton.jit(_forward_kernel), triton.jit(_backward_kernel))
    return _built[key]


# Tiles (BLOCK_N rows x BLOCK_V classes of logits, BLOCK_D features per step of the products),
# warps and software-pipelining stages, per kernel and input dtype (float32 twice: IEEE
# products, which Triton runs on the FMA units, or TF32 on the tensor cores). Chosen so that no
# configuration the launchers can pick spills registers or exceeds shared memory on sm_80 or
# sm_90, with aligned inputs or not (``python -m labelsmooth.kernels.gpu_check
# --specializations aligned,unaligned`` compiles every one). Larger tiles spill somewhere: the
# first, untuned 64 x 128 x 64 with 8 warps in every dtype; 128 x 128 x 32 with 16 warps (512
# threads, capped at 128 registers) in the bf16 backward on sm_90; 64 x 64 x 32 in IEEE
# float32. Ptxas (run by Triton with --regAllocOptLevel=2) also spills a few bytes at 80-128
# registers in some configurations, so only a full compile says which tiles are clean. Not yet
# timed on a GPU.
def _tile(n: int, v: int, d: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, "num_warps": warps, "num_stages": stages}


TILES: dict[tuple[str, str], dict[str, int]] = {
    ("forward", "bf16"): _tile(128, 64, 32, 8, 3),
    ("backward", "bf16"): _tile(128, 64, 32, 8, 3),
    ("forward", "fp16"): _tile(128, 64, 32, 8, 3),
    ("backward", "fp16"): _tile(128, 64, 32, 8, 3),
    ("forward", "tf32"): _tile(128, 64, 16, 8, 3),
    ("backward", "tf32"): _tile(64, 64, 32, 8, 3),
    ("forward", "fp32"): _tile(64, 64, 16, 8, 3),
    ("backward", "fp32"): _tile(32, 32, 16, 4, 3),
    ("forward", "fp64"): _tile(32, 32, 16, 8, 3),
    ("backward", "fp64"): _tile(32, 32, 16, 8, 3),
}
_TILE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
_INTERPRETER_TILES = {"BLOCK_N": 16, "BLOCK_V": 16, "BLOCK_D": 16}


def launch_config(
    kernel: str, dtype: torch.dtype, *, tf32: bool, interpret: bool | None = None
) -> dict[str, Any]:
    """The constexprs, ``num_warps`` and ``num_stages`` of one launch of ``kernel``.

    ``kernel`` is ``"forward"`` or ``"backward"``, ``dtype`` the input's, ``tf32`` whether
    float32 products may use TF32 (``torch.backends.cuda.matmul.allow_tf32``), ``interpret``
    whether Triton's interpreter runs the kernels (default: ``TRITON_INTERPRET``). The one
    place the launch is chosen: the autograd function below and
    :mod:`labelsmooth.kernels.gpu_check` call it.
    """
    if kernel not in ("forward", "backward"):
        raise ValueError(f"kernel must be 'forward' or 'backward', got {kernel!r}")
    if interpret is None:
        interpret = interpreting()
    if dtype == torch.float64:
        acc, precision = tl.float64, "ieee"
    else:
        acc = tl.float32
        precision = "tf32" if dtype == torch.float32 and tf32 and not interpret else "ieee"
    # Triton's interpreter multiplies the bit patterns of bfloat16 in tl.dot (triton issue
    # 11584): there the tiles are upcast (after rounding g to bfloat16, as on the GPU).
    upcast = interpret and dtype == torch.bfloat16
    config: dict[str, Any] = {"ACC": acc, "PRECISION": precision, "UPCAST": upcast}
    if interpret:  # small blocks: the tests' tiny shapes still span several blocks
        return {**config, **_INTERPRETER_TILES}
    tile = "tf32" if precision == "tf32" else _TILE_KEYS.get(dtype, "fp32")
    return {**config, **TILES[kernel, tile]}


def forward_flags(*, bias: bool, beta_vector: bool, softcap: bool) -> dict[str, bool]:
    """The boolean constexprs of the forward kernel."""
    return {"HAS_BIAS": bias, "BETA_IS_VECTOR": beta_vector, "HAS_SOFTCAP": softcap}


def backward_flags(
    *,
    bias: bool,
    beta_vector: bool,
    softcap: bool,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> dict[str, bool]:
    """The boolean constexprs of the backward kernel (``need_bias`` only counts with a bias)."""
    return {
        **forward_flags(bias=bias, beta_vector=beta_vector, softcap=softcap),
        "NEED_GH": need_hidden,
        "NEED_GW": need_weight,
        "NEED_GB": need_bias and bias,
    }


def launch_space(dtype: torch.dtype) -> Iterator[tuple[str, bool, dict[str, bool]]]:
    """Every ``(kernel, tf32, flags)`` the launchers can pass for inputs of ``dtype`` on a GPU.

    ``tf32`` only matters for float32; backward runs only when at least one gradient is needed.
    What :mod:`labelsmooth.kernels.gpu_check` compiles (with :func:`launch_config`).
    """
    for tf32 in (False, True) if dtype == torch.float32 else (False,):
        for bias, beta_vector, softcap in product((False, True), repeat=3):
            yield (
                "forward",
                tf32,
                forward_flags(bias=bias, beta_vector=beta_vector, softcap=softcap),
            )
        seen = set()
        for bias, beta_vector, softcap, gh, gw, gb in product((False, True), repeat=6):
            flags = backward_flags(
                bias=bias,
                beta_vector=beta_vector,
                softcap=softcap,
                need_hidden=gh,
                need_weight=gw,
                need_bias=gb,
            )
            key = tuple(flags.values())
            if (gh or gw or flags["NEED_GB"]) and key not in seen:
                seen.add(key)
                yield "backward", tf32, flags


def _launch(kernel: str, dtype: torch.dtype) -> tuple[dict[str, Any], dict[str, int]]:
    """(constexprs, launch options) of :func:`launch_config` for this process's settings."""
    config = launch_config(kernel, dtype, tf32=torch.backends.cuda.matmul.allow_tf32)
    options = {k: config.pop(k) for k in ("num_warps", "num_stages") if k in config}
    return config, options


class _TritonLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        valid: Tensor,
        spec: Any,
    ) -> tuple[Tensor, Tensor]:
        forward_kernel, _ = _kernels()
        cd = spec.compute_dtype
        n, features = hidden.shape
        num_classes = weight.shape[0]
        lse = torch.empty(n, dtype=cd, device=hidden.device)
        z_y = torch.empty_like(lse)
        smooth = torch.empty_like(lse)
        config, options = _launch("forward", hidden.dtype)
        grid = (triton.cdiv(n, config["BLOCK_N"]),)
        if n > 0:
            forward_kernel[grid](
                hidden,
                weight,
                bias if bias is not None else weight,
                target,
                weight if spec.offset_is_scalar else spec.offset,  # beta, read if a vector
                lse,
                z_y,
                smooth,
                n,
                num_classes,
                features,
                hidden.stride(0),
                hidden.stride(1),
                weight.stride(0),
                weight.stride(1),
                float(spec.softcap) if spec.softcap is not None else 1.0,
                **forward_flags(
                    bias=bias is not None,
                    beta_vector=not spec.offset_is_scalar,
                    softcap=spec.softcap is not None,
                ),
                **config,
                **options,
            )
        if spec.offset_is_scalar:
            smooth = smooth * spec.offset
        loss_rows = spec.total * lse - spec.alpha * z_y - smooth
        if spec.z_loss:
            loss_rows = loss_rows + spec.z_loss * lse.square()
        ctx.spec = spec  # type: ignore[attr-defined]
        ctx.save_for_backward(hidden, weight, bias, target, valid, lse)
        ctx.set_materialize_grads(False)
        return (
            _reduce(loss_rows, valid, spec.reduction),
            _reduce(lse - z_y, valid, spec.reduction),
        )

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_loss: Tensor | None,
        grad_nll: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the result would carry no graph
            raise RuntimeError(
                "linear_cross_entropy(impl='triton') is first-order only: backward with "
                "create_graph=True (double backward, e.g. a gradient penalty) is not supported; "
                "use impl='reference' for higher-order gradients"
            )
        nothing = (None,) * 3
        if grad_loss is None and grad_nll is None:
            return (None, None, None, *nothing)
        hidden, weight, bias, target, valid, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        spec = ctx.spec  # type: ignore[attr-defined]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        cd = spec.compute_dtype
        scale = _row_scale(valid, spec.reduction, cd)
        zero = torch.zeros((), dtype=cd, device=hidden.device)
        gl = scale * (zero if grad_loss is None else grad_loss.to(cd))
        gn = scale * (zero if grad_nll is None else grad_nll.to(cd))
        c_p = (gl * (spec.total + 2 * spec.z_loss * lse) + gn).contiguous()
        c_y = (gl * spec.alpha + gn).contiguous()
        c_b = gl.contiguous()
        n, features = hidden.shape
        num_classes = weight.shape[0]
        grad_hidden = torch.zeros((n, features), dtype=cd, device=hidden.device)
        grad_weight = torch.zeros((num_classes, features), dtype=cd, device=hidden.device)
        grad_bias = torch.zeros(num_classes, dtype=cd, device=hidden.device)
        _, backward_kernel = _kernels()
        config, options = _launch("backward", hidden.dtype)
        grid = (triton.cdiv(n, config["BLOCK_N"]), triton.cdiv(num_classes, config["BLOCK_V"]))
        if n > 0 and (need_h or need_w or (need_b and bias is not None)):
            backward_kernel[grid](
                hidden,
                weight,
                bias if bias is not None else weight,
                target,
                weight if spec.offset_is_scalar else spec.offset,
                lse,
                c_p,
                c_y,
                c_b,
                grad_hidden,
                grad_weight,
                grad_bias,
                n,
                num_classes,
                features,
                hidden.stride(0),
                hidden.stride(1),
                weight.stride(0),
                weight.stride(1),
                float(spec.offset) if spec.offset_is_scalar else 0.0,
                float(spec.softcap) if spec.softcap is not None else 1.0,
                **backward_flags(
                    bias=bias is not None,
                    beta_vector=not spec.offset_is_scalar,
                    softcap=spec.softcap is not None,
                    need_hidden=bool(need_h),
                    need_weight=bool(need_w),
                    need_bias=bool(need_b),
                ),
                **config,
                **options,
            )
        return (
            grad_hidden.to(hidden.dtype) if need_h else None,
            grad_weight.to(weight.dtype) if need_w else None,
            grad_bias.to(bias.dtype) if need_b and bias is not None else None,
            *nothing,
        )


def apply(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    valid: Tensor,
    spec: Any,
) -> tuple[Tensor, Tensor]:
    """Per-row or reduced (loss, nll), as the chunked path returns them."""
    # Unit feature strides, which Triton folds into constants: the specialisation that
    # gpu_check verifies. Only an input whose last dimension is strided is copied.
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    return _TritonLinearCrossEntropy.apply(hidden, weight, bias, target.contiguous(), valid, spec)

r"""Label-smoothed cross-entropy on a linear head that never materialises the (N, V) logits.

:func:`linear_cross_entropy` equals ``ls.cross_entropy(hidden @ weight.T + bias, target, eps)``
(class dimension last) for a vocabulary-sized head, where the logits would be the largest
tensor of the step (N = 8192 tokens x V = 128k classes is 4 GiB in float32).

The math
--------
Row n has logits :math:`x = W h + b` (V values), optionally soft-capped,
:math:`z = s \tanh(x / s)` (Gemma 2; :math:`z = x` without ``softcap``), log-partition
:math:`\mathrm{lse} = \log \sum_c e^{z_c}` and smoothed target
:math:`\tilde t = \alpha\,\mathrm{onehot}(y) + \beta` from
:func:`labelsmooth.targets.smoothing_coefficients` (the one source of the coefficients;
:math:`\beta` is the scalar eps/K or eps/(K-1), or the vector eps * prior). With
:math:`T = \alpha + \sum_c \beta_c` (= 1) the row's loss is

.. math::

    \ell = \sum_c \tilde t_c(\mathrm{lse} - z_c) + \zeta\,\mathrm{lse}^2
         = T\,\mathrm{lse} - \alpha z_y - \sum_c \beta_c z_c + \zeta\,\mathrm{lse}^2,

:math:`\zeta` = ``z_loss`` (PaLM), and the unsmoothed ``nll`` is :math:`\mathrm{lse} - z_y`.
Without softcap the smoothing sum is linear in h, :math:`\sum_c \beta_c z_c =
h\cdot(W^\top\beta) + b\cdot\beta`: one matrix-vector product for the whole batch, never a pass
over the logits. With softcap tanh is nonlinear, so the sum is taken over each chunk of capped
logits (one extra read of the chunk).

The gradient with respect to the logits is
:math:`\partial\ell/\partial z = (T + 2\zeta\,\mathrm{lse})\,p - \alpha\,\mathrm{onehot}(y)
- \beta` with :math:`p = \mathrm{softmax}(z)`, times :math:`1 - (z/s)^2` under softcap; then
:math:`\partial/\partial h = g W`, :math:`\partial/\partial W = g^\top h`,
:math:`\partial/\partial b = \sum_n g`. Without softcap the constant :math:`-\beta` part is
rank one and is applied once per batch (:math:`-c\,(W^\top\beta)` per row of the hidden
gradient, :math:`-\beta\,(c^\top h)` for W) instead of on every chunk.

Implementations (``impl=``)
---------------------------
``"chunked"`` (torch, any device; the default on CPU): rows are processed in chunks whose size
comes from a memory budget (:func:`chunk_rows`: the extra memory stays within 10% of the size
of the (N, V) logits; the chunk's buffers take 80% of that, the rest is headroom for the BLAS).
Each chunk's logits are held transposed, (V, rows). For ``reduction="mean"``/``"sum"`` the
gradients are computed in the forward pass, as Liger-Kernel's fused linear cross-entropy does:
each chunk's logits become its logits-gradient in place, which is immediately multiplied into
the hidden, weight and bias gradients, so backward only scales them by the scalar
``grad_output`` (three matrix products in all, the same as ``F.linear`` + ``F.cross_entropy``).
``reduction="none"`` has a per-row ``grad_output``, which cannot be applied to the summed
weight gradient afterwards, so there the forward saves the per-row log-partition (N floats)
and backward recomputes each chunk's logits (four matrix products). The same recomputation
serves gradients flowing into ``nll``. A backward that keeps the graph (``retain_graph=True``)
scales copies of the gradients computed in the forward, so every backward of the same loss
gives bit-identical results (``gradcheck`` with ``nondet_tol=0``): the chunks always run in the
same order and nothing is accumulated concurrently. Under ``torch.no_grad()`` (evaluation)
only the loss is computed (one matrix product).

``"triton"`` (CUDA): Apple's Cut Cross-Entropy scheme in :mod:`labelsmooth.kernels.linear_triton`
(logit blocks live only in on-chip memory; backward recomputes them).

``"reference"``: materialises the logits and calls ``ls.cross_entropy(...,
impl="reference")``; the oracle of the tests.

Precision: the matrix products run in the input dtype, everything after them (softcap,
log-sum-exp, the loss, the logits-gradient) in float32 for bf16/fp16 input (float64 stays
float64); the weight and bias gradients are accumulated across chunks in float32 (for bf16/fp16
that accumulator, V x H x 4 bytes, is the one buffer beyond the gradients that does not shrink
with the chunk).

Memory: besides one chunk, the forward of ``"mean"``/``"sum"`` keeps the hidden, weight and
bias gradients until backward (their size, not the logits'). First-order only: a backward
with ``create_graph=True`` (double backward, e.g. a gradient penalty) raises ``RuntimeError``
rather than return a gradient without a graph; ``impl="reference"`` supports it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from .._composite import reference
from .._problem import prepare
from ..targets import smoothing_coefficients
from ._linear_common import _reduce, _row_scale, _Spec

__all__ = [
    "LINEAR_IMPLS",
    "LOGITS_MEMORY_FRACTION",
    "WORK_SHARE",
    "chunk_rows",
    "chunking",
    "linear_cross_entropy",
]

LINEAR_IMPLS = ("auto", "chunked", "reference", "triton")

# The chunked path keeps its per-chunk work buffers within this fraction of the (N, V) logits.
LOGITS_MEMORY_FRACTION = 0.1
# Share of that budget given to the chunk's (V, rows) work buffers; the rest is headroom for
# what scales with the chunk but is not ours to size: the BLAS's packing buffers (MKL: about
# 4-8 MiB at V=32000, H=1024 in the layout used here) and the (rows, H) hidden-gradient block.
WORK_SHARE = 0.8

# Set by `chunking()` (tests, benchmarks): a fixed number of rows, or another fraction.
_chunk_override: dict[str, float | int | None] = {"rows": None, "fraction": None}


@contextlib.contextmanager
def chunking(*, rows: int | None = None, fraction: float | None = None) -> Iterator[None]:
    """Overrides the chunk size of the ``"chunked"`` path inside the ``with`` block.

    ``rows`` fixes the rows per chunk; ``fraction`` replaces :data:`LOGITS_MEMORY_FRACTION`.
    Meant for tests and benchmarks; not thread-safe.

    >>> with chunking(rows=3):
    ...     chunk_rows(10, 7, torch.float32)
    3
    """
    if rows is not None and _checks.check_int("rows", rows) < 1:
        raise ValueError(f"rows must be >= 1, got rows={rows}")
    if fraction is not None:
        _checks.check_real("fraction", fraction, minimum=0.0, strict=True)
    saved = dict(_chunk_override)
    _chunk_override.update(rows=rows, fraction=fraction)
    try:
        yield
    finally:
        _chunk_override.update(saved)


def chunk_rows(
    num_rows: int,
    num_classes: int,
    dtype: torch.dtype,
    *,
    softcap: bool = False,
    fraction: float | None = None,
) -> int:
    r"""Rows per chunk so that the extra memory stays within ``fraction`` of the logits.

    The (N, V) logits would take :math:`N V s` bytes (s = the input's element size). A chunk
    of r rows holds r V elements in the compute dtype (the logits, turned into their gradient
    in place), plus a copy in the input dtype when that differs (bf16/fp16: the matmul output,
    then the gradient cast back for the next matmuls), plus the softcap derivative. These work
    buffers get :data:`WORK_SHARE` (80%) of the budget ``fraction`` (default
    :data:`LOGITS_MEMORY_FRACTION`, 10%), the rest is headroom for the BLAS workspace and the
    (r, H) gradient block: :math:`r = \lfloor 0.8 f N s / (\text{bytes per element})
    \rfloor` (at least 1), then evened out so that the chunks have nearly equal sizes.
    float32 gets 8% of the rows per chunk, bf16 2.7%, float32 with softcap 4%.

    >>> chunk_rows(8192, 32000, torch.float32)
    631
    >>> chunk_rows(8192, 32000, torch.bfloat16, softcap=True)
    131
    """
    if _chunk_override["rows"] is not None:
        return max(1, min(int(_chunk_override["rows"]), max(num_rows, 1)))
    if fraction is None:
        override = _chunk_override["fraction"]
        fraction = LOGITS_MEMORY_FRACTION if override is None else float(override)
    if num_rows <= 0:
        return 1
    size = torch.empty((), dtype=dtype).element_size()
    work = torch.empty((), dtype=_checks.compute_dtype(dtype)).element_size()
    per_element = work + (size if size != work else 0) + (work if softcap else 0)
    budget = fraction * WORK_SHARE * num_rows * size
    rows = max(1, min(num_rows, math.floor(budget / per_element)))
    chunks = math.ceil(num_rows / rows)
    return math.ceil(num_rows / chunks)


def _logits_chunk(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, spec: _Spec, need_dcap: bool
) -> tuple[Tensor, Tensor | None]:
    """The chunk's logits transposed, (V, rows), in the compute dtype, soft-capped, and the
    cap's derivative if asked.

    The transposed layout ``W @ h.T`` lets the BLAS work on the weight in place: computed as
    ``h @ W.T`` (rows, V), MKL packs a copy of W's panels (about 30 MiB extra at V=32000,
    H=1024), in ``W @ h.T`` it packs the small chunk (measured: 4 MiB). The reductions over
    classes then run over dim 0.
    """
    if bias is None:
        x = torch.mm(weight, hidden.T)
    else:
        x = torch.addmm(bias.unsqueeze(1), weight, hidden.T)
    if x.dtype != spec.compute_dtype:
        x = x.to(spec.compute_dtype)
    dcap = None
    if spec.softcap is not None:
        x.div_(spec.softcap).tanh_()
        if need_dcap:
            dcap = torch.mul(x, x).neg_().add_(1.0)  # d z / d x = 1 - tanh^2
        x.mul_(spec.softcap)
    return x, dcap


class _Grads:
    """Accumulators of the hidden, weight and bias gradients over the chunks."""

    def __init__(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        needs: Sequence[bool],
        spec: _Spec,
    ) -> None:
        cd = spec.compute_dtype
        self.spec = spec
        self.weight = weight
        self.grad_hidden = (
            torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
            if needs[0]
            else None
        )
        self.grad_weight = (
            torch.zeros(weight.shape, dtype=cd, device=weight.device) if needs[1] else None
        )
        self.grad_bias = (
            torch.zeros(weight.shape[0], dtype=cd, device=weight.device)
            if needs[2] and bias is not None
            else None
        )
        # Without softcap the -beta part of the logits-gradient is applied as a rank-one term.
        self.fold = spec.softcap is None
        if self.fold:
            self.w_beta = _weighted_column_sum(weight, spec)  # W^T beta, (H,)
            self.h_sum = torch.zeros(hidden.shape[-1], dtype=cd, device=hidden.device)
            self.c_sum = torch.zeros((), dtype=cd, device=hidden.device)

    def add(self, start: int, hidden: Tensor, g: Tensor, c_beta: Tensor) -> None:
        """Adds chunk ``g`` (V, rows) of the logits-gradient (without -c beta when folding)."""
        g_mm = g if g.dtype == self.weight.dtype else g.to(self.weight.dtype)
        cd = self.spec.compute_dtype
        if self.grad_hidden is not None:
            rows = self.grad_hidden[start : start + hidden.shape[0]]
            if rows.dtype == cd and rows.dtype == g_mm.dtype:  # straight into the result
                torch.mm(g_mm.T, self.weight, out=rows)
                if self.fold:
                    rows.addr_(c_beta, self.w_beta, alpha=-1)
            else:
                gh = (g_mm.T @ self.weight).to(cd)
                if self.fold:
                    gh.addr_(c_beta, self.w_beta, alpha=-1)
                rows.copy_(gh)
        if self.grad_weight is not None:
            if g_mm.dtype == cd:
                self.grad_weight.addmm_(g_mm, hidden)
            else:
                self.grad_weight.add_(g_mm @ hidden)
            if self.fold:
                self.h_sum.add_(c_beta.to(cd) @ hidden.to(cd))
        if self.grad_bias is not None:
            self.grad_bias.add_(g.sum(1))
        if self.fold:
            self.c_sum.add_(c_beta.sum())

    def finish(
        self, hidden: Tensor, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        beta = self.spec.offset
        gw, gb = self.grad_weight, self.grad_bias
        if self.fold:
            if gw is not None and isinstance(beta, Tensor):
                gw.addr_(beta, self.h_sum, alpha=-1)
            elif gw is not None:
                gw.sub_(self.h_sum * beta)  # the same row subtracted from every class
            if gb is not None:
                gb.sub_(beta * self.c_sum)
        if gw is not None:
            gw = gw.to(weight.dtype)
        if gb is not None and bias is not None:
            gb = gb.to(bias.dtype)
        return self.grad_hidden, gw, gb


def _weighted_column_sum(weight: Tensor, spec: _Spec) -> Tensor:
    """W^T beta (H,) in the compute dtype, without an upcast copy of W."""
    cd = spec.compute_dtype
    if spec.offset_is_scalar:
        return weight.sum(0, dtype=cd) * spec.offset
    if weight.dtype == cd:
        return spec.offset @ weight
    return (spec.offset.to(weight.dtype) @ weight).to(cd)


def _smoothing_sum(
    z: Tensor, hidden: Tensor, bias: Tensor | None, w_beta: Tensor | None, spec: _Spec
) -> Tensor:
    """sum_c beta_c z_c per row: a matrix-vector product on h, or a pass over capped logits.

    ``z`` is the chunk's (V, rows) capped logits (only read under softcap).
    """
    cd = spec.compute_dtype
    if spec.softcap is not None or w_beta is None:
        if spec.offset_is_scalar:
            return z.sum(0) * spec.offset
        return spec.offset @ z
    total = hidden.to(cd) @ w_beta
    if bias is not None:
        if spec.offset_is_scalar:
            total = total + bias.sum(dtype=cd) * spec.offset
        else:
            total = total + bias.to(cd) @ spec.offset
    return total


def _logits_gradient_(
    x: Tensor,
    dcap: Tensor | None,
    target: Tensor,
    c_p: Tensor,
    c_y: Tensor,
    c_beta: Tensor,
    spec: _Spec,
) -> Tensor:
    """Turns ``x`` = exp(z - m) (V, rows) into g = c_p p - c_y onehot(y) [- beta c_beta^T].

    ``c_p`` already includes the 1/sum(exp) normalisation of p. The beta term is applied
    here only under softcap (where it must be multiplied by the cap's derivative); otherwise
    :class:`_Grads` adds it as a rank-one term.
    """
    x.mul_(c_p)
    x.scatter_add_(0, target.unsqueeze(0), (-c_y).unsqueeze(0).to(x.dtype))
    if dcap is not None:
        if spec.offset_is_scalar:
            x.sub_(c_beta * spec.offset)
        else:
            x.addr_(spec.offset, c_beta, alpha=-1)
        x.mul_(dcap)
    return x


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True if unknown."""
    getter = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if getter is None else bool(getter())


def _refuse_create_graph(impl: str) -> None:
    """Raises inside a custom backward run with ``create_graph=True`` (grad mode is then on).

    The hand-written backward is not itself differentiable: its result would silently carry no
    graph, so a gradient penalty built on it would be dropped without an error.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"linear_cross_entropy(impl={impl!r}) is first-order only: backward with "
            f"create_graph=True (double backward, e.g. a gradient penalty) is not supported; "
            f"use impl='reference' for higher-order gradients"
        )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Chunked forward (and, for mean/sum, the gradients); see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        valid: Tensor,
        spec: _Spec,
        rows: int,
        grad_enabled: bool,
    ) -> tuple[Tensor, Tensor]:
        cd = spec.compute_dtype
        n = hidden.shape[0]
        needs = tuple(ctx.needs_input_grad[:3])  # type: ignore[attr-defined]
        # Gradients in the forward only when a backward can follow (not under no_grad).
        precompute = grad_enabled and spec.reduction != "none" and any(needs)
        scale = _row_scale(valid, spec.reduction, cd)
        loss_rows = torch.empty(n, dtype=cd, device=hidden.device)
        nll_rows = torch.empty(n, dtype=cd, device=hidden.device)
        lse_rows = torch.empty(n, dtype=cd, device=hidden.device)
        grads = _Grads(hidden, weight, bias, needs, spec) if precompute else None
        w_beta = None
        if spec.softcap is None:
            w_beta = grads.w_beta if grads is not None else _weighted_column_sum(weight, spec)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            h, y = hidden[start:stop], target[start:stop]
            x, dcap = _logits_chunk(h, weight, bias, spec, need_dcap=precompute)
            z_y = x.gather(0, y.unsqueeze(0)).squeeze(0)
            smooth = _smoothing_sum(x, h, bias, w_beta, spec)
            m = x.amax(0)
            x.sub_(m).exp_()  # the chunk now holds exp(z - m)
            sum_exp = x.sum(0)
            lse = m + sum_exp.log()
            loss_rows[start:stop] = spec.total * lse - spec.alpha * z_y - smooth
            if spec.z_loss:
                loss_rows[start:stop] += spec.z_loss * lse.square()
            nll_rows[start:stop] = lse - z_y
            lse_rows[start:stop] = lse
            if grads is not None:
                sc = scale[start:stop]
                c_p = sc * (spec.total + 2 * spec.z_loss * lse) / sum_exp
                _logits_gradient_(x, dcap, y, c_p, sc * spec.alpha, sc, spec)  # in place
                grads.add(start, h, x, sc)
            del x, dcap  # free the chunk before the next one is allocated
        ctx.spec = spec  # type: ignore[attr-defined]
        ctx.rows = rows  # type: ignore[attr-defined]
        ctx.precomputed = (  # type: ignore[attr-defined]
            grads.finish(hidden, weight, bias) if grads is not None else None
        )
        ctx.save_for_backward(hidden, weight, bias, target, valid, lse_rows)
        ctx.set_materialize_grads(False)
        return _reduce(loss_rows, valid, spec.reduction), _reduce(nll_rows, valid, spec.reduction)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_loss: Tensor | None,
        grad_nll: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        _refuse_create_graph("chunked")
        nothing = (None,) * 5
        if grad_loss is None and grad_nll is None:
            return (None, None, None, *nothing)
        precomputed = ctx.precomputed  # type: ignore[attr-defined]
        if precomputed is not None and grad_nll is None:
            assert grad_loss is not None
            if _keep_graph():  # another backward may follow: scale copies, keep the originals
                scaled = tuple(None if g is None else g * grad_loss for g in precomputed)
            else:  # the last backward: scale in place, then let them go
                ctx.precomputed = None  # type: ignore[attr-defined]
                scaled = tuple(None if g is None else g.mul_(grad_loss) for g in precomputed)
            return (*scaled, *nothing)
        hidden, weight, bias, target, valid, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        spec: _Spec = ctx.spec  # type: ignore[attr-defined]
        needs = tuple(ctx.needs_input_grad[:3])  # type: ignore[attr-defined]
        cd = spec.compute_dtype
        scale = _row_scale(valid, spec.reduction, cd)
        zero = torch.zeros((), dtype=cd, device=hidden.device)
        gl = scale * (zero if grad_loss is None else grad_loss.to(cd))
        gn = scale * (zero if grad_nll is None else grad_nll.to(cd))
        c_p_all = gl * (spec.total + 2 * spec.z_loss * lse) + gn
        c_y_all = gl * spec.alpha + gn
        grads = _Grads(hidden, weight, bias, needs, spec)
        rows: int = ctx.rows  # type: ignore[attr-defined]
        for start in range(0, hidden.shape[0], rows):
            stop = min(start + rows, hidden.shape[0])
            h, y = hidden[start:stop], target[start:stop]
            x, dcap = _logits_chunk(h, weight, bias, spec, need_dcap=True)
            x.sub_(lse[start:stop]).exp_()  # p
            g = _logits_gradient_(
                x, dcap, y, c_p_all[start:stop], c_y_all[start:stop], gl[start:stop], spec
            )
            grads.add(start, h, g, gl[start:stop])
            del x, dcap, g  # free the chunk before the next one is allocated
        return (*grads.finish(hidden, weight, bias), *nothing)


def _reference(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    valid: Tensor,
    eps: float,
    style: str,
    prior: Tensor | None,
    ignore_index: int,
    spec: _Spec,
) -> tuple[Tensor, Tensor]:
    """Materialises the logits and applies ``ls.cross_entropy(..., impl="reference")``."""
    z = F.linear(hidden, weight, bias).to(spec.compute_dtype)
    if spec.softcap is not None:
        z = spec.softcap * torch.tanh(z / spec.softcap)
    problem = prepare(z, target, eps, style, prior, None, ignore_index, "none", False, False)
    loss, nll = reference(problem, True)
    assert nll is not None
    if spec.z_loss:
        loss = loss + spec.z_loss * torch.logsumexp(z, dim=-1).square()
    return _reduce(loss, valid, spec.reduction), _reduce(nll, valid, spec.reduction)


def _resolve(impl: object, device: torch.device) -> str:
    _checks.check_choice("impl", impl, LINEAR_IMPLS)
    if impl == "auto":
        # The Triton kernels pass their tests under TRITON_INTERPRET=1 but have not yet been
        # compiled and measured on a GPU, so "auto" keeps to the chunked path everywhere;
        # impl="triton" opts in.
        return "chunked"
    if impl == "triton":
        from . import linear_triton

        linear_triton.check_usable(device)
    return str(impl)


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    bias: Tensor | None = None,
    style: str = "uniform",
    prior: Tensor | Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_nll: bool = False,
    impl: str = "auto",
    z_loss: float = 0.0,
    softcap: float | None = None,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Label-smoothed cross-entropy of a linear head, without the (N, V) logits.

    Equals ``ls.cross_entropy(F.linear(hidden, weight, bias), target, eps, ...)`` with the
    class dimension last: per non-ignored element, with logits :math:`z = W h + b`
    (soft-capped by :math:`s\tanh(z/s)` when ``softcap=s``), :math:`p = \mathrm{softmax}(z)`
    and :math:`\mathrm{lse} = \log\sum_c e^{z_c}`,

    * ``style="uniform"``: :math:`(1-\epsilon)(-\log p_y) + \frac{\epsilon}{V}\sum_c
      (-\log p_c)` — ``F.cross_entropy(..., label_smoothing=eps)`` on the logits;
    * ``style="others"``: :math:`(1-\epsilon)(-\log p_y) + \frac{\epsilon}{V-1}
      \sum_{c\ne y}(-\log p_c)`;
    * ``prior`` (uniform only) replaces :math:`\epsilon/V` by :math:`\epsilon\,\pi_c`;
    * plus :math:`\zeta\,\mathrm{lse}^2` with ``z_loss`` = :math:`\zeta` (PaLM).

    The logits are computed a chunk of rows at a time and never held whole; see
    :mod:`labelsmooth.kernels.linear` for the algorithm, the memory budget and the cost of
    each option (the smoothing term costs one matrix-vector product; softcap costs one extra
    pass over each chunk).

    Reductions follow PyTorch: ``"mean"`` divides by the number of non-ignored elements
    (``z_loss`` shares that denominator), ``"sum"``, ``"none"`` (one value per element, 0 where
    the target is ``ignore_index``). A ``"mean"`` over a batch whose targets are all ignored
    returns 0 with a zero gradient (PyTorch: nan). Class weights are not supported here
    (``weight`` is the projection matrix). Negative ``eps`` is generalised label smoothing:
    the loss is then unbounded below.

    Args:
        hidden: (N, H) or (B, T, H) (any (..., H)) features; any floating dtype.
        weight: (V, H) projection matrix (``nn.Linear(H, V).weight``), dtype of ``hidden``.
        target: class indices of shape ``hidden.shape[:-1]``.
        eps: smoothing rate. ``uniform``: eps <= 1; ``others``: eps <= (V-1)/V.
        bias: optional (V,) bias of the head.
        style: ``"uniform"`` or ``"others"`` (see DESIGN.md).
        prior: length-V distribution for ``"uniform"`` smoothing towards a class prior.
        ignore_index: target value whose elements contribute nothing (e.g. padding).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        return_nll: also return the unsmoothed negative log-likelihood (no z-loss), with the
            same reduction, computed in the same pass (for perplexity). It is differentiable.
        impl: ``"auto"`` (``"chunked"`` on every device until the Triton kernels have been
            measured on a GPU; ``"reference"`` inside a ``torch.func`` transform),
            ``"chunked"`` (torch, any device), ``"triton"`` (CUDA, or CPU under
            ``TRITON_INTERPRET=1``), ``"reference"`` (materialises the logits; the oracle).
        z_loss: coefficient of :math:`\mathrm{lse}^2` (>= 0; PaLM uses 1e-4).
        softcap: cap s > 0 of the logits, :math:`s\tanh(z/s)` before the softmax (Gemma 2
            uses 30), or ``None``.
        validate: check that class indices are in range (one host sync; skipped while
            traced by ``torch.compile`` or a ``torch.func`` transform). Unchecked, an index
            outside [0, V) other than ``ignore_index`` makes the call fail or gives an
            undefined loss for that row; it is never taken for a class.

    Returns:
        The loss (float32 scalar for ``"mean"``/``"sum"``, float64 for float64 input; for
        ``"none"`` a tensor of ``target``'s shape in ``hidden``'s dtype), or ``(loss, nll)``
        with ``return_nll=True``.

    Example:
        >>> hidden, weight = torch.randn(6, 4), torch.randn(10, 4)
        >>> target = torch.tensor([1, 2, 3, -100, 5, 9])
        >>> loss = linear_cross_entropy(hidden, weight, target, 0.1)
        >>> from labelsmooth import cross_entropy
        >>> torch.allclose(loss, cross_entropy(hidden @ weight.T, target, 0.1))
        True
    """
    hidden, weight, bias, target = _checks.check_linear_head(hidden, weight, bias, target)
    style = _checks.check_style(style)
    reduction = _checks.check_reduction(reduction)
    return_nll = _checks.check_flag("return_nll", return_nll)
    validate = _checks.check_flag("validate", validate)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    z_loss = _checks.check_z_loss(z_loss)
    softcap = _checks.check_softcap(softcap)
    num_classes = weight.shape[0]
    eps = _checks.check_eps(eps, num_classes, style)
    cd = _checks.compute_dtype(hidden.dtype)
    prior_t = _checks.check_prior(prior, num_classes, style, hidden.device, cd)
    name = _resolve(impl, hidden.device)
    transformed = not torch.compiler.is_compiling() and _checks.tracing(hidden, weight, target)
    if transformed and name != "reference":
        # torch.func transforms cannot see through the fused backward (an autograd.Function);
        # the reference materialises the logits and is differentiated by torch itself.
        if impl != "auto":
            raise ValueError(
                f"impl={impl!r} cannot run inside a torch.func transform (grad, vmap, ...); "
                'use impl="auto" or "reference" there (it materialises the (N, V) logits)'
            )
        name = "reference"
    # While traced (torch.compile, torch.func) no value may reach the host: the indices go
    # unchecked, and a negative one is then stored as V (out of range, never a class), as with
    # validate=False in cross_entropy.
    checked = validate and not _checks.tracing(hidden, weight, target)
    if checked:
        _checks.check_class_indices(target, num_classes, ignore_index)

    alpha, offset = smoothing_coefficients(eps, num_classes, style, prior_t)
    if isinstance(offset, Tensor):
        offset, total = offset.to(cd), alpha + float(offset.sum())
    else:
        total = alpha + num_classes * offset
    spec = _Spec(
        alpha=alpha,
        offset=offset,
        total=total,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        compute_dtype=cd,
    )
    out_shape = target.shape
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    flat = target.reshape(-1).long()
    valid = flat != ignore_index
    rows_target = flat.masked_fill(~valid, 0)
    if not checked:
        rows_target = rows_target.masked_fill(rows_target < 0, num_classes)

    if name == "reference":
        loss, nll = _reference(
            hidden2d, weight, bias, flat, valid, eps, style, prior_t, ignore_index, spec
        )
    elif name == "triton":
        from . import linear_triton

        loss, nll = linear_triton.apply(hidden2d, weight, bias, rows_target, valid, spec)
    else:
        softcapped = softcap is not None
        rows = chunk_rows(hidden2d.shape[0], num_classes, hidden.dtype, softcap=softcapped)
        loss, nll = _ChunkedLinearCrossEntropy.apply(
            hidden2d, weight, bias, rows_target, valid, spec, rows, torch.is_grad_enabled()
        )
    if reduction == "none":
        loss = loss.reshape(out_shape).to(hidden.dtype)
        nll = nll.reshape(out_shape).to(hidden.dtype)
    return (loss, nll) if return_nll else loss

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
comes from :func:`chunk_rows`. When the work buffers of all N rows fit :data:`DENSE_BYTES`
(256 MiB) there is one chunk: the logits are materialised (once, and turned into their
gradient in place), which is what ``F.linear`` + ``ls.cross_entropy`` would hold anyway, twice
over. Above it the extra memory stays within 10% of the size of the (N, V) logits (the chunk's
buffers take 80% of that, the rest is headroom for the BLAS), but a chunk has at least
:data:`MIN_CHUNK_ROWS` rows so that its matrix products run at full speed. One set of chunk
buffers is allocated per call and reused by every chunk (a fresh buffer per chunk would pay the
operating system's page faults again each time: about 0.4 s per GiB on the 2-core test VM).

Each chunk's logits, (rows, V), are turned into probabilities by one in-place
``torch.softmax`` (row by row, so each row stays in cache), and the log-partition is read off
it: :math:`\mathrm{lse} = m - \log \max_c p_c` (m the row's largest logit, whose probability
is :math:`e^{m - \mathrm{lse}}`). For ``reduction="mean"``/``"sum"`` the gradients are computed
in the forward pass, as Liger-Kernel's fused linear cross-entropy does: each chunk's
probabilities become its logits-gradient in place, which is immediately multiplied into the
hidden, weight and bias gradients, so backward only scales them by the scalar ``grad_output``
(three matrix products in all, the same as ``F.linear`` + ``F.cross_entropy``).
``reduction="none"`` has a per-row ``grad_output``, which cannot be applied to the summed
weight gradient afterwards, so there the forward saves the per-row log-partition (N floats)
and backward recomputes each chunk's logits (four matrix products). The same recomputation
serves gradients flowing into ``nll``. A backward that keeps the graph (``retain_graph=True``)
scales copies of the gradients computed in the forward, so every backward of the same loss
gives bit-identical results (``gradcheck`` with ``nondet_tol=0``): the chunks always run in the
same order and nothing is accumulated concurrently. Under ``torch.no_grad()`` (evaluation)
only the loss is computed (one matrix product).

Subnormals: probabilities :math:`p_c \le` :data:`PROBABILITY_FLOOR` (:math:`2^{-80}` in
float32) are set to exactly 0 before the gradient products (see :func:`_flush_`), so that large
logits (e.g. ``randn`` weights: logit spreads of hundreds) never send subnormal numbers, which
many CPUs process tens of times slower, into the matrix products. This changes no result
beyond rounding. (Before, a vectorised ``exp_`` of the whole chunk underflowed there: 17x
slower than on ordinary logits; the row-wise softmax has no such slow path.)

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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from .._composite import reference
from .._problem import prepare
from ..targets import smoothing_coefficients
from ._linear_common import _reduce, _row_scale, _Spec

__all__ = [
    "DENSE_BYTES",
    "LINEAR_IMPLS",
    "LOGITS_MEMORY_FRACTION",
    "MIN_CHUNK_ROWS",
    "PROBABILITY_FLOOR",
    "WORK_SHARE",
    "chunk_rows",
    "chunking",
    "linear_cross_entropy",
]

LINEAR_IMPLS = ("auto", "chunked", "reference", "triton")

# Work buffers (the logits of all rows in the compute dtype, plus the input-dtype copy and the
# softcap derivative where those exist) of at most this many bytes are allocated whole: one
# chunk, the logits materialised. Below it chunking saves little memory in absolute terms
# (F.linear + a cross-entropy holds the logits and their gradient, 2x this or more) and costs
# speed; above it the memory rule below applies.
DENSE_BYTES = 256 * 2**20
# The chunked path keeps its per-chunk work buffers within this fraction of the (N, V) logits.
LOGITS_MEMORY_FRACTION = 0.1
# Share of that budget given to the chunk's (rows, V) work buffers; the rest is headroom for
# what scales with the chunk but is not ours to size: the BLAS's packing buffers (MKL: about
# 12 MiB at V=32000, H=1024 and at V=128256, H=2048, measured) and the (rows, H) gradient block.
WORK_SHARE = 0.8
# A chunk has at least this many rows, whatever the memory rule gives: with fewer the matrix
# products lose speed (measured with 2 threads on the 2-core VM: 256 rows ran up to 2x slower
# than 1024, while 512 matched 1024; one thread is at full speed from 256).
MIN_CHUNK_ROWS = 512
# Chunks of more rows than this are a multiple of it (an odd chunk such as 631 rows made the
# forward product 20% slower than 512 or 768 on the test VM).
ROW_ALIGN = 64
# Probabilities at or below this are set to exactly 0 before the gradient products; see
# `_flush_` for why that changes no result beyond rounding.
PROBABILITY_FLOOR = {torch.float32: 2.0**-80, torch.float64: 2.0**-110}
# See `_Grads`: apply the per-row gradient coefficients to the small operands (CPU, no softcap).
# A switch for the tests, which cover both ways.
_FOLD_ROWS = True

# Set by `chunking()` (tests, benchmarks): a fixed number of rows, or another fraction.
_chunk_override: dict[str, float | int | None] = {"rows": None, "fraction": None}


@contextlib.contextmanager
def chunking(*, rows: int | None = None, fraction: float | None = None) -> Iterator[None]:
    """Overrides the chunk size of the ``"chunked"`` path inside the ``with`` block.

    ``rows`` fixes the rows per chunk (also below :data:`DENSE_BYTES`); ``fraction`` replaces
    :data:`LOGITS_MEMORY_FRACTION`. Meant for tests and benchmarks; not thread-safe.

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
    r"""Rows per chunk: all of them up to :data:`DENSE_BYTES`, else a share of the logits' size.

    A chunk of r rows holds r V elements in the compute dtype (the logits, turned into their
    gradient in place), plus a copy in the input dtype when that differs (bf16/fp16: the matmul
    output, then the gradient cast back for the next matmuls), plus the softcap derivative.

    * If these work buffers fit :data:`DENSE_BYTES` (256 MiB) for all N rows, the answer is N:
      one chunk, the logits materialised.
    * Otherwise they get :data:`WORK_SHARE` (80%) of the budget ``fraction`` (default
      :data:`LOGITS_MEMORY_FRACTION`, 10%) of the (N, V) logits in the input dtype (N V s
      bytes), the rest being headroom for the BLAS workspace and the (r, H) gradient block:
      :math:`r = \lfloor 0.8 f N s / (\text{bytes per element}) \rfloor`, but at least
      :data:`MIN_CHUNK_ROWS` (512) rows for the speed of the matrix products, rounded down to a
      multiple of :data:`ROW_ALIGN` (64) and then evened out so that the chunks have nearly equal
      sizes (still multiples of 64 and at least 512 rows; the last one takes the rest).

    float32 gets 8% of the rows per chunk, bf16 2.7%, float32 with softcap 4%, when that is
    more than 512 rows.

    >>> chunk_rows(8192, 32000, torch.float32)   # 1000 MiB of logits: 12 x 640 rows + 512
    640
    >>> chunk_rows(2048, 32000, torch.float32)   # 250 MiB: one chunk
    2048
    >>> chunk_rows(65536, 32000, torch.bfloat16, softcap=True)   # 2.6% of the rows, aligned
    1024
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
    if num_rows * num_classes * per_element <= DENSE_BYTES:
        return num_rows
    budget = fraction * WORK_SHARE * num_rows * size
    rows = max(1, MIN_CHUNK_ROWS, math.floor(budget / per_element))
    if rows >= num_rows:
        return num_rows
    align = ROW_ALIGN if rows >= ROW_ALIGN else 1
    rows -= rows % align
    chunks = math.ceil(num_rows / rows)
    even = math.ceil(math.ceil(num_rows / chunks) / align) * align
    return min(rows, max(even, MIN_CHUNK_ROWS))


class _Buffers:
    """The work buffers of one call, sized for its largest chunk and reused by every chunk.

    ``x``: the chunk's logits, then probabilities, then logits-gradient, (rows, V) in the
    compute dtype; ``low``: the input-dtype copy (matmul output, and the gradient cast back for
    the products) when the input is bf16/fp16; ``dcap``: the softcap derivative.
    """

    def __init__(self, rows: int, weight: Tensor, spec: _Spec, need_dcap: bool) -> None:
        self.num_classes = weight.shape[0]
        size = rows * self.num_classes
        cd, device = spec.compute_dtype, weight.device
        self.x = torch.empty(size, dtype=cd, device=device)
        low = weight.dtype != cd
        self.low = torch.empty(size, dtype=weight.dtype, device=device) if low else None
        dcap = need_dcap and spec.softcap is not None
        self.dcap = torch.empty(size, dtype=cd, device=device) if dcap else None

    def view(self, name: str, rows: int) -> Tensor | None:
        """The (rows, V) front of buffer ``name`` (None where there is no such buffer)."""
        buffer: Tensor | None = getattr(self, name)
        if buffer is None:
            return None
        return buffer[: rows * self.num_classes].view(rows, self.num_classes)


def _logits_chunk(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    spec: _Spec,
    buffers: _Buffers,
    need_dcap: bool,
) -> tuple[Tensor, Tensor | None]:
    """The chunk's logits, (rows, V), in the compute dtype, soft-capped, and the cap's
    derivative if asked; written into the call's reused buffers."""
    rows = hidden.shape[0]
    x = buffers.view("x", rows)
    assert x is not None
    low = buffers.view("low", rows)
    out = x if low is None else low
    if bias is None:
        out = torch.mm(hidden, weight.T, out=out)
    else:
        out = torch.addmm(bias, hidden, weight.T, out=out)
    x = x.copy_(out) if low is not None else out
    dcap = None
    if spec.softcap is not None:
        x.div_(spec.softcap).tanh_()
        if need_dcap:
            dcap = buffers.view("dcap", rows)
            assert dcap is not None
            dcap = torch.addcmul(_one(x), x, x, value=-1.0, out=dcap)  # d z / d x = 1 - tanh^2
        x.mul_(spec.softcap)
    return x, dcap


def _one(x: Tensor) -> Tensor:
    return torch.ones((), dtype=x.dtype, device=x.device)


def _softmax_(x: Tensor, fused: bool | None = None) -> Tensor:
    """Turns the chunk's logits ``x`` (rows, V) into their softmax in place; returns lse.

    ``torch.softmax`` works row by row (the row stays in cache: max, exp and sum, scale), so
    this is about two passes over memory instead of the five of max / subtract / exp / sum /
    scale, and its exp has no slow path for arguments that underflow (the vectorised ``exp_``
    of a (rows, V) tensor took 17x longer on logits spread over hundreds). The log-partition is
    read off the result: the row's largest logit m has probability e^(m - lse) = 1/sum (exactly
    the factor softmax scales by, >= 1/V, never 0), so lse = m - log(max p) to about 2 ulp of
    lse, as close to float64 as ``torch.logsumexp`` in the same dtype (measured).

    Writing the softmax over its own input is safe for the CPU kernel (each element is read
    before it is written, row by row; checked by the tests against the reference) but has not
    been checked for other devices' kernels, so there the same is done op by op
    (max, subtract, exp, sum, divide: no extra memory, five passes); ``fused`` overrides the
    choice (tests).
    """
    m = x.amax(1)
    if x.device.type == "cpu" if fused is None else fused:
        x = torch.softmax(x, 1, out=x)
        return m - x.amax(1).log()
    x.sub_(m.unsqueeze(1)).exp_()
    total = x.sum(1)
    x.div_(total.unsqueeze(1))
    return m + total.log()


def _flush_(p: Tensor) -> Tensor:
    r"""Sets probabilities ``p`` <= :data:`PROBABILITY_FLOOR` to exactly 0, in place.

    Why: with large logits (a row's spread of hundreds, e.g. ``randn`` weights), most of a
    row's probabilities are tiny or subnormal (< 2^-126 in float32), and so are their products
    with the gradient scale (1/N for ``mean``). Subnormal operands cost a microcode assist per
    operation on many CPUs (tens to hundreds of cycles); the test VM's MKL products happened to
    run at full speed with them, but its vectorised ``exp_`` did not (17x slower). With the
    floor, every entry that reaches the matrix products is 0 or at least 2^-80 times the row's
    gradient scale (>= 1/N for ``mean``), a normal number for any realistic N.

    Why it changes no result beyond rounding (float32; float64 has the floor 2^-110 and
    u = 2^-53, the same argument with one more bit of margin): the probabilities of a row sum
    to 1, and each of its V < 2^34 entries moves by at most the floor, so the row's
    logits-gradient :math:`c\,(p - \tilde t)` moves by at most :math:`V 2^{-80} |c| <
    2^{-46}|c|` in total (its l1 norm). Every fp32 evaluation of a softmax already has an error
    of :math:`u = 2^{-24}` relative in the common factor 1/sum of the row, an l1 error of
    :math:`2^{-24}|c|`: the flush is 2^22 times smaller. The loss does not see it (it reads lse
    before the flush), and the products :math:`g W`, :math:`g^\top h` see each row changed by
    that amount times the operand's largest entry, against their own rounding error bound of
    :math:`\gamma_V \lVert g\rVert_1 \max|W|` per entry.
    """
    floor = PROBABILITY_FLOOR.get(p.dtype, 0.0)
    return F.threshold_(p, floor, 0.0)


class _Grads:
    """Accumulators of the hidden, weight and bias gradients over the chunks.

    A chunk arrives either as its logits-gradient g (:meth:`add` with ``rows=None``), or, on the
    CPU without softcap, as its (flushed) probabilities p with the per-row coefficients of
    g = c_p p - c_y onehot(y) (:class:`_Rows`): the products then run on p, and c_p, c_y are
    applied to their small (rows, H) operands and results instead of to the (rows, V) chunk,
    which saves a pass over it. (``index_add_`` of the target rows is deterministic on the CPU
    only, so other devices take g.) The first chunk writes the weight and bias gradients
    instead of adding to zeros, which saves a pass over (V, H).
    """

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
        self.started = False
        self.grad_hidden = (
            torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
            if needs[0]
            else None
        )
        self.grad_weight = (
            torch.empty(weight.shape, dtype=cd, device=weight.device) if needs[1] else None
        )
        self.grad_bias = (
            torch.empty(weight.shape[0], dtype=cd, device=weight.device)
            if needs[2] and bias is not None
            else None
        )
        # Without softcap the -beta part of the logits-gradient is applied as a rank-one term.
        self.fold = spec.softcap is None
        if self.fold:
            self.w_beta = _weighted_column_sum(weight, spec)  # W^T beta, (H,)
            self.h_sum = torch.zeros(hidden.shape[-1], dtype=cd, device=hidden.device)
            self.c_sum = torch.zeros((), dtype=cd, device=hidden.device)

    def add(
        self,
        start: int,
        hidden: Tensor,
        g: Tensor,
        c_beta: Tensor,
        buffers: _Buffers,
        rows: _Rows | None = None,
    ) -> None:
        """Adds chunk ``g`` (rows, V): the logits-gradient (without -c beta when folding), or,
        with ``rows``, the probabilities whose coefficients ``rows`` holds."""
        cd = self.spec.compute_dtype
        first, self.started = not self.started, True
        g_mm = g
        if g.dtype != self.weight.dtype:
            low = buffers.view("low", g.shape[0])
            g_mm = g.to(self.weight.dtype) if low is None else low.copy_(g)
        if self.grad_hidden is not None:
            out = self.grad_hidden[start : start + hidden.shape[0]]
            if out.dtype == cd and out.dtype == g_mm.dtype:  # straight into the result
                gh = torch.mm(g_mm, self.weight, out=out)
            else:
                gh = (g_mm @ self.weight).to(cd)
            if rows is not None:
                gh.mul_(rows.c_p.unsqueeze(1))
                target_rows = self.weight.index_select(0, rows.target).to(cd)
                gh.sub_(target_rows.mul_(rows.c_y.unsqueeze(1)))
            if self.fold:
                gh.addr_(c_beta, self.w_beta, alpha=-1)
            if gh is not out:
                out.copy_(gh)
        if self.grad_weight is not None:
            h_mm = hidden
            if rows is not None:
                h_mm = (hidden.to(cd) * rows.c_p.unsqueeze(1)).to(hidden.dtype)
            if g_mm.dtype == cd:
                self.grad_weight.addmm_(g_mm.T, h_mm, beta=0 if first else 1)
            elif first:
                self.grad_weight.copy_(g_mm.T @ h_mm)
            else:
                self.grad_weight.add_(g_mm.T @ h_mm)
            if rows is not None:
                minus = hidden.to(cd) * (-rows.c_y).unsqueeze(1)
                self.grad_weight.index_add_(0, rows.target, minus)
            if self.fold:
                self.h_sum.add_(c_beta.to(cd) @ hidden.to(cd))
        if self.grad_bias is not None:
            total = g.sum(0) if rows is None else rows.c_p @ g
            if first:
                self.grad_bias.copy_(total)
            else:
                self.grad_bias.add_(total)
            if rows is not None:
                self.grad_bias.index_add_(0, rows.target, -rows.c_y)
        if self.fold:
            self.c_sum.add_(c_beta.sum())

    def finish(
        self, hidden: Tensor, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        beta = self.spec.offset
        gw, gb = self.grad_weight, self.grad_bias
        if not self.started:  # no rows at all
            for grad in (gw, gb):
                if grad is not None:
                    grad.zero_()
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


class _Rows(NamedTuple):
    """Per-row coefficients of a chunk's logits-gradient g = c_p p - c_y onehot(target)."""

    c_p: Tensor
    c_y: Tensor
    target: Tensor


def _fold_rows(spec: _Spec, device: torch.device) -> bool:
    """Whether chunks reach :class:`_Grads` as probabilities plus per-row coefficients."""
    return _FOLD_ROWS and spec.softcap is None and device.type == "cpu"


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

    ``z`` is the chunk's (rows, V) capped logits (only read under softcap).
    """
    cd = spec.compute_dtype
    if spec.softcap is not None or w_beta is None:
        if spec.offset_is_scalar:
            return z.sum(1) * spec.offset
        return z @ spec.offset
    total = hidden.to(cd) @ w_beta
    if bias is not None:
        if spec.offset_is_scalar:
            total = total + bias.sum(dtype=cd) * spec.offset
        else:
            total = total + bias.to(cd) @ spec.offset
    return total


def _logits_gradient_(
    p: Tensor,
    dcap: Tensor | None,
    target: Tensor,
    c_p: Tensor,
    c_y: Tensor,
    c_beta: Tensor,
    spec: _Spec,
) -> Tensor:
    """Turns the probabilities ``p`` (rows, V) into g = c_p p - c_y onehot(y) [- c_beta beta].

    The beta term is applied here only under softcap (where it must be multiplied by the cap's
    derivative); otherwise :class:`_Grads` adds it as a rank-one term.
    """
    p = _flush_(p)
    p.mul_(c_p.unsqueeze(1))
    p.scatter_add_(1, target.unsqueeze(1), (-c_y).unsqueeze(1).to(p.dtype))
    if dcap is not None:
        if spec.offset_is_scalar:
            p.sub_((c_beta * spec.offset).unsqueeze(1))
        else:
            p.addr_(c_beta, spec.offset, alpha=-1)
        p.mul_(dcap)
    return p


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True if unknown."""
    getter = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if getter is None else bool(getter())


def _is_one(grad: Tensor) -> bool:
    """Whether ``grad`` is exactly 1 (``loss.backward()``), read only where that is free: a
    plain CPU tensor outside any tracing (elsewhere: False, and the caller multiplies)."""
    if type(grad) is not torch.Tensor or grad.device.type != "cpu" or grad.numel() != 1:
        return False
    if _checks.tracing(grad):
        return False
    return bool(grad == 1)


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
        buffers = _Buffers(min(rows, n), weight, spec, need_dcap=precompute)
        folded = _fold_rows(spec, hidden.device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            h, y = hidden[start:stop], target[start:stop]
            x, dcap = _logits_chunk(h, weight, bias, spec, buffers, need_dcap=precompute)
            z_y = x.gather(1, y.unsqueeze(1)).squeeze(1)
            smooth = _smoothing_sum(x, h, bias, w_beta, spec)
            lse = _softmax_(x)  # the chunk now holds p
            loss_rows[start:stop] = spec.total * lse - spec.alpha * z_y - smooth
            if spec.z_loss:
                loss_rows[start:stop] += spec.z_loss * lse.square()
            nll_rows[start:stop] = lse - z_y
            lse_rows[start:stop] = lse
            if grads is not None:
                sc = scale[start:stop]
                c_p = sc * (spec.total + 2 * spec.z_loss * lse)
                if folded:
                    grads.add(start, h, _flush_(x), sc, buffers, _Rows(c_p, sc * spec.alpha, y))
                else:
                    _logits_gradient_(x, dcap, y, c_p, sc * spec.alpha, sc, spec)  # in place
                    grads.add(start, h, x, sc, buffers)
        del buffers
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
            elif _is_one(grad_loss):  # loss.backward(): the gradients as they are
                ctx.precomputed = None  # type: ignore[attr-defined]
                scaled = precomputed
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
        n = hidden.shape[0]
        buffers = _Buffers(min(rows, n), weight, spec, need_dcap=True)
        folded = _fold_rows(spec, hidden.device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            h, y = hidden[start:stop], target[start:stop]
            x, dcap = _logits_chunk(h, weight, bias, spec, buffers, need_dcap=True)
            _softmax_(x)  # p; the same as exp(z - lse) with the saved lse, up to rounding
            c_p, c_y, c_beta = c_p_all[start:stop], c_y_all[start:stop], gl[start:stop]
            if folded:
                grads.add(start, h, _flush_(x), c_beta, buffers, _Rows(c_p, c_y, y))
            else:
                g = _logits_gradient_(x, dcap, y, c_p, c_y, c_beta, spec)
                grads.add(start, h, g, c_beta, buffers)
        del buffers
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
    exclude: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """Materialises the logits and applies ``ls.cross_entropy(..., impl="reference")``."""
    z = F.linear(hidden, weight, bias).to(spec.compute_dtype)
    if spec.softcap is not None:
        z = spec.softcap * torch.tanh(z / spec.softcap)
    problem = prepare(
        z, target, eps, style, prior, None, ignore_index, "none", False, False,
        exclude_classes=exclude,
    )  # fmt: skip
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
    exclude_classes: Sequence[int] | Tensor | None = None,
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
    * ``exclude_classes`` gives the listed classes no smoothing mass (V' = V - len(excluded)
      kept classes share it: eps/V' or eps/(V'-1)), as in :func:`labelsmooth.cross_entropy`;
    * plus :math:`\zeta\,\mathrm{lse}^2` with ``z_loss`` = :math:`\zeta` (PaLM).

    The logits are computed a chunk of rows at a time and never held whole, unless all of
    them fit :data:`DENSE_BYTES` (256 MiB), where one chunk is as fast and costs no more memory
    than the ``F.linear`` + cross-entropy it replaces (which holds them and their gradient); see
    :mod:`labelsmooth.kernels.linear` for the algorithm, the memory budget and the cost of
    each option (the smoothing term costs one matrix-vector product; softcap costs one extra
    pass over each chunk). Large logits (a row spread over hundreds) cost nothing extra:
    negligible probabilities are flushed to 0 before they can become subnormal numbers.

    Reductions follow PyTorch: ``"mean"`` divides by the number of non-ignored elements
    (``z_loss`` shares that denominator), ``"sum"``, ``"none"`` (one value per element, 0 where
    the target is ``ignore_index``). A ``"mean"`` over a batch whose targets are all ignored
    returns 0 with a zero gradient (PyTorch: nan). Class weights are not supported here
    (``weight`` is the projection matrix), and so neither is ``weight_mode``. Negative
    ``eps`` is generalised label smoothing: the loss is then unbounded below.

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
        exclude_classes: class indices that receive no smoothing mass (e.g. the padding
            token), as in :func:`labelsmooth.cross_entropy`; ``None`` for none.

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
    exclude = _checks.check_exclude_classes(exclude_classes, num_classes, style, eps)
    prior_t = _checks.check_prior(prior, num_classes, style, hidden.device, cd)
    _checks.check_prior_on_kept(prior_t, exclude)
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
        if exclude and style == "others" and eps != 0:
            _checks.check_excluded_labels(target, target != ignore_index, exclude)

    alpha, offset = smoothing_coefficients(
        eps, num_classes, style, prior_t, exclude, device=hidden.device, dtype=cd
    )
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
            hidden2d, weight, bias, flat, valid, eps, style, prior_t, ignore_index, spec, exclude
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

r"""Vocab-parallel label-smoothed cross-entropy: exact for any number of ranks.

In tensor (vocab) parallelism each rank of a process group holds a slice of the vocabulary: the
logits of the classes ``[o_r, o_r + V_r)`` where ``o_r = V_0 + ... + V_{r-1}`` (shards in rank
order, of any sizes, including unequal ones). The batch (``target``, the hidden states) is
replicated on every rank. The loss must be the loss of the concatenated logits.

Megatron-LM's ``vocab_parallel_cross_entropy(..., label_smoothing=eps)`` gets the smoothing term
wrong for more than one rank: it divides eps by the *local* shard size and averages the
log-probabilities over the *local* shard only (Megatron-LM issues 737 and 7464), so each rank
computes a different loss and its gradient is not the gradient of the single-device loss.
Here every per-row sum runs over the whole vocabulary:

With the smoothed target :math:`\tilde t = \alpha\,\mathrm{onehot}(y) + b` of
:func:`labelsmooth.smoothing_coefficients` for the *global* vocabulary size V (``"uniform"``:
:math:`\alpha = 1-\epsilon`, :math:`b_c = \epsilon/V` or :math:`\epsilon\pi_c`; ``"others"``:
:math:`\alpha = 1-\epsilon V/(V-1)`, :math:`b_c = \epsilon/(V-1)`), class weights w, and
:math:`\kappa_c = w_c b_c`, :math:`C = \sum_c \kappa_c`, a row's loss is

.. math::

    \ell = \alpha\, w_y (\mathrm{lse} - x_y) + \sum_c \kappa_c (\mathrm{lse} - x_c)
         = \alpha\, w_y (\log S - z_y) + C \log S - \sum_c \kappa_c z_c

with :math:`m = \max_c x_c`, :math:`z = x - m`, :math:`S = \sum_c e^{z_c}`,
:math:`\mathrm{lse} = m + \log S` — exactly :func:`labelsmooth.cross_entropy` on the
concatenated logits (a class with :math:`\kappa_c = 0` contributes nothing, as there). Its
gradient on rank r's shard is local: with :math:`p = e^{x - \mathrm{lse}}`,

.. math::

    \partial \ell / \partial x_c = (\alpha w_y + C)\, p_c - \alpha w_y [c = y] - \kappa_c ,

i.e. ``softmax_local * sum(w * t~) - (w * t~)_local``, scaled by the reduction.

Collectives per call (only ones that gloo and NCCL both support):

* forward: one ``all_gather`` of a small float64 vector per rank (84 values, 672 bytes: shard
  size, row count, a target checksum, the scalar arguments eps, style, ignore_index, reduction,
  return_nll, validate and weight_mode, a checksum of exclude_classes, an error flag and the
  start of the error message), then one host
  sync to read it. Every argument is checked *before* this collective and a rejection travels
  through it, so a bad argument on one rank raises on every rank (the others say which rank
  rejected what) instead of leaving them waiting in the next collective; and scalar arguments
  that differ between ranks (which would give each rank a different loss) raise ``ValueError``
  on every rank, naming the argument and each rank's value. Then one ``all_reduce(MAX)`` of the
  row maxima (M values) and one ``all_reduce(SUM)`` of four numbers per row (:math:`S`,
  :math:`\sum_c \kappa_c z_c`, :math:`z_y` and :math:`w_y` from the rank owning y, zero
  elsewhere); ``exclude_classes`` together with ``prior`` or ``weight`` adds one
  ``all_reduce(SUM)`` of two numbers (their sums over the kept classes), and
  ``weight_mode="sample"`` with ``weight`` one ``all_reduce(SUM)`` of w_y (M values);
* backward: none for :func:`vocab_parallel_cross_entropy`; one ``all_reduce(SUM)`` of the
  hidden-state gradient for :func:`vocab_parallel_linear_cross_entropy`.

Every rank must call the functions (and ``backward``) in the same order. Without a process
group (``group=None`` and ``torch.distributed`` not initialised) they run as a single rank, with
no collective at all.

First-order only: a backward with ``create_graph=True`` (double backward, e.g. a gradient
penalty) raises ``RuntimeError`` instead of returning a gradient without a graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from . import _checks
from .targets import smoothing_coefficients

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"]

# Layout of the float64 vector that every rank contributes to the one all_gather of a call:
# shard facts, the scalar arguments that must agree across ranks, and (from a rank that rejected
# its arguments, whose _OK is 0) the start of its error message as UTF-8 bytes.
_SHARD, _ROWS, _OK, _HAS_PRIOR, _HAS_WEIGHT = 0, 1, 2, 3, 4
_PRIOR_SUM, _WEIGHT_SUM, _WEIGHT_PRIOR_SUM, _TARGET_SUM, _TARGET_MIX, _DTYPE = 5, 6, 7, 8, 9, 10
_EPS, _STYLE, _IGNORE_INDEX, _REDUCTION, _RETURN_NLL, _VALIDATE = 11, 12, 13, 14, 15, 16
_EXCLUDE_COUNT, _EXCLUDE_MIX, _WEIGHT_MODE = 17, 18, 19
_MESSAGE = 20
_MESSAGE_BYTES = 512  # 64 float64 slots
_INFO_SIZE = _MESSAGE + _MESSAGE_BYTES // 8
_CHECKSUM_PERIOD = 1009
_INT64_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class _Comm:
    """The process group seen from this rank; ``world == 1`` never calls a collective."""

    group: object
    world: int
    rank: int

    def all_reduce(self, tensor: Tensor, op: str) -> Tensor:
        if self.world > 1:
            reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
            dist.all_reduce(tensor, op=reduce_op, group=self.group)
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        """(world, *tensor.shape): every rank's tensor (equal shapes), in rank order."""
        if self.world == 1:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor, group=self.group)
        return torch.stack(parts)


def _collective_device(comm: _Comm, *candidates: object) -> torch.device:
    """Where the checks' tensor must live: the first tensor argument's device, else (an argument
    that is not a tensor) the device the group's backend needs."""
    for candidate in candidates:
        if isinstance(candidate, Tensor):
            return candidate.device
    if comm.world > 1 and dist.get_backend(comm.group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _argument_info(
    eps: float,
    style: str,
    ignore_index: int,
    reduction: str,
    return_nll: bool,
    validate: bool,
    exclude: tuple[int, ...] | None = None,
    weight_mode: str = "pytorch",
) -> Tensor:
    """The check vector (on the CPU) with _OK set and the checked scalar arguments encoded.

    eps is a float64 (exact for a Python float); ``ignore_index`` is stored as the bits of an
    int64 (exact; an int beyond int64 matches no target and is clamped); the others as codes.
    """
    info = torch.zeros(_INFO_SIZE, dtype=torch.float64)
    info[_OK] = 1.0
    info[_EPS] = eps
    info[_STYLE] = _checks.STYLES.index(style)
    bits = torch.tensor([min(max(ignore_index, _INT64_RANGE[0]), _INT64_RANGE[1])])
    info[_IGNORE_INDEX : _IGNORE_INDEX + 1] = bits.view(torch.float64)
    info[_REDUCTION] = _checks.REDUCTIONS.index(reduction)
    info[_RETURN_NLL] = float(return_nll)
    info[_VALIDATE] = float(validate)
    info[_WEIGHT_MODE] = _checks.WEIGHT_MODES.index(weight_mode)
    if exclude:
        info[_EXCLUDE_COUNT] = len(exclude)
        info[_EXCLUDE_MIX] = float(
            sum((i % _CHECKSUM_PERIOD + 1) * c for i, c in enumerate(exclude))
        )
    return info


def _encode_message(text: str) -> Tensor:
    """``text`` as UTF-8 bytes in float64 slots: zero padded, cut to ``_MESSAGE_BYTES``."""
    data = text.encode("utf-8")
    if len(data) > _MESSAGE_BYTES:
        data = data[: _MESSAGE_BYTES - 3] + b"..."
    data = data.ljust(_MESSAGE_BYTES, b"\0")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(torch.float64).clone()


def _decode_message(slots: Tensor) -> str:
    data = bytes(slots.contiguous().view(torch.uint8).tolist()).rstrip(b"\0")
    return data.decode("utf-8", errors="ignore")  # a character cut in two is dropped


def _check_same_arguments(gathered: Tensor) -> None:
    """Every rank passed the same eps, style, ignore_index, reduction, return_nll, validate.

    ``gathered`` is the (world, _INFO_SIZE) table of the all_gather; all ranks see the same
    table, so all raise the same ``ValueError`` (naming the argument and each rank's value).
    """
    ignore = gathered[:, _IGNORE_INDEX].contiguous().view(torch.int64).tolist()
    columns = {
        "eps": gathered[:, _EPS].tolist(),
        "style": [repr(_checks.STYLES[int(c)]) for c in gathered[:, _STYLE].tolist()],
        "ignore_index": ignore,
        "reduction": [repr(_checks.REDUCTIONS[int(c)]) for c in gathered[:, _REDUCTION].tolist()],
        "return_nll": [bool(c) for c in gathered[:, _RETURN_NLL].tolist()],
        "validate": [bool(c) for c in gathered[:, _VALIDATE].tolist()],
        "weight_mode": [
            repr(_checks.WEIGHT_MODES[int(c)]) for c in gathered[:, _WEIGHT_MODE].tolist()
        ],
        "exclude_classes": [
            f"{int(n)} classes (checksum {m:.0f})"
            for n, m in zip(
                gathered[:, _EXCLUDE_COUNT].tolist(),
                gathered[:, _EXCLUDE_MIX].tolist(),
                strict=True,
            )
        ],
    }
    for name, values in columns.items():
        _checks.check_same_across_ranks(
            name, values, "a scalar argument of the vocab-parallel loss"
        )


def _comm(group: object) -> _Comm:
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return _Comm(None, 1, 0)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"group={group!r} was given but torch.distributed is not initialised; call "
            f"torch.distributed.init_process_group first (or pass group=None for one process)"
        )
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"this process is not a member of group={group!r}")
    return _Comm(group, world, rank)


def _refuse_create_graph() -> None:
    """Raises inside a custom backward run with ``create_graph=True`` (grad mode is then on).

    The hand-written backward is not itself differentiable (its second derivative would couple
    the shards of every rank), so its result would silently carry no graph and a gradient
    penalty built on it would be dropped without an error.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            "vocab_parallel_cross_entropy and vocab_parallel_linear_cross_entropy are "
            "first-order only: backward with create_graph=True (double backward, e.g. a "
            "gradient penalty) is not supported; for higher-order gradients gather the full "
            "logits and use labelsmooth.cross_entropy(..., impl='torch')"
        )


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row (loss, weighted nll, w_y) of the concatenated logits; backward is local.

    First-order only: a backward with ``create_graph=True`` raises (see `_refuse_create_graph`).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        logits: Tensor,
        target: Tensor,
        valid: Tensor,
        offset: int,
        alpha: float,
        kappa: float | Tensor,
        kappa_total: float,
        weight: Tensor | None,
        comm: _Comm,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor, Tensor]:
        x = logits.to(dtype)
        rows, shard = x.shape
        # 1. Global row maximum, for a stable log-sum-exp.
        if shard:
            local_max = x.amax(-1)
        else:
            local_max = torch.full((rows,), -torch.inf, dtype=dtype, device=x.device)
        row_max = comm.all_reduce(local_max, "max")
        # A row of -inf logits everywhere has no finite maximum; shift it by 0 instead.
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        z = x - row_max.unsqueeze(-1)
        # 2. One all-reduce of four numbers per row: S, sum_c kappa_c z_c, z_y, w_y.
        owned = valid & (target >= offset) & (target < offset + shard)
        local_index = (target - offset).clamp(0, max(shard - 1, 0))
        parts = torch.zeros((rows, 4), dtype=dtype, device=x.device)
        parts[:, 0] = z.exp().sum(-1)
        if isinstance(kappa, Tensor):
            # kappa_c = 0 contributes nothing, even where z_c = -inf (as in ls.cross_entropy).
            parts[:, 1] = torch.where(kappa == 0, 0.0, z * kappa).sum(-1)
        elif kappa != 0:
            parts[:, 1] = kappa * z.sum(-1)
        if shard:
            z_y = z.gather(-1, local_index.unsqueeze(-1)).squeeze(-1)
            parts[:, 2] = torch.where(owned, z_y, 0.0)
            w_y = 1.0 if weight is None else weight[local_index]
            parts[:, 3] = torch.where(owned, w_y, 0.0)
        total_sum_exp, kappa_z, z_y, w_y = comm.all_reduce(parts, "sum").unbind(-1)
        log_sum_exp = total_sum_exp.log()
        nll = torch.where(w_y == 0, 0.0, w_y * (log_sum_exp - z_y))
        loss = nll * alpha if alpha != 0 else torch.zeros_like(nll)
        if kappa_total != 0:
            loss = loss + kappa_total * log_sum_exp
        loss = loss - kappa_z
        ctx.save_for_backward(logits, row_max + log_sum_exp, local_index, owned, valid, w_y)
        ctx.kappa = kappa  # type: ignore[attr-defined]
        ctx.alpha = alpha  # type: ignore[attr-defined]
        ctx.kappa_total = kappa_total  # type: ignore[attr-defined]
        ctx.dtype = dtype  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(w_y)
        return loss, nll, w_y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_loss: Tensor,
        grad_nll: Tensor,
        _grad_w_y: Tensor,
    ) -> tuple[Tensor | None, ...]:
        _refuse_create_graph()
        logits, lse, local_index, owned, valid, w_y = ctx.saved_tensors  # type: ignore[attr-defined]
        alpha: float = ctx.alpha  # type: ignore[attr-defined]
        kappa: float | Tensor = ctx.kappa  # type: ignore[attr-defined]
        kappa_total: float = ctx.kappa_total  # type: ignore[attr-defined]
        dtype: torch.dtype = ctx.dtype  # type: ignore[attr-defined]
        grad_loss = torch.where(valid, grad_loss.to(dtype), 0.0)
        grad_nll = torch.where(valid, grad_nll.to(dtype), 0.0)
        probs = (logits.to(dtype) - lse.unsqueeze(-1)).exp()
        on_true = (grad_loss * alpha + grad_nll) * w_y
        grad = probs * (on_true + grad_loss * kappa_total).unsqueeze(-1)
        if logits.shape[-1]:
            grad = grad.scatter_add(
                -1, local_index.unsqueeze(-1), torch.where(owned, -on_true, 0.0).unsqueeze(-1)
            )
        if isinstance(kappa, Tensor) or kappa != 0:
            grad = grad - grad_loss.unsqueeze(-1) * kappa
        return (grad.to(logits.dtype), *([None] * 9))


class _CopyToVocabParallel(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the ranks (column-parallel input).

    The replicated hidden states feed every rank's shard of the projection, so their gradient
    is the sum of the ranks' partial gradients: Megatron-LM's
    ``copy_to_tensor_model_parallel_region``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, hidden: Tensor, comm: _Comm
    ) -> Tensor:
        ctx.comm = comm  # type: ignore[attr-defined]
        return hidden.view_as(hidden)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor, None]:
        _refuse_create_graph()  # the all_reduce below is not recorded by autograd
        comm: _Comm = ctx.comm  # type: ignore[attr-defined]
        if comm.world > 1:
            grad = comm.all_reduce(grad.contiguous().clone(), "sum")
        return grad, None


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    style: str = "uniform",
    prior: Tensor | Sequence[float] | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_nll: bool = False,
    group: object = None,
    validate: bool = True,
    exclude_classes: Sequence[int] | Tensor | None = None,
    weight_mode: str = "pytorch",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Label-smoothed cross-entropy of logits sharded along the vocabulary, exact on every rank.

    Rank r of ``group`` holds the logits of classes ``[o_r, o_r + V_r)``, shards in rank order
    (``o_r`` is the sum of the shard sizes of the ranks before it; unequal sizes are fine, and
    are found with one ``all_gather``). The result, on every rank, equals
    ``labelsmooth.cross_entropy(full_logits, target, eps, ...)`` of the concatenated logits
    (class dimension moved to 1), and ``backward`` gives each rank the gradient of its shard:
    :math:`(\alpha w_y + C)\,\mathrm{softmax}_{local} - (w \odot \tilde t)_{local}`, scaled by the
    reduction (see the module docstring for the math and the collectives). Unlike Megatron-LM's
    ``vocab_parallel_cross_entropy``, the smoothing is spread over the *global* vocabulary.

    Note the layout: the class dimension is the LAST one here (as in Megatron-LM), not 1 as in
    :func:`labelsmooth.cross_entropy`.

    Per element (hard label y, V the global vocabulary size, w the class weights):
    ``"uniform"``: :math:`(1-\epsilon) w_y (-\log p_y) + \frac{\epsilon}{V} \sum_c w_c (-\log p_c)`;
    ``"others"``: :math:`(1-\epsilon) w_y (-\log p_y) + \frac{\epsilon}{V-1} \sum_{c \ne y}
    w_c (-\log p_c)`; ``prior`` replaces :math:`\epsilon/V` by :math:`\epsilon\pi_c`.
    Reductions follow PyTorch: ``"mean"`` divides by :math:`\sum w_y` over the non-ignored
    elements (the weight of a target is read on the rank that owns it and shared by the
    all-reduce), except that an all-ignored ``"mean"`` is 0 with a zero gradient, not nan.
    Accumulates in float32 for bf16/fp16 logits (float64 stays float64). Negative eps is
    allowed (generalised label smoothing; the loss is then unbounded below).

    Every rank must pass the same ``target``, ``eps``, ``style``, ``ignore_index``,
    ``reduction``, ``return_nll``, ``validate``, ``exclude_classes`` and ``weight_mode``: one
    small ``all_gather`` checks it, and a difference raises ``ValueError`` on every rank. A
    rank whose arguments are rejected raises its own error and makes every other rank raise
    ``ValueError`` ("rank r rejected its arguments: ..."), so none is left waiting in a
    collective. There is no gradient for ``weight`` and ``prior``, and no double backward
    (``create_graph=True`` raises).

    Args:
        local_logits: this rank's logits, shape (..., V_r) — class dimension last; any
            floating dtype. V_r may differ between ranks (and may be 0).
        target: class indices into the GLOBAL vocabulary [0, V), shape (...) — the logits'
            shape without the last dimension; the same on every rank.
        eps: smoothing rate, checked against the global V: ``uniform``: eps <= 1;
            ``others``: eps <= (V-1)/V.
        style: ``"uniform"`` (eps/V on every class) or ``"others"`` (eps/(V-1) on the others).
        prior: this rank's shard of a length-V distribution (shape (V_r,), sharded like the
            logits; the shards together must sum to 1), ``"uniform"`` only.
        weight: this rank's shard of the length-V class weights (shape (V_r,)).
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        return_nll: also return the unsmoothed (weighted) negative log-likelihood, same
            reduction, computed in the same pass.
        group: the ``torch.distributed`` process group the vocabulary is sharded over
            (default: the world group; with ``torch.distributed`` not initialised, a single
            process).
        validate: check the class indices and (by a cheap checksum) that every rank has the
            same target; one host sync. The shard sizes are always gathered.
        exclude_classes: GLOBAL class indices in [0, V) that receive no smoothing mass (as
            in :func:`labelsmooth.cross_entropy`: the V' kept classes share eps, a prior is
            renormalised over them); the same on every rank (checked with the other arguments).
        weight_mode: ``"pytorch"`` (class weights on every term) or ``"sample"`` (each element's
            loss times w_y, the smoothed target unchanged), as in
            :func:`labelsmooth.cross_entropy`.

    Returns:
        The loss (float32 scalar for ``"mean"``/``"sum"``, float64 for float64 logits; for
        ``"none"`` a tensor shaped like ``target`` in the logits' dtype), identical on every
        rank, or ``(loss, nll)`` with ``return_nll=True``.

    Example (one process, so a single shard holding the whole vocabulary):
        >>> import labelsmooth as ls
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> vocab_parallel_cross_entropy(logits, target, eps=0.1)
        tensor(0.5047)
        >>> ls.cross_entropy(logits, target, eps=0.1)
        tensor(0.5047)
    """
    comm = _comm(group)
    local_error: Exception | None = None
    try:
        _checks.check_logits(local_logits, "local_logits")
        if local_logits.dim() == 0:
            raise ValueError("local_logits must have a last (class) dimension, got a 0-dim tensor")
        _checks.check_index_target(target, local_logits.shape[:-1], "local_logits")
    except Exception as err:  # reported through the checks' collective: see _vocab_parallel_loss
        local_error = err
    return _vocab_parallel_loss(
        local_logits if local_error is None else None,
        target,
        eps,
        style=style,
        prior=prior,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        return_nll=return_nll,
        validate=validate,
        exclude_classes=exclude_classes,
        weight_mode=weight_mode,
        comm=comm,
        device=_collective_device(comm, local_logits, target),
        dtype=local_logits.dtype if local_error is None else torch.float32,
        local_error=local_error,
    )


def vocab_parallel_linear_cross_entropy(
    hidden: Tensor,
    local_weight: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    local_bias: Tensor | None = None,
    style: str = "uniform",
    prior: Tensor | Sequence[float] | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    return_nll: bool = False,
    group: object = None,
    validate: bool = True,
    exclude_classes: Sequence[int] | Tensor | None = None,
    weight_mode: str = "pytorch",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Vocab-parallel output projection followed by :func:`vocab_parallel_cross_entropy`.

    The output layer ``logits = hidden @ W.T + b`` is column-parallel: rank r holds the rows
    ``local_weight = W[o_r : o_r + V_r]`` (shape (V_r, H)) and ``local_bias = b[o_r : o_r + V_r]``,
    and computes its local logits ``hidden @ local_weight.T + local_bias`` of shape (..., V_r);
    the loss is then :func:`vocab_parallel_cross_entropy` of those. The result equals
    ``labelsmooth.cross_entropy(hidden @ W.T + b, target, eps, ...)`` (class dimension moved to
    1) on every rank, and so do the gradients:

    * ``local_weight`` and ``local_bias`` get the gradient of their shard (local);
    * ``hidden`` is replicated (the same on every rank) and feeds every shard, so its gradient
      is the SUM over the ranks of the partial gradients ``grad_logits_local @ local_weight``.
      This function provides that itself, as Megatron-LM's column-parallel linear does: the
      hidden states pass through an autograd function that is the identity forward and
      ``all_reduce(SUM)``\ s the gradient in backward. So every rank must call ``backward``,
      and ``hidden.grad`` (or the gradient flowing further back) is the full gradient on
      every rank — do not all-reduce it again.

    The (..., V_r) logits of the shard are materialised (the memory of one rank's slice).

    Args:
        hidden: (..., H) hidden states, the same on every rank; floating.
        local_weight: (V_r, H) this rank's rows of the output projection.
        target: (...) class indices into the global vocabulary, the same on every rank.
        eps: smoothing rate (range checked against the global vocabulary size).
        local_bias: (V_r,) this rank's slice of the output bias, or ``None``.
        style, prior, weight, ignore_index, reduction, return_nll, group, validate,
        exclude_classes, weight_mode: as in
            :func:`vocab_parallel_cross_entropy` (``prior`` and the class weights ``weight``
            are this rank's shards, shape (V_r,)).

    Returns:
        As :func:`vocab_parallel_cross_entropy`.

    Example (one process):
        >>> import labelsmooth as ls
        >>> hidden, w = torch.randn(4, 8), torch.randn(5, 8)
        >>> target = torch.tensor([0, 4, 2, 1])
        >>> loss = vocab_parallel_linear_cross_entropy(hidden, w, target, eps=0.1)
        >>> torch.allclose(loss, ls.cross_entropy(hidden @ w.T, target, eps=0.1))
        True
    """
    comm = _comm(group)
    local_error: Exception | None = None
    local_logits: Tensor | None = None
    try:
        _checks.check_logits(hidden, "hidden")
        if hidden.dim() == 0:
            raise ValueError("hidden must have a last (feature) dimension, got a 0-dim tensor")
        _checks.check_logits(local_weight, "local_weight")
        if local_weight.dim() != 2 or local_weight.shape[1] != hidden.shape[-1]:
            raise ValueError(
                f"local_weight must have shape (V_local, {hidden.shape[-1]}) (rows of the "
                f"output projection; hidden has {hidden.shape[-1]} features), "
                f"got shape {tuple(local_weight.shape)}"
            )
        if local_weight.dtype != hidden.dtype:
            raise TypeError(
                f"local_weight must have the dtype of hidden ({hidden.dtype}), "
                f"got dtype={local_weight.dtype}"
            )
        if local_bias is not None:
            _checks.check_logits(local_bias, "local_bias")
            if tuple(local_bias.shape) != (local_weight.shape[0],):
                raise ValueError(
                    f"local_bias must have shape ({local_weight.shape[0]},) (one entry per row "
                    f"of local_weight), got shape {tuple(local_bias.shape)}"
                )
        _checks.check_index_target(target, hidden.shape[:-1], "hidden")
        local_logits = F.linear(_CopyToVocabParallel.apply(hidden, comm), local_weight, local_bias)
    except Exception as err:  # reported through the checks' collective: see _vocab_parallel_loss
        local_error, local_logits = err, None
    return _vocab_parallel_loss(
        local_logits,
        target,
        eps,
        style=style,
        prior=prior,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        return_nll=return_nll,
        validate=validate,
        exclude_classes=exclude_classes,
        weight_mode=weight_mode,
        comm=comm,
        device=_collective_device(comm, hidden, target),
        dtype=torch.float32 if local_logits is None else local_logits.dtype,
        local_error=local_error,
    )


def _vocab_parallel_loss(
    local_logits: Tensor | None,
    target: Tensor,
    eps: object,
    *,
    style: object,
    prior: object,
    weight: object,
    ignore_index: object,
    reduction: object,
    return_nll: object,
    validate: object,
    exclude_classes: object,
    weight_mode: object,
    comm: _Comm,
    device: torch.device,
    dtype: torch.dtype,
    local_error: Exception | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Checks (consistently on every rank), gathers the shard sizes and runs the loss.

    ``local_logits`` is ``None`` when this rank already rejected its arguments
    (``local_error``); it still joins the all_gather so that every rank raises.
    """
    # Every argument is checked before the one collective of the checks, and a rejection is
    # sent through it (error flag and message) instead of raised at once: the rank that rejected
    # its arguments still joins the all_gather, so every rank raises and none is left waiting in
    # a later collective. eps is checked against the global vocabulary size after the gather.
    prior_t = weight_t = None
    exclude: tuple[int, ...] | None = None
    if local_error is None:
        try:
            _checks.check_index_dtype(target)
            style = _checks.check_style(style)
            reduction = _checks.check_reduction(reduction)
            return_nll = _checks.check_flag("return_nll", return_nll)
            validate = _checks.check_flag("validate", validate)
            ignore_index = _checks.check_int("ignore_index", ignore_index)
            eps = _checks.check_real("eps", eps)
            weight_mode = _checks.check_weight_mode(weight_mode)
            # Global class indices; their range is checked once V is known (after the gather).
            exclude = _checks.check_exclude_classes(exclude_classes, None, style, eps)
            assert local_logits is not None
            shard = local_logits.shape[-1]
            compute = _checks.compute_dtype(dtype)
            prior_t = _checks.check_prior_shard(prior, shard, comm.rank, style, device, compute)
            weight_t = _checks.check_shard_vector(
                "weight", weight, shard, comm.rank, device, compute
            )
        except Exception as err:  # any local failure, not only bad values, must reach the others
            local_error = err
    if local_error is None:
        info = _argument_info(
            eps, style, ignore_index, reduction, return_nll, validate, exclude, weight_mode
        )
        info[_SHARD] = shard
        info[_ROWS] = target.numel()
        info[_HAS_PRIOR] = float(prior is not None)
        info[_HAS_WEIGHT] = float(weight is not None)
        info[_DTYPE] = 64.0 if compute == torch.float64 else 32.0
        info = info.to(device)
        if prior_t is not None:
            info[_PRIOR_SUM] = prior_t.to(torch.float64).sum()
        if weight_t is not None:
            info[_WEIGHT_SUM] = weight_t.to(torch.float64).sum()
            if prior_t is not None:
                info[_WEIGHT_PRIOR_SUM] = (weight_t.to(torch.float64) * prior_t).sum()
        if validate and target.numel():
            flat = target.reshape(-1).to(torch.int64)
            mix = torch.arange(flat.numel(), device=device) % _CHECKSUM_PERIOD + 1
            info[_TARGET_SUM] = flat.sum().to(torch.float64)
            info[_TARGET_MIX] = (flat * mix).sum().to(torch.float64)
    elif comm.world == 1:
        raise local_error  # nobody to tell
    else:
        info = torch.zeros(_INFO_SIZE, dtype=torch.float64)
        info[_MESSAGE:] = _encode_message(f"{type(local_error).__name__}: {local_error}")
        info = info.to(device)  # _OK stays 0: this rank rejected its arguments
    gathered = comm.all_gather(info).cpu()  # the one host sync of the checks
    table = gathered.tolist()

    if local_error is not None:
        raise local_error
    rejected = [r for r, row in enumerate(table) if row[_OK] == 0]
    if rejected:
        reasons = "; ".join(
            f"rank {r} rejected its arguments: {_decode_message(gathered[r, _MESSAGE:])}"
            for r in rejected
        )
        raise ValueError(f"{reasons} (every rank raises, so that none waits in a collective)")
    _check_same_arguments(gathered)
    assert local_logits is not None and isinstance(style, str) and isinstance(reduction, str)
    assert isinstance(ignore_index, int)
    column = [[row[i] for row in table] for i in range(_INFO_SIZE)]
    _checks.check_same_across_ranks(
        "target", [int(n) for n in column[_ROWS]], "number of elements per rank"
    )
    _checks.check_same_across_ranks(
        "local_logits dtype", [f"float{int(d)}" for d in column[_DTYPE]], "accumulation dtype"
    )
    _checks.check_same_across_ranks(
        "prior", ["given" if h else "None" for h in column[_HAS_PRIOR]], "given or not"
    )
    _checks.check_same_across_ranks(
        "weight", ["given" if h else "None" for h in column[_HAS_WEIGHT]], "given or not"
    )
    if validate:
        _checks.check_same_across_ranks(
            "target",
            [
                f"checksum ({s:.0f}, {m:.0f})"
                for s, m in zip(column[_TARGET_SUM], column[_TARGET_MIX], strict=True)
            ],
            "the batch is replicated across the vocab-parallel ranks",
        )
    sizes = [int(s) for s in column[_SHARD]]
    num_classes = sum(sizes)
    if num_classes < 1:
        raise ValueError(f"the vocabulary must have at least one class, got shard sizes {sizes}")
    eps = _checks.check_eps(eps, num_classes, style)
    exclude = _checks.check_exclude_classes(exclude, num_classes, style, eps)
    if prior_t is not None:
        _checks.check_prior_total(sum(column[_PRIOR_SUM]))
    if validate:
        _checks.check_class_indices(target, num_classes, ignore_index)
        if exclude and style == "others" and eps != 0:
            _checks.check_excluded_labels(target, target != ignore_index, exclude)

    start = sum(sizes[: comm.rank])
    # weight_mode="sample": the rows are computed unweighted and multiplied by w_y below.
    sample = weight_mode == "sample" and weight_t is not None
    class_weight = None if sample else weight_t
    # kappa_c = w_c * b_c on this shard, and its total C over the vocabulary.
    kappa: float | Tensor
    if exclude:
        alpha, kappa, kappa_total = _excluded_kappa(
            eps, style, num_classes, exclude, start, shard, prior_t, class_weight, comm, compute,
            device,
        )  # fmt: skip
    else:
        alpha, offset = smoothing_coefficients(eps, num_classes, style, prior_t)
        if prior_t is not None:
            kappa = offset if class_weight is None else offset * class_weight
            total = sum(column[_PRIOR_SUM if class_weight is None else _WEIGHT_PRIOR_SUM])
            kappa_total = eps * total
        else:
            assert not isinstance(offset, Tensor)
            kappa = offset if class_weight is None else offset * class_weight
            kappa_total = offset * (
                num_classes if class_weight is None else sum(column[_WEIGHT_SUM])
            )

    flat_target = target.reshape(-1).to(torch.int64)
    valid = flat_target != ignore_index
    rows = flat_target.masked_fill(~valid, 0)
    loss, nll, w_y = _VocabParallelCrossEntropy.apply(
        local_logits.reshape(target.numel(), shard),
        rows,
        valid,
        start,
        alpha,
        kappa,
        kappa_total,
        class_weight,
        comm,
        compute,
    )
    if sample:
        assert weight_t is not None
        owned = valid & (rows >= start) & (rows < start + shard)
        if shard:
            picked = weight_t[(rows - start).clamp(0, shard - 1)]
            w_y = torch.where(owned, picked, 0.0)
        else:
            w_y = torch.zeros(rows.shape, dtype=compute, device=rows.device)
        w_y = comm.all_reduce(w_y.contiguous(), "sum")
        loss = torch.where(w_y == 0, 0.0, loss * w_y)
        nll = torch.where(w_y == 0, 0.0, nll * w_y)
    denominator = torch.where(valid, w_y, 0.0).sum() if weight_t is not None else valid.sum()
    reduced = _reduce(loss, valid, denominator, reduction, target.shape, dtype)
    if not return_nll:
        return reduced
    return reduced, _reduce(nll, valid, denominator, reduction, target.shape, dtype)


def _excluded_kappa(
    eps: float,
    style: str,
    num_classes: int,
    exclude: tuple[int, ...],
    start: int,
    shard: int,
    prior: Tensor | None,
    weight: Tensor | None,
    comm: _Comm,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[float, Tensor, float]:
    """``(alpha, kappa, C)`` with ``exclude_classes`` (global indices): this shard's
    ``kappa_c = w_c b_c`` (0 on the excluded classes) and its total over the vocabulary.

    ``b`` is :func:`smoothing_coefficients`'s offset with ``exclude`` (a prior renormalised over
    the kept classes); the sums over the kept classes that a prior or weights need are
    all-reduced (one collective of two numbers).
    """
    keep = torch.ones(shard, dtype=dtype, device=device)
    local = [c - start for c in exclude if start <= c < start + shard]
    if local:
        keep[local] = 0.0
    kept = num_classes - len(exclude)
    if style == "uniform":
        alpha, share = 1.0 - eps, eps / kept
    elif eps == 0:
        alpha, share = 1.0, 0.0
    else:
        alpha, share = 1.0 - eps * kept / (kept - 1), eps / (kept - 1)
    if prior is None and weight is None:
        return alpha, keep * share, share * kept
    mass = keep if prior is None else prior * keep
    weighted = mass if weight is None else mass * weight
    sums = torch.stack([mass.sum(), weighted.sum()]).to(torch.float64)
    kept_mass, kept_weighted = comm.all_reduce(sums, "sum").tolist()
    if prior is None:
        return alpha, weighted * share, share * kept_weighted
    if not kept_mass > 0:
        raise ValueError(
            f"prior must put some mass on the classes not in exclude_classes={list(exclude)} "
            f"(it is renormalised over them), got 0 over all shards"
        )
    return alpha, weighted * (eps / kept_mass), eps * kept_weighted / kept_mass


def _reduce(
    values: Tensor,
    valid: Tensor,
    denominator: Tensor,
    reduction: str,
    shape: torch.Size,
    input_dtype: torch.dtype,
) -> Tensor:
    """PyTorch's reductions; ignored elements are 0 and not counted; empty mean -> 0."""
    values = torch.where(valid, values, 0.0)
    if reduction == "none":
        return values.reshape(shape).to(input_dtype)
    total = values.sum()
    if reduction == "sum":
        return total
    denominator = denominator.to(total.dtype)
    empty = denominator == 0
    return torch.where(empty, 0.0, total / torch.where(empty, 1.0, denominator))

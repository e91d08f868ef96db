r"""Label-smoothed losses with the argument names and conventions of ``torch.nn.functional``.

Swapping ``F.cross_entropy(x, y, label_smoothing=0.1)`` for ``ls.cross_entropy(x, y, 0.1)`` is a
one-word change and gives the same loss and gradient (see :func:`cross_entropy`).

Every loss checks its arguments through :mod:`labelsmooth._checks` before any work, and
accumulates in float32 whatever the input dtype (float64 stays float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks, kernels
from .kernels.linear import linear_cross_entropy
from .targets import smooth_binary, smooth_labels, smoothing_coefficients

__all__ = [
    "IMPLS",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]


@dataclass(frozen=True)
class CrossEntropyProblem:
    """A checked cross-entropy call, flattened to rows: what every implementation receives.

    ``logits`` is (M, K) with the class dimension last, in the caller's dtype. For hard labels
    ``target`` is (M,) int64 with ignored entries replaced by 0 and ``valid`` marks the rest;
    for probability targets ``target`` is (M, K) and ``valid`` is ``None``. ``prior`` and
    ``weight`` are (K,) in ``compute_dtype``. ``z_loss`` (0 = off), ``softcap`` (None = off)
    and ``inplace`` are the LLM extras of :func:`cross_entropy`.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor | None
    out_shape: torch.Size
    num_classes: int
    eps: float
    style: str
    prior: Tensor | None
    weight: Tensor | None
    reduction: str
    kl: bool
    compute_dtype: torch.dtype
    z_loss: float = 0.0
    softcap: float | None = None
    inplace: bool = False

    @property
    def soft(self) -> bool:
        return self.valid is None


# An implementation maps a problem to per-row (loss, nll) in compute_dtype; nll may be None when
# it is not asked for. Rows of ignored targets may hold anything: the caller zeroes them.
Implementation = Callable[[CrossEntropyProblem, bool], tuple[Tensor, Tensor | None]]


def _scale(coefficient: float | Tensor, values: Tensor) -> Tensor:
    """coefficient * values with 0 * inf := 0 (a zero-mass class contributes nothing)."""
    if isinstance(coefficient, Tensor):
        return torch.where(coefficient == 0, 0.0, coefficient * values)
    if coefficient == 0:
        return torch.zeros_like(values)
    return coefficient * values


def _dense_cross_entropy(
    log_probs: Tensor, target: Tensor, weight: Tensor | None, kl: bool
) -> Tensor:
    """Per row: sum_c w_c t_c (log t_c - log p_c) with kl, else -sum_c w_c t_c log p_c."""
    mass = target if weight is None else target * weight
    terms = _scale(mass, log_probs)
    if kl:
        entropy_terms = torch.xlogy(target, target)
        terms = terms - (entropy_terms if weight is None else entropy_terms * weight)
    return -terms.sum(-1)


def _capped_logits(problem: CrossEntropyProblem) -> Tensor:
    """Logits in compute dtype, soft-capped to ``softcap * tanh(logits / softcap)`` if asked."""
    logits = problem.logits.to(problem.compute_dtype)
    if problem.softcap is not None:
        logits = problem.softcap * torch.tanh(logits / problem.softcap)
    return logits


def _add_z_loss(loss: Tensor, logits: Tensor, problem: CrossEntropyProblem) -> Tensor:
    """loss + z_loss * logsumexp(logits)^2 (PaLM's auxiliary z-loss), per row."""
    if not problem.z_loss:
        return loss
    return loss + problem.z_loss * torch.logsumexp(logits, dim=-1).square()


def _reference(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    """The oracle: builds the dense smoothed target and applies the definition literally."""
    logits = _capped_logits(problem)
    log_probs = F.log_softmax(logits, dim=-1)
    if problem.soft:
        plain = problem.target.to(problem.compute_dtype)
    else:
        plain = F.one_hot(problem.target, problem.num_classes).to(problem.compute_dtype)
    smoothed = smooth_labels(
        plain, problem.num_classes, problem.eps, style=problem.style, prior=problem.prior
    )
    loss = _dense_cross_entropy(log_probs, smoothed, problem.weight, problem.kl)
    nll = _dense_cross_entropy(log_probs, plain, problem.weight, False) if need_nll else None
    return _add_z_loss(loss, logits, problem), nll


def _closed_form(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    r"""Hard labels without the dense target.

    With smoothed target alpha*onehot(y) + b (see :func:`smoothing_coefficients`):
    ``CE = alpha w_y nll_y + sum_c w_c b_c (-log p_c)`` and
    ``KL = CE + sum_c w_c xlogy(b_c) + w_y [xlogy(alpha + b_y) - xlogy(b_y)]``.
    Probability targets are dense already and take the reference route.
    """
    if problem.soft:
        return _reference(problem, need_nll)
    logits = _capped_logits(problem)
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(1, problem.target.unsqueeze(1)).squeeze(1)
    weight = problem.weight
    if weight is not None:
        nll = _scale(weight[problem.target], nll)
    if problem.eps == 0:
        return _add_z_loss(nll, logits, problem), nll
    alpha, offset = smoothing_coefficients(
        problem.eps, problem.num_classes, problem.style, problem.prior
    )
    loss = _scale(alpha, nll)
    smoothing = offset if weight is None else offset * weight
    if isinstance(smoothing, Tensor):
        # logp = -inf on a class of zero target mass must add 0, not 0 * -inf = nan.
        if bool((smoothing == 0).any()):
            log_probs = torch.where(smoothing == 0, 0.0, log_probs)
        loss = loss - log_probs @ smoothing
    else:
        loss = loss - smoothing * log_probs.sum(-1)
    if problem.kl:
        dtype, device = problem.compute_dtype, log_probs.device
        off = torch.as_tensor(offset, dtype=dtype, device=device).expand(problem.num_classes)
        off_entropy = torch.xlogy(off, off)
        on_minus_off = torch.xlogy(alpha + off, alpha + off) - off_entropy
        if weight is not None:
            off_entropy = off_entropy * weight
            on_minus_off = on_minus_off * weight
        loss = loss + off_entropy.sum() + on_minus_off[problem.target]
    return _add_z_loss(loss, logits, problem), nll


# Registry behind `impl=`: the dense oracle, the closed form and the fused kernels
# (labelsmooth.kernels: "chunked" eager torch, "compiled" C++ for CPU, "triton" for CUDA).
IMPLS: dict[str, Implementation] = {
    "reference": _reference,
    "torch": _closed_form,
    "chunked": kernels.chunked,
    "compiled": kernels.compiled,
    "triton": kernels.triton,
}


def auto_impl(problem: CrossEntropyProblem) -> str:
    """The name ``impl="auto"`` picks for a checked problem (see :func:`cross_entropy`)."""
    logits = problem.logits
    if getattr(torch.compiler, "is_compiling", lambda: False)():
        return "torch"  # traceable by torch.compile; the kernels would break the graph
    if problem.soft or logits.dtype == torch.float64:
        return "torch"
    if logits.numel() < kernels.AUTO_MIN_ELEMENTS:
        return "torch"
    # The Triton kernel passes its tests under TRITON_INTERPRET=1 but has not yet been compiled
    # and measured on a GPU, so "auto" uses the chunked kernel on CUDA; impl="triton" opts in.
    if logits.device.type == "cpu" and kernels.compiled_available():
        return "compiled"
    return "chunked"


def _auto(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    return IMPLS[auto_impl(problem)](problem, need_nll)


def _resolve_impl(impl: object) -> Implementation:
    names = ("auto", *IMPLS)
    _checks.check_choice("impl", impl, names)
    if impl == "auto":
        return _auto
    return IMPLS[impl]  # type: ignore[index]


def _prepare(
    input: Tensor,
    target: Tensor,
    eps: float,
    style: str,
    prior: Tensor | Sequence[float] | None,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    kl: bool,
    validate: bool,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
) -> CrossEntropyProblem:
    input = _checks.check_logits(input)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-dim tensor")
    style = _checks.check_style(style)
    reduction = _checks.check_reduction(reduction)
    kl = _checks.check_flag("kl", kl)
    validate = _checks.check_flag("validate", validate)
    z_loss = _checks.check_z_loss(z_loss)
    softcap = _checks.check_softcap(softcap)
    inplace = _checks.check_flag("inplace", inplace)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    if num_classes < 1:
        raise ValueError(f"input must have at least one class, got shape {tuple(input.shape)}")
    eps = _checks.check_eps(eps, num_classes, style, kl=kl)
    index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    soft = target.shape == input.shape
    if soft and not target.is_floating_point():
        raise TypeError(
            f"target has the shape of input, so it is taken as class probabilities and must be "
            f"floating point, got dtype={target.dtype}"
        )
    if not soft:
        if target.is_floating_point():
            raise TypeError(
                f"target must hold integer class indices (or be class probabilities of shape "
                f"{tuple(input.shape)}), got dtype={target.dtype} with shape {tuple(target.shape)}"
            )
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"target must hold integer class indices, got dtype={target.dtype}")
        if target.shape != index_shape:
            raise ValueError(
                f"target must have shape {tuple(index_shape)} for input of shape "
                f"{tuple(input.shape)} (class dimension {class_dim}), "
                f"got shape {tuple(target.shape)}"
            )
    elif ignore_index >= 0:
        raise ValueError(
            f"ignore_index is not supported for probability targets (it must be negative), "
            f"got ignore_index={ignore_index}"
        )
    dtype = _checks.compute_dtype(input.dtype)
    prior_t = _checks.check_prior(prior, num_classes, style, input.device, dtype)
    weight_t = _checks.check_weight(weight, num_classes, input.device, dtype)
    if validate and not soft:
        _checks.check_class_indices(target, num_classes, ignore_index)

    logits = input.movedim(class_dim, -1).reshape(-1, num_classes)
    if soft:
        rows = target.movedim(class_dim, -1).reshape(-1, num_classes)
        valid = None
    else:
        flat = target.reshape(-1).long()
        valid = flat != ignore_index
        rows = flat.masked_fill(~valid, 0)
    return CrossEntropyProblem(
        logits=logits,
        target=rows,
        valid=valid,
        out_shape=index_shape,
        num_classes=num_classes,
        eps=eps,
        style=style,
        prior=prior_t,
        weight=weight_t,
        reduction=reduction,
        kl=kl,
        compute_dtype=dtype,
        z_loss=z_loss,
        softcap=softcap,
        inplace=inplace,
    )


def _reduce(values: Tensor, problem: CrossEntropyProblem, input_dtype: torch.dtype) -> Tensor:
    """Applies the reduction; rows of ignored targets count as 0 and are not averaged."""
    if problem.valid is not None:
        values = torch.where(problem.valid, values, 0.0)
    if problem.reduction == "none":
        return values.reshape(problem.out_shape).to(input_dtype)
    total = values.sum()
    if problem.reduction == "sum":
        return total
    if problem.soft:
        # PyTorch's rule for probability targets: divide by the number of elements.
        count = values.numel()
        return total / count if count else total * 0.0
    denominator = kernels.fused.mean_denominator(problem)
    # An all-ignored batch gives 0 with a zero gradient rather than PyTorch's 0/0 = nan.
    empty = denominator == 0
    return torch.where(empty, 0.0, total / torch.where(empty, 1.0, denominator))


def cross_entropy(
    input: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    style: str = "uniform",
    prior: Tensor | Sequence[float] | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    kl: bool = False,
    return_nll: bool = False,
    impl: str = "auto",
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Label-smoothed cross-entropy between logits and class indices or class probabilities.

    Per element, with :math:`p = \mathrm{softmax}(x)`, true class y, class weights w (all 1
    without ``weight``) and K classes:

    * ``style="uniform"``: :math:`(1-\epsilon) w_y (-\log p_y) + \frac{\epsilon}{K}
      \sum_c w_c (-\log p_c)` — exactly ``F.cross_entropy(..., label_smoothing=eps)``;
    * ``style="others"``: :math:`(1-\epsilon) w_y (-\log p_y) + \frac{\epsilon}{K-1}
      \sum_{c \ne y} w_c (-\log p_c)` — fairseq's ``label_smoothed_nll_loss``;
    * ``prior`` (uniform only) replaces :math:`\epsilon/K` by :math:`\epsilon\,\pi_c`.

    That is :math:`\sum_c w_c \tilde t_c (-\log p_c)` with the smoothed target
    :math:`\tilde t` of :func:`labelsmooth.smooth_labels`; for hard labels it is computed in
    closed form, without building the dense target. Probability targets (same shape as
    ``input``, e.g. mixup) are smoothed the same way.

    Reductions follow PyTorch: ``"mean"`` divides by :math:`\sum w_y` over non-ignored
    elements (by the number of elements for probability targets); ``"sum"``; ``"none"``
    returns one value per element (0 where the target is ``ignore_index``). One deliberate
    difference: a ``"mean"`` whose denominator is 0 (every target ignored) returns 0 with a
    zero gradient, where PyTorch returns nan.

    Negative ``eps`` is generalised label smoothing (Wei et al. 2022): the loss is then
    unbounded below and a minimum need not exist; it is not allowed with ``kl=True``.

    LLM extras: ``softcap=s`` replaces the logits by :math:`s \tanh(x / s)` before everything
    else (Gemma 2; ``nll`` is then that of the capped logits too); ``z_loss=λ`` adds
    :math:`\lambda\,(\log \sum_c e^{x_c})^2` to the loss of every non-ignored element
    (PaLM), unweighted by ``weight`` and not part of ``nll``; it is reduced with the loss,
    so ``"mean"`` divides it by the same denominator (:math:`\sum w_y`, the element count
    without weights).

    Implementations (``impl``), all equal up to float rounding (each is tested against
    ``"reference"``):

    * ``"reference"``: the dense smoothed target and the definition, through autograd.
    * ``"torch"``: the closed form (one ``log_softmax``, no dense target), through autograd;
      supports double backward.
    * ``"chunked"``: the fused kernel in eager torch on any device: forward computes the loss
      *and* the gradient, a chunk of rows at a time, and keeps only the gradient (M, K) in the
      logits' dtype; backward scales it by the incoming gradient in place. First-order only.
    * ``"compiled"``: the same fused kernel as a C++ library (built with the system compiler
      at first use, cached on disk), CPU only; probability targets take ``"chunked"``.
    * ``"triton"``: the same fused kernel in Triton, CUDA only (or ``TRITON_INTERPRET=1``),
      for float32/bfloat16/float16; probability targets and float64 take ``"chunked"``.
    * ``"auto"``: ``"torch"`` for probability targets, float64, inputs with fewer than
      ``labelsmooth.kernels.AUTO_MIN_ELEMENTS`` logits (the kernels' set-up would not pay
      off) and inside ``torch.compile``; otherwise ``"compiled"`` on CPU when the C++ kernel
      builds, else ``"chunked"`` (CUDA included: the Triton kernel is tested under the
      interpreter but not yet measured on a GPU, so it is opt-in with ``impl="triton"``).

    ``inplace=True`` allows the fused kernels to write the gradient into the logits' own
    memory (as Liger-Kernel does), so that no (M, K) buffer is allocated at all. The values of
    ``input`` are then destroyed and must not be used again; autograd's version counter of
    ``input`` is bumped, so a graph that saved ``input`` for something else raises instead of
    returning a wrong gradient. It takes effect only where the logits require a gradient, the
    class dimension is last and contiguous and the implementation is a fused one; it is
    ignored otherwise. With ``return_nll=True`` and ``inplace=True`` only ``loss`` may be
    backpropagated (use ``nll.detach()``). On a leaf tensor (e.g. logits made with
    ``requires_grad=True`` in a benchmark) its ``.grad`` then aliases its own data: never use
    ``inplace=True`` on a tensor an optimizer updates.

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (integer), or class
            probabilities with the shape of ``input`` (floating).
        eps: smoothing rate. ``uniform``: eps <= 1; ``others``: eps <= (K-1)/K.
        style: ``"uniform"`` (eps/K on every class) or ``"others"`` (eps/(K-1) on the others).
        prior: length-K distribution for ``"uniform"`` smoothing towards a class prior.
        weight: length-K class weights, as in ``F.cross_entropy``.
        ignore_index: target value whose elements contribute nothing (index targets only; it
            may be a valid class, as fairseq's padding index is).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        kl: return :math:`\sum_c w_c \tilde t_c (\log \tilde t_c - \log p_c)`, the KL
            divergence to the smoothed target (NMT toolkits' ``KLDivLoss`` criterion): zero
            at the optimum, same gradient.
        return_nll: also return the unsmoothed loss (``eps=0``, same weights and reduction),
            computed in the same pass, e.g. for perplexity.
        impl: ``"auto"`` (the fastest correct path for the device and size, see above),
            ``"torch"``, ``"reference"``, ``"chunked"``, ``"compiled"`` or ``"triton"``.
        z_loss: coefficient λ >= 0 of the z-loss; 0 switches it off.
        softcap: ``None`` or s > 0, the soft-cap of the logits.
        inplace: allow the fused kernels to overwrite ``input`` with the gradient.
        validate: check that class indices are in range (one host sync). Turn off for speed
            once the data pipeline is trusted.

    Returns:
        The loss (float32 scalar for ``"mean"``/``"sum"``, float64 for float64 input; for
        ``"none"`` a tensor of the target's batch shape in the input's dtype), or
        ``(loss, nll)`` with ``return_nll=True``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> cross_entropy(logits, target, eps=0.1)
        tensor(0.5047)
        >>> F.cross_entropy(logits, target, label_smoothing=0.1)
        tensor(0.5047)
        >>> cross_entropy(logits, target, eps=0.1, style="others")
        tensor(0.5589)
    """
    problem = _prepare(
        input,
        target,
        eps,
        style,
        prior,
        weight,
        ignore_index,
        reduction,
        kl,
        validate,
        z_loss=z_loss,
        softcap=softcap,
        inplace=inplace,
    )
    return_nll = _checks.check_flag("return_nll", return_nll)
    implementation = _resolve_impl(impl)
    loss, nll = implementation(problem, return_nll)
    reduced = _reduce(loss, problem, input.dtype)
    if not return_nll:
        return reduced
    assert nll is not None
    return reduced, _reduce(nll, problem, input.dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    style: str = "uniform",
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Binary / multi-label cross-entropy on logits with smoothed targets.

    The targets ``t`` in [0, 1] are smoothed by :func:`labelsmooth.smooth_binary` —
    ``"uniform"``: :math:`t(1-\epsilon) + \epsilon/2` (Keras); ``"others"``:
    :math:`t(1-2\epsilon) + \epsilon` (1 -> 1-eps, 0 -> eps) — and the loss is then exactly
    ``F.binary_cross_entropy_with_logits(input, smoothed, weight, pos_weight=pos_weight,
    reduction=reduction)``, computed in float32 (float64 stays float64).

    Args:
        input: logits of any shape.
        target: same shape as ``input``; floating in [0, 1], or integer/bool 0/1 labels.
        eps: ``uniform``: eps <= 1; ``others``: eps <= 0.5. Negative eps sharpens the targets
            beyond {0, 1} (generalised label smoothing); the loss is then unbounded below.
        style: ``"uniform"`` or ``"others"``.
        weight: rescaling weight broadcastable to ``input``, as in PyTorch.
        pos_weight: weight of positive examples, broadcastable along the last dimension.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Example:
        >>> logits = torch.tensor([3.0, -2.0])
        >>> binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0]), 0.1)
        tensor(0.2128)
    """
    input = _checks.check_logits(input)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    reduction = _checks.check_reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the shape of input {tuple(input.shape)}, "
            f"got shape {tuple(target.shape)}"
        )
    dtype = _checks.compute_dtype(input.dtype)
    smoothed = smooth_binary(target, eps, style=style, dtype=dtype).to(dtype)
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
        if value is not None and not value.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype={value.dtype}")
    loss = F.binary_cross_entropy_with_logits(
        input.to(dtype),
        smoothed,
        weight=None if weight is None else weight.to(dtype),
        pos_weight=None if pos_weight is None else pos_weight.to(dtype),
        reduction=reduction,
    )
    return loss.to(input.dtype) if reduction == "none" else loss

r"""Label-smoothed losses with the argument names and conventions of ``torch.nn.functional``.

Swapping ``F.cross_entropy(x, y, label_smoothing=0.1)`` for ``ls.cross_entropy(x, y, 0.1)`` is a
one-word change and gives the same loss and gradient (see :func:`cross_entropy`).

Every loss checks its arguments through :mod:`labelsmooth._checks` before any work, and
accumulates in float32 whatever the input dtype (float64 stays float64).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks, kernels
from ._composite import closed_form as _closed_form
from ._composite import reference as _reference
from ._problem import CrossEntropyProblem, Implementation
from ._problem import prepare as _prepare
from .kernels.linear import linear_cross_entropy
from .targets import smooth_binary

__all__ = [
    "IMPLS",
    "DoubleSmoothingWarning",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]


# Registry behind `impl=`: the dense oracle, the closed form and the fused kernels
# (labelsmooth.kernels: "chunked" eager torch, "compiled" C++ for CPU, "triton" for CUDA).
IMPLS: dict[str, Implementation] = {
    "reference": _reference,
    "torch": _closed_form,
    "chunked": kernels.chunked,
    "compiled": kernels.compiled,
    "triton": kernels.triton,
}


class DoubleSmoothingWarning(UserWarning):
    """:func:`cross_entropy` was given probability targets that look smoothed already.

    Emitted when ``eps != 0`` and every entry of the target is > 0 (as after timm's ``Mixup``
    or ``CutMix`` with ``label_smoothing``): the targets are then smoothed a second time.
    Pass ``eps=0`` if the targets carry the smoothing already; silence it with
    ``warnings.filterwarnings("ignore", category=labelsmooth.DoubleSmoothingWarning)``. The
    test costs one host sync per call; ``validate=False`` skips it, and it is skipped under
    ``torch.compile`` and ``torch.func`` transforms.
    """


def auto_impl(problem: CrossEntropyProblem) -> str:
    """The name ``impl="auto"`` picks for a checked problem (see :func:`cross_entropy`)."""
    logits = problem.logits
    if problem.traced:
        # torch.compile / torch.func: the closed form is plain torch and traces (no graph
        # break, vmap and grad rules for every op); the kernels' autograd functions do not.
        return "torch"
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


def _warn_if_smoothed_twice(problem: CrossEntropyProblem) -> None:
    """Warns (:class:`DoubleSmoothingWarning`) when probability targets already have mass on
    every class and are smoothed again (one host sync; callers skip it while tracing)."""
    target = problem.target
    if target.numel() == 0:
        return
    smallest = float(target.detach().min())
    if smallest > 0:
        warnings.warn(
            f"cross_entropy: every entry of the probability target is > 0 (smallest "
            f"{smallest:.4g}), so it looks smoothed already (e.g. by Mixup/CutMix with "
            f"label_smoothing), and eps={problem.eps:g} smooths it again. Pass eps=0 to use the "
            f"targets as they are, or silence this with warnings.filterwarnings('ignore', "
            f"category=labelsmooth.DoubleSmoothingWarning).",
            DoubleSmoothingWarning,
            stacklevel=3,
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
    ``input``, e.g. mixup) are smoothed the same way. Probability targets that already have
    mass on every class (as timm's ``Mixup`` with ``label_smoothing`` makes them) would be
    smoothed twice: with ``eps != 0`` that gives a :class:`DoubleSmoothingWarning` (a
    ``UserWarning``; filter it by its category to silence it; pass ``eps=0`` to use such
    targets as they are).

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
      A bf16/fp16 gradient is rounded once for the incoming gradient ``loss.backward()``
      gives a ``"mean"``/``"sum"`` loss (or a power-of-two multiple of it), and twice
      otherwise (up to about 1 ulp; see :mod:`labelsmooth.kernels.fused`).
    * ``"compiled"``: the same fused kernel as a C++ library (built with the system compiler
      at first use, cached on disk), CPU only; probability targets take ``"chunked"``.
    * ``"triton"``: the same fused kernel in Triton, CUDA only (or ``TRITON_INTERPRET=1``),
      for float32/bfloat16/float16; probability targets and float64 take ``"chunked"``.
    * ``"auto"``: ``"torch"`` for probability targets, float64, inputs with fewer than
      ``labelsmooth.kernels.AUTO_MIN_ELEMENTS`` logits (the kernels' set-up would not pay
      off) and while tracing (see below); otherwise ``"compiled"`` on CPU when the C++ kernel
      builds, else ``"chunked"`` (CUDA included: the Triton kernel is tested under the
      interpreter but not yet measured on a GPU, so it is opt-in with ``impl="triton"``).

    Tracing: ``torch.compile(cross_entropy, fullgraph=True)``, ``torch.func.grad``,
    ``vmap``, ``jacrev`` and the like work with the default arguments. While traced, no
    tensor value reaches the host: ``impl="auto"`` takes ``"torch"`` (the fused kernels are
    not traceable; do not name them explicitly there), and the checks that would read values
    are skipped — class indices in range (as with ``validate=False``), ``weight`` finite,
    ``prior`` finite, >= 0 and summing to 1, and the :class:`DoubleSmoothingWarning`. Types,
    shapes, ``eps`` and the other Python arguments are checked as always; check the values
    eagerly (or in the data pipeline) if they may be wrong.

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
        validate: check that class indices are in range (one host sync), and for probability
            targets whether they look smoothed already (:class:`DoubleSmoothingWarning`, one
            host sync). Turn off for speed once the data pipeline is trusted; skipped anyway
            while tracing (see above). Unchecked, an index outside [0, C) other than
            ``ignore_index`` (a negative one included) is never taken for a class nor for an
            ignored element: on CPU the call raises (``ValueError`` from ``"compiled"``,
            ``IndexError``/``RuntimeError`` from the torch paths); on CUDA it fails as
            PyTorch does (a device-side assert) and ``"triton"`` returns nan for it.

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
    if problem.soft and problem.eps != 0 and validate and not problem.traced:
        _warn_if_smoothed_twice(problem)
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

    ``torch.compile(..., fullgraph=True)``, ``torch.func.grad`` and ``vmap`` work: while traced
    (see :func:`cross_entropy`) the check that the targets lie in [0, 1] is skipped, since it
    would read their values on the host; shapes, types and ``eps`` are still checked.

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
        if value is not None:
            _checks.check_broadcastable(name, value, input.shape)
    loss = F.binary_cross_entropy_with_logits(
        input.to(dtype),
        smoothed,
        weight=None if weight is None else weight.to(dtype),
        pos_weight=None if pos_weight is None else pos_weight.to(dtype),
        reduction=reduction,
    )
    return loss.to(input.dtype) if reduction == "none" else loss

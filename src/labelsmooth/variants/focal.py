r"""Focal loss with label-smoothed targets (Lin et al., ICCV 2017, generalised to soft targets).

Focal loss (Lin, Goyal, Girshick, He and Dollár, "Focal Loss for Dense Object Detection",
ICCV 2017) scales the log-loss of each class by :math:`(1 - p_c)^\gamma`, so that well
classified elements contribute little. With the smoothed target :math:`\tilde t` of
:func:`labelsmooth.smooth_labels` (either style) in place of the one-hot target, per element:

.. math::

    \ell = -\sum_c \alpha_c\, \tilde t_c\, (1 - p_c)^\gamma \log p_c,
    \qquad p = \mathrm{softmax}(x).

* ``eps=0``: :math:`-\alpha_y (1 - p_y)^\gamma \log p_y`, the multi-class focal loss (as in
  kornia's ``focal_loss``, which our tests restate);
* ``gamma=0``: :func:`labelsmooth.cross_entropy` with the same ``eps`` and ``style`` (and
  ``alpha`` acting as its class weight, apart from the ``"mean"`` denominator, see below).

Also holds the two private helpers the other variants share (index targets flattened to rows
and the reduction over non-ignored rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ..targets import smoothing_coefficients
from ._common import IndexedLossModule, index_problem, reduce

__all__ = ["FocalLoss", "focal_cross_entropy"]


def _modulated_nll(log_probs: Tensor, gamma: float) -> Tensor:
    """(1 - p)^gamma * (-log p), elementwise, with 1 - p = -expm1(log p) (exact near p = 1).

    1 - p is clamped to the smallest normal number, so that p == 1 (logits far apart) gives
    a finite gradient for 0 < gamma < 1 (the true derivative there is 0) instead of inf * 0.
    """
    if gamma == 0:
        return -log_probs
    tiny = torch.finfo(log_probs.dtype).tiny
    return (-torch.expm1(log_probs)).clamp_min(tiny).pow(gamma) * (-log_probs)


def focal_cross_entropy(
    input: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    eps: float = 0.0,
    *,
    style: str = "uniform",
    alpha: Tensor | Sequence[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Focal loss (Lin et al., ICCV 2017) on label-smoothed targets.

    Per element, with :math:`p = \mathrm{softmax}(x)`, the smoothed target :math:`\tilde t`
    of :func:`labelsmooth.smooth_labels` (``eps``, ``style``) and class weights
    :math:`\alpha_c` (all 1 without ``alpha``):

    .. math::

        \ell = -\sum_c \alpha_c\, \tilde t_c\, (1 - p_c)^\gamma \log p_c

    For hard labels :math:`\tilde t = a\,\mathrm{onehot}(y) + b` (see
    :func:`labelsmooth.smoothing_coefficients`), so :math:`\ell = a\,\alpha_y f_y + b \sum_c
    \alpha_c f_c` with :math:`f_c = (1 - p_c)^\gamma (-\log p_c)`; with ``eps=0`` only
    :math:`f_y` is computed. ``eps=0`` is the standard multi-class focal loss
    :math:`-\alpha_y (1-p_y)^\gamma \log p_y`; ``gamma=0`` is :func:`labelsmooth.cross_entropy`.

    ``alpha`` generalises the paper's :math:`\alpha_t` to one weight per class. kornia's
    scalar ``alpha=a`` (class 0 taken as background) is ``alpha=[1 - a, a, ..., a]`` here.
    Unlike ``F.cross_entropy``'s class weights, ``alpha`` does not change the ``"mean"``
    denominator, which is the number of non-ignored elements (as in kornia and the paper).
    kornia's ``"mean"`` also divides by C (it averages the (N, C, ...) tensor before summing
    over classes) and ``"none"`` returns that tensor; ours sums over classes first.

    Computed in float32 for bf16/fp16 logits (float64 stays float64); :math:`1 - p_c` is
    taken as ``-expm1(log p_c)``, so logits of magnitude 1e4 give neither inf nor nan.

    Args:
        input: logits (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices (), (N) or (N, d1, ..., dk), integer.
        gamma: focusing parameter, >= 0 (0: cross-entropy; the paper uses 2).
        eps: smoothing rate of the target; ``uniform``: eps <= 1, ``others``: eps <= (K-1)/K.
        style: ``"uniform"`` or ``"others"`` (see :func:`labelsmooth.smooth_labels`).
        alpha: ``None`` or a length-C vector of class weights.
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` (over non-ignored elements; 0 if there are none)
            | ``"sum"``.

    Returns:
        ``"none"``: a tensor of the target's shape in the input's dtype; otherwise a scalar in
        float32 (float64 for float64 input).

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> focal_cross_entropy(logits, target, gamma=2.0)
        tensor(0.0551)
        >>> focal_cross_entropy(logits, target, gamma=0.0, eps=0.1)  # = ls.cross_entropy
        tensor(0.5047)
        >>> focal_cross_entropy(logits, target, gamma=2.0, eps=0.1, style="others")
        tensor(0.2022)
    """
    problem = index_problem(input, target, ignore_index, reduction)
    num_classes = problem.num_classes
    style = _checks.check_style(style)
    eps = _checks.check_eps(eps, num_classes, style)
    gamma = _checks.check_real("gamma", gamma, minimum=0.0)
    dtype = problem.compute_dtype
    logits = problem.logits
    alpha_t = _checks.check_weight(alpha, num_classes, logits.device, dtype, name="alpha")
    log_probs = F.log_softmax(logits.to(dtype), dim=-1)
    rows = problem.target.unsqueeze(1)
    coefficient, offset = smoothing_coefficients(eps, num_classes, style)
    if offset == 0:
        loss = _modulated_nll(log_probs.gather(1, rows).squeeze(1), gamma)
        if alpha_t is not None:
            loss = alpha_t[problem.target] * loss
        if coefficient != 1:
            loss = coefficient * loss
    else:
        terms = _modulated_nll(log_probs, gamma)
        if alpha_t is not None:
            terms = terms * alpha_t
        loss = coefficient * terms.gather(1, rows).squeeze(1) + offset * terms.sum(-1)
    return reduce(loss, problem, input.dtype)


class FocalLoss(IndexedLossModule):
    """Module form of :func:`focal_cross_entropy` (focal loss, Lin et al. ICCV 2017, on
    label-smoothed targets). ``alpha`` is registered as a buffer (it moves with ``.to()``).

    Example:
        >>> criterion = FocalLoss(gamma=2.0, eps=0.1)
        >>> criterion
        FocalLoss(gamma=2.0, eps=0.1, style='uniform', ignore_index=-100, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        gamma: float = 2.0,
        eps: float = 0.0,
        *,
        style: str = "uniform",
        alpha: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.gamma = _checks.check_real("gamma", gamma, minimum=0.0)
        self.style = _checks.check_style(style)
        alpha_t = None if alpha is None else _checks.as_class_vector("alpha", alpha)
        num_classes = None if alpha_t is None else alpha_t.shape[0]
        self.eps = _checks.check_eps(eps, num_classes, self.style)
        self.register_buffer("alpha", alpha_t)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_cross_entropy(
            input,
            target,
            self.gamma,
            self.eps,
            style=self.style,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def arguments(self) -> list[str]:
        parts = [f"gamma={self.gamma}", f"eps={self.eps}", f"style={self.style!r}"]
        if self.alpha is not None:
            parts.append(f"alpha=<{self.alpha.shape[0]} classes>")
        return parts

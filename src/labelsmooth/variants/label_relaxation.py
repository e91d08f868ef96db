r"""Label relaxation: a credal set of targets instead of one smoothed target.

Lienen and Hüllermeier, "From Label Smoothing to Label Relaxation", AAAI 2021 (reference code:
github.com/julilien/LabelRelaxation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _checks
from ._common import IndexedLossModule, reduce, rows

__all__ = ["LabelRelaxationLoss", "label_relaxation"]


def label_relaxation(
    input: Tensor,
    target: Tensor,
    alpha: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Label relaxation loss of Lienen and Hüllermeier (AAAI 2021).

    Label smoothing fixes one target distribution; label relaxation accepts every
    distribution of the credal set :math:`Q = \{q : q_y \ge 1 - \alpha\}` and measures the
    prediction :math:`p = \mathrm{softmax}(x)` against the member of Q closest to it. Per
    element, with true class y:

    .. math:: \ell = \begin{cases} 0 & p_y \ge 1 - \alpha \\
              \mathrm{KL}(p^r \,\|\, p) & \text{otherwise,} \end{cases}
              \qquad p^r_y = 1 - \alpha, \quad
              p^r_k = \alpha \frac{p_k}{\sum_{j \ne y} p_j} \; (k \ne y),

    which is :math:`(1-\alpha)\log\frac{1-\alpha}{p_y} + \alpha \log\frac{\alpha}{1-p_y}`:
    that closed form is what is computed, from ``log_softmax`` (no ``softmax().log()``, so no
    clipping is needed and logits of any size stay finite). The authors' PyTorch code computes
    :math:`p^r` under ``torch.no_grad()`` (a constant target); their Keras code lets the
    gradient flow through it. Both give the gradient :math:`p - p^r` of this closed form,
    because :math:`p^r` minimises the KL divergence over Q (the derivative through it is 0).
    ``alpha=0`` is cross-entropy (for :math:`p_y < 1`); ``alpha=1`` is 0 everywhere.

    Reductions: ``"mean"`` averages over non-ignored elements (an all-ignored batch gives 0
    with a zero gradient, not nan), ``"sum"`` sums them, ``"none"`` returns one value per
    element (0 where the target is ``ignore_index``). Computed in float32 for bf16/fp16 input
    (float64 stays float64).

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk), C >= 2; any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (integer).
        alpha: the relaxation α in [0, 1]: the mass the credal set lets the other classes take.
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        A float32 scalar for ``"mean"``/``"sum"`` (float64 for float64 input), or a tensor of
        the target's shape in the input's dtype for ``"none"``.

    Example:
        >>> logits = torch.tensor([[4.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> label_relaxation(logits, target, alpha=0.1, reduction="none")  # p_0 = 0.964 >= 0.9
        tensor([0.0000, 0.2570])
        >>> label_relaxation(logits, target, alpha=0.1)
        tensor(0.1285)
    """
    alpha = _check_alpha(alpha)
    logits, problem = rows(input, target, ignore_index, reduction)
    if problem.num_classes < 2:
        raise ValueError(
            f"label_relaxation needs at least 2 classes, got input of shape {tuple(input.shape)}"
        )
    log_z = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, problem.target[:, None]).squeeze(-1)
    log_p_y = picked - log_z
    inside = log_p_y >= (math.log(1.0 - alpha) if alpha < 1.0 else -math.inf)
    # log(1 - p_y), stable when p_y is close to 1: the log-sum-exp of the other logits. Rows
    # inside the credal set (loss 0) take zeros instead, so that one whose other logits are
    # all -inf (p_y = 1) gets a zero gradient, not the nan of a log-sum-exp over -inf only.
    is_target = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, problem.target[:, None], 1)
    rest = logits.masked_fill(is_target, -math.inf).masked_fill(inside[:, None], 0.0)
    log_rest = torch.logsumexp(rest, dim=-1) - log_z
    constant = _xlogx(1.0 - alpha) + _xlogx(alpha)
    divergence = constant - (1.0 - alpha) * log_p_y - alpha * log_rest
    loss = torch.where(inside, 0.0, divergence)
    return reduce(loss, problem, input.dtype)


def _check_alpha(alpha: object) -> float:
    value = _checks.check_real("alpha", alpha)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1] (the mass left to the other classes), got alpha={value}"
        )
    return value


def _xlogx(value: float) -> float:
    return value * math.log(value) if value > 0 else 0.0


class LabelRelaxationLoss(IndexedLossModule):
    """Module form of :func:`label_relaxation`: holds its keyword arguments.

    Example:
        >>> criterion = LabelRelaxationLoss(alpha=0.2, ignore_index=0)
        >>> criterion
        LabelRelaxationLoss(alpha=0.2, ignore_index=0, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        alpha: float = 0.1,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.alpha = _check_alpha(alpha)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return label_relaxation(
            input,
            target,
            self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def arguments(self) -> list[str]:
        return [f"alpha={self.alpha}"]

r"""Confidence penalty: cross-entropy minus a multiple of the prediction's entropy.

Pereyra, Tucker, Chorowski, Kaiser and Hinton, "Regularizing Neural Networks by Penalizing
Confident Output Distributions", ICLR 2017 (workshop track), arXiv:1701.06548.
"""

from __future__ import annotations

import math

import torch  # noqa: F401 - the docstring examples use it
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ._common import IndexedLossModule, reduce, rows

__all__ = ["ConfidencePenaltyLoss", "confidence_penalty"]


def confidence_penalty(
    input: Tensor,
    target: Tensor,
    beta: float = 0.1,
    *,
    threshold: float | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy with the confidence penalty of Pereyra et al. (ICLR 2017 workshop).

    Per element, with :math:`p = \mathrm{softmax}(x)`, true class y and the entropy
    :math:`H(p) = -\sum_k p_k \log p_k` (natural log, summed over the K classes):

    .. math:: \ell = -\log p_y - \beta\, H(p)

    With ``threshold=Γ`` the penalty is the paper's hinge (its Section 3.1), applied only while
    the entropy is below Γ: :math:`\ell = -\log p_y + \beta \max(0, \Gamma - H(p))`. Below Γ
    this has the gradient of :math:`-\log p_y - \beta H(p)`; above it, that of cross-entropy.
    (The paper prints the hinge as :math:`-\beta \max(0, \Gamma - H)`, which would *reward*
    low entropy and contradicts its own text; the sign here is the one that penalises it.)
    The paper's experiments use the plain penalty, so ``threshold=None`` (no hinge) is the
    default. The entropy is summed over classes as in the paper; the MbLS reference code's
    ``PenaltyEntropy`` (github.com/by-liu/MbLS) averages it over classes
    instead, so its ``alpha`` equals ``beta * K`` here.

    Reductions: ``"mean"`` averages over non-ignored elements (an all-ignored batch gives 0
    with a zero gradient, not nan), ``"sum"`` sums them, ``"none"`` returns one value per
    element (0 where the target is ``ignore_index``). Computed in float32 for bf16/fp16 input
    (float64 stays float64).

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (integer).
        beta: weight of the entropy, a finite number >= 0 (0 gives plain cross-entropy).
        threshold: ``None`` (no hinge) or the entropy threshold Γ >= 0, in nats.
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        A float32 scalar for ``"mean"``/``"sum"`` (float64 for float64 input), or a tensor of
        the target's shape in the input's dtype for ``"none"``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> confidence_penalty(logits, target, beta=0.1)
        tensor(0.3165)
        >>> confidence_penalty(logits, target, beta=0.0)  # F.cross_entropy
        tensor(0.3964)
        >>> confidence_penalty(logits, target, beta=0.1, threshold=0.9)
        tensor(0.4103)
    """
    beta = _checks.check_real("beta", beta, minimum=0.0)
    if threshold is not None:
        threshold = _checks.check_real("threshold", threshold, minimum=0.0)
    logits, problem = rows(input, target, ignore_index, reduction)
    log_p = F.log_softmax(logits, dim=-1)
    # p log p with 0 log 0 = 0: a masked (-inf) logit adds nothing to the entropy, and nothing
    # (not nan) to the gradient (the derivative of p log p in p is then finite, times p = 0).
    finite_log_p = log_p.masked_fill(log_p == -math.inf, 0.0)
    entropy = -(log_p.exp() * finite_log_p).sum(-1)
    penalty = -entropy if threshold is None else (threshold - entropy).clamp_min(0.0)
    loss = F.nll_loss(log_p, problem.target, reduction="none") + beta * penalty
    return reduce(loss, problem, input.dtype)


class ConfidencePenaltyLoss(IndexedLossModule):
    """Module form of :func:`confidence_penalty`: holds its keyword arguments.

    Example:
        >>> criterion = ConfidencePenaltyLoss(beta=0.2)
        >>> criterion
        ConfidencePenaltyLoss(beta=0.2, ignore_index=-100, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        beta: float = 0.1,
        *,
        threshold: float | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.beta = _checks.check_real("beta", beta, minimum=0.0)
        self.threshold = (
            None if threshold is None else _checks.check_real("threshold", threshold, minimum=0.0)
        )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return confidence_penalty(
            input,
            target,
            self.beta,
            threshold=self.threshold,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def arguments(self) -> list[str]:
        threshold = [] if self.threshold is None else [f"threshold={self.threshold}"]
        return [f"beta={self.beta}", *threshold]

r"""MaxSup (max suppression): label smoothing's penalty moved from the true logit to the largest.

Zhou, Li, Cheng, Yan, Dong, Fritz and Keuper, "MaxSup: Overcoming Representation Collapse in
Label Smoothing", NeurIPS 2025, arXiv:2502.15798 (reference code:
github.com/ZhouYuxuanYX/Maximum-Suppression-Regularization).
"""

from __future__ import annotations

import torch  # noqa: F401 - the docstring examples use it
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ._common import IndexedLossModule, reduce, rows

__all__ = ["MaxSupLoss", "maxsup"]


def maxsup(
    input: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy with the max-suppression penalty of Zhou et al. (NeurIPS 2025).

    Label smoothing with rate ε (``F.cross_entropy(..., label_smoothing=eps)``) equals
    cross-entropy plus :math:`\epsilon\,(x_y - \bar x)`, where :math:`\bar x` is the mean logit:
    it pulls the *true* logit towards the mean, which the paper shows also sharpens wrong
    predictions and collapses the features within a class. MaxSup pulls the *largest* logit
    instead. Per element, with true class y and K classes:

    .. math:: \ell = -\log \mathrm{softmax}(x)_y
              + \epsilon \Bigl(\max_k x_k - \frac{1}{K} \sum_{k=1}^{K} x_k\Bigr)

    so it equals label smoothing wherever the prediction is right (:math:`x_y = \max_k x_k`).
    The normalisation is the authors' code: the full cross-entropy (not :math:`1-\epsilon`
    times it) plus ε times the gap, averaged over the elements with the cross-entropy's
    denominator; the gradient of the maximum goes to a single largest logit (``topk(1)``
    there). The authors raise ε linearly from 0.1 to 0.2 over training; that schedule is the
    caller's (pass the epoch's ``eps``, or set ``MaxSupLoss.eps``).

    Reductions: ``"mean"`` averages over non-ignored elements (an all-ignored batch gives 0
    with a zero gradient, not nan), ``"sum"`` sums them, ``"none"`` returns one value per
    element (0 where the target is ``ignore_index``). Computed in float32 for bf16/fp16 input
    (float64 stays float64).

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (integer).
        eps: weight ε >= 0 of the penalty (0 gives plain cross-entropy).
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        A float32 scalar for ``"mean"``/``"sum"`` (float64 for float64 input), or a tensor of
        the target's shape in the input's dtype for ``"none"``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> maxsup(logits, torch.tensor([0, 1]), eps=0.1)  # both right: label smoothing
        tensor(0.5047)
        >>> F.cross_entropy(logits, torch.tensor([0, 1]), label_smoothing=0.1)
        tensor(0.5047)
        >>> maxsup(logits, torch.tensor([1, 0]), eps=0.1, reduction="none")
        tensor([1.8913, 1.6181])
    """
    eps = _checks.check_real("eps", eps, minimum=0.0)
    logits, problem = rows(input, target, ignore_index, reduction)
    gap = logits.max(dim=-1).values - logits.mean(dim=-1)
    loss = F.cross_entropy(logits, problem.target, reduction="none") + eps * gap
    return reduce(loss, problem, input.dtype)


class MaxSupLoss(IndexedLossModule):
    """Module form of :func:`maxsup`: holds its keyword arguments.

    ``eps`` is a plain attribute, so a training loop can follow the authors' schedule
    (0.1 rising linearly to 0.2) by setting ``criterion.eps`` every epoch.

    Example:
        >>> criterion = MaxSupLoss(eps=0.1)
        >>> criterion
        MaxSupLoss(eps=0.1, ignore_index=-100, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        eps: float = 0.1,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.eps = _checks.check_real("eps", eps, minimum=0.0)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return maxsup(
            input, target, self.eps, ignore_index=self.ignore_index, reduction=self.reduction
        )

    def arguments(self) -> list[str]:
        return [f"eps={self.eps}"]

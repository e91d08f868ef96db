r"""Margin-based label smoothing (MbLS): cross-entropy plus a hinge on the logit distances.

Liu, Ben Ayed, Galdran and Dolz, "The Devil is in the Margins: Label Smoothing as a Penalty on
Logit Distances", CVPR 2022 (reference code: github.com/by-liu/MbLS, ``LogitMarginL1``).
"""

from __future__ import annotations

import torch  # noqa: F401 - the docstring examples use it
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ._common import IndexedLossModule, reduce, rows

__all__ = ["MarginLabelSmoothingLoss", "margin_label_smoothing"]


def margin_label_smoothing(
    input: Tensor,
    target: Tensor,
    margin: float = 10.0,
    alpha: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Margin-based label smoothing (MbLS) of Liu et al. (CVPR 2022).

    The paper shows that label smoothing amounts to pushing every logit distance
    :math:`d_k = \max_j x_j - x_k` towards 0, and replaces it by a penalty that is 0 while the
    distances stay below a margin m. Per element, with true class y and K classes:

    .. math:: \ell = -\log \mathrm{softmax}(x)_y
              + \frac{\alpha}{K} \sum_{k=1}^{K} \max\bigl(0, \max_j x_j - x_k - m\bigr)

    The normalisation is the authors' ``LogitMarginL1``: the hinge is averaged over all K
    classes (the largest logit included, whose term is 0) and over the elements, with the
    same denominator as the cross-entropy. One difference: there the rows of
    ``ignore_index`` are dropped only when ``ignore_index >= 0``, so with the default -100
    their hinge still counts; here ignored elements contribute nothing, whatever the index.
    The gradient of :math:`\max_j x_j` goes to a single largest logit, as in that code.
    Defaults m = 10 and α = 0.1 are those of the paper's classification experiments and
    of the reference code.

    Reductions: ``"mean"`` averages over non-ignored elements (an all-ignored batch gives 0
    with a zero gradient, not nan), ``"sum"`` sums them, ``"none"`` returns one value per
    element (0 where the target is ``ignore_index``). Computed in float32 for bf16/fp16 input
    (float64 stays float64).

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (integer).
        margin: the margin m >= 0 below which a logit distance is not penalised.
        alpha: weight α >= 0 of the hinge (0 gives plain cross-entropy).
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        A float32 scalar for ``"mean"``/``"sum"`` (float64 for float64 input), or a tensor of
        the target's shape in the input's dtype for ``"none"``.

    Example:
        >>> logits = torch.tensor([[12.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> margin_label_smoothing(logits, target, margin=10.0, alpha=0.1)
        tensor(0.3507)
        >>> margin_label_smoothing(logits, target, margin=20.0)  # no distance above 20: CE
        tensor(0.2757)
    """
    margin = _checks.check_real("margin", margin, minimum=0.0)
    alpha = _checks.check_real("alpha", alpha, minimum=0.0)
    logits, problem = rows(input, target, ignore_index, reduction)
    largest = logits.max(dim=-1, keepdim=True).values
    hinge = (largest - logits - margin).clamp_min(0.0).mean(-1)
    loss = F.cross_entropy(logits, problem.target, reduction="none") + alpha * hinge
    return reduce(loss, problem, input.dtype)


class MarginLabelSmoothingLoss(IndexedLossModule):
    """Module form of :func:`margin_label_smoothing`: holds its keyword arguments.

    Example:
        >>> criterion = MarginLabelSmoothingLoss(margin=6.0)
        >>> criterion
        MarginLabelSmoothingLoss(margin=6.0, alpha=0.1, ignore_index=-100, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        margin: float = 10.0,
        alpha: float = 0.1,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.margin = _checks.check_real("margin", margin, minimum=0.0)
        self.alpha = _checks.check_real("alpha", alpha, minimum=0.0)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return margin_label_smoothing(
            input,
            target,
            self.margin,
            self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def arguments(self) -> list[str]:
        return [f"margin={self.margin}", f"alpha={self.alpha}"]

r"""Online label smoothing (OLS): per-class soft targets learnt from the model's own predictions.

Zhang, Jiang, Hou, Wei, Han, Li and Cheng, "Delving Deep into Label Smoothing", IEEE
Transactions on Image Processing 30, 2021 (arXiv:2011.12562; code:
github.com/zhangchbin/OnlineLabelSmoothing). A K x K matrix :math:`S` holds one soft target per
class; the loss of an element with class y is

.. math::

    \ell = \alpha\,(-\log p_y) + (1 - \alpha) \sum_c S_{y,c}\,(-\log p_c),
    \qquad p = \mathrm{softmax}(x).

During an epoch the softmax probabilities of the training elements that the model classifies
correctly (argmax = y) are summed per true class y; at the end of the epoch row y of
:math:`S` becomes their mean (the uniform 1/K when class y had no correct element).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from .._problem import CrossEntropyProblem
from ._common import IndexedLossModule, check_unit, index_problem, reduce

__all__ = ["OnlineLabelSmoothing", "online_label_smoothing"]

_INITS = ("uniform", "zeros")


def _online_label_smoothing(
    input: Tensor,
    target: Tensor,
    soft_targets: Tensor,
    alpha: float,
    ignore_index: int,
    reduction: str,
    check_values: bool = True,
) -> tuple[Tensor, Tensor, CrossEntropyProblem]:
    """The reduced loss, the (M, K) log-probabilities and the checked problem.

    ``check_values``: that ``soft_targets`` is finite (a host sync, skipped while tracing);
    the module passes False for its own buffer, which it keeps finite itself."""
    problem = index_problem(input, target, ignore_index, reduction)
    num_classes = problem.num_classes
    alpha = check_unit("alpha", alpha)
    if not isinstance(soft_targets, Tensor):
        raise TypeError(f"soft_targets must be a torch.Tensor, got {type(soft_targets).__name__}")
    if not soft_targets.is_floating_point():
        raise TypeError(
            f"soft_targets must be a floating-point tensor, got dtype={soft_targets.dtype}"
        )
    if soft_targets.shape != (num_classes, num_classes):
        raise ValueError(
            f"soft_targets must have shape ({num_classes}, {num_classes}) (one row of soft "
            f"targets per class of input), got shape {tuple(soft_targets.shape)}"
        )
    if soft_targets.device != problem.logits.device:
        raise ValueError(
            f"soft_targets must be on the device of input ({problem.logits.device}), "
            f"got device={soft_targets.device}"
        )
    if check_values and soft_targets.numel() and not _checks.tracing(soft_targets):
        finite = torch.isfinite(soft_targets)
        if not bool(finite.all()):
            row, col = ((~finite).nonzero()[0]).tolist()
            raise ValueError(
                f"soft_targets must be finite, got {float(soft_targets[row, col])} at "
                f"[{row}, {col}]"
            )
    dtype = problem.compute_dtype
    log_probs = F.log_softmax(problem.logits.to(dtype), dim=-1)
    rows = problem.target
    loss = -log_probs.gather(1, rows.unsqueeze(1)).squeeze(1)
    if alpha != 1:
        soft = -(soft_targets.to(dtype)[rows] * log_probs).sum(-1)
        loss = alpha * loss + (1.0 - alpha) * soft if alpha != 0 else soft
    return reduce(loss, problem, input.dtype), log_probs, problem


def online_label_smoothing(
    input: Tensor,
    target: Tensor,
    soft_targets: Tensor,
    alpha: float = 0.5,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""The OLS loss (Zhang et al., IEEE TIP 2021) for a given soft-target matrix.

    Per element with class y, :math:`p = \mathrm{softmax}(x)`:

    .. math::

        \ell = \alpha\,(-\log p_y) + (1 - \alpha) \sum_c S_{y,c}\,(-\log p_c)

    This is the authors' ``0.5 * CrossEntropyLoss(output, target) + 0.5 *
    soft_cross_entropy(output, target)`` (their CIFAR script, ``alpha=0.5``); their
    fine-grained script adds both terms with weight 1, i.e. twice the loss at ``alpha=0.5``.
    ``soft_targets`` is used as given (the module keeps it out of the graph); its rows need
    not be normalised.

    Args:
        input: logits (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices (), (N) or (N, d1, ..., dk), integer.
        soft_targets: the (C, C) matrix :math:`S`, row y the soft target of class y, on the
            input's device; finite (checked on the host, except while traced).
        alpha: weight of the hard-label cross-entropy, in [0, 1] (1: plain cross-entropy).
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` (over non-ignored elements) | ``"sum"``.

    Returns:
        ``"none"``: a tensor of the target's shape in the input's dtype; otherwise a scalar in
        float32 (float64 for float64 input).

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> uniform = torch.full((3, 3), 1 / 3)
        >>> online_label_smoothing(logits, target, uniform, alpha=0.5)
        tensor(0.9380)
        >>> online_label_smoothing(logits, target, torch.eye(3))  # S = I: cross-entropy
        tensor(0.3964)
    """
    loss, _, _ = _online_label_smoothing(
        input, target, soft_targets, alpha, ignore_index, reduction
    )
    return loss


class OnlineLabelSmoothing(IndexedLossModule):
    r"""Online label smoothing (Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP
    2021): the loss of :func:`online_label_smoothing` with a soft-target matrix that the
    module learns from the model's predictions, one epoch at a time.

    Buffers (moved by ``.to()``, saved in ``state_dict``; float32 unless the module is
    converted, e.g. ``.double()``):

    * ``soft_targets`` (K, K): :math:`S`, used by the loss. Before the first
      :meth:`epoch_end` it is the uniform 1/K (``init="uniform"``, the authors' released
      fine-grained code) or zero (``init="zeros"``, their CIFAR script: the first epoch is
      then trained with :math:`\alpha` times the hard-label cross-entropy only).
    * ``epoch_sum`` (K, K) and ``epoch_count`` (K,): in training mode (``module.train()``)
      every forward adds, without gradient, the softmax probabilities of each non-ignored
      element whose argmax equals its class y to row y of ``epoch_sum`` and 1 to
      ``epoch_count[y]``. In eval mode nothing is accumulated (the loss is still computed
      with the current :math:`S`), as the authors update only in their training loop.

    Call :meth:`epoch_end` after each training epoch: row y of :math:`S` becomes
    ``epoch_sum[y] / epoch_count[y]``, or 1/K where ``epoch_count[y] == 0``, and the
    accumulators are reset. Under data parallelism each process accumulates its own
    elements: sum ``epoch_sum`` and ``epoch_count`` over processes (``all_reduce``) before
    :meth:`epoch_end` to reproduce single-process training.

    Not taken over from the authors' code: the fine-grained script keeps a row unchanged
    once its largest entry reaches 0.88 (they note it helps on fine-grained data only, not
    on CIFAR or ImageNet). They pick the prediction with ``argsort(...)[:, 0]``, this module
    with ``argmax``; the two can differ only on exact ties.

    Example:
        >>> criterion = OnlineLabelSmoothing(num_classes=3)
        >>> criterion
        OnlineLabelSmoothing(num_classes=3, alpha=0.5, init='uniform', ignore_index=-100,
                             reduction='mean')
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 1])).backward()  # both correct: accumulated
        >>> criterion.epoch_count
        tensor([1., 1., 0.])
        >>> criterion.epoch_end()
        >>> criterion.soft_targets
        tensor([[0.7856, 0.1753, 0.0391],
                [0.2119, 0.5761, 0.2119],
                [0.3333, 0.3333, 0.3333]])
    """

    soft_targets: Tensor
    epoch_sum: Tensor
    epoch_count: Tensor

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        *,
        init: str = "uniform",
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.num_classes = _checks.check_int("num_classes", num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got num_classes={self.num_classes}")
        self.alpha = check_unit("alpha", alpha)
        self.init = _checks.check_choice("init", init, _INITS)
        k = self.num_classes
        start = torch.full((k, k), 1.0 / k) if self.init == "uniform" else torch.zeros(k, k)
        self.register_buffer("soft_targets", start)
        self.register_buffer("epoch_sum", torch.zeros(k, k))
        self.register_buffer("epoch_count", torch.zeros(k))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        input = _checks.check_logits(input)
        if input.dim() > 0:
            classes = input.shape[0 if input.dim() == 1 else 1]
            if classes != self.num_classes:
                raise ValueError(
                    f"input must have num_classes={self.num_classes} classes (dimension "
                    f"{0 if input.dim() == 1 else 1}), got shape {tuple(input.shape)}"
                )
        loss, log_probs, problem = _online_label_smoothing(
            input,
            target,
            self.soft_targets,
            self.alpha,
            self.ignore_index,
            self.reduction,
            check_values=False,
        )
        if self.training:
            self._accumulate(log_probs.detach(), problem)
        return loss

    @torch.no_grad()
    def _accumulate(self, log_probs: Tensor, problem: CrossEntropyProblem) -> None:
        rows = problem.target
        valid = problem.valid
        assert valid is not None
        # A row with a nan (from nan or +inf logits) would make argmax pick it and poison its
        # class's soft target for good: such rows are not accumulated.
        correct = (log_probs.argmax(-1) == rows) & valid & ~log_probs.isnan().any(-1)
        weight = correct.to(self.epoch_sum.dtype)
        probs = torch.where(correct.unsqueeze(1), log_probs.exp(), 0.0).to(self.epoch_sum.dtype)
        self.epoch_sum.index_add_(0, rows, probs)
        self.epoch_count.index_add_(0, rows, weight.to(self.epoch_count.dtype))

    @torch.no_grad()
    def epoch_end(self) -> None:
        """Sets ``soft_targets`` from this epoch's correct predictions and resets the sums."""
        count = self.epoch_count.to(self.epoch_sum.dtype).unsqueeze(1)
        seen = count > 0
        mean = self.epoch_sum / torch.where(seen, count, 1.0)
        uniform = torch.full_like(mean, 1.0 / self.num_classes)
        self.soft_targets.copy_(torch.where(seen, mean, uniform))
        self.epoch_sum.zero_()
        self.epoch_count.zero_()

    def arguments(self) -> list[str]:
        return [f"num_classes={self.num_classes}", f"alpha={self.alpha}", f"init={self.init!r}"]

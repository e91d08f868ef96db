r"""Teacher-free knowledge distillation with a manually designed teacher (Tf-KD\ :sub:`reg`).

Yuan, Tay, Li, Wang and Feng, "Revisiting Knowledge Distillation via Label Smoothing
Regularization", CVPR 2020 (code: github.com/yuanli2333/Teacher-free-Knowledge-Distillation,
``my_loss_function.loss_kd_regularization``). The virtual teacher puts probability ``a`` on
the true class and :math:`(1-a)/(K-1)` on every other class; softened with temperature
:math:`T` (a softmax of these probabilities divided by T) it gives :math:`q`, and the loss is

.. math::

    \ell = (1 - \alpha)\,(-\log p_y) + \alpha\, m\, \frac{1}{K}\,
    \mathrm{KL}(q \,\|\, p), \qquad p = \mathrm{softmax}(x).

As in the authors' code the student's probabilities :math:`p` are *not* softened (the paper
writes :math:`p_\tau`), there is no :math:`T^2` factor, and the KL term is PyTorch's
``nn.KLDivLoss()`` with its default ``reduction="mean"``, an average over all N * K entries:
hence the 1/K per element (``multiplier=K`` gives the per-element KL, i.e. ``"batchmean"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ._common import IndexedLossModule, check_unit, index_problem, reduce

__all__ = ["TeacherFreeKDLoss", "teacher_free_kd", "virtual_teacher"]


def _check_teacher(
    num_classes: object, correct_prob: object, temperature: object
) -> tuple[int, float, float]:
    k = _checks.check_int("num_classes", num_classes)
    if k < 2:
        raise ValueError(
            f"num_classes must be >= 2 (the teacher spreads 1 - correct_prob over the K - 1 "
            f"other classes), got num_classes={k}"
        )
    a = check_unit("correct_prob", correct_prob)
    t = _checks.check_real("temperature", temperature, minimum=0.0, strict=True)
    return k, a, t


def _teacher_probs(
    num_classes: int, correct_prob: float, temperature: float
) -> tuple[float, float]:
    """(q_y, q_other): softmax over the K teacher probabilities divided by T, in float64.

    With z = (a - b) / T and b = (1-a)/(K-1): q_y = e^z / (e^z + K - 1), q_o = 1 / (e^z + K - 1),
    evaluated on the side that cannot overflow.
    """
    other = (1.0 - correct_prob) / (num_classes - 1)
    z = (correct_prob - other) / temperature
    if z > 0:
        down = math.exp(-z)
        denominator = 1.0 + (num_classes - 1) * down
        return 1.0 / denominator, down / denominator
    up = math.exp(z)
    denominator = up + (num_classes - 1)
    return up / denominator, 1.0 / denominator


def virtual_teacher(
    target: Tensor,
    num_classes: int,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""The softened virtual teacher of Tf-KD\ :sub:`reg` (Yuan et al., CVPR 2020).

    :math:`q = \mathrm{softmax}(u / T)` with :math:`u_y = a` and :math:`u_c = (1-a)/(K-1)`
    for :math:`c \ne y`: two distinct values per row, each row a distribution.

    Args:
        target: class indices of any shape (integer).
        num_classes: K >= 2.
        correct_prob: a, the teacher's probability of the true class, in [0, 1].
        temperature: T > 0.
        dtype: result dtype (default ``torch.get_default_dtype()``).

    Returns:
        Tensor of shape ``target.shape + (K,)``.

    Example:
        >>> virtual_teacher(torch.tensor([1]), 3, correct_prob=0.9, temperature=1.0)
        tensor([[0.2304, 0.5391, 0.2304]])
    """
    _checks.check_index_dtype(target)
    k, a, t = _check_teacher(num_classes, correct_prob, temperature)
    out_dtype = _checks.check_float_dtype("dtype", dtype)
    if not _checks.tracing(target):
        _checks.check_class_indices(target, k, ignore_index=None)
    on, off = _teacher_probs(k, a, t)
    teacher = torch.full((*target.shape, k), off, dtype=out_dtype, device=target.device)
    return teacher.scatter(-1, target.long().unsqueeze(-1), on)


def _xlogx(value: float) -> float:
    return value * math.log(value) if value > 0 else 0.0


def teacher_free_kd(
    input: Tensor,
    target: Tensor,
    *,
    correct_prob: float = 0.99,
    temperature: float = 20.0,
    alpha: float = 0.1,
    multiplier: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Tf-KD\ :sub:`reg` (Yuan et al., CVPR 2020): cross-entropy plus a KL term towards a
    manually designed, temperature-softened teacher.

    Per element with class y, :math:`p = \mathrm{softmax}(x)` and the teacher :math:`q` of
    :func:`virtual_teacher`:

    .. math::

        \ell = (1 - \alpha)\,(-\log p_y) + \frac{\alpha\, m}{K}
        \sum_c q_c (\log q_c - \log p_c)

    This is the authors' ``loss_kd_regularization``: ``(1 - alpha) * F.cross_entropy(outputs,
    labels) + alpha * nn.KLDivLoss()(F.log_softmax(outputs, 1), F.softmax(teacher / T, 1)) *
    multiplier``, whose ``KLDivLoss`` averages over all N * K entries (the 1/K above); the
    student is not softened and there is no :math:`T^2`. Their code fixes ``correct_prob``
    at 0.99 (the paper asks for a >= 0.9); their CIFAR-100 configurations use (T, alpha,
    multiplier) = (20, 0.1, 100) for ResNet-18, (40, 0.95, 1) for MobileNetV2 and
    (10, 0.95, 1) for ShuffleNetV2. Computed in closed form (no dense teacher), in float32 for
    bf16/fp16 logits (float64 stays float64).

    Args:
        input: logits (C,), (N, C) or (N, C, d1, ..., dk) with C >= 2; any floating dtype.
        target: class indices (), (N) or (N, d1, ..., dk), integer.
        correct_prob: a, the teacher's probability of the true class, in [0, 1].
        temperature: T > 0, applied to the teacher only.
        alpha: weight of the KL term, in [0, 1]; the cross-entropy gets 1 - alpha.
        multiplier: m >= 0, the authors' extra factor on the KL term.
        ignore_index: target value whose elements contribute nothing.
        reduction: ``"none"`` | ``"mean"`` (over non-ignored elements; the authors' reduction)
            | ``"sum"``.

    Returns:
        ``"none"``: a tensor of the target's shape in the input's dtype; otherwise a scalar in
        float32 (float64 for float64 input).

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> teacher_free_kd(logits, target, alpha=0.5, multiplier=1.0)
        tensor(0.2588)
    """
    problem = index_problem(input, target, ignore_index, reduction)
    if problem.num_classes < 2:
        raise ValueError(
            f"teacher_free_kd needs input with at least 2 classes (the teacher spreads "
            f"1 - correct_prob over the others), got input of shape {tuple(input.shape)}"
        )
    k, a, t = _check_teacher(problem.num_classes, correct_prob, temperature)
    alpha = check_unit("alpha", alpha)
    multiplier = _checks.check_real("multiplier", multiplier, minimum=0.0)
    dtype = problem.compute_dtype
    log_probs = F.log_softmax(problem.logits.to(dtype), dim=-1)
    log_p_y = log_probs.gather(1, problem.target.unsqueeze(1)).squeeze(1)
    loss = -log_p_y
    scale = alpha * multiplier / k
    if scale != 0:
        on, off = _teacher_probs(k, a, t)
        entropy = _xlogx(on) + (k - 1) * _xlogx(off)  # sum_c q_c log q_c
        kl = entropy - off * log_probs.sum(-1) - (on - off) * log_p_y
        loss = (1.0 - alpha) * loss + scale * kl if alpha != 1 else scale * kl
    return reduce(loss, problem, input.dtype)


class TeacherFreeKDLoss(IndexedLossModule):
    r"""Module form of :func:`teacher_free_kd` (Tf-KD\ :sub:`reg`, Yuan et al., CVPR 2020).

    Example:
        >>> criterion = TeacherFreeKDLoss(temperature=20.0, alpha=0.1, multiplier=100.0)
        >>> criterion
        TeacherFreeKDLoss(correct_prob=0.99, temperature=20.0, alpha=0.1, multiplier=100.0,
                          ignore_index=-100, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        correct_prob: float = 0.99,
        temperature: float = 20.0,
        alpha: float = 0.1,
        multiplier: float = 1.0,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.correct_prob = check_unit("correct_prob", correct_prob)
        self.temperature = _checks.check_real("temperature", temperature, minimum=0.0, strict=True)
        self.alpha = check_unit("alpha", alpha)
        self.multiplier = _checks.check_real("multiplier", multiplier, minimum=0.0)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return teacher_free_kd(
            input,
            target,
            correct_prob=self.correct_prob,
            temperature=self.temperature,
            alpha=self.alpha,
            multiplier=self.multiplier,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def arguments(self) -> list[str]:
        return [
            f"correct_prob={self.correct_prob}",
            f"temperature={self.temperature}",
            f"alpha={self.alpha}",
            f"multiplier={self.multiplier}",
        ]

"""What the variants share: argument checks, flattening to rows, and the reductions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _checks
from .._problem import CrossEntropyProblem, prepare


def index_problem(
    input: Tensor, target: Tensor, ignore_index: int, reduction: str
) -> CrossEntropyProblem:
    """Checks logits against integer class indices and flattens them to rows (eps = 0).

    ``input`` is (C,), (N, C) or (N, C, d1, ..., dk); ``target`` is (), (N) or (N, d1, ..., dk).
    The class indices are checked (host sync) except while tracing.
    """
    input = _checks.check_logits(input)
    target = _checks.check_index_dtype(target)
    if input.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-dim tensor")
    class_dim = 0 if input.dim() == 1 else 1
    index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if target.shape != index_shape:
        raise ValueError(
            f"target must have shape {tuple(index_shape)} for input of shape "
            f"{tuple(input.shape)} (class dimension {class_dim}), got shape {tuple(target.shape)}"
        )
    return prepare(input, target, 0.0, "uniform", None, None, ignore_index, reduction, False, True)  # type: ignore[arg-type]


def reduce_masked(
    values: Tensor, valid: Tensor, reduction: str, input_dtype: torch.dtype
) -> Tensor:
    """``"none"``: per element in the input's dtype (0 where ignored); ``"sum"``; ``"mean"``
    over non-ignored elements, 0 with a zero gradient when every element is ignored."""
    values = torch.where(valid, values, 0.0)
    if reduction == "none":
        return values.to(input_dtype)
    total = values.sum()
    if reduction == "sum":
        return total
    count = valid.sum().to(total.dtype)
    empty = count == 0
    return torch.where(empty, 0.0, total / torch.where(empty, 1.0, count))


def reduce(values: Tensor, problem: CrossEntropyProblem, input_dtype: torch.dtype) -> Tensor:
    """:func:`reduce_masked` of per-row values, ``"none"`` in the target's shape."""
    assert problem.valid is not None
    reduced = reduce_masked(values, problem.valid, problem.reduction, input_dtype)
    return reduced.reshape(problem.out_shape) if problem.reduction == "none" else reduced


def check_unit(name: str, value: object) -> float:
    number = _checks.check_real(name, value, minimum=0.0)
    if number > 1:
        raise ValueError(f"{name} must be in [0, 1], got {name}={number}")
    return number


def rows(
    input: Tensor, target: Tensor, ignore_index: int, reduction: str
) -> tuple[Tensor, CrossEntropyProblem]:
    """:func:`index_problem`, and its (M, K) logits in the compute dtype."""
    problem = index_problem(input, target, ignore_index, reduction)
    return problem.logits.to(problem.compute_dtype), problem


class IndexedLossModule(nn.Module):
    """Base of the variants' modules: checks and holds ``ignore_index`` and ``reduction``, and
    prints the subclass's own arguments (:meth:`arguments`) before them."""

    def __init__(self, ignore_index: int, reduction: str) -> None:
        super().__init__()
        self.ignore_index = _checks.check_int("ignore_index", ignore_index)
        self.reduction = _checks.check_reduction(reduction)

    def arguments(self) -> list[str]:
        """``name=value`` of the subclass's own arguments, for the repr."""
        return []

    def extra_repr(self) -> str:
        return ", ".join(
            [
                *self.arguments(),
                f"ignore_index={self.ignore_index}",
                f"reduction={self.reduction!r}",
            ]
        )

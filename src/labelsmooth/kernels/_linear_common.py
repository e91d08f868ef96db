"""What :mod:`labelsmooth.kernels.linear` and :mod:`labelsmooth.kernels.linear_triton` share:
the checked scalars of a call and the reduction of the per-row values.

Both import from here (and neither from the other's internals), so there is no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__: list[str] = []


@dataclass(frozen=True)
class _Spec:
    """Checked scalars of one call; ``offset`` is beta: a float, or (prior) a (V,) vector in the
    compute dtype."""

    alpha: float
    offset: float | Tensor
    total: float
    z_loss: float
    softcap: float | None
    reduction: str
    compute_dtype: torch.dtype

    @property
    def offset_is_scalar(self) -> bool:
        return not isinstance(self.offset, Tensor)


def _row_scale(valid: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """Weight of each row in the reduced loss: 1/(number of valid rows) for mean, else 1.

    Ignored rows get 0, and an all-ignored mean gets 0 everywhere (loss 0, zero gradient).
    """
    scale = valid.to(dtype)
    if reduction == "mean":
        scale = scale / valid.sum().clamp(min=1).to(dtype)
    return scale


def _reduce(rows: Tensor, valid: Tensor, reduction: str) -> Tensor:
    rows = torch.where(valid, rows, 0.0)
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    count = valid.sum()
    return torch.where(count == 0, 0.0, total / count.clamp(min=1).to(total.dtype))

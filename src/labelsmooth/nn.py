"""``nn.Module`` wrappers: thin holders of the keyword arguments of :mod:`labelsmooth.functional`.

Tensors passed at construction (``weight``, ``prior``, ``pos_weight``) are registered as
buffers, so ``module.to(device)`` moves them and ``state_dict`` saves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _checks
from .functional import _resolve_impl, binary_cross_entropy_with_logits, cross_entropy

__all__ = ["LabelSmoothingBCEWithLogits", "LabelSmoothingCrossEntropy"]


def _as_buffer(name: str, value: Tensor | Sequence[float] | None) -> Tensor | None:
    if value is None:
        return None
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(tensor.shape)}")
    return tensor


class LabelSmoothingCrossEntropy(nn.Module):
    """Module form of :func:`labelsmooth.cross_entropy`; a drop-in for ``nn.CrossEntropyLoss``.

    Arguments are checked at construction as far as they can be without the logits (the
    range of ``eps`` for ``style="others"`` depends on K and is checked at the first call,
    unless ``prior`` or ``weight`` already fixes K).

    Example:
        >>> criterion = LabelSmoothingCrossEntropy(eps=0.1, ignore_index=0)
        >>> criterion
        LabelSmoothingCrossEntropy(eps=0.1, style='uniform', ignore_index=0, reduction='mean')
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> criterion(logits, torch.tensor([1, 2, 0, 3])).backward()
    """

    def __init__(
        self,
        eps: float = 0.1,
        *,
        style: str = "uniform",
        prior: Tensor | Sequence[float] | None = None,
        weight: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        kl: bool = False,
        return_nll: bool = False,
        impl: str = "auto",
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.style = _checks.check_style(style)
        self.kl = _checks.check_flag("kl", kl)
        self.reduction = _checks.check_reduction(reduction)
        self.ignore_index = _checks.check_int("ignore_index", ignore_index)
        self.return_nll = _checks.check_flag("return_nll", return_nll)
        self.validate = _checks.check_flag("validate", validate)
        _resolve_impl(impl)
        self.impl = impl
        prior_t = _as_buffer("prior", prior)
        weight_t = _as_buffer("weight", weight)
        known = prior_t if prior_t is not None else weight_t
        num_classes = None if known is None else known.shape[0]
        self.eps = _checks.check_eps(eps, num_classes, self.style, kl=self.kl)
        if prior_t is not None:
            _checks.check_prior(
                prior_t, prior_t.shape[0], self.style, prior_t.device, prior_t.dtype
            )
        if weight_t is not None and prior_t is not None and weight_t.shape != prior_t.shape:
            raise ValueError(
                f"weight and prior must both have one entry per class, got shapes "
                f"{tuple(weight_t.shape)} and {tuple(prior_t.shape)}"
            )
        self.register_buffer("prior", prior_t)
        self.register_buffer("weight", weight_t)

    def forward(self, input: Tensor, target: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return cross_entropy(
            input,
            target,
            self.eps,
            style=self.style,
            prior=self.prior,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            kl=self.kl,
            return_nll=self.return_nll,
            impl=self.impl,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        parts = [f"eps={self.eps}", f"style={self.style!r}"]
        if self.prior is not None:
            parts.append(f"prior=<{self.prior.shape[0]} classes>")
        if self.weight is not None:
            parts.append(f"weight=<{self.weight.shape[0]} classes>")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        for flag in ("kl", "return_nll"):
            if getattr(self, flag):
                parts.append(f"{flag}=True")
        if self.impl != "auto":
            parts.append(f"impl={self.impl!r}")
        if not self.validate:
            parts.append("validate=False")
        return ", ".join(parts)


class LabelSmoothingBCEWithLogits(nn.Module):
    """Module form of :func:`labelsmooth.binary_cross_entropy_with_logits`.

    A drop-in for ``nn.BCEWithLogitsLoss`` with binary label smoothing.

    Example:
        >>> LabelSmoothingBCEWithLogits(eps=0.05, style="others")
        LabelSmoothingBCEWithLogits(eps=0.05, style='others', reduction='mean')
    """

    def __init__(
        self,
        eps: float = 0.1,
        *,
        style: str = "uniform",
        weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.style = _checks.check_style(style)
        self.eps = _checks.check_eps(eps, 2, self.style, binary=True)
        self.reduction = _checks.check_reduction(reduction)
        for name, value in (("weight", weight), ("pos_weight", pos_weight)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor or None, got {type(value).__name__}"
                )
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input,
            target,
            self.eps,
            style=self.style,
            weight=self.weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        parts = [f"eps={self.eps}", f"style={self.style!r}"]
        if self.weight is not None:
            parts.append(f"weight=<shape {tuple(self.weight.shape)}>")
        if self.pos_weight is not None:
            parts.append(f"pos_weight=<shape {tuple(self.pos_weight.shape)}>")
        parts.append(f"reduction={self.reduction!r}")
        return ", ".join(parts)

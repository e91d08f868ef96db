"""``nn.Module`` wrappers: thin holders of the keyword arguments of :mod:`labelsmooth.functional`.

Tensors passed at construction (``weight``, ``prior``, ``pos_weight``) are registered as
buffers, so ``module.to(device)`` moves them and ``state_dict`` saves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401 - the docstring examples use it
from torch import Tensor, nn

from . import _checks
from .functional import _resolve_impl, binary_cross_entropy_with_logits, cross_entropy
from .kernels.linear import LINEAR_IMPLS, linear_cross_entropy
from .variants import (
    ConfidencePenaltyLoss,
    FocalLoss,
    LabelRelaxationLoss,
    MarginLabelSmoothingLoss,
    MaxSupLoss,
    OnlineLabelSmoothing,
    SpatialLabelSmoothingLoss,
    TeacherFreeKDLoss,
)

# The variants' modules live next to their functional forms in `labelsmooth.variants` (one file
# per idea) and are re-exported here, so that every loss module is `ls.nn.<Name>`.
__all__ = [
    "ConfidencePenaltyLoss",
    "FocalLoss",
    "LabelRelaxationLoss",
    "LabelSmoothingBCEWithLogits",
    "LabelSmoothingCrossEntropy",
    "LinearLabelSmoothingCrossEntropy",
    "MarginLabelSmoothingLoss",
    "MaxSupLoss",
    "OnlineLabelSmoothing",
    "SpatialLabelSmoothingLoss",
    "TeacherFreeKDLoss",
]


def _as_buffer(name: str, value: Tensor | Sequence[float] | None) -> Tensor | None:
    # Finite values are checked at each call, by the loss (the buffer may change).
    return None if value is None else _checks.as_class_vector(name, value, finite=False)


class LabelSmoothingCrossEntropy(nn.Module):
    """Module form of :func:`labelsmooth.cross_entropy`; a drop-in for ``nn.CrossEntropyLoss``.

    Arguments are checked at construction as far as they can be without the logits (the
    range of ``eps`` for ``style="others"`` depends on K and is checked at the first call,
    unless ``prior`` or ``weight`` already fixes K). ``exclude_classes`` and ``weight_mode``
    are those of :func:`labelsmooth.cross_entropy` (e.g. ``exclude_classes=[pad],
    ignore_index=pad, style="others"`` for OpenNMT-py's criterion).

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
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace: bool = False,
        validate: bool = True,
        exclude_classes: Sequence[int] | Tensor | None = None,
        weight_mode: str = "pytorch",
    ) -> None:
        super().__init__()
        self.style = _checks.check_style(style)
        self.kl = _checks.check_flag("kl", kl)
        self.weight_mode = _checks.check_weight_mode(weight_mode)
        self.reduction = _checks.check_reduction(reduction)
        self.ignore_index = _checks.check_int("ignore_index", ignore_index)
        self.return_nll = _checks.check_flag("return_nll", return_nll)
        self.validate = _checks.check_flag("validate", validate)
        self.z_loss = _checks.check_z_loss(z_loss)
        self.softcap = _checks.check_softcap(softcap)
        self.inplace = _checks.check_flag("inplace", inplace)
        _resolve_impl(impl)
        self.impl = impl
        prior_t = _as_buffer("prior", prior)
        weight_t = _as_buffer("weight", weight)
        known = prior_t if prior_t is not None else weight_t
        num_classes = None if known is None else known.shape[0]
        self.eps = _checks.check_eps(eps, num_classes, self.style, kl=self.kl)
        self.exclude_classes = _checks.check_exclude_classes(
            exclude_classes, num_classes, self.style, self.eps
        )
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
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace=self.inplace,
            validate=self.validate,
            exclude_classes=self.exclude_classes,
            weight_mode=self.weight_mode,
        )

    def extra_repr(self) -> str:
        parts = [f"eps={self.eps}", f"style={self.style!r}"]
        if self.prior is not None:
            parts.append(f"prior=<{self.prior.shape[0]} classes>")
        if self.weight is not None:
            parts.append(f"weight=<{self.weight.shape[0]} classes>")
        if self.weight_mode != "pytorch":
            parts.append(f"weight_mode={self.weight_mode!r}")
        if self.exclude_classes is not None:
            parts.append(f"exclude_classes={list(self.exclude_classes)}")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        for flag in ("kl", "return_nll"):
            if getattr(self, flag):
                parts.append(f"{flag}=True")
        if self.impl != "auto":
            parts.append(f"impl={self.impl!r}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.inplace:
            parts.append("inplace=True")
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


class LinearLabelSmoothingCrossEntropy(nn.Module):
    """Module form of :func:`labelsmooth.linear_cross_entropy`: the label-smoothed loss of a
    linear head, computed without the (N, V) logits.

    It holds the keyword arguments only. The projection is passed at call time, so the head's
    weight stays a parameter of the model (and may be tied to the embedding)::

        criterion = LinearLabelSmoothingCrossEntropy(eps=0.1, z_loss=1e-4)
        loss = criterion(hidden, model.lm_head.weight, labels, bias=model.lm_head.bias)

    ``prior`` is registered as a buffer (it moves with ``.to()``); given, it fixes V and the
    range of ``eps`` is checked at construction, otherwise at the first call.
    ``exclude_classes`` is that of :func:`labelsmooth.linear_cross_entropy` (no class weights
    here, so no ``weight_mode`` either).

    Example:
        >>> criterion = LinearLabelSmoothingCrossEntropy(eps=0.1, softcap=30.0)
        >>> criterion
        LinearLabelSmoothingCrossEntropy(eps=0.1, style='uniform', ignore_index=-100,
                                         reduction='mean', softcap=30.0)
        >>> hidden = torch.randn(6, 4, requires_grad=True)
        >>> weight = torch.randn(10, 4, requires_grad=True)
        >>> criterion(hidden, weight, torch.tensor([1, 2, 3, -100, 5, 9])).backward()
    """

    def __init__(
        self,
        eps: float = 0.1,
        *,
        style: str = "uniform",
        prior: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        return_nll: bool = False,
        impl: str = "auto",
        z_loss: float = 0.0,
        softcap: float | None = None,
        validate: bool = True,
        exclude_classes: Sequence[int] | Tensor | None = None,
    ) -> None:
        super().__init__()
        self.style = _checks.check_style(style)
        self.reduction = _checks.check_reduction(reduction)
        self.ignore_index = _checks.check_int("ignore_index", ignore_index)
        self.return_nll = _checks.check_flag("return_nll", return_nll)
        self.validate = _checks.check_flag("validate", validate)
        self.impl = _checks.check_choice("impl", impl, LINEAR_IMPLS)
        self.z_loss = _checks.check_z_loss(z_loss)
        self.softcap = _checks.check_softcap(softcap)
        prior_t = _as_buffer("prior", prior)
        num_classes = None if prior_t is None else prior_t.shape[0]
        self.eps = _checks.check_eps(eps, num_classes, self.style)
        self.exclude_classes = _checks.check_exclude_classes(
            exclude_classes, num_classes, self.style, self.eps
        )
        if prior_t is not None:
            _checks.check_prior(
                prior_t, prior_t.shape[0], self.style, prior_t.device, prior_t.dtype
            )
        self.register_buffer("prior", prior_t)

    def forward(
        self, hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        return linear_cross_entropy(
            hidden,
            weight,
            target,
            self.eps,
            bias=bias,
            style=self.style,
            prior=self.prior,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            return_nll=self.return_nll,
            impl=self.impl,
            z_loss=self.z_loss,
            softcap=self.softcap,
            validate=self.validate,
            exclude_classes=self.exclude_classes,
        )

    def extra_repr(self) -> str:
        parts = [f"eps={self.eps}", f"style={self.style!r}"]
        if self.prior is not None:
            parts.append(f"prior=<{self.prior.shape[0]} classes>")
        if self.exclude_classes is not None:
            parts.append(f"exclude_classes={list(self.exclude_classes)}")
        parts += [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.return_nll:
            parts.append("return_nll=True")
        if self.impl != "auto":
            parts.append(f"impl={self.impl!r}")
        if not self.validate:
            parts.append("validate=False")
        return ", ".join(parts)

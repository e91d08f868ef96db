"""A checked cross-entropy call, flattened to rows: what every implementation receives.

This module sits below both :mod:`labelsmooth.functional` (which checks the public arguments
through :func:`prepare`) and :mod:`labelsmooth.kernels` (which implement the rows), so that
neither imports the other's internals. It imports only torch, :mod:`labelsmooth._checks` and
:mod:`labelsmooth.targets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _checks
from .targets import smoothing_coefficients

__all__ = ["CrossEntropyProblem", "Implementation", "prepare"]


@dataclass(frozen=True)
class CrossEntropyProblem:
    """A checked cross-entropy call, flattened to rows: what every implementation receives.

    ``logits`` is (M, K) with the class dimension last, in the caller's dtype. For hard labels
    ``target`` is (M,) int64 with ignored entries replaced by 0 and ``valid`` marks the rest;
    for probability targets ``target`` is (M, K) and ``valid`` is ``None``. ``prior`` and
    ``weight`` are (K,) in ``compute_dtype``. ``z_loss`` (0 = off), ``softcap`` (None = off)
    and ``inplace`` are the LLM extras of :func:`labelsmooth.cross_entropy`. ``class_last`` says
    whether the caller's class dimension was last already (``logits`` is then a view of the
    input); for an (N, C, d1, ..., dk) input with d1 * ... * dk > 1 it is False and ``logits`` is a
    copy.

    With ``validate=False`` a class index outside [0, K) that is not ``ignore_index`` is not
    checked up front; :func:`prepare` then stores every *negative* one as K, so that no
    implementation takes it for a class (``weight[-1]`` would silently be the last class's
    weight) or for an ignored element (it would silently change the ``"mean"`` denominator):
    like any index >= K, it makes the call fail (see :func:`labelsmooth.cross_entropy`).
    While ``traced`` (inside ``torch.compile`` or a ``torch.func`` transform, see
    :func:`labelsmooth._checks.tracing`) the indices are treated the same way, unchecked, and
    implementations must not read tensor values on the host.

    ``exclude`` holds the sorted ``exclude_classes`` (classes without smoothing mass), which
    every implementation takes through :meth:`coefficients`. ``weight_mode="sample"`` is
    stored as ``weight=None`` and ``row_weight`` (M,) = w[y] (ignored rows: anything): the
    implementations compute the unweighted rows, and the reduction multiplies them by
    ``row_weight`` and divides ``"mean"`` by its sum over non-ignored rows.

    Per-element smoothing rates are stored as ``eps_rows`` (M,) in ``compute_dtype`` with
    ``eps = 1.0``: :meth:`coefficients` then gives the unit-rate ``(alpha1, b1)``, and row i's
    target is ``onehot + eps_i (b1 + (alpha1 - 1) onehot)`` (both styles are linear in eps).
    Every implementation reads ``eps_rows``: the composite ones per row in torch, the fused
    kernels as the per-row ``RowPlan.rates`` (see :mod:`labelsmooth.kernels.fused`).
    """

    logits: Tensor
    target: Tensor
    valid: Tensor | None
    out_shape: torch.Size
    num_classes: int
    eps: float
    style: str
    prior: Tensor | None
    weight: Tensor | None
    reduction: str
    kl: bool
    compute_dtype: torch.dtype
    z_loss: float = 0.0
    softcap: float | None = None
    inplace: bool = False
    traced: bool = False
    class_last: bool = True
    exclude: tuple[int, ...] | None = None
    row_weight: Tensor | None = None
    eps_rows: Tensor | None = None

    def coefficients(self) -> tuple[float, float | Tensor]:
        """``(alpha, offset)`` of the smoothed target (:func:`smoothing_coefficients`), in
        ``compute_dtype`` on the logits' device when ``offset`` is a vector."""
        return smoothing_coefficients(
            self.eps,
            self.num_classes,
            self.style,
            self.prior,
            self.exclude,
            device=self.logits.device,
            dtype=self.compute_dtype,
        )

    @property
    def soft(self) -> bool:
        return self.valid is None


# An implementation maps a problem to per-row (loss, nll) in compute_dtype; nll may be None when
# it is not asked for. Rows of ignored targets may hold anything: the caller zeroes them.
Implementation = Callable[[CrossEntropyProblem, bool], tuple[Tensor, Tensor | None]]


def prepare(
    input: Tensor,
    target: Tensor,
    eps: float | Tensor,
    style: str,
    prior: Tensor | Sequence[float] | None,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    kl: bool,
    validate: bool,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
    exclude_classes: Sequence[int] | Tensor | None = None,
    weight_mode: str = "pytorch",
) -> CrossEntropyProblem:
    """Checks the arguments of :func:`labelsmooth.cross_entropy` (before any work) and
    flattens them to rows.

    While tracing (:func:`labelsmooth._checks.tracing`) the class indices are not checked,
    whatever ``validate`` says, and are handled as with ``validate=False``.
    """
    input = _checks.check_logits(input)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension, got a 0-dim tensor")
    _checks.check_same_device("target", target, input.device)
    style = _checks.check_style(style)
    reduction = _checks.check_reduction(reduction)
    kl = _checks.check_flag("kl", kl)
    validate = _checks.check_flag("validate", validate)
    z_loss = _checks.check_z_loss(z_loss)
    softcap = _checks.check_softcap(softcap)
    inplace = _checks.check_flag("inplace", inplace)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    class_dim = 0 if input.dim() == 1 else 1
    num_classes = input.shape[class_dim]
    if num_classes < 1:
        raise ValueError(f"input must have at least one class, got shape {tuple(input.shape)}")
    per_element = _checks.is_eps_rows(eps)
    if not per_element:
        eps = _checks.check_eps(eps, num_classes, style, kl=kl)
    exclude = _checks.check_exclude_classes(
        exclude_classes, num_classes, style, None if per_element else eps
    )
    weight_mode = _checks.check_weight_mode(weight_mode)
    index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    soft = target.shape == input.shape
    if soft and not target.is_floating_point():
        raise TypeError(
            f"target has the shape of input, so it is taken as class probabilities and must be "
            f"floating point, got dtype={target.dtype}"
        )
    if not soft:
        if target.is_floating_point():
            raise TypeError(
                f"target must hold integer class indices (or be class probabilities of shape "
                f"{tuple(input.shape)}), got dtype={target.dtype} with shape {tuple(target.shape)}"
            )
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"target must hold integer class indices, got dtype={target.dtype}")
        if target.shape != index_shape:
            raise ValueError(
                f"target must have shape {tuple(index_shape)} for input of shape "
                f"{tuple(input.shape)} (class dimension {class_dim}), "
                f"got shape {tuple(target.shape)}"
            )
    elif ignore_index >= 0:
        raise ValueError(
            f"ignore_index is not supported for probability targets (it must be negative), "
            f"got ignore_index={ignore_index}"
        )
    dtype = _checks.compute_dtype(input.dtype)
    eps_rows = None
    if per_element:
        assert isinstance(eps, Tensor)
        eps_rows = _checks.check_eps_rows(
            eps, index_shape, num_classes, style, kl=kl, exclude=exclude, device=input.device,
            dtype=dtype,
        )  # fmt: skip
        eps = 1.0  # the unit rate: see CrossEntropyProblem
    prior_t = _checks.check_prior(prior, num_classes, style, input.device, dtype)
    weight_t = _checks.check_weight(weight, num_classes, input.device, dtype)
    traced = _checks.tracing(input, target, weight, prior, eps_rows)
    checked = validate and not traced
    if not traced:
        _checks.check_prior_on_kept(prior_t, exclude)
    if checked and not soft:
        _checks.check_class_indices(target, num_classes, ignore_index)
        if exclude and style == "others" and eps != 0:
            _checks.check_excluded_labels(target, target != ignore_index, exclude)

    logits = input.movedim(class_dim, -1).reshape(-1, num_classes)
    if soft:
        rows = target.movedim(class_dim, -1).reshape(-1, num_classes)
        valid = None
    else:
        flat = target.reshape(-1).long()
        valid = flat != ignore_index
        rows = flat.masked_fill(~valid, 0)
        if not checked:
            # Unchecked: a negative index other than ignore_index is out of range like one
            # >= K, never a class (no wrap-around) and never ignored (see the class docstring).
            rows = rows.masked_fill(rows < 0, num_classes)
    row_weight = None
    if weight_mode == "sample" and weight_t is not None:
        if soft:
            raise ValueError(
                "weight_mode='sample' weights each element by the weight of its label and "
                "needs class-index targets, got probability targets (use weight_mode='pytorch')"
            )
        # Out-of-range rows (unchecked) are clamped here only to index the weight; the
        # implementation fails or marks them as for weight_mode="pytorch".
        row_weight = weight_t[rows.clamp(0, num_classes - 1)]
        weight_t = None
    return CrossEntropyProblem(
        logits=logits,
        target=rows,
        valid=valid,
        out_shape=index_shape,
        num_classes=num_classes,
        eps=eps,
        style=style,
        prior=prior_t,
        weight=weight_t,
        reduction=reduction,
        kl=kl,
        compute_dtype=dtype,
        z_loss=z_loss,
        softcap=softcap,
        inplace=inplace,
        traced=traced,
        class_last=math.prod(input.shape[class_dim + 1 :]) == 1,
        exclude=exclude,
        row_weight=row_weight,
        eps_rows=eps_rows,
    )

r"""Smoothed targets: pure functions, class dimension last.

Both conventions of the literature are affine maps of the (one-hot or soft) target ``t``:

.. math::

    \tilde t_c = \alpha\, t_c + b_c

============  ======================  ================================  ===========================
style         :math:`\alpha`          :math:`b_c`                       hard label y gives
============  ======================  ================================  ===========================
``uniform``   1 - eps                 eps / K  (or eps * prior[c])      1-eps+eps/K on y, eps/K off
``others``    1 - eps K / (K-1)       eps / (K-1)                       1-eps on y, eps/(K-1) off
============  ======================  ================================  ===========================

Binary targets use the same rules with K = 2. :func:`smoothing_coefficients` is the one place
where these numbers are computed; the losses use it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _checks

__all__ = ["smooth_binary", "smooth_labels", "smoothing_coefficients"]


def smoothing_coefficients(
    eps: float,
    num_classes: int,
    style: str,
    prior: Tensor | None = None,
) -> tuple[float, float | Tensor]:
    r"""Returns ``(alpha, offset)`` with smoothed target = ``alpha * t + offset``.

    ``offset`` is a Python float (the same for every class) or, with ``prior``, a length-K
    tensor ``eps * prior``. Arguments are assumed checked (see :mod:`labelsmooth._checks`).

    >>> smoothing_coefficients(0.1, 5, "uniform")
    (0.9, 0.02)
    >>> alpha, offset = smoothing_coefficients(0.1, 6, "others")
    >>> round(alpha, 6), round(offset, 6)
    (0.88, 0.02)
    """
    if style == "uniform":
        if prior is not None:
            return 1.0 - eps, eps * prior
        return 1.0 - eps, eps / num_classes
    if eps == 0:
        return 1.0, 0.0
    return 1.0 - eps * num_classes / (num_classes - 1), eps / (num_classes - 1)


def smooth_labels(
    target: Tensor,
    num_classes: int | None = None,
    eps: float = 0.1,
    *,
    style: str = "uniform",
    prior: Tensor | Sequence[float] | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Smoothed one-hot targets, with the class dimension last.

    * integer ``target`` of any shape holds class indices; the result has a new last dimension
      of size ``num_classes`` (inferred as ``target.max() + 1`` when ``None``, like
      :func:`torch.nn.functional.one_hot`): ``uniform`` puts ``1 - eps + eps/K`` on the true
      class and ``eps/K`` elsewhere; ``others`` puts ``1 - eps`` and ``eps/(K-1)``.
    * floating ``target`` is a distribution over its last dimension (soft labels, mixup):
      ``uniform``: ``(1-eps) t + eps/K``; ``others``: ``(1-eps) t + eps (1-t)/(K-1)``.

    ``prior`` (``style="uniform"`` only) replaces ``eps/K`` by ``eps * prior[c]``
    (unigram smoothing, Pereyra et al. 2017). Negative ``eps`` (generalised label smoothing,
    Wei et al. 2022) gives targets above 1 on the true class and below 0 elsewhere.

    Args:
        target: class indices (integer dtype) or probabilities (floating, last dim = K).
        num_classes: K. Required to be the last dimension for floating targets.
        eps: smoothing rate; ``uniform``: eps <= 1, ``others``: eps <= (K-1)/K.
        style: ``"uniform"`` (default) or ``"others"``.
        prior: length-K distribution replacing the uniform share (``"uniform"`` only).
        dtype: result dtype for integer targets (default: ``torch.get_default_dtype()``);
            floating targets keep their dtype.

    Under ``torch.compile`` or a ``torch.func`` transform the class indices (and ``prior``'s
    values) are not checked, as that would read them on the host; pass ``num_classes`` there.

    Returns:
        Tensor of shape ``target.shape + (K,)`` (integer) or ``target.shape`` (floating).

    Example:
        >>> smooth_labels(torch.tensor([2]), 6, 0.1, style="others")
        tensor([[0.0200, 0.0200, 0.9000, 0.0200, 0.0200, 0.0200]])
        >>> smooth_labels(torch.tensor([0]), 3, 0.1, style="others")
        tensor([[0.9000, 0.0500, 0.0500]])
        >>> smooth_labels(torch.tensor([0.0, 1.0]), eps=0.3)
        tensor([0.1500, 0.8500])
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    style = _checks.check_style(style)
    if target.is_floating_point():
        if target.dim() == 0:
            raise ValueError("target must have a last (class) dimension, got a 0-dim float tensor")
        k = target.shape[-1]
        if num_classes is not None and _checks.check_int("num_classes", num_classes) != k:
            raise ValueError(
                f"num_classes must equal the last dimension of a floating target ({k}), "
                f"got num_classes={num_classes}"
            )
        eps = _checks.check_eps(eps, k, style)
        prior_t = _checks.check_prior(prior, k, style, target.device, target.dtype)
        alpha, offset = smoothing_coefficients(eps, k, style, prior_t)
        return alpha * target + offset
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"target must hold integer class indices or floating probabilities, "
            f"got dtype={target.dtype}"
        )
    if num_classes is None:
        if target.numel() == 0:
            raise ValueError("num_classes must be given when target is empty")
        num_classes = int(target.max()) + 1
    k = _checks.check_int("num_classes", num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got num_classes={k}")
    eps = _checks.check_eps(eps, k, style)
    out_dtype = _checks.check_float_dtype("dtype", dtype)
    prior_t = _checks.check_prior(prior, k, style, target.device, out_dtype)
    if not _checks.tracing(target):
        _checks.check_class_indices(target, k, ignore_index=None)
    alpha, offset = smoothing_coefficients(eps, k, style, prior_t)
    base = torch.zeros((*target.shape, k), dtype=out_dtype, device=target.device)
    base = base + offset  # broadcasts the offset vector (prior) or scalar
    return base.scatter_add(-1, target.long().unsqueeze(-1), torch.full_like(base[..., :1], alpha))


def smooth_binary(
    target: Tensor,
    eps: float = 0.1,
    *,
    style: str = "uniform",
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""Smoothed binary (or multi-label) targets in [0, 1], elementwise.

    * ``uniform`` (Keras ``BinaryCrossentropy(label_smoothing=eps)``): ``t (1-eps) + eps/2``.
    * ``others``: ``t (1-2 eps) + eps``, so 1 -> 1-eps and 0 -> eps; eps <= 0.5.

    Integer or bool targets (0/1 labels) are accepted and converted to ``dtype``
    (default ``torch.get_default_dtype()``); floating targets keep their dtype. That they lie
    in [0, 1] is checked, except under ``torch.compile`` or a ``torch.func`` transform.

    Example:
        >>> smooth_binary(torch.tensor([0.0, 1.0]), 0.1, style="others")
        tensor([0.1000, 0.9000])
        >>> smooth_binary(torch.tensor([0.0, 1.0]), 0.1)
        tensor([0.0500, 0.9500])
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    style = _checks.check_style(style)
    eps = _checks.check_eps(eps, 2, style, binary=True)
    if target.is_complex():
        raise TypeError(f"target must be real, got dtype={target.dtype}")
    out_dtype = _checks.check_float_dtype("dtype", dtype)
    if not target.is_floating_point():
        target = target.to(out_dtype)
    _checks.check_unit_interval("target", target)
    alpha, offset = smoothing_coefficients(eps, 2, style)
    return alpha * target + offset

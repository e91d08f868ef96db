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
    exclude: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[float, float | Tensor]:
    r"""Returns ``(alpha, offset)`` with smoothed target = ``alpha * t + offset``.

    ``offset`` is a Python float (the same for every class) or, with ``prior`` or ``exclude``,
    a length-K tensor (``prior``'s dtype and device, else ``dtype`` and ``device``). Always
    ``alpha + sum(offset) = 1``. Arguments are assumed checked (see :mod:`labelsmooth._checks`).

    ``exclude`` (class indices, see ``exclude_classes`` of :func:`smooth_labels`) gives the
    excluded classes offset 0; with K' = K - len(exclude) kept classes: ``"uniform"``
    ``alpha = 1 - eps``, ``b_c = eps/K'`` (with ``prior``: ``eps * prior[c] / sum of prior
    over the kept classes``); ``"others"`` ``alpha = 1 - eps K'/(K'-1)``, ``b_c = eps/(K'-1)``.

    >>> smoothing_coefficients(0.1, 5, "uniform")
    (0.9, 0.02)
    >>> alpha, offset = smoothing_coefficients(0.1, 6, "others")
    >>> round(alpha, 6), round(offset, 6)
    (0.88, 0.02)
    >>> smoothing_coefficients(0.1, 4, "uniform", exclude=[0])[1]
    tensor([0.0000, 0.0333, 0.0333, 0.0333])
    """
    if exclude:
        if prior is not None:
            keep = torch.ones(num_classes, dtype=prior.dtype, device=prior.device)
        else:
            keep = torch.ones(num_classes, dtype=dtype, device=device)
        keep[list(exclude)] = 0.0
        kept = num_classes - len(exclude)
        if style == "uniform":
            if prior is not None:
                masked = prior * keep
                # Renormalised over the kept classes (a host-free division; the check that
                # the kept mass is > 0 is in _checks.check_prior_on_kept).
                return 1.0 - eps, eps * masked / masked.sum()
            return 1.0 - eps, keep * (eps / kept)
        if eps == 0:
            return 1.0, keep * 0.0
        return 1.0 - eps * kept / (kept - 1), keep * (eps / (kept - 1))
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
    exclude_classes: Sequence[int] | Tensor | None = None,
) -> Tensor:
    r"""Smoothed one-hot targets, with the class dimension last.

    * integer ``target`` of any shape holds class indices; the result has a new last dimension
      of size ``num_classes`` (inferred as ``target.max() + 1`` when ``None``, like
      :func:`torch.nn.functional.one_hot`): ``uniform`` puts ``1 - eps + eps/K`` on the true
      class and ``eps/K`` elsewhere; ``others`` puts ``1 - eps`` and ``eps/(K-1)``.
    * floating ``target`` is a distribution over its last dimension (soft labels, mixup):
      ``uniform``: ``(1-eps) t + eps/K``; ``others``: ``(1-eps) t + eps (1-t)/(K-1)``.

    ``prior`` (``style="uniform"`` only) replaces ``eps/K`` by ``eps * prior[c]``
    (unigram smoothing, Pereyra et al. 2017).

    ``exclude_classes`` lists classes that receive no smoothing mass (a padding token, as in
    OpenNMT-py and the Annotated Transformer); with K' = K - len(exclude_classes) kept classes,
    ``uniform`` puts ``1 - eps`` on the label plus ``eps/K'`` on every kept class, and 0 on the
    excluded ones except the label; ``others`` puts ``1 - eps`` on the label and ``eps/(K'-1)``
    on every other kept class (eps <= (K'-1)/K'), and an integer label that is itself excluded
    is a ``ValueError`` there (its row would not be a target of that form). With ``prior``,
    the prior is restricted to the kept classes and renormalised: ``eps * prior[c] /
    sum_{kept} prior``. Floating targets are mapped by the same affine rule ``alpha t + b``
    (:func:`smoothing_coefficients`). Negative ``eps`` (generalised label smoothing,
    Wei et al. 2022) gives targets above 1 on the true class and below 0 elsewhere.

    Args:
        target: class indices (integer dtype) or probabilities (floating, last dim = K).
        num_classes: K. Required to be the last dimension for floating targets.
        eps: smoothing rate; ``uniform``: eps <= 1, ``others``: eps <= (K-1)/K.
        style: ``"uniform"`` (default) or ``"others"``.
        prior: length-K distribution replacing the uniform share (``"uniform"`` only).
        dtype: result dtype for integer targets (default: ``torch.get_default_dtype()``);
            floating targets keep their dtype.
        exclude_classes: class indices (a sequence of ints or a 1-D integer tensor) that
            receive no smoothing mass; unique, in [0, K), not all of them.

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
        >>> smooth_labels(torch.tensor([2]), 5, 0.1, style="others", exclude_classes=[0])
        tensor([[0.0000, 0.0333, 0.9000, 0.0333, 0.0333]])
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
        exclude = _checks.check_exclude_classes(exclude_classes, k, style, eps)
        prior_t = _checks.check_prior(prior, k, style, target.device, target.dtype)
        _checks.check_prior_on_kept(prior_t, exclude)
        alpha, offset = smoothing_coefficients(
            eps, k, style, prior_t, exclude, device=target.device, dtype=target.dtype
        )
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
    exclude = _checks.check_exclude_classes(exclude_classes, k, style, eps)
    out_dtype = _checks.check_float_dtype("dtype", dtype)
    prior_t = _checks.check_prior(prior, k, style, target.device, out_dtype)
    _checks.check_prior_on_kept(prior_t, exclude)
    if not _checks.tracing(target):
        _checks.check_class_indices(target, k, ignore_index=None)
        if exclude and style == "others" and eps != 0:
            _checks.check_excluded_labels(target, None, exclude)
    alpha, offset = smoothing_coefficients(
        eps, k, style, prior_t, exclude, device=target.device, dtype=out_dtype
    )
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

r"""Spatially varying label smoothing (SVLS) for segmentation.

Islam and Glocker, "Spatially Varying Label Smoothing: Capturing Uncertainty from Expert
Annotations", IPMI 2021 (LNCS 12729; code: github.com/mobarakol/SVLS, ``svls.py`` and
``SVLS_2D.ipynb``). The one-hot label map is blurred with a Gaussian whose centre weight is
replaced, so that every pixel keeps half of its own label and shares the other half among its
neighbours in proportion to a Gaussian of their distance :math:`d` (in pixels):

.. math::

    w_0 = \tfrac12, \qquad
    w_d = \tfrac12\,\frac{e^{-\|d\|^2 / 2\sigma^2}}{\sum_{d' \ne 0} e^{-\|d'\|^2 / 2\sigma^2}}
    \quad (d \ne 0).

That is the authors' construction: normalise the Gaussian :math:`g`, set its centre to the sum
of the neighbours :math:`1 - g_0`, divide by that sum, and divide the convolution by the
kernel's sum (2). The label map is padded by replicating its border (their
``padding_mode='replicate'``), so every soft target sums to 1. The loss is the soft-target
cross-entropy :math:`-\sum_c \tilde t_c \log p_c` per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ._common import IndexedLossModule, reduce_masked

__all__ = [
    "SpatialLabelSmoothingLoss",
    "spatial_label_smoothing",
    "spatial_smooth_labels",
    "svls_kernel",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _check_kernel_args(sigma: object, kernel_size: object) -> tuple[float, int]:
    sigma = _checks.check_real("sigma", sigma, minimum=0.0, strict=True)
    size = _checks.check_int("kernel_size", kernel_size)
    if size < 3 or size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 3, got kernel_size={size}")
    return sigma, size


def svls_kernel(
    ndim: int = 2,
    sigma: float = 1.0,
    kernel_size: int = 3,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""The normalised SVLS kernel (Islam and Glocker, IPMI 2021): sums to 1, centre 1/2.

    The neighbours' half is a softmax of :math:`-\|d\|^2 / 2\sigma^2` over the
    ``kernel_size**ndim - 1`` offsets :math:`d \ne 0`, which equals the authors'
    ``g_d / (1 - g_0) / 2`` without their Gaussian's under- or overflow for extreme
    ``sigma`` (computed in float64, then cast).

    Args:
        ndim: number of spatial dimensions, 1, 2 or 3.
        sigma: standard deviation of the Gaussian in pixels, > 0.
        kernel_size: odd, >= 3 (the authors use 3).
        dtype: result dtype (default ``torch.get_default_dtype()``).

    Returns:
        Tensor of shape ``(kernel_size,) * ndim``.

    Example:
        >>> svls_kernel(2, sigma=1.0)
        tensor([[0.0472, 0.0778, 0.0472],
                [0.0778, 0.5000, 0.0778],
                [0.0472, 0.0778, 0.0472]])
    """
    ndim = _checks.check_int("ndim", ndim)
    if ndim not in _CONV:
        raise ValueError(f"ndim must be 1, 2 or 3 (spatial dimensions), got ndim={ndim}")
    sigma, size = _check_kernel_args(sigma, kernel_size)
    out_dtype = _checks.check_float_dtype("dtype", dtype)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    grids = torch.meshgrid(*([offsets] * ndim), indexing="ij")
    squared = sum(grid.square() for grid in grids)
    centre = (size // 2,) * ndim
    # Shifted so that the nearest neighbours (|d| = 1) have logit 0, and divided by sigma twice
    # rather than by 2 sigma^2: sigma = 1e-300 gives them 1/(2 ndim) each (the limit) instead
    # of 0/0, and sigma = 1e300 a uniform share instead of an overflow.
    logits = -((squared - 1.0) / (2.0 * sigma)) / sigma
    logits[centre] = -torch.inf
    kernel = 0.5 * torch.softmax(logits.flatten(), 0).reshape(logits.shape)
    kernel[centre] = 0.5
    return kernel.to(out_dtype)


def _soft_targets(
    target: Tensor,
    num_classes: int,
    sigma: float,
    kernel_size: int,
    ignore_index: int,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(N, K, *spatial) soft targets and the (N, *spatial) mask of non-ignored pixels."""
    ndim = target.dim() - 1
    valid = target != ignore_index
    if target.numel() == 0:  # replicate padding refuses empty spatial dimensions
        shape = (target.shape[0], num_classes, *target.shape[1:])
        return torch.zeros(shape, dtype=dtype, device=target.device), valid
    rows = torch.where(valid, target.long(), 0)
    one_hot = F.one_hot(rows, num_classes).to(dtype) * valid.unsqueeze(-1).to(dtype)
    # The mask of labelled pixels travels as channel K: blurred the same way it gives the
    # mass each pixel received, by which the targets are divided (1 without ignored pixels).
    channels = torch.cat([one_hot, valid.unsqueeze(-1).to(dtype)], dim=-1).movedim(-1, 1)
    radius = kernel_size // 2
    padded = F.pad(channels, (radius,) * (2 * ndim), mode="replicate")
    kernel = svls_kernel(ndim, sigma, kernel_size, dtype=dtype).to(target.device)
    weight = kernel.expand(num_classes + 1, 1, *kernel.shape)
    blurred = _CONV[ndim](padded, weight, groups=num_classes + 1)
    mass = blurred[:, num_classes:]
    soft = torch.where(valid.unsqueeze(1), blurred[:, :num_classes], 0.0)
    return soft / torch.where(mass > 0, mass, 1.0), valid


def _check_label_map(target: object, batch_shape: tuple[int, ...] | None) -> Tensor:
    target = _checks.check_index_dtype(target)
    if batch_shape is not None and tuple(target.shape) != batch_shape:
        raise ValueError(
            f"target must have shape {batch_shape} (input without its class dimension 1), "
            f"got shape {tuple(target.shape)}"
        )
    if not 2 <= target.dim() <= 4:
        raise ValueError(
            f"target must be a label map (N, d1[, d2[, d3]]) with 1 to 3 spatial dimensions, "
            f"got shape {tuple(target.shape)}"
        )
    return target


def spatial_smooth_labels(
    target: Tensor,
    num_classes: int,
    sigma: float = 1.0,
    *,
    kernel_size: int = 3,
    ignore_index: int = -100,
    dtype: torch.dtype | None = None,
) -> Tensor:
    r"""SVLS soft targets of a label map (Islam and Glocker, IPMI 2021).

    The one-hot map convolved with :func:`svls_kernel` after replicate padding. Pixels equal
    to ``ignore_index`` carry no label: they give nothing to their neighbours, whose targets
    are renormalised by the mass they did receive (at least the centre's 1/2), and their own
    target is all zeros. Without ignored pixels every target sums to 1 as is.

    Args:
        target: class indices (N, d1), (N, H, W) or (N, D, H, W), integer.
        num_classes: K.
        sigma: standard deviation of the Gaussian in pixels, > 0.
        kernel_size: odd, >= 3.
        ignore_index: label of unlabelled pixels.
        dtype: result dtype (default ``torch.get_default_dtype()``).

    Returns:
        Tensor (N, K, *spatial): the class dimension is 1, as in the logits.

    Example:
        >>> labels = torch.tensor([[[0, 1], [1, 1]]])
        >>> spatial_smooth_labels(labels, 2)[0, 0]
        tensor([[0.7028, 0.1250],
                [0.1250, 0.0472]])
    """
    target = _check_label_map(target, None)
    k = _checks.check_int("num_classes", num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got num_classes={k}")
    sigma, size = _check_kernel_args(sigma, kernel_size)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    out_dtype = _checks.check_float_dtype("dtype", dtype)
    if not _checks.tracing(target):
        _checks.check_class_indices(target, k, ignore_index)
    soft, _ = _soft_targets(target, k, sigma, size, ignore_index, out_dtype)
    return soft


def spatial_label_smoothing(
    input: Tensor,
    target: Tensor,
    sigma: float = 1.0,
    *,
    kernel_size: int = 3,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""SVLS cross-entropy (Islam and Glocker, IPMI 2021) for segmentation logits.

    Per pixel, with :math:`p = \mathrm{softmax}(x)` over the class dimension 1 and the soft
    target :math:`\tilde t` of :func:`spatial_smooth_labels`:
    :math:`\ell = -\sum_c \tilde t_c \log p_c`. The targets carry no gradient.

    The authors' ``CELossWithSVLS`` (3-D) and ``CELossWithSVLS_2D`` average over all pixels,
    which is ``reduction="mean"`` here when no pixel is ignored; their code fixes the kernel
    size at 3 (the 3-D version hard-codes the centre ``[1, 1, 1]`` and a padding of 1), which
    is the default here; larger odd sizes use the same construction around the true centre.

    Args:
        input: logits (N, C, d1), (N, C, H, W) or (N, C, D, H, W); any floating dtype.
        target: class indices (N, d1), (N, H, W) or (N, D, H, W), integer.
        sigma: standard deviation of the Gaussian in pixels, > 0 (the authors' default 1).
        kernel_size: odd, >= 3.
        ignore_index: label of pixels that contribute nothing (see
            :func:`spatial_smooth_labels` for their neighbours).
        reduction: ``"none"`` | ``"mean"`` (over non-ignored pixels; 0 if there are none)
            | ``"sum"``.

    Returns:
        ``"none"``: a tensor of the target's shape in the input's dtype; otherwise a scalar in
        float32 (float64 for float64 input).

    Example:
        >>> logits = torch.zeros(1, 3, 4, 4)
        >>> labels = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
        >>> spatial_label_smoothing(logits, labels, sigma=1.0)  # uniform p: log 3
        tensor(1.0986)
    """
    input = _checks.check_logits(input)
    if not 3 <= input.dim() <= 5:
        raise ValueError(
            f"input must be segmentation logits (N, C, d1[, d2[, d3]]) with 1 to 3 spatial "
            f"dimensions, got shape {tuple(input.shape)}"
        )
    num_classes = input.shape[1]
    if num_classes < 1:
        raise ValueError(f"input must have at least one class, got shape {tuple(input.shape)}")
    batch_shape = (input.shape[0], *input.shape[2:])
    target = _check_label_map(target, batch_shape)
    _checks.check_same_device("target", target, input.device)
    sigma, size = _check_kernel_args(sigma, kernel_size)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    reduction = _checks.check_reduction(reduction)
    if not _checks.tracing(input, target):
        _checks.check_class_indices(target, num_classes, ignore_index)
    dtype = _checks.compute_dtype(input.dtype)
    with torch.no_grad():
        soft, valid = _soft_targets(target, num_classes, sigma, size, ignore_index, dtype)
    log_probs = F.log_softmax(input.to(dtype), dim=1)
    loss = -(soft * log_probs).sum(1)
    return reduce_masked(loss, valid, reduction, input.dtype)


class SpatialLabelSmoothingLoss(IndexedLossModule):
    """Module form of :func:`spatial_label_smoothing` (SVLS, Islam and Glocker, IPMI 2021).

    Example:
        >>> criterion = SpatialLabelSmoothingLoss(sigma=1.0)
        >>> criterion
        SpatialLabelSmoothingLoss(sigma=1.0, kernel_size=3, ignore_index=-100, reduction='mean')
        >>> logits = torch.zeros(2, 4, 5, 5, requires_grad=True)
        >>> criterion(logits, torch.randint(4, (2, 5, 5))).backward()
    """

    def __init__(
        self,
        sigma: float = 1.0,
        *,
        kernel_size: int = 3,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(ignore_index, reduction)
        self.sigma, self.kernel_size = _check_kernel_args(sigma, kernel_size)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return spatial_label_smoothing(
            input,
            target,
            self.sigma,
            kernel_size=self.kernel_size,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def arguments(self) -> list[str]:
        return [f"sigma={self.sigma}", f"kernel_size={self.kernel_size}"]

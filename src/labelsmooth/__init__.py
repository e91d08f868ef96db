"""labelsmooth: label smoothing for PyTorch, right in every task shape, both conventions named.

>>> import torch, labelsmooth as ls
>>> ls.smooth_labels(torch.tensor([1]), 3, eps=0.3)
tensor([[0.1000, 0.8000, 0.1000]])
"""

from . import analysis, distributed, metrics, nn
from .functional import binary_cross_entropy_with_logits, cross_entropy, linear_cross_entropy
from .targets import smooth_binary, smooth_labels, smoothing_coefficients

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "analysis",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "distributed",
    "linear_cross_entropy",
    "metrics",
    "nn",
    "smooth_binary",
    "smooth_labels",
    "smoothing_coefficients",
]

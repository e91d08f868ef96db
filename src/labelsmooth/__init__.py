"""labelsmooth: label smoothing for PyTorch, right in every task shape, both conventions named.

>>> import torch, labelsmooth as ls
>>> ls.smooth_labels(torch.tensor([1]), 3, eps=0.3)
tensor([[0.1000, 0.8000, 0.1000]])
"""

from . import analysis, distributed, metrics, nn, schedules, streaming, variants
from .diagnosis import Diagnosis, diagnose
from .functional import (
    DoubleSmoothingWarning,
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear_cross_entropy,
)
from .targets import smooth_binary, smooth_labels, smoothing_coefficients

__version__ = "0.1.0"

# The streaming metrics live in `streaming` (which builds on `metrics`); they are also reachable
# as `ls.metrics.CalibrationError` etc., set here so that `metrics` never imports `streaming`.
for _name in streaming.__all__:
    setattr(metrics, _name, getattr(streaming, _name))
del _name


def __getattr__(name: str) -> object:
    """``ls.integrations`` is imported on first use: its modules need optional packages."""
    if name == "integrations":
        import importlib

        return importlib.import_module(".integrations", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Diagnosis",
    "DoubleSmoothingWarning",
    "__version__",
    "analysis",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "diagnose",
    "distributed",
    "linear_cross_entropy",
    "metrics",
    "nn",
    "schedules",
    "smooth_binary",
    "smooth_labels",
    "smoothing_coefficients",
    "streaming",
    "variants",
]

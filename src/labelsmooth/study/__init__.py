"""The study: the CLI's experiments, and :class:`Sweep`, the same protocol on a user's own model.

Needs the ``study`` extra (scikit-learn for the bundled digits data, matplotlib for figures).
``Sweep``, ``Outputs`` and ``EpochReport`` are imported on first use, so that importing one
submodule (the demo's training loop) does not load the report's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Sweep": ".sweep", "Outputs": ".outputs", "EpochReport": ".outputs"}

__all__ = ["EpochReport", "Outputs", "Sweep"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

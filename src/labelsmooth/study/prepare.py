"""The study's data set as a configuration names it, and the fingerprint of its contents.

Used by the study's entry point and by its worker processes, which rebuild the plan from the
configuration; it sits below both, so neither imports the other.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from .config import StudyConfig
from .data import Limits, Split, load_dataset


def prepare_data(config: StudyConfig) -> tuple[Split, str]:
    """The data set of ``config`` (after ``max_train``) and the fingerprint of its contents."""
    limits = Limits.resolve(config.max_data_bytes or None, config.max_classes or None)
    data = load_dataset(
        config.dataset, seed=0, label_column=config.label_column or None, limits=limits
    )
    if config.max_train and len(data.x_train) > config.max_train:
        data = data.subset_train(config.max_train, seed=0)
    fingerprint = data_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
    return data, fingerprint


def data_fingerprint(*arrays: Any) -> str:
    """A hash of the data's contents (tensors or arrays), shapes and dtypes included."""
    digest = hashlib.sha256()
    for array in arrays:
        value = np.ascontiguousarray(
            array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        )
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]

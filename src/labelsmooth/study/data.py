"""Data sets for the study. The default, scikit-learn's bundled ``load_digits``, is real data
that ships with scikit-learn: nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """A train/test split of features (N, D) float32 and labels (N,) int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split, deterministic under ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * test_fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per feature, with statistics from the training part only."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def from_arrays(
    name: str, features: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> Split:
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels).astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed)
    x_train, x_test = standardise(features[train], features[test])
    return Split(
        name=name,
        x_train=torch.from_numpy(x_train.astype(np.float32)),
        y_train=torch.from_numpy(labels[train]),
        x_test=torch.from_numpy(x_test.astype(np.float32)),
        y_test=torch.from_numpy(labels[test]),
        num_classes=int(labels.max()) + 1,
    )


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits: 1797 images, 64 features, 10 classes."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "the digits data set needs scikit-learn: pip install 'labelsmooth[study]'"
        ) from err
    bunch = sklearn_load_digits()
    return from_arrays("digits", bunch.data, bunch.target, test_fraction, seed)

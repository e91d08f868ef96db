"""Data sets for the study.

The default, scikit-learn's bundled ``load_digits``, is real data that ships with scikit-learn:
nothing is downloaded. ``synthetic`` is a harder generated task. User files are read by the
loaders below; no pickle is ever loaded (``np.load(allow_pickle=False)``, CIFAR-10's binary
format, IDX). Every malformed input raises :class:`DatasetError` with a one-line message.

Specs (``--dataset``): ``digits``, ``synthetic``, ``mnist:DIR``, ``cifar10:DIR``, ``npz:FILE``,
``csv:FILE``.

CSV files (``csv:FILE``)
    One example per row. Cells are separated by commas, semicolons or tabs (whichever the first
    line holds most of); quoted cells, blank lines and a UTF-8 byte-order mark are allowed.

    *Header row.* The first row is a header when one of its cells is text (not a number) above a
    number in the second row; otherwise the file has no header and every row is an example.

    *Label column.* ``--label-column NAME`` picks the header column of that name (case and
    surrounding spaces ignored); ``--label-column INDEX`` picks a column by position, 0 being
    the first and -1 the last (a value made of digits is always an index). Without
    ``--label-column`` the label is the header column named ``label``, ``target``, ``y`` or
    ``class`` (in that order of preference); a file with no such column, or with no header,
    is refused: the last column is never taken silently.

    *Labels* may be integers, other numbers or text (``M``/``B``). They are mapped to the
    classes 0..K-1 in sorted order of their values (numeric order when every label is a number,
    else string order), so labels 1, 2, 3 give 3 classes; ``Split.class_names[k]`` is the
    original label of class ``k``. A numeric label column with non-integer values and more than
    20 distinct values is refused as a regression target. There must be at least 2 classes and
    every class needs at least 3 examples (to be split into training, validation and test).

    *Features* are every other column and must be finite numbers (no empty cells); a column
    that is empty in every row (as a trailing comma makes) is ignored. Features are
    standardised with statistics of the training part, and 30% of the rows, stratified by
    class, are held out as the test set.

Untrusted files cannot exhaust memory: the sizes a file declares (npz array headers, IDX
headers, file sizes) are checked against :class:`Limits` before anything is decompressed or
read -- at most 2 GiB of values counted as float64 and 1000 classes by default, raised with
``--max-data-bytes``/``--max-classes`` or ``LABELSMOOTH_MAX_DATA_BYTES``/
``LABELSMOOTH_MAX_CLASSES``.

NPZ files (``npz:FILE``) with class labels (not multi-label) are mapped the same way: labels
{1, 2, 3} or {0, 5} become classes 0..K-1, and a test label absent from the training labels is
refused. MNIST and CIFAR-10 keep their fixed 10 classes.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class DatasetError(ValueError):
    """A data set could not be read: missing, truncated or malformed file, bad labels."""


# ----------------------------------------------------------------------------------------------
# Limits on untrusted files
# ----------------------------------------------------------------------------------------------

DEFAULT_MAX_DATA_BYTES = 2 * 1024**3
DEFAULT_MAX_CLASSES = 1000
MAX_DATA_BYTES_ENV = "LABELSMOOTH_MAX_DATA_BYTES"
MAX_CLASSES_ENV = "LABELSMOOTH_MAX_CLASSES"
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, what: str = "size") -> int:
    """A byte count such as ``2147483648``, ``512M`` or ``4GiB`` (K, M, G, T are powers of
    1024; a trailing ``B`` or ``iB`` is allowed). Raises :class:`ValueError` naming ``what``."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if match is None:
        raise ValueError(
            f"{what} must be a number of bytes such as 2147483648, 512M or 4G, got {text!r}"
        )
    value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if value < 1:
        raise ValueError(f"{what} must be at least 1 byte, got {text!r}")
    return value


def format_size(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


@dataclass(frozen=True)
class Limits:
    """Caps that keep an untrusted data file from exhausting memory.

    ``max_data_bytes`` bounds the memory the data set's values take as the study holds them:
    every value (feature or label) counts 8 bytes, the float64 the loaders compute in, so a
    1 MiB ``uint8`` image array counts 8 MiB. It is checked against the sizes a file declares
    (npz array headers, IDX headers, file sizes) before anything is decompressed or read;
    peak memory while loading is a few times it. A CSV file is parsed in memory at about 8
    bytes per byte of text, so a CSV file counts 8 bytes per byte. Default 2 GiB (CIFAR-10
    takes 1.4 GiB); ``--max-data-bytes``, the setting ``max_data_bytes`` or the environment
    variable ``LABELSMOOTH_MAX_DATA_BYTES`` raise it.

    ``max_classes`` bounds the number of classes (distinct labels; for multi-label data, label
    columns). Default 1000; ``--max-classes``, ``max_classes`` or ``LABELSMOOTH_MAX_CLASSES``.
    """

    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES
    max_classes: int = DEFAULT_MAX_CLASSES

    @classmethod
    def resolve(cls, max_data_bytes: int | None = None, max_classes: int | None = None) -> Limits:
        """The given values; a value that is ``None`` or 0 comes from the environment variable,
        else the default."""
        if not max_data_bytes:
            text = os.environ.get(MAX_DATA_BYTES_ENV, "").strip()
            try:
                max_data_bytes = parse_size(text, MAX_DATA_BYTES_ENV) if text else None
            except ValueError as err:
                raise DatasetError(str(err)) from err
        if not max_classes:
            text = os.environ.get(MAX_CLASSES_ENV, "").strip()
            if text:
                if not re.fullmatch(r"[0-9]+", text) or int(text) < 2:
                    raise DatasetError(f"{MAX_CLASSES_ENV} must be an integer >= 2, got {text!r}")
                max_classes = int(text)
        return cls(
            max_data_bytes=int(max_data_bytes or DEFAULT_MAX_DATA_BYTES),
            max_classes=int(max_classes or DEFAULT_MAX_CLASSES),
        )


def _limits(limits: Limits | None) -> Limits:
    return limits if limits is not None else Limits.resolve()


class _Budget:
    """Counts the values a data set loads against ``Limits.max_data_bytes``."""

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.max_data_bytes
        self.used = 0

    def take(self, where: str, what: str, values: int, *, bytes_per_value: int = 8) -> None:
        need = values * bytes_per_value
        if self.used + need > self.limit:
            others = f" (with {format_size(self.used)} before it)" if self.used else ""
            raise DatasetError(
                f"{where}: {what} would take {format_size(need)} in memory{others}, over the "
                f"limit of {format_size(self.limit)}; raise it with --max-data-bytes or "
                f"{MAX_DATA_BYTES_ENV} if the machine has the memory"
            )
        self.used += need


def _check_class_count(name: str, count: int, max_classes: int | None, what: str) -> None:
    limit = max_classes if max_classes is not None else Limits.resolve().max_classes
    if count > limit:
        raise DatasetError(
            f"{name}: {count} {what}, more than the limit of {limit}; check the label column "
            f"(a stray label is a class of its own), or raise the limit with --max-classes or "
            f"{MAX_CLASSES_ENV}"
        )


@dataclass(frozen=True)
class Split:
    """Features (N, D) float32 and labels: (N,) int64 classes, or (N, L) float 0/1 multi-label.

    ``class_names`` is the label mapping: for class data, ``class_names[k]`` is the name of
    class ``k`` -- for a CSV or NPZ file the original label value, as a string, that was mapped
    to index ``k`` (labels 1, 2, 3 give ``("1", "2", "3")``, labels M/B give ``("B", "M")``);
    for multi-label data the name of target column ``k``. It may be empty (no names known).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    multilabel: bool = False
    class_names: tuple[str, ...] = ()

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def subset_train(self, count: int, seed: int) -> Split:
        """A stratified subset of ``count`` training examples (the test set is unchanged)."""
        labels = self.y_train.numpy()
        if self.multilabel:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.permutation(len(labels))[:count])
        else:
            fraction = 1.0 - min(count, len(labels)) / len(labels)
            if fraction <= 0:
                return self
            keep, _ = stratified_split(labels, fraction, seed)
        return replace(
            self,
            name=f"{self.name} ({len(keep)} training examples)",
            x_train=self.x_train[keep],
            y_train=self.y_train[keep],
        )

    def split_validation(self, fraction: float, seed: int) -> tuple[Split, Tensor, Tensor]:
        """Holds out ``fraction`` of the training set: (smaller split, x_val, y_val)."""
        labels = self.y_train.numpy()
        if self.multilabel:
            order = np.random.default_rng(seed).permutation(len(labels))
            cut = max(1, round(len(labels) * fraction))
            val, train = np.sort(order[:cut]), np.sort(order[cut:])
        else:
            train, val = stratified_split(labels, fraction, seed)
        smaller = replace(self, x_train=self.x_train[train], y_train=self.y_train[train])
        return smaller, self.x_train[val], self.y_train[val]


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of a stratified split, deterministic under ``seed``.

    Every class keeps at least one training example.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = min(round(len(members) * test_fraction), len(members) - 1)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per feature, with statistics of the training part only."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    # subtract into a new array, divide in place: one temporary, the same numbers
    out_train, out_test = x_train - mean, x_test - mean
    out_train /= std
    out_test /= std
    return out_train, out_test


def _check_labels(name: str, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    if labels.size == 0:
        raise DatasetError(f"{name}: no examples")
    if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise DatasetError(f"{name}: labels must be integers")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise DatasetError(f"{name}: label {labels.min()} is negative; labels must be >= 0")
    if num_classes is not None and labels.max() >= num_classes:
        raise DatasetError(
            f"{name}: label {labels.max()} out of range; labels must be in [0, {num_classes - 1}]"
        )
    return labels


def _label_text(value: object) -> str:
    """A label value as a class name: integers without ``.0``, other floats as ``repr``."""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, (np.integer, np.bool_)):
        return str(value.item())
    return str(value)


def _list_names(names: list[str] | tuple[str, ...], limit: int = 12) -> str:
    shown = [repr(n) if not n or n != n.strip() else n for n in names[:limit]]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(shown) + more


MIN_CLASS_EXAMPLES = 3  # training, validation and test each need one example of every class


def encode_labels(
    name: str,
    labels: np.ndarray,
    test_labels: np.ndarray | None = None,
    *,
    min_examples: int = MIN_CLASS_EXAMPLES,
    max_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Maps class labels to indices 0..K-1 in sorted order of their values.

    The one place labels of user data become class indices (``load_csv``, and ``load_npz``
    through :func:`from_arrays`). ``labels`` is a 1-D array of numbers (sorted by value) or of
    strings (sorted as strings). Returns ``(indices, test_indices, class_names)``: int64
    indices, the test labels mapped the same way (``None`` when not given), and the original
    value of each class as a string (``class_names[k]`` for class ``k``).

    Raises :class:`DatasetError` for fewer than 2 classes, more than ``max_classes`` (default:
    :class:`Limits`), a class with fewer than ``min_examples`` examples, or a test label that
    is not among ``labels``.
    """
    labels = np.asarray(labels).reshape(-1)
    numeric = labels.dtype.kind in "biuf"
    if not numeric:
        labels = labels.astype(str)
    if labels.size == 0:
        raise DatasetError(f"{name}: no examples")
    values, indices, counts = np.unique(labels, return_inverse=True, return_counts=True)
    _check_class_count(name, len(values), max_classes, "distinct labels (classes)")
    names = tuple(_label_text(v) for v in values)
    if len(values) < 2:
        raise DatasetError(
            f"{name}: every example has the label {names[0]!r}; a classifier needs at least "
            "2 classes"
        )
    small = [(n, int(c)) for n, c in zip(names, counts, strict=True) if c < min_examples]
    if small:
        listed = ", ".join(f"{n!r} ({c} example{'s' if c > 1 else ''})" for n, c in small[:5]) + (
            f" and {len(small) - 5} more" if len(small) > 5 else ""
        )
        which = "class" if len(small) == 1 else "classes"
        raise DatasetError(
            f"{name}: {which} {listed} cannot be split into training, validation and test; "
            f"every class needs at least {min_examples} examples"
        )
    test_indices = None
    if test_labels is not None:
        test_labels = np.asarray(test_labels).reshape(-1)
        if not numeric or test_labels.dtype.kind not in "biuf":
            test_labels = test_labels.astype(str)
            values = values.astype(str)
        position = np.clip(np.searchsorted(values, test_labels), 0, len(values) - 1)
        unseen = values[position] != test_labels
        if unseen.any():
            raise DatasetError(
                f"{name}: test label {_label_text(test_labels[unseen][0])!r} does not occur in "
                f"the training labels ({_list_names(names)})"
            )
        test_indices = position.astype(np.int64)
    return indices.reshape(-1).astype(np.int64), test_indices, names


def from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    num_classes: int | None = None,
    class_names: tuple[str, ...] = (),
    map_labels: bool = False,
    max_classes: int | None = None,
) -> Split:
    """Builds a standardised split; labels (N,) or (N, 1) are classes, (N, L>1) multi-label.

    Class labels must be integers >= 0 (below ``num_classes`` when given). With ``map_labels``
    they are mapped to 0..K-1 in sorted order by :func:`encode_labels` (``class_names`` then
    holds the original values; ``num_classes`` and ``class_names`` must not be given);
    multi-label targets are never mapped. More than ``max_classes`` classes (or label columns;
    default: :class:`Limits`) are refused.
    """
    for part, array in (("features", x_train), ("labels", y_train)):
        if np.ndim(array) == 0 or len(array) == 0:
            raise DatasetError(f"{name}: no examples ({part} of shape {np.shape(array)})")
    for part, array in (
        ("features", x_train),
        ("labels", y_train),
        ("test features", x_test),
        ("test labels", y_test),
    ):
        kind = None if array is None else np.asarray(array).dtype.kind
        if kind is not None and kind not in "biuf":
            raise DatasetError(
                f"{name}: {part} have dtype {np.asarray(array).dtype}; they must be numbers"
            )
    if x_test is not None and np.ndim(x_test) == 0:
        raise DatasetError(f"{name}: test features must have one row per example, got a scalar")
    if y_test is not None and np.ndim(y_test) == 0:
        raise DatasetError(f"{name}: test labels must have one entry per example, got a scalar")
    x_train = np.asarray(x_train, dtype=np.float64)
    if x_train[0].size == 0:
        raise DatasetError(f"{name}: the examples have no features (shape {x_train.shape})")
    x_train = x_train.reshape(len(x_train), -1)
    y_train = np.asarray(y_train)
    if len(x_train) != len(y_train):
        raise DatasetError(
            f"{name}: {len(x_train)} feature rows but {len(y_train)} labels; they must match"
        )
    if not np.all(np.isfinite(x_train)):
        raise DatasetError(f"{name}: features contain nan or inf")
    multilabel = y_train.ndim == 2 and y_train.shape[1] > 1
    if y_train.ndim == 2 and not multilabel:
        y_train = y_train[:, 0]
    if y_train.ndim > 2:
        raise DatasetError(f"{name}: labels must be (N,) or (N, L), got shape {y_train.shape}")
    if multilabel and not np.isin(y_train, (0, 1)).all():
        raise DatasetError(f"{name}: multi-label targets must be 0 or 1")
    if y_test is not None:
        y_test = np.asarray(y_test)
        if y_test.ndim == 2 and not multilabel:
            y_test = y_test[:, 0]
    if map_labels and not multilabel:
        if num_classes is not None or class_names:
            raise ValueError("map_labels sets num_classes and class_names; do not pass them")
        y_train = _check_labels(name, y_train)
        if y_test is not None:
            y_test = _check_labels(f"{name} (test)", y_test)
        y_train, y_test, class_names = encode_labels(name, y_train, y_test, max_classes=max_classes)
        num_classes = len(class_names)
    if x_test is None:
        if multilabel:
            order = np.random.default_rng(seed).permutation(len(y_train))
            cut = round(len(order) * test_fraction)
            train, test = np.sort(order[cut:]), np.sort(order[:cut])
        else:
            y_train = _check_labels(name, y_train, num_classes)
            train, test = stratified_split(y_train, test_fraction, seed)
        x_test, y_test = x_train[test], y_train[test]
        x_train, y_train = x_train[train], y_train[train]
    else:
        x_test = np.asarray(x_test, dtype=np.float64).reshape(len(x_test), -1)
        if len(x_test) != len(y_test):
            raise DatasetError(
                f"{name}: {len(x_test)} test rows but {len(y_test)} test labels; they must match"
            )
        if x_test.shape[1] != x_train.shape[1]:
            raise DatasetError(
                f"{name}: test features have {x_test.shape[1]} columns, training features "
                f"{x_train.shape[1]}"
            )
    if multilabel:
        labels_train = torch.from_numpy(y_train.astype(np.float32))
        labels_test = torch.from_numpy(np.asarray(y_test).astype(np.float32))
        classes = y_train.shape[1]
        _check_class_count(name, classes, max_classes, "label columns")
    else:
        y_train = _check_labels(name, y_train, num_classes)
        y_test = _check_labels(f"{name} (test)", np.asarray(y_test), num_classes)
        classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
        _check_class_count(name, classes, max_classes, "classes")
        if classes < 2:
            raise DatasetError(f"{name}: needs at least 2 classes, found {classes}")
        labels_train, labels_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    x_train, x_test = _standardise(x_train, x_test)
    return Split(
        name=name,
        x_train=torch.from_numpy(x_train.astype(np.float32)),
        y_train=labels_train,
        x_test=torch.from_numpy(x_test.astype(np.float32)),
        y_test=labels_test,
        num_classes=classes,
        multilabel=multilabel,
        class_names=class_names,
    )


# ----------------------------------------------------------------------------------------------
# Built-in data sets
# ----------------------------------------------------------------------------------------------


def load_digits(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 digits: 1797 images, 64 features, 10 classes."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        raise DatasetError(
            "the digits data set needs scikit-learn: pip install 'labelsmooth[study]'"
        ) from err
    bunch = sklearn_load_digits()
    return from_arrays(
        "digits",
        bunch.data,
        bunch.target,
        test_fraction=test_fraction,
        seed=seed,
        class_names=tuple(str(d) for d in range(10)),
    )


# Attributes of a handwritten digit, for the real multi-label task built from digits.
DIGIT_ATTRIBUTES = {
    "even": (0, 2, 4, 6, 8),
    ">= 5": (5, 6, 7, 8, 9),
    "prime": (2, 3, 5, 7),
    "closed loop": (0, 6, 8, 9),
    "straight stroke only": (1, 4, 7),
}


def digits_multilabel(split: Split) -> Split:
    """A multi-label task on real images: the attributes (even, >= 5, prime, ...) of the digit."""
    if split.multilabel or split.num_classes != 10:
        raise DatasetError("digits_multilabel needs the 10-class digits split")
    table = torch.zeros(10, len(DIGIT_ATTRIBUTES))
    for column, digits in enumerate(DIGIT_ATTRIBUTES.values()):
        table[list(digits), column] = 1.0
    return replace(
        split,
        name=f"{split.name} attributes",
        y_train=table[split.y_train],
        y_test=table[split.y_test],
        num_classes=len(DIGIT_ATTRIBUTES),
        multilabel=True,
        class_names=tuple(DIGIT_ATTRIBUTES),
    )


def synthetic(
    num_samples: int = 3000,
    num_classes: int = 10,
    num_features: int = 20,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> Split:
    """A harder generated task: overlapping Gaussian clusters, two per class, in a random
    low-dimensional subspace plus nuisance features; the Bayes error is well above zero, so a
    network trained long becomes over-confident."""
    rng = np.random.default_rng(seed + 12345)
    informative = 6
    centres = rng.normal(0.0, 1.6, size=(num_classes, 2, informative))
    labels = rng.integers(0, num_classes, size=num_samples)
    which = rng.integers(0, 2, size=num_samples)
    points = centres[labels, which] + rng.normal(0.0, 1.0, size=(num_samples, informative))
    mixing = rng.normal(size=(informative, num_features)) / math.sqrt(informative)
    features = points @ mixing + 0.5 * rng.normal(size=(num_samples, num_features))
    return from_arrays(
        "synthetic",
        features,
        labels,
        test_fraction=test_fraction,
        seed=seed,
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(
    path: Path, *, limits: Limits | None = None, budget: _Budget | None = None
) -> np.ndarray:
    """Reads one IDX file (gzipped or not), checking the magic number and the size.

    The shape the header declares is checked against ``limits.max_data_bytes`` (see
    :class:`Limits`; ``budget`` shares the limit among the files of one data set) before the
    data is read or decompressed, and a gzip stream is decompressed only up to the declared
    size, so a small file cannot make the loader allocate more.
    """
    budget = budget if budget is not None else _Budget(_limits(limits))
    try:
        handle = path.open("rb")
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from err
    with handle:
        try:
            compressed = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            stream = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
            magic = stream.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
                shown = magic.hex() if magic else "empty file"
                raise DatasetError(f"{path}: not an IDX file (magic number {shown})")
            ndim = magic[3]
            dims = stream.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise DatasetError(f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_TYPES[magic[2]])
            count = math.prod(shape)
            header = 4 + 4 * ndim
            expected = header + count * dtype.itemsize
            if not compressed:
                size = os.fstat(handle.fileno()).st_size
                if size != expected:
                    raise DatasetError(
                        f"{path}: truncated or oversized IDX data ({size} bytes, expected "
                        f"{expected} for shape {shape})"
                    )
            budget.take(str(path), f"the IDX header's shape {shape} ({count} values)", count)
            raw = stream.read(count * dtype.itemsize + 1)
        except (OSError, EOFError, zlib.error) as err:
            if not compressed:
                raise DatasetError(f"{path}: cannot read ({err})") from err
            raise DatasetError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) != count * dtype.itemsize:
        got = f"more than {expected}" if len(raw) > count * dtype.itemsize else header + len(raw)
        raise DatasetError(
            f"{path}: truncated or oversized IDX data ({got} bytes, expected {expected} "
            f"for shape {shape})"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _find_one(directory: Path, patterns: tuple[str, ...], what: str) -> Path:
    for pattern in patterns:
        matches = sorted(directory.glob(pattern))
        if matches:
            return matches[0]
    raise DatasetError(f"{directory}: no {what} file (looked for {', '.join(patterns)})")


def load_mnist(directory: str | Path, *, limits: Limits | None = None) -> Split:
    """MNIST (or Fashion-MNIST) IDX files: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte. The four files together must fit in
    ``limits`` (see :class:`Limits`)."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"mnist: {root} is not a directory")
    limits = _limits(limits)
    budget = _Budget(limits)
    arrays = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_one(root, (f"{prefix}-images*",), f"{part} images"), budget=budget)
        labels = read_idx(_find_one(root, (f"{prefix}-labels*",), f"{part} labels"), budget=budget)
        if images.ndim != 3 or labels.ndim != 1:
            raise DatasetError(
                f"mnist: {part} images must be (N, rows, cols) and labels (N,), got "
                f"{images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise DatasetError(
                f"mnist: {len(images)} {part} images but {len(labels)} labels; they must match"
            )
        arrays[part] = (images.astype(np.float64) / 255.0, labels)
    return from_arrays(
        "mnist",
        *arrays["train"],
        *arrays["test"],
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        max_classes=limits.max_classes,
    )


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _read_cifar_batch(path: Path, budget: _Budget) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + 3 * 32 * 32
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from err
    budget.take(str(path), f"a CIFAR-10 batch of {size} bytes", size)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from err
    if raw.size == 0 or raw.size % record:
        raise DatasetError(
            f"{path}: not a CIFAR-10 binary batch ({raw.size} bytes is not a multiple of {record})"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetError(f"{path}: label {labels.max()} out of range; labels must be in [0, 9]")
    return rows[:, 1:].astype(np.float64) / 255.0, labels


def load_cifar10(directory: str | Path, *, limits: Limits | None = None) -> Split:
    """CIFAR-10's binary version: data_batch_1.bin ... data_batch_5.bin and test_batch.bin,
    together within ``limits`` (see :class:`Limits`)."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"cifar10: {root} is not a directory")
    train_files = sorted(root.glob("data_batch_*.bin"))
    if not train_files:
        raise DatasetError(f"cifar10: no data_batch_*.bin in {root} (the binary version)")
    limits = _limits(limits)
    budget = _Budget(limits)
    parts = [_read_cifar_batch(path, budget) for path in train_files]
    x_test, y_test = _read_cifar_batch(
        _find_one(root, ("test_batch.bin",), "test_batch.bin"), budget
    )
    return from_arrays(
        "cifar10",
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        x_test,
        y_test,
        num_classes=10,
        class_names=CIFAR10_CLASSES,
        max_classes=limits.max_classes,
    )


def _npy_header(
    archive: zipfile.ZipFile, member: str, where: str
) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of the .npy ``member``, read without decompressing its
    data; refuses what is not a numeric array and data shorter than the declared shape."""
    name = member[: -len(".npy")]
    try:
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DatasetError(f"{where}: array {name!r} is not a readable .npy array ({err})") from err
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise DatasetError(
            f"{where}: array {name!r} has dtype {dtype}; arrays must hold numbers (object "
            "arrays would need pickle and are refused)"
        )
    declared = math.prod(shape) * dtype.itemsize
    if archive.getinfo(member).file_size < declared:
        raise DatasetError(
            f"{where}: array {name!r} declares shape {shape} ({declared} bytes) but the file "
            f"holds {archive.getinfo(member).file_size} bytes; it is truncated or corrupt"
        )
    return shape, dtype


def _npy_read(archive: zipfile.ZipFile, member: str, where: str) -> np.ndarray:
    try:
        with archive.open(member) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        name = member[: -len(".npy")]
        raise DatasetError(f"{where}: array {name!r} cannot be read ({err})") from err


def load_npz(path: str | Path, seed: int = 0, *, limits: Limits | None = None) -> Split:
    """``x``/``y`` arrays (optional ``x_test``/``y_test``), or the MedMNIST layout
    (``train_images``, ``train_labels``, ``val_*``, ``test_*``; labels (N, 1) classes or (N, L)
    multi-label). Validation data, when present, is added to the training data.

    Class labels (integers >= 0) are mapped to 0..K-1 in sorted order, ``class_names`` holding
    the original values (see :func:`encode_labels`); a test label that does not occur in the
    training labels is refused. Multi-label targets are kept as they are.

    Arrays must hold numbers (no pickle is ever loaded). The shapes their headers declare are
    checked against ``limits`` (see :class:`Limits`) before any array is decompressed."""
    path = Path(path)
    where = f"npz: {path}"
    limits = _limits(limits)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError as err:
        raise DatasetError(f"npz: {path} does not exist") from err
    except OSError as err:
        raise DatasetError(f"npz: cannot read {path} ({err.strerror or err})") from err
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise DatasetError(
            f"npz: {path} is not a readable .npz file (a zip archive of .npy arrays: {err})"
        ) from err
    with archive:
        members = {
            name[: -len(".npy")]: name for name in archive.namelist() if name.endswith(".npy")
        }
        keys = set(members)
        if {"train_images", "train_labels"} <= keys:
            names = {"x": ["train_images"], "y": ["train_labels"]}
            if {"val_images", "val_labels"} <= keys:
                names["x"].append("val_images")
                names["y"].append("val_labels")
            names["x_test"] = ["test_images"] if "test_images" in keys else []
            names["y_test"] = ["test_labels"] if "test_labels" in keys else []
        elif {"x", "y"} <= keys:
            names = {
                part: [part] if part in keys else [] for part in ("x", "y", "x_test", "y_test")
            }
        else:
            raise DatasetError(
                f"npz: {path} needs arrays x and y, or train_images and train_labels "
                f"(MedMNIST); found {', '.join(sorted(keys)) or 'none'}"
            )
        budget = _Budget(limits)
        for part in names.values():
            for key in part:
                shape, _ = _npy_header(archive, members[key], where)
                budget.take(where, f"array {key!r} of shape {shape}", math.prod(shape))
        arrays: dict[str, np.ndarray | None] = {}
        for part, found in names.items():
            loaded = [_npy_read(archive, members[key], where) for key in found]
            if len(loaded) > 1:
                if loaded[0].shape[1:] != loaded[1].shape[1:] or loaded[0].ndim == 0:
                    raise DatasetError(
                        f"{where}: {found[0]} has shape {loaded[0].shape} but {found[1]} "
                        f"{loaded[1].shape}; they must match except in the first dimension"
                    )
                loaded = [np.concatenate(loaded)]
            arrays[part] = loaded[0] if loaded else None
    x_train, y_train, x_test, y_test = (arrays[p] for p in ("x", "y", "x_test", "y_test"))
    assert x_train is not None and y_train is not None
    if (x_test is None) != (y_test is None):
        raise DatasetError(f"npz: {path} has test images or test labels but not both")
    if x_train.dtype == np.uint8:
        x_train = x_train / 255.0
        x_test = None if x_test is None else x_test / 255.0
    return from_arrays(
        f"npz:{path.name}",
        x_train,
        y_train,
        x_test,
        y_test,
        seed=seed,
        map_labels=True,
        max_classes=limits.max_classes,
    )


DEFAULT_LABEL_COLUMNS = ("label", "target", "y", "class")
MAX_CONTINUOUS_CLASSES = 20  # more distinct non-integer numbers than this: a regression target


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _delimiter(line: str) -> str:
    """The most frequent of comma, semicolon and tab in ``line`` (a tie goes to the comma)."""
    return max((",", ";", "\t"), key=line.count)


def _has_header(rows: list[list[str]]) -> bool:
    """The first row is a header if one of its cells is text above a number in the second row
    (a file whose first row has a text cell and no second row is a lone header)."""
    text = [i for i, cell in enumerate(rows[0]) if cell and not _is_number(cell)]
    if len(rows) == 1:
        return bool(text)
    below = rows[1]
    return any(i < len(below) and below[i] and _is_number(below[i]) for i in text)


def _label_index(
    where: str, label_column: int | str | None, header: list[str] | None, width: int
) -> int:
    """The position of the label column (see :func:`load_csv` for the rules)."""
    if label_column is None:
        if header is None:
            raise DatasetError(
                f"{where} has no header row; give the label column with --label-column INDEX "
                "(0 = first column, -1 = last)"
            )
        folded = [cell.lower() for cell in header]
        for name in DEFAULT_LABEL_COLUMNS:
            if name in folded:
                return folded.index(name)
        raise DatasetError(
            f"{where} has no column named {', '.join(DEFAULT_LABEL_COLUMNS[:-1])} or "
            f"{DEFAULT_LABEL_COLUMNS[-1]}; name the label column with --label-column NAME or "
            f"INDEX (columns: {_list_names(header)})"
        )
    if isinstance(label_column, bool) or not isinstance(label_column, (int, str)):
        raise DatasetError(f"--label-column must be a column name or index, got {label_column!r}")
    if isinstance(label_column, str):
        text = label_column.strip()
        if not text:
            raise DatasetError("--label-column is empty; give a column name or index")
        if re.fullmatch(r"[+-]?[0-9]+", text):
            label_column = int(text)
        else:
            if header is None:
                raise DatasetError(
                    f"{where} has no header row, so --label-column {text!r} names no column; "
                    "give an INDEX instead (0 = first column, -1 = last)"
                )
            matches = [i for i, cell in enumerate(header) if cell.lower() == text.lower()]
            if not matches:
                raise DatasetError(
                    f"{where} has no column named {text!r} (--label-column); columns: "
                    f"{_list_names(header)}"
                )
            if len(matches) > 1:
                raise DatasetError(
                    f"{where} has {len(matches)} columns named {text!r} (at indices "
                    f"{', '.join(map(str, matches))}); give --label-column INDEX instead"
                )
            return matches[0]
    if not -width <= label_column < width:
        raise DatasetError(
            f"{where}: --label-column {label_column} is out of range; the file has {width} "
            f"columns, so an index is 0..{width - 1} (or -{width}..-1 from the end)"
        )
    return label_column % width


def load_csv(
    path: str | Path,
    seed: int = 0,
    label_column: int | str | None = None,
    *,
    limits: Limits | None = None,
) -> Split:
    """A CSV file of numeric features and one label column (one example per row).

    Cells are separated by commas, semicolons or tabs (whichever the first line holds most of).
    The first row is a header when one of its cells is text above a number in the second row.

    ``label_column`` (``--label-column``) is a column name (str, matched against the header
    ignoring case and surrounding spaces) or an index (int, or a str of digits such as ``"0"``;
    negative counts from the end, -1 being the last column). When it is ``None`` the label is
    the header column named ``label``, ``target``, ``y`` or ``class`` (first found in that
    order); with no such column, or no header row, :class:`DatasetError` says how to name it.

    Labels may be integers, numbers or text. They are mapped to classes 0..K-1 in sorted order
    of their values (numeric order when all are numbers, else string order); ``class_names``
    holds the original label of each class (labels 1, 2, 3 give ``("1", "2", "3")``). A
    numeric label column with non-integer values and more than 20 distinct values is refused as
    a regression target; at least 2 classes, each with at least 3 examples, are required.
    Every other column is a feature and must hold finite numbers; a column empty in every row
    (a trailing comma) is ignored. Rows are numbered as lines of the file, the first being 1.
    30% of the rows, stratified by class, become the test set.

    The file is parsed in memory, at about 8 bytes per byte of text: a file larger than
    ``limits.max_data_bytes / 8`` is refused before it is read, and more classes than
    ``limits.max_classes`` are refused (see :class:`Limits`).
    """
    path = Path(path)
    where = f"csv: {path}"
    limits = _limits(limits)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DatasetError(f"csv: cannot read {path} ({err.strerror})") from err
    _Budget(limits).take(where, f"parsing {format_size(size)} of CSV text", size)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as err:
        raise DatasetError(f"csv: cannot read {path} ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"csv: {path} is not a UTF-8 text file ({err.reason})") from err
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first_line))
    numbered: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                numbered.append((reader.line_num, [cell.strip() for cell in row]))
    except csv.Error as err:
        raise DatasetError(f"{where} line {reader.line_num}: malformed CSV ({err})") from err
    if not numbered:
        raise DatasetError(f"{where} is empty")
    width = len(numbered[0][1])
    for number, row in numbered:
        if len(row) != width:
            raise DatasetError(f"{where} row {number} has {len(row)} columns, expected {width}")
    header = numbered.pop(0)[1] if _has_header([row for _, row in numbered[:2]]) else None
    if width < 2:
        raise DatasetError(f"{where} needs at least one feature column and a label column")
    if not numbered:
        raise DatasetError(f"{where} has a header row but no data rows")
    label = _label_index(where, label_column, header, width)

    def column(index: int) -> str:
        return f"column {index} ({header[index]!r})" if header else f"column {index}"

    features = [i for i in range(width) if i != label and any(row[i] for _, row in numbered)]
    if not features:
        raise DatasetError(f"{where} has no feature column besides the label {column(label)}")
    try:
        table = np.array([[float(row[i]) for i in features] for _, row in numbered])
    except ValueError:
        table = None
    if table is None or not np.all(np.isfinite(table)):
        for number, row in numbered:
            for i in features:
                if not row[i]:
                    raise DatasetError(
                        f"{where} row {number}, {column(i)} is empty; feature cells must be "
                        "numbers (missing values are not supported)"
                    )
                if not _is_number(row[i]) or not math.isfinite(float(row[i])):
                    raise DatasetError(
                        f"{where} row {number}, {column(i)}: {row[i]!r} is not a finite "
                        "number; feature cells must be numbers"
                    )
    assert table is not None  # else the scan above has raised
    cells = [row[label] for _, row in numbered]
    for (number, _), cell in zip(numbered, cells, strict=True):
        if not cell:
            raise DatasetError(f"{where} row {number}: the label cell ({column(label)}) is empty")
    labels: np.ndarray
    if all(_is_number(cell) for cell in cells):
        labels = np.array([float(cell) for cell in cells])
        bad = np.flatnonzero(~np.isfinite(labels))
        if bad.size:
            raise DatasetError(
                f"{where} row {numbered[bad[0]][0]}: label {cells[bad[0]]!r} is not a class"
            )
        distinct = np.unique(labels)
        if not np.all(distinct == np.round(distinct)) and len(distinct) > MAX_CONTINUOUS_CLASSES:
            raise DatasetError(
                f"{where}: the label {column(label)} holds {len(distinct)} distinct non-integer "
                "numbers, which looks like a regression target, not classes; choose the class "
                "column with --label-column NAME or INDEX"
            )
    else:
        labels = np.array(cells, dtype=str)
    indices, _, class_names = encode_labels(where, labels, max_classes=limits.max_classes)
    return from_arrays(
        f"csv:{path.name}",
        table,
        indices,
        seed=seed,
        num_classes=len(class_names),
        class_names=class_names,
        max_classes=limits.max_classes,
    )


DATASETS = ("digits", "synthetic", "mnist:DIR", "cifar10:DIR", "npz:FILE", "csv:FILE")


def load_dataset(
    spec: str,
    seed: int = 0,
    *,
    label_column: int | str | None = None,
    limits: Limits | None = None,
) -> Split:
    """Loads a data set from its ``--dataset`` spec (see :data:`DATASETS`).

    ``label_column`` (``--label-column``) is passed to :func:`load_csv`; it is refused for any
    other data set. ``limits`` caps the memory and the number of classes of user files
    (default: :meth:`Limits.resolve`, the environment variables or the defaults).
    """
    kind, _, argument = spec.partition(":")
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10, "npz": load_npz, "csv": load_csv}
    known = (kind in ("digits", "synthetic") and not argument) or (kind in loaders and argument)
    if not known:
        raise DatasetError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASETS)}")
    if label_column is not None and kind != "csv":
        raise DatasetError(
            f"--label-column applies to csv: data sets only, not to --dataset {spec}"
        )
    if kind == "digits":
        return load_digits(seed=seed)
    if kind == "synthetic":
        return synthetic(seed=seed)
    limits = _limits(limits)
    if kind == "csv":
        return load_csv(argument, seed=seed, label_column=label_column, limits=limits)
    if kind == "npz":
        return load_npz(argument, seed=seed, limits=limits)
    return loaders[kind](argument, limits=limits)

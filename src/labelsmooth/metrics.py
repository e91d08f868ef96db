r"""Diagnostics for choosing eps: calibration, selective classification, temperature, logit gap.

Conventions shared by every function here:

* **Inputs** are ``torch.Tensor`` or ``numpy.ndarray`` (lists work too), on any device; they
  are copied to the CPU and evaluated in float64, so the numbers do not depend on the
  dtype or device of the model. The class dimension is **last**: ``probs`` and ``logits``
  are (N, C), ``labels`` is (N,) integer class indices.
* **Probabilities or logits** is said by the parameter name: ``probs`` must be
  probabilities (entries in [0, 1], rows summing to 1 within 1e-3, or within twice the
  machine epsilon for float16/bfloat16 input; apply ``softmax`` first); ``logits`` are
  unnormalised scores; ``scores`` (AUROC) may be either, since only their order matters.
* **Outputs** are Python floats, or small frozen dataclasses of numpy arrays for curves.
* **The prediction** is the arg-max class; tied maxima predict the lowest class index
  (``torch.argmax``'s rule). The **confidence** is the maximum probability.
* **Padding** (``ignore_index``): every function that takes labels takes
  ``ignore_index=None`` (keyword-only). Rows (entries, for the 0/1 labels of the binary and
  multi-label functions) whose label equals it are dropped before anything is computed, as
  if they had never been passed: a causal LM's ``-100`` padding. Only the kept rows are
  checked to be valid probabilities (padding rows may hold anything finite or not); the
  ignored label value itself may lie outside [0, C). A call that leaves no row raises
  ``ValueError`` naming ``ignore_index``.
* **Streaming** (:mod:`labelsmooth.streaming`; not re-exported here, which would make an
  import cycle): torchmetrics-style classes
  with ``update``/``compute``/``reset`` that accumulate over batches and synchronise across
  processes, equal to these functions on the concatenated data.
* **Bad input** raises before any work: ``TypeError`` for dtypes and types, ``ValueError``
  for values, each naming the argument, the value and what is allowed.

Only torch and numpy are needed (no scipy, no matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from . import _checks

__all__ = [
    "BINNINGS",
    "ReliabilityCurve",
    "RiskCoverageCurve",
    "aurc",
    "auroc",
    "brier_score",
    "classwise_calibration_error",
    "excess_aurc",
    "expected_calibration_error",
    "fit_temperature",
    "logit_gap",
    "maximum_calibration_error",
    "multilabel_auroc",
    "multilabel_calibration_error",
    "negative_log_likelihood",
    "reliability_curve",
    "risk_coverage_curve",
    "theoretical_gap",
]

ArrayLike = Tensor | np.ndarray

BINNINGS = ("uniform", "quantile")
AVERAGES = ("macro", "none")
NORMS = ("l1", "l2", "max")

# How far a row of `probs` may sum from 1: 1e-3, or twice the machine epsilon of the input's
# dtype if that is larger (float16: 2e-3, bfloat16: 1.6e-2), so that softmax outputs in low
# precision pass while logits are not mistaken for probabilities.
ROW_SUM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReliabilityCurve:
    r"""Per-bin statistics of a reliability diagram (Guo et al. 2017).

    Bin m is the interval :math:`(e_{m-1}, e_m]` of the confidence; the first bin also holds
    a confidence of exactly ``edges[0]``.

    Attributes:
        edges: (M+1,) bin edges, increasing from 0 to 1.
        counts: (M,) number of samples per bin (int64).
        accuracy: (M,) fraction of correct predictions per bin; nan for an empty bin.
        confidence: (M,) mean confidence per bin; nan for an empty bin.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def num_bins(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    @property
    def gap(self) -> np.ndarray:
        """(M,) accuracy minus confidence per bin (negative: over-confident); nan if empty."""
        return self.accuracy - self.confidence

    @property
    def expected_calibration_error(self) -> float:
        r""":math:`\sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`."""
        filled = self.counts > 0
        weights = self.counts[filled] / self.num_samples
        return float(np.sum(weights * np.abs(self.gap[filled])))

    @property
    def maximum_calibration_error(self) -> float:
        r""":math:`\max_m |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|` over non-empty bins."""
        filled = self.counts > 0
        return float(np.max(np.abs(self.gap[filled])))

    @property
    def root_mean_square_calibration_error(self) -> float:
        r""":math:`\sqrt{\sum_m \frac{|B_m|}{N} (\mathrm{acc}(B_m) - \mathrm{conf}(B_m))^2}`.

        The ``"l2"`` norm of torchmetrics' ``calibration_error`` (Kumar et al. 2019).
        """
        filled = self.counts > 0
        weights = self.counts[filled] / self.num_samples
        return math.sqrt(float(np.sum(weights * self.gap[filled] ** 2)))

    def calibration_error(self, norm: str = "l1") -> float:
        """``"l1"``: the ECE; ``"l2"``: the root-mean-square error; ``"max"``: the MCE."""
        norm = _checks.check_choice("norm", norm, NORMS)
        if norm == "l1":
            return self.expected_calibration_error
        if norm == "l2":
            return self.root_mean_square_calibration_error
        return self.maximum_calibration_error


@dataclass(frozen=True, eq=False)
class RiskCoverageCurve:
    r"""The risk-coverage curve of selective classification by maximum probability.

    Point g accepts every sample whose confidence is at least ``threshold[g]``; samples
    with the same confidence are accepted or rejected together, so there is one point per
    distinct confidence, from the most confident down.

    Attributes:
        coverage: (G,) fraction of samples accepted, increasing to 1.
        risk: (G,) error rate among the accepted samples.
        threshold: (G,) the confidence threshold of each point, decreasing.
    """

    coverage: np.ndarray
    risk: np.ndarray
    threshold: np.ndarray

    @property
    def aurc(self) -> float:
        r"""Area under the step curve: :math:`\sum_g (c_g - c_{g-1})\, r_g` with :math:`c_0 = 0`."""
        widths = np.diff(self.coverage, prepend=0.0)
        return float(np.sum(widths * self.risk))


# --------------------------------------------------------------------------------------------
# Argument checks (all raise before any work)
# --------------------------------------------------------------------------------------------


def _as_array(name: str, value: object) -> tuple[np.ndarray, str]:
    """``value`` as a CPU numpy array (floats as float64), and the dtype it came with."""
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got dtype={value.dtype}")
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float64)
        return tensor.numpy(), str(value.dtype)
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (list, tuple)):
        array = np.asarray(value)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype={array.dtype}")
    dtype = str(array.dtype)
    if array.dtype.kind == "f":
        array = array.astype(np.float64)
    return array, dtype


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind == "f"


def _check_finite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} must be finite, got {array[where]} at index {where}")


def _check_unit_interval(
    name: str, array: np.ndarray, what: str, keep: np.ndarray | None = None
) -> None:
    """Entries finite and in [0, 1]; only where ``keep`` (broadcast against ``array``) holds."""
    if keep is None:
        _check_finite(name, array)
        bad = (array < 0) | (array > 1)
    else:
        keep = np.broadcast_to(keep, array.shape)
        _check_finite(name, np.where(keep, array, 0.0))
        bad = keep & ((array < 0) | (array > 1))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must lie in [0, 1] ({what}), got {array[where]:.6g} at index {where}"
        )


def _check_probs(probs: object, name: str = "probs") -> np.ndarray:
    """(N, C) probabilities with rows summing to 1, as float64."""
    array = _probs_array(probs, name)
    _check_prob_values(name, array, _machine_epsilon(probs))
    return array


def _probs_array(probs: object, name: str) -> np.ndarray:
    """(N, C) floating-point array with N, C >= 1, as float64; the values are not checked."""
    array, dtype = _as_array(name, probs)
    if not _is_float(array):
        raise TypeError(f"{name} must hold floating-point probabilities, got dtype={dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, C): one row of class probabilities per sample, "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must hold at least one sample and one class, got shape {tuple(array.shape)}"
        )
    return array


def _check_prob_values(
    name: str, array: np.ndarray, machine_epsilon: float, rows: np.ndarray | None = None
) -> None:
    """Entries in [0, 1] and rows summing to 1, on the rows where ``rows`` (all if None)."""
    tolerance = max(ROW_SUM_TOLERANCE, 2 * machine_epsilon)
    keep = None if rows is None else rows[:, None]
    _check_unit_interval(name, array, "probabilities, not logits: apply softmax first", keep)
    sums = array.sum(axis=1)
    off = np.abs(sums - 1.0) > tolerance
    if rows is not None:
        off &= rows
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"each row of {name} must sum to 1 (within {tolerance:.3g}), "
            f"got a row summing to {sums[row]:.6g} at row {row}"
        )


def _machine_epsilon(value: object) -> float:
    if isinstance(value, Tensor):
        return float(torch.finfo(value.dtype).eps)
    if isinstance(value, np.ndarray):
        return float(np.finfo(value.dtype).eps)
    return float(np.finfo(np.float64).eps)


def _check_logits(logits: object, name: str = "logits", check_finite: bool = True) -> np.ndarray:
    """(N, C) finite logits as float64."""
    array, dtype = _as_array(name, logits)
    if not _is_float(array):
        raise TypeError(f"{name} must be floating point, got dtype={dtype}")
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, C): one row of class logits per sample, "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must hold at least one sample and one class, got shape {tuple(array.shape)}"
        )
    if check_finite:
        _check_finite(name, array)
    return array


def _check_labels(
    labels: object,
    num_samples: int,
    num_classes: int,
    source: str,
    name: str = "labels",
    ignore_index: int | None = None,
) -> np.ndarray:
    """(N,) integer class indices in [0, C) or equal to ``ignore_index``, as int64."""
    array, dtype = _as_array(name, labels)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype={dtype}")
    if array.shape != (num_samples,):
        raise ValueError(
            f"{name} must have shape ({num_samples},): one class index per row of {source}, "
            f"got shape {tuple(array.shape)}"
        )
    bad = (array < 0) | (array >= num_classes)
    if ignore_index is not None:
        bad &= array != ignore_index
    if bad.any():
        value = int(array[np.argmax(bad)])
        raise ValueError(
            f"{name} contains class index {value}, but class indices must be in "
            f"[0, {num_classes - 1}] (num_classes={num_classes}, from {source}.shape[1])"
            + ("" if ignore_index is None else f" or equal ignore_index={ignore_index}")
        )
    return array.astype(np.int64)


def _check_ignore_index(ignore_index: object) -> int | None:
    """None, or an int (a torch/numpy integer scalar is accepted)."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, Tensor) and ignore_index.numel() == 1:
        ignore_index = ignore_index.item()
    return _checks.check_int("ignore_index", ignore_index)


def _kept(
    labels: np.ndarray, ignore_index: int | None, allow_empty: bool = False
) -> np.ndarray | None:
    """Mask of the entries whose label is not ``ignore_index`` (None: keep everything).

    ValueError naming ``ignore_index`` when nothing is left, unless ``allow_empty``.
    """
    if ignore_index is None:
        return None
    keep = labels != ignore_index
    if not allow_empty and not keep.any():
        raise ValueError(
            f"every one of the {labels.size} labels equals ignore_index={ignore_index}: "
            f"no sample is left to evaluate"
        )
    return keep


def _check_binary_labels(
    labels: object, shape: tuple[int, ...], source: str, ignore_index: int | None = None
) -> np.ndarray:
    """0/1 indicators (bool, integer or float) with the shape of ``source``, as float64.

    Entries equal to ``ignore_index`` are allowed too (the caller drops them).
    """
    array, dtype = _as_array("labels", labels)
    if array.shape != shape:
        raise ValueError(
            f"labels must have the shape of {source} {shape} (one 0/1 indicator per entry), "
            f"got shape {tuple(array.shape)}"
        )
    bad = (array != 0) & (array != 1)
    if ignore_index is not None:
        bad &= array != ignore_index
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"labels must be 0 or 1, got {array[where]} at index {where} ({dtype})")
    return array.astype(np.float64)


# More bins than this is a mistake, not a finer estimate (the reliability curve and the
# histograms hold arrays of n_bins entries; 10**9 bins would need gigabytes).
MAX_BINS = 100_000


def _check_n_bins(n_bins: object) -> int:
    """``n_bins`` as an int in [1, MAX_BINS]; ValueError naming the argument otherwise."""
    n_bins = _checks.check_int("n_bins", n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got n_bins={n_bins}")
    if n_bins > MAX_BINS:
        raise ValueError(f"n_bins must be <= {MAX_BINS}, got n_bins={n_bins}")
    return n_bins


def _check_columns(
    value: object, name: str, ndims: tuple[int, ...], hint: str
) -> tuple[np.ndarray, tuple[int, ...]]:
    """(N,) or (N, L) per-label probabilities or scores: float64 (N, L) and the given shape."""
    array, dtype = _as_array(name, value)
    if array.dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, got dtype={dtype}")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have shape {hint}, got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(array.shape)}")
    shape = tuple(array.shape)
    array = array.astype(np.float64)
    return (array if array.ndim == 2 else array[:, None]), shape


def _kept_columns(
    targets: np.ndarray, ignore_index: int | None, require_each: bool
) -> np.ndarray | None:
    """(N, L) mask of the entries not equal to ``ignore_index``; ValueError if none is left
    at all, or (``require_each``) in some column."""
    keep = _kept(targets, ignore_index)
    if keep is not None and require_each:
        empty = np.flatnonzero(~keep.any(axis=0))
        if empty.size:
            raise ValueError(
                f"every entry of label column {int(empty[0])} equals ignore_index="
                f"{ignore_index}: no sample is left to evaluate that label"
            )
    return keep


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------


def _bin_edges(confidence: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    if binning == "uniform":
        # i / M, correctly rounded: a confidence typed as 0.6 lands in (0.4, 0.6] for M = 5.
        return np.arange(n_bins + 1, dtype=np.float64) / n_bins
    edges = np.quantile(confidence, np.arange(n_bins + 1, dtype=np.float64) / n_bins)
    edges[0], edges[-1] = 0.0, 1.0
    return np.maximum.accumulate(edges)


def _binned(
    confidence: np.ndarray, outcome: np.ndarray, n_bins: int, binning: str
) -> ReliabilityCurve:
    """Bins (e_{m-1}, e_m] of ``confidence``; per bin the mean ``outcome`` and confidence."""
    edges = _bin_edges(confidence, n_bins, binning)
    return _curve(edges, *_bin_sums(confidence, outcome, edges))


def _bin_sums(
    confidence: np.ndarray, outcome: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin (e_{m-1}, e_m]: the count (int64), the sum of ``outcome``, of ``confidence``.

    The sufficient statistics of a reliability curve with fixed edges: the streaming metrics
    add them over batches and processes.
    """
    n_bins = edges.shape[0] - 1
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=n_bins).astype(np.int64)
    outcome_sum = np.bincount(index, weights=outcome, minlength=n_bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    return counts, outcome_sum, confidence_sum


def _curve(
    edges: np.ndarray, counts: np.ndarray, outcome_sum: np.ndarray, confidence_sum: np.ndarray
) -> ReliabilityCurve:
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, outcome_sum / counts, np.nan)
        mean_confidence = np.where(counts > 0, confidence_sum / counts, np.nan)
    return ReliabilityCurve(edges, counts, accuracy, mean_confidence)


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) with the lowest index winning ties."""
    prediction = np.argmax(probs, axis=1)
    confidence = probs[np.arange(probs.shape[0]), prediction]
    return confidence, (prediction == labels).astype(np.float64)


def _prepare(
    probs: object, labels: object, ignore_index: object = None, *, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Checked (probs, labels) as float64 / int64, the rows labelled ``ignore_index`` dropped.

    The one place where the rows of ``probs`` meet their labels: every function taking
    (probs, labels) and the streaming classes go through it. Shapes and dtypes are checked on
    every row, the values of ``probs`` only on the kept rows.
    """
    ignore_index = _check_ignore_index(ignore_index)
    if ignore_index is None:
        array = _check_probs(probs)
        return array, _check_labels(labels, array.shape[0], array.shape[1], "probs")
    array = _probs_array(probs, "probs")
    classes = _check_labels(
        labels, array.shape[0], array.shape[1], "probs", ignore_index=ignore_index
    )
    keep = _kept(classes, ignore_index, allow_empty)
    _check_prob_values("probs", array, _machine_epsilon(probs), keep)
    return array[keep], classes[keep]


def _prepare_logits(
    logits: object, labels: object, ignore_index: object = None, *, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_prepare`, for (N, C) finite logits (finiteness checked on the kept rows)."""
    ignore_index = _check_ignore_index(ignore_index)
    if ignore_index is None:
        array = _check_logits(logits)
        return array, _check_labels(labels, array.shape[0], array.shape[1], "logits")
    array = _check_logits(logits, check_finite=False)
    classes = _check_labels(
        labels, array.shape[0], array.shape[1], "logits", ignore_index=ignore_index
    )
    keep = _kept(classes, ignore_index, allow_empty)
    array, classes = array[keep], classes[keep]
    _check_finite("logits", array)
    return array, classes


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def reliability_curve(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "uniform",
    *,
    ignore_index: int | None = None,
) -> ReliabilityCurve:
    r"""Bins the top-label confidence and reports accuracy and mean confidence per bin.

    With confidence :math:`\hat p_i = \max_c p_{ic}` and prediction
    :math:`\hat y_i = \arg\max_c p_{ic}`, bin :math:`B_m` holds the samples with
    :math:`\hat p_i \in (e_{m-1}, e_m]`; :math:`\mathrm{acc}(B_m)` is the fraction with
    :math:`\hat y_i = y_i` and :math:`\mathrm{conf}(B_m)` the mean :math:`\hat p_i`.

    Args:
        probs: (N, C) class probabilities (not logits).
        labels: (N,) integer class indices.
        n_bins: M >= 1.
        binning: ``"uniform"``: M equal-width bins :math:`e_m = m/M` (Guo et al. 2017);
            ``"quantile"``: equal-mass bins, the inner edges at the empirical quantiles
            :math:`m/M` of the confidences (numpy's linear interpolation) and the outer
            edges at 0 and 1, so each bin holds about N/M samples (tied confidences share
            a bin, which can leave others empty).
        ignore_index: rows whose label equals it are dropped first (None: keep all).

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> curve = reliability_curve(probs, torch.tensor([0, 1, 1, 0]), n_bins=5)
        >>> curve.counts.tolist()
        [0, 0, 0, 2, 2]
        >>> curve.accuracy[3:].tolist(), curve.confidence[3:].round(4).tolist()
        ([0.5, 1.0], [0.675, 0.9])
    """
    array, classes = _prepare(probs, labels, ignore_index)
    n_bins = _check_n_bins(n_bins)
    binning = _checks.check_choice("binning", binning, BINNINGS)
    confidence, correct = _top_label(array, classes)
    return _binned(confidence, correct, n_bins, binning)


def expected_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "uniform",
    *,
    ignore_index: int | None = None,
) -> float:
    r"""Expected calibration error of the top-label confidence (Guo et al. 2017).

    .. math::

        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}
        \left|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\right|

    with the bins of :func:`reliability_curve` (15 equal-width bins by default, as Guo et
    al.; ``binning="quantile"`` for equal-mass bins). Empty bins contribute 0. The bins see
    the values as given: a float32 0.6 is 0.6000000238 and falls in (0.6, 0.8]. Equals
    ``torchmetrics``' ``multiclass_calibration_error(..., norm="l1")`` except for a
    confidence exactly on an inner edge, which Guo et al. (and this function) put in the
    lower bin and torchmetrics in the upper one.

    Args:
        probs: (N, C) class probabilities (not logits).
        labels: (N,) integer class indices.
        n_bins: M >= 1.
        binning: ``"uniform"`` or ``"quantile"``.
        ignore_index: rows whose label equals it are dropped first (None: keep all).

    Returns:
        A float in [0, 1].

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> labels = torch.tensor([0, 1, 1, 0])
        >>> round(expected_calibration_error(probs, labels, n_bins=5), 4)
        0.1375
    """
    curve = reliability_curve(probs, labels, n_bins, binning, ignore_index=ignore_index)
    return curve.expected_calibration_error


def maximum_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "uniform",
    *,
    ignore_index: int | None = None,
) -> float:
    r"""Largest calibration gap over the non-empty bins (Guo et al. 2017).

    .. math::

        \mathrm{MCE} = \max_{m:\,|B_m|>0} \left|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\right|

    Arguments as :func:`expected_calibration_error`.

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> round(maximum_calibration_error(probs, torch.tensor([0, 1, 1, 0]), n_bins=5), 4)
        0.175
    """
    curve = reliability_curve(probs, labels, n_bins, binning, ignore_index=ignore_index)
    return curve.maximum_calibration_error


def classwise_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "uniform",
    *,
    ignore_index: int | None = None,
) -> float:
    r"""Class-wise ECE (Kull et al. 2019): the calibration of every class probability.

    .. math::

        \text{classwise-ECE} = \frac{1}{C} \sum_{c=1}^{C} \sum_{m=1}^{M}
        \frac{|B_{m,c}|}{N} \left| \bar y_c(B_{m,c}) - \bar p_c(B_{m,c}) \right|

    where :math:`B_{m,c}` bins the probabilities :math:`p_{ic}` of class c over all samples
    (the bins of :func:`reliability_curve`, per class), :math:`\bar y_c` is the fraction of
    the bin whose label is c and :math:`\bar p_c` the mean :math:`p_{ic}` in the bin.

    Arguments as :func:`expected_calibration_error`.

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> round(classwise_calibration_error(probs, torch.tensor([0, 1, 1, 0]), n_bins=5), 4)
        0.2875
    """
    array, classes = _prepare(probs, labels, ignore_index)
    n_bins = _check_n_bins(n_bins)
    binning = _checks.check_choice("binning", binning, BINNINGS)
    errors = [
        _binned(
            array[:, c], (classes == c).astype(np.float64), n_bins, binning
        ).expected_calibration_error
        for c in range(array.shape[1])
    ]
    return float(np.mean(errors))


def multilabel_calibration_error(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "uniform",
    average: str = "macro",
    *,
    ignore_index: int | None = None,
) -> float | list[float]:
    r"""Per-label ECE of independent (sigmoid) probabilities, for binary and multi-label tasks.

    Each label l is scored on its own, on the probability of the positive class (not the
    top-label confidence max(p, 1-p)): with bins :math:`B_{m,l}` of :math:`p_{il}`,

    .. math::

        \mathrm{ECE}_l = \sum_m \frac{|B_{m,l}|}{N}
        \left| \bar y_l(B_{m,l}) - \bar p_l(B_{m,l}) \right|

    the same definition as torchmetrics' ``binary_calibration_error``.

    Args:
        probs: (N,) or (N, L) probabilities of the positive class (``sigmoid`` of the logits).
        labels: 0/1 indicators (bool, integer or float) with the shape of ``probs``.
        n_bins: M >= 1.
        binning: ``"uniform"`` or ``"quantile"`` (quantiles per label).
        average: ``"macro"`` (mean over labels, a float) or ``"none"`` (a list, one per label).
        ignore_index: entries of ``labels`` equal to it are dropped, per label (None: keep
            all); a label left with no entry raises ``ValueError``.

    Example:
        >>> probs = torch.tensor([[0.9, 0.25], [0.8, 0.1], [0.3, 0.55], [0.1, 0.7]])
        >>> labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]])
        >>> [round(e, 4) for e in multilabel_calibration_error(probs, labels, 5, average="none")]
        [0.175, 0.375]
    """
    ignore_index = _check_ignore_index(ignore_index)
    array, shape = _check_columns(probs, "probs", (1, 2), "(N,) or (N, L) (L labels)")
    targets = _check_binary_labels(labels, shape, "probs", ignore_index).reshape(array.shape)
    keep = _kept_columns(targets, ignore_index, require_each=True)
    _check_unit_interval("probs", array, "probabilities of the positive class, not logits", keep)
    n_bins = _check_n_bins(n_bins)
    binning = _checks.check_choice("binning", binning, BINNINGS)
    average = _checks.check_choice("average", average, AVERAGES)
    errors = []
    for j in range(array.shape[1]):
        rows = slice(None) if keep is None else keep[:, j]
        curve = _binned(array[rows, j], targets[rows, j], n_bins, binning)
        errors.append(curve.expected_calibration_error)
    return errors if average == "none" else float(np.mean(errors))


# --------------------------------------------------------------------------------------------
# Proper scores
# --------------------------------------------------------------------------------------------


def brier_score(probs: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = None) -> float:
    r"""Multi-class Brier score (Brier 1950), summed over classes and averaged over samples.

    .. math::

        \mathrm{BS} = \frac{1}{N} \sum_{i=1}^{N} \sum_{c=1}^{C} (p_{ic} - [y_i = c])^2
        \in [0, 2]

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> round(brier_score(probs, torch.tensor([0, 1, 1, 0])), 4)
        0.2687
    """
    array, classes = _prepare(probs, labels, ignore_index)
    onehot = np.zeros_like(array)
    onehot[np.arange(array.shape[0]), classes] = 1.0
    return float(np.mean(np.sum((array - onehot) ** 2, axis=1)))


def negative_log_likelihood(
    probs: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = None
) -> float:
    r"""Mean negative log-likelihood of the labels, from probabilities.

    .. math::

        \mathrm{NLL} = -\frac{1}{N} \sum_{i=1}^{N} \log p_{i y_i}

    It is ``inf`` when some :math:`p_{iy_i} = 0` (the definition; no clipping). From logits,
    ``torch.nn.functional.cross_entropy(logits, labels)`` is the same number computed
    without the round trip through probabilities.

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> round(negative_log_likelihood(probs, torch.tensor([0, 1])), 4)
        0.4904
    """
    array, classes = _prepare(probs, labels, ignore_index)
    picked = array[np.arange(array.shape[0]), classes]
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(picked)))


# --------------------------------------------------------------------------------------------
# Selective classification
# --------------------------------------------------------------------------------------------


def risk_coverage_curve(
    probs: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = None
) -> RiskCoverageCurve:
    r"""Risk-coverage curve of selection by maximum probability (Geifman & El-Yaniv 2017).

    Sorting the samples by confidence :math:`\hat p_i = \max_c p_{ic}`, accepting those with
    :math:`\hat p_i \ge \tau` gives coverage :math:`c(\tau) = |\{i: \hat p_i \ge \tau\}|/N`
    and selective risk :math:`r(\tau)` = error rate among them. One point per distinct
    confidence: tied samples cannot be separated by a threshold, so they enter together
    (the result does not depend on the order of ties).

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> curve = risk_coverage_curve(probs, torch.tensor([0, 1, 1, 0]))
        >>> curve.coverage.tolist(), curve.risk.round(4).tolist()
        ([0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.0, 0.25])
    """
    array, classes = _prepare(probs, labels, ignore_index)
    return _risk_coverage(*_top_label(array, classes))


def _risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> RiskCoverageCurve:
    """The curve of :func:`risk_coverage_curve` from (confidence, correct) per sample."""
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence = confidence[order]
    errors = np.cumsum(1.0 - correct[order])
    # The last sample of each group of equal confidence closes a point of the curve.
    last = np.flatnonzero(np.append(np.diff(sorted_confidence) != 0, True))
    accepted = last + 1.0
    return RiskCoverageCurve(
        coverage=accepted / confidence.shape[0],
        risk=errors[last] / accepted,
        threshold=sorted_confidence[last],
    )


def aurc(probs: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = None) -> float:
    r"""Area under the risk-coverage curve of maximum-probability selection (lower is better).

    .. math::

        \mathrm{AURC} = \sum_{g} (c_g - c_{g-1})\, r_g

    over the points of :func:`risk_coverage_curve` (:math:`c_0 = 0`). Without tied
    confidences this is :math:`\frac1N \sum_{k=1}^{N} r_k`, :math:`r_k` the error rate of the
    k most confident samples (Geifman et al. 2019); tied samples share the risk of the
    threshold that accepts them all.

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> aurc(probs, torch.tensor([0, 1, 1, 0]))
        0.0625
    """
    return risk_coverage_curve(probs, labels, ignore_index=ignore_index).aurc


def excess_aurc(probs: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = None) -> float:
    r"""AURC minus the smallest AURC any ranking could reach at the same error rate (E-AURC).

    .. math::

        \mathrm{E\text{-}AURC} = \mathrm{AURC} - \Big[r + (1 - r)\log(1 - r)\Big]

    with :math:`r` the error rate of the arg-max predictions (Geifman et al. 2019): the
    bracket is the AURC of a ranking that puts every error last (its continuous form). It
    separates the quality of the confidence ranking from the accuracy, so two models of
    different accuracy can be compared; 0 is a perfect ranking. With :math:`r = 1` the bracket
    is 1.

    Example:
        >>> probs = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.3, 0.7], [0.85, 0.15]])
        >>> round(excess_aurc(probs, torch.tensor([0, 1, 1, 0])), 4)
        0.0283
    """
    array, classes = _prepare(probs, labels, ignore_index)
    return _excess_aurc(*_top_label(array, classes))


def _excess_aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    error = 1.0 - float(np.mean(correct))
    optimal = 1.0 if error >= 1.0 else error + (1.0 - error) * math.log1p(-error)
    return _risk_coverage(confidence, correct).aurc - optimal


# --------------------------------------------------------------------------------------------
# AUROC (binary and multi-label)
# --------------------------------------------------------------------------------------------


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], values.shape[0])
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _auroc_column(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mann-Whitney AUROC with midranks; nan when only one class is present."""
    positives = targets == 1
    n_pos = int(positives.sum())
    n_neg = targets.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(_midranks(scores)[positives].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _check_scores(scores: object, ndim: int) -> np.ndarray:
    hint = "(N,) (use multilabel_auroc for (N, L))" if ndim == 1 else "(N, L) (L labels)"
    array, _ = _check_columns(scores, "scores", (ndim,), hint)
    if np.isnan(array).any():
        where = tuple(int(i) for i in np.argwhere(np.isnan(array))[0])
        raise ValueError(f"scores must not be nan, got nan at index {where}")
    return array


def auroc(scores: ArrayLike, labels: ArrayLike, *, ignore_index: int | None = None) -> float:
    r"""Area under the ROC curve of a binary task, by the rank (Mann-Whitney) formula.

    .. math::

        \mathrm{AUROC} = \frac{\sum_{i: y_i = 1} R_i - n_+(n_+ + 1)/2}{n_+\, n_-}

    with :math:`R_i` the 1-based rank of :math:`s_i` among all scores, tied scores sharing
    the mean of their ranks (a tie between a positive and a negative counts 1/2).

    Args:
        scores: (N,) scores, probabilities or logits (only their order matters).
        labels: (N,) 0/1 indicators (bool, integer or float).
        ignore_index: samples whose label equals it are dropped first (None: keep all).

    Raises:
        ValueError: if ``labels`` holds only one class (AUROC is undefined).

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    ignore_index = _check_ignore_index(ignore_index)
    columns = _check_scores(scores, 1)
    targets = _check_binary_labels(labels, (columns.shape[0],), "scores", ignore_index)
    keep = _kept(targets, ignore_index)
    if keep is not None:
        columns, targets = columns[keep], targets[keep]
    value = _auroc_column(columns[:, 0], targets)
    if math.isnan(value):
        present = int(targets[0])
        raise ValueError(
            f"AUROC needs both classes in labels, got only class {present} "
            f"({targets.shape[0]} samples)"
        )
    return value


def multilabel_auroc(
    scores: ArrayLike,
    labels: ArrayLike,
    average: str = "macro",
    *,
    ignore_index: int | None = None,
) -> float | list[float]:
    r"""AUROC of every label of a multi-label task (:func:`auroc` per column), macro-averaged.

    A label whose column of ``labels`` holds only one class has no AUROC: it is **skipped**
    by ``average="macro"`` (the mean is over the other labels) and reported as ``nan`` by
    ``average="none"``. If every label is skipped, ``"macro"`` raises ``ValueError``.

    Args:
        scores: (N, L) scores, probabilities or logits (only their order matters).
        labels: (N, L) 0/1 indicators (bool, integer or float).
        average: ``"macro"`` (a float) or ``"none"`` (a list with one entry per label).
        ignore_index: entries of ``labels`` equal to it are dropped, per label (None: keep
            all); a label left with only one class, or none, has no AUROC (as above).

    Example:
        >>> scores = torch.tensor([[0.1, 0.9], [0.4, 0.8], [0.35, 0.7], [0.8, 0.2]])
        >>> labels = torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1]])
        >>> multilabel_auroc(scores, labels, average="none")
        [0.75, nan]
        >>> multilabel_auroc(scores, labels)
        0.75
    """
    average = _checks.check_choice("average", average, AVERAGES)
    ignore_index = _check_ignore_index(ignore_index)
    columns = _check_scores(scores, 2)
    targets = _check_binary_labels(labels, columns.shape, "scores", ignore_index)
    keep = _kept_columns(targets, ignore_index, require_each=False)
    values = []
    for j in range(columns.shape[1]):
        rows = slice(None) if keep is None else keep[:, j]
        values.append(_auroc_column(columns[rows, j], targets[rows, j]))
    if average == "none":
        return values
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        raise ValueError(
            f"AUROC is undefined for every one of the {len(values)} labels: each column of "
            f"labels holds only one class"
        )
    return float(np.mean(defined))


# --------------------------------------------------------------------------------------------
# Temperature scaling and the logit gap
# --------------------------------------------------------------------------------------------


def _nll_slopes(beta: float, logits: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Per row, d/d(beta) of the NLL of softmax(beta * logits): E_p[z] - z_y."""
    scaled = beta * logits
    scaled -= scaled.max(axis=1, keepdims=True)
    weights = np.exp(scaled)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.sum(weights * (logits - picked[:, None]), axis=1)


def _nll_slope(beta: float, logits: np.ndarray, picked: np.ndarray) -> float:
    """d/d(beta) of the mean NLL of softmax(beta * logits): mean(E_p[z] - z_y)."""
    return float(np.mean(_nll_slopes(beta, logits, picked)))


def _bisect_temperature(
    slope: Callable[[float], float], constant: bool, lowest: float, highest: float
) -> float:
    """The root of the non-decreasing ``slope(beta)`` as T = 1/beta, clipped to the bounds.

    ``constant``: the NLL does not depend on T (every row of logits constant), result 1.0.
    The number of ``slope`` calls depends on the bounds only, never on the data (the
    streaming :class:`~labelsmooth.streaming.TemperatureFit` relies on this: each call is a
    collective).
    """
    if constant:
        return float(min(max(1.0, lowest), highest))
    low, high = math.log(1.0 / highest), math.log(1.0 / lowest)  # log beta
    low_slope, high_slope = slope(math.exp(low)), slope(math.exp(high))
    if low_slope >= 0:
        return float(highest)
    if high_slope <= 0:
        return float(lowest)
    while high - low > 1e-12:
        middle = 0.5 * (low + high)
        if slope(math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(min(max(math.exp(-0.5 * (low + high)), lowest), highest))


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    ignore_index: int | None = None,
) -> float:
    r"""Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of softmax(z / T).

    .. math::

        T^\star = \arg\min_{T} \frac1N \sum_i \Big[\log \sum_c e^{z_{ic}/T} - z_{iy_i}/T\Big]

    Fit it on held-out logits, then use ``softmax(logits / T)``. With :math:`\beta = 1/T`
    the objective is convex and its derivative :math:`\frac1N\sum_i (E_{p_i}[z_i] -
    z_{iy_i})` is non-decreasing in :math:`\beta`, so its root is found by bisection on
    :math:`\log \beta` inside ``bounds`` (to relative precision 1e-12, in float64): no
    step size, no nan, no T <= 0. Where the optimum lies outside ``bounds`` the nearest
    bound is returned: separable data (every label has the largest logit) want T -> 0 and
    get ``bounds[0]``; logits no better than chance want T -> inf and get ``bounds[1]``.
    When the NLL does not depend on T (every row of logits constant) the result is 1.0.

    Args:
        logits: (N, C) finite logits (not probabilities).
        labels: (N,) integer class indices.
        bounds: (lowest, highest) temperature, 0 < lowest < highest < inf.
        ignore_index: rows whose label equals it are dropped first (None: keep all); only
            the kept rows must be finite.

    Returns:
        A float in ``[bounds[0], bounds[1]]``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> round(fit_temperature(logits, labels), 4)  # p = 3/4 is optimal: T = 2 / log 3
        1.8205
    """
    array, classes = _prepare_logits(logits, labels, ignore_index)
    lowest, highest = _check_bounds(bounds)
    constant = bool(np.all(array.max(axis=1) == array.min(axis=1)))
    picked = array[np.arange(array.shape[0]), classes]
    return _bisect_temperature(
        lambda beta: _nll_slope(beta, array, picked), constant, lowest, highest
    )


def _check_bounds(bounds: object) -> tuple[float, float]:
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"bounds must be a pair (lowest, highest), got bounds={bounds!r}")
    for value in bounds:
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"bounds must hold real numbers, got bounds={bounds!r}")
    lowest, highest = float(bounds[0]), float(bounds[1])
    if not (0 < lowest < highest < math.inf):
        raise ValueError(
            f"bounds must satisfy 0 < lowest < highest < inf, got bounds=({lowest}, {highest})"
        )
    return lowest, highest


def logit_gap(logits: ArrayLike) -> ArrayLike:
    r"""Per row, the largest logit minus the mean of the other logits.

    .. math::

        g = z_{\max} - \frac{1}{K-1} \sum_{c \ne \arg\max} z_c
          = \frac{1}{K-1} \sum_{c} (z_{\max} - z_c)

    (computed in the second form, which has no cancellation). Label smoothing drives it to
    :func:`theoretical_gap`; plain cross-entropy drives it to infinity.

    Args:
        logits: (..., K) logits with K >= 2, class dimension last; tensor or numpy array.

    Returns:
        Shape (...): for tensor input a tensor detached from the graph, in the floating dtype
        of ``logits`` (computed in float32, or float64 for float64 input); for numpy input a
        float64 numpy array.

    Example:
        >>> logit_gap(torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
        tensor([2.5000, 0.0000])
    """
    if isinstance(logits, np.ndarray):
        array, dtype = _as_array("logits", logits)
        if not _is_float(array):
            raise TypeError(f"logits must be floating point, got dtype={dtype}")
        _check_gap_shape(array.shape)
        top = array.max(axis=-1, keepdims=True)
        return np.sum(top - array, axis=-1) / (array.shape[-1] - 1)
    tensor = _checks.check_logits(logits, "logits")
    _check_gap_shape(tuple(tensor.shape))
    work = tensor.detach().to(_checks.compute_dtype(tensor.dtype))
    top = work.max(dim=-1, keepdim=True).values
    return ((top - work).sum(dim=-1) / (work.shape[-1] - 1)).to(tensor.dtype)


def _check_gap_shape(shape: tuple[int, ...]) -> None:
    if len(shape) == 0 or shape[-1] < 2:
        raise ValueError(
            f"logits must have a last (class) dimension of size K >= 2, got shape {shape}"
        )


def theoretical_gap(eps: float, num_classes: int, style: str = "uniform") -> float:
    r"""The logit gap at the minimum of the label-smoothed cross-entropy.

    The smoothed loss is minimised by :math:`p = \tilde t` (the smoothed target), i.e. by
    logits equal to :math:`\log \tilde t` up to a constant, whose gap is
    :math:`\log(\tilde t_y / \tilde t_{c \ne y})`:

    * ``"uniform"`` (:math:`\tilde t_y = 1-\epsilon+\epsilon/K`, others :math:`\epsilon/K`):
      :math:`\log\big(1 + K(1-\epsilon)/\epsilon\big)`;
    * ``"others"`` (:math:`\tilde t_y = 1-\epsilon`, others :math:`\epsilon/(K-1)`):
      :math:`\log\big((K-1)(1-\epsilon)/\epsilon\big)`.

    ``eps = 0`` (plain cross-entropy) gives ``inf``: there is no finite minimiser. The gap is
    0 at the largest eps of the style (1 for ``"uniform"``, (K-1)/K for ``"others"``).

    Args:
        eps: smoothing rate, 0 <= eps <= 1 (``"uniform"``) or <= (K-1)/K (``"others"``).
            Negative eps (generalised label smoothing) has no finite minimiser and is
            rejected.
        num_classes: K >= 2.
        style: ``"uniform"`` or ``"others"`` (see DESIGN.md).

    Example:
        >>> round(theoretical_gap(0.1, 10), 4)
        4.5109
        >>> round(theoretical_gap(0.1, 10, "others"), 4)
        4.3944
        >>> theoretical_gap(0.0, 10)
        inf
    """
    style = _checks.check_style(style)
    num_classes = _checks.check_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got num_classes={num_classes}")
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise TypeError(f"eps must be a real number, got eps={eps!r}")
    eps = float(eps)
    bound = _checks.eps_upper_bound(num_classes, style)
    if not (0.0 <= eps <= bound * (1 + 1e-12)):
        raise ValueError(
            f"eps must be in [0, {bound:.6g}] for style={style!r} with num_classes={num_classes} "
            f"(0 gives an infinite gap; negative eps has no finite minimiser), got eps={eps}"
        )
    if eps == 0.0:
        return math.inf
    k = num_classes
    if style == "uniform":
        return math.log1p(k * (1.0 - eps) / eps)
    # log1p of ((K-1)(1-eps) - eps)/eps = (K-1-K eps)/eps: exactly 0 at the largest eps
    return max(math.log1p((k - 1 - k * eps) / eps), 0.0)

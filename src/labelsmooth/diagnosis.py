r"""Diagnose a trained model from its outputs: calibration, temperature, logit gap, implied eps.

:func:`diagnose` takes the logits a model produced on labelled examples and says, with the
numbers behind every sentence, whether the model is over- or under-confident, what eps its
logit gaps correspond to under each smoothing convention, whether it sits at the optimum of
the eps (and style) it was trained with, and whether a loss value computed elsewhere matches
the reference implementation. ``labelsmooth diagnose FILE`` is the same from the command line
(:func:`load_outputs` reads the file).

Decisions (each stated in the output where it matters):

* **Bootstrap.** Every scalar metric of the evaluated examples gets a 95% percentile
  bootstrap interval over examples (rows; for multi-label tasks a row's labels stay
  together), ``n_bootstrap`` resamples drawn with a fixed ``seed``. The temperature is held
  fixed in the resamples, so the after-scaling intervals do not include the uncertainty of T.
  The NLL and ECE drops under temperature scaling are paired: both sides on the same resample.
  An ECE near 0 is biased upward under resampling (duplicated examples make the bins noisier),
  so its interval can lie above the estimate; the notes say so when it happens. Metrics whose
  bootstrap would read more than 2e9 numbers (per-entry metrics of a large multi-label task,
  class-wise ECE of a large N x K) get no interval, and the notes say which.
* **Temperature.** :func:`labelsmooth.metrics.fit_temperature` within ``(0.01, 100)``, on
  ``val_logits``/``val_labels`` when given and evaluated on ``logits``; otherwise fitted and
  evaluated on the same examples, which is optimistic, and the output says so. A T at a bound
  is not a usable temperature (``temperature_ok`` is False) and the output says why.
* **Logit gap.** :func:`labelsmooth.metrics.logit_gap` (max logit minus the mean of the others)
  of the **correctly classified** examples: the theory is about the gap between the true
  class and the rest, which the max-minus-mean gap measures only when the arg-max is the true
  class (misclassified examples' gaps measure confidence in a wrong class and would pull the
  median down). If no example is classified correctly, all examples are used.
  Binary and multi-label logits z are treated as the two-class logits (0, z), K = 2: the gap is
  :math:`|z|`, and the theory matches :func:`labelsmooth.smooth_binary`.
* **Implied eps.** The eps whose :func:`~labelsmooth.metrics.theoretical_gap` equals the median
  gap g, in closed form (:func:`implied_eps`): uniform :math:`K/(K + e^g - 1)`, others
  :math:`(K-1)/(K-1+e^g)`. At the optimum every non-target logit is equal and the gap is
  :math:`\log(\tilde t_y / \tilde t_{c \ne y})`, so the inversion is exact there.
* **Position.** With ``eps`` given, the model sits *at* the optimum of a style when that
  style's implied eps is within ``tolerance`` (relative, default 10%) of eps; *above* it when
  the implied eps is smaller (larger gaps than eps allows: smoothing weaker than stated or
  not applied); *below* when larger. With ``train_logits``/``train_labels`` the position is
  judged on them (the theory is about the minimiser of the training loss), else on ``logits``.
  The two conventions' implied eps always differ by the factor (K-1)/K (uniform eps equals
  others eps * K/(K-1)), so for large K both can be within the tolerance (K = 20 at 10%): the
  output then says that the gap cannot tell them apart.
* **Binary collapse.** The outputs have *collapsed* onto the smoothed targets (a, 1-a) of the
  given ``eps`` when at least half of them lie within a/2 of their own label's target (a = the
  smoothed negative target). Without ``eps`` the share near the target implied by the median
  gap, sigmoid(-g), is reported without a call (``collapsed`` None): those targets come from
  the outputs themselves, and logits of unit scale put half the outputs near them.
* **Loss check.** ``loss`` is the mean loss your code computed on exactly these ``logits`` and
  ``labels``; it is compared (relative tolerance 1e-3) with the reference
  :func:`labelsmooth.cross_entropy` / :func:`labelsmooth.binary_cross_entropy_with_logits`
  of each convention and of eps = 0. Every loss is linear in eps, so the eps each convention
  would need to give your loss is reported too.
* **Verdict.** "Over-confident" (T > 1) or "under-confident" (T < 1) is said only when T is
  not at a bound, there are at least 30 examples (``MIN_EXAMPLES``: fewer give a percentile
  bootstrap that understates the uncertainty; one example a zero-width interval) and scaling
  lowers the NLL by at least 1% with a paired bootstrap interval of the drop above 0; an ECE
  "drops" only when the interval of its drop excludes 0. A temperature fitted on validation
  examples that raises the NLL of the evaluated ones is said to. An accuracy no better than
  always predicting the most frequent class (``baseline_accuracy``) is said first.

Example:
    >>> import torch, labelsmooth as ls
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> labels = torch.randint(0, 10, (400,))
    >>> logits = ls.smooth_labels(labels, 10, 0.1).log() + 0.1 * torch.randn(400, 10)
    >>> d = ls.diagnose(logits, labels, eps=0.1, style="uniform", n_bootstrap=100)
    >>> round(d.implied_eps["uniform"], 2), d.gap_position["uniform"]
    (0.1, 'at')
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import pickle
import re
import tempfile
import textwrap
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _checks, metrics
from .functional import binary_cross_entropy_with_logits, cross_entropy

__all__ = [
    "DEFAULT_N_BOOTSTRAP",
    "TASKS",
    "TEMPERATURE_BOUNDS",
    "Diagnosis",
    "diagnose",
    "implied_eps",
    "load_outputs",
]

TASKS = ("multiclass", "binary", "multilabel")
TEMPERATURE_BOUNDS = (0.01, 100.0)
DEFAULT_N_BOOTSTRAP = 1000
N_BINS = 15
# Temperature scaling must lower the NLL by at least this fraction to call a model mis-calibrated.
MIN_RELATIVE_NLL_DROP = 0.01
# A loss "matches" a reference when |loss - reference| <= LOSS_RTOL * |reference|.
LOSS_RTOL = 1e-3
# Collapse: at least this share of outputs within a/2 of their smoothed target.
COLLAPSE_SHARE = 0.5
# Fewer examples than this get no over-/under-confidence verdict: a percentile bootstrap of so
# few examples understates the uncertainty (one example, or identical ones, give a zero-width
# interval).
MIN_EXAMPLES = 30
# The bootstrap works on blocks of resamples holding at most this many numbers, and skips the
# intervals of metrics whose cost (the numbers they read per resample x resamples) exceeds the
# budget (about a minute and a half on one core).
_BLOCK = 2_000_000
_BOOTSTRAP_BUDGET = 2e9


def _skip_note(names: list[str], numbers: int, n_bootstrap: int) -> str:
    return (
        f"No bootstrap interval for {', '.join(names)}: {numbers} numbers per resample x "
        f"{n_bootstrap} resamples exceeds the budget of {_BOOTSTRAP_BUDGET:.0e}; a smaller "
        "n_bootstrap gives them."
    )


# The keys load_outputs knows; others are ignored.
FILE_KEYS = (
    "logits",
    "labels",
    "val_logits",
    "val_labels",
    "train_logits",
    "train_labels",
    "loss",
)
CSV_LAYOUT = (
    "a header row, then one example per row: multiclass `label,logit_0,...,logit_{K-1}`; "
    "binary `label,logit`; multi-label `label_0,...,label_{L-1},logit_0,...,logit_{L-1}` "
    "(columns in any order)"
)


# --------------------------------------------------------------------------------------------
# The closed-form inversion of the theoretical gap
# --------------------------------------------------------------------------------------------


def implied_eps(gap: float, num_classes: int, style: str = "uniform") -> float:
    r"""The eps whose optimum logit gap (:func:`labelsmooth.metrics.theoretical_gap`) is ``gap``.

    The inverse of the theoretical gap, in closed form:

    .. math::

        \epsilon_{\text{uniform}} = \frac{K}{K + e^g - 1}, \qquad
        \epsilon_{\text{others}} = \frac{K-1}{K-1+e^g},

    computed as :math:`K x / (1 + (K-1)x)` and :math:`(K-1)x / (1 + (K-1)x)` with
    :math:`x = e^{-g}`, which never overflows (for g above about 745 the result underflows to
    0, whose gap is infinite). The two are proportional: others = uniform * (K-1)/K, the same
    smoothed target. ``gap = 0`` gives the largest eps of the style (1, or (K-1)/K).

    Args:
        gap: g >= 0 (a logit gap: max logit minus the mean of the others).
        num_classes: K >= 2.
        style: ``"uniform"`` or ``"others"``.

    Example:
        >>> round(implied_eps(4.5109, 10), 4)
        0.1
        >>> round(implied_eps(4.5109, 10, "others"), 4)
        0.09
    """
    style = _checks.check_style(style)
    k = _checks.check_int("num_classes", num_classes)
    if k < 2:
        raise ValueError(f"num_classes must be >= 2, got num_classes={k}")
    g = _checks.check_real("gap", gap, minimum=0.0)
    x = math.exp(-g)
    share = (k - 1) * x / (1.0 + (k - 1) * x)  # the others-style eps
    return share * k / (k - 1) if style == "uniform" else share


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnosis:
    r"""What :func:`diagnose` found. ``to_dict()`` is what ``diagnosis.json`` holds.

    Metrics (of the evaluated ``logits``), with 95% bootstrap intervals in ``intervals``:
    ``accuracy`` (binary/multi-label: of the thresholded entries, z > 0 predicts 1),
    ``baseline_accuracy`` (no interval: the accuracy of always predicting the most frequent
    class; binary/multi-label: the most frequent value of each label), ``nll``
    (mean negative log-likelihood; binary: mean binary cross-entropy over entries), ``brier``
    (multi-class: summed over classes; binary: per entry), ``ece`` (15 equal-width bins;
    binary/multi-label: of the positive-class probability, macro over labels),
    ``ece_quantile`` (15 equal-mass bins), ``classwise_ece`` (multi-class only), ``aurc``
    (binary/multi-label: over entries, confidence max(p, 1-p)), ``auroc`` (binary/multi-label,
    macro over labels with both classes; per label in ``auroc_per_label``).

    Temperature: ``temperature`` T, ``temperature_ok`` (False when T is at a bound of
    ``temperature_bounds``; ``temperature_note`` says why), ``temperature_fit_on``
    (``"validation examples"`` or ``"the same examples"``), ``nll_after_temperature``,
    ``ece_after_temperature``.

    Logit gap: ``median_logit_gap`` over the ``gap_examples`` (``"correctly classified"``, or
    ``"all"`` when none is), ``logit_gap_quantiles`` (10/25/50/75/90%), ``implied_eps``
    (``{"uniform": e, "others": e}``: the eps whose theoretical gap equals the median gap),
    ``train_median_logit_gap`` / ``train_implied_eps`` from ``train_logits`` (None without).
    With ``eps``: ``optimum_gap`` and ``gap_position`` per style (``"at"``, ``"above"``,
    ``"below"`` the optimum, judged on ``position_on``), and ``convention``: the style(s) whose
    optimum the model sits at (``"uniform"``, ``"others"``, ``"either"`` or None).

    ``binary`` (binary/multi-label): mean predicted probability of negatives and positives,
    the smoothed targets, the share of outputs near them and whether they ``collapsed``
    (None for the targets implied by the median gap: no call without ``eps``).
    ``loss_check`` (with ``loss``): the reference losses, which one your loss matches and the
    eps each convention would need for it. ``findings``, ``next_steps`` and ``verdict`` (both
    joined) are the plain words; ``notes`` the caveats.
    """

    task: str
    num_examples: int
    num_classes: int
    num_labels: int | None
    accuracy: float
    baseline_accuracy: float
    nll: float
    brier: float
    ece: float
    ece_quantile: float
    classwise_ece: float | None
    aurc: float
    auroc: float | None
    auroc_per_label: list[float | None] | None
    ece_per_label: list[float] | None
    intervals: dict[str, list[float]]
    n_bootstrap: int
    seed: int
    temperature: float
    temperature_ok: bool
    temperature_note: str
    temperature_fit_on: str
    temperature_bounds: list[float]
    nll_after_temperature: float
    ece_after_temperature: float
    median_logit_gap: float
    median_logit_gap_all: float
    gap_examples: str
    gap_count: int
    logit_gap_quantiles: dict[str, float]
    implied_eps: dict[str, float]
    train_median_logit_gap: float | None
    train_implied_eps: dict[str, float] | None
    eps: float | None
    style: str | None
    tolerance: float
    optimum_gap: dict[str, float] | None
    gap_position: dict[str, str] | None
    position_on: str | None
    convention: str | None
    binary: dict[str, Any] | None
    loss_check: dict[str, Any] | None
    findings: list[str]
    next_steps: list[str]
    notes: list[str]
    verdict: str
    _data: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every public field as JSON-ready Python values (nan and inf become None)."""
        payload = {name: value for name, value in asdict(self).items() if name != "_data"}
        return _jsonable(payload)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (keys sorted)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def summary(self) -> str:
        """The terminal summary: the metrics with their intervals, then the verdict."""
        return _summary(self)

    def to_html(self) -> str:
        """A self-contained HTML page: the verdict, the numbers and (with matplotlib) figures."""
        return _render_html(self)

    def save(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Writes ``diagnosis.json`` (= :meth:`to_dict`) and ``diagnosis.html`` to ``directory``.

        Both are rendered before anything is written, and both are written to temporary files
        in ``directory`` before either is renamed into place, so a failure never leaves a
        half-written file, nor a new ``diagnosis.json`` beside an old (or no) HTML page.
        Returns the two paths.
        """
        folder = Path(directory)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"out must be a directory, got {str(folder)!r}, which is a file")
        payload = self.to_json().encode("utf-8")
        page = self.to_html().encode("utf-8")
        folder.mkdir(parents=True, exist_ok=True)
        json_path, html_path = folder / "diagnosis.json", folder / "diagnosis.html"
        _atomic_write({json_path: payload, html_path: page})
        return json_path, html_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _atomic_write(files: dict[Path, bytes]) -> None:
    """Writes every file to a temporary file beside it, then renames them all into place."""
    temporaries: list[str] = []
    try:
        umask = os.umask(0)
        os.umask(umask)
        for path, data in files.items():
            handle, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
            temporaries.append(temporary)
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o666 & ~umask)
        for path, temporary in zip(files, temporaries, strict=True):
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries:
            Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _dense(name: str, value: object) -> object:
    """A tensor with values in memory: not on the meta device, not sparse."""
    if isinstance(value, Tensor):
        if value.is_meta:
            raise ValueError(
                f"{name} is on the meta device, which holds no values; pass a tensor with data"
            )
        if value.layout != torch.strided:
            raise ValueError(
                f"{name} must be a dense tensor, got layout={value.layout}; pass {name}.to_dense()"
            )
        if value.is_quantized:
            raise ValueError(
                f"{name} must hold plain numbers, got a quantized tensor (dtype={value.dtype}); "
                f"pass {name}.dequantize()"
            )
    return value


def _float_array(name: str, value: object) -> np.ndarray:
    value = _dense(name, value)
    if isinstance(value, Tensor) and value.dtype == torch.bfloat16:
        value = value.float()
    array, dtype = metrics._as_array(name, value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point (logits), got dtype={dtype}")
    return array


def _check_task_logits(name: str, value: object, task: str) -> np.ndarray:
    """(N, K) multiclass, (N,) / (N, 1) binary (returned as (N, 1)), (N, L) multi-label."""
    array = _float_array(name, value)
    shape = tuple(array.shape)
    if task == "multiclass":
        if array.ndim != 2 or shape[1] < 2:
            hint = ""
            if array.ndim == 1:
                hint = " (binary logits? pass task='binary')"
            elif array.ndim > 2:
                hint = (
                    " (sequence logits? flatten them to one row per position: (B, T, V) "
                    f"class-last: {name}.reshape(-1, V) with labels.reshape(-1); (N, C, T) as "
                    f"F.cross_entropy takes them: {name}.movedim(1, -1).reshape(-1, C))"
                )
            raise ValueError(
                f"{name} must have shape (N, K) with K >= 2 classes for task='multiclass', "
                f"got shape {shape}{hint}"
            )
    elif task == "binary":
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != 1:
            raise ValueError(
                f"{name} must have shape (N,) or (N, 1) for task='binary', got shape {shape}"
                + (" (several labels? pass task='multilabel')" if array.ndim == 2 else "")
            )
    elif array.ndim != 2:
        raise ValueError(f"{name} must have shape (N, L) for task='multilabel', got shape {shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {shape}")
    metrics._check_finite(name, array)
    return array


def _check_task_labels(name: str, value: object, logits: np.ndarray, task: str, of: str) -> Any:
    value = _dense(name, value)
    if task == "multiclass":
        try:
            return metrics._check_labels(value, logits.shape[0], logits.shape[1], of, name=name)
        except ValueError as err:
            found = re.search(r"class index (-\d+)", str(err))
            if found is None:
                raise
            raise ValueError(
                f"{err}; padding (ignore_index)? diagnose takes only labelled examples: "
                f"keep = {name} != {found[1]}, then pass {of}[keep] and {name}[keep]"
            ) from err
    array, dtype = metrics._as_array(name, value)
    if task == "binary" and array.ndim == 1:
        array = array[:, None]
    if array.shape != logits.shape:
        want = f"({logits.shape[0]},)" if task == "binary" else str(tuple(logits.shape))
        raise ValueError(
            f"{name} must have the shape of {of}: {want}, one 0/1 label per logit, "
            f"got shape {tuple(np.shape(value))}"
        )
    bad = (array != 0) & (array != 1)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be 0 or 1 for task={task!r}, got {array[where]} at index {where} "
            f"({dtype})"
        )
    return array.astype(np.float64)


def _check_pair(
    task: str,
    logits_name: str,
    logits: object,
    labels_name: str,
    labels: object,
    width: int | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    if logits is None and labels is None:
        return None
    if logits is None or labels is None:
        given, missing = (
            (logits_name, labels_name) if labels is None else (labels_name, logits_name)
        )
        raise ValueError(f"{given} needs {missing}: pass both or neither")
    array = _check_task_logits(logits_name, logits, task)
    if width is not None and array.shape[1] != width:
        raise ValueError(
            f"{logits_name} must have {width} columns like logits, got shape {tuple(array.shape)}"
        )
    return array, _check_task_labels(labels_name, labels, array, task, logits_name)


def _check_loss(loss: object) -> float | None:
    if loss is None:
        return None
    if isinstance(loss, np.ndarray):
        if loss.size != 1:
            raise ValueError(f"loss must be a single number, got an array of shape {loss.shape}")
        loss = loss.reshape(()).item()
    if isinstance(loss, np.generic):
        loss = loss.item()
    return _checks.check_real("loss", loss, allow_grad=True)  # only reported: no gradient


def _check_eps(eps: object, style: str | None, num_classes: int) -> tuple[float | None, list[str]]:
    """eps (or None) and the styles to compare with: the given one, else those valid for eps."""
    if eps is None:
        if style is not None:
            raise ValueError(
                f"style needs eps: style={style!r} names the convention of the eps the model "
                "was trained with; pass eps too (or neither)"
            )
        return None, []
    if style is not None:
        style = _checks.check_style(style)
    value = _checks.check_real("eps", eps, minimum=0.0)
    candidates = [style] if style is not None else list(_checks.STYLES)
    valid = [
        s for s in candidates if value <= _checks.eps_upper_bound(num_classes, s) * (1 + 1e-12)
    ]
    if not valid:
        bound = _checks.eps_upper_bound(num_classes, candidates[0])
        raise ValueError(
            f"eps must be in [0, {bound:.6g}] for style={candidates[0]!r} with "
            f"num_classes={num_classes}, got eps={value}"
        )
    return value, valid


# --------------------------------------------------------------------------------------------
# Per-example quantities and the bootstrap
# --------------------------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _uniform_bins(values: np.ndarray) -> np.ndarray:
    """Bin index of each value in the N_BINS equal-width bins (e_{m-1}, e_m] of metrics."""
    edges = metrics._bin_edges(values, N_BINS, "uniform")
    return np.searchsorted(edges[1:-1], values, side="left")


def _blocks(n: int, n_bootstrap: int, seed: int, width: int = 1) -> Iterator[np.ndarray]:
    """Resample counts (b, n) as float64, in blocks, from one seeded generator."""
    rng = np.random.default_rng(seed)
    block = max(1, min(n_bootstrap, _BLOCK // max(1, n * width)))
    for start in range(0, n_bootstrap, block):
        b = min(block, n_bootstrap - start)
        picks = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(picks.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


class _BinnedEce:
    """Per column l: sum over fixed bins m of |sum_i c_i r_il [bin_il = m]| / n, for counts c.

    With ``values`` the probabilities and ``outcomes`` the 0/1 events, this is the ECE of the
    resample (equal-width bins): sum_m (n_m / n) |mean outcome - mean value|. The bin sums are
    one ``bincount`` over (resample, column, bin), O(b n L) per call in blocks of at most
    ``_BLOCK`` numbers (a dense (n, L x bins) design matrix rebuilt per call cost O(n L) per
    block of resamples, quadratic in N x L over the bootstrap).
    """

    def __init__(self, values: np.ndarray, outcomes: np.ndarray) -> None:
        self.n, self.columns = values.shape
        bins = _uniform_bins(values.ravel()).reshape(values.shape)
        self.slot = bins + N_BINS * np.arange(self.columns)[None, :]  # (n, L): column, bin
        self.residual = outcomes - values

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """(b, L) per-column ECE."""
        b = counts.shape[0]
        out = np.empty((b, self.columns))
        step = max(1, _BLOCK // max(1, b * self.n))
        for start in range(0, self.columns, step):
            stop = min(start + step, self.columns)
            size = (stop - start) * N_BINS
            weights = counts[:, :, None] * self.residual[None, :, start:stop]
            slots = (self.slot[:, start:stop] - start * N_BINS)[None, :, :] + (size * np.arange(b))[
                :, None, None
            ]
            sums = np.bincount(slots.ravel(), weights=weights.ravel(), minlength=b * size)
            out[:, start:stop] = np.abs(sums.reshape(b, stop - start, N_BINS)).sum(axis=2) / self.n
        return out


class _QuantileEce:
    """ECE with N_BINS equal-mass bins of each column, on resamples given as counts.

    The bin edges are the linear-interpolation quantiles of the resampled values (numpy's
    default, as :func:`labelsmooth.metrics.expected_calibration_error`), outer edges 0 and 1.
    A resample is the sorted values repeated by their counts, so its quantiles are found by a
    search in the cumulative counts. Every (resample, column) pair is one row of the search.
    """

    def __init__(self, values: np.ndarray, outcomes: np.ndarray) -> None:
        """``values``, ``outcomes``: (n, L); the ECE of each of the L columns."""
        order = np.argsort(values, axis=0, kind="stable")
        self.order = order.T  # (L, n)
        self.values = np.take_along_axis(values, order, axis=0).T
        self.residual = np.take_along_axis(outcomes - values, order, axis=0).T

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """(b, L) ECE of each resample and column."""
        columns, n = self.values.shape
        b = counts.shape[0]
        counts = counts[:, self.order].reshape(b * columns, n)
        column = np.tile(np.arange(columns), b)
        values = self.values[column]
        rows = np.arange(b * columns)[:, None]
        cumulative = np.cumsum(counts, axis=1)
        total = cumulative[:, -1:]
        position = (total - 1) * (np.arange(N_BINS + 1) / N_BINS)[None, :]
        below = np.floor(position)
        fraction = position - below
        # Rows are offset by n + 1 so that one search covers every row at once.
        flat = (cumulative + rows * (n + 1)).ravel()

        def value_at(index: np.ndarray) -> np.ndarray:
            found = np.searchsorted(flat, (index + rows * (n + 1)).ravel(), side="right")
            return self.values[column[:, None], found.reshape(index.shape) - rows * n]

        low = value_at(below)
        high = value_at(np.minimum(below + 1, total - 1))
        edges = low + fraction * (high - low)
        edges[:, 0], edges[:, -1] = 0.0, 1.0
        edges = np.maximum.accumulate(edges, axis=1)
        inner = (edges[:, 1:-1] + 2.0 * rows).ravel()
        index = np.searchsorted(inner, values + 2.0 * rows, side="left")
        index -= rows * (N_BINS - 1)
        sums = np.bincount(
            (index + rows * N_BINS).ravel(),
            weights=(counts * self.residual[column]).ravel(),
            minlength=b * columns * N_BINS,
        ).reshape(b * columns, N_BINS)
        return (np.abs(sums).sum(axis=1) / total[:, 0]).reshape(b, columns)


class _Aurc:
    """AURC of maximum-confidence selection on resamples given as counts (ties grouped).

    ``rows``: the example of each entry (multi-label: the entries of a row resample together);
    None when the entries are the examples.
    """

    def __init__(
        self, confidence: np.ndarray, correct: np.ndarray, rows: np.ndarray | None = None
    ) -> None:
        order = np.argsort(-confidence, kind="stable")
        ordered = confidence[order]
        self.rows = order if rows is None else rows[order]
        self.wrong = 1.0 - correct[order]
        self.ends = np.flatnonzero(np.append(np.diff(ordered) != 0, True))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        counts = counts[:, self.rows]
        errors = np.cumsum(counts * self.wrong[None, :], axis=1)[:, self.ends]
        accepted = np.cumsum(counts, axis=1)[:, self.ends]
        width = np.diff(accepted, axis=1, prepend=0.0)
        risk = errors / np.maximum(accepted, 1.0)  # 0 where nothing is accepted yet
        return np.sum(width * risk, axis=1) / accepted[:, -1]


class _Statistics:
    """The bootstrapped metrics of one task: ``self(counts)`` -> {name: (b,) values}.

    ``counts`` (b, N) says how often each example is in each resample; ``self(ones)`` gives the
    point estimates (a test checks that they equal the :mod:`labelsmooth.metrics` values).
    """

    def __init__(self) -> None:
        self.means: dict[str, np.ndarray] = {}  # name -> per-example values, averaged
        self.binned: dict[str, tuple[_BinnedEce, int | None]] = {}  # column to keep or mean
        self.quantile: dict[str, _QuantileEce] = {}  # the mean over its columns
        self.width = 1  # numbers per example in the per-entry statistics (multi-label: L)
        self.aurc: _Aurc | None = None
        self.skipped: list[str] = []

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        n = counts.shape[1]
        out = {name: counts @ values / n for name, values in self.means.items()}
        for name, (binned, column) in self.binned.items():
            values = binned(counts)
            out[name] = values[:, column] if column is not None else values.mean(axis=1)
        for name, quantile in self.quantile.items():
            out[name] = quantile(counts).mean(axis=1)
        if self.aurc is not None:
            out["aurc"] = self.aurc(counts)
        if "nll" in out and "nll_after_temperature" in out:
            out["nll_drop"] = out["nll"] - out["nll_after_temperature"]
        if "ece" in out and "ece_after_temperature" in out:
            out["ece_drop"] = out["ece"] - out["ece_after_temperature"]
        return out

    def intervals(self, n: int, n_bootstrap: int, seed: int) -> dict[str, list[float]]:
        if n_bootstrap == 0:
            return {}
        collected: dict[str, list[np.ndarray]] = {}
        for counts in _blocks(n, n_bootstrap, seed, self.width):
            for name, values in self(counts).items():
                collected.setdefault(name, []).append(values)
        result = {}
        for name, parts in collected.items():
            values = np.concatenate(parts)
            low, high = np.percentile(values, [2.5, 97.5])
            result[name] = [float(low), float(high)]
        return result


# --------------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------------


def diagnose(
    logits: Any,
    labels: Any,
    *,
    task: str = "multiclass",
    eps: float | None = None,
    style: str | None = None,
    loss: float | None = None,
    val_logits: Any = None,
    val_labels: Any = None,
    train_logits: Any = None,
    train_labels: Any = None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
    tolerance: float = 0.1,
) -> Diagnosis:
    r"""Diagnose a model from its logits on labelled examples (see the module docstring).

    Calibration (accuracy, NLL, Brier, ECE with 15 equal-width and 15 equal-mass bins,
    class-wise ECE, AURC; binary/multi-label: AUROC and per-label ECE) with 95% percentile
    bootstrap intervals; temperature scaling :math:`T^\star = \arg\min_T \mathrm{NLL}
    (\mathrm{softmax}(z/T))` within (0.01, 100) and the metrics after it (T > 1:
    over-confident, T < 1: under-confident); the median logit gap g and the eps it implies,
    uniform :math:`K/(K+e^g-1)` and others :math:`(K-1)/(K-1+e^g)`; with ``eps``, whether the
    model sits at that optimum; with ``loss``, whether the loss matches the reference.

    Args:
        logits: multiclass (N, K); binary (N,) or (N, 1); multi-label (N, L). Floating
            point, finite; tensor, numpy array or list.
        labels: multiclass (N,) integer class indices in [0, K); binary/multi-label 0/1 with
            the shape of ``logits`` (bool, integer or float).
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        eps: the smoothing rate the model was trained with (None: unknown).
        style: its convention, ``"uniform"`` or ``"others"`` (None with ``eps``: compare with
            both). Needs ``eps``.
        loss: the mean loss your training code computes, evaluated on exactly these
            ``logits`` and ``labels``, to check against the reference implementation.
        val_logits, val_labels: held-out examples to fit the temperature on (else it is fitted
            on ``logits``, which is optimistic).
        train_logits, train_labels: the training examples' outputs; the position relative to
            the optimum gap is judged on them.
        n_bootstrap: resamples of the bootstrap intervals (0: none).
        seed: of the bootstrap.
        tolerance: relative tolerance on the implied eps for "at the optimum", in (0, 1).

    Raises:
        ValueError: bad values or shapes (names the argument, the value and what is allowed).
        TypeError: bad dtypes or types.

    Example:
        >>> import torch
        >>> logits = 4 * torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 1.5], [0.2, 0.0]])
        >>> d = diagnose(logits, torch.tensor([0, 1, 1, 0]), n_bootstrap=0)
        >>> d.accuracy, d.gap_count, d.median_logit_gap  # |z| of the 3 correct entries: 8, 6, 0.8
        (0.75, 3, 6.0)
    """
    task = _checks.check_choice("task", task, TASKS)
    n_bootstrap = _checks.check_int("n_bootstrap", n_bootstrap)
    if not 0 <= n_bootstrap <= 100_000:
        raise ValueError(f"n_bootstrap must be in [0, 100000], got n_bootstrap={n_bootstrap}")
    seed = _checks.check_int("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (a numpy generator seed), got seed={seed}")
    tolerance = _checks.check_real("tolerance", tolerance)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got tolerance={tolerance}")
    z = _check_task_logits("logits", logits, task)
    y = _check_task_labels("labels", labels, z, task, "logits")
    width = z.shape[1]
    val = _check_pair(task, "val_logits", val_logits, "val_labels", val_labels, width)
    train = _check_pair(task, "train_logits", train_logits, "train_labels", train_labels, width)
    k = width if task == "multiclass" else 2
    eps, styles = _check_eps(eps, style, k)
    loss = _check_loss(loss)

    notes: list[str] = []
    if task == "multiclass":
        core = _multiclass(z, y, val, n_bootstrap, seed, notes)
    else:
        core = _binary(z, y, val, n_bootstrap, seed, notes)

    gaps, correct, stats = core.pop("_gaps"), core.pop("_correct"), core.pop("_stats")
    chosen = gaps[correct] if correct.any() else gaps
    gap_examples = "correctly classified" if correct.any() else "all"
    if not correct.any():
        notes.append("No example is classified correctly: the logit gap is taken over all of them.")
    median = float(np.median(chosen))
    implied = {s: implied_eps(median, k, s) for s in _checks.STYLES}
    quantiles = {f"{q}%": float(np.percentile(chosen, q)) for q in (10, 25, 50, 75, 90)}

    train_median = train_implied = None
    if train is not None:
        train_gaps, train_correct = _gaps(train[0], train[1], task)
        pool = train_gaps[train_correct] if train_correct.any() else train_gaps
        train_median = float(np.median(pool))
        train_implied = {s: implied_eps(train_median, k, s) for s in _checks.STYLES}

    optimum = position = convention = position_on = None
    if eps is not None:
        # Both conventions where eps is valid for them: the other one detects a mix-up.
        valid = [s for s in _checks.STYLES if eps <= _checks.eps_upper_bound(k, s) * (1 + 1e-12)]
        optimum = {
            s: metrics.theoretical_gap(min(eps, _checks.eps_upper_bound(k, s)), k, s) for s in valid
        }
        if eps > 0:
            judged = train_implied if train_implied is not None else implied
            position_on = "train_logits" if train_implied is not None else "logits"
            position = {s: _position(judged[s], eps, tolerance) for s in valid}
            at = [s for s in valid if position[s] == "at"]
            convention = at[0] if len(at) == 1 else ("either" if at else None)

    binary = None
    if task != "multiclass":
        binary = _binary_targets(z, y, eps, styles, median)

    loss_check = None
    if loss is not None:
        loss_check = _loss_check(z, y, task, loss, eps, style, k)

    fit_on = "validation examples" if val is not None else "the same examples"
    if val is None:
        notes.append(
            "The temperature was fitted and evaluated on the same examples, so the "
            "after-scaling numbers are optimistic; pass val_logits/val_labels (held-out "
            "examples) to fit it elsewhere."
        )
    outside = [
        name
        for name, (low, high) in core["intervals"].items()
        if name in core and core[name] is not None and not low <= core[name] <= high
    ]
    if outside:
        notes.append(
            f"The bootstrap interval of {', '.join(outside)} does not contain the estimate: an "
            "ECE near 0 is biased upward under resampling (duplicated examples make the bins "
            "noisier); read the interval as its noise level."
        )
    if z.shape[0] < MIN_EXAMPLES:
        notes.append(
            f"Only {_examples(z.shape[0])} (fewer than {MIN_EXAMPLES}): the bootstrap intervals "
            "understate the uncertainty (one example, or identical ones, give a zero-width "
            "interval), the median logit gap is noisy, and no over- or under-confidence "
            "verdict is given."
        )
    if n_bootstrap:
        notes.append(
            f"Intervals: 95% percentile bootstrap over {_examples(z.shape[0])}, "
            f"{n_bootstrap} resamples, seed {seed}; T is held fixed in the resamples."
        )
    partial = Diagnosis(
        task=task,
        num_examples=int(z.shape[0]),
        num_classes=k,
        num_labels=None if task == "multiclass" else width,
        tolerance=tolerance,
        n_bootstrap=n_bootstrap,
        seed=seed,
        temperature_fit_on=fit_on,
        temperature_bounds=list(TEMPERATURE_BOUNDS),
        median_logit_gap=median,
        median_logit_gap_all=float(np.median(gaps)),
        gap_examples=gap_examples,
        gap_count=int(chosen.shape[0]),
        logit_gap_quantiles=quantiles,
        implied_eps=implied,
        train_median_logit_gap=train_median,
        train_implied_eps=train_implied,
        eps=eps,
        style=style,
        optimum_gap=optimum,
        gap_position=position,
        position_on=position_on,
        convention=convention,
        binary=binary,
        loss_check=loss_check,
        findings=[],
        next_steps=[],
        notes=notes,
        verdict="",
        **core,
    )
    findings, steps = _verdict(partial, styles)
    verdict = " ".join(findings)
    if steps:
        verdict += " Next: " + " ".join(steps)
    data = {"logits": z, "labels": y, "statistics": stats, "gaps": gaps, "correct": correct}
    return _replace(partial, findings=findings, next_steps=steps, verdict=verdict, _data=data)


def _examples(n: int) -> str:
    return "1 example" if n == 1 else f"{n} examples"


def _replace(diagnosis: Diagnosis, **changes: Any) -> Diagnosis:
    values = {name: getattr(diagnosis, name) for name in diagnosis.__dataclass_fields__}
    values.update(changes)
    return Diagnosis(**values)


def _position(implied: float, eps: float, tolerance: float) -> str:
    relative = implied / eps - 1.0
    if abs(relative) <= tolerance:
        return "at"
    return "above" if relative < 0 else "below"


def _gaps(z: np.ndarray, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Per example (multiclass) or entry (binary): the logit gap and whether it is correct."""
    if task == "multiclass":
        return np.asarray(metrics.logit_gap(z)), np.argmax(z, axis=1) == y
    return np.abs(z).ravel(), ((z > 0) == (y == 1)).ravel()


def _temperature(fit_logits: np.ndarray, fit_labels: np.ndarray) -> tuple[float, bool, str]:
    """T fitted on (N, K) logits and labels, whether it is usable, and why not.

    The reason at a bound follows from the numbers where T was fitted: at the lower bound the
    NLL keeps falling as T -> 0 exactly when every label has the largest logit (else a finite
    optimum lies below the bound); at the upper bound it says whether the logits predict any
    better than always choosing the most frequent class.
    """
    lowest, highest = TEMPERATURE_BOUNDS
    t = metrics.fit_temperature(fit_logits, fit_labels, bounds=TEMPERATURE_BOUNDS)
    n = fit_labels.shape[0]
    correct = np.argmax(fit_logits, axis=1) == fit_labels
    accuracy = float(np.mean(correct))
    bounds = list(TEMPERATURE_BOUNDS)
    if abs(math.log(t / lowest)) < 1e-3:
        if accuracy == 1.0:
            why = (
                f"T = {t:g} is the lower bound of the search {bounds}: every label has the "
                "largest logit where T was fitted (accuracy 1), so the NLL keeps falling as "
                "T -> 0 and no finite temperature is optimal"
            )
        else:
            why = (
                f"T = {t:g} is the lower bound of the search {bounds}: the NLL is still falling "
                f"there, so the best temperature lies below it (the logits would have to be "
                f"multiplied by more than {1 / lowest:g}; accuracy {accuracy:.4f} where T was "
                "fitted)"
            )
        return t, False, why
    if abs(math.log(t / highest)) < 1e-3:
        majority = float(np.bincount(fit_labels).max() / n)
        head = (
            f"T = {t:g} is the upper bound of the search {bounds}: the NLL is still falling "
            f"there, so the best temperature lies above it (the logits would have to be divided "
            f"by more than {highest:g})"
        )
        if accuracy <= majority:
            why = (
                f"{head}; the logits predict no better than always choosing the most frequent "
                f"class (accuracy {accuracy:.4f} where T was fitted; that class's share "
                f"{majority:.4f})"
            )
        else:
            log_probs = _log_softmax(fit_logits)
            nll = -log_probs[np.arange(n), fit_labels]
            share = float(nll[~correct].sum() / nll.sum()) if nll.sum() > 0 else 0.0
            why = (
                f"{head}, although the logits predict better than always choosing the most "
                f"frequent class (accuracy {accuracy:.4f} where T was fitted; that class's share "
                f"{majority:.4f}): the misclassified {1 - accuracy:.1%} of the examples carry "
                f"{share:.1%} of the NLL, so their logits are far too large"
            )
        return t, False, why
    return t, True, ""


def _multiclass(
    z: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray] | None,
    n_bootstrap: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    n, k = z.shape
    rows = np.arange(n)
    fit_z, fit_y = val if val is not None else (z, y)
    # First: the fit's passes over (N, K) hold several copies of it, so nothing else of that
    # size is alive yet; then each (N, K) array is exponentiated in place (peak memory).
    t, ok, why = _temperature(fit_z, fit_y)
    prediction = np.argmax(z, axis=1)
    correct = (prediction == y).astype(np.float64)
    probs = _log_softmax(z)
    nll = -probs[rows, y]
    np.exp(probs, out=probs)
    scaled = _log_softmax(z / t)
    nll_scaled = -scaled[rows, y]
    np.exp(scaled, out=scaled)
    picked = probs[rows, y]

    stats = _Statistics()
    stats.means = {
        "accuracy": correct,
        "nll": nll,
        # sum_c (p_c - [c = y])^2 without an (N, K) one-hot
        "brier": np.sum(probs**2, axis=1) - 2 * picked + 1,
        "nll_after_temperature": nll_scaled,
    }
    confidence = probs[rows, prediction]
    per_example = ["ece", "ece_after_temperature", "ece_quantile", "aurc"]
    if n_bootstrap * len(per_example) * n <= _BOOTSTRAP_BUDGET:
        stats.binned = {
            "ece": (_BinnedEce(confidence[:, None], correct[:, None]), 0),
            "ece_after_temperature": (
                _BinnedEce(scaled[rows, prediction][:, None], correct[:, None]),
                0,
            ),
        }
        stats.quantile = {"ece_quantile": _QuantileEce(confidence[:, None], correct[:, None])}
        stats.aurc = _Aurc(confidence, correct)
    elif n_bootstrap:
        notes.append(_skip_note(per_example, len(per_example) * n, n_bootstrap))
    if n_bootstrap and n_bootstrap * n * k <= _BOOTSTRAP_BUDGET:
        onehot = np.zeros_like(probs)
        onehot[rows, y] = 1.0
        stats.binned["classwise_ece"] = (_BinnedEce(probs, onehot), None)
    elif n_bootstrap:
        notes.append(_skip_note(["classwise_ece"], n * k, n_bootstrap))
    intervals = stats.intervals(n, n_bootstrap, seed)
    gaps, is_correct = _gaps(z, y, "multiclass")
    return {
        "accuracy": float(np.mean(correct)),
        "baseline_accuracy": float(np.bincount(y, minlength=k).max() / n),
        "nll": float(np.mean(stats.means["nll"])),
        "brier": float(np.mean(stats.means["brier"])),
        "ece": metrics.expected_calibration_error(probs, y, N_BINS),
        "ece_quantile": metrics.expected_calibration_error(probs, y, N_BINS, "quantile"),
        "classwise_ece": metrics.classwise_calibration_error(probs, y, N_BINS),
        "aurc": metrics.aurc(probs, y),
        "auroc": None,
        "auroc_per_label": None,
        "ece_per_label": None,
        "intervals": intervals,
        "temperature": t,
        "temperature_ok": ok,
        "temperature_note": why,
        "nll_after_temperature": float(np.mean(stats.means["nll_after_temperature"])),
        "ece_after_temperature": metrics.expected_calibration_error(scaled, y, N_BINS),
        "_gaps": gaps,
        "_correct": is_correct,
        "_stats": stats,
    }


def _binary(
    z: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray] | None,
    n_bootstrap: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any]:
    n, width = z.shape
    p = np.exp(_log_sigmoid(z))
    bce = -(y * _log_sigmoid(z) + (1 - y) * _log_sigmoid(-z))
    predicted = (z > 0).astype(np.float64)
    hit = (predicted == y).astype(np.float64)
    fit_z, fit_y = val if val is not None else (z, y)
    two_class = np.stack([np.zeros(fit_z.size), fit_z.ravel()], axis=1)  # argmax: z > 0
    t, ok, why = _temperature(two_class, fit_y.ravel().astype(np.int64))
    zt = z / t
    p_t = np.exp(_log_sigmoid(zt))
    bce_t = -(y * _log_sigmoid(zt) + (1 - y) * _log_sigmoid(-zt))

    stats = _Statistics()
    stats.means = {
        "accuracy": hit.mean(axis=1),
        "nll": bce.mean(axis=1),
        "brier": ((p - y) ** 2).mean(axis=1),
        "nll_after_temperature": bce_t.mean(axis=1),
    }
    per_entry = ["ece", "ece_after_temperature", "ece_quantile", "aurc"]
    if n_bootstrap * len(per_entry) * n * width <= _BOOTSTRAP_BUDGET:
        stats.binned = {
            "ece": (_BinnedEce(p, y), None),
            "ece_after_temperature": (_BinnedEce(p_t, y), None),
        }
        stats.quantile = {"ece_quantile": _QuantileEce(p, y)}
        confidence = np.maximum(p, 1 - p).ravel()
        stats.aurc = _Aurc(confidence, hit.ravel(), rows=np.repeat(np.arange(n), width))
        stats.width = width
    elif n_bootstrap:
        notes.append(_skip_note(per_entry, len(per_entry) * n * width, n_bootstrap))
    intervals = stats.intervals(n, n_bootstrap, seed)
    per_label_auroc = metrics.multilabel_auroc(z, y, average="none")
    defined = [a for a in per_label_auroc if not math.isnan(a)]
    if not defined:
        notes.append(
            "AUROC is undefined: every label has only one class present in labels, so there is "
            "no AUROC."
        )
    elif len(defined) < width:
        notes.append(
            f"AUROC is undefined for {width - len(defined)} of {width} labels (only one class "
            "present); the macro AUROC is over the others."
        )
    ece_per_label = metrics.multilabel_calibration_error(p, y, N_BINS, average="none")
    gaps, is_correct = _gaps(z, y, "binary")
    entries = np.stack([1 - p.ravel(), p.ravel()], axis=1)
    positive = y.mean(axis=0)
    return {
        "accuracy": float(hit.mean()),
        "baseline_accuracy": float(np.maximum(positive, 1 - positive).mean()),
        "nll": float(bce.mean()),
        "brier": float(((p - y) ** 2).mean()),
        "ece": float(np.mean(ece_per_label)),
        "ece_quantile": metrics.multilabel_calibration_error(p, y, N_BINS, "quantile"),
        "classwise_ece": None,
        "aurc": metrics.aurc(entries, y.ravel().astype(np.int64)),
        "auroc": float(np.mean(defined)) if defined else None,
        "auroc_per_label": [None if math.isnan(a) else float(a) for a in per_label_auroc],
        "ece_per_label": [float(e) for e in ece_per_label],
        "intervals": intervals,
        "temperature": t,
        "temperature_ok": ok,
        "temperature_note": why,
        "nll_after_temperature": float(bce_t.mean()),
        "ece_after_temperature": metrics.multilabel_calibration_error(p_t, y, N_BINS),
        "_gaps": gaps,
        "_correct": is_correct,
        "_stats": stats,
    }


def _binary_targets(
    z: np.ndarray, y: np.ndarray, eps: float | None, styles: list[str], median_gap: float
) -> dict[str, Any]:
    """Mean outputs of negatives and positives against the smoothed targets, and collapse."""
    p = np.exp(_log_sigmoid(z))
    negative, positive = y == 0, y == 1

    def mean(mask: np.ndarray, column: int | None = None) -> float | None:
        values = p[:, column][mask[:, column]] if column is not None else p[mask]
        return float(values.mean()) if values.size else None

    targets: dict[str, list[float]] = {}
    if eps is None:
        low = implied_eps(median_gap, 2, "others")  # sigmoid(-g), as the uniform eps / 2
        targets["implied"] = [low, 1.0 - low]
    else:
        for style in styles:
            low = eps / 2 if style == "uniform" else eps
            targets[style] = [low, 1.0 - low]
    collapse: dict[str, dict[str, Any]] = {}
    for name, (low, high) in targets.items():
        if low <= 0:
            continue  # eps = 0: the targets are 0 and 1, which no output reaches
        window = low / 2
        near = np.abs(p - np.where(positive, high, low)) <= window
        share = float(near.mean())
        # The implied targets come from the outputs' own median gap: the share near them says
        # how concentrated the outputs are, not that smoothing collapsed them (random logits of
        # unit scale reach 50%), so they get no call.
        called = None if name == "implied" else share >= COLLAPSE_SHARE
        collapse[name] = {"window": window, "share": share, "collapsed": called}
    return {
        "mean_prob_negatives": mean(negative),
        "mean_prob_positives": mean(positive),
        "mean_prob_negatives_per_label": [mean(negative, j) for j in range(p.shape[1])],
        "mean_prob_positives_per_label": [mean(positive, j) for j in range(p.shape[1])],
        "targets": targets,
        "collapse": collapse,
    }


def _loss_check(
    z: np.ndarray,
    y: np.ndarray,
    task: str,
    loss: float,
    eps: float | None,
    style: str | None,
    k: int,
) -> dict[str, Any]:
    """The reference losses of each convention and of eps = 0, and which one ``loss`` matches."""
    logits = torch.from_numpy(z)
    target = torch.from_numpy(y)

    def reference(rate: float, convention: str) -> float:
        if task == "multiclass":
            return float(cross_entropy(logits, target, rate, style=convention, impl="reference"))
        return float(binary_cross_entropy_with_logits(logits, target, rate, style=convention))

    unsmoothed = reference(0.0, "uniform")
    references = {"unsmoothed": unsmoothed}
    loss_implied: dict[str, float | None] = {}
    slopes: dict[str, float] = {}
    for convention in _checks.STYLES:
        top = _checks.eps_upper_bound(k, convention)
        slope = (reference(top, convention) - unsmoothed) / top  # every loss is linear in eps
        slopes[convention] = slope
        implied = (loss - unsmoothed) / slope if slope != 0 else None
        # within rounding of 0 (a loss equal to the unsmoothed one): 0, not +-1e-16
        loss_implied[convention] = 0.0 if implied is not None and abs(implied) < 1e-9 else implied
        if eps is not None and eps <= top * (1 + 1e-12):
            references[convention] = reference(min(eps, top), convention)
    relative = {
        name: abs(loss - value) / max(abs(value), 1e-12) for name, value in references.items()
    }
    matches = [name for name, value in relative.items() if value <= LOSS_RTOL]
    if eps is None:
        ok = None
    elif style is not None:
        ok = style in matches
    else:
        ok = any(name in matches for name in _checks.STYLES)
    return {
        "given": loss,
        "references": references,
        "relative_difference": relative,
        "matches": matches,
        "expected": style,
        "ok": ok,
        "rtol": LOSS_RTOL,
        "loss_implied_eps": loss_implied,
        "slope": slopes,
    }


# --------------------------------------------------------------------------------------------
# The verdict: every sentence from the numbers above
# --------------------------------------------------------------------------------------------


def _interval(values: list[float] | None) -> str:
    return "" if values is None else f" [{values[0]:.4f}, {values[1]:.4f}]"


def _ece_change(d: Diagnosis) -> str:
    before, after = d.ece, d.ece_after_temperature
    ci = d.intervals.get("ece_drop")
    if ci is None:
        return f"the ECE goes from {before:.4f} to {after:.4f} (no bootstrap interval)"
    if ci[0] > 0:
        return (
            f"the ECE drops from {before:.4f} to {after:.4f} (95% interval of the drop "
            f"[{ci[0]:.4f}, {ci[1]:.4f}])"
        )
    if ci[1] < 0:
        return (
            f"the ECE rises from {before:.4f} to {after:.4f} (95% interval of the rise "
            f"[{-ci[1]:.4f}, {-ci[0]:.4f}])"
        )
    return (
        f"the ECE goes from {before:.4f} to {after:.4f}, a change within the bootstrap noise "
        f"(95% interval of the drop [{ci[0]:.4f}, {ci[1]:.4f}])"
    )


def _calibration_sentences(d: Diagnosis, findings: list[str], steps: list[str]) -> None:
    t = d.temperature
    # Binary/multi-label accuracy is low-information under imbalance: there the ranking
    # (AUROC, where defined) must be no better than chance too.
    ranking = d.task == "multiclass" or d.auroc is None or d.auroc <= 0.5
    if d.accuracy <= d.baseline_accuracy and ranking:
        what = (
            "class"
            if d.task == "multiclass"
            else ("value of the label" if d.task == "binary" else "value of each label")
        )
        findings.append(
            f"The accuracy {d.accuracy:.4f} is no better than always predicting the most "
            f"frequent {what} ({d.baseline_accuracy:.4f})"
            + (
                f", and the AUROC {d.auroc:.4f} no better than chance."
                if d.auroc is not None
                else "."
            )
        )
        steps.append(
            "Check that logits and labels belong together (the same examples in the same order) "
            "and come from the trained model."
        )
    drop = d.nll - d.nll_after_temperature
    relative = drop / d.nll if d.nll > 0 else 0.0
    nll_ci = d.intervals.get("nll_drop")
    clear = relative >= MIN_RELATIVE_NLL_DROP and (nll_ci is None or nll_ci[0] > 0)
    on_validation = d.temperature_fit_on == "validation examples"
    where = (
        " (fitted on the validation examples)"
        if on_validation
        else " (fitted and evaluated on the same examples)"
    )
    nll_text = (
        f"the NLL from {d.nll:.4f} to {d.nll_after_temperature:.4f} ({-100 * relative:+.1f}%"
        + (f"; 95% interval of the drop{_interval(nll_ci)})" if nll_ci else ")")
    )
    smoothing = d.eps is not None and d.eps > 0
    if not d.temperature_ok:
        findings.append(f"Temperature scaling finds no usable temperature: {d.temperature_note}.")
        steps.append(
            (
                "Fit the temperature on more held-out examples"
                if on_validation
                else "Fit the temperature on held-out examples (val_logits/val_labels), more of "
                "them if T stays at a bound"
            )
            + "; a T at a bound is no usable temperature (the finding above says why)."
        )
    elif d.num_examples < MIN_EXAMPLES:
        findings.append(
            f"Too few examples to judge calibration: {d.num_examples}, fewer than the "
            f"{MIN_EXAMPLES} required here; temperature scaling{where} fits T = {t:.3g} and "
            f"moves {nll_text}."
        )
        steps.append(
            f"Diagnose on more examples (at least {MIN_EXAMPLES}; hundreds for narrow intervals)."
        )
    elif drop < 0 and on_validation:
        findings.append(
            f"The temperature fitted on the validation examples (T = {t:.3g}) raises the NLL of "
            f"these examples from {d.nll:.4f} to {d.nll_after_temperature:.4f} "
            f"(+{-100 * relative:.1f}%); {_ece_change(d)}: the validation examples do not "
            "behave like these, so their temperature does not carry over."
        )
        steps.append(
            "Check that val_logits/val_labels come from the same model and the same kind of "
            "examples as logits/labels."
        )
    elif t > 1 and clear:
        findings.append(
            f"Over-confident: temperature scaling{where} fits T = {t:.3g} > 1 and lowers "
            f"{nll_text}; {_ece_change(d)}."
        )
        steps.append(
            f"Divide the logits by T = {t:.3g} before using the probabilities (fitted on "
            "held-out examples)"
            + (
                ", or try a larger eps;"
                if smoothing
                else ", or train with label smoothing (e.g. eps = 0.1);"
            )
            + " `labelsmooth study` compares eps values with and without temperature scaling."
        )
    elif t < 1 and clear:
        cause = (
            f"with eps = {d.eps:g} this points to smoothing that is too strong for calibration"
            if smoothing
            else "too-strong label smoothing has this effect"
        )
        findings.append(
            f"Under-confident: temperature scaling{where} fits T = {t:.3g} < 1 (sharpening) and "
            f"lowers {nll_text}; {_ece_change(d)}; {cause}."
        )
        steps.append(
            f"Try a smaller eps, or divide the logits by T = {t:.3g} (fitted on held-out "
            "examples); `labelsmooth study --experiments sweep` compares eps values."
        )
    else:
        if relative < MIN_RELATIVE_NLL_DROP:
            reason = (
                f"lowers the NLL by only {100 * max(relative, 0.0):.2f}% ({d.nll:.4f} -> "
                f"{d.nll_after_temperature:.4f}), less than the "
                f"{100 * MIN_RELATIVE_NLL_DROP:g}% required here"
            )
        else:
            reason = (
                f"lowers the NLL by {drop:.4f}, but the 95% interval of the drop"
                f"{_interval(nll_ci)} includes 0"
            )
        findings.append(
            f"No mis-calibration shown that temperature scaling would fix: T = {t:.3g}{where} "
            f"{reason}; {_ece_change(d)}."
        )


def _gap_count(d: Diagnosis) -> str:
    """'37 correctly classified' or 'all 5'."""
    if d.gap_examples == "all":
        return f"all {d.gap_count}"
    return f"{d.gap_count} {d.gap_examples}"


def _gap_group(d: Diagnosis) -> str:
    """'the 37 correctly classified examples' or 'all 5 entries (gap = |logit|)'."""
    unit = "examples" if d.task == "multiclass" else "entries (gap = |logit|)"
    if d.gap_examples == "all":
        return f"all {d.gap_count} {unit}"
    return f"the {d.gap_count} {d.gap_examples} {unit}"


def _gap_sentences(d: Diagnosis, findings: list[str], steps: list[str]) -> None:
    k = d.num_classes
    uniform, others = d.implied_eps["uniform"], d.implied_eps["others"]
    text = (
        f"The median logit gap of {_gap_group(d)} is {d.median_logit_gap:.3g}, the optimum gap "
        f"of eps ≈ {uniform:.3g} with style 'uniform' or eps ≈ {others:.3g} with 'others' "
        f"(K = {k})."
    )
    if uniform == 0.0:
        text = (
            f"The median logit gap of {_gap_group(d)} is {d.median_logit_gap:.3g}, larger than "
            "the optimum gap of any eps > 0 in floating point (the implied eps underflows to 0 "
            f"in both styles; K = {k}): consistent with training without smoothing."
        )
    elif uniform < 1e-3:
        text += (
            " An implied eps this small is consistent with training without smoothing "
            "(eps = 0 has no finite optimum gap)."
        )
    findings.append(text)
    if d.train_implied_eps is not None and d.train_median_logit_gap is not None:
        findings.append(
            f"On the training examples the median gap is {d.train_median_logit_gap:.3g} "
            f"(uniform eps ≈ {d.train_implied_eps['uniform']:.3g}, others eps ≈ "
            f"{d.train_implied_eps['others']:.3g})."
        )
    eps = d.eps
    if eps is None:
        return
    if eps == 0:
        findings.append(
            "With eps = 0 (no smoothing) there is no finite optimum gap to compare with."
        )
        return
    assert d.gap_position is not None and d.optimum_gap is not None
    judged = d.train_implied_eps if d.position_on == "train_logits" else d.implied_eps
    assert judged is not None
    on = " on the training examples" if d.position_on == "train_logits" else ""
    shown = [d.style] if d.style is not None else list(d.gap_position)
    for style in shown:
        implied, position = judged[style], d.gap_position[style]
        relative = implied / eps - 1
        head = f"With eps = {eps:g} ({style}) the optimum gap is {d.optimum_gap[style]:.3g}"
        if position == "at":
            findings.append(
                f"{head}; the model sits at it{on}: the implied eps {implied:.3g} is within "
                f"{d.tolerance:.0%} of {eps:g}."
            )
        elif position == "above":
            findings.append(
                f"{head}; the gaps{on} are above it: the implied eps {implied:.3g} is "
                f"{-relative:.1%} below {eps:g}, so the logits are more confident than "
                f"smoothing with eps = {eps:g} allows, consistent with smoothing weaker than "
                "stated or not applied."
            )
            if d.loss_check is None and (d.style is not None or d.convention is None):
                steps.append(
                    "Check that the training loss applies eps: pass the loss value your code "
                    "computed on these logits (loss=...)."
                )
        else:
            extra = (
                ""
                if on
                else ", or held-out examples that are harder than the training ones (pass "
                "train_logits/train_labels to judge on the training examples)"
            )
            findings.append(
                f"{head}; the gaps{on} are below it: the implied eps {implied:.3g} is "
                f"{relative:.1%} above {eps:g}, consistent with stronger smoothing than stated, "
                f"a model that has not fitted its training examples{extra}."
            )
            if d.style is not None or d.convention is None:
                steps.append(
                    "Check the eps and style your training code used and whether training "
                    "converged: the training examples' gaps are below the optimum."
                    if on
                    else "Pass train_logits/train_labels: whether the training examples sit at "
                    "the optimum tells a model that has not fitted them from held-out examples "
                    "that are harder."
                )
    factor = (k - 1) / k
    if d.style is not None:
        other = "others" if d.style == "uniform" else "uniform"
        if d.gap_position[d.style] != "at" and d.convention == other:
            findings.append(
                f"The model sits instead at the optimum of style={other!r} for the same eps "
                f"(implied eps {judged[other]:.3g}): the two conventions may be mixed up "
                "(eps/K versus eps/(K-1) off the true class)."
            )
            steps.append(
                f"Check the style your training code used: its gaps match style={other!r}."
            )
        elif d.gap_position[d.style] == "at" and d.convention == "either":
            findings.append(
                f"The optimum of style={other!r} matches too: the two conventions' implied eps "
                f"differ only by the factor (K-1)/K = {factor:.3g}, within the tolerance, so "
                f"the gap cannot tell them apart at K = {k}."
            )
    elif d.convention in _checks.STYLES:
        findings.append(
            f"Only the optimum of style={d.convention!r} matches: if eps = {eps:g} is right, "
            "that is the convention the model was trained with."
        )
    elif d.convention == "either":
        findings.append(
            f"Both conventions' optima match: their implied eps differ only by the factor "
            f"(K-1)/K = {factor:.3g}, within the tolerance, so the gap cannot tell them apart "
            f"at K = {k}."
        )


def _binary_sentences(d: Diagnosis, findings: list[str], steps: list[str]) -> None:
    b = d.binary
    if b is None:
        return
    parts = []
    if b["mean_prob_negatives"] is not None:
        parts.append(f"{b['mean_prob_negatives']:.4f} on the negatives")
    if b["mean_prob_positives"] is not None:
        parts.append(f"{b['mean_prob_positives']:.4f} on the positives")
    text = "Mean predicted probability: " + " and ".join(parts)
    named = []
    for name, (low, high) in b["targets"].items():
        if name == "implied":
            named.append(f"the targets implied by the median gap are {low:.4g} and {high:.4g}")
        else:
            named.append(f"the {name} targets of eps = {d.eps:g} are {low:.4g} and {high:.4g}")
    findings.append(text + "; " + "; ".join(named) + ".")
    collapsed = False
    for name, c in b["collapse"].items():
        which = "implied" if name == "implied" else f"{name}"
        if c["collapsed"] is None:
            findings.append(
                f"{c['share']:.0%} of the outputs lie within {c['window']:.3g} of their implied "
                "target; without eps this says how concentrated the outputs are, not whether "
                "smoothing collapsed them (pass eps to compare with the targets of the eps used)."
            )
        elif c["collapsed"]:
            collapsed = True
            findings.append(
                f"{c['share']:.0%} of the outputs lie within {c['window']:.3g} of their {which} "
                "target: the outputs have collapsed onto the smoothed targets."
            )
        else:
            findings.append(
                f"{c['share']:.0%} of the outputs lie within {c['window']:.3g} of their {which} "
                f"target (collapse needs {COLLAPSE_SHARE:.0%}): no collapse."
            )
    if d.auroc is not None:
        findings.append(
            f"AUROC {d.auroc:.4f}"
            + (
                " (macro over labels; per label in auroc_per_label)."
                if d.task == "multilabel"
                else "."
            )
        )
    if collapsed:
        steps.append(
            "If you rank or threshold by these scores, compare the AUROC with a smaller eps: "
            "outputs collapsed onto the targets separate confident examples less "
            "(`labelsmooth study --experiments multilabel`)."
        )


def _loss_sentences(d: Diagnosis, findings: list[str], steps: list[str]) -> None:
    c = d.loss_check
    if c is None:
        return
    given, refs, matches = c["given"], c["references"], c["matches"]
    implied = c["loss_implied_eps"]

    def implied_text() -> str:
        shown = [
            f"{s} eps ≈ {implied[s]:.3g}"
            for s in _checks.STYLES
            if implied[s] is not None
            and 0 <= implied[s] <= _checks.eps_upper_bound(d.num_classes, s)
        ]
        if not shown:
            return "no smoothing rate in the valid range of either convention"
        return "smoothing with " + " or ".join(shown)

    head = f"The loss you passed ({given:.6g})"
    fix = (
        "Compute the loss with labelsmooth."
        + ("cross_entropy" if d.task == "multiclass" else "binary_cross_entropy_with_logits")
        + f"(logits, labels, {'eps' if d.eps is None else format(d.eps, 'g')}, "
        + f"style={d.style or 'uniform'!r})"
        + " and check the reduction (a mean over examples), weights and ignore_index."
    )
    if d.eps is None:
        if "unsmoothed" in matches:
            unseen = [
                f"{c['rtol'] * abs(refs['unsmoothed']) / abs(c['slope'][s]):.2g} ({s})"
                for s in _checks.STYLES
                if c["slope"][s] != 0
            ]
            findings.append(
                f"{head} equals the unsmoothed loss ({refs['unsmoothed']:.6g}) within the "
                f"relative tolerance {c['rtol']:g}: no smoothing was applied, or an eps too "
                "small to change the loss that much"
                + (f" (below {' or '.join(unseen)})." if unseen else ".")
            )
        else:
            findings.append(
                f"{head} is what {implied_text()} gives on these logits (pass eps to check it "
                "against the eps you meant)."
            )
        return
    if d.style is not None:
        style = d.style
        other = "others" if style == "uniform" else "uniform"
        ref = refs[style]
        difference = c["relative_difference"][style]
        if c["ok"]:
            text = (
                f"{head} matches the reference {style} loss for eps = {d.eps:g} ({ref:.6g}; "
                f"relative difference {difference:.1e})."
            )
            if other in matches:
                text += (
                    f" The {other}-style loss ({refs[other]:.6g}) is within the tolerance too, "
                    "so the loss cannot tell the conventions apart here."
                )
            findings.append(text)
            return
        text = (
            f"{head} does not match the reference {style} loss for eps = {d.eps:g} ({ref:.6g}, "
            f"relative difference {difference:.1e})"
        )
        if other in matches:
            findings.append(
                f"{text}; it matches the {other}-style loss ({refs[other]:.6g}): the loss was "
                "computed with the other convention."
            )
        elif "unsmoothed" in matches and d.eps > 0:
            findings.append(
                f"{text}; it matches the unsmoothed loss ({refs['unsmoothed']:.6g}): the "
                "smoothing was not applied."
            )
        else:
            others_text = ", ".join(
                f"{name} {value:.6g}" for name, value in refs.items() if name != style
            )
            findings.append(
                f"{text}, nor the other references ({others_text}); on these logits it is what "
                f"{implied_text()} would give."
            )
        steps.append(fix)
        return
    matched = [s for s in _checks.STYLES if s in matches]
    if not matched and "unsmoothed" in matches and d.eps > 0:
        shown = ", ".join(
            f"{name} {value:.6g}" for name, value in refs.items() if name in _checks.STYLES
        )
        findings.append(
            f"{head} matches the unsmoothed loss ({refs['unsmoothed']:.6g}), not the reference "
            f"loss of eps = {d.eps:g} in either style ({shown}): the smoothing was not applied."
        )
        steps.append(fix)
    elif matched:
        findings.append(
            f"{head} matches the reference loss of eps = {d.eps:g} with style "
            + " and ".join(repr(s) for s in matched)
            + " ("
            + ", ".join(f"{refs[s]:.6g}" for s in matched)
            + ")."
        )
    else:
        shown = ", ".join(f"{name} {value:.6g}" for name, value in refs.items())
        findings.append(
            f"{head} matches no reference loss of eps = {d.eps:g} ({shown}); on these logits it "
            f"is what {implied_text()} would give."
        )
        steps.append(fix)


def _verdict(d: Diagnosis, styles: list[str]) -> tuple[list[str], list[str]]:
    findings: list[str] = []
    steps: list[str] = []
    _calibration_sentences(d, findings, steps)
    _gap_sentences(d, findings, steps)
    _binary_sentences(d, findings, steps)
    _loss_sentences(d, findings, steps)
    steps = list(dict.fromkeys(steps))  # one sentence can be triggered by both styles
    if not steps:
        steps.append("Nothing in these numbers calls for a change.")
    return findings, steps


# --------------------------------------------------------------------------------------------
# Output: terminal summary and HTML page
# --------------------------------------------------------------------------------------------

_ROWS = (
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("ece", "ECE (15 equal-width bins)"),
    ("ece_quantile", "ECE (15 equal-mass bins)"),
    ("classwise_ece", "classwise ECE"),
    ("aurc", "AURC"),
    ("auroc", "AUROC (macro)"),
    ("nll_after_temperature", "NLL after temperature"),
    ("ece_after_temperature", "ECE after temperature"),
)


def _table_rows(d: Diagnosis) -> list[tuple[str, str, str]]:
    rows = []
    for name, label in _ROWS:
        value = getattr(d, name)
        if value is None:
            continue
        interval = d.intervals.get(name)
        shown = f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
        rows.append((label, f"{value:.4f}", shown))
    return rows


def _headline(d: Diagnosis) -> str:
    if d.task == "multiclass":
        return f"{_examples(d.num_examples)}, {d.num_classes} classes (multiclass)"
    if d.task == "binary":
        return f"{_examples(d.num_examples)} (binary)"
    return f"{_examples(d.num_examples)}, {d.num_labels} labels (multilabel)"


def _summary(d: Diagnosis) -> str:
    wrap = textwrap.TextWrapper(width=100, subsequent_indent="  ")
    lines = [f"labelsmooth diagnose: {_headline(d)}"]
    rows = _table_rows(d)
    interval = f"95% interval ({d.n_bootstrap} bootstrap resamples)" if d.n_bootstrap else ""
    width = max(len(label) for label, _, _ in rows)
    lines.append(f"  {'':<{width}}  {'value':>8}  {interval}".rstrip())
    lines += [f"  {label:<{width}}  {value:>8}  {shown}".rstrip() for label, value, shown in rows]
    flag = "" if d.temperature_ok else "  (at a bound: not usable)"
    lines.append(f"  temperature T = {d.temperature:.4g}, fitted on {d.temperature_fit_on}{flag}")
    lines.append(
        f"  logit gap: median {d.median_logit_gap:.4g} over {_gap_count(d)} "
        f"(10%-90%: {d.logit_gap_quantiles['10%']:.3g}-{d.logit_gap_quantiles['90%']:.3g}); "
        f"implied eps: uniform {d.implied_eps['uniform']:.4g}, others "
        f"{d.implied_eps['others']:.4g}"
    )
    lines.append("verdict:")
    lines += [wrap.fill("- " + sentence) for sentence in d.findings]
    lines.append("next:")
    lines += [wrap.fill("- " + step) for step in d.next_steps]
    if d.notes:
        lines.append("notes:")
        lines += [wrap.fill("- " + note) for note in d.notes]
    return "\n".join(lines)


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(d: Diagnosis) -> list[dict[str, str]]:
    """Base64 PNG figures; raises ImportError without matplotlib."""
    import matplotlib  # noqa: F401  (raises ImportError first when it is missing)

    from . import plots

    assert d._data is not None
    z, y = d._data["logits"], d._data["labels"]
    correct = d._data["correct"]
    items = []
    if d.task == "multiclass":
        probs = np.exp(_log_softmax(z))
        scaled = np.exp(_log_softmax(z / d.temperature))
        items.append(("Reliability diagram", plots.reliability_diagram(probs, y, N_BINS)))
        if d.temperature_ok:
            items.append(
                (
                    f"Reliability diagram after temperature scaling (T = {d.temperature:.3g})",
                    plots.reliability_diagram(scaled, y, N_BINS, title=f"T = {d.temperature:.3g}"),
                )
            )
        items.append(("Confidence histogram", plots.confidence_histogram(probs, y)))
        gap_logits = z[correct] if correct.any() else z
    else:
        p = np.exp(_log_sigmoid(z))
        entries = np.stack([1 - p.ravel(), p.ravel()], axis=1)
        labels = y.ravel().astype(np.int64)
        items.append(
            (
                "Reliability diagram (every entry, top label)",
                plots.reliability_diagram(entries, labels, N_BINS),
            )
        )
        items.append(("Predicted probability by label", _output_histogram(p, y, d)))
        flat = z.ravel()
        chosen = flat[correct] if correct.any() else flat
        gap_logits = np.stack([np.zeros_like(chosen), chosen], axis=1)
    style = d.style or (d.convention if d.convention in _checks.STYLES else "uniform")
    eps = d.eps if d.eps is not None else d.implied_eps[style]
    caption = (
        f"Logit gap of {'all' if d.gap_examples == 'all' else 'the ' + d.gap_examples} "
        f"{'examples' if d.task == 'multiclass' else 'entries'}"
        + (
            f", with the optimum of eps = {eps:g} ({style})"
            if d.eps is not None
            else f", with the optimum of the implied eps ({style})"
        )
    )
    items.append(
        (caption, plots.logit_gap_histogram({eps: gap_logits}, style=style, title="Logit gap"))
    )
    return [{"caption": caption, "data": _png(figure)} for caption, figure in items]


def _output_histogram(p: np.ndarray, y: np.ndarray, d: Diagnosis) -> Any:
    """Histograms of the sigmoid outputs of negatives and positives, the targets marked."""
    from matplotlib.figure import Figure

    from . import plots

    figure = Figure(figsize=(5.5, 4.8), layout="constrained")
    ax = figure.add_subplot()
    edges = np.linspace(0, 1, 51)
    for mask, label in ((y == 0, "negatives"), (y == 1, "positives")):
        if mask.any():
            values = p[mask]
            ax.hist(
                values,
                bins=edges,
                weights=np.full(values.shape, 1.0 / values.size),
                histtype="step",
                linewidth=1.5,
                label=label,
            )
    assert d.binary is not None
    lines = zip(d.binary["targets"].items(), ("--", ":"), strict=False)
    for (name, (low, high)), linestyle in lines:
        for value in (low, high):
            ax.axvline(value, color="black", linestyle=linestyle, linewidth=1)
        ax.plot(
            [],
            [],
            color="black",
            linestyle=linestyle,
            label=f"{name} targets {low:.3g}, {high:.3g}",
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted probability (sigmoid of the logit)")
    ax.set_ylabel("fraction of the entries with that label")
    plots._legend_below(ax, ncols=2)
    return figure


def _render_html(d: Diagnosis) -> str:
    import jinja2

    try:
        figures, missing = _figures(d), ""
    except ImportError:
        figures, missing = [], 'The figures need matplotlib: pip install "labelsmooth[study]".'
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("labelsmooth", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    template = environment.get_template("diagnosis.html.j2")
    return template.render(
        d=d,
        headline=_headline(d),
        gap_count=_gap_count(d),
        rows=_table_rows(d),
        figures=figures,
        missing=missing,
        payload=d.to_json(),
    )


# --------------------------------------------------------------------------------------------
# Reading a file of outputs
# --------------------------------------------------------------------------------------------


def load_outputs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a model's outputs for :func:`diagnose` from a ``.npz``, ``.pt`` or ``.csv`` file.

    * ``.npz`` (``np.savez``): arrays ``logits`` and ``labels``; optional ``val_logits`` /
      ``val_labels`` (held-out examples for the temperature), ``train_logits`` /
      ``train_labels``, and ``loss`` (a number). Read with ``allow_pickle=False``: an array of
      Python objects is refused, never unpickled.
    * ``.pt`` / ``.pth`` (``torch.save``): a dict with the same keys holding tensors (``loss``
      a number or a one-element tensor), read with ``torch.load(weights_only=True)``.
    * ``.csv``: a header row, then one example per row: multiclass
      ``label,logit_0,...,logit_{K-1}``; binary ``label,logit``; multi-label
      ``label_0,...,label_{L-1},logit_0,...,logit_{L-1}`` (columns in any order; no other
      columns).

    Other keys are ignored. Returns a dict of the keys found (numpy arrays; ``loss`` a float).

    Raises:
        ValueError: unknown suffix, unreadable content, a missing key, a pickled array.
        OSError: the file cannot be read.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".npz":
        found = _load_npz(file)
    elif suffix in (".pt", ".pth"):
        found = _load_pt(file)
    elif suffix == ".csv":
        found = _load_csv(file)
    else:
        raise ValueError(f"FILE must end in .npz, .pt (.pth) or .csv, got {str(file)!r}")
    missing = [key for key in ("logits", "labels") if key not in found]
    if missing:
        raise ValueError(
            f"{file}: missing key {missing[0]!r}; found {sorted(found) or 'no keys'}; "
            f"expected logits and labels (optional: {', '.join(FILE_KEYS[2:])})"
        )
    return {key: found[key] for key in FILE_KEYS if key in found}


def _load_npz(file: Path) -> dict[str, Any]:
    try:
        archive = np.load(file, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(
            f"{file}: not a readable .npz archive of numeric arrays ({err}); write it with "
            "np.savez(path, logits=..., labels=...)"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{file}: holds a single array, not an .npz archive with named arrays")
    found: dict[str, Any] = {}
    with archive:
        for key in archive.files:
            if key not in FILE_KEYS:
                continue
            try:
                value = archive[key]
            except ValueError as err:
                if "allow_pickle" in str(err):
                    raise ValueError(
                        f"{file}: array {key!r} holds Python objects (dtype=object); refusing "
                        "to unpickle it: save numeric arrays"
                    ) from err
                raise ValueError(f"{file}: array {key!r} cannot be read: {err}") from err
            except (zipfile.BadZipFile, EOFError) as err:
                raise ValueError(f"{file}: array {key!r} cannot be read: {err}") from err
            if not isinstance(value, np.ndarray):
                raise ValueError(
                    f"{file}: member {key!r} is not a .npy array; write the file with "
                    "np.savez(path, logits=..., labels=...)"
                )
            found[key] = value
    return found


def _load_pt(file: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # torch's deprecation notes are not the user's business
            warnings.simplefilter("ignore")
            content = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError) as err:
        # torch's message advises weights_only=False (arbitrary code): keep only its reason
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
        if reason is not None:
            detail = " ".join(reason[1].split())
        else:
            detail = text.splitlines()[0] if text else type(err).__name__
        raise ValueError(
            f"{file}: cannot be read with torch.load(weights_only=True) ({detail}); it is never "
            "unpickled otherwise: save a dict of tensors: "
            "torch.save({'logits': ..., 'labels': ...}, path)"
        ) from err
    if not isinstance(content, Mapping):
        raise ValueError(
            f"{file}: must hold a dict with keys logits and labels, got {type(content).__name__}"
        )
    found: dict[str, Any] = {}
    for key, value in content.items():
        if key not in FILE_KEYS:
            continue
        if isinstance(value, Tensor):
            try:
                value = _dense(key, value).detach().cpu()
                if value.dtype == torch.bfloat16:
                    value = value.float()
                found[key] = value.numpy()
            except (ValueError, TypeError, RuntimeError) as err:
                raise ValueError(f"{file}: tensor {key!r} cannot be used: {err}") from err
        elif key == "loss" and isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = float(value)
        else:
            raise ValueError(
                f"{file}: {key!r} must be a tensor"
                + (" or a number" if key == "loss" else "")
                + f", got {type(value).__name__}"
            )
    return found


def _load_csv(file: Path) -> dict[str, Any]:
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the header
    try:
        with open(file, newline="", encoding="utf-8-sig") as stream:
            header = next(csv.reader(stream), None)
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err}); expected {CSV_LAYOUT}") from err
    if not header:
        raise ValueError(f"{file}: empty; expected {CSV_LAYOUT}")
    names = [name.strip() for name in header]
    label_columns = _csv_columns(file, names, "label")
    logit_columns = _csv_columns(file, names, "logit")
    extra = [name for name in names if not name.startswith(("label", "logit"))]
    if extra or not label_columns or not logit_columns:
        problem = f"unexpected column {extra[0]!r}" if extra else "missing label or logit columns"
        raise ValueError(f"{file}: {problem}; expected {CSV_LAYOUT}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": said below
        try:
            table = np.loadtxt(
                file, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64, encoding="utf-8-sig"
            )
        except ValueError as err:  # UnicodeDecodeError included
            raise ValueError(f"{file}: {err}; expected numbers only, {CSV_LAYOUT}") from err
    if table.shape[0] == 0:
        raise ValueError(f"{file}: no rows after the header; expected {CSV_LAYOUT}")
    if table.shape[1] != len(names):
        raise ValueError(
            f"{file}: the header has {len(names)} columns, the rows {table.shape[1]}; "
            f"expected {CSV_LAYOUT}"
        )
    labels = table[:, label_columns]
    logits = table[:, logit_columns]
    if names[label_columns[0]] == "label":
        labels = labels[:, 0]
        if np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
    if names[logit_columns[0]] == "logit":
        logits = logits[:, 0]
    return {"logits": logits, "labels": labels}


def _csv_columns(file: Path, names: list[str], prefix: str) -> list[int]:
    """Indices of ``prefix`` (one column) or ``prefix_0, prefix_1, ...`` in index order."""
    if prefix in names:
        if any(name.startswith(prefix + "_") for name in names) or names.count(prefix) > 1:
            raise ValueError(
                f"{file}: use either {prefix!r} or {prefix}_0, {prefix}_1, ..., not both"
            )
        return [names.index(prefix)]
    numbered: dict[int, int] = {}
    for index, name in enumerate(names):
        if name.startswith(prefix + "_"):
            suffix = name[len(prefix) + 1 :]
            if not suffix.isdigit() or int(suffix) in numbered:
                raise ValueError(f"{file}: bad or repeated column {name!r}; expected {CSV_LAYOUT}")
            numbered[int(suffix)] = index
        elif name.startswith(prefix):
            raise ValueError(f"{file}: unexpected column {name!r}; expected {CSV_LAYOUT}")
    if numbered and sorted(numbered) != list(range(len(numbered))):
        raise ValueError(
            f"{file}: columns {prefix}_0 ... {prefix}_{len(numbered) - 1} must all be present, "
            f"got indices {sorted(numbered)}"
        )
    return [numbered[i] for i in sorted(numbered)]

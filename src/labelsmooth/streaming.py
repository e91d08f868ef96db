r"""Streaming calibration metrics: accumulate over batches and processes, compute once.

The classes follow torchmetrics' protocol without depending on it: ``update(preds, labels)``
once per batch, ``compute()`` at the end of the epoch, ``reset()`` before the next. Each is
the streaming form of a function of :mod:`labelsmooth.metrics` (``import labelsmooth.streaming``):
``compute()`` equals that function on the concatenation of every batch seen, by every
process.

=================================  ===============================================  ==============
class                              equals, on the concatenated data                  state
=================================  ===============================================  ==============
:class:`CalibrationError`          ``expected_calibration_error`` (``norm="l1"``),   sums per bin
                                   ``maximum_calibration_error`` (``"max"``), the    (uniform);
                                   root-mean-square error (``"l2"``)                 rows
                                                                                     (quantile)
:class:`ClasswiseCalibrationError` ``classwise_calibration_error``                  sums per class
                                                                                     and bin; rows
:class:`BrierScore`                ``brier_score``                                   two sums
:class:`NegativeLogLikelihood`     ``negative_log_likelihood``                       two sums
:class:`AURC`                      ``aurc`` (``excess_aurc`` with ``excess=True``)   rows
:class:`TemperatureFit`            ``fit_temperature``                               logits
=================================  ===============================================  ==============

**Inputs.** ``preds`` is (N, C), or (..., C) with ``labels`` of shape (...) (a sequence
model's (B, T, V) logits and (B, T) labels), flattened to rows. It holds probabilities, or
logits when the class is built with ``from_logits=True`` (turned into float64 probabilities
by ``torch.softmax``; :class:`NegativeLogLikelihood` uses ``log_softmax`` instead, which stays
finite where a probability underflows to 0). :class:`TemperatureFit` always takes logits.
``ignore_index`` drops rows exactly as the functions do; a batch with every row ignored is
accepted (it adds nothing), and ``compute()`` with no row at all raises ``ValueError``.
Each ``update`` checks its batch as the functions do and copies what the state needs to the
CPU in float64 (the functions' precision).

**Processes.** When ``torch.distributed`` is initialised and the group (``process_group``,
default the world) has more than one process, ``compute()`` is a collective: call it on every
rank of the group, each with its own data. The local state is left as it was (``update`` may
go on after it). What travels:

* sums (uniform binning, the Brier score, the NLL): one ``all_reduce`` per statistic, a few
  numbers per bin (``n_bins`` or ``C * n_bins`` for the class-wise error), whatever N is;
* the rows, for what needs all of the data (quantile bins, AURC): an ``all_gather`` of
  (confidence, correct), 16 bytes per sample, held by every rank at ``compute()``; the
  class-wise error with quantile bins gathers the (N, C) probabilities, ``8 (C + 1)`` bytes
  per sample;
* :class:`TemperatureFit` gathers nothing: each rank keeps its own logits (``8 C`` bytes per
  row, float64) and every step of the bisection all-reduces the sum of the slopes over the
  ranks (about 45 steps of two numbers each).

The collectives run on the CPU with gloo and on the current CUDA device with NCCL. Every rank
checks that the ranks agree on the number of classes (a rank that saw no batch agrees with
any) and raises the same ``ValueError`` if they do not, so no rank is left waiting.

**Equality.** In one process the result is the function's on the concatenated batches (the
same float64 code on the same numbers; sums over batches are added in another order, so the
binned sums, the Brier score and the NLL agree to the last few bits, not always bit for bit).
Across processes, the order is rank 0's batches, then rank 1's, and so on; the temperature
agrees to the bisection's precision, 1e-12 relative.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from . import _checks
from . import metrics as _m

__all__ = [
    "AURC",
    "BrierScore",
    "CalibrationError",
    "ClasswiseCalibrationError",
    "NegativeLogLikelihood",
    "TemperatureFit",
]


# --------------------------------------------------------------------------------------------
# Collectives
# --------------------------------------------------------------------------------------------


def _world_size(group: object) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _device(group: object) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_sum(array: np.ndarray, group: object) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_device(group))
    dist.all_reduce(tensor, group=group)
    return tensor.cpu().numpy()


def _all_gather_ints(values: list[int], group: object) -> np.ndarray:
    """(world, len(values)) int64: every rank's ``values``."""
    tensor = torch.tensor(values, dtype=torch.int64, device=_device(group))
    out = [torch.empty_like(tensor) for _ in range(_world_size(group))]
    dist.all_gather(out, tensor, group=group)
    return torch.stack(out).cpu().numpy()


def _all_gather_rows(array: np.ndarray, group: object) -> np.ndarray:
    """Every rank's rows, concatenated in rank order (the trailing shape must agree)."""
    sizes = _all_gather_ints([array.shape[0]], group)[:, 0]
    padded = np.zeros((int(sizes.max()), *array.shape[1:]), dtype=array.dtype)
    padded[: array.shape[0]] = array
    tensor = torch.from_numpy(padded).to(_device(group))
    out = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(out, tensor, group=group)
    return np.concatenate([o[:n].cpu().numpy() for o, n in zip(out, sizes, strict=True)])


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class _StreamingMetric:
    """State: ``sums`` (added over batches and ranks) and ``rows`` (concatenated)."""

    _ROWS: tuple[str, ...] = ()  # names of the row states, in a fixed order

    def __init__(
        self,
        *,
        ignore_index: int | None = None,
        from_logits: bool = False,
        process_group: object = None,
        sync_on_compute: bool = True,
    ) -> None:
        self.ignore_index = _m._check_ignore_index(ignore_index)
        if not isinstance(from_logits, bool):
            raise TypeError(f"from_logits must be a bool, got from_logits={from_logits!r}")
        if not isinstance(sync_on_compute, bool):
            raise TypeError(
                f"sync_on_compute must be a bool, got sync_on_compute={sync_on_compute!r}"
            )
        self.from_logits = from_logits
        self.process_group = process_group
        self.sync_on_compute = sync_on_compute
        self.reset()

    # -- the protocol ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets every batch."""
        self.num_classes: int | None = None
        self._count = 0
        self._ignored = 0
        self._sums: dict[str, np.ndarray] | None = None
        self._rows: dict[str, list[np.ndarray]] = {name: [] for name in self._ROWS}

    @torch.no_grad()
    def update(self, preds: _m.ArrayLike, labels: _m.ArrayLike) -> None:
        """Adds a batch: ``preds`` (N, C) or (..., C), ``labels`` (N,) or (...)."""
        preds, labels = _flatten(preds, labels)
        array, classes = self._prepare(preds, labels)
        total = len(labels)
        num_classes = int(array.shape[1])
        if self.num_classes is None:
            self.num_classes = num_classes
        elif num_classes != self.num_classes:
            raise ValueError(
                f"preds has {num_classes} classes (shape[-1]), but earlier batches had "
                f"{self.num_classes}; call reset() between tasks"
            )
        if self._sums is None:
            self._sums = self._zero_sums(num_classes)
        self._ignored += total - classes.shape[0]
        if classes.shape[0] == 0:
            return
        self._count += classes.shape[0]
        self._update(array, classes)

    def compute(self) -> float:
        """The metric over every batch of every rank (a collective when synchronising)."""
        count, sums, rows, num_classes = self._gather()
        if count == 0:
            ignored = int(sums["_ignored"][0])
            why = (
                f": all {ignored} labels seen equal ignore_index={self.ignore_index}"
                if ignored
                else ""
            )
            raise ValueError(
                f"{type(self).__name__}.compute() has no sample to evaluate{why}; "
                f"call update() with labelled data first"
            )
        return self._compute(count, sums, rows, num_classes)

    @property
    def num_samples(self) -> int:
        """Rows seen by this process since the last reset (the ignored ones not counted)."""
        return self._count

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()}, num_samples={self._count})"

    # -- for the subclasses ------------------------------------------------------------------

    def _describe(self) -> str:
        return f"ignore_index={self.ignore_index}, from_logits={self.from_logits}"

    def _prepare(self, preds: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
        if not self.from_logits:
            return _m._prepare(preds, labels, self.ignore_index, allow_empty=True)
        logits, classes = _m._prepare_logits(preds, labels, self.ignore_index, allow_empty=True)
        return torch.from_numpy(logits).softmax(dim=1).numpy(), classes

    def _zero_sums(self, num_classes: int) -> dict[str, np.ndarray]:
        return {}

    def _row_shape(self, name: str, num_classes: int) -> tuple[int, ...]:
        return ()

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        raise NotImplementedError

    def _compute(
        self,
        count: int,
        sums: dict[str, np.ndarray],
        rows: dict[str, np.ndarray],
        num_classes: int,
    ) -> float:
        raise NotImplementedError

    def _syncing(self) -> bool:
        return self.sync_on_compute and _world_size(self.process_group) > 1

    def _agreed_classes(self) -> int:
        """The number of classes every rank agrees on (0 if no rank saw a batch)."""
        mine = self.num_classes or 0
        if not self._syncing():
            return mine
        seen = _all_gather_ints([mine], self.process_group)[:, 0]
        known = sorted({int(c) for c in seen if c > 0})
        if len(known) > 1:
            raise ValueError(
                f"the ranks disagree on the number of classes: {seen.tolist()} "
                f"(rank order; 0 for a rank that saw no batch)"
            )
        return known[0] if known else 0

    def _gather(
        self,
    ) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], int]:
        num_classes = self._agreed_classes()
        sums = dict(self._sums) if self._sums is not None else self._zero_sums(num_classes)
        sums["_count"] = np.array([self._count], dtype=np.int64)
        sums["_ignored"] = np.array([self._ignored], dtype=np.int64)
        rows = {
            name: (
                np.concatenate(parts)
                if parts
                else np.zeros((0, *self._row_shape(name, num_classes)))
            )
            for name, parts in self._rows.items()
        }
        if self._syncing():
            group = self.process_group
            sums = {name: _all_reduce_sum(value, group) for name, value in sums.items()}
            rows = {name: _all_gather_rows(value, group) for name, value in rows.items()}
        return int(sums["_count"][0]), sums, rows, num_classes


def _flatten(preds: object, labels: object) -> tuple[object, object]:
    """(..., C) preds and (...) labels as (M, C) and (M,); (N, C) and anything else as given."""
    if not isinstance(preds, (Tensor, np.ndarray)) or preds.ndim <= 2:
        return preds, labels
    if not isinstance(labels, (Tensor, np.ndarray)) or tuple(labels.shape) != tuple(
        preds.shape[:-1]
    ):
        shape = tuple(labels.shape) if isinstance(labels, (Tensor, np.ndarray)) else None
        raise ValueError(
            f"labels must have shape {tuple(preds.shape[:-1])} (the shape of preds without its "
            f"last, class dimension), got shape {shape}"
        )
    return preds.reshape(-1, preds.shape[-1]), labels.reshape(-1)


def _check_binning(n_bins: object, binning: object) -> tuple[int, str]:
    return _m._check_n_bins(n_bins), _checks.check_choice("binning", binning, _m.BINNINGS)


# --------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------


class CalibrationError(_StreamingMetric):
    r"""Streaming top-label calibration error (ECE, RMS calibration error or MCE).

    Args:
        n_bins: M >= 1.
        binning: ``"uniform"`` (M equal-width bins; the state is three sums per bin) or
            ``"quantile"`` (equal-mass bins, whose edges need every confidence: the state is
            (confidence, correct) per sample, gathered from every rank at ``compute()``).
        norm: ``"l1"``: :func:`~labelsmooth.metrics.expected_calibration_error`; ``"l2"``:
            the root of the bin-weighted mean squared gap
            (:attr:`~labelsmooth.metrics.ReliabilityCurve.root_mean_square_calibration_error`,
            torchmetrics' ``norm="l2"``); ``"max"``:
            :func:`~labelsmooth.metrics.maximum_calibration_error`.
        ignore_index, from_logits, process_group, sync_on_compute: see the module.

    Example:
        >>> metric = CalibrationError(n_bins=5)
        >>> metric.update(torch.tensor([[0.95, 0.05], [0.65, 0.35]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.3, 0.7], [0.85, 0.15]]), torch.tensor([1, 0]))
        >>> round(metric.compute(), 4)  # expected_calibration_error on the four rows
        0.1375
    """

    def __init__(
        self,
        n_bins: int = 15,
        binning: str = "uniform",
        norm: str = "l1",
        *,
        ignore_index: int | None = None,
        from_logits: bool = False,
        process_group: object = None,
        sync_on_compute: bool = True,
    ) -> None:
        self.n_bins, self.binning = _check_binning(n_bins, binning)
        self.norm = _checks.check_choice("norm", norm, _m.NORMS)
        self._ROWS = ("confidence", "correct") if self.binning == "quantile" else ()
        self._edges = _m._bin_edges(np.zeros(0), self.n_bins, "uniform")
        super().__init__(
            ignore_index=ignore_index,
            from_logits=from_logits,
            process_group=process_group,
            sync_on_compute=sync_on_compute,
        )

    def _describe(self) -> str:
        return f"n_bins={self.n_bins}, binning={self.binning!r}, norm={self.norm!r}"

    def _zero_sums(self, num_classes: int) -> dict[str, np.ndarray]:
        if self.binning == "quantile":
            return {}
        return {
            "counts": np.zeros(self.n_bins, dtype=np.int64),
            "correct": np.zeros(self.n_bins),
            "confidence": np.zeros(self.n_bins),
        }

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        confidence, correct = _m._top_label(array, classes)
        if self.binning == "quantile":
            self._rows["confidence"].append(confidence)
            self._rows["correct"].append(correct)
            return
        for name, value in zip(
            ("counts", "correct", "confidence"),
            _m._bin_sums(confidence, correct, self._edges),
            strict=True,
        ):
            self._sums[name] += value

    def compute_curve(self) -> _m.ReliabilityCurve:
        """The :class:`~labelsmooth.metrics.ReliabilityCurve` of every batch (a collective)."""
        count, sums, rows, _ = self._gather()
        if count == 0:
            self.compute()  # raises the error that explains why
        return self._curve(sums, rows)

    def _curve(self, sums: dict[str, np.ndarray], rows: dict[str, np.ndarray]):
        if self.binning == "quantile":
            return _m._binned(rows["confidence"], rows["correct"], self.n_bins, "quantile")
        return _m._curve(self._edges, sums["counts"], sums["correct"], sums["confidence"])

    def _compute(self, count, sums, rows, num_classes) -> float:
        return self._curve(sums, rows).calibration_error(self.norm)


class ClasswiseCalibrationError(_StreamingMetric):
    r"""Streaming :func:`~labelsmooth.metrics.classwise_calibration_error` (Kull et al. 2019).

    With ``binning="uniform"`` the state is three sums per class and bin (``3 C n_bins``
    numbers); with ``"quantile"`` the bins of each class need all of its probabilities, so
    the state is the (N, C) probabilities and the labels, gathered from every rank at
    ``compute()`` (``8 (C + 1)`` bytes per sample).

    Example:
        >>> metric = ClasswiseCalibrationError(n_bins=5)
        >>> metric.update(torch.tensor([[0.95, 0.05], [0.65, 0.35]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.3, 0.7], [0.85, 0.15]]), torch.tensor([1, 0]))
        >>> round(metric.compute(), 4)
        0.2875
    """

    def __init__(
        self,
        n_bins: int = 15,
        binning: str = "uniform",
        *,
        ignore_index: int | None = None,
        from_logits: bool = False,
        process_group: object = None,
        sync_on_compute: bool = True,
    ) -> None:
        self.n_bins, self.binning = _check_binning(n_bins, binning)
        self._ROWS = ("probs", "labels") if self.binning == "quantile" else ()
        self._edges = _m._bin_edges(np.zeros(0), self.n_bins, "uniform")
        super().__init__(
            ignore_index=ignore_index,
            from_logits=from_logits,
            process_group=process_group,
            sync_on_compute=sync_on_compute,
        )

    def _describe(self) -> str:
        return f"n_bins={self.n_bins}, binning={self.binning!r}"

    def _zero_sums(self, num_classes: int) -> dict[str, np.ndarray]:
        if self.binning == "quantile":
            return {}
        shape = (num_classes, self.n_bins)
        return {
            "counts": np.zeros(shape, dtype=np.int64),
            "hits": np.zeros(shape),
            "probability": np.zeros(shape),
        }

    def _row_shape(self, name: str, num_classes: int) -> tuple[int, ...]:
        return (num_classes,) if name == "probs" else ()

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        if self.binning == "quantile":
            self._rows["probs"].append(array)
            self._rows["labels"].append(classes.astype(np.float64))
            return
        for c in range(array.shape[1]):
            sums = _m._bin_sums(array[:, c], (classes == c).astype(np.float64), self._edges)
            for name, value in zip(("counts", "hits", "probability"), sums, strict=True):
                self._sums[name][c] += value

    def _compute(self, count, sums, rows, num_classes) -> float:
        if self.binning == "quantile":
            probs, labels = rows["probs"], rows["labels"]
            curves = [
                _m._binned(probs[:, c], (labels == c).astype(np.float64), self.n_bins, "quantile")
                for c in range(num_classes)
            ]
        else:
            curves = [
                _m._curve(self._edges, sums["counts"][c], sums["hits"][c], sums["probability"][c])
                for c in range(num_classes)
            ]
        return float(np.mean([curve.expected_calibration_error for curve in curves]))


class BrierScore(_StreamingMetric):
    r"""Streaming :func:`~labelsmooth.metrics.brier_score`: two sums, whatever N is.

    Example:
        >>> metric = BrierScore()
        >>> metric.update(torch.tensor([[0.95, 0.05], [0.65, 0.35]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.3, 0.7], [0.85, 0.15]]), torch.tensor([1, 0]))
        >>> round(metric.compute(), 4)
        0.2687
    """

    def _zero_sums(self, num_classes: int) -> dict[str, np.ndarray]:
        return {"total": np.zeros(1)}

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        onehot = np.zeros_like(array)
        onehot[np.arange(array.shape[0]), classes] = 1.0
        self._sums["total"] += np.sum((array - onehot) ** 2)

    def _compute(self, count, sums, rows, num_classes) -> float:
        return float(sums["total"][0] / count)


class NegativeLogLikelihood(_StreamingMetric):
    r"""Streaming :func:`~labelsmooth.metrics.negative_log_likelihood`: two sums.

    With ``from_logits=True`` each row contributes ``-log_softmax(z)[y]`` in float64 (the
    NLL of ``torch.nn.functional.cross_entropy``), finite even where the probability of the
    label underflows to 0; from probabilities it is ``-log p[y]`` (``inf`` when p[y] = 0).

    Example:
        >>> metric = NegativeLogLikelihood(from_logits=True, ignore_index=-100)
        >>> metric.update(torch.tensor([[[0.0, 0.0], [0.0, 1.0], [5.0, 0.0]]]),
        ...               torch.tensor([[0, 1, -100]]))
        >>> round(metric.compute(), 4)  # the mean of -log 0.5 and -log sigmoid(1)
        0.5032
    """

    def _prepare(self, preds: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
        if not self.from_logits:
            return super()._prepare(preds, labels)
        logits, classes = _m._prepare_logits(preds, labels, self.ignore_index, allow_empty=True)
        return torch.from_numpy(logits).log_softmax(dim=1).numpy(), classes

    def _zero_sums(self, num_classes: int) -> dict[str, np.ndarray]:
        return {"total": np.zeros(1)}

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        picked = array[np.arange(array.shape[0]), classes]
        if self.from_logits:  # array holds log-probabilities
            self._sums["total"] -= np.sum(picked)
            return
        with np.errstate(divide="ignore"):
            self._sums["total"] -= np.sum(np.log(picked))

    def _compute(self, count, sums, rows, num_classes) -> float:
        return float(sums["total"][0] / count)


class AURC(_StreamingMetric):
    r"""Streaming :func:`~labelsmooth.metrics.aurc` (``excess=True``: ``excess_aurc``).

    The curve needs the ranking of every confidence, so the state is (confidence, correct)
    per sample (16 bytes), gathered from every rank at ``compute()``.

    Example:
        >>> metric = AURC()
        >>> metric.update(torch.tensor([[0.95, 0.05], [0.65, 0.35]]), torch.tensor([0, 1]))
        >>> metric.update(torch.tensor([[0.3, 0.7], [0.85, 0.15]]), torch.tensor([1, 0]))
        >>> metric.compute()
        0.0625
    """

    _ROWS = ("confidence", "correct")

    def __init__(
        self,
        *,
        excess: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = False,
        process_group: object = None,
        sync_on_compute: bool = True,
    ) -> None:
        if not isinstance(excess, bool):
            raise TypeError(f"excess must be a bool, got excess={excess!r}")
        self.excess = excess
        super().__init__(
            ignore_index=ignore_index,
            from_logits=from_logits,
            process_group=process_group,
            sync_on_compute=sync_on_compute,
        )

    def _describe(self) -> str:
        return f"excess={self.excess}"

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        confidence, correct = _m._top_label(array, classes)
        self._rows["confidence"].append(confidence)
        self._rows["correct"].append(correct)

    def _compute(self, count, sums, rows, num_classes) -> float:
        if self.excess:
            return _m._excess_aurc(rows["confidence"], rows["correct"])
        return _m._risk_coverage(rows["confidence"], rows["correct"]).aurc


class TemperatureFit(_StreamingMetric):
    r"""Streaming :func:`~labelsmooth.metrics.fit_temperature` on logits.

    The NLL's optimum depends on every logit, so each rank keeps its own (float64, ``8 C``
    bytes per row) and nothing is gathered: each step of the bisection adds the slopes of
    every rank with one ``all_reduce`` of two numbers (about 45 steps; the number of steps
    depends on ``bounds`` only, so the ranks stay in step). ``update`` takes logits, never
    probabilities.

    Args:
        bounds: (lowest, highest) temperature, as :func:`~labelsmooth.metrics.fit_temperature`.
        ignore_index, process_group, sync_on_compute: see the module.

    Example:
        >>> metric = TemperatureFit()
        >>> metric.update(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([1, 1]))
        >>> round(metric.compute(), 4)  # T = 2 / log 3
        1.8205
    """

    _ROWS = ("logits", "picked")

    def __init__(
        self,
        *,
        bounds: tuple[float, float] = (1e-2, 1e2),
        ignore_index: int | None = None,
        process_group: object = None,
        sync_on_compute: bool = True,
    ) -> None:
        self.bounds = _m._check_bounds(bounds)
        super().__init__(
            ignore_index=ignore_index,
            from_logits=True,
            process_group=process_group,
            sync_on_compute=sync_on_compute,
        )

    def _describe(self) -> str:
        return f"bounds={self.bounds}"

    def _prepare(self, preds: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
        return _m._prepare_logits(preds, labels, self.ignore_index, allow_empty=True)

    def _update(self, array: np.ndarray, classes: np.ndarray) -> None:
        self._rows["logits"].append(array)
        self._rows["picked"].append(array[np.arange(array.shape[0]), classes])

    def compute(self) -> float:
        """The fitted temperature over every batch of every rank (a collective)."""
        num_classes = self._agreed_classes()
        parts = self._rows["logits"]
        logits = np.concatenate(parts) if parts else np.zeros((0, num_classes))
        picked = np.concatenate(self._rows["picked"]) if parts else np.zeros(0)
        local = np.array([float(self._count), float(self._ignored)])
        varying = np.array([float(np.sum(np.ptp(logits, axis=1) > 0)) if parts else 0.0])
        syncing = self._syncing()
        if syncing:
            local = _all_reduce_sum(local, self.process_group)
            varying = _all_reduce_sum(varying, self.process_group)
        count = int(local[0])
        if count == 0:
            ignored = int(local[1])
            why = f": all {ignored} labels seen equal ignore_index={self.ignore_index}"
            raise ValueError(
                f"TemperatureFit.compute() has no sample to evaluate{why if ignored else ''}; "
                f"call update() with labelled data first"
            )
        lowest, highest = self.bounds
        if not syncing:
            return _m._bisect_temperature(
                lambda beta: _m._nll_slope(beta, logits, picked),
                varying[0] == 0,
                lowest,
                highest,
            )

        def slope(beta: float) -> float:
            mine = np.sum(_m._nll_slopes(beta, logits, picked)) if parts else 0.0
            return float(_all_reduce_sum(np.array([mine]), self.process_group)[0]) / count

        return _m._bisect_temperature(slope, varying[0] == 0, lowest, highest)

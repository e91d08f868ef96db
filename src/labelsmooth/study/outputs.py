"""One trial of a sweep: a training function's outputs in, the study's metrics out.

This is the single path from a trained model to a row of ``results.jsonl``, shared by the CLI
study (whose sweep trains the built-in MLP) and :class:`labelsmooth.study.Sweep` (which trains
the user's model with the user's loop):

1. ``train(eps, style, seed, report)`` trains one model and returns :class:`Outputs`: the
   logits of the validation and test examples, with their labels. During training it may call
   ``report(epoch, val_logits, val_labels, test_logits)`` after every epoch
   (:class:`EpochReport`); the trial then keeps the best validation epoch itself, exactly as
   the CLI study does, and tells the loop when to stop early (``patience``) or when a pruner
   asks it to.
2. :func:`measure_outputs` computes every metric of the kept model on the test examples,
   fits the temperature on the validation examples (never on the test ones), and measures the
   final epoch beside the kept one.

No choice here reads a test label: the kept epoch, the temperature and the stopping point
come from validation data only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..functional import cross_entropy
from .train import SELECT_RULES, TrainingDivergedError, _better, classification_score

Arrays = dict[str, np.ndarray]
Metrics = dict[str, float]

TEMPERATURE_BOUNDS = (1e-2, 1e2)


@dataclass
class Outputs:
    """What a training function returns: logits and labels of the validation and test sets.

    Args:
        val_logits: (N_val, K) logits of the validation examples (the split the trial makes
            its choices on: the kept epoch, the temperature).
        val_labels: (N_val,) class indices.
        test_logits: (N_test, K) logits of the test examples; only measured, never used to
            choose.
        test_labels: (N_test,) class indices.
        final_test_logits: the last epoch's test logits when the returned model is an earlier
            (early-stopped) one; recorded as ``final_*`` metrics. ``None``: the returned model
            is the final one.
        best_epoch: the epoch the returned model comes from, when the loop chose it itself.
        epochs: how many epochs were trained.
        arrays: extra arrays to keep with the first seed's run (e.g. ``features``, ``weight``,
            ``bias`` of the last layer for the report's projection figure).

    Tensors and NumPy arrays are both accepted. When the loop calls ``report`` with test
    logits every epoch, it may return ``None`` instead: the trial uses the best reported
    epoch.

    Example:
        >>> import torch
        >>> out = Outputs(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]),
        ...               torch.zeros(2, 3), torch.tensor([1, 2]))
        >>> out.num_classes
        3
    """

    val_logits: Any
    val_labels: Any
    test_logits: Any
    test_labels: Any
    final_test_logits: Any = None
    best_epoch: int | None = None
    epochs: int | None = None
    arrays: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.val_logits = _logits_tensor("val_logits", self.val_logits)
        self.test_logits = _logits_tensor("test_logits", self.test_logits)
        k = self.val_logits.shape[1]
        if self.test_logits.shape[1] != k:
            raise ValueError(
                f"test_logits must have the {k} classes of val_logits, got shape "
                f"{tuple(self.test_logits.shape)}"
            )
        self.val_labels = _labels_tensor("val_labels", self.val_labels, len(self.val_logits), k)
        self.test_labels = _labels_tensor("test_labels", self.test_labels, len(self.test_logits), k)
        if self.final_test_logits is not None:
            self.final_test_logits = _logits_tensor("final_test_logits", self.final_test_logits)
            if self.final_test_logits.shape != self.test_logits.shape:
                raise ValueError(
                    f"final_test_logits must have the shape of test_logits "
                    f"{tuple(self.test_logits.shape)}, got {tuple(self.final_test_logits.shape)}"
                )
        for name in ("best_epoch", "epochs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not isinstance(self.arrays, dict) or not all(isinstance(k, str) for k in self.arrays):
            raise TypeError(f"arrays must be a dict of named arrays, got {type(self.arrays)}")
        self.arrays = {
            name: value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            for name, value in self.arrays.items()
        }

    @property
    def num_classes(self) -> int:
        return int(self.val_logits.shape[1])


def _logits_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor or a NumPy array, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point logits, got dtype {value.dtype}")
    if value.ndim != 2 or value.shape[0] == 0 or value.shape[1] < 2:
        raise ValueError(
            f"{name} must be (N, K) logits with N >= 1 and K >= 2 classes, got shape "
            f"{tuple(value.shape)}"
        )
    value = value.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise TrainingDivergedError(f"non-finite values in {name}")
    return value


def _labels_tensor(name: str, value: Any, count: int, num_classes: int) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor or a NumPy array, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {value.dtype}")
    if tuple(value.shape) != (count,):
        raise ValueError(
            f"{name} must have shape ({count},) like its logits, got {tuple(value.shape)}"
        )
    value = value.detach().to("cpu", torch.long)
    low, high = int(value.min()), int(value.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{name} must be class indices in [0, {num_classes - 1}], got {bad}")
    return value


# ----------------------------------------------------------------------------------------------
# The per-epoch report
# ----------------------------------------------------------------------------------------------


class Pruner(Protocol):
    """Called after each reported epoch with the validation accuracy and NLL; returning True
    asks the training loop to stop (Optuna's ``trial.should_prune()``, a Ray Tune scheduler)."""

    def __call__(self, epoch: int, val_accuracy: float, val_nll: float) -> bool: ...


class EpochReport:
    """The ``report`` callback handed to a training function.

    ``report(epoch, val_logits, val_labels, test_logits=None)`` after each epoch scores the
    validation logits (accuracy and NLL) and keeps the best epoch under ``select``
    (``"accuracy"``: ties broken by the lower NLL, then the earlier epoch; ``"nll"``; or
    ``"final"``), with its test logits when given. It returns ``True`` when the loop should
    stop: no better epoch for ``patience`` epochs, or the ``pruner`` asked for it. A loop that
    ignores the return value trains to the end; the kept epoch is the same.
    """

    def __init__(
        self, select: str = "accuracy", patience: int | None = None, pruner: Pruner | None = None
    ) -> None:
        if select not in SELECT_RULES:
            raise ValueError(f"select must be one of {', '.join(SELECT_RULES)}, got {select!r}")
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ValueError(f"patience must be a positive integer or None, got {patience!r}")
        self.select = select
        self.patience = patience
        self.pruner = pruner
        self.history: list[dict[str, float]] = []
        self.best: tuple[int, Tensor, Tensor, Tensor | None] | None = None
        self.last: tuple[int, Tensor, Tensor, Tensor | None] | None = None
        self._best_score: tuple[float, float] | None = None

    def __call__(
        self, epoch: int, val_logits: Any, val_labels: Any, test_logits: Any = None
    ) -> bool:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"report: epoch must be a positive integer, got {epoch!r}")
        if self.history and epoch <= self.history[-1]["epoch"]:
            raise ValueError(
                f"report: epochs must increase, got epoch {epoch} after "
                f"{int(self.history[-1]['epoch'])}"
            )
        val = _logits_tensor("val_logits", val_logits)
        labels = _labels_tensor("val_labels", val_labels, len(val), val.shape[1])
        test = None if test_logits is None else _logits_tensor("test_logits", test_logits)
        accuracy, nll = classification_score(val, labels)
        if not math.isfinite(nll):
            raise TrainingDivergedError(f"non-finite validation loss in epoch {epoch}")
        self.history.append({"epoch": epoch, "accuracy": accuracy, "nll": nll})
        self.last = (epoch, val, labels, test)
        improved = self.select == "final" or _better((accuracy, nll), self._best_score, self.select)
        if improved:
            self._best_score = (accuracy, nll)
            self.best = self.last
        stop = False
        if self.patience is not None and self.best is not None:
            stop = epoch - self.best[0] >= self.patience
        if self.pruner is not None and bool(self.pruner(epoch, accuracy, nll)):
            stop = True
        return stop

    def resolve(self, returned: Outputs | None) -> Outputs:
        """The outputs to measure: the best reported epoch when the loop reported test logits
        every epoch, otherwise what the training function returned."""
        reported = self.best is not None and self.best[3] is not None
        if not reported:
            if returned is None:
                raise TypeError(
                    "the training function returned None, but did not report test logits "
                    "each epoch; return Outputs(val_logits, val_labels, test_logits, "
                    "test_labels) or call report(epoch, val_logits, val_labels, test_logits)"
                )
            return returned
        assert self.best is not None and self.last is not None
        best_epoch, val, labels, test = self.best
        last_epoch, _, _, last_test = self.last
        if returned is None:
            raise TypeError(
                "the training function must return Outputs (at least the test labels: "
                "Outputs(val_logits, val_labels, test_logits, test_labels))"
            )
        final = returned.test_logits if last_test is None else last_test
        return Outputs(
            val_logits=val,
            val_labels=labels,
            test_logits=test,
            test_labels=returned.test_labels,
            final_test_logits=None if best_epoch == last_epoch else final,
            best_epoch=best_epoch,
            epochs=returned.epochs or last_epoch,
            arrays=returned.arrays,
        )


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def classification_metrics(
    logits: Tensor, labels: Tensor, n_bins: int, eps: float | None = None, style: str = "uniform"
) -> Metrics:
    """Accuracy, NLL, ECE (equal-width and equal-mass bins), Brier, AURC, excess AURC,
    confidence and the mean logit gap (with its theoretical optimum for eps > 0)."""
    logits = logits.double()
    probs = logits.softmax(-1).numpy()
    target = labels.numpy()
    result = {
        "accuracy": float((logits.argmax(-1) == labels).double().mean()),
        "nll": float(cross_entropy(logits, labels, 0.0)),
        "ece": metrics.expected_calibration_error(probs, target, n_bins),
        "ece_quantile": metrics.expected_calibration_error(probs, target, n_bins, "quantile"),
        "brier": metrics.brier_score(probs, target),
        "aurc": metrics.aurc(probs, target),
        "excess_aurc": metrics.excess_aurc(probs, target),
        "confidence": float(probs.max(-1).mean()),
        "logit_gap": float(np.mean(metrics.logit_gap(logits.numpy()))),
    }
    if eps is not None and eps > 0:
        result["theoretical_gap"] = metrics.theoretical_gap(eps, logits.shape[-1], style)
    return result


def temperature_scaling(val_logits: Tensor, y_val: Tensor) -> tuple[float, bool, float, float]:
    """(T fitted on validation NLL, whether it is usable, val NLL before, val NLL after).

    Usable means strictly inside the search bounds and lowering the validation NLL.
    """
    temperature = metrics.fit_temperature(val_logits, y_val, bounds=TEMPERATURE_BOUNDS)
    logits = val_logits.double()
    before = float(cross_entropy(logits, y_val, 0.0))
    after = float(cross_entropy(logits / temperature, y_val, 0.0))
    low, high = TEMPERATURE_BOUNDS
    inside = low * (1 + 1e-6) < temperature < high * (1 - 1e-6)
    return temperature, bool(inside and after < before), before, after


def measure_outputs(
    outputs: Outputs,
    n_bins: int,
    *,
    eps: float | None = None,
    style: str = "uniform",
) -> tuple[Metrics, float]:
    """Every metric of a trained classifier's outputs: (metrics, applied temperature).

    Test metrics of the kept model, its validation accuracy/NLL and best epoch, the final
    epoch's test accuracy/NLL/ECE (``final_*``), and the test metrics after temperature scaling
    (``ts_*``) with T fitted on the validation labels. A T at a bound of the search, or one
    that does not lower the validation NLL, is flagged ``temperature_ok = 0`` and not applied.
    """
    test_logits, y_test = outputs.test_logits, outputs.test_labels
    val_logits, y_val = outputs.val_logits, outputs.val_labels
    out = classification_metrics(test_logits, y_test, n_bins, eps, style)
    temperature, usable, val_nll, val_nll_ts = temperature_scaling(val_logits, y_val)
    applied = temperature if usable else 1.0
    scaled = classification_metrics(test_logits / applied, y_test, n_bins)
    out.update({f"ts_{name}": value for name, value in scaled.items()})
    epochs = outputs.epochs or outputs.best_epoch
    out.update(
        {
            "val_accuracy": float((val_logits.argmax(-1) == y_val).double().mean()),
            "val_nll": val_nll,
            "val_nll_ts": val_nll_ts if usable else val_nll,
            "temperature": temperature,
            "temperature_applied": applied,
            "temperature_ok": float(usable),
            "best_epoch": float(outputs.best_epoch or epochs or float("nan")),
        }
    )
    if outputs.final_test_logits is not None:
        final = classification_metrics(outputs.final_test_logits, y_test, n_bins)
    else:
        final = out
    out.update({f"final_{name}": final[name] for name in ("accuracy", "nll", "ece")})
    return out, applied


TrainFunction = Callable[[float, str, int, EpochReport], "Outputs | None"]


def run_trial(
    train: TrainFunction,
    eps: float,
    style: str,
    seed: int,
    *,
    select: str,
    n_bins: int,
    keep_arrays: bool,
    patience: int | None = None,
    pruner: Pruner | None = None,
) -> tuple[Metrics, Arrays | None]:
    """Trains one model with ``train(eps, style, seed, report)`` and measures it.

    Returns the metrics and, with ``keep_arrays``, the arrays the report's figures read (test
    logits and labels, the applied temperature, the sizes, and the outputs' extra arrays).
    Raises :class:`~labelsmooth.study.train.TrainingDivergedError` for non-finite outputs.
    """
    report = EpochReport(select, patience, pruner)
    returned = train(eps, style, seed, report)
    if returned is not None and not isinstance(returned, Outputs):
        raise TypeError(
            f"the training function must return labelsmooth.study.Outputs or None, got "
            f"{type(returned).__name__}"
        )
    outputs = report.resolve(returned)
    result, applied = measure_outputs(outputs, n_bins, eps=eps, style=style)
    if not keep_arrays:
        return result, None
    arrays: Arrays = {
        **outputs.arrays,
        "logits": outputs.test_logits.numpy(),
        "labels": outputs.test_labels.numpy(),
        "temperature": np.array(applied),
        "n_val": np.array(len(outputs.val_labels)),
    }
    return result, arrays

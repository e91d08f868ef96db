r"""Calibration metrics of the validation set, logged by a Lightning callback.

:class:`CalibrationCallback` collects the logits (or probabilities) and labels that
``validation_step`` returns, feeds every batch to the streaming metrics of
:mod:`labelsmooth.streaming`, and at the end of each validation epoch logs, with
``pl_module.log(..., sync_dist=False)`` (the metrics already synchronise across processes
when ``torch.distributed`` is initialised, so every rank logs the same numbers):

==========================  ====================================================================
name (``log_prefix=""``)    value, over the N rows whose label is not ``ignore_index``
==========================  ====================================================================
``ece``                     :math:`\sum_m \frac{|B_m|}{N}|\mathrm{acc}(B_m)-\mathrm{conf}(B_m)|`,
                            ``n_bins`` equal-width bins (Guo et al. 2017)
``ece_quantile``            the same with ``n_bins`` equal-mass bins
``nll``                     :math:`-\frac1N\sum_i \log p_{i,y_i}`
``brier``                   :math:`\frac1N\sum_i \lVert p_i - e_{y_i}\rVert^2`
``aurc``                    area under the risk-coverage curve of the top-label confidence
==========================  ====================================================================

each equal to the function of :mod:`labelsmooth.metrics` of the same name
(``expected_calibration_error``, ``negative_log_likelihood``, ``brier_score``, ``aurc``) on
the concatenated validation outputs of every batch, dataloader and process. With
``reliability_diagram=True`` and a logger whose ``experiment`` has ``add_figure``
(TensorBoard), a :func:`labelsmooth.plots.reliability_diagram` of the probabilities of up to
``max_diagram_rows`` rows seen by rank 0 is logged as ``f"{log_prefix}reliability"``
(it needs matplotlib; other loggers are skipped silently). The last figure is
:attr:`CalibrationCallback.last_figure`, the last values :attr:`CalibrationCallback.last_metrics`.

**What ``validation_step`` must return**: a mapping with the logits under ``outputs_key``
(default ``"logits"``) and the labels under ``labels_key`` (default ``"labels"``), or a
``(logits, labels)`` tuple or list. The logits are (N, C), or (..., C) with labels of shape
(...) (a sequence model's (B, T, C) and (B, T)); rows labelled ``ignore_index`` (padding) are
dropped. With ``from_logits=False`` they are probabilities instead.

Only ``torch`` is needed to import this module; :class:`CalibrationCallback` imports
``lightning`` (``lightning.pytorch``, else ``pytorch_lightning``) when first accessed.

Example:
    >>> import torch
    >>> from labelsmooth.integrations.lightning import CalibrationCallback
    >>> callback = CalibrationCallback(n_bins=5)
    >>> callback.update({"logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
    ...                  "labels": torch.tensor([0, -100])})  # -100: padding, dropped
    >>> {name: round(value, 4) for name, value in callback.compute().items()}
    {'val/ece': 0.1192, 'val/ece_quantile': 0.1192, 'val/nll': 0.1269, 'val/brier': 0.0284,
     'val/aurc': 0.0}

In training, ``validation_step`` returns ``{"logits": logits, "labels": y}`` and the callback
is passed to the trainer (the values appear in ``trainer.callback_metrics``)::

    trainer = lightning.Trainer(callbacks=[CalibrationCallback()])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import streaming as _streaming

__all__ = ["CalibrationCallback"]  # noqa: F822 (built on first access by __getattr__)


class _CalibrationState:
    """The callback's logic, independent of Lightning (the callback class adds the hooks)."""

    def __init__(
        self,
        n_bins: int = 15,
        ignore_index: int | None = -100,
        from_logits: bool = True,
        log_prefix: str = "val/",
        reliability_diagram: bool = True,
        outputs_key: str = "logits",
        labels_key: str = "labels",
        *,
        max_diagram_rows: int = 100_000,
    ) -> None:
        if not isinstance(log_prefix, str):
            raise TypeError(f"log_prefix must be a str, got log_prefix={log_prefix!r}")
        if not isinstance(reliability_diagram, bool):
            raise TypeError(f"reliability_diagram must be a bool, got {reliability_diagram!r}")
        if isinstance(max_diagram_rows, bool) or not isinstance(max_diagram_rows, int):
            raise TypeError(f"max_diagram_rows must be an int, got {max_diagram_rows!r}")
        if max_diagram_rows < 1:
            raise ValueError(f"max_diagram_rows must be >= 1, got {max_diagram_rows}")
        options = {"ignore_index": ignore_index, "from_logits": from_logits}
        self.metrics: dict[str, Any] = {
            "ece": _streaming.CalibrationError(n_bins, "uniform", **options),
            "ece_quantile": _streaming.CalibrationError(n_bins, "quantile", **options),
            "nll": _streaming.NegativeLogLikelihood(**options),
            "brier": _streaming.BrierScore(**options),
            "aurc": _streaming.AURC(**options),
        }
        self.n_bins = self.metrics["ece"].n_bins
        self.ignore_index = self.metrics["ece"].ignore_index
        self.from_logits = from_logits
        self.log_prefix = log_prefix
        self.reliability_diagram = reliability_diagram
        self.outputs_key = outputs_key
        self.labels_key = labels_key
        self.max_diagram_rows = max_diagram_rows
        self.last_figure: Any = None
        self.last_metrics: dict[str, float] = {}
        self._buffer: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._buffered = 0

    # -- outside Lightning -------------------------------------------------------------------

    def _split(self, outputs: Any) -> tuple[Any, Any]:
        if isinstance(outputs, Mapping):
            missing = [k for k in (self.outputs_key, self.labels_key) if k not in outputs]
            if missing:
                raise KeyError(
                    f"validation_step returned a mapping without {missing} (keys: "
                    f"{list(outputs)}); return {{{self.outputs_key!r}: logits, "
                    f"{self.labels_key!r}: labels}} or set outputs_key/labels_key"
                )
            return outputs[self.outputs_key], outputs[self.labels_key]
        if isinstance(outputs, (tuple, list)) and len(outputs) == 2:
            return outputs[0], outputs[1]
        raise TypeError(
            f"CalibrationCallback needs validation_step to return a mapping with "
            f"{self.outputs_key!r} and {self.labels_key!r}, or a (logits, labels) tuple; "
            f"got {type(outputs).__name__}"
        )

    @torch.no_grad()
    def update(self, outputs: Any) -> None:
        """Adds one batch: ``outputs`` as ``validation_step`` returns it."""
        preds, labels = self._split(outputs)
        if isinstance(preds, Tensor):
            preds = preds.detach()
        if isinstance(labels, Tensor):
            labels = labels.detach()
        for metric in self.metrics.values():
            metric.update(preds, labels)
        if self._buffer is not None and self._buffered < self.max_diagram_rows:
            self._keep_for_diagram(preds, labels)

    def _keep_for_diagram(self, preds: Any, labels: Any) -> None:
        preds = torch.as_tensor(preds).detach().cpu().to(torch.float64)
        labels = torch.as_tensor(labels).detach().cpu()
        preds, labels = preds.reshape(-1, preds.shape[-1]), labels.reshape(-1)
        if self.ignore_index is not None:
            kept = labels != self.ignore_index
            preds, labels = preds[kept], labels[kept]
        if self.from_logits:
            preds = preds.softmax(dim=1)
        room = self.max_diagram_rows - self._buffered
        probs, classes = preds[:room].numpy(), labels[:room].numpy()
        self._buffer.append((probs, classes))
        self._buffered += len(classes)

    def compute(self) -> dict[str, float]:
        """``{log_prefix + name: value}`` over every batch (a collective when distributed)."""
        return {self.log_prefix + name: m.compute() for name, m in self.metrics.items()}

    def reset(self) -> None:
        """Forgets every batch (the metrics and the diagram's rows)."""
        for metric in self.metrics.values():
            metric.reset()
        self._buffer = None
        self._buffered = 0

    def _figure(self) -> Any:
        if not self._buffer:
            return None
        from ..plots import reliability_diagram

        probs = np.concatenate([p for p, _ in self._buffer])
        labels = np.concatenate([y for _, y in self._buffer])
        if len(labels) == 0:
            return None
        return reliability_diagram(
            probs, labels, self.n_bins, title=f"{self.log_prefix}reliability"
        )

    # -- Lightning's hooks -------------------------------------------------------------------

    def _figure_experiments(self, trainer: Any) -> list[Any]:
        """The loggers' experiments that take figures (rank 0 only; [] elsewhere)."""
        if not self.reliability_diagram or not trainer.is_global_zero or trainer.sanity_checking:
            return []
        experiments = []
        for logger in getattr(trainer, "loggers", None) or []:
            experiment = getattr(logger, "experiment", None)
            if callable(getattr(experiment, "add_figure", None)):
                experiments.append(experiment)
        return experiments

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.reset()
        if self._figure_experiments(trainer):
            self._buffer = []

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.update(outputs)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        try:
            values = self.compute()
        except ValueError as error:
            if "has no sample" not in str(error):
                raise
            self.reset()  # every rank raised the same error (the count is synced)
            return
        self.last_metrics = values
        for name, value in values.items():
            pl_module.log(name, value, sync_dist=False)
        experiments = self._figure_experiments(trainer)
        if experiments:
            figure = self._figure()
            if figure is not None:
                self.last_figure = figure
                for experiment in experiments:
                    experiment.add_figure(
                        f"{self.log_prefix}reliability",
                        figure,
                        global_step=trainer.global_step,
                        close=False,
                    )
        self.reset()


def _make_callback() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:  # the standalone package
        from pytorch_lightning import Callback

    class CalibrationCallback(_CalibrationState, Callback):
        r"""Logs ECE (equal-width and equal-mass bins), NLL, Brier score and AURC of validation.

        ``CalibrationCallback(n_bins=15, ignore_index=-100, from_logits=True,
        log_prefix="val/", reliability_diagram=True, outputs_key="logits",
        labels_key="labels", *, max_diagram_rows=100_000)``; see
        :mod:`labelsmooth.integrations.lightning` for what is logged and what
        ``validation_step`` must return.

        Args:
            n_bins: bins of both ECEs and of the reliability diagram.
            ignore_index: rows with this label are dropped (None: keep all).
            from_logits: ``validation_step`` returns logits (softmax in float64), else
                probabilities.
            log_prefix: put before every logged name.
            reliability_diagram: log a reliability diagram to loggers with ``add_figure``.
            outputs_key, labels_key: the keys of a mapping returned by ``validation_step``.
            max_diagram_rows: rows of rank 0 kept for the diagram (``8 C`` bytes each; kept
                only when a logger takes figures).

        Attributes:
            last_metrics: ``{name: value}`` of the last validation epoch (float64).
            last_figure: the last reliability diagram (a matplotlib Figure) or None.
        """

    CalibrationCallback.__module__ = __name__
    CalibrationCallback.__qualname__ = "CalibrationCallback"
    return CalibrationCallback


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "CalibrationCallback":
        if name not in _LAZY:
            _LAZY[name] = _make_callback()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

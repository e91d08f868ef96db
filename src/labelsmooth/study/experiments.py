"""The study's experiments, as a plan of independent runs.

Every run trains through the library's own losses (:func:`labelsmooth.cross_entropy`,
:func:`labelsmooth.binary_cross_entropy_with_logits`) and is measured with
:mod:`labelsmooth.metrics`; nothing is re-implemented here.

The protocol every run follows (the report's methods box says the same):

* **Splits.** The test set is fixed by the data set (its own test split, or a stratified 30%
  held out with seed 0). Each seed holds out ``validation_fraction`` of the remaining training
  data, stratified, as its validation split. Label noise corrupts the training *and* the
  validation labels (a practitioner only has noisy labels); the test labels stay clean.
* **Checkpoint.** Validation accuracy and NLL are measured after every epoch; the kept model is
  the best validation epoch under ``select`` (``accuracy``: ties broken by the lower NLL;
  ``nll``; or ``final``). The final epoch's test metrics are recorded beside it (``final_*``).
* **Temperature scaling** of every classifier: T fitted on the validation NLL. A T at a bound
  of the search, or one that does not lower the validation NLL, is flagged
  ``temperature_ok = 0`` and not applied (T = 1): a decision made on validation data only.
* **Divergence.** A run whose loss, weights or outputs become non-finite raises
  :class:`~labelsmooth.study.train.TrainingDivergedError`; the runner records it as ``diverged``.

A run never reads test labels to make a choice: they are only measured, after training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import variants
from ..analysis import class_spread_ratio, penultimate_projection
from ..functional import cross_entropy
from .config import StudyConfig
from .data import Split, synthetic
from .findings import VARIANT_LABELS
from .models import MLP
from .outputs import (
    Arrays,
    EpochReport,
    Metrics,
    Outputs,
    measure_outputs,
    run_trial,
)
from .train import (
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    multilabel_score,
    predict_logits,
    train_classifier,
)


@dataclass(frozen=True)
class Run:
    """One unit of work, named uniquely by ``key``; ``depends_on`` runs must finish first."""

    key: str
    experiment: str
    setting: str
    params: dict[str, Any]
    seed: int
    execute: Callable[[RunContext], tuple[Metrics, Arrays | None]]
    depends_on: tuple[str, ...] = ()
    cost: float = 1.0  # training examples x epochs, for the time estimate

    @property
    def label(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.params.items() if k != "data")
        return f"{self.experiment} [{self.setting}] {shown} seed={self.seed}"


class RunContext:
    """What a run may read: the arrays saved by earlier runs (teachers for students)."""

    def __init__(self, load_arrays: Callable[[str], Arrays]) -> None:
        self.load_arrays = load_arrays


@dataclass
class Plan:
    """The runs of a study, plus what the data set could not support (said in the report)."""

    runs: list[Run]
    notes: list[str] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedData:
    """One seed's view of a split: training part, validation part, fixed test part."""

    train: Split
    x_val: Tensor
    y_val: Tensor

    @property
    def x_test(self) -> Tensor:
        return self.train.x_test

    @property
    def y_test(self) -> Tensor:
        return self.train.y_test


def seed_data(data: Split, config: StudyConfig, seed: int) -> SeedData:
    train, x_val, y_val = data.split_validation(config.validation_fraction, seed)
    return SeedData(train, x_val, y_val)


def split_sizes(data: Split, config: StudyConfig) -> dict[str, int]:
    """n_train / n_val / n_test of the first seed (stratified: the same for every seed)."""
    first = seed_data(data, config, config.seeds[0])
    return {
        "n_train": len(first.train.x_train),
        "n_val": len(first.x_val),
        "n_test": len(first.x_test),
    }


def symmetric_noise(labels: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """Each label is replaced, with probability ``rate``, by a uniformly drawn *other* class."""
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(labels.shape, generator=generator) < rate
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return torch.where(flip, (labels + shift) % num_classes, labels)


def _fit(
    part: SeedData,
    config: StudyConfig,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    seed: int,
    *,
    width: int | None = None,
    depth: int | None = None,
    epochs: int | None = None,
    y_train: Tensor | None = None,
    y_val: Tensor | None = None,
    multilabel: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainResult:
    device = torch.device(config.device)
    torch.manual_seed(seed)
    split = part.train
    model = MLP(
        split.num_features,
        split.num_classes,
        width=width or config.width,
        depth=depth or config.depth,
    ).to(device)
    train_config = TrainConfig(
        epochs=epochs or config.epochs, batch_size=config.batch_size, lr=config.lr, seed=seed
    )
    x = split.x_train.to(device)
    y = (split.y_train if y_train is None else y_train).to(device)
    validation = (part.x_val.to(device), (part.y_val if y_val is None else y_val).to(device))
    kwargs: dict[str, Any] = {"score_fn": multilabel_score} if multilabel else {}
    return train_classifier(
        model,
        loss_fn,
        x,
        y,
        train_config,
        validation=validation,
        select=config.select,
        on_epoch_end=on_epoch_end,
        **kwargs,
    )


def _logits(model: torch.nn.Module, x: Tensor, device: str) -> Tensor:
    logits = predict_logits(model, x.to(device)).cpu()
    if not bool(torch.isfinite(logits).all()):
        raise TrainingDivergedError("non-finite logits on the test set")
    return logits


@torch.no_grad()
def _features(model: MLP, x: Tensor, device: str) -> Tensor:
    return model.features(x.to(device)).cpu()


def classifier_outputs(
    result: TrainResult, part: SeedData, config: StudyConfig, *, y_val: Tensor | None = None
) -> Outputs:
    """The :class:`~labelsmooth.study.outputs.Outputs` of a trained MLP: the kept model's
    validation and test logits, and the final epoch's test logits when it kept an earlier one.
    """
    model = result.model
    final = None
    if result.best_epoch != result.epochs:
        final = _logits(result.final_model(), part.x_test, config.device)
    return Outputs(
        val_logits=_logits(model, part.x_val, config.device),
        val_labels=part.y_val if y_val is None else y_val,
        test_logits=_logits(model, part.x_test, config.device),
        test_labels=part.y_test,
        final_test_logits=final,
        best_epoch=result.best_epoch,
        epochs=result.epochs,
    )


def measure_classifier(
    result: TrainResult,
    part: SeedData,
    config: StudyConfig,
    *,
    y_val: Tensor | None = None,
    eps: float | None = None,
    style: str = "uniform",
) -> tuple[Metrics, Tensor, float]:
    """Every metric of a trained MLP (:func:`~labelsmooth.study.outputs.measure_outputs`):
    (metrics, test logits, applied temperature). ``y_val``: the validation labels the
    temperature is fitted on (noisy where the training labels were)."""
    outputs = classifier_outputs(result, part, config, y_val=y_val)
    measured, applied = measure_outputs(outputs, config.n_bins, eps=eps, style=style)
    return measured, outputs.test_logits, applied


# ----------------------------------------------------------------------------------------------
# 1. eps sweep (two settings) with temperature scaling of every model
# ----------------------------------------------------------------------------------------------


def mlp_train_function(
    data: Split,
    config: StudyConfig,
    epochs: int,
    *,
    projection: bool = False,
    geometry: dict[str, float] | None = None,
) -> Callable[[float, str, int, EpochReport], Outputs]:
    """The CLI study's training function for :func:`~labelsmooth.study.outputs.run_trial`:
    ``train(eps, style, seed, report)`` trains the study's MLP on ``data`` with
    ``labelsmooth.cross_entropy(eps, style)`` and returns its outputs (the same signature a
    user gives :class:`labelsmooth.study.Sweep`). The MLP's loop keeps the best validation
    epoch itself, by the same rule as ``report``.

    ``projection``: keep the test set's penultimate features and the last layer in the
    outputs' arrays (the projection figure). ``geometry``: a dict that receives
    :func:`penultimate_geometry` of the kept model (``spread_ratio_plane``,
    ``spread_ratio_full``)."""

    def train(eps: float, style: str, seed: int, report: EpochReport) -> Outputs:
        part = seed_data(data, config, seed)

        def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
            return cross_entropy(logits, target, eps, style=style)

        trained = _fit(part, config, loss_fn, seed, epochs=epochs)
        outputs = classifier_outputs(trained, part, config)
        if projection or geometry is not None:
            classifier = trained.model.classifier
            kept = {
                "features": _features(trained.model, part.x_test, config.device).numpy(),
                "weight": classifier.weight.detach().cpu().numpy(),
                "bias": classifier.bias.detach().cpu().numpy(),
            }
            if projection:
                outputs.arrays.update(kept)
            if geometry is not None:
                geometry.update(
                    penultimate_geometry(
                        kept, part.y_test.numpy(), tuple(config.projection_classes)
                    )
                )
        return outputs

    return train


def penultimate_geometry(
    arrays: dict[str, np.ndarray], labels: np.ndarray, classes: tuple[int, ...]
) -> dict[str, float]:
    """Within-class spread over centroid distance
    (:func:`labelsmooth.analysis.class_spread_ratio`) of the test examples of the three
    ``classes``: in the plane of their templates (``spread_ratio_plane``, the projection
    figure's coordinates) and in the full penultimate space (``spread_ratio_full``)."""
    projection = penultimate_projection(
        arrays["features"], arrays["weight"], arrays["bias"], labels, classes
    )
    selected = np.isin(labels, classes)
    return {
        "spread_ratio_plane": class_spread_ratio(projection.points, projection.labels),
        "spread_ratio_full": class_spread_ratio(
            arrays["features"][selected].astype(np.float64), labels[selected]
        ),
    }


def _sweep_run(
    data: Split,
    config: StudyConfig,
    eps: float,
    style: str,
    seed: int,
    epochs: int,
    keep_arrays: bool,
    projection: bool,
) -> Callable[[RunContext], tuple[Metrics, Arrays | None]]:
    def execute(_: RunContext) -> tuple[Metrics, Arrays | None]:
        geometry: dict[str, float] | None = {} if projection else None
        train = mlp_train_function(
            data, config, epochs, projection=projection and keep_arrays, geometry=geometry
        )
        result, arrays = run_trial(
            train,
            eps,
            style,
            seed,
            select=config.select,
            n_bins=config.n_bins,
            keep_arrays=keep_arrays,
        )
        result.update(geometry or {})
        return result, arrays

    return execute


def overconfident_setting(data: Split, config: StudyConfig) -> tuple[Split, int, str]:
    """The second sweep setting: (data, epochs, description)."""
    choice = config.overconfident_data
    if choice == "auto":
        choice = "synthetic" if config.dataset in ("digits", "synthetic") else "subset"
    if choice == "synthetic" and config.dataset != "synthetic":
        return (
            synthetic(seed=0),
            config.epochs,
            "the synthetic task (generated data, overlapping classes)",
        )
    subset = data.subset_train(config.overconfident_train_size, seed=0)
    return (
        subset,
        config.overconfident_epochs,
        f"{data.name}: {len(subset.x_train)} training examples (before the validation split) "
        f"trained up to {config.overconfident_epochs} epochs",
    )


def sweep_combos(config: StudyConfig) -> list[tuple[float, str]]:
    """(eps, style) of every sweep arm; the baseline (eps 0) first."""
    return [(0.0, "uniform")] + [
        (eps, style) for eps in config.eps if eps != 0 for style in config.styles
    ]


def two_settings(data: Split, config: StudyConfig) -> list[tuple[str, Split, int, str]]:
    """(setting, data, epochs, description) of the main and the over-confident setting."""
    second, second_epochs, second_description = overconfident_setting(data, config)
    return [
        ("main", data, config.epochs, f"{data.name}, every training example"),
        ("overconfident", second, second_epochs, second_description),
    ]


def sweep_runs(data: Split, config: StudyConfig, plan: Plan) -> None:
    settings = two_settings(data, config)
    projection = data.num_classes >= 3 and max(config.projection_classes) < data.num_classes
    if not projection:
        plan.notes.append(
            f"The penultimate-layer projection needs three classes; the data set has "
            f"{data.num_classes}, so that figure is skipped."
        )
    if data.num_classes == 2 and {"uniform", "others"} <= set(config.styles):
        plan.notes.append(
            "With 2 classes, style 'others' at eps gives the same targets as 'uniform' at "
            "2 x eps, so such pairs of sweep rows are the same model trained twice."
        )
    for setting, split, epochs, description in settings:
        plan.settings[setting] = {
            "description": description,
            "epochs": epochs,
            "num_classes": split.num_classes,
            **split_sizes(split, config),
        }
        for eps, style in sweep_combos(config):
            shown_style = style if eps != 0 else "none"
            for seed in config.seeds:
                keep = seed == config.seeds[0]
                plan.runs.append(
                    Run(
                        key=f"sweep|{setting}|{shown_style}|{eps:g}|{seed}",
                        experiment="sweep",
                        setting=setting,
                        params={"style": shown_style, "eps": eps},
                        seed=seed,
                        execute=_sweep_run(
                            split, config, eps, style, seed, epochs, keep, projection
                        ),
                        cost=len(split.x_train) * epochs,
                    )
                )


# ----------------------------------------------------------------------------------------------
# 2. The published variants against plain smoothing and the baseline
# ----------------------------------------------------------------------------------------------

LossAndHook = tuple[Callable[[Tensor, Tensor], Tensor], Callable[[int], None] | None]


def _plain(eps: float) -> Callable[[int], LossAndHook]:
    def make(num_classes: int) -> LossAndHook:
        return (lambda logits, target: cross_entropy(logits, target, eps)), None

    return make


def _online(num_classes: int) -> LossAndHook:
    criterion = variants.OnlineLabelSmoothing(num_classes, alpha=0.5)
    return criterion, lambda epoch: criterion.epoch_end()


def _stateless(loss: Callable[[Tensor, Tensor], Tensor]) -> Callable[[int], LossAndHook]:
    return lambda num_classes: (loss, None)


# name -> loss factory(num_classes) -> (loss_fn, epoch-end hook); the labels the report prints
# (with where each strength comes from) are findings.VARIANT_LABELS. The strengths are the papers'
# or the authors' code's defaults where one exists, not tuned here: a variant that needs tuning
# to help is reported as it comes.
VARIANT_ARMS: dict[str, Callable[[int], LossAndHook]] = {
    "baseline": _plain(0.0),
    "label_smoothing": _plain(0.1),
    "confidence_penalty": _stateless(lambda z, y: variants.confidence_penalty(z, y, 0.1)),
    "margin": _stateless(lambda z, y: variants.margin_label_smoothing(z, y, 10.0, 0.1)),
    "relaxation": _stateless(lambda z, y: variants.label_relaxation(z, y, 0.1)),
    "maxsup": _stateless(lambda z, y: variants.maxsup(z, y, 0.1)),
    "online": _online,
    "teacher_free": _stateless(
        lambda z, y: variants.teacher_free_kd(
            z, y, correct_prob=0.99, temperature=20.0, alpha=0.1, multiplier=100.0
        )
    ),
    "focal": _stateless(lambda z, y: variants.focal_cross_entropy(z, y, 2.0)),
    "focal_smoothed": _stateless(lambda z, y: variants.focal_cross_entropy(z, y, 2.0, 0.1)),
}
assert set(VARIANT_ARMS) == set(VARIANT_LABELS)


def _variant_run(
    data: Split, config: StudyConfig, variant: str, seed: int, epochs: int
) -> Callable[[RunContext], tuple[Metrics, Arrays | None]]:
    make = VARIANT_ARMS[variant]

    def train(eps: float, style: str, seed: int, report: EpochReport) -> Outputs:
        part = seed_data(data, config, seed)
        loss_fn, hook = make(data.num_classes)
        trained = _fit(part, config, loss_fn, seed, epochs=epochs, on_epoch_end=hook)
        return classifier_outputs(trained, part, config)

    def execute(_: RunContext) -> tuple[Metrics, Arrays | None]:
        # eps=0 for the measurements that refer to a smoothing rate (the theoretical gap):
        # the variants have none.
        return run_trial(
            train,
            0.0,
            "uniform",
            seed,
            select=config.select,
            n_bins=config.n_bins,
            keep_arrays=False,
        )

    return execute


def variants_runs(data: Split, config: StudyConfig, plan: Plan) -> None:
    """Every variant of :data:`VARIANT_ARMS`, with its own baseline and plain smoothing at
    eps=0.1 (same seeds, so the same initialisation and batch order: paired), in the sweep's
    two settings."""
    settings = two_settings(data, config)
    plan.notes.append(
        "Variants: spatially varying label smoothing (SVLS) needs label maps (segmentation) "
        "and is not run on a classification data set."
    )
    for setting, split, epochs, description in settings:
        plan.settings.setdefault(
            setting,
            {
                "description": description,
                "epochs": epochs,
                "num_classes": split.num_classes,
                **split_sizes(split, config),
            },
        )
        for variant in VARIANT_ARMS:
            for seed in config.seeds:
                plan.runs.append(
                    Run(
                        key=f"variants|{setting}|{variant}|{seed}",
                        experiment="variants",
                        setting=setting,
                        params={"variant": variant},
                        seed=seed,
                        execute=_variant_run(split, config, variant, seed, epochs),
                        cost=len(split.x_train) * epochs,
                    )
                )


# The experiments planned here; the others have a module each (labelsmooth.study.registry).
BUILDERS = {
    "sweep": sweep_runs,
    "variants": variants_runs,
}


def timed(run: Run, context: RunContext) -> tuple[Metrics, Arrays | None, float]:
    """Executes ``run``; non-finite metric values become nan. Raises TrainingDivergedError."""
    start = time.perf_counter()
    result, arrays = run.execute(context)
    for name, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            result[name] = float("nan")
    return result, arrays, time.perf_counter() - start

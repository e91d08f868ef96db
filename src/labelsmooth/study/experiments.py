"""The study's experiments, as a plan of independent runs.

Every run trains through the library's own losses (:func:`labelsmooth.cross_entropy`,
:func:`labelsmooth.binary_cross_entropy_with_logits`) and is measured with
:mod:`labelsmooth.metrics`; nothing is re-implemented here. A run returns its metrics and,
for the runs the figures need, arrays that are saved beside the results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..analysis import mutual_information_under_noise
from ..functional import binary_cross_entropy_with_logits, cross_entropy
from .config import StudyConfig
from .data import Split, digits_multilabel, synthetic
from .models import MLP
from .train import TrainConfig, predict_logits, train_classifier

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Run:
    """One unit of work: a key that names it uniquely (and its inputs' fingerprint)."""

    key: str
    experiment: str
    setting: str
    params: dict[str, Any]
    seed: int
    execute: Callable[[RunContext], tuple[dict[str, float], Arrays | None]]

    @property
    def label(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.experiment} [{self.setting}] {shown} seed={self.seed}"


class RunContext:
    """What a run may read: the arrays saved by earlier runs (teachers for students)."""

    def __init__(self, load_arrays: Callable[[str], Arrays]) -> None:
        self.load_arrays = load_arrays


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def classification_metrics(
    logits: Tensor, labels: Tensor, n_bins: int, eps: float | None = None, style: str = "uniform"
) -> dict[str, float]:
    """Accuracy, NLL, ECE (equal-width and equal-mass bins), Brier, AURC, confidence, logit gap."""
    logits = logits.double()
    probs = logits.softmax(-1).numpy()
    target = labels.numpy()
    gaps = metrics.logit_gap(logits.numpy())
    result = {
        "accuracy": float((logits.argmax(-1) == labels).double().mean()),
        "nll": float(cross_entropy(logits, labels, 0.0)),
        "ece": metrics.expected_calibration_error(probs, target, n_bins),
        "ece_quantile": metrics.expected_calibration_error(probs, target, n_bins, "quantile"),
        "brier": metrics.brier_score(probs, target),
        "aurc": metrics.aurc(probs, target),
        "confidence": float(probs.max(-1).mean()),
        "logit_gap": float(np.mean(gaps)),
    }
    if eps is not None and eps > 0:
        result["theoretical_gap"] = metrics.theoretical_gap(eps, logits.shape[-1], style)
    return result


def _train(
    data: Split,
    config: StudyConfig,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    seed: int,
    *,
    width: int | None = None,
    depth: int | None = None,
    epochs: int | None = None,
    x_train: Tensor | None = None,
    y_train: Tensor | None = None,
) -> MLP:
    device = torch.device(config.device)
    torch.manual_seed(seed)
    model = MLP(
        data.num_features,
        data.num_classes,
        width=width or config.width,
        depth=depth or config.depth,
    ).to(device)
    train_config = TrainConfig(
        epochs=epochs or config.epochs, batch_size=config.batch_size, lr=config.lr, seed=seed
    )
    x = (data.x_train if x_train is None else x_train).to(device)
    y = (data.y_train if y_train is None else y_train).to(device)
    return train_classifier(model, loss_fn, x, y, train_config)


def _logits(model: MLP, x: Tensor, device: str) -> Tensor:
    return predict_logits(model, x.to(device)).cpu()


@torch.no_grad()
def _features(model: MLP, x: Tensor, device: str) -> Tensor:
    return model.features(x.to(device)).cpu()


def symmetric_noise(labels: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """Each label is replaced, with probability ``rate``, by a uniformly drawn *other* class."""
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(labels.shape, generator=generator) < rate
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return torch.where(flip, (labels + shift) % num_classes, labels)


# ----------------------------------------------------------------------------------------------
# 1. eps sweep (two settings) with temperature scaling of every model
# ----------------------------------------------------------------------------------------------


def _sweep_run(
    data: Split,
    config: StudyConfig,
    eps: float,
    style: str,
    seed: int,
    epochs: int,
    keep_arrays: bool,
) -> Callable[[RunContext], tuple[dict[str, float], Arrays | None]]:
    def execute(_: RunContext) -> tuple[dict[str, float], Arrays | None]:
        train, x_val, y_val = data.split_validation(config.validation_fraction, seed)

        def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
            return cross_entropy(logits, target, eps, style=style)

        model = _train(train, config, loss_fn, seed, epochs=epochs)
        test_logits = _logits(model, data.x_test, config.device)
        result = classification_metrics(test_logits, data.y_test, config.n_bins, eps, style)
        temperature = metrics.fit_temperature(_logits(model, x_val, config.device), y_val)
        scaled = classification_metrics(test_logits / temperature, data.y_test, config.n_bins)
        result["temperature"] = temperature
        result.update({f"ts_{name}": value for name, value in scaled.items()})
        arrays = None
        if keep_arrays:
            classifier = model.classifier
            arrays = {
                "logits": test_logits.numpy(),
                "labels": data.y_test.numpy(),
                "features": _features(model, data.x_test, config.device).numpy(),
                "weight": classifier.weight.detach().cpu().numpy(),
                "bias": classifier.bias.detach().cpu().numpy(),
                "temperature": np.array(temperature),
            }
        return result, arrays

    return execute


def overconfident_setting(data: Split, config: StudyConfig) -> tuple[Split, int, str]:
    """The second sweep setting: (data, epochs, description)."""
    choice = config.overconfident_data
    if choice == "auto":
        choice = "synthetic" if config.dataset in ("digits", "synthetic") else "subset"
    if choice == "synthetic" and config.dataset != "synthetic":
        return synthetic(seed=0), config.epochs, "the synthetic task (overlapping classes)"
    subset = data.subset_train(config.overconfident_train_size, seed=0)
    return (
        subset,
        config.overconfident_epochs,
        f"{len(subset.x_train)} training examples trained {config.overconfident_epochs} epochs",
    )


def sweep_runs(data: Split, config: StudyConfig) -> list[Run]:
    second, second_epochs, second_description = overconfident_setting(data, config)
    settings = [
        ("main", data, config.epochs, f"{data.name}, all training examples"),
        ("overconfident", second, second_epochs, second_description),
    ]
    runs = []
    for setting, split, epochs, description in settings:
        fingerprint = (
            config.fingerprint(
                "dataset",
                "width",
                "depth",
                "batch_size",
                "lr",
                "validation_fraction",
                "n_bins",
                "max_train",
                "overconfident_train_size",
            )
            + f"-e{epochs}-"
            + split.name.replace("|", "/")
        )
        combos = [(0.0, "uniform")] + [
            (eps, style) for eps in config.eps if eps != 0 for style in config.styles
        ]
        for eps, style in combos:
            for seed in config.seeds:
                shown_style = style if eps != 0 else "none"
                runs.append(
                    Run(
                        key=f"sweep|{setting}|{shown_style}|{eps:g}|{seed}|{fingerprint}",
                        experiment="sweep",
                        setting=setting,
                        params={"style": shown_style, "eps": eps, "data": description},
                        seed=seed,
                        execute=_sweep_run(
                            split,
                            config,
                            eps,
                            style,
                            seed,
                            epochs,
                            keep_arrays=seed == config.seeds[0],
                        ),
                    )
                )
    return runs


# ----------------------------------------------------------------------------------------------
# 3. Noisy labels, positive and negative eps
# ----------------------------------------------------------------------------------------------


def noise_runs(data: Split, config: StudyConfig) -> list[Run]:
    fingerprint = config.fingerprint(
        "dataset", "epochs", "width", "depth", "batch_size", "lr", "max_train"
    )
    runs = []
    for rate in config.noise_rates:
        for eps in config.noise_eps:
            for seed in config.seeds:

                def execute(
                    _: RunContext, rate: float = rate, eps: float = eps, seed: int = seed
                ) -> tuple[dict[str, float], None]:
                    noisy = symmetric_noise(data.y_train, rate, data.num_classes, seed=1000 + seed)

                    def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
                        return cross_entropy(logits, target, eps)

                    model = _train(data, config, loss_fn, seed, y_train=noisy)
                    logits = _logits(model, data.x_test, config.device)
                    result = classification_metrics(logits, data.y_test, config.n_bins)
                    result["flipped"] = float((noisy != data.y_train).double().mean())
                    return result, None

                runs.append(
                    Run(
                        key=f"noise|{rate:g}|{eps:g}|{seed}|{fingerprint}",
                        experiment="noise",
                        setting="main",
                        params={"noise": rate, "eps": eps},
                        seed=seed,
                        execute=execute,
                    )
                )
    return runs


# ----------------------------------------------------------------------------------------------
# 4. Distillation: teachers with and without smoothing, students at several temperatures
# ----------------------------------------------------------------------------------------------


def _mutual_information(model: MLP, data: Split, config: StudyConfig, seed: int) -> float:
    """Mueller et al. (2019) section 4: information about the example in the logit difference
    of two classes, under input noise."""
    first, second = config.projection_classes[:2]
    mask = (data.y_test == first) | (data.y_test == second)
    inputs = data.x_test[mask][:64].to(config.device)
    estimate = mutual_information_under_noise(
        model, inputs, (first, second), noise_std=0.5, num_draws=64, generator=seed
    )
    return float(estimate.mutual_information)


def distillation_runs(data: Split, config: StudyConfig) -> list[Run]:
    fingerprint = config.fingerprint(
        "dataset",
        "epochs",
        "width",
        "depth",
        "batch_size",
        "lr",
        "max_train",
        "student_width",
        "projection_classes",
    )
    runs: list[Run] = []
    teachers = [0.0, config.teacher_eps]
    for seed in config.seeds:
        for teacher_eps in teachers:
            key = f"distill-teacher|{teacher_eps:g}|{seed}|{fingerprint}"

            def teacher(
                _: RunContext, teacher_eps: float = teacher_eps, seed: int = seed
            ) -> tuple[dict[str, float], Arrays]:
                def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
                    return cross_entropy(logits, target, teacher_eps)

                model = _train(data, config, loss_fn, seed)
                test_logits = _logits(model, data.x_test, config.device)
                result = classification_metrics(test_logits, data.y_test, config.n_bins)
                result["mutual_information"] = _mutual_information(model, data, config, seed)
                train_logits = _logits(model, data.x_train, config.device)
                return result, {"train_logits": train_logits.numpy()}

            runs.append(
                Run(key, "distillation", "teacher", {"teacher_eps": teacher_eps}, seed, teacher)
            )

        # Baseline student on the hard labels.
        def hard_student(_: RunContext, seed: int = seed) -> tuple[dict[str, float], None]:
            def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
                return cross_entropy(logits, target, 0.0)

            model = _train(data, config, loss_fn, seed, width=config.student_width, depth=1)
            logits = _logits(model, data.x_test, config.device)
            return classification_metrics(logits, data.y_test, config.n_bins), None

        runs.append(
            Run(
                f"distill-student|hard|0|{seed}|{fingerprint}",
                "distillation",
                "student",
                {"teacher_eps": "labels", "temperature": 0},
                seed,
                hard_student,
            )
        )
        for teacher_eps in teachers:
            teacher_key = f"distill-teacher|{teacher_eps:g}|{seed}|{fingerprint}"
            for temperature in config.temperatures:

                def student(
                    context: RunContext,
                    teacher_key: str = teacher_key,
                    temperature: float = temperature,
                    seed: int = seed,
                ) -> tuple[dict[str, float], None]:
                    teacher_logits = torch.from_numpy(
                        context.load_arrays(teacher_key)["train_logits"]
                    )
                    soft = (teacher_logits / temperature).softmax(-1)
                    index = torch.arange(len(soft))

                    # the loader hands (x, y) batches; y indexes the soft targets of the batch
                    def loss_fn(logits: Tensor, rows: Tensor) -> Tensor:
                        return temperature**2 * cross_entropy(logits / temperature, soft[rows], 0.0)

                    model = _train(
                        data,
                        config,
                        loss_fn,
                        seed,
                        width=config.student_width,
                        depth=1,
                        y_train=index,
                    )
                    logits = _logits(model, data.x_test, config.device)
                    return classification_metrics(logits, data.y_test, config.n_bins), None

                runs.append(
                    Run(
                        f"distill-student|{teacher_eps:g}|{temperature:g}|{seed}|{fingerprint}",
                        "distillation",
                        "student",
                        {"teacher_eps": teacher_eps, "temperature": temperature},
                        seed,
                        student,
                    )
                )
    return runs


# ----------------------------------------------------------------------------------------------
# 5. Binary / multi-label smoothing
# ----------------------------------------------------------------------------------------------


def attribute_task(data: Split, seed: int = 0) -> Split:
    """The multi-label task: the user's multi-label data, digit attributes for digits, else
    five random attributes of the class (each true for about half of the classes)."""
    if data.multilabel:
        return data
    if data.name.startswith("digits") and data.num_classes == 10:
        return digits_multilabel(data)
    generator = np.random.default_rng(seed + 77)
    table = torch.from_numpy((generator.random((data.num_classes, 5)) < 0.5).astype(np.float32))
    from dataclasses import replace

    return replace(
        data,
        name=f"{data.name} attributes",
        y_train=table[data.y_train],
        y_test=table[data.y_test],
        num_classes=5,
        multilabel=True,
        class_names=tuple(f"attribute {i}" for i in range(5)),
    )


def multilabel_runs(data: Split, config: StudyConfig) -> list[Run]:
    task = attribute_task(data)
    fingerprint = config.fingerprint(
        "dataset", "epochs", "width", "depth", "batch_size", "lr", "max_train", "n_bins"
    )
    combos = [(0.0, "uniform")] + [
        (eps, style) for eps in config.multilabel_eps if eps != 0 for style in config.styles
    ]
    runs = []
    for eps, style in combos:
        for seed in config.seeds:

            def execute(
                _: RunContext, eps: float = eps, style: str = style, seed: int = seed
            ) -> tuple[dict[str, float], Arrays | None]:
                def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
                    return binary_cross_entropy_with_logits(logits, target, eps, style=style)

                model = _train(task, config, loss_fn, seed)
                probs = _logits(model, task.x_test, config.device).sigmoid().double().numpy()
                labels = task.y_test.numpy()
                result = {
                    "macro_auroc": metrics.multilabel_auroc(probs, labels),
                    "label_ece": metrics.multilabel_calibration_error(probs, labels, config.n_bins),
                    "mean_prob_positive": float(probs[labels == 1].mean()),
                    "mean_prob_negative": float(probs[labels == 0].mean()),
                    "accuracy": float(((probs > 0.5) == (labels == 1)).mean()),
                }
                arrays = {"probs": probs, "labels": labels} if seed == config.seeds[0] else None
                return result, arrays

            shown_style = style if eps != 0 else "none"
            runs.append(
                Run(
                    f"multilabel|{shown_style}|{eps:g}|{seed}|{fingerprint}",
                    "multilabel",
                    task.name,
                    {"style": shown_style, "eps": eps},
                    seed,
                    execute,
                )
            )
    return runs


def plan(data: Split, config: StudyConfig) -> list[Run]:
    """Every run of the study, in the order they execute (teachers before their students)."""
    builders = {
        "sweep": sweep_runs,
        "noise": noise_runs,
        "distillation": distillation_runs,
        "multilabel": multilabel_runs,
    }
    runs: list[Run] = []
    for name in config.experiments:
        if data.multilabel and name != "multilabel":
            continue  # multi-class experiments need class labels
        runs += builders[name](data, config)
    return runs


def timed(run: Run, context: RunContext) -> tuple[dict[str, float], Arrays | None, float]:
    start = time.perf_counter()
    result, arrays = run.execute(context)
    for name, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            result[name] = float("nan")
    return result, arrays, time.perf_counter() - start

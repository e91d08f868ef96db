"""The binary / multi-label experiment: binary label smoothing (both styles and one-sided, on the
negatives only) against plain binary cross-entropy, at several learning rates.

The task must be off the AUROC ceiling and must not be a function of the class (the old task,
attributes of each digit's class, sat at AUROC 0.998 and a network learnt it from the class
alone). For the built-in data sets the attributes are built from each example's own features:

* **digits** (8x8 images, 64 standardised pixel features): six attributes, each "the mean of
  the standardised pixels in a region of the image is above its median over the training pool"
  for the regions top half, bottom half, left half, right half, centre 4x4 and border ring;
* **synthetic**: one attribute per group of four consecutive features, "the mean of the group
  is above its median over the training pool".

Two images of one digit can have different attributes. The training pool is cut to
:data:`TRAIN_POOL` examples (seed 0) and a fraction :data:`ATTRIBUTE_NOISE` of its attribute
entries are flipped (exactly that many, drawn with seed 0); the validation split is drawn from
this noisy pool per seed, so validation labels are noisy too; the test labels stay clean. A
user's own multi-label ``.npz`` is used as it is (no subset, no noise); a class-labelled user
data set has no attributes, and the experiment is skipped with a note.

Arms, each crossed with every learning rate of ``multilabel_lrs`` (setting ``lr=<lr>``): the
baseline (a = 0), ``labelsmooth.binary_cross_entropy_with_logits(eps=a, style=...)`` for each
style ("uniform": 0 -> a/2, 1 -> 1 - a/2; "others": 0 -> a, 1 -> 1 - a) and one-sided smoothing
("negatives": 0 -> a, 1 stays 1; the soft target is built here and passed to the same loss with
eps = 0), for every a > 0 of ``multilabel_eps``. Each arm is compared, paired by seed, with the
baseline at the same learning rate; the arm chosen per learning rate is the one with the lowest
validation BCE (noisy validation labels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..functional import binary_cross_entropy_with_logits
from .config import StudyConfig
from .data import Split
from .exp_lr import late_epochs
from .experiments import Plan, Run, RunContext, _fit, _logits, seed_data, split_sizes
from .findings import Findings, Group, Row, _words, chance_count, choose, select, validation_margin
from .outputs import Arrays, Metrics
from .sections import LoadArrays, SaveFigure, Section, Table
from .stats import format_interval, format_number
from .train import multilabel_score

EXPERIMENT = "multilabel"
# Training pool (train + validation) of the built-in attribute tasks, and the fraction of its
# attribute entries flipped. Chosen so that the baseline's macro AUROC on the clean test set is
# well below 1 (about 0.9 on digits; measured when this was written).
TRAIN_POOL = 400
ATTRIBUTE_NOISE = 0.2
ONE_SIDED = "negatives"
STYLE_NAMES = {
    "none": "baseline (a=0)",
    "uniform": "uniform",
    "others": "others",
    ONE_SIDED: "one-sided (negatives only)",
}
COMPARED = ("macro_auroc", "label_ece", "nll", "accuracy")

PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    (EXPERIMENT, "*"): {
        "lr": (),
        "eps": (),
        "style": ("none", "uniform", "others", ONE_SIDED),
    },
}


# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------


def _digit_regions() -> dict[str, np.ndarray]:
    """Masks (64,) of regions of an 8x8 image, row-major as the digits' features are."""
    grid = np.zeros((8, 8), dtype=bool)
    rows, cols = np.indices((8, 8))
    regions = {
        "top half": rows < 4,
        "bottom half": rows >= 4,
        "left half": cols < 4,
        "right half": cols >= 4,
        "centre 4x4": (rows >= 2) & (rows < 6) & (cols >= 2) & (cols < 6),
        "border ring": (rows == 0) | (rows == 7) | (cols == 0) | (cols == 7),
    }
    return {name: (grid | mask).ravel() for name, mask in regions.items()}


def feature_attributes(
    x_pool: Tensor, x_test: Tensor, masks: dict[str, np.ndarray]
) -> tuple[Tensor, Tensor]:
    """(pool attributes, test attributes): attribute j is 1 where the mean of the features in
    ``masks[j]`` is above its median over ``x_pool`` (the threshold never sees test data)."""
    pool, test = [], []
    for mask in masks.values():
        index = torch.from_numpy(np.flatnonzero(mask))
        score_pool = x_pool[:, index].double().mean(1)
        score_test = x_test[:, index].double().mean(1)
        threshold = score_pool.median()
        pool.append(score_pool > threshold)
        test.append(score_test > threshold)
    return torch.stack(pool, 1).float(), torch.stack(test, 1).float()


def flip_attributes(labels: Tensor, rate: float, seed: int) -> Tensor:
    """``labels`` (N, L) 0/1 with exactly round(rate * N * L) entries flipped, drawn with
    ``seed``."""
    flat = labels.reshape(-1).clone()
    count = round(rate * flat.numel())
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(flat.numel(), generator=generator)[:count]
    flat[chosen] = 1.0 - flat[chosen]
    return flat.reshape(labels.shape)


def one_sided_targets(labels: Tensor, eps: float) -> Tensor:
    """One-sided (negatives-only) smoothing: 0 -> eps, 1 stays 1."""
    labels = labels.float()
    return labels + (1.0 - labels) * eps


def attribute_task(
    data: Split, *, pool: int = TRAIN_POOL, noise: float = ATTRIBUTE_NOISE
) -> tuple[Split | None, str]:
    """The multi-label task and its honest description, or (None, why it is skipped)."""
    if data.multilabel:
        return data, f"{data.name}: the data set's own labels, used as they are"
    if data.name.startswith("digits") and data.num_features == 64:
        masks = _digit_regions()
        what = (
            "six attributes of each image: the mean of its standardised pixels in a region "
            f"({', '.join(masks)}) above that region's median over the training pool"
        )
    elif data.name.startswith("synthetic") and data.num_features >= 4:
        groups = data.num_features // 4
        masks = {}
        for g in range(groups):
            mask = np.zeros(data.num_features, dtype=bool)
            mask[4 * g : 4 * g + 4] = True
            masks[f"features {4 * g}-{4 * g + 3}"] = mask
        what = (
            f"{groups} attributes of each example: the mean of a group of four features above "
            "its median over the training pool"
        )
    else:
        return None, (
            f"The binary / multi-label experiment is skipped: {data.name} has class labels, "
            "not multi-label targets (give an .npz with (N, L) 0/1 labels to study them)."
        )
    subset = data.subset_train(min(pool, len(data.x_train)), seed=0)
    y_pool, y_test = feature_attributes(subset.x_train, data.x_test, masks)
    noisy = flip_attributes(y_pool, noise, seed=0)
    task = replace(
        subset,
        name=f"{data.name} attributes",
        y_train=noisy,
        y_test=y_test,
        num_classes=len(masks),
        multilabel=True,
        class_names=tuple(masks),
    )
    description = (
        f"{data.name}: {what}. Not a function of the class: two examples of one class can "
        f"have different attributes. The training pool is {len(subset.x_train)} examples "
        f"(a random subset, seed 0), and {noise:.0%} of its attribute entries are flipped "
        "(training and validation labels are noisy); the test labels are clean. The clean "
        "attributes are a function of the input, so a perfect model would reach AUROC 1"
    )
    return task, description


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def targets_of(labels: Tensor, eps: float, style: str) -> tuple[Tensor, float, str]:
    """(target, eps, style) to pass to the library loss for an arm."""
    if style == ONE_SIDED:
        return one_sided_targets(labels, eps), 0.0, "uniform"
    return labels, eps, "uniform" if style == "none" else style


def smoothed_levels(eps: float, style: str) -> tuple[float, float]:
    """The (negative, positive) targets of an arm."""
    if style == "uniform":
        return eps / 2, 1 - eps / 2
    if style == "others":
        return eps, 1 - eps
    if style == ONE_SIDED:
        return eps, 1.0
    return 0.0, 1.0


def _execute(task: Split, config: StudyConfig, lr: float, eps: float, style: str, seed: int):
    def execute(_: RunContext) -> tuple[Metrics, Arrays | None]:
        run_config = replace(config, lr=lr)
        part = seed_data(task, run_config, seed)

        def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
            soft, rate, shown = targets_of(target, eps, style)
            return binary_cross_entropy_with_logits(logits, soft, rate, style=shown)

        trained = _fit(part, run_config, loss_fn, seed, multilabel=True)
        test_logits = _logits(trained.model, part.x_test, config.device).double()
        probs = test_logits.sigmoid().numpy()
        labels = part.y_test.numpy()
        val_logits = _logits(trained.model, part.x_val, config.device)
        val_accuracy, val_nll = multilabel_score(val_logits, part.y_val)
        per_auroc = metrics.multilabel_auroc(probs, labels, average="none")
        per_ece = metrics.multilabel_calibration_error(probs, labels, config.n_bins, average="none")
        result: Metrics = {
            "macro_auroc": metrics.multilabel_auroc(probs, labels),
            "label_ece": metrics.multilabel_calibration_error(probs, labels, config.n_bins),
            "nll": float(
                torch.nn.functional.binary_cross_entropy_with_logits(
                    test_logits, part.y_test.double()
                )
            ),
            "accuracy": float(((probs > 0.5) == (labels == 1)).mean()),
            "mean_prob_positive": float(probs[labels == 1].mean()),
            "mean_prob_negative": float(probs[labels == 0].mean()),
            "val_accuracy": val_accuracy,
            "val_nll": val_nll,
            "best_epoch": float(trained.best_epoch),
            "epochs": float(trained.epochs),
        }
        for j, (a, e) in enumerate(zip(per_auroc, per_ece, strict=True)):
            result[f"auroc_{j}"] = float(a)
            result[f"label_ece_{j}"] = float(e)
        arrays = (
            {"probs": probs.astype(np.float32), "labels": labels.astype(np.float32)}
            if seed == config.seeds[0]
            else None
        )
        return result, arrays

    return execute


def arms(config: StudyConfig) -> list[tuple[float, str]]:
    """(eps, style) of every arm; the baseline first."""
    positive = [eps for eps in config.multilabel_eps if eps > 0]
    styles = [s for s in config.styles if s in ("uniform", "others")]
    return [(0.0, "none")] + [(eps, s) for eps in positive for s in (*styles, ONE_SIDED)]


def setting_name(lr: float) -> str:
    return f"lr={lr:g}"


def build(data: Split, config: StudyConfig, plan: Plan) -> None:
    task, description = attribute_task(data)
    if task is None:
        plan.notes.append(description)
        return
    plan.settings[EXPERIMENT] = {
        "description": description,
        "labels": list(task.class_names),
        **split_sizes(task, config),
    }
    if {"uniform", "others"} <= set(config.styles):
        doubled = [e for e in config.multilabel_eps if e > 0 and 2 * e in config.multilabel_eps]
        if doubled:
            plan.notes.append(
                "Binary targets: style 'others' at a (0 -> a, 1 -> 1 - a) gives the same "
                "targets as 'uniform' at 2a, so the multi-label arms 'others' at "
                + ", ".join(f"{e:g}" for e in doubled)
                + " train the same models as 'uniform' at twice that a."
            )
    for lr in config.multilabel_lrs:
        for eps, style in arms(config):
            for seed in config.seeds:
                plan.runs.append(
                    Run(
                        key=f"{EXPERIMENT}|{setting_name(lr)}|{style}|{eps:g}|{seed}",
                        experiment=EXPERIMENT,
                        setting=setting_name(lr),
                        params={"lr": lr, "eps": eps, "style": style},
                        seed=seed,
                        execute=_execute(task, config, lr, eps, style, seed),
                        cost=len(task.x_train) * config.epochs,
                    )
                )


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def arm_label(params: dict[str, Any]) -> str:
    style = params.get("style", "none")
    if style == "none" or params.get("eps", 0) == 0:
        return STYLE_NAMES["none"]
    low, high = smoothed_levels(float(params["eps"]), style)
    return f"a={params['eps']:g} {STYLE_NAMES.get(style, style)} (0 -> {low:g}, 1 -> {high:g})"


def _short(params: dict[str, Any]) -> str:
    if params.get("style", "none") == "none":
        return "a=0"
    return f"a={params['eps']:g} {params['style']}"


def _panel(params: dict[str, Any]) -> str:
    if params.get("style", "none") == "none":
        return "baseline (a=0)"
    return f"a={params['eps']:g} {'one-sided' if params['style'] == ONE_SIDED else params['style']}"


def _diverged_note(group: Group) -> str:
    return (
        f"{len(group.diverged)} of {len(group.diverged) + group.n_seeds} seeds diverged"
        if (group.diverged)
        else ""
    )


def _eps_of(group: Group) -> float:
    return float(group.params["eps"])


def equivalent_arms(at_lr: Sequence[Group]) -> dict[int, Group]:
    """Arms of one learning rate trained on the same binary targets (style 'others' at a gives
    0 -> a, 1 -> 1 - a, as 'uniform' at 2a does): ``id(arm) -> the arm it repeats``, the one
    with the smallest a (the validation choice's tie rule) standing for both."""
    first: dict[tuple[float, float], Group] = {}
    out: dict[int, Group] = {}
    ordered = sorted(
        (g for g in at_lr if g.params.get("style", "none") != "none" and _eps_of(g) > 0),
        key=_eps_of,
    )
    for group in ordered:
        low, high = smoothed_levels(_eps_of(group), str(group.params["style"]))
        key = (round(low, 12), round(high, 12))
        if key in first:
            out[id(group)] = first[key]
        else:
            first[key] = group
    return out


def largest_difference(a: Group, b: Group, names: Sequence[str]) -> float:
    """The largest |difference| between two groups' recorded values on ``names``, over the
    seeds both finished (nan when they share none)."""
    seeds = sorted(set(a.metrics) & set(b.metrics))
    diffs = [
        abs(a.metrics[s].get(m, math.nan) - b.metrics[s].get(m, math.nan))
        for s in seeds
        for m in names
    ]
    diffs = [d for d in diffs if not math.isnan(d)]
    return max(diffs) if diffs else math.nan


def _margin(chosen: Group, other: Group, seeds: Sequence[int]) -> str:
    c, seeds_text = validation_margin(chosen, other, seeds, "val_nll")
    return f"{format_number(c.mean_delta, 4, sign=True)} ({format_interval(c, 4)}; {seeds_text})"


def choice_margins(
    chosen: Group, at_lr: Sequence[Group], twins: dict[int, Group], seeds: Sequence[int]
) -> tuple[str, Group | None]:
    """The validation choice's mean validation BCE minus the runner-up's (the arm the choice
    would have picked without the chosen arm and its equivalents) and, when the baseline is
    neither, minus the baseline's, each paired by seed; and the runner-up."""
    same = {id(chosen)} | {i for i, g in twins.items() if g is chosen}
    rest = [g for g in at_lr if id(g) not in same]
    runner = choose(rest, "val_nll", prefer=_eps_of)
    if runner is None:
        return "", None
    text = (
        f"validation BCE minus the runner-up's ({_short(runner.params)}), paired by seed: "
        f"{_margin(chosen, runner, seeds)}"
    )
    if round(chosen.mean("val_nll"), 12) == round(runner.mean("val_nll"), 12):
        text += "; an exact tie in the mean, which goes to the smaller a"
    baseline = next((g for g in at_lr if g.params.get("style") == "none"), None)
    if baseline is not None and baseline not in (chosen, runner):
        text += f"; minus the baseline's: {_margin(chosen, baseline, seeds)}"
    return text, runner


def analyse(findings: Findings, groups: Sequence[Group]) -> None:
    runs = select(groups, EXPERIMENT)
    if not runs:
        return
    lrs = sorted({float(g.params["lr"]) for g in runs})
    tables: list[Table] = []
    sentences: list[str] = []
    summary: dict[str, Any] = {"metric_for_choice": "val_nll", "per_lr": {}}
    cells: list[tuple[float, Group, Any]] = []  # (lr, arm, AUROC comparison)
    intervals = significant = 0
    per_label: dict[float, list[Group]] = {}  # lr -> [baseline, chosen arm]
    chosen_ece: list[tuple[float, str, Any]] = []  # (lr, chosen arm, its ECE comparison)
    diverged_total = 0
    repeated = repeated_significant = 0  # intervals of arms that repeat an equivalent arm
    # (repeating arm label, arm label, largest |difference| of their recorded results) per lr
    twins_found: list[tuple[float, str, str, float]] = []
    twin_ids: set[int] = set()
    for lr in lrs:
        setting = setting_name(lr)
        at_lr = [g for g in runs if float(g.params["lr"]) == lr]
        diverged_total += sum(len(g.diverged) for g in at_lr)
        baseline = next((g for g in at_lr if g.params.get("style") == "none"), None)
        if baseline is None:
            continue
        chosen = choose(at_lr, "val_nll", prefer=lambda g: float(g.params["eps"]))
        twins = equivalent_arms(at_lr)
        twin_ids |= set(twins)
        for group in at_lr:
            if id(group) in twins:
                twins_found.append(
                    (
                        lr,
                        _short(group.params),
                        _short(twins[id(group)].params),
                        largest_difference(group, twins[id(group)], (*COMPARED, "val_nll")),
                    )
                )
        per_label[lr] = [g for g in (baseline, chosen) if g is not None]
        rows: list[Row] = []
        for group in at_lr:
            comparisons: dict[str, Any] = {}
            for metric in COMPARED:
                if group is baseline:
                    comparisons[metric] = None
                    continue
                comparisons[metric] = findings.compare(
                    EXPERIMENT,
                    setting,
                    group,
                    baseline,
                    metric,
                    arm_label=f"{_short(group.params)} at {setting}",
                    baseline_label=f"a=0 at {setting}",
                    chosen=group is chosen,
                )
                intervals += 1
                significant += comparisons[metric].significant
                if id(group) in twins:
                    repeated += 1
                    repeated_significant += comparisons[metric].significant
            if group is not baseline and id(group) not in twins:
                cells.append((lr, group, comparisons["macro_auroc"]))
            notes = [n for n in (_diverged_note(group),) if n]
            if id(group) in twins:
                notes.append(
                    f"same targets as {_short(twins[id(group)].params)}: the same model; its "
                    "intervals are not counted again"
                )
            if group is chosen:
                notes.insert(0, "chosen on validation BCE")
            rows.append(
                Row(
                    arm_label(group.params),
                    {
                        m: group.mean(m)
                        for m in (*COMPARED, "val_nll", "mean_prob_positive", "best_epoch")
                    },
                    comparisons,
                    "; ".join(notes),
                )
            )
        tables.append(
            Table(
                f"Learning rate {lr:g}: each arm against the baseline at the same learning rate "
                "(clean test labels)",
                "arm",
                [*COMPARED, "val_nll", "mean_prob_positive", "best_epoch"],
                rows,
                {
                    "nll": ("BCE", 4),
                    "accuracy": ("per-label accuracy", 3),
                    "val_nll": ("validation BCE (noisy)", 4),
                    "mean_prob_positive": ("mean p on positives", 3),
                    "best_epoch": ("kept epoch", 1),
                },
            )
        )
        level = baseline.mean("macro_auroc")
        line = (
            f"At learning rate {lr:g} the baseline's macro AUROC on the clean test set was "
            f"{level:.3f}; chosen on validation BCE (noisy labels): {arm_label(chosen.params)}"
            if chosen is not None
            else f"At learning rate {lr:g} no arm finished"
        )
        margins, runner = (
            ("", None) if chosen is None else choice_margins(chosen, at_lr, twins, findings.seeds)
        )
        if margins:
            line += f" (its {margins})"
        if chosen is not None and chosen is not baseline:
            row = next(r for r in rows if r.label == arm_label(chosen.params))
            line += (
                f"; against the baseline at this learning rate it "
                f"{_words(row.comparisons['macro_auroc'], 'macro_auroc')}, "
                f"{_words(row.comparisons['label_ece'], 'label_ece')} and "
                f"{_words(row.comparisons['nll'], 'nll')} (NLL: the mean binary cross-entropy)"
            )
        elif chosen is baseline:
            line += ", so no smoothing was chosen at this learning rate"
        sentences.append(line + ".")
        if chosen is not None:
            chosen_row = next(r for r in rows if r.label == arm_label(chosen.params))
            chosen_ece.append((lr, _short(chosen.params), chosen_row.comparisons.get("label_ece")))
        summary["per_lr"][f"{lr:g}"] = {
            "lr": lr,
            "baseline_macro_auroc": level,
            "chosen": None
            if chosen is None
            else {
                "eps": float(chosen.params["eps"]),
                "style": chosen.params["style"],
                "label": arm_label(chosen.params),
                "val_nll": chosen.mean("val_nll"),
                "macro_auroc": chosen.mean("macro_auroc"),
                "per_label_auroc": _per_label(chosen, "auroc"),
                "per_label_ece": _per_label(chosen, "label_ece"),
                "selected_on": "validation",
            },
            "runner_up": None
            if chosen is None or runner is None
            else {
                "label": arm_label(runner.params),
                "val_nll": runner.mean("val_nll"),
                "val_nll_margin": _margin_dict(chosen, runner, findings.seeds),
                "selected_on": "validation",
            },
            "baseline_per_label_auroc": _per_label(baseline, "auroc"),
            "baseline_per_label_ece": _per_label(baseline, "label_ece"),
            "diverged": {_short(g.params): len(g.diverged) for g in at_lr if g.diverged},
        }
    sentences.extend(_sign_sentences(cells, lrs))
    late = late_epochs(
        runs, lambda g: f"{float(g.params['lr']):g}", lambda g: g.params.get("style") == "none"
    )
    if late:
        sentences.append(late)
    change = _effect_change(findings, runs, lrs, twin_ids)
    if change:
        stands_for: dict[str, list[str]] = {}
        for _, arm, other, _ in twins_found:
            if arm not in stands_for.setdefault(other, []):
                stands_for[other].append(arm)
        parts = [
            f"{_panel(params)}"
            + (
                f" (= {', '.join(stands_for[_short(params)])}, the same targets)"
                if _short(params) in stands_for
                else ""
            )
            + f": {format_number(c.mean_delta, 4, sign=True)} "
            f"({format_interval(c, 4)}{', excludes 0' if c.significant else ''})"
            for params, c in change
        ]
        sentences.append(
            f"Change in each arm's effect on macro AUROC (arm minus baseline, paired by seed) "
            f"from learning rate {lrs[0]:g} to {lrs[-1]:g}: "
            + "; ".join(parts)
            + f" ({len(change)} intervals; {chance_count(len(change))} would exclude 0 by "
            "chance alone)."
        )
        summary["auroc_effect_change_lowest_to_highest_lr"] = {
            _short(params): {
                "mean_delta": c.mean_delta,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "significant": c.significant,
            }
            for params, c in change
        }
    if twins_found:
        sentences.append(_twin_sentence(twins_found))
    distinct = intervals - repeated
    if repeated:
        sentences.append(
            f"The tables hold {intervals} intervals (arms x learning rates x {len(COMPARED)} "
            f"metrics); {repeated} of them are those of an arm that repeats an equivalent arm. "
            f"Counting those once, {distinct} distinct intervals, so "
            f"{chance_count(distinct)} would exclude 0 by chance alone even if no arm differed "
            f"from its baseline; {significant - repeated_significant} do."
        )
    else:
        sentences.append(
            f"The tables hold {intervals} intervals (arms x learning rates x {len(COMPARED)} "
            f"metrics), so {chance_count(intervals)} would exclude 0 by chance alone even if no "
            f"arm differed from its baseline; {significant} do."
        )
    sentences.append(
        f"{diverged_total} runs diverged (non-finite loss or outputs); they are left out of "
        "every mean and comparison and counted in the tables' notes."
        if diverged_total
        else "No run diverged."
    )
    summary["intervals"] = intervals
    summary["significant"] = significant
    summary["distinct_intervals"] = distinct
    summary["distinct_significant"] = significant - repeated_significant
    summary["equivalent_arms"] = [
        {"lr": lr, "arm": arm, "same_as": other, "largest_difference": None if math.isnan(d) else d}
        for lr, arm, other, d in twins_found
    ]
    summary["diverged_runs"] = diverged_total
    findings.experiments[EXPERIMENT] = summary
    findings.sections[EXPERIMENT] = {
        "tables": tables,
        "sentences": sentences,
        "groups": runs,
        "lrs": lrs,
        "per_label": per_label,
        "chosen_ece": chosen_ece,
        # where the noisy-validation sentence goes (after the per-learning-rate sentences)
        "per_lr_sentences": len(lrs),
    }


def _effect_change(
    findings: Findings, runs: Sequence[Group], lrs: list[float], twins: set[int] = frozenset()
) -> list[tuple[dict[str, Any], Any]]:
    """Per arm: (arm minus baseline) at the highest learning rate minus the same at the lowest,
    on macro AUROC, paired by seed (a difference of paired differences); an arm that repeats
    an equivalent arm (``twins``: ids of such groups) is left out."""
    if len(lrs) < 2:
        return []
    low, high = lrs[0], lrs[-1]
    found = {(float(g.params["lr"]), float(g.params["eps"]), g.params["style"]): g for g in runs}
    out = []
    for (lr, eps, style), arm in found.items():
        if lr != low or style == "none" or id(arm) in twins:
            continue
        parts = [found.get(key) for key in ((low, 0.0, "none"), (high, eps, style))]
        parts.append(found.get((high, 0.0, "none")))
        if any(p is None for p in parts):
            continue
        base_low, arm_high, base_high = parts
        effects = []
        for at, a, b in ((low, arm, base_low), (high, arm_high, base_high)):
            metrics = {}
            for seed in findings.seeds:
                x, y = a.values("macro_auroc", [seed])[0], b.values("macro_auroc", [seed])[0]
                metrics[seed] = {"macro_auroc": math.nan if x is None or y is None else x - y}
            effects.append(Group(EXPERIMENT, setting_name(at), dict(arm.params), metrics))
        comparison = findings.compare(
            EXPERIMENT,
            f"lr={low:g} vs lr={high:g}",
            effects[1],
            effects[0],
            "macro_auroc",
            arm_label=f"effect of {_short(arm.params)} (minus a=0) at lr={high:g}",
            baseline_label=f"effect of {_short(arm.params)} (minus a=0) at lr={low:g}",
        )
        out.append((dict(arm.params), comparison))
    return out


def _margin_dict(chosen: Group, other: Group, seeds: Sequence[int]) -> dict[str, Any]:
    c, seeds_text = validation_margin(chosen, other, seeds, "val_nll")
    return {
        "mean_delta": c.mean_delta,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "significant": c.significant,
        "seeds": seeds_text,
    }


def _twin_sentence(found: list[tuple[float, str, str, float]]) -> str:
    """Which arms train on the same targets, and whether their recorded results agree."""
    pairs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for lr, arm, other, diff in found:
        pairs.setdefault((other, arm), []).append((lr, diff))
    parts = []
    for (other, arm), entries in pairs.items():
        diffs = [d for _, d in entries if not math.isnan(d)]
        if diffs and max(diffs) == 0:
            agree = "their recorded results are identical on every seed"
        elif diffs:
            agree = (
                "their recorded results differ by at most "
                f"{format_number(max(diffs), 4)} (the same training, run twice)"
            )
        else:
            agree = "no seed finished in both"
        lrs_text = ", ".join(f"{lr:g}" for lr, _ in entries)
        parts.append(f"{other} and {arm} at learning rate {lrs_text} ({agree})")
    return (
        "Style 'others' at a gives the same binary targets as 'uniform' at 2a (0 -> a, "
        "1 -> 1 - a), so these arms are the same model: "
        + "; ".join(parts)
        + ". Both rows are shown; the count of intervals and the list of changes across "
        "learning rates count each such pair once."
    )


def _per_label(group: Group, prefix: str) -> list[float]:
    out = []
    j = 0
    while any(f"{prefix}_{j}" in m for m in group.metrics.values()):
        value = group.mean(f"{prefix}_{j}")
        out.append(None if math.isnan(value) else value)
        j += 1
    return out


def _sign_sentences(cells: list[tuple[float, Group, Any]], lrs: list[float]) -> list[str]:
    """For each arm seen at more than one learning rate: its AUROC difference from the
    baseline at each learning rate, and whether intervals of opposite sign exclude 0."""
    by_arm: dict[tuple[float, str], list[tuple[float, Any]]] = {}
    for lr, group, comparison in cells:
        key = (float(group.params["eps"]), str(group.params["style"]))
        by_arm.setdefault(key, []).append((lr, comparison))
    if len(lrs) < 2:
        return []
    flips, steady = [], []
    for (eps, style), entries in by_arm.items():
        raised = [lr for lr, c in entries if c.significant and c.mean_delta > 0]
        lowered = [lr for lr, c in entries if c.significant and c.mean_delta < 0]
        label = arm_label({"eps": eps, "style": style})
        if raised and lowered:
            flips.append(
                f"{label} raised macro AUROC at learning rate "
                f"{', '.join(f'{lr:g}' for lr in raised)} and lowered it at "
                f"{', '.join(f'{lr:g}' for lr in lowered)}"
            )
        else:
            steady.append(label)
    lines = []
    if flips:
        lines.append(
            "The direction of the effect on macro AUROC depended on the learning rate (both "
            "intervals exclude 0): " + "; ".join(flips) + "."
        )
    else:
        lines.append(
            "No arm had macro AUROC intervals excluding 0 in opposite directions at two "
            "learning rates; the mean differences per learning rate are in the tables."
        )
    return lines


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


# The checkpoint rule of each ``select`` (study/train.py, with multilabel_score as the score).
_SELECT = {
    "accuracy": "per-label accuracy at 0.5, ties by lower BCE, then the earlier epoch",
    "nll": "the lowest BCE",
    "final": "none: select=final keeps the final epoch",
}
# A causal clause that older studies wrote into the task's description (study.json); it was
# never tested, so the report leaves it out.
_UNTESTED_CLAUSE = "; the small, noisy training set is what keeps the baseline below it"
_NOISE = re.compile(r"(\d+(?:\.\d+)?)% of its attribute entries are flipped")


def _description(study: dict[str, Any]) -> str:
    info = study.get("settings", {}).get(EXPERIMENT, {})
    return str(info.get("description", "multi-label attributes")).replace(_UNTESTED_CLAUSE, "")


def noise_rate(description: str) -> float | None:
    """The fraction of training/validation attribute entries flipped, read from the task's
    recorded description (None for a user's own labels, which are used as they are)."""
    found = _NOISE.search(description)
    return None if found is None else float(found.group(1)) / 100


def noisy_validation_sentence(rate: float | None, chosen_ece: list[tuple[float, str, Any]]) -> str:
    """Why choosing on noisy validation BCE leans toward smoothing, with the clean-test ECE of
    each learning rate's chosen arm against the baseline (``chosen_ece``: (lr, arm label,
    per-label ECE comparison or None when the baseline was chosen))."""
    if not rate:
        return ""
    parts = []
    for lr, label, comparison in chosen_ece:
        if comparison is None:
            parts.append(f"at {lr:g} the baseline was chosen")
        else:
            parts.append(f"at {lr:g} the chosen {label} {_words(comparison, 'label_ece')}")
    low, high = rate, 1 - rate
    text = (
        f"The validation labels are noisy ({rate:.0%} of entries flipped at random, whatever "
        "the input), so even a model that knew every clean attribute exactly would have its "
        f"lowest expected validation BCE by predicting {low:g} and {high:g} rather than 0 and "
        f"1 (the targets of style 'others' at a = {rate:g}): choosing on noisy validation BCE "
        "leans toward smoothing by construction, and the clean test labels are the check"
    )
    if parts:
        text += "; per-label ECE on them, against the baseline: " + "; ".join(parts)
    return text + "."


def _intro(study: dict[str, Any], lrs: list[float]) -> str:
    info = study.get("settings", {}).get(EXPERIMENT, {})
    config = study.get("config", {})
    select = config.get("select", "accuracy")
    rule = _SELECT.get(select, str(select))
    return (
        f"Task: {_description(study)}. "
        f"n_train {info.get('n_train', '?')}, n_val {info.get('n_val', '?')}, n_test "
        f"{info.get('n_test', '?')}. The study's MLP (width {config.get('width', '?')}, depth "
        f"{config.get('depth', '?')}) with one sigmoid output per attribute, trained with Adam "
        f"for up to {config.get('epochs', '?')} epochs at each learning rate "
        f"({', '.join(f'{lr:g}' for lr in lrs)}); the kept epoch is the best on validation "
        f"(select={select}: {rule}; on the validation labels, noisy like the training "
        "labels). Arms: the "
        "baseline (a = 0); labelsmooth.binary_cross_entropy_with_logits with eps = a in style "
        "'uniform' (0 -> a/2, 1 -> 1 - a/2) and 'others' (0 -> a, 1 -> 1 - a); and one-sided "
        "smoothing of the negatives only (0 -> a, 1 stays 1), a soft target passed to the same "
        "loss with eps = 0. Test metrics on the clean labels: macro AUROC, per-label ECE "
        "(macro average of each label's ECE on the positive-class probability), BCE and "
        "per-label accuracy at 0.5. Each arm is compared with the baseline at the same "
        "learning rate, paired by seed (Student-t 95% intervals); per learning rate the arm "
        "with the lowest mean validation BCE (noisy labels) is the validation choice."
    )


def section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section | list[Section] | None:
    found = findings.sections.get(EXPERIMENT)
    if found is None:
        return None
    figures = []
    for lr in found["lrs"]:
        figure = _histograms(found["groups"], lr, load_arrays)
        if figure is not None:
            figures.append(
                save_figure(
                    f"multilabel_outputs_lr{lr:g}",
                    figure,
                    f"Output probabilities on the test set at learning rate {lr:g} (first seed, "
                    "every label), with each arm's smoothed targets marked.",
                )
            )
    names = study.get("settings", {}).get(EXPERIMENT, {}).get("labels") or []
    sentences = list(found["sentences"])
    bias = noisy_validation_sentence(noise_rate(_description(study)), found.get("chosen_ece", []))
    if bias:
        sentences.insert(found.get("per_lr_sentences", 0), bias)
    return Section(
        key=EXPERIMENT,
        title="Binary / multi-label smoothing across learning rates",
        intro=_intro(study, found["lrs"]),
        sentences=sentences,
        tables=[*found["tables"], *_per_label_tables(found["per_label"], names)],
        figures=figures,
    )


def _per_label_tables(per_label: dict[float, list[Group]], names: list[str]) -> list[Table]:
    """Per-label test AUROC and ECE (means over seeds) of the baseline and the validation
    choice at each learning rate; the intervals are in the tables above (macro averages)."""
    tables = []
    for prefix, what in (("auroc", "AUROC"), ("label_ece", "ECE")):
        rows, columns = [], []
        for lr, groups in per_label.items():
            unique = [g for i, g in enumerate(groups) if all(g is not h for h in groups[:i])]
            for group in unique:
                values = _per_label(group, prefix)
                columns = columns or [f"{prefix}_{j}" for j in range(len(values))]
                note = "baseline" if group is groups[0] else "chosen on validation BCE"
                rows.append(
                    Row(
                        f"lr={lr:g}: {arm_label(group.params)}",
                        {
                            f"{prefix}_{j}": (math.nan if v is None else v)
                            for j, v in enumerate(values)
                        },
                        {},
                        note,
                    )
                )
        if not columns:
            continue
        labels = {
            column: (f"{what} {names[j] if j < len(names) else j}", 3)
            for j, column in enumerate(columns)
        }
        tables.append(
            Table(
                f"Per-label test {what} (means over seeds) of the baseline and the validation "
                "choice at each learning rate",
                "model",
                columns,
                rows,
                labels,
            )
        )
    return tables


def _histograms(groups: Sequence[Group], lr: float, load_arrays: LoadArrays) -> Any:
    from .. import plots

    values, markers = {}, {}
    for group in groups:
        if float(group.params["lr"]) != lr or group.first_key() is None:
            continue
        try:
            arrays = load_arrays(group.first_key())
        except (FileNotFoundError, KeyError):
            continue
        if "probs" not in arrays:
            continue
        name = _panel(group.params)
        values[name] = np.asarray(arrays["probs"]).ravel()
        if group.params.get("style") != "none":
            low, high = smoothed_levels(float(group.params["eps"]), group.params["style"])
            markers[name] = [low, high]
    if not values:
        return None
    return plots.small_multiples_histogram(
        values,
        markers=markers,
        xlabel="output probability",
        marker_label="targets",
        title=f"Multi-label outputs (test set), learning rate {lr:g}",
    )

"""The learning-rate experiment: is the right eps a property of the learning rate?

A grid of learning rates (``lr_grid``) x eps (``lr_eps``, uniform style; eps 0 is each learning
rate's own baseline) in the sweep's two settings, every run recording its early-stopped (best
validation epoch) and final-epoch test metrics. Each eps is compared with eps 0 *at the same
learning rate*, paired by seed, on accuracy, NLL, NLL after temperature scaling and ECE of the
kept model, and accuracy, NLL and ECE of the final epoch. Per learning rate the eps with the
lowest mean validation NLL is the validation choice (and, for a temperature-scaled model, the
one with the lowest validation NLL after TS); over the whole grid the (lr, eps) with the
lowest validation NLL is compared with the learning rate whose eps-0 model has the lowest
validation NLL (both validation choices), paired by seed. Each choice's validation margin is
reported as a paired interval; the choice of eps is said to change with the learning rate only
when those intervals exclude 0 at both learning rates. At the study's ``lr`` the eps-0 and
uniform-style runs are the sweep's runs; the report says so and counts those intervals once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from ..functional import cross_entropy
from .config import StudyConfig
from .data import Split
from .experiments import (
    Plan,
    Run,
    RunContext,
    _fit,
    measure_classifier,
    seed_data,
    split_sizes,
    two_settings,
)
from .findings import (
    Findings,
    Group,
    Row,
    _words,
    chance_count,
    choose,
    select,
    validation_margin,
)
from .outputs import Arrays, Metrics
from .sections import LoadArrays, SaveFigure, Section, Table
from .stats import Comparison, format_interval, format_number, paired_comparison

EXPERIMENT = "lr"
SETTINGS = ("main", "overconfident")
# (metric, label) of the heatmaps and the paired comparisons: the kept (early-stopped) model,
# then the final epoch (no temperature is fitted for it, so its NLL is the raw NLL).
EARLY = (
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("ts_nll", "NLL after TS"),
    ("ece", "ECE"),
)
FINAL = (
    ("final_accuracy", "final-epoch accuracy"),
    ("final_nll", "final-epoch NLL"),
    ("final_ece", "final-epoch ECE"),
)
COMPARED = tuple(m for m, _ in (*EARLY, *FINAL))
HEATMAPS = ("accuracy", "ts_nll", "ece", "final_accuracy", "final_nll", "final_ece")
LABELS = dict((*EARLY, *FINAL))
CHOICE_METRIC = "val_nll"
# the second validation choice, for a model that will be temperature-scaled
TS_CHOICE_METRIC = "val_nll_ts"

PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    (EXPERIMENT, "*"): {"lr": (), "eps": ()},
}


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def _execute(data: Split, config: StudyConfig, lr: float, eps: float, seed: int, epochs: int):
    def execute(_: RunContext) -> tuple[Metrics, Arrays | None]:
        run_config = replace(config, lr=lr)
        part = seed_data(data, run_config, seed)

        def loss_fn(logits, target):
            return cross_entropy(logits, target, eps, style="uniform")

        trained = _fit(part, run_config, loss_fn, seed, epochs=epochs)
        measured, _, _ = measure_classifier(trained, part, run_config, eps=eps)
        measured["epochs"] = float(epochs)
        return measured, None

    return execute


def build(data: Split, config: StudyConfig, plan: Plan) -> None:
    eps_values = sorted({0.0, *config.lr_eps})
    for setting, split, epochs, description in two_settings(data, config):
        plan.settings.setdefault(
            setting,
            {
                "description": description,
                "epochs": epochs,
                "num_classes": split.num_classes,
                **split_sizes(split, config),
            },
        )
        for lr in config.lr_grid:
            for eps in eps_values:
                for seed in config.seeds:
                    plan.runs.append(
                        Run(
                            key=f"{EXPERIMENT}|{setting}|{lr:g}|{eps:g}|{seed}",
                            experiment=EXPERIMENT,
                            setting=setting,
                            params={"lr": lr, "eps": eps},
                            seed=seed,
                            execute=_execute(split, config, lr, eps, seed, epochs),
                            cost=len(split.x_train) * epochs,
                        )
                    )


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def _name(lr: float, eps: float) -> str:
    return f"lr={lr:g} eps={eps:g}"


def _eps(group: Group) -> float:
    return float(group.params["eps"])


def _lr(group: Group) -> float:
    return float(group.params["lr"])


def _diverged(group: Group) -> str:
    if not group.diverged:
        return ""
    return f"{len(group.diverged)} of {len(group.diverged) + group.n_seeds} seeds diverged"


def analyse_setting(findings: Findings, groups: Sequence[Group], setting: str) -> dict | None:
    runs = select(groups, EXPERIMENT, setting)
    if not runs:
        return None
    lrs = sorted({_lr(g) for g in runs})
    eps_values = sorted({_eps(g) for g in runs if _eps(g) != 0})
    # (metric, lr, eps) -> comparison against eps 0 at that lr
    grid: dict[tuple[str, float, float], Comparison] = {}
    rows: list[Row] = []
    per_lr: dict[str, Any] = {}
    choices: list[tuple[float, Group | None, Group | None]] = []
    ts_choices: list[tuple[float, Group | None]] = []
    gaps: dict[float, Comparison] = {}  # lr -> eps 0's test confidence minus accuracy
    for lr in lrs:
        at_lr = sorted([g for g in runs if _lr(g) == lr], key=_eps)
        baseline = next((g for g in at_lr if _eps(g) == 0), None)
        chosen = choose(at_lr, CHOICE_METRIC, prefer=_eps)
        choices.append((lr, chosen, baseline))
        chosen_ts = choose(at_lr, TS_CHOICE_METRIC, prefer=_eps)
        ts_choices.append((lr, chosen_ts))
        gap = None if baseline is None else confidence_gap(baseline, findings.seeds)
        if gap is not None:
            gaps[lr] = gap
        for group in at_lr:
            comparisons: dict[str, Comparison | None] = dict.fromkeys(COMPARED)
            if baseline is not None and group is not baseline:
                for metric in COMPARED:
                    comparison = findings.compare(
                        EXPERIMENT,
                        setting,
                        group,
                        baseline,
                        metric,
                        arm_label=_name(lr, _eps(group)),
                        baseline_label=_name(lr, 0.0),
                        chosen=group is chosen,
                    )
                    comparisons[metric] = comparison
                    grid[(metric, lr, _eps(group))] = comparison
            notes = []
            if group is baseline:
                notes.append("this learning rate's baseline")
            if group is chosen:
                notes.append("chosen at this learning rate on validation NLL")
            if group is chosen_ts:
                notes.append("chosen at this learning rate on validation NLL after TS")
            if group.diverged:
                notes.append(_diverged(group))
            rows.append(
                Row(
                    _name(lr, _eps(group)),
                    {m: group.mean(m) for m in (CHOICE_METRIC, *COMPARED, "best_epoch")},
                    comparisons,
                    "; ".join(notes),
                )
            )
        per_lr[f"{lr:g}"] = {
            "lr": lr,
            "best_eps": None if chosen is None else _eps(chosen),
            "val_nll": None if chosen is None else chosen.mean(CHOICE_METRIC),
            "baseline_val_nll": None if baseline is None else baseline.mean(CHOICE_METRIC),
            "best_eps_after_ts": None if chosen_ts is None else _eps(chosen_ts),
            "val_nll_margin_against_eps0": _margin_dict(chosen, baseline, findings.seeds),
            "val_nll_margin_against_runner_up": runner_up_margin(
                chosen, runner_up(at_lr, chosen, CHOICE_METRIC), findings.seeds
            ),
            "val_nll_ts_margin_against_runner_up": runner_up_margin(
                chosen_ts,
                runner_up(at_lr, chosen_ts, TS_CHOICE_METRIC),
                findings.seeds,
                TS_CHOICE_METRIC,
            ),
            "baseline_confidence_minus_accuracy": None
            if gap is None
            else {
                "mean_delta": gap.mean_delta,
                "ci_low": gap.ci_low,
                "ci_high": gap.ci_high,
                "significant": gap.significant,
            },
            "selected_on": "validation",
            "diverged": {f"{_eps(g):g}": len(g.diverged) for g in at_lr if g.diverged},
        }

    # The overall choice against the best learning rate without smoothing.
    best = choose(runs, CHOICE_METRIC, prefer=_eps)
    best_plain = choose([g for g in runs if _eps(g) == 0], CHOICE_METRIC, prefer=lambda g: 0.0)
    overall: dict[str, Comparison] = {}
    if best is not None and best_plain is not None and best is not best_plain:
        for metric in ("accuracy", "nll", "ts_nll", "ece"):
            overall[metric] = findings.compare(
                EXPERIMENT,
                setting,
                best,
                best_plain,
                metric,
                arm_label=f"chosen over the grid ({_name(_lr(best), _eps(best))})",
                baseline_label=f"chosen without smoothing ({_name(_lr(best_plain), 0.0)})",
                chosen=True,
            )

    late = late_epochs(runs, lambda g: f"{_lr(g):g}", lambda g: _eps(g) == 0)
    interaction = _interaction(findings, runs, setting, lrs, eps_values)
    sentences = _sentences(
        setting,
        lrs,
        eps_values,
        choices,
        grid,
        best,
        best_plain,
        overall,
        runs,
        findings.seeds,
    )
    sentences.insert(
        len(lrs) + (len(lrs) > 1), _ts_sentence(ts_choices, grid, runs, findings.seeds)
    )
    sentences.extend(_interaction_sentences(lrs, interaction))
    if late:
        sentences.append(late)
    diverged = sum(len(g.diverged) for g in runs)
    summary = {
        "choice_metric": CHOICE_METRIC,
        "choice_metric_after_ts": TS_CHOICE_METRIC,
        "best_eps_per_lr": per_lr,
        "overall": None
        if best is None
        else {
            "lr": _lr(best),
            "eps": _eps(best),
            "val_nll": best.mean(CHOICE_METRIC),
            "selected_on": "validation",
        },
        "best_lr_without_smoothing": None
        if best_plain is None
        else {
            "lr": _lr(best_plain),
            "val_nll": best_plain.mean(CHOICE_METRIC),
            "selected_on": "validation",
        },
        "overall_against_best_plain": {
            m: {"mean_delta": c.mean_delta, "ci_low": c.ci_low, "ci_high": c.ci_high}
            for m, c in overall.items()
        },
        "choice_changed_detectably": _choice_change(
            runs, [(lr, c) for lr, c, _ in choices if c is not None], findings.seeds
        )[1],
        "intervals": len(grid),
        "significant": sum(1 for c in grid.values() if c.significant),
        "effect_change_lowest_to_highest_lr": {
            f"{eps:g} {metric}": {
                "mean_delta": c.mean_delta,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "significant": c.significant,
            }
            for (metric, eps), c in interaction.items()
        },
        "diverged_runs": diverged,
    }
    return {
        "lrs": lrs,
        "eps": eps_values,
        "gaps": gaps,
        "grid": grid,
        "rows": rows,
        "sentences": sentences,
        "summary": summary,
    }


INTERACTION = ("ts_nll", "accuracy")


def confidence_gap(baseline: Group, seeds: Sequence[int]) -> Comparison | None:
    """The eps-0 model's mean test confidence minus its test accuracy, paired by seed (each
    seed's gap against 0; the sweep's over-confidence check, here at each learning rate)."""
    confidence = baseline.values("confidence", seeds)
    accuracy = baseline.values("accuracy", seeds)
    gaps = [
        c - a
        for c, a in zip(confidence, accuracy, strict=True)
        if c is not None and a is not None and math.isfinite(c) and math.isfinite(a)
    ]
    if not gaps:
        return None
    return paired_comparison(gaps, [0.0] * len(gaps))


def gap_sentence(setting: str, lrs: Sequence[float], gaps: dict[float, Comparison]) -> str:
    """Whether each learning rate's eps-0 model was detectably over-confident on test, and,
    in the setting meant to make it so, when none was."""
    if not gaps:
        return ""
    parts = []
    for lr in lrs:
        c = gaps.get(lr)
        if c is None:
            continue
        state = (
            "over-confident"
            if c.significant and c.mean_delta > 0
            else "under-confident"
            if c.significant
            else "neither detectably over- nor under-confident"
        )
        parts.append(
            f"at {lr:g} {state} ({format_number(c.mean_delta, 3, sign=True)}, {format_interval(c)})"
        )
    over = [lr for lr, c in gaps.items() if c.significant and c.mean_delta > 0]
    text = (
        "The eps-0 model's mean test confidence minus its test accuracy, paired by seed: "
        + "; ".join(parts)
        + "."
    )
    if setting == "overconfident":
        if not over:
            text += (
                " This setting is meant to make the baseline over-confident; at no learning "
                "rate here was it detectably so, so this grid does not test smoothing on an "
                "over-confident model."
            )
        elif len(over) < len(gaps):
            text += (
                " This setting is meant to make the baseline over-confident; it was detectably "
                f"so only at {', '.join(f'{lr:g}' for lr in sorted(over))}."
            )
    return text


def _margin_dict(
    chosen: Group | None, baseline: Group | None, seeds: Sequence[int]
) -> dict[str, Any] | None:
    """The chosen eps' validation NLL minus eps 0's at the same learning rate, paired by seed."""
    if chosen is None or baseline is None or chosen is baseline:
        return None
    c, _ = validation_margin(chosen, baseline, seeds)
    return {
        "mean_delta": c.mean_delta,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "significant": c.significant,
    }


def late_epochs(runs: Sequence[Group], name: Any, is_baseline: Any) -> str:
    """A sentence naming the learning rates whose baseline kept an epoch in the last tenth of
    training on average: those models may still have been improving on validation when
    training stopped (the kept epoch says only where the best validation score fell, not that
    a later epoch would have scored higher), so the comparisons there describe a training
    budget rather than converged models."""
    found = []
    for group in runs:
        epochs, kept = group.mean("epochs"), group.mean("best_epoch")
        if is_baseline(group) and not math.isnan(epochs) and kept >= 0.9 * epochs:
            found.append(f"{name(group)} (mean kept epoch {kept:.1f} of {epochs:g})")
    if not found:
        return ""
    return (
        "The baseline's kept epoch was in the last tenth of training at learning rate "
        + ", ".join(found)
        + ": it may still have been improving when training stopped, so comparisons there "
        "describe this training budget rather than converged models (a smaller learning rate "
        "needs more epochs)."
    )


def _ts_sentence(
    ts_choices: list[tuple[float, Group | None]],
    grid: dict[tuple[str, float, float], Comparison],
    runs: Sequence[Group] = (),
    seeds: Sequence[int] = (),
) -> str:
    """The eps per learning rate chosen on validation NLL after temperature scaling, with its
    validation margin over the runner-up (and over eps 0 when that is not the runner-up) and
    its test NLL after TS against eps 0 + TS at the same learning rate."""
    parts = []
    for lr, chosen in ts_choices:
        if chosen is None:
            parts.append(f"unknown at {lr:g} (no validation NLL after TS)")
            continue
        at_lr = [g for g in runs if _lr(g) == lr]
        runner = runner_up(at_lr, chosen, TS_CHOICE_METRIC)
        words = _runner_up_words(chosen, runner, seeds, TS_CHOICE_METRIC)
        margin = f" (its validation NLL after TS {words}" if at_lr else ""
        baseline = next((g for g in at_lr if _eps(g) == 0), None)
        if margin and baseline is not None and baseline not in (chosen, runner):
            c, seeds_text = validation_margin(chosen, baseline, seeds, TS_CHOICE_METRIC)
            margin += f"; minus eps 0's: {_margin_words(c, seeds_text)}"
        margin += ")" if margin else ""
        if _eps(chosen) == 0:
            parts.append(f"0 at {lr:g}{margin}")
        else:
            comparison = grid.get(("ts_nll", lr, _eps(chosen)))
            parts.append(
                f"{_eps(chosen):g} at {lr:g}{margin}, which {_words(comparison, 'ts_nll')}"
            )
    return (
        "For a model that will be temperature-scaled, the eps chosen on validation NLL after "
        "temperature scaling was (validation margins paired by seed; against eps 0 + TS at the "
        "same learning rate, on test NLL after TS): " + "; ".join(parts) + "."
    )


def _interaction(
    findings: Findings,
    runs: Sequence[Group],
    setting: str,
    lrs: list[float],
    eps_values: list[float],
) -> dict[tuple[str, float], Comparison]:
    """Does the effect of each eps depend on the learning rate? Per seed, (eps minus eps 0) at
    the highest learning rate minus the same at the lowest, on :data:`INTERACTION`: a paired
    difference of paired differences, recorded like every other comparison."""
    out: dict[tuple[str, float], Comparison] = {}
    if len(lrs) < 2:
        return out
    low, high = lrs[0], lrs[-1]
    found = {(_lr(g), _eps(g)): g for g in runs}
    for eps in eps_values:
        parts = [found.get((lr, e)) for lr in (low, high) for e in (0.0, eps)]
        if any(p is None for p in parts):
            continue
        base_low, arm_low, base_high, arm_high = parts
        effects = []
        for lr, base, arm in ((low, base_low, arm_low), (high, base_high, arm_high)):
            metrics: dict[int, dict[str, float]] = {}
            for seed in findings.seeds:
                values = {}
                for metric in INTERACTION:
                    a, b = arm.values(metric, [seed])[0], base.values(metric, [seed])[0]
                    values[metric] = math.nan if a is None or b is None else a - b
                metrics[seed] = values
            effects.append(Group(EXPERIMENT, setting, {"lr": lr, "eps": eps}, metrics))
        for metric in INTERACTION:
            out[(metric, eps)] = findings.compare(
                EXPERIMENT,
                setting,
                effects[1],
                effects[0],
                metric,
                arm_label=f"effect of eps={eps:g} (minus eps=0) at lr={high:g}",
                baseline_label=f"effect of eps={eps:g} (minus eps=0) at lr={low:g}",
            )
    return out


def _interaction_sentences(
    lrs: list[float], interaction: dict[tuple[str, float], Comparison]
) -> list[str]:
    if not interaction:
        return []
    parts = []
    for (metric, eps), c in interaction.items():
        state = "changed detectably" if c.significant else "did not change detectably"
        parts.append(
            f"eps {eps:g}, {LABELS[metric]}: {state} "
            f"({format_number(c.mean_delta, 3, sign=True)}, {format_interval(c)})"
        )
    count = len(interaction)
    return [
        f"Does the effect of eps depend on the learning rate? Its paired difference from eps 0 "
        f"at learning rate {lrs[-1]:g} minus the same at {lrs[0]:g}, paired by seed: "
        + "; ".join(parts)
        + f" ({count} intervals; {chance_count(count)} would exclude 0 by chance alone)."
    ]


def _margin_words(comparison: Comparison, seeds_text: str) -> str:
    return (
        f"{format_number(comparison.mean_delta, 4, sign=True)} "
        f"({format_interval(comparison, 4)}; {seeds_text})"
    )


def runner_up(at_lr: Sequence[Group], chosen: Group | None, metric: str) -> Group | None:
    """The group the validation choice on ``metric`` would have picked without ``chosen``."""
    if chosen is None:
        return None
    return choose([g for g in at_lr if g is not chosen], metric, prefer=_eps)


def _tied(a: Group, b: Group, metric: str) -> bool:
    return round(a.mean(metric), 12) == round(b.mean(metric), 12)


def runner_up_margin(
    chosen: Group | None,
    runner: Group | None,
    seeds: Sequence[int],
    metric: str = CHOICE_METRIC,
) -> dict[str, Any] | None:
    """The choice's validation ``metric`` minus the runner-up's, paired by seed, for
    findings.json."""
    if chosen is None or runner is None:
        return None
    c, seeds_text = validation_margin(chosen, runner, seeds, metric)
    return {
        "runner_up_eps": _eps(runner),
        "mean_delta": c.mean_delta,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "significant": c.significant,
        "seeds": seeds_text,
        "tied": _tied(chosen, runner, metric),
    }


def _runner_up_words(
    chosen: Group, runner: Group | None, seeds: Sequence[int], metric: str = CHOICE_METRIC
) -> str:
    """ "the runner-up, eps X: <margin>" (the choice's value minus the runner-up's), saying so
    when the two means are equal (the tie goes to the eps closest to 0)."""
    if runner is None:
        return "no runner-up (no other eps has a finished run)"
    margin, seeds_text = validation_margin(chosen, runner, seeds, metric)
    text = f"minus the runner-up's (eps {_eps(runner):g}): {_margin_words(margin, seeds_text)}"
    if _tied(chosen, runner, metric):
        text += (
            f"; an exact tie in the mean, which goes to the eps closest to 0, so eps "
            f"{_eps(runner):g} is as much the validation choice"
        )
    return text


def _choice_change(
    runs: Sequence[Group],
    picked: list[tuple[float, Group]],
    seeds: Sequence[int],
) -> tuple[str, bool | None]:
    """The sentence on whether the validation choice of eps changed with the learning rate,
    and whether it changed detectably (None when there is one choice or one learning rate).

    Between two neighbouring learning rates with choices A (at the first) and B (at the
    second) the choice is said to have changed only when, paired by seed on validation NLL,
    A is detectably lower than B at the first learning rate and B detectably lower than A at
    the second (both intervals exclude 0); otherwise the choices differ by a margin within
    seed noise."""
    if len(picked) < 2:
        return "", None
    listing = ", ".join(f"{_eps(c):g} at {lr:g}" for lr, c in picked)
    if len({_eps(c) for _, c in picked}) == 1:
        return (
            f"The validation choice of eps was the same ({_eps(picked[0][1]):g}) at every "
            "learning rate.",
            False,
        )
    found = {(_lr(g), _eps(g)): g for g in runs}
    margins, detectable = [], True
    seen: set[tuple[float, float, float]] = set()
    for (lr1, a), (lr2, b) in pairwise(picked):
        if _eps(a) == _eps(b):
            continue
        for lr, mine, theirs in ((lr1, a, b), (lr2, b, a)):
            # a learning rate between two others is compared with both neighbours' choices;
            # the same (lr, eps, other eps) margin is listed once
            if (lr, _eps(mine), _eps(theirs)) in seen:
                continue
            seen.add((lr, _eps(mine), _eps(theirs)))
            other = found.get((lr, _eps(theirs)))
            if other is None:
                detectable = False
                margins.append(f"at {lr:g} eps {_eps(theirs):g} has no runs")
                continue
            comparison, seeds_text = validation_margin(mine, other, seeds)
            detectable = detectable and comparison.significant and comparison.ci_high < 0
            margins.append(
                f"at {lr:g}, eps {_eps(mine):g} minus eps {_eps(theirs):g}: "
                + _margin_words(comparison, seeds_text)
            )
    detail = " (validation NLL, paired by seed: " + "; ".join(margins) + ")"
    if detectable:
        return (
            f"The validation choice of eps changed with the learning rate ({listing}): at each "
            "of these learning rates its validation NLL was detectably lower than the other "
            "learning rate's choice" + detail + ". The arms were chosen among those in the "
            "grid, so an eps between them may do as well.",
            True,
        )
    return (
        f"The validation choice of eps differs between learning rates ({listing}), but by a "
        "margin within seed noise: at least one of the paired validation-NLL intervals "
        "between the choices includes 0" + detail + ", so these runs do not show the right "
        "eps depending on the learning rate.",
        False,
    )


def _sentences(
    setting: str,
    lrs: list[float],
    eps_values: list[float],
    choices: list[tuple[float, Group | None, Group | None]],
    grid: dict[tuple[str, float, float], Comparison],
    best: Group | None,
    best_plain: Group | None,
    overall: dict[str, Comparison],
    runs: Sequence[Group] = (),
    seeds: Sequence[int] = (),
) -> list[str]:
    lines = []
    for lr, chosen, baseline in choices:
        if chosen is None:
            lines.append(f"At learning rate {lr:g} no run finished.")
            continue
        runner = runner_up([g for g in runs if _lr(g) == lr], chosen, CHOICE_METRIC)
        if baseline is None or chosen is baseline:
            lines.append(
                f"At learning rate {lr:g} the lowest validation NLL was eps 0 (no smoothing); "
                f"paired by seed, its validation NLL {_runner_up_words(chosen, runner, seeds)}."
            )
            continue
        eps = _eps(chosen)
        margin, seeds_text = validation_margin(chosen, baseline, seeds)
        second = "; eps 0 is the runner-up" if runner is baseline else ""
        if runner is not None and runner is not baseline:
            second = f"; {_runner_up_words(chosen, runner, seeds)}"
        lines.append(
            f"At learning rate {lr:g} the eps with the lowest validation NLL was {eps:g} "
            f"(its validation NLL minus eps 0's, paired by seed: "
            f"{_margin_words(margin, seeds_text)}{second}). On test, against eps 0 at the same "
            f"learning rate (NLL is the metric the choice used, there on validation), it "
            f"{_words(grid.get(('nll', lr, eps)), 'nll')} and "
            f"{_words(grid.get(('ece', lr, eps)), 'ece')}; after temperature "
            f"scaling of both it {_words(grid.get(('ts_nll', lr, eps)), 'ts_nll')}; it "
            f"{_words(grid.get(('accuracy', lr, eps)), 'accuracy')}; at the final epoch it "
            f"{_words(grid.get(('final_nll', lr, eps)), 'final_nll')} and "
            f"{_words(grid.get(('final_accuracy', lr, eps)), 'final_accuracy')}."
        )
    picked = [(lr, c) for lr, c, _ in choices if c is not None]
    change, _ = _choice_change(runs, picked, seeds)
    if change:
        lines.append(change)
    if best is not None and best_plain is not None:
        if best is best_plain:
            lines.append(
                f"Over the whole grid the lowest validation NLL was {_name(_lr(best), 0.0)}: "
                "no smoothing, at that learning rate."
            )
        else:
            margin, seeds_text = validation_margin(best, best_plain, seeds)
            lines.append(
                f"Over the whole grid the lowest validation NLL was "
                f"{_name(_lr(best), _eps(best))}; without smoothing it was learning rate "
                f"{_lr(best_plain):g} (validation NLL of the first minus the second, paired by "
                f"seed: {_margin_words(margin, seeds_text)}). Against that model, paired by "
                f"seed, the overall choice {_words(overall.get('nll'), 'nll')}, "
                f"{_words(overall.get('ece'), 'ece')} and "
                f"{_words(overall.get('accuracy'), 'accuracy')}; after temperature scaling of "
                f"both it {_words(overall.get('ts_nll'), 'ts_nll')}."
            )
    count = len(grid)
    significant = sum(1 for c in grid.values() if c.significant)
    if count:
        lines.append(
            f"The heatmaps and the table hold {count} intervals ({len(lrs)} learning rates x "
            f"{len(eps_values)} eps x {count // max(1, len(lrs) * len(eps_values))} metrics), "
            f"so {chance_count(count)} would exclude 0 by chance alone even if eps made no "
            f"difference; {significant} do."
        )
    return lines


def analyse(findings: Findings, groups: Sequence[Group]) -> None:
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for setting in SETTINGS:
        found = analyse_setting(findings, groups, setting)
        if found is None:
            continue
        diverged = found["summary"]["diverged_runs"]
        found["sentences"].append(
            f"{diverged} runs diverged (non-finite loss or outputs); they are left out of every "
            "mean and comparison and counted in the table's notes."
            if diverged
            else "No run diverged."
        )
        results[setting] = found
        summary[setting] = found["summary"]
    if not results:
        return
    findings.sections[EXPERIMENT] = results
    findings.experiments[EXPERIMENT] = summary


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


_SELECT = {
    "accuracy": "accuracy (ties: lower NLL)",
    "nll": "NLL",
    "final": "nothing (select=final: the final epoch is kept)",
}


def _intro(setting: str, found: dict[str, Any], study: dict[str, Any]) -> str:
    info = study.get("settings", {}).get(setting, {})
    config = study.get("config", {})
    return (
        f"Data: {info.get('description', setting)}; n_train {info.get('n_train', '?')}, n_val "
        f"{info.get('n_val', '?')}, n_test {info.get('n_test', '?')}. The study's MLP (width "
        f"{config.get('width', '?')}, depth {config.get('depth', '?')}, Adam, batch "
        f"{config.get('batch_size', '?')}) trained for {info.get('epochs', '?')} epochs at "
        f"each learning rate ({', '.join(f'{lr:g}' for lr in found['lrs'])}) with "
        f"labelsmooth.cross_entropy at each eps (0 and {', '.join(f'{e:g}' for e in found['eps'])}"
        ", uniform style). Every run records the kept model (best validation epoch) and the "
        "final epoch; the kept epoch is the best on validation by "
        f"{_SELECT.get(config.get('select', 'accuracy'), config.get('select'))}. Each eps is "
        "compared with eps 0 at the same learning rate, paired by seed "
        "(Student-t 95% intervals). The eps per learning rate, the (lr, eps) over the grid and "
        "the learning rate without smoothing are each chosen by the lowest mean validation NLL "
        "of the kept model; for a model that will be temperature-scaled, the eps per learning "
        "rate is also chosen by the lowest validation NLL after temperature scaling (T fitted "
        "on the validation split). Test data are only measured."
        + (" " + gap if (gap := gap_sentence(setting, found["lrs"], found.get("gaps", {}))) else "")
    )


def shared_with_sweep(
    config: dict[str, Any], lrs: Sequence[float], eps_values: Sequence[float]
) -> tuple[float, list[float]] | None:
    """(learning rate, eps > 0) of this grid's runs that are the sweep's runs, from the study's
    configuration: the sweep trains the same MLP on the same settings, seeds and epochs at the
    study's ``lr`` with eps 0 and every eps of ``eps`` in each style, so at ``lr`` the eps-0
    runs and the uniform-style runs of each eps in both grids are the same runs. None when the
    sweep is not in the study or ``lr`` is not in the grid."""
    if "sweep" not in config.get("experiments", ()) or "lr" not in config:
        return None
    lr = float(config["lr"])
    if lr not in {float(x) for x in lrs}:
        return None
    sweep_eps = {float(e) for e in config.get("eps", ())}
    if "uniform" not in config.get("styles", ("uniform",)):
        sweep_eps = set()
    return lr, [e for e in eps_values if e != 0 and e in sweep_eps]


def _shared_sentence(found: dict[str, Any], shared: tuple[float, list[float]]) -> str:
    lr, eps_values = shared
    grid: dict[tuple[str, float, float], Comparison] = found["grid"]
    repeated = [k for k in grid if k[1] == lr and k[2] in eps_values]
    rest = [c for k, c in grid.items() if k not in set(repeated)]
    runs = "eps 0" + "".join(f" and eps {e:g} (uniform)" for e in eps_values)
    text = (
        f"At learning rate {lr:g} (the study's learning rate) the runs of {runs} are the same "
        "runs as the sweep's in this setting (same split, seeds, model, epochs and loss), so "
        "they are not separate evidence from the sweep section"
    )
    if not repeated:
        return text + "."
    return (
        text + f": {len(repeated)} of this section's {len(grid)} intervals compare runs that "
        f"are both in the sweep. Counting those once, {len(rest)} intervals are on runs the "
        f"sweep does not have; {chance_count(len(rest))} of them would exclude 0 by chance "
        f"alone; {sum(1 for c in rest if c.significant)} do."
    )


def _mark_shared(rows: list[Row], shared: tuple[float, list[float]] | None) -> list[Row]:
    if shared is None:
        return rows
    lr, eps_values = shared
    names = {_name(lr, 0.0): 0.0, **{_name(lr, e): e for e in eps_values}}
    out = []
    for row in rows:
        if row.label in names:
            eps = names[row.label]
            what = "eps 0" if eps == 0 else f"eps {eps:g} uniform"
            note = "; ".join(n for n in (row.note, f"same runs as the sweep's {what}") if n)
            row = replace(row, note=note)
        out.append(row)
    return out


def section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section | list[Section] | None:
    results = findings.sections.get(EXPERIMENT)
    if not results:
        return None
    out = []
    for setting, found in results.items():
        shared = shared_with_sweep(study.get("config", {}), found["lrs"], found["eps"])
        sentences = list(found["sentences"])
        if shared is not None:
            at = next(
                (i + 1 for i, t in enumerate(sentences) if t.startswith("The heatmaps and")),
                len(sentences),
            )
            sentences.insert(at, _shared_sentence(found, shared))
        figures = []
        if found["grid"]:
            figure = _heatmaps(found)
            figures.append(
                save_figure(
                    f"lr_heatmap_{setting}",
                    figure,
                    "Mean paired difference (eps minus eps 0 at the same learning rate) for "
                    "each learning rate and eps; cells whose 95% interval excludes 0 are marked "
                    "with an asterisk and bold. Top: the kept (early-stopped) model; bottom: "
                    "the final epoch.",
                )
            )
        out.append(
            Section(
                key=f"{EXPERIMENT}-{setting}",
                title=f"Learning rate x eps ({setting})",
                intro=_intro(setting, found, study),
                sentences=sentences,
                tables=[
                    Table(
                        "Each (learning rate, eps) against eps 0 at the same learning rate",
                        "model",
                        [CHOICE_METRIC, *COMPARED, "best_epoch"],
                        _mark_shared(found["rows"], shared),
                        {
                            CHOICE_METRIC: ("validation NLL", 3),
                            **{m: (label, 3) for m, label in LABELS.items()},
                            "best_epoch": ("kept epoch", 1),
                        },
                    )
                ],
                figures=figures,
            )
        )
    return out


def _heatmaps(found: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    from .. import plots

    lrs, eps_values, grid = found["lrs"], found["eps"], found["grid"]
    figure = Figure(figsize=(4.0 * 3 + 0.5, 1.4 + 0.55 * len(lrs) * 2 + 1.6), layout="constrained")
    axes = figure.subplots(2, 3, squeeze=False)
    for ax, metric in zip(axes.ravel(), HEATMAPS, strict=True):
        values = [
            [
                grid[(metric, lr, eps)].mean_delta if (metric, lr, eps) in grid else math.nan
                for eps in eps_values
            ]
            for lr in lrs
        ]
        significant = [
            [
                (metric, lr, eps) in grid and grid[(metric, lr, eps)].significant
                for eps in eps_values
            ]
            for lr in lrs
        ]
        plots.heatmap(
            values,
            row_labels=[f"{lr:g}" for lr in lrs],
            col_labels=[f"{eps:g}" for eps in eps_values],
            significant=significant,
            ax=ax,
            xlabel="eps",
            ylabel="learning rate",
            title=f"Δ {LABELS[metric]}",
        )
    return figure

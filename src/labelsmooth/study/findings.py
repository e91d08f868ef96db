"""From finished runs to evidence: validation-only choices, paired comparisons, the verdict.

This module reads the records of ``results.jsonl`` (plain dicts) and never trains or plots.
Its rules:

* Every choice (the smoothing arm, the distillation temperature, the eps under noise) is made
  on **validation** metrics averaged over seeds. A value chosen on test appears only as
  ``oracle`` and is never used for a recommendation.
* Every comparison is paired by seed against the baseline of the same seed
  (:func:`~labelsmooth.study.stats.paired_comparison`), and its words come from its 95%
  interval (:func:`~labelsmooth.study.stats.describe`).
* The recommendation is derived only from significant comparisons of the main sweep.

The result, :class:`Findings`, is what ``findings.json`` holds and what the report renders.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .outputs import TEMPERATURE_BOUNDS
from .stats import (
    Comparison,
    describe,
    format_delta,
    format_interval,
    format_number,
    paired_comparison,
)

# name -> (label, higher is better, decimals)
METRICS: dict[str, tuple[str, bool, int]] = {
    "nll": ("NLL", False, 3),
    "brier": ("Brier", False, 4),
    "ece": ("ECE (equal-width)", False, 3),
    "ece_quantile": ("ECE (equal-mass)", False, 3),
    "accuracy": ("accuracy", True, 3),
    "aurc": ("AURC", False, 4),
    "excess_aurc": ("excess AURC", False, 4),
    "macro_auroc": ("macro AUROC", True, 4),
    "label_ece": ("per-label ECE", False, 3),
    "mutual_information": ("mutual information (nats)", True, 3),
    "logit_norm": ("mean logit norm", False, 2),
    "logit_gap": ("logit gap", False, 2),
    "token_nll": ("token NLL", False, 3),
    "perplexity": ("perplexity", False, 2),
    "token_accuracy": ("token accuracy", True, 3),
    "token_ece": ("token ECE", False, 3),
    "spread_ratio_plane": ("within-class spread / centroid distance (template plane)", False, 3),
    "spread_ratio_full": ("within-class spread / centroid distance (full space)", False, 3),
}
# A negative-eps model whose test NLL exceeds this multiple of the baseline's is called out:
# its loss is unbounded below and its probabilities have blown up, though its accuracy stands.
BLOWN_UP_NLL_FACTOR = 10.0
VERDICT_METRICS = ("nll", "brier", "ece", "ece_quantile", "accuracy", "aurc", "excess_aurc")
MULTILABEL_METRICS = ("macro_auroc", "label_ece", "nll", "accuracy")
VARIANT_METRICS = ("nll", "ts_nll", "brier", "ece", "accuracy")
# Against plain smoothing: NLL before and after temperature scaling (of both), accuracy.
PLAIN_METRICS = ("nll", "ts_nll", "accuracy")
# The variants experiment's reference arms (experiments.VARIANT_ARMS).
VARIANT_BASELINE, VARIANT_PLAIN = "baseline", "label_smoothing"
# The variants experiment's arms as the report names them, with where each strength comes from.
VARIANT_LABELS = {
    "baseline": "baseline (eps=0)",
    "label_smoothing": "label smoothing, eps=0.1 (uniform)",
    "confidence_penalty": "confidence penalty, beta=0.1 (Pereyra et al. 2017; beta chosen here)",
    "margin": "margin-based LS, margin=10, alpha=0.1 (MbLS, Liu et al. 2022; paper and code)",
    "relaxation": "label relaxation, alpha=0.1 (Lienen & Hüllermeier 2021; authors' code)",
    "maxsup": "MaxSup, eps=0.1 constant (Zhou et al. 2025; the authors ramp 0.1 to 0.2)",
    "online": "online label smoothing, alpha=0.5 (Zhang et al. 2021; authors' code)",
    "teacher_free": (
        "teacher-free KD, a=0.99, T=20, alpha=0.1, multiplier=100 (Yuan et al. 2020; the "
        "authors' ResNet-18 setting)"
    ),
    "focal": "focal loss, gamma=2 (Lin et al. 2017)",
    "focal_smoothed": "focal loss, gamma=2, with eps=0.1 (uniform) (a combination, not a paper's)",
}


def variant_label(params: dict[str, Any]) -> str:
    name = params.get("variant", "?")
    return VARIANT_LABELS.get(name, str(name))


def metric_label(metric: str) -> str:
    return METRICS[metric.removeprefix("ts_").removeprefix("final_")][0]


def higher_is_better(metric: str) -> bool:
    return METRICS[metric.removeprefix("ts_").removeprefix("final_")][1]


def digits(metric: str) -> int:
    return METRICS[metric.removeprefix("ts_").removeprefix("final_")][2]


# ----------------------------------------------------------------------------------------------
# Groups of runs over seeds
# ----------------------------------------------------------------------------------------------


@dataclass
class Group:
    """The runs of one configuration (experiment, setting, params), by seed."""

    experiment: str
    setting: str
    params: dict[str, Any]
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> metrics
    keys: dict[int, str] = field(default_factory=dict)
    diverged: list[int] = field(default_factory=list)

    def values(self, metric: str, seeds: Sequence[int]) -> list[float | None]:
        """``metric`` of each seed in ``seeds`` order (None where missing or diverged)."""
        out: list[float | None] = []
        for seed in seeds:
            value = self.metrics.get(seed, {}).get(metric)
            out.append(None if value is None or not math.isfinite(value) else float(value))
        return out

    def mean(self, metric: str) -> float:
        values = [v for v in (m.get(metric) for m in self.metrics.values()) if v is not None]
        values = [v for v in values if math.isfinite(v)]
        return statistics.fmean(values) if values else math.nan

    def sd(self, metric: str) -> float:
        values = [v for v in (m.get(metric) for m in self.metrics.values()) if v is not None]
        values = [v for v in values if math.isfinite(v)]
        return statistics.stdev(values) if len(values) > 1 else math.nan

    @property
    def n_seeds(self) -> int:
        return len(self.metrics)

    def first_key(self) -> str | None:
        """The key of the lowest seed's run (the one whose arrays the figures use)."""
        return self.keys[min(self.keys)] if self.keys else None


def group_results(records: Sequence[dict[str, Any]]) -> list[Group]:
    """Groups runs by configuration, in the order they first appear."""
    groups: dict[tuple, Group] = {}
    for record in records:
        params = record["params"]
        ident = (record["experiment"], record["setting"], tuple(sorted(params.items(), key=str)))
        group = groups.setdefault(
            ident, Group(record["experiment"], record["setting"], dict(params))
        )
        if record.get("status", "ok") != "ok" or record.get("metrics") is None:
            group.diverged.append(record["seed"])
            continue
        group.metrics[record["seed"]] = {
            name: (math.nan if value is None else float(value))
            for name, value in record["metrics"].items()
        }
        group.keys[record["seed"]] = record["key"]
    return list(groups.values())


def select(groups: Sequence[Group], experiment: str, setting: str | None = None) -> list[Group]:
    return [
        g
        for g in groups
        if g.experiment == experiment and (setting is None or g.setting == setting)
    ]


def arm_name(params: dict[str, Any]) -> str:
    eps = params.get("eps", 0)
    if eps == 0:
        return "eps=0"
    return f"eps={eps:g} {params.get('style', 'uniform')}"


def arm_label(params: dict[str, Any]) -> str:
    eps = params.get("eps", 0)
    return "baseline (eps=0)" if eps == 0 else f"eps={eps:g} ({params.get('style', 'uniform')})"


def choose(
    groups: Sequence[Group],
    metric: str,
    *,
    higher: bool = False,
    prefer: Callable[[Group], float] | None = None,
) -> Group | None:
    """The group with the best mean ``metric`` (a validation metric), preferring groups whose
    every seed finished. Ties (equal to 12 decimals) go to the lowest ``prefer(group)`` (e.g.
    the eps closest to 0, the lowest temperature), else to the first group in plan order."""
    complete = [g for g in groups if not g.diverged and not math.isnan(g.mean(metric))]
    pool = complete or [g for g in groups if not math.isnan(g.mean(metric))]
    if not pool:
        return None
    sign = -1.0 if higher else 1.0
    order = {id(g): index for index, g in enumerate(pool)}
    return min(
        pool,
        key=lambda g: (
            round(sign * g.mean(metric), 12),
            prefer(g) if prefer is not None else 0.0,
            order[id(g)],
        ),
    )


def validation_margin(
    arm: Group, other: Group, seeds: Sequence[int], metric: str = "val_nll"
) -> tuple[Comparison, str]:
    """How far a validation choice won: ``arm``'s validation ``metric`` minus ``other``'s,
    paired by seed (Student-t 95% interval; a choice's margin, not a test comparison, so not
    recorded among the comparisons), and "lower on k of n seeds" for ``arm``."""
    a, b = arm.values(metric, seeds), other.values(metric, seeds)
    comparison = paired_comparison(a, b)
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    lower = sum(1 for x, y in pairs if x < y)
    return comparison, f"lower on {lower} of {len(pairs)} seeds"


# ----------------------------------------------------------------------------------------------
# Findings
# ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a comparison table: an arm's mean and its paired comparisons."""

    label: str
    values: dict[str, float]  # metric -> mean
    comparisons: dict[str, Comparison | None]  # metric -> against the table's baseline
    note: str = ""


@dataclass
class Findings:
    seeds: list[int]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    recommendation: dict[str, Any] = field(default_factory=dict)
    # experiment -> a JSON-ready summary of its choices (each "best" with "selected_on")
    experiments: dict[str, Any] = field(default_factory=dict)

    def compare(
        self,
        experiment: str,
        setting: str,
        arm: Group,
        baseline: Group,
        metric: str,
        *,
        arm_metric: str | None = None,
        baseline_metric: str | None = None,
        arm_label: str | None = None,
        baseline_label: str | None = None,
        chosen: bool = False,
    ) -> Comparison:
        """Pairs ``arm`` with ``baseline`` by seed on a metric and records the comparison."""
        arm_metric = arm_metric or metric
        baseline_metric = baseline_metric or metric
        comparison = paired_comparison(
            arm.values(arm_metric, self.seeds), baseline.values(baseline_metric, self.seeds)
        )
        self.comparisons.append(
            {
                "experiment": experiment,
                "setting": setting,
                "arm": arm_label or arm_name(arm.params),
                "baseline": baseline_label or arm_name(baseline.params),
                "metric": metric,
                "higher_is_better": higher_is_better(metric),
                **comparison.as_dict(),
                "selected_on": "validation",
                "chosen_on_validation": chosen,
            }
        )
        return comparison


def _words(comparison: Comparison | None, metric: str) -> str:
    if comparison is None:
        return "no comparison"
    return describe(
        comparison,
        metric_label(metric),
        higher_is_better=higher_is_better(metric),
        digits=digits(metric),
    )


# ----------------------------------------------------------------------------------------------
# The sweep and the verdict
# ----------------------------------------------------------------------------------------------


def analyse_sweep(findings: Findings, groups: Sequence[Group], setting: str) -> None:
    sweep = select(groups, "sweep", setting)
    baseline = next((g for g in sweep if g.params.get("eps") == 0), None)
    if baseline is None:
        return
    arms = [g for g in sweep if g.params.get("eps") != 0]
    best = choose(arms, "val_nll")
    best_ts = choose(arms, "val_nll_ts")
    oracle = choose(arms, "nll")  # on test, among the same arms: shown for reference only

    rows: list[Row] = []
    ts_rows: list[Row] = []
    for group in [baseline, *arms]:
        rows.append(
            Row(
                arm_label(group.params),
                {
                    m: group.mean(m)
                    for m in (
                        *VERDICT_METRICS,
                        "confidence",
                        "logit_gap",
                        "theoretical_gap",
                        "val_nll",
                        "best_epoch",
                    )
                },
                {
                    m: None
                    if group is baseline
                    else findings.compare("sweep", setting, group, baseline, m)
                    for m in VERDICT_METRICS
                },
            )
        )
        ts_rows.append(
            Row(
                arm_label(group.params) + " + TS",
                {
                    **{m: group.mean(f"ts_{m}") for m in VERDICT_METRICS},
                    "temperature": group.mean("temperature"),
                    "temperature_ok": group.mean("temperature_ok"),
                },
                {
                    m: None
                    if group is baseline
                    else findings.compare(
                        "sweep",
                        setting,
                        group,
                        baseline,
                        m,
                        arm_metric=f"ts_{m}",
                        baseline_metric=f"ts_{m}",
                        arm_label=arm_name(group.params) + " + TS",
                        baseline_label="eps=0 + TS",
                    )
                    for m in VERDICT_METRICS
                },
            )
        )

    verdict: list[Row] = [
        Row(
            "baseline (eps=0)",
            {m: baseline.mean(m) for m in VERDICT_METRICS},
            dict.fromkeys(VERDICT_METRICS),
        ),
    ]
    verdict.append(
        Row(
            "baseline + temperature scaling",
            {m: baseline.mean(f"ts_{m}") for m in VERDICT_METRICS},
            {
                m: findings.compare(
                    "sweep",
                    setting,
                    baseline,
                    baseline,
                    m,
                    arm_metric=f"ts_{m}",
                    arm_label="eps=0 + TS",
                    chosen=False,
                )
                for m in VERDICT_METRICS
            },
            note=_temperature_note(baseline),
        )
    )
    if best is not None:
        verdict.append(
            Row(
                f"chosen smoothing: {arm_label(best.params)}",
                {m: best.mean(m) for m in VERDICT_METRICS},
                {
                    m: findings.compare(
                        "sweep",
                        setting,
                        best,
                        baseline,
                        m,
                        arm_label=f"chosen smoothing ({arm_name(best.params)})",
                        chosen=True,
                    )
                    for m in VERDICT_METRICS
                },
                note="chosen on validation NLL",
            )
        )
    if best_ts is not None:
        verdict.append(
            Row(
                f"chosen smoothing + TS: {arm_label(best_ts.params)} + TS",
                {m: best_ts.mean(f"ts_{m}") for m in VERDICT_METRICS},
                {
                    m: findings.compare(
                        "sweep",
                        setting,
                        best_ts,
                        baseline,
                        m,
                        arm_metric=f"ts_{m}",
                        arm_label=f"chosen smoothing + TS ({arm_name(best_ts.params)} + TS)",
                        chosen=True,
                    )
                    for m in VERDICT_METRICS
                },
                note="chosen on validation NLL after TS; " + _temperature_note(best_ts),
            )
        )
    key_comparisons: dict[str, Comparison] = {}
    if best_ts is not None:
        for m in ("nll", "brier", "accuracy"):
            key_comparisons[f"ls_ts_vs_ts_{m}"] = findings.compare(
                "sweep",
                setting,
                best_ts,
                baseline,
                m,
                arm_metric=f"ts_{m}",
                baseline_metric=f"ts_{m}",
                arm_label=f"chosen smoothing + TS ({arm_name(best_ts.params)} + TS)",
                baseline_label="eps=0 + TS",
                chosen=True,
            )
        verdict[
            -1
        ].note += (
            f"; against the baseline + TS: NLL {format_delta(key_comparisons['ls_ts_vs_ts_nll'])}"
        )
    geometry_rows, geometry_sentences = _geometry(findings, setting, baseline, arms, best)
    findings.sections[f"sweep:{setting}"] = {
        "geometry_rows": geometry_rows,
        "geometry_sentences": geometry_sentences,
        "baseline": baseline,
        "best": best,
        "best_ts": best_ts,
        "oracle": oracle,
        "arms": arms,
        "rows": rows,
        "ts_rows": ts_rows,
        "verdict": verdict,
        "key": key_comparisons,
        "sentences": _sweep_sentences(
            setting, baseline, best, best_ts, oracle, verdict, key_comparisons
        ),
    }


GEOMETRY_METRICS = ("spread_ratio_plane", "spread_ratio_full")


def _geometry(
    findings: Findings, setting: str, baseline: Group, arms: Sequence[Group], best: Group | None
) -> tuple[list[Row], list[str]]:
    """The penultimate layer's geometry in numbers: within-class spread over centroid distance
    of the projection classes' test examples, in the template plane and in the full space, each
    arm paired against eps=0 (runs without these metrics: nothing)."""
    if math.isnan(baseline.mean("spread_ratio_plane")):
        return [], []
    rows = [
        Row(
            arm_label(group.params),
            {m: group.mean(m) for m in GEOMETRY_METRICS},
            {
                m: None
                if group is baseline
                else findings.compare("sweep", setting, group, baseline, m)
                for m in GEOMETRY_METRICS
            },
            note="the smoothing arm chosen on validation NLL" if group is best else "",
        )
        for group in [baseline, *arms]
    ]
    sentences = [
        f"Penultimate geometry (within-class spread over the mean distance between class "
        f"centroids, for the three projected classes' test examples; lower: clusters tighter "
        f"relative to the distance between them): the baseline's ratio is "
        f"{baseline.mean('spread_ratio_plane'):.3f} in the template plane and "
        f"{baseline.mean('spread_ratio_full'):.3f} in the full penultimate space."
    ]
    if best is not None:
        row = next(r for r in rows if r.note)
        sentences.append(
            f"Against the baseline, {arm_label(best.params)} (the smoothing arm with the "
            f"lowest validation NLL, chosen among the smoothing arms) "
            f"{_words(row.comparisons['spread_ratio_plane'], 'spread_ratio_plane')} and "
            f"{_words(row.comparisons['spread_ratio_full'], 'spread_ratio_full')}."
        )
    looked = (len(rows) - 1) * len(GEOMETRY_METRICS)
    if looked:
        counts = []
        for metric, where in zip(GEOMETRY_METRICS, ("template plane", "full space"), strict=True):
            found = [r.comparisons[metric] for r in rows[1:]]
            lowered = sum(1 for c in found if c is not None and c.significant and c.mean_delta < 0)
            raised = sum(1 for c in found if c is not None and c.significant and c.mean_delta > 0)
            counts.append(
                f"in the {where}, {lowered} lie wholly below 0 (a smaller ratio than at eps=0) "
                f"and {raised} wholly above"
            )
        sentences.append(
            f"Across all {len(rows) - 1} smoothing arms ({looked} intervals, of which "
            f"{chance_count(looked)} would exclude 0 by chance alone): " + "; ".join(counts) + "."
        )
    return rows, sentences


def _temperature_note(group: Group) -> str:
    """Mean T, or how many seeds had a T that was flagged and why."""
    flagged = [m for _, m in sorted(group.metrics.items()) if m.get("temperature_ok", 1) < 1]
    if not flagged:
        return f"mean T = {group.mean('temperature'):.2f}"
    low, high = TEMPERATURE_BOUNDS
    at_low = sum(1 for m in flagged if m.get("temperature", 1.0) <= low * 1.000001)
    at_high = sum(1 for m in flagged if m.get("temperature", 1.0) >= high * 0.999999)
    reasons = []
    if at_low:
        reasons.append(f"{at_low} at T = {low:g}, a validation split classified perfectly")
    if at_high:
        reasons.append(f"{at_high} at T = {high:g}, outputs no better than chance")
    if len(flagged) - at_low - at_high:
        reasons.append(f"{len(flagged) - at_low - at_high} not lowering the validation NLL")
    return (
        f"T was flagged and not applied in {len(flagged)} of {group.n_seeds} seeds: "
        + ", ".join(reasons)
    )


def _sweep_sentences(
    setting: str,
    baseline: Group,
    best: Group | None,
    best_ts: Group | None,
    oracle: Group | None,
    verdict: list[Row],
    key: dict[str, Comparison],
) -> list[str]:
    lines = []
    conf, acc = baseline.mean("confidence"), baseline.mean("accuracy")
    gaps = [
        (m.get("confidence", math.nan) - m.get("accuracy", math.nan))
        for _, m in sorted(baseline.metrics.items())
    ]
    gap = paired_comparison(gaps, [0.0] * len(gaps))
    state = (
        "over-confident"
        if gap.significant and gap.mean_delta > 0
        else "under-confident"
        if gap.significant
        else "neither detectably over- nor under-confident"
    )
    lines.append(
        f"The baseline was {state}: mean confidence {conf:.3f} against accuracy {acc:.3f} "
        f"(confidence minus accuracy {format_number(gap.mean_delta, 3, sign=True)}, "
        f"{format_interval(gap)})."
    )
    if setting == "overconfident" and not (gap.significant and gap.mean_delta > 0):
        lines.append(
            "This setting is meant to make the baseline over-confident; here it did not, so it "
            "does not test smoothing on an over-confident model."
        )
    ts_row = verdict[1]
    lines.append(
        f"Temperature scaling of the baseline {_words(ts_row.comparisons['nll'], 'nll')} and "
        f"{_words(ts_row.comparisons['ece'], 'ece')}; {ts_row.note}."
    )
    subjects = []
    if best is not None:
        subjects.append(f"the smoothing chosen on validation NLL, {arm_label(best.params)},")
    if best_ts is not None:
        subjects.append(
            f"the smoothing chosen on validation NLL after temperature scaling, "
            f"{arm_label(best_ts.params)} + TS,"
        )
    for subject, row in zip(subjects, verdict[2:], strict=True):
        lines.append(
            f"Against the baseline, {subject} {_words(row.comparisons['nll'], 'nll')}, "
            f"{_words(row.comparisons['accuracy'], 'accuracy')} and "
            f"{_words(row.comparisons['ece'], 'ece')}."
        )
    if best_ts is not None:
        lines.append(f"For {arm_label(best_ts.params)}: {_temperature_note(best_ts)}.")
    if best_ts is not None and "ls_ts_vs_ts_nll" in key:
        lines.append(
            f"Against the baseline with temperature scaling, smoothing on top of it "
            f"({arm_label(best_ts.params)} + TS) {_words(key['ls_ts_vs_ts_nll'], 'nll')}."
        )
    if oracle is not None and best is not None and oracle is not best:
        lines.append(
            f"For reference only: an oracle choosing the smoothing on the test set would have "
            f"picked {arm_label(oracle.params)} (test NLL {oracle.mean('nll'):.3f}, against "
            f"{best.mean('nll'):.3f} for the validation choice); it is not used, because a "
            f"test-set choice overstates the gain."
        )
    return lines


def recommend(findings: Findings, setting: str = "main") -> dict[str, Any]:
    """The plain-words recommendation, from significant comparisons of the sweep only."""
    section = findings.sections.get(f"sweep:{setting}")
    if section is None:
        return {
            "smooth": None,
            "eps": None,
            "style": None,
            "temperature_scaling": None,
            "text": "No sweep was run, so there is no recommendation.",
            "selected_on": "validation",
        }
    verdict: list[Row] = section["verdict"]
    best: Group | None = section["best"]
    best_ts: Group | None = section["best_ts"]
    key: dict[str, Comparison] = section["key"]
    ts_vs_base = verdict[1].comparisons["nll"]
    ls_row = verdict[2] if best is not None else None
    ls_nll = ls_row.comparisons["nll"] if ls_row else None
    ls_acc = ls_row.comparisons["accuracy"] if ls_row else None
    ls_ts_vs_ts = key.get("ls_ts_vs_ts_nll")
    ls_ts_acc = key.get("ls_ts_vs_ts_accuracy")

    def improves(c: Comparison | None, metric: str) -> bool:
        return c is not None and c.improves(higher_is_better(metric))

    def worsens(c: Comparison | None, metric: str) -> bool:
        return c is not None and c.worsens(higher_is_better(metric))

    def arm(group: Group) -> str:
        return f"eps {group.params['eps']:g} ({group.params['style']})"

    def decision(smooth_with: Group | None, scale: bool, text: str) -> dict[str, Any]:
        return {
            "smooth": smooth_with is not None,
            "eps": 0.0 if smooth_with is None else smooth_with.params["eps"],
            "style": None if smooth_with is None else smooth_with.params["style"],
            "temperature_scaling": scale,
            "text": text,
        }

    if best_ts is not None and improves(ls_ts_vs_ts, "nll"):
        text = (
            f"Smooth with {arm(best_ts)} and temperature-scale: against temperature scaling "
            f"alone it {_words(ls_ts_vs_ts, 'nll')}"
        )
        if ls_ts_acc is not None:
            text += f" and {_words(ls_ts_acc, 'accuracy')}"
        result = decision(best_ts, True, text + ".")
    elif best is not None and improves(ls_acc, "accuracy") and not worsens(ls_ts_vs_ts, "nll"):
        scale = improves(ts_vs_base, "nll")
        text = f"Smooth with {arm(best)} for accuracy: it {_words(ls_acc, 'accuracy')}"
        text += (
            "; temperature-scale as well: on the baseline it "
            if scale
            else "; don't temperature-scale: on the baseline it "
        ) + _words(ts_vs_base, "nll")
        result = decision(best, scale, text + ".")
    elif improves(ts_vs_base, "nll"):
        text = (
            f"Don't smooth; temperature-scale: temperature scaling alone "
            f"{_words(ts_vs_base, 'nll')}"
        )
        if best_ts is not None and ls_ts_vs_ts is not None:
            text += (
                f", and smoothing on top of it ({arm(best_ts)}, the validation choice) "
                + _words(ls_ts_vs_ts, "nll")
            )
        result = decision(None, True, text + ".")
    elif best is not None and improves(ls_nll, "nll"):
        text = (
            f"Smooth with {arm(best)}: it {_words(ls_nll, 'nll')}; don't temperature-scale: "
            f"on the baseline it {_words(ts_vs_base, 'nll')}"
        )
        result = decision(best, False, text + ".")
    elif best is not None and (worsens(ls_nll, "nll") or worsens(ls_acc, "accuracy")):
        text = (
            f"Don't smooth: the validation-chosen {arm(best)} {_words(ls_nll, 'nll')} and "
            f"{_words(ls_acc, 'accuracy')}"
        )
        if best_ts is not None and ls_ts_vs_ts is not None:
            text += (
                f"; with temperature scaling, smoothing ({arm(best_ts)}) "
                f"{_words(ls_ts_vs_ts, 'nll')} against temperature scaling alone"
            )
        text += f"; temperature scaling of the baseline {_words(ts_vs_base, 'nll')}"
        result = decision(None, False, text + ".")
    else:
        parts = [f"temperature scaling {_words(ts_vs_base, 'nll')}"]
        if best is not None:
            parts.append(f"{arm(best)} {_words(ls_nll, 'nll')} and {_words(ls_acc, 'accuracy')}")
        harms = _harms(verdict[1:])
        headline = "No detectable benefit" if harms else "No detectable effect"
        text = (
            f"{headline} at this data size ({len(findings.seeds)} seeds): "
            + "; ".join(parts)
            + ". Neither smoothing nor temperature scaling can be recommended on this "
            "evidence"
            + (
                ". Detectable harm: " + "; ".join(harms) + "."
                if harms
                else "; more seeds or more data would narrow the intervals."
            )
        )
        result = decision(None, False, text)
    if result["smooth"]:
        row = verdict[3] if result["temperature_scaling"] and best_ts is not None else verdict[2]
        harms = _harms([row])
        if harms:
            result["text"] += " Caveat: " + "; ".join(harms) + "."
        if result["eps"] == max(g.params["eps"] for g in _arms(findings, setting)):
            result["text"] += (
                f" eps {result['eps']:g} is the largest value in the sweep; larger values were "
                "not compared (add them with --eps)."
            )
        result["text"] += (
            " The eps is a validation choice among the arms; the arms were not tested against "
            "each other, so a neighbouring value may do as well."
        )
    result["selected_on"] = "validation"
    return result


def _harms(rows: Sequence[Row]) -> list[str]:
    """Every significant worsening against the baseline in ``rows``, in words."""
    harms = []
    for row in rows:
        for metric in VERDICT_METRICS:
            comparison = row.comparisons.get(metric)
            if comparison is not None and comparison.worsens(higher_is_better(metric)):
                harms.append(f"{_subject(row.label)} {_words(comparison, metric)}")
    return harms


def _subject(label: str) -> str:
    """A verdict row's label as the subject of a sentence about it against the baseline."""
    if label == "baseline + temperature scaling":
        return "temperature scaling of the baseline"
    return "against the baseline, the " + label.replace(": ", " ", 1)


def _arms(findings: Findings, setting: str) -> list[Group]:
    section = findings.sections[f"sweep:{setting}"]
    return list(section["arms"])


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------


def analyse_variants(findings: Findings, groups: Sequence[Group]) -> None:
    """Each variant against the baseline (:data:`VARIANT_METRICS`) and against plain smoothing
    at eps=0.1 (:data:`PLAIN_METRICS`: NLL before and after temperature scaling, accuracy),
    paired by seed, per setting. The arms and their strengths are fixed in advance, so nothing
    is chosen; the section counts the intervals, since several exclude 0 by chance alone."""
    runs = select(groups, "variants")
    for setting in ("main", "overconfident"):
        by_name = {g.params["variant"]: g for g in runs if g.setting == setting}
        baseline, plain = by_name.get(VARIANT_BASELINE), by_name.get(VARIANT_PLAIN)
        if baseline is None:
            continue
        base_label = variant_label(baseline.params)
        plain_label = None if plain is None else variant_label(plain.params)
        rows: list[Row] = []
        sentences: list[str] = []
        differences: list[str] = []
        for group in by_name.values():
            label = variant_label(group.params)
            comparisons: dict[str, Comparison | None] = {
                m: None
                if group is baseline
                else findings.compare(
                    "variants", setting, group, baseline, m, arm_label=label,
                    baseline_label=base_label,
                )
                for m in VARIANT_METRICS
            }  # fmt: skip
            note = f"{len(group.diverged)} diverged" if group.diverged else ""
            rows.append(Row(label, {m: group.mean(m) for m in VARIANT_METRICS}, comparisons, note))
            if group is baseline or group is plain or plain is None:
                continue
            against = {
                m: findings.compare(
                    "variants", setting, group, plain, m, arm_label=label,
                    baseline_label=plain_label,
                )
                for m in PLAIN_METRICS
            }  # fmt: skip
            sentences.append(
                f"{label}: against {plain_label} it {_words(against['nll'], 'nll')}, "
                f"after temperature scaling of both {_words(against['ts_nll'], 'nll')}, and "
                f"{_words(against['accuracy'], 'accuracy')}; against the baseline it "
                f"{_words(comparisons['nll'], 'nll')} and "
                f"{_words(comparisons['accuracy'], 'accuracy')}."
            )
            found = [
                ("after temperature scaling " if metric == "ts_nll" else "")
                + _words(comparison, metric)
                for metric, comparison in against.items()
                if comparison.significant
            ]
            if found:
                differences.append(f"{label} {', '.join(found)}")
        findings.sections[f"variants:{setting}"] = {
            "rows": rows,
            "sentences": sentences,
            "differences_from_plain": differences,
            "plain_label": plain_label,
            "count": sum(1 for g in by_name.values() if g is not baseline and g is not plain),
            "intervals": (len(rows) - 1) * len(VARIANT_METRICS)
            + sum(1 for g in by_name.values() if g is not baseline and g is not plain)
            * (len(PLAIN_METRICS) if plain is not None else 0),
        }


def chance_count(intervals: int) -> str:
    """How many of ``intervals`` 95% intervals exclude 0 by chance alone, in words."""
    expected = intervals / 20
    return "about one" if expected < 1.5 else f"about {round(expected)}"


def variants_sentence(findings: Findings, setting: str = "main") -> str:
    """What the variants add to the verdict: every detectable difference from plain smoothing
    at eps=0.1 in ``setting``, with how many intervals were looked at."""
    section = findings.sections.get(f"variants:{setting}")
    if section is None or not section["count"] or section["plain_label"] is None:
        return ""
    count, plain = section["count"], section["plain_label"]
    looked = count * len(PLAIN_METRICS)
    head = (
        f"Variants ({setting} setting; each at its paper's or its authors' code's default "
        "strength where one exists, not tuned here)"
    )
    differences = section["differences_from_plain"]
    if not differences:
        return (
            f"{head}: no arm differed detectably from {plain} in NLL (before or after "
            f"temperature scaling) or accuracy ({count} arms x {len(PLAIN_METRICS)} metrics)."
        )
    return (
        f"{head}, against {plain}: "
        + "; ".join(differences)
        + f" ({count} arms x {len(PLAIN_METRICS)} metrics = {looked} intervals, so "
        f"{chance_count(looked)} would exclude 0 by chance alone even if no arm differed)."
    )


def analyse_core(records: Sequence[dict[str, Any]], seeds: Sequence[int]) -> Findings:
    """The comparisons, choices and sentences of the sweep and the variants, and the
    recommendation; :func:`labelsmooth.study.registry.analyse` adds every other experiment's."""
    groups = group_results(records)
    findings = Findings(seeds=list(seeds))
    for setting in ("main", "overconfident"):
        analyse_sweep(findings, groups, setting)
    analyse_variants(findings, groups)
    findings.recommendation = recommend(findings)
    extra = variants_sentence(findings)
    if extra:
        findings.recommendation["variants"] = extra
        findings.recommendation["text"] += " " + extra
    findings.sections["groups"] = {"groups": groups}
    return findings


def count_runs(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record.get("status", "ok")] += 1
    return {"finished": len(records), "diverged": counts["diverged"]}

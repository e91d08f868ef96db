"""Turns ``results.jsonl`` (and the saved arrays) into ``summary.csv``, ``figures/*.png`` and a
self-contained ``report.html``. Every sentence of findings is written from the numbers."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runner import ResultStore, atomic_write_bytes


@dataclass
class Group:
    """The runs of one configuration over seeds."""

    experiment: str
    setting: str
    params: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    keys: list[str] = field(default_factory=list)

    def mean(self, metric: str) -> float:
        values = [v for v in self.values.get(metric, []) if not math.isnan(v)]
        return statistics.fmean(values) if values else math.nan

    def sd(self, metric: str) -> float:
        values = [v for v in self.values.get(metric, []) if not math.isnan(v)]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def cell(self, metric: str, digits: int = 3) -> str:
        mean = self.mean(metric)
        if math.isnan(mean):
            return "–"
        return f"{mean:.{digits}f} ± {self.sd(metric):.{digits}f}"


def group_results(records: Sequence[dict[str, Any]]) -> list[Group]:
    """Groups runs by configuration; within a group, runs are in seed order (so ``keys[0]`` is
    the first seed's run, the one whose arrays were kept for the figures)."""
    groups: dict[str, Group] = {}
    for record in sorted(records, key=lambda r: r["seed"]):
        params = record["params"]
        ident = json.dumps([record["experiment"], record["setting"], params], sort_keys=True)
        group = groups.setdefault(ident, Group(record["experiment"], record["setting"], params))
        group.seeds.append(record["seed"])
        group.keys.append(record["key"])
        for name, value in record["metrics"].items():
            group.values[name].append(math.nan if value is None else float(value))
    return list(groups.values())


def _select(groups: Sequence[Group], experiment: str, setting: str | None = None) -> list[Group]:
    return [
        g
        for g in groups
        if g.experiment == experiment and (setting is None or g.setting == setting)
    ]


def write_summary_csv(groups: Sequence[Group], path: Path) -> None:
    metrics = sorted({name for g in groups for name in g.values})
    params = sorted({name for g in groups for name in g.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "experiment",
            "setting",
            *params,
            "seeds",
            *[f"{m}_{s}" for m in metrics for s in ("mean", "sd")],
        ]
    )
    for g in groups:
        row = [g.experiment, g.setting, *[g.params.get(p, "") for p in params], len(g.seeds)]
        for metric in metrics:
            row += (
                [f"{g.mean(metric):.6g}", f"{g.sd(metric):.6g}"] if metric in g.values else ["", ""]
            )
        writer.writerow(row)
    atomic_write_bytes(path, buffer.getvalue().encode())


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _label(params: dict[str, Any]) -> str:
    eps = params.get("eps", 0)
    return "baseline (eps=0)" if eps == 0 else f"eps={eps:g} ({params.get('style')})"


def _pick_smoothed(groups: Sequence[Group], preferred: float = 0.1) -> Group | None:
    candidates = [
        g for g in groups if g.params.get("eps", 0) > 0 and g.params.get("style") == "uniform"
    ]
    if not candidates:
        candidates = [g for g in groups if g.params.get("eps", 0) > 0]
    if not candidates:
        return None
    return min(candidates, key=lambda g: abs(g.params["eps"] - preferred))


class FigureWriter:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.images: dict[str, bytes] = {}

    def save(self, name: str, figure: Any) -> str:
        data = _png(figure)
        atomic_write_bytes(self.directory / f"{name}.png", data)
        self.images[name] = data
        return name


def sweep_figures(
    store: ResultStore,
    groups: Sequence[Group],
    setting: str,
    writer: FigureWriter,
    projection_classes: Sequence[int],
    class_names: Sequence[str] = (),
) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    from .. import plots
    from ..analysis import penultimate_projection

    sweep = _select(groups, "sweep", setting)
    baseline = next((g for g in sweep if g.params.get("eps") == 0), None)
    smoothed = _pick_smoothed(sweep)
    if baseline is None:
        return []
    base = store.load_arrays(baseline.keys[0])
    probs = _softmax(base["logits"])
    out: list[tuple[str, str]] = []

    panels = [
        ("baseline", probs),
        (
            f"baseline, T={float(base['temperature']):.2f}",
            _softmax(base["logits"] / float(base["temperature"])),
        ),
    ]
    if smoothed is not None:
        panels.append(
            (_label(smoothed.params), _softmax(store.load_arrays(smoothed.keys[0])["logits"]))
        )
    figure = Figure(figsize=(4.2 * len(panels), 4.2))
    for ax, (title, p) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        plots.reliability_diagram(p, base["labels"], ax=ax, title=title)
    out.append(
        (
            writer.save(f"reliability_{setting}", figure),
            f"Reliability diagrams ({setting} setting, seed {baseline.seeds[0]}).",
        )
    )

    figure = Figure(figsize=(6.5, 4.2))
    ax = figure.subplots()
    uniform = sorted(
        [g for g in sweep if g.params.get("style") in ("uniform", "none")],
        key=lambda g: g.params["eps"],
    )
    for g in uniform:
        plots.confidence_histogram(
            _softmax(store.load_arrays(g.keys[0])["logits"]), ax=ax, label=_label(g.params)
        )
    ax.set_title(f"Confidence of the predicted class ({setting})")
    out.append(
        (
            writer.save(f"confidence_{setting}", figure),
            "Output distribution: the confidence of the predicted class for each eps "
            "(uniform style).",
        )
    )

    for style in ("uniform", "others"):
        by_eps = {
            float(g.params["eps"]): store.load_arrays(g.keys[0])["logits"]
            for g in sweep
            if g.params.get("style") == style
        }
        if not by_eps:
            continue
        figure = Figure(figsize=(6.5, 4.2))
        plots.logit_gap_histogram(
            by_eps,
            style=style,
            ax=figure.subplots(),
            title=f"Logit gap, style={style!r} ({setting})",
        )
        out.append(
            (
                writer.save(f"logit_gap_{style}_{setting}", figure),
                f"Logit gap (max logit minus the mean of the others) with the theoretical "
                f"optimum of the {style} loss marked for each eps.",
            )
        )

    if setting == "main" and smoothed is not None:
        figure = Figure(figsize=(9, 4.4))
        axes = figure.subplots(1, 2)
        for ax, group in zip(axes, (baseline, smoothed), strict=True):
            arrays = store.load_arrays(group.keys[0])
            projection = penultimate_projection(
                arrays["features"],
                arrays["weight"],
                arrays["bias"],
                arrays["labels"],
                tuple(int(c) for c in projection_classes),
            )
            names = None
            if class_names:
                names = [class_names[c] for c in projection_classes]
            plots.penultimate_scatter(
                projection, ax=ax, class_names=names, title=_label(group.params)
            )
        out.append(
            (
                writer.save("penultimate_main", figure),
                "Penultimate-layer activations of three classes projected on the plane of "
                "their templates (Müller et al. 2019, Fig. 1).",
            )
        )
        figure = Figure(figsize=(6.5, 4.2))
        ax = figure.subplots()
        plots.risk_coverage_plot(probs, base["labels"], ax=ax, label="baseline")
        plots.risk_coverage_plot(
            _softmax(store.load_arrays(smoothed.keys[0])["logits"]),
            base["labels"],
            ax=ax,
            label=_label(smoothed.params),
            title="Risk-coverage (main setting)",
        )
        out.append(
            (
                writer.save("risk_coverage_main", figure),
                "Selective classification: error among the most confident predictions.",
            )
        )
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def noise_figure(groups: Sequence[Group], writer: FigureWriter) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    noise = _select(groups, "noise")
    if not noise:
        return []
    figure = Figure(figsize=(6.5, 4.2))
    ax = figure.subplots()
    for rate in sorted({g.params["noise"] for g in noise}):
        row = sorted([g for g in noise if g.params["noise"] == rate], key=lambda g: g.params["eps"])
        xs = [g.params["eps"] for g in row]
        ax.errorbar(
            xs,
            [g.mean("accuracy") for g in row],
            yerr=[g.sd("accuracy") for g in row],
            marker="o",
            capsize=3,
            label=f"noise {rate:g}",
        )
    ax.axvline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("eps (negative = generalised label smoothing)")
    ax.set_ylabel("clean test accuracy")
    ax.set_title("Label noise: accuracy against eps")
    ax.legend()
    return [
        (
            writer.save("noise", figure),
            "Clean test accuracy against eps for each rate of "
            "symmetric label noise (mean ± sd over seeds).",
        )
    ]


def distillation_figure(groups: Sequence[Group], writer: FigureWriter) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    students = [
        g for g in _select(groups, "distillation", "student") if g.params["teacher_eps"] != "labels"
    ]
    if not students:
        return []
    figure = Figure(figsize=(6.5, 4.2))
    ax = figure.subplots()
    for teacher_eps in sorted({g.params["teacher_eps"] for g in students}):
        row = sorted(
            [g for g in students if g.params["teacher_eps"] == teacher_eps],
            key=lambda g: g.params["temperature"],
        )
        ax.errorbar(
            [g.params["temperature"] for g in row],
            [g.mean("accuracy") for g in row],
            yerr=[g.sd("accuracy") for g in row],
            marker="o",
            capsize=3,
            label=f"teacher eps={teacher_eps:g}",
        )
    hard = [
        g for g in _select(groups, "distillation", "student") if g.params["teacher_eps"] == "labels"
    ]
    if hard:
        ax.axhline(
            hard[0].mean("accuracy"), color="grey", linestyle="--", label="student on hard labels"
        )
    ax.set_xlabel("distillation temperature")
    ax.set_ylabel("student test accuracy")
    ax.set_title("Distillation")
    ax.legend()
    return [
        (
            writer.save("distillation", figure),
            "Student accuracy against the distillation temperature for each teacher.",
        )
    ]


def multilabel_figure(
    store: ResultStore, groups: Sequence[Group], writer: FigureWriter
) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    runs = sorted(_select(groups, "multilabel"), key=lambda g: (g.params["eps"], g.params["style"]))
    if not runs:
        return []
    figure = Figure(figsize=(4 * len(runs), 3.6))
    axes = np.atleast_1d(figure.subplots(1, len(runs)))
    for ax, group in zip(axes, runs, strict=True):
        arrays = store.load_arrays(group.keys[0])
        ax.hist(arrays["probs"].ravel(), bins=40, range=(0, 1), color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(_label(group.params), fontsize=10)
        ax.set_xlabel("output probability")
    return [
        (
            writer.save("multilabel", figure),
            "Output probabilities of the multi-label model: without smoothing they pile up at "
            "0 and 1; with smoothing at the smoothed targets.",
        )
    ]


# ----------------------------------------------------------------------------------------------
# Tables and findings
# ----------------------------------------------------------------------------------------------

SWEEP_COLUMNS = [
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("ece", "ECE"),
    ("ece_quantile", "ECE (eq. mass)"),
    ("brier", "Brier"),
    ("aurc", "AURC"),
    ("confidence", "confidence"),
    ("logit_gap", "logit gap"),
    ("theoretical_gap", "theor. gap"),
]


def sweep_rows(groups: Sequence[Group], setting: str) -> list[tuple[str, list[str]]]:
    sweep = sorted(
        _select(groups, "sweep", setting), key=lambda g: (g.params["eps"], g.params["style"])
    )
    rows = []
    for g in sweep:
        rows.append((_label(g.params), [g.cell(m) for m, _ in SWEEP_COLUMNS]))
        if g.params["eps"] == 0:
            rows.append(
                (
                    f"baseline + temperature scaling (T={g.mean('temperature'):.2f})",
                    [g.cell(f"ts_{m}") for m, _ in SWEEP_COLUMNS],
                )
            )
    return rows


def sweep_findings(groups: Sequence[Group], setting: str) -> list[str]:
    sweep = _select(groups, "sweep", setting)
    baseline = next((g for g in sweep if g.params["eps"] == 0), None)
    if baseline is None:
        return []
    acc, conf, ece = baseline.mean("accuracy"), baseline.mean("confidence"), baseline.mean("ece")
    over = conf - acc
    state = (
        "over-confident"
        if over > 0.01
        else "under-confident"
        if over < -0.01
        else "about calibrated"
    )
    lines = [
        f"The baseline was {state}: mean confidence {conf:.3f} against accuracy {acc:.3f} "
        f"(ECE {ece:.3f})."
    ]
    lines.append(
        f"Temperature scaling (T={baseline.mean('temperature'):.2f}, fitted on held-out "
        f"data) took the baseline's ECE from {ece:.3f} to {baseline.mean('ts_ece'):.3f} "
        f"without changing its accuracy."
    )
    for g in sorted(sweep, key=lambda g: (g.params["style"], g.params["eps"])):
        if g.params["eps"] == 0:
            continue
        new_ece, new_conf, new_acc = g.mean("ece"), g.mean("confidence"), g.mean("accuracy")
        verb = "lowered" if new_ece < ece else "raised"
        reason = ""
        under = new_conf < new_acc - 0.01
        if new_ece > ece and over <= 0.01:
            reason = ": the baseline was not over-confident"
            if under:
                reason += (
                    f", and the smoothed model is under-confident (confidence "
                    f"{new_conf:.3f} < accuracy {new_acc:.3f})"
                )
        elif new_ece > ece:
            reason = ": it over-smoothed"
            if under:
                reason += (
                    f" into under-confidence (confidence {new_conf:.3f} < accuracy {new_acc:.3f})"
                )
        lines.append(
            f"eps={g.params['eps']:g} ({g.params['style']}) {verb} ECE from {ece:.3f} to "
            f"{new_ece:.3f}{reason}; accuracy {acc:.3f} -> {new_acc:.3f}, mean logit gap "
            f"{g.mean('logit_gap'):.2f} (theory {g.mean('theoretical_gap'):.2f})."
        )
    best = min(sweep, key=lambda g: g.mean("ece"))
    lines.append(
        f"Lowest ECE: {_label(best.params)} at {best.mean('ece'):.3f}; best "
        f"baseline-with-temperature-scaling ECE {baseline.mean('ts_ece'):.3f}."
    )
    return lines


def noise_table(
    groups: Sequence[Group],
) -> tuple[list[str], list[tuple[str, list[str]]], list[str]]:
    noise = _select(groups, "noise")
    eps_values = sorted({g.params["eps"] for g in noise})
    rows, findings = [], []
    for rate in sorted({g.params["noise"] for g in noise}):
        row = {g.params["eps"]: g for g in noise if g.params["noise"] == rate}
        best = max(row.values(), key=lambda g: g.mean("accuracy"))
        cells = []
        for eps in eps_values:
            text = row[eps].cell("accuracy") if eps in row else "–"
            cells.append(f"<b>{text}</b>" if row.get(eps) is best else text)
        rows.append((f"noise {rate:g}", cells))
        plain = row.get(0.0)
        gain = ""
        if plain is not None and best is not plain:
            gain = f", against {plain.mean('accuracy'):.3f} without smoothing"
        kind = (
            "negative (generalised) smoothing"
            if best.params["eps"] < 0
            else "no smoothing"
            if best.params["eps"] == 0
            else "positive smoothing"
        )
        findings.append(
            f"Noise rate {rate:g}: best eps = {best.params['eps']:g} ({kind}), "
            f"clean accuracy {best.mean('accuracy'):.3f}{gain}."
        )
    return [f"eps={e:g}" for e in eps_values], rows, findings


def distillation_tables(groups: Sequence[Group]) -> tuple[list, list, list[str]]:
    teachers = sorted(
        _select(groups, "distillation", "teacher"), key=lambda g: g.params["teacher_eps"]
    )
    students = _select(groups, "distillation", "student")
    teacher_rows = [
        (
            f"teacher eps={g.params['teacher_eps']:g}",
            [g.cell("accuracy"), g.cell("ece"), g.cell("mutual_information")],
        )
        for g in teachers
    ]
    temperatures = sorted(
        {g.params["temperature"] for g in students if g.params["teacher_eps"] != "labels"}
    )
    student_rows = []
    findings = []
    for g in students:
        if g.params["teacher_eps"] == "labels":
            student_rows.append(
                ("hard labels (no teacher)", [g.cell("accuracy")] + [""] * (len(temperatures) - 1))
            )
    for teacher in teachers:
        eps = teacher.params["teacher_eps"]
        row = {g.params["temperature"]: g for g in students if g.params["teacher_eps"] == eps}
        student_rows.append(
            (
                f"teacher eps={eps:g}",
                [row[t].cell("accuracy") if t in row else "–" for t in temperatures],
            )
        )
    if len(teachers) == 2:
        plain, smooth = teachers
        best = {}
        for teacher in teachers:
            eps = teacher.params["teacher_eps"]
            candidates = [g for g in students if g.params["teacher_eps"] == eps]
            if candidates:
                best[eps] = max(candidates, key=lambda g: g.mean("accuracy"))
        if len(best) == 2:
            b0, b1 = best[plain.params["teacher_eps"]], best[smooth.params["teacher_eps"]]
            student_better = b1.mean("accuracy") > b0.mean("accuracy")
            teacher_better = smooth.mean("accuracy") > plain.mean("accuracy")
            joint = "and" if student_better == teacher_better else "but"
            findings.append(
                f"The teacher trained with eps={smooth.params['teacher_eps']:g} was "
                f"{'more' if teacher_better else 'less'} accurate than the one without "
                f"({smooth.mean('accuracy'):.3f} vs {plain.mean('accuracy'):.3f}), {joint} "
                f"its best student was {'better' if student_better else 'worse'} "
                f"({b1.mean('accuracy'):.3f} at T="
                f"{b1.params['temperature']:g} vs {b0.mean('accuracy'):.3f} at T="
                f"{b0.params['temperature']:g})."
            )
        kept = smooth.mean("mutual_information") >= plain.mean("mutual_information")
        findings.append(
            f"Mutual information between example and logit difference under input noise: "
            f"{plain.mean('mutual_information'):.3f} nats without smoothing, "
            f"{smooth.mean('mutual_information'):.3f} with eps={smooth.params['teacher_eps']:g}"
            f" — smoothing "
            f"{'keeps' if kept else 'erases'}"
            f" information the student could use (Müller et al. 2019)."
        )
    header = [f"T={t:g}" for t in temperatures]
    return ([teacher_rows, student_rows], header, findings)


def multilabel_rows(groups: Sequence[Group]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    runs = sorted(_select(groups, "multilabel"), key=lambda g: (g.params["eps"], g.params["style"]))
    rows = [
        (
            _label(g.params),
            [
                g.cell("macro_auroc"),
                g.cell("label_ece"),
                g.cell("accuracy"),
                g.cell("mean_prob_positive"),
                g.cell("mean_prob_negative"),
            ],
        )
        for g in runs
    ]
    findings = []
    base = next((g for g in runs if g.params["eps"] == 0), None)
    if base is not None:
        for g in runs:
            if g.params["eps"] == 0:
                continue
            findings.append(
                f"{_label(g.params)}: macro AUROC {base.mean('macro_auroc'):.3f} -> "
                f"{g.mean('macro_auroc'):.3f}, per-label ECE {base.mean('label_ece'):.3f} -> "
                f"{g.mean('label_ece'):.3f}; positives' mean probability "
                f"{g.mean('mean_prob_positive'):.3f}, "
                f"negatives' {g.mean('mean_prob_negative'):.3f}."
            )
    return rows, findings


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.86em}
th,td{border:1px solid #ccc;padding:0.3em 0.55em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f1f1f1}
figure{margin:1.2em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:0.9em;color:#555}
.findings li{margin:0.25em 0}
code{background:#f4f4f4;padding:0 0.2em}
"""


def _table(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], first: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [first, *header])
    body = "".join(
        "<tr><td>"
        + html.escape(name)
        + "</td>"
        + "".join(f"<td>{c if c.startswith('<b>') else html.escape(c)}</td>" for c in cells)
        + "</tr>"
        for name, cells in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(items: Sequence[tuple[str, str]], writer: FigureWriter) -> str:
    parts = []
    for name, caption in items:
        data = base64.b64encode(writer.images[name]).decode()
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)} <code>figures/{name}.png</code>"
            f"</figcaption></figure>"
        )
    return "".join(parts)


def _findings(lines: Sequence[str]) -> str:
    if not lines:
        return ""
    return "<ul class='findings'>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>"


def render_report(directory: str | Path) -> dict[str, Any]:
    """Writes summary.csv, figures/*.png and report.html from ``directory``'s saved results.

    Returns a small summary (the main sweep table as text and the paths written).
    """
    directory = Path(directory)
    store = ResultStore(directory)
    if not store.records:
        raise FileNotFoundError(f"{directory}: no results.jsonl with finished runs")
    groups = group_results(store.records)
    config = store.records[-1]["config"]
    write_summary_csv(groups, directory / "summary.csv")
    writer = FigureWriter(directory / "figures")
    class_names: Sequence[str] = ()
    if str(config.get("dataset", "")).startswith("digits"):
        class_names = [str(d) for d in range(10)]

    sections = []
    for setting in ("main", "overconfident"):
        if not _select(groups, "sweep", setting):
            continue
        title = _select(groups, "sweep", setting)[0].params.get("data", setting)
        figures = sweep_figures(
            store, groups, setting, writer, config.get("projection_classes", (0, 1, 2)), class_names
        )
        sections.append(
            f"<h2>eps sweep ({setting}): {html.escape(title)}</h2>"
            + _findings(sweep_findings(groups, setting))
            + _table([c for _, c in SWEEP_COLUMNS], sweep_rows(groups, setting), "model")
            + _figures(figures, writer)
        )
    if _select(groups, "noise"):
        header, rows, findings = noise_table(groups)
        sections.append(
            "<h2>Noisy labels</h2><p>Symmetric noise on the training labels; clean test "
            "accuracy. Negative eps is generalised label smoothing (Wei et al. 2022); the "
            "best eps per noise rate is in bold.</p>"
            + _findings(findings)
            + _table(header, rows, "training labels")
            + _figures(noise_figure(groups, writer), writer)
        )
    if _select(groups, "distillation"):
        (teacher_rows, student_rows), header, findings = distillation_tables(groups)
        sections.append(
            "<h2>Distillation</h2><p>Students (one hidden layer of "
            f"{config.get('student_width')} units) trained only on each teacher's "
            "temperature-softened outputs (loss T² · CE).</p>"
            + _findings(findings)
            + _table(["accuracy", "ECE", "mutual information (nats)"], teacher_rows, "teacher")
            + _table(header, student_rows, "student accuracy")
            + _figures(distillation_figure(groups, writer), writer)
        )
    if _select(groups, "multilabel"):
        rows, findings = multilabel_rows(groups)
        task = _select(groups, "multilabel")[0].setting
        sections.append(
            f"<h2>Binary / multi-label ({html.escape(task)})</h2>"
            + _findings(findings)
            + _table(
                [
                    "macro AUROC",
                    "per-label ECE",
                    "accuracy",
                    "mean p (positives)",
                    "mean p (negatives)",
                ],
                rows,
                "model",
            )
            + _figures(multilabel_figure(store, groups, writer), writer)
        )
    first = store.records[0]
    seconds = sum(r["seconds"] for r in store.records)
    meta = (
        f"<p>Data set <code>{html.escape(str(config.get('dataset')))}</code>; "
        f"{len(store.records)} runs, seeds {config.get('seeds')}, {config.get('epochs')} epochs, "
        f"MLP width {config.get('width')} depth {config.get('depth')}; "
        f"{seconds / 60:.1f} minutes of training; every number is mean ± sd over seeds. "
        f"Versions: {html.escape(json.dumps(first['versions']))}.</p>"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>labelsmooth study</title>"
        f"<style>{_STYLE}</style></head><body><h1>Label smoothing study</h1>{meta}"
        + "".join(sections)
        + "</body></html>"
    )
    atomic_write_bytes(directory / "report.html", page.encode())
    main_rows = sweep_rows(groups, "main")
    return {
        "report": directory / "report.html",
        "summary": directory / "summary.csv",
        "figures": sorted(directory.glob("figures/*.png")),
        "main_table": format_text_table(
            ["model", *[c for _, c in SWEEP_COLUMNS[:7]]], [(n, c[:7]) for n, c in main_rows]
        ),
    }


def format_text_table(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    table = [list(header)] + [[name, *cells] for name, cells in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = []
    for index, row in enumerate(table):
        lines.append(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Turns a study folder (``study.json``, ``results.jsonl``, ``arrays/``) into ``findings.json``,
``summary.csv``, ``figures/*.png`` and a self-contained ``report.html`` that opens with the
verdict.

The numbers, choices and sentences come from :mod:`labelsmooth.study.findings`; this module
only lays them out. The page is rendered by jinja2 with autoescape on (jinja2 ships with
torch), so no text from a data set or a file name can inject markup.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .findings import (
    METRICS,
    VARIANT_METRICS,
    VERDICT_METRICS,
    Findings,
    Group,
    Row,
    arm_label,
    chance_count,
    count_runs,
    digits,
    metric_label,
    select,
)
from .registry import analyse, sections
from .runner import ResultStore, atomic_write_bytes, atomic_write_json, read_study_json
from .stats import Comparison, format_delta

SWEEP_METRICS = (*VERDICT_METRICS, "confidence", "logit_gap", "theoretical_gap", "best_epoch")
_EXTRA_LABELS = {
    "confidence": ("confidence", 3),
    "logit_gap": ("logit gap", 2),
    "ts_nll": ("NLL after TS", 3),
    "theoretical_gap": ("theor. gap", 2),
    "best_epoch": ("kept epoch", 1),
}


def _label(metric: str) -> str:
    return _EXTRA_LABELS[metric][0] if metric in _EXTRA_LABELS else metric_label(metric)


def _digits(metric: str) -> int:
    return _EXTRA_LABELS[metric][1] if metric in _EXTRA_LABELS else digits(metric)


# ----------------------------------------------------------------------------------------------
# summary.csv and findings.json
# ----------------------------------------------------------------------------------------------


def write_summary_csv(groups: Sequence[Group], path: Path) -> None:
    metrics = sorted({name for g in groups for m in g.metrics.values() for name in m})
    params = sorted({name for g in groups for name in g.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "experiment",
            "setting",
            *params,
            "n_seeds",
            "n_diverged",
            *[f"{m}_{s}" for m in metrics for s in ("mean", "sd")],
        ]
    )
    for g in groups:
        row = [
            g.experiment,
            g.setting,
            *[g.params.get(p, "") for p in params],
            g.n_seeds,
            len(g.diverged),
        ]
        for metric in metrics:
            row += [_csv_number(g.mean(metric)), _csv_number(g.sd(metric))]
        writer.writerow(row)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def findings_json(
    findings: Findings, study: dict[str, Any], records: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    counts = count_runs(records)
    planned = int(study.get("planned_runs", counts["finished"]))
    return {
        "fingerprint": study.get("fingerprint"),
        "dataset": study.get("dataset"),
        "dataset_spec": study.get("config", {}).get("dataset"),
        "num_classes": study.get("num_classes"),
        "class_names": study.get("class_names", []),
        "n_train": study.get("n_train"),
        "n_val": study.get("n_val"),
        "n_test": study.get("n_test"),
        "seeds": findings.seeds,
        "selected_on": "validation",
        "select": study.get("config", {}).get("select", "accuracy"),
        "complete": counts["finished"] >= planned,
        "runs": {**counts, "planned": planned},
        "notes": study.get("notes", []),
        "comparisons": findings.comparisons,
        "recommendation": findings.recommendation,
        "experiments": findings.experiments,
    }


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


class FigureWriter:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: list[dict[str, str]] = []

    def save(self, name: str, figure: Any, caption: str) -> dict[str, str]:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        data = buffer.getvalue()
        atomic_write_bytes(self.directory / f"{name}.png", data)
        item = {"name": name, "caption": caption, "data": base64.b64encode(data).decode()}
        self.written.append(item)
        return item


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _forest_rows(rows: Sequence[Row], metric: str) -> list[tuple[str, float, float, float]]:
    out = []
    for row in rows:
        comparison: Comparison | None = row.comparisons.get(metric)
        if comparison is None or math.isnan(comparison.mean_delta):
            continue
        out.append((row.label, comparison.mean_delta, comparison.ci_low, comparison.ci_high))
    return out


def verdict_figures(findings: Findings, writer: FigureWriter) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    from .. import plots

    section = findings.sections.get("sweep:main")
    if section is None:
        return []
    rows_count = len(section["verdict"])
    figure = Figure(figsize=(8.5, 2 * (1.6 + 0.35 * rows_count)), layout="constrained")
    axes = figure.subplots(2, 1)
    for ax, metric in zip(axes, ("nll", "accuracy"), strict=True):
        rows = _forest_rows(section["verdict"], metric)
        if rows:
            plots.paired_difference_plot(
                rows,
                xlabel=f"{metric_label(metric)}: difference to the baseline",
                ax=ax,
                title=metric_label(metric),
            )
    return [
        writer.save(
            "verdict",
            figure,
            "Paired differences against the baseline (mean over seeds, 95% interval); "
            "intervals that exclude 0 are drawn in colour.",
        )
    ]


def sweep_figures(
    store: ResultStore,
    findings: Findings,
    setting: str,
    writer: FigureWriter,
    projection_classes: Sequence[int],
    class_names: Sequence[str],
    num_classes: int,
) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    from .. import plots
    from ..analysis import penultimate_projection

    section = findings.sections[f"sweep:{setting}"]
    groups: list[Group] = [
        g for g in select(findings.sections["groups"]["groups"], "sweep", setting)
    ]
    baseline: Group = section["baseline"]
    best: Group | None = section["best"]
    if baseline.first_key() is None:
        return []
    base = store.load_arrays(baseline.first_key())
    out = []

    temperature = float(base["temperature"])
    panels = [
        ("baseline", _softmax(base["logits"])),
        (f"baseline, T={temperature:.2f}", _softmax(base["logits"] / temperature)),
    ]
    if best is not None and best.first_key() is not None:
        panels.append(
            (
                f"{arm_label(best.params)} (chosen)",
                _softmax(store.load_arrays(best.first_key())["logits"]),
            )
        )
    figure = Figure(figsize=(4.4 * len(panels), 4.6), layout="compressed")
    for ax, (title, probs) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        plots.reliability_diagram(probs, base["labels"], ax=ax, title=title)
    out.append(
        writer.save(
            f"reliability_{setting}",
            figure,
            f"Reliability diagrams ({setting} setting, test set, seed {min(baseline.keys)}).",
        )
    )

    figure = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = figure.subplots()
    uniform = sorted(
        [g for g in groups if g.params.get("style") in ("uniform", "none") and g.first_key()],
        key=lambda g: g.params["eps"],
    )
    for g in uniform:
        arrays = store.load_arrays(g.first_key())
        probs = _softmax(arrays["logits"])
        accuracy = float((probs.argmax(-1) == arrays["labels"]).mean())
        plots.confidence_histogram(probs, ax=ax, label=arm_label(g.params), accuracy=accuracy)
    ax.set_title(f"Confidence of the predicted class ({setting})")
    out.append(
        writer.save(
            f"confidence_{setting}",
            figure,
            "Confidence of the predicted class on the test set for each eps (uniform style), "
            "with each model's accuracy marked.",
        )
    )

    for style in ("uniform", "others"):
        by_eps = {
            float(g.params["eps"]): store.load_arrays(g.first_key())["logits"]
            for g in groups
            if g.params.get("style") == style and g.first_key()
        }
        if not by_eps:
            continue
        figure = Figure(figsize=(6.5, 4.6), layout="constrained")
        plots.logit_gap_histogram(
            by_eps, style=style, ax=figure.subplots(), title=f"Logit gap, {style} ({setting})"
        )
        out.append(
            writer.save(
                f"logit_gap_{style}_{setting}",
                figure,
                f"Logit gap (max logit minus the mean of the others) with the theoretical "
                f"optimum of the {style} loss marked for each eps.",
            )
        )

    if setting == "main" and best is not None and best.first_key() is not None:
        best_arrays = store.load_arrays(best.first_key())
        if num_classes >= 3 and "features" in base and "features" in best_arrays:
            figure = Figure(figsize=(9, 4.8), layout="constrained")
            # both panels on one scale, so the clusters' sizes compare at a glance
            axes = figure.subplots(1, 2, sharex=True, sharey=True)
            for ax, (group, arrays) in zip(
                axes, ((baseline, base), (best, best_arrays)), strict=True
            ):
                projection = penultimate_projection(
                    arrays["features"],
                    arrays["weight"],
                    arrays["bias"],
                    arrays["labels"],
                    tuple(int(c) for c in projection_classes),
                )
                names = None
                if class_names and all(int(c) < len(class_names) for c in projection_classes):
                    # a "$" in a data set's label must not start matplotlib's mathtext
                    names = [class_names[c].replace("$", r"\$") for c in projection_classes]
                plots.penultimate_scatter(
                    projection, ax=ax, class_names=names, title=arm_label(group.params)
                )
            out.append(
                writer.save(
                    "penultimate_main",
                    figure,
                    "Penultimate-layer activations of three classes projected on the plane of "
                    "their templates (Müller et al. 2019, Fig. 1); both panels on one scale. "
                    "The geometry table gives every arm's spread ratio (mean over seeds) in this "
                    "plane and in the full penultimate space; the two need not agree.",
                )
            )
        figure = Figure(figsize=(6.5, 4.6), layout="constrained")
        ax = figure.subplots()
        plots.risk_coverage_plot(_softmax(base["logits"]), base["labels"], ax=ax, label="baseline")
        plots.risk_coverage_plot(
            _softmax(best_arrays["logits"]),
            best_arrays["labels"],
            ax=ax,
            label=f"{arm_label(best.params)} (chosen)",
            title="Risk-coverage (main setting)",
        )
        out.append(
            writer.save(
                "risk_coverage_main",
                figure,
                "Selective classification: error among the most confident test predictions.",
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("labelsmooth.study", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )
    environment.globals.update(
        label=_label,
        digits=_digits,
        delta_lines=_delta_lines,
    )
    return environment


def _delta_lines(comparison: Comparison, digits: int) -> Any:
    """``Δ +0.012`` over ``[0.004, 0.020]`` (two lines, so wide tables still fit)."""
    import markupsafe

    text = format_delta(comparison, digits)
    delta, _, interval = text.partition(" ")
    escape = markupsafe.escape
    if not interval:
        return escape(f"Δ {delta}")
    return escape(f"Δ {delta}") + markupsafe.Markup("<br>") + escape(interval)


def _select_text(rule: str) -> str:
    return {
        "accuracy": "the epoch with the best validation accuracy (ties: lower validation NLL)",
        "nll": "the epoch with the lowest validation NLL",
        "final": "the final epoch",
    }[rule]


def render_report(directory: str | Path) -> dict[str, Any]:
    """Writes findings.json, summary.csv, figures/*.png and report.html from ``directory``.

    Returns a small summary for the terminal: the verdict table as text, the recommendation,
    and the paths written.
    """
    directory = Path(directory)
    store = ResultStore(directory)
    if not store.records:
        raise FileNotFoundError(f"{directory}: no results.jsonl with finished runs")
    study = read_study_json(directory)
    config = study.get("config") or store.records[-1].get("config") or {}
    seeds = list(config.get("seeds", sorted({r["seed"] for r in store.records})))
    findings = analyse(store.records, seeds)
    groups: list[Group] = findings.sections["groups"]["groups"]
    write_summary_csv(groups, directory / "summary.csv")
    payload = findings_json(findings, study, store.records)
    atomic_write_json(directory / "findings.json", payload)

    writer = FigureWriter(directory / "figures")
    class_names = list(study.get("class_names") or [])
    num_classes = int(study.get("num_classes") or 0)
    settings = study.get("settings", {})
    sweeps = []
    for setting in ("main", "overconfident"):
        section = findings.sections.get(f"sweep:{setting}")
        if section is None:
            continue
        info = settings.get(setting, {})
        sweeps.append(
            {
                "setting": setting,
                "description": info.get("description", setting),
                "n_train": info.get("n_train", "?"),
                "n_val": info.get("n_val", "?"),
                "n_test": info.get("n_test", "?"),
                "epochs": info.get("epochs", config.get("epochs")),
                "sentences": section["sentences"],
                "rows": section["rows"],
                "ts_rows": section["ts_rows"],
                "geometry_rows": section["geometry_rows"],
                "geometry_sentences": section["geometry_sentences"],
                "figures": sweep_figures(
                    store,
                    findings,
                    setting,
                    writer,
                    config.get("projection_classes", (0, 1, 2)),
                    class_names,
                    info.get("num_classes", num_classes),
                ),
            }
        )
    verdict = None
    main = findings.sections.get("sweep:main")
    if main is not None:
        verdict = {
            "rows": main["verdict"],
            "setting_description": settings.get("main", {}).get("description", "main setting"),
            "figures": verdict_figures(findings, writer),
        }
    variants = []
    for setting in ("main", "overconfident"):
        section = findings.sections.get(f"variants:{setting}")
        if section is not None:
            info = settings.get(setting, {})
            variants.append(
                {
                    **section,
                    "description": info.get("description", setting),
                    "n_train": info.get("n_train", "?"),
                    "n_val": info.get("n_val", "?"),
                    "n_test": info.get("n_test", "?"),
                    "chance": chance_count(section["intervals"]),
                }
            )
    runs = payload["runs"]
    meta = {
        "dataset": study.get("dataset", config.get("dataset")),
        "dataset_spec": config.get("dataset"),
        "num_classes": num_classes or "?",
        "class_names": class_names,
        "class_mapping": ", ".join(f"{i} → {name}" for i, name in enumerate(class_names)),
        "n_train": study.get("n_train", "?"),
        "n_val": study.get("n_val", "?"),
        "n_test": study.get("n_test") or 1,
        "n_seeds": len(seeds),
        "seeds": ", ".join(str(s) for s in seeds),
        "complete": payload["complete"],
        "finished": runs["finished"],
        "planned": runs["planned"],
        "diverged": runs["diverged"],
        "validation_fraction": config.get("validation_fraction", 0.15),
        "width": config.get("width"),
        "depth": config.get("depth"),
        "lr": config.get("lr"),
        "batch_size": config.get("batch_size"),
        "epochs": config.get("epochs"),
        "student_width": config.get("student_width"),
        "n_bins": config.get("n_bins", 15),
        "select_text": _select_text(config.get("select", "accuracy")),
        "model_description": study.get("model_description"),
        "patience": config.get("patience"),
        "minutes": f"{sum(r.get('seconds', 0) for r in store.records) / 60:.1f}",
        "fingerprint": study.get("fingerprint", "?"),
        "versions": json.dumps(store.records[0].get("versions", {})),
        "notes": study.get("notes", []),
    }
    page = (
        _environment()
        .get_template("report.html.j2")
        .render(
            meta=meta,
            verdict=verdict,
            recommendation=findings.recommendation,
            verdict_metrics=list(VERDICT_METRICS),
            sweep_metrics=list(SWEEP_METRICS),
            sweeps=sweeps,
            variants=variants,
            sections=sections(findings, store.load_arrays, writer.save, study),
            variant_metrics=list(VARIANT_METRICS),
        )
    )
    atomic_write_bytes(directory / "report.html", page.encode())
    verdict_text = ""
    if main is not None:
        verdict_text = format_text_table(
            ["model", *[_label(m) for m in ("nll", "brier", "ece", "accuracy")]],
            [
                (
                    row.label,
                    [_text_cell(row, m) for m in ("nll", "brier", "ece", "accuracy")],
                )
                for row in main["verdict"]
            ],
        )
    return {
        "report": directory / "report.html",
        "summary": directory / "summary.csv",
        "findings": directory / "findings.json",
        "figures": sorted(directory.glob("figures/*.png")),
        "verdict_table": verdict_text,
        "recommendation": findings.recommendation.get("text", ""),
        "complete": payload["complete"],
        "runs": runs,
    }


def _text_cell(row: Row, metric: str) -> str:
    value = row.values.get(metric, math.nan)
    d = _digits(metric)
    text = "–" if value is None or math.isnan(value) else f"{value:.{d}f}"
    comparison = row.comparisons.get(metric)
    if comparison is not None:
        text += f" ({format_delta(comparison, d)})"
    return text


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


__all__ = ["METRICS", "format_text_table", "render_report", "write_summary_csv"]

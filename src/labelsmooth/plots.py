"""Matplotlib figures of the diagnostics in :mod:`labelsmooth.metrics` and :mod:`.analysis`.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``show``. The
figures are built on :class:`~matplotlib.figure.Figure` directly, without ``pyplot``, so no
backend or display is needed and the global pyplot state is untouched; save one with
``figure.savefig("out.png")``. Pass ``ax=`` to draw into an existing axes (e.g. a panel of
a larger figure); the figure that holds it is returned.

Needs the ``study`` extra (matplotlib).

Example:
    >>> import torch
    >>> probs = torch.softmax(torch.randn(200, 5) * 3, dim=1)
    >>> figure = reliability_diagram(probs, torch.randint(0, 5, (200,)), n_bins=10)
    >>> figure.axes[0].get_xlabel()
    'Confidence'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import metrics
from .analysis import PenultimateProjection

__all__ = [
    "confidence_histogram",
    "logit_gap_histogram",
    "penultimate_scatter",
    "reliability_diagram",
    "risk_coverage_plot",
]

_DEFAULT_SIZE = (4.5, 4.0)


def _axes(ax: Axes | None, figsize: tuple[float, float] = _DEFAULT_SIZE) -> tuple[Figure, Axes]:
    """A new figure with one axes, or the root figure of ``ax``."""
    if ax is None:
        figure = Figure(figsize=figsize, layout="constrained")
        return figure, figure.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    parent = ax.figure
    while not isinstance(parent, Figure):  # a SubFigure: climb to the figure that holds it
        parent = parent.figure
    return parent, ax


def reliability_diagram(
    probs: metrics.ArrayLike,
    labels: metrics.ArrayLike,
    n_bins: int = 15,
    binning: str = "uniform",
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Reliability diagram (Guo et al. 2017): accuracy per confidence bin, and the gaps.

    Blue bars are the accuracy of each non-empty bin; hatched red bars span from the
    accuracy to the mean confidence of the bin (the calibration gap: red above the blue bar
    means over-confident, red over the top of the blue bar under-confident); the dashed
    diagonal is perfect calibration. The title ends with
    the ECE of the same bins, in percent.

    Args:
        probs: (N, C) class probabilities. labels: (N,) class indices.
        n_bins, binning: as :func:`labelsmooth.metrics.reliability_curve`.
        ax: draw into this axes instead of a new figure.
        title: text before the ECE in the title.
    """
    curve = metrics.reliability_curve(probs, labels, n_bins, binning)
    figure, ax = _axes(ax)
    filled = curve.counts > 0
    left = curve.edges[:-1][filled]
    width = np.diff(curve.edges)[filled]
    accuracy = curve.accuracy[filled]
    confidence = curve.confidence[filled]
    ax.bar(
        left,
        accuracy,
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="Accuracy",
    )
    ax.bar(
        left,
        confidence - accuracy,
        bottom=accuracy,
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.45,
        edgecolor="darkred",
        hatch="//",
        linewidth=0.6,
        label="Gap to mean confidence",
    )
    # The outline of the accuracy bars on top, so their height stays visible under a gap bar.
    ax.bar(left, accuracy, width=width, align="edge", fill=False, edgecolor="black", linewidth=0.6)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="Perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ece = 100 * curve.expected_calibration_error
    ax.set_title(f"{title}: ECE = {ece:.2f}%" if title else f"ECE = {ece:.2f}%")
    ax.legend(loc="upper left", fontsize="small", framealpha=0.9)
    return figure


def confidence_histogram(
    probs: metrics.ArrayLike,
    labels: metrics.ArrayLike | None = None,
    *,
    bins: int = 20,
    ax: Axes | None = None,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """Histogram of the top-label confidence: the "output distribution" view.

    Bars are the fraction of samples per confidence bin (equal-width bins on [0, 1]). With
    ``labels``, dashed and dotted vertical lines mark the accuracy and the mean confidence
    (Guo et al. 2017, Fig. 1): confidence to the right of accuracy is over-confidence. Call
    it again with the same ``ax`` and another ``label`` to overlay models.
    """
    array = metrics._check_probs(probs)
    if labels is not None:
        classes = metrics._check_labels(labels, array.shape[0], array.shape[1], "probs")
    bins = metrics._check_n_bins(bins)
    figure, ax = _axes(ax)
    confidence = array.max(axis=1)
    weights = np.full(confidence.shape, 1.0 / confidence.shape[0])
    _, _, patches = ax.hist(
        confidence,
        bins=bins,
        range=(0, 1),
        weights=weights,
        alpha=0.6,
        edgecolor="black",
        linewidth=0.5,
        label=label,
    )
    color = patches[0].get_facecolor()
    mean_confidence = float(confidence.mean())
    if labels is not None:
        accuracy = float(np.mean(array.argmax(axis=1) == classes))
        ax.axvline(
            accuracy,
            color=color,
            linestyle="--",
            linewidth=1.5,
            alpha=1.0,
            label=f"accuracy {accuracy:.3f}",
        )
    ax.axvline(
        mean_confidence,
        color=color,
        linestyle=":",
        linewidth=1.5,
        alpha=1.0,
        label=f"mean confidence {mean_confidence:.3f}",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("Confidence (max probability)")
    ax.set_ylabel("Fraction of samples")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return figure


def logit_gap_histogram(
    logits_by_eps: Mapping[float, metrics.ArrayLike],
    *,
    style: str = "uniform",
    bins: int = 40,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Histograms of the logit gap, one per eps, each with its theoretical optimum.

    For every ``eps -> logits`` entry: the histogram of
    :func:`labelsmooth.metrics.logit_gap` over the rows of ``logits``, and a vertical line at
    :func:`labelsmooth.metrics.theoretical_gap` ``(eps, K, style)`` in the same colour (none
    for eps = 0, whose optimum is infinite). A model trained to convergence with smoothing
    eps has its gaps piled up just below the line.

    Args:
        logits_by_eps: smoothing rate -> (N, K) logits of the model trained with it.
        style: the smoothing convention the models were trained with.
        bins: number of equal-width bins, shared by all histograms.
    """
    if not isinstance(logits_by_eps, Mapping) or not logits_by_eps:
        raise TypeError(
            f"logits_by_eps must be a non-empty mapping eps -> logits, "
            f"got {type(logits_by_eps).__name__}"
        )
    bins = metrics._check_n_bins(bins)
    entries = []
    for eps, logits in logits_by_eps.items():
        array = metrics._check_logits(logits, f"logits_by_eps[{eps!r}]")
        target = metrics.theoretical_gap(eps, array.shape[1], style)
        entries.append((float(eps), np.asarray(metrics.logit_gap(array)), target))
    figure, ax = _axes(ax, (5.5, 4.0))
    finite_targets = [t for _, _, t in entries if np.isfinite(t)]
    low = min(0.0, *(float(g.min()) for _, g, _ in entries))
    high = max([float(g.max()) for _, g, _ in entries] + finite_targets) * 1.05 + 1e-9
    edges = np.linspace(low, high, bins + 1)
    for eps, gaps, target in entries:
        weights = np.full(gaps.shape, 1.0 / gaps.shape[0])
        _, _, patches = ax.hist(
            gaps, bins=edges, weights=weights, alpha=0.5, label=f"eps = {eps:g}"
        )
        if np.isfinite(target):
            ax.axvline(
                target,
                color=patches[0].get_facecolor(),
                alpha=1.0,
                linestyle="--",
                linewidth=1.5,
                label=f"optimum {target:.2f} (eps = {eps:g})",
            )
    ax.set_xlabel("Logit gap: max logit - mean of the others")
    ax.set_ylabel("Fraction of samples")
    ax.set_title(title or f"Logit gap (style={style!r})")
    ax.legend(fontsize="small")
    return figure


def penultimate_scatter(
    projection: PenultimateProjection,
    *,
    ax: Axes | None = None,
    show_templates: bool = False,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter of :func:`labelsmooth.analysis.penultimate_projection` (Müller et al. 2019, Fig. 1).

    One colour per class. ``show_templates`` also marks the projected templates with stars;
    it is off by default because templates (weights) and features often differ in scale by
    orders of magnitude, which would squeeze the clusters into a corner.

    Args:
        projection: the result of ``penultimate_projection``.
        class_names: three names for the legend, in the order of ``projection.classes``.
    """
    if not isinstance(projection, PenultimateProjection):
        raise TypeError(
            f"projection must be a PenultimateProjection, got {type(projection).__name__}"
        )
    names = [f"class {c}" for c in projection.classes] if class_names is None else class_names
    if len(names) != 3:
        raise ValueError(f"class_names must hold 3 names, got {len(names)}")
    figure, ax = _axes(ax)
    colors = ("tab:blue", "tab:orange", "tab:green")
    for index, (cls, name) in enumerate(zip(projection.classes, names, strict=True)):
        points = projection.points[projection.labels == cls]
        ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.6, color=colors[index], label=name)
        if show_templates:
            x, y = projection.templates[index]
            ax.scatter([x], [y], s=200, marker="*", color=colors[index], edgecolor="black")
    ax.set_xlabel("u1 (along t_b - t_a)")
    ax.set_ylabel("u2")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", markerscale=2)
    return figure


def risk_coverage_plot(
    probs: metrics.ArrayLike,
    labels: metrics.ArrayLike,
    *,
    ax: Axes | None = None,
    label: str | None = None,
    title: str | None = None,
) -> Figure:
    """Risk-coverage curve of maximum-probability selection, with its AURC in the legend.

    The step function of :func:`labelsmooth.metrics.risk_coverage_curve`: the selective risk
    on (c_{g-1}, c_g] is r_g, so the area under the drawn curve is the AURC. Call it again
    with the same ``ax`` and another ``label`` to compare models.
    """
    curve = metrics.risk_coverage_curve(probs, labels)
    figure, ax = _axes(ax)
    coverage = np.concatenate(([0.0], curve.coverage))
    risk = np.concatenate((curve.risk[:1], curve.risk))
    name = f"{label}: " if label else ""
    ax.step(coverage, risk, where="pre", label=f"{name}AURC = {curve.aurc:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Coverage")
    ax.set_ylabel("Selective risk (error rate)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return figure

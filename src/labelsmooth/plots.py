"""Matplotlib figures of the diagnostics in :mod:`labelsmooth.metrics` and :mod:`.analysis`.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``show``. The
figures are built on :class:`~matplotlib.figure.Figure` directly, without ``pyplot``, so no
backend or display is needed and the global pyplot state is untouched; save one with
``figure.savefig("out.png")``. Pass ``ax=`` to draw into an existing axes (e.g. a panel of
a larger figure); the figure that holds it is returned.

Conventions shared by all figures: both axes are labelled; legends sit under the x-axis
label, outside the axes, so they never cover data (the figures made here use constrained
layout, which makes room for them; a figure of your own should use
``layout="constrained"``, or ``"compressed"`` for reliability diagrams, whose aspect is
fixed, or be saved with ``bbox_inches="tight"``); overlaid histograms are step outlines,
so several stay readable; non-negative quantities have their y-axis start at 0.

Needs the ``study`` extra (matplotlib).

Example:
    >>> import torch
    >>> probs = torch.softmax(torch.randn(200, 5) * 3, dim=1)
    >>> figure = reliability_diagram(probs, torch.randint(0, 5, (200,)), n_bins=10)
    >>> figure.axes[0].get_xlabel()
    'confidence'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure, SubFigure
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from . import metrics
from .analysis import PenultimateProjection

__all__ = [
    "confidence_histogram",
    "heatmap",
    "logit_gap_histogram",
    "paired_difference_plot",
    "penultimate_scatter",
    "reliability_diagram",
    "risk_coverage_plot",
    "small_multiples_histogram",
]

_DEFAULT_SIZE = (4.5, 4.0)
_LINEWIDTH = 1.5  # of histogram outlines and curves


def _root(figure: Figure | SubFigure) -> Figure:
    """The top-level figure that holds ``figure`` (itself, or the root of a SubFigure)."""
    while not isinstance(figure, Figure):  # a SubFigure: climb to the figure that holds it
        figure = figure.figure
    return figure


def _axes(
    ax: Axes | None, figsize: tuple[float, float] = _DEFAULT_SIZE, layout: str = "constrained"
) -> tuple[Figure, Axes]:
    """A new figure with one axes, or the root figure of ``ax``.

    ``layout="compressed"`` is for an axes of fixed aspect: plain constrained layout can
    push its title or legend out of the figure.
    """
    if ax is None:
        figure = Figure(figsize=figsize, layout=layout)
        return figure, figure.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return _root(ax.figure), ax


def _tint(color: str, strength: float = 0.5) -> tuple[float, float, float]:
    """``color`` mixed with white: opaque, so it reads the same over a bar and in a legend."""
    red, green, blue, _ = to_rgba(color)
    return (
        1.0 - strength * (1.0 - red),
        1.0 - strength * (1.0 - green),
        1.0 - strength * (1.0 - blue),
    )


def _points(size: float | str) -> float:
    """A font size (number or name such as ``"small"``) in points."""
    return float(FontProperties(size=size).get_size_in_points())


def _space_below(ax: Axes) -> float:
    """Points from the bottom of ``ax`` to below its x tick labels and x-axis label."""
    space = max(float(rcParams["xtick.major.size"]), 0.0) + float(rcParams["xtick.major.pad"])
    space += 1.4 * _points(rcParams["xtick.labelsize"])
    xlabel = ax.get_xlabel()
    if xlabel:
        lines = xlabel.count("\n") + 1
        space += float(ax.xaxis.labelpad) + 1.4 * lines * float(ax.xaxis.label.get_size())
    return space + 4.0


def _legend_below(
    ax: Axes,
    handles: Sequence[object] | None = None,
    labels: Sequence[str] | None = None,
    *,
    ncols: int = 1,
    **kwargs: object,
) -> Legend:
    """A framed legend centred under the x-axis label of ``ax``: it cannot cover the data.

    Set the x-axis label first: the offset leaves room for it. The anchor is an offset in
    points from the bottom of the axes, so it holds at any dpi and axes size.
    """
    anchor = offset_copy(ax.transAxes, fig=_root(ax.figure), y=-_space_below(ax), units="points")
    options: dict[str, object] = {
        "loc": "upper center",
        "bbox_to_anchor": (0.5, 0.0),
        "bbox_transform": anchor,
        "ncols": ncols,
        "fontsize": "small",
        "frameon": True,
        "framealpha": 1.0,
    }
    options.update(kwargs)
    if handles is None:
        return ax.legend(**options)
    return ax.legend(handles, labels, **options)


def _zero_based_ylim(ax: Axes, data_top: float, ylim: tuple[float, float] | None) -> None:
    """y from 0 to above everything drawn so far (``ylim`` overrides).

    ``set_ylim`` turns y autoscaling off, so a later overlay on the same axes would be cut;
    the top is therefore the larger of the current top and this call's data (plus 5%).
    """
    if ylim is not None:
        ax.set_ylim(*ylim)
        return
    top = float(ax.get_ylim()[1])
    if math.isfinite(data_top) and data_top > 0:
        top = max(top, 1.05 * data_top)
    ax.set_ylim(0.0, top if top > 0 else 1.0)


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

    Blue bars are the accuracy of each non-empty bin (black outlines). Hatched bars span
    from the accuracy to the mean confidence of the bin (the calibration gap): light red
    ``//`` above the blue bar where the bin is over-confident (confidence > accuracy), light
    orange ``\\\\`` covering the top of the blue bar, down to the confidence, where it is
    under-confident. The gap colours are opaque, so they match their legend entries. The
    dashed diagonal from the bottom-left corner is perfect calibration. Every drawn artist
    has a legend entry; the legend sits under the axes. The title ends with the ECE of the
    same bins, in percent.

    Args:
        probs: (N, C) class probabilities. labels: (N,) class indices.
        n_bins, binning: as :func:`labelsmooth.metrics.reliability_curve`.
        ax: draw into this axes instead of a new figure.
        title: text before the ECE in the title.
    """
    curve = metrics.reliability_curve(probs, labels, n_bins, binning)
    figure, ax = _axes(ax, (4.5, 5.2), layout="compressed")
    filled = curve.counts > 0
    left = curve.edges[:-1][filled]
    width = np.diff(curve.edges)[filled]
    accuracy = curve.accuracy[filled]
    confidence = curve.confidence[filled]
    handles = [
        ax.bar(
            left,
            accuracy,
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            linewidth=0.6,
            label="accuracy",
        )
    ]
    over = confidence >= accuracy
    gaps = (
        (over, "tab:red", "darkred", "//", "over-confidence gap"),
        (~over, "tab:orange", "saddlebrown", "\\\\", "under-confidence gap"),
    )
    for mask, color, edgecolor, hatch, label in gaps:
        if mask.any():
            bars = ax.bar(
                left[mask],
                (confidence - accuracy)[mask],
                bottom=accuracy[mask],
                width=width[mask],
                align="edge",
                color=_tint(color),
                edgecolor=edgecolor,
                hatch=hatch,
                linewidth=0.6,
                label=label,
            )
            handles.append(bars)
    # The outline of the accuracy bars on top, so their height stays visible under a gap bar.
    ax.bar(left, accuracy, width=width, align="edge", fill=False, edgecolor="black", linewidth=0.6)
    handles += ax.plot(
        [0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration"
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ece = 100 * curve.expected_calibration_error
    ax.set_title(f"{title}: ECE = {ece:.2f}%" if title else f"ECE = {ece:.2f}%")
    _legend_below(ax, handles, [h.get_label() for h in handles])
    return figure


def confidence_histogram(
    probs: metrics.ArrayLike,
    labels: metrics.ArrayLike | None = None,
    *,
    bins: int = 20,
    ax: Axes | None = None,
    label: str | None = None,
    title: str | None = None,
    accuracy: float | None = None,
    color: str | None = None,
    linestyle: str = "-",
) -> Figure:
    """Histogram of the top-label confidence: the "output distribution" view.

    A step outline (no fill) of the fraction of samples per confidence bin (equal-width
    bins on [0, 1]), so that several models overlaid on one axes stay readable: call it
    again with the same ``ax`` and another ``label``; each call takes the next colour of the
    axes' cycle unless ``color`` is given. A dotted vertical line in the same colour marks
    the mean confidence, and a dashed one the accuracy, computed from ``labels`` or given as
    ``accuracy`` (Guo et al. 2017, Fig. 1): confidence to the right of accuracy is
    over-confidence. The legend sits under the axes.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) class indices, to mark the accuracy; or pass ``accuracy``.
        bins: number of equal-width bins on [0, 1].
        label: legend entry of this histogram.
        accuracy: the accuracy to mark, in [0, 1], when ``labels`` is not given.
        color, linestyle: of the outline (and of the colour of its marker lines).
    """
    array = metrics._check_probs(probs)
    if labels is not None:
        if accuracy is not None:
            raise TypeError("pass labels or accuracy, not both")
        classes = metrics._check_labels(labels, array.shape[0], array.shape[1], "probs")
        accuracy = float(np.mean(array.argmax(axis=1) == classes))
    elif accuracy is not None:
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float, np.number)):
            raise TypeError(f"accuracy must be a number or None, got {type(accuracy).__name__}")
        accuracy = float(accuracy)
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], got accuracy={accuracy}")
    bins = metrics._check_n_bins(bins)
    figure, ax = _axes(ax, (5.0, 4.6))
    confidence = array.max(axis=1)
    weights = np.full(confidence.shape, 1.0 / confidence.shape[0])
    _, _, patches = ax.hist(
        confidence,
        bins=bins,
        range=(0, 1),
        weights=weights,
        histtype="step",
        linewidth=_LINEWIDTH,
        linestyle=linestyle,
        color=color,
        label=label,
    )
    line_color = patches[0].get_edgecolor()
    mean_confidence = float(confidence.mean())
    if accuracy is not None:
        ax.axvline(
            accuracy,
            color=line_color,
            linestyle="--",
            linewidth=_LINEWIDTH,
            label=f"accuracy {accuracy:.3f}",
        )
    ax.axvline(
        mean_confidence,
        color=line_color,
        linestyle=":",
        linewidth=_LINEWIDTH,
        label=f"mean confidence {mean_confidence:.3f}",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("fraction of samples")
    if title:
        ax.set_title(title)
    entries = len(ax.get_legend_handles_labels()[0])
    _legend_below(ax, ncols=1 if entries <= 3 else 2)
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

    For every ``eps -> logits`` entry: the step-outline histogram of
    :func:`labelsmooth.metrics.logit_gap` over the rows of ``logits`` (fraction of samples
    per bin), and a dashed vertical line at :func:`labelsmooth.metrics.theoretical_gap`
    ``(eps, K, style)`` in the same colour, with its own legend entry (none for eps = 0,
    whose optimum is infinite). A model trained to convergence with smoothing eps has its
    gaps piled up just below the line. The legend sits under the axes.

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
    figure, ax = _axes(ax, (5.5, 5.0))
    finite_targets = [t for _, _, t in entries if np.isfinite(t)]
    low = min(0.0, *(float(g.min()) for _, g, _ in entries))
    high = max([float(g.max()) for _, g, _ in entries] + finite_targets) * 1.05 + 1e-9
    edges = np.linspace(low, high, bins + 1)
    for eps, gaps, target in entries:
        weights = np.full(gaps.shape, 1.0 / gaps.shape[0])
        _, _, patches = ax.hist(
            gaps,
            bins=edges,
            weights=weights,
            histtype="step",
            linewidth=_LINEWIDTH,
            label=f"eps = {eps:g}",
        )
        if np.isfinite(target):
            ax.axvline(
                target,
                color=patches[0].get_edgecolor(),
                linestyle="--",
                linewidth=_LINEWIDTH,
                label=f"optimum {target:.2f} (eps = {eps:g})",
            )
    ax.set_xlabel("logit gap (max logit − mean of the others)")
    ax.set_ylabel("fraction of samples")
    ax.set_title(title or f"Logit gap (style={style!r})")
    entries_in_legend = len(ax.get_legend_handles_labels()[0])
    _legend_below(ax, ncols=1 if entries_in_legend <= 3 else 2)
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

    One colour per class. ``show_templates`` also marks the projected templates with stars
    (one "templates" legend entry); it is off by default because templates (weights) and
    features often differ in scale by orders of magnitude, which would squeeze the clusters
    into a corner. The legend sits under the axes.

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
    figure, ax = _axes(ax, (4.5, 4.6))
    colors = ("tab:blue", "tab:orange", "tab:green")
    for index, (cls, name) in enumerate(zip(projection.classes, names, strict=True)):
        points = projection.points[projection.labels == cls]
        ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.6, color=colors[index], label=name)
        if show_templates:
            x, y = projection.templates[index]
            ax.scatter([x], [y], s=200, marker="*", color=colors[index], edgecolor="black")
    ax.set_xlabel("u1 (along t_b − t_a)")
    ax.set_ylabel("u2")
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if show_templates:
        star = Line2D(
            [], [], linestyle="none", marker="*", markersize=7, color="white", markeredgecolor="k"
        )
        handles, labels = [*handles, star], [*labels, "templates"]
    ncols = len(handles) if sum(len(text) + 6 for text in labels) <= 48 else 2
    _legend_below(ax, handles, labels, ncols=ncols, markerscale=2)
    return figure


def risk_coverage_plot(
    probs: metrics.ArrayLike,
    labels: metrics.ArrayLike,
    *,
    ax: Axes | None = None,
    label: str | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """Risk-coverage curve of maximum-probability selection, with its AURC in the legend.

    The step function of :func:`labelsmooth.metrics.risk_coverage_curve`: the selective risk
    on (c_{g-1}, c_g] is r_g, so the area under the drawn curve is the AURC. Call it again
    with the same ``ax`` and another ``label`` to compare models. The y-axis starts at 0
    and reaches above every curve drawn on the axes, unless ``ylim`` is given; the legend
    sits under the axes.
    """
    curve = metrics.risk_coverage_curve(probs, labels)
    figure, ax = _axes(ax, (4.5, 4.4))
    coverage = np.concatenate(([0.0], curve.coverage))
    risk = np.concatenate((curve.risk[:1], curve.risk))
    name = f"{label}: " if label else ""
    ax.step(
        coverage, risk, where="pre", linewidth=_LINEWIDTH, label=f"{name}AURC = {curve.aurc:.4f}"
    )
    ax.set_xlim(0, 1)
    _zero_based_ylim(ax, float(risk.max()), ylim)
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk (error rate)")
    if title:
        ax.set_title(title)
    _legend_below(ax)
    return figure


def small_multiples_histogram(
    values: Mapping[str, metrics.ArrayLike],
    *,
    bins: int = 40,
    range: tuple[float, float] | None = (0.0, 1.0),
    markers: Mapping[str, Sequence[float]] | None = None,
    xlabel: str = "value",
    ylabel: str = "fraction of values",
    log: bool = True,
    figure: Figure | SubFigure | None = None,
    ncols: int | None = None,
    marker_label: str = "target",
    color: str = "tab:blue",
    title: str | None = None,
) -> Figure:
    """One small histogram panel per entry, on shared x and y axes.

    Each panel is the step-outline histogram of the fraction of the entry's values (all
    elements, flattened) per bin, titled with its key; the bins are the same in every panel.
    ``markers[key]`` draws dashed vertical lines in that panel, e.g. the smoothed targets
    a/2 and 1 − a/2 on the output probabilities of a multi-label model, with a legend entry
    ``"{marker_label}: <positions>"`` under the panel.

    Args:
        values: panel title -> array of values (any shape).
        bins: number of equal-width bins.
        range: the binned interval; None: from the smallest to the largest value of all.
        markers: panel title -> positions of vertical lines (keys must be in ``values``).
        xlabel, ylabel: axis labels (x under the bottom row, y left of the first column).
        log: logarithmic y-axis.
        figure: an empty figure or subfigure to draw into (a root figure without a layout
            engine is switched to constrained layout, which makes room for the legends);
            default: a new figure sized to the grid.
        ncols: panels per row; default: all in one row up to 4, then rows of 4.
        title: title over all panels.

    Returns:
        The (root) figure, whose ``axes`` are the panels in the order of ``values``.
    """
    if not isinstance(values, Mapping) or not values:
        raise TypeError(
            f"values must be a non-empty mapping title -> array, got {type(values).__name__}"
        )
    bins = metrics._check_n_bins(bins)
    data: dict[str, np.ndarray] = {}
    for key, value in values.items():
        name = f"values[{key!r}]"
        array = metrics._as_array(name, value)[0].astype(np.float64).ravel()
        if array.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite")
        data[str(key)] = array
    markers = {} if markers is None else markers
    if not isinstance(markers, Mapping):
        raise TypeError(f"markers must be a mapping or None, got {type(markers).__name__}")
    unknown = [key for key in markers if str(key) not in data]
    if unknown:
        raise ValueError(f"markers has keys that are not in values: {unknown}")
    lines = {str(key): [float(x) for x in positions] for key, positions in markers.items()}
    if range is None:
        low = min(float(a.min()) for a in data.values())
        high = max(float(a.max()) for a in data.values())
        range = (low, high if high > low else low + 1.0)
    low, high = float(range[0]), float(range[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"range must be (low, high) with low < high, got {range}")
    edges = np.linspace(low, high, bins + 1)

    count = len(data)
    if ncols is None:
        ncols = min(count, 4)
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    ncols = min(ncols, count)
    nrows = -(-count // ncols)
    if figure is None:
        figure = Figure(figsize=(3.0 * ncols + 0.6, 3.0 * nrows + 0.4), layout="constrained")
    elif not isinstance(figure, (Figure, SubFigure)):
        raise TypeError(f"figure must be a matplotlib Figure or None, got {type(figure).__name__}")
    elif figure.axes:
        raise ValueError("figure must be empty: the panels fill all of it")
    elif isinstance(figure, Figure) and figure.get_layout_engine() is None:
        figure.set_layout_engine("constrained")
    grid = figure.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    panels = list(grid.ravel())
    for ax in panels[count:]:  # the empty slots of the last row
        ax.remove()
    for index, ((key, array), ax) in enumerate(zip(data.items(), panels, strict=False)):
        col = index % ncols
        bottom = index + ncols >= count  # no panel below: it shows the x-axis
        weights = np.full(array.shape, 1.0 / array.size)
        ax.hist(
            array,
            bins=edges,
            weights=weights,
            histtype="step",
            linewidth=_LINEWIDTH,
            color=color,
            log=log,
        )
        ax.set_title(key, fontsize="medium")
        ax.set_xlim(low, high)
        if bottom:
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(xlabel)
        if col == 0:
            ax.set_ylabel(ylabel)
        positions = lines.get(key, [])
        for position in positions:
            ax.axvline(position, color="tab:red", linestyle="--", linewidth=_LINEWIDTH)
        if positions:
            text = ", ".join(f"{p:.3g}" for p in positions)
            handle = Line2D([], [], color="tab:red", linestyle="--", linewidth=_LINEWIDTH)
            _legend_below(ax, [handle], [f"{marker_label}: {text}"])
    if title:
        figure.suptitle(title)
    return _root(figure)


def paired_difference_plot(
    rows: Sequence[tuple[str, float, float, float]],
    *,
    xlabel: str,
    ax: Axes | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    significant_color: str = "tab:blue",
    other_color: str = "0.6",
    interval_label: str = "95% CI",
) -> Figure:
    """Forest plot of paired differences against a baseline: one row per comparison.

    Each row ``(label, mean_delta, ci_low, ci_high)`` is a point at the mean difference and
    a horizontal error bar over its interval, top to bottom in the given order. Rows whose
    interval excludes 0 are drawn in ``significant_color``, the others (and rows without a
    finite interval) in ``other_color``; a vertical line marks 0. The x-axis is symmetric
    around 0 and wide enough for every point and interval. The legend sits under the axes.

    Args:
        rows: (label, mean difference, interval low, interval high) per comparison; an
            interval may be (nan, nan) when it is unknown (e.g. a single seed).
        xlabel: the x-axis label, e.g. ``"Δ accuracy vs. baseline (percentage points)"``.
        ylabel: optional y-axis label (the rows are labelled by their tick labels).
        interval_label: what the interval is, for the legend.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise TypeError(f"rows must be a non-empty sequence of tuples, got {type(rows).__name__}")
    parsed: list[tuple[str, float, float, float]] = []
    for index, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != 4:
            raise ValueError(f"rows[{index}] must be (label, mean, ci_low, ci_high), got {row!r}")
        label, mean, low, high = row
        mean, low, high = float(mean), float(low), float(high)
        if not math.isfinite(mean):
            raise ValueError(f"rows[{index}] has a non-finite mean difference: {mean}")
        if math.isfinite(low) != math.isfinite(high) or (math.isfinite(low) and low > high):
            raise ValueError(
                f"rows[{index}] must have ci_low <= ci_high (or both nan), got ({low}, {high})"
            )
        parsed.append((str(label), mean, low, high))
    figure, ax = _axes(ax, (5.5, 1.6 + 0.35 * len(parsed)))
    ax.axvline(0.0, color="black", linewidth=0.8, zorder=1)
    significant_drawn = other_drawn = unknown_drawn = False
    extent = 0.0
    for y, (_, mean, low, high) in enumerate(parsed):
        has_interval = math.isfinite(low)
        significant = has_interval and (low > 0 or high < 0)
        color = significant_color if significant else other_color
        if has_interval:
            ax.errorbar(
                (low + high) / 2,
                y,
                xerr=(high - low) / 2,
                fmt="none",
                ecolor=color,
                elinewidth=_LINEWIDTH,
                capsize=4,
                zorder=2,
            )
            extent = max(extent, abs(low), abs(high))
        ax.plot([mean], [y], marker="o", linestyle="none", color=color, markersize=6, zorder=3)
        extent = max(extent, abs(mean))
        significant_drawn |= significant
        other_drawn |= not significant
        unknown_drawn |= not has_interval
    extent = 1.12 * extent if extent > 0 else 1.0
    ax.set_xlim(-extent, extent)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, symmetric=True))  # readable in narrow panels
    ax.set_ylim(len(parsed) - 0.5, -0.5)  # the first row on top
    ax.set_yticks(np.arange(len(parsed)), [label for label, *_ in parsed])
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    handles, labels = [], []
    for drawn, color, text in (
        (significant_drawn, significant_color, f"{interval_label} excludes 0"),
        (
            other_drawn,
            other_color,
            f"{interval_label} includes 0" + (" or unknown" if unknown_drawn else ""),
        ),
    ):
        if drawn:
            handles.append(Line2D([], [], color=color, marker="o", linewidth=_LINEWIDTH))
            labels.append(text)
    _legend_below(ax, handles, labels, ncols=len(handles))
    return figure


def heatmap(
    values: metrics.ArrayLike,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    significant: metrics.ArrayLike | None = None,
    ax: Axes | None = None,
    xlabel: str = "column",
    ylabel: str = "row",
    title: str | None = None,
    cmap: str = "RdBu_r",
    digits: int = 3,
    colorbar_label: str = "mean difference",
) -> Figure:
    """A grid of numbers (e.g. paired mean differences) as coloured cells, each annotated.

    Colours run on a diverging map centred at 0 with symmetric limits (the largest absolute
    finite value), so the sign of every cell reads at a glance; a nan cell is grey and shows
    "–". Cells where ``significant`` is true (e.g. a 95% interval that excludes 0) have their
    number in bold with an asterisk. Rows are drawn top to bottom in the given order.

    Args:
        values: (rows, columns) numbers; nan where there is none.
        row_labels, col_labels: tick labels, one per row / column.
        significant: (rows, columns) booleans, or None for no marks.
        digits: decimals of the annotations (shown with a sign).
        colorbar_label: the colour bar's label.

    Example:
        >>> figure = heatmap([[0.01, -0.02]], row_labels=["a"], col_labels=["x", "y"],
        ...                  significant=[[True, False]])
        >>> [t.get_text() for t in figure.axes[0].texts]
        ['+0.010*', '-0.020']
    """
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"values must be a non-empty 2-D array, got shape {grid.shape}")
    rows, cols = grid.shape
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(
            f"row_labels and col_labels must have {rows} and {cols} entries, got "
            f"{len(row_labels)} and {len(col_labels)}"
        )
    marks = np.zeros(grid.shape, dtype=bool)
    if significant is not None:
        marks = np.asarray(significant, dtype=bool)
        if marks.shape != grid.shape:
            raise ValueError(
                f"significant must have the shape of values {grid.shape}, got {marks.shape}"
            )
    if np.isinf(grid).any():
        raise ValueError("values must be finite or nan")
    figure, ax = _axes(ax, (1.2 + 1.1 * cols, 1.0 + 0.6 * rows))
    finite = grid[np.isfinite(grid)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0
    from matplotlib import colormaps

    colormap = colormaps[cmap].with_extremes(bad="0.85")
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap=colormap, vmin=-limit, vmax=limit, aspect="auto"
    )
    for i in range(rows):
        for j in range(cols):
            value = grid[i, j]
            if not math.isfinite(value):
                ax.text(j, i, "–", ha="center", va="center", color="black")
                continue
            shade = colormap((value + limit) / (2 * limit))
            luminance = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2]
            text = f"{value:+.{digits}f}" + ("*" if marks[i, j] else "")
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if luminance < 0.5 else "black",
                fontweight="bold" if marks[i, j] else "normal",
                fontsize="small",
            )
    ax.set_xticks(np.arange(cols), [str(c) for c in col_labels])
    ax.set_yticks(np.arange(rows), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    colorbar = figure.colorbar(image, ax=ax)
    colorbar.set_label(colorbar_label)
    return figure

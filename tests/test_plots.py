"""labelsmooth.plots: every figure renders to PNG without a display and without pyplot."""

import doctest
import io
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import same_color, to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from matplotlib.patches import Polygon, Rectangle  # noqa: E402

from labelsmooth import metrics, plots  # noqa: E402
from labelsmooth.analysis import penultimate_projection  # noqa: E402


def sample(n=300, k=5, scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * scale
    labels = torch.randint(0, k, (n,), generator=generator)
    return logits, labels


def saved_png(figure, path):
    assert isinstance(figure, Figure)
    figure.savefig(path, dpi=50)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0.01  # something was drawn
    return image


def test_reliability_diagram(tmp_path):
    logits, labels = sample()
    probs = torch.softmax(logits, 1)
    figure = plots.reliability_diagram(probs, labels, n_bins=10, title="baseline")
    saved_png(figure, tmp_path / "reliability.png")
    ax = figure.axes[0]
    ece = metrics.expected_calibration_error(probs, labels, 10)
    assert ax.get_title() == f"baseline: ECE = {100 * ece:.2f}%"
    filled = int((metrics.reliability_curve(probs, labels, 10).counts > 0).sum())
    assert len(ax.patches) == 3 * filled  # accuracy bars, gap bars, accuracy outlines
    quantile = plots.reliability_diagram(probs.numpy(), labels.numpy(), binning="quantile")
    saved_png(quantile, tmp_path / "quantile.png")


def test_plots_draw_into_given_axes_and_subfigures(tmp_path):
    logits, labels = sample()
    probs = torch.softmax(logits, 1)
    figure = Figure(figsize=(8, 4))
    left, right = figure.subplots(1, 2)
    assert plots.reliability_diagram(probs, labels, ax=left) is figure
    assert plots.risk_coverage_plot(probs, labels, ax=right, label="a") is figure
    assert plots.risk_coverage_plot(torch.softmax(logits * 0.3, 1), labels, ax=right) is figure
    assert len(figure.axes) == 2
    saved_png(figure, tmp_path / "panels.png")
    nested = Figure()
    subfigure = nested.subfigures(1, 2)[1]
    ax = subfigure.add_subplot()
    assert plots.confidence_histogram(probs, ax=ax) is nested
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plots.confidence_histogram(probs, ax="left")


def test_confidence_histogram(tmp_path):
    logits, labels = sample()
    probs = torch.softmax(logits, 1)
    figure = plots.confidence_histogram(probs, labels, bins=15, label="eps = 0", title="outputs")
    plots.confidence_histogram(torch.softmax(logits / 3, 1), labels, ax=figure.axes[0])
    saved_png(figure, tmp_path / "confidence.png")
    texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    accuracy = float((probs.argmax(1) == labels).float().mean())
    assert f"accuracy {accuracy:.3f}" in texts
    outline = figure.axes[0].patches[0]  # a step outline: (x, 0), then two corners per bin
    heights = outline.get_xy()[1:-1:2, 1]
    assert len(heights) == 15
    assert sum(heights) == pytest.approx(1.0)
    saved_png(plots.confidence_histogram(probs), tmp_path / "no_labels.png")


def test_logit_gap_histogram(tmp_path):
    logits, _ = sample(k=10)
    figure = plots.logit_gap_histogram({0.0: logits, 0.1: logits * 0.5, 0.3: logits.numpy() * 0.2})
    saved_png(figure, tmp_path / "gap.png")
    ax = figure.axes[0]
    vertical = [line for line in ax.get_lines() if len(set(line.get_xdata())) == 1]
    positions = sorted(float(line.get_xdata()[0]) for line in vertical)
    expected = sorted(metrics.theoretical_gap(e, 10, "uniform") for e in (0.1, 0.3))
    assert positions == pytest.approx(expected)  # none for eps = 0 (infinite)
    others = plots.logit_gap_histogram({0.1: logits}, style="others")
    line = others.axes[0].get_lines()[0]
    assert float(line.get_xdata()[0]) == pytest.approx(metrics.theoretical_gap(0.1, 10, "others"))
    with pytest.raises(ValueError, match="eps must be in"):
        plots.logit_gap_histogram({1.5: logits})
    with pytest.raises(TypeError, match="non-empty mapping"):
        plots.logit_gap_histogram([logits])
    with pytest.raises(TypeError, match="non-empty mapping"):
        plots.logit_gap_histogram({})


def test_penultimate_scatter(tmp_path):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 6, generator=generator)
    features = torch.randn(90, 6, generator=generator)
    labels = torch.arange(90) % 4
    projection = penultimate_projection(features, weight, torch.zeros(4), labels, (0, 1, 3))
    figure = plots.penultimate_scatter(projection, class_names=["cat", "dog", "car"], title="t")
    saved_png(figure, tmp_path / "scatter.png")
    texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert texts == ["cat", "dog", "car"]
    with_templates = plots.penultimate_scatter(projection, show_templates=True)
    assert len(with_templates.axes[0].collections) == 6
    with pytest.raises(TypeError, match="PenultimateProjection"):
        plots.penultimate_scatter(features)
    with pytest.raises(ValueError, match="class_names must hold 3 names"):
        plots.penultimate_scatter(projection, class_names=["a"])


def test_risk_coverage_plot(tmp_path):
    logits, labels = sample()
    probs = torch.softmax(logits, 1)
    figure = plots.risk_coverage_plot(probs, labels, label="model", title="selective")
    saved_png(figure, tmp_path / "risk.png")
    text = figure.axes[0].get_legend().get_texts()[0].get_text()
    assert text == f"model: AURC = {metrics.aurc(probs, labels):.4f}"


def test_bad_input_is_reported_by_the_metric():
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        plots.reliability_diagram(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        plots.confidence_histogram(torch.full((2, 2), 0.5), bins=0)


def test_renders_headless_without_pyplot(tmp_path):
    """A fresh interpreter with no display and an interactive backend configured."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        from labelsmooth import plots
        probs = torch.softmax(torch.randn(50, 3), 1)
        labels = torch.randint(0, 3, (50,))
        plots.reliability_diagram(probs, labels).savefig({str(tmp_path / "headless.png")!r})
        assert "matplotlib.pyplot" not in sys.modules
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    assert (tmp_path / "headless.png").stat().st_size > 0


def test_docstring_examples():
    result = doctest.testmod(plots, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# ----------------------------------------------------------------------------------------------
# Readability: labels, legends that cover no data, step histograms, zero-based y-axes
# ----------------------------------------------------------------------------------------------


def png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


def drawn(figure):
    """Draw with the Agg canvas (as savefig does) and return its renderer."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def assert_legends_clear(figure):
    """Every legend lies inside the figure, under its own x-axis label, on no axes."""
    renderer = drawn(figure)
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert legends
    for ax in figure.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        assert figure.bbox.containsx(box.x0) and figure.bbox.containsx(box.x1), ax.get_title()
        assert box.y0 >= figure.bbox.y0 - 1, ax.get_title()
        xaxis = ax.xaxis.get_tightbbox(renderer)  # None when its tick labels are hidden
        assert box.y1 <= (ax.bbox if xaxis is None else xaxis).y0 + 1, ax.get_title()
        for other in figure.axes:
            assert not box.overlaps(other.get_window_extent(renderer)), ax.get_title()
    for ax in figure.axes:  # titles, tick labels and legends all inside the figure
        inside = ax.get_tightbbox(renderer)
        assert inside.x0 >= -1 and inside.y0 >= -1, ax.get_title()
        assert inside.x1 <= figure.bbox.x1 + 1 and inside.y1 <= figure.bbox.y1 + 1, ax.get_title()


def assert_labelled(ax):
    assert ax.get_xlabel().strip(), ax.get_title()
    assert ax.get_ylabel().strip(), ax.get_title()


def legend_entries(ax):
    legend = ax.get_legend()
    return dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))


def vertical_lines(ax):
    """Lines such as axvline draws: two or more points, one x (not error-bar caps)."""
    return [
        line
        for line in ax.get_lines()
        if len(line.get_xdata()) > 1 and len(set(line.get_xdata())) == 1
    ]


def under_confident(n=400, k=5, seed=1):
    """Small-scale logits whose argmax is mostly right: accuracy above confidence."""
    logits, labels = sample(n, k, 0.3, seed)
    logits[torch.arange(n), labels] += 0.4
    return torch.softmax(logits, 1), labels


def every_figure():
    logits, labels = sample()
    probs = torch.softmax(logits, 1)
    generator = torch.Generator().manual_seed(0)
    weight, features = torch.randn(4, 6, generator=generator), torch.randn(90, 6)
    projection = penultimate_projection(
        features, weight, torch.zeros(4), torch.arange(90) % 4, (0, 1, 3)
    )
    return {
        "reliability": plots.reliability_diagram(probs, labels, title="baseline"),
        "confidence": plots.confidence_histogram(probs, labels, label="eps = 0"),
        "logit gap": plots.logit_gap_histogram({0.0: logits, 0.1: logits * 0.5}),
        "penultimate": plots.penultimate_scatter(projection, show_templates=True),
        "risk": plots.risk_coverage_plot(probs, labels, label="a"),
        "multiples": plots.small_multiples_histogram(
            {"eps=0": probs, "eps=0.1": probs * 0.9 + 0.02}, markers={"eps=0.1": [0.05, 0.95]}
        ),
        "forest": plots.paired_difference_plot(
            [("accuracy", 1.0, 0.5, 1.5), ("ECE", -0.2, -0.6, 0.3)], xlabel="Δ vs. baseline"
        ),
    }


@pytest.mark.parametrize("name", list(every_figure()))
def test_every_figure_is_labelled_with_its_legend_off_the_data(name):
    figure = every_figure()[name]
    assert len(png_bytes(figure)) > 1000
    for ax in figure.axes:
        assert ax.get_xlabel().strip() or not ax.xaxis.get_ticklabels()[0].get_visible()
        if name == "forest":  # rows are labelled by their tick labels
            assert ax.get_xlabel().strip()
            assert [t.get_text() for t in ax.get_yticklabels()] == ["accuracy", "ECE"]
        elif name != "multiples":
            assert_labelled(ax)
    assert_legends_clear(figure)


def test_legends_stay_off_neighbouring_panels():
    """As the report lays them out: three reliability panels in a row, then overlays."""
    logits, labels = sample()
    figure = Figure(figsize=(12.6, 4.6), layout="compressed")
    for ax, scale in zip(figure.subplots(1, 3), (3.0, 1.0, 0.3), strict=True):
        plots.reliability_diagram(torch.softmax(logits * scale, 1), labels, ax=ax, title="t")
    assert_legends_clear(figure)
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for eps, scale in ((0, 3.0), (0.05, 1.5), (0.1, 1.0), (0.2, 0.5)):
        plots.confidence_histogram(torch.softmax(logits * scale, 1), labels, ax=ax, label=f"{eps}")
    assert_legends_clear(figure)
    png_bytes(figure)


def test_reliability_legend_lists_every_drawn_artist():
    logits, labels = sample()
    over = plots.reliability_diagram(torch.softmax(logits, 1), labels, n_bins=10).axes[0]
    entries = legend_entries(over)
    names = list(entries)
    assert names[0] == "accuracy" and names[-1] == "perfect calibration"
    gap = entries["over-confidence gap"]
    assert isinstance(gap, Rectangle) and gap.get_hatch() == "//"
    red, _, blue, alpha = to_rgba(gap.get_facecolor())
    assert red > blue and alpha == 1  # opaque: the same colour over a bar as in the legend
    assert same_color(entries["accuracy"].get_facecolor(), "tab:blue")
    assert entries["perfect calibration"].get_linestyle() == "--"
    assert (over.get_xlabel(), over.get_ylabel()) == ("confidence", "accuracy")
    assert over.get_title().startswith("ECE = ")
    low, low_labels = under_confident()
    high, high_labels = sample(scale=6.0)  # confident and mostly wrong
    probs = torch.cat([low, torch.softmax(high, 1)])
    labels = torch.cat([low_labels, high_labels])
    both = plots.reliability_diagram(probs, labels, n_bins=10).axes[0]
    entries = legend_entries(both)
    assert entries["under-confidence gap"].get_hatch() == "\\\\"
    # every drawn gap bar looks like (hatch, face, edge) one legend entry
    look = lambda p: (p.get_hatch(), to_rgba(p.get_facecolor()), to_rgba(p.get_edgecolor()))  # noqa: E731
    drawn_gaps = {look(p) for p in both.patches if p.get_hatch()}
    assert {"//", "\\\\"} == {hatch for hatch, *_ in drawn_gaps}
    assert drawn_gaps <= {look(e) for e in entries.values() if isinstance(e, Rectangle)}


def test_histograms_are_step_outlines():
    logits, labels = sample()
    figure = plots.confidence_histogram(torch.softmax(logits, 1), labels, label="a")
    ax = figure.axes[0]
    plots.confidence_histogram(torch.softmax(logits / 3, 1), labels, ax=ax, label="b")
    gap = plots.logit_gap_histogram({0.0: logits, 0.1: logits * 0.5, 0.3: logits * 0.2})
    for axes, count in ((ax, 2), (gap.axes[0], 3)):
        assert len(axes.patches) == count
        for patch in axes.patches:
            assert isinstance(patch, Polygon)
            assert not patch.get_fill()
            assert patch.get_linewidth() == pytest.approx(1.5)
        colors = [to_rgba(p.get_edgecolor()) for p in axes.patches]
        assert len(set(colors)) == count  # each overlay in its own colour
        assert axes.get_ylim()[0] == 0
        assert_labelled(axes)
    # each marker line has the colour of its histogram
    for patch, accuracy_line in zip(ax.patches, vertical_lines(ax)[::2], strict=True):
        assert same_color(patch.get_edgecolor(), accuracy_line.get_color())
        assert accuracy_line.get_linestyle() == "--"


def test_confidence_histogram_marks_a_given_accuracy():
    probs = torch.softmax(sample()[0], 1)
    figure = plots.confidence_histogram(probs, accuracy=0.4, color="tab:green", linestyle="-.")
    ax = figure.axes[0]
    entries = legend_entries(ax)
    assert "accuracy 0.400" in entries
    line = entries["accuracy 0.400"]
    assert line.get_linestyle() == "--"
    dashed = [v for v in vertical_lines(ax) if v.get_linestyle() == "--"]
    assert [float(v.get_xdata()[0]) for v in dashed] == [pytest.approx(0.4)]
    assert same_color(dashed[0].get_color(), "tab:green")
    plots.confidence_histogram(probs, ax=ax)  # the default: solid
    assert ax.patches[0].get_linestyle() != ax.patches[1].get_linestyle()
    assert not any(
        t.startswith("accuracy") for t in legend_entries(plots.confidence_histogram(probs).axes[0])
    )
    with pytest.raises(TypeError, match="labels or accuracy, not both"):
        plots.confidence_histogram(probs, torch.zeros(300, dtype=torch.long), accuracy=0.5)
    with pytest.raises(ValueError, match=r"accuracy must be in \[0, 1\]"):
        plots.confidence_histogram(probs, accuracy=1.5)
    with pytest.raises(TypeError, match="accuracy must be a number"):
        plots.confidence_histogram(probs, accuracy="0.5")


def test_logit_gap_optima_are_in_the_legend():
    logits, _ = sample(k=10)
    ax = plots.logit_gap_histogram({0.0: logits, 0.1: logits * 0.5}).axes[0]
    entries = legend_entries(ax)
    target = metrics.theoretical_gap(0.1, 10, "uniform")
    assert f"optimum {target:.2f} (eps = 0.1)" in entries
    assert {"eps = 0", "eps = 0.1"} <= set(entries)
    assert isinstance(entries["eps = 0.1"], Polygon) or hasattr(entries["eps = 0.1"], "get_xy")


def test_risk_coverage_y_axis_starts_at_zero_and_fits_every_overlay():
    logits, labels = sample()
    good = torch.softmax(logits, 1).clone()
    good[torch.arange(300), labels] += 10.0
    good = good / good.sum(1, keepdim=True)
    figure = plots.risk_coverage_plot(good, labels, label="good")
    ax = figure.axes[0]
    low_top = ax.get_ylim()[1]
    plots.risk_coverage_plot(torch.softmax(logits, 1), labels, ax=ax, label="chance")
    worst = max(float(line.get_ydata().max()) for line in ax.get_lines())
    assert ax.get_ylim()[0] == 0
    assert ax.get_ylim()[1] >= worst > low_top
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("coverage", "risk (error rate)")
    fixed = plots.risk_coverage_plot(good, labels, ylim=(0, 0.5)).axes[0]
    assert fixed.get_ylim() == (0, 0.5)


def forest_rows():
    return [
        ("better", 2.0, 0.5, 3.5),
        ("worse", -1.0, -1.8, -0.2),
        ("unclear", 0.3, -0.4, 1.0),
        ("one seed", 0.8, math.nan, math.nan),
    ]


def test_paired_difference_plot_colours_the_significant_rows():
    figure = plots.paired_difference_plot(
        forest_rows(), xlabel="Δ accuracy (pp)", title="vs. baseline"
    )
    png_bytes(figure)
    ax = figure.axes[0]
    assert ax.get_xlabel() == "Δ accuracy (pp)"
    assert [t.get_text() for t in ax.get_yticklabels()] == [r[0] for r in forest_rows()]
    points = {int(line.get_ydata()[0]): line for line in ax.get_lines() if line.get_marker() == "o"}
    assert sorted(points) == [0, 1, 2, 3]
    assert [float(points[i].get_xdata()[0]) for i in range(4)] == [2.0, -1.0, 0.3, 0.8]
    colors = [to_rgba(points[i].get_color()) for i in range(4)]
    assert colors[0] == colors[1] == to_rgba("tab:blue")
    assert colors[2] == colors[3] == to_rgba("0.6")
    assert colors[0] != colors[2]
    # error bars: one per finite interval, in the colour of its row
    bars = [c for c in ax.collections if len(c.get_segments()) == 1]
    spans = sorted((float(s[0][0, 0]), float(s[0][1, 0])) for s in (b.get_segments() for b in bars))
    expected = sorted([(0.5, 3.5), (-1.8, -0.2), (-0.4, 1.0)])
    assert [x for span in spans for x in span] == pytest.approx([x for e in expected for x in e])
    low, high = ax.get_xlim()
    assert low == pytest.approx(-high)
    assert low < -1.8 and high > 3.5 and low < 0 < high
    assert [float(v.get_xdata()[0]) for v in vertical_lines(ax)] == [0.0]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first row on top
    assert list(legend_entries(ax)) == ["95% CI excludes 0", "95% CI includes 0 or unknown"]
    assert_legends_clear(figure)
    # into a given axes; all-zero rows still get a visible x-axis
    panel = Figure().add_subplot()
    zero = plots.paired_difference_plot([("same", 0.0, 0.0, 0.0)], xlabel="Δ", ax=panel)
    assert zero is panel.figure and panel.get_xlim() == (-1.0, 1.0)
    assert list(legend_entries(panel)) == ["95% CI includes 0"]


def test_paired_difference_plot_rejects_bad_rows():
    with pytest.raises(TypeError, match="non-empty sequence"):
        plots.paired_difference_plot([], xlabel="x")
    with pytest.raises(ValueError, match=r"rows\[0\] must be"):
        plots.paired_difference_plot([("a", 1.0, 2.0)], xlabel="x")
    with pytest.raises(ValueError, match="ci_low <= ci_high"):
        plots.paired_difference_plot([("a", 1.0, 2.0, 0.0)], xlabel="x")
    with pytest.raises(ValueError, match="non-finite mean"):
        plots.paired_difference_plot([("a", math.nan, 0.0, 1.0)], xlabel="x")
    with pytest.raises(TypeError, match="xlabel"):
        plots.paired_difference_plot([("a", 1.0, 0.0, 2.0)])


def test_small_multiples_histogram():
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "eps=0": torch.rand(200, 5, generator=generator) ** 4,
        "eps=0.1": 0.05 + 0.9 * torch.rand(200, 5, generator=generator),
        "eps=0.2": (0.1 + 0.8 * torch.rand(200, 5, generator=generator)).numpy(),
    }
    markers = {"eps=0.1": [0.05, 0.95], "eps=0.2": (0.1, 0.9)}
    figure = plots.small_multiples_histogram(
        outputs, markers=markers, xlabel="output probability", title="multi-label"
    )
    assert isinstance(figure, Figure)
    png_bytes(figure)
    axes = figure.axes
    assert len(axes) == 3
    assert [ax.get_title() for ax in axes] == list(outputs)
    for ax in axes:
        assert ax.get_xlabel() == "output probability"
        assert ax.get_yscale() == "log"
        assert len(ax.patches) == 1 and not ax.patches[0].get_fill()
        assert ax.get_shared_x_axes().joined(ax, axes[0])
        assert ax.get_shared_y_axes().joined(ax, axes[0])
        assert ax.get_xlim() == (0.0, 1.0)
    assert axes[0].get_ylabel() == "fraction of values"
    for ax in axes:
        expected = [float(x) for x in markers.get(ax.get_title(), [])]
        assert [float(v.get_xdata()[0]) for v in vertical_lines(ax)] == pytest.approx(expected)
        if expected:
            assert list(legend_entries(ax)) == [
                "target: " + ", ".join(f"{x:.3g}" for x in expected)
            ]
        else:
            assert ax.get_legend() is None
    heights = axes[1].patches[0].get_xy()[1:-1:2, 1]
    assert len(heights) == 40 and sum(heights) == pytest.approx(1.0)
    assert figure.get_suptitle() == "multi-label"
    assert_legends_clear(figure)


def test_small_multiples_grid_and_given_figures():
    values = {f"run {i}": torch.rand(50) for i in range(5)}
    figure = plots.small_multiples_histogram(
        values, ncols=2, log=False, range=None, markers={"run 1": [0.5]}, xlabel="p"
    )
    assert len(figure.axes) == 5
    for ax in figure.axes:  # every panel without one below it shows the x-axis and its label
        spec = ax.get_subplotspec()
        below = spec.rowspan.start + 1 < 3 and spec.colspan.start + 2 * (spec.rowspan.start + 1) < 5
        assert bool(ax.get_xlabel()) == (not below)
        if not below:
            assert all(t.get_visible() for t in ax.xaxis.get_ticklabels())
        assert bool(ax.get_ylabel()) == (spec.colspan.start == 0)
        assert ax.get_yscale() == "linear"
    png_bytes(figure)
    assert_legends_clear(figure)
    mine = Figure(figsize=(6, 3))
    assert plots.small_multiples_histogram(values, figure=mine, ncols=5) is mine
    assert len(mine.axes) == 5 and mine.get_layout_engine() is not None
    nested = Figure()
    sub = nested.subfigures(1, 2)[0]
    assert plots.small_multiples_histogram({"a": torch.rand(9)}, figure=sub) is nested
    with pytest.raises(ValueError, match="figure must be empty"):
        plots.small_multiples_histogram(values, figure=mine)
    with pytest.raises(TypeError, match="non-empty mapping"):
        plots.small_multiples_histogram({})
    with pytest.raises(ValueError, match="not in values"):
        plots.small_multiples_histogram(values, markers={"run 9": [0.5]})
    with pytest.raises(ValueError, match="must be finite"):
        plots.small_multiples_histogram({"a": torch.tensor([0.1, math.nan])})
    with pytest.raises(ValueError, match="is empty"):
        plots.small_multiples_histogram({"a": torch.zeros(0)})
    with pytest.raises(ValueError, match="range must be"):
        plots.small_multiples_histogram({"a": torch.rand(4)}, range=(1.0, 0.0))
    with pytest.raises(ValueError, match="ncols must be"):
        plots.small_multiples_histogram({"a": torch.rand(4)}, ncols=0)


def test_heatmap_annotates_cells_and_marks_significant_ones(tmp_path):
    values = [[0.012, -0.03], [math.nan, 0.0]]
    figure = plots.heatmap(
        values,
        row_labels=["0.001", "0.01"],
        col_labels=["0.1", "0.2"],
        significant=[[True, False], [False, False]],
        xlabel="eps",
        ylabel="learning rate",
        title="Δ accuracy",
    )
    ax = figure.axes[0]
    texts = ax.texts
    assert [t.get_text() for t in texts] == ["+0.012*", "-0.030", "–", "+0.000"]
    assert texts[0].get_fontweight() == "bold" and texts[1].get_fontweight() == "normal"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "eps",
        "learning rate",
        "Δ accuracy",
    )
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.001", "0.01"]
    image = ax.images[0]
    assert image.norm.vmin == pytest.approx(-0.03) and image.norm.vmax == pytest.approx(0.03)
    assert bool(image.get_array().mask[1, 0]) and not bool(image.get_array().mask[0, 0])
    assert len(figure.axes) == 2  # the panel and its colour bar
    path = tmp_path / "heatmap.png"
    figure.savefig(path)
    assert imread(path).shape[0] > 100
    with pytest.raises(ValueError, match="significant must have the shape"):
        plots.heatmap(values, row_labels=["a", "b"], col_labels=["x", "y"], significant=[[True]])
    with pytest.raises(ValueError, match="row_labels"):
        plots.heatmap(values, row_labels=["a"], col_labels=["x", "y"])

"""labelsmooth.plots: every figure renders to PNG without a display and without pyplot."""

import doctest
import os
import subprocess
import sys
import textwrap

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import imread  # noqa: E402

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
    heights = [p.get_height() for p in figure.axes[0].patches[:15]]
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

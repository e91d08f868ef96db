"""`labelsmooth.diagnose` and `labelsmooth diagnose FILE`: every conclusion from the numbers."""

from __future__ import annotations

import doctest
import functools
import io
import json
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import labelsmooth as ls
from labelsmooth import diagnosis, metrics
from labelsmooth.cli import main

DESIGN_FIELDS = (
    "accuracy",
    "nll",
    "ece",
    "temperature",
    "temperature_ok",
    "nll_after_temperature",
    "ece_after_temperature",
    "median_logit_gap",
    "implied_eps",
    "verdict",
)


def at_optimum(k, eps, style, n=800, noise=0.1, seed=0):
    """Logits of a model at the minimum of the smoothed loss: log(smoothed target) + noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=generator)
    target = ls.smooth_labels(labels, k, eps, style=style, dtype=torch.float64)
    return target.log() + noise * torch.randn(
        n, k, generator=generator, dtype=torch.float64
    ), labels


def calibrated(n=3000, k=10, seed=0):
    """Logits whose softmax is the true label distribution (labels drawn from it)."""
    generator = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, k, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
    return logits, labels


# --------------------------------------------------------------------------------------------
# The logit gap and the implied eps
# --------------------------------------------------------------------------------------------


@given(
    gap=st.floats(0.0, 40.0),
    k=st.integers(2, 100_000),
    style=st.sampled_from(["uniform", "others"]),
)
def test_implied_eps_inverts_the_theoretical_gap(gap, k, style):
    eps = diagnosis.implied_eps(gap, k, style)
    assert metrics.theoretical_gap(eps, k, style) == pytest.approx(gap, rel=1e-9, abs=1e-9)


@given(
    eps=st.floats(1e-6, 0.5),
    k=st.integers(2, 1000),
    style=st.sampled_from(["uniform", "others"]),
)
def test_theoretical_gap_of_an_eps_gives_it_back(eps, k, style):
    gap = metrics.theoretical_gap(eps, k, style)
    assert diagnosis.implied_eps(gap, k, style) == pytest.approx(eps, rel=1e-9)


def test_implied_eps_closed_forms_and_errors():
    g, k = 3.0, 7
    assert diagnosis.implied_eps(g, k) == pytest.approx(k / (k + math.exp(g) - 1))
    assert diagnosis.implied_eps(g, k, "others") == pytest.approx((k - 1) / (k - 1 + math.exp(g)))
    assert diagnosis.implied_eps(0.0, k) == 1.0
    assert diagnosis.implied_eps(1000.0, k) == 0.0  # no overflow
    with pytest.raises(ValueError, match="gap must be >= 0"):
        diagnosis.implied_eps(-1.0, k)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        diagnosis.implied_eps(1.0, 1)


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_logits_at_the_optimum_recover_eps_and_are_reported_at_it(eps, style):
    logits, labels = at_optimum(10, eps, style)
    unknown = ls.diagnose(logits, labels, n_bootstrap=0)
    assert unknown.implied_eps[style] == pytest.approx(eps, rel=0.1)
    assert unknown.gap_position is None and unknown.convention is None
    known = ls.diagnose(logits, labels, eps=eps, style=style, n_bootstrap=0)
    assert known.gap_position[style] == "at"
    assert f"With eps = {eps:g} ({style})" in known.verdict and "sits at it" in known.verdict
    # The same logits with another eps are not at its optimum.
    wrong = ls.diagnose(logits, labels, eps=2 * eps, style=style, n_bootstrap=0)
    assert wrong.gap_position[style] == "above" and "sits at it" not in wrong.verdict


@pytest.mark.parametrize("style", ["uniform", "others"])
def test_the_convention_is_named_where_the_gap_can_tell(style):
    # K = 3: the two conventions' implied eps differ by the factor 2/3, far beyond 10%.
    logits, labels = at_optimum(3, 0.1, style, noise=0.05)
    result = ls.diagnose(logits, labels, eps=0.1, n_bootstrap=0)
    assert result.convention == style
    assert f"Only the optimum of style={style!r} matches" in result.verdict
    # K = 20: they differ by the factor 0.95, within the 10% tolerance: it cannot tell.
    logits, labels = at_optimum(20, 0.1, style, noise=0.05)
    result = ls.diagnose(logits, labels, eps=0.1, n_bootstrap=0)
    assert result.convention == "either" and "cannot tell them apart" in result.verdict


def test_mixed_up_conventions_are_flagged():
    logits, labels = at_optimum(3, 0.1, "others", noise=0.05)
    result = ls.diagnose(logits, labels, eps=0.1, style="uniform", n_bootstrap=0)
    assert result.gap_position["uniform"] != "at"
    assert result.convention == "others"
    assert "mixed up" in result.verdict and "style='others'" in result.verdict
    right = ls.diagnose(logits, labels, eps=0.1, style="others", n_bootstrap=0)
    assert "mixed up" not in right.verdict


def test_gaps_above_the_optimum_say_smoothing_was_weaker_or_not_applied():
    logits, labels = at_optimum(10, 0.005, "uniform")
    result = ls.diagnose(logits, labels, eps=0.1, style="uniform", n_bootstrap=0)
    assert result.gap_position["uniform"] == "above"
    assert "weaker than stated or not applied" in result.verdict
    below = ls.diagnose(logits, labels, eps=0.001, style="uniform", n_bootstrap=0)
    assert below.gap_position["uniform"] == "below"


def test_the_gap_is_taken_over_the_correctly_classified_examples():
    # 45% of the examples at the eps = 0.1 optimum; 55% nearly flat with random labels (mostly
    # misclassified, small gaps), which drag a median over all examples down.
    logits, labels = at_optimum(10, 0.1, "uniform", n=1000)
    confused = slice(450, None)
    logits[confused] = 0.3 * torch.randn(550, 10, dtype=torch.float64)
    labels[confused] = torch.randint(0, 10, (550,))
    result = ls.diagnose(logits, labels, n_bootstrap=0)
    correct = (logits.argmax(-1) == labels).numpy()
    gaps = metrics.logit_gap(logits.numpy())
    assert result.gap_examples == "correctly classified" and result.gap_count == correct.sum()
    assert result.median_logit_gap == pytest.approx(float(np.median(gaps[correct])))
    assert result.median_logit_gap_all == pytest.approx(float(np.median(gaps)))
    assert result.implied_eps["uniform"] == pytest.approx(0.1, rel=0.1)
    # Over all examples the implied eps would be far off: the choice matters.
    assert diagnosis.implied_eps(result.median_logit_gap_all, 10) > 0.2


def test_train_logits_judge_the_position():
    train, train_labels = at_optimum(10, 0.1, "uniform", seed=1)
    test, test_labels = at_optimum(10, 0.1, "uniform", seed=2)
    test = 0.6 * test  # held-out examples: less confident, smaller gaps
    held_out = ls.diagnose(test, test_labels, eps=0.1, style="uniform", n_bootstrap=0)
    assert held_out.position_on == "logits" and held_out.gap_position["uniform"] == "below"
    assert "harder than the training ones" in held_out.verdict
    result = ls.diagnose(
        test,
        test_labels,
        eps=0.1,
        style="uniform",
        train_logits=train,
        train_labels=train_labels,
        n_bootstrap=0,
    )
    assert result.position_on == "train_logits" and result.gap_position["uniform"] == "at"
    assert result.train_implied_eps["uniform"] == pytest.approx(0.1, rel=0.1)
    assert "On the training examples" in result.verdict


# --------------------------------------------------------------------------------------------
# Calibration and temperature
# --------------------------------------------------------------------------------------------


def test_over_confident_model_fits_t_above_1_and_the_ece_drops():
    logits, labels = calibrated()
    result = ls.diagnose(4 * logits, labels, n_bootstrap=200)
    assert result.temperature_ok and result.temperature > 3
    assert result.ece_after_temperature < result.ece
    assert result.intervals["ece_drop"][0] > 0
    assert result.verdict.startswith("Over-confident: temperature scaling")
    assert "the ECE drops" in result.verdict
    assert "fitted and evaluated on the same examples" in result.verdict


def test_calibrated_and_under_confident_models_are_not_called_over_confident():
    logits, labels = calibrated()
    fine = ls.diagnose(logits, labels, n_bootstrap=200)
    assert 0.9 < fine.temperature < 1.1
    assert "Over-confident" not in fine.verdict and "Under-confident" not in fine.verdict
    assert fine.verdict.startswith("No mis-calibration shown that temperature scaling would fix")
    soft = ls.diagnose(logits / 3, labels, eps=0.3, style="uniform", n_bootstrap=200)
    assert soft.temperature < 0.5
    assert soft.verdict.startswith("Under-confident") and "smaller eps" in soft.verdict


def test_temperature_fitted_on_validation_examples_when_given():
    logits, labels = calibrated(seed=0)
    val, val_labels = calibrated(seed=1)
    result = ls.diagnose(4 * logits, labels, val_logits=4 * val, val_labels=val_labels)
    alone = metrics.fit_temperature(4 * val, val_labels, bounds=diagnosis.TEMPERATURE_BOUNDS)
    assert result.temperature == pytest.approx(alone)
    assert result.temperature_fit_on == "validation examples"
    assert "fitted on the validation examples" in result.verdict
    assert not any("same examples" in note for note in result.notes)


def test_a_temperature_at_a_bound_is_flagged_with_the_reason():
    logits, labels = at_optimum(10, 0.1, "uniform")  # every example correct: separable
    result = ls.diagnose(logits, labels, n_bootstrap=0)
    assert result.temperature == diagnosis.TEMPERATURE_BOUNDS[0]
    assert not result.temperature_ok and "lower bound" in result.temperature_note
    assert "no usable temperature" in result.verdict and "confident" not in result.verdict
    noise = torch.randn(500, 4, dtype=torch.float64)
    chance = ls.diagnose(noise, torch.randint(0, 4, (500,)), n_bootstrap=0)
    if not chance.temperature_ok:  # labels independent of the logits: T -> infinity
        assert "upper bound" in chance.temperature_note


def test_bootstrap_statistics_equal_the_metrics_on_every_resample():
    logits, labels = calibrated(n=400, k=5)
    result = ls.diagnose(2 * logits, labels, n_bootstrap=50)
    stats = result._data["statistics"]
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 400, size=(3, 400))
    counts = np.stack([np.bincount(p, minlength=400) for p in picks]).astype(np.float64)
    values = stats(counts)
    probs = (2 * logits).softmax(-1).numpy()
    y = labels.numpy()
    for row, pick in enumerate(picks):
        p, t = probs[pick], y[pick]
        expected = {
            "accuracy": float(np.mean(p.argmax(1) == t)),
            "brier": metrics.brier_score(p, t),
            "ece": metrics.expected_calibration_error(p, t),
            "ece_quantile": metrics.expected_calibration_error(p, t, binning="quantile"),
            "classwise_ece": metrics.classwise_calibration_error(p, t),
            "aurc": metrics.aurc(p, t),
            "nll": metrics.negative_log_likelihood(p, t),
        }
        for name, value in expected.items():
            assert values[name][row] == pytest.approx(value, abs=1e-9), name
    for name in ("accuracy", "nll", "ece", "ece_quantile", "classwise_ece", "aurc", "brier"):
        low, high = result.intervals[name]
        assert low <= high


def test_multilabel_bootstrap_statistics_equal_the_metrics():
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(300, 3, generator=generator, dtype=torch.float64)
    labels = (torch.rand(300, 3, generator=generator) < logits.sigmoid()).double()
    result = ls.diagnose(logits, labels, task="multilabel", n_bootstrap=0)
    pick = np.random.default_rng(1).integers(0, 300, 300)
    counts = np.bincount(pick, minlength=300).astype(np.float64)[None, :]
    values = result._data["statistics"](counts)
    p, t = logits.sigmoid().numpy()[pick], labels.numpy()[pick]
    assert values["ece"][0] == pytest.approx(metrics.multilabel_calibration_error(p, t))
    assert values["ece_quantile"][0] == pytest.approx(
        metrics.multilabel_calibration_error(p, t, binning="quantile")
    )
    entries = np.stack([1 - p.ravel(), p.ravel()], axis=1)
    assert values["aurc"][0] == pytest.approx(metrics.aurc(entries, t.ravel().astype(int)))
    assert result.auroc == pytest.approx(metrics.multilabel_auroc(logits, labels))
    assert len(result.auroc_per_label) == 3 and len(result.ece_per_label) == 3


# --------------------------------------------------------------------------------------------
# Binary: mean outputs against the smoothed targets, collapse
# --------------------------------------------------------------------------------------------


@functools.cache
def train_logistic(eps, style, steps=150):
    """A logistic model trained with smoothed BCE on separable data (cached: tests share it)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            0.3 * torch.randn(200, 2, generator=generator) + torch.tensor([2.0, 0.0]),
            0.3 * torch.randn(200, 2, generator=generator) - torch.tensor([2.0, 0.0]),
        ]
    )
    y = torch.cat([torch.ones(200), torch.zeros(200)])
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = ls.binary_cross_entropy_with_logits(model(x)[:, 0], y, eps, style=style)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model(x)[:, 0], y, float(loss)


@pytest.mark.parametrize(("style", "low"), [("others", 0.05), ("uniform", 0.025)])
def test_binary_model_trained_with_smoothing_sits_on_the_smoothed_targets(style, low):
    logits, labels, loss = train_logistic(0.05, style)
    result = ls.diagnose(logits, labels, task="binary", eps=0.05, style=style, loss=loss)
    b = result.binary
    assert b["targets"][style] == pytest.approx([low, 1 - low])
    assert b["mean_prob_negatives"] == pytest.approx(low, rel=0.2)
    assert b["mean_prob_positives"] == pytest.approx(1 - low, abs=0.2 * low)
    assert b["collapse"][style]["collapsed"] and b["collapse"][style]["share"] >= 0.5
    assert "collapsed onto the smoothed targets" in result.verdict
    assert result.gap_position[style] == "at"
    assert result.loss_check["ok"]
    assert result.accuracy == 1.0 and result.auroc == 1.0


def test_binary_model_trained_without_smoothing_has_not_collapsed():
    logits, labels, _ = train_logistic(0.0, "others")
    result = ls.diagnose(logits, labels, task="binary", eps=0.05, style="others", n_bootstrap=0)
    assert not result.binary["collapse"]["others"]["collapsed"]
    assert "no collapse" in result.verdict and "collapsed onto" not in result.verdict
    assert result.gap_position["others"] == "above"


def test_binary_shapes_n_and_n_by_1_agree():
    logits, labels, _ = train_logistic(0.05, "others", steps=50)
    flat = ls.diagnose(logits, labels, task="binary", n_bootstrap=20)
    column = ls.diagnose(logits[:, None], labels[:, None].long(), task="binary", n_bootstrap=20)
    assert flat.to_dict() == column.to_dict()


# --------------------------------------------------------------------------------------------
# The loss check
# --------------------------------------------------------------------------------------------


def test_a_loss_of_the_other_convention_is_flagged_and_a_right_one_matches():
    logits, labels = calibrated(n=500)
    uniform = float(ls.cross_entropy(logits, labels, 0.1))
    others = float(ls.cross_entropy(logits, labels, 0.1, style="others"))
    assert abs(uniform - others) > 1e-2 * uniform  # distinguishable at rtol 1e-3
    wrong = ls.diagnose(logits, labels, eps=0.1, style="uniform", loss=others, n_bootstrap=0)
    assert wrong.loss_check["ok"] is False and "others" in wrong.loss_check["matches"]
    assert "does not match the reference uniform loss" in wrong.verdict
    assert "computed with the other convention" in wrong.verdict
    right = ls.diagnose(logits, labels, eps=0.1, style="uniform", loss=uniform, n_bootstrap=0)
    assert right.loss_check["ok"] is True
    assert "matches the reference uniform loss" in right.verdict
    assert right.loss_check["loss_implied_eps"]["uniform"] == pytest.approx(0.1, rel=1e-6)
    plain = float(ls.cross_entropy(logits, labels, 0.0))
    unsmoothed = ls.diagnose(logits, labels, eps=0.1, style="uniform", loss=plain, n_bootstrap=0)
    assert "smoothing was not applied" in unsmoothed.verdict
    neither = ls.diagnose(logits, labels, eps=0.1, style="uniform", loss=5.0, n_bootstrap=0)
    assert neither.loss_check["ok"] is False and neither.loss_check["matches"] == []


def test_binary_loss_check_flags_the_other_convention():
    logits, labels, _ = train_logistic(0.05, "others", steps=50)
    others = float(ls.binary_cross_entropy_with_logits(logits, labels, 0.1, style="others"))
    result = ls.diagnose(
        logits, labels, task="binary", eps=0.1, style="uniform", loss=others, n_bootstrap=0
    )
    assert result.loss_check["matches"] == ["others"] and not result.loss_check["ok"]
    assert "computed with the other convention" in result.verdict


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"logits": torch.tensor([[1.0, float("nan")]] * 3)}, ValueError, "logits must be finite"),
        ({"labels": torch.tensor([0, 1, 10])}, ValueError, "class index 10"),
        ({"labels": torch.tensor([0.0, 1.0, 2.0])}, TypeError, "integer class indices"),
        ({"labels": torch.tensor([0, 1])}, ValueError, "labels must have shape (3,)"),
        ({"logits": torch.ones(3, 4, dtype=torch.int64)}, TypeError, "floating point"),
        ({"logits": torch.ones(3)}, ValueError, "task='binary'"),
        ({"task": "regression"}, ValueError, "task must be one of"),
        ({"style": "others"}, ValueError, "style needs eps"),
        ({"eps": 0.8, "style": "others"}, ValueError, "eps must be in [0, 0.75]"),
        ({"eps": -0.1}, ValueError, "eps must be >= 0"),
        ({"eps": "0.1"}, TypeError, "eps must be a real number"),
        ({"loss": "1.0"}, TypeError, "loss must be a real number"),
        ({"val_logits": torch.zeros(2, 4)}, ValueError, "val_logits needs val_labels"),
        (
            {"val_logits": torch.zeros(2, 5), "val_labels": torch.tensor([0, 1])},
            ValueError,
            "val_logits must have 4 columns",
        ),
        ({"n_bootstrap": -1}, ValueError, "n_bootstrap must be in"),
        ({"tolerance": 1.5}, ValueError, "tolerance must be in (0, 1)"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, message):
    arguments = {"logits": torch.randn(3, 4), "labels": torch.tensor([0, 1, 2]), **kwargs}
    with pytest.raises(error) as caught:
        ls.diagnose(**arguments)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("task", "logits", "labels", "message"),
    [
        ("binary", torch.randn(4), torch.tensor([0, 1, 2, 1]), "labels must be 0 or 1"),
        ("binary", torch.randn(4, 2), torch.zeros(4, 2), "task='multilabel'"),
        ("multilabel", torch.randn(4, 2), torch.zeros(4, 3), "labels must have the shape"),
    ],
)
def test_bad_binary_input(task, logits, labels, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ls.diagnose(logits, labels, task=task)


# --------------------------------------------------------------------------------------------
# Files and the command line
# --------------------------------------------------------------------------------------------


class Payload:
    """An arbitrary object: torch.load(weights_only=True) must refuse to rebuild it."""


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(f"{v:.17g}" for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def test_npz_pt_and_csv_give_the_same_diagnosis(tmp_path):
    logits, labels = calibrated(n=300, k=4)
    np.savez(tmp_path / "out.npz", logits=logits.numpy(), labels=labels.numpy(), loss=1.5)
    torch.save({"logits": logits, "labels": labels, "loss": 1.5}, tmp_path / "out.pt")
    header = ["label", *(f"logit_{j}" for j in range(4))]
    rows = np.column_stack([labels.numpy(), logits.numpy()])
    write_csv(tmp_path / "out.csv", header, rows)
    direct = ls.diagnose(logits, labels, n_bootstrap=30).to_dict()
    for name in ("out.npz", "out.pt", "out.csv"):
        loaded = diagnosis.load_outputs(tmp_path / name)
        assert set(loaded) == ({"logits", "labels"} | ({"loss"} if name != "out.csv" else set()))
        loaded.pop("loss", None)
        assert ls.diagnose(**loaded, n_bootstrap=30).to_dict() == direct, name


def test_binary_and_multilabel_csv(tmp_path):
    logits, labels, _ = train_logistic(0.05, "others", steps=50)
    write_csv(tmp_path / "b.csv", ["logit", "label"], np.column_stack([logits, labels]))
    loaded = diagnosis.load_outputs(tmp_path / "b.csv")
    assert loaded["logits"].shape == (400,) and loaded["labels"].dtype == np.int64
    ls.diagnose(**loaded, task="binary", n_bootstrap=0)
    z = np.random.default_rng(0).normal(size=(20, 3))
    y = (z > 0).astype(float)
    header = [f"label_{j}" for j in range(3)] + [f"logit_{j}" for j in range(3)]
    write_csv(tmp_path / "m.csv", header, np.column_stack([y, z]))
    loaded = diagnosis.load_outputs(tmp_path / "m.csv")
    assert loaded["logits"].shape == (20, 3) and loaded["labels"].shape == (20, 3)
    assert ls.diagnose(**loaded, task="multilabel", n_bootstrap=0).accuracy == 1.0


def test_files_that_must_be_refused(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, logits=np.array([object(), object()], dtype=object), labels=np.arange(2))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        diagnosis.load_outputs(pickled)
    np.savez(tmp_path / "nolabels.npz", logits=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="missing key 'labels'"):
        diagnosis.load_outputs(tmp_path / "nolabels.npz")
    torch.save({"logits": torch.zeros(2, 3), "labels": Payload()}, tmp_path / "object.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        diagnosis.load_outputs(tmp_path / "object.pt")
    torch.save({"logits": torch.zeros(2, 3), "labels": [0, 1]}, tmp_path / "list_labels.pt")
    with pytest.raises(ValueError, match="'labels' must be a tensor, got list"):
        diagnosis.load_outputs(tmp_path / "list_labels.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="must hold a dict"):
        diagnosis.load_outputs(tmp_path / "list.pt")
    (tmp_path / "bad.csv").write_text("label,logit_0,logit_1\n0,1.0,abc\n")
    with pytest.raises(ValueError, match="bad.csv"):
        diagnosis.load_outputs(tmp_path / "bad.csv")
    (tmp_path / "extra.csv").write_text("id,label,logit_0,logit_1\n0,0,1.0,2.0\n")
    with pytest.raises(ValueError, match="unexpected column 'id'"):
        diagnosis.load_outputs(tmp_path / "extra.csv")
    (tmp_path / "gap.csv").write_text("label,logit_0,logit_2\n0,1.0,2.0\n")
    with pytest.raises(ValueError, match="must all be present"):
        diagnosis.load_outputs(tmp_path / "gap.csv")
    with pytest.raises(ValueError, match="must end in .npz"):
        diagnosis.load_outputs(tmp_path / "out.txt")


def test_cli_writes_json_and_html(tmp_path, capsys):
    logits, labels = at_optimum(10, 0.1, "uniform", n=300)
    loss = float(ls.cross_entropy(logits, labels, 0.1, style="others"))
    np.savez(tmp_path / "out.npz", logits=logits.numpy(), labels=labels.numpy(), loss=loss)
    out = tmp_path / "report"
    argv = [str(tmp_path / "out.npz"), "--eps", "0.1", "--style", "uniform", "--out", str(out)]
    assert main(["diagnose", *argv, "--n-bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "labelsmooth diagnose: 300 examples, 10 classes" in printed and "verdict:" in printed
    payload = json.loads((out / "diagnosis.json").read_text())
    assert all(name in payload for name in DESIGN_FIELDS)
    assert set(payload["implied_eps"]) == {"uniform", "others"}
    assert payload["loss_check"]["matches"] == ["others"]
    page = (out / "diagnosis.html").read_text()
    assert page.count("<img") >= 3 and "computed with the other convention" in page
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    assert main(["diagnose", str(tmp_path / "out.npz"), "--json", "--n-bootstrap", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(name in printed for name in DESIGN_FIELDS) and printed["intervals"] == {}


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        ("pickled", [], "refusing to unpickle"),
        ("nan", [], "logits must be finite"),
        ("range", [], "class index 7"),
        ("good", ["--eps", "2"], "--eps: eps must be in [0, 1]"),
        ("good", ["--style", "others"], "style needs eps"),
        ("good", ["--task", "binary"], "task='binary'"),
        ("good", ["--out", "FILE"], "--out: out must be a directory"),
        ("missing", [], "No such file"),
        ("good", ["--task", "nonsense"], "invalid choice"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, make, argv, message):
    path = tmp_path / "out.npz"
    logits, labels = np.random.default_rng(0).normal(size=(5, 3)), np.array([0, 1, 2, 0, 1])
    if make == "pickled":
        np.savez(path, logits=np.array([object()] * 5, dtype=object), labels=labels)
    elif make == "nan":
        logits[2, 1] = np.nan
        np.savez(path, logits=logits, labels=labels)
    elif make == "range":
        np.savez(path, logits=logits, labels=np.array([0, 1, 7, 0, 1]))
    elif make == "good":
        np.savez(path, logits=logits, labels=labels)
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    try:
        status = main(["diagnose", str(path), *argv, "--n-bootstrap", "0"])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("labelsmooth diagnose: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_save_writes_nothing_when_rendering_fails(tmp_path, monkeypatch):
    logits, labels = calibrated(n=100, k=3)
    result = ls.diagnose(logits, labels, n_bootstrap=0)

    def broken(self):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(diagnosis.Diagnosis, "to_html", broken)
    with pytest.raises(RuntimeError):
        result.save(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_html_without_matplotlib_says_how_to_get_the_figures(tmp_path, monkeypatch):
    logits, labels = calibrated(n=100, k=3)
    result = ls.diagnose(logits, labels, n_bootstrap=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    json_path, html_path = result.save(tmp_path)
    page = html_path.read_text()
    assert "<img" not in page and "pip install &#34;labelsmooth[study]&#34;" in page
    assert json.loads(json_path.read_text())["verdict"] == result.verdict


def test_html_escapes_text(tmp_path):
    logits, labels = calibrated(n=100, k=3)
    result = ls.diagnose(logits, labels, n_bootstrap=0)
    hostile = diagnosis._replace(result, findings=["<script>alert(1)</script>"])
    page = hostile.to_html()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_json_is_strict_and_round_trips():
    logits, labels = at_optimum(4, 0.1, "uniform", n=50)
    result = ls.diagnose(logits, labels, eps=0.0, n_bootstrap=0)  # infinite optimum gap
    payload = json.loads(result.to_json())
    assert payload["optimum_gap"] == {"uniform": None, "others": None}
    assert "no finite optimum gap" in payload["verdict"]


def test_import_labelsmooth_stays_light():
    code = (
        "import sys, labelsmooth; "
        "print(any(m in sys.modules for m in ('matplotlib', 'jinja2')), labelsmooth.diagnose)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("False <function diagnose")


def test_docstring_examples_run():
    result = doctest.testmod(diagnosis, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------
# Regressions from the adversarial review: sentences that did not follow from their numbers,
# inputs that crashed or were misreported, the bootstrap's cost
# --------------------------------------------------------------------------------------------


def test_per_entry_intervals_beyond_the_budget_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(diagnosis, "_BOOTSTRAP_BUDGET", 1e5)
    z = torch.randn(200, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (z > 0).double()
    result = ls.diagnose(z, y, task="multilabel", n_bootstrap=50)
    assert "ece" not in result.intervals and "aurc" not in result.intervals
    assert "nll_drop" in result.intervals  # the cheap means keep theirs
    assert any("No bootstrap interval for ece" in note for note in result.notes)


def test_temperature_bound_reasons_follow_from_the_accuracy():
    logits, labels = calibrated(n=500)
    tiny = ls.diagnose(logits * 1e-4, labels, n_bootstrap=0)  # accuracy ~0.4, T* ~ 1e-4
    assert tiny.temperature == diagnosis.TEMPERATURE_BOUNDS[0] and tiny.accuracy < 1
    assert "separate" not in tiny.verdict and "largest logit" not in tiny.verdict
    assert "lies below it" in tiny.temperature_note
    labels = torch.arange(300) % 5
    huge = torch.full((300, 5), -1e4)
    huge[torch.arange(300), labels] = 1e4
    huge[:10] = huge[:10].roll(1, dims=1)  # 10 confident errors: T* > 100
    result = ls.diagnose(huge, labels, n_bootstrap=0)
    assert result.temperature == diagnosis.TEMPERATURE_BOUNDS[1] and result.accuracy > 0.9
    assert "no better than" not in result.verdict
    assert "misclassified 3.3% of the examples carry 100.0% of the NLL" in result.verdict


def test_too_few_examples_get_no_confidence_verdict():
    # One example whose label has the second-largest logit: an interior T, and a bootstrap
    # interval of zero width that used to "show" over-confidence.
    for n in (1, 2, 5):
        logits = torch.tensor([[2.0, 1.0, -3.0]]).repeat(n, 1)
        result = ls.diagnose(logits, torch.ones(n, dtype=torch.long), n_bootstrap=100)
        assert result.temperature_ok
        assert "confident" not in result.verdict and "Too few examples" in result.verdict
        assert any(f"fewer than {diagnosis.MIN_EXAMPLES}" in note for note in result.notes)
    assert "all 1 examples" not in result.summary() and "1 all" not in result.summary()


def test_a_validation_temperature_that_raises_the_nll_is_said_to_raise_it():
    logits, labels = calibrated(n=1000)
    result = ls.diagnose(
        logits, labels, val_logits=3 * logits[:500], val_labels=labels[:500], n_bootstrap=50
    )
    assert result.nll_after_temperature > result.nll
    assert "by only -" not in result.verdict and "raises the NLL" in result.verdict
    assert "No mis-calibration" not in result.verdict


def test_a_loss_equal_to_the_unsmoothed_one_is_named_so():
    logits, labels = calibrated(n=500)
    plain = float(ls.cross_entropy(logits, labels, 0.0))
    result = ls.diagnose(logits, labels, eps=0.1, loss=plain, n_bootstrap=0)
    assert "matches no reference loss" not in result.verdict
    assert "matches the unsmoothed loss" in result.verdict and "not applied" in result.verdict
    assert "e-1" not in result.verdict.split("Next:")[0].split("matches the unsmoothed")[1]
    unknown = ls.diagnose(logits, labels, loss=plain, n_bootstrap=0)
    assert "or an eps too small" in unknown.verdict
    assert unknown.loss_check["loss_implied_eps"] == {"uniform": 0.0, "others": 0.0}


def test_no_collapse_call_against_the_targets_implied_by_the_outputs_themselves():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, generator=generator)  # unit-scale noise, no smoothing at all
    labels = (torch.rand(400, generator=generator) < 0.5).long()
    result = ls.diagnose(logits, labels, task="binary", n_bootstrap=0)
    assert result.binary["collapse"]["implied"]["share"] >= 0.5
    assert result.binary["collapse"]["implied"]["collapsed"] is None
    assert "collapsed onto" not in result.verdict and "smaller eps" not in result.verdict


def test_accuracy_no_better_than_the_most_frequent_class_is_said():
    labels = torch.arange(60) % 4
    result = ls.diagnose(torch.zeros(60, 4), labels, eps=0.1, n_bootstrap=0)
    assert result.baseline_accuracy == 0.25 and result.accuracy == 0.25
    assert "no better than always predicting the most frequent class" in result.verdict
    assert "Nothing in these numbers calls for a change" not in result.verdict


def test_next_steps_are_not_repeated_and_gaps_below_the_optimum_get_one():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=generator)
    logits = torch.randn(200, 2, generator=generator)
    logits[torch.arange(200), labels] += 3
    result = ls.diagnose(logits, labels, eps=0.1, n_bootstrap=0)  # above both optima
    assert len(set(result.next_steps)) == len(result.next_steps)
    below = ls.diagnose(*at_optimum(10, 0.1, "uniform"), eps=0.01, style="uniform", n_bootstrap=0)
    assert below.gap_position["uniform"] == "below"
    assert any("train_logits" in step for step in below.next_steps)


def test_auroc_note_when_no_label_has_both_classes():
    result = ls.diagnose(torch.randn(50), torch.ones(50), task="binary", n_bootstrap=0)
    assert result.auroc is None
    assert not any("over the others" in note for note in result.notes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed must be >= 0"),
        ({"logits": torch.randn(4, 3, device="meta")}, "logits is on the meta device"),
        ({"logits": torch.randn(4, 3).to_sparse()}, "logits must be a dense tensor"),
        ({"labels": torch.tensor([0, 1, -100, 2])}, "keep = labels != -100"),
        ({"logits": torch.randn(2, 2, 3), "labels": torch.zeros(2, 2)}, "reshape(-1, V)"),
    ],
)
def test_more_bad_input_names_the_argument(kwargs, message):
    arguments = {"logits": torch.randn(4, 3), "labels": torch.tensor([0, 1, 2, 0]), **kwargs}
    with pytest.raises(ValueError) as caught:
        ls.diagnose(**arguments, n_bootstrap=0)
    assert message in str(caught.value)


def test_more_files_that_must_be_refused_or_read(tmp_path):
    logits, labels = np.random.default_rng(0).normal(size=(5, 3)), np.arange(5) % 3
    header = io.BytesIO()
    np.save(header, logits)
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:  # truncated array data
        archive.writestr("logits.npy", header.getvalue()[:-40])
        archive.writestr("labels.npy", b"junk")
    with pytest.raises(ValueError, match="'logits' cannot be read") as caught:
        diagnosis.load_outputs(tmp_path / "short.npz")
    assert "Python objects" not in str(caught.value)
    np.savez(tmp_path / "crc.npz", logits=logits, labels=labels)
    raw = bytearray((tmp_path / "crc.npz").read_bytes())
    raw[200] ^= 0xFF
    (tmp_path / "crc.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="cannot be read"):
        diagnosis.load_outputs(tmp_path / "crc.npz")
    sparse = {"logits": torch.tensor(logits).to_sparse(), "labels": torch.tensor(labels)}
    torch.save(sparse, tmp_path / "s.pt")
    with pytest.raises(ValueError, match="dense tensor"):
        diagnosis.load_outputs(tmp_path / "s.pt")
    torch.save({"logits": torch.zeros(2, 3), "labels": Payload()}, tmp_path / "object.pt")
    with pytest.raises(ValueError, match="weights_only=True") as caught:
        diagnosis.load_outputs(tmp_path / "object.pt")
    message = str(caught.value)  # one plain line, without torch's advice to unpickle
    assert "set to `False`" not in message and "\x1b" not in message and "\n" not in message
    assert "Unsupported global" in message
    (tmp_path / "bom.csv").write_text("label,logit_0,logit_1\n0,1,0\n", encoding="utf-8-sig")
    assert diagnosis.load_outputs(tmp_path / "bom.csv")["labels"].tolist() == [0]
    (tmp_path / "latin.csv").write_bytes(b"label,logit_0,logit_1\n0,1,0\n\xff,0,0\n")
    with pytest.raises(ValueError, match="latin.csv"):
        diagnosis.load_outputs(tmp_path / "latin.csv")
    (tmp_path / "wide.csv").write_text("label,logit_0,logit_1\n0,1,0,5\n")
    with pytest.raises(ValueError, match="the header has 3 columns, the rows 4"):
        diagnosis.load_outputs(tmp_path / "wide.csv")


def test_cli_header_only_csv_and_negative_seed_are_one_line(tmp_path, capsys):
    (tmp_path / "head.csv").write_text("label,logit_0,logit_1\n")
    (tmp_path / "ok.csv").write_text("label,logit_0,logit_1\n0,1,0\n1,0,1\n")
    for argv, message in (
        ([str(tmp_path / "head.csv")], "no rows after the header"),
        ([str(tmp_path / "ok.csv"), "--seed", "-1"], "--seed: seed must be >= 0"),
    ):
        assert main(["diagnose", *argv, "--n-bootstrap", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("labelsmooth diagnose: error: ") and message in err
        assert err.count("\n") == 1


def test_save_leaves_neither_file_new_when_the_second_fails(tmp_path, monkeypatch):
    result = ls.diagnose(*calibrated(n=100, k=3), n_bootstrap=0)
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(diagnosis.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        result.save(tmp_path)
    assert list(tmp_path.iterdir()) == []

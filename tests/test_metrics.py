"""labelsmooth.metrics against brute-force definitions, an independent library, and theory."""

import doctest
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labelsmooth as ls
from labelsmooth import metrics
from labelsmooth.metrics import (
    aurc,
    auroc,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    logit_gap,
    maximum_calibration_error,
    multilabel_auroc,
    multilabel_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    risk_coverage_curve,
    theoretical_gap,
)

# --------------------------------------------------------------------------------------------
# Brute-force references, written from the papers' definitions with plain loops
# --------------------------------------------------------------------------------------------


def brute_bins(confidence, outcome, edges):
    """Guo et al.: B_m holds the confidences in (e_{m-1}, e_m]; a confidence of e_0 is in B_1."""
    bins = []
    for m in range(len(edges) - 1):
        lo, hi = edges[m], edges[m + 1]
        members = [
            i
            for i in range(len(confidence))
            if (lo < confidence[i] <= hi) or (m == 0 and confidence[i] == lo)
        ]
        bins.append(members)
    return bins


def brute_ece_mce(probs, labels, n_bins, edges=None):
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    confidence, correct = [], []
    for i in range(n):
        best = 0
        for c in range(probs.shape[1]):
            if probs[i, c] > probs[i, best]:
                best = c
        confidence.append(probs[i, best])
        correct.append(1.0 if best == labels[i] else 0.0)
    if edges is None:
        edges = [m / n_bins for m in range(n_bins + 1)]
    ece, mce = 0.0, 0.0
    for members in brute_bins(confidence, correct, edges):
        if not members:
            continue
        acc = sum(correct[i] for i in members) / len(members)
        conf = sum(confidence[i] for i in members) / len(members)
        ece += len(members) / n * abs(acc - conf)
        mce = max(mce, abs(acc - conf))
    return ece, mce


def brute_classwise(probs, labels, n_bins):
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    edges = [m / n_bins for m in range(n_bins + 1)]
    total = 0.0
    for c in range(k):
        p = [probs[i, c] for i in range(n)]
        y = [1.0 if labels[i] == c else 0.0 for i in range(n)]
        for members in brute_bins(p, y, edges):
            if members:
                freq = sum(y[i] for i in members) / len(members)
                mean_p = sum(p[i] for i in members) / len(members)
                total += len(members) / n * abs(freq - mean_p)
    return total / k


def random_probs(n, k, sharpness=3.0, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * sharpness
    labels = torch.randint(0, k, (n,), generator=generator)
    return torch.softmax(logits, dim=1).to(dtype), labels


def calibrated_sample(n, k, scale=2.0, seed=0):
    """Logits z with labels drawn from softmax(z): calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).squeeze(1)
    return logits, labels


# --------------------------------------------------------------------------------------------
# ECE / MCE / classwise against the brute force
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "n_bins", "seed"),
    [(200, 3, 15, 0), (97, 10, 10, 1), (50, 2, 1, 2), (300, 5, 7, 3), (1, 4, 15, 4)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_mce_match_brute_force(n, k, n_bins, seed, dtype):
    probs, labels = random_probs(n, k, seed=seed, dtype=dtype)
    ece, mce = brute_ece_mce(probs.double().numpy(), labels.tolist(), n_bins)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(probs, labels, n_bins) == pytest.approx(mce, abs=1e-12)


def test_ece_on_bin_edges_goes_to_the_lower_bin():
    # Guo et al.'s intervals are (lo, hi]: 0.6 with 5 bins belongs to (0.4, 0.6].
    probs = np.array([[0.6, 0.4], [0.8, 0.2], [0.2, 0.8], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    curve = reliability_curve(probs, labels, n_bins=5)
    assert curve.counts.tolist() == [0, 0, 1, 2, 1]
    ece, mce = brute_ece_mce(probs, labels.tolist(), 5)
    assert curve.expected_calibration_error == pytest.approx(ece, abs=1e-15)
    assert curve.maximum_calibration_error == pytest.approx(mce, abs=1e-15)


def test_quantile_binning_matches_brute_force_with_its_edges_and_balances_mass():
    probs, labels = random_probs(300, 4, seed=5)
    curve = reliability_curve(probs, labels, n_bins=6, binning="quantile")
    ece, _ = brute_ece_mce(probs.numpy(), labels.tolist(), 6, edges=curve.edges.tolist())
    assert curve.expected_calibration_error == pytest.approx(ece, abs=1e-12)
    assert curve.counts.tolist() == [50] * 6
    assert curve.edges[0] == 0.0 and curve.edges[-1] == 1.0
    assert expected_calibration_error(probs, labels, 6, "quantile") == pytest.approx(ece)


def test_quantile_binning_with_tied_confidences_leaves_empty_bins():
    probs = np.array([[0.7, 0.3]] * 8 + [[0.9, 0.1]] * 2)
    labels = np.array([0] * 6 + [1] * 2 + [0, 0])
    curve = reliability_curve(probs, labels, n_bins=5, binning="quantile")
    assert curve.counts.sum() == 10
    assert (curve.counts == 0).any()
    # acc 6/8 at conf 0.7 and 2/2 at 0.9: ECE = 0.8*0.05 + 0.2*0.1.
    assert curve.expected_calibration_error == pytest.approx(0.06)


@pytest.mark.parametrize(("n", "k", "n_bins"), [(150, 3, 10), (80, 6, 15), (1, 2, 3)])
def test_classwise_matches_brute_force(n, k, n_bins):
    probs, labels = random_probs(n, k, seed=n)
    expected = brute_classwise(probs.numpy(), labels.tolist(), n_bins)
    assert classwise_calibration_error(probs, labels, n_bins) == pytest.approx(expected, abs=1e-12)


def test_against_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    for seed, (n, k, n_bins) in enumerate([(500, 5, 15), (300, 3, 10), (200, 10, 20)]):
        probs, labels = random_probs(n, k, seed=seed)
        for norm, ours in (("l1", expected_calibration_error), ("max", maximum_calibration_error)):
            theirs = tm.multiclass_calibration_error(
                probs, labels, num_classes=k, n_bins=n_bins, norm=norm
            )
            # torchmetrics accumulates in float32.
            assert ours(probs, labels, n_bins) == pytest.approx(float(theirs), abs=1e-6)
    # Per-label ECE of positive-class probabilities is their binary calibration error.
    generator = torch.Generator().manual_seed(7)
    probs = torch.rand(400, 3, generator=generator, dtype=torch.float64)
    targets = (torch.rand(400, 3, generator=generator, dtype=torch.float64) < probs).long()
    per_label = multilabel_calibration_error(probs, targets, 10, average="none")
    for j in range(3):
        theirs = tm.binary_calibration_error(
            probs[:, j].contiguous(), targets[:, j].contiguous(), n_bins=10, norm="l1"
        )
        assert per_label[j] == pytest.approx(float(theirs), abs=1e-6)


def test_calibrated_sample_has_small_ece_and_sharpened_sample_does_not():
    logits, labels = calibrated_sample(20000, 10)
    probs = torch.softmax(logits, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    assert expected_calibration_error(probs, labels, binning="quantile") < 0.02
    assert classwise_calibration_error(probs, labels) < 0.01
    sharpened = torch.softmax(logits * 3, 1)
    assert expected_calibration_error(sharpened, labels) > 0.1


@settings(max_examples=30)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 60),
    k=st.integers(1, 6),
    n_bins=st.integers(1, 20),
    sharpness=st.sampled_from([0.0, 0.5, 3.0, 30.0]),
)
def test_properties(seed, n, k, n_bins, sharpness):
    probs, labels = random_probs(n, k, sharpness=sharpness, seed=seed)
    for binning in ("uniform", "quantile"):
        curve = reliability_curve(probs, labels, n_bins, binning)
        ece = curve.expected_calibration_error
        assert 0.0 <= ece <= curve.maximum_calibration_error + 1e-12 <= 1.0 + 1e-12
        assert curve.counts.sum() == n
        assert np.all(np.diff(curve.edges) >= 0)
    ece, mce = brute_ece_mce(probs.numpy(), labels.tolist(), n_bins)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(ece, abs=1e-12)
    assert maximum_calibration_error(probs, labels, n_bins) == pytest.approx(mce, abs=1e-12)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for fn in (expected_calibration_error, classwise_calibration_error, brier_score, aurc):
        shuffled = fn(probs[permutation], labels[permutation])
        assert shuffled == pytest.approx(fn(probs, labels), abs=1e-12)
    assert 0.0 <= aurc(probs, labels) <= 1.0
    assert 0.0 <= brier_score(probs, labels) <= 2.0


# --------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------


def test_empty_bins_are_nan_in_the_curve_and_do_not_count():
    probs = np.array([[0.95, 0.05], [0.91, 0.09]])
    curve = reliability_curve(probs, np.array([0, 1]), n_bins=10)
    assert curve.counts.tolist() == [0] * 9 + [2]
    assert np.isnan(curve.accuracy[:9]).all() and np.isnan(curve.confidence[:9]).all()
    assert curve.accuracy[9] == 0.5
    assert curve.expected_calibration_error == pytest.approx(0.43)
    assert curve.maximum_calibration_error == pytest.approx(0.43)
    assert curve.num_samples == 2 and curve.num_bins == 10


def test_all_correct_predictions():
    onehot = torch.eye(4)[torch.tensor([0, 1, 2, 3, 1])]
    labels = torch.tensor([0, 1, 2, 3, 1])
    assert expected_calibration_error(onehot, labels) == 0.0
    assert maximum_calibration_error(onehot, labels) == 0.0
    assert classwise_calibration_error(onehot, labels) == 0.0
    assert brier_score(onehot, labels) == 0.0
    assert negative_log_likelihood(onehot, labels) == 0.0
    assert aurc(onehot, labels) == 0.0
    soft = torch.full((5, 4), 0.2 / 3).scatter(1, labels[:, None], 0.8)
    assert expected_calibration_error(soft, labels) == pytest.approx(0.2)  # under-confident


def test_single_sample():
    probs, label = np.array([[0.3, 0.7]]), np.array([0])
    assert expected_calibration_error(probs, label) == pytest.approx(0.7)
    assert maximum_calibration_error(probs, label) == pytest.approx(0.7)
    assert brier_score(probs, label) == pytest.approx((1 - 0.3) ** 2 + 0.7**2)
    assert negative_log_likelihood(probs, label) == pytest.approx(-math.log(0.3))
    assert aurc(probs, label) == 1.0
    assert expected_calibration_error(probs, label, n_bins=1, binning="quantile") == (
        pytest.approx(0.7)
    )


def test_numpy_and_tensor_inputs_agree():
    probs, labels = random_probs(120, 4, seed=9)
    for fn in (
        expected_calibration_error,
        maximum_calibration_error,
        classwise_calibration_error,
        brier_score,
        negative_log_likelihood,
        aurc,
    ):
        assert fn(probs.numpy(), labels.numpy()) == fn(probs, labels)
        assert isinstance(fn(probs, labels), float)
    assert fn(probs.tolist(), labels.tolist()) == fn(probs, labels)
    assert fit_temperature(probs.log().numpy(), labels.numpy()) == fit_temperature(
        probs.log(), labels
    )


def test_ties_in_the_prediction_pick_the_lowest_class():
    probs = np.array([[0.5, 0.5]])
    assert reliability_curve(probs, np.array([0]), n_bins=2).accuracy[0] == 1.0
    assert reliability_curve(probs, np.array([1]), n_bins=2).accuracy[0] == 0.0
    three = np.array([[0.25, 0.375, 0.375]])  # classes 1 and 2 tie: 1 is predicted
    assert expected_calibration_error(three, np.array([1])) == pytest.approx(0.625)
    assert expected_calibration_error(three, np.array([2])) == pytest.approx(0.375)


def test_low_precision_inputs():
    probs, labels = random_probs(64, 5, seed=11)
    for dtype in (torch.float16, torch.bfloat16):
        low = probs.to(dtype)
        expected = expected_calibration_error(
            low.double() / low.double().sum(1, keepdim=True), labels
        )
        assert expected_calibration_error(low, labels) == pytest.approx(expected, abs=5e-3)


# --------------------------------------------------------------------------------------------
# Brier, NLL, selective classification
# --------------------------------------------------------------------------------------------


def test_brier_and_nll_match_definitions():
    probs, labels = random_probs(50, 6, seed=12)
    p, y = probs.numpy(), labels.numpy()
    brier = (
        sum(sum((p[i, c] - (1.0 if y[i] == c else 0.0)) ** 2 for c in range(6)) for i in range(50))
        / 50
    )
    nll = -sum(math.log(p[i, y[i]]) for i in range(50)) / 50
    assert brier_score(probs, labels) == pytest.approx(brier, abs=1e-12)
    assert negative_log_likelihood(probs, labels) == pytest.approx(nll, abs=1e-12)
    nll_from_logits = torch.nn.functional.cross_entropy(probs.log(), labels)
    assert negative_log_likelihood(probs, labels) == pytest.approx(float(nll_from_logits))


def test_nll_is_inf_when_the_label_has_zero_probability():
    assert negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])) == math.inf


def brute_aurc(probs, labels):
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    order = sorted(range(len(labels)), key=lambda i: -confidence[i])
    risks = []
    for k in range(1, len(labels) + 1):
        risks.append(sum(1 for i in order[:k] if not correct[i]) / k)
    return sum(risks) / len(risks)


def test_aurc_matches_brute_force_without_ties():
    probs, labels = random_probs(300, 5, sharpness=1.0, seed=13)
    expected = brute_aurc(probs.numpy(), labels.numpy())
    assert aurc(probs, labels) == pytest.approx(expected, abs=1e-12)
    curve = risk_coverage_curve(probs, labels)
    assert curve.coverage[-1] == 1.0 and len(curve.coverage) == 300
    assert np.all(np.diff(curve.threshold) < 0)
    error_rate = float((probs.argmax(1) != labels).double().mean())
    assert curve.risk[-1] == pytest.approx(error_rate)


def test_aurc_with_tied_confidences_does_not_depend_on_order():
    probs = np.array([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    labels = np.array([0, 1, 0, 1, 0])
    value = aurc(probs, labels)
    for permutation in ([4, 3, 2, 1, 0], [1, 0, 3, 2, 4], [2, 4, 0, 3, 1]):
        assert aurc(probs[permutation], labels[permutation]) == value
    # Points at coverage 1/5 (risk 0), 3/5 (risk 1/3), 1 (risk 2/5).
    assert value == pytest.approx(0.2 * 0 + 0.4 * (1 / 3) + 0.4 * 0.4)
    curve = risk_coverage_curve(probs, labels)
    assert curve.coverage.tolist() == [0.2, 0.6, 1.0]


def test_aurc_rewards_a_good_ranking():
    # Same accuracy; errors at the lowest confidence give a lower AURC.
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels_good = np.array([0, 0, 0, 1])
    labels_bad = np.array([1, 0, 0, 0])
    assert aurc(good, labels_good) < aurc(good, labels_bad)


# --------------------------------------------------------------------------------------------
# AUROC (rank formula) and multi-label
# --------------------------------------------------------------------------------------------


def test_auroc_matches_pairwise_definition_and_sklearn_with_ties():
    generator = np.random.default_rng(0)
    scores = generator.integers(0, 5, size=200).astype(np.float64)  # many ties
    labels = (generator.random(200) < 0.3 + 0.1 * scores).astype(np.int64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12
    )


def test_auroc_edge_values_and_single_class():
    assert auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert auroc(np.array([-3.0, 2.0]), np.array([0.0, 1.0])) == 1.0  # logits, float labels
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def test_multilabel_auroc_skips_single_class_labels():
    generator = np.random.default_rng(1)
    scores = generator.random((100, 4))
    labels = (generator.random((100, 4)) < scores).astype(np.int64)
    labels[:, 2] = 1  # only one class: no AUROC
    per_label = multilabel_auroc(scores, labels, average="none")
    assert math.isnan(per_label[2])
    for j in (0, 1, 3):
        assert per_label[j] == pytest.approx(auroc(scores[:, j], labels[:, j]))
    assert multilabel_auroc(scores, labels) == pytest.approx(
        np.mean([per_label[j] for j in (0, 1, 3)])
    )
    with pytest.raises(ValueError, match="every one of the 4 labels"):
        multilabel_auroc(scores, np.zeros((100, 4), dtype=np.int64))


def test_multilabel_calibration_error_per_label_and_macro():
    generator = torch.Generator().manual_seed(3)
    probs = torch.rand(500, 3, generator=generator, dtype=torch.float64)
    labels = (torch.rand(500, 3, generator=generator, dtype=torch.float64) < probs).double()
    per_label = multilabel_calibration_error(probs, labels, average="none")
    assert len(per_label) == 3 and all(e < 0.1 for e in per_label)
    assert multilabel_calibration_error(probs, labels) == pytest.approx(np.mean(per_label))
    for j in range(3):
        edges = [m / 15 for m in range(16)]
        members = brute_bins(probs[:, j].tolist(), labels[:, j].tolist(), edges)
        expected = sum(
            len(b) / 500 * abs(labels[b, j].mean().item() - probs[b, j].mean().item())
            for b in members
            if b
        )
        assert per_label[j] == pytest.approx(expected, abs=1e-12)
    # A single binary task: (N,) probabilities.
    assert multilabel_calibration_error(probs[:, 0], labels[:, 0]) == pytest.approx(per_label[0])


# --------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------


def nll_at(logits, labels, temperature):
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


@pytest.fixture(scope="module")
def calibrated_logits():
    return calibrated_sample(20000, 10, seed=1)


@pytest.mark.parametrize("scale", [3.0, 0.5, 1.0])
def test_fit_temperature_recovers_a_known_scale(scale, calibrated_logits):
    logits, labels = calibrated_logits
    temperature = fit_temperature(logits * scale, labels)
    assert temperature == pytest.approx(scale, rel=0.05)
    # And it is the minimiser: no point of a fine grid around it does better.
    grid = temperature * np.exp(np.linspace(-0.2, 0.2, 21))
    best = min(nll_at(logits * scale, labels, t) for t in grid)
    assert nll_at(logits * scale, labels, temperature) <= best + 1e-12


def test_fit_temperature_reduces_ece_of_overconfident_logits():
    logits, labels = calibrated_sample(5000, 5, seed=2)
    overconfident = logits * 4
    before = expected_calibration_error(torch.softmax(overconfident, 1), labels)
    temperature = fit_temperature(overconfident, labels)
    after = expected_calibration_error(torch.softmax(overconfident / temperature, 1), labels)
    assert after < before / 3


def test_fit_temperature_is_robust_at_the_extremes():
    # Separable: the NLL keeps falling as T -> 0; the lower bound comes back, finite.
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    assert fit_temperature(logits, labels) == 1e-2
    assert fit_temperature(logits, labels, bounds=(0.1, 10.0)) == 0.1
    # Anti-informative: the label always has the smallest logit; T -> inf.
    assert fit_temperature(logits, torch.tensor([1, 0, 1])) == 1e2
    # Constant logits: the NLL does not depend on T.
    assert fit_temperature(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])) == 1.0
    # Huge logits, float16 input, single sample: finite and positive.
    big = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0], [1e4, 0.0, 0.0]])
    t = fit_temperature(big, torch.tensor([0, 0, 2]))
    assert math.isfinite(t) and t > 0
    t16 = fit_temperature(torch.randn(30, 4).half(), torch.randint(0, 4, (30,)))
    assert 1e-2 <= t16 <= 1e2
    assert 1e-2 <= fit_temperature(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) <= 1e2


def test_fit_temperature_bad_arguments():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match=r"bounds must satisfy 0 < lowest < highest"):
        fit_temperature(logits, labels, bounds=(0.0, 1.0))
    with pytest.raises(TypeError, match="bounds must be a pair"):
        fit_temperature(logits, labels, bounds=1.0)
    with pytest.raises(ValueError, match="logits must be finite"):
        fit_temperature(torch.tensor([[0.0, math.nan]]), torch.tensor([0]))
    with pytest.raises(TypeError, match="logits must be floating point"):
        fit_temperature(torch.ones(2, 2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels contains class index 3"):
        fit_temperature(logits, torch.tensor([0, 1, 2, 0, 3]))


# --------------------------------------------------------------------------------------------
# Logit gap and its theory
# --------------------------------------------------------------------------------------------


def test_logit_gap_matches_definition():
    logits = torch.randn(20, 7, dtype=torch.float64)
    gap = logit_gap(logits)
    for i in range(20):
        row = logits[i].tolist()
        top = max(row)
        others = list(row)
        others.remove(top)
        assert gap[i].item() == pytest.approx(top - sum(others) / len(others), abs=1e-12)
    assert isinstance(logit_gap(logits.numpy()), np.ndarray)
    np.testing.assert_allclose(logit_gap(logits.numpy()), gap.numpy(), atol=1e-12)
    assert logit_gap(torch.zeros(2, 3, 4)).shape == (2, 3)
    assert logit_gap(torch.randn(3, 5).half()).dtype == torch.float16
    # Tied maxima: the other maximum counts among "the others".
    assert logit_gap(torch.tensor([2.0, 2.0, -1.0])).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="K >= 2"):
        logit_gap(torch.zeros(3, 1))
    with pytest.raises(TypeError, match="floating"):
        logit_gap(torch.zeros(3, 2, dtype=torch.long))


def minimised_gap(eps, num_classes, style):
    """The gap of a free logit vector after minimising ls.cross_entropy with LBFGS."""
    logits = torch.zeros(num_classes, dtype=torch.float64)
    logits[0] = 1.0
    logits.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [logits],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-13,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )
    target = torch.tensor([0])

    def closure():
        optimizer.zero_grad()
        loss = ls.cross_entropy(logits[None], target, eps, style=style)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    return logit_gap(logits.detach()).item()


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize(
    ("eps", "num_classes"), [(0.1, 10), (0.05, 2), (0.3, 5), (0.01, 100), (0.4, 3)]
)
def test_theoretical_gap_is_the_optimum_of_the_smoothed_loss(eps, num_classes, style):
    expected = theoretical_gap(eps, num_classes, style)
    assert minimised_gap(eps, num_classes, style) == pytest.approx(expected, abs=1e-6)


def test_theoretical_gap_closed_forms_and_limits():
    assert theoretical_gap(0.1, 10, "uniform") == pytest.approx(math.log(1 + 10 * 0.9 / 0.1))
    assert theoretical_gap(0.1, 10, "others") == pytest.approx(math.log(9 * 0.9 / 0.1))
    assert theoretical_gap(0, 10) == math.inf
    assert theoretical_gap(0.0, 3, "others") == math.inf
    assert theoretical_gap(1.0, 10, "uniform") == 0.0
    assert theoretical_gap(0.9, 10, "others") == pytest.approx(0.0, abs=1e-12)
    assert theoretical_gap(torch.tensor(0.1), 10) == pytest.approx(theoretical_gap(0.1, 10))
    # A larger eps always means a smaller gap.
    gaps = [theoretical_gap(e, 10, "uniform") for e in (0.01, 0.05, 0.1, 0.3)]
    assert gaps == sorted(gaps, reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"eps": -0.1, "num_classes": 10}, ValueError, r"eps must be in \[0, 1\].*got eps=-0.1"),
        ({"eps": 1.5, "num_classes": 10}, ValueError, r"eps must be in \[0, 1\].*got eps=1.5"),
        (
            {"eps": 0.6, "num_classes": 2, "style": "others"},
            ValueError,
            r"eps must be in \[0, 0.5\] for style='others' with num_classes=2 .*got eps=0.6",
        ),
        ({"eps": math.nan, "num_classes": 10}, ValueError, "got eps=nan"),
        ({"eps": "0.1", "num_classes": 10}, TypeError, "eps must be a real number"),
        ({"eps": 0.1, "num_classes": 1}, ValueError, "num_classes must be >= 2"),
        ({"eps": 0.1, "num_classes": 2.0}, TypeError, "num_classes must be an int"),
        ({"eps": 0.1, "num_classes": 10, "style": "fairseq"}, ValueError, "style must be one of"),
    ],
)
def test_theoretical_gap_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        theoretical_gap(**kwargs)


# --------------------------------------------------------------------------------------------
# Bad input: the argument, the value, what is allowed
# --------------------------------------------------------------------------------------------

GOOD_PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
GOOD_LABELS = torch.tensor([0, 2])


@pytest.mark.parametrize(
    "fn",
    [
        expected_calibration_error,
        maximum_calibration_error,
        classwise_calibration_error,
        reliability_curve,
        brier_score,
        negative_log_likelihood,
        aurc,
        risk_coverage_curve,
    ],
)
@pytest.mark.parametrize(
    ("probs", "labels", "error", "pattern"),
    [
        (
            torch.tensor([[2.0, -1.0, 0.0], [0.1, 0.1, 0.8]]),
            GOOD_LABELS,
            ValueError,
            r"probs must lie in \[0, 1\] \(probabilities, not logits.*got 2 at index \(0, 0\)",
        ),
        (
            torch.tensor([[0.5, 0.2, 0.1], [0.1, 0.1, 0.8]]),
            GOOD_LABELS,
            ValueError,
            r"each row of probs must sum to 1 .*got a row summing to 0.8 at row 0",
        ),
        (GOOD_PROBS, torch.tensor([0, 3]), ValueError, r"labels contains class index 3.*\[0, 2\]"),
        (GOOD_PROBS, torch.tensor([-1, 0]), ValueError, r"labels contains class index -1"),
        (GOOD_PROBS, torch.tensor([0, 1, 2]), ValueError, r"labels must have shape \(2,\).*\(3,\)"),
        (GOOD_PROBS, torch.tensor([0.0, 2.0]), TypeError, "labels must hold integer.*float32"),
        (GOOD_PROBS, torch.tensor([True, False]), TypeError, "labels must hold integer.*bool"),
        (torch.tensor([0.2, 0.8]), GOOD_LABELS, ValueError, r"probs must have shape \(N, C\)"),
        (torch.ones(2, 3, dtype=torch.long), GOOD_LABELS, TypeError, "floating-point.*int64"),
        (torch.tensor([[math.nan, 0.5, 0.5]]), GOOD_LABELS[:1], ValueError, "probs must be finite"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "at least one sample"),
        ("probs", GOOD_LABELS, TypeError, "probs must be a torch.Tensor or a numpy array"),
    ],
)
def test_bad_probs_and_labels(fn, probs, labels, error, pattern):
    with pytest.raises(error, match=pattern):
        fn(probs, labels)


@pytest.mark.parametrize(
    "fn",
    [
        expected_calibration_error,
        maximum_calibration_error,
        classwise_calibration_error,
        reliability_curve,
    ],
)
def test_bad_bins(fn):
    with pytest.raises(ValueError, match="n_bins must be >= 1, got n_bins=0"):
        fn(GOOD_PROBS, GOOD_LABELS, n_bins=0)
    with pytest.raises(TypeError, match="n_bins must be an int, got n_bins=2.5"):
        fn(GOOD_PROBS, GOOD_LABELS, n_bins=2.5)
    with pytest.raises(ValueError, match=r"binning must be one of 'uniform', 'quantile', got"):
        fn(GOOD_PROBS, GOOD_LABELS, binning="adaptive")


@pytest.mark.parametrize(
    "fn",
    [
        expected_calibration_error,
        maximum_calibration_error,
        classwise_calibration_error,
        reliability_curve,
    ],
)
def test_n_bins_is_bounded(fn):
    """10**9 bins used to allocate gigabytes (the audit's OOM); the bound is refused at once."""
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"n_bins must be <= 100000, got n_bins=1000000000"):
        fn(GOOD_PROBS, GOOD_LABELS, n_bins=10**9)
    assert time.perf_counter() - start < 1.0
    fn(GOOD_PROBS, GOOD_LABELS, n_bins=100_000)  # the bound itself is allowed


def test_n_bins_is_bounded_for_multilabel():
    probs = torch.tensor([[0.2, 0.9], [0.7, 0.4]])
    targets = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="n_bins must be <= 100000"):
        multilabel_calibration_error(probs, targets, n_bins=100_001)


def test_bad_multilabel_input():
    probs = torch.tensor([[0.2, 0.9], [0.4, 0.1]])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got 2"):
        multilabel_calibration_error(probs, torch.tensor([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match=r"labels must have the shape of probs \(2, 2\)"):
        multilabel_calibration_error(probs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        multilabel_calibration_error(probs * 3, torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="average must be one of 'macro', 'none'"):
        multilabel_calibration_error(probs, torch.tensor([[0, 1], [1, 0]]), average="micro")
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\)"):
        auroc(probs, torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match=r"scores must have shape \(N, L\)"):
        multilabel_auroc(probs[:, 0], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="scores must not be nan"):
        auroc(torch.tensor([math.nan, 0.2]), torch.tensor([0, 1]))


def test_core_metrics_need_neither_matplotlib_nor_scipy():
    script = (
        "import sys, labelsmooth.metrics, labelsmooth.analysis; "
        "heavy = sorted(m for m in sys.modules if m.startswith(('matplotlib', 'scipy'))); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_docstring_examples():
    result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------------------------
# ignore_index: padded rows are dropped before anything is computed
# --------------------------------------------------------------------------------------------


def _padded(seed=0, n=60, k=4, ignore_index=-100, every=3):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    padded = labels.clone()
    padded[::every] = ignore_index
    keep = padded != ignore_index
    return logits, labels, padded, keep


PROB_FUNCTIONS = [
    lambda p, y, **kw: expected_calibration_error(p, y, 7, **kw),
    lambda p, y, **kw: expected_calibration_error(p, y, 5, "quantile", **kw),
    lambda p, y, **kw: maximum_calibration_error(p, y, 7, **kw),
    lambda p, y, **kw: classwise_calibration_error(p, y, 6, **kw),
    lambda p, y, **kw: brier_score(p, y, **kw),
    lambda p, y, **kw: negative_log_likelihood(p, y, **kw),
    lambda p, y, **kw: aurc(p, y, **kw),
    lambda p, y, **kw: metrics.excess_aurc(p, y, **kw),
    lambda p, y, **kw: reliability_curve(p, y, 5, **kw).counts.tolist(),
    lambda p, y, **kw: risk_coverage_curve(p, y, **kw).risk.tolist(),
    lambda p, y, **kw: fit_temperature(torch.log(torch.as_tensor(p)), y, **kw),
]


@pytest.mark.parametrize("fn", PROB_FUNCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])  # a valid class may be the ignore index
def test_ignore_index_equals_the_function_on_the_kept_rows(fn, ignore_index):
    logits, labels, padded, keep = _padded(ignore_index=ignore_index)
    probs = logits.softmax(dim=1)
    if ignore_index == 2:
        keep = labels != 2
        padded = labels
    expected = fn(probs[keep], labels[keep])
    assert fn(probs, padded, ignore_index=ignore_index) == expected
    assert fn(probs.numpy(), padded.numpy(), ignore_index=ignore_index) == expected
    # Without ignore_index the padding is an error (out of range) or counts as data.
    if ignore_index == -100:
        with pytest.raises(ValueError, match="class index -100"):
            fn(probs, padded)
    else:
        assert fn(probs, padded) != expected


def test_ignore_index_rows_need_not_be_probabilities():
    logits, labels, padded, keep = _padded()
    probs = logits.softmax(dim=1)
    garbage = probs.clone()
    garbage[~keep] = float("nan")
    expected = expected_calibration_error(probs[keep], labels[keep])
    assert expected_calibration_error(garbage, padded, ignore_index=-100) == expected
    bad_logits = logits.clone()
    bad_logits[~keep] = float("inf")
    assert fit_temperature(bad_logits, padded, ignore_index=-100) == fit_temperature(
        logits[keep], labels[keep]
    )
    # ... but a kept row still must be.
    garbage[1] = 0.5
    with pytest.raises(ValueError, match="must sum to 1"):
        expected_calibration_error(garbage, padded, ignore_index=-100)


@pytest.mark.parametrize("fn", PROB_FUNCTIONS)
def test_all_rows_ignored_is_an_error_naming_ignore_index(fn):
    probs = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"ignore_index=-100"):
        fn(probs, torch.full((4,), -100), ignore_index=-100)


def test_ignore_index_must_be_an_int():
    probs = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="ignore_index"):
        brier_score(probs, torch.zeros(4, dtype=torch.long), ignore_index=1.5)
    assert brier_score(
        probs, torch.tensor([0, 1, 2, -1]), ignore_index=torch.tensor(-1)
    ) == brier_score(probs[:3], torch.tensor([0, 1, 2]))


def test_ignore_index_for_binary_and_multilabel_functions():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(40, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (40, 3), generator=g)
    padded = labels.clone()
    padded[::4, 0] = -100
    padded[1::5, 2] = -100
    for j in range(3):
        keep = padded[:, j] != -100
        assert auroc(scores[:, j], padded[:, j], ignore_index=-100) == auroc(
            scores[keep, j], labels[keep, j]
        )
    per_label = multilabel_auroc(scores, padded, average="none", ignore_index=-100)
    per_label_ece = multilabel_calibration_error(
        scores, padded, 5, average="none", ignore_index=-100
    )
    for j in range(3):
        keep = padded[:, j] != -100
        assert per_label[j] == auroc(scores[keep, j], labels[keep, j])
        assert per_label_ece[j] == multilabel_calibration_error(scores[keep, j], labels[keep, j], 5)
    padded[:, 1] = -100
    assert math.isnan(multilabel_auroc(scores, padded, average="none", ignore_index=-100)[1])
    with pytest.raises(ValueError, match="label column 1.*ignore_index=-100"):
        multilabel_calibration_error(scores, padded, ignore_index=-100)
    with pytest.raises(ValueError, match="ignore_index=-100"):
        auroc(scores[:, 0], torch.full((40,), -100), ignore_index=-100)


def test_reliability_curve_norms_match_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels, _, _ = _padded(seed=5, n=300, k=5)
    probs = logits.softmax(dim=1)
    curve = reliability_curve(probs, labels, 10)
    for norm in ("l1", "l2", "max"):
        expected = tm.multiclass_calibration_error(probs, labels, 5, n_bins=10, norm=norm)
        assert curve.calibration_error(norm) == pytest.approx(float(expected), abs=1e-6)
    assert curve.calibration_error("l1") == curve.expected_calibration_error
    with pytest.raises(ValueError, match="norm"):
        curve.calibration_error("l3")


@pytest.mark.parametrize("k", [2, 3, 7, 10, 1000])
def test_theoretical_gap_is_exactly_zero_at_the_largest_others_eps(k):
    assert metrics.theoretical_gap((k - 1) / k, k, "others") == 0.0
    assert metrics.theoretical_gap(1.0, k, "uniform") == 0.0

"""labelsmooth.analysis: penultimate-layer projection and the mutual-information estimate."""

import doctest
import math

import numpy as np
import pytest
import torch

from labelsmooth import analysis
from labelsmooth.analysis import (
    MutualInformationEstimate,
    PenultimateProjection,
    mutual_information_under_noise,
    penultimate_projection,
)


def random_layer(num_classes=5, hidden=8, n=60, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, hidden, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    features = torch.randn(n, hidden, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return features, weight, bias, labels


# --------------------------------------------------------------------------------------------
# Penultimate-layer projection
# --------------------------------------------------------------------------------------------


def test_projection_geometry():
    features, weight, bias, labels = random_layer()
    a, b, c = 1, 3, 4
    projection = penultimate_projection(features, weight, bias, labels, classes=(a, b, c))
    assert isinstance(projection, PenultimateProjection)
    assert projection.classes == (a, b, c)
    # Orthonormal basis of R^{H+1}-vectors.
    np.testing.assert_allclose(projection.basis @ projection.basis.T, np.eye(2), atol=1e-12)
    assert projection.basis.shape == (2, 9)
    # Only the samples of the three classes, in input order.
    mask = np.isin(labels.numpy(), (a, b, c))
    np.testing.assert_array_equal(projection.labels, labels.numpy()[mask])
    assert projection.points.shape == (mask.sum(), 2)
    # The first coordinate is the logit difference z_b - z_a over |t_b - t_a|.
    templates = torch.cat([weight, bias[:, None]], 1).numpy()
    logits = (features @ weight.T + bias).numpy()[mask]
    distance_ab = np.linalg.norm(templates[b] - templates[a])
    np.testing.assert_allclose(
        projection.points[:, 0], (logits[:, b] - logits[:, a]) / distance_ab, atol=1e-12
    )
    # The templates lie in the plane: their pairwise distances are preserved.
    for i, j in ((0, 1), (0, 2), (1, 2)):
        full = np.linalg.norm(templates[(a, b, c)[i]] - templates[(a, b, c)[j]])
        flat = np.linalg.norm(projection.templates[i] - projection.templates[j])
        assert flat == pytest.approx(full, rel=1e-12)
    # A point of the plane's span maps to the same combination of projected templates.
    combination = 0.3 * templates[a] - 1.2 * templates[b] + 2.0 * templates[c]
    np.testing.assert_allclose(
        combination @ projection.basis.T,
        0.3 * projection.templates[0]
        - 1.2 * projection.templates[1]
        + 2.0 * projection.templates[2],
        atol=1e-12,
    )


def test_projection_gram_schmidt_by_hand():
    weight = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    bias = np.array([0.0, 0.0, 1.0])
    features = np.array([[1.0, 2.0], [3.0, -1.0]])
    projection = penultimate_projection(features, weight, bias, np.array([0, 2]), (0, 1, 2))
    t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 1.0]])
    u1 = (t[1] - t[0]) / np.sqrt(2)
    v = (t[2] - t[0]) - ((t[2] - t[0]) @ u1) * u1
    u2 = v / np.linalg.norm(v)
    np.testing.assert_allclose(projection.basis, np.stack([u1, u2]), atol=1e-12)
    augmented = np.array([[1.0, 2.0, 1.0], [3.0, -1.0, 1.0]])
    np.testing.assert_allclose(projection.points, augmented @ np.stack([u1, u2]).T, atol=1e-12)


def test_projection_inputs_numpy_float32_and_no_bias():
    features, weight, bias, labels = random_layer(seed=1)
    reference = penultimate_projection(features, weight, bias, labels, (0, 1, 2))
    from_numpy = penultimate_projection(
        features.numpy(), weight.numpy(), bias.numpy(), labels.numpy(), (0, 1, 2)
    )
    np.testing.assert_allclose(from_numpy.points, reference.points, atol=1e-12)
    low = penultimate_projection(features.float(), weight.float(), bias.float(), labels, (0, 1, 2))
    np.testing.assert_allclose(low.points, reference.points, atol=1e-4)
    no_bias = penultimate_projection(features, weight, None, labels, (0, 1, 2))
    assert np.allclose(no_bias.basis[:, -1], 0.0)
    empty = penultimate_projection(features, weight, bias, torch.full((60,), 4), (0, 1, 2))
    assert empty.points.shape == (0, 2) and empty.labels.shape == (0,)


@pytest.mark.parametrize(
    ("change", "error", "pattern"),
    [
        ({"classes": (0, 0, 1)}, ValueError, r"classes must be 3 distinct class indices"),
        ({"classes": (0, 1, 5)}, ValueError, r"class indices in \[0, 4\] \(num_classes=5\)"),
        ({"classes": (0, 1)}, TypeError, "classes must be a tuple of 3 class indices"),
        ({"features": torch.zeros(60, 7)}, ValueError, "features must have 8 columns"),
        ({"features": torch.zeros(60, 8, dtype=torch.long)}, TypeError, "features must be float"),
        (
            {"last_layer_bias": torch.zeros(4)},
            ValueError,
            r"last_layer_bias must have shape \(5,\)",
        ),
        (
            {"labels": torch.zeros(59, dtype=torch.long)},
            ValueError,
            r"labels must have shape \(60,\)",
        ),
        ({"labels": torch.zeros(60)}, TypeError, "labels must hold integer class indices"),
        ({"last_layer_weight": torch.zeros(5)}, ValueError, r"last_layer_weight must have shape"),
        ({"features": [[0.0] * 8] * 60}, TypeError, "features must be a torch.Tensor or a numpy"),
    ],
)
def test_projection_bad_arguments(change, error, pattern):
    features, weight, bias, labels = random_layer()
    kwargs = {
        "features": features,
        "last_layer_weight": weight,
        "last_layer_bias": bias,
        "labels": labels,
        "classes": (0, 1, 2),
    }
    kwargs.update(change)
    with pytest.raises(error, match=pattern):
        penultimate_projection(**kwargs)


def test_projection_collinear_templates():
    weight = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    features, labels = torch.zeros(3, 2), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="collinear"):
        penultimate_projection(features, weight, torch.zeros(3), labels, (0, 1, 2))
    with pytest.raises(ValueError, match="collinear"):
        penultimate_projection(features, torch.ones(3, 2), torch.zeros(3), labels, (0, 1, 2))


# --------------------------------------------------------------------------------------------
# Mutual information between example and logit difference
# --------------------------------------------------------------------------------------------


def linear_model(v):
    """d = z_0 - z_1 = 2 * v[:, 0]."""
    return torch.cat([v[:, :1], -v[:, :1]], dim=1)


def brute_information(samples):
    """Müller et al.'s estimate, with loops, for each draw l as f(d(z_x)), averaged over l:
    1/N sum_i [-(y_il - mu_i)^2 / (2 s2_l) - log(1/N sum_j exp(-(y_il - mu_j)^2 / (2 s2_l)))]
    with mu_i the mean of example i's draws and s2_l = 1/N sum_i (y_il - mu_i)^2."""
    n, draws = samples.shape
    means = [sum(row) / draws for row in samples]
    per_draw = []
    for d in range(draws):
        variance = sum((samples[i][d] - means[i]) ** 2 for i in range(n)) / n
        total = 0.0
        for i in range(n):
            y = samples[i][d]
            inner = sum(math.exp(-((y - means[j]) ** 2) / (2 * variance)) for j in range(n))
            total += -((y - means[i]) ** 2) / (2 * variance) - math.log(inner / n)
        per_draw.append(total / n)
    return sum(per_draw) / draws


def brute_pairwise_bound(samples):
    """The Kolchinsky-Tracey value at the means (the old, mislabelled estimator), with the
    variance of :func:`brute_information` averaged over the draws."""
    n, draws = samples.shape
    means = [sum(row) / draws for row in samples]
    variance = sum((samples[i][d] - means[i]) ** 2 for i in range(n) for d in range(draws))
    variance /= n * draws
    total = 0.0
    for i in range(n):
        inner = sum(math.exp(-((means[i] - means[j]) ** 2) / (2 * variance)) for j in range(n))
        total += math.log(inner / n)
    return -total / n


def test_estimator_by_hand_on_two_examples():
    # y = [[0, 2], [4, 6]]: mu = (1, 5). Draw l=0 is y = (0, 4): sigma_0^2 = (1 + 1) / 2 = 1.
    # Example 0 (y=0): own term -1/2; kernels exp(-1/2) to mu_0 and exp(-25/2) to mu_1:
    # -1/2 - log((exp(-1/2) + exp(-25/2)) / 2) = log 2 - log(1 + exp(-12)).
    # Example 1 (y=4): own -1/2; exp(-9/2) to mu_0: log 2 - log(1 + exp(-4)).
    # Draw l=1 is y = (2, 6), the mirror image: the same two brackets, sigma_1^2 = 1.
    samples = np.array([[0.0, 2.0], [4.0, 6.0]])
    estimate = analysis._gaussian_information(samples)
    expected = math.log(2) - (math.log1p(math.exp(-12)) + math.log1p(math.exp(-4))) / 2
    assert estimate.mutual_information == pytest.approx(expected, abs=1e-12)
    assert estimate.mutual_information == pytest.approx(0.684069, abs=1e-6)
    np.testing.assert_allclose(estimate.means, [1.0, 5.0])
    assert estimate.noise_variance == 1.0
    # the bound at the means: log 2 - log(1 + exp(-16 / 2))
    assert estimate.pairwise_bound == pytest.approx(math.log(2) - math.log1p(math.exp(-8)))


def test_estimator_matches_its_formula():
    generator = np.random.default_rng(0)
    samples = generator.normal(size=(12, 7)) + generator.normal(size=(12, 1)) * 1.5
    estimate = analysis._gaussian_information(samples)
    assert estimate.mutual_information == pytest.approx(brute_information(samples), abs=1e-12)
    assert estimate.pairwise_bound == pytest.approx(brute_pairwise_bound(samples), abs=1e-12)
    assert estimate.mutual_information != pytest.approx(estimate.pairwise_bound, abs=1e-3)
    np.testing.assert_allclose(estimate.means, samples.mean(1))
    assert estimate.noise_variance == pytest.approx(samples.var(1).mean())


def test_estimator_through_a_model_with_a_known_logit_difference():
    # y = z_0 - z_1 = 2 (x + 0.7 xi); the noise is re-drawn here from the same generator.
    inputs = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    estimate = mutual_information_under_noise(
        linear_model, inputs, (0, 1), noise_std=0.7, num_draws=3, generator=11
    )
    rng = torch.Generator().manual_seed(11)
    noise = [torch.randn(inputs.shape, generator=rng, dtype=torch.float64) for _ in range(3)]
    samples = np.stack([(2 * (inputs + 0.7 * xi))[:, 0].numpy() for xi in noise], axis=1)
    assert estimate.mutual_information == pytest.approx(brute_information(samples), abs=1e-12)
    assert estimate.num_draws == 3


def test_information_is_zero_when_the_difference_ignores_the_example():
    inputs = torch.randn(40, 3)
    constant = mutual_information_under_noise(
        lambda v: torch.zeros(v.shape[0], 4), inputs, (0, 1), noise_std=0.5, generator=0
    )
    assert constant.mutual_information == 0.0
    assert constant.noise_variance == 0.0
    # Depends on the noise only (all inputs identical): about 0 (a Monte-Carlo average).
    same = torch.zeros(40, 3)
    estimate = mutual_information_under_noise(
        linear_model, same, (0, 1), noise_std=1.0, num_draws=200, generator=1
    )
    assert abs(estimate.mutual_information) < 0.02
    # Equal means exactly: every bracket is -a - log(exp(-a)) = 0.
    equal = np.array([[-1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    assert analysis._gaussian_information(equal).mutual_information == pytest.approx(0, abs=1e-15)


def test_information_grows_as_examples_separate_and_is_bounded_by_log_n():
    n = 30
    values = []
    for spacing in (0.0, 0.05, 0.2, 0.5, 2.0, 20.0):
        inputs = (torch.arange(n, dtype=torch.float64) * spacing)[:, None]
        estimate = mutual_information_under_noise(
            linear_model, inputs, (0, 1), noise_std=1.0, num_draws=50, generator=2
        )
        assert estimate.mutual_information <= estimate.upper_bound + 1e-12
        values.append(estimate.mutual_information)
    assert values == sorted(values)
    assert abs(values[0]) < 0.05
    assert values[-1] == pytest.approx(math.log(n), abs=1e-6)


def test_information_of_two_gaussians_matches_the_exact_value():
    # Two groups of 50 identical examples whose y has means -/+ gap/2 and noise std s: X is
    # uniform over the 100 indices, and I(X; Y) = I(group; Y) =
    # log 2 - E_z log(1 + exp((2 s z D - D^2) / (2 s^2))), D = gap, z ~ N(0, 1)
    # (Gauss-Hermite quadrature).
    gap, std = 1.0, 1.0
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    exponent = (2 * std * nodes * gap - gap**2) / (2 * std**2)
    exact = math.log(2) - float((weights * np.log1p(np.exp(exponent))).sum() / weights.sum())
    inputs = torch.tensor([[-gap / 4]] * 50 + [[gap / 4]] * 50, dtype=torch.float64)  # y = 2 x
    estimate = mutual_information_under_noise(
        linear_model, inputs, (0, 1), noise_std=std / 2, num_draws=400, generator=3
    )
    assert estimate.mutual_information == pytest.approx(exact, abs=0.01)
    assert estimate.noise_variance == pytest.approx(std**2, rel=0.03)
    # the old value at the means is larger than the information here
    assert estimate.pairwise_bound > exact + 0.02


def test_information_seed_generator_and_no_noise():
    inputs = torch.randn(10, 2)
    first = mutual_information_under_noise(linear_model, inputs, (0, 1), noise_std=0.3, generator=5)
    again = mutual_information_under_noise(linear_model, inputs, (0, 1), noise_std=0.3, generator=5)
    assert first.mutual_information == again.mutual_information
    from_generator = mutual_information_under_noise(
        linear_model,
        inputs,
        (0, 1),
        noise_std=0.3,
        generator=torch.Generator().manual_seed(5),
    )
    assert from_generator.mutual_information == first.mutual_information
    assert isinstance(first, MutualInformationEstimate) and first.num_draws == 100
    # Without noise every distinct example is perfectly identified; equal ones are not.
    exact = mutual_information_under_noise(linear_model, inputs, (0, 1), noise_std=0.0)
    assert exact.mutual_information == pytest.approx(math.log(10))
    assert exact.noise_variance == 0.0
    doubled = torch.cat([inputs[:5], inputs[:5]])
    assert mutual_information_under_noise(
        linear_model, doubled, (0, 1), noise_std=0.0
    ).mutual_information == pytest.approx(math.log(5))


def test_information_with_a_module_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.eval()
    inputs = torch.randn(20, 4)
    estimate = mutual_information_under_noise(model, inputs, (2, 0), noise_std=0.1, num_draws=10)
    assert 0 < estimate.mutual_information <= math.log(20)
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"noise_std": -1.0}, ValueError, "noise_std must be finite and >= 0, got noise_std=-1.0"),
        ({"noise_std": "1"}, TypeError, "noise_std must be a real number"),
        ({"num_draws": 1}, ValueError, "num_draws must be >= 2"),
        ({"classes": (1, 1)}, ValueError, "two distinct class indices"),
        ({"classes": (0, 2)}, ValueError, r"class indices in \[0, 1\] \(the model returns 2"),
        ({"classes": 0}, TypeError, "classes must be a pair"),
        ({"inputs": torch.zeros(1, 2)}, ValueError, "N >= 2 examples"),
        ({"inputs": torch.zeros(3, 2, dtype=torch.long)}, TypeError, "floating-point"),
        ({"model": "net"}, TypeError, "model must be callable"),
        ({"model": lambda v: v[:, 0]}, ValueError, r"model must return \(N, K\) logits"),
        ({"model": lambda v: torch.zeros(2, 2)}, ValueError, "2 rows of logits for 4 inputs"),
        ({"generator": 1.5}, TypeError, "generator must be an int"),
    ],
)
def test_information_bad_arguments(kwargs, error, pattern):
    arguments = {
        "model": linear_model,
        "inputs": torch.zeros(4, 2),
        "classes": (0, 1),
        "noise_std": 0.1,
        "num_draws": 5,
    }
    arguments.update(kwargs)
    model, inputs, classes = (
        arguments.pop("model"),
        arguments.pop("inputs"),
        arguments.pop("classes"),
    )
    with pytest.raises(error, match=pattern):
        mutual_information_under_noise(model, inputs, classes, **arguments)


def test_docstring_examples():
    result = doctest.testmod(analysis, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# ----------------------------------------------------------------------------------------------
# class_spread_ratio: the penultimate geometry in one number
# ----------------------------------------------------------------------------------------------


def test_class_spread_ratio_hand_computed():
    from labelsmooth.analysis import class_spread_ratio

    # class 0 around (0, 0), class 1 around (3, 4), class 2 around (0, 8)
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [3.0, 5.0], [3.0, 3.0], [0.0, 10.0], [0.0, 6.0]])
    labels = np.array([0, 0, 1, 1, 2, 2])
    # squared distances to own centroid: 1, 1, 1, 1, 4, 4 -> rms sqrt(12 / 6)
    # centroid distances: |(3, 4)| = 5, |(0, 8)| = 8, |(-3, 4)| = 5 -> mean 6
    assert class_spread_ratio(points, labels) == pytest.approx(math.sqrt(2.0) / 6.0)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 250.0])
def test_class_spread_ratio_invariant_to_scale_translation_and_order(scale):
    from labelsmooth.analysis import class_spread_ratio

    generator = np.random.default_rng(0)
    points = generator.normal(size=(60, 5))
    labels = np.repeat(np.arange(3), 20)
    points[labels == 1] += 4.0
    expected = class_spread_ratio(points, labels)
    order = generator.permutation(60)
    moved = scale * points[order] + generator.normal(size=5)
    assert class_spread_ratio(moved, labels[order]) == pytest.approx(expected, rel=1e-10)
    # tighter clusters at the same centroids: a lower ratio
    centroids = np.stack([points[labels == k].mean(0) for k in range(3)])
    tighter = centroids[labels] + 0.5 * (points - centroids[labels])
    assert class_spread_ratio(tighter, labels) == pytest.approx(expected / 2, rel=1e-10)


def test_class_spread_ratio_refuses_one_class_and_coincident_centroids():
    from labelsmooth.analysis import class_spread_ratio

    with pytest.raises(ValueError, match="at least two classes"):
        class_spread_ratio(np.ones((4, 2)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="same place"):
        class_spread_ratio(np.array([[1.0, 0.0], [-1.0, 0.0]] * 2), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        class_spread_ratio(np.ones((4, 2)), np.zeros(3, dtype=np.int64))

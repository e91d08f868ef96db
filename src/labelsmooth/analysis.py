r"""Representation-level diagnostics of Müller, Kornblith & Hinton (2019), "When does label
smoothing help?": the penultimate-layer projection and the mutual information between the
training example and its logit difference (the distillation study).

Inputs are ``torch.Tensor`` or ``numpy.ndarray``; results are small frozen dataclasses of
numpy arrays and Python floats, computed on the CPU in float64. Only torch and numpy are
needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from . import _checks

__all__ = [
    "MutualInformationEstimate",
    "PenultimateProjection",
    "class_spread_ratio",
    "mutual_information_under_noise",
    "penultimate_projection",
]

ArrayLike = Tensor | np.ndarray


@dataclass(frozen=True, eq=False)
class PenultimateProjection:
    """Penultimate-layer activations of three classes, projected on the plane of their templates.

    Attributes:
        points: (n, 2) coordinates of the selected samples (those whose label is in
            ``classes``), in the order they appear in the input.
        labels: (n,) their class labels.
        templates: (3, 2) coordinates of the templates of ``classes``, in that order.
        classes: the three classes (a, b, c).
        basis: (2, H+1) orthonormal basis of the plane (rows u1, u2).
    """

    points: np.ndarray
    labels: np.ndarray
    templates: np.ndarray
    classes: tuple[int, int, int]
    basis: np.ndarray


@dataclass(frozen=True, eq=False)
class MutualInformationEstimate:
    """Result of :func:`mutual_information_under_noise`.

    Attributes:
        mutual_information: the sample-based estimate of I(X; Y) in nats (Müller et al. 2019,
            Sec. 4), at most log N. It is a Monte-Carlo average, so it can fall slightly
            below 0 when the examples are indistinguishable.
        means: (N,) mean logit difference of each example over its noise draws (mu_x).
        noise_variance: the shared variance sigma^2 of the Gaussian p(y | x), as the paper
            estimates it (mean squared deviation of a draw from its example's mean), averaged
            over the L draws.
        num_draws: L, the number of noisy copies of each example.
        pairwise_bound: the Kolchinsky & Tracey (2017) pairwise-distance value at the means,
            ``-1/N sum_i log(1/N sum_j exp(-(mu_i - mu_j)^2 / (2 sigma^2)))``: an upper
            bound on the information of the fitted Gaussian mixture, evaluated at the means
            only (not the paper's estimate; kept for comparison).
    """

    mutual_information: float
    means: np.ndarray
    noise_variance: float
    num_draws: int
    pairwise_bound: float

    @property
    def upper_bound(self) -> float:
        """log N: the value for perfectly separated examples."""
        return math.log(self.means.shape[0])


def _as_float_array(name: str, value: object, ndim: int, hint: str) -> np.ndarray:
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype={value.dtype}")
        array = value.detach().cpu().to(torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            raise TypeError(f"{name} must be floating point, got dtype={value.dtype}")
        array = value.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {hint}, got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def _as_labels(value: object, num_samples: int) -> np.ndarray:
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"labels must hold integer class indices, got dtype={value.dtype}")
        array = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TypeError(f"labels must hold integer class indices, got dtype={value.dtype}")
        array = value
    else:
        raise TypeError(
            f"labels must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if array.shape != (num_samples,):
        raise ValueError(
            f"labels must have shape ({num_samples},): one class index per row of features, "
            f"got shape {tuple(array.shape)}"
        )
    return array.astype(np.int64)


def _check_classes(classes: object, count: int, num_classes: int) -> tuple[int, ...]:
    if not isinstance(classes, Sequence) or isinstance(classes, str) or len(classes) != count:
        raise TypeError(f"classes must be a tuple of {count} class indices, got {classes!r}")
    values = tuple(_checks.check_int("classes", c) for c in classes)
    if len(set(values)) != count:
        raise ValueError(f"classes must be {count} distinct class indices, got {values}")
    for c in values:
        if not 0 <= c < num_classes:
            raise ValueError(
                f"classes must be class indices in [0, {num_classes - 1}] "
                f"(num_classes={num_classes}), got {values}"
            )
    return values


def penultimate_projection(
    features: ArrayLike,
    last_layer_weight: ArrayLike,
    last_layer_bias: ArrayLike | None,
    labels: ArrayLike,
    classes: tuple[int, int, int],
) -> PenultimateProjection:
    r"""Projects penultimate-layer activations on the plane of three class templates.

    The visualisation of Müller, Kornblith & Hinton (2019, Sec. 2). The logit of class k is
    :math:`z_k = \tilde x^\top t_k` with the **template** :math:`t_k = [w_k; b_k]` (row k of
    the last layer with its bias appended) and the **feature** :math:`\tilde x = [x; 1]`.
    For ``classes = (a, b, c)`` the plane through :math:`t_a, t_b, t_c` has the orthonormal
    basis (Gram-Schmidt)

    .. math::

        u_1 = \frac{t_b - t_a}{\lVert t_b - t_a \rVert}, \qquad
        u_2 = \frac{v}{\lVert v \rVert},\quad v = (t_c - t_a) - \langle t_c - t_a, u_1\rangle u_1

    and each sample of class a, b or c is mapped to :math:`(\tilde x^\top u_1, \tilde x^\top
    u_2)`; the templates are mapped the same way. This is the orthogonal projection on the
    2-D subspace parallel to the plane: projecting on the plane itself (through
    :math:`t_a`) only translates every point by the same vector. The first coordinate is the
    logit difference :math:`(z_b - z_a) / \lVert t_b - t_a \rVert`, so the picture shows how
    far apart the classes are in logit space. With label smoothing the clusters become
    tight and equidistant; with hard targets they spread towards their templates.

    Args:
        features: (N, H) penultimate-layer activations (the input of the last linear layer).
        last_layer_weight: (K, H) weight of the last linear layer (``nn.Linear.weight``).
        last_layer_bias: (K,) its bias, or ``None`` for a layer without bias (then the
            appended coordinate is 0 for the templates).
        labels: (N,) integer class labels; samples of other classes are left out.
        classes: three distinct class indices (a, b, c).

    Raises:
        ValueError: if the three templates are collinear (the plane is not defined).

    Example:
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
        >>> features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
        >>> projection = penultimate_projection(
        ...     features, weight, None, torch.tensor([0, 1, 3]), classes=(0, 1, 2))
        >>> projection.labels.tolist(), projection.points.shape
        ([0, 1], (2, 2))
        >>> bool(np.allclose(projection.points[:, 0], [-2.0, 3.0] / np.sqrt(2)))
        True
    """
    feats = _as_float_array("features", features, 2, "(N, H)")
    weight = _as_float_array("last_layer_weight", last_layer_weight, 2, "(K, H)")
    num_classes, hidden = weight.shape
    if feats.shape[1] != hidden:
        raise ValueError(
            f"features must have {hidden} columns (last_layer_weight has shape {weight.shape}), "
            f"got shape {tuple(feats.shape)}"
        )
    if last_layer_bias is None:
        bias = np.zeros(num_classes)
    else:
        bias = _as_float_array("last_layer_bias", last_layer_bias, 1, f"({num_classes},)")
        if bias.shape != (num_classes,):
            raise ValueError(
                f"last_layer_bias must have shape ({num_classes},) (one entry per row of "
                f"last_layer_weight), got shape {tuple(bias.shape)}"
            )
    classes_checked = _check_classes(classes, 3, num_classes)
    label_array = _as_labels(labels, feats.shape[0])

    templates = np.concatenate([weight, bias[:, None]], axis=1)[list(classes_checked)]
    first = templates[1] - templates[0]
    second = templates[2] - templates[0]
    scale = max(np.linalg.norm(first), np.linalg.norm(second))
    if scale == 0 or np.linalg.norm(first) <= 1e-12 * scale:
        raise ValueError(
            f"the templates of classes {classes_checked} are collinear (a and b coincide): "
            "their plane is not defined"
        )
    u1 = first / np.linalg.norm(first)
    v = second - (second @ u1) * u1
    if np.linalg.norm(v) <= 1e-9 * scale:
        raise ValueError(
            f"the templates of classes {classes_checked} are collinear: their plane is not defined"
        )
    basis = np.stack([u1, v / np.linalg.norm(v)])

    selected = np.isin(label_array, classes_checked)
    augmented = np.concatenate([feats[selected], np.ones((int(selected.sum()), 1))], axis=1)
    return PenultimateProjection(
        points=augmented @ basis.T,
        labels=label_array[selected],
        templates=templates @ basis.T,
        classes=classes_checked,  # type: ignore[arg-type]
        basis=basis,
    )


def class_spread_ratio(points: ArrayLike, labels: ArrayLike) -> float:
    r"""Within-class spread over the distance between class centroids: one number for how
    tight and how far apart the clusters of a penultimate-layer picture are.

    For points :math:`p_i` with labels :math:`y_i` in C classes (each with at least one point),
    with class centroids :math:`c_k`:

    .. math::

        \text{ratio} = \frac{\sqrt{\tfrac1N \sum_i \lVert p_i - c_{y_i} \rVert^2}}
                             {\binom{C}{2}^{-1} \sum_{a < b} \lVert c_a - c_b \rVert}

    the root-mean-square distance of a point to its own centroid over the mean distance between
    two centroids. Müller et al. (2019) describe label smoothing as making the clusters tight
    and equidistant: a lower ratio. The ratio does not change when every point is scaled by the
    same factor, so models whose logits have different scales compare directly. Use it on
    :attr:`PenultimateProjection.points` (the template plane) or on the features themselves
    (the full space).

    Args:
        points: (N, D) coordinates.
        labels: (N,) integer labels; at least two distinct classes.

    Raises:
        ValueError: fewer than two classes, or every centroid at the same place.

    Example:
        >>> points = np.array([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]])
        >>> class_spread_ratio(points, np.array([0, 0, 1, 1]))
        0.25
    """
    coordinates = _as_float_array("points", points, 2, "(N, D)")
    label_array = _as_labels(labels, coordinates.shape[0])
    classes = np.unique(label_array)
    if classes.size < 2:
        raise ValueError(
            f"labels must hold at least two classes, got {classes.size} ({classes.tolist()})"
        )
    centroids = np.stack([coordinates[label_array == k].mean(axis=0) for k in classes])
    index = np.searchsorted(classes, label_array)
    spread = math.sqrt(float(((coordinates - centroids[index]) ** 2).sum(axis=1).mean()))
    first, second = np.triu_indices(classes.size, k=1)
    distance = float(np.linalg.norm(centroids[first] - centroids[second], axis=1).mean())
    if distance == 0:
        raise ValueError("every class centroid is at the same place: the ratio is not defined")
    return spread / distance


def _make_generator(generator: object, device: torch.device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    seed = _checks.check_int("generator", generator)
    return torch.Generator(device=device).manual_seed(seed)


def mutual_information_under_noise(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    classes: tuple[int, int],
    *,
    noise_std: float = 0.5,
    num_draws: int = 100,
    generator: torch.Generator | int | None = None,
) -> MutualInformationEstimate:
    r"""Mutual information between the example index and its logit difference under input noise.

    The distillation diagnostic of Müller, Kornblith & Hinton (2019, "When does label
    smoothing help?", Sec. 4): label smoothing erases the information in the logits about
    *which* example of a class was seen. X is the index of one of N examples
    :math:`x_1..x_N` (uniform; typically training examples of the two classes a and b) and Y
    the logit difference :math:`z_a - z_b` of the model on a randomly perturbed copy of it.
    The paper perturbs with data augmentation; here the perturbation is Gaussian input
    noise: L copies :math:`x_i + \sigma_{\text{noise}}\,\xi_{il}`, :math:`\xi \sim
    \mathcal N(0, I)`, give the samples :math:`y_{il} = z_a(\cdot) - z_b(\cdot)`. As in the
    paper, :math:`p(y \mid x_i)` is approximated by a Gaussian :math:`\mathcal N(\mu_i,
    \sigma^2)` with a variance shared by the examples, and :math:`I(X; Y) = \mathbb
    E_{X,Y}[\log p(y \mid x) - \log \sum_x p(y \mid x) p(x)]` is estimated on samples (the
    Gaussians' normalising constants cancel). The paper's estimate, with one draw
    :math:`y_i` of each example playing :math:`f(d(z_x))`, is

    .. math::

        \hat I = \frac1N \sum_{i=1}^{N} \Big[ -\frac{(y_i - \mu_i)^2}{2\sigma^2}
        - \log \frac1N \sum_{j=1}^{N} \exp\!\Big(-\frac{(y_i - \mu_j)^2}{2\sigma^2}\Big)
        \Big], \qquad
        \mu_i = \frac1L \sum_{l=1}^{L} y_{il}, \quad
        \sigma^2 = \frac1N \sum_{i=1}^{N} (y_i - \mu_i)^2 .

    This function evaluates it once with each of the L draws as :math:`y_i = y_{il}` (and its
    own :math:`\sigma_l^2 = \frac1N \sum_i (y_{il} - \mu_i)^2`) and returns the mean of the
    L values: the same estimator with less Monte-Carlo noise.

    In nats. Each bracket is at most :math:`\log N` (its j = i term equals the first term),
    so :math:`\hat I \le \log N`, reached when the examples' logit differences are far apart
    relative to the noise; :math:`\hat I = 0` when every :math:`\mu_j` is the same (the
    logit difference says nothing about the example); for two well-separated classes whose
    examples are otherwise indistinguishable it is about :math:`\log 2`. Being a Monte-Carlo
    estimate it can be slightly negative for nearly indistinguishable examples. If
    :math:`\sigma_l^2 = 0` (no noise, or a model that ignores its input), a Gaussian of zero
    width is a point mass: the kernel is 1 for :math:`y_{il} = \mu_j` and 0 otherwise, so the
    estimate is :math:`\log N` for distinct examples and 0 for a constant model. The value
    depends on ``noise_std`` relative to the scale of the inputs (the study's standardised
    features: 0.5 is half a feature's standard deviation) and, through the Monte-Carlo mean,
    slightly on L (the paper used L = 5 and N = 600). Cost: ``num_draws`` forward passes over
    the N inputs, and an N x N array per draw.

    Args:
        model: a callable mapping a batch of inputs (N, ...) to logits (N, K); it is called
            ``num_draws`` times under ``torch.no_grad()`` on all N noisy inputs. Put a module
            in ``eval()`` mode first (dropout and batch-norm statistics would add noise).
        inputs: (N, ...) floating tensor of N >= 2 examples.
        classes: the pair (a, b) whose logit difference :math:`z_a - z_b` is measured.
        noise_std: standard deviation of the Gaussian input noise, >= 0; default 0.5 (the
            study's ``mi_noise_std``).
        num_draws: L >= 2 noisy copies of every example.
        generator: a ``torch.Generator`` (on the device of ``inputs``), an int seed, or
            ``None`` for the global generator.

    Example:
        >>> x = torch.tensor([[-3.0], [-1.0], [1.0], [3.0]])
        >>> model = lambda v: torch.cat([v, -v], dim=1)  # y = 2 x: examples well apart
        >>> estimate = mutual_information_under_noise(
        ...     model, x, (0, 1), noise_std=0.1, num_draws=20, generator=0)
        >>> round(estimate.mutual_information, 3), round(estimate.upper_bound, 3)
        (1.386, 1.386)
        >>> constant = lambda v: torch.zeros(v.shape[0], 2)  # y does not depend on the example
        >>> mutual_information_under_noise(
        ...     constant, x, (0, 1), noise_std=0.1, num_draws=20, generator=0
        ... ).mutual_information
        0.0
    """
    if not callable(model):
        raise TypeError(f"model must be callable (inputs -> logits), got {type(model).__name__}")
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        what = inputs.dtype if isinstance(inputs, Tensor) else type(inputs).__name__
        raise TypeError(f"inputs must be a floating-point torch.Tensor, got {what}")
    if inputs.dim() < 1 or inputs.shape[0] < 2:
        raise ValueError(
            f"inputs must hold N >= 2 examples along dimension 0, got shape {tuple(inputs.shape)}"
        )
    if isinstance(noise_std, bool) or not isinstance(noise_std, Real):
        raise TypeError(f"noise_std must be a real number, got noise_std={noise_std!r}")
    noise_std = float(noise_std)
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be finite and >= 0, got noise_std={noise_std}")
    num_draws = _checks.check_int("num_draws", num_draws)
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2 (to estimate a variance), got {num_draws}")
    if not isinstance(classes, Sequence) or len(classes) != 2 or isinstance(classes, str):
        raise TypeError(f"classes must be a pair (a, b) of class indices, got {classes!r}")
    first, second = (_checks.check_int("classes", c) for c in classes)
    if first == second:
        raise ValueError(f"classes must be two distinct class indices, got {(first, second)}")
    rng = _make_generator(generator, inputs.device)

    differences = []
    with torch.no_grad():
        for _ in range(num_draws):
            noise = torch.randn(
                inputs.shape, generator=rng, dtype=inputs.dtype, device=inputs.device
            )
            logits = model(inputs + noise_std * noise)
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
                raise ValueError(f"model must return (N, K) logits, got {shape}")
            if logits.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"model returned {logits.shape[0]} rows of logits for {inputs.shape[0]} inputs"
                )
            for c in (first, second):
                if not 0 <= c < logits.shape[1]:
                    raise ValueError(
                        f"classes must be class indices in [0, {logits.shape[1] - 1}] "
                        f"(the model returns {logits.shape[1]} logits), got {(first, second)}"
                    )
            differences.append((logits[:, first] - logits[:, second]).double().cpu())
    samples = torch.stack(differences, dim=1).numpy()  # (N, L)
    return _gaussian_information(samples)


def _log_mean_kernel(values: np.ndarray, means: np.ndarray, variance: float) -> np.ndarray:
    """``log (1/N) sum_j exp(-(v - mu_j)^2 / (2 variance))`` for every value v (stable);
    with variance 0 the kernel is 1 where v == mu_j and 0 elsewhere."""
    squared = (values[..., None] - means) ** 2
    if variance > 0:
        log_kernel = -squared / (2.0 * variance)
    else:
        log_kernel = np.where(squared == 0, 0.0, -np.inf)
    top = log_kernel.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        summed = np.log(np.exp(log_kernel - top).sum(axis=-1))
    return top[..., 0] + summed - math.log(means.shape[0])


def _gaussian_information(samples: np.ndarray) -> MutualInformationEstimate:
    """The sample-based estimator of :func:`mutual_information_under_noise` on the (N, L)
    logit differences ``samples[i, l] = y_il``: the paper's estimate with each draw l in turn,
    averaged over l."""
    if not np.isfinite(samples).all():
        raise ValueError("the model returned non-finite logits")
    num_draws = samples.shape[1]
    # no spread within any example: the exact values (a mean can be off by a rounding)
    constant = bool((samples == samples[:, :1]).all())
    means = samples[:, 0].copy() if constant else samples.mean(axis=1)
    estimates = []
    variances = []
    for draw in samples.T:  # (N,): one draw of every example
        variance = float(((draw - means) ** 2).mean())
        own = -((draw - means) ** 2) / (2.0 * variance) if variance > 0 else np.zeros_like(draw)
        estimates.append(float((own - _log_mean_kernel(draw, means, variance)).mean()))
        variances.append(variance)
    information = float(np.mean(estimates)) + 0.0  # 0.0, never -0.0
    pooled = float(np.mean(variances))
    bound = max(0.0, float(-_log_mean_kernel(means, means, pooled).mean()))
    return MutualInformationEstimate(information, means, pooled, num_draws, bound)

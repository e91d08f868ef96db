"""Property tests (hypothesis) for the math of the smoothed losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import labelsmooth as ls

IMPLS = ["torch", "reference"]


@st.composite
def problems(draw, max_classes=12):
    """Logits (N, K) and index targets from a seed, with a style and an eps in its valid range."""
    num_classes = draw(st.integers(2, max_classes))
    rows = draw(st.integers(1, 8))
    style = draw(st.sampled_from(["uniform", "others"]))
    upper = 1.0 if style == "uniform" else (num_classes - 1) / num_classes
    eps = draw(st.floats(0.0, upper, allow_nan=False))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(rows, num_classes, generator=generator, dtype=torch.float64) * scale
    target = torch.randint(0, num_classes, (rows,), generator=generator)
    return logits, target, style, eps


@given(problems(), st.sampled_from(IMPLS), st.booleans())
def test_zero_eps_is_plain_cross_entropy(problem, impl, weighted):
    logits, target, style, _ = problem
    weight = torch.rand(logits.shape[1], dtype=torch.float64) + 0.1 if weighted else None
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, 0.0, style=style, weight=weight, impl=impl),
        F.cross_entropy(logits, target, weight=weight),
    )


@given(problems(), st.sampled_from(IMPLS))
def test_smoothed_loss_is_at_least_the_target_entropy(problem, impl):
    logits, target, style, eps = problem
    smoothed = ls.smooth_labels(target, logits.shape[1], eps, style=style, dtype=torch.float64)
    entropy = -torch.xlogy(smoothed, smoothed).sum(-1)
    loss = ls.cross_entropy(logits, target, eps, style=style, reduction="none", impl=impl)
    assert (loss >= entropy - 1e-9).all()


@given(problems(), st.sampled_from(IMPLS))
def test_kl_is_nonnegative_and_zero_at_the_target(problem, impl):
    logits, target, style, eps = problem
    kl = ls.cross_entropy(logits, target, eps, style=style, reduction="none", kl=True, impl=impl)
    assert (kl >= -1e-9).all()
    smoothed = ls.smooth_labels(target, logits.shape[1], eps, style=style, dtype=torch.float64)
    # log of the target as logits (a zero-mass class, eps=0, gets a very negative logit)
    at_target = torch.log(smoothed.clamp_min(1e-300))
    kl0 = ls.cross_entropy(
        at_target, target, eps, style=style, reduction="none", kl=True, impl=impl
    )
    torch.testing.assert_close(kl0, torch.zeros_like(kl0), atol=1e-9, rtol=0)


@given(problems(), st.sampled_from(IMPLS), st.sampled_from(["mean", "sum"]))
def test_gradient_rows_sum_to_zero_and_equal_p_minus_t(problem, impl, reduction):
    logits, target, style, eps = problem
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(x, target, eps, style=style, reduction=reduction, impl=impl).backward()
    torch.testing.assert_close(
        x.grad.sum(-1), torch.zeros(len(target), dtype=torch.float64), atol=1e-12, rtol=0
    )
    smoothed = ls.smooth_labels(target, logits.shape[1], eps, style=style, dtype=torch.float64)
    scale = 1.0 / len(target) if reduction == "mean" else 1.0
    torch.testing.assert_close(x.grad, scale * (logits.softmax(-1) - smoothed))


@given(
    st.integers(2, 6),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["uniform", "others"]),
    st.integers(0, 2**31 - 1),
    st.sampled_from(IMPLS),
    st.booleans(),
)
def test_position_of_the_class_dimension_does_not_matter(
    num_classes, batch, d1, d2, style, seed, impl, soft
):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(batch * d1 * d2, num_classes, generator=generator, dtype=torch.float64)
    if soft:
        target_rows = torch.rand(rows.shape, generator=generator, dtype=torch.float64).softmax(-1)
    else:
        target_rows = torch.randint(0, num_classes, (len(rows),), generator=generator)
        target_rows[0] = -100
    eps = 0.2
    flat = ls.cross_entropy(rows, target_rows, eps, style=style, reduction="none", impl=impl)
    # The same rows laid out as (N, C, d1, d2): class dimension 1.
    dense = rows.view(batch, d1, d2, num_classes).movedim(-1, 1)
    if soft:
        dense_target = target_rows.view(batch, d1, d2, num_classes).movedim(-1, 1)
    else:
        dense_target = target_rows.view(batch, d1, d2)
    laid_out = ls.cross_entropy(dense, dense_target, eps, style=style, reduction="none", impl=impl)
    torch.testing.assert_close(laid_out.reshape(-1), flat)
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(
            ls.cross_entropy(dense, dense_target, eps, style=style, reduction=reduction),
            ls.cross_entropy(rows, target_rows, eps, style=style, reduction=reduction),
        )


@given(problems(), st.sampled_from(IMPLS))
def test_uniform_style_equals_pytorch(problem, impl):
    logits, target, _, eps = problem
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, eps, impl=impl),
        F.cross_entropy(logits, target, label_smoothing=eps),
    )


@given(st.floats(-1.0, 1.0), st.sampled_from(["uniform", "others"]), st.integers(0, 2**31 - 1))
def test_binary_smoothing_is_the_two_class_rule(eps, style, seed):
    if style == "others" and eps > 0.5:
        eps = 0.5
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(10, generator=generator, dtype=torch.float64)
    two_class = torch.stack([1 - target, target], dim=-1)
    expected = ls.smooth_labels(two_class, eps=eps, style=style)[..., 1]
    torch.testing.assert_close(ls.smooth_binary(target, eps, style=style), expected)


@pytest.mark.parametrize("style", ["uniform", "others"])
def test_minimiser_of_the_smoothed_loss_is_the_smoothed_target(style):
    """Softmax of the optimal logits equals the smoothed target."""
    target = torch.tensor([2])
    logits = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [logits],
        max_iter=200,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
    )

    def closure():
        optimiser.zero_grad()
        loss = ls.cross_entropy(logits, target, 0.2, style=style)
        loss.backward()
        return loss

    optimiser.step(closure)
    expected = ls.smooth_labels(target, 5, 0.2, style=style, dtype=torch.float64)
    torch.testing.assert_close(logits.softmax(-1).detach(), expected, atol=1e-7, rtol=0)

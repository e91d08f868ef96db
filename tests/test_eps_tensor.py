"""``eps`` as a tensor of per-element rates of the batch shape (issue 14, item 3a).

Each element is smoothed with its own rate: the loss equals a loop of scalar-eps calls, one per
element. The composite implementations compute it; the fused kernels hand it to the closed
form (so every ``impl`` gives the same values).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd import gradcheck

import labelsmooth as ls
from labelsmooth import functional
from labelsmooth.kernels.linear import linear_cross_entropy


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 4, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, 5, (3, 4), generator=generator)  # class 5: never a label
    target[0, 0] = -100
    rates = torch.rand(3, 4, generator=generator, dtype=torch.float64) * 0.6
    rates[1, 1] = 0.0
    weight = torch.rand(6, generator=generator, dtype=torch.float64) + 0.1
    return logits, target, rates, weight


def _element_by_element(logits, target, rates, reduction, **kwargs):
    """The loss from one scalar-eps call per element ("sum" of one element)."""
    values = torch.zeros(target.shape, dtype=torch.float64)
    w_y = torch.zeros(target.shape, dtype=torch.float64)
    weight = kwargs.get("weight")
    for i, j in itertools.product(range(target.shape[0]), range(target.shape[1])):
        if target[i, j] == -100:
            continue
        values[i, j] = ls.cross_entropy(
            logits[i : i + 1, :, j], target[i : i + 1, j], float(rates[i, j]),
            reduction="sum", impl="reference", **kwargs,
        )  # fmt: skip
        w_y[i, j] = 1.0 if weight is None else weight[target[i, j]]
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.sum() / w_y.sum()


OPTIONS = {
    "uniform": {},
    "others": {"style": "others"},
    "weighted": {"weight": "w"},
    "others-weighted-kl": {"style": "others", "weight": "w", "kl": True},
    "prior-kl": {"prior": "p", "kl": True},
    "excluded": {"style": "others", "exclude_classes": [5]},
    "sample": {"weight": "w", "weight_mode": "sample", "exclude_classes": [5]},
    "llm": {"z_loss": 0.1, "softcap": 3.0},
}


@pytest.mark.parametrize("impl", ["reference", "torch", "chunked", "compiled"])
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_equals_one_scalar_call_per_element(impl, options, reduction):
    if impl == "compiled" and not functional.kernels.compiled_available():
        pytest.skip("the C++ kernel is unavailable here")
    logits, target, rates, weight = _batch()
    kwargs = dict(OPTIONS[options])
    if kwargs.get("weight") == "w":
        kwargs["weight"] = weight
    if kwargs.get("prior") == "p":
        kwargs["prior"] = torch.softmax(weight, 0)
    expected = _element_by_element(logits, target, rates, reduction, **kwargs)
    got = ls.cross_entropy(logits, target, rates, reduction=reduction, impl=impl, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_a_constant_tensor_equals_the_number():
    logits, target, _, weight = _batch(1)
    for style in ("uniform", "others"):
        rates = torch.full(target.shape, 0.2, dtype=torch.float64)
        x = logits.clone().requires_grad_(True)
        got = ls.cross_entropy(x, target, rates, style=style, weight=weight, kl=True)
        got.backward()
        y = logits.clone().requires_grad_(True)
        expected = ls.cross_entropy(y, target, 0.2, style=style, weight=weight, kl=True)
        expected.backward()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(x.grad, y.grad)


def test_probability_targets():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    probs = torch.softmax(torch.randn(5, 4, generator=generator, dtype=torch.float64), -1)
    rates = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    got = ls.cross_entropy(logits, probs, rates, style="others", reduction="none")
    for i in range(5):
        expected = ls.cross_entropy(
            logits[i : i + 1], probs[i : i + 1], float(rates[i]), style="others", reduction="sum"
        )
        torch.testing.assert_close(got[i], expected)


def test_unbatched_and_auto():
    logits, target = torch.randn(2, 5), torch.tensor([1, 3])
    rates = torch.tensor([0.1, 0.3])
    assert functional.auto_choice(logits, target, rates) == "torch"
    got = ls.cross_entropy(logits, target, rates, reduction="none")
    for i in range(2):
        torch.testing.assert_close(
            got[i], ls.cross_entropy(logits[i], target[i], float(rates[i]), reduction="sum")
        )


def test_gradcheck_through_logits_and_rates():
    logits, target, rates, weight = _batch(3)
    x = logits.clone().requires_grad_(True)
    e = rates.clone().requires_grad_(True)
    assert gradcheck(
        lambda a, b: ls.cross_entropy(a, target, b, style="others", weight=weight), (x, e)
    )


SHAPE_MATCH = (
    r"eps must be a number or a tensor of per-element rates of the batch shape \(3, 4\).*"
    r"got shape \(3, 5\)"
)
ERRORS = [
    (torch.zeros(3, 5), ValueError, SHAPE_MATCH),
    (torch.zeros(3, 4, dtype=torch.int64), TypeError, r"eps must be a number or a floating tensor"),
    (torch.full((3, 4), 1.5), ValueError, r"eps must be <= 1 for style='uniform'.*rate of 1.5"),
    (torch.full((3, 4), float("nan")), ValueError, r"eps must be finite"),
]


@pytest.mark.parametrize(("rates", "error", "match"), ERRORS)
def test_errors(rates, error, match):
    logits, target, _, _ = _batch(4)
    with pytest.raises(error, match=match):
        ls.cross_entropy(logits, target, rates.to(torch.float64) if rates.is_floating_point()
                         else rates)  # fmt: skip


def test_range_errors_by_style_kl_and_exclusion():
    logits, target, _, _ = _batch(5)
    high = torch.full(target.shape, 0.84, dtype=torch.float64)  # (K-1)/K = 5/6 for K = 6
    with pytest.raises(ValueError, match=r"eps must be <= 0.833333 for style='others'"):
        ls.cross_entropy(logits, target, high, style="others")
    ls.cross_entropy(logits, target, high - 0.01, style="others")
    with pytest.raises(ValueError, match=r"eps must be <= 0.8 .*\(5 not excluded\)"):
        ls.cross_entropy(logits, target, high - 0.01, style="others", exclude_classes=[5])
    with pytest.raises(ValueError, match=r"eps must be >= 0 with kl=True"):
        ls.cross_entropy(logits, target, -high / 10, kl=True)
    ls.cross_entropy(logits, target, -high / 10)  # negative rates: generalised smoothing


def test_linear_head_takes_a_number_only():
    hidden, weight, target = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"eps must be a number, got a tensor of shape \(4,\)"):
        linear_cross_entropy(hidden, weight, target, torch.full((4,), 0.1))

"""Fuzzing the public functions' arguments: every call either raises a clear ValueError or
TypeError that names the argument, or returns a finite result equal to the reference.

The strategies draw valid and invalid values for each argument (nan, inf, huge, negative,
wrong types and shapes); the properties hold for every draw.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labelsmooth as ls

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMBERS = st.one_of(
    st.floats(min_value=-2.0, max_value=2.0),
    st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, -0.1, 1.5, math.nan, math.inf, -math.inf, 1e300]),
)
STYLES = st.sampled_from(["uniform", "others", "fairseq", "", 3])
REDUCTIONS = st.sampled_from(["mean", "sum", "none", "avg", None])


def _named(err: Exception, names: tuple[str, ...]) -> bool:
    text = str(err)
    return any(re.search(rf"\b{re.escape(name)}\b", text) for name in names)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6))


@st.composite
def classification_call(draw):
    n = draw(st.integers(0, 5))
    k = draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 10**6)))
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64) * draw(
        st.sampled_from([1.0, 30.0])
    )
    high = k + draw(st.integers(0, 1))  # sometimes an out-of-range class index
    target = torch.randint(-1, high, (n,), generator=generator)
    kwargs = {
        "eps": draw(NUMBERS),
        "style": draw(STYLES),
        "reduction": draw(REDUCTIONS),
        "ignore_index": draw(st.sampled_from([-100, -1, 0])),
    }
    weight_kind = draw(st.sampled_from(["none", "ok", "nan", "short", "int"]))
    if weight_kind == "ok":
        kwargs["weight"] = torch.rand(k, generator=generator, dtype=torch.float64) + 0.1
    elif weight_kind == "nan":
        kwargs["weight"] = torch.full((k,), math.nan, dtype=torch.float64)
    elif weight_kind == "short":
        kwargs["weight"] = torch.ones(k + 1, dtype=torch.float64)
    elif weight_kind == "int":
        kwargs["weight"] = "heavy"
    if draw(st.booleans()):
        kwargs["softcap"] = draw(st.sampled_from([None, 5.0, 0.0, -1.0, math.inf, 1e300]))
    if draw(st.booleans()):
        kwargs["z_loss"] = draw(st.sampled_from([0.0, 1e-4, -1.0, math.nan]))
    return logits, target, kwargs


ARGUMENTS = (
    "eps",
    "style",
    "reduction",
    "ignore_index",
    "weight",
    "softcap",
    "z_loss",
    "target",
    "input",
    "num_classes",
)


@SETTINGS
@given(classification_call(), st.sampled_from(["auto", "torch", "chunked", "compiled"]))
def test_cross_entropy_raises_clearly_or_matches_the_reference(call, impl):
    logits, target, kwargs = call
    try:
        loss = ls.cross_entropy(logits, target, impl=impl, **kwargs)
    except (ValueError, TypeError) as err:
        assert _named(err, ARGUMENTS), f"{type(err).__name__} names no argument: {err}"
        return
    reference = ls.cross_entropy(logits, target, impl="reference", **kwargs)
    assert torch.isfinite(loss).all(), (loss, kwargs)
    assert _close(loss, reference), (loss, reference, kwargs)


@st.composite
def binary_call(draw):
    shape = draw(st.sampled_from([(0,), (4,), (3, 2)]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 10**6)))
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 5
    target_kind = draw(st.sampled_from(["binary", "soft", "out", "int"]))
    if target_kind == "binary":
        target = torch.randint(0, 2, shape, generator=generator).double()
    elif target_kind == "soft":
        target = torch.rand(shape, generator=generator, dtype=torch.float64)
    elif target_kind == "out":
        target = torch.full(shape, 1.5, dtype=torch.float64)
    else:
        target = torch.randint(0, 2, shape, generator=generator)
    kwargs = {"eps": draw(NUMBERS), "style": draw(STYLES), "reduction": draw(REDUCTIONS)}
    weight_kind = draw(st.sampled_from(["none", "ok", "misshaped"]))
    last = shape[-1]
    if weight_kind == "ok":
        kwargs["weight"] = torch.rand(shape, generator=generator, dtype=torch.float64)
        kwargs["pos_weight"] = torch.rand(last, generator=generator, dtype=torch.float64) + 0.5
    elif weight_kind == "misshaped":
        kwargs[draw(st.sampled_from(["weight", "pos_weight"]))] = torch.ones(last + 2).double()
    return logits, target, kwargs


@SETTINGS
@given(binary_call())
def test_binary_loss_raises_clearly_or_matches_pytorch(call):
    logits, target, kwargs = call
    try:
        loss = ls.binary_cross_entropy_with_logits(logits, target, **kwargs)
    except (ValueError, TypeError) as err:
        assert _named(err, ("eps", "style", "reduction", "target", "weight", "pos_weight")), err
        return
    smoothed = ls.smooth_binary(target, kwargs["eps"], style=kwargs["style"]).double()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits,
        smoothed,
        weight=kwargs.get("weight"),
        pos_weight=kwargs.get("pos_weight"),
        reduction=kwargs["reduction"],
    )
    if target.numel() == 0 and kwargs["reduction"] == "mean":
        return  # PyTorch's mean over nothing is nan; both agree on that
    assert torch.isfinite(loss).all()
    assert _close(loss, expected)


@SETTINGS
@given(
    st.integers(0, 4),
    st.integers(1, 5),
    NUMBERS,
    STYLES,
    st.sampled_from([None, torch.float32, torch.float64, torch.int64, torch.bool, "float"]),
)
def test_smooth_labels_raises_clearly_or_is_a_distribution(n, k, eps, style, dtype):
    target = torch.arange(n) % k
    try:
        out = ls.smooth_labels(target, k, eps, style=style, dtype=dtype)
    except (ValueError, TypeError) as err:
        assert _named(err, ("eps", "style", "dtype", "num_classes")), err
        return
    assert out.is_floating_point() and out.shape == (n, k)
    assert torch.isfinite(out).all()
    if n:
        assert torch.allclose(out.double().sum(-1), torch.ones(n, dtype=torch.float64), atol=1e-6)


@SETTINGS
@given(
    st.integers(1, 30),
    st.integers(2, 4),
    st.sampled_from([1, 15, 0, -3, 10**9, 2.5, "15"]),
    st.sampled_from(["uniform", "quantile", "equal"]),
)
def test_calibration_error_raises_clearly_or_lies_in_the_unit_interval(n, k, n_bins, binning):
    generator = torch.Generator().manual_seed(n * 31 + k)
    probs = torch.softmax(torch.randn(n, k, generator=generator), -1)
    labels = torch.randint(0, k, (n,), generator=generator)
    try:
        ece = ls.metrics.expected_calibration_error(probs, labels, n_bins, binning)
    except (ValueError, TypeError) as err:
        assert _named(err, ("n_bins", "binning")), err
        return
    assert 0.0 <= ece <= 1.0


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_a_valid_call_is_not_rejected(impl):
    """The fuzzers could pass by rejecting everything: a plain call must go through."""
    logits = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 1])
    loss = ls.cross_entropy(logits, target, 0.1, impl=impl, softcap=5.0, z_loss=1e-4)
    assert torch.isfinite(loss)

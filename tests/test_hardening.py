"""Regression tests for the audit's smaller findings on the losses and targets: each bad
argument is refused with a message naming it, before any work."""

from __future__ import annotations

import math

import pytest
import torch

import labelsmooth as ls


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("impl", ["auto", "torch", "reference", "chunked"])
def test_non_finite_class_weight_is_refused(bad, impl):
    weight = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(ValueError, match=r"weight must be finite, got (nan|inf|-inf) at class 1"):
        ls.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weight=weight, impl=impl)


def test_non_finite_weight_of_the_module_is_refused():
    criterion = ls.nn.LabelSmoothingCrossEntropy(0.1, weight=torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="weight must be finite"):
        criterion(torch.randn(2, 2), torch.tensor([0, 1]))


@pytest.mark.parametrize("softcap", [1e300, 1e39, math.inf])
def test_a_softcap_beyond_float32_is_refused(softcap):
    with pytest.raises(ValueError, match=r"softcap must be None \(off\) or a number in \(0, "):
        ls.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), softcap=softcap)


def test_the_largest_float32_softcap_is_finite_and_changes_nothing():
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    capped = ls.cross_entropy(logits, target, softcap=float(torch.finfo(torch.float32).max))
    plain = ls.cross_entropy(logits, target)
    assert torch.isfinite(capped) and torch.allclose(capped, plain, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_result_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype"):
        ls.smooth_labels(torch.tensor([0, 1]), 3, 0.1, dtype=dtype)
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype"):
        ls.smooth_binary(torch.tensor([0, 1]), 0.1, dtype=dtype)


def test_a_dtype_that_is_not_a_dtype_is_refused():
    with pytest.raises(TypeError, match=r"dtype must be a torch.dtype, got dtype='float'"):
        ls.smooth_labels(torch.tensor([0, 1]), 3, 0.1, dtype="float")


def test_float_result_dtypes_are_kept():
    assert ls.smooth_labels(torch.tensor([0, 1]), 3, dtype=torch.float64).dtype == torch.float64
    assert ls.smooth_binary(torch.tensor([0, 1]), dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize(
    ("name", "shape"),
    [("weight", (5,)), ("weight", (4, 3, 1)), ("pos_weight", (2,)), ("pos_weight", (4, 4))],
)
def test_misshaped_binary_weights_are_refused_by_name(name, shape):
    logits, target = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
    with pytest.raises(ValueError, match=rf"{name} must be broadcastable to the input's shape"):
        ls.binary_cross_entropy_with_logits(logits, target, **{name: torch.ones(shape)})


def test_broadcastable_binary_weights_match_pytorch():
    logits, target = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
    weight, pos_weight = torch.rand(4, 1), torch.rand(3) + 0.5
    ours = ls.binary_cross_entropy_with_logits(
        logits, target, 0.0, weight=weight, pos_weight=pos_weight
    )
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=pos_weight
    )
    assert torch.allclose(ours, theirs)

"""``weight_mode="sample"``: the element's loss times w[y], the smoothed target unchanged
(issue 14, item 2).

Against a hand-typed weighted loss, every implementation against ``impl="reference"``,
gradcheck in float64 (through the logits and through learned class weights), zero weights, the
module and the errors. The Triton kernel is covered in ``test_triton.py`` (interpreter).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import labelsmooth as ls
from labelsmooth import functional, kernels

IMPLS = ["reference", "torch", "chunked", "compiled"]


@pytest.fixture(autouse=True)
def _compiled_kernel(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "compiled":
        if kernels.cpu_ce._compiler() is None:
            pytest.skip("no C++ compiler: impl='compiled' is unavailable here")
        if not kernels.compiled_available():
            pytest.fail(f"the C++ kernel does not build: {kernels.cpu_ce.build_error()}")


def _batch(seed=0, rows=19, classes=7):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, classes, (rows,), generator=generator)
    target[::5] = -100
    weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.2
    return logits, target, weight


def _by_hand(logits, target, weight, eps, style, reduction, exclude=None):
    """sum_i w[y_i] * sum_c -t_ic log p_ic (/ sum_i w[y_i] for "mean"), t = smooth_labels."""
    valid = target != -100
    y = target.masked_fill(~valid, 1)  # any kept class: those rows count 0
    rows = ls.smooth_labels(
        y, logits.shape[1], eps, style=style, exclude_classes=exclude, dtype=torch.float64
    )
    per_element = -(rows * F.log_softmax(logits, -1)).sum(-1)
    w_y = torch.where(valid, weight[y], 0.0)
    weighted = w_y * per_element
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / w_y.sum()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_equals_the_hand_typed_weighted_loss(impl, style, reduction):
    logits, target, weight = _batch()
    expected = _by_hand(logits, target, weight, 0.2, style, reduction)
    got = ls.cross_entropy(
        logits, target, 0.2, style=style, weight=weight, weight_mode="sample",
        reduction=reduction, impl=impl,
    )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # The gradient too.
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(
        x, target, 0.2, style=style, weight=weight, weight_mode="sample", reduction=reduction,
        impl=impl,
    ).sum().backward()  # fmt: skip
    ref = logits.clone().requires_grad_(True)
    _by_hand(ref, target, weight, 0.2, style, reduction).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-10, atol=1e-10)


def test_with_exclude_classes_and_the_target_unchanged():
    logits, target, weight = _batch(1)
    target = target.masked_fill(target == 0, -100)
    expected = _by_hand(logits, target, weight, 0.1, "others", "mean", exclude=[0])
    got = ls.cross_entropy(
        logits, target, 0.1, style="others", weight=weight, weight_mode="sample",
        exclude_classes=[0],
    )  # fmt: skip
    torch.testing.assert_close(got, expected)
    # It differs from PyTorch's rule (the smoothing term weighted per class).
    pytorch = ls.cross_entropy(
        logits, target, 0.1, style="others", weight=weight, exclude_classes=[0]
    )
    assert not torch.allclose(got, pytorch)


def test_nll_is_the_weighted_nll_and_eps_zero_agrees_with_pytorch_mode():
    logits, target, weight = _batch(2)
    _, nll = ls.cross_entropy(
        logits, target, 0.1, weight=weight, weight_mode="sample", return_nll=True
    )
    torch.testing.assert_close(nll, F.cross_entropy(logits, target, weight))
    # Without smoothing both modes are PyTorch's weighted cross-entropy.
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, 0.0, weight=weight, weight_mode="sample"),
        F.cross_entropy(logits, target, weight),
    )


def test_without_weight_it_is_the_unweighted_loss():
    logits, target, _ = _batch(3)
    assert functional.auto_choice(logits, target, 0.1, weight_mode="sample") == "native"
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, 0.1, weight_mode="sample"),
        F.cross_entropy(logits, target, label_smoothing=0.1),
    )
    weight = torch.ones(logits.shape[1], dtype=torch.float64)
    assert functional.auto_choice(logits, target, 0.1, weight=weight, weight_mode="sample") not in (
        "native",
    )


EXTRAS = {"plain": {}, "llm": {"z_loss": 0.05, "softcap": 3.0}}
GRID = list(
    itertools.product(
        ["torch", "chunked", "compiled"],
        ["uniform", "others", "prior"],
        [False, True],  # kl
        ["none", "mean", "sum"],
        list(EXTRAS),
    )
)


@pytest.mark.parametrize(("impl", "style", "kl", "reduction", "extras"), GRID)
def test_every_impl_equals_reference(impl, style, kl, reduction, extras):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 8, 5, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, 8, (3, 5), generator=generator)
    target[0, :2] = -100
    weight = torch.rand(8, generator=generator, dtype=torch.float64) + 0.1
    prior = None
    if style == "prior":
        prior = torch.softmax(torch.randn(8, generator=generator, dtype=torch.float64), 0)
        style = "uniform"
    upstream = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    kwargs = dict(
        eps=0.15, style=style, prior=prior, weight=weight, weight_mode="sample", kl=kl,
        reduction=reduction, **EXTRAS[extras],
    )  # fmt: skip

    def run(name, loss_scale):
        x = logits.clone().requires_grad_(True)
        loss, nll = ls.cross_entropy(x, target, return_nll=True, impl=name, **kwargs)
        scale = upstream if reduction == "none" else 1.0
        (loss_scale * loss * scale + 0.5 * nll * scale).sum().backward()
        return loss.detach(), nll.detach(), x.grad

    for loss_scale in (1.0, 0.3):  # the anticipated grad_output and another one
        torch.testing.assert_close(
            run(impl, loss_scale), run("reference", loss_scale), rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_zero_weights(impl, reduction):
    # Rows whose label has weight 0 contribute nothing (and their -inf logit no nan).
    logits, target, weight = _batch(4)
    weight[2] = 0.0
    target[1] = 2
    logits[1, 2] = -torch.inf  # loss +inf on that row before its weight 0
    kwargs = dict(eps=0.1, weight=weight, weight_mode="sample", reduction=reduction)
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, impl=impl, **kwargs)
    loss.backward()
    ref = logits.clone().requires_grad_(True)
    expected = ls.cross_entropy(ref, target, impl="reference", **kwargs)
    expected.backward()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, ref.grad)
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_bfloat16_against_float32_reference(impl):
    generator = torch.Generator().manual_seed(6)
    logits = (torch.randn(40, 64, generator=generator) * 3).bfloat16()
    target = torch.randint(0, 64, (40,), generator=generator)
    weight = torch.rand(64, generator=generator) + 0.5
    kwargs = dict(eps=0.1, style="others", weight=weight, weight_mode="sample")
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, impl=impl, **kwargs)
    loss.backward()
    ref = logits.float().requires_grad_(True)
    expected = ls.cross_entropy(ref, target, impl="reference", **kwargs)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.float(), ref.grad, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("impl", ["reference", "torch", "chunked"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(impl, reduction):
    logits, target, weight = _batch(5, rows=6, classes=5)
    x = logits.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    inputs = (x, w) if w.requires_grad else (x,)

    def fn(*args):
        return ls.cross_entropy(
            args[0], target, 0.2, style="others", weight=args[1] if len(args) > 1 else w,
            weight_mode="sample", reduction=reduction, impl=impl,
        )  # fmt: skip

    assert gradcheck(fn, inputs)


def test_module():
    logits, target, weight = _batch(7)
    module = ls.nn.LabelSmoothingCrossEntropy(0.1, weight=weight, weight_mode="sample")
    assert "weight_mode='sample'" in repr(module)
    torch.testing.assert_close(
        module(logits, target),
        ls.cross_entropy(logits, target, 0.1, weight=weight, weight_mode="sample"),
    )
    assert "weight_mode" not in repr(ls.nn.LabelSmoothingCrossEntropy(0.1))


def test_errors():
    logits, target, weight = _batch(8)
    with pytest.raises(ValueError, match=r"weight_mode must be one of 'pytorch', 'sample', got"):
        ls.cross_entropy(logits, target, weight=weight, weight_mode="class")
    with pytest.raises(ValueError, match=r"weight_mode must be one of"):
        ls.cross_entropy(logits, target, weight_mode=None)
    with pytest.raises(ValueError, match=r"weight_mode must be one of"):
        ls.nn.LabelSmoothingCrossEntropy(weight_mode="per-sample")
    probs = torch.softmax(logits, -1)
    with pytest.raises(ValueError, match=r"weight_mode='sample' .* needs class-index targets"):
        ls.cross_entropy(logits, probs, 0.0, weight=weight, weight_mode="sample")
    # Probability targets without weight: the unweighted loss, as in "pytorch" mode.
    torch.testing.assert_close(
        ls.cross_entropy(logits, probs, 0.0, weight_mode="sample"),
        ls.cross_entropy(logits, probs, 0.0),
    )

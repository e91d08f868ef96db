"""impl="auto": which path runs (pinned without timing), and the native path's exactness.

The common case (class indices, style="uniform", no prior/kl/z_loss/softcap/inplace, eps in
[0, 1], positive finite class weights or none) runs ``F.cross_entropy`` itself ("native");
the fused kernels only where they were measured to win (class dimension last, at least
``kernels.AUTO_MIN_CLASSES`` classes and ``kernels.AUTO_MIN_ELEMENTS`` logits). The native
path must equal ``impl="reference"`` on every option it takes, keep our errors and our
numerics (an all-ignored "mean" is 0 with a zero gradient).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import labelsmooth as ls
from labelsmooth import functional, kernels

# (input shape, index-target shape): unbatched, (N, C), (N, C, d) and (N, C, d1, d2).
SHAPES = [((5,), ()), ((6, 5), (6,)), ((3, 5, 4), (3, 4)), ((2, 4, 3, 2), (2, 3, 2))]


def _target(shape, num_classes, ignore_index, generator, ignored=0.3):
    target = torch.randint(0, num_classes, shape, generator=generator)
    if ignore_index is None or target.numel() <= 1:
        return target
    mask = torch.rand(shape, generator=generator) < ignored
    mask.view(-1)[0] = True
    mask.view(-1)[-1] = False
    return target.masked_fill(mask, ignore_index)


def _num_classes(input_shape):
    return input_shape[0] if len(input_shape) == 1 else input_shape[1]


# --------------------------------------------------------------------------------------------
# Which path runs
# --------------------------------------------------------------------------------------------


def test_segmentation_never_goes_to_a_kernel():
    """(N, C, H, W): the class dimension is not last; moving it costs more than a kernel saves."""
    for shape in [(64, 21, 16, 16), (8, 19, 64, 64), (2, 300, 32, 32)]:
        x = torch.randn(shape)
        y = torch.randint(0, shape[1], (shape[0], *shape[2:]))
        assert functional.auto_choice(x, y) == "native"
        assert functional.auto_choice(x.bfloat16(), y) == "native"
        # Outside the common case the closed form, not "compiled" (both would copy).
        assert functional.auto_choice(x, y, style="others") == "torch"
        assert functional.auto_choice(x, y, kl=True) == "torch"
        problem = functional._prepare(x, y, 0.1, "others", None, None, -100, "mean", False, True)
        assert not problem.class_last
        assert functional.auto_impl(problem) == "torch"
    # (2, 300, 32, 32) has enough classes and logits: as rows it would take a kernel.
    rows = torch.randn(2 * 32 * 32, 300)
    assert functional.auto_choice(rows, torch.zeros(len(rows), dtype=torch.long)) in (
        "compiled",
        "chunked",
    )


def test_small_inputs_and_few_classes_go_native():
    assert functional.auto_choice(torch.randn(32, 10), torch.randint(0, 10, (32,))) == "native"
    assert functional.auto_choice(torch.randn(7), torch.tensor(3)) == "native"
    # Few classes: the kernel never wins, however many rows.
    k = kernels.AUTO_MIN_CLASSES - 1
    n = kernels.AUTO_MIN_ELEMENTS // k + 1
    x, y = torch.randn(n, k), torch.randint(0, k, (n,))
    assert functional.auto_choice(x, y) == "native"
    assert functional.auto_choice(x, y, style="others") == "torch"


def test_half_precision_takes_a_kernel_from_fewer_classes_on_large_inputs():
    """bf16/fp16 run F.cross_entropy on a float32 copy: on large inputs the kernel wins earlier."""
    k = kernels.AUTO_MIN_CLASSES_HALF
    assert k < kernels.AUTO_MIN_CLASSES
    n = -(-kernels.AUTO_MIN_ELEMENTS_HALF // k)
    x, y = torch.randn(n, k, dtype=torch.bfloat16), torch.randint(0, k, (n,))
    expected = "compiled" if kernels.compiled_available() else "chunked"
    assert functional.auto_choice(x, y) == expected
    assert functional.auto_choice(x.half(), y) == expected
    assert functional.auto_choice(x.float(), y) == "native"  # float32: fewer classes than needed
    assert functional.auto_choice(x[:, : k - 1], y.clamp(max=k - 2)) == "native"
    assert functional.auto_choice(x[: n - 1], y[: n - 1]) == "native"


def test_large_rows_with_many_classes_go_to_a_kernel():
    k = max(kernels.AUTO_MIN_CLASSES, 1000)
    n = -(-kernels.AUTO_MIN_ELEMENTS // k)
    x, y = torch.randn(n, k), torch.randint(0, k, (n,))
    expected = "compiled" if kernels.compiled_available() else "chunked"
    assert functional.auto_choice(x, y) == expected
    assert functional.auto_choice(x[: n - 1], y[: n - 1]) == "native"  # just below
    assert functional.auto_choice(x.double(), y) == "native"  # float64: no kernel


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "native"),
        ({"return_nll": True, "reduction": "none", "ignore_index": 2}, "native"),
        ({"weight": torch.rand(5) + 0.1}, "native"),
        ({"weight": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])}, "torch"),  # 0 * -inf rule
        ({"weight": torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0])}, "torch"),
        ({"style": "others"}, "torch"),
        ({"prior": [0.2] * 5}, "torch"),
        ({"kl": True}, "torch"),
        ({"z_loss": 1e-4}, "torch"),
        ({"softcap": 30.0}, "torch"),
        ({"inplace": True}, "torch"),
        ({"eps": -0.1}, "torch"),  # F's label_smoothing is in [0, 1]
    ],
)
def test_what_the_native_path_takes(kwargs, expected):
    kwargs = dict(kwargs)
    eps = kwargs.pop("eps", 0.1)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 2])
    assert functional.auto_choice(x, y, eps, **kwargs) == expected


def test_probability_targets_do_not_take_the_native_path():
    x = torch.randn(6, 5)
    assert functional.auto_choice(x, x.softmax(1), 0.0) == "torch"


# --------------------------------------------------------------------------------------------
# The native path equals the reference on every option it takes
# --------------------------------------------------------------------------------------------

GRID = list(
    itertools.product(
        SHAPES,
        [False, True],  # class weights
        [None, -100, 1],  # ignore_index: unused, -100 present, a valid class (fairseq's pad)
        ["none", "mean", "sum"],
        [0.0, 0.1, 1.0],
        [False, True],  # return_nll
    )
)
GRID = [case for case in GRID if case[0][1] != () or case[2] is None]


@pytest.mark.parametrize(("shapes", "weighted", "ignore_index", "reduction", "eps", "nll"), GRID)
def test_native_path_equals_reference(shapes, weighted, ignore_index, reduction, eps, nll):
    input_shape, target_shape = shapes
    k = _num_classes(input_shape)
    generator = torch.Generator().manual_seed(hash((input_shape, weighted, ignore_index)) % 2**31)
    logits = torch.randn(input_shape, generator=generator, dtype=torch.float64) * 3
    target = _target(target_shape, k, ignore_index, generator)
    weight = torch.rand(k, generator=generator, dtype=torch.float64) + 0.2 if weighted else None
    upstream = torch.randn(target_shape, generator=generator, dtype=torch.float64)
    kwargs = dict(
        weight=weight,
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction=reduction,
        return_nll=nll,
    )
    assert functional.auto_choice(logits, target, eps, **kwargs) == "native"

    def run(impl):
        x = logits.clone().requires_grad_(True)
        out = ls.cross_entropy(x, target, eps, impl=impl, **kwargs)
        loss, nll_value = out if nll else (out, None)
        total = (loss * upstream).sum() if reduction == "none" else loss
        if nll_value is not None:
            total = total + 0.5 * (nll_value * upstream if reduction == "none" else nll_value).sum()
        total.backward()
        return [loss.detach(), x.grad] + ([] if nll_value is None else [nll_value.detach()])

    got, expected = run("auto"), run("reference")
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shapes", SHAPES[1:])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("nll", [False, True])
def test_native_path_all_ignored_mean_is_zero_with_zero_gradient(shapes, weighted, nll):
    input_shape, target_shape = shapes
    k = _num_classes(input_shape)
    logits = torch.randn(input_shape, requires_grad=True)
    target = torch.full(target_shape, -100)
    weight = torch.rand(k) + 0.1 if weighted else None
    assert functional.auto_choice(logits, target, weight=weight) == "native"
    out = ls.cross_entropy(logits, target, 0.1, weight=weight, return_nll=nll)
    values = out if nll else (out,)
    for value in values:
        assert value.item() == 0.0 and value.dtype == torch.float32
    sum(values).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_native_path_empty_batch():
    logits = torch.randn(0, 5, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    assert ls.cross_entropy(logits, target).item() == 0.0
    assert ls.cross_entropy(logits, target, reduction="sum").item() == 0.0
    assert ls.cross_entropy(logits, target, reduction="none").shape == (0,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(64, 300), (4, 30, 5, 3)])
def test_native_path_accumulates_half_precision_in_float32(dtype, shape):
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(shape, generator=generator) * 4).to(dtype)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    assert functional.auto_choice(logits, target) == "native"
    expected = ls.cross_entropy(logits.float(), target, 0.1, impl="reference")
    loss = ls.cross_entropy(logits, target, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    rows = ls.cross_entropy(logits, target, 0.1, reduction="none")
    assert rows.dtype == dtype and rows.shape == target.shape
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(x, target, 0.1).backward()
    y = logits.float().requires_grad_(True)
    ls.cross_entropy(y, target, 0.1, impl="reference").backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad, y.grad.to(dtype))


def test_native_path_integer_target_dtypes():
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 2])
    expected = ls.cross_entropy(logits, target, impl="reference")
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert functional.auto_choice(logits, target.to(dtype)) == "native"
        torch.testing.assert_close(ls.cross_entropy(logits, target.to(dtype)), expected)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_native_path_gradcheck(reduction, weighted):
    """No custom backward on the native path; gradcheck and double backward anyway."""
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (3, 2), generator=generator)
    target[0, 0] = -100
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.1 if weighted else None

    def fn(x):
        return ls.cross_entropy(
            x, target, 0.15, weight=weight, reduction=reduction, return_nll=True
        )

    assert functional.auto_choice(logits, target, 0.15, weight=weight) == "native"
    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,))


def test_native_path_minus_inf_logit():
    logits = torch.tensor([[0.5, -math.inf, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([2])
    loss = ls.cross_entropy(logits, target, 0.1)
    assert loss.item() == math.inf
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # A zero class weight on that class: the general path, whose 0 * inf is 0.
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert math.isfinite(ls.cross_entropy(logits, target, 0.1, weight=weight).item())


# --------------------------------------------------------------------------------------------
# Errors are the contract's, whichever path runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "target", "pattern"),
    [
        (torch.randn(4, 5), torch.tensor([0, 1, 5, 2]), r"class index 5.*\[0, 4\]"),
        (torch.randn(4, 5), torch.tensor([0, -1, 2, 2]), r"class index -1.*ignore_index=-100"),
        (torch.randn(4, 5), torch.tensor([0, -7, 2, -100]), r"class index -7"),
        (torch.randn(2, 5, 3), torch.tensor([[0, 1, 2], [3, 9, -100]]), r"class index 9"),
        (torch.randn(2, 5, 3, 2), torch.full((2, 3, 2), -2), r"class index -2"),
        (torch.randn(5), torch.tensor(5), r"class index 5"),
    ],
)
@pytest.mark.parametrize("kwargs", [{}, {"weight": torch.ones(5)}, {"return_nll": True}])
def test_native_path_index_errors_are_ours(logits, target, pattern, kwargs):
    assert functional.auto_choice(logits, target.clamp(0, 4), **kwargs) == "native"
    with pytest.raises(ValueError, match=pattern):
        ls.cross_entropy(logits, target, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        ls.cross_entropy(logits.bfloat16(), target, reduction="none", **kwargs)


def test_native_path_unvalidated_index_still_fails():
    with pytest.raises((IndexError, RuntimeError), match="(?i)bounds|index"):
        ls.cross_entropy(torch.randn(4, 5), torch.tensor([0, -1, 2, 2]), validate=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_refused_by_name(bad):
    weight = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(ValueError, match=r"weight must be finite, got (nan|inf|-inf) at class 1"):
        ls.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weight=weight)


# --------------------------------------------------------------------------------------------
# Under tracing the native path traces (no host read)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_native_path_under_compile_and_func(reduction):
    torch._dynamo.reset()
    logits = torch.randn(6, 5)
    target = torch.tensor([0, 1, -100, 3, 4, 2])

    def fn(x, y):
        return ls.cross_entropy(x, y, 0.1, reduction=reduction).sum()

    expected = fn(logits, target)
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(logits, target), expected)
    grad = torch.func.grad(fn)(logits, target)
    x = logits.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(fn(x, target), x)
    torch.testing.assert_close(grad, want)
    all_ignored = torch.full((6,), -100)
    torch.testing.assert_close(compiled(logits, all_ignored), torch.zeros(()))
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# The binary loss: smoothing as one lerp, the [0, 1] check in one pass
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, -0.2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_binary_equals_native_on_smooth_binary(style, eps, dtype):
    generator = torch.Generator().manual_seed(4)
    logits = (torch.randn(8, 3, generator=generator) * 2).to(dtype)
    target = torch.rand(8, 3, generator=generator, dtype=torch.float64)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    smoothed = ls.smooth_binary(target, eps, style=style).to(compute)
    for reduction in ("none", "mean", "sum"):
        x = logits.clone().requires_grad_(True)
        ours = ls.binary_cross_entropy_with_logits(x, target, eps, style=style, reduction=reduction)
        y = logits.to(compute).clone().requires_grad_(True)
        theirs = F.binary_cross_entropy_with_logits(y, smoothed, reduction=reduction)
        assert ours.dtype == (dtype if reduction == "none" else compute)
        torch.testing.assert_close(ours, theirs.to(ours.dtype))
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(x.grad, y.grad.to(dtype))


@pytest.mark.parametrize("bad", [math.nan, 1.5, -0.25])
def test_binary_target_outside_the_unit_interval_is_refused(bad):
    target = torch.tensor([[0.0, 1.0], [0.5, bad]])
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\], got a value of"):
        ls.binary_cross_entropy_with_logits(torch.randn(2, 2), target)


def test_binary_integer_and_bool_labels():
    logits = torch.randn(5, 2)
    labels = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    expected = F.binary_cross_entropy_with_logits(logits, ls.smooth_binary(labels.float(), 0.1))
    for target in (labels, labels.bool(), labels.to(torch.uint8)):
        torch.testing.assert_close(ls.binary_cross_entropy_with_logits(logits, target), expected)
    with pytest.raises(ValueError, match=r"got a value of 2"):
        ls.binary_cross_entropy_with_logits(logits, labels * 2)


def test_binary_does_not_modify_the_target():
    target = torch.tensor([0.0, 1.0, 0.25])
    ls.binary_cross_entropy_with_logits(torch.randn(3), target, 0.2)
    assert torch.equal(target, torch.tensor([0.0, 1.0, 0.25]))


def test_binary_in_inference_mode_then_with_autograd():
    logits, target = torch.randn(4, 3), torch.rand(4, 3)
    with torch.inference_mode():
        ls.binary_cross_entropy_with_logits(logits, target)
    x = logits.clone().requires_grad_(True)
    t = target.clone().requires_grad_(True)  # a learned target gets its gradient too
    ls.binary_cross_entropy_with_logits(x, t).backward()
    assert x.grad is not None and t.grad is not None

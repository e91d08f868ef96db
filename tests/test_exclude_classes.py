"""``exclude_classes``: classes that receive no smoothing mass (issue 14, item 1).

The OpenNMT-py legacy ``LabelSmoothingLoss`` and the Annotated Transformer's ``LabelSmoothing``
criterion are typed out below and matched (loss and gradient); every implementation equals
``impl="reference"`` on an option grid; the linear head and the modules take the argument; and
bad values raise errors that name it. The Triton kernels are covered in ``test_triton.py`` and
``test_linear.py`` (they run in a ``TRITON_INTERPRET=1`` subprocess there).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

import labelsmooth as ls
from labelsmooth import functional, kernels
from labelsmooth.kernels.linear import chunking, linear_cross_entropy

IMPLS = ["reference", "torch", "chunked", "compiled"]


@pytest.fixture(autouse=True)
def _compiled_kernel(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "compiled":
        if kernels.cpu_ce._compiler() is None:
            pytest.skip("no C++ compiler: impl='compiled' is unavailable here")
        if not kernels.compiled_available():
            pytest.fail(f"the C++ kernel does not build: {kernels.cpu_ce.build_error()}")


# --------------------------------------------------------------------------------------------
# The NMT toolkits' criteria, typed out (KL divergence with reduction="sum")
# --------------------------------------------------------------------------------------------


class OpenNMTLabelSmoothingLoss(nn.Module):
    """OpenNMT-py's legacy ``onmt.utils.loss.LabelSmoothingLoss`` (v2 and earlier)."""

    def __init__(self, label_smoothing, tgt_vocab_size, ignore_index=-100):
        assert 0.0 < label_smoothing <= 1.0
        self.ignore_index = ignore_index
        super().__init__()
        smoothing_value = label_smoothing / (tgt_vocab_size - 2)
        one_hot = torch.full((tgt_vocab_size,), smoothing_value, dtype=torch.float64)
        one_hot[self.ignore_index] = 0
        self.register_buffer("one_hot", one_hot.unsqueeze(0))
        self.confidence = 1.0 - label_smoothing

    def forward(self, output, target):
        """output: (batch, n_classes) log-probabilities; target: (batch,)."""
        model_prob = self.one_hot.repeat(target.size(0), 1)
        model_prob.scatter_(1, target.unsqueeze(1), self.confidence)
        model_prob.masked_fill_((target == self.ignore_index).unsqueeze(1), 0)
        return F.kl_div(output, model_prob, reduction="sum")


class AnnotatedTransformerLabelSmoothing(nn.Module):
    """The Annotated Transformer's ``LabelSmoothing`` (harvardnlp/annotated-transformer)."""

    def __init__(self, size, padding_idx, smoothing=0.0):
        super().__init__()
        self.criterion = nn.KLDivLoss(reduction="sum")
        self.padding_idx = padding_idx
        self.confidence = 1.0 - smoothing
        self.smoothing = smoothing
        self.size = size
        self.true_dist = None

    def forward(self, x, target):
        assert x.size(1) == self.size
        true_dist = x.data.clone()
        true_dist.fill_(self.smoothing / (self.size - 2))
        true_dist.scatter_(1, target.data.unsqueeze(1), self.confidence)
        true_dist[:, self.padding_idx] = 0
        mask = torch.nonzero(target.data == self.padding_idx)
        if mask.dim() > 0:
            true_dist.index_fill_(0, mask.squeeze(), 0.0)
        self.true_dist = true_dist
        return self.criterion(x, true_dist.clone().detach())


def _nmt_batch(seed, rows=23, classes=11, pad=1):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(0, classes, (rows,), generator=generator)
    target[::4] = pad  # padding positions
    return logits, target


def _loss_and_grad(fn, logits):
    x = logits.clone().requires_grad_(True)
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_opennmt_legacy_label_smoothing_loss(impl, seed):
    pad, eps = 1, 0.1
    logits, target = _nmt_batch(seed, pad=pad)
    criterion = OpenNMTLabelSmoothingLoss(eps, logits.shape[1], ignore_index=pad)
    expected = _loss_and_grad(lambda x: criterion(F.log_softmax(x, -1), target), logits)
    options = dict(style="others", exclude_classes=[pad], ignore_index=pad, reduction="sum")
    got = _loss_and_grad(
        lambda x: ls.cross_entropy(x, target, eps, kl=True, impl=impl, **options), logits
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # Cross-entropy (kl=False) differs by the entropy of the target rows only.
    rows = criterion.one_hot.repeat(target.size(0), 1)
    rows.scatter_(1, target.unsqueeze(1), criterion.confidence)
    rows.masked_fill_((target == pad).unsqueeze(1), 0)
    entropy = torch.xlogy(rows, rows).sum()
    got_ce = _loss_and_grad(
        lambda x: ls.cross_entropy(x, target, eps, impl=impl, **options), logits
    )
    torch.testing.assert_close(got_ce[0] + entropy, expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_ce[1], expected[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("seed", "pad"), [(0, 0), (1, 5), (2, 10)])
def test_matches_annotated_transformer_label_smoothing(impl, seed, pad):
    eps = 0.2
    logits, target = _nmt_batch(seed, rows=17, classes=11, pad=pad)
    criterion = AnnotatedTransformerLabelSmoothing(logits.shape[1], pad, eps)
    expected = _loss_and_grad(lambda x: criterion(F.log_softmax(x, -1), target), logits)
    module = ls.nn.LabelSmoothingCrossEntropy(
        eps, style="others", exclude_classes=[pad], ignore_index=pad, reduction="sum", kl=True,
        impl=impl,
    )  # fmt: skip
    got = _loss_and_grad(lambda x: module(x, target), logits)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_dense_target_is_the_toolkits_target():
    pad, eps, classes = 1, 0.1, 11
    _, target = _nmt_batch(0, classes=classes, pad=pad)
    criterion = OpenNMTLabelSmoothingLoss(eps, classes, ignore_index=pad)
    rows = criterion.one_hot.repeat(target.size(0), 1)
    rows.scatter_(1, target.unsqueeze(1), criterion.confidence)
    keep = target != pad
    ours = ls.smooth_labels(
        target[keep], classes, eps, style="others", exclude_classes=[pad], dtype=torch.float64
    )
    torch.testing.assert_close(ours, rows[keep], rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------
# smooth_labels: the formulas, the prior rule, an excluded label
# --------------------------------------------------------------------------------------------


def test_smooth_labels_uniform_and_others():
    target = torch.tensor([2, 4])
    uniform = ls.smooth_labels(target, 5, 0.2, exclude_classes=[0, 1], dtype=torch.float64)
    expected = torch.tensor(
        [[0, 0, 0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3], [0, 0, 0.2 / 3, 0.2 / 3, 0.8 + 0.2 / 3]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(uniform, expected)
    others = ls.smooth_labels(
        target, 5, 0.2, style="others", exclude_classes=torch.tensor([1, 0]), dtype=torch.float64
    )
    expected = torch.tensor([[0, 0, 0.8, 0.1, 0.1], [0, 0, 0.1, 0.1, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(others, expected)
    for rows in (uniform, others):
        torch.testing.assert_close(rows.sum(-1), torch.ones(2, dtype=torch.float64))


def test_smooth_labels_uniform_with_an_excluded_label():
    # "uniform": well defined, 1 - eps on the (excluded) label and eps/K' on the kept classes.
    rows = ls.smooth_labels(torch.tensor([0]), 4, 0.3, exclude_classes=[0], dtype=torch.float64)
    torch.testing.assert_close(rows, torch.tensor([[0.7, 0.1, 0.1, 0.1]], dtype=torch.float64))


def test_prior_is_renormalised_over_the_kept_classes():
    prior = torch.tensor([0.4, 0.1, 0.2, 0.3], dtype=torch.float64)
    rows = ls.smooth_labels(
        torch.tensor([1]), 4, 0.2, prior=prior, exclude_classes=[0], dtype=torch.float64
    )
    kept = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64) / 0.6
    torch.testing.assert_close(rows[0], 0.8 * F.one_hot(torch.tensor(1), 4).double() + 0.2 * kept)
    # A prior that is already 0 on the excluded classes is unchanged.
    zero = torch.tensor([0.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(
        ls.smooth_labels(torch.tensor([2]), 4, 0.1, prior=zero, exclude_classes=[0]),
        ls.smooth_labels(torch.tensor([2]), 4, 0.1, prior=zero),
    )


def test_soft_targets_use_the_affine_rule():
    probs = torch.softmax(torch.randn(3, 6, dtype=torch.float64), -1)
    for style in ("uniform", "others"):
        alpha, offset = ls.smoothing_coefficients(0.2, 6, style, exclude=[2], dtype=torch.float64)
        torch.testing.assert_close(
            ls.smooth_labels(probs, eps=0.2, style=style, exclude_classes=[2]),
            alpha * probs + offset,
        )
        assert abs(alpha + float(offset.sum()) - 1) < 1e-12


def test_empty_exclusion_is_none():
    target = torch.tensor([1, 3])
    torch.testing.assert_close(
        ls.smooth_labels(target, 5, 0.1, style="others", exclude_classes=[]),
        ls.smooth_labels(target, 5, 0.1, style="others"),
    )


# --------------------------------------------------------------------------------------------
# Every implementation equals the reference
# --------------------------------------------------------------------------------------------

EXTRAS = {"plain": {}, "llm": {"z_loss": 0.05, "softcap": 3.0}}
GRID = list(
    itertools.product(
        ["torch", "chunked", "compiled"],
        ["uniform", "others", "prior"],
        [False, True],  # class weights
        [False, True],  # kl
        ["none", "mean", "sum"],
        list(EXTRAS),
    )
)


def _grid_problem(style, seed=3, classes=9, pad=2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, classes, 5, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, classes, (4, 5), generator=generator)
    target[target == 6] = pad  # no label in the other excluded class
    prior = None
    if style == "prior":
        prior = torch.rand(classes, generator=generator, dtype=torch.float64)
        prior, style = prior / prior.sum(), "uniform"
    weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.1
    upstream = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    return logits, target, style, prior, weight, upstream


def _run(impl, logits, target, upstream, **kwargs):
    x = logits.clone().requires_grad_(True)
    loss, nll = ls.cross_entropy(x, target, return_nll=True, impl=impl, **kwargs)
    scale = upstream if kwargs.get("reduction") == "none" else 1.0
    ((loss + 0.5 * nll) * scale).sum().backward()
    return loss.detach(), nll.detach(), x.grad


@pytest.mark.parametrize(("impl", "style", "weighted", "kl", "reduction", "extras"), GRID)
def test_every_impl_equals_reference(impl, style, weighted, kl, reduction, extras):
    logits, target, style, prior, weight, upstream = _grid_problem(style)
    kwargs = dict(
        eps=0.2, style=style, prior=prior, weight=weight if weighted else None, kl=kl,
        reduction=reduction, exclude_classes=[2, 6], ignore_index=2, **EXTRAS[extras],
    )  # fmt: skip
    expected = _run("reference", logits, target, upstream, **kwargs)
    got = _run(impl, logits, target, upstream, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["torch", "chunked", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("style", ["uniform", "others"])
def test_low_precision_equals_float32_reference(impl, dtype, style):
    generator = torch.Generator().manual_seed(8)
    logits = (torch.randn(32, 50, generator=generator) * 3).to(dtype)
    target = torch.randint(1, 50, (32,), generator=generator)
    target[::5] = 0
    kwargs = dict(eps=0.1, style=style, exclude_classes=[0, 49], ignore_index=0)
    target[target == 49] = 0
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, impl=impl, **kwargs)
    loss.backward()
    ref_x = logits.float().requires_grad_(True)
    expected = ls.cross_entropy(ref_x, target, impl="reference", **kwargs)
    expected.backward()
    assert loss.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), ref_x.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_minus_inf_logit_on_an_excluded_class(impl):
    # The excluded class has no target mass: its -inf logit adds nothing (no 0 * inf = nan).
    logits = torch.randn(6, 5, dtype=torch.float64)
    logits[:, 0] = -torch.inf
    target = torch.tensor([1, 2, 3, 4, 0, 2])
    for style in ("uniform", "others"):
        x = logits.clone().requires_grad_(True)
        loss = ls.cross_entropy(
            x, target, 0.1, style=style, exclude_classes=[0], ignore_index=0, impl=impl
        )
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("impl", ["torch", "chunked"])
def test_soft_targets_equal_reference(impl):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(7, 6, generator=generator, dtype=torch.float64)
    probs = torch.softmax(torch.randn(7, 6, generator=generator, dtype=torch.float64), -1)
    probs[:, 1] = 0
    probs = probs / probs.sum(-1, keepdim=True)
    upstream = torch.ones(7, dtype=torch.float64)
    for style in ("uniform", "others"):
        kwargs = dict(eps=0.1, style=style, exclude_classes=[1])
        got = _run(impl, logits, probs, upstream, **kwargs)
        expected = _run("reference", logits, probs, upstream, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["torch", "chunked"])
def test_gradcheck(impl):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 2, 0, 4, 5])
    for style in ("uniform", "others"):
        assert gradcheck(
            lambda x, style=style: ls.cross_entropy(
                x, target, 0.2, style=style, exclude_classes=[0, 3], ignore_index=0, impl=impl
            ),
            (logits,),
        )


def test_uniform_with_excluded_labels_equals_the_dense_definition():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    rows = ls.smooth_labels(target, 5, 0.3, exclude_classes=[0, 1], dtype=torch.float64)
    expected = -(rows * F.log_softmax(logits, -1)).sum(-1)
    for impl in ("reference", "torch", "chunked"):
        got = ls.cross_entropy(
            logits, target, 0.3, exclude_classes=[0, 1], reduction="none", impl=impl
        )
        torch.testing.assert_close(got, expected)


def test_auto_does_not_take_the_native_path():
    logits, target = torch.randn(4, 6), torch.tensor([1, 2, 3, 4])
    assert functional.auto_choice(logits, target, 0.1) == "native"
    assert functional.auto_choice(logits, target, 0.1, exclude_classes=[0]) == "torch"
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, 0.1, exclude_classes=[0]),
        ls.cross_entropy(logits, target, 0.1, exclude_classes=[0], impl="reference"),
    )
    # An empty list excludes nothing: the same value as without it.
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, 0.1, exclude_classes=[]),
        F.cross_entropy(logits, target, label_smoothing=0.1),
    )


def test_unchecked_excluded_label_with_others_gets_the_affine_row():
    logits = torch.randn(3, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    got = ls.cross_entropy(
        logits, target, 0.2, style="others", exclude_classes=[0], validate=False,
        reduction="none", impl="torch",
    )  # fmt: skip
    alpha, offset = ls.smoothing_coefficients(0.2, 5, "others", exclude=[0], dtype=torch.float64)
    rows = alpha * F.one_hot(target, 5).double() + offset
    torch.testing.assert_close(got, -(rows * F.log_softmax(logits, -1)).sum(-1))


# --------------------------------------------------------------------------------------------
# The linear head and the modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["uniform", "others", "prior"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunks", [False, True])
def test_linear_head_equals_cross_entropy(style, reduction, chunks):
    generator = torch.Generator().manual_seed(6)
    hidden = torch.randn(13, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 11, (13,), generator=generator)
    target[::3] = 0
    target[target == 7] = 0
    options = dict(style=style, reduction=reduction, exclude_classes=[0, 7], ignore_index=0)
    if style == "prior":
        options["style"] = "uniform"
        options["prior"] = torch.softmax(torch.randn(11, generator=generator), 0).double()
    upstream = torch.randn(13, generator=generator, dtype=torch.float64)
    scale = upstream if reduction == "none" else 1.0
    with chunking(rows=4) if chunks else contextlib.nullcontext():
        loss = linear_cross_entropy(hidden, weight, target, 0.2, bias=bias, **options)
        got = torch.autograd.grad((loss * scale).sum(), (hidden, weight, bias))
    logits = F.linear(hidden, weight, bias)
    expected = ls.cross_entropy(logits, target, 0.2, impl="reference", **options)
    wanted = torch.autograd.grad((expected * scale).sum(), (hidden, weight, bias))
    torch.testing.assert_close(loss, expected)
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b)
    reference = linear_cross_entropy(
        hidden, weight, target, 0.2, bias=bias, impl="reference", **options
    )
    torch.testing.assert_close(reference, expected)


def test_modules():
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([1, 2, 0, 3, 4, 0])
    module = ls.nn.LabelSmoothingCrossEntropy(
        0.1, style="others", exclude_classes=torch.tensor([0]), ignore_index=0
    )
    assert module.exclude_classes == (0,)
    assert "exclude_classes=[0]" in repr(module)
    torch.testing.assert_close(
        module(logits, target),
        ls.cross_entropy(logits, target, 0.1, style="others", exclude_classes=[0], ignore_index=0),
    )
    hidden, weight = torch.randn(6, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    linear_module = ls.nn.LinearLabelSmoothingCrossEntropy(0.1, exclude_classes=[0, 4])
    assert "exclude_classes=[0, 4]" in repr(linear_module)
    torch.testing.assert_close(
        linear_module(hidden, weight, target),
        ls.cross_entropy(hidden @ weight.T, target, 0.1, exclude_classes=[0, 4]),
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

BAD = [
    ("x", TypeError, r"exclude_classes must be None, a sequence of ints"),
    (0, TypeError, r"exclude_classes must be None, a sequence of ints"),
    ([1.0], TypeError, r"exclude_classes must hold ints \(class indices\), got 1.0"),
    ([True], TypeError, r"exclude_classes must hold ints"),
    (torch.tensor([1.0]), TypeError, r"exclude_classes must hold integer class indices.*float"),
    (torch.tensor([[1]]), ValueError, r"exclude_classes must be a 1-D tensor.*\(1, 1\)"),
    ([5], ValueError, r"exclude_classes must hold class indices in \[0, 4\].*got 5"),
    ([-1], ValueError, r"exclude_classes must hold class indices in \[0, 4\].*got -1"),
    ([1, 1], ValueError, r"exclude_classes must not repeat a class, got 1 twice"),
    ([0, 1, 2, 3, 4], ValueError, r"exclude_classes must leave at least one class"),
]


@pytest.mark.parametrize(("value", "error", "match"), BAD)
def test_errors_name_the_argument(value, error, match):
    logits, target = torch.randn(3, 5), torch.tensor([1, 2, 3])
    with pytest.raises(error, match=match):
        ls.cross_entropy(logits, target, 0.1, exclude_classes=value)
    with pytest.raises(error, match=match):
        ls.smooth_labels(target, 5, 0.1, exclude_classes=value)
    with pytest.raises(error, match=match):
        linear_cross_entropy(torch.randn(3, 2), torch.randn(5, 2), target, exclude_classes=value)


def test_others_errors():
    logits, target = torch.randn(3, 5), torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match=r"needs at least two classes left by exclude_classes"):
        ls.cross_entropy(logits, target, 0.1, style="others", exclude_classes=[0, 1, 2, 4])
    # eps <= (K'-1)/K' with K' = 3 kept classes.
    with pytest.raises(ValueError, match=r"eps must be <= 0.666667 for style='others' with 3"):
        ls.cross_entropy(logits, target, 0.7, style="others", exclude_classes=[0, 4])
    ls.cross_entropy(logits, target, 2 / 3, style="others", exclude_classes=[0, 4])
    with pytest.raises(ValueError, match=r"target contains class 3, which is in exclude_classes"):
        ls.cross_entropy(logits, target, 0.1, style="others", exclude_classes=[3])
    with pytest.raises(ValueError, match=r"target contains class 3, which is in exclude_classes"):
        ls.smooth_labels(target, 5, 0.1, style="others", exclude_classes=[3])
    with pytest.raises(ValueError, match=r"target contains class 3, which is in exclude_classes"):
        linear_cross_entropy(
            torch.randn(3, 2), torch.randn(5, 2), target, style="others", exclude_classes=[3]
        )
    # Ignored, an excluded class is fine; "uniform" takes it; eps = 0 has nothing to spread.
    ls.cross_entropy(logits, target, 0.1, style="others", exclude_classes=[3], ignore_index=3)
    ls.cross_entropy(logits, target, 0.1, exclude_classes=[3])
    ls.cross_entropy(logits, target, 0.0, style="others", exclude_classes=[3])


def test_prior_errors():
    logits, target = torch.randn(3, 4), torch.tensor([1, 2, 3])
    prior = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"prior must put some mass on the classes not in"):
        ls.cross_entropy(logits, target, 0.1, prior=prior, exclude_classes=[0])
    with pytest.raises(ValueError, match=r"prior= replaces the uniform eps/K"):
        ls.cross_entropy(logits, target, 0.1, style="others", prior=prior, exclude_classes=[0])


def test_module_errors_at_construction():
    with pytest.raises(ValueError, match=r"exclude_classes must not repeat a class"):
        ls.nn.LabelSmoothingCrossEntropy(exclude_classes=[1, 1])
    with pytest.raises(ValueError, match=r"exclude_classes must hold class indices >= 0"):
        ls.nn.LinearLabelSmoothingCrossEntropy(exclude_classes=[-1])
    with pytest.raises(ValueError, match=r"exclude_classes must hold class indices in \[0, 2\]"):
        ls.nn.LabelSmoothingCrossEntropy(weight=[1.0, 1.0, 1.0], exclude_classes=[3])
    module = ls.nn.LabelSmoothingCrossEntropy(exclude_classes=[7])
    with pytest.raises(ValueError, match=r"exclude_classes must hold class indices in \[0, 4\]"):
        module(torch.randn(2, 5), torch.tensor([0, 1]))


def test_torch_func_grad_traces_it():
    # While traced nothing is read on the host: exclude_classes is a Python setting.
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.tensor([1, 2, 3, 4, 1, 2])
    prior = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64)

    def loss(x):
        return ls.cross_entropy(x, target, 0.1, prior=prior, exclude_classes=[0, 4])

    eager = logits.clone().requires_grad_(True)
    loss(eager).backward()
    torch.testing.assert_close(torch.func.grad(loss)(logits), eager.grad)


# --- Regressions from the adversarial review ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array(1), r"exclude_classes must be a 1-D array .* got shape \(\)"),
        (np.array([[1]]), r"exclude_classes must be a 1-D array .* got shape \(1, 1\)"),
        (torch.tensor([1], device="meta"), "exclude_classes must be readable on the host"),
    ],
)
def test_exclude_classes_unreadable_or_not_1d_raises(value, match):
    logits, target = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=match):
        ls.cross_entropy(logits, target, exclude_classes=value)
    with pytest.raises(ValueError, match=match):
        ls.smooth_labels(target, 4, exclude_classes=value)


@pytest.mark.parametrize("exclude", [None, [3]])
def test_cross_entropy_target_on_another_device_raises(exclude):
    # The meta device stands in for a GPU: it used to fail inside the index check (.item()).
    logits = torch.randn(2, 4)
    with pytest.raises(ValueError, match="target must be on the device of input"):
        ls.cross_entropy(logits, torch.tensor([0, 1], device="meta"), exclude_classes=exclude)
    with pytest.raises(ValueError, match="target must be on the device of input"):
        ls.cross_entropy(logits.to("meta"), torch.tensor([0, 1]), exclude_classes=exclude)

"""The fused kernels (impl="chunked", impl="compiled") against impl="reference".

Loss, nll and gradients on the whole option grid, the LLM extras (z_loss, softcap), reduced
precision, gradcheck of the custom backward, the in-place contract, and the memory contract
checked structurally (what is saved for backward, what is allocated).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import labelsmooth as ls
from labelsmooth import functional, kernels
from labelsmooth.kernels import fused

FUSED = ["chunked", "compiled"]


def _require_compiled():
    """Skip without a C++ compiler; fail when there is one and the kernel does not build."""
    if kernels.cpu_ce._compiler() is None:
        pytest.skip("no C++ compiler: impl='compiled' is unavailable here")
    if not kernels.compiled_available():
        pytest.fail(f"the C++ kernel does not build: {kernels.cpu_ce.build_error()}")


@pytest.fixture(autouse=True)
def _compiled_kernel(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "compiled":
        _require_compiled()


def _index_target(shape, num_classes, generator, ignore_index=-100):
    target = torch.randint(0, num_classes, shape, generator=generator)
    mask = torch.rand(shape, generator=generator) < 0.3
    mask.view(-1)[0] = True
    mask.view(-1)[-1] = False
    return target.masked_fill(mask, ignore_index)


def _run(impl, logits, target, upstream, nll_weight=0.5, loss_scale=1.0, **kwargs):
    """(loss, nll, grad) of loss_scale * loss (+ nll_weight * nll; nll is left out of the graph
    when nll_weight is 0), with the per-element ``upstream`` for reduction='none'."""
    x = logits.clone().requires_grad_(True)
    loss, nll = ls.cross_entropy(x, target, return_nll=True, impl=impl, **kwargs)
    per_element = 1.0 if kwargs.get("reduction", "mean") != "none" else upstream
    total = (loss * per_element).sum()
    if loss_scale != 1.0:
        total = loss_scale * total
    if nll_weight:
        total = total + nll_weight * (nll * per_element).sum()
    total.backward()
    return loss.detach(), nll.detach(), x.grad


def _assert_same(got, expected, **tolerance):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **tolerance)


# --------------------------------------------------------------------------------------------
# Every fused path equals the reference on the option grid (float64: to rounding)
# --------------------------------------------------------------------------------------------

EXTRAS = {
    "plain": {},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "both": {"z_loss": 0.3, "softcap": 4.0},
}
GRID = list(
    itertools.product(
        FUSED,
        ["uniform", "others", "prior"],
        [False, True],  # class weights
        [False, True],  # kl
        ["none", "mean", "sum"],
        list(EXTRAS),
    )
)


@pytest.mark.parametrize(("impl", "style", "weighted", "kl", "reduction", "extras"), GRID)
def test_fused_equals_reference(impl, style, weighted, kl, reduction, extras):
    generator = torch.Generator().manual_seed(3)
    num_classes = 7
    logits = torch.randn(3, num_classes, 5, generator=generator, dtype=torch.float64) * 2
    target = _index_target((3, 5), num_classes, generator)
    prior = None
    if style == "prior":
        prior = torch.rand(num_classes, generator=generator, dtype=torch.float64)
        prior, style = prior / prior.sum(), "uniform"
    weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.1
    upstream = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    kwargs = dict(
        eps=0.15,
        style=style,
        prior=prior,
        weight=weight if weighted else None,
        kl=kl,
        reduction=reduction,
        **EXTRAS[extras],
    )
    expected = _run("reference", logits, target, upstream, **kwargs)
    # Through nll too (backward recomputes), and through the loss alone (in-place scaling).
    _assert_same(_run(impl, logits, target, upstream, **kwargs), expected, rtol=1e-10, atol=1e-10)
    for loss_scale in (1.0, 0.5):  # the anticipated grad_output (no pass) and another one
        got = _run(impl, logits, target, upstream, 0.0, loss_scale, **kwargs)
        expected = _run("reference", logits, target, upstream, 0.0, loss_scale, **kwargs)
        _assert_same(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("eps", [0.0, 1.0, -0.2])
@pytest.mark.parametrize("style", ["uniform", "others"])
def test_fused_edge_eps(impl, eps, style):
    if style == "others" and eps == 1.0:
        eps = 6 / 7
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(9, 7, generator=generator, dtype=torch.float64)
    target = _index_target((9,), 7, generator, ignore_index=2)  # a valid class (fairseq's pad)
    weight = torch.rand(7, generator=generator, dtype=torch.float64)
    upstream = torch.randn(9, generator=generator, dtype=torch.float64)
    for reduction in ("none", "mean"):
        kwargs = dict(eps=eps, style=style, weight=weight, ignore_index=2, reduction=reduction)
        _assert_same(
            _run(impl, logits, target, upstream, **kwargs),
            _run("reference", logits, target, upstream, **kwargs),
            rtol=1e-10,
            atol=1e-10,
        )


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero_with_zero_gradient(impl, weighted):
    logits = torch.randn(4, 6, requires_grad=True)
    target = torch.full((4,), -100)
    weight = torch.rand(6) if weighted else None
    loss, nll = ls.cross_entropy(logits, target, 0.1, weight=weight, impl=impl, return_nll=True)
    assert loss.item() == 0.0 and nll.item() == 0.0
    (loss + nll).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("impl", FUSED)
def test_empty_batch(impl):
    logits = torch.randn(0, 5, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    loss = ls.cross_entropy(logits, target, impl=impl)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.shape == (0, 5)
    assert ls.cross_entropy(logits, target, reduction="none", impl=impl).shape == (0,)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("extras", ["plain", "both"])
def test_probability_targets(impl, kl, extras):
    # Probability targets run the chunked code in every fused implementation (test_triton.py
    # checks that impl="triton" takes it too).
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64)
    target = torch.randn(4, 6, 3, generator=generator, dtype=torch.float64).softmax(1)
    weight = torch.rand(6, generator=generator, dtype=torch.float64)
    upstream = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    for reduction, style in (("none", "uniform"), ("mean", "others"), ("sum", "uniform")):
        kwargs = dict(
            eps=0.2, style=style, weight=weight, kl=kl, reduction=reduction, **EXTRAS[extras]
        )
        _assert_same(
            _run(impl, logits, target, upstream, **kwargs),
            _run("reference", logits, target, upstream, **kwargs),
            rtol=1e-10,
            atol=1e-10,
        )


@pytest.mark.parametrize("impl", FUSED)
def test_several_chunks_and_threads(impl, monkeypatch):
    # Tiny chunks for the chunked path; enough rows for the C++ kernel to use its threads.
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 64)
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(300, 130, generator=generator) * 3
    target = _index_target((300,), 130, generator)
    weight = torch.rand(130, generator=generator)
    upstream = torch.randn(300, generator=generator)
    for reduction in ("none", "mean"):
        kwargs = dict(eps=0.1, weight=weight, reduction=reduction, z_loss=1e-3, kl=True)
        _assert_same(
            _run(impl, logits, target, upstream, **kwargs),
            _run("reference", logits, target, upstream, **kwargs),
            rtol=1e-5,
            atol=1e-6,
        )


# --------------------------------------------------------------------------------------------
# Reduced precision: float32 math, gradient in the logits' dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("extras", ["plain", "both"])
def test_reduced_precision_against_float32_reference(impl, dtype, extras):
    generator = torch.Generator().manual_seed(8)
    logits = (torch.randn(64, 300, generator=generator) * 4).to(dtype)
    target = _index_target((64,), 300, generator)
    weight = torch.rand(300, generator=generator) + 0.5
    upstream = torch.randn(64, generator=generator)
    kwargs = dict(eps=0.1, style="others", weight=weight, **EXTRAS[extras])
    ref = _run("reference", logits.float(), target, upstream, **kwargs)
    loss, nll, grad = _run(impl, logits, target, upstream, **kwargs)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, ref[1], rtol=1e-5, atol=1e-5)
    # One rounding of the unscaled gradient to `dtype` and one of the scaled one.
    ulp = {torch.float32: 1e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    scale = ref[2].abs().max().item()
    torch.testing.assert_close(grad.float(), ref[2], rtol=ulp, atol=ulp * scale)
    per_element = ls.cross_entropy(logits, target, reduction="none", impl=impl, **kwargs)
    assert per_element.dtype == dtype


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("style", ["uniform", "others"])
def test_large_logits_give_no_nan(impl, dtype, style):
    logits = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, 1e4, 1e4]], dtype=dtype)
    target = torch.tensor([1, 2])
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, 0.1, style=style, impl=impl, kl=True, z_loss=1e-4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    expected = ls.cross_entropy(
        logits.double(), target, 0.1, style=style, kl=True, z_loss=1e-4, impl="reference"
    )
    torch.testing.assert_close(loss.double(), expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_minus_inf_logits(impl, dtype):
    logits = torch.tensor([[0.5, -math.inf, 1.0, 0.0]], dtype=dtype)
    target = torch.tensor([2])
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, 0.1, impl=impl)
    assert loss.item() == math.inf
    loss.backward()
    expected_target = ls.smooth_labels(target, 4, 0.1, dtype=dtype)
    torch.testing.assert_close(x.grad, logits.softmax(-1) - expected_target)
    # A class of zero target mass contributes nothing, even at -inf.
    prior = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=dtype)
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, 0.1, prior=prior, impl=impl)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss, ls.cross_entropy(logits, target, 0.1, prior=prior))
    plain = ls.cross_entropy(logits, target, 0.0, impl=impl)
    torch.testing.assert_close(plain, F.cross_entropy(logits, target))


@pytest.mark.parametrize("impl", FUSED)
def test_uniform_equals_pytorch(impl):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(5, 11, 4, generator=generator, dtype=torch.float64)
    target = _index_target((5, 4), 11, generator)
    weight = torch.rand(11, generator=generator, dtype=torch.float64)
    x, y = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = ls.cross_entropy(x, target, 0.3, weight=weight, impl=impl)
    native = F.cross_entropy(y, target, weight=weight, label_smoothing=0.3)
    ours.backward()
    native.backward()
    torch.testing.assert_close(ours, native, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# The custom backward: gradcheck (float64), retain_graph, first order only
# --------------------------------------------------------------------------------------------

GRADCHECK = list(
    itertools.product(
        FUSED,
        [
            {},
            {"style": "others", "kl": True, "reduction": "none"},
            {"prior": "prior", "reduction": "sum", "z_loss": 0.05},
            {"weighted": True, "softcap": 1.5, "kl": True},
            {"soft": True, "kl": True, "softcap": 2.0, "z_loss": 0.1},
        ],
    )
)


@pytest.mark.parametrize(("impl", "options"), GRADCHECK)
def test_gradcheck(impl, options):
    options = dict(options)
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    if options.pop("soft", False):
        target = torch.rand(3, 5, 2, generator=generator, dtype=torch.float64).softmax(1)
    else:
        target = torch.randint(0, 5, (3, 2), generator=generator)
        target[0, 0] = -100
    if options.pop("prior", None):
        options["prior"] = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64)
    if options.pop("weighted", False):
        options["weight"] = torch.rand(5, generator=generator, dtype=torch.float64)

    def both(x):
        return ls.cross_entropy(x, target, 0.15, impl=impl, return_nll=True, **options)

    def loss_only(x):
        return ls.cross_entropy(x, target, 0.15, impl=impl, **options)

    assert gradcheck(both, (logits,))
    assert gradcheck(loss_only, (logits,))


@pytest.mark.parametrize("impl", FUSED)
def test_retain_graph_gives_the_same_gradient_twice(impl):
    logits = torch.randn(6, 9, requires_grad=True)
    target = torch.randint(0, 9, (6,))
    loss = ls.cross_entropy(logits, target, impl=impl)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    x = logits.detach().clone().requires_grad_(True)
    ls.cross_entropy(x, target, impl="reference").backward()
    torch.testing.assert_close(first, x.grad)


@pytest.mark.parametrize("impl", FUSED)
def test_double_backward_is_refused(impl):
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = ls.cross_entropy(logits, torch.tensor([0, 1, 2, 3]), impl=impl)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(loss, logits, create_graph=True)


# --------------------------------------------------------------------------------------------
# inplace=True: the gradient is written into the logits' memory
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_overwrites_the_logits_with_the_gradient(impl, dtype):
    generator = torch.Generator().manual_seed(12)
    original = (torch.randn(16, 10, generator=generator) * 2).to(dtype)
    target = _index_target((16,), 10, generator)
    expected = _run("reference", original, target, None, nll_weight=0.0, eps=0.1)
    hidden = original.clone().requires_grad_(True)
    logits = hidden * 1.0  # a non-leaf whose producer saved nothing of its output
    storage = logits.data_ptr()
    loss, nll = ls.cross_entropy(logits, target, 0.1, impl=impl, inplace=True, return_nll=True)
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(nll, expected[1])
    assert not torch.equal(logits.detach(), original)  # overwritten: caller must not reuse
    loss.backward()
    torch.testing.assert_close(hidden.grad.float(), expected[2].float(), rtol=2e-2, atol=1e-3)
    assert logits.data_ptr() == storage


@pytest.mark.parametrize("impl", FUSED)
def test_inplace_is_refused_by_autograd_when_someone_saved_the_logits(impl):
    hidden = torch.randn(5, 7, requires_grad=True)
    logits = torch.tanh(hidden)  # tanh saves its output for backward
    loss = ls.cross_entropy(logits, torch.randint(0, 7, (5,)), impl=impl, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("impl", FUSED)
def test_inplace_leaves_non_contiguous_rows_and_no_grad_alone(impl):
    generator = torch.Generator().manual_seed(13)
    original = torch.randn(3, 6, 4, generator=generator)  # (N, C, d): rows are a copy
    target = torch.randint(0, 6, (3, 4), generator=generator)
    x = original.clone().requires_grad_(True)
    ls.cross_entropy(x, target, impl=impl, inplace=True).backward()
    assert torch.equal(x.detach(), original)
    y = original.clone().requires_grad_(True)
    ls.cross_entropy(y, target, impl="reference").backward()
    torch.testing.assert_close(x.grad, y.grad)
    flat = original[:, :, 0].clone()
    with torch.no_grad():
        ls.cross_entropy(flat, target[:, 0], impl=impl, inplace=True)
    assert torch.equal(flat, original[:, :, 0])


@pytest.mark.parametrize("impl", FUSED)
def test_inplace_nll_gradient_is_refused(impl):
    logits = torch.randn(5, 7, requires_grad=True)
    x = logits * 1.0
    loss, nll = ls.cross_entropy(
        x, torch.randint(0, 7, (5,)), impl=impl, inplace=True, return_nll=True
    )
    with pytest.raises(RuntimeError, match=r"nll\.detach\(\)"):
        (loss + nll).backward()


# --------------------------------------------------------------------------------------------
# Memory, structurally: what is saved for backward and what is allocated
# --------------------------------------------------------------------------------------------


def _saved_tensors(fn):
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return saved, out


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
def test_only_the_gradient_is_saved(impl, dtype, inplace):
    rows, classes = 64, 50
    logits = torch.randn(rows, classes, dtype=dtype).requires_grad_(True)
    x = logits * 1.0
    target = torch.randint(0, classes, (rows,))
    saved, loss = _saved_tensors(
        lambda: ls.cross_entropy(x, target, 0.1, impl=impl, inplace=inplace, weight=torch.rand(50))
    )
    big = [t for t in saved if t.numel() >= rows * classes]
    assert len(big) == 1, [tuple(t.shape) for t in saved]
    assert big[0].dtype == dtype
    assert (big[0].data_ptr() == x.data_ptr()) == inplace
    assert all(t.numel() <= rows for t in saved if t is not big[0])
    loss.backward()
    # With return_nll=True the logits themselves are saved too (a reference, not a copy).
    saved, _ = _saved_tensors(lambda: ls.cross_entropy(x, target, impl=impl, return_nll=True))
    big = [t for t in saved if t.numel() >= rows * classes]
    assert len(big) == 2 and sum(t.data_ptr() == x.data_ptr() for t in big) == 1


class _Allocations(TorchDispatchMode):
    """Records the size of every tensor an aten op returns in new memory."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append((str(func), t.numel()))
        return out


@pytest.mark.parametrize("impl", ["chunked", "compiled", "torch"])
@pytest.mark.parametrize("inplace", [False, True])
def test_only_the_gradient_is_allocated(impl, inplace, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 1000)
    rows, classes = 64, 100
    logits = torch.randn(rows, classes).requires_grad_(True)
    target = torch.randint(0, classes, (rows,))
    with _Allocations() as mode:
        loss = ls.cross_entropy(logits, target, 0.1, impl=impl, inplace=inplace, z_loss=1e-3)
        loss.backward()
    big = [size for size in mode.sizes if size[1] > 1000 + rows]
    if impl == "torch":  # the autograd composite: log_softmax saved, and more in backward
        assert len(big) >= 3
    else:  # the gradient buffer, allocated once (not at all in place); chunks are small
        assert len(big) == (0 if inplace else 1), big


# --------------------------------------------------------------------------------------------
# impl="auto", argument checks, errors
# --------------------------------------------------------------------------------------------


def test_auto_choice():
    _require_compiled()

    def problem(logits, target):
        return functional._prepare(
            logits, target, 0.1, "uniform", None, None, -100, "mean", False, True
        )

    small = torch.randn(8, 10)
    big = torch.randn(64, kernels.AUTO_MIN_ELEMENTS // 64 + 1)
    index = torch.zeros(len(big), dtype=torch.long)
    assert functional.auto_impl(problem(small, torch.zeros(8, dtype=torch.long))) == "torch"
    assert functional.auto_impl(problem(big, index)) == "compiled"
    assert functional.auto_impl(problem(big.bfloat16(), index)) == "compiled"
    assert functional.auto_impl(problem(big.double(), index)) == "torch"
    assert functional.auto_impl(problem(big, big.softmax(1))) == "torch"
    # The class dimension not last, or too few classes: no kernel, however large.
    dense = torch.randn(8, 19, 64, 64)
    assert dense.numel() >= kernels.AUTO_MIN_ELEMENTS
    assert functional.auto_impl(problem(dense, torch.zeros(8, 64, 64, dtype=torch.long))) == "torch"
    few = torch.randn(kernels.AUTO_MIN_ELEMENTS // 10 + 1, 10)
    assert functional.auto_impl(problem(few, torch.zeros(len(few), dtype=torch.long))) == "torch"


def test_auto_on_a_large_problem_equals_reference():
    generator = torch.Generator().manual_seed(14)
    rows = kernels.AUTO_MIN_ELEMENTS // 1100 + 1  # "auto" takes a kernel at this size
    logits = torch.randn(rows, 1100, generator=generator) * 3
    target = _index_target((rows,), 1100, generator)
    upstream = torch.ones(rows)
    kwargs = dict(eps=0.1, style="others", z_loss=1e-3, softcap=10.0)
    _assert_same(
        _run("auto", logits, target, upstream, **kwargs),
        _run("reference", logits, target, upstream, **kwargs),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"z_loss": -1e-4}, ValueError, r"z_loss must be finite and >= 0.*got z_loss=-0.0001"),
        ({"z_loss": float("inf")}, ValueError, r"z_loss must be finite"),
        ({"z_loss": "1e-4"}, TypeError, r"z_loss must be a real number"),
        ({"softcap": 0.0}, ValueError, r"softcap must be None \(off\) or a number in \(0, "),
        ({"softcap": -30.0}, ValueError, r"got softcap=-30.0"),
        ({"softcap": float("nan")}, ValueError, r"softcap must be None"),
        ({"softcap": "30"}, TypeError, r"softcap must be None or a real number"),
        ({"inplace": 1}, TypeError, r"inplace must be a bool"),
        ({"impl": "fused"}, ValueError, r"impl must be one of .*'chunked', 'compiled', 'trit"),
    ],
)
def test_argument_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ls.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), **kwargs)


def test_device_errors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"impl='triton' needs CUDA tensors"):
        ls.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), impl="triton")
    meta = torch.empty(4, 5, device="meta")
    target = torch.zeros(4, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match=r"impl='compiled' is the CPU kernel.*meta"):
        ls.cross_entropy(meta, target, impl="compiled", validate=False)


def test_z_loss_and_softcap_formulas():
    generator = torch.Generator().manual_seed(15)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 5
    target = torch.tensor([0, 1, -100, 3, 4, 2])
    weight = torch.rand(5, generator=generator, dtype=torch.float64)
    capped = 3.0 * torch.tanh(logits / 3.0)
    valid = target != -100
    lse = torch.logsumexp(capped, -1)
    per_row = F.cross_entropy(
        capped, target, weight=weight, label_smoothing=0.1, reduction="none"
    ) + torch.where(valid, 0.02 * lse**2, 0.0)
    denominator = weight[target[valid]].sum()
    has_compiler = kernels.cpu_ce._compiler() is not None
    for impl in ("reference", "torch", "chunked", *(["compiled"] if has_compiler else [])):
        kwargs = dict(weight=weight, z_loss=0.02, softcap=3.0, impl=impl)
        none = ls.cross_entropy(logits, target, 0.1, reduction="none", **kwargs)
        torch.testing.assert_close(none, per_row)
        mean = ls.cross_entropy(logits, target, 0.1, **kwargs)
        torch.testing.assert_close(mean, per_row.sum() / denominator)
        _, nll = ls.cross_entropy(logits, target, 0.1, return_nll=True, **kwargs)
        torch.testing.assert_close(nll, F.cross_entropy(capped, target, weight=weight))


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_compiled_store_modes(resident, dtype, monkeypatch):
    _require_compiled()
    # Ordinary stores for fresh pages, streaming stores for resident ones: the same numbers.
    monkeypatch.setattr(kernels.cpu_ce, "_resident", lambda tensor: resident)
    generator = torch.Generator().manual_seed(16)
    logits = (torch.randn(40, 37, generator=generator) * 3).to(dtype)
    target = _index_target((40,), 37, generator)
    upstream = torch.randn(40, generator=generator)
    kwargs = dict(eps=0.1, reduction="none", weight=torch.rand(37, generator=generator))
    got = _run("compiled", logits, target, upstream.to(logits.dtype), **kwargs)
    expected = _run("chunked", logits, target, upstream.to(logits.dtype), **kwargs)
    _assert_same(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FUSED)
def test_gradients_of_weight_and_soft_targets_are_not_dropped(impl):
    generator = torch.Generator().manual_seed(17)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    index = torch.randint(0, 5, (6,), generator=generator)
    soft = torch.randn(6, 5, generator=generator, dtype=torch.float64).softmax(1)
    weight = torch.rand(5, generator=generator, dtype=torch.float64)
    for target, weighted in ((index, True), (soft, False)):
        grads = {}
        for name in ("reference", impl):
            w = weight.clone().requires_grad_(True)
            t = target.clone().requires_grad_(True) if target.is_floating_point() else target
            x = logits.clone().requires_grad_(True)
            ls.cross_entropy(x, t, 0.1, weight=w if weighted else None, impl=name).backward()
            grads[name] = (x.grad, w.grad if weighted else t.grad)
        _assert_same(grads[impl], grads["reference"], rtol=1e-10, atol=1e-10)

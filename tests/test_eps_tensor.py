"""``eps`` as a tensor of per-element rates of the batch shape (issue 14, item 3).

Each element is smoothed with its own rate: the loss equals a loop of scalar-eps calls, one per
element. Every ``impl`` computes it itself: the composite ones in torch, the fused kernels
(``"chunked"``, ``"compiled"``, ``"triton"``) from the rates as per-row runtime data, for the
loss and the gradient they write in forward; the kernel tests below forbid the closed form, so
that a silent fallback fails them. A rate tensor that requires a gradient sends the fused
implementations to the closed form (they differentiate with respect to the logits only).

The Triton tests (``test_triton_kernel_*``) run on CUDA, or in a fresh ``pytest`` subprocess
under ``TRITON_INTERPRET=1`` (:func:`test_triton_under_the_interpreter`, the pattern of
``tests/test_triton.py``), with ``MAX_BLOCK`` lowered to 16 so that rows span several blocks.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch.autograd import gradcheck

import labelsmooth as ls
from labelsmooth import _problem, functional
from labelsmooth.kernels import fused
from labelsmooth.kernels.linear import linear_cross_entropy

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_CUDA = torch.cuda.is_available()
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TRITON_HERE = _HAS_TRITON and (_CUDA or _INTERPRET)
TRITON_DEVICE = "cuda" if _CUDA else "cpu"


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


# ---------------------------------------------------------------------------------------------
# The fused kernels compute the rates themselves.

# A covering design: every style (uniform, others, prior, exclude_classes), both weight modes,
# every reduction, kl, z_loss and softcap, each at least once, with the interesting pairs.
KERNEL_CASES = {
    "uniform-mean": dict(reduction="mean"),
    "others-none-kl": dict(style="others", reduction="none", kl=True),
    "prior-sum-kl": dict(prior=True, reduction="sum", kl=True),
    "excluded-others-weighted-kl": dict(
        style="others", exclude_classes=[0, 7], weighted=True, kl=True, reduction="mean"
    ),
    "excluded-uniform-zloss": dict(
        exclude_classes=[3], weighted=True, reduction="none", z_loss=0.1
    ),
    "weighted-softcap-zloss": dict(weighted=True, reduction="sum", softcap=3.0, z_loss=0.05),
    "sample-others": dict(style="others", weighted=True, weight_mode="sample", reduction="mean"),
    "sample-prior-kl-softcap": dict(
        prior=True, weighted=True, weight_mode="sample", kl=True, reduction="none", softcap=2.0
    ),
    "others-weighted-everything": dict(
        style="others", weighted=True, kl=True, reduction="mean", z_loss=0.1, softcap=4.0
    ),
}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


@pytest.fixture
def no_closed_form(monkeypatch):
    """The fused implementations must run their kernel, not hand the call to the closed form."""

    def refuse(problem, need_nll):
        raise AssertionError("the fused path fell back to the closed form")

    monkeypatch.setattr(fused, "closed_form", refuse)


def _kernel_case(name, dtype, device="cpu", reduction=None, shape=(6, 20), seed=0):
    """(logits, target, rates, upstream, kwargs) of one case; rates with a zero, negative ones
    where allowed (not with kl), labels in excluded classes ignored."""
    case = dict(KERNEL_CASES[name])
    if reduction is not None:
        case["reduction"] = reduction
    generator = torch.Generator().manual_seed(seed)
    num_classes = shape[1]
    logits = torch.randn(shape, generator=generator) * 3
    batch = shape[:1] + shape[2:]
    target = torch.randint(0, num_classes, batch, generator=generator)
    target.view(-1)[0] = -100
    low = 0.0 if case.get("kl") else -0.2
    rates = torch.rand(batch, generator=generator) * (0.6 - low) + low
    rates.view(-1)[1] = 0.0
    upstream = torch.randn(batch, generator=generator)
    if case.pop("prior", False):
        prior = torch.rand(num_classes, generator=generator)
        prior[4] = 0.0  # a class of zero mass
        case["prior"] = (prior / prior.sum()).to(device)
    if case.pop("weighted", False):
        case["weight"] = (torch.rand(num_classes, generator=generator) + 0.1).to(device)
    if "exclude_classes" in case:
        target = target.masked_fill(torch.isin(target, torch.tensor(case["exclude_classes"])), -100)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return (
        logits.to(dtype).to(device),
        target.to(device),
        rates.to(compute).to(device),
        upstream.to(device),
        case,
    )


def _run(impl, logits, target, rates, upstream, nll_weight, **kwargs):
    """loss, nll and the logits' gradient of loss (+ nll_weight * nll) with ``upstream``."""
    x = logits.clone().requires_grad_(True)
    loss, nll = ls.cross_entropy(x, target, rates, return_nll=True, impl=impl, **kwargs)
    if kwargs.get("reduction", "mean") == "none":
        total = (loss.double() * upstream).sum()
        if nll_weight:
            total = total + nll_weight * (nll.double() * upstream).sum()
    else:
        total = loss + nll_weight * nll if nll_weight else loss
    total.backward()
    return loss.detach().double(), nll.detach().double(), x.grad.double()


def _assert_kernel_equals_reference(impl, dtype, name, nll_weight, device="cpu", reduction=None):
    logits, target, rates, upstream, kwargs = _kernel_case(name, dtype, device, reduction)
    got = _run(impl, logits, target, rates, upstream, nll_weight, **kwargs)
    expected = _run("reference", logits, target, rates, upstream, nll_weight, **kwargs)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got[0], expected[0], rtol=tol, atol=tol)
    torch.testing.assert_close(got[1], expected[1], rtol=tol, atol=tol)
    scale = expected[2].abs().max().item()
    torch.testing.assert_close(got[2], expected[2], rtol=tol, atol=tol * scale)


@pytest.mark.usefixtures("no_closed_form")
@pytest.mark.parametrize("impl", ["chunked", "compiled"])
@pytest.mark.parametrize("name", list(KERNEL_CASES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("nll_weight", [0.0, 0.5])
def test_cpu_kernels_equal_the_reference(impl, name, reduction, dtype, nll_weight):
    """Loss, nll and gradient; nll_weight > 0 takes backward's recomputation (``W = g r``)."""
    if impl == "compiled" and not functional.kernels.compiled_available():
        pytest.skip("the C++ kernel is unavailable here")
    _assert_kernel_equals_reference(impl, dtype, name, nll_weight, reduction=reduction)


@pytest.mark.usefixtures("no_closed_form")
@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_cpu_kernels_class_dimension_one_and_equal_to_scalar_calls(impl):
    if impl == "compiled" and not functional.kernels.compiled_available():
        pytest.skip("the C++ kernel is unavailable here")
    logits, target, rates, weight = _batch(6)  # (3, 6, 4): the class dimension is not last
    for kwargs in ({"style": "others", "weight": weight, "kl": True}, {"prior": weight.softmax(0)}):
        expected = _element_by_element(logits, target, rates, "mean", **kwargs)
        got = ls.cross_entropy(logits, target, rates, impl=impl, **kwargs)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.usefixtures("no_closed_form")
@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_cpu_kernels_zero_rate_on_a_minus_inf_logit(impl):
    """A row with rate 0 puts no mass on a -inf class: finite loss; rate > 0: +inf, as the
    reference; the gradient stays finite."""
    if impl == "compiled" and not functional.kernels.compiled_available():
        pytest.skip("the C++ kernel is unavailable here")
    _check_minus_inf(impl, "cpu")


def _check_minus_inf(impl, device):
    logits = torch.tensor([[0.5, -float("inf"), 1.0, 0.0], [0.5, -float("inf"), 1.0, 0.0]])
    logits = logits.to(device)
    target, rates = torch.tensor([2, 0], device=device), torch.tensor([0.0, 0.2], device=device)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0], device=device)
    for kwargs in ({}, {"style": "others"}, {"weight": weight}):
        x = logits.clone().requires_grad_(True)
        loss = ls.cross_entropy(x, target, rates, impl=impl, reduction="none", **kwargs)
        loss.sum().backward()
        assert torch.isfinite(loss[0]) and loss[1].item() == float("inf")
        assert torch.isfinite(x.grad).all()
        y = logits.clone().requires_grad_(True)
        expected = ls.cross_entropy(y, target, rates, impl="reference", reduction="none", **kwargs)
        expected.sum().backward()
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.usefixtures("no_closed_form")
@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_cpu_kernels_probability_targets(impl):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    probs = torch.softmax(torch.randn(5, 6, generator=generator, dtype=torch.float64), -1)
    rates = torch.tensor([0.0, 0.1, 0.2, 0.3, -0.1], dtype=torch.float64)
    for kwargs in ({"style": "others"}, {"prior": probs[0], "weight": probs[1] + 0.5}):
        x = logits.clone().requires_grad_(True)
        got = ls.cross_entropy(x, probs, rates, impl=impl, **kwargs)
        got.backward()
        y = logits.clone().requires_grad_(True)
        expected = ls.cross_entropy(y, probs, rates, impl="reference", **kwargs)
        expected.backward()
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("no_closed_form")
@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_cpu_kernels_inplace(impl):
    if impl == "compiled" and not functional.kernels.compiled_available():
        pytest.skip("the C++ kernel is unavailable here")
    logits, target, rates, _, kwargs = _kernel_case("others-weighted-everything", torch.float32)
    hidden = logits.clone().requires_grad_(True)
    ls.cross_entropy(hidden * 1.0, target, rates, impl=impl, inplace=True, **kwargs).backward()
    expected = _run("reference", logits, target, rates, None, 0.0, **kwargs)
    torch.testing.assert_close(hidden.grad.double(), expected[2], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_rates_that_require_a_gradient_take_the_closed_form(impl):
    """The kernels differentiate with respect to the logits only: a rate tensor that requires
    a gradient sends the call to the closed form through autograd, so no gradient is lost."""
    if impl == "compiled" and not functional.kernels.compiled_available():
        pytest.skip("the C++ kernel is unavailable here")
    logits, target, rates, weight = _batch(8)
    x = logits.clone().requires_grad_(True)
    e = rates.clone().requires_grad_(True)
    assert gradcheck(
        lambda a, b: ls.cross_entropy(a, target, b, style="others", weight=weight, impl=impl),
        (x, e),
    )
    e = (rates + 0.05).requires_grad_(True)  # kl: d xlogy(r, r) / dr is -inf at r = 0
    got = torch.autograd.grad(ls.cross_entropy(x, target, e, kl=True, impl=impl), (x, e))
    expected = torch.autograd.grad(
        ls.cross_entropy(x, target, e, kl=True, impl="reference"), (x, e)
    )
    torch.testing.assert_close(got, expected)


def test_auto_chooses_as_for_a_number():
    logits = torch.randn(4096, 256)
    target = torch.randint(0, 256, (4096,))
    rates = torch.rand(4096) * 0.2
    expected = "compiled" if functional.kernels.compiled_available() else "chunked"
    assert functional.auto_choice(logits, target, rates) == expected
    assert functional.auto_choice(logits, target, rates, style="others") == expected
    assert functional.auto_choice(logits, target, 0.1, style="others") == expected


# ---------------------------------------------------------------------------------------------
# Triton: on CUDA, or under the interpreter in a subprocess.


@pytest.mark.skipif(not _HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(TRITON_HERE, reason="the Triton tests run in this process")
def test_triton_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
        "-k", "triton_kernel", "-W", "ignore:invalid value encountered:RuntimeWarning",
    ]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        command, env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


@pytest.fixture
def triton_ce(monkeypatch):
    if not TRITON_HERE:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (see test_triton_under_the_interpreter)")
    from labelsmooth.kernels import triton_ce

    monkeypatch.setattr(triton_ce, "MAX_BLOCK", 16)
    return triton_ce


@pytest.mark.usefixtures("no_closed_form", "triton_ce")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("name", list(KERNEL_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_triton_kernel_equals_the_reference(name, dtype, monkeypatch):
    """float64 takes the chunked path of impl="triton" (still no closed form); the others the
    Triton kernel itself."""
    if dtype != torch.float64:

        def refuse(*args):
            raise AssertionError("impl='triton' took the chunked path")

        monkeypatch.setattr(fused.CHUNKED, "run", refuse)
    _assert_kernel_equals_reference("triton", dtype, name, 0.5, device=TRITON_DEVICE)


@pytest.mark.usefixtures("no_closed_form", "triton_ce")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_triton_kernel_every_reduction_without_nll(reduction):
    for name in ("others-weighted-everything", "sample-prior-kl-softcap"):
        _assert_kernel_equals_reference(
            "triton", torch.float32, name, 0.0, device=TRITON_DEVICE, reduction=reduction
        )


@pytest.mark.usefixtures("no_closed_form", "triton_ce")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_triton_kernel_zero_rate_on_a_minus_inf_logit():
    _check_minus_inf("triton", TRITON_DEVICE)


def test_triton_kernel_takes_the_rates_as_a_pointer(triton_ce):
    """The rates are a pointer argument: their values never reach a constexpr, only whether
    there are any (``HAS_RATES``). Also under the interpreter, which has no compile cache."""
    kernel = triton_ce._ce_rows_kernel
    parameters = inspect.signature(getattr(kernel, "fn", kernel)).parameters
    assert parameters["rate_ptr"].annotation is inspect.Parameter.empty
    assert "constexpr" in str(parameters["HAS_RATES"].annotation)
    scalars = [n for n, p in parameters.items() if p.annotation is inspect.Parameter.empty]
    assert scalars[-3:] == ["b", "z_loss", "softcap"]  # the scalar path's runtime floats


def _record_launches(triton_ce, monkeypatch):
    """Replaces the kernel by a recorder of its launch arguments (nothing runs)."""
    calls = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((args, kwargs))

    monkeypatch.setattr(triton_ce, "_ce_rows_kernel", Recorder())
    return calls


def _launch(triton_ce, eps, **kwargs):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(6, 20, generator=generator)
    target = torch.randint(0, 20, (6,), generator=generator)
    options = {"style": "uniform", "prior": None, "weight": None, "kl": False, **kwargs}
    problem = _problem.prepare(
        logits, target, eps, options["style"], options["prior"], options["weight"], -100,
        "mean", options["kl"], True,
    )  # fmt: skip
    plan = fused.make_plan(problem)
    triton_ce.TRITON.run(logits, plan, torch.empty_like(logits), None, None)


@pytest.mark.skipif(not _HAS_TRITON or _INTERPRET, reason="needs Triton's JIT, not the interpreter")
def test_new_rates_do_not_recompile_the_triton_kernel(monkeypatch):
    """Triton's own compile-cache key (binder and ``compute_cache_key`` of the JIT, for an sm_90
    target; no GPU needed) is the same for two different rate tensors, so the second launch
    reuses the first one's binary; it differs from the scalar path's (``HAS_RATES``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    from labelsmooth.kernels import triton_ce

    kernel = triton_ce._ce_rows_kernel
    binder = create_function_from_signature(
        kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32))
    )
    calls = _record_launches(triton_ce, monkeypatch)
    generator = torch.Generator().manual_seed(10)
    for kwargs in ({}, {"style": "others", "kl": True, "weight": torch.rand(20) + 0.1}):
        calls.clear()
        _launch(triton_ce, torch.rand(6, generator=generator) * 0.3, **kwargs)
        _launch(triton_ce, torch.rand(6, generator=generator) * 0.5, **kwargs)
        _launch(triton_ce, 0.1, **kwargs)
        _launch(triton_ce, 0.3, **kwargs)
        keys = [compute_cache_key({}, *binder(*args, **kw)[1:]) for args, kw in calls]
        assert keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[2]
        assert calls[0][1]["HAS_RATES"] and not calls[2][1]["HAS_RATES"]


@pytest.mark.skipif(not (_HAS_TRITON and _CUDA) or _INTERPRET, reason="needs CUDA")
def test_triton_kernel_cache_does_not_grow_with_new_rates():
    from labelsmooth.kernels import triton_ce

    logits = torch.randn(6, 300, device="cuda")
    target = torch.randint(0, 300, (6,), device="cuda")
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(x, target, torch.rand(6, device="cuda") * 0.3, impl="triton").backward()
    caches = triton_ce._ce_rows_kernel.device_caches
    before = sum(len(cache[0]) for cache in caches.values())
    for _ in range(3):
        x = logits.clone().requires_grad_(True)
        ls.cross_entropy(x, target, torch.rand(6, device="cuda") * 0.5, impl="triton").backward()
    assert sum(len(cache[0]) for cache in caches.values()) == before


if not TRITON_HERE:
    # Without CUDA the Triton kernel tests run in the interpreter subprocess only: collect
    # them there (rather than report each one as skipped here).
    for _name in [n for n in globals() if n.startswith("test_triton_kernel_")]:
        del globals()[_name]


# --- Regressions from the adversarial review ------------------------------------------------


@pytest.mark.parametrize("shape", [(), (1,)])
def test_one_learnt_rate_keeps_its_gradient(shape):
    # A 1-element eps that requires grad used to be read with .item(): its gradient was lost.
    logits, target = torch.randn(4, 5), torch.tensor([1, 1, 2, 3])
    shared = torch.full(shape, 0.1, requires_grad=True)
    loss = ls.cross_entropy(logits, target, eps=shared)
    loss.backward()
    rows = torch.full((4,), 0.1, requires_grad=True)
    ls.cross_entropy(logits, target, eps=rows).backward()
    torch.testing.assert_close(loss, ls.cross_entropy(logits, target, eps=0.1))
    assert shared.grad is not None and shared.grad.shape == shape
    torch.testing.assert_close(shared.grad.sum(), rows.grad.sum())
    with torch.no_grad():  # no gradient wanted: a number, as before
        torch.testing.assert_close(
            ls.cross_entropy(logits, target, eps=shared), ls.cross_entropy(logits, target, eps=0.1)
        )


def test_one_learnt_rate_is_refused_where_it_would_lose_its_gradient():
    hidden, weight = torch.randn(3, 4), torch.randn(5, 4)
    learnt = torch.tensor(0.1, requires_grad=True)
    with pytest.raises(TypeError, match="eps must be a number, got a tensor that requires grad"):
        linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2]), learnt)


def test_rates_on_the_meta_device_raise():
    with pytest.raises(ValueError, match="eps must be on the device of input"):
        ls.cross_entropy(
            torch.randn(2, 3), torch.tensor([0, 1]), eps=torch.full((2,), 0.1, device="meta")
        )
    with pytest.raises(ValueError, match="eps must be a number, got a tensor on the meta device"):
        ls.cross_entropy(
            torch.randn(2, 3), torch.tensor([0, 1]), eps=torch.tensor(0.1, device="meta")
        )


def test_one_traced_rate_under_torch_func():
    # A 0-dim eps under grad/vmap used to be read with .item(), which a transform forbids.
    logits, target = torch.randn(4, 5), torch.tensor([1, 1, 2, 3])
    rates = torch.tensor([0.1, 0.3])
    batched = torch.func.vmap(lambda e: ls.cross_entropy(logits, target, eps=e))(rates)
    expected = [ls.cross_entropy(logits, target, eps=float(e)) for e in rates]
    torch.testing.assert_close(batched, torch.stack(expected))
    shared = torch.tensor(0.1, requires_grad=True)
    ls.cross_entropy(logits, target, eps=shared).backward()
    grad = torch.func.grad(lambda e: ls.cross_entropy(logits, target, eps=e))(torch.tensor(0.1))
    torch.testing.assert_close(grad, shared.grad)


def test_one_rate_tensor_under_torch_compile_fullgraph():
    # It used to break the graph (.item() of a data-dependent value); now it is runtime data.
    logits, target = torch.randn(4, 5), torch.tensor([1, 1, 2, 3])
    compiled = torch.compile(lambda e: ls.cross_entropy(logits, target, eps=e), fullgraph=True)
    for eps in (0.1, 0.3):
        torch.testing.assert_close(
            compiled(torch.tensor(eps)), ls.cross_entropy(logits, target, eps=eps)
        )

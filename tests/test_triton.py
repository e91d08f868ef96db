"""impl="triton" against impl="reference": forward, backward and every option.

Without CUDA the kernels run in the Triton interpreter on CPU tensors. ``TRITON_INTERPRET=1``
must be set before Triton is first imported (``triton.jit`` and Triton's own standard library
read it at import) and while the kernels run. So that the rest of the test session never sees
that variable nor an interpreter-mode Triton, the tests below run in a fresh ``pytest``
subprocess with the variable set (:func:`test_under_the_triton_interpreter`); on a CUDA
machine, or when the variable is already set, they run here directly. Shapes are tiny (the
interpreter runs each program in numpy) and ``MAX_BLOCK`` is lowered to 16 so that every row
spans several blocks. Skipped when Triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import labelsmooth as ls

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

_CUDA = torch.cuda.is_available()
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
RUN_HERE = _CUDA or _INTERPRET
DEVICE = "cuda" if _CUDA else "cpu"

if RUN_HERE:
    from labelsmooth.kernels import triton_ce

pytestmark = pytest.mark.filterwarnings(
    # The interpreter evaluates both branches of tl.where in numpy (e.g. exp(-inf - -inf)).
    "ignore:invalid value encountered:RuntimeWarning"
)


@pytest.mark.skipif(RUN_HERE, reason="the tests run in this process")
def test_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        command, env=env, cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    if RUN_HERE:
        monkeypatch.setattr(triton_ce, "MAX_BLOCK", 16)


def _problem(shape=(5, 20), dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    num_classes = shape[1]
    logits = (torch.randn(shape, generator=generator) * 3).to(dtype)
    index_shape = shape[:1] + shape[2:]
    target = torch.randint(0, num_classes, index_shape, generator=generator)
    target.view(-1)[0] = -100
    upstream = torch.randn(index_shape, generator=generator)
    return logits.to(DEVICE), target.to(DEVICE), upstream.to(DEVICE)


def _run(impl, logits, target, upstream, nll_weight, **kwargs):
    x = logits.clone().requires_grad_(True)
    loss, nll = ls.cross_entropy(x, target, return_nll=True, impl=impl, **kwargs)
    if kwargs.get("reduction", "mean") == "none":
        total = (loss.float() * upstream).sum()
        if nll_weight:  # nll stays out of the graph otherwise
            total = total + nll_weight * (nll.float() * upstream).sum()
    else:
        total = loss + nll_weight * nll if nll_weight else loss
    total.backward()
    return loss.detach().float(), nll.detach().float(), x.grad.float()


def _compare(logits, target, upstream, nll_weight=0.5, grad_tol=1e-6, **kwargs):
    got = _run("triton", logits, target, upstream, nll_weight, **kwargs)
    expected = _run("reference", logits.float(), target, upstream, nll_weight, **kwargs)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    scale = expected[2].abs().max().item()
    torch.testing.assert_close(got[2], expected[2], rtol=grad_tol, atol=grad_tol * scale)


# A covering design of the options (every value of every option at least once, with the
# interesting pairs) rather than the full product: each case costs interpreter time.
CASES = [
    dict(style="uniform", reduction="mean"),
    dict(style="others", reduction="none"),
    dict(prior=True, reduction="sum"),
    dict(style="uniform", weighted=True, reduction="none"),
    dict(style="others", weighted=True, kl=True, reduction="mean"),
    dict(prior=True, weighted=True, kl=True, reduction="none"),
    dict(style="uniform", kl=True, reduction="sum", z_loss=1e-2),
    dict(style="others", reduction="mean", softcap=2.0),
    dict(style="uniform", weighted=True, reduction="mean", z_loss=0.2, softcap=5.0),
    dict(prior=True, kl=True, reduction="none", z_loss=0.1, softcap=3.0),
    dict(style="others", weighted=True, kl=True, reduction="sum", z_loss=0.1, softcap=1.0),
    dict(style="uniform", eps=0.0, reduction="mean"),
    dict(style="uniform", eps=1.0, weighted=True, reduction="none"),
    dict(style="others", eps=-0.3, reduction="mean"),
    # exclude_classes: a vector offset with either style (labels in it are ignored below).
    dict(style="others", exclude_classes=[0, 7], kl=True, reduction="sum"),
    dict(style="uniform", exclude_classes=[3], weighted=True, reduction="none", z_loss=0.1),
    dict(prior=True, exclude_classes=[5, 19], reduction="mean", softcap=3.0),
    # weight_mode="sample": the unweighted rows times w[y] outside the kernel.
    dict(style="others", weighted=True, weight_mode="sample", reduction="mean"),
    dict(style="uniform", weighted=True, weight_mode="sample", kl=True, reduction="none"),
]


@pytest.mark.parametrize(
    "case", CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items())
)
@pytest.mark.parametrize("nll_weight", [0.0, 0.5])
def test_triton_equals_reference(case, nll_weight):
    case = dict(case)
    logits, target, upstream = _problem()
    num_classes = logits.shape[1]
    generator = torch.Generator().manual_seed(1)
    if case.pop("prior", False):
        prior = torch.rand(num_classes, generator=generator)
        prior[3] = 0.0  # a class of zero mass
        case["prior"] = (prior / prior.sum()).to(DEVICE)
    if case.pop("weighted", False):
        case["weight"] = (torch.rand(num_classes, generator=generator) + 0.1).to(DEVICE)
    case.setdefault("eps", 0.15)
    if "exclude_classes" in case:  # no label in an excluded class ("others" refuses one)
        excluded = torch.tensor(case["exclude_classes"], device=target.device)
        target = target.masked_fill(torch.isin(target, excluded), -100)
    _compare(logits, target, upstream, nll_weight=nll_weight, **case)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_in_float32_math(dtype):
    logits, target, upstream = _problem(dtype=dtype)
    weight = torch.rand(logits.shape[1]).to(DEVICE)
    # The gradient is rounded to `dtype` twice (unscaled, then scaled): two ulps.
    tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
    _compare(logits, target, upstream, grad_tol=tol, eps=0.1, weight=weight, z_loss=1e-3)
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(x, target, impl="triton").backward()
    assert x.grad.dtype == dtype


def test_class_dimension_one_and_all_ignored():
    logits, target, upstream = _problem(shape=(2, 20, 3))
    _compare(logits, target, upstream, eps=0.1, style="others", reduction="none")
    x = logits.clone().requires_grad_(True)
    ignored = torch.full_like(target, -100)
    loss, nll = ls.cross_entropy(x, ignored, impl="triton", return_nll=True)
    assert loss.item() == 0.0 and nll.item() == 0.0
    (loss + nll).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_large_and_minus_inf_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0, 5e3], [0.5, -float("inf"), 1.0, 0.0]]).to(DEVICE)
    target = torch.tensor([1, 2]).to(DEVICE)
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, 0.1, impl="triton", reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss[0]) and loss[1].item() == float("inf")
    assert torch.isfinite(x.grad).all()
    y = logits.clone().requires_grad_(True)
    ls.cross_entropy(y, target, 0.1, impl="reference", reduction="none").sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_directional_finite_differences():
    """gradcheck needs float64; the float32 kernel is checked by central differences."""
    logits, target, _ = _problem(shape=(4, 20), seed=3)
    kwargs = dict(eps=0.2, style="others", kl=True, z_loss=0.05, softcap=4.0, impl="triton")
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(x, target, reduction="sum", **kwargs).backward()
    generator = torch.Generator().manual_seed(4)
    step = 1e-2
    for _ in range(3):
        direction = torch.randn(logits.shape, generator=generator).to(DEVICE)
        plus = ls.cross_entropy(logits + step * direction, target, reduction="sum", **kwargs)
        minus = ls.cross_entropy(logits - step * direction, target, reduction="sum", **kwargs)
        numeric = (plus - minus).item() / (2 * step)
        analytic = (x.grad * direction).sum().item()
        assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic))


def test_inplace_and_retain_graph():
    logits, target, _ = _problem(seed=5)
    expected = _run("reference", logits, target, None, 0.0, eps=0.1)
    hidden = logits.clone().requires_grad_(True)
    x = hidden * 1.0
    loss = ls.cross_entropy(x, target, 0.1, impl="triton", inplace=True)
    assert not torch.equal(x.detach(), logits)
    (first,) = torch.autograd.grad(loss, hidden, retain_graph=True)
    (second,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(first, expected[2])
    torch.testing.assert_close(second, expected[2])


def test_probability_targets_and_float64_take_the_chunked_path():
    logits, _, _ = _problem()
    soft = torch.rand(logits.shape).softmax(1).to(DEVICE)
    for x, target in ((logits, soft), (logits.double(), soft.double())):
        torch.testing.assert_close(
            ls.cross_entropy(x, target, 0.1, impl="triton", kl=True),
            ls.cross_entropy(x, target, 0.1, impl="reference", kl=True),
        )


if not RUN_HERE:
    # This process only launches the subprocess: collect nothing else (rather than report
    # every test as skipped).
    for _name in [
        n for n in globals() if n.startswith("test_") and n != "test_under_the_triton_interpreter"
    ]:
        del globals()[_name]

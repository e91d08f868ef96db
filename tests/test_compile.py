"""The losses under tracing: torch.compile(fullgraph=True), torch.func.grad and vmap.

While traced no tensor value may reach the host, so the value checks are skipped and
impl="auto" takes the closed form (see ``labelsmooth._checks.tracing``). ``fullgraph=True``
fails on any graph break whatever the backend, so the cheap ``backend="eager"`` proves it;
one test compiles with inductor.
"""

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import _checks, functional, kernels

# Random softmax targets have mass on every class: the eager reference calls would warn.
pytestmark = pytest.mark.filterwarnings("ignore::labelsmooth.DoubleSmoothingWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(fn, backend="eager"):
    return torch.compile(fn, fullgraph=True, backend=backend)


def _loss_and_grad(fn, logits, *args):
    logits = logits.detach().requires_grad_(True)
    loss = fn(logits, *args)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    return loss.detach(), grad


def _loop(fn, *batches):
    """fn over the first dimension of every batch, one sample at a time, stacked."""
    return torch.stack([fn(*sample) for sample in zip(*batches, strict=True)])


def _loop_grad(fn, logits, *rest):
    return _loop(lambda *sample: _loss_and_grad(fn, *sample)[1], logits, *rest)


def _soft_target(n, k):
    return torch.randn(n, k).softmax(-1)


CASES = {
    "default": (lambda x, y: ls.cross_entropy(x, y), (6, 5), "index"),
    "others+weight+ignore": (
        lambda x, y, w: ls.cross_entropy(x, y, 0.2, style="others", weight=w, ignore_index=1),
        (6, 5),
        "index+weight",
    ),
    "k-dim": (lambda x, y: ls.cross_entropy(x, y, reduction="none"), (2, 5, 3, 4), "index"),
    "probabilities": (lambda x, y: ls.cross_entropy(x, y, 0.1), (6, 5), "soft"),
    "nll+kl": (lambda x, y: ls.cross_entropy(x, y, kl=True, return_nll=True)[0], (6, 5), "index"),
}


def _case_args(shape, kind):
    logits = torch.randn(shape)
    k = shape[1]
    if kind == "soft":
        return logits, (_soft_target(shape[0], k),)
    target = torch.randint(0, k, (shape[0], *shape[2:]))
    if kind == "index+weight":
        return logits, (target, torch.rand(k) + 0.5)
    return logits, (target,)


@pytest.mark.parametrize("case", list(CASES))
def test_cross_entropy_compiles_fullgraph_and_equals_eager(case):
    fn, shape, kind = CASES[case]
    logits, args = _case_args(shape, kind)
    expected = _loss_and_grad(fn, logits, *args)
    got = _loss_and_grad(_compiled(fn), logits, *args)
    torch.testing.assert_close(got, expected)


def test_binary_compiles_fullgraph_and_equals_eager():
    def fn(x, t, w):
        return ls.binary_cross_entropy_with_logits(x, t, 0.1, style="others", pos_weight=w)

    logits, target, pos_weight = torch.randn(6, 3), torch.rand(6, 3), torch.rand(3) + 0.5
    expected = _loss_and_grad(fn, logits, target, pos_weight)
    got = _loss_and_grad(_compiled(fn), logits, target, pos_weight)
    torch.testing.assert_close(got, expected)


def test_cross_entropy_compiles_with_inductor():
    """The one inductor compile (slow on small machines): forward and backward equal eager."""
    logits, target = torch.randn(8, 7), torch.randint(0, 7, (8,))
    target[0] = -100
    expected = _loss_and_grad(ls.cross_entropy, logits, target)
    got = _loss_and_grad(_compiled(ls.cross_entropy, backend="inductor"), logits, target)
    torch.testing.assert_close(got, expected)


def test_tracing_is_detected():
    x = torch.randn(3)
    seen = []

    def probe(t):
        seen.append(_checks.tracing(t))
        return t.sum()

    assert not _checks.tracing(x)
    torch.func.grad(probe)(x)
    torch.func.vmap(probe)(x.expand(2, 3))
    _compiled(probe)(x)
    assert seen == [True, True, True]


@pytest.mark.parametrize("kind", ["index", "soft"])
def test_func_grad_equals_autograd(kind):
    logits = torch.randn(6, 5)
    if kind == "soft":
        target = _soft_target(6, 5)
    else:
        target = torch.randint(0, 5, (6,))
        target[2] = -100
    weight = torch.rand(5) + 0.5

    def fn(x):
        return ls.cross_entropy(x, target, 0.1, weight=weight if kind == "index" else None)

    _, expected = _loss_and_grad(lambda x: fn(x), logits)
    torch.testing.assert_close(torch.func.grad(fn)(logits), expected)


def test_vmap_equals_loop():
    logits = torch.randn(4, 6, 5)
    target = torch.randint(0, 5, (4, 6))
    soft = torch.randn(4, 6, 5).softmax(-1)
    for fn, tgt in ((ls.cross_entropy, target), (lambda x, t: ls.cross_entropy(x, t, 0.2), soft)):
        torch.testing.assert_close(torch.func.vmap(fn)(logits, tgt), _loop(fn, logits, tgt))
        per_sample = torch.func.vmap(torch.func.grad(fn))(logits, tgt)
        torch.testing.assert_close(per_sample, _loop_grad(fn, logits, tgt))


def test_binary_grad_and_vmap():
    logits, target = torch.randn(4, 6), torch.rand(4, 6)
    fn = ls.binary_cross_entropy_with_logits
    _, expected = _loss_and_grad(fn, logits, target)
    torch.testing.assert_close(torch.func.grad(fn)(logits, target), expected)
    torch.testing.assert_close(torch.func.vmap(fn)(logits, target), _loop(fn, logits, target))
    per_sample = torch.func.vmap(torch.func.grad(fn))(logits, target)
    torch.testing.assert_close(per_sample, _loop_grad(fn, logits, target))


def test_auto_on_a_large_input_under_func_grad_and_vmap():
    """Eagerly "auto" picks a fused kernel here; under torch.func it takes pure torch."""
    k = 1100
    n = kernels.AUTO_MIN_ELEMENTS // k + 1
    assert n * k > kernels.AUTO_MIN_ELEMENTS and k >= kernels.AUTO_MIN_CLASSES
    logits, target = torch.randn(n, k), torch.randint(0, k, (n,))
    problem = ls._problem.prepare(
        logits, target, 0.1, "uniform", None, None, -100, "mean", False, True
    )
    assert functional.auto_impl(problem) in ("compiled", "chunked")
    _, expected = _loss_and_grad(ls.cross_entropy, logits, target)
    torch.testing.assert_close(torch.func.grad(ls.cross_entropy)(logits, target), expected)
    pair = torch.stack([logits, logits.flip(0)])
    batched = torch.func.vmap(ls.cross_entropy, in_dims=(0, None))(pair, target)
    torch.testing.assert_close(batched[0], ls.cross_entropy(logits, target))


def test_value_checks_are_skipped_only_while_tracing():
    """Eagerly a bad value raises ValueError by name; traced it is not read on the host, and a
    class index out of range still fails (never taken for a class) rather than passing."""
    logits = torch.randn(3, 4)
    bad_index = torch.tensor([0, -3, 1])
    with pytest.raises(ValueError, match="class index -3"):
        ls.cross_entropy(logits, bad_index)
    with pytest.raises((IndexError, RuntimeError)):
        torch.func.grad(ls.cross_entropy)(logits, bad_index)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ls.binary_cross_entropy_with_logits(logits, torch.full((3, 4), 2.0))
    # Traced, the binary target's range is the caller's responsibility: same as F's loss.
    target = torch.full((3, 4), 2.0)
    got = torch.func.grad(ls.binary_cross_entropy_with_logits)(logits, target, 0.0)
    x = logits.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(x, target), x)
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------------------------
# The linear head
# ----------------------------------------------------------------------------------------------

LINEAR_CASES = {
    "default": {},
    "bias": {"bias": "bias"},
    "none+nll": {"reduction": "none", "return_nll": True},
    "z_loss+softcap+others": {"z_loss": 1e-4, "softcap": 30.0, "style": "others"},
}


def _linear_inputs():
    torch.manual_seed(0)
    hidden, weight = torch.randn(8, 16), torch.randn(50, 16)
    target = torch.randint(0, 50, (8,))
    target[2] = -100
    return hidden, weight, target, torch.randn(50)


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_cross_entropy_compiles_fullgraph_with_validation_on(case):
    hidden, weight, target, bias = _linear_inputs()
    kwargs = {k: (bias if v == "bias" else v) for k, v in LINEAR_CASES[case].items()}

    def loss(h, w):
        out = ls.linear_cross_entropy(h, w, target, 0.1, **kwargs)
        return (out[0] if isinstance(out, tuple) else out).sum()

    def grads(fn):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        value = fn(h, w)
        return (value.detach(), *torch.autograd.grad(value, (h, w)))

    for got, want in zip(grads(_compiled(loss)), grads(loss), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_under_func_grad_and_vmap():
    hidden, weight, target, _ = _linear_inputs()
    grad = torch.func.grad(lambda h: ls.linear_cross_entropy(h, weight, target, 0.1))(hidden)
    h = hidden.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(ls.linear_cross_entropy(h, weight, target, 0.1), h)
    torch.testing.assert_close(grad, want)
    rows = torch.func.vmap(
        lambda x, y: ls.linear_cross_entropy(x[None], weight, y[None], 0.1, reduction="sum")
    )(hidden, target)
    torch.testing.assert_close(
        rows, ls.linear_cross_entropy(hidden, weight, target, 0.1, reduction="none")
    )
    with pytest.raises(ValueError, match="impl='chunked' cannot run inside a torch.func"):
        torch.func.grad(lambda h: ls.linear_cross_entropy(h, weight, target, 0.1, impl="chunked"))(
            hidden
        )


def test_linear_cross_entropy_unchecked_negative_index_is_never_a_class():
    """Traced, a negative index other than ignore_index is not taken for the last class."""
    hidden, weight, target, _ = _linear_inputs()
    bad = target.clone()
    bad[0] = -1

    def loss(h):
        return ls.linear_cross_entropy(h, weight, bad, 0.1, reduction="none")

    try:
        rows = _compiled(loss)(hidden)
    except Exception:  # failing is allowed for an out-of-range index
        return
    last = target.clone()
    last[0] = 49
    wrapped = ls.linear_cross_entropy(hidden, weight, last, 0.1, reduction="none")
    assert not torch.allclose(rows[0], wrapped[0])

"""linear_cross_entropy: the fused linear-head loss equals the materialised reference.

Every implementation is compared with ``impl="reference"`` (logits materialised, then
``ls.cross_entropy(..., impl="reference")``): loss, nll and the gradients of hidden, weight and
bias, for random upstream gradients of both outputs. The Triton kernels run under
``TRITON_INTERPRET=1`` on CPU and are skipped when triton is not importable.
"""

import doctest
import importlib.util
import inspect
import itertools
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import labelsmooth as ls
from labelsmooth.kernels import linear
from labelsmooth.kernels.linear import chunk_rows, chunking, linear_cross_entropy

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _problem(n=13, h=5, v=11, *, dtype=torch.float64, bias=True, shape=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = shape if shape is not None else (n,)
    hidden = torch.randn(*batch, h, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_() if bias else None
    target = torch.randint(0, v, batch, generator=g)
    flat = target.view(-1)
    flat[1::4] = -100  # some padding
    return hidden, weight, b, target


def _run(impl, hidden, weight, bias, target, grads=None, use_nll=True, **kwargs):
    """(loss, nll, grads of hidden/weight/bias) for upstream gradients ``grads``."""
    loss, nll = linear_cross_entropy(
        hidden, weight, target, kwargs.pop("eps", 0.2), bias=bias, impl=impl,
        return_nll=True, **kwargs,
    )  # fmt: skip
    if grads is None:
        gen = torch.Generator().manual_seed(1)
        grads = (torch.randn(loss.shape, generator=gen), torch.randn(nll.shape, generator=gen))
    objective = (loss * grads[0].to(loss.dtype)).sum()
    if use_nll:
        objective = objective + (nll * grads[1].to(nll.dtype)).sum()
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    return loss, nll, torch.autograd.grad(objective, inputs), grads


def _assert_matches(impl, hidden, weight, bias, target, atol=1e-10, rtol=1e-8, **kwargs):
    ref = _run("reference", hidden, weight, bias, target, **dict(kwargs))
    for use_nll in (False, True):
        ours = _run(impl, hidden, weight, bias, target, grads=ref[3], use_nll=use_nll, **kwargs)
        expected = _run("reference", hidden, weight, bias, target, grads=ref[3], use_nll=use_nll,
                        **kwargs)  # fmt: skip
        assert ours[0].dtype == expected[0].dtype and ours[0].shape == expected[0].shape
        torch.testing.assert_close(ours[0], expected[0], atol=atol, rtol=rtol)
        torch.testing.assert_close(ours[1], expected[1], atol=atol, rtol=rtol)
        for a, b in zip(ours[2], expected[2], strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


GRID = list(
    itertools.product(
        ["uniform", "others", "prior"],
        ["mean", "sum", "none"],
        [0.0, 0.01],  # z_loss
        [None, 3.0],  # softcap
        [True, False],  # bias
    )
)


def _style_kwargs(style, v):
    if style == "prior":
        g = torch.Generator().manual_seed(5)
        return {"style": "uniform", "prior": torch.softmax(torch.randn(v, generator=g), 0)}
    return {"style": style}


@pytest.mark.parametrize(("style", "reduction", "z_loss", "softcap", "bias"), GRID)
def test_chunked_matches_reference(style, reduction, z_loss, softcap, bias):
    hidden, weight, b, target = _problem(bias=bias)
    with chunking(rows=4):  # 13 rows: chunks of 4, 4, 4, 1
        _assert_matches(
            "chunked", hidden, weight, b, target, reduction=reduction, z_loss=z_loss,
            softcap=softcap, **_style_kwargs(style, weight.shape[0]),
        )  # fmt: skip


@pytest.mark.parametrize("rows", [1, 3, 5, 12, 13, 40, None])
def test_chunk_sizes(rows):
    hidden, weight, b, target = _problem(n=13)
    with chunking(rows=rows):
        _assert_matches("chunked", hidden, weight, b, target, softcap=2.0, z_loss=0.1)


def test_batch_time_shape_and_none_reduction():
    hidden, weight, b, target = _problem(shape=(3, 5))
    loss = linear_cross_entropy(hidden, weight, target, bias=b, reduction="none")
    assert loss.shape == (3, 5) and loss.dtype == torch.float64
    assert (loss.view(-1)[1::4] == 0).all()
    with chunking(rows=4):
        _assert_matches("chunked", hidden, weight, b, target, reduction="none")
        _assert_matches("chunked", hidden, weight, b, target, reduction="mean", eps=0.05)


def test_non_contiguous_hidden():
    hidden, weight, b, target = _problem()
    strided = hidden.detach().T.contiguous().T.requires_grad_()  # (N, H) with strides (1, N)
    assert not strided.is_contiguous()
    with chunking(rows=4):
        _assert_matches("chunked", strided, weight, b, target, softcap=2.0)


@pytest.mark.skipif(
    "z_loss" not in inspect.signature(ls.cross_entropy).parameters,
    reason="ls.cross_entropy has no z_loss/softcap yet",
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_same_extras_as_cross_entropy(reduction):
    """z_loss and softcap mean what they mean in ls.cross_entropy on the logits."""
    hidden, weight, b, target = _problem()
    kwargs = {"z_loss": 0.01, "softcap": 2.0, "return_nll": True, "reduction": reduction}
    ours = linear_cross_entropy(hidden, weight, target, 0.2, bias=b, style="others", **kwargs)
    theirs = ls.cross_entropy(F.linear(hidden, weight, b), target, 0.2, style="others", **kwargs)
    for a, e in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, e)


def test_equals_native_smoothed_cross_entropy():
    hidden, weight, b, target = _problem(n=20, dtype=torch.float32)
    ours = linear_cross_entropy(hidden, weight, target, 0.1, bias=b)
    native = F.cross_entropy(F.linear(hidden, weight, b), target, label_smoothing=0.1)
    torch.testing.assert_close(ours, native)
    g_ours = torch.autograd.grad(ours, (hidden, weight, b))
    g_native = torch.autograd.grad(native, (hidden, weight, b))
    for a, e in zip(g_ours, g_native, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(impl, reduction):
    hidden, weight, b, target = _problem(n=6)
    target = torch.full_like(target, -100)
    loss, nll = linear_cross_entropy(
        hidden, weight, target, bias=b, reduction=reduction, return_nll=True, impl=impl,
        z_loss=0.1,
    )  # fmt: skip
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(nll, torch.zeros_like(nll))
    grads = torch.autograd.grad(loss.sum() + nll.sum(), (hidden, weight, b))
    for grad in grads:
        assert torch.equal(grad, torch.zeros_like(grad))


def test_empty_batch():
    hidden, weight, b, _ = _problem(n=0)
    loss = linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long), bias=b)
    assert loss.item() == 0.0
    loss.backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_low_precision_against_float32_reference(dtype, softcap):
    hidden, weight, b, target = _problem(n=24, h=16, v=40, dtype=torch.float32)
    low = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight, b)]
    # The reference sees the same rounded inputs, in float32.
    ref_in = [t.detach().float().requires_grad_() for t in low]
    kwargs = {"softcap": softcap, "z_loss": 1e-3, "eps": 0.1}
    with chunking(rows=5):
        ours = _run("chunked", *low, target, **dict(kwargs))
    ref = _run("reference", *ref_in, target, grads=ours[3], **dict(kwargs))
    assert ours[0].dtype == torch.float32  # mean: float32 scalar
    torch.testing.assert_close(ours[0], ref[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(ours[1], ref[1], atol=2e-3, rtol=2e-3)
    for a, e in zip(ours[2], ref[2], strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e, atol=2e-2, rtol=2e-2)
    none = linear_cross_entropy(*low[:2], target, bias=low[2], reduction="none")
    assert none.dtype == dtype


def test_large_logits_are_finite():
    hidden, weight, b, target = _problem(n=8, dtype=torch.float32)
    with torch.no_grad():
        weight.mul_(1e3)  # logits of order 1e4
    loss = linear_cross_entropy(hidden, weight, target, bias=b, z_loss=1e-4)
    ref = linear_cross_entropy(hidden, weight, target, bias=b, z_loss=1e-4, impl="reference")
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-2)
    grads = torch.autograd.grad(loss, (hidden, weight, b))
    assert all(torch.isfinite(g).all() for g in grads)


def test_no_grad_forward_and_inputs_without_grad():
    hidden, weight, b, target = _problem()
    ref = linear_cross_entropy(hidden, weight, target, bias=b, impl="reference")
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, target, bias=b), ref)
    # Only weight needs a gradient (frozen features): hidden and bias get none.
    h, bb = hidden.detach(), b.detach()
    (gw,) = torch.autograd.grad(linear_cross_entropy(h, weight, target, bias=bb), (weight,))
    (gw_ref,) = torch.autograd.grad(
        linear_cross_entropy(h, weight, target, bias=bb, impl="reference"), (weight,)
    )
    torch.testing.assert_close(gw, gw_ref)


def test_second_backward_recomputes():
    hidden, weight, b, target = _problem()
    loss = linear_cross_entropy(hidden, weight, target, bias=b, softcap=2.0)
    first = torch.autograd.grad(loss, (hidden, weight, b), retain_graph=True)
    second = torch.autograd.grad(2 * loss, (hidden, weight, b))
    for a, c in zip(first, second, strict=True):
        torch.testing.assert_close(2 * a, c)


def test_only_nll_backward():
    hidden, weight, b, target = _problem()
    _, nll = linear_cross_entropy(hidden, weight, target, bias=b, return_nll=True)
    _, nll_ref = linear_cross_entropy(
        hidden, weight, target, bias=b, return_nll=True, impl="reference"
    )
    for a, e in zip(
        torch.autograd.grad(nll, (hidden, weight, b)),
        torch.autograd.grad(nll_ref, (hidden, weight, b)),
        strict=True,
    ):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(
    ("reduction", "softcap", "z_loss", "style"),
    [
        ("mean", None, 0.0, "uniform"),
        ("mean", 2.0, 0.05, "others"),
        ("sum", None, 0.05, "prior"),
        ("none", 2.0, 0.0, "uniform"),
        ("none", None, 0.05, "others"),
    ],
)
def test_gradcheck(reduction, softcap, z_loss, style):
    hidden, weight, b, target = _problem(n=7, h=3, v=5)
    kwargs = _style_kwargs(style, 5)

    def fn(h, w, bb):
        with chunking(rows=3):
            return linear_cross_entropy(
                h, w, target, 0.2, bias=bb, reduction=reduction, return_nll=True,
                softcap=softcap, z_loss=z_loss, **kwargs,
            )  # fmt: skip

    # gradcheck also runs every backward twice and demands bit-identical results (reentrant):
    # a backward that keeps the graph scales copies of the forward's gradients, the chunks run
    # in a fixed order and nothing is accumulated concurrently.
    assert gradcheck(fn, (hidden, weight, b), nondet_tol=0)


def _penalised_weight_grad(impl, hidden, weight, b, target, **kwargs):
    """W.grad of loss + |dloss/dW|^2 (a gradient penalty): needs create_graph=True."""
    weight = weight.detach().clone().requires_grad_()
    loss = linear_cross_entropy(hidden, weight, target, 0.2, bias=b, impl=impl, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), weight, create_graph=True)
    (loss.sum() + grad.square().sum()).backward()
    return weight.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("return_nll", [False, True])
def test_create_graph_raises_for_the_chunked_path(reduction, return_nll):
    # The audit: a gradient without a graph made the penalty vanish silently (W.grad off by
    # 0.62). Now create_graph=True raises, naming the path and the one that supports it.
    hidden, weight, b, target = _problem()
    for impl in ("auto", "chunked"):
        out = linear_cross_entropy(
            hidden, weight, target, bias=b, impl=impl, reduction=reduction, return_nll=return_nll
        )
        loss = (out[0] + out[1]) if return_nll else out
        with pytest.raises(RuntimeError, match=r"impl='chunked'\) is first-order only.*reference"):
            torch.autograd.grad(loss.sum(), (hidden, weight), create_graph=True)
        # The same graph still serves an ordinary backward afterwards.
        grads = torch.autograd.grad(loss.sum(), (hidden, weight))
        assert all(torch.isfinite(g).all() for g in grads)


def test_reference_supports_a_gradient_penalty():
    hidden, weight, b, target = _problem()
    got = _penalised_weight_grad("reference", hidden, weight, b, target, softcap=3.0)
    # The same penalty on the plain composite F.linear + ls.cross_entropy(impl="torch").
    w = weight.detach().clone().requires_grad_()
    logits = F.linear(hidden, w, b)
    logits = 3.0 * torch.tanh(logits / 3.0)
    loss = ls.cross_entropy(logits, target, 0.2, impl="torch")
    (grad,) = torch.autograd.grad(loss, w, create_graph=True)
    (loss + grad.square().sum()).backward()
    torch.testing.assert_close(got, w.grad)
    assert (got - grad.detach()).abs().max() > 1e-3  # the penalty's own gradient counts


class _MemoryWatch(TorchDispatchMode):
    """Records the largest tensor any aten op produces, and the peak of the bytes held by the
    tensors produced inside the ``with`` block, other than views of ``inputs`` (a storage counts
    until the last Python tensor on it is gone: enough for the chunk buffers, which only Python
    locals hold)."""

    def __init__(self, *inputs):
        super().__init__()
        self.largest = 0
        self.inputs = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
        self.live, self.refs = {}, {}
        self.current = self.peak = 0

    def _release(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.current -= self.live.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            self.largest = max(self.largest, t.numel())
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.inputs:  # views of the inputs are not new memory
                continue
            if key not in self.live:
                self.live[key], self.refs[key] = storage.nbytes(), 0
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_never_materialised(softcap, reduction, dtype):
    n, h, v = 100, 4, 4000
    hidden, weight, b, target = _problem(n=n, h=h, v=v, dtype=dtype)
    size = torch.empty((), dtype=dtype).element_size()
    logits_bytes = n * v * size
    rows = chunk_rows(n, v, dtype, softcap=softcap is not None)
    assert 1 <= rows <= n // 10  # the default budget gives several chunks
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    watch = _MemoryWatch(hidden, weight, b, target)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), watch:
        loss = linear_cross_entropy(
            hidden, weight, target, bias=b, reduction=reduction, softcap=softcap, z_loss=0.01
        )
        loss.sum().backward()
    # Nothing of the logits' size is saved for backward, and no op ever produces it.
    assert saved and max(saved) < n * v // 10
    assert watch.largest <= max(rows * v, v * h) < n * v // 10
    # At most one chunk is alive at a time: beyond the gradients (and, for bf16, the float32
    # accumulator of the weight gradient, V*H*4 bytes), within 10% of the logits.
    grads = (n * h + v * h + v) * size
    accumulator = (v * h + v) * 4 if size != 4 else 0
    assert watch.peak - grads - accumulator <= 0.1 * logits_bytes


def test_chunk_rows_budget():
    # float32: the work buffers get 80% of 10% of the logits; the chunks even out
    # (8192 rows = 13 chunks of <= 631 rows).
    assert chunk_rows(8192, 32000, torch.float32) == 631
    for dtype, softcap in itertools.product((torch.float32, torch.bfloat16), (False, True)):
        rows = chunk_rows(8192, 32000, dtype, softcap=softcap)
        size = torch.empty((), dtype=dtype).element_size()
        per_element = 4 + (size if size != 4 else 0) + (4 if softcap else 0)
        assert rows * 32000 * per_element <= 0.08 * 8192 * 32000 * size
    assert chunk_rows(3, 10, torch.float32) == 1
    with chunking(fraction=0.5):
        assert chunk_rows(100, 10, torch.float32) == 34  # 40 rows, evened: 3 chunks of 34
    with chunking(rows=7):
        assert chunk_rows(100, 10, torch.float32) == 7
    assert chunk_rows(100, 10, torch.float32) == 8


def test_errors():
    hidden, weight, b, target = _problem(n=4, v=6, h=3, dtype=torch.float32)
    cases = [
        ({"weight": weight[:, :2]}, ValueError, "hidden must have last dimension H=2"),
        ({"weight": weight.double()}, TypeError, "weight must have the dtype of hidden"),
        ({"bias": b[:3]}, ValueError, r"bias must have shape \(6,\)"),
        ({"target": target[:2]}, ValueError, r"target must have shape \(4,\)"),
        ({"target": target.float()}, TypeError, "target must hold integer class indices"),
        ({"target": torch.tensor([0, 1, 2, 6])}, ValueError, "class index 6"),
        ({"eps": 1.5}, ValueError, "eps must be <= 1"),
        ({"style": "fair"}, ValueError, "style must be one of"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"impl": "cuda"}, ValueError, "impl must be one of"),
        ({"z_loss": -1.0}, ValueError, r"z_loss must be finite and >= 0.*got z_loss=-1.0"),
        ({"softcap": 0.0}, ValueError, r"softcap must be None \(off\) or a number in \(0, "),
        (
            {"softcap": float("inf")},
            ValueError,
            r"softcap must be None \(off\) or a number in \(0, ",
        ),
        ({"hidden": hidden.long()}, TypeError, "hidden must be a floating-point"),
        ({"prior": [0.5, 0.5], "style": "uniform"}, ValueError, r"prior must have shape \(6,\)"),
        ({"prior": torch.full((6,), 1 / 6), "style": "others"}, ValueError, "prior="),
    ]
    for change, error, message in cases:
        args = {"hidden": hidden, "weight": weight, "target": target, "bias": b, **change}
        with pytest.raises(error, match=message):
            linear_cross_entropy(args.pop("hidden"), args.pop("weight"), args.pop("target"), **args)
    # validate=False skips the (host-syncing) index check.
    linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 3]), validate=False)


def test_auto_is_chunked_on_cpu():
    assert linear._resolve("auto", torch.device("cpu")) == "chunked"


def test_docstring_examples():
    result = doctest.testmod(linear, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(INTERPRETED, reason="needs TRITON_INTERPRET unset")
def test_triton_unusable_without_interpreter():
    hidden, weight, _, target = _problem(n=4, dtype=torch.float32)
    error = ValueError if HAS_TRITON else ImportError
    with pytest.raises(error, match="impl='triton' needs"):
        linear_cross_entropy(hidden, weight, target, impl="triton")


# Triton's interpreter only works when TRITON_INTERPRET=1 is set before triton is first
# imported (its standard library is jitted at import), so the interpreter tests run in a fresh
# process: `test_triton_interpreter` starts one with the variable set, where the tests below run.
needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRETED), reason="runs in the TRITON_INTERPRET=1 subprocess"
)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(INTERPRETED, reason="this is the interpreter subprocess")
def test_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
               "-k", "triton_interp_"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]


TRITON_GRID = [
    ("uniform", "mean", 0.0, None, True, torch.float32),
    ("others", "sum", 0.01, 3.0, True, torch.float64),
    ("prior", "none", 0.01, None, False, torch.float64),
    ("uniform", "none", 0.0, 3.0, True, torch.float32),
    ("others", "mean", 0.0, None, False, torch.float64),
]


@needs_interpreter
@pytest.mark.parametrize(("style", "reduction", "z_loss", "softcap", "bias", "dtype"), TRITON_GRID)
def test_triton_interp_matches_reference(style, reduction, z_loss, softcap, bias, dtype):
    # 37 rows, 21 features, 35 classes: several 16-wide blocks with ragged edges.
    hidden, weight, b, target = _problem(n=37, h=21, v=35, dtype=dtype, bias=bias)
    tol = {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-5}
    _assert_matches(
        "triton", hidden, weight, b, target, reduction=reduction, z_loss=z_loss,
        softcap=softcap, **_style_kwargs(style, 35), **tol,
    )  # fmt: skip


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_interp_low_precision(dtype):
    hidden, weight, b, target = _problem(n=20, h=16, v=40, dtype=torch.float32, shape=(4, 5))
    low = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight, b)]
    ref_in = [t.detach().float().requires_grad_() for t in low]
    ours = _run("triton", *low, target, softcap=5.0, z_loss=1e-3)
    ref = _run("reference", *ref_in, target, grads=ours[3], softcap=5.0, z_loss=1e-3)
    torch.testing.assert_close(ours[0], ref[0], atol=2e-3, rtol=2e-3)
    for a, e in zip(ours[2], ref[2], strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e, atol=2e-2, rtol=2e-2)


@needs_interpreter
def test_triton_interp_all_ignored_and_weight_only():
    hidden, weight, b, target = _problem(n=9, dtype=torch.float32)
    ignored = torch.full_like(target, -100)
    loss = linear_cross_entropy(hidden, weight, ignored, bias=b, impl="triton")
    assert loss.item() == 0.0
    for grad in torch.autograd.grad(loss, (hidden, weight, b)):
        assert torch.equal(grad, torch.zeros_like(grad))
    h = hidden.detach()
    (gw,) = torch.autograd.grad(linear_cross_entropy(h, weight, target, impl="triton"), (weight,))
    (ref,) = torch.autograd.grad(
        linear_cross_entropy(h, weight, target, impl="reference"), (weight,)
    )
    torch.testing.assert_close(gw, ref)


@needs_interpreter
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_interp_gradcheck_and_first_order_only(reduction):
    # The interpreter runs the programs one after the other, so its atomic adds are in a fixed
    # order: backward is deterministic there (on a GPU the last bits may vary between runs).
    hidden, weight, b, target = _problem(n=5, h=3, v=18)

    def fn(h, w, bb):
        return linear_cross_entropy(
            h, w, target, 0.2, bias=bb, reduction=reduction, return_nll=True, z_loss=0.05,
            softcap=3.0, impl="triton",
        )  # fmt: skip

    assert gradcheck(fn, (hidden, weight, b), nondet_tol=0)
    loss = linear_cross_entropy(hidden, weight, target, bias=b, impl="triton", reduction=reduction)
    with pytest.raises(RuntimeError, match=r"impl='triton'\) is first-order only.*reference"):
        torch.autograd.grad(loss.sum(), weight, create_graph=True)


def test_reexport_if_present():
    # functional/__init__ re-export it once the lead wires it in; then it is this function.
    exported = getattr(ls, "linear_cross_entropy", linear_cross_entropy)
    assert exported is linear_cross_entropy

"""linear_cross_entropy: the fused linear-head loss equals the materialised reference.

Every implementation is compared with ``impl="reference"`` (logits materialised, then
``ls.cross_entropy(..., impl="reference")``): loss, nll and the gradients of hidden, weight and
bias, for random upstream gradients of both outputs. The Triton kernels run under
``TRITON_INTERPRET=1`` on CPU and are skipped when triton is not importable.
"""

import contextlib
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


@contextlib.contextmanager
def _path(path):
    """ "chunks": 13 rows in chunks of 4, 4, 4, 1; "dense": the default sizing, which gives a
    problem this small one chunk (the logits materialised, below DENSE_BYTES)."""
    if path == "dense":
        assert chunk_rows(13, 11, torch.float64) == 13
        yield
    else:
        with chunking(rows=4):
            yield


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("path", ["chunks", "dense"])
@pytest.mark.parametrize(("style", "reduction", "z_loss", "softcap", "bias"), GRID)
def test_chunked_matches_reference(style, reduction, z_loss, softcap, bias, path, fold,
                                   monkeypatch):  # fmt: skip
    # fold=False: the per-row coefficients applied to the (rows, V) chunk, as on GPUs.
    monkeypatch.setattr(linear, "_FOLD_ROWS", fold)
    hidden, weight, b, target = _problem(bias=bias)
    with _path(path):
        _assert_matches(
            "chunked", hidden, weight, b, target, reduction=reduction, z_loss=z_loss,
            softcap=softcap, **_style_kwargs(style, weight.shape[0]),
        )  # fmt: skip


FLOAT32_GRID = list(
    itertools.product(
        ["chunks", "dense"],
        ["uniform", "others", "prior"],
        ["mean", "sum", "none"],
        [(0.0, None), (0.01, 3.0)],  # (z_loss, softcap)
    )
)


@pytest.mark.parametrize(("path", "style", "reduction", "extras"), FLOAT32_GRID)
def test_float32_matches_reference(path, style, reduction, extras):
    # A custom ignore_index (a valid class number) and no bias.
    hidden, weight, _, target = _problem(n=13, h=6, v=11, dtype=torch.float32, bias=False)
    target = target.masked_fill(target == -100, 7)
    z_loss, softcap = extras
    with _path(path):
        _assert_matches(
            "chunked", hidden, weight, None, target, atol=2e-6, rtol=2e-5, reduction=reduction,
            z_loss=z_loss, softcap=softcap, ignore_index=7, **_style_kwargs(style, 11),
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


@pytest.mark.parametrize("path", ["chunks", "dense"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("softcap", "style", "reduction"), [
    (None, "uniform", "mean"), (5.0, "others", "sum"), (None, "prior", "none"),
])  # fmt: skip
def test_low_precision_against_float32_reference(dtype, softcap, style, reduction, path):
    hidden, weight, b, target = _problem(n=24, h=16, v=40, dtype=torch.float32)
    low = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight, b)]
    # The reference sees the same rounded inputs, in float32.
    ref_in = [t.detach().float().requires_grad_() for t in low]
    kwargs = {"softcap": softcap, "z_loss": 1e-3, "eps": 0.1, "reduction": reduction,
              **_style_kwargs(style, 40)}  # fmt: skip
    with chunking(rows=5) if path == "chunks" else contextlib.nullcontext():
        ours = _run("chunked", *low, target, **dict(kwargs))
    ref = _run("reference", *ref_in, target, grads=ours[3], **dict(kwargs))
    assert ours[0].dtype == (dtype if reduction == "none" else torch.float32)
    # reduction="none" returns the rows in the input dtype: rounded to 2^-9 (bf16) relative.
    tol = {"atol": 2e-3, "rtol": 8e-3 if reduction == "none" else 2e-3}
    torch.testing.assert_close(ours[0].float(), ref[0], **tol)
    torch.testing.assert_close(ours[1].float(), ref[1], **tol)
    for a, e in zip(ours[2], ref[2], strict=True):
        assert a.dtype == dtype
        # The gradient products run in bf16/fp16: within 1% of the largest entry (reduction
        # "none" has per-row upstream gradients of order 1, so entries of order 1 too).
        scale = e.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a.float() / scale, e / scale, atol=1e-2, rtol=2e-2)
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


class _MatmulOperands(TorchDispatchMode):
    """Records, for every matrix product, whether an operand holds a subnormal number."""

    PRODUCTS = (torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default,
                torch.ops.aten.addmm.out, torch.ops.aten.addmm_.default)  # fmt: skip

    def __init__(self):
        super().__init__()
        self.products = self.subnormal = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.PRODUCTS:
            self.products += 1
            unread = (kwargs or {}).get("beta", 1) == 0  # addmm(c, a, b, beta=0) ignores c
            for t in args[1:] if unread else args:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    tiny = torch.finfo(t.dtype).tiny
                    self.subnormal += int(((t != 0) & (t.abs() < tiny)).any())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["chunks", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("softcap", [None, 500.0])
def test_unscaled_large_logits_match_reference_without_subnormals(path, dtype, reduction,
                                                                   softcap):  # fmt: skip
    # randn hidden and 3 * randn weight with H=400: logits of standard deviation 60, a row
    # spans ~400, so most probabilities are below 2^-126 (float32) or flushed by
    # PROBABILITY_FLOOR (float64: 2^-110). The results still equal the reference, and no
    # subnormal number reaches a matrix product.
    g = torch.Generator().manual_seed(3)
    n, h, v = 40, 400, 300
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = (3 * torch.randn(v, h, generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    target[::5] = -100
    with torch.no_grad():
        logits = F.linear(hidden, weight, b)
        p = torch.softmax(logits.double(), 1)
        assert (p < 2.0**-126).float().mean() > 0.5  # mostly tiny probabilities
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    kwargs = {"eps": 0.1, "reduction": reduction, "z_loss": 1e-4, "softcap": softcap}
    watch = _MatmulOperands()
    with _path(path), watch:
        ours = _run("chunked", hidden, weight, b, target, **dict(kwargs))
    assert watch.products >= 3 and watch.subnormal == 0
    ref = _run("reference", hidden, weight, b, target, grads=ours[3], **dict(kwargs))
    for a, e in zip((ours[0], ours[1], *ours[2]), (ref[0], ref[1], *ref[2]), strict=True):
        scale = e.abs().max()
        torch.testing.assert_close(a / scale, e / scale, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [1.0, 300.0])
def test_softmax_in_place_and_op_by_op_agree_with_logsumexp(dtype, spread):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 1000, generator=g, dtype=dtype) * spread
    x[0, 3] = -float("inf")  # a class that can never be predicted
    want_p, want_lse = torch.softmax(x.double(), 1), torch.logsumexp(x.double(), 1)
    tol = {"atol": 0, "rtol": 1e-6 if dtype == torch.float32 else 1e-13}
    for fused in (True, False):
        p = x.clone()
        lse = linear._softmax_(p, fused=fused)
        # lse of a row spanning hundreds: its float32 rounding is relative to lse, not to 1.
        torch.testing.assert_close(lse.double(), want_lse, **tol)
        big = want_p > 1e-30
        torch.testing.assert_close(p.double()[big], want_p[big], atol=0, rtol=2e-5)
        assert p[0, 3] == 0


def test_probability_floor_flushes_only_negligible_mass():
    p = torch.tensor([[0.5, 0.5 - 2.0**-60, 2.0**-60 - 2.0**-79, 2.0**-79, 2.0**-80, 2.0**-81,
                       1e-40, 0.0]])  # fmt: skip
    out = linear._flush_(p.clone())
    assert out.tolist()[0][:4] == p.tolist()[0][:4]  # above the floor: untouched
    assert out.tolist()[0][4:] == [0.0] * 4  # at or below it: exactly 0 (no subnormal left)
    assert linear.PROBABILITY_FLOOR[torch.float32] * 2.0**34 <= 2.0**-24 * 2.0**-22


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
@pytest.mark.parametrize("rows", [3, None])  # chunks of 3, 3, 1; one chunk (dense)
@pytest.mark.parametrize("fold", [True, False])
def test_gradcheck(reduction, softcap, z_loss, style, rows, fold, monkeypatch):
    monkeypatch.setattr(linear, "_FOLD_ROWS", fold)
    hidden, weight, b, target = _problem(n=7, h=3, v=5)
    kwargs = _style_kwargs(style, 5)

    def fn(h, w, bb):
        with chunking(rows=rows):
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
def test_logits_never_materialised(softcap, reduction, dtype, monkeypatch):
    # Above the dense budget (set to 0 here) and with the 10% rule alone (no minimum rows).
    monkeypatch.setattr(linear, "DENSE_BYTES", 0)
    monkeypatch.setattr(linear, "MIN_CHUNK_ROWS", 1)
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
    mib = 2**20
    # Below DENSE_BYTES (256 MiB of work buffers): one chunk, the logits materialised.
    assert linear.DENSE_BYTES / mib == 256
    assert chunk_rows(2048, 32000, torch.float32) == 2048  # 250 MiB
    assert chunk_rows(2097, 32000, torch.float32) == 2097  # 255.98 MiB
    assert chunk_rows(512, 32000, torch.bfloat16, softcap=True) == 512
    # Above it: the work buffers get 80% of 10% of the logits, in multiples of 64 rows,
    # evened out (8192 rows = 12 chunks of 640 + 512).
    assert chunk_rows(8192, 32000, torch.float32) == 640
    for dtype, softcap in itertools.product((torch.float32, torch.bfloat16), (False, True)):
        n = 65536
        rows = chunk_rows(n, 32000, dtype, softcap=softcap)
        size = torch.empty((), dtype=dtype).element_size()
        per_element = 4 + (size if size != 4 else 0) + (4 if softcap else 0)
        assert rows % 64 == 0 and rows >= 512
        assert rows * 32000 * per_element <= 0.08 * n * 32000 * size
    # ... but never fewer than MIN_CHUNK_ROWS rows (the products' speed), then aligned.
    assert linear.MIN_CHUNK_ROWS == 512
    assert chunk_rows(4096, 128256, torch.float32) == 512  # 10%: 327 rows
    assert chunk_rows(2100, 32000, torch.float32) == 512  # 4 x 512 + 52 (not 5 x 448)
    with chunking(fraction=0.5):
        assert chunk_rows(4096, 128256, torch.float32) == 1408  # 1638 -> 3 chunks, x 64
    with chunking(rows=7):
        assert chunk_rows(100, 10, torch.float32) == 7
    assert chunk_rows(0, 10, torch.float32) == 1


def test_chunk_rows_small_budget_rules(monkeypatch):
    # Without the dense budget and the minimum: the 10% rule alone, evened out.
    monkeypatch.setattr(linear, "DENSE_BYTES", 0)
    monkeypatch.setattr(linear, "MIN_CHUNK_ROWS", 1)
    assert chunk_rows(3, 10, torch.float32) == 1
    assert chunk_rows(100, 10, torch.float32) == 8
    with chunking(fraction=0.5):
        assert chunk_rows(100, 10, torch.float32) == 34  # 40 rows, evened: 3 chunks of 34
    assert chunk_rows(8192, 32000, torch.float32) == 640  # 655 -> 640 (x 64)


class _LogitsProducts(TorchDispatchMode):
    """Counts the matrix products that produce a (rows, V) block of logits."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes, self.rows = num_classes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # (1, V) outputs are the bias gradient's vector-matrix products, not logits.
        product = func in _MatmulOperands.PRODUCTS and out.dim() == 2
        if product and out.shape[1] == self.num_classes and out.shape[0] > 1:
            self.rows.append(out.shape[0])
        return out


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_dense_below_the_budget_and_chunks_above(reduction, monkeypatch):
    n, v = 150, 70
    hidden, weight, b, target = _problem(n=n, h=6, v=v, dtype=torch.float32)

    def forward_rows():
        watch = _LogitsProducts(v)
        with watch:
            loss = linear_cross_entropy(hidden, weight, target, bias=b, reduction=reduction)
        return watch.rows, loss

    # Default budget: 150 x 70 float32 logits (41 KiB) are far below DENSE_BYTES.
    dense_rows, dense = forward_rows()
    assert dense_rows == [n]
    # A budget one byte short of the logits: chunks of at most MIN_CHUNK_ROWS rows.
    monkeypatch.setattr(linear, "DENSE_BYTES", n * v * 4 - 1)
    monkeypatch.setattr(linear, "MIN_CHUNK_ROWS", 64)
    chunk_rows_seen, chunked = forward_rows()
    assert chunk_rows_seen == [64, 64, 22]  # aligned to 64, the rest last
    torch.testing.assert_close(chunked, dense)
    with chunking(rows=4):
        _assert_matches("chunked", hidden, weight, b, target, atol=2e-6, rtol=2e-5,
                        reduction=reduction)  # fmt: skip
    monkeypatch.setattr(linear, "DENSE_BYTES", n * v * 4)  # exactly the logits: dense again
    assert forward_rows()[0] == [n]


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
@pytest.mark.parametrize("style", ["uniform", "others", "prior"])
def test_triton_interp_exclude_classes(style):
    # exclude_classes is a vector offset (zero on the excluded classes) for either style.
    hidden, weight, b, target = _problem(n=37, h=21, v=35, dtype=torch.float64)
    target = target.masked_fill((target == 0) | (target == 17), -100)
    _assert_matches(
        "triton", hidden, weight, b, target, reduction="mean", exclude_classes=[0, 17],
        **_style_kwargs(style, 35),
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

"""Regression tests from a review of the fused kernels (``compiled``, ``triton``).

With ``validate=False`` the class-index check is skipped, so a target >= K reaches the kernels.
The chunked path then raises (torch's own bounds check); the C++ kernel used to read and
write past its row buffers (heap corruption, or a segfault for a large index) and the Triton
kernel used to load the logit of a class outside the row. Each case runs in a subprocess so
that a regression crashes the child, not the test session.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(script)],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_compiled_refuses_out_of_range_target_without_validation():
    if not kernels.compiled_available():
        pytest.skip("the C++ kernel does not build here")
    done = _run(
        """
        import pytest, torch, labelsmooth as ls
        for bad in (5, 100_000_000):
            x = torch.randn(4, 5, requires_grad=True)
            target = torch.tensor([0, 1, 2, bad])
            with pytest.raises(ValueError, match="class index >= num_classes=5"):
                ls.cross_entropy(x, target, impl="compiled", validate=False)
        # a large problem: the bad row is in another thread's range
        x = torch.randn(4000, 37)
        target = torch.randint(0, 37, (4000,))
        target[-1] = 37
        with pytest.raises(ValueError, match="num_classes=37"):
            ls.cross_entropy(x, target, impl="compiled", validate=False)
        print("OK")
        """
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_never_reads_an_out_of_range_target_column():
    done = _run(
        """
        import torch, labelsmooth as ls
        logits = torch.randn(4, 5)
        for bad in (5, 100_000_000, -1):  # -1 is not ignore_index (-100): out of range
            x = logits.clone().requires_grad_(True)
            target = torch.tensor([0, 1, 2, bad])
            loss = ls.cross_entropy(x, target, impl="triton", validate=False, reduction="none")
            loss.sum().backward()
            assert torch.isnan(loss[3]) and torch.isnan(x.grad[3]).all(), (loss, x.grad)
            y = logits.clone().requires_grad_(True)
            ref = ls.cross_entropy(y[:3], target[:3], impl="reference", reduction="none")
            ref.sum().backward()
            torch.testing.assert_close(loss[:3], ref)
            torch.testing.assert_close(x.grad[:3], y.grad[:3])
        print("OK")
        """,
        TRITON_INTERPRET="1",
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr[-3000:]


def test_shared_temporary_fallback_is_used_only_when_private(tmp_path, monkeypatch):
    """A library in a fallback directory another user can write to is never loaded."""
    from labelsmooth.kernels import _build

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by group or others"):
        _build.open_private_dir(shared)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.close(_build.open_private_dir(private))
    absent = tmp_path / "absent"
    os.close(_build.open_private_dir(absent))  # created, mode 0700
    assert absent.stat().st_mode & 0o777 == 0o700

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(_build, "fallback_dir", lambda: shared)
    with pytest.raises(RuntimeError, match="writable by group or others .*; not used"):
        _build.load([("x.so", [])], "c++", "", lambda lib: None)


@pytest.mark.parametrize("impl", ["reference", "torch", "chunked", "compiled", "auto"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_unchecked_negative_target_is_neither_a_class_nor_ignored(impl, weighted, reduction):
    """validate=False: a -1 that is not ignore_index used to be ignored by the fused kernels
    but counted in the "mean" denominator, taken as the last class by weight[-1], and raised
    in the torch path. Now every implementation treats it as out of range (raises on CPU)."""
    if impl == "compiled" and not kernels.compiled_available():
        pytest.skip("the C++ kernel does not build here")
    k = 5 if impl != "auto" else kernels.AUTO_MIN_ELEMENTS // 8 + 1  # auto: a kernel
    logits = torch.randn(8, k, requires_grad=True)
    target = torch.tensor([0, 1, -1, 3, 4, 2, 1, 0])
    weight = torch.rand(k) + 0.5 if weighted else None
    kwargs = dict(weight=weight, reduction=reduction, impl=impl, validate=False)
    with pytest.raises((ValueError, IndexError, RuntimeError), match="(?i)index|class|bounds"):
        ls.cross_entropy(logits, target, **kwargs).sum().backward()
    # The same value as ignore_index is ignored, as documented.
    loss = ls.cross_entropy(logits, target, ignore_index=-1, **kwargs)
    expected = F.cross_entropy(
        logits, target, weight=weight, ignore_index=-1, label_smoothing=0.1, reduction=reduction
    )
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_power_of_two_upstream_gradient_is_exact_in_half_precision(impl, dtype):
    """A bf16/fp16 fused gradient is rounded once for loss.backward(); a power-of-two factor
    (gradient accumulation) rescales it exactly (documented in labelsmooth.kernels.fused)."""
    if impl == "compiled" and not kernels.compiled_available():
        pytest.skip("the C++ kernel does not build here")
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(64, 300, generator=generator) * 3).to(dtype)
    target = torch.randint(0, 300, (64,), generator=generator)
    grads = []
    for scale in (1.0, 0.25):
        x = logits.clone().requires_grad_(True)
        (ls.cross_entropy(x, target, impl=impl) * scale).backward()
        grads.append(x.grad)
    assert torch.equal(grads[1], grads[0] * 0.25)

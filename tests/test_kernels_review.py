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
        for bad in (5, 100_000_000):
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
    from labelsmooth.kernels import cpu_ce

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not cpu_ce._private(shared)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert cpu_ce._private(private) and cpu_ce._private(tmp_path / "absent")

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(cpu_ce, "_fallback_dir", lambda: shared)
    with pytest.raises(RuntimeError, match="owned or writable by another user; not used"):
        cpu_ce._build()
